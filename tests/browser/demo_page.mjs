#!/usr/bin/env node
// Loads livegate's demo page, clicks "play" on the listed stream and checks the video plays.
// usage: node tests/browser/demo_page.mjs <livegate-origin> <stream app/name> <screenshot.png>
// Prints one JSON line {ok, listed, currentTime, frames, width, height, message}; exit 0 ok, 1 failure.
import { launchChromium, HARD_TIMEOUT_MS } from './lib.mjs';

const [origin, stream, shot] = process.argv.slice(2);
if (!origin || !stream || !shot) {
  console.error('usage: demo_page.mjs <origin> <app/stream> <screenshot.png>');
  process.exit(2);
}
const result = { ok: false, listed: false, currentTime: 0, frames: 0, width: 0, height: 0 };
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
try {
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
  if (!(result.currentTime > 2)) await done(false, 'HTTP-FLV video did not play');
  // Then the same stream over WebRTC, from the page's WHEP button.
  await page.locator('#whep').click();
  const until = Date.now() + 20_000;
  let start = null;
  while (Date.now() < until) {
    const w = await page.evaluate(() => {
      const v = document.getElementById('video');
      return { t: v.currentTime, w: v.videoWidth, webrtc: v.srcObject !== null };
    });
    if (w.webrtc && w.w > 0 && w.t > 0) {
      if (start === null) start = w.t;
      if (w.t - start > 2) {
        result.whepWidth = w.w;
        await done(true);
      }
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  await done(false, 'WebRTC video did not play');
} catch (e) {
  await done(false, String(e.message || e).split('\n')[0]);
}
