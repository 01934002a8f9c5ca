// livegate-room.js: a browser member of a livegate room (docs/rooms.md, "The room protocol"), shaped like
// Tencent's trtc-wx state machine so that a page written for one reads like a page written for the other.
//
//   import { LivegateRoom, EVENT } from 'https://your-livegate/livegate-room.js';
//   const room = new LivegateRoom({ server: 'https://your-livegate' });
//   room.on(EVENT.REMOTE_VIDEO_ADD, ({ data }) => { videoOf(data.player.userID).srcObject = data.player.stream; });
//   await room.enterRoom({ sdkAppId, userId, userSig, roomId });
//   await room.setPusherAttributes({ enableCamera: true, enableMic: true });   // publishes with WHIP
//   ...
//   await room.exitRoom();
//
// A plain ES module: no build step, no dependencies. It publishes the member's camera and microphone with WHIP
// (to the `push.whip` URL `enter` answers), plays every other member's stream with WHEP (its `play.whep` URL),
// and follows the room over the member's event socket (reconnecting with `since`, answering nothing but its own
// PING every 10 s). Listeners are called as trtc-wx calls them: `fn({ eventCode, data })`.

export const EVENT = Object.freeze({
  LOCAL_JOIN: 'LOCAL_JOIN',
  LOCAL_LEAVE: 'LOCAL_LEAVE',
  KICKED_OUT: 'KICKED_OUT',
  REMOTE_USER_JOIN: 'REMOTE_USER_JOIN',
  REMOTE_USER_LEAVE: 'REMOTE_USER_LEAVE',
  REMOTE_VIDEO_ADD: 'REMOTE_VIDEO_ADD',
  REMOTE_VIDEO_REMOVE: 'REMOTE_VIDEO_REMOVE',
  REMOTE_AUDIO_ADD: 'REMOTE_AUDIO_ADD',
  REMOTE_AUDIO_REMOVE: 'REMOTE_AUDIO_REMOVE',
  REMOTE_STATE_UPDATE: 'REMOTE_STATE_UPDATE',
  ROLE_CHANGED: 'ROLE_CHANGED',
  TEXT_MESSAGE: 'TEXT_MESSAGE',
  // A member's push quality (netQualityLevel: 0 unknown, 1 best ... 5 very poor, 6 unavailable).
  NETWORK_QUALITY: 'NETWORK_QUALITY',
  CUSTOM_MESSAGE: 'CUSTOM_MESSAGE',
  JOIN_REQUEST: 'JOIN_REQUEST',
  JOIN_RESPONSE: 'JOIN_RESPONSE',
  ROOM_CLOSED: 'ROOM_CLOSED',
  ERROR: 'ERROR',
});

const PING_EVERY_MS = 10_000;
// The server pings every 15 s and answers our PING: a socket silent for this long is dead, whatever it says.
const SILENT_SOCKET_MS = 35_000;
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 10_000;
const WHEP_RETRIES = 5;

/** An answer of the room API other than 2xx: `status`, `code` (the `error` field) and `detail`. */
export class LivegateError extends Error {
  constructor(status, code, detail) {
    super(`${status} ${code}${detail ? `: ${detail}` : ''}`);
    this.name = 'LivegateError';
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

/** The URL `url` with its `since` query parameter set to `seq`. */
export function withSince(url, seq) {
  const [base, hash] = url.split('#');
  const [path, query = ''] = base.split('?');
  const params = query.split('&').filter((p) => p && !p.startsWith('since='));
  params.push(`since=${seq}`);
  return `${path}?${params.join('&')}${hash !== undefined ? `#${hash}` : ''}`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class LivegateRoom {
  /**
   * @param {object} options
   * @param {string} options.server        base URL of livegate's HTTP(S) port, e.g. "https://media.example.com"
   * @param {RTCConfiguration} [options.rtcConfig]   for both WHIP and WHEP peer connections
   * @param {boolean} [options.autoPlay=true]        play members' streams (WHEP) as their media arrives
   * @param {string} [options.videoCodec='h264']     what to publish: 'h264' (passed through to mini programs
   *                                                 untouched) or 'vp8' (transcoded to H.264 once, server side)
   * @param {MediaTrackConstraints} [options.video]  getUserMedia constraints of the camera
   * @param {MediaTrackConstraints|boolean} [options.audio]  of the microphone
   */
  constructor(options = {}) {
    if (!options.server) throw new Error('LivegateRoom: options.server (the livegate base URL) is required');
    this.server = String(options.server).replace(/\/+$/, '');
    this.options = { autoPlay: true, videoCodec: 'h264', video: { width: 640, height: 480 }, audio: true, ...options };
    this.EVENT = EVENT;
    this._listeners = new Map();
    this._enterGen = 0;
    this._reset();
  }

  // ---------------------------------------------------------------------------------------------- events

  on(name, fn, ctx) {
    if (typeof fn !== 'function') throw new TypeError('listener must be a function');
    if (!this._listeners.has(name)) this._listeners.set(name, []);
    this._listeners.get(name).push({ fn, ctx });
  }

  /** off(name, fn) removes one listener, off(name) all of an event, off() every listener. */
  off(name, fn) {
    if (name === undefined) this._listeners.clear();
    else if (fn === undefined) this._listeners.delete(name);
    else {
      const l = this._listeners.get(name) || [];
      const i = l.findIndex((x) => x.fn === fn);
      if (i >= 0) l.splice(i, 1);
    }
  }

  _emit(name, data = {}) {
    for (const { fn, ctx } of (this._listeners.get(name) || []).slice()) {
      try {
        // seq: the room's sequence number the event is current to (the last one seen).
        fn.call(ctx, { eventCode: name, data, seq: this._lastSeq });
      } catch (e) {
        console.error(`livegate-room: a ${name} listener threw`, e);
      }
    }
  }

  _error(code, message, extra = {}) {
    this._emit(EVENT.ERROR, { code, message, ...extra });
  }

  // ----------------------------------------------------------------------------------------- enter / exit

  /**
   * Enters a room (creating it when it is not open). Resolves to the server's answer once the member is in;
   * emits LOCAL_JOIN, then REMOTE_USER_JOIN (and REMOTE_VIDEO_ADD / REMOTE_AUDIO_ADD) for everyone already there.
   * `enableCamera` / `enableMic` start publishing at once, as trtc-wx's enterRoom options do.
   */
  async enterRoom(params) {
    if (this._state !== 'idle') throw new Error(`enterRoom: already ${this._state}`);
    const p = normalizeEnter(params);
    for (const k of ['sdkAppId', 'userId', 'userSig']) {
      if (p[k] === undefined || p[k] === '') throw new Error(`enterRoom: ${k} is required`);
    }
    this._state = 'entering';
    const body = { sdkAppId: Number(p.sdkAppId), userId: p.userId, userSig: p.userSig, client: 'web' };
    // mix, record and recordId count on the enter that creates the room (docs/rooms.md, "The room mix").
    for (const k of ['privateMapKey', 'role', 'roomName', 'streamId', 'mix', 'record', 'recordId']) if (p[k] !== undefined) body[k] = p[k];
    const path = p.roomId === undefined ? '/api/v1/rooms/enter' : `/api/v1/rooms/${encodeURIComponent(p.roomId)}/enter`;
    const attempt = ++this._enterGen;
    let answer;
    try {
      answer = await this._request('POST', path, body, false);
    } catch (e) {
      if (attempt === this._enterGen) this._state = 'idle';
      this._error(e.code || 'enter_failed', e.message, { status: e.status });
      throw e;
    }
    if (attempt !== this._enterGen || this._state !== 'entering') {
      // exitRoom() was called while entering: leave again at once.
      const auth = { Authorization: `Bearer ${answer.token}`, 'Content-Type': 'application/json' };
      const room = encodeURIComponent(answer.room ? answer.room.room_id : p.roomId);
      fetch(`${answer.server || this.server}/api/v1/rooms/${room}/leave`, { method: 'POST', headers: auth, body: '{}' }).catch(() => {});
      throw new LivegateError(0, 'cancelled', 'exitRoom was called while entering');
    }
    this._state = 'in';
    this._roomServer = answer.server ? String(answer.server).replace(/\/+$/, '') : this.server;
    this.userId = answer.user_id || p.userId;
    this.room = answer.room;
    this.roomId = String(answer.room && answer.room.room_id !== undefined ? answer.room.room_id : p.roomId);
    this.role = answer.role;
    this.token = answer.token;
    this.push = answer.push || null;
    // The room's mix (CDN-style: what a live room's audience plays), when the room keeps one.
    this.mix = answer.mix || null;
    this._eventsUrl = answer.events_url;
    this._lastSeq = Number(answer.seq) || 0;
    this._emit(EVENT.LOCAL_JOIN, { userID: this.userId, roomID: this.roomId, room: this.room, role: this.role, created: !!answer.created });
    for (const m of answer.members || []) if (m.user_id !== this.userId) this._memberSeen(m);
    this._connect();
    const camera = p.enableCamera !== undefined ? !!p.enableCamera : this._pusher.enableCamera;
    const mic = p.enableMic !== undefined ? !!p.enableMic : this._pusher.enableMic;
    if (camera || mic) await this.setPusherAttributes({ enableCamera: camera, enableMic: mic }).catch(() => {});
    return answer;
  }

  /**
   * Leaves: ends the publish and every play, tells the server, closes the socket, emits LOCAL_LEAVE and resolves
   * to `{ pusher, playerList }` as trtc-wx's exitRoom returns them (both reset).
   */
  async exitRoom() {
    this._enterGen++;
    if (this._state === 'idle') return { pusher: this.getPusherAttributes(), playerList: [] };
    const wasIn = this._state === 'in';
    this._state = 'leaving';
    this._closeSocket();
    await this._stopPublishing();
    await Promise.all([...this._players.values()].map((pl) => this._stopPlay(pl)));
    if (wasIn && this.token) {
      await this._request('POST', this._roomPath('/leave'), {}).catch((e) => {
        // Already out (kicked, timed out): nothing to leave.
        if (e.status !== 404 && e.status !== 401 && e.status !== 403) this._error(e.code || 'leave_failed', e.message);
      });
    }
    this._reset();
    this._emit(EVENT.LOCAL_LEAVE, {});
    return { pusher: this.getPusherAttributes(), playerList: [] };
  }

  _reset() {
    this._state = 'idle';
    this.userId = null;
    this.roomId = null;
    this.room = null;
    this.role = null;
    this.token = null;
    this.push = null;
    this._eventsUrl = null;
    this._lastSeq = 0;
    this._members = new Map(); // userId -> member
    this._players = new Map(); // userId -> player
    this._pusher = { enableCamera: false, enableMic: false, stream: null, pc: null, location: null, video: null, audio: null };
    this._pushChain = Promise.resolve();
    this._socket = null;
    this._socketGen = (this._socketGen || 0) + 1;
  }

  // --------------------------------------------------------------------------------------------- pusher

  /** { enableCamera, enableMic, url (the WHIP URL), stream (the local MediaStream), connectionState }. */
  getPusherAttributes() {
    const pu = this._pusher;
    return {
      url: this.push ? this.push.whip : '',
      enableCamera: pu.enableCamera,
      enableMic: pu.enableMic,
      stream: pu.stream,
      connectionState: pu.pc ? pu.pc.connectionState : 'new',
    };
  }

  /** { peerConnection, stream, location } of the WHIP publish (null before it starts). */
  getPusherInstance() {
    const pu = this._pusher;
    return pu.pc ? { peerConnection: pu.pc, stream: pu.stream, location: pu.location } : null;
  }

  /**
   * Turns the camera and microphone on or off. The first track to come on starts the WHIP publish; later changes
   * swap tracks on the same connection (`replaceTrack`): off sends no frames at all, which the server reads as
   * REMOTE_VIDEO_REMOVE / REMOTE_AUDIO_REMOVE for the others. Resolves to the new pusher attributes.
   */
  setPusherAttributes(attrs = {}) {
    const pu = this._pusher;
    if (attrs.enableCamera !== undefined) pu.enableCamera = !!attrs.enableCamera;
    if (attrs.enableMic !== undefined) pu.enableMic = !!attrs.enableMic;
    const run = this._pushChain.then(() => this._syncPush());
    this._pushChain = run.catch(() => {});
    return run.then(() => this.getPusherAttributes());
  }

  async _syncPush() {
    const pu = this._pusher;
    if (this._state !== 'in') return;
    const want = { video: pu.enableCamera, audio: pu.enableMic };
    if ((want.video || want.audio) && !this.push) {
      const e = new LivegateError(403, 'no_push', 'this member may not publish (a live room\'s audience needs an accepted join request)');
      this._error(e.code, e.message);
      throw e;
    }
    for (const kind of ['video', 'audio']) {
      if (want[kind] && !pu[kind]) {
        const media = await navigator.mediaDevices.getUserMedia({ [kind]: this.options[kind] || true });
        const track = media.getTracks().find((t) => t.kind === kind);
        if (this._pusher !== pu || this._state !== 'in') {
          track.stop(); // left the room meanwhile
          return;
        }
        pu[kind] = track;
      } else if (!want[kind] && pu[kind]) {
        pu[kind].stop();
        pu[kind] = null;
      }
    }
    if (!pu.stream) pu.stream = new MediaStream();
    for (const t of pu.stream.getTracks()) if (t !== pu.video && t !== pu.audio) pu.stream.removeTrack(t);
    for (const t of [pu.video, pu.audio]) if (t && !pu.stream.getTracks().includes(t)) pu.stream.addTrack(t);

    if (pu.pc) {
      // The connection stays; a kind turned off sends nothing (not black frames or silence).
      for (const tr of pu.pc.getTransceivers()) {
        const kind = tr.receiver.track.kind;
        if (tr.sender.track !== pu[kind]) await tr.sender.replaceTrack(pu[kind]);
      }
      return;
    }
    if (!pu.video && !pu.audio) return;
    await this._startPublishing();
  }

  async _startPublishing() {
    const pu = this._pusher;
    const url = this.push.whip;
    const pc = new RTCPeerConnection(this.options.rtcConfig);
    pu.pc = pc;
    // Both kinds always: a kind turned on later is a replaceTrack, not a new offer.
    const video = pc.addTransceiver(pu.video || 'video', { direction: 'sendonly', streams: [pu.stream] });
    pc.addTransceiver(pu.audio || 'audio', { direction: 'sendonly', streams: [pu.stream] });
    if (video.setCodecPreferences && this.options.videoCodec) {
      const want = RTCRtpSender.getCapabilities('video').codecs.filter(
        (c) => c.mimeType.toLowerCase() === `video/${this.options.videoCodec.toLowerCase()}`,
      );
      if (want.length) video.setCodecPreferences(want);
    }
    await pc.setLocalDescription(await pc.createOffer());
    // Non-trickle WHIP: the offer goes with its candidates (livegate answers with all of its own: ICE-lite).
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
      setTimeout(resolve, 2000);
    });
    const r = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
    const body = await r.text();
    if (pu.pc !== pc || this._pusher !== pu) {
      // Stopped (or left the room) meanwhile: end what was just made.
      const loc = r.headers.get('Location');
      if (r.status === 201 && loc) fetch(new URL(loc, url).href, { method: 'DELETE' }).catch(() => {});
      pc.close();
      return;
    }
    if (r.status !== 201) {
      pc.close();
      pu.pc = null;
      const e = errorOf(r.status, body, 'whip_failed');
      this._error(e.code, `WHIP publish refused: ${e.message}`, { status: r.status });
      throw e;
    }
    const loc = r.headers.get('Location');
    pu.location = loc ? new URL(loc, url).href : null;
    pc.addEventListener('connectionstatechange', () => {
      if (pu.pc !== pc) return;
      if (pc.connectionState === 'failed') {
        this._error('publish_failed', 'the WHIP connection failed: publishing again');
        this._stopPublishing({ keepTracks: true }).then(() => sleep(1000)).then(() => {
          if (this._state === 'in' && !pu.pc) this.setPusherAttributes({}).catch(() => {});
        });
      }
    });
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
  }

  async _stopPublishing({ keepTracks = false } = {}) {
    const pu = this._pusher;
    const { pc, location } = pu;
    pu.pc = null;
    pu.location = null;
    if (location) await fetch(location, { method: 'DELETE' }).catch(() => {});
    if (pc) pc.close();
    if (!keepTracks) {
      for (const kind of ['video', 'audio']) {
        if (pu[kind]) pu[kind].stop();
        pu[kind] = null;
      }
      pu.stream = null;
    }
  }

  // -------------------------------------------------------------------------------------------- players

  /**
   * The members whose media is on, one player each, as trtc-wx lists them: { id, userID, streamType, streamID,
   * src (the WHEP URL), hasVideo, hasAudio, muteVideo, muteAudio, stream (a MediaStream to put in a <video>),
   * connectionState, play: { rtmp, flv, hls, whep } }.
   */
  getPlayerList() {
    return [...this._players.values()].map((pl) => this._playerView(pl));
  }

  /** The members of the room other than this one: { userID, role, client, hasVideo, hasAudio, stream, play }. */
  getUserList() {
    return [...this._members.values()].map((m) => ({ ...m, play: m.play && { ...m.play } }));
  }

  /** { ...player, peerConnection } of one player, by its id (`${userID}_main`) or user id. */
  getPlayerInstance(id) {
    const pl = this._playerById(id);
    return pl ? { ...this._playerView(pl), peerConnection: pl.pc } : null;
  }

  /** muteVideo / muteAudio: stop rendering a remote kind (the track is disabled; media still arrives). */
  setPlayerAttributes(id, attrs = {}) {
    const pl = this._playerById(id);
    if (pl) {
      if (attrs.muteVideo !== undefined) pl.muteVideo = !!attrs.muteVideo;
      if (attrs.muteAudio !== undefined) pl.muteAudio = !!attrs.muteAudio;
      for (const t of pl.stream.getTracks()) t.enabled = !(t.kind === 'video' ? pl.muteVideo : pl.muteAudio);
    }
    return this.getPlayerList();
  }

  _playerById(id) {
    if (this._players.has(id)) return this._players.get(id);
    return [...this._players.values()].find((p) => p.id === id) || null;
  }

  _playerView(pl) {
    const m = this._members.get(pl.userID) || {};
    return {
      id: pl.id,
      userID: pl.userID,
      streamType: 'main',
      streamID: m.stream || '',
      src: (m.play && m.play.whep) || '',
      hasVideo: !!m.hasVideo,
      hasAudio: !!m.hasAudio,
      muteVideo: pl.muteVideo,
      muteAudio: pl.muteAudio,
      stream: pl.stream,
      connectionState: pl.pc ? pl.pc.connectionState : 'new',
      play: m.play ? { ...m.play } : null,
    };
  }

  /** Starts the player's WHEP play soon, or restarts it when the member now sends a kind it did not carry. */
  _schedulePlay(pl) {
    if (!this.options.autoPlay || pl.scheduled) return;
    pl.scheduled = true;
    // Media events come in pairs (video and audio a moment apart): one play for both.
    setTimeout(() => {
      pl.scheduled = false;
      const m = this._members.get(pl.userID);
      if (!m || this._players.get(pl.userID) !== pl) return;
      const missing = (m.hasVideo && !pl.kinds.video) || (m.hasAudio && !pl.kinds.audio);
      if (!pl.pc || missing) this._startPlay(pl);
    }, 150);
  }

  /** (Re)starts the WHEP play of a player. */
  async _startPlay(pl, attempt = 0) {
    const m = this._members.get(pl.userID);
    const url = m && m.play && m.play.whep;
    if (!url || this._players.get(pl.userID) !== pl || this._state !== 'in') return;
    this._endPlay(pl);
    const gen = pl.gen;
    const pc = new RTCPeerConnection(this.options.rtcConfig);
    pl.pc = pc;
    pl.kinds = { video: !!m.hasVideo, audio: !!m.hasAudio };
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addEventListener('track', (e) => {
      if (pl.gen !== gen) return;
      for (const old of pl.stream.getTracks()) if (old.kind === e.track.kind) pl.stream.removeTrack(old);
      e.track.enabled = !(e.track.kind === 'video' ? pl.muteVideo : pl.muteAudio);
      pl.stream.addTrack(e.track);
    });
    pc.addEventListener('connectionstatechange', () => {
      if (pl.gen !== gen) return;
      this._emit(EVENT.REMOTE_STATE_UPDATE, { player: this._playerView(pl), state: pc.connectionState });
      if (pc.connectionState === 'failed') setTimeout(() => pl.gen === gen && this._startPlay(pl), 1000);
    });
    try {
      await pc.setLocalDescription(await pc.createOffer());
      if (pl.gen !== gen) return;
      const r = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
      const body = await r.text();
      const loc = r.headers.get('Location');
      const location = r.status === 201 && loc ? new URL(loc, url).href : null;
      if (pl.gen !== gen) {
        // Stopped or restarted meanwhile: end the session just made.
        if (location) fetch(location, { method: 'DELETE' }).catch(() => {});
        return;
      }
      if (r.status !== 201) throw errorOf(r.status, body, 'whep_failed');
      pl.location = location;
      await pc.setRemoteDescription({ type: 'answer', sdp: body });
    } catch (e) {
      if (pl.gen !== gen) return;
      this._endPlay(pl);
      // The stream may be a moment behind its media event (or between a publisher's reconnects): try again.
      const fatal = e.status === 401 || e.status === 403;
      if (!fatal && attempt < WHEP_RETRIES) {
        await sleep(500 * (attempt + 1));
        if (pl.gen === gen + 1 && !pl.pc && this._players.get(pl.userID) === pl) this._startPlay(pl, attempt + 1);
        return;
      }
      this._error(e.code || 'whep_failed', `playing ${pl.userID} failed: ${e.message}`, { userID: pl.userID });
    }
  }

  /** Ends the player's current WHEP session (if any); anything still under way for it is abandoned. */
  _endPlay(pl) {
    pl.gen++;
    const { pc, location } = pl;
    pl.pc = null;
    pl.location = null;
    pl.kinds = {};
    if (location) fetch(location, { method: 'DELETE' }).catch(() => {});
    if (pc) pc.close();
  }

  async _stopPlay(pl) {
    const location = pl.location;
    pl.location = null;
    this._endPlay(pl);
    if (location) await fetch(location, { method: 'DELETE' }).catch(() => {});
    for (const t of pl.stream.getTracks()) pl.stream.removeTrack(t);
  }

  // -------------------------------------------------------------------------------------------- members

  _lists() {
    return { userList: this.getUserList(), playerList: this.getPlayerList() };
  }

  /** A member from `enter` or a SNAPSHOT: joins if new, then its media as it is now. */
  _memberSeen(m) {
    const known = this._members.get(m.user_id);
    if (!known) this._join(m.user_id, m.role, m.client);
    const mem = this._members.get(m.user_id);
    if (m.role) mem.role = m.role;
    if (m.stream) mem.stream = m.stream;
    if (m.play) mem.play = { ...m.play };
    this._media(m.user_id, 'video', !!m.video, m);
    this._media(m.user_id, 'audio', !!m.audio, m);
  }

  _join(userId, role, client) {
    if (this._members.has(userId)) return;
    this._members.set(userId, { userID: userId, role: role || 'audience', client: client || '', hasVideo: false, hasAudio: false, stream: '', play: null });
    this._emit(EVENT.REMOTE_USER_JOIN, { userID: userId, role, client, ...this._lists() });
  }

  _leave(userId, reason) {
    const m = this._members.get(userId);
    if (!m) return;
    // The server sends the media removals first; these only make up for ones missed.
    this._media(userId, 'video', false);
    this._media(userId, 'audio', false);
    this._members.delete(userId);
    this._emit(EVENT.REMOTE_USER_LEAVE, { userID: userId, reason, ...this._lists() });
  }

  _media(userId, kind, on, ev) {
    let m = this._members.get(userId);
    if (!m) {
      if (!on) return;
      this._join(userId);
      m = this._members.get(userId);
    }
    if (ev && ev.stream) m.stream = ev.stream;
    if (ev && ev.play) m.play = { ...ev.play };
    const flag = kind === 'video' ? 'hasVideo' : 'hasAudio';
    if (m[flag] === on) return;
    m[flag] = on;
    let pl = this._players.get(userId);
    if (on && !pl) {
      pl = { id: `${userId}_main`, userID: userId, stream: new MediaStream(), pc: null, location: null, gen: 0, kinds: {}, scheduled: false, muteVideo: false, muteAudio: false };
      this._players.set(userId, pl);
    }
    const view = pl ? this._playerView(pl) : null;
    if (!m.hasVideo && !m.hasAudio && pl) {
      this._players.delete(userId);
      this._stopPlay(pl);
    } else if (on) {
      this._schedulePlay(pl);
    }
    const name = kind === 'video'
      ? (on ? EVENT.REMOTE_VIDEO_ADD : EVENT.REMOTE_VIDEO_REMOVE)
      : (on ? EVENT.REMOTE_AUDIO_ADD : EVENT.REMOTE_AUDIO_REMOVE);
    this._emit(name, { player: view, userID: userId, ...this._lists() });
  }

  /** Brings the member list to a SNAPSHOT: leaves, joins and media changes, each as its event. */
  _snapshot(members) {
    const now = new Map((members || []).filter((m) => m.user_id !== this.userId).map((m) => [m.user_id, m]));
    for (const id of [...this._members.keys()]) if (!now.has(id)) this._leave(id, 'snapshot');
    for (const m of now.values()) this._memberSeen(m);
  }

  // ---------------------------------------------------------------------------------------- the socket

  _connect() {
    if (this._state !== 'in' || !this._eventsUrl) return;
    const gen = ++this._socketGen;
    const url = this._lastSeq ? withSince(this._eventsUrl, this._lastSeq) : this._eventsUrl;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      this._error('socket_failed', String(e));
      this._scheduleReconnect(gen);
      return;
    }
    this._socket = ws;
    let heard = Date.now();
    const timer = setInterval(() => {
      if (this._socketGen !== gen) return clearInterval(timer);
      if (Date.now() - heard > SILENT_SOCKET_MS) {
        ws.close();
        return;
      }
      if (ws.readyState === WebSocket.OPEN) ws.send('{"event":"PING"}');
    }, PING_EVERY_MS);
    ws.onopen = () => {
      heard = Date.now();
      this._backoff = 0;
    };
    ws.onmessage = (msg) => {
      if (this._socketGen !== gen) return;
      heard = Date.now();
      let ev;
      try {
        ev = JSON.parse(msg.data);
      } catch {
        return;
      }
      this._handle(ev);
    };
    ws.onclose = (e) => {
      clearInterval(timer);
      if (this._socketGen !== gen) return;
      this._socket = null;
      // 4000: KICKED_OUT or ROOM_CLOSED came first and said why. Anything else: reconnect with since.
      if (e.code === 4000 || this._state !== 'in') return;
      this._scheduleReconnect(gen);
    };
  }

  _scheduleReconnect(gen) {
    if (this._reconnectFor === gen) return;
    this._reconnectFor = gen;
    this._backoff = Math.min(RECONNECT_MAX_MS, Math.max(RECONNECT_MIN_MS, (this._backoff || 0) * 2));
    setTimeout(() => this._socketGen === gen && this._connect(), this._backoff);
  }

  _closeSocket() {
    this._socketGen++;
    const ws = this._socket;
    this._socket = null;
    if (ws) ws.close(1000, 'bye');
  }

  /** Drops the event socket as a network change would, reconnecting with `since` after `holdMs`: for tests. */
  _dropSocket(holdMs = 0) {
    const ws = this._socket;
    if (!ws) return;
    const gen = ++this._socketGen; // the old socket's close no longer reconnects
    this._socket = null;
    ws.close(3000, 'dropped');
    setTimeout(() => this._socketGen === gen && this._connect(), holdMs);
  }

  _handle(ev) {
    switch (ev.event) {
      case 'PONG':
        return;
      case 'SNAPSHOT':
        this._snapshot(ev.members);
        if (typeof ev.seq === 'number') this._lastSeq = ev.seq;
        return;
      case 'ERROR':
        this._error(ev.code || 'server_error', ev.detail || '');
        return;
      default:
    }
    if (typeof ev.seq === 'number') {
      if (ev.seq <= this._lastSeq) return; // already seen (a replay overlapping what we had)
      this._lastSeq = ev.seq;
    }
    const self = ev.user_id === this.userId;
    switch (ev.event) {
      case 'REMOTE_USER_JOIN':
        if (!self) this._join(ev.user_id, ev.role, ev.client);
        break;
      case 'REMOTE_USER_LEAVE':
        if (self) this._putOut(EVENT.KICKED_OUT, ev.reason || 'left', ev);
        else this._leave(ev.user_id, ev.reason);
        break;
      case 'REMOTE_VIDEO_ADD':
      case 'REMOTE_VIDEO_REMOVE':
      case 'REMOTE_AUDIO_ADD':
      case 'REMOTE_AUDIO_REMOVE':
        if (!self) this._media(ev.user_id, ev.event.includes('VIDEO') ? 'video' : 'audio', ev.event.endsWith('_ADD'), ev);
        break;
      case 'ROLE_CHANGED':
        if (self) this.role = ev.role;
        else if (this._members.has(ev.user_id)) this._members.get(ev.user_id).role = ev.role;
        this._emit(EVENT.ROLE_CHANGED, { userID: ev.user_id, role: ev.role, self, ...this._lists() });
        break;
      case 'NETWORK_QUALITY':
        this._emit(EVENT.NETWORK_QUALITY, { userID: ev.user_id, quality: ev.quality, self: ev.user_id === this.userId });
        break;
      case 'TEXT_MESSAGE':
        this._emit(EVENT.TEXT_MESSAGE, { userID: ev.from, from: ev.from, to: ev.to, text: ev.text, message: ev.text, seq: ev.seq });
        break;
      case 'CUSTOM_MESSAGE':
        this._emit(EVENT.CUSTOM_MESSAGE, { userID: ev.from, from: ev.from, to: ev.to, cmd: ev.cmd, data: ev.data, seq: ev.seq });
        break;
      case 'JOIN_REQUEST':
        this._emit(EVENT.JOIN_REQUEST, { requestId: String(ev.request_id), userID: ev.user_id, reason: ev.reason });
        break;
      case 'JOIN_RESPONSE':
        if (ev.accept && ev.push) this.push = ev.push;
        this._emit(EVENT.JOIN_RESPONSE, { requestId: String(ev.request_id), accept: !!ev.accept, reason: ev.reason, pusher: this.getPusherAttributes() });
        break;
      case 'KICKED_OUT':
        this._putOut(EVENT.KICKED_OUT, ev.reason, ev);
        break;
      case 'ROOM_CLOSED':
        this._putOut(EVENT.ROOM_CLOSED, ev.reason, ev);
        break;
      default:
    }
  }

  /** Out of the room by the server's word: media ends, the socket stays closed; exitRoom() clears the rest. */
  _putOut(name, reason, ev) {
    if (this._state !== 'in') return;
    this._state = 'out';
    this._closeSocket();
    this._stopPublishing();
    for (const pl of this._players.values()) this._stopPlay(pl);
    this._emit(name, { userID: ev.user_id || this.userId, reason });
  }

  // ------------------------------------------------------------------------------------ member calls

  _roomPath(tail = '') {
    return `/api/v1/rooms/${encodeURIComponent(this.roomId)}${tail}`;
  }

  async _request(method, path, body, auth = true) {
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (auth) {
      if (!this.token) throw new LivegateError(0, 'not_in_room', 'enterRoom first');
      headers.Authorization = `Bearer ${this.token}`;
    }
    // A member's calls go to the node its room lives on (the enter's `server`, in a cluster); the rest to ours.
    const base = auth && this._roomServer ? this._roomServer : this.server;
    const r = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    if (!r.ok) throw errorOf(r.status, text, `http_${r.status}`);
    try {
      return text ? JSON.parse(text) : {};
    } catch {
      return {};
    }
  }

  /** A text to everyone (or to `to` only). Resolves to { seq }. */
  sendTextMessage(text, to) {
    return this._request('POST', this._roomPath('/messages'), to ? { to, text } : { text });
  }

  /** { cmd, data } to everyone (or to `to` only). Resolves to { seq }. */
  sendCustomMessage(cmd, data, to) {
    return this._request('POST', this._roomPath('/messages'), to ? { to, cmd, data } : { cmd, data });
  }

  /** A live room's audience asks the presenter to co-host. Resolves to { request_id }. */
  requestJoin(reason = '') {
    return this._request('POST', this._roomPath('/join-requests'), { reason });
  }

  /** The presenter answers a JOIN_REQUEST. */
  respondJoin(requestId, accept, reason = '') {
    return this._request('POST', this._roomPath(`/join-requests/${encodeURIComponent(requestId)}`), { accept: !!accept, reason });
  }

  /** Puts a member out (the presenter, or a call room's creator). */
  kickUser(userId) {
    return this._request('DELETE', this._roomPath(`/members/${encodeURIComponent(userId)}`));
  }

  /** Ends the room for everyone (its creator). */
  dissolveRoom() {
    return this._request('DELETE', this._roomPath());
  }

  /** The room, its members and the current seq, from the server. */
  getRoomInfo() {
    return this._request('GET', this._roomPath());
  }

  /** The app's rooms (a userSig, no room needed). */
  static async listRooms(server, { sdkAppId, userId, userSig, index = 0, cnt = 20 }) {
    const r = await fetch(`${String(server).replace(/\/+$/, '')}/api/v1/rooms/list`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ sdkAppId: Number(sdkAppId), userId, userSig, index, cnt }),
    });
    const text = await r.text();
    if (!r.ok) throw errorOf(r.status, text, `http_${r.status}`);
    return JSON.parse(text);
  }
}

/** trtc-wx's spellings (sdkAppID, userID, roomID, strRoomID) are taken too. */
function normalizeEnter(p = {}) {
  const out = { ...p };
  if (out.sdkAppId === undefined) out.sdkAppId = p.sdkAppID;
  if (out.userId === undefined) out.userId = p.userID;
  if (out.roomId === undefined) out.roomId = p.strRoomID !== undefined ? p.strRoomID : p.roomID;
  if (out.roomId !== undefined) out.roomId = String(out.roomId);
  return out;
}

function errorOf(status, text, fallback) {
  let j = null;
  try {
    j = JSON.parse(text);
  } catch {
    // not JSON
  }
  return new LivegateError(status, (j && j.error) || fallback, (j && j.detail) || (j ? '' : String(text || '').slice(0, 200)));
}

export default LivegateRoom;
