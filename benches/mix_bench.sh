#!/usr/bin/env bash
# Mix benchmark (issue 5): N x 640x360 H.264+AAC inputs (30 fps, ffmpeg -re -c copy over RTMP) -> one grid mix,
# 1280x720 30 fps H.264 2 Mbit/s + AAC 48 kHz stereo, from a release livegate.
#
# For each N it reports:
#   ingest cores  livegate's CPU with the N publishers and no mix (utime+stime from /proc/PID/stat over WINDOW s)
#   mix cores     livegate's CPU with the mix running, minus the ingest figure: what mixing costs
#   out fps       output frames per second (frames_out from GET /api/v1/mixes/{id} over the window; above 30
#                 means the mix had fallen behind and was catching up: the CPUs were short)
#   latency       what the mix adds, measured inside livegate (GET .../mixes/{id} latency_ms): from an input
#                 video frame's arrival in the hub to the publication in the hub of the first output frame
#                 whose timestamp covers it -- decode, compositor wait (mix.latency_ms), encode, all included;
#                 RTMP ingest and player buffering are not (they are the same with or without a mix).
#
# usage: benches/mix_bench.sh [N ...]        (default: 4 2 9 16)
# env:   LIVEGATE_BIN (default target/release/livegate), WINDOW (seconds, default 10), MIXES (default 1: how
#        many identical grid mixes of the same inputs run at once; they share one decoder per input, so each
#        mix after the first costs its compositor and encoders only; fps, latency and live are the first mix's)
# The machine's other users share the CPUs: run it on a quiet machine, and read the figures as upper bounds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${LIVEGATE_BIN:-$ROOT/target/release/livegate}
WINDOW=${WINDOW:-10}
MIXES=${MIXES:-1}
COUNTS=("$@")
[ ${#COUNTS[@]} -eq 0 ] && COUNTS=(4 2 9 16)
[ -x "$BIN" ] || { echo "build first: cargo build --release (no $BIN)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/livegate-mixbench.XXXXXX)
MEDIA=$ROOT/target/bench-media
mkdir -p "$MEDIA"
PIDS=()
LG=""
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "$LG" ] && kill "$LG" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RTMP=$(free_port)
HTTP=$(free_port)
cat > "$WORK/livegate.toml" <<EOF
[rtmp]
listen = "127.0.0.1:$RTMP"
[http]
listen = "127.0.0.1:$HTTP"
[record]
root = "$WORK/rec"
[log]
level = "warn"
EOF
"$BIN" serve --config "$WORK/livegate.toml" > "$WORK/livegate.log" 2>&1 &
LG=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$HTTP/healthz" > /dev/null && break; sleep 0.1; done

api() { curl -sf -X "$1" -H "Content-Type: application/json" "http://127.0.0.1:$HTTP/api/v1/$2" ${3:+-d "$3"}; }
jget() { python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }
ticks() { awk '{print $14+$15}' "/proc/$LG/stat"; }
HZ=$(getconf CLK_TCK)
cores_over() {  # cores used by livegate over $1 seconds
    local a b
    a=$(ticks); sleep "$1"; b=$(ticks)
    python3 -c "print(f'{($b-$a)/$HZ/$1:.2f}')"
}

# 16 distinct inputs: colour bars with a moving element (so the encoder has real work) and a tone each.
for i in $(seq 0 15); do
    f=$MEDIA/in$i.flv
    [ -f "$f" ] && continue
    ffmpeg -v error -y -f lavfi -i "testsrc2=size=640x360:rate=30" -f lavfi -i "sine=frequency=$((300 + 50 * i)):sample_rate=48000" \
        -t 20 -vf "hue=h=$((i * 22))" -c:v libx264 -preset veryfast -g 60 -bf 0 -b:v 800k -pix_fmt yuv420p \
        -c:a aac -b:a 64k -f flv "$f.tmp" && mv "$f.tmp" "$f"
done

printf "%-7s %-13s %-10s %-8s %-22s %s\n" inputs ingest_cores mix_cores out_fps "latency avg/max ms" "system load (1 min)"
for N in "${COUNTS[@]}"; do
    PIDS=()
    for i in $(seq 0 $((N - 1))); do
        ffmpeg -v error -re -stream_loop -1 -i "$MEDIA/in$i.flv" -c copy -f flv "rtmp://127.0.0.1:$RTMP/live/in$i" \
            > /dev/null 2>&1 &
        PIDS+=($!)
    done
    sleep 3
    ingest=$(cores_over 5)
    inputs=$(python3 -c "import json; print(json.dumps([{'stream': f'live/in{i}'} for i in range($N)]))")
    for m in $(seq 2 "$MIXES"); do
        api POST mixes "{\"id\":\"bench$m\",\"template\":\"grid\",\"inputs\":$inputs,\"output\":{\"stream\":\"live/bench$m-mix\",\"width\":1280,\"height\":720,\"fps\":30,\"video_bitrate\":2000,\"gop_secs\":2,\"audio_bitrate\":96000}}" > /dev/null
    done
    api POST mixes "{\"id\":\"bench\",\"template\":\"grid\",\"inputs\":$inputs,\"output\":{\"stream\":\"live/bench-mix\",\"width\":1280,\"height\":720,\"fps\":30,\"video_bitrate\":2000,\"gop_secs\":2,\"audio_bitrate\":96000}}" > /dev/null
    sleep 5  # warm-up: every input joined and decoding
    f0=$(api GET mixes/bench | jget "j['frames_out']")
    t0=$(date +%s.%N)
    total=$(cores_over "$WINDOW")
    state=$(api GET mixes/bench)
    t1=$(date +%s.%N)
    f1=$(echo "$state" | jget "j['frames_out']")
    lat=$(echo "$state" | jget "f\"{j['latency_ms']['avg']:.0f}/{j['latency_ms']['max_since_last_get']:.0f}\"")
    live=$(echo "$state" | jget "sum(1 for i in j['inputs'] if i['state'] == 'live')")
    mix=$(python3 -c "print(f'{$total-$ingest:.2f}')")
    fps=$(python3 -c "print(f'{($f1-$f0)/($t1-$t0):.1f}')")
    printf "%-7s %-13s %-10s %-8s %-22s %s\n" "$N ($live live)" "$ingest" "$mix" "$fps" "$lat" "$(cut -d' ' -f1 /proc/loadavg)"
    api DELETE mixes/bench > /dev/null
    for m in $(seq 2 "$MIXES"); do api DELETE "mixes/bench$m" > /dev/null; done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 12  # let the input streams' reconnect grace run out
done
