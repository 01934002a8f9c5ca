#!/usr/bin/env node
// Seeks a recorded MP4 in headless Chromium's own <video> player (no MSE), the way a browser plays a
// recording: progressive download with HTTP range requests.
// usage: node tests/browser/mp4_seek.mjs <mp4-url> <screenshot.png> <seek-to-seconds>
// Prints one JSON line:
//   {"ok":bool,"duration":s,"seekedTo":s,"frameMediaTime":s,"frames":n,"rangeRequests":n,"ranges":[...],...}
// ok needs: metadata loaded, `seeked` fired near the target, a video frame from after the target presented
// (requestVideoFrameCallback), no media error, and at least one range request that did not start at byte 0
// answered 206 (the seek was served by a range, not by downloading the whole file).
import { launchChromium, startStaticServer, HARD_TIMEOUT_MS } from './lib.mjs';

const [url, shot, target] = process.argv.slice(2);
const seekTo = Number(target);
if (!url || !shot || !Number.isFinite(seekTo)) {
  process.stderr.write('usage: node tests/browser/mp4_seek.mjs <mp4-url> <screenshot.png> <seek-to-seconds>\n');
  process.exit(1);
}

const result = { ok: false, url, seekTo, ranges: [], rangeRequests: 0, errors: [] };
let browser = null;
let server = null;
const finish = async (ok, message) => {
  result.ok = ok;
  if (message) result.message = message;
  if (browser) {
    await browser.page.screenshot({ path: shot, timeout: 5_000 }).catch(() => {});
    await browser.close();
  }
  if (server) server.close();
  process.stdout.write(JSON.stringify(result) + '\n');
  if (!ok) process.stderr.write(`mp4_seek.mjs: FAIL: ${message}\n`);
  process.exit(ok ? 0 : 1);
};
setTimeout(() => finish(false, 'hard timeout'), HARD_TIMEOUT_MS).unref();

const page_html = `<!doctype html><html><body style="margin:0;background:#000">
<video id="v" muted playsinline preload="metadata" style="width:640px;height:360px"></video>
<script>
window.__r = { errors: [] };
const v = document.getElementById('v');
v.addEventListener('error', () => window.__r.errors.push('video error ' + (v.error && v.error.code) + ' ' + (v.error && v.error.message)));
v.addEventListener('loadedmetadata', () => {
  window.__r.duration = v.duration;
  window.__r.width = v.videoWidth;
  v.addEventListener('seeked', () => {
    window.__r.seekedTo = v.currentTime;
    v.requestVideoFrameCallback((now, meta) => {
      window.__r.frameMediaTime = meta.mediaTime;
      window.__r.presented = meta.presentedFrames;
      const q = v.getVideoPlaybackQuality();
      window.__r.frames = q.totalVideoFrames;
      v.pause();
      window.__r.done = true;
    });
    v.play().catch((e) => window.__r.errors.push('play: ' + e));
  }, { once: true });
  v.currentTime = ${seekTo};
});
v.src = ${JSON.stringify(url)};
</script></body></html>`;

try {
  ({ server } = await startStaticServer({ '/': { body: page_html } }));
  const origin = `http://127.0.0.1:${server.address().port}`;
  browser = await launchChromium({ viewport: { width: 640, height: 360 } });
  const { page } = browser;
  page.on('response', async (resp) => {
    if (!resp.url().startsWith(url)) return;
    const range = (await resp.request().allHeaders())['range'];
    result.ranges.push({ range: range || null, status: resp.status() });
    if (range && resp.status() === 206 && !/^bytes=0-/.test(range)) result.rangeRequests += 1;
  });
  await page.goto(`${origin}/`, { waitUntil: 'load', timeout: 10_000 });
  for (;;) {
    const r = await page.evaluate(() => window.__r);
    Object.assign(result, r);
    if (r.errors.length) await finish(false, r.errors[0]);
    if (r.done) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  if (Math.abs(result.seekedTo - seekTo) > 0.5) await finish(false, `seeked to ${result.seekedTo}, not ${seekTo}`);
  if (!(result.frameMediaTime >= seekTo - 0.5)) await finish(false, `first frame after the seek is at ${result.frameMediaTime}`);
  if (result.rangeRequests < 1) await finish(false, `no range request past byte 0: ${JSON.stringify(result.ranges)}`);
  await finish(true);
} catch (e) {
  await finish(false, String(e && e.message ? e.message : e).split('\n')[0]);
}
