#!/usr/bin/env bash
# Memory returned after publish churn, per allocator (#15 item 4): jemalloc (the default feature), glibc's malloc
# (`--no-default-features`) and mimalloc (`--no-default-features --features mimalloc`). Each build of livegate is started on its embedded default
# config (ports 0), then CYCLES pushes of a 2 s 720p H.264 + AAC FLV (ffmpeg, stream copy, as fast as livegate
# takes it, PARALLEL at a time), each with an HTTP-FLV reader, come and go. RSS is read from /proc after start,
# right after the churn, and after IDLE seconds with nothing connected.
#
# usage: benches/alloc_churn.sh [CYCLES=500] [PARALLEL=8] [IDLE=20] [ALLOCATORS="glibc jemalloc mimalloc"]
set -euo pipefail
cd "$(dirname "$0")/.."
CYCLES=${1:-500}
PARALLEL=${2:-8}
IDLE=${3:-20}
ALLOCATORS=${4:-"glibc jemalloc mimalloc"}
OUT=target/alloc
mkdir -p "$OUT"
INPUT=$OUT/input-720p-2s.flv
if [ ! -f "$INPUT" ]; then
  ffmpeg -v error -y -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440:sample_rate=44100 \
    -t 2 -c:v libx264 -preset veryfast -b:v 1500k -g 30 -bf 0 -pix_fmt yuv420p -c:a aac -b:a 64k -f flv "$INPUT"
fi

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

for a in $ALLOCATORS; do
  case $a in
    glibc) features="--no-default-features" ;;
    jemalloc) features="" ;;  # the default
    *) features="--no-default-features --features $a" ;;
  esac
  # shellcheck disable=SC2086
  cargo build --release --quiet --bin livegate $features
  cp target/release/livegate "$OUT/livegate-$a"
done

printf '%-9s %8s %8s %8s %8s %10s\n' allocator start_MB churn_MB idle_MB peak_MB churn_secs
for a in $ALLOCATORS; do
  dir=$(mktemp -d)
  printf '[rtmp]\nlisten = "127.0.0.1:0"\n[http]\nlisten = "127.0.0.1:0"\n[record]\nroot = "%s/rec"\n[log]\nlevel = "warn"\n' \
    "$dir" > "$dir/livegate.toml"
  "$OUT/livegate-$a" serve --config "$dir/livegate.toml" --ready-file "$dir/ready.json" > "$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do [ -s "$dir/ready.json" ] && break; sleep 0.1; done
  rtmp=$(python3 -c "import json,sys; print(json.load(open('$dir/ready.json'))['rtmp'])")
  http=$(python3 -c "import json,sys; print(json.load(open('$dir/ready.json'))['http'])")
  sleep 2
  start=$(rss_kib $pid)
  t0=$(date +%s.%N)
  cycle() {
    local i=$1
    curl -s -o /dev/null --max-time 6 --retry 5 --retry-delay 1 --retry-all-errors "http://$http/live/churn-$i.flv" &
    ffmpeg -v error -i "$INPUT" -c copy -f flv "rtmp://$rtmp/live/churn-$i" || true
    wait
  }
  export -f cycle
  export INPUT rtmp http
  seq "$CYCLES" | xargs -P "$PARALLEL" -I{} bash -c 'cycle {}'
  t1=$(date +%s.%N)
  churn=$(rss_kib $pid)
  sleep "$IDLE"
  idle=$(rss_kib $pid)
  peak=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
  kill -TERM $pid
  wait $pid || true
  printf '%-9s %8.1f %8.1f %8.1f %8.1f %10.1f\n' "$a" "$(echo "$start/1024" | bc -l)" "$(echo "$churn/1024" | bc -l)" \
    "$(echo "$idle/1024" | bc -l)" "$(echo "$peak/1024" | bc -l)" "$(echo "$t1-$t0" | bc -l)"
  rm -rf "$dir"
done
