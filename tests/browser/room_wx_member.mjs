#!/usr/bin/env node
// A mini program member of a livegate room, run under Node: miniprogram/livegate-wx.js with the `wx` shim, driven
// the way a page drives it (createPusher in onLoad, setData of pusherAttributes / playerList from its events, the
// pusher context's start()). What a page would render is made real:
//   <live-pusher url="{{pusher.url}}" enable-camera enable-mic>  → an ffmpeg process pushing a test picture
//       (testsrc2 320x240, or a solid `color`, H.264 baseline) and tone (880 Hz, AAC) to the signed RTMP URL, with
//       only the kinds that are enabled (a changed kind restarts it, as the component republishes)
//   <live-player src="{{item.src}}"> for each playerList entry    → ffmpeg decoding that URL (HTTP-FLV or RTMP) to
//       per-frame checksums, one process per kind, counting decoded video and audio frames (and distinct ones: a
//       picture that moves, a sound that is not silence)
//
// usage: node room_wx_member.mjs '<json>'   with {server, sdkAppId, userId, userSig, roomId, enableCamera,
//        enableMic, playProtocol?: "flv"|"rtmp", role?, roomName?, privateMapKey?, tone?: Hz,
//        color?: an ffmpeg colour name or 0xRRGGBB (the camera shows that colour, solid, instead of testsrc2)}
// stdin: JSON commands, one a line: {"cmd":"setPusherAttributes","attrs":{...}}, {"cmd":"sendTextMessage",
//        "text","to"?}, {"cmd":"sendCustomMessage","cmdName","data","to"?}, {"cmd":"kickUser","userId"},
//        {"cmd":"requestJoin","reason"}, {"cmd":"respondJoin","requestId","accept"}, {"cmd":"dissolveRoom"},
//        {"cmd":"dropSocket"}, {"cmd":"setPlayProtocol","protocol"}, {"cmd":"exit"} (exitRoom), {"cmd":"quit"}
//        (stdin closing quits too).
// stdout: JSON lines: {"type":"entered",...}, {"type":"event","name",...}, {"type":"player","id","videoFrames",
//        "audioFrames","videoDistinct","audioDistinct","width","height",...} (as counts change),
//        {"type":"pusher","state":"started"|"exited",...}, {"type":"result","cmd","ok",...}, {"type":"exited"},
//        {"type":"error","message"}.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import readline from 'node:readline';
import { installWx } from './wx_shim.mjs';

const require = createRequire(import.meta.url);
const cfg = JSON.parse(process.argv[2] || '{}');
const t0 = Date.now();
const out = (o) => process.stdout.write(`${JSON.stringify({ ...o, t: Date.now() - t0 })}\n`);

// ------------------------------------------------------------------------------------ the page's components

let pusherStarted = false;
const pusherContext = {
  start(o) {
    pusherStarted = true;
    reconcile();
    o?.success?.({});
  },
  stop(o) {
    pusherStarted = false;
    reconcile();
    o?.success?.({});
  },
  pause() {},
  resume() {},
  startPreview() {},
  stopPreview() {},
  switchCamera() {},
};
installWx({ pusherContext: () => pusherContext, playerContext: () => ({ play() {}, stop() {}, mute() {} }) });

const page = {
  data: { pusher: {}, playerList: [] },
  setData(d, cb) {
    Object.assign(this.data, d);
    reconcile();
    if (cb) cb();
  },
};

const children = new Set();
function run(args, onStdout) {
  const p = spawn('ffmpeg', ['-hide_banner', '-nostdin', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(p);
  let err = '';
  p.stderr.on('data', (d) => {
    err = (err + d.toString()).slice(-2000);
  });
  if (onStdout) readline.createInterface({ input: p.stdout }).on('line', onStdout);
  else p.stdout.resume();
  p.done = new Promise((resolve) => p.on('close', (code, signal) => {
    children.delete(p);
    resolve({ code, signal, stderr: err.trim().split('\n').slice(-5).join(' | ') });
  }));
  return p;
}

// <live-pusher>: one ffmpeg publishing what is enabled, while started and given a URL.
let push = null; // {key, proc}
function pushArgs(want) {
  const args = ['-loglevel', 'error'];
  const picture = cfg.color ? `color=c=${cfg.color}:size=320x240:rate=25` : 'testsrc2=size=320x240:rate=25';
  if (want.video) args.push('-re', '-f', 'lavfi', '-i', picture);
  if (want.audio) args.push('-re', '-f', 'lavfi', '-i', `sine=frequency=${cfg.tone || 880}:sample_rate=48000`);
  if (want.video) {
    args.push('-map', '0:v', '-c:v', 'libx264', '-preset', 'ultrafast', '-tune', 'zerolatency', '-profile:v', 'baseline');
    args.push('-pix_fmt', 'yuv420p', '-g', '25', '-bf', '0');
  }
  if (want.audio) args.push('-map', `${want.video ? 1 : 0}:a`, '-c:a', 'aac', '-ar', '48000', '-ac', '1', '-b:a', '64k');
  args.push('-f', 'flv', want.url);
  return args;
}
function reconcilePusher() {
  const a = page.data.pusher || {};
  const on = (pusherStarted || a.autopush) && a.url && (a.enableCamera || a.enableMic);
  const want = on ? { url: a.url, video: !!a.enableCamera, audio: !!a.enableMic } : null;
  const key = want ? JSON.stringify(want) : null;
  if ((push && push.key) === key) return;
  const old = push;
  push = key ? { key, want, proc: null, starts: 0 } : null;
  const start = async () => {
    if (old?.proc) {
      old.proc.kill('SIGKILL');
      await old.proc.done;
    }
    if (push && push.key === key) startPush(push);
  };
  start();
}
function startPush(p) {
  p.starts++;
  p.proc = run(pushArgs(p.want));
  out({ type: 'pusher', state: 'started', video: p.want.video, audio: p.want.audio, starts: p.starts });
  p.proc.done.then((r) => {
    out({ type: 'pusher', state: 'exited', code: r.code, signal: r.signal, stderr: r.stderr });
    // A pusher that drops retries while it should be pushing (as live-pusher does).
    if (push === p) setTimeout(() => push === p && startPush(p), 1000);
  });
}

// <live-player>s: per player while it is listed, a decoding ffmpeg for each kind the member sends (each kind on
// its own, so that a stream whose audio pauses still decodes its video, as a live-player shows it).
const readers = new Map(); // player id -> reader
function reconcilePlayers() {
  const list = page.data.playerList || [];
  const ids = new Set(list.map((p) => p.id));
  for (const [id, r] of readers) {
    if (!ids.has(id)) {
      readers.delete(id);
      r.stopped = true;
      for (const k of ['video', 'audio']) r.procs[k]?.kill('SIGKILL');
      report(r, true);
    }
  }
  for (const p of list) {
    let r = readers.get(p.id);
    if (!r) {
      r = { id: p.id, userID: p.userID, src: p.src, videoFrames: 0, audioFrames: 0, video: new Set(), audio: new Set(), width: 0, height: 0, starts: 0, procs: {}, stopped: false, reported: '' };
      readers.set(p.id, r);
    }
    r.player = p;
    if (r.src !== p.src) {
      // A new src: the component starts over.
      r.src = p.src;
      for (const k of ['video', 'audio']) {
        const old = r.procs[k];
        r.procs[k] = null;
        old?.kill('SIGKILL');
      }
    }
    for (const k of ['video', 'audio']) {
      if (!r.procs[k] && (k === 'video' ? p.hasVideo : p.hasAudio)) startReader(r, k);
    }
  }
}
function startReader(r, kind) {
  if (r.stopped || !r.src) return;
  r.starts++;
  const proc = run(
    ['-loglevel', 'error', '-analyzeduration', '3000000', '-i', r.src, '-map', kind === 'video' ? '0:v:0' : '0:a:0',
      '-flush_packets', '1', '-f', 'framecrc', '-'],
    (line) => {
      if (r.procs[kind] !== proc) return;
      const m = /^#dimensions \d+: (\d+)x(\d+)/.exec(line);
      if (m) {
        r.width = Number(m[1]);
        r.height = Number(m[2]);
        return;
      }
      if (line.startsWith('#')) return;
      const crc = line.split(',').map((x) => x.trim())[5];
      r[`${kind}Frames`]++;
      if (r[kind].size < 100_000) r[kind].add(crc);
    },
  );
  r.procs[kind] = proc;
  proc.done.then((res) => {
    if (r.procs[kind] !== proc || r.stopped) return;
    r.procs[kind] = null;
    out({ type: 'reader', state: 'exited', id: r.id, kind, code: res.code, stderr: res.stderr });
    // A player whose stream ended (or is not there yet) tries again while it is listed, as live-player does.
    setTimeout(() => {
      const p = r.player;
      if (!r.stopped && !r.procs[kind] && (kind === 'video' ? p.hasVideo : p.hasAudio)) startReader(r, kind);
    }, 1000);
  });
}
function report(r, final = false) {
  const o = {
    type: 'player',
    id: r.id,
    userID: r.userID,
    src: r.src,
    videoFrames: r.videoFrames,
    audioFrames: r.audioFrames,
    videoDistinct: r.video.size,
    audioDistinct: r.audio.size,
    width: r.width,
    height: r.height,
    starts: r.starts,
    removed: final,
  };
  const key = JSON.stringify({ ...o, src: undefined });
  if (key === r.reported && !final) return;
  r.reported = key;
  out(o);
}
setInterval(() => readers.forEach((r) => report(r)), 500).unref();

function reconcile() {
  reconcilePusher();
  reconcilePlayers();
}

// --------------------------------------------------------------------------------------------- the page

const LivegateWx = require('../../miniprogram/livegate-wx.js');
const rtc = new LivegateWx(page, { server: cfg.server, playProtocol: cfg.playProtocol || 'flv' });
page.setData({ pusher: rtc.createPusher({}).pusherAttributes });

const E = rtc.EVENT;
for (const name of Object.values(E)) {
  rtc.on(name, ({ eventCode, data }) => {
    const o = { type: 'event', name: eventCode };
    for (const k of ['userID', 'reason', 'role', 'client', 'from', 'to', 'text', 'cmd', 'data', 'requestId', 'accept', 'seq', 'code', 'message', 'self']) {
      if (data[k] !== undefined) o[k] = data[k];
    }
    if (data.player) o.player = { id: data.player.id, hasVideo: data.player.hasVideo, hasAudio: data.player.hasAudio, src: data.player.src };
    if (data.playerList) o.players = data.playerList.map((p) => p.id);
    if (data.pusher) o.pusherUrl = !!data.pusher.url;
    out(o);
  });
}
// What a trtc-wx page does with the events.
for (const name of [E.REMOTE_VIDEO_ADD, E.REMOTE_AUDIO_ADD, E.REMOTE_VIDEO_REMOVE, E.REMOTE_AUDIO_REMOVE, E.REMOTE_USER_LEAVE, E.REMOTE_USER_JOIN]) {
  rtc.on(name, ({ data }) => page.setData({ playerList: data.playerList }));
}
rtc.on(E.JOIN_RESPONSE, ({ data }) => {
  if (data.accept) page.setData({ pusher: rtc.getPusherAttributes() }, () => rtc.getPusherInstance().start());
});
const putOut = () => {
  const r = rtc.exitRoom();
  page.setData({ pusher: r.pusher, playerList: r.playerList });
};
rtc.on(E.KICKED_OUT, putOut);
rtc.on(E.ROOM_CLOSED, putOut);

async function quit(code = 0) {
  for (const r of readers.values()) report(r, true);
  for (const p of children) p.kill('SIGKILL');
  await Promise.all([...children].map((p) => p.done));
  out({ type: 'quit' });
  process.exit(code);
}

async function command(c) {
  const result = (p) =>
    p.then(
      (value) => out({ type: 'result', cmd: c.cmd, ok: true, value }),
      (e) => out({ type: 'result', cmd: c.cmd, ok: false, status: e.status, error: e.code, message: e.message }),
    );
  switch (c.cmd) {
    case 'setPusherAttributes':
      page.setData({ pusher: rtc.setPusherAttributes(c.attrs || {}) });
      out({ type: 'pusherAttributes', enableCamera: page.data.pusher.enableCamera, enableMic: page.data.pusher.enableMic });
      return;
    case 'sendTextMessage':
      return result(rtc.sendTextMessage(c.text, c.to));
    case 'sendCustomMessage':
      return result(rtc.sendCustomMessage(c.cmdName, c.data, c.to));
    case 'kickUser':
      return result(rtc.kickUser(c.userId));
    case 'requestJoin':
      return result(rtc.requestJoin(c.reason));
    case 'respondJoin':
      return result(rtc.respondJoin(c.requestId, c.accept, c.reason));
    case 'dissolveRoom':
      return result(rtc.dissolveRoom());
    case 'dropSocket':
      rtc._dropSocket(c.holdMs || 0);
      out({ type: 'socket', state: 'dropped' });
      return;
    case 'setPlayProtocol':
      page.setData({ playerList: rtc.setPlayProtocol(c.protocol) });
      return;
    case 'exit': {
      const r = rtc.exitRoom();
      page.setData({ pusher: r.pusher, playerList: r.playerList });
      await r.left;
      out({ type: 'exited' });
      return;
    }
    case 'quit':
      return quit(0);
    default:
      out({ type: 'error', message: `unknown command ${c.cmd}` });
  }
}

// Commands run one at a time, in the order given (two messages sent are sent in that order).
let queue = Promise.resolve();
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  let c;
  try {
    c = JSON.parse(line);
  } catch {
    out({ type: 'error', message: `not JSON: ${line}` });
    return;
  }
  queue = queue.then(() => command(c)).catch((e) => out({ type: 'error', message: String(e.stack || e) }));
}).on('close', () => queue.then(() => quit(0)));
process.on('SIGTERM', () => quit(0));

try {
  const pusher = await rtc.enterRoom({
    sdkAppID: cfg.sdkAppId,
    userID: cfg.userId,
    userSig: cfg.userSig,
    roomID: cfg.roomId,
    privateMapKey: cfg.privateMapKey,
    role: cfg.role,
    roomName: cfg.roomName,
    enableCamera: !!cfg.enableCamera,
    enableMic: !!cfg.enableMic,
  });
  out({ type: 'entered', roomId: rtc.roomId, role: rtc.role, pushUrl: !!pusher.url, players: rtc.getPlayerList().map((p) => p.id) });
  // trtc-wx README, step 2: setData the pusher, then start it.
  page.setData({ pusher }, () => rtc.getPusherInstance().start());
} catch (e) {
  out({ type: 'error', message: `enterRoom failed: ${e.message}`, status: e.status, error: e.code });
  await quit(1);
}
