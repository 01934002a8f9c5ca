#!/usr/bin/env node
// Plays a stream over WHEP in headless Chromium and checks that video frames are decoded.
// usage: node tests/browser/whep_play.mjs <whep-url> <screenshot.png> [seconds=4] [video codec to offer alone, e.g. vp8,
//        or "audio" for an audio-only stream: success is then audio packets and level, not video frames; "" for all]
//        [end=delete: DELETE the session, or "close": only close the RTCPeerConnection, as a page that goes away]
// Prints one JSON line {ok, status, framesDecoded, width, height, location, deleteStatus, message}; exit 0 ok, 1 failure.
import { ANALYSE_AUDIO_JS, launchChromium, startStaticServer, HARD_TIMEOUT_MS } from './lib.mjs';

const [url, shot, secondsArg, onlyCodec, end] = process.argv.slice(2);
if (!url || !shot) {
  console.error('usage: whep_play.mjs <whep-url> <screenshot.png> [seconds]');
  process.exit(2);
}
const seconds = Number(secondsArg || 4);
const html = `<!doctype html><meta charset="utf-8"><title>WHEP check</title>
<video id="v" muted autoplay playsinline style="width:640px;height:360px;background:#000"></video>
<script>${ANALYSE_AUDIO_JS}
window.__state = { status: 0, framesDecoded: 0, width: 0, height: 0, errors: [] };
window.__start = async (url, only) => {
  const pc = new RTCPeerConnection();
  window.__pc = pc;
  const vt = pc.addTransceiver('video', { direction: 'recvonly' });
  if (only) {
    // Offer one video codec, as a browser without H.264 would.
    vt.setCodecPreferences(RTCRtpReceiver.getCapabilities('video').codecs.filter((c) => c.mimeType.toLowerCase() === 'video/' + only));
  }
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.ontrack = (e) => {
    if (e.track.kind === 'audio') {
      analyseAudio(e.track);
      return;
    }
    const v = document.getElementById('v');
    if (!v.srcObject) v.srcObject = new MediaStream([e.track]);
  };
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  const r = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: offer.sdp });
  window.__state.status = r.status;
  window.__state.location = r.headers.get('Location');
  const body = await r.text();
  if (r.status !== 201) { window.__state.errors.push('POST ' + r.status + ': ' + body); return; }
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
};
window.__poll = async () => {
  const v = document.getElementById('v');
  const stats = await window.__pc.getStats();
  const codecs = {};
  stats.forEach((s) => { if (s.type === 'codec') codecs[s.id] = s.mimeType; });
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      window.__state.framesDecoded = s.framesDecoded || 0;
      window.__state.codec = codecs[s.codecId];
    }
    if (s.type === 'inbound-rtp' && s.kind === 'audio') window.__state.audioPackets = s.packetsReceived || 0;
    // Only an RTCP sender report makes these: what the server says it sent, per track.
    if (s.type === 'remote-outbound-rtp') {
      window.__state.senderReports = window.__state.senderReports || {};
      window.__state.senderReports[s.kind] = { reports: s.reportsSent || 0, packetsSent: s.packetsSent || 0 };
    }
  });
  if (window.__analyser) {
    const buf = new Float32Array(window.__analyser.fftSize);
    window.__analyser.getFloatTimeDomainData(buf);
    const rms = Math.sqrt(buf.reduce((a, x) => a + x * x, 0) / buf.length);
    window.__state.audioRms = Math.max(window.__state.audioRms || 0, rms);
  }
  window.__state.width = v.videoWidth; window.__state.height = v.videoHeight;
  window.__state.connection = window.__pc.connectionState;
  return window.__state;
};
window.__close = () => { window.__pc.close(); return 0; };
window.__delete = async (base) => {
  const r = await fetch(base + window.__state.location, { method: 'DELETE' });
  return r.status;
};
</script>`;

const result = { ok: false };
const { server } = await startStaticServer({ '/': { body: html } });
const browser = await launchChromium();
const done = async (ok, message) => {
  result.ok = ok;
  if (message) result.message = message;
  await browser.page.screenshot({ path: shot }).catch(() => {});
  await browser.close();
  server.close();
  console.log(JSON.stringify(result));
  process.exit(ok ? 0 : 1);
};
// Long watches (a background pusher's minute of still picture) get their length on top of the usual bound.
const hardTimeout = Math.max(HARD_TIMEOUT_MS, (seconds + 30) * 1000);
setTimeout(() => done(false, `timeout after ${hardTimeout / 1000}s`), hardTimeout).unref();
async function main() {
  const { page } = browser;
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  const audioOnly = onlyCodec === 'audio';
  await page.evaluate(([u, c]) => window.__start(u, c), [url, audioOnly ? null : onlyCodec || null]);
  let first = null;
  const deadline = Date.now() + 20_000 + seconds * 1000;
  while (Date.now() < deadline) {
    const s = await page.evaluate(() => window.__poll());
    Object.assign(result, s);
    if (s.errors.length) return done(false, s.errors[0]);
    const started = audioOnly ? (s.audioPackets || 0) > 0 : s.framesDecoded > 0;
    if (first === null && started) first = { t: Date.now(), frames: s.framesDecoded };
    if (first && Date.now() - first.t >= seconds * 1000 && (audioOnly || s.width > 0)) {
      result.fps = Number(((s.framesDecoded - first.frames) / ((Date.now() - first.t) / 1000)).toFixed(1));
      const origin = new URL(url).origin;
      if (end === 'close') result.closed = await page.evaluate(() => window.__close()) === 0;
      else result.deleteStatus = await page.evaluate((o) => window.__delete(o), origin);
      return done(true);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  await done(false, `nothing decoded (framesDecoded=${result.framesDecoded}, audioPackets=${result.audioPackets}, connection=${result.connection})`);
}
try {
  await main();
} catch (e) {
  await done(false, String(e.message || e).split('\n')[0]);
}
