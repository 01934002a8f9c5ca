#!/usr/bin/env node
// Loads livegate's demo page, clicks "play" on the listed stream and checks the video plays over HTTP-FLV,
// WebRTC (WHEP) and HLS; then publishes the fake camera with the page's WHIP button as live/cam and plays that
// back over HTTP-FLV.
// usage: node tests/browser/demo_page.mjs <livegate-origin> <stream app/name> <screenshot.png>
// Prints one JSON line {ok, listed, currentTime, frames, width, height, message}; exit 0 ok, 1 failure.
import { launchChromium, HARD_TIMEOUT_MS } from './lib.mjs';

const [origin, stream, shot] = process.argv.slice(2);
if (!origin || !stream || !shot) {
  console.error('usage: demo_page.mjs <origin> <app/stream> <screenshot.png>');
  process.exit(2);
}
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
setTimeout(() => done(false, `timeout after ${HARD_TIMEOUT_MS / 1000}s`), HARD_TIMEOUT_MS).unref();
async function main() {
  const { page } = browser;
  await page.goto(`${origin}/`, { waitUntil: 'load', timeout: 10_000 });
  const row = page.locator('#streams tr', { hasText: stream });
  await row.waitFor({ timeout: 10_000 });
  result.listed = true;
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
  await page.locator('#hls').click();
  const h = await playsFor(page, 1, (x) => !x.webrtc);
  if (!h) return await done(false, 'HLS video did not play');
  result.hlsWidth = h.w;
  // Publish the camera with WHIP, then play it like a mini program would (HTTP-FLV).
  await page.locator('#pubname').fill('live/cam');
  await page.locator('#publish').click();
  await page.locator('#streams tr', { hasText: 'live/cam' }).first().waitFor({ timeout: 15_000 });
  result.pubStatus = await page.locator('#pubstatus').textContent();
  await page.locator('#name').fill('live/cam');
  await page.locator('#play').click();
  const c = await playsFor(page, 2, (x) => !x.webrtc);
  if (!c) return await done(false, 'the WHIP-published camera did not play over HTTP-FLV');
  result.camWidth = c.w;
  result.camHeight = c.h;
  await done(true);
}
try {
  await main();
} catch (e) {
  await done(false, String(e.message || e).split('\n')[0]);
}
