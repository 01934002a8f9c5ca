// Opens a room member's event socket over WSS (the `ws` package, trusting the test's own CA), sends a PING,
// and prints what came back as one JSON line: {"first": <first event>, "pong": true}.
// Usage: node wss_events.mjs <wss events_url> <ca.pem>
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';

const [url, caFile] = process.argv.slice(2);
const ws = new WebSocket(url, { ca: readFileSync(caFile) });
const got = [];
const timer = setTimeout(() => { console.error('no answer within 10 s:', JSON.stringify(got)); process.exit(1); }, 10000);
ws.on('message', (data) => {
  const ev = JSON.parse(data.toString());
  got.push(ev);
  if (got.length === 1) ws.send(JSON.stringify({ event: 'PING' }));
  if (ev.event === 'PONG') {
    clearTimeout(timer);
    console.log(JSON.stringify({ first: got[0], pong: true }));
    ws.close();
  }
});
ws.on('error', (e) => { console.error('socket error:', e.message); process.exit(1); });
