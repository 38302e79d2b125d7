#!/usr/bin/env node
/*
 * alipay-sim — an Alipay OpenAPI (v2 gateway, ISV mode) simulator for paygate.
 *
 * Speaks the wire protocol of https://openapi.alipay.com/gateway.do as described in
 * /work/shared/PROTOCOLS.md §C: a form POST (parameters in the query string and/or the body),
 * RSA2 request signatures over every parameter except sign, JSON answers
 * {"<method>_response":{…},"sign":"…"} whose signature covers the raw text of the response object
 * exactly as sent (with "\/" escapes, as Alipay sends them), form-encoded trade notifications
 * signed without sign and sign_type, the 10003 "waiting for the password" behaviour, cancel with
 * retry_flag, asynchronous refunds, and fault injection.  It is the peer of the alipay channel
 * module's integration tests.  Node 20, built-ins only.
 *
 *   node test/sim/alipay.js --port N [--host 127.0.0.1] [--config FILE] [--time-scale X]
 *        [--refund-delay SECONDS] [--tls-cert FILE --tls-key FILE]
 *
 * Prints exactly one line "alipay-sim listening on http://HOST:PORT" when ready.  Full
 * documentation: test/sim/README.md ("Alipay simulator").
 *
 * alipay.trade.pay outcome is chosen by the END of auth_code (16..24 digits starting 25..30,
 * otherwise ACQ.PAYMENT_AUTH_CODE_INVALID):
 *   ...0000  40004 ACQ.PAYMENT_AUTH_CODE_INVALID (a definite failure; no trade).
 *   ...8888  no answer (connection held open); the trade exists, WAIT_BUYER_PAY, then like 9999.
 *   ...7777  20000 isp.unknow-error, but the trade actually SUCCEEDED (a query finds it paid).
 *   ...9999  10003 (the customer enters the password); WAIT_BUYER_PAY until POST /_sim/pay,
 *            POST /_sim/fail (-> TRADE_CLOSED) or a cancel.
 *   ...99K9  (K = 1..8) like 9999, the K-th alipay.trade.query finds it paid.
 *   ...99K8  (K = 1..8) like 9999, the K-th query finds it TRADE_CLOSED (the customer gave up).
 *   anything else: 10000, paid.
 */
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const zlib = require('zlib');
const { URL, URLSearchParams } = require('url');
const lib = require('./lib');
const { bytewise, randHex, randDigits, iso, sleep, has, escHtml, readBody, send, sendJson, faultView, HttpError } = lib;

// ---------------------------------------------------------------------------------------------
// constants

const MAX_BODY = 64 * 1024;
const MAX_CONTROL_BODY = 1024 * 1024;
// 4m, 10m, 10m, 1h, 2h, 6h, 15h after the first attempt: 8 attempts in about 25 h (§C.4)
const NOTIFY_SCHEDULE_S = [0, 240, 600, 600, 3600, 7200, 21600, 54000];
const NOTIFY_TIMEOUT_MS = 5000;
const REQUEST_LOG_SIZE = 1000;
const QR_VALID_S = 7200;             // an unscanned precreate QR without time_expire
const MAX_FEN = 10000000000;         // 100000000.00 yuan
const METHODS = new Set(['alipay.trade.precreate', 'alipay.trade.pay', 'alipay.trade.query',
  'alipay.trade.refund', 'alipay.trade.fastpay.refund.query', 'alipay.trade.close',
  'alipay.trade.cancel', 'alipay.data.dataservice.bill.downloadurl.query']);
const GATEWAY_MSG = {
  10000: 'Success', 10003: 'order success pay inprocess', 20000: 'Service Currently Unavailable',
  20001: 'Insufficient Token Permissions', 40001: 'Missing Required Arguments',
  40002: 'Invalid Arguments', 40004: 'Business Failed', 40006: 'Insufficient Permissions',
};

// ---------------------------------------------------------------------------------------------
// command line


const { opts, usage } = lib.parseArgs(process.argv.slice(2), {
  name: 'alipay',
  usage: 'usage: node test/sim/alipay.js --port N [--host 127.0.0.1] [--config FILE]\n' +
    '       [--time-scale X] [--refund-delay SECONDS] [--tls-cert FILE --tls-key FILE]\n',
  options: { '--refund-delay': ['refundDelay', 'num'] },
  tls: true,
});

// ---------------------------------------------------------------------------------------------
// small helpers

const present = (v) => v !== undefined && v !== null && v !== '';

/** "yyyy-MM-dd HH:mm:ss" in GMT+8 */
function gmt8(ms = Date.now()) {
  const t = new Date(ms + 8 * 3600e3);
  const p = (n) => String(n).padStart(2, '0');
  return `${t.getUTCFullYear()}-${p(t.getUTCMonth() + 1)}-${p(t.getUTCDate())} ` +
    `${p(t.getUTCHours())}:${p(t.getUTCMinutes())}:${p(t.getUTCSeconds())}`;
}
function parseGmt8(s) {
  const m = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$/.exec(s || '');
  if (!m) return NaN;
  const ms = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]) - 8 * 3600e3;
  return gmt8(ms) === s ? ms : NaN;
}
/** fen → "0.01"; integers only */
function yuan(fen) { return `${Math.floor(fen / 100)}.${String(fen % 100).padStart(2, '0')}`; }
/** "88.88" → 8888; strict: no sign, no exponent, at most 2 decimals, no leading zeros; NaN otherwise */
function parseYuan(s) {
  const m = /^(0|[1-9][0-9]{0,8})(?:\.([0-9]{1,2}))?$/.exec(typeof s === 'string' ? s : '');
  if (!m) return NaN;
  const fen = Number(m[1]) * 100 + (m[2] ? Number(m[2].padEnd(2, '0')) : 0);
  return fen <= MAX_FEN ? fen : NaN;
}
function keyObject(pem, kind, what) {
  if (pem && typeof pem === 'object' && pem.type) return pem;
  const text = String(pem).trim();
  const tryOne = (t) => (kind === 'private' ? crypto.createPrivateKey(t) : crypto.createPublicKey(t));
  try { return tryOne(text); } catch (e) {
    // a bare Base64 key, as Alipay's key tool writes it
    const b64 = text.replace(/\s+/g, '');
    const der = Buffer.from(b64, 'base64');
    try {
      return kind === 'private'
        ? crypto.createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })
        : crypto.createPublicKey({ key: der, format: 'der', type: 'spki' });
    } catch (e2) {
      try {
        return kind === 'private'
          ? crypto.createPrivateKey({ key: der, format: 'der', type: 'pkcs1' })
          : crypto.createPublicKey({ key: der, format: 'der', type: 'pkcs1' });
      } catch (e3) { throw new Error(`${what} is not an RSA ${kind} key (${e.message})`); }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// signatures (PROTOCOLS.md §C.2 – §C.4)

/** k=v&… over every parameter except `exclude`, empty values dropped, keys sorted byte-wise, raw values */
function signString(params, exclude = ['sign']) {
  return Object.keys(params)
    .filter((k) => !exclude.includes(k) && present(params[k]))
    .sort(bytewise)
    .map((k) => `${k}=${params[k]}`)
    .join('&');
}
function rsaSign(str, privateKey) {
  return crypto.sign('sha256', Buffer.from(str, 'utf8'), privateKey).toString('base64');
}
function rsaVerify(str, sig, publicKey) {
  try {
    return crypto.verify('sha256', Buffer.from(str, 'utf8'), publicKey, Buffer.from(String(sig).replace(/\s+/g, ''), 'base64'));
  } catch (e) { return false; }
}
/** The response object as Alipay writes it: compact JSON, every "/" written as "\/". */
function responseText(obj) {
  return JSON.stringify(obj).replace(/\//g, '\\/');
}

// ---------------------------------------------------------------------------------------------
// state


const settings = {
  time_scale: opts.timeScale != null ? opts.timeScale : 1,
  refund_delay_s: opts.refundDelay != null ? opts.refundDelay : 0,
  notify_schedule_s: NOTIFY_SCHEDULE_S.slice(),
  notify_timeout_ms: NOTIFY_TIMEOUT_MS,
  notify_refunds: false,
  lazy_precreate: true,
  timestamp_skew_s: 600,
  cancel_window_s: 86400,
};
const scaled = (seconds) => seconds * 1000 * settings.time_scale;

const apps = new Map();            // app_id -> app
const tokens = new Map();          // app_auth_token -> {app_id, seller_id, auth_app_id}
const trades = new Map();          // seller_id \0 out_trade_no -> trade
const tradesByNo = new Map();      // trade_no -> trade
const tradesByToken = new Map();   // QR token -> trade
let requestLog = [];
let requestSeq = 0;
let faults = [];
let faultSeq = 0;
let generation = 0;
const notifyTimers = new Set();
const heldResponses = new Set();
const startedAt = Date.now();

const tkey = (seller, otn) => `${seller}\u0000${otn}`;

function normaliseApp(a) {
  if (!a || typeof a !== 'object' || Array.isArray(a)) throw new Error('an app must be a JSON object');
  const app_id = a.app_id == null ? '' : String(a.app_id).trim();
  if (!/^[0-9A-Za-z_]{1,32}$/.test(app_id)) throw new Error('app.app_id is required ([0-9A-Za-z_]{1,32})');
  if (!present(a.app_public_key)) throw new Error(`app ${app_id}: app_public_key (PEM or Base64) is required`);
  const appPub = keyObject(a.app_public_key, 'public', `app ${app_id}: app_public_key`);
  let alipayPriv;
  let generated = false;
  if (present(a.alipay_private_key)) alipayPriv = keyObject(a.alipay_private_key, 'private', `app ${app_id}: alipay_private_key`);
  else {
    const old = apps.get(app_id);
    if (old && !old.alipay_key_given) { alipayPriv = old.alipayPriv; } else {
      alipayPriv = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    }
    generated = true;
  }
  if (a.seller_id != null && !/^2088[0-9]{12}$/.test(String(a.seller_id))) throw new Error(`app ${app_id}: seller_id must be a PID (2088 + 12 digits)`);
  const merchants = a.merchants == null ? [] : a.merchants;
  if (!Array.isArray(merchants)) throw new Error(`app ${app_id}: merchants must be an array`);
  const subs = merchants.map((m) => {
    if (!m || !/^2088[0-9]{12}$/.test(String(m.seller_id || ''))) throw new Error(`app ${app_id}: every merchant needs seller_id (2088 + 12 digits)`);
    if (!present(m.app_auth_token)) throw new Error(`app ${app_id}: merchant ${m.seller_id} needs app_auth_token`);
    return { seller_id: String(m.seller_id), app_auth_token: String(m.app_auth_token),
      auth_app_id: present(m.auth_app_id) ? String(m.auth_app_id) : `20210${randDigits(11)}` };
  });
  return {
    app_id, appPub, alipayPriv, alipay_key_given: !generated,
    app_public_key_pem: appPub.export({ type: 'spki', format: 'pem' }),
    seller_id: a.seller_id != null ? String(a.seller_id) : null,
    merchants: subs,
  };
}
function appView(a) {
  return {
    app_id: a.app_id, seller_id: a.seller_id,
    app_public_key: a.app_public_key_pem,
    alipay_public_key: crypto.createPublicKey(a.alipayPriv).export({ type: 'spki', format: 'pem' }),
    alipay_key_generated: !a.alipay_key_given,
    merchants: a.merchants.map((m) => ({ seller_id: m.seller_id, app_auth_token: m.app_auth_token, auth_app_id: m.auth_app_id })),
  };
}
function registerApps(list) {
  const arr = Array.isArray(list) ? list : [list];
  const norm = arr.map(normaliseApp);          // validate all before registering any
  for (const a of norm) {
    const old = apps.get(a.app_id);
    if (old) for (const m of old.merchants) tokens.delete(m.app_auth_token);
    apps.set(a.app_id, a);
    for (const m of a.merchants) tokens.set(m.app_auth_token, { app_id: a.app_id, seller_id: m.seller_id, auth_app_id: m.auth_app_id });
  }
  return norm;
}

function applySettings(s, { fromConfig } = {}) {
  if (!s || typeof s !== 'object') throw new Error('settings must be an object');
  const next = Object.assign({}, settings);
  for (const [k, v] of Object.entries(s)) {
    switch (k) {
      case 'time_scale':
        if (!(typeof v === 'number' && v > 0)) throw new Error('time_scale must be a number > 0');
        next.time_scale = v; break;
      case 'refund_delay_s':
        if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error('refund_delay_s must be a number (0: synchronous, negative: only /_sim/refund/settle)');
        next.refund_delay_s = v; break;
      case 'notify_schedule_s':
        if (!Array.isArray(v) || !v.length || !v.every((x) => typeof x === 'number' && x >= 0)) throw new Error('notify_schedule_s must be a non-empty array of seconds');
        next.notify_schedule_s = v.slice(); break;
      case 'notify_timeout_ms':
        if (!(typeof v === 'number' && v > 0)) throw new Error('notify_timeout_ms must be > 0');
        next.notify_timeout_ms = v; break;
      case 'notify_refunds': case 'lazy_precreate':
        if (typeof v !== 'boolean') throw new Error(`${k} must be true or false`);
        next[k] = v; break;
      case 'timestamp_skew_s': case 'cancel_window_s':
        if (!(typeof v === 'number' && v >= 0)) throw new Error(`${k} must be a number >= 0 (0: no limit)`);
        next[k] = v; break;
      default: throw new Error(`unknown setting ${k}`);
    }
  }
  if (fromConfig) {
    if (opts.refundDelay != null) next.refund_delay_s = opts.refundDelay;
    if (opts.timeScale != null) next.time_scale = opts.timeScale;
  }
  Object.assign(settings, next);
}

function loadConfig(file) {
  let cfg;
  try { cfg = JSON.parse(fs.readFileSync(file, 'utf8')); } catch (e) { usage(`cannot read --config ${file}: ${e.message}`); }
  const list = Array.isArray(cfg) ? cfg : (cfg.apps || []);
  try { registerApps(list); } catch (e) { usage(`--config ${file}: ${e.message}`); }
  if (!Array.isArray(cfg) && cfg.settings) {
    try { applySettings(cfg.settings, { fromConfig: true }); } catch (e) { usage(`--config ${file}: ${e.message}`); }
  }
}

// ---------------------------------------------------------------------------------------------
// faults

const REQUEST_FAULT_KEYS = ['latency_ms', 'timeout', 'http_status', 'garbled', 'bad_sign', 'unsigned',
  'sign_unescaped', 'isp_error', 'cancel_retry'];
const NOTIFY_FAULT_KEYS = ['drop_notify', 'duplicate_notify'];

function normaliseFault(f) {
  if (!f || typeof f !== 'object' || Array.isArray(f)) throw new Error('a fault must be a JSON object');
  const allowed = new Set([...REQUEST_FAULT_KEYS, ...NOTIFY_FAULT_KEYS, 'count', 'method', 'processed']);
  for (const k of Object.keys(f)) if (!allowed.has(k)) throw new Error(`unknown fault field ${k}`);
  const isReq = REQUEST_FAULT_KEYS.some((k) => f[k] !== undefined && f[k] !== false);
  const isNot = NOTIFY_FAULT_KEYS.some((k) => f[k] !== undefined && f[k] !== false);
  if (!isReq && !isNot) throw new Error(`a fault needs one of ${[...REQUEST_FAULT_KEYS, ...NOTIFY_FAULT_KEYS].join(', ')}`);
  if (isReq && isNot) throw new Error('request faults and notification faults go in separate entries');
  if (f.latency_ms !== undefined && !(Number.isFinite(f.latency_ms) && f.latency_ms >= 0)) throw new Error('latency_ms must be >= 0');
  if (f.http_status !== undefined && !(Number.isInteger(f.http_status) && f.http_status >= 100 && f.http_status <= 599)) throw new Error('http_status must be an HTTP status code');
  if (f.garbled !== undefined && typeof f.garbled !== 'boolean' && typeof f.garbled !== 'string') throw new Error('garbled must be true or a literal body string');
  for (const k of ['timeout', 'bad_sign', 'unsigned', 'sign_unescaped', 'isp_error', 'cancel_retry', 'drop_notify', 'duplicate_notify', 'processed']) {
    if (f[k] !== undefined && typeof f[k] !== 'boolean') throw new Error(`${k} must be a boolean`);
  }
  if (f.count !== undefined && f.count !== null && !(Number.isInteger(f.count) && f.count > 0)) throw new Error('count must be a positive integer (omit it for "until cleared")');
  let methods = null;
  if (f.method !== undefined && f.method !== null) methods = Array.isArray(f.method) ? f.method.map(String) : [String(f.method)];
  const out = { id: ++faultSeq, kind: isReq ? 'request' : 'notify', created_at: Date.now(), methods,
    remaining: f.count == null ? null : f.count, used: 0 };
  for (const k of [...REQUEST_FAULT_KEYS, ...NOTIFY_FAULT_KEYS, 'processed']) if (f[k] !== undefined) out[k] = f[k];
  return out;
}
function takeFaults(kind, method, filter = () => true) {
  const taken = [];
  for (const f of faults) {
    if (f.kind !== kind) continue;
    if (f.methods && !(method && f.methods.includes(method))) continue;
    if (!filter(f)) continue;
    if (f.remaining !== null) f.remaining--;
    f.used++;
    taken.push(f);
  }
  faults = faults.filter((f) => f.remaining === null || f.remaining > 0);
  return taken;
}
function combineRequestFaults(list) {
  const c = { ids: list.map((f) => f.id), latency_ms: 0, timeout: null, http_status: null, garbled: null,
    bad_sign: false, unsigned: false, sign_unescaped: false, isp_error: null, cancel_retry: false };
  for (const f of list) {
    if (f.latency_ms) c.latency_ms += f.latency_ms;
    if (f.timeout && !c.timeout) c.timeout = { processed: f.processed !== false };
    if (f.http_status && !c.http_status) c.http_status = { code: f.http_status, processed: f.processed === true };
    if (f.garbled && !c.garbled) c.garbled = { body: typeof f.garbled === 'string' ? f.garbled : null };
    if (f.isp_error && !c.isp_error) c.isp_error = { processed: f.processed !== false };
    for (const k of ['bad_sign', 'unsigned', 'sign_unescaped', 'cancel_retry']) if (f[k]) c[k] = true;
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// request log

function logRequest(rec) {
  requestLog.push(rec);
  if (requestLog.length > REQUEST_LOG_SIZE) requestLog.splice(0, requestLog.length - REQUEST_LOG_SIZE);
}
function requestView(r) {
  const v = Object.assign({}, r);
  v.at = iso(r.at);
  return v;
}

// ---------------------------------------------------------------------------------------------
// trades

const HIDDEN = new Set(['PRECREATED', 'QR_EXPIRED']);   // not a trade at Alipay (yet)

function newTradeNo() {
  for (;;) {
    const id = `${gmt8().slice(0, 10).replace(/-/g, '')}22001${randDigits(17)}`;
    if (!tradesByNo.has(id)) return id;
  }
}
function buyer() {
  return { buyer_user_id: `2088${randDigits(12)}`, buyer_logon_id: `${randDigits(3)}****${randDigits(4)}` };
}

function refresh(t, now = Date.now()) {
  if ((t.state === 'PRECREATED' || t.state === 'WAIT_BUYER_PAY') && t.expire_at != null && now >= t.expire_at) {
    if (t.state === 'PRECREATED') t.state = 'QR_EXPIRED';
    else { t.state = 'TRADE_CLOSED'; t.closed_at = t.expire_at; t.close_reason = 'time_expire'; }
  }
  for (const r of t.refunds) {
    if (r.status === 'PROCESSING' && r.settle_at != null && now >= r.settle_at) settleRefund(t, r, 'delay', r.settle_at);
  }
}
function refundedSum(t, onlySuccess) {
  return t.refunds.filter((r) => (onlySuccess ? r.status === 'SUCCESS' : r.status !== 'FAIL')).reduce((s, r) => s + r.amount, 0);
}
function settleRefund(t, r, by, at = Date.now()) {
  r.status = 'SUCCESS';
  r.settled_by = by;
  r.gmt_refund = at;
  if (refundedSum(t, true) >= t.total && t.state === 'TRADE_SUCCESS') {
    t.state = 'TRADE_CLOSED'; t.closed_at = at; t.close_reason = 'refunded';
  }
  if (settings.notify_refunds && t.notify_url) startNotify(t, 'refund', r);
}
function markPaid(t, by) {
  const now = Date.now();
  if (!t.buyer_user_id) Object.assign(t, buyer());
  if (!t.scanned_at) t.scanned_at = now;
  t.state = 'TRADE_SUCCESS';
  t.paid_at = now;
  t.paid_by = by || null;
  if (t.notify_url) startNotify(t, 'paid');
}
function markClosed(t, reason) {
  t.state = 'TRADE_CLOSED';
  t.closed_at = Date.now();
  t.close_reason = reason;
}
function scan(t) {
  Object.assign(t, buyer());
  t.scanned_at = Date.now();
  t.state = 'WAIT_BUYER_PAY';
}

function tradeView(t) {
  refresh(t);
  return {
    app_id: t.app_id, seller_id: t.seller_id, auth_app_id: t.auth_app_id, out_trade_no: t.out_trade_no,
    trade_no: t.trade_no, kind: t.kind, state: t.state, total_amount: yuan(t.total), total_fen: t.total,
    subject: t.subject, notify_url: t.notify_url, store_id: t.store_id || null,
    sys_service_provider_id: t.sys_service_provider_id || null, auth_code: t.auth_code || null,
    pay_rule: t.rule || null, queries: t.queries, token: t.token || null, qr_code: t.qr_code || null,
    buyer_user_id: t.buyer_user_id || null, created_at: iso(t.created_at), expire_at: iso(t.expire_at),
    scanned_at: iso(t.scanned_at), paid_at: iso(t.paid_at), closed_at: iso(t.closed_at),
    close_reason: t.close_reason || null, cancel_action: t.cancel_action || null,
    refunded_amount: yuan(refundedSum(t, true)),
    refunds: t.refunds.map((r) => ({ out_request_no: r.out_request_no, refund_amount: yuan(r.amount), status: r.status,
      reason: r.reason || null, created_at: iso(r.created_at), settle_at: iso(r.settle_at),
      gmt_refund: r.gmt_refund ? gmt8(r.gmt_refund) : null, settled_by: r.settled_by || null, requests: r.requests })),
    notifications: t.notify.map((s) => ({
      id: s.id, reason: s.reason, created_at: iso(s.created_at), state: s.state, dropped: s.dropped,
      duplicate: s.duplicate, next_attempt_at: iso(s.next_at), body: s.body, fields: s.fields,
      attempts: s.attempts.map((a) => Object.assign({}, a, { at: iso(a.at) })),
    })),
  };
}

// ---------------------------------------------------------------------------------------------
// notifications (PROTOCOLS.md §C.4)

let notifySeq = 0;

function notifyFields(t, refund) {
  const now = Date.now();
  const p = {
    gmt_create: gmt8(t.scanned_at || t.created_at), charset: 'utf-8', notify_type: 'trade_status_sync',
    notify_time: gmt8(now), notify_id: `${gmt8(now).replace(/\D/g, '')}${randHex(24)}`, version: '1.0',
    app_id: t.app_id, auth_app_id: t.auth_app_id, sign_type: 'RSA2', seller_id: t.seller_id,
    out_trade_no: t.out_trade_no, trade_no: t.trade_no, trade_status: t.state, subject: t.subject,
    total_amount: yuan(t.total), buyer_id: t.buyer_user_id, buyer_logon_id: t.buyer_logon_id,
  };
  if (t.paid_at) {
    Object.assign(p, {
      gmt_payment: gmt8(t.paid_at), receipt_amount: yuan(t.total), buyer_pay_amount: yuan(t.total),
      invoice_amount: yuan(t.total), point_amount: '0.00',
      fund_bill_list: JSON.stringify([{ amount: yuan(t.total), fundChannel: 'ALIPAYACCOUNT' }]),
    });
  }
  if (refund) {
    Object.assign(p, { out_biz_no: refund.out_request_no, refund_fee: yuan(refundedSum(t, true)),
      gmt_refund: gmt8(refund.gmt_refund || now) });
  }
  if (t.store_id) p.store_id = t.store_id;
  return p;
}

function startNotify(t, reason, refund) {
  const app = apps.get(t.app_id);
  if (!app || !t.notify_url) return null;
  const nf = takeFaults('notify', t.kind === 'barcode' ? 'alipay.trade.pay' : 'alipay.trade.precreate');
  const p = notifyFields(t, refund);
  // trade notifications are signed WITHOUT sign and sign_type (rsaCheckV1)
  p.sign = rsaSign(signString(p, ['sign', 'sign_type']), app.alipayPriv);
  const seq = {
    id: ++notifySeq, reason, created_at: Date.now(), url: t.notify_url, fields: p,
    body: new URLSearchParams(p).toString(), dropped: nf.some((f) => f.drop_notify),
    duplicate: nf.some((f) => f.duplicate_notify), fault_ids: nf.map((f) => f.id), attempts: [],
    state: 'pending', next_at: null, gen: generation,
  };
  t.notify.push(seq);
  if (seq.dropped) { seq.state = 'dropped'; return seq; }
  scheduleNotify(seq, 0);
  return seq;
}
const scheduleNotify = lib.notifier({
  schedule: () => settings.notify_schedule_s, scaled, timers: notifyTimers, generation: () => generation,
  post: (seq) => postNotify(seq.url, seq.body),
  judge: (seq, r) => ({ acknowledged: r.body === 'success' }),   // exactly the 7 characters "success"
});
function postNotify(target, body) {
  return lib.postNotify(target, body, {
    headers: (n) => ({ 'Content-Type': 'application/x-www-form-urlencoded; charset=utf-8', 'Content-Length': n, 'User-Agent': 'alipay-sim' }),
    timeoutMs: settings.notify_timeout_ms, urlName: 'notify_url',
  });
}

// ---------------------------------------------------------------------------------------------
// gateway: answers

class ApiError extends Error {
  constructor(code, subCode, subMsg, extra) { super(subMsg); this.code = code; this.subCode = subCode; this.subMsg = subMsg; this.extra = extra; }
}
const biz = (subCode, subMsg, extra) => new ApiError('40004', subCode, subMsg, extra);
const invalid = (subCode, subMsg) => new ApiError('40002', subCode, subMsg);
const missing = (subCode, subMsg) => new ApiError('40001', subCode, subMsg);

function success(extra, code = '10000') {
  return Object.assign({ code, msg: GATEWAY_MSG[code] }, extra);
}
function errorBody(e) {
  return Object.assign({ code: e.code, msg: GATEWAY_MSG[e.code] || 'Error', sub_code: e.subCode, sub_msg: e.subMsg }, e.extra || {});
}

// ---------------------------------------------------------------------------------------------
// gateway: methods

function need(b, names) {
  for (const k of names) if (!present(b[k])) throw missing('isv.missing-parameter', `缺少必选参数${k}`);
}
function checkLen(b, k, max) {
  if (present(b[k]) && (typeof b[k] !== 'string' || [...b[k]].length > max)) throw invalid('isv.invalid-parameter', `参数${k}无效`);
}
function amountOf(b, k) {
  const v = b[k];
  const fen = parseYuan(typeof v === 'number' ? String(v) : v);
  if (Number.isNaN(fen) || fen < 1) throw biz('ACQ.INVALID_PARAMETER', `参数无效: ${k}=${JSON.stringify(v)}（单位为元，最多两位小数，取值范围[0.01,100000000]）`);
  return fen;
}
function findTrade(ctx, { visibleOnly = true } = {}) {
  const b = ctx.b;
  let t = null;
  if (present(b.trade_no)) {
    t = tradesByNo.get(String(b.trade_no)) || null;
    if (t && t.seller_id !== ctx.seller_id) t = null;
  } else if (present(b.out_trade_no)) {
    t = trades.get(tkey(ctx.seller_id, String(b.out_trade_no))) || null;
  } else {
    throw missing('isv.missing-parameter', '缺少必选参数out_trade_no或trade_no');
  }
  if (t) refresh(t);
  if (t && visibleOnly && HIDDEN.has(t.state)) return null;
  return t;
}
const notExist = () => biz('ACQ.TRADE_NOT_EXIST', '交易不存在');

function newTrade(ctx, kind, b, total) {
  const now = Date.now();
  const t = {
    app_id: ctx.app.app_id, seller_id: ctx.seller_id, auth_app_id: ctx.auth_app_id, kind,
    out_trade_no: String(b.out_trade_no), trade_no: newTradeNo(), total, subject: String(b.subject),
    notify_url: ctx.p.notify_url || null, store_id: b.store_id || null,
    sys_service_provider_id: b.extend_params && b.extend_params.sys_service_provider_id || null,
    created_at: now, queries: 0, refunds: [], notify: [], state: 'WAIT_BUYER_PAY',
  };
  trades.set(tkey(t.seller_id, t.out_trade_no), t);
  tradesByNo.set(t.trade_no, t);
  return t;
}

function apiPrecreate(ctx) {
  const b = ctx.b;
  need(b, ['out_trade_no', 'total_amount', 'subject']);
  checkLen(b, 'out_trade_no', 64);
  checkLen(b, 'subject', 256);
  const total = amountOf(b, 'total_amount');
  let expireAt = null;
  if (present(b.time_expire)) {
    expireAt = parseGmt8(b.time_expire);
    if (Number.isNaN(expireAt)) throw biz('ACQ.INVALID_PARAMETER', '参数无效: time_expire (yyyy-MM-dd HH:mm:ss)');
  }
  const ex = trades.get(tkey(ctx.seller_id, String(b.out_trade_no)));
  if (ex) {
    refresh(ex);
    if (ex.state === 'TRADE_SUCCESS' || ex.state === 'TRADE_FINISHED') throw biz('ACQ.TRADE_HAS_SUCCESS', '交易已被支付');
    if (ex.state === 'TRADE_CLOSED') throw biz('ACQ.TRADE_HAS_CLOSE', '交易已经关闭');
    if (ex.kind === 'precreate' && ex.total === total && ex.subject === String(b.subject) &&
        (ex.state === 'PRECREATED' || ex.state === 'WAIT_BUYER_PAY')) {
      ex.repeats = (ex.repeats || 0) + 1;        // the same order again: the same QR
      return success({ out_trade_no: ex.out_trade_no, qr_code: ex.qr_code });
    }
    throw biz('ACQ.CONTEXT_INCONSISTENT', '交易信息被篡改');
  }
  const t = newTrade(ctx, 'precreate', b, total);
  t.state = settings.lazy_precreate ? 'PRECREATED' : 'WAIT_BUYER_PAY';
  t.expire_at = expireAt != null ? expireAt : t.created_at + scaled(QR_VALID_S);
  t.token = randHex(32);
  t.qr_code = `${ctx.base}/_sim/qr/${t.token}`;
  tradesByToken.set(t.token, t);
  return success({ out_trade_no: t.out_trade_no, qr_code: t.qr_code });
}

function payRule(code) {
  if (code.endsWith('0000')) return { rule: 'fail' };
  if (code.endsWith('8888')) return { rule: 'hold' };
  if (code.endsWith('7777')) return { rule: 'lost_success' };
  if (code.endsWith('9999')) return { rule: 'waiting' };
  let m = /99([1-8])9$/.exec(code);
  if (m) return { rule: 'pay_after_queries', k: Number(m[1]) };
  m = /99([1-8])8$/.exec(code);
  if (m) return { rule: 'close_after_queries', k: Number(m[1]) };
  return { rule: 'success' };
}
function payFields(t) {
  const f = { trade_no: t.trade_no, out_trade_no: t.out_trade_no, buyer_logon_id: t.buyer_logon_id,
    total_amount: yuan(t.total), buyer_user_id: t.buyer_user_id };
  if (t.paid_at) {
    Object.assign(f, { receipt_amount: yuan(t.total), buyer_pay_amount: yuan(t.total), point_amount: '0.00',
      invoice_amount: yuan(t.total), gmt_payment: gmt8(t.paid_at),
      fund_bill_list: [{ fund_channel: 'ALIPAYACCOUNT', amount: yuan(t.total) }] });
  }
  return f;
}
function payAnswer(t) {
  if (t.state === 'TRADE_SUCCESS' || t.state === 'TRADE_FINISHED') {
    if (t.rule === 'lost_success' && !t.replayed) {
      return new ApiError('20000', 'isp.unknow-error', '系统繁忙');
    }
    return success(payFields(t));
  }
  if (t.state === 'WAIT_BUYER_PAY') return success(payFields(t), '10003');
  if (t.state === 'TRADE_CLOSED') return biz('ACQ.TRADE_HAS_CLOSE', '交易已经关闭');
  return biz('ACQ.TRADE_STATUS_ERROR', `交易状态不合法 [${t.state}]`);
}

function apiPay(ctx) {
  const b = ctx.b;
  need(b, ['out_trade_no', 'scene', 'auth_code', 'subject', 'total_amount']);
  checkLen(b, 'out_trade_no', 64);
  checkLen(b, 'subject', 256);
  if (b.scene !== 'bar_code') throw biz('ACQ.INVALID_PARAMETER', `参数无效: scene=${b.scene}（当面付条码支付为 bar_code）`);
  if (present(b.product_code) && b.product_code !== 'FACE_TO_FACE_PAYMENT') throw biz('ACQ.INVALID_PARAMETER', `参数无效: product_code=${b.product_code}`);
  const total = amountOf(b, 'total_amount');
  const code = String(b.auth_code);
  const ex = trades.get(tkey(ctx.seller_id, String(b.out_trade_no)));
  if (ex) {
    refresh(ex);
    if (ex.kind === 'barcode' && ex.auth_code === code && ex.total === total) {
      ex.repeats = (ex.repeats || 0) + 1;       // a retry (e.g. after a timeout): the trade as it is now
      ex.replayed = true;
      const a = payAnswer(ex);
      if (a instanceof ApiError) throw a;
      return a;
    }
    if (ex.state === 'TRADE_SUCCESS' || ex.state === 'TRADE_FINISHED') throw biz('ACQ.TRADE_HAS_SUCCESS', '交易已被支付');
    if (ex.state === 'TRADE_CLOSED') throw biz('ACQ.TRADE_HAS_CLOSE', '交易已经关闭');
    throw biz('ACQ.CONTEXT_INCONSISTENT', '交易信息被篡改');
  }
  if (!/^(2[5-9]|30)[0-9]{14,22}$/.test(code)) {
    throw biz('ACQ.PAYMENT_AUTH_CODE_INVALID', '支付失败，获取顾客账户信息失败，请顾客刷新付款码后重新收款');
  }
  const r = payRule(code);
  if (r.rule === 'fail') throw biz('ACQ.PAYMENT_AUTH_CODE_INVALID', '支付失败，获取顾客账户信息失败，请顾客刷新付款码后重新收款');
  const t = newTrade(ctx, 'barcode', b, total);
  Object.assign(t, buyer(), { auth_code: code, rule: r.rule, rule_k: r.k || null, scanned_at: t.created_at });
  switch (r.rule) {
    case 'success': case 'lost_success': markPaid(t, 'auth_code'); break;
    case 'hold': return { hold: true };
    default: break;                          // WAIT_BUYER_PAY
  }
  const a = payAnswer(t);
  if (a instanceof ApiError) throw a;
  return a;
}

function apiQuery(ctx) {
  const t = findTrade(ctx);
  if (!t) throw notExist();
  t.queries++;
  if (t.state === 'WAIT_BUYER_PAY' && t.rule_k && t.queries >= t.rule_k) {
    if (t.rule === 'pay_after_queries') markPaid(t, `query #${t.queries}`);
    else if (t.rule === 'close_after_queries') markClosed(t, 'buyer gave up');
  }
  refresh(t);
  const f = { trade_no: t.trade_no, out_trade_no: t.out_trade_no, buyer_logon_id: t.buyer_logon_id,
    trade_status: t.state, total_amount: yuan(t.total), buyer_user_id: t.buyer_user_id };
  if (t.paid_at) Object.assign(f, { receipt_amount: yuan(t.total), buyer_pay_amount: yuan(t.total),
    point_amount: '0.00', invoice_amount: yuan(t.total), send_pay_date: gmt8(t.paid_at) });
  if (t.store_id) f.store_id = t.store_id;
  return success(f);
}

function apiRefund(ctx) {
  const b = ctx.b;
  need(b, ['refund_amount']);
  checkLen(b, 'out_request_no', 64);
  const amount = amountOf(b, 'refund_amount');
  const t = findTrade(ctx);
  if (!t) throw notExist();
  const orn = present(b.out_request_no) ? String(b.out_request_no) : t.out_trade_no;
  const prev = t.refunds.find((r) => r.out_request_no === orn);
  const answer = (r, changed) => success({ trade_no: t.trade_no, out_trade_no: t.out_trade_no,
    buyer_logon_id: t.buyer_logon_id, buyer_user_id: t.buyer_user_id, fund_change: changed ? 'Y' : 'N',
    refund_fee: yuan(refundedSum(t, true)), ...(r.gmt_refund ? { gmt_refund_pay: gmt8(r.gmt_refund) } : {}) });
  if (prev) {
    prev.requests++;
    if (prev.amount !== amount) throw biz('ACQ.DISCORDANT_REPEAT_REQUEST', '请求信息不一致（同一退款请求号的退款金额不同）');
    return answer(prev, false);              // a repeat never moves money again
  }
  if (t.state !== 'TRADE_SUCCESS') {
    if (t.state === 'TRADE_FINISHED') throw biz('ACQ.TRADE_HAS_FINISHED', '交易已完结');
    throw biz('ACQ.TRADE_STATUS_ERROR', `交易状态不合法 [${t.state}]`);
  }
  if (amount > t.total - refundedSum(t, false)) throw biz('ACQ.REFUND_AMT_NOT_EQUAL_TOTAL', '退款金额超限');
  const now = Date.now();
  const r = { out_request_no: orn, amount, reason: b.refund_reason || null, status: 'PROCESSING', created_at: now,
    settle_at: settings.refund_delay_s > 0 ? now + scaled(settings.refund_delay_s) : null, requests: 1 };
  t.refunds.push(r);
  if (settings.refund_delay_s === 0) {
    settleRefund(t, r, 'synchronous', now);
    return answer(r, true);
  }
  return answer(r, false);                    // asynchronous: settled later, ask the refund query
}

function apiRefundQuery(ctx) {
  const b = ctx.b;
  need(b, ['out_request_no']);
  const t = findTrade(ctx);
  if (!t) throw notExist();
  const r = t.refunds.find((x) => x.out_request_no === String(b.out_request_no));
  const base = { trade_no: t.trade_no, out_trade_no: t.out_trade_no };
  // a refund not (yet) successful is not returned: "未返回该字段表示退款请求未收到或者退款失败"
  if (!r || r.status !== 'SUCCESS') return success(base);
  return success(Object.assign(base, { out_request_no: r.out_request_no, total_amount: yuan(t.total),
    refund_amount: yuan(r.amount), refund_status: 'REFUND_SUCCESS', gmt_refund_pay: gmt8(r.gmt_refund),
    ...(r.reason ? { refund_reason: r.reason } : {}) }));
}

function apiClose(ctx) {
  const t = findTrade(ctx);
  if (!t) throw notExist();                  // e.g. a precreated QR nobody has scanned
  if (t.state === 'TRADE_CLOSED') return success({ trade_no: t.trade_no, out_trade_no: t.out_trade_no });
  if (t.state !== 'WAIT_BUYER_PAY') throw biz('ACQ.TRADE_STATUS_ERROR', `交易状态不合法 [${t.state}]`);
  markClosed(t, 'alipay.trade.close');
  return success({ trade_no: t.trade_no, out_trade_no: t.out_trade_no });
}

function apiCancel(ctx, fl) {
  const b = ctx.b;
  if (fl.cancel_retry) {
    return new ApiError('40004', 'ACQ.SYSTEM_ERROR', '系统异常，请重试', { retry_flag: 'Y', out_trade_no: b.out_trade_no });
  }
  let t = findTrade(ctx, { visibleOnly: false });
  if (!t) {
    // no trade (a request that never arrived): recorded as closed so that a late one cannot pay
    if (!present(b.out_trade_no)) throw notExist();
    t = newTrade(ctx, 'tombstone', { out_trade_no: b.out_trade_no, subject: '' }, 0);
    markClosed(t, 'alipay.trade.cancel');
    return success({ out_trade_no: t.out_trade_no, retry_flag: 'N' });
  }
  const done = (action) => {
    t.cancel_action = action;
    return success({ trade_no: t.trade_no, out_trade_no: t.out_trade_no, retry_flag: 'N', action });
  };
  if (settings.cancel_window_s > 0 && Date.now() - t.created_at > settings.cancel_window_s * 1000 * settings.time_scale) {
    return new ApiError('40004', 'ACQ.TRADE_CANCEL_TIME_OUT', '超过撤销时间范围', { retry_flag: 'N', out_trade_no: t.out_trade_no });
  }
  if (HIDDEN.has(t.state)) { markClosed(t, 'alipay.trade.cancel'); return success({ out_trade_no: t.out_trade_no, retry_flag: 'N' }); }
  if (t.refunds.length) return new ApiError('40004', 'ACQ.REASON_TRADE_REFUND_FEE_ERR', '交易已经发生过退款，不能撤销', { retry_flag: 'N', out_trade_no: t.out_trade_no });
  if (t.state === 'TRADE_CLOSED') return done(t.cancel_action || 'close');
  if (t.state === 'TRADE_FINISHED') return new ApiError('40004', 'ACQ.TRADE_HAS_FINISHED', '交易已经完结', { retry_flag: 'N', out_trade_no: t.out_trade_no });
  const paid = t.state === 'TRADE_SUCCESS';
  markClosed(t, 'alipay.trade.cancel');
  return done(paid ? 'refund' : 'close');
}

// ---------------------------------------------------------------------------------------------
// trade bill (alipay.data.dataservice.bill.downloadurl.query, bill_type trade; served as GET /_sim/bill)
//
// As the sources in docs/channels/alipay.md "Bill" show it: a zip (entry names GBK, without the
// UTF-8 flag) holding two GBK CSV files, "<pid>_<yyyyMMdd>_业务明细.csv" and "…_业务明细(汇总).csv",
// CRLF lines.  The details file: comment lines (#支付宝业务明细查询, #账号：[<pid>0156], #起始日期：…),
// the "#-----业务明细列表-----" marker, the column titles, one line per trade (业务类型 交易, on the GMT+8
// day it was paid) or refund (业务类型 退款, on the day it succeeded; 订单金额 and 商家实收 negative;
// 退款批次号/请求号 = the refund's out_request_no), several values followed by a tab as Alipay writes
// them; the "#-----业务明细列表结束-----" marker; "#交易合计：N笔，商家实收共X元，商家优惠共Y元",
// "#退款合计：N笔，商家实收退款共X元，商家优惠退款共Y元" and "#导出时间：[…]".  No discounts here:
// 商家实收 = 订单金额, 商家优惠 0.00; 服务费 at fee_ppm (default 6000 = 0.60 %, rounded half up),
// negative on a trade (charged), positive on a refund (returned).

const AP_BILL_COLUMNS = ['支付宝交易号', '商户订单号', '业务类型', '商品名称', '创建时间', '完成时间', '门店编号', '门店名称',
  '操作员', '终端号', '对方账户', '订单金额（元）', '商家实收（元）', '支付宝红包（元）', '集分宝（元）', '支付宝优惠（元）',
  '商家优惠（元）', '券核销金额（元）', '券名称', '商家红包消费金额（元）', '卡消费金额（元）', '退款批次号/请求号', '服务费（元）',
  '分润（元）', '备注'];
const AP_SUMMARY_COLUMNS = ['门店编号', '门店名称', '交易订单总笔数', '退款订单总笔数', '订单金额（元）', '商家实收（元）',
  '支付宝优惠（元）', '商家优惠（元）', '卡消费金额（元）', '服务费（元）', '分润（元）', '实收净额（元）'];

/** GBK encoding, dependency-free: the table is node's own GBK decoder (WHATWG) run backwards. */
let gbkTable = null;
function gbkEncode(str) {
  if (!gbkTable) {
    gbkTable = new Map();
    const dec = new TextDecoder('gbk', { fatal: true });
    const pair = Buffer.alloc(2);
    for (let a = 0x81; a <= 0xfe; a++) {
      for (let b = 0x40; b <= 0xfe; b++) {
        if (b === 0x7f) continue;
        pair[0] = a; pair[1] = b;
        let ch;
        try { ch = dec.decode(pair); } catch (e) { continue; }
        if (ch.length === 1 && !gbkTable.has(ch)) gbkTable.set(ch, (a << 8) | b);
      }
    }
  }
  const out = [];
  for (const ch of str) {
    const c = ch.codePointAt(0);
    if (c < 0x80) { out.push(c); continue; }
    const g = gbkTable.get(ch);
    if (g === undefined) out.push(0x3f); else out.push(g >> 8, g & 0xff); // not in GBK: "?"
  }
  return Buffer.from(out);
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();
function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
/** A zip archive of [{name: Buffer, data: Buffer}]: deflated entries, a central directory, no ZIP64. */
function zipArchive(files, ms = Date.now()) {
  const t = new Date(ms + 8 * 3600e3);
  const dosTime = (t.getUTCHours() << 11) | (t.getUTCMinutes() << 5) | (t.getUTCSeconds() >> 1);
  const dosDate = ((t.getUTCFullYear() - 1980) << 9) | ((t.getUTCMonth() + 1) << 5) | t.getUTCDate();
  const parts = [];
  const central = [];
  let off = 0;
  for (const f of files) {
    const comp = zlib.deflateRawSync(f.data);
    const crc = crc32(f.data);
    const head = (size, sig) => {
      const h = Buffer.alloc(size);
      h.writeUInt32LE(sig, 0);
      return h;
    };
    const lh = head(30, 0x04034b50);
    lh.writeUInt16LE(20, 4); lh.writeUInt16LE(0, 6); lh.writeUInt16LE(8, 8); lh.writeUInt16LE(dosTime, 10);
    lh.writeUInt16LE(dosDate, 12); lh.writeUInt32LE(crc, 14); lh.writeUInt32LE(comp.length, 18);
    lh.writeUInt32LE(f.data.length, 22); lh.writeUInt16LE(f.name.length, 26); lh.writeUInt16LE(0, 28);
    const ch = head(46, 0x02014b50);
    ch.writeUInt16LE(20, 4); ch.writeUInt16LE(20, 6); ch.writeUInt16LE(0, 8); ch.writeUInt16LE(8, 10);
    ch.writeUInt16LE(dosTime, 12); ch.writeUInt16LE(dosDate, 14); ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(comp.length, 20); ch.writeUInt32LE(f.data.length, 24); ch.writeUInt16LE(f.name.length, 28);
    ch.writeUInt32LE(off, 42);
    parts.push(lh, f.name, comp);
    central.push(ch, f.name);
    off += 30 + f.name.length + comp.length;
  }
  const cd = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0); end.writeUInt16LE(files.length, 8); end.writeUInt16LE(files.length, 10);
  end.writeUInt32LE(cd.length, 12); end.writeUInt32LE(off, 16);
  return Buffer.concat([...parts, cd, end]);
}

/** "yyyy年MM月dd日 HH:mm:ss" (GMT+8) */
const cnTime = (ms) => { const g = gmt8(ms); return `${g.slice(0, 4)}年${g.slice(5, 7)}月${g.slice(8, 10)}日 ${g.slice(11)}`; };
/** fen → "12.34" / "-0.05" (integers only) */
const billYuan = (fen) => `${fen < 0 ? '-' : ''}${yuan(Math.abs(fen))}`;
/** a CSV value: quoted when it holds a comma, a quote or a line break */
const csvValue = (v) => { const s = String(v == null ? '' : v); return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; };

/** The bill of seller's GMT+8 day (yyyy-MM-dd) as {zip, details, summary, name} (texts before GBK encoding). */
function tradeBill(seller, day, feePpm) {
  const feeOf = (fen) => Math.floor((fen * feePpm + 500000) / 1000000);
  const rows = [];
  for (const t of trades.values()) {
    if (t.seller_id !== seller || t.kind === 'tombstone') continue;
    refresh(t);
    const base = (at, type) => ({ at, type, txn: t.trade_no, otn: t.out_trade_no, subject: t.subject, created: gmt8(t.created_at),
      done: gmt8(at), store: t.store_id || '', buyer: t.buyer_logon_id || '' });
    if (t.paid_at && gmt8(t.paid_at).slice(0, 10) === day) {
      rows.push({ ...base(t.paid_at, '交易'), amount: t.total, req: '', fee: -feeOf(t.total) });
    }
    for (const r of t.refunds) {
      if (r.status !== 'SUCCESS' || !r.gmt_refund || gmt8(r.gmt_refund).slice(0, 10) !== day) continue;
      rows.push({ ...base(r.gmt_refund, '退款'), amount: -r.amount, req: r.out_request_no, fee: feeOf(r.amount) });
    }
    if (t.cancel_action === 'refund' && t.paid_at && gmt8(t.closed_at).slice(0, 10) === day) { // cancelled after payment
      rows.push({ ...base(t.closed_at, '退款'), amount: -t.total, req: '', fee: feeOf(t.total) });
    }
  }
  rows.sort((a, b) => a.at - b.at);
  const pidLine = `#账号：[${seller}0156]`;
  const from = Date.UTC(+day.slice(0, 4), +day.slice(5, 7) - 1, +day.slice(8, 10)) - 8 * 3600e3;
  const period = `#起始日期：[${cnTime(from)}]   终止日期：[${cnTime(from + 86400e3)}]`;
  const now = Date.now();
  const details = ['#支付宝业务明细查询', pidLine, period,
    '#-----------------------------------------业务明细列表----------------------------------------',
    AP_BILL_COLUMNS.join(','),
    ...rows.map((r) => [`${r.txn}\t`, `${r.otn}\t`, `${r.type}\t`, csvValue(r.subject), r.created, r.done, `${r.store}\t`,
      `${r.store}\t`, '\t', '\t', `${r.buyer}\t`, billYuan(r.amount), billYuan(r.amount), '0.00', '0.00', '0.00', '0.00', '0.00',
      '', '0.00\t', '0.00', `${r.req}\t`, billYuan(r.fee), '0.00', csvValue(r.subject)].join(','))];
  const sum = (type, k) => rows.filter((r) => r.type === type).reduce((s, r) => s + r[k], 0);
  const count = (type) => rows.filter((r) => r.type === type).length;
  details.push('#-----------------------------------------业务明细列表结束------------------------------------',
    `#交易合计：${count('交易')}笔，商家实收共${billYuan(sum('交易', 'amount'))}元，商家优惠共0.00元`,
    `#退款合计：${count('退款')}笔，商家实收退款共${billYuan(sum('退款', 'amount'))}元，商家优惠退款共0.00元`,
    `#导出时间：[${cnTime(now)}]`);
  const amount = rows.reduce((s, r) => s + r.amount, 0);
  const fee = rows.reduce((s, r) => s + r.fee, 0);
  const sumLine = (label) => [label, '', count('交易'), count('退款'), billYuan(amount), billYuan(amount), '0.00', '0.00', '0.00',
    billYuan(fee), '0.00', billYuan(amount + fee)].join(',');
  const summary = ['#支付宝业务汇总查询', pidLine, period,
    '#-----------------------------------------业务汇总列表----------------------------------------',
    AP_SUMMARY_COLUMNS.join(','), rows.length ? sumLine('') : null, sumLine('合计'),
    '#----------------------------------------业务汇总列表结束-------------------------------------',
    `#导出时间：[${cnTime(now)}]`].filter((l) => l !== null);
  const stem = `${seller}_${day.replace(/-/g, '')}`;
  const text = (lines) => lines.join('\r\n') + '\r\n';
  const zip = zipArchive([
    { name: gbkEncode(`${stem}_业务明细.csv`), data: gbkEncode(text(details)) },
    { name: gbkEncode(`${stem}_业务明细(汇总).csv`), data: gbkEncode(text(summary)) },
  ], now);
  return { zip, name: `${stem}.csv.zip` };
}

function apiBillUrl(ctx) {
  const b = ctx.b;
  need(b, ['bill_type', 'bill_date']);
  if (b.bill_type !== 'trade') throw invalid('isv.invalid-parameter', `参数bill_type无效: ${b.bill_type}（模拟器只提供 trade 账单）`);
  if (!/^\d{4}-\d{2}-\d{2}$/.test(String(b.bill_date)) || Number.isNaN(parseGmt8(`${b.bill_date} 00:00:00`))) {
    throw invalid('isv.invalid-parameter', `参数bill_date无效: ${b.bill_date}（yyyy-MM-dd；模拟器不提供月账单）`);
  }
  const q = new URLSearchParams({ seller_id: ctx.seller_id, date: b.bill_date, token: randHex(32) });
  return success({ bill_download_url: `${ctx.base}/_sim/bill?${q}` });
}

const APIS = {
  'alipay.data.dataservice.bill.downloadurl.query': apiBillUrl,
  'alipay.trade.precreate': apiPrecreate,
  'alipay.trade.pay': apiPay,
  'alipay.trade.query': apiQuery,
  'alipay.trade.refund': apiRefund,
  'alipay.trade.fastpay.refund.query': apiRefundQuery,
  'alipay.trade.close': apiClose,
  'alipay.trade.cancel': apiCancel,
};

// ---------------------------------------------------------------------------------------------
// gateway: request handling

/**
 * From the merged parameters to an answer: {key, body, app} (app: signs the answer, or null for an
 * unsigned error_response) or {hold: true}.
 */
function processGateway(p, rec, base, fl) {
  const responseKey = (m) => `${m.replace(/\./g, '_')}_response`;
  const errorResp = (e, app, key = 'error_response') => ({ key, body: errorBody(e), app });
  if (!present(p.method)) return errorResp(missing('isv.missing-method', '缺少方法名参数'), null);
  if (!present(p.app_id)) return errorResp(missing('isv.missing-app-id', '缺少AppID参数'), null);
  const app = apps.get(p.app_id);
  if (!app) return errorResp(invalid('isv.invalid-app-id', '无效的AppID参数'), null);
  const key = METHODS.has(p.method) ? responseKey(p.method) : 'error_response';
  const fail = (e) => ({ key, body: errorBody(e), app });
  if (!present(p.sign_type)) return fail(missing('isv.missing-signature-type', '缺少签名类型参数'));
  if (p.sign_type !== 'RSA2') return fail(invalid('isv.invalid-signature-type', `无效的签名类型参数: ${p.sign_type}（仅支持 RSA2）`));
  if (!present(p.sign)) return fail(missing('isv.missing-signature', '缺少签名参数'));
  const str = signString(p, ['sign']);
  rec.sign_string = str;
  rec.sign_verified = rsaVerify(str, p.sign, app.appPub);
  if (!rec.sign_verified) {
    return fail(invalid('isv.invalid-signature', `验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，网关生成的验签字符串为：${str}`));
  }
  if (!present(p.timestamp)) return fail(missing('isv.missing-timestamp', '缺少时间戳参数'));
  const ts = parseGmt8(p.timestamp);
  if (Number.isNaN(ts)) return fail(invalid('isv.invalid-timestamp', `非法的时间戳参数: ${p.timestamp} (yyyy-MM-dd HH:mm:ss, GMT+8)`));
  if (settings.timestamp_skew_s > 0 && Math.abs(ts - Date.now()) > settings.timestamp_skew_s * 1000) {
    return fail(invalid('isv.invalid-timestamp', `非法的时间戳参数: ${p.timestamp} 与网关时间 ${gmt8()} (GMT+8) 相差过大`));
  }
  if (present(p.version) && p.version !== '1.0') return fail(invalid('isv.invalid-parameter', `参数version无效: ${p.version}`));
  if (present(p.charset) && !/^utf-?8$/i.test(p.charset)) return fail(invalid('isv.invalid-charset', `字符集错误: ${p.charset}`));
  if (present(p.format) && !/^json$/i.test(p.format)) return fail(invalid('isv.invalid-format', `参数format无效: ${p.format}`));
  if (!METHODS.has(p.method)) return fail(invalid('isv.invalid-method', `不存在的方法名: ${p.method}`));
  if (present(p.notify_url)) {
    let u;
    try { u = new URL(p.notify_url); } catch (e) { u = null; }
    if (!u || (u.protocol !== 'http:' && u.protocol !== 'https:')) return fail(invalid('isv.invalid-notify-url', '参数notify_url无效'));
  }
  // ISV mode: the token names the sub-merchant the app acts for
  let seller = app.seller_id;
  let authAppId = app.app_id;
  if (present(p.app_auth_token)) {
    const tok = tokens.get(p.app_auth_token);
    if (!tok || tok.app_id !== app.app_id) return fail(new ApiError('20001', 'aop.invalid-app-auth-token', '无效的应用授权令牌'));
    seller = tok.seller_id;
    authAppId = tok.auth_app_id;
  }
  if (!seller) return fail(new ApiError('40006', 'isv.insufficient-isv-permissions', 'ISV权限不足，请传入 app_auth_token'));
  rec.seller_id = seller;
  let b;
  try { b = JSON.parse(p.biz_content || '{}'); } catch (e) { b = null; }
  if (!b || typeof b !== 'object' || Array.isArray(b)) return fail(invalid('isv.invalid-parameter', '参数biz_content无效（不是 JSON 对象）'));
  rec.biz = b;
  rec.out_trade_no = b.out_trade_no || null;
  const ctx = { p, b, app, seller_id: seller, auth_app_id: authAppId, base };
  if (fl.isp_error && !fl.isp_error.processed) return fail(new ApiError('20000', 'isp.unknow-error', '系统繁忙'));
  try {
    const out = APIS[p.method](ctx, fl);
    if (out && out.hold) return { hold: true };
    if (out instanceof ApiError) return fail(out);
    if (fl.isp_error) return fail(new ApiError('20000', 'isp.unknow-error', '系统繁忙'));
    return { key, body: out, app };
  } catch (e) {
    if (e instanceof ApiError) {
      if (fl.isp_error) return fail(new ApiError('20000', 'isp.unknow-error', '系统繁忙'));
      return fail(e);
    }
    throw e;
  }
}

function baseUrl(req) {
  const proto = opts.tlsCert ? 'https' : 'http';
  const host = req.headers.host || `${opts.host}:${actualPort}`;
  return `${proto}://${host}`;
}
function hold(req, res, rec) {
  rec.held = true;
  heldResponses.add(res);
  res.on('close', () => { heldResponses.delete(res); rec.held_closed_at = iso(Date.now()); });
}
const httpErrorPage = (code) => lib.httpErrorPage(code, 'Tengine');

/** Query string + form body → one map; a parameter given twice is refused. */
function mergeParams(url, req, buf) {
  const p = {};
  const inQuery = [];
  const dup = [];
  for (const [k, v] of url.searchParams) { if (has(p, k)) dup.push(k); p[k] = v; inQuery.push(k); }
  const text = buf.length ? new TextDecoder('utf-8', { fatal: true }).decode(buf) : '';
  const ct = String(req.headers['content-type'] || '');
  if (text) {
    if (!/^application\/x-www-form-urlencoded\b/i.test(ct)) throw new Error(`Content-Type ${ct || '(none)'} is not application/x-www-form-urlencoded`);
    for (const [k, v] of new URLSearchParams(text)) { if (has(p, k)) dup.push(k); p[k] = v; }
  }
  return { p, inQuery, dup };
}

async function handleGateway(req, res, url) {
  const rec = { id: ++requestSeq, at: Date.now(), http_method: req.method, path: url.pathname,
    remote: req.socket.remoteAddress, bytes: 0, method: null, app_id: null, seller_id: null,
    out_trade_no: null, params: null, in_query: null, sign_string: null, sign_verified: null, biz: null,
    faults: [], held: false, response: null };
  logRequest(rec);
  const sendJson = (text, meta) => {
    rec.response = Object.assign({ http_status: 200, body: text }, meta);
    rec.duration_ms = Date.now() - rec.at;
    send(res, 200, 'application/json;charset=utf-8', text);
  };
  if (req.method !== 'POST' && req.method !== 'GET') {
    req.resume();
    rec.response = { http_status: 405 };
    return send(res, 405, 'text/plain', 'method not allowed\n');
  }
  const { buf, size, tooLarge } = await readBody(req, MAX_BODY);
  rec.bytes = size;
  let merged = null;
  let parseError = tooLarge ? `request body over ${MAX_BODY} bytes` : null;
  if (!tooLarge) {
    try { merged = mergeParams(url, req, buf); } catch (e) { parseError = e.message; }
  }
  if (merged) {
    rec.params = merged.p;
    rec.in_query = merged.inQuery;
    rec.method = merged.p.method || null;
    rec.app_id = merged.p.app_id || null;
  } else rec.parse_error = parseError;

  // cancel_retry only ever applies to alipay.trade.cancel
  const fl = combineRequestFaults(takeFaults('request', rec.method, (f) => !f.cancel_retry || rec.method === 'alipay.trade.cancel'));
  rec.faults = fl.ids;
  if (fl.latency_ms) await sleep(fl.latency_ms);
  if (fl.timeout && !fl.timeout.processed) return hold(req, res, rec);
  if (fl.http_status && !fl.http_status.processed) {
    rec.response = { http_status: fl.http_status.code };
    return send(res, fl.http_status.code, 'text/html', httpErrorPage(fl.http_status.code));
  }

  let out;
  if (!merged) {
    out = { key: 'error_response', body: errorBody(invalid('isv.invalid-parameter', `请求无效: ${parseError}`)), app: null };
  } else if (merged.dup.length) {
    out = { key: 'error_response', body: errorBody(invalid('isv.invalid-parameter', `参数重复: ${merged.dup.join(',')}`)), app: null };
  } else {
    try {
      out = processGateway(merged.p, rec, baseUrl(req), fl);
    } catch (e) {
      process.stderr.write(`alipay-sim: internal error: ${e.stack}\n`);
      out = { key: 'error_response', body: errorBody(new ApiError('20000', 'isp.unknow-error', `模拟器内部错误: ${e.message}`)), app: null };
    }
  }
  if (out.hold || fl.timeout) return hold(req, res, rec);

  // the signed text is the response object exactly as sent
  const text = responseText(out.body);
  let body = `{"${out.key}":${text}`;
  const meta = { key: out.key, code: out.body.code, msg: out.body.msg, sub_code: out.body.sub_code,
    sub_msg: out.body.sub_msg, trade_status: out.body.trade_status, signed: false };
  if (out.app && !fl.unsigned) {
    let signed = text;
    if (fl.sign_unescaped) { signed = text.replace(/\\\//g, '/'); meta.sign_unescaped = true; }
    if (fl.bad_sign) { signed = responseText(Object.assign({}, out.body, { msg: `${out.body.msg}.` })); meta.bad_sign = true; }
    body += `,"sign":"${rsaSign(signed, out.app.alipayPriv)}"`;
    meta.signed = true;
  }
  body += '}';
  if (fl.http_status) {
    rec.response = Object.assign(meta, { http_status: fl.http_status.code, processed: true });
    return send(res, fl.http_status.code, 'text/html', httpErrorPage(fl.http_status.code));
  }
  if (fl.garbled) {
    const g = fl.garbled.body != null ? fl.garbled.body : `${body.slice(0, Math.floor(body.length / 2))}\u0000#garbled`;
    rec.response = Object.assign(meta, { http_status: 200, garbled: true, body: g });
    return send(res, 200, 'application/json;charset=utf-8', g);
  }
  sendJson(body, meta);
}

// ---------------------------------------------------------------------------------------------
// control API (/_sim/...)


const readJson = (req) => lib.readJson(req, MAX_CONTROL_BODY);

function lookupTrade(p) {
  let t = null;
  if (present(p.token)) t = tradesByToken.get(String(p.token)) || null;
  else if (present(p.trade_no)) t = tradesByNo.get(String(p.trade_no)) || null;
  else {
    if (!present(p.seller_id) || !present(p.out_trade_no)) throw new HttpError(400, 'give seller_id and out_trade_no (or token, or trade_no)');
    t = trades.get(tkey(String(p.seller_id), String(p.out_trade_no))) || null;
  }
  if (!t) throw new HttpError(404, 'trade not found');
  refresh(t);
  return t;
}
function controlScan(p) {
  const t = lookupTrade(p);
  if (t.state !== 'PRECREATED') throw new HttpError(409, `trade is ${t.state}, only a PRECREATED (unscanned) QR can be scanned`);
  scan(t);
  return t;
}
function controlPay(p) {
  const t = lookupTrade(p);
  if (t.state === 'PRECREATED') scan(t);
  if (t.state !== 'WAIT_BUYER_PAY') throw new HttpError(409, `trade is ${t.state}, only PRECREATED or WAIT_BUYER_PAY can be paid`);
  markPaid(t, '/_sim/pay');
  return t;
}
function payPage(t, message) {
  const payable = t.state === 'PRECREATED' || t.state === 'WAIT_BUYER_PAY';
  return '<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">' +
    '<title>alipay-sim pay</title><style>body{font-family:sans-serif;max-width:28em;margin:2em auto}' +
    '.amt{font-size:2em}button{font-size:1.3em;padding:.4em 2em}</style></head><body>' +
    `<h2>Alipay simulator</h2>${message ? `<p><b>${escHtml(message)}</b></p>` : ''}` +
    `<p>seller ${escHtml(t.seller_id)}<br>order ${escHtml(t.out_trade_no)}<br>${escHtml(t.subject)}</p>` +
    `<p class="amt">¥ ${yuan(t.total)}</p><p>state: <b>${escHtml(t.state)}</b></p>` +
    (payable && t.token ? `<form method="get" action="/_sim/pay"><input type="hidden" name="token" value="${escHtml(t.token)}">` +
      '<button type="submit">Pay</button></form>' : '') + '</body></html>';
}
function settleRefunds(p) {
  const targets = [];
  if (present(p.out_request_no)) {
    const t = lookupTrade(p);
    const r = t.refunds.find((x) => x.out_request_no === String(p.out_request_no));
    if (!r) throw new HttpError(404, 'refund not found');
    targets.push({ t, r });
  } else if (present(p.out_trade_no) || present(p.trade_no) || present(p.token)) {
    const t = lookupTrade(p);
    for (const r of t.refunds) if (r.status === 'PROCESSING') targets.push({ t, r });
  } else {
    for (const t of trades.values()) for (const r of t.refunds) if (r.status === 'PROCESSING') targets.push({ t, r });
  }
  for (const { t, r } of targets) { if (r.status === 'PROCESSING') settleRefund(t, r, '/_sim/refund/settle'); }
  return targets.map(({ t, r }) => ({ seller_id: t.seller_id, out_trade_no: t.out_trade_no, out_request_no: r.out_request_no, status: r.status }));
}
function reset() {
  generation++;
  for (const tm of notifyTimers) clearTimeout(tm);
  notifyTimers.clear();
  for (const r of heldResponses) r.destroy();
  heldResponses.clear();
  trades.clear(); tradesByNo.clear(); tradesByToken.clear();
  requestLog = [];
  faults = [];
}

async function handleControl(req, res, url) {
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const route = parts[1] || '';
  const m = req.method;
  const q = Object.fromEntries(url.searchParams);
  try {
    if (route === 'health' && m === 'GET') {
      return sendJson(res, 200, { ok: true, name: 'alipay-sim', uptime_s: (Date.now() - startedAt) / 1000,
        apps: apps.size, trades: trades.size, requests: requestSeq, active_faults: faults.length,
        held_connections: heldResponses.size, settings });
    }
    if (route === 'settings') {
      if (m === 'GET') return sendJson(res, 200, settings);
      if (m === 'POST') {
        try { applySettings(await readJson(req)); } catch (e) { if (e instanceof HttpError) throw e; throw new HttpError(400, e.message); }
        return sendJson(res, 200, settings);
      }
    }
    if (route === 'apps') {
      if (m === 'GET' && parts.length === 2) return sendJson(res, 200, [...apps.values()].map(appView));
      if (m === 'GET' && parts.length === 3) {
        const a = apps.get(parts[2]);
        if (!a) throw new HttpError(404, 'app not found');
        return sendJson(res, 200, appView(a));
      }
      if (m === 'POST' && parts.length === 2) {
        const body = await readJson(req);
        let list;
        try { list = registerApps(Array.isArray(body) ? body : (body.apps || body)); } catch (e) { throw new HttpError(400, e.message); }
        return sendJson(res, 200, list.map(appView));
      }
      if (m === 'DELETE' && parts.length === 3) {
        const a = apps.get(parts[2]);
        if (!a) throw new HttpError(404, 'app not found');
        for (const s of a.merchants) tokens.delete(s.app_auth_token);
        apps.delete(parts[2]);
        return sendJson(res, 200, { ok: true });
      }
    }
    if (route === 'reset' && m === 'POST') { reset(); return sendJson(res, 200, { ok: true }); }
    if (route === 'scan' && m === 'POST') return sendJson(res, 200, tradeView(controlScan(await readJson(req))));
    if (route === 'pay') {
      if (m === 'POST') return sendJson(res, 200, tradeView(controlPay(await readJson(req))));
      if (m === 'GET') {
        let t;
        let msg;
        try { t = controlPay(q); msg = 'Paid. The notification is on its way.'; } catch (e) {
          if (!(e instanceof HttpError) || e.code === 400 || e.code === 404) throw e;
          t = lookupTrade(q); msg = e.message;
        }
        return send(res, 200, 'text/html; charset=UTF-8', payPage(t, msg));
      }
    }
    if (route === 'fail' && m === 'POST') {
      const t = lookupTrade(await readJson(req));
      if (t.state !== 'WAIT_BUYER_PAY') throw new HttpError(409, `trade is ${t.state}, only WAIT_BUYER_PAY can be given up`);
      markClosed(t, 'buyer gave up');
      return sendJson(res, 200, tradeView(t));
    }
    if (route === 'notify' && m === 'POST') {
      const t = lookupTrade(await readJson(req));
      if (!t.paid_at) throw new HttpError(409, `trade is ${t.state}, never paid`);
      if (!t.notify_url) throw new HttpError(409, 'trade has no notify_url');
      startNotify(t, 'resend');
      return sendJson(res, 200, tradeView(t));
    }
    if (route === 'refund' && parts[2] === 'settle' && m === 'POST') {
      return sendJson(res, 200, { settled: settleRefunds(await readJson(req)) });
    }
    if (route === 'faults') {
      if (m === 'GET') return sendJson(res, 200, faults.map(faultView));
      if (m === 'POST') {
        const body = await readJson(req);
        const list = Array.isArray(body) ? body : (Array.isArray(body.faults) ? body.faults : [body]);
        let norm;
        try { norm = list.map(normaliseFault); } catch (e) { throw new HttpError(400, e.message); }
        faults.push(...norm);
        return sendJson(res, 200, norm.map(faultView));
      }
      if (m === 'DELETE') {
        if (parts.length === 3) {
          const before = faults.length;
          faults = faults.filter((f) => String(f.id) !== parts[2]);
          if (faults.length === before) throw new HttpError(404, 'fault not found');
        } else faults = [];
        return sendJson(res, 200, { ok: true, active: faults.map(faultView) });
      }
    }
    if (route === 'trades' && m === 'GET') {
      if (parts.length === 4) {
        const t = trades.get(tkey(parts[2], parts[3]));
        if (!t) throw new HttpError(404, 'trade not found');
        return sendJson(res, 200, tradeView(t));
      }
      if (parts.length === 2) {
        const limit = Math.max(1, Math.min(10000, Number(q.limit) || 100));
        return sendJson(res, 200, [...trades.values()].slice(-limit).reverse().map((t) => {
          refresh(t);
          return { seller_id: t.seller_id, out_trade_no: t.out_trade_no, trade_no: t.trade_no, kind: t.kind,
            state: t.state, total_amount: yuan(t.total), created_at: iso(t.created_at) };
        }));
      }
    }
    if (route === 'bill' && m === 'GET') {
      // GET /_sim/bill?seller_id=…&date=YYYY-MM-DD|YYYYMMDD[&fee_ppm=6000] → that GMT+8 day's trade bill zip
      const d = String(q.date || q.bill_date || '');
      const day = /^\d{8}$/.test(d) ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : d;
      if (!/^\d{4}-\d{2}-\d{2}$/.test(day) || Number.isNaN(parseGmt8(`${day} 00:00:00`))) throw new HttpError(400, 'date=YYYY-MM-DD is required');
      if (!present(q.seller_id)) throw new HttpError(400, 'seller_id is required');
      const feePpm = q.fee_ppm == null ? 6000 : Number(q.fee_ppm);
      if (!Number.isInteger(feePpm) || feePpm < 0 || feePpm > 1000000) throw new HttpError(400, 'fee_ppm must be 0..1000000');
      const bill = tradeBill(String(q.seller_id), day, feePpm);
      if (res.writableEnded || res.destroyed) return undefined;
      res.writeHead(200, { 'Content-Type': 'application/zip', 'Content-Length': bill.zip.length,
        'Content-Disposition': `attachment; filename="${bill.name}"` });
      return res.end(bill.zip);
    }
    if (route === 'requests' && m === 'GET') {
      const limit = Math.max(1, Math.min(REQUEST_LOG_SIZE, Number(q.limit) || 50));
      return sendJson(res, 200, requestLog.slice(-limit).reverse().map(requestView));
    }
    if (route === 'qr' && m === 'GET' && parts.length === 3) {
      const t = tradesByToken.get(parts[2]);
      if (!t) throw new HttpError(404, 'unknown token');
      refresh(t);
      return send(res, 200, 'text/html; charset=UTF-8', payPage(t));
    }
    throw new HttpError(404, `no such control endpoint: ${m} ${url.pathname}`);
  } catch (e) {
    if (e instanceof HttpError) return sendJson(res, e.code, { error: e.message });
    process.stderr.write(`alipay-sim: control error: ${e.stack}\n`);
    return sendJson(res, 500, { error: e.message });
  }
}

function indexPage() {
  const rows = [...trades.values()].slice(-50).reverse().map((t) => {
    refresh(t);
    return `<tr><td>${escHtml(t.seller_id)}</td><td>${t.token ? `<a href="/_sim/qr/${t.token}">${escHtml(t.out_trade_no)}</a>` : escHtml(t.out_trade_no)}</td>` +
      `<td>${t.kind}</td><td>${yuan(t.total)}</td><td>${t.state}</td>` +
      `<td><a href="/_sim/trades/${encodeURIComponent(t.seller_id)}/${encodeURIComponent(t.out_trade_no)}">json</a></td></tr>`;
  }).join('');
  return '<!doctype html><html><head><meta charset="utf-8"><title>alipay-sim</title></head><body>' +
    '<h2>alipay-sim</h2><p>Gateway: POST /gateway.do. Control API: see test/sim/README.md. ' +
    '<a href="/_sim/health">health</a> · <a href="/_sim/requests?limit=20">requests</a> · <a href="/_sim/faults">faults</a></p>' +
    `<table border="1" cellpadding="4"><tr><th>seller_id</th><th>out_trade_no</th><th>kind</th><th>¥</th><th>state</th><th></th></tr>${rows}</table>` +
    '</body></html>';
}

// ---------------------------------------------------------------------------------------------
// server

function handler(req, res) {
  let url;
  try { url = new URL(req.url, 'http://sim'); } catch (e) { return send(res, 400, 'text/plain', 'bad url\n'); }
  const p = url.pathname;
  if (p === '/_sim' || p.startsWith('/_sim/')) { handleControl(req, res, url); return; }
  if (p.endsWith('/gateway.do')) {
    handleGateway(req, res, url).catch((e) => {
      process.stderr.write(`alipay-sim: gateway error: ${e.stack}\n`);
      if (!res.headersSent) send(res, 500, 'text/plain', 'internal error\n');
    });
    return;
  }
  if (p === '/' && req.method === 'GET') return send(res, 200, 'text/html; charset=UTF-8', indexPage());
  req.resume();
  send(res, 404, 'text/plain', 'not found\n');
}

if (opts.config) loadConfig(opts.config);

let actualPort = opts.port;
lib.serve({ name: 'alipay', opts, handler, timers: notifyTimers, held: heldResponses, onListen: (p) => { actualPort = p; } });
