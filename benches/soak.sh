#!/usr/bin/env bash
# Soak (#15): one release livegate under every kind of load at once for SECS seconds, its RSS, open file
# descriptors and threads sampled every 10 s. Flat after warm-up is the pass mark; the curve is the result.
#
#   READERS HTTP-FLV readers of one 720p30 stream (livegate-load --attach, its own publisher)
#   WHEP WebRTC viewers with Opus audio of a second stream (livegate-load --proto whep --whep-audio)
#   PUBLISHERS more pushes (livegate-load --readers 0 --publishers N), every push auto-recorded to FLV
#     (fragment_secs 60, so files open and close all along)
#   churn: a push of 2 s with an HTTP-FLV reader and an RTMP reader every 5 s on a new stream name, and an API
#     MP4 recording of one of the pushes started and stopped every 30 s
#
# usage: benches/soak.sh [SECS=600] [READERS=1000] [WHEP=50] [PUBLISHERS=20]
# Prints the samples (CSV) and a summary; keeps them in target/soak/samples.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-600}
READERS=${2:-1000}
WHEP=${3:-50}
PUBLISHERS=${4:-20}
OUT=target/soak
mkdir -p "$OUT"
cargo build --release --quiet --bin livegate --bin livegate-load
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/livegate.toml" <<EOF
[rtmp]
listen = "127.0.0.1:0"
max_connections = 5000
max_connections_per_addr = 0
[http]
listen = "127.0.0.1:0"
max_connections = 5000
max_connections_per_addr = 0
[webrtc]
udp_mux_port = 0
udp_port_min = 0
udp_port_max = 0
[apps.live]
record = ["flv"]
[record]
root = "$dir/rec"
fragment_secs = 60
[log]
level = "warn"
EOF
ulimit -n "$(ulimit -Hn)"
target/release/livegate serve --config "$dir/livegate.toml" --ready-file "$dir/ready.json" > "$OUT/livegate.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -s "$dir/ready.json" ] && break; sleep 0.1; done
rtmp=$(python3 -c "import json; print(json.load(open('$dir/ready.json'))['rtmp'])")
http=$(python3 -c "import json; print(json.load(open('$dir/ready.json'))['http'])")
attach="$pid,$rtmp,$http"
echo "livegate pid $pid rtmp $rtmp http $http; $SECS s: $READERS FLV readers, $WHEP WHEP viewers, $PUBLISHERS publishers (recorded), churn"

sample() {
  local t=$1
  local rss fds threads cpu
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  threads=$(awk '/^Threads/ {print $2}' "/proc/$pid/status")
  fds=$(ls "/proc/$pid/fd" | wc -l)
  cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$pid/stat")
  echo "$t,$rss,$fds,$threads,$cpu"
}
echo "secs,rss_kib,fds,threads,cpu_secs" > "$OUT/samples.csv"
sample 0 >> "$OUT/samples.csv"

load="target/release/livegate-load --attach $attach --secs $SECS --settle-secs 0"
$load --readers 0 --publishers "$PUBLISHERS" --stream soak --ramp-ms 200 > "$OUT/publishers.txt" 2>&1 &
$load --readers "$READERS" --proto flv --stream load --ramp-ms 5 > "$OUT/readers.txt" 2>&1 &
$load --readers "$WHEP" --proto whep --whep-audio --stream whep --ramp-ms 50 > "$OUT/whep.txt" 2>&1 &

input=$(ls target/load-input-720p.flv 2>/dev/null || true)
churn() {
  local i=0 rec=0
  local t0=$SECONDS
  while [ $((SECONDS - t0)) -lt "$SECS" ]; do
    i=$((i + 1))
    if [ -n "$input" ]; then
      ( curl -s -o /dev/null --max-time 8 --retry 5 --retry-delay 1 --retry-all-errors "http://$http/live/churn-$i.flv" & \
        timeout 8 ffmpeg -v error -i "rtmp://$rtmp/live/churn-$i" -t 1 -c copy -f null - 2>/dev/null & \
        timeout 10 ffmpeg -v error -t 2 -i "$input" -c copy -f flv "rtmp://$rtmp/live/churn-$i" 2>/dev/null; wait ) &
    fi
    if [ $((i % 6)) -eq 0 ]; then
      rec=$((rec + 1))
      curl -s -o /dev/null -X POST "http://$http/api/v1/recordings" -H 'Content-Type: application/json' \
        -d "{\"app\":\"live\",\"stream\":\"soak-0\",\"formats\":[\"mp4\"],\"record_id\":\"soak-$rec\"}" || true
      [ $rec -gt 1 ] && curl -s -o /dev/null -X DELETE "http://$http/api/v1/recordings/soak-$((rec - 1))" || true
    fi
    sleep 5
    input=$(ls target/load-input-720p.flv 2>/dev/null || true)
  done
}
churn &

start=$SECONDS
while [ $((SECONDS - start)) -lt $((SECS + 15)) ]; do
  sleep 10
  kill -0 $pid 2>/dev/null || { echo "livegate died"; break; }
  sample $((SECONDS - start)) >> "$OUT/samples.csv"
done
wait %2 %3 %4 2>/dev/null || true
cat "$OUT/samples.csv"
python3 - "$OUT/samples.csv" "$SECS" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]))]
# From the end of warm-up to the end of the load (the last samples are taken as the tools disconnect).
warm = [r for r in rows if 120 <= int(r["secs"]) <= int(sys.argv[2])]
if len(warm) >= 2:
    a, b = warm[0], warm[-1]
    for k in ("rss_kib", "fds", "threads"):
        vals = [int(r[k]) for r in warm]
        print(f"{k:8} after warm-up (120 s): {a[k]:>8} -> end of load {b[k]:>8}   min {min(vals)} max {max(vals)}")
    cpu = (float(b["cpu_secs"]) - float(a["cpu_secs"])) / (int(b["secs"]) - int(a["secs"]))
    print(f"livegate CPU {cpu:.2f} cores over the same window")
PY
for f in readers publishers whep; do echo "== $f"; grep -E "behind|lost|CPU|readers|viewers|publishers|summary" "$OUT/$f.txt" | head -12; done
