'use strict';
/*
 * Routing: sub-merchant rotation (also across two gateway processes),
 * failover to the next binding with every circuit-breaker transition, the
 * per-channel bulkhead (a slow, saturated channel does not stop another
 * channel's orders), fee rates switching at future_from with half-up
 * rounding, and cashback.  Real PostgreSQL/Redis, the Swiftpass module and
 * simulator, and the mock test channel with its simulator.
 */
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const h = require('../lib/harness');
const pg = require('../lib/paygate');

const ROOT = path.resolve(__dirname, '..', '..');
const SP = ['755437000031', '755437000032', '755437000033'];
const SPKEY = (m) => `routing-key-${m}`;
const MOCKKEY = 'mock-routing-key-1';
let services, sp, mock, mockPort, gw, chanDir, m;

const psql = (sql) => services.pg.query(sql);

function gwConfig(extra = {}) {
  return {
    channels: {
      dir: chanDir,
      call_timeout_ms: 5000,
      limits: { mock: { max_inflight: 3 } },
      breaker: { consecutive: 3, open_ms: 1500, close_after: 2, min_calls: 1000 },
      settings: {
        swiftpass: { gateway_url: `${sp.url}/pay/gateway` },
        mock: { gateway_url: `http://127.0.0.1:${mockPort}` },
      },
    },
    ...extra,
  };
}

async function startMock(latency = 0) {
  const s = await pg.startSim('mock', ['--key', MOCKKEY, '--latency-ms', String(latency)]);
  return s;
}

let seq = 0;
const otn = (p) => `${p}${process.pid}x${seq++}`;
const barcode = (shop, extra = {}) => ({ shop_id: shop, out_trade_no: otn('B'), amount: 100, subject: 'Tea', method: 'barcode', auth_code: '134567890123456711', ...extra });

async function metric(name, labels) {
  const r = await h.request({ port: gw.port, path: '/metrics' });
  const line = r.body.split('\n').find((l) => l.startsWith(`${name}{`) && labels.every((x) => l.includes(x)));
  return line ? Number(line.split(' ').pop()) : 0;
}

async function breaker(name) {
  const c = await pg.admin(gw, 'GET', '/admin/channels');
  return c.channels.find((x) => x.name === name).breaker;
}

test.before(async () => {
  chanDir = fs.mkdtempSync(path.join(os.tmpdir(), 'paygate-routing-'));
  fs.copyFileSync(path.join(ROOT, 'build', 'asan', 'channels', 'swiftpass.so'), path.join(chanDir, 'swiftpass.so'));
  fs.copyFileSync(path.join(ROOT, 'build', 'test-channels', 'mock.so'), path.join(chanDir, 'mock.so'));
  services = await h.startServices();
  sp = await pg.startSim('swiftpass', ['--time-scale', '0.01']);
  for (const id of SP) await sp.ctl('POST', '/_sim/merchants', { mch_id: id, sign_type: 'MD5', key: SPKEY(id) });
  mock = await startMock();
  mockPort = mock.port;
  gw = await h.startPaygated({ services, config: gwConfig() });
  // merchant m1: shop s1 on Swiftpass with three sub-merchants
  m = await pg.setupShop(gw, { shop: 's1', subs: SP.map((id) => ({ channel: 'swiftpass', mch_id: id, key: SPKEY(id) })), methods: ['barcode'] });
  await pg.admin(gw, 'PUT', '/admin/shops/s2', { merchant_id: 'm1', name: 'failover shop' });
  await pg.admin(gw, 'PUT', '/admin/shops/s3', { merchant_id: 'm1', name: 'mock only' });
  const mockSub = (await pg.admin(gw, 'POST', '/admin/sub-merchants', { channel: 'mock', mch_id: 'MOCK-R1', key: MOCKKEY })).result.id;
  const spSub = m.subIds[0];
  for (const meth of ['wechat_qr', 'barcode']) {
    await pg.admin(gw, 'PUT', `/admin/shops/s2/bindings/${meth}`, [
      { channel: 'mock', sub_merchant_ids: [mockSub] }, { channel: 'swiftpass', sub_merchant_ids: [spSub] }]);
  }
  await pg.admin(gw, 'PUT', '/admin/shops/s3/bindings/barcode', [{ channel: 'mock', sub_merchant_ids: [mockSub] }]);
});

test.after(async () => {
  if (gw) assert.equal((await gw.stop()).code, 0, gw.logs().slice(-3000));
  if (mock) await mock.stop();
  if (sp) await sp.stop();
  if (services) await services.close();
  fs.rmSync(chanDir, { recursive: true, force: true });
});

test('rotation: one customer\'s consecutive payments use the three sub-merchants in turn', async () => {
  const seen = [];
  for (let i = 0; i < 6; i++) {
    const r = await m.call('POST', '/v1/orders', barcode('s1', { customer_id: 'cust-1' }));
    assert.equal(r.json.status, 'SUCCESS', r.body);
    seen.push(psql(`SELECT channel_mch_id FROM orders WHERE trade_no = '${r.json.trade_no}'`));
  }
  assert.deepEqual(seen.slice(3), seen.slice(0, 3), `rotates with period 3: ${seen}`);
  assert.equal(new Set(seen.slice(0, 3)).size, 3, `all three used: ${seen}`);
  // another customer has a rotation of its own
  const other = await m.call('POST', '/v1/orders', barcode('s1', { customer_id: 'cust-2' }));
  assert.equal(psql(`SELECT channel_mch_id FROM orders WHERE trade_no = '${other.json.trade_no}'`), seen[0]);
});

test('the rotation counter goes to Redis with the nonce: a replayed create is refused and only moves the rotation on', async () => {
  const redis = (...args) => execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(services.redis.port), ...args],
    { encoding: 'utf8' }).trim();
  const key = 'gw:rot:s1:barcode:swiftpass:cust-5';
  const mch = (r) => psql(`SELECT channel_mch_id FROM orders WHERE trade_no = '${r.json.trade_no}'`);
  const first = await m.call('POST', '/v1/orders', barcode('s1', { customer_id: 'cust-5' }));
  assert.equal(first.json.status, 'SUCCESS', first.body);
  assert.equal(redis('GET', key), '1');
  // the shop's routes are cached now, so the next create asks for the
  // counter in the nonce's round trip, before its nonce is known to be new
  const body = barcode('s1', { customer_id: 'cust-5' });
  const second = await m.call('POST', '/v1/orders', body);
  assert.equal(second.json.status, 'SUCCESS', second.body);
  assert.notEqual(mch(second), mch(first));
  const replay = await m.call('POST', '/v1/orders', body, { nonce: second.nonce, ts: second.ts });
  assert.equal(replay.status, 401, replay.body);
  assert.equal(replay.json.error.code, 'replayed_request');
  assert.equal(psql(`SELECT count(*) FROM orders WHERE out_trade_no = '${body.out_trade_no}'`), '1');
  // the refused request used a number: 1, 2, 3 (refused), 4 → the first's sub-merchant
  assert.equal(redis('GET', key), '3');
  const fourth = await m.call('POST', '/v1/orders', barcode('s1', { customer_id: 'cust-5' }));
  assert.equal(fourth.json.status, 'SUCCESS', fourth.body);
  assert.equal(mch(fourth), mch(first));
  assert.equal(redis('GET', key), '4');
});

test('rotation is shared by two gateway processes', async () => {
  const gw2 = await h.startPaygated({ services, config: gwConfig({ tasks: { node_id: 'two' } }) });
  try {
    const call2 = pg.merchantClient(gw2, m.merchant, m.secret);
    const seen = [];
    for (let i = 0; i < 6; i++) {
      const r = await (i % 2 ? call2 : m.call)('POST', '/v1/orders', barcode('s1', { customer_id: 'cust-3' }));
      assert.equal(r.json.status, 'SUCCESS', r.body);
      seen.push(psql(`SELECT channel_mch_id FROM orders WHERE trade_no = '${r.json.trade_no}'`));
    }
    assert.deepEqual(seen.slice(3), seen.slice(0, 3), `${seen}`);
    assert.equal(new Set(seen).size, 3, `${seen}`);
  } finally {
    assert.equal((await gw2.stop()).code, 0);
  }
});

test('bulkhead: a slow channel at its in-flight cap does not stop another channel\'s orders', async () => {
  await mock.ctl('POST', '/_sim/settings', { latency_ms: 3000 });
  try {
    const slow = [0, 1, 2].map(() => m.call('POST', '/v1/orders', barcode('s3')));
    await h.waitFor(async () => (await pg.admin(gw, 'GET', '/admin/channels')).channels
      .find((c) => c.name === 'mock').calls_in_flight === 3, 5000);
    // the mock channel is full: a fourth order there is refused before anything is written
    const refused = await m.call('POST', '/v1/orders', barcode('s3', { out_trade_no: 'FULL1' }));
    assert.equal(refused.status, 503, refused.body);
    assert.equal(refused.json.error.code, 'channel_unavailable');
    assert.equal(psql("SELECT count(*) FROM orders WHERE out_trade_no = 'FULL1'"), '0');
    // meanwhile Swiftpass orders go through
    for (let i = 0; i < 5; i++) {
      const r = await m.call('POST', '/v1/orders', barcode('s1'));
      assert.equal(r.json.status, 'SUCCESS');
    }
    const done = await Promise.all(slow);
    for (const r of done) assert.equal(r.json.status, 'SUCCESS', r.body);
    assert.ok(await metric('paygate_channel_rejected_total', ['channel="mock"', 'reason="bulkhead"']) >= 1);
  } finally {
    await mock.ctl('POST', '/_sim/settings', { latency_ms: 0 });
  }
});

test('failover to the second binding while the first channel is down, and every breaker transition', async () => {
  assert.equal(await breaker('mock'), 'closed');
  await mock.stop(); // the mock channel's peer is gone: connections are refused
  // c-to-b and b-to-c alike go to Swiftpass: nothing reached the mock channel
  for (let i = 0; i < 3; i++) {
    const r = await m.call('POST', '/v1/orders', i === 1 ? barcode('s2') : { shop_id: 's2', out_trade_no: otn('Q'), amount: 100, subject: 'Tea', method: 'wechat_qr' });
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json.channel, 'swiftpass');
    assert.ok(['PENDING', 'SUCCESS'].includes(r.json.status), r.body);
    const ev = psql(`SELECT string_agg(source, ',' ORDER BY e.id) FROM order_events e JOIN orders o ON o.id = e.order_id WHERE o.trade_no = '${r.json.trade_no}'`);
    assert.match(ev, /failover/);
  }
  // three failures in a row: open
  assert.equal(await breaker('mock'), 'open');
  const skipped = await m.call('POST', '/v1/orders', barcode('s2'));
  assert.equal(skipped.json.channel, 'swiftpass');
  assert.doesNotMatch(psql(`SELECT string_agg(source, ',') FROM order_events e JOIN orders o ON o.id = e.order_id WHERE o.trade_no = '${skipped.json.trade_no}'`), /failover/, 'an open breaker is skipped, not tried');
  // open period over: half-open; the probe fails (still down): open again
  await h.waitFor(async () => (await breaker('mock')) === 'half_open', 5000);
  const probe1 = await m.call('POST', '/v1/orders', barcode('s2'));
  assert.equal(probe1.json.channel, 'swiftpass');
  assert.equal(await breaker('mock'), 'open');
  // the channel comes back on the same port
  mock = await pg.startSim('mock', ['--key', MOCKKEY], { port: mockPort });
  await h.waitFor(async () => (await breaker('mock')) === 'half_open', 5000);
  const probe2 = await m.call('POST', '/v1/orders', barcode('s2'));
  assert.equal(probe2.json.channel, 'mock', probe2.body);
  assert.equal(await breaker('mock'), 'half_open', 'one success is not enough (close_after 2)');
  const probe3 = await m.call('POST', '/v1/orders', barcode('s2'));
  assert.equal(probe3.json.channel, 'mock');
  assert.equal(await breaker('mock'), 'closed');
  const back = await m.call('POST', '/v1/orders', { shop_id: 's2', out_trade_no: otn('Q'), amount: 100, subject: 'Tea', method: 'wechat_qr' });
  assert.equal(back.json.channel, 'mock');
  assert.equal(back.json.status, 'PENDING');
  for (const st of ['open', 'half_open', 'closed'])
    assert.ok(await metric('paygate_channel_breaker_transitions_total', ['channel="mock"', `state="${st}"`]) >= 1, st);
  assert.equal(await metric('paygate_channel_breaker_transitions_total', ['channel="mock"', 'state="open"']), 2);
});

test('fee rates: current, then future from future_from; half-up rounding; cashback', async () => {
  const fee = async (amount, method = 'barcode') => {
    const r = await m.call('POST', '/v1/orders', barcode('s1', { amount }));
    assert.equal(r.json.status, 'SUCCESS', r.body);
    const [rate, f, cb, settle] = psql(`SELECT rate_ppm || ' ' || fee || ' ' || cashback || ' ' || settle_amount FROM orders WHERE trade_no = '${r.json.trade_no}'`).split(' ').map(Number);
    assert.equal(settle, amount - f + cb);
    return { rate, fee: f, cashback: cb, method };
  };
  // 0.5 %: the half-fen cases
  await pg.admin(gw, 'PUT', '/admin/shops/s1/rates/swiftpass', { current_ppm: 5000 });
  assert.deepEqual([(await fee(100)).fee, (await fee(99)).fee, (await fee(300)).fee, (await fee(500)).fee], [1, 0, 2, 3]);
  // 0.38 % now, 0.6 % from two seconds on
  const from = new Date(Date.now() + 2000).toISOString();
  await pg.admin(gw, 'PUT', '/admin/shops/s1/rates/swiftpass', { current_ppm: 3800, future_ppm: 6000, future_from: from });
  const before = await fee(10000);
  assert.deepEqual([before.rate, before.fee], [3800, 38]);
  await new Promise((r) => setTimeout(r, Math.max(0, Date.parse(from) - Date.now()) + 300));
  const after = await fee(10000);
  assert.deepEqual([after.rate, after.fee], [6000, 60]);
  // cashback 0.1 % on barcode payments
  await pg.admin(gw, 'PUT', '/admin/shops/s1/cashback/barcode', { ppm: 1000 });
  const cb = await fee(12345);
  assert.equal(cb.cashback, 12); // 12.345 → 12
  assert.equal(cb.fee, 74);      // 74.07 → 74
});

test('merchants, shops and sub-merchants that orders name can be neither deleted nor renumbered', async () => {
  const r = await m.call('POST', '/v1/orders', barcode('s1', { amount: 100 }));
  assert.equal(r.json.status, 'SUCCESS', r.body);
  const [shop, merchant, sub] = psql(`SELECT shop_id || ' ' || merchant_id || ' ' || sub_merchant_id FROM orders WHERE trade_no = '${r.json.trade_no}'`).split(' ');
  const refused = (sql) => {
    let err = '';
    try { psql(sql); } catch (e) { err = String(e.stderr || e.message); }
    assert.match(err, /never deleted and keep their id/, sql);
  };
  refused(`DELETE FROM shops WHERE id = '${shop}'`);
  refused(`DELETE FROM merchants WHERE id = '${merchant}'`);
  refused(`DELETE FROM sub_merchants WHERE id = ${sub}`);
  refused(`UPDATE shops SET id = 'renamed' WHERE id = '${shop}'`);
  refused(`UPDATE sub_merchants SET id = id + 1000 WHERE id = ${sub}`);
  refused('TRUNCATE merchants CASCADE');
  // all still there, and the order still names them
  assert.equal(psql(`SELECT count(*) FROM orders o JOIN shops s ON s.id = o.shop_id JOIN merchants me ON me.id = o.merchant_id JOIN sub_merchants su ON su.id = o.sub_merchant_id WHERE o.trade_no = '${r.json.trade_no}'`), '1');
  // ordinary changes go on
  psql(`UPDATE shops SET name = name WHERE id = '${shop}'`);
});
