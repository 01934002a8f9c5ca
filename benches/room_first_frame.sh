#!/usr/bin/env bash
# Enter-to-first-remote-frame for a browser room member (WHEP), issue #11: a release livegate with a rooms app, a
# member publishing 640x360 H.264 (baseline, 1 s GOP) + AAC with ffmpeg to the RTMP URL its enter gave it, and
# benches/room_first_frame.mjs entering the room N times from headless Chromium (web/livegate-room.js).
# usage: benches/room_first_frame.sh [N]     env: LIVEGATE_BIN (default target/release/livegate)
# The mini-program side (HTTP-FLV, rtc mode) is measured by livegate-rooms (benches/rooms.rs).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${LIVEGATE_BIN:-$ROOT/target/release/livegate}
N=${1:-10}
[ -x "$BIN" ] || { echo "build first: cargo build --release (no $BIN)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/livegate-roomff.XXXXXX)
LG=""; PUSH=""
cleanup() { [ -n "$PUSH" ] && kill "$PUSH" 2>/dev/null || true; [ -n "$LG" ] && kill "$LG" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
APP=1400000123
KEY=livegate-room-first-frame-bench-key-0123456789
cat > "$WORK/livegate.toml" <<TOML
[rtmp]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[record]
root = "$WORK/rec"
[log]
level = "warn"
[rooms]
apps = [{ sdk_app_id = $APP, secret_key = "$KEY" }]
TOML
(cd "$ROOT" && exec "$BIN" serve --config "$WORK/livegate.toml" --ready-file "$WORK/ready.json" > "$WORK/livegate.log" 2>&1) &
LG=$!
for _ in $(seq 100); do [ -s "$WORK/ready.json" ] && break; sleep 0.1; done
HTTP=$(python3 -c "import json; print(json.load(open('$WORK/ready.json'))['http'])")
sig() { "$BIN" usersig --sdk-app-id $APP --key "$KEY" --user "$1" --expire 1h; }
PUSH_URL=$(curl -sf -H 'Content-Type: application/json' "http://$HTTP/api/v1/rooms/ff/enter" \
  -d "{\"sdkAppId\":$APP,\"userId\":\"pusher\",\"userSig\":\"$(sig pusher)\",\"client\":\"miniprogram\"}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["push"]["rtmp"])')
ffmpeg -v error -re -f lavfi -i testsrc2=size=640x360:rate=25 -f lavfi -i sine=frequency=440 \
  -c:v libx264 -preset veryfast -tune zerolatency -profile:v baseline -g 25 -c:a aac -f flv "$PUSH_URL" &
PUSH=$!
for _ in $(seq 100); do
  curl -sf "http://$HTTP/api/v1/streams" | grep -q '"1400000123.ff.pusher"' && break; sleep 0.1
done
node "$ROOT/benches/room_first_frame.mjs" "http://$HTTP" $APP viewer "$(sig viewer)" ff "$N"
