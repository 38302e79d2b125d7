'use strict';
/*
 * paygate.js — test helpers on top of harness.js: a signing merchant client,
 * admin set-up calls, and channel simulators as child processes.
 *
 * The merchant signature is computed here with node's crypto, independently
 * of the daemon's C code (docs/api.md):
 *   hex(HMAC-SHA256(secret, METHOD\nPATH_AND_QUERY\nTS\nNONCE\nBODY))
 */
const crypto = require('node:crypto');
const path = require('node:path');
const { spawn } = require('node:child_process');
const h = require('./harness');

const ROOT = path.resolve(__dirname, '..', '..');

function signRequest(secret, method, pathAndQuery, ts, nonce, body) {
  return crypto.createHmac('sha256', secret)
    .update(`${method}\n${pathAndQuery}\n${ts}\n${nonce}\n${body}`).digest('hex');
}

/* A merchant API client. opts.ts / opts.nonce / opts.secret override what is
 * sent (for replay and forgery tests). */
function merchantClient(gw, merchantId, secret) {
  return async function call(method, p, bodyObj, opts = {}) {
    const body = bodyObj === undefined ? '' : (typeof bodyObj === 'string' ? bodyObj : JSON.stringify(bodyObj));
    const ts = opts.ts ?? Math.floor(Date.now() / 1000);
    const nonce = opts.nonce ?? crypto.randomBytes(12).toString('hex');
    const sig = signRequest(opts.secret ?? secret, method, p, ts, nonce, body);
    const headers = {
      'X-Merchant-Id': merchantId, 'X-Timestamp': String(ts), 'X-Nonce': nonce, 'X-Signature': sig,
    };
    if (body) headers['Content-Type'] = 'application/json';
    const r = await h.request({ port: gw.port, method, path: p, headers, body: body || undefined, timeoutMs: opts.timeoutMs ?? 20000 });
    r.nonce = nonce;
    r.ts = ts;
    return r;
  };
}

async function admin(gw, method, p, body) {
  const r = await h.request({
    port: gw.adminPort, method, path: p,
    headers: { Authorization: `Bearer ${gw.adminToken}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status !== 200) throw new Error(`admin ${method} ${p}: ${r.status} ${r.body}`);
  return r.json;
}

/* Creates a merchant, a shop, sub-merchants and bindings for every method.
 * subs: [{channel, mch_id, key, ...}] → ids bound in order. */
async function setupShop(gw, { merchant = 'm1', secret = 'merchant-secret-0123456789', shop = 's1', subs, methods }) {
  await admin(gw, 'PUT', `/admin/merchants/${merchant}`, { name: `Merchant ${merchant}`, secret });
  await admin(gw, 'PUT', `/admin/shops/${shop}`, { merchant_id: merchant, name: `Shop ${shop}` });
  const ids = [];
  for (const s of subs) ids.push((await admin(gw, 'POST', '/admin/sub-merchants', s)).result.id);
  const byChannel = {};
  subs.forEach((s, i) => { (byChannel[s.channel] ||= []).push(ids[i]); });
  const bindings = Object.entries(byChannel).map(([channel, sub_merchant_ids]) => ({ channel, sub_merchant_ids }));
  for (const m of methods || ['wechat_qr', 'wechat_jsapi', 'alipay_qr', 'alipay_jsapi', 'barcode']) {
    await admin(gw, 'PUT', `/admin/shops/${shop}/bindings/${m}`, bindings);
  }
  return { merchant, secret, shop, subIds: ids, call: merchantClient(gw, merchant, secret) };
}

/* Starts a simulator (test/sim/<name>.js) on a free port (or opts.port). */
async function startSim(name, args = [], opts = {}) {
  const port = opts.port ?? await h.freePort();
  const proc = spawn(process.execPath, [path.join(ROOT, 'test', 'sim', `${name}.js`), '--port', String(port), ...args], {
    cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout.on('data', (d) => { out += d; });
  proc.stderr.on('data', (d) => { out += d; });
  const exited = new Promise((r) => proc.on('exit', r));
  await h.waitFor(async () => {
    if (proc.exitCode !== null) throw new Error(`${name} simulator exited: ${out}`);
    try {
      const r = await h.request({ port, path: '/_sim/health', timeoutMs: 1000 });
      return r.status === 200;
    } catch (_) { return false; }
  }, 15000);
  const sim = {
    port,
    url: `http://127.0.0.1:${port}`,
    logs: () => out,
    async ctl(method, p, body) {
      const r = await h.request({
        port, method, path: p,
        headers: { 'Content-Type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return r;
    },
    async stop() {
      try { proc.kill('SIGTERM'); } catch (_) { /* gone */ }
      await exited;
    },
  };
  process.on('exit', () => { try { proc.kill('SIGKILL'); } catch (_) { /* gone */ } });
  return sim;
}

module.exports = { signRequest, merchantClient, admin, setupShop, startSim };
