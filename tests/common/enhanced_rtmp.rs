//! A small H.265 publisher of the tests' own, because Debian's ffmpeg 5.1 and GStreamer 1.22 cannot publish HEVC
//! over RTMP. Deliberately built from nothing of livegate's (its own handshake, chunking, AMF0 and FLV bodies),
//! so a bug shared by livegate's reader and writer cannot cancel out. It sends what OBS 30 sends (Enhanced
//! RTMP, fourcc `hvc1`) or what Chinese encoders sent before it (FLV codec id 12), from an x265 Annex-B file.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// 320x240 at 25 fps, 4 s, a keyframe every second, no B-frames: x265 from lavfi testsrc2, cached per machine.
pub fn hevc_media() -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-media");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hevc-320x240.h265");
    if path.exists() {
        return path;
    }
    let tmp = dir.join(format!("hevc.{}.tmp.h265", std::process::id()));
    let out = Command::new("ffmpeg")
        .args(["-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "4"])
        .args(["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p"])
        .args(["-x265-params", "log-level=none:keyint=25:min-keyint=25:scenecut=0:bframes=0:repeat-headers=1"])
        .args(["-f", "hevc"])
        .arg(&tmp)
        .output()
        .expect("run ffmpeg");
    assert!(out.status.success(), "ffmpeg (libx265) failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// An HEVC elementary stream cut into what an encoder hands its muxer: the `hvcC` record and access units
/// (4-byte length-prefixed NAL units, parameter sets left out), each with its keyframe flag.
pub struct HevcStream {
    pub hvcc: Vec<u8>,
    pub units: Vec<(bool, Vec<u8>)>,
}

fn nal_type(nal: &[u8]) -> u8 {
    (nal[0] >> 1) & 0x3F
}

impl HevcStream {
    pub fn load(path: &Path) -> HevcStream {
        let data = std::fs::read(path).unwrap();
        // Split at start codes (00 00 01, with or without a leading zero).
        let mut starts = Vec::new();
        let mut i = 0;
        while i + 3 <= data.len() {
            if data[i..i + 3] == [0, 0, 1] {
                starts.push(i + 3);
                i += 3;
            } else {
                i += 1;
            }
        }
        let mut nals: Vec<&[u8]> = Vec::new();
        for (k, &s) in starts.iter().enumerate() {
            let mut end = starts.get(k + 1).map_or(data.len(), |n| n - 3);
            while end > s && data[end - 1] == 0 {
                end -= 1; // the leading zero of the next 4-byte start code
            }
            nals.push(&data[s..end]);
        }
        let (mut vps, mut sps, mut pps) = (None, None, None);
        let mut units: Vec<(bool, Vec<u8>)> = Vec::new();
        let mut current: Option<(bool, Vec<u8>, bool)> = None; // (key, payload, has a slice)
        for nal in nals {
            let t = nal_type(nal);
            match t {
                32 => vps = Some(nal.to_vec()),
                33 => sps = Some(nal.to_vec()),
                34 => pps = Some(nal.to_vec()),
                _ => {}
            }
            let vcl = t < 32;
            // A new access unit: a slice that starts a picture, or a non-VCL unit after the picture's slices.
            let first_slice = vcl && nal.get(2).is_some_and(|b| b & 0x80 != 0);
            let starts_au = match &current {
                Some((_, _, has_slice)) => (vcl && first_slice) || (!vcl && *has_slice),
                None => true,
            };
            if starts_au {
                if let Some((key, payload, true)) = current.take() {
                    units.push((key, payload));
                }
                current = Some((false, Vec::new(), false));
            }
            if (32..=34).contains(&t) {
                continue; // parameter sets travel in the hvcC
            }
            let cur = current.as_mut().unwrap();
            cur.0 |= (16..=23).contains(&t);
            cur.2 |= vcl;
            cur.1.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            cur.1.extend_from_slice(nal);
        }
        if let Some((key, payload, true)) = current {
            units.push((key, payload));
        }
        let (vps, sps, pps) = (vps.expect("VPS"), sps.expect("SPS"), pps.expect("PPS"));
        HevcStream { hvcc: hvcc(&vps, &sps, &pps), units }
    }
}

/// An `hvcC` (ISO/IEC 14496-15 §8.3.3.1) for one VPS, SPS and PPS, profile fields copied from the SPS.
fn hvcc(vps: &[u8], sps: &[u8], pps: &[u8]) -> Vec<u8> {
    // The SPS's RBSP (emulation prevention removed): byte 0 is ids and sub-layers, 1..13 the general profile,
    // tier and level exactly as hvcC lays them out.
    let mut rbsp = Vec::new();
    let mut zeros = 0;
    for &b in &sps[2..] {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let mut r = vec![1u8];
    r.extend_from_slice(&rbsp[1..13]);
    r.extend_from_slice(&[0xF0, 0x00, 0xFC, 0xFD, 0xF8, 0xF8, 0x00, 0x00]);
    r.push(0x0F); // one temporal layer, nested, 4-byte NAL lengths
    r.push(3);
    for (t, nal) in [(32u8, vps), (33, sps), (34, pps)] {
        r.push(0x80 | t);
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&(nal.len() as u16).to_be_bytes());
        r.extend_from_slice(nal);
    }
    r
}

/// How the video tags are written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Form {
    /// Enhanced RTMP: `1 | frame type | packet type`, FourCC `hvc1`; coded frames alternate between packet type
    /// 1 (with a composition time) and 3 (without), as encoders do.
    Enhanced,
    /// FLV codec id 12, laid out like AVC.
    Legacy,
}

/// The FLV video tag body for a sequence header (`None`) or an access unit.
pub fn video_body(form: Form, unit: Option<(usize, bool, &[u8])>, hvcc: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    match (form, unit) {
        (Form::Enhanced, None) => {
            b.push(0x80 | 0x10);
            b.extend_from_slice(b"hvc1");
            b.extend_from_slice(hvcc);
        }
        (Form::Enhanced, Some((i, key, payload))) => {
            let frame_type = if key { 1 } else { 2 };
            let packet_type = if i % 2 == 0 { 1 } else { 3 };
            b.push(0x80 | (frame_type << 4) | packet_type);
            b.extend_from_slice(b"hvc1");
            if packet_type == 1 {
                b.extend_from_slice(&[0, 0, 0]);
            }
            b.extend_from_slice(payload);
        }
        (Form::Legacy, None) => {
            b.extend_from_slice(&[0x1C, 0, 0, 0, 0]);
            b.extend_from_slice(hvcc);
        }
        (Form::Legacy, Some((_, key, payload))) => {
            b.extend_from_slice(&[if key { 0x1C } else { 0x2C }, 1, 0, 0, 0]);
            b.extend_from_slice(payload);
        }
    }
    b
}

/// One RTMP publishing connection.
pub struct Publisher {
    sock: TcpStream,
    received: Vec<u8>,
}

const CHUNK: usize = 4096;

fn amf_str(o: &mut Vec<u8>, s: &str) {
    o.push(0x02);
    o.extend_from_slice(&(s.len() as u16).to_be_bytes());
    o.extend_from_slice(s.as_bytes());
}

fn amf_num(o: &mut Vec<u8>, n: f64) {
    o.push(0x00);
    o.extend_from_slice(&n.to_be_bytes());
}

impl Publisher {
    /// Connects, shakes hands, and publishes `app/name`: returns once the server said NetStream.Publish.Start.
    pub fn start(port: u16, app: &str, name: &str) -> Publisher {
        let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        sock.set_nodelay(true).unwrap();
        // Simple handshake: C0 C1, read S0 S1 S2, echo S1 as C2.
        let mut c1 = vec![0u8; 1536];
        for (i, b) in c1.iter_mut().enumerate().skip(8) {
            *b = (i * 7 + 3) as u8;
        }
        sock.write_all(&[3]).unwrap();
        sock.write_all(&c1).unwrap();
        let mut s = vec![0u8; 1 + 1536 + 1536];
        sock.read_exact(&mut s).unwrap();
        sock.write_all(&s[1..1537]).unwrap();
        let mut p = Publisher { sock, received: Vec::new() };
        p.send(2, 1, 0, 0, &(CHUNK as u32).to_be_bytes()); // Set Chunk Size
        let mut connect = Vec::new();
        amf_str(&mut connect, "connect");
        amf_num(&mut connect, 1.0);
        connect.push(0x03);
        for (k, v) in [
            ("app", app.to_owned()),
            ("type", "nonprivate".into()),
            ("tcUrl", format!("rtmp://127.0.0.1:{port}/{app}")),
        ] {
            connect.extend_from_slice(&(k.len() as u16).to_be_bytes());
            connect.extend_from_slice(k.as_bytes());
            amf_str(&mut connect, &v);
        }
        connect.extend_from_slice(&[0, 0, 9]);
        p.send(3, 20, 0, 0, &connect);
        p.wait_for("NetConnection.Connect.Success");
        let mut create = Vec::new();
        amf_str(&mut create, "createStream");
        amf_num(&mut create, 2.0);
        create.push(0x05);
        p.send(3, 20, 0, 0, &create);
        p.wait_for("_result");
        let mut publish = Vec::new();
        amf_str(&mut publish, "publish");
        amf_num(&mut publish, 3.0);
        publish.push(0x05);
        amf_str(&mut publish, name);
        amf_str(&mut publish, "live");
        p.send(8, 20, 1, 0, &publish);
        p.wait_for("NetStream.Publish.Start");
        p
    }

    /// Reads until `text` has been seen in what the server sent (its status messages are far smaller than a
    /// chunk, so the text is never split by a chunk header).
    fn wait_for(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while !self.received.windows(text.len()).any(|w| w == text.as_bytes()) {
            assert!(Instant::now() < deadline, "no {text} from the server");
            let n = self.sock.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "the server closed the connection before {text}: {:?}",
                String::from_utf8_lossy(&self.received)
            );
            self.received.extend_from_slice(&buf[..n]);
        }
        self.received.clear();
    }

    /// One message: a type-0 chunk header, then type-3 continuations every CHUNK bytes.
    pub fn send(&mut self, csid: u8, type_id: u8, stream_id: u32, ts: u32, body: &[u8]) {
        let mut out = Vec::with_capacity(body.len() + 16 + body.len() / CHUNK);
        out.push(csid);
        out.extend_from_slice(&ts.min(0xFF_FFFF).to_be_bytes()[1..]);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        out.push(type_id);
        out.extend_from_slice(&stream_id.to_le_bytes());
        for (i, part) in body.chunks(CHUNK).enumerate() {
            if i > 0 {
                out.push(0xC0 | csid);
            }
            out.extend_from_slice(part);
        }
        self.sock.write_all(&out).unwrap();
    }

    pub fn video(&mut self, ts: u32, body: &[u8]) {
        self.send(6, 9, 1, ts, body);
    }
}

/// A publisher sending `hevc_media()` in real time, looped with a continuous timeline, until dropped.
pub struct Paced {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Paced {
    pub fn start(port: u16, name: &str, form: Form) -> Paced {
        let stream = HevcStream::load(&hevc_media());
        let mut p = Publisher::start(port, "live", name);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            p.video(0, &video_body(form, None, &stream.hvcc));
            let start = Instant::now();
            for i in 0.. {
                if s.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let (key, payload) = &stream.units[i % stream.units.len()];
                let ts = i as u64 * 40;
                // A live encoder's pace: frame i leaves at i * 40 ms.
                super::pace(start, ts);
                p.video(ts as u32, &video_body(form, Some((i, *key, payload)), &stream.hvcc));
            }
        });
        Paced { stop, thread: Some(thread) }
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
