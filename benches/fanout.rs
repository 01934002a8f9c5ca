//! Micro-benchmarks of the hot path: building a frame's FLV tag and RTMP chunks (once per stream), and the
//! per-reader cost of fanning one frame out to 1,000 readers (what every reader pays per frame).
//!
//! `cargo bench --bench fanout`; criterion prints time per element, i.e. per frame or per reader-frame.

use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Instant;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use livegate::events::EventBus;
use livegate::hub::{CachePolicy, Hub, HubOptions, Packet, Protocol, PublisherInfo, StreamKey};
use livegate::media::{Codec, Frame, MediaKind};

fn video_frame(dts: i64, keyframe: bool, size: usize) -> Frame {
    Frame {
        kind: MediaKind::Video,
        codec: Codec::H264,
        dts,
        cts: 0,
        keyframe,
        config: false,
        payload: Bytes::from(vec![0x42u8; size]),
    }
}

fn serialize(c: &mut Criterion) {
    let mut g = c.benchmark_group("serialize");
    g.throughput(Throughput::Elements(1));
    // 6 KiB: an average 1.5 Mbit/s 30 fps video frame.
    g.bench_function("flv_tag_6k", |b| {
        b.iter_batched(
            || Packet::new(0, video_frame(1000, false, 6 * 1024), Instant::now()),
            |p| black_box(p.flv_tag().len()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("rtmp_chunks_6k", |b| {
        b.iter_batched(
            || Packet::new(0, video_frame(1000, false, 6 * 1024), Instant::now()),
            |p| black_box(p.rtmp_chunks().len()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn fanout(c: &mut Criterion) {
    const READERS: usize = 1000;
    // Streams run their flusher task on the runtime; the readers here are polled by hand.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _rt = rt.enter();
    let hub = Hub::new(
        HubOptions {
            merge_window: std::time::Duration::ZERO,
            audio_hold: std::time::Duration::ZERO,
            ..HubOptions::default()
        },
        EventBus::new(),
    );
    let key = StreamKey::new("live", "bench");
    let pub_client = hub.register_client(Protocol::Rtmp, None);
    let info =
        PublisherInfo { client_id: pub_client.handle.id, protocol: Protocol::Rtmp, addr: None, param: String::new() };
    let mut publisher = hub.publish(key.clone(), info, pub_client.handle.clone()).unwrap();
    publisher.push_raw(video_frame(0, true, 6 * 1024), 0, Instant::now());
    let policy = CachePolicy {
        min_cache: std::time::Duration::from_secs(1),
        max_cache: std::time::Duration::from_secs(3),
        max_skips_per_minute: 1000,
        low_latency: false,
    };
    let guards: Vec<_> = (0..READERS).map(|_| hub.register_client(Protocol::HttpFlv, None)).collect();
    let mut readers: Vec<_> =
        guards.iter().map(|g| hub.subscribe(&key, Protocol::HttpFlv, policy, g.handle.clone()).unwrap()).collect();
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut out: Vec<Arc<Packet>> = Vec::new();
    for r in &mut readers {
        let _ = r.poll_batch(&mut cx, &mut out);
        out.clear();
    }
    let mut ts = 33u32;
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(READERS as u64));
    g.bench_function("one_frame_to_1000_flv_readers", |b| {
        b.iter(|| {
            publisher.push_raw(video_frame(0, ts.is_multiple_of(2000), 6 * 1024), ts, Instant::now());
            ts += 33;
            let mut bytes = 0;
            for r in &mut readers {
                if r.poll_batch(&mut cx, &mut out).is_ready() {
                    for p in out.drain(..) {
                        bytes += p.flv_tag().clone().len();
                    }
                }
            }
            black_box(bytes)
        })
    });
    g.finish();
}

criterion_group!(benches, serialize, fanout);
criterion_main!(benches);
