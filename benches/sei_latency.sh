#!/usr/bin/env bash
# SEI on the WHEP data channel (issue #14): how long an injected message takes from `POST …/sei` to a
# Chromium page's `sei` data channel. A release livegate on free loopback ports; `ffmpeg -re -c copy` pushes
# the 640x360 30 fps H.264 + AAC input (target/hls-input-g60.flv, made by benches/hls_bench.sh, else here);
# tests/browser/whep_sei.mjs plays it over WHEP and, once frames decode, injects COUNT messages 250 ms apart,
# RUNS times. Each latency is the page's arrival time minus the instant before the POST (one clock): it
# includes the wait for the stream's next video frame (up to 33 ms at 30 fps), which is where an injected
# message rides, and the API call itself.
# usage: benches/sei_latency.sh    env: RUNS=3 COUNT=40 LIVEGATE_BIN BUILD=1 OUT=target/sei-bench-out
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${LIVEGATE_BIN:-$TARGET/release/livegate}
[ "${BUILD:-1}" = 1 ] && cargo build --release --quiet --bin livegate
RUNS=${RUNS:-3}
COUNT=${COUNT:-40}
OUT=${OUT:-target/sei-bench-out}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/livegate-sei-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
INPUT=target/hls-input-g60.flv
if [ ! -s "$INPUT" ]; then
  ffmpeg -v error -y -f lavfi -i testsrc2=size=640x360:rate=30 -f lavfi -i sine=frequency=440:sample_rate=44100 \
    -t 90 -c:v libx264 -preset veryfast -g 60 -keyint_min 60 -sc_threshold 0 -bf 0 -pix_fmt yuv420p \
    -c:a aac -b:a 64k -f flv "$INPUT"
fi
printf '[rtmp]\nlisten = "127.0.0.1:0"\n[http]\nlisten = "127.0.0.1:0"\n[log]\nlevel = "warn"\n' > "$WORK/livegate.toml"
"$BIN" serve --config "$WORK/livegate.toml" --ready-file "$WORK/ready.json" > "$WORK/livegate.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do [ -s "$WORK/ready.json" ] && break; sleep 0.1; done
RTMP=$(jq -r .rtmp "$WORK/ready.json")
HTTP=$(jq -r .http "$WORK/ready.json")
ffmpeg -v error -re -stream_loop -1 -i "$INPUT" -c copy -f flv "rtmp://$RTMP/live/sei" &
PIDS+=($!)
for _ in $(seq 200); do
  curl -sf "http://$HTTP/api/v1/streams/live/sei" | jq -e '(.media_ms // 0) > 0' > /dev/null 2>&1 && break
  sleep 0.1
done
for run in $(seq "$RUNS"); do
  node tests/browser/whep_sei.mjs "http://$HTTP/whep/live/sei" $((COUNT / 4 + 4)) \
    "http://$HTTP/api/v1/streams/live/sei/sei" "$COUNT" 2> /dev/null |
    jq -c --arg run "$run" --arg tag "$(git rev-parse --short HEAD)" --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
      '{tag: $tag, run: $run, load: $load, received: (.latency_ms | length), latency_ms: .latency_ms}' |
    tee -a "$OUT/latency.jsonl"
done
jq -s '[.[].latency_ms[]] | sort | {n: length, p50: .[length / 2 | floor], p95: .[length * 0.95 | floor], max: .[-1]}' \
  <(tail -n "$RUNS" "$OUT/latency.jsonl")
