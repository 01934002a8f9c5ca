#!/usr/bin/env node
// Publishes Chromium's fake camera and microphone over WHIP, optionally playing another stream over WHEP in
// the same page (a browser in a call), for <seconds> after connecting, then DELETEs the session.
// usage: node tests/browser/whip_publish.mjs <whip-url> <seconds> [codec=h264|vp8|none] [whep-url|-] [screenshot.png]
// (codec "none": the microphone only, an audio-only publish)
// Prints {"event":"connected",...} when the publish connects, then one final JSON line
// {ok, status, location, codec, framesSent, bytesSent, play: {framesDecoded, fps, audioRms, width}, deleteStatus}.
// Exit 0 ok, 1 failure.
import { ANALYSE_AUDIO_JS, launchChromium, startStaticServer } from './lib.mjs';

const [url, secondsArg, codecArg, playUrl, shot] = process.argv.slice(2);
if (!url || !secondsArg) {
  console.error('usage: whip_publish.mjs <whip-url> <seconds> [h264|vp8] [whep-url|-] [screenshot.png]');
  process.exit(2);
}
const seconds = Number(secondsArg);
const codec = (codecArg || 'h264').toLowerCase();
const play = playUrl && playUrl !== '-' ? playUrl : null;

const html = `<!doctype html><meta charset="utf-8"><title>WHIP check</title>
<video id="local" muted autoplay playsinline style="width:320px;height:240px;background:#000"></video>
<video id="remote" muted autoplay playsinline style="width:320px;height:240px;background:#000"></video>
<script>${ANALYSE_AUDIO_JS}
window.__state = { status: 0, errors: [] };
window.__publish = async (url, codec) => {
  const media = await navigator.mediaDevices.getUserMedia({ video: codec === 'none' ? false : { width: 640, height: 480 }, audio: true });
  document.getElementById('local').srcObject = media;
  const pc = new RTCPeerConnection();
  window.__pub = pc;
  for (const track of media.getTracks()) {
    const t = pc.addTransceiver(track, { direction: 'sendonly' });
    if (track.kind === 'video') {
      const caps = RTCRtpSender.getCapabilities('video').codecs;
      const want = caps.filter((c) => c.mimeType.toLowerCase() === 'video/' + codec);
      if (!want.length) throw new Error('this browser cannot send ' + codec);
      // Offer only the codec under test (plus nothing else), as a VP8-only browser would.
      t.setCodecPreferences(want);
      // A loaded machine makes Chromium's encoder shed resolution (480x360 seen in a CI run); the checks
      // read the size, so it sheds frame rate instead, as a publisher wanting a fixed size sets it.
      const params = t.sender.getParameters();
      params.degradationPreference = 'maintain-resolution';
      await t.sender.setParameters(params).catch(() => {});
    }
  }
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  // Non-trickle WHIP: send the offer with its candidates.
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && resolve();
    setTimeout(resolve, 2000);
  });
  const r = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  window.__state.status = r.status;
  window.__state.location = r.headers.get('Location');
  const body = await r.text();
  if (r.status !== 201) { window.__state.errors.push('POST ' + r.status + ': ' + body); return; }
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
};
window.__play = async (url) => {
  const pc = new RTCPeerConnection();
  window.__sub = pc;
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.ontrack = (e) => {
    if (e.track.kind === 'audio') {
      analyseAudio(e.track);
      return;
    }
    document.getElementById('remote').srcObject = new MediaStream([e.track]);
  };
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  const r = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: offer.sdp });
  const body = await r.text();
  if (r.status !== 201) { window.__state.errors.push('WHEP POST ' + r.status + ': ' + body); return; }
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
};
window.__poll = async () => {
  const s = window.__state;
  if (window.__pub) {
    s.connection = window.__pub.connectionState;
    const stats = await window.__pub.getStats();
    const codecs = {};
    stats.forEach((x) => { if (x.type === 'codec') codecs[x.id] = x.mimeType; });
    stats.forEach((x) => {
      if (x.type === 'outbound-rtp' && x.kind === 'video') {
        s.framesSent = x.framesSent || 0;
        s.bytesSent = x.bytesSent || 0;
        s.codec = codecs[x.codecId];
      }
      if (x.type === 'outbound-rtp' && x.kind === 'audio') s.audioPacketsSent = x.packetsSent || 0;
    });
  }
  if (window.__sub) {
    const p = (s.play = s.play || { framesDecoded: 0, audioRms: 0 });
    p.connection = window.__sub.connectionState;
    const stats = await window.__sub.getStats();
    stats.forEach((x) => {
      if (x.type === 'inbound-rtp' && x.kind === 'video') p.framesDecoded = x.framesDecoded || 0;
    });
    if (window.__analyser) {
      const buf = new Float32Array(window.__analyser.fftSize);
      window.__analyser.getFloatTimeDomainData(buf);
      const rms = Math.sqrt(buf.reduce((a, v) => a + v * v, 0) / buf.length);
      p.audioRms = Math.max(p.audioRms, rms);
    }
    p.width = document.getElementById('remote').videoWidth;
  }
  return s;
};
window.__delete = async (origin) => (await fetch(origin + window.__state.location, { method: 'DELETE' })).status;
</script>`;

const result = { ok: false };
const { server } = await startStaticServer({ '/': { body: html } });
const browser = await launchChromium({ viewport: { width: 660, height: 260 } });
const done = async (ok, message) => {
  result.ok = ok;
  if (message) result.message = message;
  if (shot) await browser.page.screenshot({ path: shot }).catch(() => {});
  await browser.close();
  server.close();
  console.log(JSON.stringify(result));
  process.exit(ok ? 0 : 1);
};
setTimeout(() => done(false, `timeout after ${seconds + 30}s`), (seconds + 30) * 1000).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function main() {
  const { page } = browser;
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  await page.evaluate(([u, c]) => window.__publish(u, c), [url, codec]);
  let connectedAt = null;
  let playFirst = null;
  const deadline = Date.now() + 15_000;
  for (;;) {
    const s = await page.evaluate(() => window.__poll());
    Object.assign(result, JSON.parse(JSON.stringify(s)));
    if (s.errors.length) return done(false, s.errors[0]);
    if (!connectedAt && s.connection === 'connected') {
      connectedAt = Date.now();
      console.log(JSON.stringify({ event: 'connected', location: s.location }));
      if (play) await page.evaluate((u) => window.__play(u), play);
    }
    if (!connectedAt && Date.now() > deadline) return done(false, `not connected (state ${s.connection})`);
    if (s.play && playFirst === null && s.play.framesDecoded > 0) {
      playFirst = { t: Date.now(), frames: s.play.framesDecoded };
    }
    if (s.play && playFirst) {
      s.play.fps = Number(((s.play.framesDecoded - playFirst.frames) / Math.max(0.001, (Date.now() - playFirst.t) / 1000)).toFixed(1));
      result.play = s.play;
    }
    if (connectedAt && Date.now() - connectedAt >= seconds * 1000) break;
    await sleep(250);
  }
  if (play && !(result.play && result.play.framesDecoded > 0)) return done(false, 'the WHEP stream decoded no video');
  result.deleteStatus = await page.evaluate((o) => window.__delete(o), new URL(url).origin);
  await done(codec === 'none' ? result.audioPacketsSent > 0 : result.framesSent > 0);
}
try {
  await main();
} catch (e) {
  await done(false, String(e.message || e).split('\n')[0]);
}
