#!/usr/bin/env node
/*
 * swiftpass-sim — a Swiftpass (威富通) acquirer simulator for paygate.
 *
 * Speaks the wire protocol of https://pay.swiftpass.cn/pay/gateway as described in
 * /work/shared/PROTOCOLS.md §A: POST of a flat UTF-8 XML map, MD5 / RSA_1_256 / RSA_1_1
 * signatures, status (communication) vs result_code (business) answers, signed notifications
 * with the 0/15/15/30/180/1800/1800/1800/1800/3600 s retry schedule.  It is both the peer of the
 * channel module's integration tests and the sandbox `make run` starts.  Node 20, built-ins only.
 *
 *   node test/sim/swiftpass.js --port N [--host 127.0.0.1] [--config FILE] [--time-scale X]
 *        [--close-min-age SECONDS] [--refund-delay SECONDS] [--tls-cert FILE --tls-key FILE]
 *
 * Prints exactly one line "swiftpass-sim listening on http://HOST:PORT" when ready (--port 0
 * picks a free port and prints it).  Full documentation: test/sim/README.md.
 *
 * unified.trade.micropay outcome is chosen by the END of auth_code (digits only, 16..24 long,
 * otherwise AUTH_CODE_INVALID; prefix 25..30 = Alipay, anything else = WeChat):
 *   ...0000  failure: status 0, result_code 1, need_query N, err_code AUTHCODEEXPIRE; trade PAYERROR.
 *   ...8888  the simulator never answers (connection held open); the trade exists as USERPAYING
 *            and behaves like ...9999 afterwards (query/reverse/POST /_sim/pay work).
 *   ...7777  lost outcome: result_code 1, err_code SYSTEMERROR, need_query Y, but the trade
 *            actually SUCCEEDED (a query shows SUCCESS).
 *   ...9999  user is entering the password: result_code 1, err_code USERPAYING, need_query Y;
 *            the trade stays USERPAYING until POST /_sim/pay (-> SUCCESS) or POST /_sim/fail
 *            (-> PAYERROR) or a reverse (-> REVOKED).
 *   ...99K9  (K = 1..8) like 9999, but the K-th unified.trade.query of the trade finds it paid
 *            (that query answers SUCCESS; e.g. ...9929 pays on the 2nd query).
 *   ...99K8  (K = 1..8) like 9999, but the K-th query finds it failed (PAYERROR; user cancelled).
 *   anything else: immediate success (result_code 0, pay_result 0, need_query N).
 * unified.micropay.reverse: NOTPAY / USERPAYING / PAYERROR trade -> REVOKED (never paid);
 * a paid trade that has no refund -> REVOKED with the money returned in full (no refund row);
 * a trade with refunds -> ORDERSTATUSERROR.
 */
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const { URL } = require('url');
const lib = require('./lib');
const { bytewise, randHex, randDigits, randAlnum, iso, sleep, has, escHtml, readBody, send, sendJson, faultView, HttpError } = lib;

// ---------------------------------------------------------------------------------------------
// constants

const MAX_BODY = 64 * 1024;                  // gateway request bodies above this are refused
const MAX_CONTROL_BODY = 1024 * 1024;        // control API JSON bodies (PEM keys)
const NOTIFY_SCHEDULE_S = [0, 15, 15, 30, 180, 1800, 1800, 1800, 1800, 3600];
const NOTIFY_TIMEOUT_MS = 5000;              // per attempt; NOT scaled by --time-scale
const REQUEST_LOG_SIZE = 1000;
const SIGN_TYPES = new Set(['MD5', 'RSA_1_256', 'RSA_1_1']);
const RSA_HASH = { RSA_1_256: 'sha256', RSA_1_1: 'sha1' };
const PAID_STATES = new Set(['SUCCESS', 'REFUND']);
const MAX_TOTAL_FEE = 5000000;

// field length limits (characters); message "<field>:Maximum length is [N]"
const MAX_LEN = {
  service: 64, version: 8, charset: 16, sign_type: 16, mch_id: 32, nonce_str: 32, sign: 1024,
  sign_agentno: 32, out_trade_no: 32, body: 127, attach: 127, mch_create_ip: 45, notify_url: 255,
  callback_url: 255, auth_code: 32, out_refund_no: 32, device_info: 32, op_user_id: 32,
  sub_openid: 128, sub_appid: 32, goods_tag: 32, product_id: 32, transaction_id: 32,
  refund_id: 32, buyer_id: 28, buyer_logon_id: 100, time_start: 14, time_expire: 14,
  refund_channel: 16, total_fee: 10, refund_fee: 10,
};

// ---------------------------------------------------------------------------------------------
// command line


const { opts, usage } = lib.parseArgs(process.argv.slice(2), {
  name: 'swiftpass',
  usage: 'usage: node test/sim/swiftpass.js --port N [--host 127.0.0.1] [--config FILE]\n' +
    '       [--time-scale X] [--close-min-age SECONDS] [--refund-delay SECONDS]\n' +
    '       [--tls-cert FILE --tls-key FILE]\n',
  options: { '--close-min-age': ['closeMinAge', 'num'], '--refund-delay': ['refundDelay', 'num'] },
  tls: true,
});

// ---------------------------------------------------------------------------------------------
// small helpers

const present = (v) => v !== undefined && v !== null && v !== '';

/** yyyyMMddHHmmss in GMT+8 */
function gmt8(ms = Date.now()) {
  const t = new Date(ms + 8 * 3600e3);
  const p = (n) => String(n).padStart(2, '0');
  return `${t.getUTCFullYear()}${p(t.getUTCMonth() + 1)}${p(t.getUTCDate())}` +
    `${p(t.getUTCHours())}${p(t.getUTCMinutes())}${p(t.getUTCSeconds())}`;
}
function parseGmt8(s) {
  const m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})$/.exec(s || '');
  if (!m) return NaN;
  const ms = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]) - 8 * 3600e3;
  return gmt8(ms) === s ? ms : NaN;
}
const yuan = (fen) => (fen / 100).toFixed(2);

// ---------------------------------------------------------------------------------------------
// flat XML: parse and serialise

class XmlError extends Error {}

const ENTITIES = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };
function decodeText(s) {
  if (s.indexOf('&') < 0) return s;
  return s.replace(/&([^;&]*);?/g, (whole, name) => {
    if (!whole.endsWith(';')) throw new XmlError('bare & in text');
    if (has(ENTITIES, name)) return ENTITIES[name];
    let cp = NaN;
    if (/^#[0-9]+$/.test(name)) cp = parseInt(name.slice(1), 10);
    else if (/^#x[0-9a-fA-F]+$/.test(name)) cp = parseInt(name.slice(2), 16);
    if (!(cp >= 0 && cp <= 0x10ffff) || (cp >= 0xd800 && cp <= 0xdfff)) throw new XmlError(`bad entity &${name};`);
    return String.fromCodePoint(cp);
  });
}

/**
 * Parses `<xml><k>v</k>...</xml>` (a single level, values as text and/or CDATA sections).
 * Accepts an XML declaration, comments and whitespace between elements, `<k/>` (empty value).
 * Rejects attributes on elements, nested elements, DOCTYPE, duplicate keys, mismatched tags and
 * anything after the root.  Returns a plain object {key: string}.
 */
function parseFlatXml(text) {
  let i = 0;
  const n = text.length;
  if (text.charCodeAt(0) === 0xfeff) i = 1;
  const skipWs = () => { while (i < n && (text[i] === ' ' || text[i] === '\t' || text[i] === '\r' || text[i] === '\n')) i++; };
  const skipMisc = () => {
    for (;;) {
      skipWs();
      if (text.startsWith('<!--', i)) {
        const e = text.indexOf('-->', i + 4);
        if (e < 0) throw new XmlError('unterminated comment');
        i = e + 3;
      } else return;
    }
  };
  const NAME = /[A-Za-z_][A-Za-z0-9_.\-]*/y;
  const readName = () => {
    NAME.lastIndex = i;
    const m = NAME.exec(text);
    if (!m) throw new XmlError(`element name expected at ${i}`);
    i += m[0].length;
    return m[0];
  };
  skipWs();
  if (text.startsWith('<?xml', i)) {
    const e = text.indexOf('?>', i);
    if (e < 0) throw new XmlError('unterminated XML declaration');
    i = e + 2;
  }
  skipMisc();
  if (text.startsWith('<!', i)) throw new XmlError('DOCTYPE/markup declarations are not allowed');
  if (text[i] !== '<') throw new XmlError('root element expected');
  i++;
  const root = readName();
  if (root !== 'xml') throw new XmlError(`root element must be <xml>, got <${root}>`);
  skipWs();
  const out = Object.create(null);
  if (text.startsWith('/>', i)) { i += 2; }
  else {
    if (text[i] !== '>') throw new XmlError('attributes are not allowed on <xml>');
    i++;
    for (;;) {
      skipMisc();
      if (i >= n) throw new XmlError('unterminated <xml>');
      if (text.startsWith('</', i)) {
        i += 2;
        if (readName() !== 'xml') throw new XmlError('mismatched closing tag for <xml>');
        skipWs();
        if (text[i] !== '>') throw new XmlError('> expected');
        i++;
        break;
      }
      if (text[i] !== '<') throw new XmlError(`unexpected text at ${i}`);
      i++;
      const key = readName();
      skipWs();
      let value = '';
      if (text.startsWith('/>', i)) { i += 2; }
      else {
        if (text[i] !== '>') throw new XmlError(`attributes are not allowed (<${key}>)`);
        i++;
        for (;;) {
          const lt = text.indexOf('<', i);
          if (lt < 0) throw new XmlError(`unterminated <${key}>`);
          if (lt > i) value += decodeText(text.slice(i, lt));
          i = lt;
          if (text.startsWith('<![CDATA[', i)) {
            const e = text.indexOf(']]>', i + 9);
            if (e < 0) throw new XmlError('unterminated CDATA section');
            value += text.slice(i + 9, e);
            i = e + 3;
          } else if (text.startsWith('<!--', i)) {
            const e = text.indexOf('-->', i + 4);
            if (e < 0) throw new XmlError('unterminated comment');
            i = e + 3;
          } else if (text.startsWith('</', i)) {
            i += 2;
            const close = readName();
            if (close !== key) throw new XmlError(`mismatched closing tag </${close}> for <${key}>`);
            skipWs();
            if (text[i] !== '>') throw new XmlError('> expected');
            i++;
            break;
          } else {
            throw new XmlError(`nested element inside <${key}> (the format is flat)`);
          }
        }
      }
      if (has(out, key)) throw new XmlError(`duplicate element <${key}>`);
      out[key] = value;
    }
  }
  skipMisc();
  if (i < n) throw new XmlError('content after the root element');
  return Object.assign({}, out);
}

function cdata(v) {
  return '<![CDATA[' + String(v).split(']]>').join(']]]]><![CDATA[>') + ']]>';
}
/** Serialises a flat map like the platform does: keys sorted, every value in CDATA. */
function toXml(params) {
  const keys = Object.keys(params).filter((k) => params[k] !== undefined && params[k] !== null).sort(bytewise);
  return '<xml>' + keys.map((k) => `<${k}>${cdata(params[k])}</${k}>`).join('\n') + '\n</xml>';
}

// ---------------------------------------------------------------------------------------------
// signatures (PROTOCOLS.md §A.5)

/** Every parameter except sign, null/empty dropped, sign_type kept, raw values, byte-wise sorted. */
function signString(params) {
  return Object.keys(params)
    .filter((k) => k !== 'sign' && present(params[k]))
    .sort(bytewise)
    .map((k) => `${k}=${params[k]}`)
    .join('&');
}
function md5Sign(str, key) {
  return crypto.createHash('md5').update(`${str}&key=${key}`, 'utf8').digest('hex').toUpperCase();
}
function rsaSign(str, privateKey, signType) {
  return crypto.sign(RSA_HASH[signType], Buffer.from(str, 'utf8'), privateKey).toString('base64');
}
function rsaVerify(str, sig, publicKey, signType) {
  try {
    return crypto.verify(RSA_HASH[signType], Buffer.from(str, 'utf8'), publicKey,
      Buffer.from(String(sig).replace(/\s+/g, ''), 'base64'));
  } catch (e) {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// state


const settings = {
  time_scale: opts.timeScale != null ? opts.timeScale : 1,
  close_min_age_s: opts.closeMinAge != null ? opts.closeMinAge : 300,
  refund_delay_s: opts.refundDelay != null ? opts.refundDelay : 3,
  notify_schedule_s: NOTIFY_SCHEDULE_S.slice(),
  notify_timeout_ms: NOTIFY_TIMEOUT_MS,
  expire_orders: true, // false: ignore time_expire (the gateway must close expired orders itself)
};
const scaled = (seconds) => seconds * 1000 * settings.time_scale;

const merchants = new Map();         // mch_id -> merchant
const orders = new Map();            // mch_id \0 out_trade_no -> order
const ordersByTxn = new Map();       // transaction_id -> order
const ordersByToken = new Map();     // token -> order
const refundsByKey = new Map();      // mch_id \0 out_refund_no -> {order, refund}, and 'id:' + refund_id
let requestLog = [];
let requestSeq = 0;
let faults = [];
let faultSeq = 0;
let generation = 0;                  // bumped by reset, invalidates in-flight notify attempts
const notifyTimers = new Set();
const heldResponses = new Set();
const startedAt = Date.now();

const okey = (mch, otn) => `${mch}\u0000${otn}`;

function normaliseMerchant(m) {
  if (!m || typeof m !== 'object' || Array.isArray(m)) throw new Error('a merchant must be a JSON object');
  const mch_id = m.mch_id == null ? '' : String(m.mch_id).trim();
  if (!mch_id) throw new Error('merchant.mch_id is required');
  const key = present(m.key) ? String(m.key) : null;
  const sign_type = m.sign_type ? String(m.sign_type) : (key ? 'MD5' : 'RSA_1_256');
  if (!SIGN_TYPES.has(sign_type)) throw new Error(`merchant ${mch_id}: sign_type must be MD5, RSA_1_256 or RSA_1_1`);
  let merchantPub = null;
  if (present(m.merchant_public_key)) {
    try { merchantPub = crypto.createPublicKey(String(m.merchant_public_key)); }
    catch (e) { throw new Error(`merchant ${mch_id}: merchant_public_key is not a PEM public key (${e.message})`); }
  }
  let platformPriv = null;
  if (present(m.platform_private_key)) {
    try { platformPriv = crypto.createPrivateKey(String(m.platform_private_key)); }
    catch (e) { throw new Error(`merchant ${mch_id}: platform_private_key is not a PEM private key (${e.message})`); }
  }
  if (sign_type === 'MD5' && !key) throw new Error(`merchant ${mch_id}: sign_type MD5 needs key`);
  if (sign_type !== 'MD5' && !merchantPub) throw new Error(`merchant ${mch_id}: sign_type ${sign_type} needs merchant_public_key`);
  if (m.services != null && !(Array.isArray(m.services) && m.services.every((s) => typeof s === 'string'))) {
    throw new Error(`merchant ${mch_id}: services must be an array of service names`);
  }
  const mer = {
    mch_id, sign_type, key, merchantPub, platformPriv,
    merchant_public_key_pem: merchantPub ? merchantPub.export({ type: 'spki', format: 'pem' }) : null,
    services: m.services || null,
    appid: present(m.appid) ? String(m.appid) : 'wx' + crypto.createHash('md5').update(mch_id).digest('hex').slice(0, 16),
    platform_key_generated: false,
  };
  if (sign_type !== 'MD5' && !platformPriv) ensurePlatformKey(mer);
  return mer;
}
function ensurePlatformKey(mer) {
  if (!mer.platformPriv) {
    mer.platformPriv = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    mer.platform_key_generated = true;
  }
  return mer.platformPriv;
}
function merchantView(mer) {
  return {
    mch_id: mer.mch_id,
    sign_type: mer.sign_type,
    has_key: !!mer.key,
    merchant_public_key: mer.merchant_public_key_pem,
    platform_public_key: mer.platformPriv ? crypto.createPublicKey(mer.platformPriv).export({ type: 'spki', format: 'pem' }) : null,
    platform_key_generated: mer.platform_key_generated,
    services: mer.services,
    appid: mer.appid,
  };
}
function registerMerchants(list) {
  const arr = Array.isArray(list) ? list : [list];
  const norm = arr.map(normaliseMerchant);      // validate all before registering any
  for (const m of norm) merchants.set(m.mch_id, m);
  return norm;
}

function loadConfig(file) {
  let cfg;
  try { cfg = JSON.parse(fs.readFileSync(file, 'utf8')); }
  catch (e) { usage(`cannot read --config ${file}: ${e.message}`); }
  const list = Array.isArray(cfg) ? cfg : (cfg.merchants || []);
  try { registerMerchants(list); } catch (e) { usage(`--config ${file}: ${e.message}`); }
  if (!Array.isArray(cfg) && cfg.settings) {
    try { applySettings(cfg.settings, { fromConfig: true }); } catch (e) { usage(`--config ${file}: ${e.message}`); }
  }
}

function applySettings(s, { fromConfig } = {}) {
  if (!s || typeof s !== 'object') throw new Error('settings must be an object');
  const next = Object.assign({}, settings);
  for (const [k, v] of Object.entries(s)) {
    switch (k) {
      case 'time_scale':
        if (!(typeof v === 'number' && v > 0)) throw new Error('time_scale must be a number > 0');
        next.time_scale = v; break;
      case 'close_min_age_s':
        if (!(typeof v === 'number' && v >= 0)) throw new Error('close_min_age_s must be a number >= 0 (0 disables the rule)');
        next.close_min_age_s = v; break;
      case 'refund_delay_s':
        if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error('refund_delay_s must be a number (negative = never settle by itself)');
        next.refund_delay_s = v; break;
      case 'notify_schedule_s':
        if (!Array.isArray(v) || !v.length || !v.every((x) => typeof x === 'number' && x >= 0)) throw new Error('notify_schedule_s must be a non-empty array of seconds');
        next.notify_schedule_s = v.slice(); break;
      case 'notify_timeout_ms':
        if (!(typeof v === 'number' && v > 0)) throw new Error('notify_timeout_ms must be > 0');
        next.notify_timeout_ms = v; break;
      case 'expire_orders':
        if (typeof v !== 'boolean') throw new Error('expire_orders must be true or false');
        next.expire_orders = v; break;
      default: throw new Error(`unknown setting ${k}`);
    }
  }
  // a command line value wins over the config file
  if (fromConfig) {
    if (opts.closeMinAge != null) next.close_min_age_s = opts.closeMinAge;
    if (opts.refundDelay != null) next.refund_delay_s = opts.refundDelay;
    if (opts.timeScale != null) next.time_scale = opts.timeScale;
  }
  Object.assign(settings, next);
}

// ---------------------------------------------------------------------------------------------
// faults

const REQUEST_FAULT_KEYS = ['latency_ms', 'timeout', 'http_status', 'bad_sign', 'garbled'];
const NOTIFY_FAULT_KEYS = ['duplicate_notify', 'drop_notify'];

function normaliseFault(f) {
  if (!f || typeof f !== 'object' || Array.isArray(f)) throw new Error('a fault must be a JSON object');
  const allowed = new Set([...REQUEST_FAULT_KEYS, ...NOTIFY_FAULT_KEYS, 'count', 'service', 'processed']);
  for (const k of Object.keys(f)) if (!allowed.has(k)) throw new Error(`unknown fault field ${k}`);
  const isReq = REQUEST_FAULT_KEYS.some((k) => f[k] !== undefined && f[k] !== false);
  const isNot = NOTIFY_FAULT_KEYS.some((k) => f[k] !== undefined && f[k] !== false);
  if (!isReq && !isNot) throw new Error(`a fault needs one of ${[...REQUEST_FAULT_KEYS, ...NOTIFY_FAULT_KEYS].join(', ')}`);
  if (isReq && isNot) throw new Error('request faults and notification faults go in separate entries');
  if (f.latency_ms !== undefined && !(Number.isFinite(f.latency_ms) && f.latency_ms >= 0)) throw new Error('latency_ms must be >= 0');
  if (f.http_status !== undefined && !(Number.isInteger(f.http_status) && f.http_status >= 100 && f.http_status <= 599)) throw new Error('http_status must be an HTTP status code');
  if (f.garbled !== undefined && typeof f.garbled !== 'boolean' && typeof f.garbled !== 'string') throw new Error('garbled must be true or a literal body string');
  for (const k of ['timeout', 'bad_sign', 'duplicate_notify', 'drop_notify', 'processed']) {
    if (f[k] !== undefined && typeof f[k] !== 'boolean') throw new Error(`${k} must be a boolean`);
  }
  if (f.count !== undefined && f.count !== null && !(Number.isInteger(f.count) && f.count > 0)) throw new Error('count must be a positive integer (omit it for "until cleared")');
  let services = null;
  if (f.service !== undefined && f.service !== null) {
    services = Array.isArray(f.service) ? f.service.map(String) : [String(f.service)];
  }
  const out = { id: ++faultSeq, kind: isReq ? 'request' : 'notify', created_at: Date.now(), services,
    remaining: f.count == null ? null : f.count, used: 0 };
  for (const k of [...REQUEST_FAULT_KEYS, ...NOTIFY_FAULT_KEYS, 'processed']) if (f[k] !== undefined) out[k] = f[k];
  return out;
}
/** Takes (consumes one use of) every active fault of `kind` matching `service`. */
function takeFaults(kind, service) {
  const taken = [];
  for (const f of faults) {
    if (f.kind !== kind) continue;
    if (f.services && !(service && f.services.includes(service))) continue;
    if (f.remaining !== null) f.remaining--;
    f.used++;
    taken.push(f);
  }
  faults = faults.filter((f) => f.remaining === null || f.remaining > 0);
  return taken;
}
function combineRequestFaults(list) {
  const c = { ids: list.map((f) => f.id), latency_ms: 0, timeout: null, http_status: null, garbled: null, bad_sign: false };
  for (const f of list) {
    if (f.latency_ms) c.latency_ms += f.latency_ms;
    if (f.timeout && !c.timeout) c.timeout = { processed: f.processed !== false };
    if (f.http_status && !c.http_status) c.http_status = { code: f.http_status, processed: f.processed === true };
    if (f.garbled && !c.garbled) c.garbled = { body: typeof f.garbled === 'string' ? f.garbled : null };
    if (f.bad_sign) c.bad_sign = true;
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
// orders

function newTransactionId(mch_id) {
  for (;;) {
    const id = `${mch_id}${gmt8().slice(0, 8)}${randDigits(10)}`.slice(-32);
    if (!ordersByTxn.has(id)) return id;
  }
}
function walletOf(tradeType) { return tradeType && tradeType.startsWith('pay.alipay.') ? 'alipay' : 'weixin'; }

function refresh(o, now = Date.now()) {
  if (settings.expire_orders && o.state === 'NOTPAY' && o.expire_at != null && now >= o.expire_at) {
    o.state = 'CLOSED'; o.closed_at = o.expire_at; o.close_reason = 'time_expire';
  }
  for (const r of o.refunds) {
    if (r.status === 'PROCESSING' && r.settle_at != null && now >= r.settle_at) {
      r.status = 'SUCCESS'; r.refund_time = r.settle_at; r.settled_by = 'delay';
    }
  }
  if (o.state === 'SUCCESS' && o.refunds.some((r) => r.status === 'SUCCESS')) o.state = 'REFUND';
}
function refundedSum(o) { return o.refunds.filter((r) => r.status !== 'FAIL').reduce((s, r) => s + r.refund_fee, 0); }

/** Marks a NOTPAY (c-to-b) or USERPAYING (micropay) trade paid and starts its notification. */
function markPaid(o, { wallet, by } = {}) {
  const now = Date.now();
  if (o.kind === 'ctob' && o.service === 'unified.trade.native' && !o.trade_type_fixed) {
    o.trade_type = (wallet === 'alipay') ? 'pay.alipay.native' : 'pay.weixin.native';
  }
  const w = walletOf(o.trade_type);
  o.state = 'SUCCESS';
  o.paid_at = now;
  o.paid_by = by || null;
  o.time_end = gmt8(now);
  o.cash_fee = o.total_fee;
  o.bank_type = w === 'alipay' ? 'ALIPAYACCOUNT' : 'CFT';
  if (!o.openid) o.openid = w === 'alipay' ? '2088' + randDigits(12) : 'o' + crypto.randomBytes(21).toString('base64url').slice(0, 27);
  o.out_transaction_id = w === 'alipay'
    ? `${gmt8(now).slice(0, 8)}2200${randDigits(16)}`
    : `42000${randDigits(5)}${gmt8(now).slice(0, 8)}${randDigits(10)}`;
  if (o.notify_url) startNotify(o, 'paid');
}
function markFailed(o, reason) {
  o.state = 'PAYERROR';
  o.failed_at = Date.now();
  o.fail_reason = reason;
}

function paidFields(o) {
  const f = {
    trade_type: o.trade_type, transaction_id: o.transaction_id, out_transaction_id: o.out_transaction_id,
    out_trade_no: o.out_trade_no, openid: o.openid, is_subscribe: 'N', total_fee: String(o.total_fee),
    cash_fee: String(o.cash_fee), fee_type: 'CNY', bank_type: o.bank_type, time_end: o.time_end,
    attach: o.attach, device_info: o.device_info,
  };
  if (o.sub_appid) f.sub_appid = o.sub_appid;
  if (o.sub_openid) f.sub_openid = o.sub_openid;
  return f;
}

function orderView(o) {
  refresh(o);
  return {
    mch_id: o.mch_id, out_trade_no: o.out_trade_no, service: o.service, kind: o.kind,
    trade_type: o.trade_type, state: o.state, total_fee: o.total_fee, body: o.body, attach: o.attach,
    notify_url: o.notify_url, mch_create_ip: o.mch_create_ip, auth_code: o.auth_code || null,
    micropay_rule: o.rule || null, queries: o.queries,
    transaction_id: o.transaction_id, out_transaction_id: o.out_transaction_id || null,
    openid: o.openid || null, time_end: o.time_end || null, token: o.token || null,
    code_url: o.code_url || null, created_at: iso(o.created_at), paid_at: iso(o.paid_at),
    closed_at: iso(o.closed_at), close_reason: o.close_reason || null,
    revoked_at: iso(o.revoked_at), revoke_refunded_fee: o.revoke_refunded_fee || 0,
    failed_at: iso(o.failed_at), fail_reason: o.fail_reason || null,
    refunded_fee: refundedSum(o),
    refunds: o.refunds.map((r) => ({
      out_refund_no: r.out_refund_no, refund_id: r.refund_id, refund_fee: r.refund_fee,
      refund_channel: r.refund_channel, status: r.status, created_at: iso(r.created_at),
      settle_at: iso(r.settle_at), refund_time: r.refund_time ? gmt8(r.refund_time) : null,
      settled_by: r.settled_by || null,
    })),
    notifications: o.notify.map((s) => ({
      id: s.id, reason: s.reason, sign_type: s.sign_type, created_at: iso(s.created_at),
      state: s.state, dropped: s.dropped, duplicate: s.duplicate, next_attempt_at: iso(s.next_at),
      body: s.body,
      attempts: s.attempts.map((a) => Object.assign({}, a, { at: iso(a.at) })),
    })),
  };
}

// ---------------------------------------------------------------------------------------------
// notifications (PROTOCOLS.md §A.6)

let notifySeq = 0;

function notifyParams(o, mer) {
  const p = Object.assign({
    version: '2.0', charset: 'UTF-8', status: '0', result_code: '0', pay_result: '0',
    mch_id: o.mch_id, nonce_str: randHex(32), sign_type: mer.sign_type,
  }, paidFields(o));
  return p;
}
function signParams(p, signer, signType) {
  const str = signString(p);
  if (signType === 'MD5') return md5Sign(str, signer.key);
  return rsaSign(str, ensurePlatformKey(signer), signType);
}

function startNotify(o, reason) {
  const mer = merchants.get(o.mch_id);
  if (!mer) return null;
  const nf = takeFaults('notify', o.service);
  const params = notifyParams(o, mer);
  params.sign = signParams(params, mer, mer.sign_type);
  const seq = {
    id: ++notifySeq, reason, created_at: Date.now(), sign_type: mer.sign_type, url: o.notify_url,
    body: toXml(params), dropped: nf.some((f) => f.drop_notify), duplicate: nf.some((f) => f.duplicate_notify),
    fault_ids: nf.map((f) => f.id), attempts: [], state: 'pending', next_at: null, gen: generation,
  };
  o.notify.push(seq);
  if (seq.dropped) { seq.state = 'dropped'; return seq; }
  scheduleNotify(seq, 0);
  return seq;
}
const scheduleNotify = lib.notifier({
  schedule: () => settings.notify_schedule_s, scaled, timers: notifyTimers, generation: () => generation,
  post: (seq) => postNotify(seq.url, seq.body),
  judge: (seq, r) => ({ acknowledged: r.body !== null && r.body.trim() === 'success' }),
});
function postNotify(target, body) {
  return lib.postNotify(target, body, {
    headers: (n) => ({ 'Content-Type': 'text/xml; charset=UTF-8', 'Content-Length': n, 'User-Agent': 'swiftpass-sim' }),
    timeoutMs: settings.notify_timeout_ms, urlName: 'notify_url',
  });
}

// ---------------------------------------------------------------------------------------------
// gateway: validation helpers

class CommError extends Error {}           // status != 0 answer (unsigned)

function requireFields(f, names) {
  for (const k of names) if (!present(f[k])) throw new CommError(`${k} is required`);
}
function checkLengths(f) {
  for (const [k, v] of Object.entries(f)) {
    if (has(MAX_LEN, k) && [...v].length > MAX_LEN[k]) throw new CommError(`${k}:Maximum length is [${MAX_LEN[k]}]`);
  }
}
function parseFee(f, k) {
  const v = f[k];
  if (!/^[0-9]+$/.test(v)) throw new CommError(`${k}:Invalid`);
  const n = Number(v);
  if (n < 1) throw new CommError(`${k}:Must be greater or equal to [1]`);
  if (n > MAX_TOTAL_FEE) throw new CommError(`${k}:Must be less or equal to [${MAX_TOTAL_FEE}]`);
  return n;
}
function checkUrl(f, k) {
  if (!present(f[k])) return;
  let u;
  try { u = new URL(f[k]); } catch (e) { throw new CommError(`${k}:Invalid`); }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new CommError(`${k}:Invalid`);
}
function checkTime(f, k) {
  if (present(f[k]) && Number.isNaN(parseGmt8(f[k]))) throw new CommError(`${k}:Invalid`);
}

// ---------------------------------------------------------------------------------------------
// gateway: services

function common(ctx, resultCode) {
  return { version: '2.0', charset: 'UTF-8', status: '0', result_code: resultCode, mch_id: ctx.f.mch_id,
    nonce_str: randHex(32), sign_type: ctx.signType };
}
function ok(ctx, extra) { return { kind: 'biz', params: Object.assign(common(ctx, '0'), extra || {}) }; }
function fail(ctx, err_code, err_msg, extra) {
  return { kind: 'biz', params: Object.assign(common(ctx, '1'), { err_code, err_msg }, extra || {}) };
}

function findOrder(ctx) {
  const f = ctx.f;
  let o = null;
  if (present(f.transaction_id)) {
    o = ordersByTxn.get(f.transaction_id) || null;
    if (o && o.mch_id !== f.mch_id) o = null;
  } else if (present(f.out_trade_no)) {
    o = orders.get(okey(f.mch_id, f.out_trade_no)) || null;
  }
  if (o) refresh(o);
  return o;
}
const orderNotExist = (ctx) => fail(ctx, 'ORDERNOTEXIST', 'Order not exists');

const CTOB = {
  'unified.trade.native': { trade_type: null },
  'pay.weixin.native': { trade_type: 'pay.weixin.native' },
  'pay.alipay.native': { trade_type: 'pay.alipay.native' },
  'pay.weixin.jspay': { trade_type: 'pay.weixin.jspay' },
  'pay.alipay.jspay': { trade_type: 'pay.alipay.jspay' },
};

function ctobPayload(ctx, o) {
  const base = ctx.base;
  const token = o.token;
  const page = `${base}/_sim/qr/${token}`;
  if (o.service === 'pay.weixin.jspay') {
    const appId = o.sub_appid || ctx.merchant.appid;
    const ts = String(Math.floor(o.created_at / 1000));
    const nonce = o.js_nonce;
    const pkg = `prepay_id=${o.prepay_id}`;
    const paySign = crypto.createHash('md5')
      .update(`appId=${appId}&nonceStr=${nonce}&package=${pkg}&signType=MD5&timeStamp=${ts}&key=swiftpass-sim-jsapi`)
      .digest('hex').toUpperCase();
    const info = { appId, timeStamp: ts, nonceStr: nonce, package: pkg, signType: 'MD5', paySign, status: '0' };
    if (o.callback_url) info.callback_url = o.callback_url;
    return { token_id: token, pay_info: JSON.stringify(info), pay_url: page };
  }
  if (o.service === 'pay.alipay.jspay') {
    return { pay_info: JSON.stringify({ tradeNO: o.alipay_trade_no, status: '0' }), pay_url: page };
  }
  // native QR
  return { code_url: page, code_img_url: `${base}/_sim/qrimg/${token}`, uuid: o.uuid, appid: ctx.merchant.appid };
}

function svcCreateCtoB(ctx) {
  const f = ctx.f;
  requireFields(f, ['out_trade_no', 'body', 'total_fee', 'mch_create_ip', 'notify_url']);
  const total = parseFee(f, 'total_fee');
  checkUrl(f, 'notify_url');
  checkUrl(f, 'callback_url');
  checkTime(f, 'time_start');
  checkTime(f, 'time_expire');
  if (ctx.service === 'pay.alipay.jspay' && !present(f.buyer_id) && !present(f.buyer_logon_id)) {
    throw new CommError('buyer_logon_id|buyer_id is required');
  }
  if (ctx.service === 'pay.weixin.jspay' && (f.is_raw === '1' || f.is_minipg === '1')) {
    requireFields(f, ['sub_openid']);
    if (f.is_minipg === '1') requireFields(f, ['sub_appid']);
  }
  const k = okey(f.mch_id, f.out_trade_no);
  const ex = orders.get(k);
  if (ex) {
    refresh(ex);
    if (PAID_STATES.has(ex.state)) return fail(ctx, 'ORDERPAID', 'Order paid');
    if (ex.state === 'CLOSED') return fail(ctx, 'ORDERCLOSED', '订单已关闭');
    if (ex.state === 'REVOKED') return fail(ctx, 'ORDERREVERSED', '订单已撤销');
    if (ex.kind === 'ctob' && ex.service === ctx.service && ex.total_fee === total && ex.state === 'NOTPAY') {
      ex.repeats = (ex.repeats || 0) + 1;      // same order sent again: same payment parameters
      return ok(ctx, ctobPayload(ctx, ex));
    }
    return fail(ctx, 'OUT_TRADE_NO_USED', '商户订单号重复');
  }
  const now = Date.now();
  const o = {
    kind: 'ctob', service: ctx.service, mch_id: f.mch_id, out_trade_no: f.out_trade_no,
    trade_type: CTOB[ctx.service].trade_type || 'pay.weixin.native', trade_type_fixed: !!CTOB[ctx.service].trade_type,
    body: f.body, attach: f.attach || null, total_fee: total, notify_url: f.notify_url,
    mch_create_ip: f.mch_create_ip, device_info: f.device_info || null, sub_appid: f.sub_appid || null,
    sub_openid: f.sub_openid || null, callback_url: f.callback_url || null,
    openid: ctx.service === 'pay.alipay.jspay' ? (f.buyer_id || null) : null,
    expire_at: present(f.time_expire) ? parseGmt8(f.time_expire) : null,
    state: 'NOTPAY', created_at: now, transaction_id: newTransactionId(f.mch_id), token: randHex(32),
    uuid: randHex(32), prepay_id: `wx${gmt8(now)}${randHex(20)}`, js_nonce: randAlnum(32),
    alipay_trade_no: `${gmt8(now).slice(0, 8)}2200${randDigits(16)}`,
    refunds: [], notify: [], queries: 0,
  };
  orders.set(k, o);
  ordersByTxn.set(o.transaction_id, o);
  ordersByToken.set(o.token, o);
  o.code_url = `${ctx.base}/_sim/qr/${o.token}`;
  return ok(ctx, ctobPayload(ctx, o));
}

/** auth_code suffix rules, see the header comment */
function micropayRule(code) {
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

function micropayAnswer(ctx, o) {
  if (o.state === 'SUCCESS' || o.state === 'REFUND') {
    if (o.rule === 'lost_success' && !o.replayed) {
      return fail(ctx, 'SYSTEMERROR', '系统超时', { need_query: 'Y' });
    }
    return ok(ctx, Object.assign({ need_query: 'N', pay_result: '0' }, paidFields(o)));
  }
  if (o.state === 'USERPAYING') return fail(ctx, 'USERPAYING', '需要用户输入支付密码', { need_query: 'Y' });
  if (o.state === 'PAYERROR') {
    if (o.rule === 'fail') {
      return fail(ctx, 'AUTHCODEEXPIRE', walletOf(o.trade_type) === 'alipay'
        ? '付款码已过期，请用户刷新后重新付款' : '二维码已过期，请用户在微信上刷新后再试', { need_query: 'N' });
    }
    return fail(ctx, 'PAYERROR', o.fail_reason || '支付失败', { need_query: 'N' });
  }
  if (o.state === 'REVOKED') return fail(ctx, 'ORDERREVERSED', '订单已撤销', { need_query: 'N' });
  return fail(ctx, 'ORDERSTATUSERROR', `订单状态异常 [${o.state}]`, { need_query: 'N' });
}

function svcMicropay(ctx) {
  const f = ctx.f;
  requireFields(f, ['out_trade_no', 'body', 'total_fee', 'mch_create_ip', 'auth_code']);
  const total = parseFee(f, 'total_fee');
  checkUrl(f, 'notify_url');
  checkTime(f, 'time_start');
  checkTime(f, 'time_expire');
  const code = f.auth_code;
  if (!/^[0-9]{16,24}$/.test(code)) return fail(ctx, 'AUTH_CODE_INVALID', '授权码检验错误', { need_query: 'N' });
  const k = okey(f.mch_id, f.out_trade_no);
  const ex = orders.get(k);
  if (ex) {
    refresh(ex);
    if (ex.kind === 'micropay' && ex.auth_code === code && ex.total_fee === total) {
      // a retry of the very same payment (e.g. after a timeout): answer with the trade as it is now
      ex.repeats = (ex.repeats || 0) + 1;
      ex.replayed = true;
      return micropayAnswer(ctx, ex);
    }
    if (PAID_STATES.has(ex.state)) return fail(ctx, 'ORDERPAID', 'Order paid', { need_query: 'N' });
    return fail(ctx, 'OUT_TRADE_NO_USED', '商户订单号重复', { need_query: 'N' });
  }
  const pfx = Number(code.slice(0, 2));
  const wallet = pfx >= 25 && pfx <= 30 ? 'alipay' : 'weixin';
  const r = micropayRule(code);
  const now = Date.now();
  const o = {
    kind: 'micropay', service: ctx.service, mch_id: f.mch_id, out_trade_no: f.out_trade_no,
    trade_type: `pay.${wallet}.micropay`, trade_type_fixed: true, body: f.body, attach: f.attach || null,
    total_fee: total, notify_url: f.notify_url || null, mch_create_ip: f.mch_create_ip,
    device_info: f.device_info || null, sub_appid: f.sub_appid || null, sub_openid: null,
    auth_code: code, rule: r.rule, rule_k: r.k || null, state: 'USERPAYING', created_at: now,
    transaction_id: newTransactionId(f.mch_id), refunds: [], notify: [], queries: 0,
  };
  orders.set(k, o);
  ordersByTxn.set(o.transaction_id, o);
  switch (r.rule) {
    case 'fail': markFailed(o, 'AUTHCODEEXPIRE'); break;
    case 'success': case 'lost_success': markPaid(o, { by: 'auth_code' }); break;
    case 'hold': return { kind: 'hold' };
    default: break;                 // stays USERPAYING
  }
  return micropayAnswer(ctx, o);
}

function svcQuery(ctx) {
  const f = ctx.f;
  if (!present(f.out_trade_no) && !present(f.transaction_id)) throw new CommError('out_trade_no|transaction_id is required');
  const o = findOrder(ctx);
  if (!o) return orderNotExist(ctx);
  o.queries++;
  if (o.state === 'USERPAYING' && o.rule_k && o.queries >= o.rule_k) {
    if (o.rule === 'pay_after_queries') markPaid(o, { by: `query #${o.queries}` });
    else if (o.rule === 'fail_after_queries') markFailed(o, 'user cancelled the payment');
  }
  refresh(o);
  const extra = { trade_state: o.state, trade_type: o.trade_type, out_trade_no: o.out_trade_no,
    total_fee: String(o.total_fee) };
  if (o.paid_at) Object.assign(extra, paidFields(o), { coupon_fee: '0' });
  if (walletOf(o.trade_type) === 'weixin') extra.appid = o.sub_appid || ctx.merchant.appid;
  if (o.state === 'PAYERROR') extra.trade_state_desc = o.fail_reason || '支付失败';
  if (o.state === 'USERPAYING') extra.trade_state_desc = '需要用户输入支付密码';
  return ok(ctx, extra);
}

function svcRefund(ctx) {
  const f = ctx.f;
  if (!present(f.out_trade_no) && !present(f.transaction_id)) throw new CommError('out_trade_no|transaction_id is required');
  requireFields(f, ['out_refund_no', 'total_fee', 'refund_fee']);
  const total = parseFee(f, 'total_fee');
  const fee = parseFee(f, 'refund_fee');
  const channel = present(f.refund_channel) ? f.refund_channel : 'ORIGINAL';
  if (channel !== 'ORIGINAL' && channel !== 'BALANCE') throw new CommError('refund_channel:Invalid');
  const o = findOrder(ctx);
  if (!o) return orderNotExist(ctx);
  const rk = okey(f.mch_id, f.out_refund_no);
  const prev = refundsByKey.get(rk);
  if (prev) {
    if (prev.order !== o || prev.refund.refund_fee !== fee) return fail(ctx, 'REFUNDINFOTEXIST', 'refundInfo is exists');
    const r = prev.refund;                   // idempotent repeat: same refund
    return ok(ctx, refundFields(o, r));
  }
  if (!PAID_STATES.has(o.state)) {
    const why = o.state === 'REVOKED' ? '订单已撤销' : `订单状态异常 [${o.state}]，不能退款`;
    return fail(ctx, o.state === 'REVOKED' ? 'ORDERREVERSED' : 'ORDERSTATUSERROR', why);
  }
  if (total !== o.total_fee) return fail(ctx, 'REFUND_FEE_INVALID', `total_fee与原订单金额不一致 (order ${o.total_fee})`);
  const remaining = o.total_fee - refundedSum(o);
  if (fee > remaining) return fail(ctx, 'REFUND_FEE_INVALID', `退款金额超过可退金额 (refundable ${remaining})`);
  const now = Date.now();
  const r = {
    out_refund_no: f.out_refund_no, refund_id: `${f.mch_id}${gmt8(now).slice(0, 8)}${randDigits(8)}`.slice(-32),
    refund_fee: fee, refund_channel: channel, status: 'PROCESSING', created_at: now,
    settle_at: settings.refund_delay_s >= 0 ? now + scaled(settings.refund_delay_s) : null,
    refund_time: null, op_user_id: f.op_user_id || f.mch_id,
  };
  o.refunds.push(r);
  refundsByKey.set(rk, { order: o, refund: r });
  refundsByKey.set('id:' + r.refund_id, { order: o, refund: r });
  return ok(ctx, refundFields(o, r));
}
function refundFields(o, r) {
  return { transaction_id: o.transaction_id, out_trade_no: o.out_trade_no, out_refund_no: r.out_refund_no,
    refund_id: r.refund_id, refund_channel: r.refund_channel, refund_fee: String(r.refund_fee),
    coupon_refund_fee: '0', trade_type: o.trade_type };
}

function svcRefundQuery(ctx) {
  const f = ctx.f;
  let o = null;
  let list = null;
  if (present(f.out_refund_no) || present(f.refund_id)) {
    const hit = present(f.refund_id) ? refundsByKey.get('id:' + f.refund_id) : refundsByKey.get(okey(f.mch_id, f.out_refund_no));
    if (!hit || hit.order.mch_id !== f.mch_id) return fail(ctx, 'REFUNDNOTEXIST', '退款单不存在');
    o = hit.order;
    list = [hit.refund];
  } else if (present(f.out_trade_no) || present(f.transaction_id)) {
    o = findOrder(ctx);
    if (!o) return orderNotExist(ctx);
    list = o.refunds;
  } else {
    throw new CommError('out_trade_no|transaction_id|out_refund_no|refund_id is required');
  }
  refresh(o);
  if (!list.length) return fail(ctx, 'REFUNDNOTEXIST', '退款单不存在');
  const extra = { out_trade_no: o.out_trade_no, transaction_id: o.transaction_id, trade_type: o.trade_type,
    refund_count: String(list.length) };
  list.forEach((r, n) => {
    extra[`out_refund_no_${n}`] = r.out_refund_no;
    extra[`refund_id_${n}`] = r.refund_id;
    extra[`refund_channel_${n}`] = r.refund_channel;
    extra[`refund_fee_${n}`] = String(r.refund_fee);
    extra[`coupon_refund_fee_${n}`] = '0';
    extra[`refund_status_${n}`] = r.status;
    if (r.refund_time) extra[`refund_time_${n}`] = gmt8(r.refund_time);
  });
  return ok(ctx, extra);
}

function svcClose(ctx) {
  const f = ctx.f;
  requireFields(f, ['out_trade_no']);
  const o = findOrder(ctx);
  if (!o) return orderNotExist(ctx);
  if (PAID_STATES.has(o.state)) return fail(ctx, 'ORDERPAID', 'Order paid');
  if (o.state === 'CLOSED') return ok(ctx);                       // closing twice is harmless
  if (o.state === 'REVOKED') return fail(ctx, 'ORDERREVERSED', '订单已撤销');
  if (o.kind !== 'ctob' || o.state !== 'NOTPAY') {
    return fail(ctx, 'ORDERSTATUSERROR', `订单状态异常 [${o.state}]，刷卡交易请调用撤销接口`);
  }
  const minAge = scaled(settings.close_min_age_s);
  if (minAge > 0 && Date.now() - o.created_at < minAge) {
    return fail(ctx, 'ORDERSTATUSERROR', `订单生成后${settings.close_min_age_s / 60}分钟内不能关单，请稍后再试`);
  }
  o.state = 'CLOSED';
  o.closed_at = Date.now();
  o.close_reason = 'unified.trade.close';
  return ok(ctx);
}

function svcReverse(ctx) {
  const f = ctx.f;
  requireFields(f, ['out_trade_no']);
  const o = findOrder(ctx);
  if (!o) return orderNotExist(ctx);
  if (o.state === 'REVOKED') return ok(ctx);                      // reversing twice is harmless
  if (o.state === 'REFUND' || o.refunds.length) return fail(ctx, 'ORDERSTATUSERROR', '订单已发生退款，不能撤销');
  if (o.state === 'CLOSED') return fail(ctx, 'ORDERSTATUSERROR', '订单已关闭，不能撤销');
  if (o.state === 'SUCCESS') o.revoke_refunded_fee = o.total_fee;
  o.state = 'REVOKED';
  o.revoked_at = Date.now();
  return ok(ctx);
}

const SERVICES = {
  'unified.trade.native': svcCreateCtoB,
  'pay.weixin.native': svcCreateCtoB,
  'pay.alipay.native': svcCreateCtoB,
  'pay.weixin.jspay': svcCreateCtoB,
  'pay.alipay.jspay': svcCreateCtoB,
  'unified.trade.micropay': svcMicropay,
  'unified.trade.query': svcQuery,
  'unified.trade.refund': svcRefund,
  'unified.trade.refundquery': svcRefundQuery,
  'unified.trade.close': svcClose,
  'unified.micropay.reverse': svcReverse,
};

// ---------------------------------------------------------------------------------------------
// gateway: request handling

function commXml(message, status = '400') {
  return toXml({ version: '2.0', charset: 'UTF-8', status, message });
}

/** Everything from parsed fields to an answer: {kind:'comm',message} | {kind:'biz',params} | {kind:'hold'} */
function processGateway(f, rec, base) {
  if (!present(f.service)) return { kind: 'comm', message: 'service is required' };
  if (!present(f.mch_id)) return { kind: 'comm', message: 'mch_id is required' };
  const merchant = merchants.get(f.mch_id);
  if (!merchant) return { kind: 'comm', message: `mch_id:Invalid (merchant ${f.mch_id} not exists)` };
  const signType = present(f.sign_type) ? f.sign_type : 'MD5';
  rec.sign_type = signType;
  if (!SIGN_TYPES.has(signType)) return { kind: 'comm', message: 'unsupported sign method' };
  let signer = merchant;
  if (present(f.sign_agentno)) {
    signer = merchants.get(f.sign_agentno);
    if (!signer) return { kind: 'comm', message: `sign_agentno:Invalid (agent ${f.sign_agentno} not exists)` };
  }
  if (!present(f.sign)) return { kind: 'comm', message: 'sign is required' };
  const str = signString(f);
  rec.sign_string = str;
  let verified;
  if (signType === 'MD5') {
    if (!signer.key) verified = false;
    else {
      const expected = md5Sign(str, signer.key);
      verified = expected === String(f.sign).toUpperCase();
      if (!verified) rec.expected_sign = expected;
    }
  } else {
    verified = !!signer.merchantPub && rsaVerify(str, f.sign, signer.merchantPub, signType);
  }
  rec.sign_verified = verified;
  if (!verified) return { kind: 'comm', message: 'Signature error' };

  const ctx = { f, merchant, signer, signType, base, service: f.service };
  try {
    if (!present(f.nonce_str)) throw new CommError('nonce_str is required');
    checkLengths(f);
    const svc = SERVICES[f.service];
    if (!svc) throw new CommError(`unsupported service [${f.service}]`);
    if (merchant.services && !merchant.services.includes(f.service)) {
      return fail(ctx, 'Auth valid fail', `商户未开通[${f.service}]支付类型`);
    }
    const out = svc(ctx);
    if (out.kind === 'biz') out.signer = signer;
    out.signType = signType;
    return out;
  } catch (e) {
    if (e instanceof CommError) return { kind: 'comm', message: e.message };
    throw e;
  }
}


function baseUrl(req) {
  const proto = opts.tlsCert ? 'https' : 'http';
  const host = req.headers.host || `${opts.host}:${actualPort}`;
  return `${proto}://${host}`;
}

function sendXml(res, xml, extraHeaders) { send(res, 200, 'text/xml; charset=UTF-8', xml, extraHeaders); }

function hold(req, res, rec) {
  rec.held = true;
  heldResponses.add(res);
  res.on('close', () => { heldResponses.delete(res); rec.held_closed_at = iso(Date.now()); });
}

const httpErrorPage = (code) => lib.httpErrorPage(code, 'nginx');

async function handleGateway(req, res, url) {
  const rec = { id: ++requestSeq, at: Date.now(), method: req.method, path: url.pathname,
    remote: req.socket.remoteAddress, bytes: 0, service: null, mch_id: null, out_trade_no: null,
    sign_type: null, sign_verified: null, fields: null, response: null, faults: [], held: false };
  logRequest(rec);
  const answer = (xml, meta) => {
    rec.response = Object.assign({ http_status: 200 }, meta);
    rec.duration_ms = Date.now() - rec.at;
    sendXml(res, xml);
  };
  if (req.method !== 'POST') {
    req.resume();
    return answer(commXml('Require POST method'), { status: '400', message: 'Require POST method' });
  }
  const declared = Number(req.headers['content-length']);
  if (declared > MAX_BODY) {
    const msg = `Request body too large (max ${MAX_BODY} bytes)`;
    rec.bytes = declared;
    rec.response = { http_status: 200, status: '400', message: msg };
    sendXml(res, commXml(msg), { Connection: 'close' });
    req.resume();
    return;
  }
  const { buf, size, tooLarge } = await readBody(req, MAX_BODY);
  rec.bytes = size;
  if (tooLarge) {
    const msg = `Request body too large (max ${MAX_BODY} bytes)`;
    return answer(commXml(msg), { status: '400', message: msg });
  }
  let fields = null;
  let parseError = null;
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(buf);
    fields = parseFlatXml(text);
  } catch (e) {
    parseError = e.message;
  }
  if (fields) {
    rec.fields = fields;
    rec.service = fields.service || null;
    rec.mch_id = fields.mch_id || null;
    rec.out_trade_no = fields.out_trade_no || null;
  } else {
    rec.parse_error = parseError;
  }

  // faults (matched on the service name; unparseable requests only match unfiltered faults)
  const fl = combineRequestFaults(takeFaults('request', rec.service));
  rec.faults = fl.ids;
  if (fl.latency_ms) await sleep(fl.latency_ms);
  if (fl.timeout && !fl.timeout.processed) return hold(req, res, rec);
  if (fl.http_status && !fl.http_status.processed) {
    rec.response = { http_status: fl.http_status.code };
    return send(res, fl.http_status.code, 'text/html', httpErrorPage(fl.http_status.code));
  }

  let out;
  if (!fields) {
    out = { kind: 'comm', message: 'Parse xml error,please use UTF-8 encoded' };
  } else {
    try {
      out = processGateway(fields, rec, baseUrl(req));
    } catch (e) {
      process.stderr.write(`swiftpass-sim: internal error: ${e.stack}\n`);
      out = { kind: 'comm', message: 'Internal error', status: '500' };
    }
  }
  if (out.kind === 'hold' || fl.timeout) return hold(req, res, rec);

  let xml;
  const meta = {};
  if (out.kind === 'comm') {
    xml = commXml(out.message, out.status || '400');
    Object.assign(meta, { status: out.status || '400', message: out.message });
  } else {
    const p = out.params;
    p.sign = signParams(p, out.signer, out.signType);
    if (fl.bad_sign) {
      // a well-formed signature over different content
      p.sign = signParams(Object.assign({}, p, { nonce_str: p.nonce_str + 'x' }), out.signer, out.signType);
      meta.bad_sign = true;
    }
    xml = toXml(p);
    Object.assign(meta, { status: p.status, result_code: p.result_code, err_code: p.err_code, err_msg: p.err_msg,
      trade_state: p.trade_state });
  }
  if (fl.http_status) {
    rec.response = Object.assign(meta, { http_status: fl.http_status.code, processed: true });
    return send(res, fl.http_status.code, 'text/html', httpErrorPage(fl.http_status.code));
  }
  if (fl.garbled) {
    const body = fl.garbled.body != null ? fl.garbled.body : xml.slice(0, Math.floor(xml.length / 2)) + '\u0000\ufffd#garbled';
    rec.response = Object.assign(meta, { http_status: 200, garbled: true });
    return send(res, 200, 'text/xml; charset=UTF-8', body);
  }
  answer(xml, meta);
}

// ---------------------------------------------------------------------------------------------
// control API (/_sim/...)


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
  if (p.wallet != null && p.wallet !== 'weixin' && p.wallet !== 'alipay') throw new HttpError(400, 'wallet must be weixin or alipay');
  if (!(o.state === 'NOTPAY' || o.state === 'USERPAYING')) throw new HttpError(409, `order is ${o.state}, only NOTPAY or USERPAYING can be paid`);
  markPaid(o, { wallet: p.wallet, by: '/_sim/pay' });
  return o;
}

function payPage(o, message) {
  const payable = o.state === 'NOTPAY' || o.state === 'USERPAYING';
  const walletSel = (o.service === 'unified.trade.native')
    ? '<p><label>wallet <select name="wallet"><option value="weixin">WeChat</option><option value="alipay">Alipay</option></select></label></p>'
    : '';
  return `<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">` +
    `<title>swiftpass-sim pay</title><style>body{font-family:sans-serif;max-width:28em;margin:2em auto}` +
    `.amt{font-size:2em}button{font-size:1.3em;padding:.4em 2em}</style></head><body>` +
    `<h2>Swiftpass simulator</h2>${message ? `<p><b>${escHtml(message)}</b></p>` : ''}` +
    `<p>merchant ${escHtml(o.mch_id)}<br>order ${escHtml(o.out_trade_no)}<br>${escHtml(o.body)}</p>` +
    `<p class="amt">¥ ${yuan(o.total_fee)}</p><p>state: <b>${escHtml(o.state)}</b> (${escHtml(o.trade_type)})</p>` +
    (payable && o.token ? `<form method="get" action="/_sim/pay"><input type="hidden" name="token" value="${escHtml(o.token)}">` +
      `${walletSel}<button type="submit">Pay</button></form>` : '') +
    `</body></html>`;
}
function qrSvg(text) {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="260" height="260" viewBox="0 0 260 260">` +
    `<rect width="260" height="260" fill="#fff" stroke="#000" stroke-width="8"/>` +
    `<text x="130" y="110" font-size="18" text-anchor="middle" font-family="sans-serif">swiftpass-sim QR</text>` +
    `<text x="130" y="140" font-size="9" text-anchor="middle" font-family="monospace">${escHtml(text)}</text></svg>`;
}

function settleRefunds(p) {
  const status = p.status == null ? 'SUCCESS' : String(p.status);
  if (!['SUCCESS', 'FAIL', 'CHANGE', 'NOTSURE', 'PROCESSING'].includes(status)) throw new HttpError(400, 'status must be SUCCESS, FAIL, CHANGE, NOTSURE or PROCESSING');
  let targets = [];
  if (present(p.refund_id)) {
    const hit = refundsByKey.get('id:' + p.refund_id);
    if (!hit) throw new HttpError(404, 'refund not found');
    targets = [hit];
  } else if (present(p.out_refund_no)) {
    if (!present(p.mch_id)) throw new HttpError(400, 'give mch_id with out_refund_no');
    const hit = refundsByKey.get(okey(String(p.mch_id), String(p.out_refund_no)));
    if (!hit) throw new HttpError(404, 'refund not found');
    targets = [hit];
  } else if (present(p.out_trade_no) || present(p.token) || present(p.transaction_id)) {
    const o = lookupOrder(p);
    targets = o.refunds.filter((r) => r.status === 'PROCESSING').map((r) => ({ order: o, refund: r }));
  } else {
    for (const o of orders.values()) for (const r of o.refunds) if (r.status === 'PROCESSING') targets.push({ order: o, refund: r });
  }
  const now = Date.now();
  for (const { order, refund } of targets) {
    refresh(order);
    refund.status = status;
    refund.settled_by = '/_sim/refund/settle';
    refund.refund_time = status === 'SUCCESS' ? now : null;
    if (status !== 'PROCESSING') refund.settle_at = null;
    refresh(order);
  }
  return targets.map(({ order, refund }) => ({ mch_id: order.mch_id, out_trade_no: order.out_trade_no,
    out_refund_no: refund.out_refund_no, refund_id: refund.refund_id, status: refund.status }));
}

// ---------------------------------------------------------------------------------------------
// bill files (pay.bill.merchant, served as GET /_sim/bill)
//
// The merchant bill Swiftpass returns from https://download.swiftpass.cn/gateway for
// service=pay.bill.merchant, bill_type=ALL: UTF-8 text, one title line, one line per trade or
// refund with every value prefixed by "`" (spreadsheets then keep long numbers as text), and a
// summary (a title line and a "`"-prefixed values line).  Columns as in the integrations seen
// (a Java parser reads 子商户号 at index 4, 商户订单号 at 8, 总金额 at 14, 手续费 at 24); the
// columns after 费率 in some versions (终端类型, 门店编号, …) are left out.  Amounts are yuan with
// two decimals.  A paid trade is one line with 交易状态 SUCCESS on the day it was paid (GMT+8); a
// refund is one line with 交易状态 REFUND on the day it succeeded; a trade revoked after payment
// is listed as REVOKED.  Summary: 总交易单数 = all lines, 总交易额 = the SUCCESS lines' 总金额,
// 总退款金额 = the REFUND lines' 退款金额, 手续费总金额 = the SUCCESS lines' 手续费 (the
// simulator's own rate, fee_ppm, default 3800 = 0.38 %, rounded half up).

const BILL_COLUMNS = ['交易时间', '公众账号ID', '第三方商户号', '商户号', '子商户号', '设备编号', '平台订单号',
  '第三方订单号', '商户订单号', '用户标识', '交易类型', '交易状态', '付款银行', '货币种类', '总金额', '企业红包金额',
  '平台退款单号', '商户退款单号', '退款金额', '企业红包退款金额', '退款类型', '退款状态', '商品名称', '商户数据包',
  '手续费', '费率'];
const BILL_SUMMARY = ['总交易单数', '总交易额', '总退款金额', '总企业红包退款金额', '手续费总金额'];

function billTime(ms) {
  const s = gmt8(ms);
  return `${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6, 8)} ${s.slice(8, 10)}:${s.slice(10, 12)}:${s.slice(12, 14)}`;
}
function billFile(mchId, day, feePpm) {
  const clean = (v) => String(v == null ? '' : v).replace(/[`\r\n]/g, ' ');
  const line = (vals) => vals.map((v) => '`' + clean(v)).join(',');
  const feeOf = (fen) => Math.floor((fen * feePpm + 500000) / 1000000);
  const rate = `${(feePpm / 10000).toFixed(2)}%`;
  const rows = [];
  for (const o of orders.values()) {
    if (mchId && o.mch_id !== mchId) continue;
    refresh(o);
    const mer = merchants.get(o.mch_id) || {};
    const base = (at, state) => ({ at, vals: [billTime(at), o.sub_appid || mer.appid || '', '', o.mch_id, '', o.device_info || '',
      o.transaction_id, o.out_transaction_id || '', o.out_trade_no, o.openid || '', o.trade_type, state,
      o.bank_type || '', 'CNY', yuan(o.total_fee), '0.00'] });
    if (o.paid_at && gmt8(o.paid_at).slice(0, 8) === day) {
      const state = o.state === 'REVOKED' ? 'REVOKED' : 'SUCCESS';
      const fee = state === 'SUCCESS' ? feeOf(o.total_fee) : 0;
      const r = base(o.paid_at, state);
      r.vals.push('', '', '0.00', '0.00', '', '', o.body || '', o.attach || '', yuan(fee), rate);
      r.state = state; r.total = o.total_fee; r.fee = fee;
      rows.push(r);
    }
    for (const rf of o.refunds) {
      if (rf.status !== 'SUCCESS' || !rf.refund_time || gmt8(rf.refund_time).slice(0, 8) !== day) continue;
      const r = base(rf.refund_time, 'REFUND');
      r.vals.push(rf.refund_id, rf.out_refund_no, yuan(rf.refund_fee), '0.00', rf.refund_channel || 'ORIGINAL',
        'SUCCESS', o.body || '', o.attach || '', '0.00', rate);
      r.state = 'REFUND'; r.refund = rf.refund_fee; r.fee = 0;
      rows.push(r);
    }
  }
  rows.sort((a, b) => a.at - b.at);
  const paid = rows.filter((r) => r.state === 'SUCCESS').reduce((t, r) => t + r.total, 0);
  const refunded = rows.filter((r) => r.state === 'REFUND').reduce((t, r) => t + r.refund, 0);
  const fees = rows.reduce((t, r) => t + r.fee, 0);
  return [BILL_COLUMNS.join(','), ...rows.map((r) => line(r.vals)), BILL_SUMMARY.join(','),
    line([rows.length, yuan(paid), yuan(refunded), '0.00', yuan(fees)])].join('\r\n') + '\r\n';
}

function reset() {
  generation++;
  for (const t of notifyTimers) clearTimeout(t);
  notifyTimers.clear();
  for (const r of heldResponses) r.destroy();
  heldResponses.clear();
  orders.clear(); ordersByTxn.clear(); ordersByToken.clear(); refundsByKey.clear();
  requestLog = [];
  faults = [];
}

async function handleControl(req, res, url) {
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent); // ['_sim', ...]
  const route = parts[1] || '';
  const m = req.method;
  const q = Object.fromEntries(url.searchParams);
  try {
    if (route === 'health' && m === 'GET') {
      return sendJson(res, 200, { ok: true, name: 'swiftpass-sim', uptime_s: (Date.now() - startedAt) / 1000,
        merchants: merchants.size, orders: orders.size, requests: requestSeq, active_faults: faults.length,
        held_connections: heldResponses.size, settings });
    }
    if (route === 'settings') {
      if (m === 'GET') return sendJson(res, 200, settings);
      if (m === 'POST') {
        try { applySettings(await readJson(req)); } catch (e) { if (e instanceof HttpError) throw e; throw new HttpError(400, e.message); }
        return sendJson(res, 200, settings);
      }
    }
    if (route === 'merchants') {
      if (m === 'GET' && parts.length === 2) return sendJson(res, 200, [...merchants.values()].map(merchantView));
      if (m === 'GET' && parts.length === 3) {
        const mer = merchants.get(parts[2]);
        if (!mer) throw new HttpError(404, 'merchant not found');
        return sendJson(res, 200, merchantView(mer));
      }
      if (m === 'POST' && parts.length === 2) {
        const body = await readJson(req);
        let list;
        try { list = registerMerchants(Array.isArray(body) ? body : (body.merchants || body)); }
        catch (e) { throw new HttpError(400, e.message); }
        return sendJson(res, 200, list.map(merchantView));
      }
      if (m === 'DELETE' && parts.length === 3) {
        if (!merchants.delete(parts[2])) throw new HttpError(404, 'merchant not found');
        return sendJson(res, 200, { ok: true });
      }
    }
    if (route === 'reset' && m === 'POST') { reset(); return sendJson(res, 200, { ok: true }); }
    if (route === 'pay') {
      if (m === 'POST') {
        const o = controlPay(await readJson(req));
        return sendJson(res, 200, orderView(o));
      }
      if (m === 'GET') {
        let o;
        let msg;
        try { o = controlPay(q); msg = 'Paid. The notification is on its way.'; }
        catch (e) {
          if (!(e instanceof HttpError) || e.code === 400 || e.code === 404) throw e;
          o = lookupOrder(q); msg = e.message;
        }
        return send(res, 200, 'text/html; charset=UTF-8', payPage(o, msg));
      }
    }
    if (route === 'fail' && m === 'POST') {
      const p = await readJson(req);
      const o = lookupOrder(p);
      if (o.state !== 'USERPAYING') throw new HttpError(409, `order is ${o.state}, only USERPAYING can be failed`);
      markFailed(o, p.reason ? String(p.reason) : 'user cancelled the payment');
      return sendJson(res, 200, orderView(o));
    }
    if (route === 'notify' && m === 'POST') {
      const o = lookupOrder(await readJson(req));
      if (!o.paid_at) throw new HttpError(409, `order is ${o.state}, never paid`);
      if (!o.notify_url) throw new HttpError(409, 'order has no notify_url');
      startNotify(o, 'resend');
      return sendJson(res, 200, orderView(o));
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
    if (route === 'bill' && m === 'GET') {
      // GET /_sim/bill?date=YYYYMMDD|YYYY-MM-DD[&mch_id=…][&fee_ppm=3800] → the day's bill (text)
      const day = String(q.date || q.bill_date || '').replace(/-/g, '');
      if (!/^\d{8}$/.test(day)) throw new HttpError(400, 'date=YYYYMMDD is required');
      const feePpm = q.fee_ppm == null ? 3800 : Number(q.fee_ppm);
      if (!Number.isInteger(feePpm) || feePpm < 0 || feePpm > 1000000) throw new HttpError(400, 'fee_ppm must be 0..1000000');
      if (q.mch_id && !merchants.has(String(q.mch_id))) throw new HttpError(404, 'merchant not found');
      return send(res, 200, 'text/plain; charset=UTF-8', billFile(q.mch_id ? String(q.mch_id) : null, day, feePpm));
    }
    if (route === 'orders' && m === 'GET') {
      if (parts.length === 4) {
        const o = orders.get(okey(parts[2], parts[3]));
        if (!o) throw new HttpError(404, 'order not found');
        return sendJson(res, 200, orderView(o));
      }
      if (parts.length === 2) {
        const limit = Math.max(1, Math.min(10000, Number(q.limit) || 100));
        const all = [...orders.values()].slice(-limit).reverse();
        return sendJson(res, 200, all.map((o) => { refresh(o); return { mch_id: o.mch_id, out_trade_no: o.out_trade_no,
          service: o.service, state: o.state, total_fee: o.total_fee, created_at: iso(o.created_at) }; }));
      }
    }
    if (route === 'requests' && m === 'GET') {
      const limit = Math.max(1, Math.min(REQUEST_LOG_SIZE, Number(q.limit) || 50));
      return sendJson(res, 200, requestLog.slice(-limit).reverse().map(requestView));
    }
    if (route === 'qr' && m === 'GET' && parts.length === 3) {
      const o = ordersByToken.get(parts[2]);
      if (!o) throw new HttpError(404, 'unknown token');
      refresh(o);
      return send(res, 200, 'text/html; charset=UTF-8', payPage(o));
    }
    if (route === 'qrimg' && m === 'GET' && parts.length === 3) {
      const o = ordersByToken.get(parts[2]);
      if (!o) throw new HttpError(404, 'unknown token');
      return send(res, 200, 'image/svg+xml', qrSvg(o.code_url || ''));
    }
    throw new HttpError(404, `no such control endpoint: ${m} ${url.pathname}`);
  } catch (e) {
    if (e instanceof HttpError) return sendJson(res, e.code, { error: e.message });
    process.stderr.write(`swiftpass-sim: control error: ${e.stack}\n`);
    return sendJson(res, 500, { error: e.message });
  }
}

function indexPage() {
  const rows = [...orders.values()].slice(-50).reverse().map((o) => {
    refresh(o);
    return `<tr><td>${escHtml(o.mch_id)}</td><td>${o.token ? `<a href="/_sim/qr/${o.token}">${escHtml(o.out_trade_no)}</a>` : escHtml(o.out_trade_no)}</td>` +
      `<td>${escHtml(o.trade_type)}</td><td>${yuan(o.total_fee)}</td><td>${o.state}</td>` +
      `<td><a href="/_sim/orders/${encodeURIComponent(o.mch_id)}/${encodeURIComponent(o.out_trade_no)}">json</a></td></tr>`;
  }).join('');
  return `<!doctype html><html><head><meta charset="utf-8"><title>swiftpass-sim</title></head><body>` +
    `<h2>swiftpass-sim</h2><p>Gateway: POST /pay/gateway. Control API: see test/sim/README.md. ` +
    `<a href="/_sim/health">health</a> · <a href="/_sim/requests?limit=20">requests</a> · <a href="/_sim/faults">faults</a></p>` +
    `<table border="1" cellpadding="4"><tr><th>mch_id</th><th>out_trade_no</th><th>trade_type</th><th>¥</th><th>state</th><th></th></tr>${rows}</table>` +
    `</body></html>`;
}

// ---------------------------------------------------------------------------------------------
// server

function handler(req, res) {
  let url;
  try { url = new URL(req.url, 'http://sim'); } catch (e) { return send(res, 400, 'text/plain', 'bad url\n'); }
  const p = url.pathname;
  if (p === '/_sim' || p.startsWith('/_sim/')) {
    handleControl(req, res, url);
    return;
  }
  if (p.endsWith('/pay/gateway')) {
    handleGateway(req, res, url).catch((e) => {
      process.stderr.write(`swiftpass-sim: gateway error: ${e.stack}\n`);
      if (!res.headersSent) sendXml(res, commXml('Internal error', '500'));
    });
    return;
  }
  if (p === '/' && req.method === 'GET') return send(res, 200, 'text/html; charset=UTF-8', indexPage());
  req.resume();
  send(res, 404, 'text/plain', 'not found\n');
}

if (opts.config) loadConfig(opts.config);

let actualPort = opts.port;
lib.serve({ name: 'swiftpass', opts, handler, timers: notifyTimers, held: heldResponses, onListen: (p) => { actualPort = p; } });
