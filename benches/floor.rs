//! The floor under any server's live fan-out on this machine: a bare writer that does nothing but one
//! non-blocking `write` of `rate / (1000 / interval)` bytes to each of N loopback sockets every interval, read
//! by N tokio readers (one current-thread runtime, 64 KiB reads, as `livegate-load` reads). The writer is a
//! child process, so its CPU is measured the way `livegate-load` measures livegate's: user + system time.
//!
//! `cargo run --release --bin livegate-floor -- --readers 1000 --interval-ms 33.333`
//! prints CPU-µs per delivered MB and per write. Comparing it with `livegate-load` at the same write rate
//! (one write per player per video frame, or per two frames with the merge window) shows how much of
//! livegate's cost is the kernel's loopback TCP path, which no server can avoid.

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Reader sockets.
    #[arg(long, default_value_t = 1000)]
    readers: usize,
    /// Milliseconds between writes to each socket (33.333 = one per video frame at 30 fps).
    #[arg(long, default_value_t = 33.333)]
    interval_ms: f64,
    /// Bytes per reader-second (193,800 = what livegate-load's 720p stream delivers per reader).
    #[arg(long, default_value_t = 193_800.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 12.0)]
    secs: f64,
    /// Internal: run as the writer on this port.
    #[arg(long, hide = true)]
    writer_port: Option<u16>,
}

fn cpu_ms() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 * 1000.0 + tv.tv_usec as f64 / 1000.0;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn writer(port: u16, a: &Args) {
    let l = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    println!("ready");
    let mut socks = Vec::with_capacity(a.readers);
    for _ in 0..a.readers {
        let (s, _) = l.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        s.set_nonblocking(true).expect("nonblocking");
        socks.push(s);
    }
    let chunk = vec![7u8; (a.rate * a.interval_ms / 1000.0) as usize];
    std::thread::sleep(Duration::from_secs(2));
    let (c0, t0) = (cpu_ms(), Instant::now());
    let (mut sent, mut blocked, mut rounds) = (0u64, 0u64, 0u64);
    while t0.elapsed().as_secs_f64() < a.secs {
        for s in socks.iter_mut() {
            match s.write(&chunk) {
                Ok(n) => sent += n as u64,
                Err(_) => blocked += 1,
            }
        }
        rounds += 1;
        let next = t0 + Duration::from_secs_f64(rounds as f64 * a.interval_ms / 1000.0);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let (cpu, secs) = (cpu_ms() - c0, t0.elapsed().as_secs_f64());
    let mb = sent as f64 / 1e6;
    println!(
        "floor: {} readers, one {}-byte write each per {} ms: {:.1} MB/s delivered, writer CPU {:.0} ms/s = \
         {:.0} CPU-us per delivered MB, {:.2} us per write; {} writes would have blocked",
        a.readers,
        chunk.len(),
        a.interval_ms,
        mb / secs,
        cpu / secs,
        cpu * 1000.0 / mb,
        cpu * 1000.0 / (rounds as f64 * a.readers as f64),
        blocked
    );
}

fn main() {
    let a = Args::parse();
    if let Some(port) = a.writer_port {
        return writer(port, &a);
    }
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let mut child = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args(["--readers", &a.readers.to_string(), "--interval-ms", &a.interval_ms.to_string()])
        .args(["--rate", &a.rate.to_string(), "--secs", &a.secs.to_string(), "--writer-port", &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the writer");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("writer ready");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let readers = a.readers;
    let tasks = rt.block_on(async move {
        let mut tasks = Vec::with_capacity(readers);
        for _ in 0..readers {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            tasks.push(tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            }));
        }
        tasks
    });
    let report = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        rest
    });
    rt.block_on(async move {
        for t in tasks {
            let _ = t.await;
        }
    });
    let _ = child.wait();
    print!("{}", report.join().unwrap_or_default());
}
