// Shared pieces of the browser playback harnesses (flv_play.mjs, hls_play.mjs).
//
// Each harness: starts a static HTTP server on 127.0.0.1 (random port) serving a page and the player
// library from node_modules (so the media URL is cross-origin and needs CORS from livegate), launches
// Debian's Chromium headless via playwright-core, waits until <video> has played the requested number of
// seconds with frames still rising and no error, takes a PNG screenshot, and prints ONE JSON line:
//   {"ok":bool,"currentTime":s,"frames":n,"dropped":n,"width":px,"height":px,"errors":[...],...}
// Exit code 0 on success, 1 on failure (reason on stderr and in "message").
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const NODE_MODULES = path.join(HERE, 'node_modules');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const HARD_TIMEOUT_MS = 30_000;

// In-page script (interpolated into a page's <script>): `analyseAudio(track)` keeps a remote audio track
// flowing through a muted element (Chromium feeds a remote track to WebAudio only while a media element plays
// it) and exposes an AnalyserNode on it as window.__analyser, which the checks read the level from.
export const ANALYSE_AUDIO_JS = `
function analyseAudio(track) {
  const a = document.createElement('audio');
  a.muted = true; a.autoplay = true; a.srcObject = new MediaStream([track]);
  document.body.appendChild(a);
  const ctx = new AudioContext();
  const an = ctx.createAnalyser();
  ctx.createMediaStreamSource(new MediaStream([track])).connect(an);
  window.__analyser = an;
}`;

// Exactly the flags from shared/TESTING.md. --user-data-dir=<fresh empty dir> is given by
// launchPersistentContext(freshDir) (playwright refuses it inside `args`).
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
  '--allow-loopback-in-peer-connection',
  // Extra flags from the test, e.g. --ignore-certificate-errors-spki-list=<hash> to trust its own certificate.
  ...(process.env.LIVEGATE_CHROMIUM_FLAGS || '').split(' ').filter(Boolean),
];

/**
 * Launch Chromium with a fresh temp profile. `args` are flags added to CHROMIUM_FLAGS (e.g.
 * --use-file-for-fake-video-capture=<file.y4m> for a camera showing that file). Returns {context, page, close()}.
 */
export async function launchChromium({ viewport = { width: 800, height: 450 }, args = [] } = {}) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'livegate-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_FLAGS, ...args],
    viewport,
    // A loaded 2-core machine (the suite beside stress-ng, or builds) has taken over 15 s to start Chromium.
    timeout: 60_000,
  });
  const page = context.pages()[0] || (await context.newPage());
  let closed = false;
  return {
    context,
    page,
    async close() {
      if (closed) return;
      closed = true;
      await context.close().catch(() => {});
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Static server on 127.0.0.1:<random>. `routes` maps a URL path to {file} or {body, type}.
 * Resolves to {server, origin}.
 */
export function startStaticServer(routes) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const route = routes[url.pathname];
    if (!route) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    const type = route.type || (route.file?.endsWith('.js') ? 'text/javascript' : 'text/html');
    const headers = { 'content-type': `${type}; charset=utf-8`, 'cache-control': 'no-store' };
    if (route.file) {
      fs.readFile(route.file, (err, data) => {
        if (err) res.writeHead(500, headers).end(String(err));
        else res.writeHead(200, headers).end(data);
      });
    } else {
      res.writeHead(200, headers).end(route.body);
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      resolve({ server, origin: `http://127.0.0.1:${server.address().port}` });
    });
  });
}

/** Page skeleton: a muted, autoplaying <video id="v"> filling the viewport, then `script`. */
export function playerPage({ title, libPath, script }) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>${title}</title>
<style>html,body{margin:0;height:100%;background:#000}video{display:block;width:100%;height:100%;object-fit:contain}</style>
</head><body>
<video id="v" muted autoplay playsinline></video>
<script src="${libPath}"></script>
<script>
window.__errors = [];
window.__warnings = [];
const video = document.getElementById('v');
video.muted = true;
video.addEventListener('error', () => {
  const e = video.error;
  window.__errors.push('video error: code=' + (e && e.code) + ' ' + ((e && e.message) || ''));
});
window.addEventListener('error', (ev) => window.__errors.push('page error: ' + ev.message));
window.__state = () => {
  const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
  return {
    currentTime: video.currentTime,
    frames: q ? q.totalVideoFrames : 0,
    dropped: q ? q.droppedVideoFrames : 0,
    width: video.videoWidth,
    height: video.videoHeight,
    paused: video.paused,
    readyState: video.readyState,
    errors: window.__errors.slice(),
    warnings: window.__warnings.slice(0, 20),
    // Whatever the player script measures beyond these (hls.js: its latency), merged into the result.
    extra: window.__extra ? window.__extra() : null,
  };
};
try {
${script}
} catch (e) {
  window.__errors.push('setup error: ' + (e && e.stack || e));
}
</script>
</body></html>`;
}

function parseArgs(name) {
  const [url, shot, secs] = process.argv.slice(2);
  const seconds = secs === undefined ? 3 : Number(secs);
  if (!url || !shot || !Number.isFinite(seconds) || seconds <= 0) {
    process.stderr.write(`usage: node tests/browser/${name} <url> <screenshot.png> [seconds=3]\n`);
    process.exit(1);
  }
  return { url, shot: path.resolve(shot), seconds };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Run one playback check and exit the process.
 *   name     harness file name (for usage text)
 *   title    page title
 *   libFile  absolute path of the player library to serve at /player.js
 *   script   (url) => JS source run in the page; it must start playback of `url` into `video`
 *            and push fatal problems to window.__errors (others to window.__warnings).
 */
export async function runPlaybackCheck({ name, title, libFile, script }) {
  const { url, shot, seconds } = parseArgs(name);
  const result = { ok: false, url, currentTime: 0, frames: 0, dropped: 0, width: 0, height: 0, errors: [] };
  let browser = null;
  let server = null;
  let finished = false;

  const finish = async (ok, message) => {
    if (finished) return;
    finished = true;
    result.ok = ok;
    if (message) result.message = message;
    if (browser) {
      await browser.page.screenshot({ path: shot, timeout: 5_000 }).catch((e) => {
        if (ok) {
          result.ok = false;
          result.message = `screenshot failed: ${e.message}`;
        }
      });
      await browser.close();
    }
    if (server) server.close();
    process.stdout.write(JSON.stringify(result) + '\n');
    if (!result.ok) process.stderr.write(`${name}: FAIL: ${result.message}\n`);
    process.exit(result.ok ? 0 : 1);
  };

  const hard = setTimeout(() => {
    finish(false, `hard timeout ${HARD_TIMEOUT_MS / 1000}s: played ${result.currentTime.toFixed(2)}s of ${seconds}s, frames=${result.frames}`);
    setTimeout(() => process.exit(1), 8_000).unref(); // if closing itself hangs
  }, HARD_TIMEOUT_MS);
  hard.unref();

  try {
    if (!fs.existsSync(libFile)) {
      throw new Error(`${libFile} missing: run scripts/setup.sh (npm ci in tests/browser)`);
    }
    const html = playerPage({ title, libPath: '/player.js', script: script(url) });
    ({ server } = await startStaticServer({ '/': { body: html }, '/player.js': { file: libFile } }));
    const origin = `http://127.0.0.1:${server.address().port}`;
    browser = await launchChromium();
    const { page } = browser;
    page.on('pageerror', (e) => result.errors.push(`pageerror: ${e.message}`));
    await page.goto(`${origin}/`, { waitUntil: 'load', timeout: 10_000 });

    let start = null; // {t: currentTime, wall: ms} when playback was first seen
    const history = []; // [wallMs, frames], newest last
    for (;;) {
      if (finished) return;
      const s = await page.evaluate(() => window.__state());
      Object.assign(result, {
        currentTime: s.currentTime,
        frames: s.frames,
        dropped: s.dropped,
        width: s.width,
        height: s.height,
      });
      if (s.extra) Object.assign(result, s.extra);
      result.errors = [...new Set([...result.errors, ...s.errors])];
      if (s.warnings.length) result.warnings = s.warnings;
      if (result.errors.length) return finish(false, `player error: ${result.errors[0]}`);

      const now = Date.now();
      if (start === null && s.currentTime > 0) start = { t: s.currentTime, wall: now };
      history.push([now, s.frames]);
      if (history.length > 100) history.shift();
      const played = start === null ? 0 : s.currentTime - start.t;
      const wall = start === null ? 0 : (now - start.wall) / 1000;
      result.played = Number(played.toFixed(3));
      // frames still rising: more decoded frames now than >= 1 s ago
      const ref = history.findLast(([t]) => now - t >= 1_000);
      const rising = ref !== undefined && s.frames > ref[1];
      // currentTime advanced by >= seconds (and not just by a seek: wall clock agrees)
      if (played >= seconds && wall >= seconds * 0.9 && rising && s.width > 0) return finish(true);
      await sleep(200);
    }
  } catch (e) {
    return finish(false, String(e && e.message ? e.message : e).split('\n')[0]);
  }
}
