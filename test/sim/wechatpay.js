#!/usr/bin/env node
/*
 * wechatpay-sim — a simulator of the WeChat Pay API v3 (direct merchants) for paygate.
 *
 * Speaks the protocol of https://api.mch.weixin.qq.com/v3/… as described in
 * /work/shared/PROTOCOLS.md §D.3: JSON requests authenticated by
 * "Authorization: WECHATPAY2-SHA256-RSA2048 mchid=…,nonce_str=…,signature=…,timestamp=…,serial_no=…"
 * (SHA256withRSA over METHOD\nPATH?QUERY\nTIMESTAMP\nNONCE\nBODY\n with the merchant's key);
 * answers signed by the simulator's own platform keys (Wechatpay-Timestamp/-Nonce/-Signature/
 * -Serial over TIMESTAMP\nNONCE\nBODY\n); notifications whose resource is sealed with
 * AEAD_AES_256_GCM under the merchant's APIv3 key, then signed; asynchronous refunds; fault
 * injection as the Swiftpass simulator has it.  It is both the peer of the channel module's
 * integration tests and a sandbox.  Node 20, built-ins only.
 *
 *   node test/sim/wechatpay.js --port N [--host 127.0.0.1] [--config FILE] [--time-scale X]
 *        [--refund-delay S] [--close-min-age S] [--reverse-min-age S]
 *        [--sign-with certificate|public_key] [--tls-cert FILE --tls-key FILE]
 *
 * Prints exactly one line "wechatpay-sim listening on http://HOST:PORT" when ready.
 * Full documentation: test/sim/README.md (section "WeChat Pay API v3 simulator").
 *
 * The platform has two signing keys, generated at start unless the config gives them:
 *   - a platform certificate (self-signed X.509, 40-hex-digit serial) and its private key;
 *   - a WeChat Pay public key with the id PUB_KEY_ID_… and its private key.
 * Answers are signed with the key the request's Wechatpay-Serial header names, else with
 * settings.sign_with; notifications with settings.notify_sign_with ("alternate" switches on every
 * notification, like a platform in the middle of a key switch).
 *
 * codepay outcome by the END of payer.auth_code (18 digits starting 10..15, else PARAM_ERROR):
 *   ...0000  403 AUTHCODEEXPIRE (a definite decline); trade PAYERROR.
 *   ...8888  no answer at all (connection held); the trade is USERPAYING and behaves like 9999.
 *   ...7777  500 SYSTEM_ERROR, but the trade SUCCEEDED (a query finds it paid).
 *   ...9999  202 {"code":"USERPAYING"}; USERPAYING until POST /_sim/pay, POST /_sim/fail or a
 *            reverse.
 *   ...99K9  (K = 1..8) like 9999, and the K-th query finds it paid.
 *   ...99K8  (K = 1..8) like 9999, and the K-th query finds it PAYERROR.
 *   anything else: 200 with the transaction, trade_state SUCCESS.
 */
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const { URL } = require('url');
const lib = require('./lib');
const { randHex, randDigits, randAlnum, iso, sleep, has, escHtml, readBody, faultView, HttpError } = lib;

// ---------------------------------------------------------------------------------------------
// constants

const MAX_BODY = 64 * 1024;
const MAX_CONTROL_BODY = 1024 * 1024;
// PROTOCOLS.md §D.3: 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h after the first try
const NOTIFY_SCHEDULE_S = [0, 15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600];
const NOTIFY_TIMEOUT_MS = 5000;
const REQUEST_LOG_SIZE = 1000;
const AUTH_SCHEME = 'WECHATPAY2-SHA256-RSA2048';
const PAID_STATES = new Set(['SUCCESS', 'REFUND']);
const MAX_TOTAL = 100000000; // fen
const OPS = ['native', 'jsapi', 'codepay', 'query', 'close', 'reverse', 'refund', 'refund_query'];

// ---------------------------------------------------------------------------------------------
// command line


const { opts, usage } = lib.parseArgs(process.argv.slice(2), {
  name: 'wechatpay',
  usage: 'usage: node test/sim/wechatpay.js --port N [--host 127.0.0.1] [--config FILE]\n' +
    '       [--time-scale X] [--refund-delay S] [--close-min-age S] [--reverse-min-age S]\n' +
    '       [--sign-with certificate|public_key] [--tls-cert FILE --tls-key FILE]\n',
  options: { '--refund-delay': ['refundDelay', 'num'], '--close-min-age': ['closeMinAge', 'num'],
    '--reverse-min-age': ['reverseMinAge', 'num'], '--sign-with': ['signWith', 'str'] },
  tls: true,
  check: (o, usage) => {
    if (o.signWith !== null && !['certificate', 'public_key'].includes(o.signWith)) usage('--sign-with must be certificate or public_key');
  },
});

// ---------------------------------------------------------------------------------------------
// small helpers

const present = (v) => v !== undefined && v !== null && v !== '';
const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const nowS = () => Math.floor(Date.now() / 1000);

/** RFC 3339 in China time: 2024-01-01T12:00:00+08:00 */
function rfc3339(ms = Date.now()) {
  const t = new Date(ms + 8 * 3600e3);
  const p = (n) => String(n).padStart(2, '0');
  return `${t.getUTCFullYear()}-${p(t.getUTCMonth() + 1)}-${p(t.getUTCDate())}T` +
    `${p(t.getUTCHours())}:${p(t.getUTCMinutes())}:${p(t.getUTCSeconds())}+08:00`;
}
function ymd8(ms = Date.now()) { return rfc3339(ms).slice(0, 10).replace(/-/g, ''); }
function ymdhms8(ms = Date.now()) { return rfc3339(ms).slice(0, 19).replace(/[-T:]/g, ''); }
/** RFC 3339 with an offset → epoch ms, NaN when malformed */
function parseRfc3339(s) {
  if (typeof s !== 'string' || !/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)$/.test(s)) return NaN;
  return Date.parse(s);
}
const yuan = (fen) => (fen / 100).toFixed(2);

// ---------------------------------------------------------------------------------------------
// a minimal X.509 writer: the platform certificate (self-signed, sha256WithRSAEncryption)

function derLen(n) {
  if (n < 0x80) return Buffer.from([n]);
  const b = [];
  while (n > 0) { b.unshift(n & 0xff); n = Math.floor(n / 256); }
  return Buffer.from([0x80 | b.length, ...b]);
}
function der(tag, ...parts) {
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([tag]), derLen(body.length), body]);
}
const derSeq = (...p) => der(0x30, ...p);
const derSet = (...p) => der(0x31, ...p);
function derOid(str) {
  const a = str.split('.').map(Number);
  const out = [40 * a[0] + a[1]];
  for (const v of a.slice(2)) {
    const t = [v & 0x7f];
    let x = Math.floor(v / 128);
    while (x > 0) { t.unshift((x & 0x7f) | 0x80); x = Math.floor(x / 128); }
    out.push(...t);
  }
  return der(0x06, Buffer.from(out));
}
function derTime(ms) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  const body = `${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`;
  const y = d.getUTCFullYear();
  return y < 2050 ? der(0x17, Buffer.from(p(y % 100) + body)) : der(0x18, Buffer.from(String(y) + body));
}
function x509Name(cn) {
  const rdn = (o, v, tag) => derSet(derSeq(derOid(o), der(tag, Buffer.from(v, 'utf8'))));
  return derSeq(rdn('2.5.4.6', 'CN', 0x13), rdn('2.5.4.10', 'Tenpay.com', 0x0c),
    rdn('2.5.4.11', 'Tenpay.com CA Center', 0x0c), rdn('2.5.4.3', cn, 0x0c));
}
/** → {pem, serial (upper-case hex)} */
function makeCertificate(privateKey, cn = 'Tenpay.com Root CA') {
  const serial = crypto.randomBytes(20);
  serial[0] = (serial[0] & 0x7f) | 0x10;               // positive, 40 hex digits
  const alg = derSeq(derOid('1.2.840.113549.1.1.11'), Buffer.from([0x05, 0x00]));
  const spki = crypto.createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  const now = Date.now();
  const tbs = derSeq(der(0xa0, der(0x02, Buffer.from([2]))), der(0x02, serial), alg, x509Name(cn),
    derSeq(derTime(now - 86400e3), derTime(now + 5 * 365 * 86400e3)), x509Name(cn), spki);
  const sig = crypto.sign('sha256', tbs, privateKey);
  const cert = derSeq(tbs, alg, der(0x03, Buffer.concat([Buffer.from([0]), sig])));
  const b64 = cert.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return { pem: `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`, serial: serial.toString('hex').toUpperCase() };
}

// ---------------------------------------------------------------------------------------------
// signatures (PROTOCOLS.md §D.3)

const requestMessage = (method, pathQuery, ts, nonce, body) => `${method}\n${pathQuery}\n${ts}\n${nonce}\n${body}\n`;
const responseMessage = (ts, nonce, body) => `${ts}\n${nonce}\n${body}\n`;
const rsaSign = (msg, key) => crypto.sign('sha256', Buffer.from(msg, 'utf8'), key).toString('base64');
function rsaVerify(msg, sig, key) {
  try { return crypto.verify('sha256', Buffer.from(msg, 'utf8'), key, Buffer.from(String(sig), 'base64')); }
  catch (e) { return false; }
}
function gcmSeal(plain, key, nonce, aad) {
  const c = crypto.createCipheriv('aes-256-gcm', Buffer.from(key, 'utf8'), Buffer.from(nonce, 'utf8'));
  c.setAAD(Buffer.from(aad, 'utf8'));
  return Buffer.concat([c.update(plain, 'utf8'), c.final(), c.getAuthTag()]).toString('base64');
}

/** Authorization: WECHATPAY2-SHA256-RSA2048 k="v",… → {params} or {error} */
function parseAuthorization(h) {
  if (typeof h !== 'string' || !h.startsWith(AUTH_SCHEME + ' ')) return { error: `Authorization must start with ${AUTH_SCHEME}` };
  const rest = h.slice(AUTH_SCHEME.length + 1).trim();
  const params = {};
  const re = /\s*([a-z_]+)="([^"]*)"\s*(,|$)/y;
  let m;
  let pos = 0;
  while (pos < rest.length) {
    re.lastIndex = pos;
    m = re.exec(rest);
    if (!m) return { error: 'malformed Authorization parameters' };
    if (has(params, m[1])) return { error: `Authorization parameter ${m[1]} repeated` };
    params[m[1]] = m[2];
    pos = re.lastIndex;
  }
  for (const k of ['mchid', 'nonce_str', 'signature', 'timestamp', 'serial_no']) {
    if (!present(params[k])) return { error: `Authorization parameter ${k} is missing` };
  }
  return { params };
}

// ---------------------------------------------------------------------------------------------
// state


const settings = {
  time_scale: opts.timeScale != null ? opts.timeScale : 1,
  refund_delay_s: opts.refundDelay != null ? opts.refundDelay : 3,
  close_min_age_s: opts.closeMinAge != null ? opts.closeMinAge : 0,
  reverse_min_age_s: opts.reverseMinAge != null ? opts.reverseMinAge : 15,
  sign_with: opts.signWith || 'public_key',
  notify_sign_with: opts.signWith || 'public_key',
  notify_schedule_s: NOTIFY_SCHEDULE_S.slice(),
  notify_timeout_ms: NOTIFY_TIMEOUT_MS,
  clock_skew_s: 300,
  expire_orders: true,
};
const scaled = (seconds) => seconds * 1000 * settings.time_scale;

const platform = { certificate: null, public_key: null };
let notifyFlip = 0;

const merchants = new Map();
const orders = new Map();            // mch \0 out_trade_no -> trade
const ordersByTxn = new Map();
const ordersByToken = new Map();
const refunds = new Map();           // mch \0 out_refund_no -> {order, refund}
let requestLog = [];
let requestSeq = 0;
let faults = [];
let faultSeq = 0;
let generation = 0;
const notifyTimers = new Set();
const heldResponses = new Set();
const startedAt = Date.now();

const okey = (mch, otn) => `${mch}\u0000${otn}`;

function setPlatform(p = {}) {
  const c = p.certificate || {};
  const certKey = present(c.private_key) ? crypto.createPrivateKey(String(c.private_key))
    : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  let cert;
  if (present(c.certificate)) {
    const x = new crypto.X509Certificate(String(c.certificate));
    if (!x.publicKey.equals(crypto.createPublicKey(certKey))) throw new Error('platform.certificate does not match its private_key');
    cert = { pem: String(c.certificate), serial: x.serialNumber.toUpperCase() };
  } else cert = makeCertificate(certKey);
  platform.certificate = { serial: cert.serial, pem: cert.pem, privateKey: certKey };
  const k = p.public_key || {};
  const pubPriv = present(k.private_key) ? crypto.createPrivateKey(String(k.private_key))
    : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const id = present(k.id) ? String(k.id) : `PUB_KEY_ID_01${randDigits(42)}`;
  if (!/^PUB_KEY_ID_[0-9A-Za-z_]+$/.test(id)) throw new Error('platform.public_key.id must look like PUB_KEY_ID_…');
  platform.public_key = { id, privateKey: pubPriv, pem: crypto.createPublicKey(pubPriv).export({ type: 'spki', format: 'pem' }) };
}
function platformView() {
  return {
    certificate: { serial: platform.certificate.serial, pem: platform.certificate.pem },
    public_key: { id: platform.public_key.id, pem: platform.public_key.pem },
    sign_with: settings.sign_with,
    notify_sign_with: settings.notify_sign_with,
  };
}
/** 'certificate' | 'public_key' | a serial → {serial, key} */
function signerFor(which) {
  if (which === 'certificate' || which === platform.certificate.serial) return { serial: platform.certificate.serial, key: platform.certificate.privateKey };
  return { serial: platform.public_key.id, key: platform.public_key.privateKey };
}
function knownSerial(s) {
  if (!present(s)) return null;
  if (String(s).toUpperCase() === platform.certificate.serial) return platform.certificate.serial;
  if (s === platform.public_key.id) return s;
  return null;
}

function normaliseMerchant(m) {
  if (!isObj(m)) throw new Error('a merchant must be a JSON object');
  const mch_id = m.mch_id == null ? '' : String(m.mch_id).trim();
  if (!/^[0-9A-Za-z_-]{1,32}$/.test(mch_id)) throw new Error('merchant.mch_id is required ([0-9A-Za-z_-]{1,32})');
  const apiv3 = present(m.apiv3_key) ? String(m.apiv3_key) : null;
  if (!apiv3 || Buffer.byteLength(apiv3) !== 32) throw new Error(`merchant ${mch_id}: apiv3_key must be 32 bytes`);
  let pub = null;
  let serial = present(m.merchant_serial) ? String(m.merchant_serial).toUpperCase() : null;
  const pemIn = present(m.merchant_certificate) ? String(m.merchant_certificate) : (present(m.merchant_public_key) ? String(m.merchant_public_key) : null);
  if (!pemIn) throw new Error(`merchant ${mch_id}: merchant_public_key or merchant_certificate is required`);
  try {
    if (pemIn.includes('BEGIN CERTIFICATE')) {
      const x = new crypto.X509Certificate(pemIn);
      pub = x.publicKey;
      if (!serial) serial = x.serialNumber.toUpperCase();
    } else pub = crypto.createPublicKey(pemIn);
  } catch (e) { throw new Error(`merchant ${mch_id}: cannot read the merchant key (${e.message})`); }
  return {
    mch_id, apiv3_key: apiv3, pub, serial,
    pub_pem: pub.export({ type: 'spki', format: 'pem' }),
    appid: present(m.appid) ? String(m.appid) : 'wx' + crypto.createHash('md5').update(mch_id).digest('hex').slice(0, 16),
    extra_appids: Array.isArray(m.extra_appids) ? m.extra_appids.map(String) : [],
  };
}
function merchantView(mer) {
  return { mch_id: mer.mch_id, appid: mer.appid, extra_appids: mer.extra_appids, merchant_serial: mer.serial,
    merchant_public_key: mer.pub_pem, has_apiv3_key: true };
}
function registerMerchants(list) {
  const arr = Array.isArray(list) ? list : [list];
  const norm = arr.map(normaliseMerchant);
  for (const m of norm) merchants.set(m.mch_id, m);
  return norm;
}

function applySettings(s, { fromConfig } = {}) {
  if (!isObj(s)) throw new Error('settings must be an object');
  const next = Object.assign({}, settings);
  for (const [k, v] of Object.entries(s)) {
    switch (k) {
      case 'time_scale': if (!(typeof v === 'number' && v > 0)) throw new Error('time_scale must be > 0'); next[k] = v; break;
      case 'refund_delay_s': if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error('refund_delay_s must be a number (negative = only /_sim/refund/settle)'); next[k] = v; break;
      case 'close_min_age_s': case 'reverse_min_age_s': case 'clock_skew_s':
        if (!(typeof v === 'number' && v >= 0)) throw new Error(`${k} must be a number >= 0`); next[k] = v; break;
      case 'sign_with': if (!['certificate', 'public_key'].includes(v)) throw new Error('sign_with must be certificate or public_key'); next[k] = v; break;
      case 'notify_sign_with': if (!['certificate', 'public_key', 'alternate'].includes(v)) throw new Error('notify_sign_with must be certificate, public_key or alternate'); next[k] = v; break;
      case 'notify_schedule_s':
        if (!Array.isArray(v) || !v.length || !v.every((x) => typeof x === 'number' && x >= 0)) throw new Error('notify_schedule_s must be a non-empty array of seconds');
        next[k] = v.slice(); break;
      case 'notify_timeout_ms': if (!(typeof v === 'number' && v > 0)) throw new Error('notify_timeout_ms must be > 0'); next[k] = v; break;
      case 'expire_orders': if (typeof v !== 'boolean') throw new Error('expire_orders must be true or false'); next[k] = v; break;
      default: throw new Error(`unknown setting ${k}`);
    }
  }
  if (fromConfig) {
    if (opts.timeScale != null) next.time_scale = opts.timeScale;
    if (opts.refundDelay != null) next.refund_delay_s = opts.refundDelay;
    if (opts.closeMinAge != null) next.close_min_age_s = opts.closeMinAge;
    if (opts.reverseMinAge != null) next.reverse_min_age_s = opts.reverseMinAge;
    if (opts.signWith != null) next.sign_with = opts.signWith;
  }
  Object.assign(settings, next);
}

function loadConfig(file) {
  let cfg;
  try { cfg = JSON.parse(fs.readFileSync(file, 'utf8')); } catch (e) { usage(`cannot read --config ${file}: ${e.message}`); }
  try {
    if (isObj(cfg) && cfg.platform) setPlatform(cfg.platform);
    registerMerchants(Array.isArray(cfg) ? cfg : (cfg.merchants || []));
    if (isObj(cfg) && cfg.settings) applySettings(cfg.settings, { fromConfig: true });
  } catch (e) { usage(`--config ${file}: ${e.message}`); }
}

// ---------------------------------------------------------------------------------------------
// faults

const REQUEST_FAULT_KEYS = ['latency_ms', 'timeout', 'http_status', 'garbled', 'bad_sign', 'stale_timestamp', 'unknown_serial', 'unsigned'];
const NOTIFY_FAULT_KEYS = ['drop_notify', 'duplicate_notify', 'notify_bad_sign', 'notify_stale_timestamp', 'notify_unknown_serial'];

function normaliseFault(f) {
  if (!isObj(f)) throw new Error('a fault must be a JSON object');
  const allowed = new Set([...REQUEST_FAULT_KEYS, ...NOTIFY_FAULT_KEYS, 'count', 'op', 'processed']);
  for (const k of Object.keys(f)) if (!allowed.has(k)) throw new Error(`unknown fault field ${k}`);
  const isReq = REQUEST_FAULT_KEYS.some((k) => f[k] !== undefined && f[k] !== false);
  const isNot = NOTIFY_FAULT_KEYS.some((k) => f[k] !== undefined && f[k] !== false);
  if (!isReq && !isNot) throw new Error(`a fault needs one of ${[...REQUEST_FAULT_KEYS, ...NOTIFY_FAULT_KEYS].join(', ')}`);
  if (isReq && isNot) throw new Error('request faults and notification faults go in separate entries');
  if (f.latency_ms !== undefined && !(Number.isFinite(f.latency_ms) && f.latency_ms >= 0)) throw new Error('latency_ms must be >= 0');
  if (f.http_status !== undefined && !(Number.isInteger(f.http_status) && f.http_status >= 100 && f.http_status <= 599)) throw new Error('http_status must be an HTTP status code');
  if (f.garbled !== undefined && typeof f.garbled !== 'boolean' && typeof f.garbled !== 'string') throw new Error('garbled must be true or a literal body');
  for (const k of ['timeout', 'bad_sign', 'stale_timestamp', 'unknown_serial', 'unsigned', 'processed', ...NOTIFY_FAULT_KEYS]) {
    if (f[k] !== undefined && typeof f[k] !== 'boolean') throw new Error(`${k} must be a boolean`);
  }
  if (f.count !== undefined && f.count !== null && !(Number.isInteger(f.count) && f.count > 0)) throw new Error('count must be a positive integer');
  let ops = null;
  if (f.op !== undefined && f.op !== null) {
    ops = Array.isArray(f.op) ? f.op.map(String) : [String(f.op)];
    for (const o of ops) if (!OPS.includes(o)) throw new Error(`op must be one of ${OPS.join(', ')}`);
  }
  const out = { id: ++faultSeq, kind: isReq ? 'request' : 'notify', created_at: Date.now(), ops,
    remaining: f.count == null ? null : f.count, used: 0 };
  for (const k of [...REQUEST_FAULT_KEYS, ...NOTIFY_FAULT_KEYS, 'processed']) if (f[k] !== undefined) out[k] = f[k];
  return out;
}
function takeFaults(kind, op) {
  const taken = [];
  for (const f of faults) {
    if (f.kind !== kind) continue;
    if (f.ops && !(op && f.ops.includes(op))) continue;
    if (f.remaining !== null) f.remaining--;
    f.used++;
    taken.push(f);
  }
  faults = faults.filter((f) => f.remaining === null || f.remaining > 0);
  return taken;
}
function combineRequestFaults(list) {
  const c = { ids: list.map((f) => f.id), latency_ms: 0, timeout: null, http_status: null, garbled: null,
    bad_sign: false, stale_timestamp: false, unknown_serial: false, unsigned: false };
  for (const f of list) {
    if (f.latency_ms) c.latency_ms += f.latency_ms;
    if (f.timeout && !c.timeout) c.timeout = { processed: f.processed !== false };
    if (f.http_status && !c.http_status) c.http_status = { code: f.http_status, processed: f.processed === true };
    if (f.garbled && !c.garbled) c.garbled = { body: typeof f.garbled === 'string' ? f.garbled : null };
    for (const k of ['bad_sign', 'stale_timestamp', 'unknown_serial', 'unsigned']) if (f[k]) c[k] = true;
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// trades

function newTransactionId() {
  for (;;) {
    const id = `42000${randDigits(5)}${ymd8()}${randDigits(10)}`;
    if (!ordersByTxn.has(id)) return id;
  }
}
function refresh(o, now = Date.now()) {
  if (settings.expire_orders && o.state === 'NOTPAY' && o.expire_at != null && now >= o.expire_at) {
    o.state = 'CLOSED'; o.closed_at = o.expire_at; o.close_reason = 'time_expire';
  }
  for (const r of o.refunds) {
    if (r.status === 'PROCESSING' && r.settle_at != null && now >= r.settle_at) settleRefund(o, r, 'SUCCESS', 'delay', r.settle_at);
  }
  if (o.state === 'SUCCESS' && o.refunds.some((r) => r.status === 'SUCCESS')) o.state = 'REFUND';
}
const refundedSum = (o) => o.refunds.filter((r) => r.status !== 'CLOSED' && r.status !== 'ABNORMAL').reduce((s, r) => s + r.refund, 0);

function markPaid(o, by) {
  const now = Date.now();
  o.state = 'SUCCESS';
  o.paid_at = now;
  o.paid_by = by || null;
  o.transaction_id = o.transaction_id || newTransactionId();
  ordersByTxn.set(o.transaction_id, o);
  if (!o.openid) o.openid = 'o' + crypto.randomBytes(21).toString('base64url').slice(0, 27);
  if (o.notify_url) startNotify(o, 'TRANSACTION.SUCCESS', transactionObject(o), 'transaction', o.notify_url);
}
function markFailed(o, reason) {
  o.state = 'PAYERROR';
  o.failed_at = Date.now();
  o.fail_reason = reason;
}

const STATE_DESC = { SUCCESS: '支付成功', REFUND: '转入退款', NOTPAY: '订单未支付', CLOSED: '订单已关闭',
  REVOKED: '已撤销', USERPAYING: '用户支付中，需要输入密码', PAYERROR: '支付失败' };

/** The transaction object of queries, codepay answers and payment notifications. */
function transactionObject(o) {
  refresh(o);
  const t = { appid: o.appid, mchid: o.mch_id, out_trade_no: o.out_trade_no, trade_type: o.trade_type,
    trade_state: o.state, trade_state_desc: o.state === 'PAYERROR' ? (o.fail_reason || STATE_DESC.PAYERROR) : STATE_DESC[o.state],
    attach: o.attach || '' };
  if (o.paid_at) {
    Object.assign(t, { transaction_id: o.transaction_id, bank_type: 'OTHERS', success_time: rfc3339(o.paid_at),
      payer: { openid: o.openid } });
    t.amount = { total: o.total, payer_total: o.total, currency: o.currency, payer_currency: 'CNY' };
  } else {
    t.amount = { total: o.total, currency: o.currency, payer_currency: 'CNY' };
  }
  t.promotion_detail = [];
  return t;
}
function refundObject(o, r) {
  const x = { refund_id: r.refund_id, out_refund_no: r.out_refund_no, transaction_id: o.transaction_id,
    out_trade_no: o.out_trade_no, channel: 'ORIGINAL', user_received_account: '支付用户零钱',
    create_time: rfc3339(r.created_at), status: r.status, funds_account: 'AVAILABLE',
    amount: { total: o.total, refund: r.refund, from: [], payer_total: o.total, payer_refund: r.refund,
      settlement_refund: r.refund, settlement_total: o.total, discount_refund: 0, currency: o.currency, refund_fee: 0 } };
  if (r.success_at) x.success_time = rfc3339(r.success_at);
  return x;
}
function settleRefund(o, r, status, by, at = Date.now()) {
  r.status = status;
  r.settled_by = by;
  r.settle_at = null;
  r.success_at = status === 'SUCCESS' ? at : null;
  if (status !== 'PROCESSING' && r.notify_url) {
    const ev = status === 'SUCCESS' ? 'REFUND.SUCCESS' : status === 'ABNORMAL' ? 'REFUND.ABNORMAL' : 'REFUND.CLOSED';
    startNotify(o, ev, { mchid: o.mch_id, out_trade_no: o.out_trade_no, transaction_id: o.transaction_id,
      out_refund_no: r.out_refund_no, refund_id: r.refund_id, refund_status: status,
      success_time: r.success_at ? rfc3339(r.success_at) : undefined, user_received_account: '支付用户零钱',
      amount: { total: o.total, refund: r.refund, payer_total: o.total, payer_refund: r.refund } }, 'refund', r.notify_url);
  }
}

function orderView(o) {
  refresh(o);
  return {
    mch_id: o.mch_id, out_trade_no: o.out_trade_no, kind: o.kind, trade_type: o.trade_type, appid: o.appid,
    state: o.state, total: o.total, currency: o.currency, description: o.description, attach: o.attach,
    notify_url: o.notify_url, client_ip: o.client_ip, auth_code: o.auth_code || null,
    codepay_rule: o.rule || null, queries: o.queries, transaction_id: o.transaction_id || null,
    openid: o.openid || null, token: o.token || null, code_url: o.code_url || null, prepay_id: o.prepay_id || null,
    created_at: iso(o.created_at), expire_at: iso(o.expire_at), paid_at: iso(o.paid_at),
    closed_at: iso(o.closed_at), close_reason: o.close_reason || null, revoked_at: iso(o.revoked_at),
    revoke_refunded: o.revoke_refunded || 0, failed_at: iso(o.failed_at), fail_reason: o.fail_reason || null,
    refunded: refundedSum(o),
    refunds: o.refunds.map((r) => ({ out_refund_no: r.out_refund_no, refund_id: r.refund_id, refund: r.refund,
      status: r.status, created_at: iso(r.created_at), settle_at: iso(r.settle_at), success_at: iso(r.success_at),
      settled_by: r.settled_by || null, notify_url: r.notify_url || null })),
    notifications: o.notify.map((s) => ({
      id: s.id, event_type: s.event_type, created_at: iso(s.created_at), state: s.state, dropped: s.dropped,
      duplicate: s.duplicate, url: s.url, next_attempt_at: iso(s.next_at), body: s.body, plaintext: s.plaintext,
      attempts: s.attempts.map((a) => Object.assign({}, a, { at: iso(a.at) })),
    })),
  };
}

// ---------------------------------------------------------------------------------------------
// notifications (PROTOCOLS.md §D.3)

let notifySeq = 0;

function startNotify(o, eventType, resource, originalType, url) {
  const mer = merchants.get(o.mch_id);
  if (!mer) return null;
  const nf = takeFaults('notify', null);
  const plaintext = JSON.stringify(resource);
  const nonce = randAlnum(12);
  const body = JSON.stringify({
    id: crypto.randomUUID(), create_time: rfc3339(), resource_type: 'encrypt-resource', event_type: eventType,
    summary: eventType === 'TRANSACTION.SUCCESS' ? '支付成功' : '退款状态变更',
    resource: { original_type: originalType, algorithm: 'AEAD_AES_256_GCM',
      ciphertext: gcmSeal(plaintext, mer.apiv3_key, nonce, originalType), associated_data: originalType, nonce },
  });
  let which = settings.notify_sign_with;
  if (which === 'alternate') which = (notifyFlip++ % 2) ? 'certificate' : 'public_key';
  const seq = {
    id: ++notifySeq, event_type: eventType, created_at: Date.now(), url, body, plaintext, signer: which,
    dropped: nf.some((f) => f.drop_notify), duplicate: nf.some((f) => f.duplicate_notify),
    bad_sign: nf.some((f) => f.notify_bad_sign), stale: nf.some((f) => f.notify_stale_timestamp),
    unknown_serial: nf.some((f) => f.notify_unknown_serial),
    fault_ids: nf.map((f) => f.id), attempts: [], state: 'pending', next_at: null, gen: generation,
  };
  o.notify.push(seq);
  if (seq.dropped) { seq.state = 'dropped'; return seq; }
  scheduleNotify(seq, 0);
  return seq;
}
const scheduleNotify = lib.notifier({
  schedule: () => settings.notify_schedule_s, scaled, timers: notifyTimers, generation: () => generation,
  post: (seq) => postNotify(seq.url, seq.body, notifyHeaders(seq)),
  judge: (seq, r) => ({ acknowledged: r.http_status === 200 || r.http_status === 204 }),
});
/** Each attempt is signed afresh: a day-later retry must still pass the 5-minute check. */
function notifyHeaders(seq) {
  const s = signerFor(seq.signer);
  const ts = String(nowS() - (seq.stale ? 600 : 0));
  const nonce = randHex(32).toUpperCase();
  const sig = rsaSign(responseMessage(ts, nonce, seq.bad_sign ? seq.body + ' ' : seq.body), s.key);
  return {
    'Content-Type': 'application/json', 'User-Agent': 'Mozilla/4.0', 'Wechatpay-Nonce': nonce,
    'Wechatpay-Timestamp': ts, 'Wechatpay-Signature': sig, 'Wechatpay-Signature-Type': AUTH_SCHEME,
    'Wechatpay-Serial': seq.unknown_serial ? 'PUB_KEY_ID_0000000000000000000000000000000000' : s.serial,
  };
}
function postNotify(target, body, headers) {
  return lib.postNotify(target, body, {
    headers: (n) => Object.assign({ 'Content-Length': n }, headers),
    timeoutMs: settings.notify_timeout_ms, urlName: 'notify_url', extra: { request_headers: headers },
  });
}

// ---------------------------------------------------------------------------------------------
// the API: answers and validation

class ApiError extends Error {
  constructor(status, code, message, detail) { super(message); this.status = status; this.code = code; this.detail = detail; }
}
const paramError = (field, issue, location = 'body') => new ApiError(400, 'PARAM_ERROR', `参数错误: ${field} ${issue}`, { field, location, issue });

function reqString(o, path, max, { required = true } = {}) {
  let v = o;
  for (const k of path.split('.')) v = isObj(v) ? v[k] : undefined;
  if (v === undefined || v === null) {
    if (required) throw paramError(`/${path.replace(/\./g, '/')}`, 'is required');
    return null;
  }
  if (typeof v !== 'string' || v === '') throw paramError(`/${path.replace(/\./g, '/')}`, 'must be a non-empty string');
  if ([...v].length > max) throw paramError(`/${path.replace(/\./g, '/')}`, `is longer than ${max}`);
  return v;
}
function reqInt(o, path, min, max) {
  let v = o;
  for (const k of path.split('.')) v = isObj(v) ? v[k] : undefined;
  if (!Number.isInteger(v)) throw paramError(`/${path.replace(/\./g, '/')}`, 'must be an integer');
  if (v < min || v > max) throw paramError(`/${path.replace(/\./g, '/')}`, `must be in [${min}, ${max}]`);
  return v;
}
function checkCurrency(o, path) {
  const c = reqString(o, path, 16, { required: false });
  if (c !== null && c !== 'CNY') throw paramError(`/${path.replace(/\./g, '/')}`, 'must be CNY');
  return c || 'CNY';
}
function checkMchAppid(ctx, body) {
  const mchid = reqString(body, 'mchid', 32);
  if (mchid !== ctx.merchant.mch_id) throw new ApiError(400, 'PARAM_ERROR', 'mchid与请求头中的商户号不一致', { field: '/mchid', location: 'body', issue: 'differs from the Authorization mchid' });
  if (has(body, 'appid') || ctx.needAppid) {
    const appid = reqString(body, 'appid', 32);
    if (appid !== ctx.merchant.appid && !ctx.merchant.extra_appids.includes(appid)) throw new ApiError(400, 'APPID_MCHID_NOT_MATCH', 'appid和mch_id不匹配');
    return appid;
  }
  return null;
}

function findOrderByOtn(ctx, otn) {
  const o = orders.get(okey(ctx.merchant.mch_id, otn)) || null;
  if (o) refresh(o);
  return o;
}
const orderNotExist = () => new ApiError(404, 'ORDER_NOT_EXIST', '订单不存在');

function apiCreateCtoB(ctx, kind) {
  const b = ctx.json;
  ctx.needAppid = true;
  const appid = checkMchAppid(ctx, b);
  const description = reqString(b, 'description', 127);
  const otn = reqString(b, 'out_trade_no', 32);
  if (!/^[0-9A-Za-z_\-*|]{6,32}$/.test(otn)) throw paramError('/out_trade_no', 'must be 6-32 of [0-9A-Za-z_-*|]');
  const notifyUrl = reqString(b, 'notify_url', 255);
  let nu;
  try { nu = new URL(notifyUrl); } catch (e) { throw paramError('/notify_url', 'is not a URL'); }
  if (!['http:', 'https:'].includes(nu.protocol) || nu.search) throw paramError('/notify_url', 'must be an http(s) URL without query parameters');
  const total = reqInt(b, 'amount.total', 1, MAX_TOTAL);
  const currency = checkCurrency(b, 'amount.currency');
  const attach = reqString(b, 'attach', 128, { required: false });
  let expireAt = null;
  if (has(b, 'time_expire')) {
    expireAt = parseRfc3339(b.time_expire);
    if (Number.isNaN(expireAt)) throw paramError('/time_expire', 'must be RFC 3339 (yyyy-MM-DDTHH:mm:ss+TIMEZONE)');
  }
  let openid = null;
  if (kind === 'jsapi') openid = reqString(b, 'payer.openid', 128);
  const clientIp = isObj(b.scene_info) ? reqString(b, 'scene_info.payer_client_ip', 45) : null;
  const ex = orders.get(okey(ctx.merchant.mch_id, otn));
  if (ex) {
    refresh(ex);
    if (PAID_STATES.has(ex.state)) throw new ApiError(400, 'ORDERPAID', '该订单已支付');
    if (ex.state === 'CLOSED') throw new ApiError(400, 'ORDER_CLOSED', '当前订单已关闭，请重新下单');
    if (ex.state === 'REVOKED') throw new ApiError(400, 'ORDERREVERSED', '当前订单已撤销');
    if (ex.kind === kind && ex.total === total && ex.description === description && ex.state === 'NOTPAY' &&
        (kind !== 'jsapi' || ex.openid === openid)) {
      ex.repeats = (ex.repeats || 0) + 1;          // the same order again: the same prepay
      return { status: 200, body: kind === 'native' ? { code_url: ex.code_url } : { prepay_id: ex.prepay_id } };
    }
    throw new ApiError(403, 'OUT_TRADE_NO_USED', '商户订单号重复');
  }
  const now = Date.now();
  const o = {
    kind, mch_id: ctx.merchant.mch_id, appid, out_trade_no: otn, trade_type: kind === 'native' ? 'NATIVE' : 'JSAPI',
    description, attach, total, currency, notify_url: notifyUrl, client_ip: clientIp, openid,
    expire_at: expireAt, state: 'NOTPAY', created_at: now, token: randAlnum(9), refunds: [], notify: [], queries: 0,
    prepay_id: kind === 'jsapi' ? `wx${ymdhms8(now)}${randHex(20)}` : null,
  };
  o.code_url = kind === 'native' ? `weixin://wxpay/bizpayurl?pr=${o.token}` : null;
  orders.set(okey(o.mch_id, otn), o);
  ordersByToken.set(o.token, o);
  return { status: 200, body: kind === 'native' ? { code_url: o.code_url } : { prepay_id: o.prepay_id } };
}

function codepayRule(code) {
  if (code.endsWith('0000')) return { rule: 'fail' };
  if (code.endsWith('8888')) return { rule: 'hold' };
  if (code.endsWith('7777')) return { rule: 'lost_success' };
  if (code.endsWith('9999')) return { rule: 'userpaying' };
  let m = /99([1-8])9$/.exec(code);
  if (m) return { rule: 'pay_after_queries', k: Number(m[1]) };
  m = /99([1-8])8$/.exec(code);
  if (m) return { rule: 'fail_after_queries', k: Number(m[1]) };
  return { rule: 'success' };
}
function codepayAnswer(o) {
  refresh(o);
  if (PAID_STATES.has(o.state)) {
    if (o.rule === 'lost_success' && !o.replayed) throw new ApiError(500, 'SYSTEM_ERROR', '系统超时，请稍后查询订单');
    return { status: 200, body: transactionObject(o) };
  }
  if (o.state === 'USERPAYING') return { status: 202, body: { code: 'USERPAYING', message: '用户支付中，需要输入密码' } };
  if (o.state === 'PAYERROR') {
    if (o.rule === 'fail') throw new ApiError(403, 'AUTHCODEEXPIRE', '二维码已过期，请用户在微信上刷新后再试');
    throw new ApiError(403, 'TRADE_ERROR', o.fail_reason || '交易错误');
  }
  if (o.state === 'REVOKED') throw new ApiError(400, 'ORDERREVERSED', '当前订单已撤销');
  throw new ApiError(400, 'INVALID_REQUEST', `订单状态异常 [${o.state}]`);
}

function apiCodepay(ctx) {
  const b = ctx.json;
  ctx.needAppid = true;
  const appid = checkMchAppid(ctx, b);
  const description = reqString(b, 'description', 127);
  const otn = reqString(b, 'out_trade_no', 32);
  if (!/^[0-9A-Za-z_\-*]{6,32}$/.test(otn)) throw paramError('/out_trade_no', 'must be 6-32 of [0-9A-Za-z_-*]');
  const code = reqString(b, 'payer.auth_code', 128);
  const total = reqInt(b, 'amount.total', 1, MAX_TOTAL);
  const currency = checkCurrency(b, 'amount.currency');
  if (!isObj(b.scene_info)) throw paramError('/scene_info', 'is required');
  const deviceIp = reqString(b, 'scene_info.device_ip', 45, { required: false });
  const attach = reqString(b, 'attach', 128, { required: false });
  if (!/^1[0-5][0-9]{16}$/.test(code)) throw new ApiError(400, 'PARAM_ERROR', '付款码无效，请重新扫码', { field: '/payer/auth_code', location: 'body', issue: 'not a WeChat pay code' });
  const ex = orders.get(okey(ctx.merchant.mch_id, otn));
  if (ex) {
    if (ex.kind === 'codepay' && ex.auth_code === code && ex.total === total) {
      ex.repeats = (ex.repeats || 0) + 1;
      ex.replayed = true;                            // a retry of the same payment: the trade as it is now
      return codepayAnswer(ex);
    }
    refresh(ex);
    if (PAID_STATES.has(ex.state)) throw new ApiError(400, 'ORDERPAID', '该订单已支付');
    throw new ApiError(403, 'OUT_TRADE_NO_USED', '商户订单号重复');
  }
  const r = codepayRule(code);
  const o = {
    kind: 'codepay', mch_id: ctx.merchant.mch_id, appid, out_trade_no: otn, trade_type: 'MICROPAY', description,
    attach, total, currency, notify_url: null, client_ip: deviceIp, auth_code: code, rule: r.rule, rule_k: r.k || null,
    state: 'USERPAYING', created_at: Date.now(), refunds: [], notify: [], queries: 0,
  };
  orders.set(okey(o.mch_id, otn), o);
  switch (r.rule) {
    case 'fail': markFailed(o, '二维码已过期'); break;
    case 'success': case 'lost_success': markPaid(o, 'auth_code'); break;
    case 'hold': return { hold: true };
    default: break;
  }
  return codepayAnswer(o);
}

function apiQuery(ctx, by, id) {
  const mchid = ctx.url.searchParams.get('mchid');
  if (!present(mchid)) throw paramError('mchid', 'is required', 'query');
  if (mchid !== ctx.merchant.mch_id) throw new ApiError(400, 'PARAM_ERROR', 'mchid与请求头中的商户号不一致', { field: 'mchid', location: 'query' });
  let o = null;
  if (by === 'out-trade-no') o = findOrderByOtn(ctx, id);
  else {
    o = ordersByTxn.get(id) || null;
    if (o && o.mch_id !== mchid) o = null;
  }
  if (!o) throw orderNotExist();
  o.queries++;
  if (o.state === 'USERPAYING' && o.rule_k && o.queries >= o.rule_k) {
    if (o.rule === 'pay_after_queries') markPaid(o, `query #${o.queries}`);
    else if (o.rule === 'fail_after_queries') markFailed(o, '用户取消支付');
  }
  return { status: 200, body: transactionObject(o) };
}

function apiClose(ctx, otn) {
  const b = ctx.json;
  checkMchAppid(ctx, b);
  const o = findOrderByOtn(ctx, otn);
  if (!o) throw orderNotExist();
  if (PAID_STATES.has(o.state)) throw new ApiError(400, 'ORDERPAID', '订单已支付，不能关单');
  if (o.state === 'CLOSED') return { status: 204 };             // closing twice is harmless
  if (o.state === 'REVOKED') throw new ApiError(400, 'ORDERREVERSED', '订单已撤销');
  if (o.kind === 'codepay') throw new ApiError(400, 'INVALID_REQUEST', '付款码订单请调用撤销订单接口');
  const minAge = scaled(settings.close_min_age_s);
  if (minAge > 0 && Date.now() - o.created_at < minAge) throw new ApiError(400, 'INVALID_REQUEST', '订单生成后5分钟内不能关单，请稍后再试');
  o.state = 'CLOSED';
  o.closed_at = Date.now();
  o.close_reason = 'close';
  return { status: 204 };
}

function apiReverse(ctx, otn) {
  const b = ctx.json;
  ctx.needAppid = true;
  checkMchAppid(ctx, b);
  const o = findOrderByOtn(ctx, otn);
  if (!o) throw orderNotExist();
  const ok = () => ({ status: 200, body: { appid: o.appid, mchid: o.mch_id, out_trade_no: o.out_trade_no } });
  if (o.kind !== 'codepay') throw new ApiError(400, 'INVALID_REQUEST', '非付款码订单不能撤销，请调用关单接口');
  if (o.state === 'REVOKED') return ok();                       // reversing twice is harmless
  const minAge = scaled(settings.reverse_min_age_s);
  if (minAge > 0 && Date.now() - o.created_at < minAge) throw new ApiError(400, 'INVALID_REQUEST', '订单创建15秒内不能撤销，请稍后再试');
  if (o.state === 'REFUND' || o.refunds.length) throw new ApiError(400, 'INVALID_REQUEST', '订单已发生退款，不能撤销');
  if (o.state === 'CLOSED') throw new ApiError(400, 'ORDER_CLOSED', '订单已关闭');
  if (o.state === 'SUCCESS') o.revoke_refunded = o.total;
  o.state = 'REVOKED';
  o.revoked_at = Date.now();
  return ok();
}

function apiRefund(ctx) {
  const b = ctx.json;
  const otn = reqString(b, 'out_trade_no', 32, { required: false });
  const tid = reqString(b, 'transaction_id', 32, { required: false });
  if (!otn && !tid) throw paramError('/out_trade_no', 'or /transaction_id is required');
  const orn = reqString(b, 'out_refund_no', 64);
  const reason = reqString(b, 'reason', 80, { required: false });
  const notifyUrl = reqString(b, 'notify_url', 256, { required: false });
  const refund = reqInt(b, 'amount.refund', 1, MAX_TOTAL);
  const total = reqInt(b, 'amount.total', 1, MAX_TOTAL);
  checkCurrency(b, 'amount.currency');
  let o = tid ? ordersByTxn.get(tid) : findOrderByOtn(ctx, otn);
  if (o && o.mch_id !== ctx.merchant.mch_id) o = null;
  if (!o) throw new ApiError(404, 'RESOURCE_NOT_EXISTS', '订单不存在');
  refresh(o);
  const prev = refunds.get(okey(o.mch_id, orn));
  if (prev) {
    if (prev.order !== o || prev.refund.refund !== refund) throw new ApiError(400, 'INVALID_REQUEST', '商户退款单号已被使用');
    return { status: 200, body: refundObject(o, prev.refund) };   // the same refund again
  }
  if (!PAID_STATES.has(o.state)) throw new ApiError(400, 'INVALID_REQUEST', o.state === 'REVOKED' ? '订单已撤销' : '订单未支付');
  if (total !== o.total) throw new ApiError(400, 'INVALID_REQUEST', `订单金额不一致 (order ${o.total})`);
  const remaining = o.total - refundedSum(o);
  if (refund > remaining) throw new ApiError(400, 'INVALID_REQUEST', `申请退款金额超过订单可退金额 (refundable ${remaining})`);
  const now = Date.now();
  const r = { out_refund_no: orn, refund_id: `50${randDigits(27)}`, refund, reason, notify_url: notifyUrl,
    status: 'PROCESSING', created_at: now, settle_at: settings.refund_delay_s >= 0 ? now + scaled(settings.refund_delay_s) : null };
  o.refunds.push(r);
  refunds.set(okey(o.mch_id, orn), { order: o, refund: r });
  return { status: 200, body: refundObject(o, r) };
}

function apiRefundQuery(ctx, orn) {
  const hit = refunds.get(okey(ctx.merchant.mch_id, orn));
  if (!hit) throw new ApiError(404, 'RESOURCE_NOT_EXISTS', '退款单不存在');
  refresh(hit.order);
  return { status: 200, body: refundObject(hit.order, hit.refund) };
}

/** method + path → {op, run(ctx)} or null */
function route(method, pathname) {
  let m;
  if (method === 'POST' && pathname === '/v3/pay/transactions/native') return { op: 'native', run: (c) => apiCreateCtoB(c, 'native') };
  if (method === 'POST' && pathname === '/v3/pay/transactions/jsapi') return { op: 'jsapi', run: (c) => apiCreateCtoB(c, 'jsapi') };
  if (method === 'POST' && pathname === '/v3/pay/transactions/codepay') return { op: 'codepay', run: apiCodepay };
  if (method === 'GET' && (m = /^\/v3\/pay\/transactions\/(out-trade-no|id)\/([^/]+)$/.exec(pathname))) {
    const id = decodeURIComponent(m[2]);
    return { op: 'query', id, run: (c) => apiQuery(c, m[1], id) };
  }
  if (method === 'POST' && (m = /^\/v3\/pay\/transactions\/out-trade-no\/([^/]+)\/(close|reverse)$/.exec(pathname))) {
    const id = decodeURIComponent(m[1]);
    return m[2] === 'close' ? { op: 'close', id, run: (c) => apiClose(c, id) } : { op: 'reverse', id, run: (c) => apiReverse(c, id) };
  }
  if (method === 'POST' && pathname === '/v3/refund/domestic/refunds') return { op: 'refund', run: apiRefund };
  if (method === 'GET' && (m = /^\/v3\/refund\/domestic\/refunds\/([^/]+)$/.exec(pathname))) {
    const id = decodeURIComponent(m[1]);
    return { op: 'refund_query', id, run: (c) => apiRefundQuery(c, id) };
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// request handling

function send(res, code, headers, body) {
  if (res.writableEnded || res.destroyed) return;
  const buf = Buffer.from(body || '', 'utf8');
  const h = Object.assign({}, headers);
  if (code !== 204 && code !== 304) h['Content-Length'] = buf.length;
  res.writeHead(code, h);
  res.end(code === 204 ? undefined : buf);
}
const httpErrorPage = (code) => lib.httpErrorPage(code, 'nginx');
function hold(res, rec) {
  rec.held = true;
  heldResponses.add(res);
  res.on('close', () => { heldResponses.delete(res); rec.held_closed_at = iso(Date.now()); });
}

/** Signs and sends a JSON answer ({status, body?}); fl: the request's faults. */
function answerSigned(req, res, rec, out, fl) {
  const text = out.status === 204 || out.body === undefined ? '' : JSON.stringify(out.body);
  const requested = knownSerial(req.headers['wechatpay-serial']);
  const s = signerFor(requested || settings.sign_with);
  const ts = String(nowS() - (fl.stale_timestamp ? 600 : 0));
  const nonce = randHex(32).toUpperCase();
  const sig = rsaSign(responseMessage(ts, nonce, fl.bad_sign ? text + ' ' : text), s.key);
  const headers = { Server: 'nginx', 'Request-ID': `08${randHex(40).toUpperCase()}-0` };
  if (text) headers['Content-Type'] = 'application/json; charset=utf-8';
  if (!fl.unsigned && !out.unsigned) {
    Object.assign(headers, { 'Wechatpay-Nonce': nonce, 'Wechatpay-Timestamp': ts, 'Wechatpay-Signature': sig,
      'Wechatpay-Serial': fl.unknown_serial ? '7132D72A03E93CDDF8C03BBD1F37EEDF2B2E0A7C' : s.serial });
  }
  rec.response = Object.assign(rec.response || {}, { http_status: out.status, body: text, signed_with: out.unsigned || fl.unsigned ? null : s.serial,
    code: out.body && out.body.code, trade_state: out.body && out.body.trade_state, status: out.body && out.body.status });
  rec.duration_ms = Date.now() - rec.at;
  if (fl.garbled) {
    rec.response.garbled = true;
    return send(res, 200, headers, fl.garbled.body != null ? fl.garbled.body : text.slice(0, Math.floor(text.length / 2)) + '\u0000#garbled');
  }
  send(res, out.status, headers, text);
}
const errorOut = (e) => ({ status: e.status, body: Object.assign({ code: e.code, message: e.message }, e.detail ? { detail: e.detail } : {}), unsigned: e.unsigned });

async function handleApi(req, res, url) {
  const rec = { id: ++requestSeq, at: Date.now(), method: req.method, path: req.url, remote: req.socket.remoteAddress,
    headers: { authorization: req.headers.authorization || null, accept: req.headers.accept || null,
      'content-type': req.headers['content-type'] || null, 'user-agent': req.headers['user-agent'] || null,
      'wechatpay-serial': req.headers['wechatpay-serial'] || null },
    op: null, mch_id: null, out_trade_no: null, sign_verified: null, sign_string: null, json: null, faults: [], held: false, response: null };
  logRequest(rec);
  const { buf, size, tooLarge } = await readBody(req, MAX_BODY);
  rec.bytes = size;
  const rt = route(req.method, url.pathname);
  rec.op = rt ? rt.op : null;
  const fl = combineRequestFaults(takeFaults('request', rec.op));
  rec.faults = fl.ids;
  if (fl.latency_ms) await sleep(fl.latency_ms);
  if (fl.timeout && !fl.timeout.processed) return hold(res, rec);
  if (fl.http_status && !fl.http_status.processed) {
    rec.response = { http_status: fl.http_status.code };
    return send(res, fl.http_status.code, { 'Content-Type': 'text/html' }, httpErrorPage(fl.http_status.code));
  }
  let out;
  try {
    out = processApi(req, url, rt, buf, tooLarge, rec);
  } catch (e) {
    if (e instanceof ApiError) out = errorOut(e);
    else {
      process.stderr.write(`wechatpay-sim: internal error: ${e.stack}\n`);
      out = { status: 500, body: { code: 'SYSTEM_ERROR', message: '系统错误' } };
    }
  }
  if (out.hold || fl.timeout) return hold(res, rec);
  if (fl.http_status) {
    rec.response = { http_status: fl.http_status.code, processed: true };
    return send(res, fl.http_status.code, { 'Content-Type': 'text/html' }, httpErrorPage(fl.http_status.code));
  }
  answerSigned(req, res, rec, out, fl);
}

/** Authenticates the request and runs the operation → {status, body} | {hold} (throws ApiError). */
function processApi(req, url, rt, buf, tooLarge, rec) {
  if (tooLarge) throw new ApiError(400, 'PARAM_ERROR', `请求体过大 (max ${MAX_BODY} bytes)`);
  const text = buf.toString('utf8');
  // 1. the Authorization header (a failure is answered unsigned: the platform cannot know the merchant)
  const auth = parseAuthorization(req.headers.authorization);
  const unauth = (msg) => Object.assign(new ApiError(401, 'SIGN_ERROR', msg), { unsigned: true });
  if (auth.error) throw unauth(`签名错误: ${auth.error}`);
  const p = auth.params;
  rec.mch_id = p.mchid;
  const merchant = merchants.get(p.mchid);
  if (!merchant) throw new ApiError(400, 'MCH_NOT_EXISTS', '商户号不存在');
  if (merchant.serial && String(p.serial_no).toUpperCase() !== merchant.serial) throw unauth(`签名错误: serial_no ${p.serial_no} is not the merchant certificate's serial`);
  if (!/^[0-9]{1,12}$/.test(p.timestamp) || Math.abs(nowS() - Number(p.timestamp)) > settings.clock_skew_s) throw unauth('签名错误: timestamp is more than 5 minutes off');
  const msg = requestMessage(req.method, req.url, p.timestamp, p.nonce_str, req.method === 'GET' ? '' : text);
  rec.sign_string = msg;
  rec.sign_verified = rsaVerify(msg, p.signature, merchant.pub);
  if (!rec.sign_verified) throw unauth('签名错误，请检查后再试');
  // 2. route and body
  if (!rt) throw new ApiError(404, 'NOT_FOUND', `no such API: ${req.method} ${url.pathname}`);
  rec.out_trade_no = rt.id && rt.op !== 'refund_query' ? rt.id : null;
  const ctx = { merchant, url, op: rt.op, json: null };
  if (req.method !== 'GET') {
    if (!/^application\/json/i.test(req.headers['content-type'] || '')) throw new ApiError(400, 'PARAM_ERROR', 'Content-Type must be application/json');
    try { ctx.json = JSON.parse(text); } catch (e) { throw new ApiError(400, 'PARAM_ERROR', `请求体不是合法的JSON: ${e.message}`); }
    if (!isObj(ctx.json)) throw new ApiError(400, 'PARAM_ERROR', '请求体必须是JSON对象');
    rec.json = ctx.json;
    if (!rec.out_trade_no && typeof ctx.json.out_trade_no === 'string') rec.out_trade_no = ctx.json.out_trade_no;
  }
  return rt.run(ctx);
}

// ---------------------------------------------------------------------------------------------
// control API (/_sim/…)

function logRequest(rec) {
  requestLog.push(rec);
  if (requestLog.length > REQUEST_LOG_SIZE) requestLog.splice(0, requestLog.length - REQUEST_LOG_SIZE);
}
function sendJson(res, code, obj) { send(res, code, { 'Content-Type': 'application/json; charset=UTF-8' }, JSON.stringify(obj, null, 2) + '\n'); }

const readJson = (req) => lib.readJson(req, MAX_CONTROL_BODY);
function lookupOrder(p) {
  let o = null;
  if (present(p.token)) o = ordersByToken.get(String(p.token)) || null;
  else if (present(p.transaction_id)) o = ordersByTxn.get(String(p.transaction_id)) || null;
  else {
    if (!present(p.mch_id) || !present(p.out_trade_no)) throw new HttpError(400, 'give mch_id and out_trade_no (or token, or transaction_id)');
    o = orders.get(okey(String(p.mch_id), String(p.out_trade_no))) || null;
  }
  if (!o) throw new HttpError(404, 'order not found');
  refresh(o);
  return o;
}
function controlPay(p) {
  const o = lookupOrder(p);
  if (!(o.state === 'NOTPAY' || o.state === 'USERPAYING')) throw new HttpError(409, `order is ${o.state}, only NOTPAY or USERPAYING can be paid`);
  markPaid(o, '/_sim/pay');
  return o;
}
function settleRefunds(p) {
  const status = p.status == null ? 'SUCCESS' : String(p.status);
  if (!['SUCCESS', 'CLOSED', 'ABNORMAL', 'PROCESSING'].includes(status)) throw new HttpError(400, 'status must be SUCCESS, CLOSED, ABNORMAL or PROCESSING');
  let targets = [];
  if (present(p.out_refund_no)) {
    if (!present(p.mch_id)) throw new HttpError(400, 'give mch_id with out_refund_no');
    const hit = refunds.get(okey(String(p.mch_id), String(p.out_refund_no)));
    if (!hit) throw new HttpError(404, 'refund not found');
    targets = [hit];
  } else if (present(p.out_trade_no) || present(p.transaction_id)) {
    const o = lookupOrder(p);
    targets = o.refunds.filter((r) => r.status === 'PROCESSING').map((r) => ({ order: o, refund: r }));
  } else {
    for (const o of orders.values()) for (const r of o.refunds) if (r.status === 'PROCESSING') targets.push({ order: o, refund: r });
  }
  for (const { order, refund } of targets) {
    refresh(order);
    settleRefund(order, refund, status, '/_sim/refund/settle');
    refresh(order);
  }
  return targets.map(({ order, refund }) => ({ mch_id: order.mch_id, out_trade_no: order.out_trade_no,
    out_refund_no: refund.out_refund_no, refund_id: refund.refund_id, status: refund.status }));
}
// ---------------------------------------------------------------------------------------------
// trade bill (GET /v3/bill/tradebill, bill_type=ALL, as the downloaded file; served as GET /_sim/bill)
//
// WeChat Pay's trade bill ("交易账单", docs: 下载账单 › 交易账单文件格式说明): UTF-8 text, CRLF; a title
// line; one line per payment (交易状态 SUCCESS, or REVOKED for a codepay reversed after payment) and
// one per refund (交易状态 REFUND; its 应结订单金额 and 订单金额 are 0.00, the refund is in 退款金额 /
// 申请退款金额), every value prefixed with "`" so spreadsheets keep long numbers as text; then the
// summary titles and one "`"-prefixed line of values.  Columns of the ALL type (27).  Amounts are
// yuan with two decimals (手续费 too: the simulator's rate, fee_ppm, default 6000 = 0.60 %, rounded
// half up; a refund line carries the fee returned, negative).  A payment is on the bill of the
// GMT+8 day it was paid, a refund on the day it succeeded (the simulator's choice: WeChat lists a
// refund on the day it was accepted, with its status of that moment).  Summary: 总交易单数 = all
// lines; 应结订单总金额, 退款总金额, 充值券退款总金额, 手续费总金额, 订单总金额, 申请退款总金额 = the sums of
// 应结订单金额, 退款金额, 充值券退款金额, 手续费, 订单金额, 申请退款金额 over all lines.

const WX_BILL_COLUMNS = ['交易时间', '公众账号ID', '商户号', '特约商户号', '设备号', '微信订单号', '商户订单号', '用户标识',
  '交易类型', '交易状态', '付款银行', '货币种类', '应结订单金额', '代金券金额', '微信退款单号', '商户退款单号', '退款金额',
  '充值券退款金额', '退款类型', '退款状态', '商品名称', '商户数据包', '手续费', '费率', '订单金额', '申请退款金额', '费率备注'];
const WX_BILL_SUMMARY = ['总交易单数', '应结订单总金额', '退款总金额', '充值券退款总金额', '手续费总金额', '订单总金额', '申请退款总金额'];

/** fen → "12.34" / "-0.05", exactly (no floating point) */
function billYuan(fen) {
  const a = Math.abs(fen);
  return `${fen < 0 ? '-' : ''}${Math.floor(a / 100)}.${String(a % 100).padStart(2, '0')}`;
}
function billTime8(ms) { return rfc3339(ms).slice(0, 19).replace('T', ' '); }
function tradeBill(mchId, day, feePpm) {
  const clean = (v) => String(v == null ? '' : v).replace(/[`,\r\n]/g, ' ');
  const feeOf = (fen) => Math.floor((fen * feePpm + 500000) / 1000000);
  const rate = `${(feePpm / 10000).toFixed(2)}%`;
  const rows = [];
  for (const o of orders.values()) {
    if (o.mch_id !== mchId) continue;
    refresh(o);
    const base = (at, state) => [billTime8(at), o.appid || '', o.mch_id, '0', '', o.transaction_id || '', o.out_trade_no,
      o.openid || '', o.trade_type || '', state, 'OTHERS', 'CNY'];
    if (o.paid_at && ymd8(o.paid_at) === day) {
      const state = o.state === 'REVOKED' ? 'REVOKED' : 'SUCCESS';
      const fee = state === 'SUCCESS' ? feeOf(o.total) : 0;
      const r = { at: o.paid_at, settle: o.total, refund: 0, ask: 0, fee, total: o.total };
      r.vals = [...base(o.paid_at, state), billYuan(o.total), '0.00', '', '', '0.00', '0.00', '', '', o.description || '',
        o.attach || '', billYuan(fee), rate, billYuan(o.total), '0.00', ''];
      rows.push(r);
    }
    for (const rf of o.refunds) {
      if (rf.status !== 'SUCCESS' || !rf.success_at || ymd8(rf.success_at) !== day) continue;
      const fee = -feeOf(rf.refund);
      const r = { at: rf.success_at, settle: 0, refund: rf.refund, ask: rf.refund, fee, total: 0 };
      r.vals = [...base(rf.success_at, 'REFUND'), '0.00', '0.00', rf.refund_id, rf.out_refund_no, billYuan(rf.refund), '0.00',
        'ORIGINAL', 'SUCCESS', o.description || '', o.attach || '', billYuan(fee), rate, '0.00', billYuan(rf.refund), ''];
      rows.push(r);
    }
  }
  rows.sort((a, b) => a.at - b.at);
  const sum = (k) => rows.reduce((t, r) => t + r[k], 0);
  const line = (vals) => vals.map((v) => '`' + clean(v)).join(',');
  return [WX_BILL_COLUMNS.join(','), ...rows.map((r) => line(r.vals)), WX_BILL_SUMMARY.join(','),
    line([rows.length, billYuan(sum('settle')), billYuan(sum('refund')), '0.00', billYuan(sum('fee')), billYuan(sum('total')),
      billYuan(sum('ask'))])].join('\r\n') + '\r\n';
}

function reset() {
  generation++;
  for (const t of notifyTimers) clearTimeout(t);
  notifyTimers.clear();
  for (const r of heldResponses) r.destroy();
  heldResponses.clear();
  orders.clear(); ordersByTxn.clear(); ordersByToken.clear(); refunds.clear();
  requestLog = [];
  faults = [];
}
function payPage(o, message) {
  const payable = o.state === 'NOTPAY' || o.state === 'USERPAYING';
  return `<!doctype html><html><head><meta charset="utf-8"><title>wechatpay-sim pay</title>` +
    `<style>body{font-family:sans-serif;max-width:28em;margin:2em auto}.amt{font-size:2em}button{font-size:1.3em;padding:.4em 2em}</style></head><body>` +
    `<h2>WeChat Pay simulator</h2>${message ? `<p><b>${escHtml(message)}</b></p>` : ''}` +
    `<p>merchant ${escHtml(o.mch_id)}<br>order ${escHtml(o.out_trade_no)}<br>${escHtml(o.description)}</p>` +
    `<p class="amt">¥ ${yuan(o.total)}</p><p>state: <b>${escHtml(o.state)}</b> (${escHtml(o.trade_type)})</p>` +
    (payable && o.token ? `<form method="get" action="/_sim/pay"><input type="hidden" name="token" value="${escHtml(o.token)}"><button type="submit">Pay</button></form>` : '') +
    `</body></html>`;
}

async function handleControl(req, res, url) {
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const routeName = parts[1] || '';
  const m = req.method;
  const q = Object.fromEntries(url.searchParams);
  try {
    if (routeName === 'health' && m === 'GET') {
      return sendJson(res, 200, { ok: true, name: 'wechatpay-sim', uptime_s: (Date.now() - startedAt) / 1000, merchants: merchants.size,
        orders: orders.size, requests: requestSeq, active_faults: faults.length, held_connections: heldResponses.size, settings });
    }
    if (routeName === 'settings') {
      if (m === 'GET') return sendJson(res, 200, settings);
      if (m === 'POST') {
        try { applySettings(await readJson(req)); } catch (e) { if (e instanceof HttpError) throw e; throw new HttpError(400, e.message); }
        return sendJson(res, 200, settings);
      }
    }
    if (routeName === 'platform' && m === 'GET') return sendJson(res, 200, platformView());
    if (routeName === 'merchants') {
      if (m === 'GET' && parts.length === 2) return sendJson(res, 200, [...merchants.values()].map(merchantView));
      if (m === 'GET' && parts.length === 3) {
        const mer = merchants.get(parts[2]);
        if (!mer) throw new HttpError(404, 'merchant not found');
        return sendJson(res, 200, merchantView(mer));
      }
      if (m === 'POST' && parts.length === 2) {
        const body = await readJson(req);
        let list;
        try { list = registerMerchants(Array.isArray(body) ? body : (body.merchants || body)); } catch (e) { throw new HttpError(400, e.message); }
        return sendJson(res, 200, list.map(merchantView));
      }
      if (m === 'DELETE' && parts.length === 3) {
        if (!merchants.delete(parts[2])) throw new HttpError(404, 'merchant not found');
        return sendJson(res, 200, { ok: true });
      }
    }
    if (routeName === 'reset' && m === 'POST') { reset(); return sendJson(res, 200, { ok: true }); }
    if (routeName === 'pay') {
      if (m === 'POST') return sendJson(res, 200, orderView(controlPay(await readJson(req))));
      if (m === 'GET') {
        let o;
        let msg;
        try { o = controlPay(q); msg = 'Paid. The notification is on its way.'; } catch (e) {
          if (!(e instanceof HttpError) || e.code !== 409) throw e;
          o = lookupOrder(q); msg = e.message;
        }
        return send(res, 200, { 'Content-Type': 'text/html; charset=UTF-8' }, payPage(o, msg));
      }
    }
    if (routeName === 'fail' && m === 'POST') {
      const p = await readJson(req);
      const o = lookupOrder(p);
      if (o.state !== 'USERPAYING') throw new HttpError(409, `order is ${o.state}, only USERPAYING can be failed`);
      markFailed(o, p.reason ? String(p.reason) : '用户取消支付');
      return sendJson(res, 200, orderView(o));
    }
    if (routeName === 'notify' && m === 'POST') {
      const o = lookupOrder(await readJson(req));
      if (!o.paid_at) throw new HttpError(409, `order is ${o.state}, never paid`);
      if (!o.notify_url) throw new HttpError(409, 'order has no notify_url');
      startNotify(o, 'TRANSACTION.SUCCESS', transactionObject(o), 'transaction', o.notify_url);
      return sendJson(res, 200, orderView(o));
    }
    if (routeName === 'refund' && parts[2] === 'settle' && m === 'POST') return sendJson(res, 200, { settled: settleRefunds(await readJson(req)) });
    if (routeName === 'faults') {
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
    if (routeName === 'bill' && m === 'GET') {
      // GET /_sim/bill?mchid=…&date=YYYY-MM-DD|YYYYMMDD[&fee_ppm=6000] → the trade bill (ALL) of that GMT+8 day
      const day = String(q.date || q.bill_date || '').replace(/-/g, '');
      if (!/^\d{8}$/.test(day)) throw new HttpError(400, 'date=YYYY-MM-DD is required');
      const mch = String(q.mchid || q.mch_id || '');
      if (!mch) throw new HttpError(400, 'mchid is required');
      if (!merchants.has(mch)) throw new HttpError(404, 'merchant not found');
      const feePpm = q.fee_ppm == null ? 6000 : Number(q.fee_ppm);
      if (!Number.isInteger(feePpm) || feePpm < 0 || feePpm > 1000000) throw new HttpError(400, 'fee_ppm must be 0..1000000');
      return send(res, 200, { 'Content-Type': 'text/plain; charset=UTF-8' }, tradeBill(mch, day, feePpm));
    }
    if (routeName === 'orders' && m === 'GET') {
      if (parts.length === 4) {
        const o = orders.get(okey(parts[2], parts[3]));
        if (!o) throw new HttpError(404, 'order not found');
        return sendJson(res, 200, orderView(o));
      }
      if (parts.length === 2) {
        const limit = Math.max(1, Math.min(10000, Number(q.limit) || 100));
        return sendJson(res, 200, [...orders.values()].slice(-limit).reverse().map((o) => { refresh(o); return { mch_id: o.mch_id,
          out_trade_no: o.out_trade_no, kind: o.kind, state: o.state, total: o.total, created_at: iso(o.created_at) }; }));
      }
    }
    if (routeName === 'requests' && m === 'GET') {
      const limit = Math.max(1, Math.min(REQUEST_LOG_SIZE, Number(q.limit) || 50));
      return sendJson(res, 200, requestLog.slice(-limit).reverse().map((r) => Object.assign({}, r, { at: iso(r.at) })));
    }
    if (routeName === 'qr' && m === 'GET' && parts.length === 3) {
      const o = ordersByToken.get(parts[2]);
      if (!o) throw new HttpError(404, 'unknown token');
      refresh(o);
      return send(res, 200, { 'Content-Type': 'text/html; charset=UTF-8' }, payPage(o));
    }
    throw new HttpError(404, `no such control endpoint: ${m} ${url.pathname}`);
  } catch (e) {
    if (e instanceof HttpError) return sendJson(res, e.code, { error: e.message });
    process.stderr.write(`wechatpay-sim: control error: ${e.stack}\n`);
    return sendJson(res, 500, { error: e.message });
  }
}

function indexPage() {
  const rows = [...orders.values()].slice(-50).reverse().map((o) => {
    refresh(o);
    return `<tr><td>${escHtml(o.mch_id)}</td><td>${o.token ? `<a href="/_sim/qr/${o.token}">${escHtml(o.out_trade_no)}</a>` : escHtml(o.out_trade_no)}</td>` +
      `<td>${escHtml(o.trade_type)}</td><td>${yuan(o.total)}</td><td>${o.state}</td>` +
      `<td><a href="/_sim/orders/${encodeURIComponent(o.mch_id)}/${encodeURIComponent(o.out_trade_no)}">json</a></td></tr>`;
  }).join('');
  return `<!doctype html><html><head><meta charset="utf-8"><title>wechatpay-sim</title></head><body><h2>wechatpay-sim</h2>` +
    `<p>API: /v3/…; control API: see test/sim/README.md. <a href="/_sim/health">health</a> · <a href="/_sim/platform">platform keys</a> · ` +
    `<a href="/_sim/requests?limit=20">requests</a> · <a href="/_sim/faults">faults</a></p>` +
    `<table border="1" cellpadding="4"><tr><th>mch_id</th><th>out_trade_no</th><th>type</th><th>¥</th><th>state</th><th></th></tr>${rows}</table></body></html>`;
}

// ---------------------------------------------------------------------------------------------
// server

function handler(req, res) {
  let url;
  try { url = new URL(req.url, 'http://sim'); } catch (e) { return send(res, 400, { 'Content-Type': 'text/plain' }, 'bad url\n'); }
  const p = url.pathname;
  if (p === '/_sim' || p.startsWith('/_sim/')) { handleControl(req, res, url); return; }
  if (p.startsWith('/v3/')) {
    handleApi(req, res, url).catch((e) => {
      process.stderr.write(`wechatpay-sim: api error: ${e.stack}\n`);
      if (!res.headersSent) send(res, 500, { 'Content-Type': 'application/json' }, '{"code":"SYSTEM_ERROR","message":"系统错误"}');
    });
    return;
  }
  if (p === '/' && req.method === 'GET') return send(res, 200, { 'Content-Type': 'text/html; charset=UTF-8' }, indexPage());
  req.resume();
  send(res, 404, { 'Content-Type': 'text/plain' }, 'not found\n');
}

try { setPlatform({}); } catch (e) { usage(e.message); }
if (opts.config) loadConfig(opts.config);

lib.serve({ name: 'wechatpay', opts, handler, timers: notifyTimers, held: heldResponses });
