#!/usr/bin/env node
// Plays an HLS URL (live or VOD) with hls.js in headless Chromium; same contract as flv_play.mjs.
// usage: node tests/browser/hls_play.mjs <m3u8-url> <screenshot.png> [seconds=3]
// Only fatal hls.js errors fail the check; non-fatal ones are reported under "warnings".
import path from 'node:path';
import { NODE_MODULES, runPlaybackCheck } from './lib.mjs';

await runPlaybackCheck({
  name: 'hls_play.mjs',
  title: 'livegate HLS check',
  libFile: path.join(NODE_MODULES, 'hls.js', 'dist', 'hls.min.js'),
  script: (url) => `
if (!Hls.isSupported()) throw new Error('hls.js: MSE not supported');
const hls = new Hls({ lowLatencyMode: true, liveSyncDurationCount: 2, enableWorker: true });
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
`,
});
