'use strict';
// test/sim/lib.js — the scaffolding the channel simulators share (swiftpass.js, alipay.js,
// wechatpay.js, mybank.js): the command line, small helpers, the HTTP server and its shutdown,
// body reading with a cap, the /_sim control API's JSON plumbing, and notification delivery with
// retries. Only what was identical in every simulator that uses it lives here; anything that is
// part of a channel's wire format (content types, signatures, acknowledgements, error pages'
// server name) is passed in by the simulator. Node 20, built-ins only, no state of its own.

const http = require('http');
const https = require('https');
const crypto = require('crypto');
const fs = require('fs');
const { URL, URLSearchParams } = require('url');

// ---------------------------------------------------------------------------------------------
// command line

/**
 * Parses `--opt V`, `--opt=V`, `-h/--help`. spec:
 *   name:    'swiftpass' (messages are prefixed `<name>-sim:`)
 *   usage:   the usage text printed after the message
 *   options: { '--flag': [key, 'num'|'str'] } beyond --port, --host, --config, --time-scale
 *   tls:     accept --tls-cert/--tls-key
 *   check:   (o, usage) => void, run after the --time-scale check and before the TLS check
 * Exits with status 2 on a bad argument.
 */
function parseArgs(argv, spec) {
  const usage = (msg) => {
    if (msg) process.stderr.write(`${spec.name}-sim: ${msg}\n`);
    process.stderr.write(spec.usage);
    process.exit(2);
  };
  const options = Object.assign({ '--time-scale': ['timeScale', 'num'] }, spec.options || {});
  if (spec.tls) Object.assign(options, { '--tls-cert': ['tlsCert', 'str'], '--tls-key': ['tlsKey', 'str'] });
  const o = { port: 0, host: '127.0.0.1', config: null };
  for (const [key] of Object.values(options)) o[key] = null;
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    let v;
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) { v = a.slice(eq + 1); a = a.slice(0, eq); }
    const val = () => {
      if (v !== undefined) return v;
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    const num = (s, what) => {
      const n = Number(s);
      if (s === '' || !Number.isFinite(n)) usage(`${what} must be a number, got "${s}"`);
      return n;
    };
    if (a === '--port') o.port = num(val(), '--port');
    else if (a === '--host') o.host = val();
    else if (a === '--config') o.config = val();
    else if (has(options, a)) { const [key, kind] = options[a]; o[key] = kind === 'num' ? num(val(), a) : val(); }
    else if (a === '-h' || a === '--help') usage();
    else usage(`unknown argument ${a}`);
  }
  if (!Number.isInteger(o.port) || o.port < 0 || o.port > 65535) usage('--port must be 0..65535');
  if (o.timeScale !== null && !(o.timeScale > 0)) usage('--time-scale must be > 0');
  if (spec.check) spec.check(o, usage);
  if (spec.tls && !!o.tlsCert !== !!o.tlsKey) usage('--tls-cert and --tls-key go together');
  return { opts: o, usage };
}

// ---------------------------------------------------------------------------------------------
// small helpers

const bytewise = (a, b) => Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
const randHex = (n) => crypto.randomBytes(Math.ceil(n / 2)).toString('hex').slice(0, n);
const randDigits = (n) => { let s = ''; while (s.length < n) s += crypto.randomInt(0, 1e9).toString().padStart(9, '0'); return s.slice(0, n); };
const randAlnum = (n) => { const A = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'; let s = ''; for (let i = 0; i < n; i++) s += A[crypto.randomInt(0, A.length)]; return s; };
const iso = (ms) => (ms == null ? null : new Date(ms).toISOString());
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);

function escHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

// ---------------------------------------------------------------------------------------------
// HTTP: bodies, answers, error pages

/** Reads a body; over `limit` bytes it keeps reading (so the answer reaches the client) but drops it. */
function readBody(req, limit) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (d) => {
      size += d.length;
      if (size > limit) { tooLarge = true; chunks.length = 0; } else if (!tooLarge) chunks.push(d);
    });
    req.on('end', () => resolve({ buf: tooLarge ? null : Buffer.concat(chunks), size, tooLarge }));
    req.on('error', reject);
  });
}

function send(res, code, type, body, extraHeaders) {
  if (res.writableEnded || res.destroyed) return;
  const buf = Buffer.from(body, 'utf8');
  res.writeHead(code, Object.assign({ 'Content-Type': type, 'Content-Length': buf.length }, extraHeaders || {}));
  res.end(buf);
}

/** The front proxy's error page; `server` is what the real channel's proxy calls itself. */
function httpErrorPage(code, server) {
  const text = `${code} ${http.STATUS_CODES[code] || 'Error'}`;
  return `<html>\r\n<head><title>${text}</title></head>\r\n<body>\r\n<center><h1>${text}</h1></center>\r\n<hr><center>${server}</center>\r\n</body>\r\n</html>\r\n`;
}

// ---------------------------------------------------------------------------------------------
// the /_sim control API

function sendJson(res, code, obj) { send(res, code, 'application/json; charset=UTF-8', JSON.stringify(obj, null, 2) + '\n'); }
/** A fault as the control API shows it (the fault objects themselves are each simulator's). */
function faultView(f) {
  const v = Object.assign({}, f);
  v.created_at = iso(f.created_at);
  v.count_remaining = f.remaining;
  delete v.remaining;
  return v;
}
class HttpError extends Error { constructor(code, msg) { super(msg); this.code = code; } }

/** A control request's body: JSON, or a urlencoded form (an HTML form, or curl -d a=b). */
async function readJson(req, limit) {
  const { buf, tooLarge } = await readBody(req, limit);
  if (tooLarge) throw new HttpError(413, 'body too large');
  const text = buf.toString('utf8').trim();
  if (!text) return {};
  if (text[0] !== '{' && text[0] !== '[' && /^[^=&\s]+=/.test(text)) return Object.fromEntries(new URLSearchParams(text));
  try { return JSON.parse(text); } catch (e) { throw new HttpError(400, `invalid JSON: ${e.message}`); }
}

// ---------------------------------------------------------------------------------------------
// notification delivery

/**
 * One POST of a notification. Never rejects: resolves {at, duration_ms, http_status, body, error}
 * plus `extra`. o: headers(contentLength) → request headers, timeoutMs, urlName (for the bad-URL
 * message), httpOnly (refuse https:), extra (copied into the result).
 */
function postNotify(target, body, o) {
  return new Promise((resolve) => {
    const at = Date.now();
    let done = false;
    const finish = (r) => { if (!done) { done = true; resolve(Object.assign({ at, duration_ms: Date.now() - at, http_status: null, body: null, error: null }, o.extra || {}, r)); } };
    let u;
    try { u = new URL(target); } catch (e) { return finish({ error: `bad ${o.urlName}: ${e.message}` }); }
    if (o.httpOnly && u.protocol !== 'http:') return finish({ error: 'only http:// notify URLs are supported by the simulator' });
    const mod = u.protocol === 'https:' ? https : http;
    const buf = Buffer.from(body, 'utf8');
    const req = mod.request(u, { method: 'POST', headers: o.headers(buf.length), rejectUnauthorized: false }, (res) => {
      const chunks = [];
      let size = 0;
      res.on('data', (d) => { size += d.length; if (size <= 65536) chunks.push(d); });
      res.on('end', () => finish({ http_status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', (e) => finish({ http_status: res.statusCode, error: e.message }));
    });
    req.setTimeout(o.timeoutMs, () => req.destroy(new Error(`timeout after ${o.timeoutMs} ms`)));
    req.on('error', (e) => finish({ error: e.message }));
    req.end(buf);
  });
}

/**
 * The retry loop of a notification sequence `seq` ({gen, url, body, duplicate, state, next_at,
 * attempts}). c:
 *   schedule()   → settings.notify_schedule_s (seconds, before scaling)
 *   scaled(s)    → milliseconds
 *   timers       → the Set of pending timers (cleared by reset and shutdown)
 *   generation() → the current generation; a sequence of an older one stops
 *   post(seq)    → a postNotify() promise
 *   judge(seq, r)→ fields appended to the attempt record; `acknowledged` ends the sequence
 * Returns scheduleNotify(seq, idx).
 */
function notifier(c) {
  function scheduleNotify(seq, idx) {
    const sched = c.schedule();
    if (idx >= sched.length) { seq.state = 'gave_up'; seq.next_at = null; return; }
    const delay = c.scaled(sched[idx]);
    seq.next_at = Date.now() + delay;
    const t = setTimeout(() => { c.timers.delete(t); runNotifyAttempt(seq, idx); }, delay);
    c.timers.add(t);
  }
  async function runNotifyAttempt(seq, idx) {
    if (seq.gen !== c.generation()) return;
    seq.next_at = null;
    seq.state = 'sending';
    const copies = seq.duplicate ? 2 : 1;
    const results = await Promise.all(Array.from({ length: copies }, () => c.post(seq)));
    if (seq.gen !== c.generation()) return;
    let acked = false;
    results.forEach((r, n) => {
      const a = c.judge(seq, r);
      acked = acked || a.acknowledged;
      const rec = { n: idx + 1, copy: n + 1, at: r.at, duration_ms: r.duration_ms };
      if (has(r, 'request_headers')) rec.request_headers = r.request_headers;   // wechatpay's signed headers
      seq.attempts.push(Object.assign(rec, { http_status: r.http_status, body: r.body, error: r.error }, a));
    });
    if (acked) { seq.state = 'acknowledged'; return; }
    seq.state = 'retrying';
    scheduleNotify(seq, idx + 1);
  }
  return scheduleNotify;
}

// ---------------------------------------------------------------------------------------------
// the server

/**
 * Starts the simulator: HTTPS when opts.tlsCert is set, else HTTP. Prints the one
 * `<name>-sim listening on ...` line, calls onListen(port), and on SIGTERM/SIGINT clears `timers`,
 * destroys `held` responses and exits.
 */
function serve({ name, opts, handler, timers, held, onListen }) {
  const server = opts.tlsCert
    ? https.createServer({ cert: fs.readFileSync(opts.tlsCert), key: fs.readFileSync(opts.tlsKey) }, handler)
    : http.createServer(handler);
  server.keepAliveTimeout = 60000;
  server.headersTimeout = 65000;
  server.requestTimeout = 0;
  server.on('error', (e) => { process.stderr.write(`${name}-sim: ${e.message}\n`); process.exit(1); });
  server.listen(opts.port, opts.host, () => {
    const port = server.address().port;
    if (onListen) onListen(port);
    const h = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
    process.stdout.write(`${name}-sim listening on ${opts.tlsCert ? 'https' : 'http'}://${h}:${port}\n`);
  });
  function shutdown() {
    for (const t of timers) clearTimeout(t);
    for (const r of held) r.destroy();
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 1000).unref();
  }
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  return server;
}

module.exports = {
  parseArgs, bytewise, randHex, randDigits, randAlnum, iso, sleep, has, escHtml,
  readBody, send, httpErrorPage, sendJson, faultView, HttpError, readJson, postNotify, notifier, serve,
};
