#!/usr/bin/env node
// Loads livegate's demo page, clicks "play" on the listed stream and checks the video plays over HTTP-FLV,
// WebRTC (WHEP) and HLS; then publishes the fake camera with the page's WHIP button as live/cam and plays that
// back over HTTP-FLV. With a room (4th argument, JSON {sdkAppId, userId, userSig, roomId, remote, remoteText}) it
// then stops that camera and uses the Room panel: enters the room as a call member (publishing the fake camera),
// prints {"step":"room-entered"} (the test then lets the `remote` member in and has it publish and say
// `remoteText`), waits for the remote member's video to play in the panel's grid, says something in the chat,
// turns the camera off and on, and leaves. With "hls" instead, it only plays the stream with the page's HLS button
// and reads the HLS mode the page picked, hls.js's config and the latency the page shows (under "hls").
// usage: node tests/browser/demo_page.mjs <livegate-origin> <stream app/name> <screenshot.png> [room-json | hls]
// Prints one JSON line {ok, listed, currentTime, frames, width, height, hls, room?, message}; exit 0 ok, 1 failure.
import { launchChromium, HARD_TIMEOUT_MS } from './lib.mjs';

const [origin, stream, shot, roomArg] = process.argv.slice(2);
if (!origin || !stream || !shot) {
  console.error('usage: demo_page.mjs <origin> <app/stream> <screenshot.png> [room-json | hls]');
  process.exit(2);
}
const hlsOnly = roomArg === 'hls';
const roomCfg = roomArg && !hlsOnly ? JSON.parse(roomArg) : null;
// The room part waits for another member (its ffmpeg, its first keyframe) and plays it: a minute more.
const hardTimeoutMs = HARD_TIMEOUT_MS + (roomCfg ? 60_000 : 0);
const result = { ok: false, listed: false, currentTime: 0, frames: 0, width: 0, height: 0 };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const videoState = (page) => page.evaluate(() => {
  const v = document.getElementById('video');
  return { t: v.currentTime, w: v.videoWidth, h: v.videoHeight, webrtc: v.srcObject !== null };
});
// Waits until the page's <video> has advanced `secs` seconds of media; returns its last state or null.
async function playsFor(page, secs, pred = () => true) {
  const until = Date.now() + 25_000;
  let start = null;
  while (Date.now() < until) {
    const w = await videoState(page);
    if (pred(w) && w.w > 0 && w.t > 0) {
      if (start === null) start = w.t;
      if (w.t - start > secs) return w;
    }
    await sleep(200);
  }
  return null;
}
const browser = await launchChromium({ viewport: { width: 1000, height: 900 } });
const done = async (ok, message) => {
  result.ok = ok;
  if (message) result.message = message;
  await browser.page.screenshot({ path: shot, fullPage: true }).catch(() => {});
  await browser.close();
  console.log(JSON.stringify(result));
  process.exit(ok ? 0 : 1);
};
let step = ''; // what the room part is waiting for, for the timeout's message
setTimeout(() => done(false, `timeout after ${hardTimeoutMs / 1000}s${step ? ` (${step})` : ''}`), hardTimeoutMs).unref();
async function main() {
  const { page } = browser;
  await page.goto(`${origin}/`, { waitUntil: 'load', timeout: 10_000 });
  const row = page.locator('#streams tr', { hasText: stream });
  await row.waitFor({ timeout: 10_000 });
  result.listed = true;
  if (hlsOnly) {
    await page.locator('#name').fill(stream);
    const failed = await playHls(page);
    return await done(!failed, failed);
  }
  await row.locator('button').click();
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const s = await page.evaluate(() => {
      const v = document.getElementById('video');
      const q = v.getVideoPlaybackQuality();
      return { currentTime: v.currentTime, frames: q.totalVideoFrames, width: v.videoWidth, height: v.videoHeight };
    });
    Object.assign(result, s);
    if (s.currentTime > 2 && s.frames > 30 && s.width > 0) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  if (!(result.currentTime > 2)) return await done(false, 'HTTP-FLV video did not play');
  // Then the same stream over WebRTC, from the page's WHEP button.
  await page.locator('#whep').click();
  const w = await playsFor(page, 2, (x) => x.webrtc);
  if (!w) return await done(false, 'WebRTC video did not play');
  result.whepWidth = w.w;
  // And over HLS (hls.js).
  const failed = await playHls(page);
  if (failed) return await done(false, failed);
  // Publish the camera with WHIP, then play it like a mini program would (HTTP-FLV).
  await page.locator('#pubname').fill('live/cam');
  await page.locator('#publish').click();
  await page.locator('#streams tr', { hasText: 'live/cam' }).first().waitFor({ timeout: 15_000 });
  // The stream is listed once the WHIP offer is answered; the page's status follows the connection a moment later.
  const pubDeadline = Date.now() + 15_000;
  do {
    result.pubStatus = await page.locator('#pubstatus').textContent();
    if (result.pubStatus.endsWith(': connected')) break;
    await sleep(200);
  } while (Date.now() < pubDeadline);
  await page.locator('#name').fill('live/cam');
  await page.locator('#play').click();
  const c = await playsFor(page, 2, (x) => !x.webrtc);
  if (!c) return await done(false, 'the WHIP-published camera did not play over HTTP-FLV');
  result.camWidth = c.w;
  result.camHeight = c.h;
  if (roomCfg) {
    await page.locator('#unpublish').click();
    result.room = {};
    const failed = await roomPanel(page, roomCfg, result.room);
    if (failed) return await done(false, failed);
  }
  await done(true);
}

// The page's HLS button: the video plays; then what the page shows of HLS (its mode, the latency it measures, once
// that shows a figure) and the hls.js config it picked go under result.hls. Returns a failure message, or null.
async function playHls(page) {
  await page.locator('#hls').click();
  const h = await playsFor(page, 1, (x) => !x.webrtc);
  if (!h) return 'HLS video did not play';
  result.hlsWidth = h.w;
  const shown = () => page.evaluate(() => {
    const el = document.getElementById('latency');
    const c = hls.userConfig;
    return {
      mode: el.dataset.mode, text: el.textContent, latency: el.dataset.latency, pdtLatency: el.dataset.pdtLatency,
      lowLatencyMode: hls.lowLatencyMode, liveSync: 'liveSyncDuration' in c || 'liveSyncDurationCount' in c,
      targetLatency: hls.targetLatency, partTarget: hls.levels.map((l) => l.details && l.details.partTarget)[0] ?? null,
    };
  });
  // hls.js's figure first; the program date-time one follows (when the playlist has one) within a few seconds.
  let first = null;
  const s = await until('a latency figure on the page', 10_000, async () => {
    const x = await shown();
    if (!x.latency) return null;
    first ??= Date.now();
    return (x.pdtLatency || Date.now() - first > 3000) && x;
  });
  result.hls = s || (await shown());
  // The figure is kept up to date (every half second): a few seconds of it.
  result.hls.seen = [];
  for (let i = 0; s && i < 6; i++) {
    await sleep(500);
    const x = await shown();
    result.hls.seen.push(x.text);
    Object.assign(result.hls, x);
  }
  step = '';
  return s ? null : `the page showed no HLS latency: ${JSON.stringify(result.hls)}`;
}

// Waits until `f()` (in Node) is truthy, polling every 200 ms; returns its value or null after `ms`.
async function until(what, ms, f) {
  step = what;
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const v = await f();
    if (v) return v;
    await sleep(200);
  }
  return null;
}

// The Room panel, driven as a user would; fills `out`; returns a failure message, or null.
async function roomPanel(page, cfg, out) {
  const logOf = () => page.$$eval('#room-log div', (ds) => ds.map((d) => ({ event: d.dataset.event, seq: d.dataset.seq, user: d.dataset.user })));
  const chatOf = () => page.$$eval('#room-chat div', (ds) => ds.map((d) => ({ from: d.dataset.from, text: d.textContent })));
  const statusOf = () => page.locator('#room-status').textContent();
  await page.locator('#room-app').fill(String(cfg.sdkAppId));
  await page.locator('#room-user').fill(cfg.userId);
  await page.locator('#room-sig').fill(cfg.userSig);
  await page.locator('#room-id').fill(cfg.roomId);
  await page.locator('#room-role').selectOption('call');
  await page.locator('#room-enter').click();
  const entered = await until('entering the room', 20_000, async () => {
    const s = await statusOf();
    return (s.startsWith('in ') || s.includes('failed')) && s;
  });
  out.status = entered;
  if (!entered || !entered.startsWith('in call room')) return `the Room panel did not enter: ${entered}`;
  out.cam = await page.locator('#room-cam').textContent();
  process.stdout.write(`${JSON.stringify({ step: 'room-entered' })}\n`);

  // The other member's video: a tile appears in the grid and plays (its picture has a size, its time advances).
  const tile = `#room-grid video[data-user="${cfg.remote}"]`;
  const state = () => page.evaluate((sel) => {
    const v = document.querySelector(sel);
    return v && { t: v.currentTime, w: v.videoWidth, h: v.videoHeight };
  }, tile);
  let first = null;
  const played = await until(`${cfg.remote}'s video in the grid`, 45_000, async () => {
    const s = await state();
    if (!s || !(s.w > 0 && s.t > 0)) return null;
    if (!first) first = s;
    return s.t - first.t >= 2 && s;
  });
  if (!played) return `${cfg.remote}'s video did not play in the Room panel (last ${JSON.stringify(await state())})`;
  out.remote = { width: played.w, height: played.h, from: first.t, to: played.t };
  // What the panel shows now: the grid with this page's camera and the other member's video.
  const roomShot = shot.replace(/(\.png)?$/, '-room.png');
  await page.locator('#room').screenshot({ path: roomShot, timeout: 10_000 });
  out.screenshot = roomShot;

  // The chat: what this page says comes back over its socket; what the other member said is there too.
  await page.locator('#room-text').fill('hello from the demo page');
  await page.locator('#room-send').click();
  const chat = await until('the chat', 15_000, async () => {
    const c = await chatOf();
    const mine = c.some((l) => l.from === cfg.userId && l.text.includes('hello from the demo page'));
    const theirs = c.some((l) => l.from === cfg.remote && l.text.includes(cfg.remoteText));
    return mine && theirs && c;
  });
  out.chat = chat || (await chatOf());
  if (!chat) return `the chat did not show both messages: ${JSON.stringify(out.chat)}`;

  // Camera off: the publish goes on without video (the local tile goes); on again: it comes back.
  const camera = async (label, tiles) => {
    await page.locator('#room-cam').click();
    return until(`camera ${label}`, 15_000, async () => {
      const b = await page.locator('#room-cam').textContent();
      const me = await page.locator('#room-me').count();
      const on = await page.evaluate(() => window.room.getPusherAttributes().enableCamera);
      return b === label && me === tiles && on === (tiles === 1) && { button: b, enableCamera: on };
    });
  };
  out.cameraOff = await camera('Camera on', 0);
  if (!out.cameraOff) return 'Camera off did not turn the camera off';
  out.cameraOn = await camera('Camera off', 1);
  if (!out.cameraOn) return 'Camera on did not turn the camera back on';
  out.pusher = await page.evaluate(() => window.room.getPusherAttributes().connectionState);

  out.events = await logOf();
  await page.locator('#room-leave').click();
  const left = await until('leaving', 15_000, async () => {
    const tiles = await page.locator('#room-grid figure').count();
    const log = await logOf();
    return tiles === 0 && log.some((l) => l.event === 'LOCAL_LEAVE') && (await statusOf());
  });
  if (!left) return `Leave did not empty the panel: ${await statusOf()}`;
  out.left = left;
  out.leaveDisabled = await page.locator('#room-leave').isDisabled();
  out.enterEnabled = await page.locator('#room-enter').isEnabled();
  step = '';
  return null;
}
try {
  await main();
} catch (e) {
  await done(false, String(e.message || e).split('\n')[0]);
}
