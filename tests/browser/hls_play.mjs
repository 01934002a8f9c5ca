#!/usr/bin/env node
// Plays an HLS URL (live or VOD) with hls.js in headless Chromium; same contract as flv_play.mjs.
// usage: node tests/browser/hls_play.mjs <m3u8-url> <screenshot.png> [seconds=3] [ll]
// With "ll", hls.js runs with its low-latency defaults only (it then holds PART-HOLD-BACK behind live); without
// it, two target durations behind (liveSyncDurationCount: 2), as the classic-HLS tests expect.
// Only fatal hls.js errors fail the check; non-fatal ones are reported under "warnings".
import path from 'node:path';
import { NODE_MODULES, runPlaybackCheck } from './lib.mjs';

const lowLatency = process.argv[5] === 'll';
const config = lowLatency ? { lowLatencyMode: true, enableWorker: true } : { lowLatencyMode: true, liveSyncDurationCount: 2, enableWorker: true };

await runPlaybackCheck({
  name: 'hls_play.mjs',
  title: 'livegate HLS check',
  libFile: path.join(NODE_MODULES, 'hls.js', 'dist', 'hls.min.js'),
  script: (url) => `
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
// What hls.js put into MediaSource (its audio codec: "mp4a.40.2", "opus" …; an fMP4 init section with both
// tracks gets one "audiovideo" SourceBuffer, "avc1.…,opus"), and how much audio Chromium decoded.
let audioCodec = null;
hls.on(Hls.Events.BUFFER_CODECS, (ev, data) => {
  const t = data.audio || data.audiovideo;
  if (t) audioCodec = t.codec || t.container;
});
// Latency as hls.js sees it (live edge - playhead), and from the stream's program date-time (wall clock now -
// the wall-clock time the playhead's frame reached livegate), when the playlist carries one.
window.__extra = () => {
  const out = { lowLatencyMode: hls.lowLatencyMode };
  if (Number.isFinite(hls.latency)) out.latency = Number(hls.latency.toFixed(3));
  const pdt = hls.playingDate;
  if (pdt && !Number.isNaN(pdt.getTime())) out.pdtLatency = Number(((Date.now() - pdt.getTime()) / 1000).toFixed(3));
  const details = hls.levels && hls.levels[hls.currentLevel] && hls.levels[hls.currentLevel].details;
  if (details) out.partTarget = details.partTarget || 0;
  if (audioCodec) out.audioCodec = audioCodec;
  if (typeof video.webkitAudioDecodedByteCount === 'number') out.audioDecodedBytes = video.webkitAudioDecodedByteCount;
  return out;
};
`,
});
