'use strict';
/*
 * Never lose an outcome (follow-up tasks), with schedules compressed
 * (tasks.time_scale 0.01: 1 s of schedule = 10 ms) through the Swiftpass
 * module and simulator (--time-scale 0.01 too):
 *   - merchant notifications: N failures then success = N+1 attempts at the
 *     scheduled times, signed; a restart mid-schedule continues it;
 *   - two paygated processes on one database: every notification job once;
 *   - USER_PAYING → paid while polling; USER_PAYING → deadline → reversed;
 *   - a lost channel notification → the re-query finds the payment;
 *   - refund PROCESSING → SUCCESS without anyone asking;
 *   - an expired order is closed, but only after the channel's minimum age.
 */
const test = require('node:test');
const assert = require('node:assert');
const crypto = require('node:crypto');
const http = require('node:http');
const h = require('../lib/harness');
const pg = require('../lib/paygate');

const MCH = '755437000021';
const KEY = 'followup-md5-key-000000021';
const SCALE = 0.01;
let services, sim, gw, shop;

const psql = (sql) => services.pg.query(sql);

function gwConfig(extra = {}) {
  return {
    api: { min_expire_s: 1 },
    tasks: { time_scale: SCALE, tick_ms: 20, ...extra },
    channels: { call_timeout_ms: 3000, settings: { swiftpass: { gateway_url: `${sim.url}/pay/gateway` } } },
  };
}

/* A merchant endpoint: answers according to plan(n) for the n-th delivery
 * (1-based) of each trade; records everything. */
function merchantServer(plan) {
  const hits = [];
  const perTrade = new Map();
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      let j = null;
      try { j = JSON.parse(body); } catch (_) { /* recorded as is */ }
      const trade = j && j.order ? j.order.trade_no : '?';
      const n = (perTrade.get(trade) || 0) + 1;
      perTrade.set(trade, n);
      hits.push({ at: Date.now(), trade, n, headers: req.headers, body, json: j });
      const a = plan(n, trade);
      const answer = () => {
        res.writeHead(a.status || 200, { 'Content-Type': 'text/plain' });
        res.end(a.body);
      };
      if (a.delayMs) setTimeout(answer, a.delayMs);
      else answer();
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}/paygate/notify`,
    hits,
    close: () => new Promise((r) => server.close(r)),
  })));
}

async function adminOrder(tradeNo) {
  return (await pg.admin(gw, 'GET', `/admin/orders/${tradeNo}`)).result;
}

async function waitStatus(tradeNo, status, ms = 20000) {
  return h.waitFor(async () => {
    const o = await adminOrder(tradeNo);
    return o.order.status === status ? o : null;
  }, ms);
}

let seq = 0;
const otn = (p) => `${p}${process.pid}x${seq++}`;

test.before(async () => {
  services = await h.startServices();
  sim = await pg.startSim('swiftpass', ['--time-scale', String(SCALE)]);
  await sim.ctl('POST', '/_sim/merchants', { mch_id: MCH, sign_type: 'MD5', key: KEY });
  gw = await h.startPaygated({ services, config: gwConfig() });
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

test('merchant notification: 3 failures then success = 4 signed attempts on the schedule', async () => {
  const m = await merchantServer((n) => (n <= 2 ? { status: 500, body: 'oops' } : n === 3 ? { body: 'fail' } : { body: 'success\n' }));
  try {
    const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('N'), amount: 321, subject: 'Tea', method: 'barcode', auth_code: '134567890123456701', notify_url: m.url });
    assert.equal(r.json.status, 'SUCCESS', r.body);
    await h.waitFor(() => m.hits.filter((x) => x.trade === r.json.trade_no).length >= 4, 20000);
    await new Promise((res) => setTimeout(res, 1500)); // nothing more may come
    const hits = m.hits.filter((x) => x.trade === r.json.trade_no);
    assert.equal(hits.length, 4);
    // schedule 0, 15, 15, 30 s scaled: the gaps are at least 150, 150, 300 ms
    const gaps = [hits[1].at - hits[0].at, hits[2].at - hits[1].at, hits[3].at - hits[2].at];
    [150, 150, 300].forEach((g, i) => assert.ok(gaps[i] >= g * 0.9, `gap ${i}: ${gaps[i]} ms < ${g} ms`));
    for (const x of hits) {
      const sig = crypto.createHmac('sha256', shop.secret)
        .update(`${x.headers['x-paygate-timestamp']}\n${x.headers['x-paygate-nonce']}\n${x.body}`).digest('hex');
      assert.equal(x.headers['x-paygate-signature'], sig, 'signed with the merchant secret');
      assert.equal(x.headers['x-paygate-event'], 'order.paid');
      assert.equal(x.json.order.status, 'SUCCESS');
      assert.equal(x.json.order.amount, 321);
    }
    const row = psql(`SELECT n.status || ' ' || n.attempts FROM merchant_notifications n JOIN orders o ON o.id = n.order_id WHERE o.trade_no = '${r.json.trade_no}'`);
    assert.equal(row, 'DELIVERED 4');
  } finally { await m.close(); }
});

test('merchant notification: never answered success → FAILED after the schedule; the operator re-sends it', async () => {
  // a node of its own with a short schedule of 10 attempts (the default one
  // lasts 3 h; scaled 0.01 that is still 110 s)
  // (the other node is stopped meanwhile: a node attempts on its own schedule)
  assert.equal((await gw.stop()).code, 0);
  const gw3 = await h.startPaygated({ services, config: gwConfig({ notify_schedule_s: [0, 1, 1, 1, 1, 1, 1, 1, 1, 1], node_id: 'node-three' }) });
  const m = await merchantServer(() => ({ status: 503, body: 'down' }));
  try {
    const call = pg.merchantClient(gw3, shop.merchant, shop.secret);
    const r = await call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('D'), amount: 100, subject: 'Tea', method: 'barcode', auth_code: '134567890123456702', notify_url: m.url });
    const id = psql(`SELECT n.id FROM merchant_notifications n JOIN orders o ON o.id = n.order_id WHERE o.trade_no = '${r.json.trade_no}'`);
    await h.waitFor(() => psql(`SELECT status FROM merchant_notifications WHERE id = ${id}`) === 'FAILED', 30000);
    assert.equal(m.hits.filter((x) => x.trade === r.json.trade_no).length, 10);
    const list = await pg.admin(gw3, 'GET', '/admin/notifications?status=FAILED');
    assert.ok(list.result.some((n) => String(n.id) === id), JSON.stringify(list));
    await pg.admin(gw3, 'POST', `/admin/notifications/${id}/resend`);
    await h.waitFor(() => m.hits.filter((x) => x.trade === r.json.trade_no).length === 11, 10000);
  } finally {
    await m.close();
    assert.equal((await gw3.stop()).code, 0);
    gw = await h.startPaygated({ services, config: gwConfig() });
    shop.call = pg.merchantClient(gw, shop.merchant, shop.secret);
  }
});

test('b-to-c USER_PAYING is polled until paid', async () => {
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('P'), amount: 900, subject: 'Tea', method: 'barcode', auth_code: '134567890123459999' });
  assert.equal(r.json.status, 'USER_PAYING');
  await new Promise((res) => setTimeout(res, 100));
  await sim.ctl('POST', '/_sim/pay', { mch_id: MCH, out_trade_no: r.json.trade_no });
  const o = await waitStatus(r.json.trade_no, 'SUCCESS');
  assert.ok(o.events.some((e) => e.to_status === 'SUCCESS' && (e.source === 'query' || e.source === 'notify')));
});

test('b-to-c USER_PAYING past the deadline is reversed and CLOSED', async () => {
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('R'), amount: 900, subject: 'Tea', method: 'barcode', auth_code: '134567890123459999' });
  assert.equal(r.json.status, 'USER_PAYING');
  const o = await waitStatus(r.json.trade_no, 'CLOSED');
  assert.deepEqual(o.events.map((e) => e.to_status), ['CREATED', 'USER_PAYING', 'CLOSED']);
  const reqs = (await sim.ctl('GET', '/_sim/requests?limit=1000')).json.filter((x) => x.out_trade_no === r.json.trade_no);
  assert.ok(reqs.some((x) => x.service === 'unified.micropay.reverse'), 'reversed at the channel');
  const so = await sim.ctl('GET', `/_sim/orders/${MCH}/${r.json.trade_no}`);
  assert.match(so.body, /REVOKED/);
  // polled several times before the deadline (30 s scaled = 300 ms, every 50 ms)
  assert.ok(reqs.filter((x) => x.service === 'unified.trade.query').length >= 3);
});

test('a lost channel notification: the re-query finds the payment', async () => {
  await sim.ctl('POST', '/_sim/faults', { drop_notify: true, count: 1 });
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('L'), amount: 700, subject: 'Tea', method: 'wechat_qr' });
  assert.equal(r.json.status, 'PENDING');
  await sim.ctl('POST', '/_sim/pay', { mch_id: MCH, out_trade_no: r.json.trade_no });
  const o = await waitStatus(r.json.trade_no, 'SUCCESS');
  assert.equal(o.events.at(-1).source, 'query');
  assert.equal(psql(`SELECT count(*) FROM notify_inbox WHERE order_id = ${o.order.id}`), '0', 'no notification came');
});

test('refund PROCESSING becomes SUCCESS by itself', async () => {
  await sim.ctl('POST', '/_sim/settings', { refund_delay_s: 1 });
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('F'), amount: 500, subject: 'Tea', method: 'barcode', auth_code: '134567890123456703' });
  const rf = await shop.call('POST', `/v1/orders/${r.json.trade_no}/refunds`, { out_refund_no: otn('RF'), amount: 200 });
  assert.equal(rf.json.status, 'PROCESSING');
  await h.waitFor(() => psql(`SELECT status FROM refunds WHERE refund_no = '${rf.json.refund_no}'`) === 'SUCCESS', 20000);
  assert.equal(psql(`SELECT refunded_amount FROM orders WHERE trade_no = '${r.json.trade_no}'`), '200');
  const sent = (await sim.ctl('GET', '/_sim/requests?limit=1000')).json
    .filter((x) => x.service === 'unified.trade.refund' && x.fields.out_refund_no === rf.json.refund_no);
  assert.equal(sent.length, 1, 'the refund reached the channel once');
});

test('an expired unpaid order is closed, and not before the channel\'s minimum age', async () => {
  // the simulator forgets time_expire, so paygate itself must close the order
  await sim.ctl('POST', '/_sim/settings', { expire_orders: false });
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('E'), amount: 100, subject: 'Tea', method: 'wechat_qr', expire_s: 1 });
  assert.equal(r.json.status, 'PENDING');
  const created = Date.parse(r.json.created_at);
  const o = await waitStatus(r.json.trade_no, 'CLOSED', 30000);
  const closes = (await sim.ctl('GET', '/_sim/requests?limit=1000')).json
    .filter((x) => x.out_trade_no === r.json.trade_no && x.service === 'unified.trade.close');
  assert.ok(closes.length >= 1);
  // Swiftpass: 5 minutes after creation, scaled 0.01 = 3 s
  for (const c of closes) assert.ok(Date.parse(c.at) - created >= 3000 * 0.95, `close after ${Date.parse(c.at) - created} ms`);
  assert.ok(closes.every((c) => c.response.result_code === '0'), 'no close was refused as too early');
  assert.equal(o.events.at(-1).to_status, 'CLOSED');
  await sim.ctl('POST', '/_sim/settings', { expire_orders: true });
});

test('two paygated processes share the work: every notification delivered exactly once', async () => {
  const gw2 = await h.startPaygated({ services, config: gwConfig({ batch: 4, node_id: 'node-two' }) });
  // a merchant that takes a moment to answer: deliveries overlap, so both
  // nodes find work
  const m = await merchantServer(() => ({ body: 'success', delayMs: 150 }));
  try {
    const trades = [];
    for (let i = 0; i < 40; i++) {
      const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('T'), amount: 100 + i, subject: 'Tea', method: 'barcode', auth_code: '134567890123456704', notify_url: m.url });
      assert.equal(r.json.status, 'SUCCESS');
      trades.push(r.json.trade_no);
    }
    await h.waitFor(() => trades.every((t) => m.hits.some((x) => x.trade === t)), 20000);
    await new Promise((res) => setTimeout(res, 1000));
    for (const t of trades) assert.equal(m.hits.filter((x) => x.trade === t).length, 1, `trade ${t}`);
    const by = psql(`SELECT count(DISTINCT delivered_by) FROM merchant_notifications n JOIN orders o ON o.id = n.order_id WHERE o.trade_no IN (${trades.map((t) => `'${t}'`).join(',')})`);
    assert.equal(by, '2', 'both nodes delivered some');
  } finally {
    await m.close();
    const r = await gw2.stop();
    assert.equal(r.code, 0);
  }
});

test('a restart in the middle of the schedule continues it', async () => {
  let fail = true;
  const m = await merchantServer(() => (fail ? { status: 500, body: 'no' } : { body: 'success' }));
  try {
    const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('S'), amount: 100, subject: 'Tea', method: 'barcode', auth_code: '134567890123456705', notify_url: m.url });
    await h.waitFor(() => m.hits.filter((x) => x.trade === r.json.trade_no).length >= 2, 10000);
    const st = await gw.stop();
    assert.equal(st.code, 0);
    const before = m.hits.filter((x) => x.trade === r.json.trade_no).length;
    fail = false;
    gw = await h.startPaygated({ services, config: gwConfig() });
    shop.call = pg.merchantClient(gw, shop.merchant, shop.secret);
    await h.waitFor(() => psql(`SELECT n.status FROM merchant_notifications n JOIN orders o ON o.id = n.order_id WHERE o.trade_no = '${r.json.trade_no}'`) === 'DELIVERED', 20000);
    const attempts = Number(psql(`SELECT attempts FROM merchant_notifications n JOIN orders o ON o.id = n.order_id WHERE o.trade_no = '${r.json.trade_no}'`));
    assert.equal(attempts, m.hits.filter((x) => x.trade === r.json.trade_no).length, 'every attempt counted across the restart');
    assert.ok(attempts > before && before >= 2);
  } finally { await m.close(); }
});
