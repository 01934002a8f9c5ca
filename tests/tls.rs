//! HTTPS: curl (HTTP/1.1 and HTTP/2 by ALPN) and ffmpeg against a certificate the test makes, and a
//! certificate replaced under a live HTTP-FLV reader (SIGHUP) without losing it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A self-signed certificate for 127.0.0.1 (its own CA), made with openssl: (cert.pem, key.pem).
fn make_cert(dir: &Path, tag: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{tag}-cert.pem")), dir.join(format!("{tag}-key.pem")));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN=livegate test {tag}"), "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// curl's answer: (exit code, http version, body, stderr).
fn curl(ca: &Path, url: &str, extra: &[&str]) -> (i32, String, Vec<u8>, String) {
    let body = tempdir::TempDir::new("curl");
    let out_file = body.path().join("body");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "%{http_version} %{http_code}", "--cacert"])
        .arg(ca)
        .arg("-o")
        .arg(&out_file)
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        std::fs::read(&out_file).unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn hup(srv: &Server) {
    let st = Command::new("kill").args(["-HUP", &srv.child.id().to_string()]).status().unwrap();
    assert!(st.success());
}

#[test]
fn https_serves_flv_api_and_http2_and_takes_a_new_certificate_without_dropping_readers() {
    let certs = tempdir::TempDir::new("tls");
    let (cert_a, key_a) = make_cert(certs.path(), "a");
    let (cert_b, key_b) = make_cert(certs.path(), "b");
    let live_cert = certs.path().join("cert.pem");
    let live_key = certs.path().join("key.pem");
    std::fs::copy(&cert_a, &live_cert).unwrap();
    std::fs::copy(&key_a, &live_key).unwrap();
    let srv = Server::start(&format!(
        "[http]\nhttps_listen = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n",
        live_cert.display().to_string(),
        live_key.display().to_string()
    ));
    let port = srv.https_port.expect("the ready file names the HTTPS port");
    let base = format!("https://127.0.0.1:{port}");
    let _p = push(&media("360p"), &srv.rtmp_url("tls"));
    srv.wait_live("tls");

    // HTTP/2 when the client offers it, HTTP/1.1 otherwise; the API and health answer over both.
    let (code, info, body, err) = curl(&cert_a, &format!("{base}/healthz"), &["--http2"]);
    assert_eq!((code, info.as_str()), (0, "2 200"), "{err}");
    assert!(String::from_utf8_lossy(&body).contains("ok"));
    let (code, info, _, err) = curl(&cert_a, &format!("{base}/healthz"), &["--http1.1"]);
    assert_eq!((code, info.as_str()), (0, "1.1 200"), "{err}");
    let (code, info, body, err) = curl(&cert_a, &format!("{base}/api/v1/streams/live/tls"), &["--http2"]);
    assert_eq!((code, info.as_str()), (0, "2 200"), "{err}");
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["stream"], "tls");
    // HTTP-FLV over HTTP/2: an FLV header, then tags, until curl stops reading.
    let (code, _, body, err) = curl(&cert_a, &format!("{base}/live/tls.flv"), &["--http2", "--max-time", "3", "-v"]);
    assert_eq!(code, 28, "curl reads until its time is up: {err}");
    assert!(err.contains("ALPN: server accepted h2"), "{err}");
    assert!(body.starts_with(b"FLV\x01") && body.len() > 20_000, "{} bytes", body.len());
    // A client that does not trust the certificate is refused by its own TLS check.
    let (code, _, _, _) = curl(&cert_b, &format!("{base}/healthz"), &[]);
    assert_ne!(code, 0);

    // ffmpeg reads HTTP-FLV over HTTPS (verifying the certificate) for 8 s of media while the certificate
    // is replaced under it.
    let out = srv.dir.path().join("https.flv");
    let mut reader = Proc::spawn(
        Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-tls_verify", "1", "-ca_file"])
            .arg(&cert_a)
            .args(["-i", &format!("{base}/live/tls.flv"), "-t", "8", "-c", "copy"])
            .arg(&out),
    );
    assert!(wait_until(Duration::from_secs(20), || std::fs::metadata(&out).is_ok_and(|m| m.len() > 50_000)));
    std::fs::copy(&cert_b, &live_cert).unwrap();
    std::fs::copy(&key_b, &live_key).unwrap();
    hup(&srv);
    assert!(
        wait_until(Duration::from_secs(10), || curl(&cert_b, &format!("{base}/healthz"), &[]).0 == 0),
        "new connections did not get the new certificate:\n{}",
        srv.log_text()
    );
    assert_ne!(curl(&cert_a, &format!("{base}/healthz"), &[]).0, 0, "the old certificate is still served");
    let st = reader.wait(Duration::from_secs(60)).expect("ffmpeg finishes its 8 s");
    assert!(st.success(), "{}", reader.stderr());
    let dur = ffprobe(out.to_str().unwrap(), &["-show_entries", "format=duration", "-of", "csv=p=0"]);
    let secs: f64 = String::from_utf8_lossy(&dur.stdout).trim().parse().unwrap();
    assert!(secs > 7.5, "the reader lost its stream at the reload: {secs} s of media");

    // A certificate that does not load leaves the one in use.
    std::fs::write(&live_cert, "not a certificate").unwrap();
    hup(&srv);
    assert!(wait_until(Duration::from_secs(10), || srv.log_text().contains("TLS certificate not reloaded")));
    assert_eq!(curl(&cert_b, &format!("{base}/healthz"), &[]).0, 0);
}

#[test]
fn https_without_a_usable_certificate_does_not_start() {
    let dir = tempdir::TempDir::new("tls-bad");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[rtmp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\nhttps_listen = \"127.0.0.1:0\"\n\
             tls_cert = \"{0}/missing.pem\"\ntls_key = \"{0}/missing-key.pem\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_livegate")).args(["serve", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.pem") && err.contains("tls_cert"), "{err}");
    // https_listen without the files is a config error.
    std::fs::write(&cfg, "[http]\nhttps_listen = \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_livegate")).arg("check-config").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.tls_cert"));
}

/// The base64 SHA-256 of a certificate's public key: what Chromium's --ignore-certificate-errors-spki-list takes.
fn spki_hash(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        cert.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn chromium_publishes_over_whip_to_the_https_port() {
    let certs = tempdir::TempDir::new("tls-chromium");
    let (cert, key) = make_cert(certs.path(), "c");
    let srv = Server::start(&format!(
        "[http]\nhttps_listen = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    ));
    let url = format!("https://127.0.0.1:{}/whip/live/secure", srv.https_port.unwrap());
    let flags = format!("--ignore-certificate-errors-spki-list={}", spki_hash(&cert));
    let mut b = Proc::spawn_capture(
        Command::new("node")
            .arg(format!("{}/tests/browser/whip_publish.mjs", env!("CARGO_MANIFEST_DIR")))
            .args([&url, "4"])
            .env("LIVEGATE_CHROMIUM_FLAGS", flags),
    );
    let info = srv.wait_live("secure");
    assert_eq!(info["publisher"]["protocol"], "whip", "{info}");
    let j = browser_result(&mut b, Duration::from_secs(60));
    assert_eq!((j["status"].as_u64(), j["deleteStatus"].as_u64()), (Some(201), Some(200)), "{j}");
    assert!(j["framesSent"].as_u64().unwrap() > 30, "{j}");
}

#[test]
fn ffmpeg_publishes_and_plays_over_rtmps() {
    let certs = tempdir::TempDir::new("tls-rtmps");
    let (cert, key) = make_cert(certs.path(), "r");
    let srv = Server::start(&format!(
        "[rtmp]\nrtmps_listen = \"127.0.0.1:0\"\n[http]\ntls_cert = {:?}\ntls_key = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    ));
    let url = |name: &str| format!("rtmps://127.0.0.1:{}/live/{name}", srv.rtmps_port.expect("RTMPS port"));
    let _p = push(&media("360p"), &url("sec"));
    let info = srv.wait_live("sec");
    assert_eq!(info["publisher"]["protocol"], "rtmp", "{info}");
    assert!(srv.log_text().contains("tls=true"), "the session's span says it is RTMPS");
    // A player over RTMPS (written by its own task: the fan-out writes plaintext), and one over plain RTMP.
    let out = srv.dir.path().join("rtmps.flv");
    let o = Command::new("timeout")
        .args(["40", "ffmpeg", "-v", "error", "-y", "-i", &url("sec"), "-t", "4", "-c", "copy"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let streams = probe_streams(out.to_str().unwrap());
    assert!(streams.iter().any(|s| s["codec_name"] == "h264") && streams.iter().any(|s| s["codec_name"] == "aac"));
    let dur = ffprobe(out.to_str().unwrap(), &["-show_entries", "format=duration", "-of", "csv=p=0"]);
    let secs: f64 = String::from_utf8_lossy(&dur.stdout).trim().parse().unwrap();
    assert!(secs > 3.5, "{secs} s read over RTMPS");
    // Plain RTMP on the same stream is unaffected.
    let plain = probe_streams(&srv.rtmp_url("sec"));
    assert!(plain.iter().any(|s| s["codec_name"] == "h264"), "{plain:?}");
    // A client speaking plain RTMP to the RTMPS port fails its TLS handshake, and is said to.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", srv.rtmps_port.unwrap())).unwrap();
    use std::io::Write;
    c.write_all(&[3u8; 1537]).unwrap();
    assert!(wait_until(Duration::from_secs(10), || srv.log_text().contains("RTMPS: TLS handshake failed")));
}

#[test]
fn a_room_members_urls_and_event_socket_are_secure_on_the_https_port() {
    let certs = tempdir::TempDir::new("tls");
    let (cert, key) = make_cert(certs.path(), "rooms");
    let app = 1400000123u32;
    let secret = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
    let srv = Server::start(&format!(
        "[http]\nhttps_listen = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n[rtmp]\nrtmps_listen = \"127.0.0.1:0\"\n\
         [rooms]\napps = [{{ sdk_app_id = {app}, secret_key = \"{secret}\" }}]\n",
        cert.display().to_string(),
        key.display().to_string()
    ));
    let port = srv.https_port.expect("HTTPS port");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let sig = livegate::usersig::sign(secret.as_bytes(), app, "alice", now, 3600, None);
    let body = serde_json::json!({"sdkAppId": app, "userId": "alice", "userSig": sig}).to_string();
    let url = format!("https://127.0.0.1:{port}/api/v1/rooms/7/enter");
    let (code, info, answer, err) =
        curl(&cert, &url, &["-X", "POST", "-H", "Content-Type: application/json", "--data", &body]);
    assert_eq!((code, info.split_whitespace().nth(1)), (0, Some("200")), "{err} {}", String::from_utf8_lossy(&answer));
    let m: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    // Everything the room hands out over HTTPS is secure: wss, https, and RTMPS when it is on.
    let events = m["events_url"].as_str().unwrap();
    assert!(events.starts_with(&format!("wss://127.0.0.1:{port}/")), "{events}");
    assert!(m["push"]["whip"].as_str().unwrap().starts_with("https://"), "{m}");
    let rtmps = srv.rtmps_port.unwrap();
    assert!(m["push"]["rtmp"].as_str().unwrap().starts_with(&format!("rtmps://127.0.0.1:{rtmps}/")), "{m}");
    let out = node("wss_events.mjs", &[events, cert.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!((v["first"]["event"].as_str(), v["pong"].as_bool()), (Some("SNAPSHOT"), Some(true)), "{v}");
}
