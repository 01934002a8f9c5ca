#!/usr/bin/env node
// A browser member of a livegate room: headless Chromium (fake camera and microphone) running web/livegate-room.js
// as served by livegate itself (`<server>/livegate-room.js`), in a page on the server's origin (a document livegate
// served, rewritten in place; the module and every API, WHIP and WHEP call go to livegate) or, with
// "pageOrigin": "own", in a page on another origin (the integrator's site: every call is cross-origin).
// Each remote member's player stream plays in a muted <video>, its audio through an AnalyserNode.
//
// usage: node room_web_member.mjs '<json>'   with {server, sdkAppId, userId, userSig, roomId, enableCamera,
//        enableMic, role?, roomName?, privateMapKey?, videoCodec?: "h264"|"vp8", pageOrigin?: "server"|"own",
//        fakeVideo?: "<file.y4m>" (the fake camera shows that file, looped, at its own size, instead of Chromium's
//        default 640x480 test pattern)}
// stdin: JSON commands, one a line, as room_wx_member.mjs: setPusherAttributes {attrs}, sendTextMessage {text,to?},
//        sendCustomMessage {cmdName,data,to?}, kickUser {userId}, requestJoin {reason}, respondJoin {requestId,accept},
//        dissolveRoom, dropSocket, exit (exitRoom), quit (stdin closing quits too).
// stdout: JSON lines: {"type":"entered"}, {"type":"event","name",...}, {"type":"player","id","videoFrames","width",
//        "height","audioPackets","audioRms",...} (as they change), {"type":"pusher","framesSent","audioPacketsSent",
//        "connection"}, {"type":"result","cmd","ok",...}, {"type":"exited"}, {"type":"error","message"}.
import readline from 'node:readline';
import { launchChromium, startStaticServer } from './lib.mjs';

const cfg = JSON.parse(process.argv[2] || '{}');
const server = String(cfg.server).replace(/\/+$/, '');
const t0 = Date.now();
const out = (o) => process.stdout.write(`${JSON.stringify({ ...o, t: Date.now() - t0 })}\n`);

const html = `<!doctype html><meta charset="utf-8"><title>livegate room member</title>
<style>video{width:320px;height:240px;background:#000;margin:2px}</style>
<video id="local" muted autoplay playsinline></video><div id="remotes"></div>
<script type="module">
import { LivegateRoom, EVENT } from ${JSON.stringify(`${server}/livegate-room.js`)};
const room = new LivegateRoom({ server: ${JSON.stringify(server)}, videoCodec: ${JSON.stringify(cfg.videoCodec || 'h264')} });
window.__room = room;
const views = new Map(); // player id -> {video, analyser, rms}
function view(player) {
  let v = views.get(player.id);
  if (!v) {
    const video = document.createElement('video');
    video.muted = true; video.autoplay = true; video.playsInline = true; video.id = 'player-' + player.id;
    document.getElementById('remotes').appendChild(video);
    v = { video, analyser: null, audioTrack: null, rms: 0 };
    views.set(player.id, v);
  }
  if (v.video.srcObject !== player.stream) v.video.srcObject = player.stream;
  return v;
}
// Audio level through WebAudio (Chromium feeds a remote track to it only while a media element plays it).
function analyse(v, track) {
  if (v.audioTrack === track) return;
  v.audioTrack = track;
  const ctx = v.ctx || (v.ctx = new AudioContext());
  const an = ctx.createAnalyser();
  ctx.createMediaStreamSource(new MediaStream([track])).connect(an);
  v.analyser = an;
}
for (const name of Object.values(EVENT)) {
  room.on(name, ({ eventCode, data }) => {
    const o = { name: eventCode };
    for (const k of ['userID', 'reason', 'role', 'client', 'from', 'to', 'text', 'cmd', 'data', 'requestId', 'accept', 'seq', 'code', 'message', 'self', 'state']) {
      if (data[k] !== undefined) o[k] = data[k];
    }
    if (data.player) o.player = { id: data.player.id, hasVideo: data.player.hasVideo, hasAudio: data.player.hasAudio, src: !!data.player.src };
    if (data.playerList) o.players = data.playerList.map((p) => p.id);
    if (data.pusher) o.pusherUrl = !!data.pusher.url;
    window.__event(o);
    if (data.playerList) {
      for (const p of data.playerList) view(p);
      for (const [id, v] of views) {
        if (!data.playerList.some((p) => p.id === id)) { v.video.remove(); views.delete(id); }
      }
    }
  });
}
window.__poll = async () => {
  const players = [];
  for (const p of room.getPlayerList()) {
    const v = view(p);
    const inst = room.getPlayerInstance(p.id);
    const s = { id: p.id, userID: p.userID, connection: p.connectionState, videoFrames: 0, audioPackets: 0, width: v.video.videoWidth, height: v.video.videoHeight };
    if (inst && inst.peerConnection) {
      const stats = await inst.peerConnection.getStats();
      stats.forEach((x) => {
        if (x.type === 'inbound-rtp' && x.kind === 'video') s.videoFrames = x.framesDecoded || 0;
        if (x.type === 'inbound-rtp' && x.kind === 'audio') s.audioPackets = x.packetsReceived || 0;
      });
    }
    const at = p.stream.getAudioTracks()[0];
    if (at) analyse(v, at);
    if (v.analyser) {
      const buf = new Float32Array(v.analyser.fftSize);
      v.analyser.getFloatTimeDomainData(buf);
      v.rms = Math.max(v.rms, Math.sqrt(buf.reduce((a, x) => a + x * x, 0) / buf.length));
    }
    s.audioRms = Number(v.rms.toFixed(4));
    players.push(s);
  }
  const pusher = { connection: 'none', framesSent: 0, audioPacketsSent: 0 };
  const pi = room.getPusherInstance();
  if (pi) {
    pusher.connection = pi.peerConnection.connectionState;
    const stats = await pi.peerConnection.getStats();
    stats.forEach((x) => {
      if (x.type === 'outbound-rtp' && x.kind === 'video') pusher.framesSent = x.framesSent || 0;
      if (x.type === 'outbound-rtp' && x.kind === 'audio') pusher.audioPacketsSent = x.packetsSent || 0;
    });
    const local = document.getElementById('local');
    if (pi.stream && local.srcObject !== pi.stream) local.srcObject = pi.stream;
  }
  return { players, pusher };
};
window.__cmd = async (c) => {
  switch (c.cmd) {
    case 'enter': return room.enterRoom(c.params).then((a) => ({ roomId: room.roomId, role: room.role, push: !!a.push, members: (a.members || []).map((m) => m.user_id) }));
    case 'setPusherAttributes': return room.setPusherAttributes(c.attrs || {}).then((a) => ({ enableCamera: a.enableCamera, enableMic: a.enableMic }));
    case 'sendTextMessage': return room.sendTextMessage(c.text, c.to);
    case 'sendCustomMessage': return room.sendCustomMessage(c.cmdName, c.data, c.to);
    case 'kickUser': return room.kickUser(c.userId);
    case 'requestJoin': return room.requestJoin(c.reason);
    case 'respondJoin': return room.respondJoin(c.requestId, c.accept, c.reason);
    case 'dissolveRoom': return room.dissolveRoom();
    case 'dropSocket': room._dropSocket(c.holdMs || 0); return null;
    case 'exit': return room.exitRoom().then(() => null);
    default: throw new Error('unknown command ' + c.cmd);
  }
};
window.__ready = true;
</script>`;

let browser = null;
let staticServer = null;
let quitting = false;
async function quit(code = 0) {
  if (quitting) return;
  quitting = true;
  if (browser) await browser.close();
  if (staticServer) staticServer.close();
  out({ type: 'quit' });
  process.exit(code);
}

async function main() {
  const args = cfg.fakeVideo ? [`--use-file-for-fake-video-capture=${cfg.fakeVideo}`] : [];
  browser = await launchChromium({ viewport: { width: 700, height: 520 }, args });
  const { page } = browser;
  page.on('pageerror', (e) => out({ type: 'error', message: `pageerror: ${e.message}` }));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') out({ type: 'console', level: m.type(), text: m.text() });
  });
  await page.exposeFunction('__event', (o) => out({ type: 'event', ...o }));
  let pageUrl;
  if (cfg.pageOrigin === 'own') {
    ({ server: staticServer } = await startStaticServer({ '/': { body: html } }));
    pageUrl = `http://127.0.0.1:${staticServer.address().port}/`;
    await page.goto(pageUrl, { waitUntil: 'load', timeout: 30_000 });
  } else {
    // A document livegate itself served (the module), rewritten in place: the page is on the server's origin and,
    // for Chromium's local-network checks, in its address space (a page a test router made up is "public" to
    // Chromium, which then refuses its WebSocket to 127.0.0.1).
    await page.goto(`${server}/livegate-room.js`, { waitUntil: 'load', timeout: 30_000 });
    await page.setContent(html, { waitUntil: 'load', timeout: 30_000 });
  }
  await page.waitForFunction(() => window.__ready === true, null, { timeout: 30_000 });

  const run = async (c) => {
    try {
      const value = await page.evaluate((cmd) => window.__cmd(cmd), c);
      out({ type: 'result', cmd: c.cmd, ok: true, value });
      return value;
    } catch (e) {
      const msg = String(e.message || e).split('\n')[0];
      const m = /(\d{3}) (\w+)/.exec(msg);
      out({ type: 'result', cmd: c.cmd, ok: false, status: m ? Number(m[1]) : undefined, error: m ? m[2] : undefined, message: msg });
      return undefined;
    }
  };
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
    queue = queue.then(async () => {
      if (c.cmd === 'quit') return quit(0);
      await run(c);
      if (c.cmd === 'exit') out({ type: 'exited' });
    });
  }).on('close', () => queue.then(() => quit(0)));

  const entered = await run({
    cmd: 'enter',
    params: {
      sdkAppId: cfg.sdkAppId,
      userId: cfg.userId,
      userSig: cfg.userSig,
      roomId: cfg.roomId,
      privateMapKey: cfg.privateMapKey,
      role: cfg.role,
      roomName: cfg.roomName,
      enableCamera: !!cfg.enableCamera,
      enableMic: !!cfg.enableMic,
    },
  });
  if (!entered) return quit(1);
  out({ type: 'entered', ...entered });

  // Report what plays and what is sent, as it changes.
  const last = new Map();
  for (;;) {
    if (quitting) return;
    let s;
    try {
      s = await page.evaluate(() => window.__poll());
    } catch (e) {
      if (quitting) return;
      out({ type: 'error', message: `poll: ${String(e.message || e).split('\n')[0]}` });
      await new Promise((r) => setTimeout(r, 500));
      continue;
    }
    for (const p of s.players) {
      const key = JSON.stringify(p);
      if (last.get(p.id) !== key) {
        last.set(p.id, key);
        out({ type: 'player', ...p });
      }
    }
    const pk = JSON.stringify(s.pusher);
    if (last.get('__pusher') !== pk) {
      last.set('__pusher', pk);
      out({ type: 'pusher', ...s.pusher });
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

process.on('SIGTERM', () => quit(0));
main().catch(async (e) => {
  out({ type: 'error', message: String(e.stack || e).split('\n')[0] });
  await quit(1);
});
