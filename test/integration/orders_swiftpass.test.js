'use strict';
/*
 * Orders end to end through the real Swiftpass module and its simulator, on
 * a real PostgreSQL and Redis: c-to-b paid by notification, b-to-c success /
 * user paying / failure, idempotency and conflicts, refunds (partial, full,
 * over, concurrent), close, merchant request authentication, forged and
 * mismatched notifications, and a channel timeout.
 */
const test = require('node:test');
const assert = require('node:assert');
const crypto = require('node:crypto');
const h = require('../lib/harness');
const pg = require('../lib/paygate');

const MCH = '755437000006';
const KEY = 'sim-md5-key-for-tests-0001';
let services, sim, gw, shop;

const psql = (sql) => services.pg.query(sql);

/* Swiftpass MD5 sign computed here, independently of the C module. */
function spSign(fields, key) {
  const s = Object.keys(fields).filter((k) => k !== 'sign' && fields[k] !== '' && fields[k] != null)
    .sort().map((k) => `${k}=${fields[k]}`).join('&');
  return crypto.createHash('md5').update(`${s}&key=${key}`, 'utf8').digest('hex').toUpperCase();
}
function spXml(fields) {
  return '<xml>' + Object.entries(fields).map(([k, v]) => `<${k}><![CDATA[${v}]]></${k}>`).join('') + '</xml>';
}

async function adminOrder(tradeNo) {
  return pg.admin(gw, 'GET', `/admin/orders/${tradeNo}`);
}

test.before(async () => {
  services = await h.startServices();
  sim = await pg.startSim('swiftpass', ['--time-scale', '0.01']);
  await sim.ctl('POST', '/_sim/merchants', { mch_id: MCH, sign_type: 'MD5', key: KEY });
  await sim.ctl('POST', '/_sim/settings', { refund_delay_s: -1 });
  gw = await h.startPaygated({
    services,
    config: {
      channels: {
        call_timeout_ms: 1500,
        settings: { swiftpass: { gateway_url: `${sim.url}/pay/gateway` } },
      },
    },
  });
  shop = await pg.setupShop(gw, { subs: [{ channel: 'swiftpass', mch_id: MCH, key: KEY }] });
});

test.after(async () => {
  if (gw) {
    const r = await gw.stop();
    assert.equal(r.code, 0, `paygated exit status\n${gw.logs().slice(-3000)}`);
  }
  if (sim) await sim.stop();
  if (services) await services.close();
});

let seq = 0;
const otn = (p) => `${p}${Date.now().toString(36)}${seq++}`;

test('c-to-b: PENDING with a code_url, paid in the simulator, SUCCESS through the notification', async () => {
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('Q'), amount: 1234, subject: 'Longjing tea', method: 'wechat_qr' });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 'PENDING');
  assert.match(r.json.pay_data.code_url, /^http/);
  assert.equal(r.json.amount, 1234);
  const tradeNo = r.json.trade_no;
  const p = await sim.ctl('POST', '/_sim/pay', { mch_id: MCH, out_trade_no: tradeNo });
  assert.equal(p.status, 200, p.body);
  const o = await h.waitFor(async () => {
    const a = await adminOrder(tradeNo);
    return a.result.order.status === 'SUCCESS' ? a.result : null;
  }, 15000);
  const ev = o.events.map((e) => `${e.from_status}->${e.to_status}:${e.source}`);
  assert.deepEqual(ev, ['null->CREATED:api', 'CREATED->PENDING:channel', 'PENDING->SUCCESS:notify']);
  assert.ok(o.order.channel_trade_no, 'transaction_id recorded');
  // the simulator saw its notification acknowledged with "success"
  const so = await sim.ctl('GET', `/_sim/orders/${MCH}/${tradeNo}`);
  const attempts = so.json.notifications[0].attempts;
  assert.ok(attempts.length >= 1, so.body);
  assert.equal(attempts[attempts.length - 1].body.trim(), 'success');
  assert.equal(attempts[attempts.length - 1].acknowledged, true);
  const inbox = psql(`SELECT outcome FROM notify_inbox WHERE order_id = ${o.order.id} ORDER BY id`);
  assert.match(inbox, /^applied/);
});

test('the create reply is the stored order: each field the merchant sees, as the row holds it', async () => {
  // paygated replies from the argument it sent merged with the columns the
  // insert computed (0019) and, in a batch, with the columns the first
  // transition set (0018): that must be the row, field for field.  A burst,
  // so that the statements go in batches (alone, the transition answers the
  // whole row).
  const keys = ['trade_no', 'out_trade_no', 'merchant_id', 'shop_id', 'amount', 'currency', 'subject', 'method',
    'status', 'pay_data', 'channel', 'channel_trade_no', 'channel_code', 'channel_msg', 'refunded_amount', 'fee',
    'settle_amount', 'customer_id', 'attach', 'created_at', 'paid_at', 'expire_at', 'updated_at'];
  const viewOf = (row) => Object.fromEntries(keys.filter((k) => row[k] !== null && row[k] !== undefined).map((k) => [k, row[k]]));
  const kinds = [
    () => ({ shop_id: 's1', out_trade_no: otn('V'), amount: 777, subject: 'Pu-erh', method: 'wechat_qr' }),
    () => ({ shop_id: 's1', out_trade_no: otn('V'), amount: 888, currency: 'CNY', subject: 'Oolong "aged"', method: 'wechat_qr',
      customer_id: 'c-17', attach: 'table 4 / 桌', notify_url: 'http://127.0.0.1:9/n', expire_s: 600, client_ip: '10.1.2.3' }),
    () => ({ shop_id: 's1', out_trade_no: otn('V'), amount: 999, subject: 'Tea', method: 'barcode', auth_code: '134567890123456790' }),
  ];
  const bodies = Array.from({ length: 36 }, (_, i) => kinds[i % 3]());
  const replies = await Promise.all(bodies.map((b) => shop.call('POST', '/v1/orders', b)));
  for (const [i, r] of replies.entries()) {
    assert.equal(r.status, 200, r.body);
    const stored = (await adminOrder(r.json.trade_no)).result.order;
    assert.deepEqual(r.json, viewOf(stored), `${bodies[i].method}: the reply against the row`);
    assert.equal(stored.client_ip, bodies[i].client_ip || '127.0.0.1');
  }
  // a repeat of the same request answers the stored row as it is now
  for (const b of bodies.slice(0, 3)) {
    const again = await shop.call('POST', '/v1/orders', b);
    assert.equal(again.status, 200, again.body);
    assert.deepEqual(again.json, viewOf((await adminOrder(again.json.trade_no)).result.order));
  }
});

test('b-to-c: immediate success', async () => {
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('B'), amount: 500, subject: 'Tea', method: 'barcode', auth_code: '134567890123456781' });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 'SUCCESS');
  assert.ok(r.json.channel_trade_no);
  assert.equal(psql(`SELECT count(*) FROM orders o WHERE to_jsonb(o)::text LIKE '%134567890123456781%'`), '0',
    'the customer\'s pay code is never stored');
});

test('b-to-c: USER_PAYING, then SUCCESS when the merchant queries after the customer paid', async () => {
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('U'), amount: 800, subject: 'Tea', method: 'barcode', auth_code: '134567890123459999' });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 'USER_PAYING');
  const q1 = await shop.call('GET', `/v1/orders/${r.json.trade_no}`);
  assert.equal(q1.json.status, 'USER_PAYING');
  await sim.ctl('POST', '/_sim/pay', { mch_id: MCH, out_trade_no: r.json.trade_no });
  const q2 = await shop.call('GET', `/v1/orders?out_trade_no=${r.json.out_trade_no}`);
  assert.equal(q2.status, 200, q2.body);
  assert.equal(q2.json.status, 'SUCCESS');
});

test('b-to-c: a declined pay code is FAILED', async () => {
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('F'), amount: 800, subject: 'Tea', method: 'barcode', auth_code: '134567890123450000' });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 'FAILED');
  assert.ok(r.json.channel_code);
});

test('idempotency: an identical repeat is the same order; a different amount is 409', async () => {
  const body = { shop_id: 's1', out_trade_no: otn('I'), amount: 300, subject: 'Tea', method: 'barcode', auth_code: '134567890123456782' };
  const a = await shop.call('POST', '/v1/orders', body);
  const b = await shop.call('POST', '/v1/orders', body);
  assert.equal(a.status, 200);
  assert.equal(b.status, 200);
  assert.equal(b.json.trade_no, a.json.trade_no);
  assert.equal(b.json.status, 'SUCCESS');
  const reqs = (await sim.ctl('GET', '/_sim/requests?limit=200')).json
    .filter((x) => x.out_trade_no === a.json.trade_no && x.service === 'unified.trade.micropay');
  assert.equal(reqs.length, 1, 'charged once');
  const c = await shop.call('POST', '/v1/orders', { ...body, amount: 301 });
  assert.equal(c.status, 409);
  assert.equal(c.json.error.code, 'conflict');
  const d = await shop.call('POST', '/v1/orders', { ...body, method: 'wechat_qr', auth_code: undefined });
  assert.equal(d.status, 409);
});

test('validation: fractional amount, unknown method, missing fields are 400 with a code', async () => {
  const base = { shop_id: 's1', out_trade_no: otn('V'), amount: 100, subject: 'Tea', method: 'wechat_qr' };
  for (const [patch, code] of [
    [{ amount: 1.5 }, 'invalid_request'], [{ amount: 0 }, 'invalid_amount'], [{ amount: -5 }, 'invalid_amount'],
    [{ amount: '100' }, 'invalid_request'], [{ method: 'cash' }, 'invalid_method'], [{ subject: undefined }, 'invalid_request'],
    [{ extra_field: 1 }, 'invalid_request'], [{ method: 'barcode' }, 'invalid_request'],
  ]) {
    const r = await shop.call('POST', '/v1/orders', { ...base, ...patch });
    assert.equal(r.status, 400, `${JSON.stringify(patch)}: ${r.body}`);
    assert.equal(r.json.error.code, code, JSON.stringify(patch));
  }
  const bad = await shop.call('POST', '/v1/orders', '{"shop_id": "s1", ');
  assert.equal(bad.status, 400);
  assert.equal(bad.json.error.code, 'invalid_json');
  assert.equal(psql(`SELECT count(*) FROM orders WHERE out_trade_no = '${base.out_trade_no}'`), '0', 'nothing written');
});

test('authentication: replayed nonce, forged signature, stale timestamp, unknown merchant', async () => {
  const body = { shop_id: 's1', out_trade_no: otn('A'), amount: 100, subject: 'Tea', method: 'wechat_qr' };
  const first = await shop.call('POST', '/v1/orders', body);
  assert.equal(first.status, 200);
  const replay = await shop.call('POST', '/v1/orders', body, { nonce: first.nonce, ts: first.ts });
  assert.equal(replay.status, 401);
  assert.equal(replay.json.error.code, 'replayed_request');
  const forged = await shop.call('POST', '/v1/orders', { ...body, out_trade_no: otn('A') }, { secret: 'not-the-secret' });
  assert.equal(forged.status, 401);
  assert.equal(forged.json.error.code, 'bad_signature');
  const stale = await shop.call('POST', '/v1/orders', { ...body, out_trade_no: otn('A') }, { ts: Math.floor(Date.now() / 1000) - 3600 });
  assert.equal(stale.status, 401);
  assert.equal(stale.json.error.code, 'stale_timestamp');
  const nobody = pg.merchantClient(gw, 'nobody', 'x');
  const u = await nobody('GET', '/v1/orders/123');
  assert.equal(u.status, 401);
  assert.equal(u.json.error.code, 'unknown_merchant');
  const noauth = await h.request({ port: gw.port, path: '/v1/orders/123' });
  assert.equal(noauth.status, 401);
  assert.equal(noauth.json.error.code, 'missing_auth');
});

async function paidOrder(amount) {
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('P'), amount, subject: 'Tea', method: 'barcode', auth_code: '134567890123456783' });
  assert.equal(r.json.status, 'SUCCESS', r.body);
  return r.json;
}

test('refunds: partial PROCESSING then SUCCESS, over-refund refused, the rest, repeat, conflict', async () => {
  const o = await paidOrder(100);
  const r1 = await shop.call('POST', `/v1/orders/${o.trade_no}/refunds`, { out_refund_no: otn('R'), amount: 30, reason: 'too sweet' });
  assert.equal(r1.status, 200, r1.body);
  assert.equal(r1.json.status, 'PROCESSING');
  assert.equal(r1.json.amount, 30);
  const over = await shop.call('POST', `/v1/orders/${o.trade_no}/refunds`, { out_refund_no: otn('R'), amount: 71 });
  assert.equal(over.status, 422);
  assert.equal(over.json.error.code, 'refund_exceeds_paid');
  const settle = await sim.ctl('POST', '/_sim/refund/settle', { mch_id: MCH, out_refund_no: r1.json.refund_no });
  assert.equal(settle.status, 200, settle.body);
  const q = await shop.call('GET', `/v1/refunds/${r1.json.refund_no}`);
  assert.equal(q.json.status, 'SUCCESS', q.body);
  const r2 = await shop.call('POST', `/v1/orders/${o.trade_no}/refunds`, { out_refund_no: otn('R'), amount: 70 });
  assert.equal(r2.status, 200, r2.body);
  const again = await shop.call('POST', `/v1/orders/${o.trade_no}/refunds`, { out_refund_no: r2.json.out_refund_no, amount: 70 });
  assert.equal(again.json.refund_no, r2.json.refund_no);
  const conflict = await shop.call('POST', `/v1/orders/${o.trade_no}/refunds`, { out_refund_no: r2.json.out_refund_no, amount: 69 });
  assert.equal(conflict.status, 409);
  await sim.ctl('POST', '/_sim/refund/settle', { mch_id: MCH, out_refund_no: r2.json.refund_no });
  const q2 = await shop.call('GET', `/v1/refunds?out_refund_no=${r2.json.out_refund_no}`);
  assert.equal(q2.json.status, 'SUCCESS');
  const ord = await shop.call('GET', `/v1/orders/${o.trade_no}`);
  assert.equal(ord.json.refunded_amount, 100);
  const none = await shop.call('POST', `/v1/orders/${o.trade_no}/refunds`, { out_refund_no: otn('R'), amount: 1 });
  assert.equal(none.status, 422);
  // exactly two refunds reached the channel
  const reqs = (await sim.ctl('GET', '/_sim/requests?limit=500')).json
    .filter((x) => x.service === 'unified.trade.refund' && x.out_trade_no === o.trade_no);
  assert.equal(reqs.length, 2);
});

test('refunds: concurrent requests never exceed the paid amount', async () => {
  const o = await paidOrder(100);
  const rs = await Promise.all(Array.from({ length: 6 }, () =>
    shop.call('POST', `/v1/orders/${o.trade_no}/refunds`, { out_refund_no: otn('C'), amount: 30 })));
  const ok = rs.filter((r) => r.status === 200);
  const refused = rs.filter((r) => r.status === 422);
  assert.equal(ok.length, 3, rs.map((r) => r.body).join('\n'));
  assert.equal(refused.length, 3);
  assert.equal(psql(`SELECT sum(r.amount) FROM refunds r JOIN orders o ON o.id = r.order_id WHERE o.trade_no = '${o.trade_no}'`), '90');
});

test('refund of an unpaid order is refused', async () => {
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('N'), amount: 100, subject: 'Tea', method: 'wechat_qr' });
  const x = await shop.call('POST', `/v1/orders/${r.json.trade_no}/refunds`, { out_refund_no: otn('R'), amount: 10 });
  assert.equal(x.status, 422);
  assert.equal(x.json.error.code, 'order_not_paid');
});

test('close: an unpaid c-to-b order is closed at the channel', async () => {
  await sim.ctl('POST', '/_sim/settings', { close_min_age_s: 0 });
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('X'), amount: 100, subject: 'Tea', method: 'alipay_qr' });
  assert.equal(r.json.status, 'PENDING', r.body);
  const c = await shop.call('POST', `/v1/orders/${r.json.trade_no}/close`);
  assert.equal(c.status, 200, c.body);
  assert.equal(c.json.status, 'CLOSED');
  const so = await sim.ctl('GET', `/_sim/orders/${MCH}/${r.json.trade_no}`);
  assert.match(so.body, /CLOSED/);
  const paid = await paidOrder(100);
  const c2 = await shop.call('POST', `/v1/orders/${paid.trade_no}/close`);
  assert.equal(c2.status, 409);
  assert.equal(c2.json.error.code, 'order_not_closable');
});

test('notifications: forged signature refused, wrong amount refused, neither changes the order', async () => {
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('G'), amount: 4200, subject: 'Tea', method: 'wechat_qr' });
  assert.equal(r.json.status, 'PENDING');
  const base = {
    version: '2.0', charset: 'UTF-8', sign_type: 'MD5', status: '0', result_code: '0', pay_result: '0',
    mch_id: MCH, nonce_str: crypto.randomBytes(8).toString('hex'), out_trade_no: r.json.trade_no,
    transaction_id: `T${Date.now()}`, total_fee: '4200', trade_type: 'pay.weixin.native', time_end: '20261127120000',
  };
  const forged = { ...base, sign: spSign(base, 'the-wrong-key') };
  const f = await h.request({ port: gw.port, method: 'POST', path: '/notify/swiftpass', headers: { 'Content-Type': 'text/xml' }, body: spXml(forged) });
  assert.equal(f.body.trim(), 'fail');
  const wrongAmount = { ...base, total_fee: '1' };
  wrongAmount.sign = spSign(wrongAmount, KEY);
  const w = await h.request({ port: gw.port, method: 'POST', path: '/notify/swiftpass', headers: { 'Content-Type': 'text/xml' }, body: spXml(wrongAmount) });
  assert.equal(w.status, 200);
  let o = await adminOrder(r.json.trade_no);
  assert.equal(o.result.order.status, 'PENDING');
  const outcomes = psql(`SELECT outcome FROM notify_inbox WHERE detail->>'out_trade_no' = '${r.json.trade_no}' ORDER BY id`).split('\n');
  assert.deepEqual(outcomes, ['rejected: bad signature', 'rejected: amount mismatch']);
  // the genuine one, twice: applied once, then a duplicate
  const good = { ...base };
  good.sign = spSign(good, KEY);
  for (let i = 0; i < 2; i++) {
    const g = await h.request({ port: gw.port, method: 'POST', path: '/notify/swiftpass', headers: { 'Content-Type': 'text/xml' }, body: spXml(good) });
    assert.equal(g.body.trim(), 'success');
  }
  o = await adminOrder(r.json.trade_no);
  assert.equal(o.result.order.status, 'SUCCESS');
  assert.equal(o.result.events.filter((e) => e.to_status === 'SUCCESS').length, 1);
  const garbage = await h.request({ port: gw.port, method: 'POST', path: '/notify/swiftpass', body: '<xml><oops' });
  assert.equal(garbage.body.trim(), 'fail');
});

test('a channel that does not answer in time leaves the order UNKNOWN, not FAILED', async () => {
  // the simulator takes the payment but its answer is lost, and so is its
  // notification (else the notification would settle the order first)
  const fr = await sim.ctl('POST', '/_sim/faults', [
    { timeout: true, count: 1, service: 'unified.trade.micropay' },
    { drop_notify: true, count: 1 }]);
  assert.equal(fr.status, 200, fr.body);
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('T'), amount: 100, subject: 'Tea', method: 'barcode', auth_code: '134567890123456784' });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 'UNKNOWN');
  await sim.ctl('DELETE', '/_sim/faults');
  // the simulator did carry the payment out: a query settles it
  const q = await shop.call('GET', `/v1/orders/${r.json.trade_no}`);
  assert.equal(q.json.status, 'SUCCESS', q.body);
});
