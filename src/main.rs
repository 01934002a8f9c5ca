//! `livegate` command line: serve, check a config, sign URLs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use livegate::config::Config;

// Another allocator than the system's, by cargo feature (benches/alloc_churn.sh compares them).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "livegate",
    version,
    about = "Media gateway for WeChat mini programs and browsers: RTMP, HTTP-FLV, control API"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (on the embedded default config unless --config is given).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Once listening, write the bound RTMP and HTTP addresses here as JSON (for a `listen` port of 0).
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Validate a config file and exit (non-zero with the reason if it is invalid).
    CheckConfig { file: PathBuf },
    /// Make a userSig as Tencent's TLSSigAPIv2 does (with --room, a privateMapKey), or check one (--verify).
    Usersig {
        #[arg(long)]
        sdk_app_id: u32,
        /// The app's secret key.
        #[arg(long)]
        key: String,
        #[arg(long)]
        user: String,
        /// How long it stays valid: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "7d")]
        expire: String,
        /// Make a privateMapKey for this room: a number, or a string room id.
        #[arg(long)]
        room: Option<String>,
        /// The privateMapKey's permission bits: 1 create, 2 enter, 4 send audio, 8 receive audio, 16 send video,
        /// 32 receive video (255: all).
        #[arg(long, default_value_t = 255)]
        privileges: u32,
        /// Check this userSig or privateMapKey instead: print what it holds, or fail with the reason.
        #[arg(long)]
        verify: Option<String>,
    },
    /// Print signed push and play URLs (txSecret/txTime) for a stream.
    Sign {
        #[arg(long, default_value = "live")]
        app: String,
        #[arg(long)]
        stream: String,
        /// How long the URL stays valid: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        expire: String,
        /// Sign the play URLs (with play_key) instead of the push URL (push_key).
        #[arg(long)]
        play: bool,
        /// Host name or address to put in the URLs (no port: see --rtmp-port and --http-port).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port of the RTMP URL (default: rtmp.listen's).
        #[arg(long)]
        rtmp_port: Option<u16>,
        /// Port of the HTTP-FLV URL (default: http.listen's).
        #[arg(long)]
        http_port: Option<u16>,
        /// Use this key instead of the one in the config.
        #[arg(long)]
        key: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn load(config: Option<&PathBuf>) -> anyhow::Result<Config> {
    match config {
        Some(p) => {
            let c = Config::load(p).with_context(|| format!("config {}", p.display()))?;
            livegate::server::check_config(&c).with_context(|| format!("config {}", p.display()))?;
            Ok(c)
        }
        None => Ok(Config::default_config()),
    }
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("{s:?} is not a duration like 90s, 30m, 1h, 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("{s:?}: unknown unit {unit:?} (use s, m, h or d)"),
    };
    Ok(Duration::from_secs(n * mult))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd.unwrap_or(Cmd::Serve { config: None, ready_file: None }) {
        Cmd::Serve { config, ready_file } => {
            let cfg = load(config.as_ref())?;
            let mut filter = std::env::var("RUST_LOG").ok().unwrap_or_else(|| cfg.log.level.clone());
            // webrtc-rs warns once per WebRTC session that DTLS has no server name, which WebRTC does not use
            // (peers are checked by certificate fingerprint): noise at scale, unless asked for.
            if !filter.contains("rtc_dtls") {
                filter.push_str(",rtc_dtls::config=error");
            }
            tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).init();
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(livegate::server::run(cfg, ready_file))?;
            // Connections still draining are not worth waiting for once the deadline passed.
            rt.shutdown_timeout(Duration::from_secs(1));
            Ok(())
        }
        Cmd::CheckConfig { file } => {
            load(Some(&file))?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Cmd::Usersig { sdk_app_id, key, user, expire, room, privileges, verify } => {
            use livegate::usersig::{self, PrivateMap, RoomRef};
            let now = livegate::auth::unix_now() as i64;
            if let Some(sig) = verify {
                let ok = usersig::verify(key.as_bytes(), sdk_app_id, &user, &sig, now)?;
                let map = ok.userbuf.as_deref().map(PrivateMap::parse).transpose()?;
                let room = map.as_ref().map(|m| match &m.room {
                    RoomRef::Number(n) => serde_json::json!(n),
                    RoomRef::Name(s) => serde_json::json!(s),
                });
                let out = serde_json::json!({
                    "identifier": ok.identifier,
                    "sdk_app_id": ok.sdk_app_id,
                    "time": ok.time,
                    "expire": ok.expire,
                    "private_map": map.as_ref().map(|m| serde_json::json!({
                        "user": m.user, "sdk_app_id": m.sdk_app_id, "room": room,
                        "expires_at": m.expires_at, "privileges": m.privileges,
                    })),
                });
                println!("{out}");
                return Ok(());
            }
            livegate::names::validate("user", &user)?;
            let secs = parse_duration(&expire)?.as_secs() as i64;
            let userbuf = room.map(|r| {
                let room = r.parse::<u32>().map_or(RoomRef::Name(r), RoomRef::Number);
                let map =
                    PrivateMap { user: user.clone(), sdk_app_id, room, expires_at: (now + secs) as u32, privileges };
                map.to_userbuf()
            });
            println!("{}", usersig::sign(key.as_bytes(), sdk_app_id, &user, now, secs, userbuf.as_deref()));
            Ok(())
        }
        Cmd::Sign { app, stream, expire, play, host, rtmp_port, http_port, key, config } => {
            let cfg = load(config.as_ref())?;
            // A port in --host would be doubled (host:1935:1935) and could only fit one of the two URLs.
            let bracketed = host.starts_with('[') && host.ends_with(']');
            anyhow::ensure!(
                bracketed || host.parse::<std::net::Ipv6Addr>().is_err() && !host.contains(':'),
                "--host {host:?} has a port (or is a bare IPv6 address): give the host alone, in brackets for IPv6, \
                 and the ports with --rtmp-port / --http-port"
            );
            livegate::names::validate("app", &app)?;
            livegate::names::validate("stream", &stream)?;
            let key = match key {
                Some(k) => k,
                None => {
                    let a = cfg.app(&app).with_context(|| format!("app {app:?} is not in the config"))?;
                    if play {
                        a.play_key.clone()
                    } else {
                        a.push_key.clone()
                    }
                }
            };
            anyhow::ensure!(
                !key.is_empty(),
                "app {app:?} has no {} configured (pass --key)",
                if play { "play_key" } else { "push_key" }
            );
            let expiry = livegate::auth::unix_now() + parse_duration(&expire)?.as_secs();
            let tx_time = format!("{expiry:X}");
            let secret = livegate::auth::sign(&key, &stream, &tx_time);
            let q = format!("txSecret={secret}&txTime={tx_time}");
            let rtmp_port = rtmp_port.unwrap_or(cfg.rtmp.listen.port());
            let http_port = http_port.unwrap_or(cfg.http.listen.port());
            if play {
                println!("rtmp://{host}:{rtmp_port}/{app}/{stream}?{q}");
                println!("http://{host}:{http_port}/{app}/{stream}.flv?{q}");
            } else {
                println!("rtmp://{host}:{rtmp_port}/{app}/{stream}?{q}");
            }
            Ok(())
        }
    }
}
