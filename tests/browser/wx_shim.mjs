// A minimal `wx` global for running mini program code (miniprogram/livegate-wx.js) under Node, where WeChat cannot
// run: wx.request over fetch, wx.connectSocket over the `ws` package (Node 20 has no WebSocket), with WeChat's
// calling conventions (success/fail/complete callbacks, success for any HTTP status, a SocketTask with
// onOpen/onMessage/onClose/onError and send/close taking option objects). wx.createLivePusherContext and
// wx.createLivePlayerContext return the contexts the caller hands in (the harness makes them real).
import WebSocket from 'ws';

function call(opts, name, arg) {
  if (opts && typeof opts[name] === 'function') opts[name](arg);
}

function settle(opts, ok, arg) {
  call(opts, ok ? 'success' : 'fail', arg);
  call(opts, 'complete', arg);
}

/** wx.request: JSON bodies as WeChat sends them, res = { statusCode, data, header }. */
function request(opts) {
  const method = (opts.method || 'GET').toUpperCase();
  const header = { ...(opts.header || {}) };
  let url = opts.url;
  let body;
  const ctype = Object.entries(header).find(([k]) => k.toLowerCase() === 'content-type')?.[1] || 'application/json';
  if (opts.data !== undefined && opts.data !== null) {
    if (method === 'GET') {
      // WeChat turns a GET's data object into the query string.
      const q = typeof opts.data === 'string' ? opts.data : new URLSearchParams(opts.data).toString();
      if (q) url += (url.includes('?') ? '&' : '?') + q;
    } else if (typeof opts.data === 'string' || opts.data instanceof ArrayBuffer) {
      body = opts.data;
    } else if (ctype.includes('application/json')) {
      body = JSON.stringify(opts.data);
    } else {
      body = new URLSearchParams(opts.data).toString();
    }
  }
  if (body !== undefined && !Object.keys(header).some((k) => k.toLowerCase() === 'content-type')) {
    header['content-type'] = 'application/json';
  }
  const ac = new AbortController();
  const timeout = setTimeout(() => ac.abort(), opts.timeout || 60_000);
  fetch(url, { method, headers: header, body, signal: ac.signal })
    .then(async (r) => {
      const text = await r.text();
      let data = text;
      if ((opts.dataType || 'json') === 'json') {
        try {
          data = JSON.parse(text);
        } catch {
          // WeChat hands the text on when it is not JSON
        }
      }
      settle(opts, true, { statusCode: r.status, data, header: Object.fromEntries(r.headers), errMsg: 'request:ok' });
    })
    .catch((e) => settle(opts, false, { errMsg: `request:fail ${e.message}` }))
    .finally(() => clearTimeout(timeout));
  return { abort: () => ac.abort() };
}

/** wx.connectSocket: a SocketTask over `ws`. */
function connectSocket(opts) {
  const handlers = { open: [], message: [], close: [], error: [] };
  const fire = (name, arg) => handlers[name].slice().forEach((fn) => fn(arg));
  let ws;
  try {
    ws = new WebSocket(opts.url, opts.protocols || [], { headers: opts.header || {} });
  } catch (e) {
    setTimeout(() => settle(opts, false, { errMsg: `connectSocket:fail ${e.message}` }));
    return { send() {}, close() {}, onOpen() {}, onMessage() {}, onClose() {}, onError() {} };
  }
  setTimeout(() => settle(opts, true, { errMsg: 'connectSocket:ok' }));
  ws.on('open', () => fire('open', { header: {} }));
  ws.on('message', (data, isBinary) => fire('message', { data: isBinary ? data.buffer : data.toString('utf8') }));
  ws.on('error', (e) => fire('error', { errMsg: e.message }));
  ws.on('close', (code, reason) => fire('close', { code, reason: reason.toString('utf8') }));
  return {
    get readyState() {
      return ws.readyState;
    },
    send(o) {
      if (ws.readyState !== WebSocket.OPEN) return settle(o, false, { errMsg: 'sendSocketMessage:fail not open' });
      ws.send(o.data, (err) => settle(o, !err, { errMsg: err ? `sendSocketMessage:fail ${err.message}` : 'sendSocketMessage:ok' }));
    },
    close(o = {}) {
      try {
        ws.close(o.code || 1000, o.reason || '');
      } catch (e) {
        ws.terminate();
      }
      settle(o, true, { errMsg: 'closeSocket:ok' });
    },
    onOpen: (fn) => handlers.open.push(fn),
    onMessage: (fn) => handlers.message.push(fn),
    onClose: (fn) => handlers.close.push(fn),
    onError: (fn) => handlers.error.push(fn),
  };
}

/**
 * Installs globalThis.wx. `pusherContext()` / `playerContext(id)` make the objects
 * wx.createLivePusherContext / wx.createLivePlayerContext return.
 */
export function installWx({ pusherContext = () => ({}), playerContext = () => ({}) } = {}) {
  const wx = {
    request,
    connectSocket,
    createLivePusherContext: () => pusherContext(),
    createLivePlayerContext: (id) => playerContext(id),
    getSystemInfo: (o) => settle(o, true, { platform: 'devtools', SDKVersion: '3.0.0' }),
    getSystemInfoSync: () => ({ platform: 'devtools', SDKVersion: '3.0.0' }),
  };
  globalThis.wx = wx;
  return wx;
}
