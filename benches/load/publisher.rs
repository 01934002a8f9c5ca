//! The publisher: sends the input file over RTMP paced by tag timestamps, as `ffmpeg -re -c copy` does, and
//! logs the wall-clock instant each tag left.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use livegate::media::amf0::{self, Amf0Value};
use livegate::media::flv::{TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};
use livegate::rtmp::chunk;
use livegate::rtmp::message::{AUDIO, DATA_AMF0, VIDEO};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use crate::input::Input;
use crate::now_ns;
use crate::rtmp_client::{parse_command, status_error, RtmpConn};

/// The chunk size the publisher announces (the largest tag then goes out in few chunks).
const PUBLISH_CHUNK_SIZE: u32 = 60_000;

/// One tag the publisher sent.
#[derive(Clone, Copy)]
pub struct SendRec {
    /// `now_ns()` just before the tag was written to the socket.
    pub at_ns: u64,
    pub timestamp: u32,
    /// Presentation timestamp: `timestamp` + the composition offset of a video frame (= `timestamp` otherwise).
    pub pts: u32,
    pub tag_type: u8,
    /// Script data or a codec sequence header.
    pub header: bool,
    /// Tag body bytes sent so far, this tag included.
    pub cum_bytes: u64,
}

#[derive(Default)]
pub struct PubLog {
    pub stream: String,
    pub sends: Vec<SendRec>,
    /// Why publishing stopped early, or notices (error statuses) the server sent.
    pub errors: Vec<String>,
    pub loops: u32,
    /// Tags sent more than 50 ms after their due instant (the publisher itself fell behind).
    pub late: u64,
    /// The largest delay behind a tag's due instant, microseconds.
    pub max_late_us: u64,
}

impl PubLog {
    /// Tag body bytes sent.
    pub fn media_bytes(&self) -> u64 {
        self.sends.last().map_or(0, |s| s.cum_bytes)
    }

    /// Media milliseconds sent between two instants (timestamp of the last tag sent by `to` minus that of the
    /// last tag sent by `from`; before the first tag the first timestamp counts).
    pub fn media_ms_between(&self, from_ns: u64, to_ns: u64) -> u64 {
        let ts_at = |t: u64| {
            let i = self.sends.partition_point(|s| s.at_ns <= t);
            let s = if i == 0 { self.sends.first() } else { self.sends.get(i - 1) };
            s.map_or(0, |s| s.timestamp as u64)
        };
        ts_at(to_ns).saturating_sub(ts_at(from_ns))
    }
}

/// Tags sent more than 50 ms late, all publishers together (for the progress line).
pub static LATE: AtomicU64 = AtomicU64::new(0);
/// Tag body bytes sent, all publishers together.
pub static SENT_BYTES: AtomicU64 = AtomicU64::new(0);

/// Runs one publisher per stream name, all as tasks of one current-thread runtime on one thread (readers
/// cannot disturb their pacing, and N publishers cost the tool one thread). Publisher `i` starts `i * ramp`
/// after the others. `ready` fires when livegate answered NetStream.Publish.Start to every one of them, or
/// with the first error. The thread returns one log per stream, in order.
pub fn spawn(
    input: Arc<Input>,
    rtmp: SocketAddr,
    streams: Vec<String>,
    ramp: Duration,
    stop: Arc<AtomicBool>,
    ready: oneshot::Sender<Result<(), String>>,
) -> std::thread::JoinHandle<Vec<PubLog>> {
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("publisher runtime");
            rt.block_on(async move {
                let mut readies = Vec::with_capacity(streams.len());
                let mut tasks = Vec::with_capacity(streams.len());
                for (i, stream) in streams.into_iter().enumerate() {
                    let (tx, rx) = oneshot::channel();
                    readies.push(rx);
                    let (input, stop) = (input.clone(), stop.clone());
                    tasks.push(tokio::spawn(async move {
                        tokio::time::sleep(ramp * i as u32).await;
                        let mut log = PubLog { stream, ..PubLog::default() };
                        let mut ready = Some(tx);
                        if stop.load(Ordering::Relaxed) {
                            log.errors.push("stopped before connecting".into());
                        } else if let Err(e) = publish(&input, rtmp, &stop, &mut ready, &mut log).await {
                            let msg = format!("{}: {e:#}", log.stream);
                            if let Some(r) = ready.take() {
                                let _ = r.send(Err(msg.clone()));
                            }
                            log.errors.push(msg);
                        }
                        log
                    }));
                }
                tokio::spawn(async move {
                    for rx in readies {
                        match rx.await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return ready.send(Err(e)),
                            Err(_) => return ready.send(Err("a publisher ended before publishing".into())),
                        }
                    }
                    ready.send(Ok(()))
                });
                let mut logs = Vec::with_capacity(tasks.len());
                for t in tasks {
                    logs.push(t.await.unwrap_or_else(|e| PubLog {
                        errors: vec![format!("publisher task panicked: {e}")],
                        ..PubLog::default()
                    }));
                }
                logs
            })
        })
        .expect("spawning the publisher thread")
}

async fn publish(
    input: &Input,
    rtmp: SocketAddr,
    stop: &AtomicBool,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
    log: &mut PubLog,
) -> Result<()> {
    let s = |v: &str| Amf0Value::String(v.into());
    let n = Amf0Value::Number;
    let stream = log.stream.clone();
    let stream = stream.as_str();
    let mut c = RtmpConn::open(rtmp, 64 * 1024).await.context("publisher")?;
    let tc_url = format!("rtmp://{rtmp}/live");
    c.connect_app("live", &tc_url, true).await.context("publisher")?;
    c.set_chunk_size(PUBLISH_CHUNK_SIZE).await?;
    c.command(0, &[s("releaseStream"), n(2.0), Amf0Value::Null, s(stream)]).await?;
    c.command(0, &[s("FCPublish"), n(3.0), Amf0Value::Null, s(stream)]).await?;
    let sid = c.create_stream(4.0).await.context("publisher")?;
    c.command(sid, &[s("publish"), n(5.0), Amf0Value::Null, s(stream), s("live")]).await?;
    c.wait_status("NetStream.Publish.Start").await.context("publish")?;
    if let Some(r) = ready.take() {
        let _ = r.send(Ok(()));
    }

    let set_data_frame = amf0::encode_all(&[s("@setDataFrame")]);
    let start = tokio::time::Instant::now();
    let mut cum = 0u64;
    let mut video_frames = 0u64;
    log.sends.reserve(4096);
    for lap in 0u32.. {
        log.loops = lap + 1;
        for t in &input.tags {
            if lap > 0 && t.header {
                continue;
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let rel = (t.timestamp - input.first_ts) as u64 + lap as u64 * input.loop_ms as u64;
            let mut ts = (rel + input.first_ts as u64) as u32;
            if input.ts_code && t.tag_type == TAG_VIDEO && !t.header {
                ts += crate::input::ts_code(video_frames);
                video_frames += 1;
            }
            let due = start + Duration::from_millis(rel);
            // Wait for the tag's instant, reading (and answering) whatever the server sends meanwhile.
            let sleep = tokio::time::sleep_until(due);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut sleep => break,
                    r = c.sock.read_buf(&mut c.rbuf) => {
                        let got = r.context("publisher read")?;
                        if got == 0 {
                            bail!("livegate closed the publisher connection");
                        }
                        c.account(got);
                        while let Some(m) = c.poll_message()? {
                            if let Some(cmd) = parse_command(&m)? {
                                if let Some(e) = status_error(&cmd) {
                                    bail!("livegate sent the publisher: {e}");
                                }
                            }
                        }
                    }
                }
            }
            let behind = tokio::time::Instant::now().duration_since(due);
            log.max_late_us = log.max_late_us.max(behind.as_micros() as u64);
            if behind > Duration::from_millis(50) {
                log.late += 1;
                LATE.fetch_add(1, Ordering::Relaxed);
            }
            let (type_id, csid) = match t.tag_type {
                TAG_AUDIO => (AUDIO, 4),
                TAG_VIDEO => (VIDEO, 6),
                TAG_SCRIPT => (DATA_AMF0, 5),
                _ => continue,
            };
            let prefix: &[u8] = if t.tag_type == TAG_SCRIPT { &set_data_frame } else { &[] };
            chunk::encode_message(&mut c.out, c.out_chunk, csid, ts, type_id, sid, &[prefix, &t.body]);
            cum += t.body.len() as u64;
            SENT_BYTES.fetch_add(t.body.len() as u64, Ordering::Relaxed);
            log.sends.push(SendRec {
                at_ns: now_ns(),
                timestamp: ts,
                pts: ts.wrapping_add_signed(t.cts),
                tag_type: t.tag_type,
                header: t.header,
                cum_bytes: cum,
            });
            c.flush().await.context("publisher write")?;
        }
    }
    Ok(())
}
