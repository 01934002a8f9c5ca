//! Micro-benchmarks of a publisher's ingest: what one frame costs the hub on its way in (no readers), and the
//! health meter's share of it (issue #14: quality tracking must not measurably cost the live path).
//!
//! `cargo bench --bench ingest`; criterion prints time per frame (and per stream for a health reading).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use livegate::events::EventBus;
use livegate::health::{IngestMeter, PlayerMeter, PlayerSample};
use livegate::hub::{Hub, HubOptions, Protocol, PublisherInfo, StreamKey};
use livegate::media::{Codec, Frame, MediaKind};

fn frame(kind: MediaKind, keyframe: bool, size: usize) -> Frame {
    let codec = if kind == MediaKind::Video { Codec::H264 } else { Codec::Aac };
    Frame { kind, codec, dts: 0, cts: 0, keyframe, config: false, payload: Bytes::from(vec![0x42u8; size]) }
}

/// One frame into a stream nobody reads: 30 fps video (6 KiB) and 43 AAC frames a second interleaved, as a
/// 1.5 Mbit/s camera sends them.
fn push(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _rt = rt.enter();
    let hub = Hub::new(HubOptions { retention: Duration::from_secs(2), ..HubOptions::default() }, EventBus::new());
    let client = hub.register_client(Protocol::Rtmp, None);
    let info =
        PublisherInfo { client_id: client.handle.id, protocol: Protocol::Rtmp, addr: None, param: String::new() };
    let mut publisher = hub.publish(StreamKey::new("live", "ingest"), info, client.handle.clone()).unwrap();
    let (video, audio) = (frame(MediaKind::Video, false, 6 * 1024), frame(MediaKind::Audio, false, 256));
    let key = frame(MediaKind::Video, true, 6 * 1024);
    let start = Instant::now();
    let mut n = 0u64;
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hub_push_one_frame", |b| {
        b.iter(|| {
            // 73 frames per media second: 30 video (a keyframe every 60), 43 audio.
            let ts = (n * 1000 / 73) as u32;
            let f = match n % 73 {
                k if k % 2 == 0 && k < 60 => {
                    if n.is_multiple_of(73 * 2) {
                        key.clone()
                    } else {
                        video.clone()
                    }
                }
                _ => audio.clone(),
            };
            publisher.push_raw(f, ts, start + Duration::from_millis(u64::from(ts)));
            n += 1;
        })
    });
    g.finish();
}

fn meter(c: &mut Criterion) {
    let mut g = c.benchmark_group("health");
    g.throughput(Throughput::Elements(1));
    let mut m = IngestMeter::default();
    let mut n = 0u64;
    g.bench_function("observe_one_frame", |b| {
        b.iter(|| {
            let at = n * 1000 / 73;
            let kind = if n % 73 < 30 { MediaKind::Video } else { MediaKind::Audio };
            m.observe(black_box(at + n % 7), kind, n.is_multiple_of(146), false, at as i64, 6 * 1024);
            n += 1;
        })
    });
    let mut s = 0u64;
    g.bench_function("evaluate_one_stream", |b| {
        b.iter(|| {
            s += 1000;
            black_box(m.evaluate(n * 1000 / 73 + s % 1000))
        })
    });
    // One player's once-a-second judgement (its meter keeps 10 s of samples), as the ticker makes it.
    let mut p = PlayerMeter::default();
    let mut t = 0u64;
    g.bench_function("evaluate_one_player", |b| {
        b.iter(|| {
            t += 1;
            let sample = PlayerSample {
                backlog_ms: (t % 5) as i64 * 40,
                skips: t / 600,
                stalls: t / 60,
                bytes_out: t * 190_000,
                loss_percent: None,
                stream_head_ms: Some(t as i64 * 1000),
            };
            black_box(p.evaluate(t * 1000, sample))
        })
    });
    g.finish();
}

criterion_group!(benches, push, meter);
criterion_main!(benches);
