//! The publisher: sends the input file over RTMP paced by tag timestamps, as `ffmpeg -re -c copy` does, and
//! logs the wall-clock instant each tag left.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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
    pub tag_type: u8,
    /// Script data or a codec sequence header.
    pub header: bool,
    /// Tag body bytes sent so far, this tag included.
    pub cum_bytes: u64,
}

#[derive(Default)]
pub struct PubLog {
    pub sends: Vec<SendRec>,
    /// Why publishing stopped early, or notices (error statuses) the server sent.
    pub errors: Vec<String>,
    pub loops: u32,
    /// Tags sent more than 50 ms after their due instant (the publisher itself fell behind).
    pub late: u64,
}

/// Runs the publisher on its own thread and current-thread runtime, so reader load cannot disturb its pacing.
/// `ready` fires when livegate answered NetStream.Publish.Start (or with the error).
pub fn spawn(
    input: Arc<Input>,
    rtmp: SocketAddr,
    stream: String,
    stop: Arc<AtomicBool>,
    ready: oneshot::Sender<Result<(), String>>,
) -> std::thread::JoinHandle<PubLog> {
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("publisher runtime");
            rt.block_on(async move {
                let mut log = PubLog::default();
                let mut ready = Some(ready);
                if let Err(e) = publish(&input, rtmp, &stream, &stop, &mut ready, &mut log).await {
                    let msg = format!("{e:#}");
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(msg.clone()));
                    }
                    log.errors.push(msg);
                }
                log
            })
        })
        .expect("spawning the publisher thread")
}

async fn publish(
    input: &Input,
    rtmp: SocketAddr,
    stream: &str,
    stop: &AtomicBool,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
    log: &mut PubLog,
) -> Result<()> {
    let s = |v: &str| Amf0Value::String(v.into());
    let n = Amf0Value::Number;
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
            let ts = (rel + input.first_ts as u64) as u32;
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
            if tokio::time::Instant::now().duration_since(due) > Duration::from_millis(50) {
                log.late += 1;
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
            log.sends.push(SendRec {
                at_ns: now_ns(),
                timestamp: ts,
                tag_type: t.tag_type,
                header: t.header,
                cum_bytes: cum,
            });
            c.flush().await.context("publisher write")?;
        }
    }
    Ok(())
}
