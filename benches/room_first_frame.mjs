// Enter-to-first-remote-frame for a browser room member (issue #11's figure): headless Chromium runs
// web/livegate-room.js as livegate serves it, enters a room where another member is publishing, and times
// enterRoom() → the first frame of that member's video decoded (requestVideoFrameCallback on its WHEP stream);
// then leaves, N times. Prints one JSON line: {"n", "p50_ms", "p99_ms", "max_ms", "all_ms"}.
// usage: node benches/room_first_frame.mjs <server base URL> <sdkAppId> <userId> <userSig> <roomId> [N]
// (benches/room_first_frame.sh sets up the server, the publishing member and the userSig.)
import { launchChromium } from '../tests/browser/lib.mjs';

const [server, sdkAppId, userId, userSig, roomId, n = '10'] = process.argv.slice(2);
const page_html = `<!doctype html><body><script type="module">
import { LivegateRoom } from '/livegate-room.js';
window.measure = async (params) => {
  const room = new LivegateRoom({ server: location.origin });
  const t0 = performance.now();
  await room.enterRoom(params);
  // The library plays each member with WHEP once its video is announced; the first decoded frame ends the clock.
  const ms = await new Promise((resolve, reject) => {
    const deadline = setTimeout(() => reject(new Error('no remote frame within 20 s')), 20000);
    const look = () => {
      const p = room.getPlayerList().find((x) => x.stream && x.stream.getVideoTracks().length);
      if (!p) return setTimeout(look, 5);
      const v = document.createElement('video');
      v.muted = true;
      v.autoplay = true;
      v.srcObject = p.stream;
      document.body.appendChild(v);
      v.requestVideoFrameCallback(() => { clearTimeout(deadline); resolve(performance.now() - t0); v.remove(); });
    };
    look();
  });
  await room.exitRoom();
  return ms;
};
window.__ready = true;
</script></body>`;

const browser = await launchChromium();
const { page } = browser;
try {
  // A document livegate served, rewritten: the page is on the server's origin (Chromium's local-network checks).
  await page.goto(`${server}/livegate-room.js`, { waitUntil: 'load', timeout: 30_000 });
  await page.setContent(page_html, { waitUntil: 'load', timeout: 30_000 });
  await page.waitForFunction(() => window.__ready === true, null, { timeout: 30_000 });
  const all = [];
  for (let i = 0; i < Number(n); i++) {
    const params = { sdkAppId: Number(sdkAppId), userId, userSig, roomId, enableCamera: false, enableMic: false };
    all.push(await page.evaluate((p) => window.measure(p), params));
  }
  const s = [...all].sort((a, b) => a - b);
  const q = (f) => s[Math.min(s.length - 1, Math.ceil(s.length * f) - 1)];
  const r1 = (x) => Math.round(x * 10) / 10;
  console.log(JSON.stringify({ n: s.length, p50_ms: r1(q(0.5)), p99_ms: r1(q(0.99)), max_ms: r1(s[s.length - 1]), all_ms: all.map(r1) }));
} finally {
  await browser.close();
}
