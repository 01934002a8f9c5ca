#!/usr/bin/env bash
# Low-Latency HLS figures (issue #13): release livegate(s) on free loopback ports, started here with temporary
# configs and --ready-file (as tests/common/mod.rs does), and three stages:
#
#   latency    hls.js (its defaults: lowLatencyMode, liveSyncDurationCount 3) in headless Chromium
#              (benches/hls_latency.mjs) plays a fresh `ffmpeg -re -c copy` push of a 640x360 30 fps H.264 + AAC
#              input with a frame counter burnt in, at GOP 60 and 30 frames (2 s, 1 s), in each variant (one
#              livegate, apps mpegts / fmp4 / lowlatency with their hls_variant): RUNS rounds, variants and GOPs
#              alternated; each run samples hls.latency, the program-date-time latency and the glass latency (the
#              frame on screen vs its capture instant) every 0.5 s for SECS s after playback starts. Before the
#              player comes, one playlist request starts the segmenter and WARM s pass (a viewer joining a stream
#              others already watch).
#   segmenter  per variant, a livegate with [hls] variant = it (idle_stop_secs = 2); livegate-load --attach is
#              STREAMS paced 720p30 publishers (its input: 1.5 Mbit/s, 2 s GOP); SEG_CYCLES cycles of: livegate's
#              CPU and RSS over WINDOW s with the publishers only, then, FILL s after every stream's segmenter
#              started (one playlist GET per stream per second, keep-alive, keeps them: hls_blocking.py poll), over WINDOW s
#              with them; the poller stops and the segmenters with it. Per stream = (with - without) / STREAMS,
#              CPU per cycle, RSS from the first cycle.
#   blocking   a lowlatency livegate, one `ffmpeg -re` push (GOP 60), hls_blocking.py block with 1 client and with
#              WAITERS clients each keeping a request blocked on the next part, BWINDOW s each, BREPS times.
#
#   Players (MATRIX = VARIANT:PLAYER pairs): default = hls.js's defaults; catchup = its defaults with
#   maxLiveSyncPlaybackRate 1.5 (it may play faster to reach its target latency, as the demo page does for
#   Low-Latency playlists); sync2 = {lowLatencyMode: false, liveSyncDurationCount: 2} (the demo page's classic).
#
# usage: benches/hls_bench.sh [latency] [segmenter] [blocking] [summary]   (none: all, then the summary)
#   env: RUNS=5 SECS=10 WARM=8 GOPS="60 30" MATRIX="mpegts:default fmp4:default lowlatency:default
#        lowlatency:catchup"   VARIANTS="mpegts fmp4 lowlatency" (segmenter stage)
#        STREAMS=20 SETTLE=12 SEG_CYCLES=3 WINDOW=20 FILL=20 SEG_REPS=1   WAITERS=1000 BWINDOW=30 BREPS=2
#        LIVEGATE_BIN (another livegate build to measure) TAG (recorded with each result; default: HEAD's hash)
#        MAX_LOAD=1.5 LOAD_WAIT=600 (each measured run waits until the 1-minute load is <= MAX_LOAD, up to
#        LOAD_WAIT s, and records the load at its start and end)   BUILD=1 (0: use the binaries as they are)
#        CARGO_TARGET_DIR (the binaries are $CARGO_TARGET_DIR/release/*, else target/release/*)
#        OUT=target/hls-bench-out (results: latency.jsonl, segmenter.jsonl, blocking.jsonl; appended to)
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${LIVEGATE_BIN:-$TARGET/release/livegate}
LOAD=$TARGET/release/livegate-load
if [ "${BUILD:-1}" = 1 ]; then
  cargo build --release --quiet --bin livegate --bin livegate-load
fi
for b in $BIN $LOAD; do
  [ -x "$b" ] || { echo "$b not found: cargo build --release first (or BUILD=1)" >&2; exit 1; }
done
[ -f tests/browser/node_modules/hls.js/dist/hls.min.js ] || { echo "run scripts/setup.sh (npm ci in tests/browser)" >&2; exit 1; }
RUNS=${RUNS:-5}
SECS=${SECS:-10}
WARM=${WARM:-8}
GOPS=${GOPS:-60 30}
VARIANTS=${VARIANTS:-mpegts fmp4 lowlatency}
MATRIX=${MATRIX:-mpegts:default fmp4:default lowlatency:default lowlatency:catchup}
TAG=${TAG:-$(git rev-parse --short HEAD 2> /dev/null || echo unknown)}
STREAMS=${STREAMS:-20}
SETTLE=${SETTLE:-12}
SEG_CYCLES=${SEG_CYCLES:-3}
WINDOW=${WINDOW:-20}
FILL=${FILL:-20}
SEG_REPS=${SEG_REPS:-1}
WAITERS=${WAITERS:-1000}
BWINDOW=${BWINDOW:-30}
BREPS=${BREPS:-2}
MAX_LOAD=${MAX_LOAD:-1.5}
LOAD_WAIT=${LOAD_WAIT:-600}
OUT=${OUT:-target/hls-bench-out}
STAGES=${*:-latency segmenter blocking summary}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/livegate-hls-bench.XXXXXX)
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2> /dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
load1() { cut -d' ' -f1 /proc/loadavg; }
# Waits until the 1-minute load average is <= MAX_LOAD (at most LOAD_WAIT s); sets LOAD_START.
wait_quiet() {
  local waited=0
  LOAD_START=$(load1)
  while awk -v l="$LOAD_START" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }'; do
    if [ "$waited" -ge "$LOAD_WAIT" ]; then
      log "load $LOAD_START still above $MAX_LOAD after ${LOAD_WAIT}s: running anyway (recorded)"
      return
    fi
    [ "$waited" = 0 ] && log "load $LOAD_START > $MAX_LOAD: waiting"
    sleep 10
    waited=$((waited + 10))
    LOAD_START=$(load1)
  done
}
# CPU seconds a process used so far, from its CPU-time clock (ns; /proc/PID/stat's ticks are too coarse here).
cpu_secs() { python3 benches/hls_blocking.py cpu "$1"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# "busy total" jiffies of the whole machine.
machine_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }

# start_livegate TAG EXTRA_TOML: sets LG_PID, LG_RTMP, LG_HTTP.
start_livegate() {
  local dir=$WORK/$1
  mkdir -p "$dir"
  printf '[rtmp]\nlisten = "127.0.0.1:0"\nmax_connections_per_addr = 0\n[http]\nlisten = "127.0.0.1:0"\nmax_connections_per_addr = 0\n[record]\nroot = "%s/rec"\n[log]\nlevel = "warn"\n%b' \
    "$dir" "$2" > "$dir/livegate.toml"
  "$BIN" serve --config "$dir/livegate.toml" --ready-file "$dir/ready.json" > "$dir/livegate.log" 2>&1 &
  LG_PID=$!
  PIDS+=("$LG_PID")
  for _ in $(seq 300); do
    [ -s "$dir/ready.json" ] && break
    kill -0 "$LG_PID" 2> /dev/null || { cat "$dir/livegate.log" >&2; exit 1; }
    sleep 0.1
  done
  LG_RTMP=$(jq -r .rtmp "$dir/ready.json")
  LG_HTTP=$(jq -r .http "$dir/ready.json")
  log "livegate $1: pid $LG_PID rtmp $LG_RTMP http $LG_HTTP"
}
stop_pid() {
  kill "$1" 2> /dev/null || true
  wait "$1" 2> /dev/null || true
}
# wait_live APP NAME: the stream is live with media.
wait_live() {
  for _ in $(seq 200); do
    if curl -sf "http://$LG_HTTP/api/v1/streams/$1/$2" | jq -e '.state == "live" and (.media_ms // 0) > 0' > /dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "stream $1/$2 never went live" >&2
  return 1
}
# The latency inputs: 90 s of testsrc2 640x360 30 fps + a 440 Hz tone (AAC), x264 without B-frames, keyframe
# every GOP frames, the frame number burnt in as 16 blocks (hls_latency.mjs reads it back).
make_input() {
  local f=target/hls-input-g$1.flv
  if [ ! -s "$f" ]; then
    log "making $f"
    nice -n 10 ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc2=size=640x360:rate=30 \
      -f lavfi -i sine=frequency=440:sample_rate=44100 \
      -filter_complex "color=c=black:s=512x64:r=30,format=yuv420p,geq=lum='if(lt(Y\,32)\,if(bitand(N\,pow(2\,floor(X/32)))\,235\,16)\,if(bitand(N\,pow(2\,floor(X/32)))\,16\,235))':cb=128:cr=128[code];[0:v][code]overlay=0:0:shortest=1,format=yuv420p[v]" \
      -map '[v]' -map 1:a -t 90 -c:v libx264 -preset veryfast -g "$1" -keyint_min "$1" -sc_threshold 0 -bf 0 \
      -pix_fmt yuv420p -b:v 1000k -c:a aac -b:a 64k -ac 2 "$f.tmp.flv"
    mv "$f.tmp.flv" "$f"
  fi
  echo "$f"
}
# The first video frame's timestamp in ms (the AAC priming delay shifts video by ~23 ms in FLV).
video_offset_ms() {
  ffprobe -v error -select_streams v -show_entries packet=pts_time -read_intervals '%+#1' -of csv=p=0 "$1" |
    head -1 | awk '{ printf "%d", $1 * 1000 + 0.5 }'
}
record() { # FILE JSON
  [ -n "$2" ] || { echo "empty result for $1 (a jq error above?)" >&2; exit 1; }
  echo "$2" >> "$OUT/$1"
}

player_config() {
  case $1 in
    default) echo '{}' ;;
    catchup) echo '{"maxLiveSyncPlaybackRate":1.5}' ;;
    sync2) echo '{"lowLatencyMode":false,"liveSyncDurationCount":2}' ;;
    *) echo "unknown player $1 (default, catchup, sync2)" >&2; exit 2 ;;
  esac
}

stage_latency() {
  local apps=""
  for v in mpegts fmp4 lowlatency; do apps+="[apps.$v]\nhls_variant = \"$v\"\n"; done
  start_livegate latency "[hls]\nsegment_secs = 2.0\npart_secs = 0.2\n$apps"
  local lg=$LG_PID
  for run in $(seq "$RUNS"); do
    for gop in $GOPS; do
      local input off
      input=$(make_input "$gop")
      off=$(video_offset_ms "$input")
      for cell in $MATRIX; do
        local v=${cell%%:*} player=${cell#*:}
        local name=g${gop}r${run}x$RANDOM url
        url=http://$LG_HTTP/$v/$name.m3u8
        wait_quiet
        ffmpeg -hide_banner -loglevel error -re -i "$input" -c copy -f flv "rtmp://$LG_RTMP/$v/$name" &
        local fp=$!
        PIDS+=("$fp")
        wait_live "$v" "$name"
        curl -s -o /dev/null --max-time 20 "$url" || true
        sleep "$WARM"
        local res
        res=$(node benches/hls_latency.mjs "$url" --secs "$SECS" --every 0.5 --fps 30 --video-offset-ms "$off" \
          --config "$(player_config "$player")") || true
        stop_pid "$fp"
        [ -n "$res" ] || res='{"ok":false,"message":"no output"}'
        record latency.jsonl "$(jq -c --arg v "$v" --arg p "$player" --arg tag "$TAG" --argjson gop "$gop" --argjson run "$run" \
          --argjson l0 "$LOAD_START" --argjson l1 "$(load1)" --arg at "$(date -u +%FT%TZ)" \
          '{stage: "latency", at: $at, build: $tag, variant: $v, player: $p, gop: $gop, run: $run, load_start: $l0, load_end: $l1} + .' <<< "$res")"
        log "latency $v/$player gop $gop run $run (load $LOAD_START): $(jq -c '{ok, startupMs, latency: .summary.latency.p50, pdt: .summary.pdtLatency.p50, glass: .summary.glass.p50, stalls, message}' <<< "$res")"
      done
    done
  done
  stop_pid "$lg"
}

# window SECS: livegate's CPU seconds over SECS, RSS at the end, RSS samples every 5 s, CPUs the machine kept
# busy (sets W_CPU W_SECS W_RSS W_RSSES W_BUSY).
window() {
  local c0 c1 t0 t1 m0 m1 left=$1
  m0=$(machine_jiffies)
  c0=$(cpu_secs "$LG_PID")
  t0=$(date +%s.%N)
  W_RSSES=""
  while [ "$left" -gt 0 ]; do
    local s=$((left < 5 ? left : 5))
    sleep "$s"
    left=$((left - s))
    W_RSSES+="$(rss_kib "$LG_PID"),"
  done
  c1=$(cpu_secs "$LG_PID")
  t1=$(date +%s.%N)
  m1=$(machine_jiffies)
  W_BUSY=$(echo "$m0 $m1" | awk -v n="$(nproc)" '{ printf "%.3f", ($3 - $1) / ($4 - $2) * n }')
  W_CPU=$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.3f", b - a }')
  W_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  W_RSS=$(rss_kib "$LG_PID")
  W_RSSES="[${W_RSSES%,}]"
}

# wjson: the last window as JSON.
wjson() {
  jq -nc --argjson cpu "$W_CPU" --argjson secs "$W_SECS" --argjson rss "$W_RSS" --argjson rsses "$W_RSSES" \
    --argjson busy "$W_BUSY" '{secs: $secs, cpu: $cpu, rss_kib: $rss, rss_samples: $rsses, machine_busy_cpus: $busy}'
}

stage_segmenter() {
  for rep in $(seq "$SEG_REPS"); do
    for v in $VARIANTS; do
      wait_quiet
      local l0=$LOAD_START
      # idle_stop_secs = 2: a segmenter stops 2-3 s after its stream's last playlist request, so windows with
      # and without segmenters alternate on one livegate and one set of publishers.
      start_livegate "seg-$v-$rep" "[hls]\nvariant = \"$v\"\nsegment_secs = 2.0\npart_secs = 0.2\nidle_stop_secs = 2.0\n"
      local total=$((2 + 5 + SETTLE + SEG_CYCLES * (WINDOW + 6 + FILL + WINDOW) + 15))
      "$LOAD" --attach "$LG_PID,$LG_RTMP,$LG_HTTP" --readers 0 --publishers "$STREAMS" --stream seg \
        --secs "$total" --warmup-secs 2 --ramp-ms 50 > "$WORK/load-$v-$rep.txt" 2>&1 &
      local lp=$!
      PIDS+=("$lp")
      local streams=""
      for i in $(seq 0 $((STREAMS - 1))); do
        wait_live live "seg-$i"
        streams+="live/seg-$i,"
      done
      # The hub's per-stream cache fills for its buffer_secs (10 s) after a publish starts.
      sleep "$SETTLE"
      local tool0 cycles=() poll_cpu=0 pl=0
      tool0=$(cpu_secs "$lp")
      for c in $(seq "$SEG_CYCLES"); do
        window "$WINDOW"
        local a
        a=$(wjson)
        python3 benches/hls_blocking.py poll --http "$LG_HTTP" --streams "${streams%,}" --every 1 > /dev/null &
        local pp=$!
        PIDS+=("$pp")
        sleep "$FILL"
        window "$WINDOW"
        cycles+=("$(jq -nc --argjson a "$a" --argjson b "$(wjson)" '{without: $a, with: $b}')")
        poll_cpu=$(awk -v a="$poll_cpu" -v b="$(cpu_secs "$pp")" 'BEGIN { printf "%.3f", a + b }')
        # One playlist proves the segmenters ran (its segment and part lines).
        pl=$(curl -s "http://$LG_HTTP/live/seg-0.m3u8" | grep -c -e '^#EXTINF' -e '^#EXT-X-PART:' || true)
        stop_pid "$pp"
        sleep 6
      done
      local tool1
      tool1=$(cpu_secs "$lp")
      # The publishers run a little longer than the windows: their report says whether they kept pace.
      wait "$lp" || true
      stop_pid "$LG_PID"
      local late
      late=$(grep -m1 '^  publishers ' "$WORK/load-$v-$rep.txt" | sed 's/^ *//' || true)
      record segmenter.jsonl "$(printf '%s\n' "${cycles[@]}" | jq -sc --arg v "$v" --arg tag "$TAG" --argjson n "$STREAMS" \
        --argjson rep "$rep" --argjson l0 "$l0" --argjson l1 "$(load1)" --arg at "$(date -u +%FT%TZ)" \
        --argjson t "$(awk -v a="$tool0" -v b="$tool1" 'BEGIN { printf "%.3f", b - a }')" --argjson pc "$poll_cpu" \
        --argjson pl "${pl:-0}" --arg late "${late:-}" \
        'def rate(w): w.cpu / w.secs;
         (map((rate(.with) - rate(.without)) * 1000 / $n)) as $per
         | {stage: "segmenter", at: $at, build: $tag, variant: $v, streams: $n, rep: $rep, load_start: $l0, load_end: $l1,
            cycles: ., cpu_ms_per_stream_s_each: $per, cpu_ms_per_stream_s: ($per | add / length),
            rss_kib_per_stream: ((.[0].with.rss_kib - .[0].without.rss_kib) / $n),
            tool_cpu_s: $t, poller_cpu_s: $pc, playlist_lines: $pl, publisher_log: $late}')"
      log "segmenter $v: $(tail -1 "$OUT/segmenter.jsonl" | jq -c '{load_start, cpu_ms_per_stream_s_each, rss_kib_per_stream}')"
    done
  done
}

stage_blocking() {
  local input
  input=$(make_input 60)
  start_livegate blocking "[hls]\nvariant = \"lowlatency\"\nsegment_secs = 2.0\npart_secs = 0.2\n"
  ffmpeg -hide_banner -loglevel error -re -stream_loop -1 -i "$input" -c copy -f flv "rtmp://$LG_RTMP/live/hb" &
  local fp=$!
  PIDS+=("$fp")
  wait_live live hb
  curl -s -o /dev/null --max-time 20 "http://$LG_HTTP/live/hb.m3u8"
  sleep 6
  for rep in $(seq "$BREPS"); do
    for n in 1 "$WAITERS"; do
      wait_quiet
      local res
      res=$(python3 benches/hls_blocking.py block --http "$LG_HTTP" --stream live/hb --clients "$n" --secs "$BWINDOW" --pid "$LG_PID") || true
      [ -n "$res" ] || res='{"error":"no output"}'
      record blocking.jsonl "$(jq -c --arg tag "$TAG" --argjson rep "$rep" --argjson l0 "$LOAD_START" --argjson l1 "$(load1)" \
        --arg at "$(date -u +%FT%TZ)" '{stage: "blocking", at: $at, build: $tag, rep: $rep, load_start: $l0, load_end: $l1} + .' <<< "$res")"
      log "blocking $n clients (load $LOAD_START): $(jq -c '{parts, unblocked, errors, livegate_cores, livegate_cpu_ms_per_part, response_from_first_ms, client_cores}' <<< "$res")"
    done
  done
  stop_pid "$fp"
  stop_pid "$LG_PID"
}

stage_summary() {
  python3 - "$OUT" "$MAX_LOAD" << 'EOF'
import json, sys, os
out, max_load = sys.argv[1], float(sys.argv[2])
def rows(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
def pct(xs, p):
    if not xs: return None
    s = sorted(xs); return s[min(len(s) - 1, max(0, -(-len(s) * p // 100) - 1))]
f = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"
lat = [r for r in rows("latency.jsonl") if r.get("ok")]
if lat:
    print("## latency (hls.js in headless Chromium), seconds: p50 / p95 over every 0.5 s sample of every run")
    print("| build | variant | hls.js | GOP | runs | load at start | hls.latency | pdtLatency | glass | startup ms p50 | stalls |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    order = {"mpegts": 0, "fmp4": 1, "lowlatency": 2}
    keys = sorted({(r.get("build", ""), r["variant"], r.get("player", "default"), r["gop"]) for r in lat},
                  key=lambda k: (k[0], -k[3], order.get(k[1], 9), k[2]))
    for b, v, pl, g in keys:
        rs = [r for r in lat if (r.get("build", ""), r["variant"], r.get("player", "default"), r["gop"]) == (b, v, pl, g)]
        col = lambda k: [s[k] for r in rs for s in r["samples"] if s.get(k) is not None]
        ls = [r["load_start"] for r in rs]
        cell = lambda k: f"{f(pct(col(k), 50))} / {f(pct(col(k), 95))}" if col(k) else "–"
        print(f"| {b} | {v} | {pl} | {g / 30:.0f} s | {len(rs)} | {min(ls):.2f}–{max(ls):.2f} | {cell('latency')} | {cell('pdtLatency')} | {cell('glass')} "
              f"| {pct([r['startupMs'] for r in rs], 50)} | {sum(r.get('stalls') or 0 for r in rs)} |")
    bad = [r for r in rows("latency.jsonl") if not r.get("ok")]
    if bad: print(f"failed runs: {len(bad)}: " + "; ".join(f"{r.get('build')} {r['variant']}/{r.get('player')} g{r['gop']} r{r['run']}: {r.get('message')}" for r in bad))
seg = rows("segmenter.jsonl")
if seg:
    print("\n## segmenter cost per stream (alternating windows without / with every stream's segmenter)")
    print("| build | variant | streams | load at start | machine busy without / with (CPUs) | livegate without / with (cores) | CPU-ms per stream-second (each cycle) | mean | RSS per stream (KiB) | RSS with segmenters (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in seg:
        cyc = r.get("cycles") or [{"without": r["without"], "with": r["with"]}]
        mean = lambda side, f: sum(f(c[side]) for c in cyc) / len(cyc)
        busy = lambda w: w.get("machine_busy_cpus", 0)
        each = r.get("cpu_ms_per_stream_s_each", [r["cpu_ms_per_stream_s"]])
        print(f"| {r.get('build', '')} | {r['variant']} | {r['streams']} | {r['load_start']:.2f} | {mean('without', busy):.2f} / {mean('with', busy):.2f} "
              f"| {mean('without', lambda w: w['cpu'] / w['secs']):.3f} / {mean('with', lambda w: w['cpu'] / w['secs']):.3f} "
              f"| {' '.join(f'{x:.2f}' for x in each)} | {r['cpu_ms_per_stream_s']:.2f} | {r['rss_kib_per_stream']:.0f} "
              f"| {' '.join(f'{x/1024:.0f}' for c in cyc for x in c['with']['rss_samples'])} |")
blk = rows("blocking.jsonl")
if blk:
    print("\n## blocking reloads")
    print("| build | clients | load at start | machine busy (CPUs) | parts/s | livegate cores | CPU-ms per part | from first answer p50 / p99 / max ms | last answer per part p50 / p99 ms | first answer after part end p50 / p99 ms | re-arm p50 / p99 ms | unblocked | errors | client cores |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in blk:
        if "parts" not in r: print(f"| error: {r} |"); continue
        d = r["response_from_first_ms"]; l = r["last_answer_per_part_ms"]; a = r["first_answer_after_part_end_ms"]; re_ = r["rearm_ms"]
        print(f"| {r.get('build', '')} | {r['clients']} | {r['load_start']:.2f} | {r.get('machine_busy_cpus', '?')} | {r['parts_per_s']:.2f} | {r.get('livegate_cores')} | {r.get('livegate_cpu_ms_per_part')} "
              f"| {f(d['p50'])} / {f(d['p99'])} / {f(d['max'])} | {f(l['p50'])} / {f(l['p99'])} | {f(a['p50'])} / {f(a['p99'])} | {f(re_['p50'])} / {f(re_['p99'])} "
              f"| {r['unblocked']} | {r['errors'] or 0} | {r['client_cores']} |")
EOF
}

for s in $STAGES; do
  case $s in
    latency) stage_latency ;;
    segmenter) stage_segmenter ;;
    blocking) stage_blocking ;;
    summary) stage_summary ;;
    *) echo "unknown stage $s (latency, segmenter, blocking, summary)" >&2; exit 2 ;;
  esac
done
