#!/usr/bin/env node
/*
 * mybank-sim — a MyBank (浙江网商银行) merchant-trade simulator for paygate.
 *
 * Speaks ant.mybank.bkmerchanttrade.* as described in /work/shared/PROTOCOLS.md §B: an XML
 * document <document><request id="request"><head/><body/></request><Signature/></document> POSTed
 * to the gateway, signed with an enveloped XML-DSig (inclusive C14N 1.0, rsa-sha256, one
 * Reference URI="" with the enveloped-signature transform, SHA-1 digest); bank-signed responses
 * with RespInfo ResultStatus S/F/U; TradeStatus succ/fail/paying/closed/cancel/refunding;
 * asynchronous refunds; signed prePayNotice notifications whose acknowledgement must be a
 * (signed) response document; fault injection.  Node 20, built-ins only.
 *
 * The XML-DSig here is this file's own: a strict XML parser and an inclusive-C14N 1.0
 * serialiser for the documents of this protocol (elements, attributes, namespace declarations,
 * text, CDATA; no DTD, comments, PIs or xml:* attributes), so the simulator is an implementation
 * independent of libxml2/xmlsec1.  test/integration/mybank.test.js checks its signatures with
 * the xmlsec1 command-line tool.
 *
 *   node test/sim/mybank.js --port N [--host 127.0.0.1] [--config FILE] [--time-scale X]
 *        [--refund-delay SECONDS]
 *
 * Prints exactly one line "mybank-sim listening on http://HOST:PORT" when ready.
 * Full documentation: test/sim/README.md ("MyBank simulator").
 *
 * pay (b-to-c) outcome by the END of AuthCode (16..24 digits; prefix 10-15 WX, 25-30 ALI):
 *   ...0000  F AUTH_CODE_EXPIRE: a definite failure; trade fail.
 *   ...8888  no answer (connection held); the trade exists as paying (then like ...9999).
 *   ...7777  U SYSTEM_ERROR, but the trade actually succeeded (a payQuery shows succ).
 *   ...9999  U USER_PAYING: paying until POST /_sim/pay (succ), /_sim/fail (fail) or payCancel.
 *   ...99K9  (K = 1..8) like 9999, the K-th payQuery finds it succ.
 *   ...99K8  (K = 1..8) like 9999, the K-th payQuery finds it fail.
 *   anything else: S, succ at once.
 */
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const { URL } = require('url');
const lib = require('./lib');
const { randDigits, iso, sleep, has, readBody, send, sendJson, faultView, HttpError } = lib;

// ---------------------------------------------------------------------------------------------
// constants

const MAX_BODY = 64 * 1024;
const MAX_CONTROL_BODY = 1024 * 1024;
const NOTIFY_SCHEDULE_S = [0, 15, 15, 30, 180, 1800, 1800, 1800, 1800, 3600];
const NOTIFY_TIMEOUT_MS = 5000;
const REQUEST_LOG_SIZE = 1000;
const F = 'ant.mybank.bkmerchanttrade.';
const FN = {
  pay: F + 'pay', prePay: F + 'prePay', payQuery: F + 'payQuery', payCancel: F + 'payCancel',
  payClose: F + 'payClose', refund: F + 'refund', refundQuery: F + 'refundQuery', prePayNotice: F + 'prePayNotice',
};
const DS = 'http://www.w3.org/2000/09/xmldsig#';
const ALG = {
  c14n: 'http://www.w3.org/TR/2001/REC-xml-c14n-20010315',
  rsaSha256: 'http://www.w3.org/2001/04/xmldsig-more#rsa-sha256',
  enveloped: 'http://www.w3.org/2000/09/xmldsig#enveloped-signature',
  sha1: 'http://www.w3.org/2000/09/xmldsig#sha1',
};
const CHANNEL_TYPES = new Set(['WX', 'ALI', 'QQ', 'JD']);
const MAX_AMOUNT = 5000000;

// ---------------------------------------------------------------------------------------------
// command line


const { opts, usage } = lib.parseArgs(process.argv.slice(2), {
  name: 'mybank',
  usage: 'usage: node test/sim/mybank.js --port N [--host 127.0.0.1] [--config FILE]\n' +
    '       [--time-scale X] [--refund-delay SECONDS]\n',
  options: { '--refund-delay': ['refundDelay', 'num'] },
});

// ---------------------------------------------------------------------------------------------
// small helpers

const present = (v) => v !== undefined && v !== null && v !== '';
const uuid = () => crypto.randomUUID();

/** yyyyMMddHHmmss in UTC+8 */
function gmt8(ms = Date.now()) {
  const t = new Date(ms + 8 * 3600e3);
  const p = (n) => String(n).padStart(2, '0');
  return `${t.getUTCFullYear()}${p(t.getUTCMonth() + 1)}${p(t.getUTCDate())}` +
    `${p(t.getUTCHours())}${p(t.getUTCMinutes())}${p(t.getUTCSeconds())}`;
}
function escHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

// ---------------------------------------------------------------------------------------------
// XML: a strict parser into a small tree

class XmlError extends Error {}

const ENTITIES = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };
function decodeRefs(s) {
  if (s.indexOf('&') < 0) return s;
  return s.replace(/&([^;&]*);?/g, (whole, name) => {
    if (!whole.endsWith(';')) throw new XmlError('bare & in text');
    if (has(ENTITIES, name)) return ENTITIES[name];
    let cp = NaN;
    if (/^#[0-9]+$/.test(name)) cp = parseInt(name.slice(1), 10);
    else if (/^#x[0-9a-fA-F]+$/.test(name)) cp = parseInt(name.slice(2), 16);
    if (!(cp >= 1 && cp <= 0x10ffff) || (cp >= 0xd800 && cp <= 0xdfff)) throw new XmlError(`unknown entity &${name};`);
    return String.fromCodePoint(cp);
  });
}

/**
 * Parses a document into {type:'el', qname, prefix, local, uri, attrs:[{qname,prefix,local,uri,value}],
 * scope:{prefix:uri}, children:[el|{type:'text', value}], parent}.  Line ends are normalised
 * (CRLF/CR → LF), attribute values normalised (TAB/LF → space), references decoded, CDATA merged
 * into text.  Refused: DOCTYPE, comments, processing instructions, xml:* attributes, unbound
 * prefixes, duplicate attributes, a declared encoding other than UTF-8, anything after the root.
 */
function parseXml(input) {
  const text = input.replace(/\r\n?/g, '\n');
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  const n = text.length;
  const ws = () => { while (i < n && (text[i] === ' ' || text[i] === '\t' || text[i] === '\n')) i++; };
  const NAME = /[A-Za-z_\u00c0-\uffff][A-Za-z0-9_.\-\u00b7\u00c0-\uffff]*(?::[A-Za-z_\u00c0-\uffff][A-Za-z0-9_.\-\u00b7\u00c0-\uffff]*)?/y;
  const name = () => {
    NAME.lastIndex = i;
    const m = NAME.exec(text);
    if (!m) throw new XmlError(`name expected at ${i}`);
    i += m[0].length;
    return m[0];
  };
  if (text.startsWith('<?xml', i) && /\s/.test(text[i + 5] || '')) {
    const e = text.indexOf('?>', i);
    if (e < 0) throw new XmlError('unterminated XML declaration');
    const decl = text.slice(i, e);
    const enc = /encoding\s*=\s*["']([^"']*)["']/.exec(decl);
    if (enc && enc[1].toUpperCase() !== 'UTF-8') throw new XmlError(`encoding ${enc[1]} (only UTF-8)`);
    i = e + 2;
  }
  ws();
  const misc = () => {
    if (text.startsWith('<!DOCTYPE', i) || text.startsWith('<!', i) && !text.startsWith('<![CDATA[', i)) {
      throw new XmlError('DOCTYPE, comments and other markup declarations are not allowed');
    }
    if (text.startsWith('<?', i)) throw new XmlError('processing instructions are not allowed');
  };
  misc();
  if (text[i] !== '<') throw new XmlError('root element expected');
  const resolve = (qname, scope, isAttr) => {
    const c = qname.indexOf(':');
    const prefix = c < 0 ? '' : qname.slice(0, c);
    const local = c < 0 ? qname : qname.slice(c + 1);
    if (prefix === 'xml') throw new XmlError('xml:* attributes are not supported');
    if (prefix === '') return { prefix, local, uri: isAttr ? '' : (scope[''] || '') };
    if (!has(scope, prefix)) throw new XmlError(`unbound prefix ${prefix}`);
    return { prefix, local, uri: scope[prefix] };
  };
  const element = (parent) => {
    i++; // '<'
    const qname = name();
    const raw = [];
    for (;;) {
      const before = i;
      ws();
      if (text.startsWith('/>', i) || text[i] === '>') break;
      if (i === before) throw new XmlError(`whitespace expected in <${qname}>`);
      const an = name();
      ws();
      if (text[i] !== '=') throw new XmlError(`= expected after ${an}`);
      i++;
      ws();
      const q = text[i];
      if (q !== '"' && q !== "'") throw new XmlError('quoted attribute value expected');
      const e = text.indexOf(q, i + 1);
      if (e < 0) throw new XmlError('unterminated attribute value');
      const rawv = text.slice(i + 1, e);
      if (rawv.includes('<')) throw new XmlError('< in an attribute value');
      i = e + 1;
      if (raw.some((a) => a.qname === an)) throw new XmlError(`duplicate attribute ${an}`);
      raw.push({ qname: an, value: decodeRefs(rawv.replace(/[\t\n]/g, ' ')) });
    }
    const scope = Object.assign({}, parent ? parent.scope : {});
    const attrs = [];
    for (const a of raw) {
      if (a.qname === 'xmlns') scope[''] = a.value;
      else if (a.qname.startsWith('xmlns:')) {
        if (a.value === '') throw new XmlError('a prefix cannot be undeclared');
        scope[a.qname.slice(6)] = a.value;
      }
    }
    for (const a of raw) {
      if (a.qname === 'xmlns' || a.qname.startsWith('xmlns:')) continue;
      attrs.push(Object.assign({ qname: a.qname, value: a.value }, resolve(a.qname, scope, true)));
    }
    const el = Object.assign({ type: 'el', qname, attrs, scope, children: [], parent }, resolve(qname, scope, false));
    const seen = new Set();
    for (const a of attrs) {
      const k = `${a.uri}\u0000${a.local}`;
      if (seen.has(k)) throw new XmlError(`duplicate attribute ${a.qname}`);
      seen.add(k);
    }
    if (text.startsWith('/>', i)) { i += 2; return el; }
    i++; // '>'
    let pending = '';
    const flush = () => { if (pending) { el.children.push({ type: 'text', value: pending }); pending = ''; } };
    for (;;) {
      if (i >= n) throw new XmlError(`unterminated <${qname}>`);
      if (text.startsWith('</', i)) {
        i += 2;
        if (name() !== qname) throw new XmlError(`mismatched end tag for <${qname}>`);
        ws();
        if (text[i] !== '>') throw new XmlError('> expected');
        i++;
        flush();
        return el;
      }
      if (text.startsWith('<![CDATA[', i)) {
        const e = text.indexOf(']]>', i + 9);
        if (e < 0) throw new XmlError('unterminated CDATA section');
        pending += text.slice(i + 9, e);
        i = e + 3;
        continue;
      }
      if (text[i] === '<') {
        misc();
        flush();
        el.children.push(element(el));
        continue;
      }
      const lt = text.indexOf('<', i);
      const chunk = text.slice(i, lt < 0 ? n : lt);
      if (chunk.includes(']]>')) throw new XmlError(']]> in text');
      pending += decodeRefs(chunk);
      i = lt < 0 ? n : lt;
    }
  };
  const root = element(null);
  ws();
  if (i < n) throw new XmlError('content after the root element');
  return root;
}

const elements = (el) => el.children.filter((c) => c.type === 'el');
const textOf = (el) => {
  let s = '';
  for (const c of el.children) {
    if (c.type !== 'text') throw new XmlError(`<${el.qname}> is not a leaf`);
    s += c.value;
  }
  return s;
};
const isBlank = (c) => c.type === 'text' && /^[ \t\n]*$/.test(c.value);

/** Leaves below el, keyed by relative path ("RespInfo/ResultStatus"); duplicates refused. */
function leaves(el, prefix = '', out = {}) {
  for (const c of el.children) {
    if (c.type === 'text') {
      if (!isBlank(c)) throw new XmlError(`mixed content in <${el.qname}>`);
      continue;
    }
    if (c.uri) throw new XmlError(`namespaced element <${c.qname}>`);
    const key = prefix + c.local;
    if (elements(c).length) leaves(c, key + '/', out);
    else {
      if (has(out, key)) throw new XmlError(`repeated element ${key}`);
      out[key] = textOf(c);
    }
  }
  return out;
}

function child(el, local, uri = '') {
  const hits = elements(el).filter((c) => c.local === local && c.uri === uri);
  if (hits.length > 1) throw new XmlError(`two <${local}> in <${el.qname}>`);
  return hits[0] || null;
}

// ---------------------------------------------------------------------------------------------
// inclusive C14N 1.0 (no comments) and the enveloped XML-DSig profile

const escText = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/\r/g, '&#xD;');
const escAttr = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/"/g, '&quot;')
  .replace(/\t/g, '&#x9;').replace(/\n/g, '&#xA;').replace(/\r/g, '&#xD;');
const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

/**
 * Canonical form of el as the apex of a node-set (rendered = the namespaces its output ancestors
 * rendered; {} for an apex: every namespace in scope is rendered), leaving out the subtree of
 * `exclude`.
 */
function c14n(el, exclude = null, rendered = {}) {
  if (el === exclude) return '';
  const ns = [];
  for (const [p, uri] of Object.entries(el.scope)) {
    const prev = has(rendered, p) ? rendered[p] : '';
    if (p === '' ? uri !== prev : rendered[p] !== uri) ns.push([p, uri]);
  }
  ns.sort((a, b) => cmp(a[0], b[0]));
  const attrs = el.attrs.slice().sort((a, b) => cmp(a.uri, b.uri) || cmp(a.local, b.local));
  let s = `<${el.qname}`;
  for (const [p, uri] of ns) s += p === '' ? ` xmlns="${escAttr(uri)}"` : ` xmlns:${p}="${escAttr(uri)}"`;
  for (const a of attrs) s += ` ${a.qname}="${escAttr(a.value)}"`;
  s += '>';
  const next = Object.assign({}, rendered, Object.fromEntries(ns));
  for (const c of el.children) s += c.type === 'text' ? escText(c.value) : c14n(c, exclude, next);
  return s + `</${el.qname}>`;
}

/** Checks the profile; returns {sig, signedInfo, digestValue, signatureValue} or throws XmlError. */
function dsigProfile(root) {
  const els = elements(root);
  const sig = els[els.length - 1];
  if (!sig || sig.local !== 'Signature' || sig.uri !== DS) throw new XmlError('the last child of the root is not a dsig Signature');
  const after = root.children.slice(root.children.indexOf(sig) + 1);
  if (!after.every(isBlank)) throw new XmlError('text after the Signature');
  const walk = (el, inside) => {
    if (el !== sig && el.local === 'Signature') throw new XmlError('more than one Signature');
    if (!inside && el.uri === DS) throw new XmlError(`dsig element ${el.local} outside the Signature`);
    for (const c of elements(el)) walk(c, inside || c === sig);
  };
  walk(root, false);
  const kids = (el, names) => {
    if (!el.children.every((c) => c.type === 'el' || isBlank(c))) throw new XmlError(`text inside ${el.local}`);
    const ks = elements(el);
    let k = 0;
    const out = [];
    for (const nm of names) {
      const opt = nm.endsWith('?');
      const want = opt ? nm.slice(0, -1) : nm;
      if (ks[k] && ks[k].local === want && ks[k].uri === DS) out.push(ks[k++]);
      else if (opt) out.push(null);
      else throw new XmlError(`${el.local} lacks ${want}`);
    }
    if (k !== ks.length) throw new XmlError(`unexpected ${ks[k].local} in ${el.local}`);
    return out;
  };
  const attrsOnly = (el, allowed) => {
    for (const a of el.attrs) if (a.uri || !allowed.includes(a.local)) throw new XmlError(`attribute ${a.qname} on ${el.local}`);
  };
  const alg = (el, want) => {
    attrsOnly(el, ['Algorithm']);
    if (!el.children.every(isBlank)) throw new XmlError(`${el.local} has content`);
    const a = el.attrs.find((x) => x.local === 'Algorithm');
    if (!a || a.value !== want) throw new XmlError(`${el.local} Algorithm is not ${want}`);
  };
  attrsOnly(sig, ['Id']);
  const [signedInfo, signatureValue] = kids(sig, ['SignedInfo', 'SignatureValue', 'KeyInfo?']);
  attrsOnly(signedInfo, ['Id']);
  attrsOnly(signatureValue, ['Id']);
  const [cm, sm, ref] = kids(signedInfo, ['CanonicalizationMethod', 'SignatureMethod', 'Reference']);
  alg(cm, ALG.c14n);
  alg(sm, ALG.rsaSha256);
  attrsOnly(ref, ['URI', 'Id']);
  const uri = ref.attrs.find((a) => a.local === 'URI');
  if (!uri || uri.value !== '') throw new XmlError('Reference URI is not ""');
  const [transforms, dm, digestValue] = kids(ref, ['Transforms', 'DigestMethod', 'DigestValue']);
  attrsOnly(transforms, []);
  attrsOnly(digestValue, []);
  const [tr] = kids(transforms, ['Transform']);
  alg(tr, ALG.enveloped);
  alg(dm, ALG.sha1);
  return { sig, signedInfo, digestValue, signatureValue };
}

/** {ok, reason} for a document text, verified with a public KeyObject. */
function dsigVerify(xmlText, publicKey) {
  let root;
  let p;
  try {
    root = parseXml(xmlText);
    p = dsigProfile(root);
  } catch (e) {
    return { ok: false, reason: `profile: ${e.message}` };
  }
  const canon = c14n(root, p.sig, {});
  const digest = crypto.createHash('sha1').update(canon, 'utf8').digest('base64');
  let dv;
  let sv;
  try { dv = textOf(p.digestValue).replace(/\s+/g, ''); sv = textOf(p.signatureValue).replace(/\s+/g, ''); }
  catch (e) { return { ok: false, reason: e.message }; }
  if (digest !== dv) return { ok: false, reason: `digest mismatch (DigestValue ${dv}, computed ${digest})`, root };
  const si = c14n(p.signedInfo, null, {});
  let ok = false;
  try { ok = crypto.verify('sha256', Buffer.from(si, 'utf8'), publicKey, Buffer.from(sv, 'base64')); }
  catch (e) { return { ok: false, reason: `verify: ${e.message}`, root }; }
  return ok ? { ok: true, root } : { ok: false, reason: 'SignatureValue does not verify', root };
}

const signedInfoXml = (digest) =>
  `<SignedInfo><CanonicalizationMethod Algorithm="${ALG.c14n}"/><SignatureMethod Algorithm="${ALG.rsaSha256}"/>` +
  `<Reference URI=""><Transforms><Transform Algorithm="${ALG.enveloped}"/></Transforms>` +
  `<DigestMethod Algorithm="${ALG.sha1}"/><DigestValue>${digest}</DigestValue></Reference></SignedInfo>`;

/** Inserts the profile's Signature (signed with a private KeyObject) before the root's end tag. */
function dsigSign(xmlText, privateKey) {
  const root = parseXml(xmlText);
  const at = xmlText.lastIndexOf('</');
  const digest = crypto.createHash('sha1').update(c14n(root, null, {}), 'utf8').digest('base64');
  const head = `<Signature xmlns="${DS}">${signedInfoXml(digest)}<SignatureValue>`;
  const tail = '</SignatureValue></Signature>';
  const tmp = parseXml(xmlText.slice(0, at) + head + tail + xmlText.slice(at));
  const sigEl = elements(tmp).pop();
  const si = c14n(elements(sigEl)[0], null, {});
  const sv = crypto.sign('sha256', Buffer.from(si, 'utf8'), privateKey).toString('base64');
  return xmlText.slice(0, at) + head + sv + tail + xmlText.slice(at);
}

const xesc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
  .replace(/"/g, '&quot;').replace(/'/g, '&apos;').replace(/\r/g, '&#13;');
/** <k>v</k>… for an ordered list of [k, v | {sub}]; null/undefined values left out. */
function xmlFields(list) {
  let s = '';
  for (const [k, v] of list) {
    if (v === undefined || v === null) continue;
    if (Array.isArray(v)) s += `<${k}>${xmlFields(v)}</${k}>`;
    else s += `<${k}>${xesc(v)}</${k}>`;
  }
  return s;
}
function documentXml(kind, head, body) {
  return `<?xml version="1.0" encoding="UTF-8"?><document><${kind} id="${kind}"><head>${xmlFields(head)}</head>` +
    `<body>${xmlFields(body)}</body></${kind}></document>`;
}

// ---------------------------------------------------------------------------------------------
// state


const settings = {
  time_scale: opts.timeScale != null ? opts.timeScale : 1,
  refund_delay_s: opts.refundDelay != null ? opts.refundDelay : 3,
  notify_schedule_s: NOTIFY_SCHEDULE_S.slice(),
  notify_timeout_ms: NOTIFY_TIMEOUT_MS,
  expire_orders: true,
  require_signed_ack: true,
  max_clock_skew_s: 600,
};
const scaled = (seconds) => seconds * 1000 * settings.time_scale;

let bankKey = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
let bankKeyGenerated = true;
const merchants = new Map();        // MerchantId -> merchant
const orders = new Map();           // mch \0 OutTradeNo -> order
const ordersByToken = new Map();
const refunds = new Map();          // mch \0 OutRefundNo -> {order, refund}
const tombstones = new Map();       // mch \0 OutTradeNo -> time: payCancel of an unknown trade
const seenMsgIds = new Map();       // ReqMsgId -> time (duplicates refused)
let requestLog = [];
let requestSeq = 0;
let faults = [];
let faultSeq = 0;
let generation = 0;
const notifyTimers = new Set();
const heldResponses = new Set();
const startedAt = Date.now();
let orderSeq = 0;

const okey = (mch, no) => `${mch}\u0000${no}`;

function publicKeyOf(text, what) {
  const t = String(text).trim();
  try {
    if (t.startsWith('-----')) return crypto.createPublicKey(t);
    return crypto.createPublicKey({ key: Buffer.from(t.replace(/\s+/g, ''), 'base64'), format: 'der', type: 'spki' });
  } catch (e) { throw new Error(`${what} is not a PEM or Base64 SPKI public key (${e.message})`); }
}
function privateKeyOf(text, what) {
  const t = String(text).trim();
  try {
    if (t.startsWith('-----')) return crypto.createPrivateKey(t);
    return crypto.createPrivateKey({ key: Buffer.from(t.replace(/\s+/g, ''), 'base64'), format: 'der', type: 'pkcs8' });
  } catch (e) { throw new Error(`${what} is not a PEM or Base64 PKCS#8 private key (${e.message})`); }
}

function normaliseMerchant(m) {
  if (!m || typeof m !== 'object' || Array.isArray(m)) throw new Error('a merchant must be a JSON object');
  const mch_id = m.mch_id == null ? '' : String(m.mch_id).trim();
  if (!mch_id) throw new Error('merchant.mch_id is required');
  for (const k of ['isv_org_id', 'appid', 'public_key']) if (!present(m[k])) throw new Error(`merchant ${mch_id}: ${k} is required`);
  const pub = publicKeyOf(m.public_key, `merchant ${mch_id}: public_key`);
  return { mch_id, isv_org_id: String(m.isv_org_id), appid: String(m.appid), pub,
    public_key_pem: pub.export({ type: 'spki', format: 'pem' }) };
}
function merchantView(m) {
  return { mch_id: m.mch_id, isv_org_id: m.isv_org_id, appid: m.appid, public_key: m.public_key_pem };
}
function registerMerchants(list) {
  const arr = Array.isArray(list) ? list : [list];
  const norm = arr.map(normaliseMerchant);
  for (const m of norm) merchants.set(m.mch_id, m);
  return norm;
}
function bankView() {
  const pub = crypto.createPublicKey(bankKey);
  return { bank_public_key: pub.export({ type: 'spki', format: 'pem' }),
    bank_public_key_b64: pub.export({ type: 'spki', format: 'der' }).toString('base64'), generated: bankKeyGenerated };
}
function setBankKey(text) {
  bankKey = privateKeyOf(text, 'bank_private_key');
  bankKeyGenerated = false;
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
        if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error('refund_delay_s must be a number (negative = never settle by itself)');
        next.refund_delay_s = v; break;
      case 'notify_schedule_s':
        if (!Array.isArray(v) || !v.length || !v.every((x) => typeof x === 'number' && x >= 0)) throw new Error('notify_schedule_s must be a non-empty array of seconds');
        next.notify_schedule_s = v.slice(); break;
      case 'notify_timeout_ms':
        if (!(typeof v === 'number' && v > 0)) throw new Error('notify_timeout_ms must be > 0');
        next.notify_timeout_ms = v; break;
      case 'expire_orders': case 'require_signed_ack':
        if (typeof v !== 'boolean') throw new Error(`${k} must be true or false`);
        next[k] = v; break;
      case 'max_clock_skew_s':
        if (!(typeof v === 'number' && v >= 0)) throw new Error('max_clock_skew_s must be >= 0 (0: not checked)');
        next.max_clock_skew_s = v; break;
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
  try {
    if (cfg.bank_private_key) setBankKey(cfg.bank_private_key);
    registerMerchants(cfg.merchants || []);
    if (cfg.settings) applySettings(cfg.settings, { fromConfig: true });
  } catch (e) { usage(`--config ${file}: ${e.message}`); }
}

// ---------------------------------------------------------------------------------------------
// faults

const REQUEST_FAULT_KEYS = ['latency_ms', 'timeout', 'http_status', 'garbled', 'bad_sign', 'unsigned', 'foreign_msgid', 'result'];
const NOTIFY_FAULT_KEYS = ['drop_notify', 'duplicate_notify'];

const fnName = (s) => (String(s).startsWith(F) ? String(s) : F + String(s));

function normaliseFault(f) {
  if (!f || typeof f !== 'object' || Array.isArray(f)) throw new Error('a fault must be a JSON object');
  const allowed = new Set([...REQUEST_FAULT_KEYS, ...NOTIFY_FAULT_KEYS, 'count', 'function', 'processed']);
  for (const k of Object.keys(f)) if (!allowed.has(k)) throw new Error(`unknown fault field ${k}`);
  const isReq = REQUEST_FAULT_KEYS.some((k) => f[k] !== undefined && f[k] !== false);
  const isNot = NOTIFY_FAULT_KEYS.some((k) => f[k] !== undefined && f[k] !== false);
  if (!isReq && !isNot) throw new Error(`a fault needs one of ${[...REQUEST_FAULT_KEYS, ...NOTIFY_FAULT_KEYS].join(', ')}`);
  if (isReq && isNot) throw new Error('request faults and notification faults go in separate entries');
  if (f.latency_ms !== undefined && !(Number.isFinite(f.latency_ms) && f.latency_ms >= 0)) throw new Error('latency_ms must be >= 0');
  if (f.http_status !== undefined && !(Number.isInteger(f.http_status) && f.http_status >= 100 && f.http_status <= 599)) throw new Error('http_status must be an HTTP status code');
  if (f.garbled !== undefined && typeof f.garbled !== 'boolean' && typeof f.garbled !== 'string') throw new Error('garbled must be true or a literal body');
  if (f.result !== undefined && !['U', 'F'].includes(f.result)) throw new Error('result must be "U" or "F"');
  for (const k of ['timeout', 'bad_sign', 'unsigned', 'foreign_msgid', 'drop_notify', 'duplicate_notify', 'processed']) {
    if (f[k] !== undefined && typeof f[k] !== 'boolean') throw new Error(`${k} must be a boolean`);
  }
  if (f.count !== undefined && f.count !== null && !(Number.isInteger(f.count) && f.count > 0)) throw new Error('count must be a positive integer');
  let functions = null;
  if (f.function !== undefined && f.function !== null) functions = (Array.isArray(f.function) ? f.function : [f.function]).map(fnName);
  const out = { id: ++faultSeq, kind: isReq ? 'request' : 'notify', created_at: Date.now(), functions,
    remaining: f.count == null ? null : f.count, used: 0 };
  for (const k of [...REQUEST_FAULT_KEYS, ...NOTIFY_FAULT_KEYS, 'processed']) if (f[k] !== undefined) out[k] = f[k];
  return out;
}
function takeFaults(kind, fn) {
  const taken = [];
  for (const f of faults) {
    if (f.kind !== kind) continue;
    if (f.functions && !(fn && f.functions.includes(fn))) continue;
    if (f.remaining !== null) f.remaining--;
    f.used++;
    taken.push(f);
  }
  faults = faults.filter((f) => f.remaining === null || f.remaining > 0);
  return taken;
}
function combineFaults(list) {
  const c = { ids: list.map((f) => f.id), latency_ms: 0, timeout: null, http_status: null, garbled: null,
    bad_sign: false, unsigned: false, foreign_msgid: false, result: null };
  for (const f of list) {
    if (f.latency_ms) c.latency_ms += f.latency_ms;
    if (f.timeout && !c.timeout) c.timeout = { processed: f.processed !== false };
    if (f.http_status && !c.http_status) c.http_status = { code: f.http_status, processed: f.processed === true };
    if (f.garbled && !c.garbled) c.garbled = { body: typeof f.garbled === 'string' ? f.garbled : null };
    if (f.result && !c.result) c.result = { status: f.result, processed: f.processed !== false };
    for (const k of ['bad_sign', 'unsigned', 'foreign_msgid']) if (f[k]) c[k] = true;
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// orders

/** 'paying' | 'succ' | 'fail' | 'closed' | 'cancel'; TradeStatus adds 'refunding'. */
function refresh(o, now = Date.now()) {
  if (settings.expire_orders && o.kind === 'ctob' && o.state === 'paying' && o.expire_at != null && now >= o.expire_at) {
    o.state = 'closed'; o.closed_at = o.expire_at; o.close_reason = 'ExpireExpress';
  }
  for (const r of o.refunds) {
    if (r.status === 'refunding' && r.settle_at != null && now >= r.settle_at) {
      r.status = 'succ'; r.refunded_at = r.settle_at; r.settled_by = 'delay';
    }
  }
}
function tradeStatus(o) {
  refresh(o);
  if (o.state === 'succ' && o.refunds.some((r) => r.status === 'refunding')) return 'refunding';
  return o.state;
}
const refundedSum = (o) => o.refunds.filter((r) => r.status !== 'fail').reduce((s, r) => s + r.amount, 0);

function markPaid(o, by) {
  const now = Date.now();
  o.state = 'succ';
  o.paid_at = now;
  o.paid_by = by || null;
  o.pay_channel_order_no = o.channel_type === 'ALI' ? `${gmt8(now).slice(0, 8)}2200${randDigits(16)}` : `42000${randDigits(5)}${gmt8(now).slice(0, 8)}${randDigits(10)}`;
  if (!o.open_id) o.open_id = o.channel_type === 'ALI' ? '2088' + randDigits(12) : 'o' + crypto.randomBytes(21).toString('base64url').slice(0, 27);
  if (o.kind === 'ctob' && o.notify_url) startNotify(o, 'paid');
}

function orderView(o) {
  refresh(o);
  return {
    mch_id: o.mch_id, out_trade_no: o.out_trade_no, function: o.fn, kind: o.kind, channel_type: o.channel_type,
    state: o.state, trade_status: tradeStatus(o), total_amount: o.total_amount, body: o.body, attach: o.attach,
    notify_url: o.notify_url, open_id: o.open_id || null, auth_code_rule: o.rule || null, queries: o.queries,
    order_no: o.order_no, pay_channel_order_no: o.pay_channel_order_no || null, token: o.token || null,
    qr_code_url: o.qr_code_url || null, pay_info: o.pay_info || null, expire_at: iso(o.expire_at),
    created_at: iso(o.created_at), paid_at: iso(o.paid_at), closed_at: iso(o.closed_at),
    close_reason: o.close_reason || null, canceled_at: iso(o.canceled_at), cancel_refunded: o.cancel_refunded || 0,
    failed_at: iso(o.failed_at), fail_reason: o.fail_reason || null, refunded_amount: refundedSum(o),
    refunds: o.refunds.map((r) => ({ out_refund_no: r.out_refund_no, refund_order_no: r.refund_order_no, amount: r.amount,
      reason: r.reason, status: r.status, created_at: iso(r.created_at), settle_at: iso(r.settle_at),
      refunded_at: iso(r.refunded_at), settled_by: r.settled_by || null })),
    notifications: o.notify.map((s) => ({ id: s.id, reason: s.reason, req_msg_id: s.req_msg_id, created_at: iso(s.created_at),
      state: s.state, dropped: s.dropped, duplicate: s.duplicate, next_attempt_at: iso(s.next_at), body: s.body,
      attempts: s.attempts.map((a) => Object.assign({}, a, { at: iso(a.at) })) })),
  };
}

// ---------------------------------------------------------------------------------------------
// notifications: ant.mybank.bkmerchanttrade.prePayNotice

let notifySeq = 0;

function noticeXml(o, mer, msgId) {
  const head = [['Version', '1.0.0'], ['Appid', mer.appid], ['Function', FN.prePayNotice], ['ReqTime', gmt8()],
    ['ReqTimeZone', 'UTC+8'], ['ReqMsgId', msgId], ['InputCharset', 'UTF-8'], ['Reserve', ''], ['SignType', 'RSA']];
  const body = [['IsvOrgId', mer.isv_org_id], ['MerchantId', o.mch_id], ['OutTradeNo', o.out_trade_no],
    ['OrderNo', o.order_no], ['TotalAmount', String(o.total_amount)], ['Currency', 'CNY'],
    ['ChannelType', o.channel_type], ['TradeStatus', 'succ'], ['GmtPayment', gmt8(o.paid_at)],
    ['PayChannelOrderNo', o.pay_channel_order_no], ['OpenId', o.open_id], ['Attach', o.attach || null]];
  return dsigSign(documentXml('request', head, body), bankKey);
}

function startNotify(o, reason) {
  const mer = merchants.get(o.mch_id);
  if (!mer) return null;
  const nf = takeFaults('notify', o.fn);
  const msgId = uuid();
  const seq = { id: ++notifySeq, reason, created_at: Date.now(), url: o.notify_url, req_msg_id: msgId,
    body: noticeXml(o, mer, msgId), dropped: nf.some((f) => f.drop_notify), duplicate: nf.some((f) => f.duplicate_notify),
    fault_ids: nf.map((f) => f.id), attempts: [], state: 'pending', next_at: null, gen: generation, mch_id: o.mch_id };
  o.notify.push(seq);
  if (seq.dropped) { seq.state = 'dropped'; return seq; }
  scheduleNotify(seq, 0);
  return seq;
}
const scheduleNotify = lib.notifier({
  schedule: () => settings.notify_schedule_s, scaled, timers: notifyTimers, generation: () => generation,
  post: (seq) => postNotify(seq.url, seq.body),
  judge: (seq, r) => checkAck(seq, r.body),
});
/** The acknowledgement: a response document, Function prePayNotice, our ReqMsgId, S. */
function checkAck(seq, body) {
  const out = { acknowledged: false, ack_signed: false, ack_verified: null, ack_reason: null };
  if (body == null) { out.ack_reason = 'no body'; return out; }
  let root;
  try { root = parseXml(body); } catch (e) { out.ack_reason = `not XML: ${e.message}`; return out; }
  const sig = elements(root).pop();
  out.ack_signed = !!(sig && sig.local === 'Signature' && sig.uri === DS);
  if (out.ack_signed) {
    const mer = merchants.get(seq.mch_id);
    const v = mer ? dsigVerify(body, mer.pub) : { ok: false, reason: 'merchant gone' };
    out.ack_verified = v.ok;
    if (!v.ok) out.ack_reason = `ack signature: ${v.reason}`;
  }
  let f;
  try {
    const resp = root.local === 'document' ? child(root, 'response') : null;
    if (!resp) throw new XmlError('not a document/response');
    f = leaves(resp);
  } catch (e) { out.ack_reason = e.message; return out; }
  if (f['head/Function'] !== FN.prePayNotice) out.ack_reason = out.ack_reason || 'Function is not prePayNotice';
  else if (f['head/ReqMsgId'] !== seq.req_msg_id) out.ack_reason = out.ack_reason || 'ReqMsgId not echoed';
  else if (f['body/RespInfo/ResultStatus'] !== 'S') out.ack_reason = out.ack_reason || `ResultStatus ${f['body/RespInfo/ResultStatus']}`;
  else if (settings.require_signed_ack && !out.ack_verified) out.ack_reason = out.ack_reason || 'the acknowledgement is not signed';
  else if (out.ack_signed && !out.ack_verified) { /* reason set above */ } else out.acknowledged = true;
  return out;
}
function postNotify(target, body) {
  return lib.postNotify(target, body, {
    headers: (n) => ({ 'Content-Type': 'application/xml; charset=UTF-8', 'Content-Length': n, 'User-Agent': 'mybank-sim' }),
    timeoutMs: settings.notify_timeout_ms, urlName: 'NotifyUrl', httpOnly: true,
  });
}

// ---------------------------------------------------------------------------------------------
// gateway: functions

class BizError extends Error {
  constructor(code, msg, status = 'F') { super(msg); this.code = code; this.status = status; }
}
const need = (f, names) => {
  for (const k of names) if (!present(f[`body/${k}`])) throw new BizError('PARAM_ERROR', `${k} is required`);
};
function amountOf(f, k) {
  const v = f[`body/${k}`];
  if (!/^[1-9][0-9]{0,9}$/.test(v || '')) throw new BizError('PARAM_ERROR', `${k} must be a positive integer (fen)`);
  const n = Number(v);
  if (n > MAX_AMOUNT) throw new BizError('PARAM_ERROR', `${k} must be at most ${MAX_AMOUNT}`);
  return n;
}
const S = (body) => ({ status: 'S', code: '0000', msg: '', body });
const ids = (ctx) => [['MerchantId', ctx.mer.mch_id], ['IsvOrgId', ctx.mer.isv_org_id]];
function orderOf(ctx) {
  const o = orders.get(okey(ctx.mer.mch_id, ctx.f['body/OutTradeNo']));
  if (o) refresh(o);
  return o || null;
}
function tradeFields(o) {
  const paid = o.paid_at != null;
  return [['OutTradeNo', o.out_trade_no], ['OrderNo', o.order_no], ['ChannelType', o.channel_type],
    ['TotalAmount', String(o.total_amount)], ['Currency', 'CNY'],
    ['GmtPayment', paid ? gmt8(o.paid_at) : null], ['PayChannelOrderNo', paid ? o.pay_channel_order_no : null],
    ['OpenId', paid ? o.open_id : null]];
}

function payRule(code) {
  if (code.endsWith('0000')) return { kind: 'fail' };
  if (code.endsWith('8888')) return { kind: 'hold' };
  if (code.endsWith('7777')) return { kind: 'lost' };
  if (code.endsWith('9999')) return { kind: 'paying' };
  const m = /99([1-8])([89])$/.exec(code);
  if (m) return { kind: m[2] === '9' ? 'paid_on_query' : 'fail_on_query', k: Number(m[1]) };
  return { kind: 'ok' };
}
function payAnswer(ctx, o) {
  const st = tradeStatus(o);
  const fields = [...tradeFields(o), ...ids(ctx)];
  if (st === 'succ' || st === 'refunding') return S(fields);
  if (st === 'paying') return { status: 'U', code: 'USER_PAYING', msg: '等待用户输入密码', body: fields };
  if (st === 'cancel') throw new BizError('ORDER_CANCELED', '订单已撤销');
  if (st === 'closed') throw new BizError('ORDER_CLOSED', '订单已关闭');
  throw new BizError(o.fail_code || 'PAY_FAIL', o.fail_reason || '支付失败');
}
function newOrder(ctx, kind, channelType, amount) {
  const f = ctx.f;
  const exp = f['body/ExpireExpress'];
  let expireMin = 60;
  if (present(exp)) {
    if (!/^[0-9]{1,4}$/.test(exp) || Number(exp) < 1 || Number(exp) > 1440) throw new BizError('PARAM_ERROR', 'ExpireExpress must be 1..1440 minutes');
    expireMin = Number(exp);
  }
  const now = Date.now();
  return { seq: ++orderSeq, mch_id: ctx.mer.mch_id, out_trade_no: f['body/OutTradeNo'], fn: ctx.fn, kind,
    channel_type: channelType, total_amount: amount, body: f['body/Body'], attach: f['body/Attach'] || null,
    notify_url: f['body/NotifyUrl'] || null, open_id: f['body/OpenId'] || null, sub_app_id: f['body/SubAppId'] || null,
    auth_code: f['body/AuthCode'] || null, device_ip: f['body/DeviceCreateIp'],
    order_no: `${gmt8(now).slice(0, 8)}${randDigits(16)}`, state: 'paying', created_at: now,
    expire_at: now + scaled(expireMin * 60), queries: 0, refunds: [], notify: [] };
}
function commonCreate(ctx) {
  need(ctx.f, ['OutTradeNo', 'Body', 'TotalAmount', 'Currency', 'ChannelType', 'DeviceCreateIp']);
  const amount = amountOf(ctx.f, 'TotalAmount');
  if (ctx.f['body/Currency'] !== 'CNY') throw new BizError('PARAM_ERROR', 'Currency must be CNY');
  const ct = ctx.f['body/ChannelType'];
  if (!CHANNEL_TYPES.has(ct)) throw new BizError('PARAM_ERROR', 'ChannelType must be ALI, WX, QQ or JD');
  if (tombstones.has(okey(ctx.mer.mch_id, ctx.f['body/OutTradeNo']))) throw new BizError('ORDER_CANCELED', '订单已撤销');
  return { amount, ct };
}

function fnPay(ctx) {
  const { amount, ct } = commonCreate(ctx);
  need(ctx.f, ['AuthCode']);
  const code = ctx.f['body/AuthCode'];
  if (!/^[0-9]{16,24}$/.test(code)) throw new BizError('AUTH_CODE_INVALID', '付款码无效');
  const existing = orderOf(ctx);
  if (existing) {
    if (existing.fn !== FN.pay || existing.total_amount !== amount || existing.auth_code !== code) {
      throw new BizError('OUT_TRADE_NO_USED', '外部交易号已使用');
    }
    return payAnswer(ctx, existing);   // a repeat: the trade as it is now, never charged twice
  }
  const o = newOrder(ctx, 'btoc', ct, amount);
  o.rule = payRule(code);
  orders.set(okey(o.mch_id, o.out_trade_no), o);
  switch (o.rule.kind) {
    case 'fail':
      o.state = 'fail'; o.failed_at = Date.now(); o.fail_code = 'AUTH_CODE_EXPIRE'; o.fail_reason = '付款码已过期';
      throw new BizError('AUTH_CODE_EXPIRE', '付款码已过期');
    case 'hold': return { hold: true };
    case 'lost':
      markPaid(o, 'pay (answer lost)');
      return { status: 'U', code: 'SYSTEM_ERROR', msg: '系统异常，请查询', body: [['OutTradeNo', o.out_trade_no], ...ids(ctx)] };
    case 'ok':
      markPaid(o, 'pay');
      return S([...tradeFields(o), ...ids(ctx)]);
    default:
      return payAnswer(ctx, o); // paying: U
  }
}

function fnPrePay(ctx) {
  const { amount, ct } = commonCreate(ctx);
  need(ctx.f, ['NotifyUrl']);
  if (!/^https?:\/\/\S+$/.test(ctx.f['body/NotifyUrl'])) throw new BizError('PARAM_ERROR', 'NotifyUrl must be an http(s) URL');
  let o = orderOf(ctx);
  if (o) {
    if (o.fn !== FN.prePay || o.total_amount !== amount || o.channel_type !== ct) throw new BizError('OUT_TRADE_NO_USED', '外部交易号已使用');
    const st = tradeStatus(o);
    if (st === 'succ' || st === 'refunding') throw new BizError('ORDER_PAID', '订单已支付');
    if (st === 'closed') throw new BizError('ORDER_CLOSED', '订单已关闭');
  } else {
    o = newOrder(ctx, 'ctob', ct, amount);
    o.token = crypto.randomBytes(12).toString('hex');
    if (o.open_id) {
      o.pay_info = ct === 'WX'
        ? JSON.stringify({ appId: o.sub_app_id || 'wx' + randDigits(16), timeStamp: String(Math.floor(Date.now() / 1000)),
          nonceStr: crypto.randomBytes(8).toString('hex'), package: `prepay_id=wx${randDigits(24)}`, signType: 'RSA',
          paySign: crypto.randomBytes(32).toString('base64') })
        : JSON.stringify({ tradeNO: `${gmt8().slice(0, 8)}2200${randDigits(16)}` });
    } else {
      o.qr_code_url = `${ctx.base}/_sim/qr/${o.token}`;
    }
    orders.set(okey(o.mch_id, o.out_trade_no), o);
    ordersByToken.set(o.token, o);
  }
  return S([['OutTradeNo', o.out_trade_no], ['OrderNo', o.order_no], ['ChannelType', o.channel_type],
    ['TotalAmount', String(o.total_amount)], ['QrCodeUrl', o.qr_code_url || null], ['PayInfo', o.pay_info || null], ...ids(ctx)]);
}

function fnPayQuery(ctx) {
  need(ctx.f, ['OutTradeNo']);
  const o = orderOf(ctx);
  if (!o) throw new BizError('ORDER_NOT_EXIST', '交易不存在');
  o.queries++;
  if (o.state === 'paying' && o.rule && o.rule.k && o.queries >= o.rule.k) {
    if (o.rule.kind === 'paid_on_query') markPaid(o, `payQuery #${o.queries}`);
    else { o.state = 'fail'; o.failed_at = Date.now(); o.fail_reason = '用户取消支付'; }
  }
  return S([...tradeFields(o), ['TradeStatus', tradeStatus(o)], ...ids(ctx)]);
}

function fnPayCancel(ctx) {
  need(ctx.f, ['OutTradeNo']);
  const o = orderOf(ctx);
  const k = okey(ctx.mer.mch_id, ctx.f['body/OutTradeNo']);
  if (!o) {
    // a cancel for a pay whose request may still arrive: remembered, a late pay is refused
    tombstones.set(k, Date.now());
    return S([['OutTradeNo', ctx.f['body/OutTradeNo']], ...ids(ctx)]);
  }
  if (o.state === 'cancel') return S([['OutTradeNo', o.out_trade_no], ['OrderNo', o.order_no], ...ids(ctx)]);
  if (o.refunds.length) throw new BizError('ORDER_STATUS_ERROR', '订单已发生退款，不能撤销');
  if (o.state === 'closed') throw new BizError('ORDER_STATUS_ERROR', '订单已关闭，不能撤销');
  if (o.state === 'succ') o.cancel_refunded = o.total_amount;
  o.state = 'cancel';
  o.canceled_at = Date.now();
  return S([['OutTradeNo', o.out_trade_no], ['OrderNo', o.order_no], ...ids(ctx)]);
}

function fnPayClose(ctx) {
  need(ctx.f, ['OutTradeNo']);
  const o = orderOf(ctx);
  if (!o) throw new BizError('ORDER_NOT_EXIST', '交易不存在');
  if (o.state === 'closed') return S([['OutTradeNo', o.out_trade_no], ['OrderNo', o.order_no], ...ids(ctx)]);
  if (o.state === 'succ') throw new BizError('ORDER_PAID', '订单已支付');
  if (o.kind !== 'ctob' || o.state !== 'paying') throw new BizError('ORDER_STATUS_ERROR', `订单状态[${o.state}]不能关闭，刷卡交易请撤销`);
  o.state = 'closed';
  o.closed_at = Date.now();
  o.close_reason = 'payClose';
  return S([['OutTradeNo', o.out_trade_no], ['OrderNo', o.order_no], ...ids(ctx)]);
}

function refundFields(o, r) {
  return [['OutTradeNo', o.out_trade_no], ['OutRefundNo', r.out_refund_no], ['RefundOrderNo', r.refund_order_no],
    ['RefundAmount', String(r.amount)]];
}
function fnRefund(ctx) {
  need(ctx.f, ['OutTradeNo', 'OutRefundNo', 'RefundAmount']);
  const amount = amountOf(ctx.f, 'RefundAmount');
  const o = orderOf(ctx);
  if (!o) throw new BizError('ORDER_NOT_EXIST', '交易不存在');
  const rk = okey(ctx.mer.mch_id, ctx.f['body/OutRefundNo']);
  const hit = refunds.get(rk);
  if (hit) {
    if (hit.order !== o || hit.refund.amount !== amount) throw new BizError('REFUND_NO_USED', '退款单号已使用');
    return S([...refundFields(o, hit.refund), ...ids(ctx)]);   // idempotent on OutRefundNo
  }
  if (o.state !== 'succ') throw new BizError('TRADE_NOT_PAID', `交易状态[${tradeStatus(o)}]不能退款`);
  if (refundedSum(o) + amount > o.total_amount) throw new BizError('REFUND_AMOUNT_EXCEED', '退款金额超过可退金额');
  const now = Date.now();
  const r = { out_refund_no: ctx.f['body/OutRefundNo'], refund_order_no: `R${gmt8(now).slice(0, 8)}${randDigits(15)}`,
    amount, reason: ctx.f['body/RefundReason'] || null, status: 'refunding', created_at: now,
    settle_at: settings.refund_delay_s >= 0 ? now + scaled(settings.refund_delay_s) : null };
  o.refunds.push(r);
  refunds.set(rk, { order: o, refund: r });
  // asynchronous: accepted (S) without an outcome; refundQuery tells
  return S([...refundFields(o, r), ...ids(ctx)]);
}

function fnRefundQuery(ctx) {
  need(ctx.f, ['OutRefundNo']);
  const hit = refunds.get(okey(ctx.mer.mch_id, ctx.f['body/OutRefundNo']));
  if (!hit) throw new BizError('REFUND_NOT_EXIST', '退款不存在');
  refresh(hit.order);
  const r = hit.refund;
  return S([...refundFields(hit.order, r), ['TradeStatus', r.status],
    ['GmtRefundment', r.refunded_at ? gmt8(r.refunded_at) : null], ...ids(ctx)]);
}

const FUNCTIONS = {
  [FN.pay]: fnPay, [FN.prePay]: fnPrePay, [FN.payQuery]: fnPayQuery, [FN.payCancel]: fnPayCancel,
  [FN.payClose]: fnPayClose, [FN.refund]: fnRefund, [FN.refundQuery]: fnRefundQuery,
};

// ---------------------------------------------------------------------------------------------
// gateway: request handling

function responseXml(rec, head, answer, fl) {
  const h = [['Version', '1.0.0'], ['Appid', head.Appid || ''], ['Function', head.Function || ''],
    ['RespTime', gmt8()], ['RespTimeZone', 'UTC+8'],
    ['ReqMsgId', fl.foreign_msgid ? uuid() : (head.ReqMsgId || '')], ['InputCharset', 'UTF-8'], ['Reserve', ''],
    ['SignType', 'RSA']];
  const body = [['RespInfo', [['ResultStatus', answer.status], ['ResultCode', answer.code], ['ResultMsg', answer.msg || '']]],
    ...(answer.body || [])];
  const doc = documentXml('response', h, body);
  if (fl.unsigned) return doc;
  const signed = dsigSign(doc, bankKey);
  if (!fl.bad_sign) return signed;
  // a well-formed signature over different content: the ResultMsg changed after signing
  return signed.replace('<ResultMsg>', '<ResultMsg>x');
}

/** Parsed request → answer {status, code, msg, body} | {hold:true}. */
function processRequest(rec, text, base) {
  let root;
  try { root = parseXml(text); } catch (e) {
    rec.parse_error = e.message;
    return { answer: { status: 'F', code: 'PARSE_ERROR', msg: `报文解析失败: ${e.message}` }, head: {} };
  }
  let req;
  let f;
  try {
    if (root.local !== 'document' || root.uri) throw new XmlError('the root is not <document>');
    req = child(root, 'request');
    if (!req) throw new XmlError('no <request>');
    f = leaves(req);
  } catch (e) {
    rec.parse_error = e.message;
    return { answer: { status: 'F', code: 'PARSE_ERROR', msg: `报文解析失败: ${e.message}` }, head: {} };
  }
  rec.fields = f;
  const head = { Appid: f['head/Appid'], Function: f['head/Function'], ReqMsgId: f['head/ReqMsgId'] };
  rec.function = head.Function || null;
  rec.req_msg_id = head.ReqMsgId || null;
  rec.mch_id = f['body/MerchantId'] || null;
  rec.out_trade_no = f['body/OutTradeNo'] || null;
  rec.out_refund_no = f['body/OutRefundNo'] || null;
  const fail = (code, msg) => ({ answer: { status: 'F', code, msg, body: [['MerchantId', rec.mch_id || null],
    ['OutTradeNo', rec.out_trade_no], ['OutRefundNo', rec.out_refund_no]] }, head });
  for (const k of ['Version', 'Appid', 'Function', 'ReqTime', 'ReqTimeZone', 'ReqMsgId', 'InputCharset', 'SignType']) {
    if (!present(f[`head/${k}`])) return fail('PARAM_ERROR', `head.${k} is required`);
  }
  if (!has(f, 'head/Reserve')) return fail('PARAM_ERROR', 'head.Reserve is required');
  if (!/^[0-9]{14}$/.test(f['head/ReqTime'])) return fail('PARAM_ERROR', 'ReqTime must be yyyyMMddHHmmss');
  if (settings.max_clock_skew_s > 0) {
    const m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})$/.exec(f['head/ReqTime']);
    const t = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]) - 8 * 3600e3;
    if (Math.abs(Date.now() - t) > settings.max_clock_skew_s * 1000) return fail('REQ_TIME_INVALID', 'ReqTime is too far from now (UTC+8)');
  }
  if (f['head/InputCharset'] !== 'UTF-8' || f['head/SignType'] !== 'RSA') return fail('PARAM_ERROR', 'InputCharset UTF-8 and SignType RSA are required');
  const fn = FUNCTIONS[head.Function];
  if (!fn) return fail('FUNCTION_NOT_SUPPORT', `Function ${head.Function} is not supported`);
  if (!present(rec.mch_id)) return fail('PARAM_ERROR', 'MerchantId is required');
  const mer = merchants.get(rec.mch_id);
  if (!mer) return fail('MERCHANT_NOT_EXIST', `商户${rec.mch_id}不存在`);
  // the signature, before anything is believed
  const v = dsigVerify(text, mer.pub);
  rec.sign_verified = v.ok;
  if (!v.ok) {
    rec.sign_reason = v.reason;
    return fail('SIGN_ERROR', `验签失败: ${v.reason}`);
  }
  if (head.Appid !== mer.appid || f['body/IsvOrgId'] !== mer.isv_org_id) return fail('ISV_NOT_MATCH', 'Appid/IsvOrgId do not match the merchant');
  if (seenMsgIds.has(head.ReqMsgId)) return fail('REQ_MSG_ID_DUPLICATE', 'ReqMsgId 重复');
  seenMsgIds.set(head.ReqMsgId, Date.now());
  if (seenMsgIds.size > 100000) seenMsgIds.delete(seenMsgIds.keys().next().value);
  const ctx = { f, mer, fn: head.Function, base };
  try {
    const out = fn(ctx);
    if (out.hold) return { hold: true, head };
    return { answer: out, head };
  } catch (e) {
    if (e instanceof BizError) {
      const a = fail(e.code, e.message);
      a.answer.status = e.status;
      return a;
    }
    throw e;
  }
}


const XML_TYPE = 'application/xml; charset=UTF-8';

function hold(res, rec) {
  rec.held = true;
  heldResponses.add(res);
  res.on('close', () => { heldResponses.delete(res); rec.held_closed_at = iso(Date.now()); });
}
const httpErrorPage = (code) => lib.httpErrorPage(code, 'Tengine');
function logRequest(rec) {
  requestLog.push(rec);
  if (requestLog.length > REQUEST_LOG_SIZE) requestLog.splice(0, requestLog.length - REQUEST_LOG_SIZE);
}

async function handleGateway(req, res, url) {
  const rec = { id: ++requestSeq, at: Date.now(), method: req.method, path: url.pathname, remote: req.socket.remoteAddress,
    bytes: 0, function: null, req_msg_id: null, mch_id: null, out_trade_no: null, out_refund_no: null,
    sign_verified: null, body: null, fields: null, faults: [], held: false, response: null };
  logRequest(rec);
  if (req.method !== 'POST') {
    req.resume();
    rec.response = { http_status: 405 };
    return send(res, 405, 'text/plain', 'POST only\n');
  }
  const { buf, size, tooLarge } = await readBody(req, MAX_BODY);
  rec.bytes = size;
  if (tooLarge) {
    rec.response = { http_status: 413 };
    return send(res, 413, 'text/html', httpErrorPage(413));
  }
  let text = null;
  try { text = new TextDecoder('utf-8', { fatal: true }).decode(buf); } catch (e) { rec.parse_error = 'not UTF-8'; }
  rec.body = text;
  // the Function for fault filters: a cheap look before the parse
  const fnGuess = text && (/<Function>([^<]*)<\/Function>/.exec(text) || [])[1];
  const fl = combineFaults(takeFaults('request', fnGuess || null));
  rec.faults = fl.ids;
  if (fl.latency_ms) await sleep(fl.latency_ms);
  if (fl.timeout && !fl.timeout.processed) return hold(res, rec);
  if (fl.http_status && !fl.http_status.processed) {
    rec.response = { http_status: fl.http_status.code };
    return send(res, fl.http_status.code, 'text/html', httpErrorPage(fl.http_status.code));
  }
  if (fl.result && !fl.result.processed) {
    const r = { answer: { status: fl.result.status, code: 'SYSTEM_ERROR', msg: '系统繁忙(注入)' }, head: {} };
    try {
      const f = leaves(child(parseXml(text), 'request'));
      r.head = { Appid: f['head/Appid'], Function: f['head/Function'], ReqMsgId: f['head/ReqMsgId'] };
      r.answer.body = [['MerchantId', f['body/MerchantId'] || null], ['OutTradeNo', f['body/OutTradeNo'] || null],
        ['OutRefundNo', f['body/OutRefundNo'] || null]];
      Object.assign(rec, { function: r.head.Function, mch_id: f['body/MerchantId'] || null, out_trade_no: f['body/OutTradeNo'] || null });
    } catch (_) { /* answered without echo */ }
    return finishAnswer(res, rec, r, fl);
  }
  let r;
  if (text === null) r = { answer: { status: 'F', code: 'PARSE_ERROR', msg: '报文不是UTF-8' }, head: {} };
  else {
    try { r = processRequest(rec, text, `http://${req.headers.host || `${opts.host}:${actualPort}`}`); } catch (e) {
      process.stderr.write(`mybank-sim: internal error: ${e.stack}\n`);
      r = { answer: { status: 'U', code: 'SYSTEM_ERROR', msg: 'internal error' }, head: {} };
    }
  }
  if (r.hold || fl.timeout) return hold(res, rec);
  if (fl.result) {
    // carried out, but the answer says U/F
    r.answer = { status: fl.result.status, code: 'SYSTEM_ERROR', msg: '系统繁忙(注入)', body: r.answer.body };
  }
  return finishAnswer(res, rec, r, fl);
}

function finishAnswer(res, rec, r, fl) {
  const xml = responseXml(rec, r.head, r.answer, fl);
  const tsPair = (r.answer.body || []).find((p) => p[0] === 'TradeStatus');
  const meta = { result_status: r.answer.status, result_code: r.answer.code, result_msg: r.answer.msg,
    trade_status: tsPair ? tsPair[1] : null, body: xml };
  if (fl.http_status) {
    rec.response = Object.assign(meta, { http_status: fl.http_status.code, processed: true });
    return send(res, fl.http_status.code, 'text/html', httpErrorPage(fl.http_status.code));
  }
  if (fl.garbled) {
    const body = fl.garbled.body != null ? fl.garbled.body : xml.slice(0, Math.floor(xml.length / 2)) + '\ufffd#garbled';
    rec.response = Object.assign(meta, { http_status: 200, garbled: true, body });
    return send(res, 200, XML_TYPE, body);
  }
  rec.response = Object.assign(meta, { http_status: 200, bad_sign: fl.bad_sign || undefined,
    unsigned: fl.unsigned || undefined, foreign_msgid: fl.foreign_msgid || undefined });
  rec.duration_ms = Date.now() - rec.at;
  send(res, 200, XML_TYPE, xml);
}

// ---------------------------------------------------------------------------------------------
// control API (/_sim/...)


const readJson = (req) => lib.readJson(req, MAX_CONTROL_BODY);

function lookupOrder(p) {
  let o = null;
  if (present(p.token)) o = ordersByToken.get(String(p.token)) || null;
  else {
    if (!present(p.mch_id) || !present(p.out_trade_no)) throw new HttpError(400, 'give mch_id and out_trade_no (or token)');
    o = orders.get(okey(String(p.mch_id), String(p.out_trade_no))) || null;
  }
  if (!o) throw new HttpError(404, 'order not found');
  refresh(o);
  return o;
}

function settleRefunds(p) {
  const status = p.status == null ? 'succ' : String(p.status);
  if (!['succ', 'fail', 'refunding'].includes(status)) throw new HttpError(400, 'status must be succ, fail or refunding');
  let targets = [];
  if (present(p.out_refund_no)) {
    if (!present(p.mch_id)) throw new HttpError(400, 'give mch_id with out_refund_no');
    const hit = refunds.get(okey(String(p.mch_id), String(p.out_refund_no)));
    if (!hit) throw new HttpError(404, 'refund not found');
    targets = [hit];
  } else if (present(p.out_trade_no)) {
    const o = lookupOrder(p);
    targets = o.refunds.filter((r) => r.status === 'refunding').map((r) => ({ order: o, refund: r }));
  } else {
    for (const o of orders.values()) for (const r of o.refunds) if (r.status === 'refunding') targets.push({ order: o, refund: r });
  }
  for (const { order, refund } of targets) {
    refresh(order);
    refund.status = status;
    refund.settled_by = '/_sim/refund/settle';
    refund.refunded_at = status === 'succ' ? Date.now() : null;
    refund.settle_at = null;
  }
  return targets.map(({ order, refund }) => ({ mch_id: order.mch_id, out_trade_no: order.out_trade_no,
    out_refund_no: refund.out_refund_no, refund_order_no: refund.refund_order_no, status: refund.status }));
}

// ---------------------------------------------------------------------------------------------
// reconciliation bill (served as GET /_sim/bill)
//
// No public source states MyBank's reconciliation file format (docs/channels/mybank.md "Bill"), so
// paygate defined a plain one in the terms of the trade API, and this is it: UTF-8 CSV, CRLF; the
// titles TradeTime,MerchantId,OutTradeNo,OrderNo,TradeType,OutRefundNo,RefundOrderNo,Amount,
// Currency,TradeStatus; one line per payment (TradeType PAY, on the GMT+8 day it was paid; its
// TradeStatus now: succ, refunding, or cancel for one reversed after payment) and per refund
// (REFUND, on the day it succeeded, TradeStatus succ); Amount in integer fen like TotalAmount /
// RefundAmount; then TotalCount,PayCount,PayAmount,RefundCount,RefundAmount and one line of
// values: all lines; the paid payments (succ or refunding) and their sum; the refunds and theirs.

const MB_BILL_COLUMNS = ['TradeTime', 'MerchantId', 'OutTradeNo', 'OrderNo', 'TradeType', 'OutRefundNo', 'RefundOrderNo',
  'Amount', 'Currency', 'TradeStatus'];
const MB_BILL_SUMMARY = ['TotalCount', 'PayCount', 'PayAmount', 'RefundCount', 'RefundAmount'];
/** "yyyy-MM-dd HH:mm:ss" in GMT+8 */
const billTime = (ms) => new Date(ms + 8 * 3600e3).toISOString().slice(0, 19).replace('T', ' ');

function tradeBill(mchId, day) {
  const rows = [];
  for (const o of orders.values()) {
    if (o.mch_id !== mchId) continue;
    refresh(o);
    if (o.paid_at && billTime(o.paid_at).slice(0, 10) === day) {
      const st = tradeStatus(o);
      rows.push({ at: o.paid_at, vals: [billTime(o.paid_at), o.mch_id, o.out_trade_no, o.order_no, 'PAY', '', '', o.total_amount,
        'CNY', st === 'refunding' ? 'succ' : st], pay: st === 'succ' || st === 'refunding' ? o.total_amount : null });
    }
    for (const r of o.refunds) {
      if (r.status !== 'succ' || !r.refunded_at || billTime(r.refunded_at).slice(0, 10) !== day) continue;
      rows.push({ at: r.refunded_at, vals: [billTime(r.refunded_at), o.mch_id, o.out_trade_no, o.order_no, 'REFUND',
        r.out_refund_no, r.refund_order_no, r.amount, 'CNY', 'succ'], refund: r.amount });
    }
  }
  rows.sort((a, b) => a.at - b.at);
  const pays = rows.filter((r) => r.pay != null);
  const refs = rows.filter((r) => r.refund != null);
  const sum = (list, k) => list.reduce((s, r) => s + r[k], 0);
  const csv = (vals) => vals.map((v) => { const t = String(v); return /[",\r\n]/.test(t) ? `"${t.replace(/"/g, '""')}"` : t; }).join(',');
  return [MB_BILL_COLUMNS.join(','), ...rows.map((r) => csv(r.vals)), MB_BILL_SUMMARY.join(','),
    csv([rows.length, pays.length, sum(pays, 'pay'), refs.length, sum(refs, 'refund')])].join('\r\n') + '\r\n';
}

function reset() {
  generation++;
  for (const t of notifyTimers) clearTimeout(t);
  notifyTimers.clear();
  for (const r of heldResponses) r.destroy();
  heldResponses.clear();
  orders.clear(); ordersByToken.clear(); refunds.clear(); tombstones.clear(); seenMsgIds.clear();
  requestLog = [];
  faults = [];
}

function payPage(o, message) {
  const payable = o.state === 'paying';
  return `<!doctype html><html><head><meta charset="utf-8"><title>mybank-sim pay</title></head><body>` +
    `<h2>MyBank simulator</h2>${message ? `<p><b>${escHtml(message)}</b></p>` : ''}` +
    `<p>merchant ${escHtml(o.mch_id)}<br>order ${escHtml(o.out_trade_no)}<br>${escHtml(o.body)}</p>` +
    `<p>¥ ${(o.total_amount / 100).toFixed(2)} (${escHtml(o.channel_type)}) — ${escHtml(tradeStatus(o))}</p>` +
    (payable ? `<form method="get" action="/_sim/pay"><input type="hidden" name="token" value="${escHtml(o.token)}"><button>Pay</button></form>` : '') +
    '</body></html>';
}

async function handleControl(req, res, url) {
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const route = parts[1] || '';
  const m = req.method;
  const q = Object.fromEntries(url.searchParams);
  try {
    if (route === 'health' && m === 'GET') {
      return sendJson(res, 200, { ok: true, name: 'mybank-sim', uptime_s: (Date.now() - startedAt) / 1000,
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
    if (route === 'bank') {
      if (m === 'GET') return sendJson(res, 200, bankView());
      if (m === 'POST') {
        const b = await readJson(req);
        try { setBankKey(b.private_key); } catch (e) { throw new HttpError(400, e.message); }
        return sendJson(res, 200, bankView());
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
        try { list = registerMerchants(Array.isArray(body) ? body : (body.merchants || body)); } catch (e) { throw new HttpError(400, e.message); }
        return sendJson(res, 200, list.map(merchantView));
      }
      if (m === 'DELETE' && parts.length === 3) {
        if (!merchants.delete(parts[2])) throw new HttpError(404, 'merchant not found');
        return sendJson(res, 200, { ok: true });
      }
    }
    if (route === 'reset' && m === 'POST') { reset(); return sendJson(res, 200, { ok: true }); }
    if (route === 'pay' && (m === 'POST' || m === 'GET')) {
      const p = m === 'POST' ? await readJson(req) : q;
      const o = lookupOrder(p);
      if (o.state !== 'paying') {
        if (m === 'GET') return send(res, 200, 'text/html; charset=UTF-8', payPage(o, `order is ${o.state}`));
        throw new HttpError(409, `order is ${o.state}, only paying can be paid`);
      }
      markPaid(o, '/_sim/pay');
      if (m === 'GET') return send(res, 200, 'text/html; charset=UTF-8', payPage(o, 'Paid.'));
      return sendJson(res, 200, orderView(o));
    }
    if (route === 'fail' && m === 'POST') {
      const p = await readJson(req);
      const o = lookupOrder(p);
      if (o.state !== 'paying' || o.kind !== 'btoc') throw new HttpError(409, `order is ${o.state} (${o.kind}), only a paying b-to-c trade can fail`);
      o.state = 'fail'; o.failed_at = Date.now(); o.fail_reason = p.reason ? String(p.reason) : '用户取消支付';
      return sendJson(res, 200, orderView(o));
    }
    if (route === 'notify' && m === 'POST') {
      const o = lookupOrder(await readJson(req));
      if (!o.paid_at) throw new HttpError(409, `order is ${o.state}, never paid`);
      if (!o.notify_url) throw new HttpError(409, 'order has no NotifyUrl');
      startNotify(o, 'resend');
      return sendJson(res, 200, orderView(o));
    }
    if (route === 'refund' && parts[2] === 'settle' && m === 'POST') {
      return sendJson(res, 200, { settled: settleRefunds(await readJson(req)) });
    }
    if (route === 'sign' && m === 'POST') {
      // signs any document with the bank key (tests: notifications crafted by hand)
      const b = await readJson(req);
      try { return sendJson(res, 200, { xml: dsigSign(String(b.xml || ''), bankKey) }); } catch (e) { throw new HttpError(400, e.message); }
    }
    if (route === 'verify' && m === 'POST') {
      const b = await readJson(req);
      let key;
      try { key = present(b.public_key) ? publicKeyOf(b.public_key, 'public_key') : crypto.createPublicKey(bankKey); } catch (e) { throw new HttpError(400, e.message); }
      const v = dsigVerify(String(b.xml || ''), key);
      return sendJson(res, 200, { ok: v.ok, reason: v.reason || null });
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
    if (route === 'orders' && m === 'GET') {
      if (parts.length === 4) {
        const o = orders.get(okey(parts[2], parts[3]));
        if (!o) throw new HttpError(404, 'order not found');
        return sendJson(res, 200, orderView(o));
      }
      if (parts.length === 2) {
        const limit = Math.max(1, Math.min(10000, Number(q.limit) || 100));
        return sendJson(res, 200, [...orders.values()].slice(-limit).reverse().map((o) => ({ mch_id: o.mch_id,
          out_trade_no: o.out_trade_no, function: o.fn, trade_status: tradeStatus(o), total_amount: o.total_amount,
          created_at: iso(o.created_at) })));
      }
    }
    if (route === 'bill' && m === 'GET') {
      // GET /_sim/bill?mch_id=…&date=YYYY-MM-DD|YYYYMMDD → that GMT+8 day's reconciliation bill
      const d = String(q.date || '');
      const day = /^\d{8}$/.test(d) ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : d;
      if (!/^\d{4}-\d{2}-\d{2}$/.test(day)) throw new HttpError(400, 'date=YYYY-MM-DD is required');
      if (!present(q.mch_id)) throw new HttpError(400, 'mch_id is required');
      if (!merchants.has(String(q.mch_id))) throw new HttpError(404, 'merchant not found');
      return send(res, 200, 'text/csv; charset=UTF-8', tradeBill(String(q.mch_id), day));
    }
    if (route === 'requests' && m === 'GET') {
      const limit = Math.max(1, Math.min(REQUEST_LOG_SIZE, Number(q.limit) || 50));
      return sendJson(res, 200, requestLog.slice(-limit).reverse().map((r) => Object.assign({}, r, { at: iso(r.at) })));
    }
    if (route === 'qr' && m === 'GET' && parts.length === 3) {
      const o = ordersByToken.get(parts[2]);
      if (!o) throw new HttpError(404, 'unknown token');
      return send(res, 200, 'text/html; charset=UTF-8', payPage(o));
    }
    throw new HttpError(404, `no such control endpoint: ${m} ${url.pathname}`);
  } catch (e) {
    if (e instanceof HttpError) return sendJson(res, e.code, { error: e.message });
    process.stderr.write(`mybank-sim: control error: ${e.stack}\n`);
    return sendJson(res, 500, { error: e.message });
  }
}

// ---------------------------------------------------------------------------------------------
// server

function handler(req, res) {
  let url;
  try { url = new URL(req.url, 'http://sim'); } catch (e) { return send(res, 400, 'text/plain', 'bad url\n'); }
  if (url.pathname === '/_sim' || url.pathname.startsWith('/_sim/')) {
    handleControl(req, res, url);
    return;
  }
  if (req.method === 'GET' && url.pathname === '/') {
    return send(res, 200, 'text/plain; charset=UTF-8', 'mybank-sim: POST documents to any other path; control API under /_sim/ (test/sim/README.md)\n');
  }
  handleGateway(req, res, url).catch((e) => {
    process.stderr.write(`mybank-sim: gateway error: ${e.stack}\n`);
    if (!res.headersSent) send(res, 500, 'text/plain', 'internal error\n');
  });
}

if (opts.config) loadConfig(opts.config);

let actualPort = opts.port;
lib.serve({ name: 'mybank', opts, handler, timers: notifyTimers, held: heldResponses, onListen: (p) => { actualPort = p; } });
