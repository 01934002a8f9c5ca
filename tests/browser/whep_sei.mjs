#!/usr/bin/env node
// Plays a stream over WHEP in headless Chromium with a data channel labelled "sei" and collects the SEI
// messages livegate sends on it (what live-player's event 2012 gives a mini program), checking each message's
// rtp_timestamp against the RTP timestamps of the frames the page rendered (requestVideoFrameCallback).
// usage: node tests/browser/whep_sei.mjs <whep-url> <seconds> [sei-api-url [count]]
//   With sei-api-url, this script injects `count` (default 20) messages itself, one per 250 ms of the stream's media time, each text
//   "probe <n> <Date.now()>", and reports how long each took from the POST to the page (latency_ms): the
//   figure benches/README.md gives. Without it, the caller injects (the tests pace by media time).
// Prints one JSON line {ok, framesDecoded, messages: [{payload_type, uuid, data, pts, dts, rtp_timestamp,
// matched_frame}], latency_ms: [...], message}; exit 0 ok, 1 failure.
import { launchChromium, startStaticServer, HARD_TIMEOUT_MS } from './lib.mjs';

const [url, secondsArg, injectUrl, countArg] = process.argv.slice(2);
if (!url || !secondsArg) {
  console.error('usage: whep_sei.mjs <whep-url> <seconds> [sei-api-url [count]]');
  process.exit(2);
}
const seconds = Number(secondsArg);
const count = Number(countArg || 20);
const html = `<!doctype html><meta charset="utf-8"><title>WHEP SEI</title>
<video id="v" muted autoplay playsinline style="width:320px;height:240px"></video>
<script>
window.__state = { framesDecoded: 0, messages: [], frameTimestamps: [], errors: [], channel: 'none' };
window.__start = async (url) => {
  const pc = new RTCPeerConnection();
  window.__pc = pc;
  pc.addTransceiver('video', { direction: 'recvonly' });
  const dc = pc.createDataChannel('sei');
  dc.onopen = () => { window.__state.channel = 'open'; };
  dc.onmessage = (e) => {
    const m = JSON.parse(e.data);
    m.arrived = Date.now();
    window.__state.messages.push(m);
  };
  pc.ontrack = (e) => {
    const v = document.getElementById('v');
    v.srcObject = new MediaStream([e.track]);
    const onFrame = (_now, meta) => {
      if (meta.rtpTimestamp !== undefined) window.__state.frameTimestamps.push(meta.rtpTimestamp);
      v.requestVideoFrameCallback(onFrame);
    };
    v.requestVideoFrameCallback(onFrame);
  };
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  const r = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: offer.sdp });
  const body = await r.text();
  if (r.status !== 201) { window.__state.errors.push('POST ' + r.status + ': ' + body); return; }
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
};
window.__poll = async () => {
  const stats = await window.__pc.getStats();
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') window.__state.framesDecoded = s.framesDecoded || 0;
  });
  return { framesDecoded: window.__state.framesDecoded, messages: window.__state.messages.length,
           channel: window.__state.channel, errors: window.__state.errors };
};
window.__result = () => {
  const seen = new Set(window.__state.frameTimestamps);
  return {
    framesDecoded: window.__state.framesDecoded,
    frames_with_rtp_timestamp: window.__state.frameTimestamps.length,
    messages: window.__state.messages.map((m) => ({ ...m, matched_frame: seen.has(m.rtp_timestamp) })),
  };
};
</script>`;

const result = { ok: false };
const { server } = await startStaticServer({ '/': { body: html } });
const browser = await launchChromium();
const done = async (ok, message) => {
  result.ok = ok;
  if (message) result.message = message;
  await browser.close();
  server.close();
  console.log(JSON.stringify(result));
  process.exit(ok ? 0 : 1);
};
const hardTimeout = Math.max(HARD_TIMEOUT_MS, (seconds + 40) * 1000);
setTimeout(() => done(false, `timeout after ${hardTimeout / 1000}s`), hardTimeout).unref();

// The stream's API resource (the SEI URL without its last segment) and its media time.
const streamUrl = injectUrl ? injectUrl.replace(/\/sei$/, '') : null;
const mediaMs = async () => (await (await fetch(streamUrl)).json()).media_ms || 0;

// Waits until the stream's media time moved on by `ms`: the injections are paced by the stream's clock.
async function mediaAdvanced(ms) {
  const target = (await mediaMs()) + ms;
  while ((await mediaMs()) < target) await new Promise((res) => setTimeout(res, 20));
}

async function inject() {
  const sent = new Map();
  for (let n = 0; n < count; n++) {
    const text = `probe ${n} ${Date.now()}`;
    const t0 = Date.now();
    const r = await fetch(injectUrl, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ text }) });
    if (r.status !== 202) throw new Error(`inject: ${r.status} ${await r.text()}`);
    sent.set(Buffer.from(text).toString('base64'), t0);
    await mediaAdvanced(250);
  }
  return sent;
}

async function main() {
  const { page } = browser;
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  await page.evaluate((u) => window.__start(u), url);
  const deadline = Date.now() + 25_000 + seconds * 1000;
  let first = null;
  let sent = null;
  while (Date.now() < deadline) {
    const s = await page.evaluate(() => window.__poll());
    if (s.errors.length) return done(false, s.errors[0]);
    if (first === null && s.framesDecoded > 0 && s.channel === 'open') {
      first = Date.now();
      // Ready: the caller (a test) starts injecting when it reads this line.
      console.error('READY');
      if (injectUrl) sent = await inject();
    }
    if (first !== null && Date.now() - first >= seconds * 1000) {
      Object.assign(result, await page.evaluate(() => window.__result()));
      if (sent) {
        result.latency_ms = result.messages.filter((m) => sent.has(m.data)).map((m) => m.arrived - sent.get(m.data));
      }
      return done(true);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const s = await page.evaluate(() => window.__poll()).catch(() => ({}));
  await done(false, `not ready: framesDecoded=${s.framesDecoded}, channel=${s.channel}`);
}
try {
  await main();
} catch (e) {
  await done(false, String(e.message || e).split('\n')[0]);
}
