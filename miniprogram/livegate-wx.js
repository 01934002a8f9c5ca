// livegate-wx.js: a WeChat mini program member of a livegate room (docs/rooms.md, "The room protocol"), the state
// machine Tencent's trtc-wx is, for a server you host. The page binds <live-pusher> to `pusherAttributes` and one
// <live-player> per entry of `playerList`, exactly as with trtc-wx; what differs is that the URLs are plain signed
// rtmp:// (push) and http(s)://….flv or rtmp:// (play) URLs from livegate instead of room:// URLs, and that
// enterRoom answers asynchronously (a Promise), since livegate is asked over HTTP first.
//
//   const LivegateWx = require('./livegate-wx.js');
//   Page({
//     onLoad() {
//       this.rtc = new LivegateWx(this, { server: 'https://media.example.com' });
//       this.setData({ pusher: this.rtc.createPusher({}).pusherAttributes });
//       const E = this.rtc.EVENT;
//       for (const e of [E.REMOTE_VIDEO_ADD, E.REMOTE_AUDIO_ADD, E.REMOTE_VIDEO_REMOVE, E.REMOTE_AUDIO_REMOVE,
//                        E.REMOTE_USER_LEAVE]) this.rtc.on(e, ({ data }) => this.setData({ playerList: data.playerList }));
//     },
//     enter() {
//       this.rtc.enterRoom({ sdkAppID, userID, userSig, roomID, enableCamera: true, enableMic: true })
//         .then((pusher) => this.setData({ pusher }, () => this.rtc.getPusherInstance().start()));
//     },
//   });
//
// Only wx.request, wx.connectSocket (and wx.createLivePusherContext / wx.createLivePlayerContext for the pusher's
// and players' own methods) are used. Listeners are called as trtc-wx calls them: fn({ eventCode, data }).

'use strict';

var EVENT = {
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
  LOCAL_NET_STATE_UPDATE: 'LOCAL_NET_STATE_UPDATE',
  REMOTE_NET_STATE_UPDATE: 'REMOTE_NET_STATE_UPDATE',
  LOCAL_AUDIO_VOLUME_UPDATE: 'LOCAL_AUDIO_VOLUME_UPDATE',
  REMOTE_AUDIO_VOLUME_UPDATE: 'REMOTE_AUDIO_VOLUME_UPDATE',
  VIDEO_FULLSCREEN_UPDATE: 'VIDEO_FULLSCREEN_UPDATE',
  BGM_PLAY_START: 'BGM_PLAY_START',
  BGM_PLAY_PROGRESS: 'BGM_PLAY_PROGRESS',
  BGM_PLAY_COMPLETE: 'BGM_PLAY_COMPLETE',
  PLAYER_WARNING: 'PLAYER_WARNING',
  ROLE_CHANGED: 'ROLE_CHANGED',
  TEXT_MESSAGE: 'TEXT_MESSAGE',
  // A member's push quality (netQualityLevel: 0 unknown, 1 best ... 5 very poor, 6 unavailable).
  NETWORK_QUALITY: 'NETWORK_QUALITY',
  CUSTOM_MESSAGE: 'CUSTOM_MESSAGE',
  JOIN_REQUEST: 'JOIN_REQUEST',
  JOIN_RESPONSE: 'JOIN_RESPONSE',
  ROOM_CLOSED: 'ROOM_CLOSED',
  ERROR: 'ERROR',
};

var PING_EVERY_MS = 10000;
var SILENT_SOCKET_MS = 35000; // the server pings every 15 s and answers PING: silence this long is a dead socket
var RECONNECT_MIN_MS = 500;
var RECONNECT_MAX_MS = 10000;

// <live-pusher> attributes (the names the component takes, camel-cased as trtc-wx keeps them).
var PUSHER_DEFAULTS = {
  url: '',
  mode: 'RTC',
  autopush: false,
  enableCamera: false,
  enableMic: false,
  enableAgc: true,
  enableAns: true,
  enableEarMonitor: false,
  enableAutoFocus: true,
  enableZoom: false,
  minBitrate: 600,
  maxBitrate: 900,
  videoWidth: 360,
  videoHeight: 640,
  beautyLevel: 0,
  whitenessLevel: 0,
  videoOrientation: 'vertical',
  videoAspect: '9:16',
  frontCamera: 'front',
  enableRemoteMirror: false,
  localMirror: 'auto',
  enableBackgroundMute: false,
  audioQuality: 'high',
  audioVolumeType: 'voicecall',
  audioReverbType: 0,
  waitingImage: '',
  beautyStyle: 'smooth',
  filter: '',
  netStatus: {},
};

// <live-player> attributes. min/max cache: livegate's ?mode=rtc keeps the server side as short.
var PLAYER_DEFAULTS = {
  src: '',
  mode: 'RTC',
  autoplay: true,
  muteAudio: false,
  muteVideo: false,
  orientation: 'vertical',
  objectFit: 'fillCrop',
  enableBackgroundMute: false,
  minCache: 0.2,
  maxCache: 0.8,
  soundMode: 'speaker',
  enableRecvMessage: false,
  autoPauseIfNavigate: true,
  autoPauseIfOpenNative: true,
  isVisible: true,
  netStatus: {},
  volume: 0,
};

function assign(target) {
  for (var i = 1; i < arguments.length; i++) {
    var src = arguments[i];
    if (src) for (var k in src) if (Object.prototype.hasOwnProperty.call(src, k)) target[k] = src[k];
  }
  return target;
}

/** The URL `url` with its `since` query parameter set to `seq`. */
function withSince(url, seq) {
  var hashAt = url.indexOf('#');
  var hash = hashAt >= 0 ? url.slice(hashAt) : '';
  var base = hashAt >= 0 ? url.slice(0, hashAt) : url;
  var q = base.indexOf('?');
  var path = q >= 0 ? base.slice(0, q) : base;
  var params = (q >= 0 ? base.slice(q + 1) : '').split('&').filter(function (p) {
    return p && p.indexOf('since=') !== 0;
  });
  params.push('since=' + seq);
  return path + '?' + params.join('&') + hash;
}

function addQuery(url, param) {
  var key = param.split('=')[0] + '=';
  if (new RegExp('[?&]' + key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).test(url)) return url;
  return url + (url.indexOf('?') >= 0 ? '&' : '?') + param;
}

/** An answer of the room API other than 2xx: status, code (its `error`) and detail. */
function LivegateError(status, code, detail) {
  var e = new Error(status + ' ' + code + (detail ? ': ' + detail : ''));
  e.name = 'LivegateError';
  e.status = status;
  e.code = code;
  e.detail = detail;
  return e;
}

// ------------------------------------------------------------------------------------------------ pusher

function Pusher(config, ctx) {
  this.ctx = ctx;
  this.context = null;
  this.pusherAttributes = assign({}, PUSHER_DEFAULTS, config);
}

Pusher.prototype._context = function () {
  if (!this.context && typeof wx !== 'undefined' && wx.createLivePusherContext) {
    this.context = wx.createLivePusherContext(this.ctx);
  }
  return this.context;
};

Pusher.prototype.setPusherAttributes = function (attrs) {
  assign(this.pusherAttributes, attrs);
  return this.pusherAttributes;
};

// The LivePusherContext's methods, as trtc-wx's pusher instance has them.
['start', 'stop', 'pause', 'resume', 'startPreview', 'stopPreview', 'switchCamera', 'snapshot', 'toggleTorch',
  'playBGM', 'pauseBGM', 'resumeBGM', 'stopBGM', 'setBGMVolume', 'setMICVolume', 'sendMessage'].forEach(function (m) {
  Pusher.prototype[m] = function (opts) {
    var c = this._context();
    if (m === 'switchCamera') {
      this.pusherAttributes.frontCamera = this.pusherAttributes.frontCamera === 'front' ? 'back' : 'front';
    }
    if (c && typeof c[m] === 'function') c[m](opts || {});
    return this.pusherAttributes;
  };
});

Pusher.prototype.reset = function () {
  if (this.context) {
    try {
      this.context.stop({});
    } catch (e) {
      // the component may be gone already
    }
  }
  this.context = null;
  this.pusherAttributes = assign({}, PUSHER_DEFAULTS, { url: '' });
  return this.pusherAttributes;
};

// ------------------------------------------------------------------------------------------------ the room

/**
 * @param ctx      the page (or component) the <live-pusher>/<live-player>s are in (trtc-wx's first argument)
 * @param options  { server: 'https://media.example.com' (livegate's HTTP(S) base URL, required),
 *                   playProtocol: 'flv' (HTTP-FLV, default) | 'rtmp', lowLatency: true (adds mode=rtc to FLV) }
 */
function LivegateWx(ctx, options) {
  options = options || {};
  if (!options.server) throw new Error('livegate-wx: options.server (the livegate base URL) is required');
  this.ctx = ctx;
  this.server = String(options.server).replace(/\/+$/, '');
  this.options = assign({ playProtocol: 'flv', lowLatency: true }, options);
  this.EVENT = EVENT;
  this.pusherInstance = null;
  this._listeners = {};
  this._socketGen = 0;
  this._enterGen = 0;
  this._reset();
}

LivegateWx.EVENT = EVENT;
LivegateWx.withSince = withSince;

LivegateWx.prototype._reset = function () {
  this._state = 'idle';
  this.userId = null;
  this.roomId = null;
  this.room = null;
  this.role = null;
  this.token = null;
  this.push = null;
  this._eventsUrl = null;
  this._lastSeq = 0;
  this._members = {}; // userId -> member
  this._order = []; // user ids in join order
  this._players = {}; // userId -> player attributes
  this._socket = null;
  this._socketGen++;
  this._backoff = 0;
  if (this._pingTimer) clearInterval(this._pingTimer);
  this._pingTimer = null;
};

// ------------------------------------------------------------------------------------------------ events

LivegateWx.prototype.on = function (name, fn, ctx) {
  if (typeof fn !== 'function') throw new TypeError('listener must be a function');
  (this._listeners[name] = this._listeners[name] || []).push({ fn: fn, ctx: ctx });
};

/** off(name, fn) removes one listener, off(name) all of an event, off() every listener. */
LivegateWx.prototype.off = function (name, fn) {
  if (name === undefined) this._listeners = {};
  else if (fn === undefined) delete this._listeners[name];
  else {
    var l = this._listeners[name] || [];
    for (var i = 0; i < l.length; i++) {
      if (l[i].fn === fn) {
        l.splice(i, 1);
        break;
      }
    }
  }
};

LivegateWx.prototype._emit = function (name, data) {
  var l = (this._listeners[name] || []).slice();
  for (var i = 0; i < l.length; i++) {
    try {
      // seq: the room's sequence number the event is current to (the last one seen).
      l[i].fn.call(l[i].ctx, { eventCode: name, data: data || {}, seq: this._lastSeq });
    } catch (e) {
      console.error('livegate-wx: a ' + name + ' listener threw', e);
    }
  }
};

LivegateWx.prototype._error = function (code, message, extra) {
  this._emit(EVENT.ERROR, assign({ code: code, message: message }, extra));
};

// ------------------------------------------------------------------------------------------------ HTTP

LivegateWx.prototype._request = function (method, path, body, auth) {
  var self = this;
  return new Promise(function (resolve, reject) {
    var header = { 'content-type': 'application/json' };
    if (auth !== false) {
      if (!self.token) return reject(LivegateError(0, 'not_in_room', 'enterRoom first'));
      header.Authorization = 'Bearer ' + self.token;
    }
    // A member's calls go to the node its room lives on (the enter's `server`, in a cluster); the rest to ours.
    var base = auth !== false && self._roomServer ? self._roomServer : self.server;
    wx.request({
      url: base + path,
      method: method,
      header: header,
      data: body === undefined ? (method === 'GET' ? undefined : {}) : body,
      dataType: 'json',
      success: function (res) {
        var data = res.data;
        if (typeof data === 'string') {
          try {
            data = data ? JSON.parse(data) : {};
          } catch (e) {
            data = { detail: data };
          }
        }
        if (res.statusCode >= 200 && res.statusCode < 300) resolve(data || {});
        else reject(LivegateError(res.statusCode, (data && data.error) || 'http_' + res.statusCode, (data && data.detail) || ''));
      },
      fail: function (err) {
        reject(LivegateError(0, 'network', (err && err.errMsg) || 'request failed'));
      },
    });
  });
};

LivegateWx.prototype._roomPath = function (tail) {
  return '/api/v1/rooms/' + encodeURIComponent(this.roomId) + (tail || '');
};

// ------------------------------------------------------------------------------------------------ pusher API

/** As trtc-wx: makes the pusher state (call it in onLoad); its `pusherAttributes` go to <live-pusher>. */
LivegateWx.prototype.createPusher = function (config) {
  this.pusherInstance = new Pusher(config || {}, this.ctx);
  return this.pusherInstance;
};

LivegateWx.prototype.getPusherInstance = function () {
  if (!this.pusherInstance) this.createPusher({});
  return this.pusherInstance;
};

LivegateWx.prototype.getPusherAttributes = function () {
  return this.getPusherInstance().pusherAttributes;
};

/**
 * enableCamera / enableMic (and any other <live-pusher> attribute): returns the new attributes for setData. With
 * enable-mic off the pusher sends no audio, which the others see as REMOTE_AUDIO_REMOVE (camera: VIDEO).
 */
LivegateWx.prototype.setPusherAttributes = function (attrs) {
  var a = assign({}, attrs);
  delete a.url; // the room decides where this member publishes
  return this.getPusherInstance().setPusherAttributes(a);
};

// ------------------------------------------------------------------------------------------------ enter / exit

/**
 * Enters a room (creating it if it is not open). Takes trtc-wx's parameters (sdkAppID, userID, userSig, roomID or
 * strRoomID, privateMapKey, enableCamera, enableMic, other pusher attributes) and livegate's (role, roomName,
 * streamId; sdkAppId/userId/roomId spellings too). Resolves to the pusher attributes, `url` being the member's
 * signed RTMP push URL (empty for a live room's audience until its join request is accepted). Emits LOCAL_JOIN,
 * then REMOTE_USER_JOIN and REMOTE_VIDEO_ADD / REMOTE_AUDIO_ADD for everyone already in the room.
 */
LivegateWx.prototype.enterRoom = function (params) {
  var self = this;
  params = params || {};
  if (this._state !== 'idle') return Promise.reject(new Error('enterRoom: already ' + this._state));
  var sdkAppId = params.sdkAppID !== undefined ? params.sdkAppID : params.sdkAppId;
  var userId = params.userID !== undefined ? params.userID : params.userId;
  var roomId = params.strRoomID !== undefined ? params.strRoomID : params.roomID !== undefined ? params.roomID : params.roomId;
  var missing = !sdkAppId ? 'sdkAppID' : !userId ? 'userID' : !params.userSig ? 'userSig' : null;
  if (missing) {
    this._error('invalid_params', 'enterRoom: ' + missing + ' is required');
    return Promise.reject(new Error('enterRoom: ' + missing + ' is required'));
  }
  var body = { sdkAppId: Number(sdkAppId), userId: String(userId), userSig: params.userSig, client: 'miniprogram' };
  // mix, record and recordId count on the enter that creates the room (docs/rooms.md, "The room mix").
  ['privateMapKey', 'role', 'roomName', 'streamId', 'mix', 'record', 'recordId'].forEach(function (k) {
    if (params[k] !== undefined && params[k] !== '') body[k] = params[k];
  });
  var path = roomId === undefined || roomId === '' ? '/api/v1/rooms/enter' : '/api/v1/rooms/' + encodeURIComponent(String(roomId)) + '/enter';
  this._state = 'entering';
  var attempt = ++this._enterGen;
  return this._request('POST', path, body, false).then(
    function (answer) {
      if (attempt !== self._enterGen || self._state !== 'entering') {
        // exitRoom() was called while entering: leave again at once.
        var room = encodeURIComponent(answer.room ? answer.room.room_id : String(roomId));
        wx.request({ url: (answer.server || self.server) + '/api/v1/rooms/' + room + '/leave', method: 'POST', data: {}, header: { 'content-type': 'application/json', Authorization: 'Bearer ' + answer.token } });
        throw LivegateError(0, 'cancelled', 'exitRoom was called while entering');
      }
      self._state = 'in';
      self._roomServer = answer.server ? String(answer.server).replace(/\/+$/, '') : self.server;
      self.userId = answer.user_id || String(userId);
      self.room = answer.room || null;
      self.roomId = String(answer.room && answer.room.room_id !== undefined ? answer.room.room_id : roomId);
      self.role = answer.role;
      self.token = answer.token;
      self.push = answer.push || null;
      // The room's mix (CDN-style: what a live room's audience plays, e.g. its mix.play.flv in a <live-player>).
      self.mix = answer.mix || null;
      self._eventsUrl = answer.events_url;
      self._lastSeq = Number(answer.seq) || 0;
      var pusher = self.getPusherInstance();
      var attrs = {};
      for (var k in params) {
        // Pusher attributes only: credentials never go into page data.
        if (Object.prototype.hasOwnProperty.call(PUSHER_DEFAULTS, k) && k !== 'url') attrs[k] = params[k];
      }
      attrs.url = self.push ? self.push.rtmp : '';
      pusher.setPusherAttributes(attrs);
      self._emit(EVENT.LOCAL_JOIN, { userID: self.userId, roomID: self.roomId, room: self.room, role: self.role, created: !!answer.created });
      (answer.members || []).forEach(function (m) {
        if (m.user_id !== self.userId) self._memberSeen(m);
      });
      self._connect();
      return pusher.pusherAttributes;
    },
    function (e) {
      if (attempt === self._enterGen) self._state = 'idle';
      self._error(e.code || 'enter_failed', e.message, { status: e.status });
      throw e;
    }
  );
};

/**
 * Leaves, as trtc-wx's exitRoom: resets the pusher and players and returns { pusher, playerList } for setData at
 * once (and emits LOCAL_LEAVE); `left` is a Promise of the server's answer to the leave.
 */
LivegateWx.prototype.exitRoom = function () {
  var self = this;
  this._enterGen++;
  var wasIn = this._state === 'in';
  var token = this.token;
  var path = this.roomId !== null ? this._roomPath('/leave') : null;
  this._closeSocket();
  var pusher = this.pusherInstance ? this.pusherInstance.reset() : assign({}, PUSHER_DEFAULTS);
  var playerIds = Object.keys(this._players);
  playerIds.forEach(function (id) {
    self._stopPlayerContext(self._players[id]);
  });
  this._reset();
  var left = Promise.resolve(null);
  if (wasIn && token && path) {
    this.token = token;
    left = this._request('POST', path, {}).then(
      function (r) {
        return r;
      },
      function (e) {
        // Already out (kicked, timed out): nothing to leave.
        if (e.status !== 404 && e.status !== 401 && e.status !== 403) self._error(e.code || 'leave_failed', e.message);
        return null;
      }
    );
    this.token = null;
  }
  this._emit(EVENT.LOCAL_LEAVE, {});
  return { pusher: pusher, playerList: [], left: left };
};

// ------------------------------------------------------------------------------------------------ players

LivegateWx.prototype._src = function (m) {
  var play = m.play || {};
  if (this.options.playProtocol === 'rtmp' && play.rtmp) return play.rtmp;
  if (play.flv) return this.options.lowLatency ? addQuery(play.flv, 'mode=rtc') : play.flv;
  return play.rtmp || '';
};

function pathOf(url) {
  var q = url.indexOf('?');
  return q >= 0 ? url.slice(0, q) : url;
}

/** Whether a signed URL's txTime (its expiry, hex Unix seconds) is past or within a minute. */
function expiresSoon(url) {
  var m = /[?&]txTime=([0-9a-fA-F]+)/.exec(url);
  return !!m && parseInt(m[1], 16) * 1000 < Date.now() + 60000;
}

/**
 * Every event re-signs a member's play URLs; a <live-player> whose src changes starts over, so a player keeps the
 * URL it has while it is the same stream and still valid.
 */
LivegateWx.prototype._refreshSrc = function (p, m) {
  var next = this._src(m);
  if (next && (!p.src || pathOf(p.src) !== pathOf(next) || expiresSoon(p.src))) p.src = next;
};

/** One entry per member whose media is on, for <live-player wx:for="{{playerList}}" id="{{item.id}}" src="{{item.src}}">. */
LivegateWx.prototype.getPlayerList = function () {
  var self = this;
  var out = [];
  this._order.forEach(function (id) {
    if (self._players[id]) out.push(assign({}, self._players[id]));
  });
  return out;
};

/** The members of the room other than this one: { userID, role, client, hasVideo, hasAudio, streamID, play }. */
LivegateWx.prototype.getUserList = function () {
  var self = this;
  return this._order.map(function (id) {
    var m = self._members[id];
    return { userID: id, role: m.role, client: m.client, hasMainVideo: m.hasVideo, hasMainAudio: m.hasAudio, hasVideo: m.hasVideo, hasAudio: m.hasAudio, streamID: m.stream, play: assign({}, m.play) };
  });
};

function playerIdOf(id) {
  var i = String(id).lastIndexOf('_');
  return i > 0 && String(id).slice(i + 1) === 'main' ? String(id).slice(0, i) : String(id);
}

/** muteVideo, muteAudio, objectFit, minCache … of one player (by its id `${userID}_main`); returns playerList. */
LivegateWx.prototype.setPlayerAttributes = function (id, attrs) {
  var p = this._players[playerIdOf(id)];
  if (p) {
    var a = assign({}, attrs);
    ['id', 'userID', 'streamID', 'streamType', 'hasVideo', 'hasAudio'].forEach(function (k) {
      delete a[k];
    });
    assign(p, a);
  }
  return this.getPlayerList();
};

/** Switches every player between HTTP-FLV ('flv') and RTMP ('rtmp'); returns playerList. */
LivegateWx.prototype.setPlayProtocol = function (protocol) {
  this.options.playProtocol = protocol;
  var self = this;
  Object.keys(this._players).forEach(function (id) {
    self._players[id].src = self._src(self._members[id]);
  });
  return this.getPlayerList();
};

/** { playerAttributes, getPlayerContext(), play(), stop(), … } of one player, as trtc-wx's player instance. */
LivegateWx.prototype.getPlayerInstance = function (id) {
  var p = this._players[playerIdOf(id)];
  if (!p) return null;
  var ctx = this.ctx;
  var inst = {
    playerAttributes: assign({}, p),
    getPlayerContext: function () {
      if (!p._context && typeof wx !== 'undefined' && wx.createLivePlayerContext) {
        Object.defineProperty(p, '_context', { value: wx.createLivePlayerContext(p.id, ctx), writable: true, enumerable: false, configurable: true });
      }
      return p._context;
    },
  };
  ['play', 'stop', 'mute', 'pause', 'resume', 'requestFullScreen', 'exitFullScreen', 'snapshot'].forEach(function (m) {
    inst[m] = function (opts) {
      var c = inst.getPlayerContext();
      if (c && typeof c[m] === 'function') return c[m](opts || {});
      return undefined;
    };
  });
  return inst;
};

LivegateWx.prototype._stopPlayerContext = function (p) {
  if (p && p._context) {
    try {
      p._context.stop({});
    } catch (e) {
      // gone already
    }
  }
};

LivegateWx.prototype._lists = function () {
  return { userList: this.getUserList(), playerList: this.getPlayerList() };
};

LivegateWx.prototype._memberSeen = function (m) {
  if (!this._members[m.user_id]) this._join(m.user_id, m.role, m.client);
  var mem = this._members[m.user_id];
  if (m.role) mem.role = m.role;
  if (m.stream) mem.stream = m.stream;
  if (m.play) mem.play = assign({}, m.play);
  this._media(m.user_id, 'video', !!m.video, m);
  this._media(m.user_id, 'audio', !!m.audio, m);
};

LivegateWx.prototype._join = function (userId, role, client) {
  if (this._members[userId]) return;
  this._members[userId] = { role: role || 'audience', client: client || '', hasVideo: false, hasAudio: false, stream: '', play: {} };
  this._order.push(userId);
  this._emit(EVENT.REMOTE_USER_JOIN, assign({ userID: userId, role: role, client: client }, this._lists()));
};

LivegateWx.prototype._leave = function (userId, reason) {
  if (!this._members[userId]) return;
  // The server sends the media removals first; these only make up for ones missed.
  this._media(userId, 'video', false);
  this._media(userId, 'audio', false);
  delete this._members[userId];
  this._order = this._order.filter(function (id) {
    return id !== userId;
  });
  this._emit(EVENT.REMOTE_USER_LEAVE, assign({ userID: userId, reason: reason }, this._lists()));
};

LivegateWx.prototype._media = function (userId, kind, on, ev) {
  var m = this._members[userId];
  if (!m) {
    if (!on) return;
    this._join(userId);
    m = this._members[userId];
  }
  if (ev && ev.stream) m.stream = ev.stream;
  if (ev && ev.play) m.play = assign({}, ev.play);
  var flag = kind === 'video' ? 'hasVideo' : 'hasAudio';
  var p = this._players[userId];
  if (p) this._refreshSrc(p, m);
  if (m[flag] === on) return;
  m[flag] = on;
  if (on && !p) {
    p = assign({}, PLAYER_DEFAULTS, {
      id: userId + '_main',
      userID: userId,
      streamType: 'main',
      streamID: m.stream,
      src: this._src(m),
      hasVideo: false,
      hasAudio: false,
    });
    this._players[userId] = p;
  }
  if (p) {
    p[flag] = on;
    p.streamID = m.stream;
  }
  var player = p ? assign({}, p) : null;
  if (p && !p.hasVideo && !p.hasAudio) {
    this._stopPlayerContext(p);
    delete this._players[userId];
  }
  var name = kind === 'video' ? (on ? EVENT.REMOTE_VIDEO_ADD : EVENT.REMOTE_VIDEO_REMOVE) : on ? EVENT.REMOTE_AUDIO_ADD : EVENT.REMOTE_AUDIO_REMOVE;
  this._emit(name, assign({ player: player, userID: userId }, this._lists()));
};

LivegateWx.prototype._snapshot = function (members) {
  var self = this;
  var now = {};
  (members || []).forEach(function (m) {
    if (m.user_id !== self.userId) now[m.user_id] = m;
  });
  this._order.slice().forEach(function (id) {
    if (!now[id]) self._leave(id, 'snapshot');
  });
  Object.keys(now).forEach(function (id) {
    self._memberSeen(now[id]);
  });
};

// ------------------------------------------------------------------------------------------------ the socket

LivegateWx.prototype._connect = function () {
  var self = this;
  if (this._state !== 'in' || !this._eventsUrl) return;
  var gen = ++this._socketGen;
  var url = this._lastSeq ? withSince(this._eventsUrl, this._lastSeq) : this._eventsUrl;
  var heard = Date.now();
  var open = false;
  var task = wx.connectSocket({
    url: url,
    fail: function (err) {
      if (self._socketGen !== gen) return;
      self._scheduleReconnect(gen);
    },
  });
  this._socket = task;
  if (this._pingTimer) clearInterval(this._pingTimer);
  this._pingTimer = setInterval(function () {
    if (self._socketGen !== gen) return;
    if (Date.now() - heard > SILENT_SOCKET_MS) {
      task.close({ code: 1000, reason: 'silent' });
      return;
    }
    // wx.connectSocket cannot send WebSocket pings: the protocol's own PING keeps proxies and the server content.
    if (open) task.send({ data: '{"event":"PING"}' });
  }, PING_EVERY_MS);
  task.onOpen(function () {
    open = true;
    heard = Date.now();
    self._backoff = 0;
  });
  task.onMessage(function (msg) {
    if (self._socketGen !== gen) return;
    heard = Date.now();
    var ev;
    try {
      ev = JSON.parse(typeof msg.data === 'string' ? msg.data : String(msg.data));
    } catch (e) {
      return;
    }
    self._handle(ev);
  });
  task.onError(function () {
    // onClose follows
  });
  task.onClose(function (res) {
    if (self._socketGen !== gen) return;
    open = false;
    self._socket = null;
    // 4000: KICKED_OUT or ROOM_CLOSED came first and said why. Anything else: reconnect with since.
    if ((res && res.code === 4000) || self._state !== 'in') return;
    self._scheduleReconnect(gen);
  });
};

LivegateWx.prototype._scheduleReconnect = function (gen) {
  var self = this;
  if (this._reconnectFor === gen) return; // fail and onClose both report one socket's end
  this._reconnectFor = gen;
  this._backoff = Math.min(RECONNECT_MAX_MS, Math.max(RECONNECT_MIN_MS, this._backoff * 2));
  setTimeout(function () {
    if (self._socketGen === gen) self._connect();
  }, this._backoff);
};

LivegateWx.prototype._closeSocket = function () {
  this._socketGen++;
  if (this._pingTimer) clearInterval(this._pingTimer);
  this._pingTimer = null;
  var task = this._socket;
  this._socket = null;
  if (task) {
    try {
      task.close({ code: 1000, reason: 'bye' });
    } catch (e) {
      // closed already
    }
  }
};

/** Drops the event socket as a network change would, reconnecting with `since` after `holdMs`: for tests. */
LivegateWx.prototype._dropSocket = function (holdMs) {
  var self = this;
  var task = this._socket;
  if (!task) return;
  var gen = ++this._socketGen; // the old socket's close no longer reconnects
  this._socket = null;
  task.close({ code: 3000, reason: 'dropped' });
  setTimeout(function () {
    if (self._socketGen === gen) self._connect();
  }, holdMs || 0);
};

LivegateWx.prototype._handle = function (ev) {
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
    if (ev.seq <= this._lastSeq) return; // seen already (a replay overlapping what we had)
    this._lastSeq = ev.seq;
  }
  var self = ev.user_id === this.userId;
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
      if (!self) {
        var kind = ev.event.indexOf('VIDEO') >= 0 ? 'video' : 'audio';
        this._media(ev.user_id, kind, /_ADD$/.test(ev.event), ev);
      }
      break;
    case 'ROLE_CHANGED':
      if (self) this.role = ev.role;
      else if (this._members[ev.user_id]) this._members[ev.user_id].role = ev.role;
      this._emit(EVENT.ROLE_CHANGED, assign({ userID: ev.user_id, role: ev.role, self: self }, this._lists()));
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
      if (ev.accept && ev.push) {
        this.push = ev.push;
        this.getPusherInstance().setPusherAttributes({ url: ev.push.rtmp });
      }
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
};

/** Out of the room by the server's word: the socket stays closed; the page calls exitRoom() to reset its data. */
LivegateWx.prototype._putOut = function (name, reason, ev) {
  if (this._state !== 'in') return;
  this._state = 'out';
  this._closeSocket();
  this._emit(name, { userID: ev.user_id || this.userId, reason: reason });
};

// ------------------------------------------------------------------------------------------------ member calls

/** A text to everyone (or to `to` only). Resolves to { seq }. */
LivegateWx.prototype.sendTextMessage = function (text, to) {
  return this._request('POST', this._roomPath('/messages'), to ? { to: to, text: text } : { text: text });
};

/** { cmd, data } to everyone (or to `to` only). Resolves to { seq }. */
LivegateWx.prototype.sendCustomMessage = function (cmd, data, to) {
  return this._request('POST', this._roomPath('/messages'), to ? { to: to, cmd: cmd, data: data } : { cmd: cmd, data: data });
};

/** A live room's audience asks the presenter to co-host. Resolves to { request_id }. */
LivegateWx.prototype.requestJoin = function (reason) {
  return this._request('POST', this._roomPath('/join-requests'), { reason: reason || '' });
};

/** The presenter answers a JOIN_REQUEST. */
LivegateWx.prototype.respondJoin = function (requestId, accept, reason) {
  return this._request('POST', this._roomPath('/join-requests/' + encodeURIComponent(requestId)), { accept: !!accept, reason: reason || '' });
};

/** Puts a member out (the presenter, or a call room's creator). */
LivegateWx.prototype.kickUser = function (userId) {
  return this._request('DELETE', this._roomPath('/members/' + encodeURIComponent(userId)));
};

/** Ends the room for everyone (its creator). */
LivegateWx.prototype.dissolveRoom = function () {
  return this._request('DELETE', this._roomPath());
};

/** The room, its members and the current seq, from the server. */
LivegateWx.prototype.getRoomInfo = function () {
  return this._request('GET', this._roomPath());
};

// ------------------------------------------------------------------------------------------------ component handlers
// Bind these on the page as with trtc-wx (bindstatechange="_pusherStateChangeHandler" → rtc.pusherEventHandler(e)).

LivegateWx.prototype.pusherEventHandler = function (e) {
  var code = e && e.detail ? e.detail.code : 0;
  var message = e && e.detail ? e.detail.message : '';
  // -1301 camera, -1302 microphone, -1303/-1304 encoders, -1307 the push connection gave up.
  if (code === -1301 || code === -1302 || code === -1303 || code === -1304 || code === -1307) {
    this._error(code, message);
  }
};

LivegateWx.prototype.pusherNetStatusHandler = function (e) {
  var info = (e && e.detail && e.detail.info) || {};
  this.getPusherInstance().setPusherAttributes({ netStatus: info });
  this._emit(EVENT.LOCAL_NET_STATE_UPDATE, { pusher: this.getPusherAttributes() });
};

LivegateWx.prototype.pusherErrorHandler = function (e) {
  var d = (e && e.detail) || {};
  this._error(d.errCode, d.errMsg);
};

LivegateWx.prototype.pusherBGMStartHandler = function () {
  this._emit(EVENT.BGM_PLAY_START, {});
};

LivegateWx.prototype.pusherBGMProgressHandler = function (e) {
  var d = (e && e.detail) || {};
  this._emit(EVENT.BGM_PLAY_PROGRESS, { progress: d.progress, duration: d.duration });
};

LivegateWx.prototype.pusherBGMCompleteHandler = function () {
  this._emit(EVENT.BGM_PLAY_COMPLETE, {});
};

LivegateWx.prototype.pusherAudioVolumeNotify = function (e) {
  this.getPusherInstance().pusherAttributes.volume = e && e.detail ? e.detail.volume : 0;
  this._emit(EVENT.LOCAL_AUDIO_VOLUME_UPDATE, { pusher: this.getPusherAttributes() });
};

LivegateWx.prototype.playerEventHandler = function (e) {
  var d = (e && e.detail) || {};
  var warning = [2105, 3001, 3002, 3003, 3005, 6002, 6003, 6004, 6005].indexOf(d.code) >= 0;
  this._emit(warning ? EVENT.PLAYER_WARNING : EVENT.REMOTE_STATE_UPDATE, d);
};

LivegateWx.prototype.playerFullscreenChange = function (e) {
  this._emit(EVENT.VIDEO_FULLSCREEN_UPDATE, (e && e.detail) || {});
};

function playerOfEvent(self, e) {
  var ds = (e && e.currentTarget && e.currentTarget.dataset) || {};
  var id = ds.streamid || ds.id || (e && e.currentTarget && e.currentTarget.id) || '';
  return self._players[playerIdOf(id)];
}

LivegateWx.prototype.playerNetStatus = function (e) {
  var p = playerOfEvent(this, e);
  if (!p) return;
  p.netStatus = (e.detail && e.detail.info) || {};
  this._emit(EVENT.REMOTE_NET_STATE_UPDATE, { playerList: this.getPlayerList() });
};

LivegateWx.prototype.playerAudioVolumeNotify = function (e) {
  var p = playerOfEvent(this, e);
  if (!p) return;
  p.volume = e.detail ? e.detail.volume : 0;
  this._emit(EVENT.REMOTE_AUDIO_VOLUME_UPDATE, { playerList: this.getPlayerList() });
};

module.exports = LivegateWx;
module.exports.LivegateWx = LivegateWx;
module.exports.EVENT = EVENT;
module.exports.withSince = withSince;
