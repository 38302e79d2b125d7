'use strict';
/*
 * The WeChat Pay API v3 channel (channels/wechatpay) end to end, on a real
 * PostgreSQL and Redis, proven against an INDEPENDENT implementation: the
 * wechatpay-axios-plugin npm package (test/package.json; its Rsa, Formatter
 * and Aes helpers and its axios client), with keys generated here.
 *
 *   1. the package's own client against test/sim/wechatpay.js: the simulator
 *      speaks the protocol the package speaks (requests it signs are
 *      accepted; answers the simulator signs pass the package's verifier);
 *   2. merchant M2's calls go to a responder written with the package's
 *      helpers only: it checks the module's Authorization header with
 *      Rsa.verify(Formatter.request(…)), signs its answers with
 *      Rsa.sign(Formatter.response(…)) under a certificate (openssl, from a
 *      key generated here) or a PUB_KEY_ID public key, and seals
 *      notifications with Aes.AesGcm.encrypt — the module must verify and
 *      decrypt them (and refuse forgeries);
 *   3. merchant M1's calls go to the simulator: c-to-b native and JSAPI
 *      paid by notification (alternately signed with the certificate and
 *      the public key), codepay success / USERPAYING polled until paid /
 *      USERPAYING reversed (never before 15 s, scaled) / declined, refund and
 *      refund query, close, a forged answer left UNKNOWN, a forged
 *      notification refused;
 *   4. `paygated channel notify-verify` verifies a notification captured
 *      from the simulator, and rejects it once tampered with.
 * Schedules are compressed: tasks.time_scale and the simulator's
 * --time-scale are both 0.01 (WeChat's 10 s poll = 100 ms, 15 s = 150 ms).
 * The daemon loads the module from a private channels directory holding a
 * copy of build/asan/channels/wechatpay.so, so other modules being worked on
 * cannot disturb it.
 */
const test = require('node:test');
const assert = require('node:assert');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');
const { execFileSync } = require('node:child_process');
const { Wechatpay, Rsa, Formatter, Aes } = require('wechatpay-axios-plugin');
const h = require('../lib/harness');
const pg = require('../lib/paygate');

const SCALE = 0.01;
const APPID = 'wxd678efh567hg6787';
const M1 = '1900000109';      // served by the simulator
const M2 = '1900000209';      // served by the responder built from the npm package
let services, sim, gw, router, shop1, shop2, tmp, plat, soPath;
const keys = {};              // generated here

const psql = (sql) => services.pg.query(sql);
const pem = (k, type) => k.export(type === 'private' ? { type: 'pkcs8', format: 'pem' } : { type: 'spki', format: 'pem' });
const rsaPair = () => crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const rsaPairAsync = () => new Promise((resolve, reject) => crypto.generateKeyPair('rsa', { modulusLength: 2048 },
  (e, publicKey, privateKey) => (e ? reject(e) : resolve({ publicKey, privateKey }))));
const randKey = () => crypto.randomBytes(24).toString('base64').replace(/[^A-Za-z0-9]/g, 'x').slice(0, 32);

let seq = 0;
const otn = (p) => `${p}${Date.now().toString(36)}${seq++}`;

async function order(tradeNo) {
  return (await pg.admin(gw, 'GET', `/admin/orders/${tradeNo}`)).result;
}
async function waitStatus(tradeNo, status, ms = 15000) {
  return h.waitFor(async () => {
    const o = await order(tradeNo);
    return o.order.status === status ? o : null;
  }, ms);
}
const simRequests = async (filter) => (await sim.ctl('GET', '/_sim/requests?limit=1000')).json.filter(filter);

/* ------------------------------------------------------------------ */
/* the responder for M2, written with the npm package's helpers only  */

const fake = {
  signWith: 'pubkey',        // 'pubkey' | 'cert' | 'rogue'
  seen: [],                  // every request: {method, url, auth, verified, body}
  trades: new Map(),         // out_trade_no -> {total, state}
};

function parseAuth(v) {
  const m = /^WECHATPAY2-SHA256-RSA2048 (.*)$/.exec(v || '');
  if (!m) return null;
  const out = {};
  for (const kv of m[1].split(',')) {
    const i = kv.indexOf('=');
    out[kv.slice(0, i).trim()] = kv.slice(i + 1).trim().replace(/^"|"$/g, '');
  }
  return out;
}

/* Answers signed as WeChat Pay would, by Rsa.sign(Formatter.response(…)). */
function fakeSend(res, status, obj) {
  const body = obj === undefined ? '' : JSON.stringify(obj);
  const ts = Formatter.timestamp();
  const nonce = Formatter.nonce();
  const signer = fake.signWith === 'cert' ? { key: keys.certPriv, serial: keys.certSerial }
    : fake.signWith === 'rogue' ? { key: keys.roguePriv, serial: keys.pubId }
      : { key: keys.pubPriv, serial: keys.pubId };
  const headers = {
    'Wechatpay-Timestamp': String(ts), 'Wechatpay-Nonce': nonce, 'Wechatpay-Serial': signer.serial,
    'Wechatpay-Signature': Rsa.sign(Formatter.response(ts, nonce, body), signer.key),
  };
  if (body) headers['Content-Type'] = 'application/json';
  res.writeHead(status, headers);
  res.end(body);
}

function fakeHandle(req, res, body) {
  const a = parseAuth(req.headers.authorization);
  // the package verifies the module's request signature
  const verified = !!a && Rsa.verify(Formatter.request(req.method, req.url, a.timestamp, a.nonce_str, req.method === 'GET' ? '' : body),
    a.signature, keys.m2Pub);
  fake.seen.push({ method: req.method, url: req.url, auth: a, verified, body, headers: req.headers });
  if (!verified) { res.writeHead(401, { 'Content-Type': 'application/json' }); res.end('{"code":"SIGN_ERROR","message":"签名错误"}'); return; }
  const u = new URL(req.url, 'http://x');
  let m;
  if (req.method === 'POST' && (u.pathname === '/v3/pay/transactions/native' || u.pathname === '/v3/pay/transactions/jsapi')) {
    const j = JSON.parse(body);
    fake.trades.set(j.out_trade_no, { total: j.amount.total, state: 'NOTPAY' });
    return fakeSend(res, 200, u.pathname.endsWith('native') ? { code_url: `weixin://wxpay/bizpayurl?pr=${j.out_trade_no.slice(-9)}` }
      : { prepay_id: `wx${Date.now()}fake${j.out_trade_no.slice(-6)}` });
  }
  if (req.method === 'GET' && (m = /^\/v3\/pay\/transactions\/out-trade-no\/([^/]+)$/.exec(u.pathname))) {
    const t = fake.trades.get(m[1]);
    if (!t) return fakeSend(res, 404, { code: 'ORDER_NOT_EXIST', message: '订单不存在' });
    return fakeSend(res, 200, { appid: APPID, mchid: M2, out_trade_no: m[1], trade_state: t.state, trade_state_desc: t.state,
      amount: { total: t.total, currency: 'CNY' } });
  }
  if (req.method === 'POST' && /\/close$/.test(u.pathname)) return fakeSend(res, 204);
  return fakeSend(res, 404, { code: 'NOT_FOUND', message: 'no such API' });
}

/* The module's base_url: M2's calls to the responder, everything else to the simulator. */
function startRouter() {
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (d) => chunks.push(d));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const a = parseAuth(req.headers.authorization);
      if (a && a.mchid === M2) return fakeHandle(req, res, body);
      const p = http.request({ host: '127.0.0.1', port: sim.port, method: req.method, path: req.url, headers: req.headers }, (up) => {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
      });
      p.on('error', () => { if (!res.headersSent) { res.writeHead(502); res.end(); } else res.destroy(); });
      p.end(body);
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
  })));
}

/* A notification for M2, sealed and signed with the package's Aes and Rsa helpers. */
function sdkNotification(resource, { signKey = keys.pubPriv, serial = keys.pubId, apiv3 = keys.m2Apiv3, ts } = {}) {
  const nonce = Formatter.nonce(12);
  const ciphertext = Aes.AesGcm.encrypt(JSON.stringify(resource), apiv3, nonce, 'transaction');
  const body = JSON.stringify({ id: crypto.randomUUID(), create_time: '2024-01-01T12:00:00+08:00', resource_type: 'encrypt-resource',
    event_type: 'TRANSACTION.SUCCESS', summary: '支付成功',
    resource: { original_type: 'transaction', algorithm: 'AEAD_AES_256_GCM', ciphertext, associated_data: 'transaction', nonce } });
  const t = String(ts || Formatter.timestamp());
  const n = Formatter.nonce();
  return { body, headers: { 'Content-Type': 'application/json', 'Wechatpay-Timestamp': t, 'Wechatpay-Nonce': n, 'Wechatpay-Serial': serial,
    'Wechatpay-Signature': Rsa.sign(Formatter.response(t, n, body), signKey), 'Wechatpay-Signature-Type': 'WECHATPAY2-SHA256-RSA2048' } };
}

/* ------------------------------------------------------------------ */

test.before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'paygate-wx-'));
  // keys generated by the test: two merchants, a "platform certificate", a "WeChat Pay public key", a rogue key
  // (the services and the simulator start meanwhile)
  const started = Promise.all([h.startServices(), pg.startSim('wechatpay', ['--time-scale', String(SCALE)])]);
  started.catch(() => {}); // awaited below; not an unhandled rejection meanwhile
  const [m1, m2, cert, pub, rogue] = await Promise.all([1, 2, 3, 4, 5].map(rsaPairAsync));
  Object.assign(keys, {
    m1Priv: pem(m1.privateKey, 'private'), m1Pub: pem(m1.publicKey), m1Serial: crypto.randomBytes(20).toString('hex').toUpperCase(),
    m2Priv: pem(m2.privateKey, 'private'), m2Pub: pem(m2.publicKey), m2Serial: crypto.randomBytes(20).toString('hex').toUpperCase(),
    m1Apiv3: randKey(), m2Apiv3: randKey(),
    certPriv: pem(cert.privateKey, 'private'), pubPriv: pem(pub.privateKey, 'private'), pubPem: pem(pub.publicKey),
    roguePriv: pem(rogue.privateKey, 'private'),
    pubId: `PUB_KEY_ID_0119000002${crypto.randomInt(1e9).toString().padStart(9, '0')}000000000000001`,
    certSerial: '7' + crypto.randomBytes(19).toString('hex').toUpperCase() + 'A',
  });
  keys.certSerial = keys.certSerial.slice(0, 40);
  fs.writeFileSync(path.join(tmp, 'cert.key'), keys.certPriv);
  execFileSync('openssl', ['req', '-x509', '-new', '-key', path.join(tmp, 'cert.key'), '-sha256', '-days', '2',
    '-set_serial', `0x${keys.certSerial}`, '-subj', '/C=CN/O=Tenpay.com/OU=Tenpay.com CA Center/CN=Tenpay.com Root CA',
    '-out', path.join(tmp, 'cert.pem')], { stdio: 'ignore' });
  keys.certPem = fs.readFileSync(path.join(tmp, 'cert.pem'), 'utf8');

  [services, sim] = await started;
  plat = (await sim.ctl('GET', '/_sim/platform')).json;
  let r = await sim.ctl('POST', '/_sim/merchants', { mch_id: M1, appid: APPID, apiv3_key: keys.m1Apiv3,
    merchant_public_key: keys.m1Pub, merchant_serial: keys.m1Serial });
  assert.equal(r.status, 200, r.body);
  r = await sim.ctl('POST', '/_sim/settings', { notify_sign_with: 'alternate', refund_delay_s: -1 });
  assert.equal(r.status, 200, r.body);
  router = await startRouter();

  // a private channels directory with just this module
  const chdir = path.join(tmp, 'channels');
  fs.mkdirSync(chdir, { mode: 0o755 });
  soPath = path.join(h.ROOT, 'build', 'asan', 'channels', 'wechatpay.so');
  fs.copyFileSync(soPath, path.join(chdir, 'wechatpay.so'));
  fs.chmodSync(path.join(chdir, 'wechatpay.so'), 0o755);

  gw = await h.startPaygated({
    services,
    config: {
      api: { min_expire_s: 1 },
      tasks: { time_scale: SCALE, tick_ms: 20 },
      channels: {
        dir: chdir,
        call_timeout_ms: 2000,
        settings: {
          wechatpay: {
            base_url: router.url,
            // both kinds of platform key, as during WeChat's switch: the simulator's and the test's
            platform_keys: [
              { key: plat.certificate.pem },
              { serial: plat.public_key.id, key: plat.public_key.pem },
              { key: keys.certPem },
              { serial: keys.pubId, key: keys.pubPem },
            ],
          },
        },
      },
    },
  });
  const sub = (mch, priv, apiv3, serial) => ({ channel: 'wechatpay', mch_id: mch, app_id: APPID, key: apiv3, private_key: priv,
    extra: { serial_no: serial } });
  const methods = ['wechat_qr', 'wechat_jsapi', 'barcode'];
  shop1 = await pg.setupShop(gw, { shop: 's1', subs: [sub(M1, keys.m1Priv, keys.m1Apiv3, keys.m1Serial)], methods });
  shop2 = await pg.setupShop(gw, { shop: 's2', subs: [sub(M2, keys.m2Priv, keys.m2Apiv3, keys.m2Serial)], methods });
});

test.after(async () => {
  if (gw) {
    const r = await gw.stop();
    assert.equal(r.code, 0, `paygated exit status\n${gw.logs().slice(-3000)}`);
    assert.doesNotMatch(gw.logs(), /AddressSanitizer|LeakSanitizer|runtime error/);
  }
  if (router) await router.close();
  if (sim) await sim.stop();
  if (services) await services.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/* ------------------------------------------------------------------ */

test('the simulator speaks the package\'s protocol (its axios client, both platform keys)', async () => {
  const { privateKey, publicKey } = rsaPair();
  const mch = '1900000309';
  await sim.ctl('POST', '/_sim/merchants', { mch_id: mch, appid: APPID, apiv3_key: randKey(), merchant_public_key: pem(publicKey), merchant_serial: 'ABCDEF0123' });
  const wx = new Wechatpay({ mchid: mch, serial: 'ABCDEF0123', privateKey: pem(privateKey, 'private'), baseURL: sim.url,
    certs: { [plat.certificate.serial]: plat.certificate.pem, [plat.public_key.id]: plat.public_key.pem } });
  const no = otn('SDK');
  const c = await wx.v3.pay.transactions.native.post({ appid: APPID, mchid: mch, description: 'tea', out_trade_no: no,
    notify_url: 'https://example.com/n', amount: { total: 100 } });
  assert.equal(c.status, 200);
  assert.match(c.data.code_url, /^weixin:\/\/wxpay\/bizpayurl\?pr=/);
  assert.equal(c.headers['wechatpay-serial'], plat.public_key.id);
  // answers follow the Wechatpay-Serial the request names
  const q = await wx.v3.pay.transactions.outTradeNo._out_trade_no_.get({ params: { mchid: mch }, out_trade_no: no,
    headers: { 'Wechatpay-Serial': plat.certificate.serial } });
  assert.equal(q.data.trade_state, 'NOTPAY');
  assert.equal(q.headers['wechatpay-serial'], plat.certificate.serial);
  const cl = await wx.v3.pay.transactions.outTradeNo._out_trade_no_.close.post({ mchid: mch }, { out_trade_no: no });
  assert.equal(cl.status, 204);
  await assert.rejects(wx.v3.pay.transactions.outTradeNo._out_trade_no_.get({ params: { mchid: mch }, out_trade_no: 'NOSUCH0001' }),
    (e) => e.response.status === 404 && e.response.data.code === 'ORDER_NOT_EXIST');
  const rq = await simRequests((x) => x.mch_id === mch);
  assert.ok(rq.length >= 4 && rq.every((x) => x.sign_verified === true), 'the simulator accepts the package\'s signatures');
});

test('package ⇄ module: the package verifies the module\'s Authorization; the module verifies the package\'s answers and notifications', async () => {
  // native through the responder: answer signed under the test's PUB_KEY_ID
  fake.signWith = 'pubkey';
  const r = await shop2.call('POST', '/v1/orders', { shop_id: 's2', out_trade_no: otn('F'), amount: 2345, subject: 'Dragon Well', method: 'wechat_qr' });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 'PENDING', r.body);
  assert.match(r.json.pay_data.code_url, /^weixin:\/\//);
  const created = fake.seen.find((x) => x.url === '/v3/pay/transactions/native' && JSON.parse(x.body).out_trade_no === r.json.trade_no);
  assert.ok(created, 'the module called the responder');
  assert.equal(created.verified, true, 'Rsa.verify(Formatter.request(…)) accepts the module\'s signature');
  assert.equal(created.auth.mchid, M2);
  assert.equal(created.auth.serial_no, keys.m2Serial);
  assert.equal(created.headers.accept, 'application/json');
  const sent = JSON.parse(created.body);
  assert.equal(sent.notify_url, `http://127.0.0.1:${gw.port}/notify/wechatpay/${M2}`);
  assert.deepEqual(sent.amount, { total: 2345, currency: 'CNY' });

  // JSAPI: answer signed with the test's certificate; the payer's paySign is the merchant's RSA signature
  fake.signWith = 'cert';
  const j = await shop2.call('POST', '/v1/orders', { shop_id: 's2', out_trade_no: otn('J'), amount: 100, subject: 'Tea', method: 'wechat_jsapi', payer_id: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o' });
  assert.equal(j.json.status, 'PENDING', j.body);
  const pi = j.json.pay_data.pay_info;
  assert.equal(pi.signType, 'RSA');
  assert.equal(pi.appId, APPID);
  assert.ok(Rsa.verify(Formatter.joinedByLineFeed(pi.appId, pi.timeStamp, pi.nonceStr, pi.package), pi.paySign, keys.m2Pub));

  // a GET (query) is signed over an empty body
  const q = await shop2.call('GET', `/v1/orders/${r.json.trade_no}`);
  assert.equal(q.status, 200);
  const get = fake.seen.find((x) => x.method === 'GET' && x.url.startsWith(`/v3/pay/transactions/out-trade-no/${r.json.trade_no}?mchid=${M2}`));
  assert.ok(get && get.verified, 'the query\'s signature verifies too');

  // a forged answer (the right serial, another key) is not believed: UNKNOWN, never FAILED
  fake.signWith = 'rogue';
  const f = await shop2.call('POST', '/v1/orders', { shop_id: 's2', out_trade_no: otn('R'), amount: 100, subject: 'Tea', method: 'wechat_qr' });
  assert.equal(f.json.status, 'UNKNOWN', f.body);
  assert.equal(f.json.pay_data, undefined);
  fake.signWith = 'pubkey';

  // notifications sealed with Aes.AesGcm and signed with Rsa by the package
  const resource = { mchid: M2, appid: APPID, out_trade_no: r.json.trade_no, transaction_id: '4200000000202401019999999999',
    trade_type: 'NATIVE', trade_state: 'SUCCESS', trade_state_desc: '支付成功', bank_type: 'OTHERS', success_time: '2024-01-01T12:00:00+08:00',
    payer: { openid: 'o1' }, amount: { total: 2345, payer_total: 2345, currency: 'CNY', payer_currency: 'CNY' } };
  const notifyPath = `/notify/wechatpay/${M2}`;
  const post = (n) => h.request({ port: gw.port, method: 'POST', path: notifyPath, headers: n.headers, body: n.body });
  // forged: signed with the rogue key; sealed with another APIv3 key; stale
  let x = await post(sdkNotification(resource, { signKey: keys.roguePriv }));
  assert.ok(x.status >= 400 && x.status < 600, `forged signature: ${x.status}`);
  assert.equal(x.json.code, 'FAIL');
  x = await post(sdkNotification(resource, { apiv3: randKey() }));
  assert.ok(x.status >= 400, `wrong APIv3 key: ${x.status}`);
  x = await post(sdkNotification(resource, { ts: Formatter.timestamp() - 600 }));
  assert.ok(x.status >= 400, `stale: ${x.status}`);
  assert.equal((await order(r.json.trade_no)).order.status, 'PENDING');
  // genuine, under the certificate this time
  x = await post(sdkNotification(resource, { signKey: keys.certPriv, serial: keys.certSerial }));
  assert.equal(x.status, 200, x.body);
  assert.equal(x.json.code, 'SUCCESS');
  const o = await waitStatus(r.json.trade_no, 'SUCCESS');
  assert.equal(o.order.channel_trade_no, '4200000000202401019999999999');
  const inbox = psql(`SELECT outcome FROM notify_inbox WHERE channel = 'wechatpay' AND detail->>'mch_id' = '${M2}' ORDER BY id`).split('\n');
  assert.deepEqual(inbox.slice(-4), ['rejected: bad signature', 'rejected: bad signature', 'rejected: bad signature', 'applied']);
  // every request the module sent verified
  assert.ok(fake.seen.length >= 4 && fake.seen.every((s) => s.verified), JSON.stringify(fake.seen.map((s) => [s.method, s.url, s.verified])));
});

test('c-to-b native and JSAPI through the simulator: PENDING, paid, SUCCESS by notification under either platform key', async () => {
  const nat = await shop1.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('N'), amount: 1234, subject: 'Longjing tea', method: 'wechat_qr' });
  assert.equal(nat.status, 200, nat.body);
  assert.equal(nat.json.status, 'PENDING', nat.body);
  assert.match(nat.json.pay_data.code_url, /^weixin:\/\/wxpay\/bizpayurl\?pr=/);
  const js = await shop1.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('J'), amount: 888, subject: 'Tea', method: 'wechat_jsapi', payer_id: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o' });
  assert.equal(js.json.status, 'PENDING', js.body);
  assert.match(js.json.pay_data.pay_info.package, /^prepay_id=wx/);
  for (const t of [nat.json.trade_no, js.json.trade_no]) {
    const p = await sim.ctl('POST', '/_sim/pay', { mch_id: M1, out_trade_no: t });
    assert.equal(p.status, 200, p.body);
  }
  for (const t of [nat.json.trade_no, js.json.trade_no]) {
    const o = await waitStatus(t, 'SUCCESS');
    assert.deepEqual(o.events.map((e) => `${e.from_status}->${e.to_status}:${e.source}`),
      ['null->CREATED:api', 'CREATED->PENDING:channel', 'PENDING->SUCCESS:notify']);
    assert.ok(o.order.channel_trade_no.startsWith('42000'));
    const so = (await sim.ctl('GET', `/_sim/orders/${M1}/${t}`)).json;
    const att = so.notifications[0].attempts;
    assert.equal(att.at(-1).http_status, 200);
    assert.equal(att.at(-1).acknowledged, true);
    assert.equal(so.notify_url, `http://127.0.0.1:${gw.port}/notify/wechatpay/${M1}`);
  }
  // one notification was signed with the certificate, the other with the public key
  const serials = [];
  for (const t of [nat.json.trade_no, js.json.trade_no]) {
    const so = (await sim.ctl('GET', `/_sim/orders/${M1}/${t}`)).json;
    serials.push(so.notifications[0].attempts.at(-1).request_headers['Wechatpay-Serial']);
  }
  assert.deepEqual(serials.sort(), [plat.certificate.serial, plat.public_key.id].sort());
  // the daemon's own requests all verified at the simulator
  const rq = await simRequests((x) => x.mch_id === M1);
  assert.ok(rq.length >= 2 && rq.every((x) => x.sign_verified === true));
});

test('codepay: immediate SUCCESS, and a decline is FAILED', async () => {
  const ok = await shop1.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('B'), amount: 500, subject: 'Tea', method: 'barcode', auth_code: '134567890123456781' });
  assert.equal(ok.json.status, 'SUCCESS', ok.body);
  assert.ok(ok.json.channel_trade_no);
  const no = await shop1.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('D'), amount: 500, subject: 'Tea', method: 'barcode', auth_code: '134567890123450000' });
  assert.equal(no.json.status, 'FAILED', no.body);
  assert.equal(no.json.channel_code, 'AUTHCODEEXPIRE');
});

test('codepay USERPAYING: polled at the policy\'s cadence until paid', async () => {
  const r = await shop1.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('P'), amount: 900, subject: 'Tea', method: 'barcode', auth_code: '134567890123459999' });
  assert.equal(r.json.status, 'USER_PAYING', r.body);
  await h.sleep(250);
  await sim.ctl('POST', '/_sim/pay', { mch_id: M1, out_trade_no: r.json.trade_no });
  const o = await waitStatus(r.json.trade_no, 'SUCCESS');
  assert.equal(o.events.at(-1).source, 'query');
  const q = (await simRequests((x) => x.out_trade_no === r.json.trade_no && x.op === 'query')).map((x) => Date.parse(x.at)).sort();
  assert.ok(q.length >= 2, 'polled');
  // 10 s apart, scaled: 100 ms (a little slack for the tick)
  for (let i = 1; i < q.length; i++) assert.ok(q[i] - q[i - 1] >= 80, `poll gap ${q[i] - q[i - 1]} ms`);
});

test('codepay USERPAYING past the deadline: reversed, never before 15 s (scaled), and CLOSED', async () => {
  const r = await shop1.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('V'), amount: 900, subject: 'Tea', method: 'barcode', auth_code: '134567890123459999' });
  assert.equal(r.json.status, 'USER_PAYING', r.body);
  const created = Date.parse(r.json.created_at);
  const o = await waitStatus(r.json.trade_no, 'CLOSED');
  assert.deepEqual(o.events.map((e) => e.to_status), ['CREATED', 'USER_PAYING', 'CLOSED']);
  const reqs = await simRequests((x) => x.out_trade_no === r.json.trade_no);
  const rev = reqs.filter((x) => x.op === 'reverse');
  assert.ok(rev.length >= 1, 'reversed at the channel');
  for (const x of rev) {
    assert.ok(Date.parse(x.at) - created >= 15000 * SCALE * 0.95, `reverse after ${Date.parse(x.at) - created} ms`);
    assert.equal(x.response.http_status, 200, 'the simulator did not refuse it as too early');
  }
  // polled until the 45 s deadline (scaled: 450 ms) at 10 s intervals
  assert.ok(reqs.filter((x) => x.op === 'query').length >= 2);
  assert.ok(Date.parse(rev[0].at) - created >= 45000 * SCALE * 0.9);
  assert.equal((await sim.ctl('GET', `/_sim/orders/${M1}/${r.json.trade_no}`)).json.state, 'REVOKED');
});

test('refund PROCESSING, then SUCCESS by a refund query; the next one settles by itself', async () => {
  const paid = await shop1.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('S'), amount: 1000, subject: 'Tea', method: 'barcode', auth_code: '134567890123456782' });
  assert.equal(paid.json.status, 'SUCCESS', paid.body);
  const r1 = await shop1.call('POST', `/v1/orders/${paid.json.trade_no}/refunds`, { out_refund_no: otn('RF'), amount: 300, reason: 'too sweet' });
  assert.equal(r1.status, 200, r1.body);
  assert.equal(r1.json.status, 'PROCESSING');
  const s = await sim.ctl('POST', '/_sim/refund/settle', { mch_id: M1, out_refund_no: r1.json.refund_no });
  assert.equal(s.status, 200, s.body);
  const q = await shop1.call('GET', `/v1/refunds/${r1.json.refund_no}`);
  assert.equal(q.json.status, 'SUCCESS', q.body);
  const rq = await simRequests((x) => x.op === 'refund_query' && x.path === `/v3/refund/domestic/refunds/${r1.json.refund_no}`);
  assert.ok(rq.length >= 1 && rq[0].response.status === 'SUCCESS');
  // the channel got the refund with its amounts (a repeat, if the core sent one, is the same refund)
  const sent = await simRequests((x) => x.op === 'refund' && x.json && x.json.out_refund_no === r1.json.refund_no);
  assert.ok(sent.length >= 1);
  for (const x of sent) assert.deepEqual(x.json.amount, { refund: 300, total: 1000, currency: 'CNY' });
  const at = (await sim.ctl('GET', `/_sim/orders/${M1}/${paid.json.trade_no}`)).json;
  assert.equal(at.refunds.filter((x) => x.out_refund_no === r1.json.refund_no).length, 1);
  // the follow-up tasks settle the next one without anyone asking
  await sim.ctl('POST', '/_sim/settings', { refund_delay_s: 1 });
  const r2 = await shop1.call('POST', `/v1/orders/${paid.json.trade_no}/refunds`, { out_refund_no: otn('RF'), amount: 700 });
  assert.equal(r2.json.status, 'PROCESSING', r2.body);
  await h.waitFor(() => psql(`SELECT status FROM refunds WHERE refund_no = '${r2.json.refund_no}'`) === 'SUCCESS', 15000);
  assert.equal(psql(`SELECT refunded_amount FROM orders WHERE trade_no = '${paid.json.trade_no}'`), '1000');
  await sim.ctl('POST', '/_sim/settings', { refund_delay_s: -1 });
  const so = (await sim.ctl('GET', `/_sim/orders/${M1}/${paid.json.trade_no}`)).json;
  assert.equal(so.state, 'REFUND');
});

test('close: an unpaid native order is closed at the channel', async () => {
  const r = await shop1.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('X'), amount: 100, subject: 'Tea', method: 'wechat_qr' });
  assert.equal(r.json.status, 'PENDING', r.body);
  const c = await shop1.call('POST', `/v1/orders/${r.json.trade_no}/close`);
  assert.equal(c.status, 200, c.body);
  assert.equal(c.json.status, 'CLOSED');
  assert.equal((await sim.ctl('GET', `/_sim/orders/${M1}/${r.json.trade_no}`)).json.state, 'CLOSED');
  const cl = await simRequests((x) => x.op === 'close' && x.out_trade_no === r.json.trade_no);
  assert.equal(cl[0].response.http_status, 204);
});

test('a forged answer leaves the order UNKNOWN, never FAILED; a query settles it', async () => {
  for (const fault of [{ bad_sign: true }, { stale_timestamp: true }, { unknown_serial: true }, { unsigned: true }]) {
    const fr = await sim.ctl('POST', '/_sim/faults', { ...fault, count: 1, op: 'codepay' });
    assert.equal(fr.status, 200, fr.body);
    const r = await shop1.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('U'), amount: 100, subject: 'Tea', method: 'barcode', auth_code: '134567890123456784' });
    assert.equal(r.json.status, 'UNKNOWN', `${JSON.stringify(fault)}: ${r.body}`);
    const q = await shop1.call('GET', `/v1/orders/${r.json.trade_no}`);
    assert.equal(q.json.status, 'SUCCESS', q.body);
  }
});

test('a forged notification is refused with 4xx and a JSON body; the order does not change', async () => {
  const r = await shop1.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('G'), amount: 4200, subject: 'Tea', method: 'wechat_qr' });
  assert.equal(r.json.status, 'PENDING');
  // sealed with the right APIv3 key, but signed by someone else under the simulator's serial
  const n = sdkNotification({ mchid: M1, appid: APPID, out_trade_no: r.json.trade_no, transaction_id: '4200000001', trade_type: 'NATIVE',
    trade_state: 'SUCCESS', amount: { total: 4200 } }, { signKey: keys.roguePriv, serial: plat.public_key.id, apiv3: keys.m1Apiv3 });
  const x = await h.request({ port: gw.port, method: 'POST', path: `/notify/wechatpay/${M1}`, headers: n.headers, body: n.body });
  assert.ok(x.status >= 400 && x.status < 500, `${x.status} ${x.body}`);
  assert.equal(x.json.code, 'FAIL');
  assert.ok(x.json.message);
  // no merchant number in the path: cannot be decrypted, refused
  const y = await h.request({ port: gw.port, method: 'POST', path: '/notify/wechatpay', headers: n.headers, body: n.body });
  assert.ok(y.status >= 400, `${y.status}`);
  assert.equal((await order(r.json.trade_no)).order.status, 'PENDING');
});

test('operator CLI: notify-verify accepts a notification captured from the simulator, and rejects it tampered', async () => {
  const r = await shop1.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('C'), amount: 321, subject: 'Tea', method: 'wechat_qr' });
  await sim.ctl('POST', '/_sim/pay', { mch_id: M1, out_trade_no: r.json.trade_no });
  await waitStatus(r.json.trade_no, 'SUCCESS');
  const nt = (await sim.ctl('GET', `/_sim/orders/${M1}/${r.json.trade_no}`)).json.notifications[0];
  const att = nt.attempts.at(-1);
  // LF line ends (CRLF captures lose a header name's first letter in the CLI today: see the report)
  const capture = (body) => `POST /notify/wechatpay/${M1} HTTP/1.1\nHost: pay.example.com\n` +
    Object.entries(att.request_headers).map(([k, v]) => `${k}: ${v}`).join('\n') + `\n\n${body}`;
  fs.writeFileSync(path.join(tmp, 'notify.http'), capture(nt.body));
  fs.writeFileSync(path.join(tmp, 'tampered.http'), capture(nt.body.replace('"event_type":"TRANSACTION.SUCCESS"', '"event_type":"TRANSACTION.SUCCESS" ')));
  fs.writeFileSync(path.join(tmp, 'settings.json'), JSON.stringify({ platform_keys: [{ key: plat.certificate.pem }, { serial: plat.public_key.id, key: plat.public_key.pem }] }));
  fs.writeFileSync(path.join(tmp, 'm1.key'), keys.m1Priv);
  fs.writeFileSync(path.join(tmp, 'merchant.json'), JSON.stringify({ mch_id: M1, app_id: APPID, key: keys.m1Apiv3,
    private_key: `@${path.join(tmp, 'm1.key')}`, extra: JSON.stringify({ serial_no: keys.m1Serial }) }));
  const args = (f) => ['channel', 'notify-verify', '--module', soPath, '--settings', `@${path.join(tmp, 'settings.json')}`,
    '--merchant', `@${path.join(tmp, 'merchant.json')}`, path.join(tmp, f)];
  const ok = await h.runPaygated(args('notify.http'));
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  assert.match(ok.stdout, /verdict:\s+VERIFIED/);
  assert.match(ok.stdout, new RegExp(`out_trade_no:\\s+${r.json.trade_no}`));
  assert.match(ok.stdout, /status:\s+SUCCESS/);
  assert.match(ok.stdout, /amount:\s+321/);
  assert.match(ok.stdout, /ack:\s+200 application\/json/);
  assert.ok(!ok.stdout.includes(keys.m1Apiv3), 'the APIv3 key is never printed');
  const bad = await h.runPaygated(args('tampered.http'));
  assert.equal(bad.code, 1, bad.stdout + bad.stderr);
  assert.match(bad.stdout, /verdict:\s+REJECTED: signature verification failed/);
  assert.match(bad.stdout, /ack:\s+401 application\/json/);
});
