#!/usr/bin/env node
// Plays a live HTTP-FLV URL with mpegts.js in headless Chromium and checks that video really plays.
// usage: node tests/browser/flv_play.mjs <flv-url> <screenshot.png> [seconds=3]
// Prints one JSON line {ok,currentTime,frames,dropped,width,height,errors,...}; exit 0 ok, 1 failure.
// The page is served from another 127.0.0.1 port, so the FLV server must send CORS headers.
import path from 'node:path';
import { NODE_MODULES, runPlaybackCheck } from './lib.mjs';

await runPlaybackCheck({
  name: 'flv_play.mjs',
  title: 'livegate HTTP-FLV check',
  libFile: path.join(NODE_MODULES, 'mpegts.js', 'dist', 'mpegts.js'),
  script: (url) => `
if (!mpegts.getFeatureList().mseLivePlayback) throw new Error('no MSE live playback');
const player = mpegts.createPlayer(
  { type: 'flv', isLive: true, url: ${JSON.stringify(url)} },
  {
    enableWorker: false,
    enableStashBuffer: false,
    stashInitialSize: 128,
    lazyLoad: false,
    autoCleanupSourceBuffer: true,
    liveBufferLatencyChasing: true,
    liveBufferLatencyMaxLatency: 1.5,
    liveBufferLatencyMinRemain: 0.3,
  });
player.on(mpegts.Events.ERROR, (type, detail, info) => {
  window.__errors.push('mpegts ' + type + ': ' + detail + ' ' + JSON.stringify(info || {}));
});
player.attachMediaElement(video);
player.load();
const p = player.play();
if (p && p.catch) p.catch((e) => window.__warnings.push('play(): ' + e));
window.__player = player;
`,
});
