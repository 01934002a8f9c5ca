#!/usr/bin/env node
// Latency of live HLS as hls.js in headless Chromium plays it (issue #13's figures; benches/hls_bench.sh runs it).
//
// usage: node benches/hls_latency.mjs <m3u8-url> [--secs 10] [--every 0.5] [--fps 30] [--video-offset-ms 0]
//                                     [--config '{"lowLatencyMode":true}'] [--shot out.png]
//
// Plays the URL with hls.js (its defaults unless --config: lowLatencyMode on, liveSyncDurationCount 3) and, once
// playback has started, samples every --every s for --secs s:
//   latency     hls.latency (hls.js: live edge of the playlist - playhead)
//   pdtLatency  wall clock - hls.playingDate (EXT-X-PROGRAM-DATE-TIME of the playhead: when that frame reached
//               livegate); CMAF playlists only (livegate's MPEG-TS playlists carry no program date-time)
//   glass       wall clock - when the frame on screen was "captured": the input must carry a frame counter (16
//               blocks of 32x32 px at the top left of a 640-wide frame, bit k of the frame number white at
//               block k, the row below the complement; benches/hls_bench.sh makes such inputs with ffmpeg's geq).
//               Frame n's capture instant is T0 + video-offset-ms + n * 1000 / fps, where T0 (the wall clock at
//               media timestamp 0) is calibrated against livegate itself: GET /api/v1/streams/APP/STREAM every
//               20 ms gives the newest media timestamp it holds, and T0 = min(wall - media_ms) over the run
//               (a paced `ffmpeg -re` push delivers media timestamp t at T0 + t). So glass = the age, on screen,
//               of what a real-time camera would have shot, counted from its arrival at livegate.
// Prints ONE JSON line: {ok, url, config, samples: [...], summary: {latency, pdtLatency, glass: {n, p50, p95,
// min, max}}, calibration, startupMs, stalls, errors, warnings}. Exit 0 ok, 1 failure.
// Reuses tests/browser/lib.mjs (Chromium flags, static page server, page skeleton).
import path from 'node:path';
import { launchChromium, playerPage, startStaticServer, NODE_MODULES } from '../tests/browser/lib.mjs';

const args = process.argv.slice(2);
const url = args.find((a, i) => !a.startsWith('--') && (i === 0 || !args[i - 1].startsWith('--')));
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
if (!url) {
  process.stderr.write('usage: node benches/hls_latency.mjs <m3u8-url> [--secs 10] [--every 0.5] [--fps 30] ' +
    "[--video-offset-ms 0] [--config '{...}'] [--shot out.png]\n");
  process.exit(1);
}
const secs = Number(opt('secs', 10));
const every = Number(opt('every', 0.5));
const fps = Number(opt('fps', 30));
const videoOffsetMs = Number(opt('video-offset-ms', 0));
const config = { enableWorker: true, ...JSON.parse(opt('config', '{}')) };
const shot = opt('shot', null);
const startTimeout = Number(opt('start-timeout', 30)) * 1000;

const u = new URL(url);
const [, app, file] = u.pathname.match(/^\/([^/]+)\/([^/]+)\.m3u8$/) || [];
const apiUrl = app ? `${u.origin}/api/v1/streams/${app}/${file}` : null;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const wallNow = () => performance.timeOrigin + performance.now();
const pct = (xs, p) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};
const stats = (xs) => {
  const r = (v) => (v === null ? null : Number(v.toFixed(3)));
  return { n: xs.length, p50: r(pct(xs, 50)), p95: r(pct(xs, 95)), min: r(pct(xs, 0)), max: r(pct(xs, 100)) };
};

// The in-page part: hls.js, a reader of the frame counter, a sampler.
const page_script = `
if (!Hls.isSupported()) throw new Error('hls.js: MSE not supported');
const hls = new Hls(${JSON.stringify(config)});
hls.on(Hls.Events.ERROR, (ev, data) => {
  const msg = 'hls ' + data.type + ': ' + data.details + (data.response ? ' http ' + data.response.code : '');
  (data.fatal ? window.__errors : window.__warnings).push(msg);
});
hls.loadSource(${JSON.stringify(url)});
hls.attachMedia(video);
hls.on(Hls.Events.MANIFEST_PARSED, () => {
  const p = video.play();
  if (p && p.catch) p.catch((e) => window.__warnings.push('play(): ' + e));
});
window.__hls = hls;
// What hls.js loaded first (fragment sn, part index, independent?, its start): how playback began.
window.__loads = [];
hls.on(Hls.Events.FRAG_LOADING, (ev, data) => {
  if (window.__loads.length >= 12) return;
  const p = data.part;
  window.__loads.push({ at: Math.round(performance.now()), sn: data.frag.sn, part: p ? p.index : null,
    independent: p ? p.independent : null, start: Number((p ? p.start : data.frag.start).toFixed(3)),
    currentTime: Number(video.currentTime.toFixed(3)) });
});
window.__stalls = 0;
video.addEventListener('waiting', () => { if (video.currentTime > 0) window.__stalls++; });
const canvas = document.createElement('canvas');
const ctx = canvas.getContext('2d', { willReadFrequently: true });
// The frame counter of the frame on screen, or null (no counter, or a frame that does not read back).
function frameCode() {
  const w = video.videoWidth;
  if (!w) return null;
  const bs = w * 32 / 640;
  const cw = Math.round(bs * 16), ch = Math.round(bs * 2);
  if (canvas.width !== cw || canvas.height !== ch) { canvas.width = cw; canvas.height = ch; }
  ctx.drawImage(video, 0, 0, cw, ch, 0, 0, cw, ch);
  const d = ctx.getImageData(0, 0, cw, ch).data;
  const lum = (x, y) => {
    let s = 0, n = 0;
    for (let dy = -3; dy <= 3; dy++) for (let dx = -3; dx <= 3; dx++) {
      const i = ((Math.round(y) + dy) * cw + Math.round(x) + dx) * 4;
      s += d[i] * 0.299 + d[i + 1] * 0.587 + d[i + 2] * 0.114; n++;
    }
    return s / n;
  };
  let a = 0, b = 0;
  for (let k = 0; k < 16; k++) {
    if (lum(k * bs + bs / 2, bs / 2) > 128) a |= 1 << k;
    if (lum(k * bs + bs / 2, bs + bs / 2) > 128) b |= 1 << k;
  }
  return (a ^ b) === 0xffff ? a : null;
}
// The last frame the compositor presented (requestVideoFrameCallback), read back in its callback.
window.__presented = null;
if (video.requestVideoFrameCallback) {
  const onFrame = (now, meta) => {
    window.__presented = { code: frameCode(), wall: performance.timeOrigin + meta.expectedDisplayTime, mediaTime: meta.mediaTime, n: meta.presentedFrames };
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}
window.__sample = () => {
  const wall = performance.timeOrigin + performance.now();
  const frame = frameCode();
  const presented = window.__presented;
  const pdt = hls.playingDate;
  const details = hls.levels && hls.levels[hls.currentLevel] && hls.levels[hls.currentLevel].details;
  const buf = video.buffered.length ? video.buffered.end(video.buffered.length - 1) - video.currentTime : 0;
  return {
    wall,
    frame,
    presented,
    currentTime: video.currentTime,
    latency: Number.isFinite(hls.latency) ? hls.latency : null,
    targetLatency: Number.isFinite(hls.targetLatency) ? hls.targetLatency : null,
    pdtLatency: pdt && !Number.isNaN(pdt.getTime()) ? (Date.now() - pdt.getTime()) / 1000 : null,
    buffer: buf,
    rate: video.playbackRate,
    partTarget: details ? details.partTarget || 0 : null,
    frames: video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality().totalVideoFrames : 0,
    stalls: window.__stalls,
    loads: window.__loads,
    errors: window.__errors.slice(),
    warnings: window.__warnings.slice(0, 20),
  };
};
`;

const result = { ok: false, url, config, fps, videoOffsetMs, samples: [], errors: [] };
let browser = null;
let server = null;
let stopCalib = false;
const calib = []; // [wall ms midpoint, media_ms]

async function calibrate() {
  if (!apiUrl) return;
  while (!stopCalib) {
    const t0 = wallNow();
    try {
      const r = await fetch(apiUrl);
      const t1 = wallNow();
      if (r.ok) {
        const j = await r.json();
        if (Number.isFinite(j.media_ms)) calib.push([(t0 + t1) / 2, j.media_ms, t1 - t0]);
      }
    } catch {
      // livegate gone or busy: the samples taken so far still count.
    }
    await sleep(20);
  }
}

async function finish(ok, message) {
  stopCalib = true;
  result.ok = ok;
  if (message) result.message = message;
  if (browser) {
    if (shot) await browser.page.screenshot({ path: path.resolve(shot), timeout: 5_000 }).catch(() => {});
    await browser.close();
  }
  if (server) server.close();
  // T0: the earliest wall clock at which media time 0 could have arrived (paced push).
  const offsets = calib.filter(([, , rtt]) => rtt < 20).map(([w, m]) => w - m);
  const t0 = offsets.length ? Math.min(...offsets) : null;
  result.calibration = {
    samples: offsets.length,
    t0,
    // How much later than the earliest the newest media usually was: the push's pacing jitter plus polling.
    lagP50Ms: offsets.length ? Number((pct(offsets, 50) - t0).toFixed(1)) : null,
    lagP95Ms: offsets.length ? Number((pct(offsets, 95) - t0).toFixed(1)) : null,
  };
  for (const s of result.samples) {
    s.glass = t0 !== null && s.frame !== null ? Number(((s.wall - (t0 + videoOffsetMs + (s.frame * 1000) / fps)) / 1000).toFixed(3)) : null;
  }
  const col = (k) => result.samples.map((s) => s[k]).filter((v) => v !== null && v !== undefined);
  result.summary = { latency: stats(col('latency')), pdtLatency: stats(col('pdtLatency')), glass: stats(col('glass')) };
  process.stdout.write(JSON.stringify(result) + '\n');
  if (!ok) process.stderr.write(`hls_latency.mjs: FAIL: ${message}\n`);
  process.exit(ok ? 0 : 1);
}

const hard = setTimeout(() => finish(false, 'hard timeout'), startTimeout + secs * 1000 + 30_000);
hard.unref();

try {
  const libFile = path.join(NODE_MODULES, 'hls.js', 'dist', 'hls.min.js');
  const html = playerPage({ title: 'livegate HLS latency', libPath: '/player.js', script: page_script });
  ({ server } = await startStaticServer({ '/': { body: html }, '/player.js': { file: libFile } }));
  const origin = `http://127.0.0.1:${server.address().port}`;
  const calibration = calibrate();
  browser = await launchChromium();
  const { page } = browser;
  page.on('pageerror', (e) => result.errors.push(`pageerror: ${e.message}`));
  const loaded = wallNow();
  await page.goto(`${origin}/`, { waitUntil: 'load', timeout: 10_000 });
  // Playback has started: the playhead moves and frames are decoded.
  let first = null;
  for (;;) {
    const s = await page.evaluate(() => window.__sample());
    if (s.errors.length) {
      result.errors = s.errors;
      await finish(false, `player error: ${s.errors[0]}`);
    }
    if (s.currentTime > 0 && s.frames > 0) {
      if (first === null) first = s;
      else if (s.currentTime > first.currentTime + 0.2) break;
    }
    if (wallNow() - loaded > startTimeout) await finish(false, 'playback did not start');
    await sleep(50);
  }
  result.startupMs = Math.round(first.wall - loaded);
  const t0 = wallNow();
  for (let i = 0; i * every < secs; i++) {
    const due = t0 + i * every * 1000;
    await sleep(Math.max(0, due - wallNow()));
    const s = await page.evaluate(() => window.__sample());
    result.errors = s.errors;
    result.warnings = s.warnings;
    result.stalls = s.stalls;
    result.firstLoads = s.loads;
    if (s.errors.length) await finish(false, `player error: ${s.errors[0]}`);
    const r3 = (v) => (v === null ? null : Number(v.toFixed(3)));
    result.samples.push({
      t: Number(((s.wall - t0) / 1000).toFixed(3)),
      wall: s.wall,
      frame: s.frame,
      currentTime: r3(s.currentTime),
      presented: s.presented ? { code: s.presented.code, ago: Number(((s.wall - s.presented.wall) / 1000).toFixed(3)), mediaTime: r3(s.presented.mediaTime), n: s.presented.n } : null,
      latency: r3(s.latency),
      targetLatency: r3(s.targetLatency),
      pdtLatency: r3(s.pdtLatency),
      buffer: r3(s.buffer),
      rate: s.rate,
      partTarget: s.partTarget,
    });
  }
  stopCalib = true;
  await calibration;
  await finish(true);
} catch (e) {
  await finish(false, String(e && e.message ? e.message : e).split('\n')[0]);
}
