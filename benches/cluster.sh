#!/usr/bin/env bash
# The cluster's figures (issue #12): a redis-server, one origin and two edges, each a release livegate on free
# loopback ports, measured with livegate-load (--attach the origin, readers --read-from the edges, the edges'
# CPU and RSS with --watch-pids) and benches/cluster.py (failover with its own two origins; Redis traffic).
#
#   cost      origin CPU per direct ?mode=rtc reader vs per edge, in one window (benches/cluster.py cost, its own
#             publisher): CYCLES cycles of phases of WINDOW_COST s (after 2 s settling), alternated: publisher
#             only; + 2 rtc readers on the origin; publisher only; + 2 readers on the origin that look like edge
#             pulls (the edge's query and x-livegate-via header, no edge); publisher only; + 1 reader on each
#             edge (2 edge pulls); + EDGE_READERS more on each edge. Reported over all windows and over the
#             windows in which other processes kept < 0.15 CPUs busy (see benches/README.md, Cluster)
#   full      2 edges x READERS HTTP-FLV readers (livegate-load, default mode), REPS runs: the edges' CPU per
#             reader-second and per delivered MB, RSS per reader, latency, behind; the origin's CPU
#   latency   added latency publisher -> reader with LAT_READERS readers spread over the origin and both edges,
#             in rtc (?mode=rtc) and default mode, REPS rounds: the edge hop = edge - origin
#   redis     STREAMS publishers on the origin, each read on both edges: Redis commands per second by command
#             over WINDOW s (INFO commandstats) and per event (MONITOR): claims, lookups, releases
#   failover  FAILOVERS SIGKILLs of the origin that has the stream: kill -> accepted elsewhere -> edge readers
#
# usage: benches/cluster.sh [cost] [full] [latency] [redis] [failover]   (none: all five, in that order)
#   env: CYCLES=10 WINDOW_COST=5 EDGE_READERS=100 READERS=1000 (per edge) SECS=20 REPS=3 WARMUP=6 LAT_READERS=30
#        STREAMS=10 WINDOW=30 FAILOVERS=5 THREADS=1 (livegate-load's reader threads)
# Builds nothing: run `cargo build --release` first (it runs target/release/livegate and livegate-load).
# Each stage or run waits (up to 3 min) for the 1-minute load average to be <= 1.5 and records it; results go to
# target/cluster-bench/*.jsonl and the summary is printed at the end (benches/cluster.py summarize).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/livegate
LOAD=target/release/livegate-load
for b in $BIN $LOAD; do
  [ -x $b ] || { echo "$b not found: run \`cargo build --release\` first" >&2; exit 1; }
done
command -v redis-server > /dev/null || { echo "redis-server not found (scripts/setup.sh installs it)" >&2; exit 1; }
CYCLES=${CYCLES:-10}
WINDOW_COST=${WINDOW_COST:-5}
EDGE_READERS=${EDGE_READERS:-100}
READERS=${READERS:-1000}
SECS=${SECS:-20}
REPS=${REPS:-3}
LAT_READERS=${LAT_READERS:-30}
STREAMS=${STREAMS:-10}
WINDOW=${WINDOW:-30}
FAILOVERS=${FAILOVERS:-5}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-6}
STAGES=${*:-cost full latency redis failover}
OUT=target/cluster-bench
mkdir -p $OUT
WORK=$(mktemp -d /tmp/livegate-cluster.XXXXXX)
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2> /dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no > "$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$RPORT" ping > /dev/null 2>&1 && break; sleep 0.1; done
REDIS_URL="redis://127.0.0.1:$RPORT/0"

# start_node ROLE ID: a livegate in the cluster; sets NODE_PID, NODE_RTMP, NODE_HTTP.
start_node() {
  local dir=$WORK/$2
  mkdir -p "$dir"
  python3 -c "import sys; sys.path.insert(0, 'benches'); import cluster; print(cluster.node_config('$1', '$2', '$REDIS_URL'))" > "$dir/livegate.toml"
  $BIN serve --config "$dir/livegate.toml" --ready-file "$dir/ready.json" > "$dir/livegate.log" 2>&1 &
  NODE_PID=$!
  PIDS+=($NODE_PID)
  for _ in $(seq 300); do [ -s "$dir/ready.json" ] && break; sleep 0.1; done
  [ -s "$dir/ready.json" ] || { echo "$2 did not start:" >&2; cat "$dir/livegate.log" >&2; exit 1; }
  NODE_RTMP=$(python3 -c "import json; print(json.load(open('$dir/ready.json'))['rtmp'])")
  NODE_HTTP=$(python3 -c "import json; print(json.load(open('$dir/ready.json'))['http'])")
}
start_node origin origin-1
O_PID=$NODE_PID O_RTMP=$NODE_RTMP O_HTTP=$NODE_HTTP
start_node edge edge-1
E1_PID=$NODE_PID E1_HTTP=$NODE_HTTP
start_node edge edge-2
E2_PID=$NODE_PID E2_HTTP=$NODE_HTTP
ATTACH="$O_PID,$O_RTMP,$O_HTTP"
WATCH="edge-1=$E1_PID,edge-2=$E2_PID"
echo "redis :$RPORT; origin-1 pid $O_PID rtmp $O_RTMP http $O_HTTP; edge-1 pid $E1_PID http $E1_HTTP; edge-2 pid $E2_PID http $E2_HTTP"
echo "$(date -u +%FT%TZ) $(nproc) CPUs; $(uptime)"
sleep 2

# Waits until the edges hold no pull (the previous run's readers and publisher are gone everywhere).
wait_idle() {
  for _ in $(seq 60); do
    local n=0
    for h in $E1_HTTP $E2_HTTP; do
      n=$((n + $(curl -s "http://$h/api/v1/pulls" | python3 -c 'import json, sys; print(len(json.load(sys.stdin).get("pulls") or []))')))
    done
    [ "$n" = 0 ] && return 0
    sleep 0.5
  done
  echo "warning: edges still pulling after 30 s" >&2
}

# Waits up to 3 min for the 1-minute load average to be <= 1.5; prints it.
wait_quiet() {
  for _ in $(seq 36); do
    awk '{exit !($1 <= 1.5)}' /proc/loadavg && break
    sleep 5
  done
  cut -d' ' -f1-3 /proc/loadavg
}

# run TAG REP FILE ARGS...: one livegate-load run attached to the origin; its JSON line appended to FILE.
run() {
  local tag=$1 rep=$2 file=$3
  shift 3
  wait_idle
  local load
  load=$(wait_quiet)
  echo "== $tag (round $rep) at $(date -u +%T), load average $load: livegate-load $*"
  local log=$WORK/run.txt
  if ! $LOAD --attach "$ATTACH" --watch-pids "$WATCH" --secs "$SECS" --threads "$THREADS" "$@" > "$log" 2> "$WORK/run.err"; then
    cat "$log" "$WORK/run.err"
    echo "run failed" >&2
    exit 1
  fi
  grep -v '^{' "$log"
  echo "{\"tag\": \"$tag\", \"rep\": $rep, \"load\": \"$load\", \"at\": \"$(date -u +%FT%TZ)\", \"result\": $(grep '^{' "$log" | tail -1)}" >> "$file"
}

for stage in $STAGES; do
  case $stage in
    cost)
      wait_idle
      echo "== cost at $(date -u +%T), load average $(wait_quiet)"
      python3 benches/cluster.py cost --attach "$ATTACH" --edges "edge-1=$E1_HTTP,edge-2=$E2_HTTP" --node-pids "$WATCH" \
        --cycles "$CYCLES" --window "$WINDOW_COST" --edge-readers "$EDGE_READERS" | tee "$WORK/cost.txt"
      grep '^{' "$WORK/cost.txt" | tail -1 > $OUT/cost.jsonl
      ;;
    full)
      f=$OUT/full.jsonl
      : > $f
      for rep in $(seq "$REPS"); do
        run edges-n "$rep" $f --readers $((2 * READERS)) --read-from "$E1_HTTP,$E2_HTTP" --warmup-secs "$WARMUP"
      done
      ;;
    latency)
      f=$OUT/latency.jsonl
      : > $f
      for rep in $(seq "$REPS"); do
        run rtc "$rep" $f --readers "$LAT_READERS" --read-from "$O_HTTP,$E1_HTTP,$E2_HTTP" --query '?mode=rtc'
        run default "$rep" $f --readers "$LAT_READERS" --read-from "$O_HTTP,$E1_HTTP,$E2_HTTP"
      done
      ;;
    redis)
      wait_idle
      echo "== redis at $(date -u +%T), load average $(wait_quiet)"
      python3 benches/cluster.py redis --load $LOAD --attach "$ATTACH" --redis-port "$RPORT" \
        --edges "edge-1=$E1_HTTP,edge-2=$E2_HTTP" --node-pids "origin-1=$O_PID,$WATCH" --streams "$STREAMS" --window "$WINDOW" \
        | tee "$WORK/redis.txt"
      grep '^{' "$WORK/redis.txt" | tail -1 > $OUT/redis.jsonl
      ;;
    failover)
      wait_idle
      echo "== failover at $(date -u +%T), load average $(wait_quiet)"
      python3 benches/cluster.py failover --livegate $BIN --work "$WORK" --redis-url "$REDIS_URL" --redis-port "$RPORT" \
        --edges "edge-1=$E1_HTTP,edge-2=$E2_HTTP" --node-pids "origin-1=$O_PID,$WATCH" --reps "$FAILOVERS" | tee "$WORK/failover.txt"
      grep '^{' "$WORK/failover.txt" | tail -1 > $OUT/failover.jsonl
      ;;
    *)
      echo "unknown stage $stage (cost, full, latency, redis, failover)" >&2
      exit 2
      ;;
  esac
done
echo "== summary ($(date -u +%FT%TZ), $(uptime))"
python3 benches/cluster.py summarize $OUT $STAGES
