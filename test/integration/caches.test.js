'use strict';
/*
 * The in-process credential caches (merchant secrets, sub-merchant keys;
 * api.cache_ttl_ms): past the TTL an entry still serves while one
 * background read refreshes it — one read however many requests arrive —
 * and the refreshed entry then decides; an entry twice the TTL old is read
 * before use; a merchant or sub-merchant changed through this node's admin
 * API is read again at once (a change made on another node is simulated by
 * writing the row directly).  Counted with paygated's per-statement metrics, against
 * real PostgreSQL and Redis and the Swiftpass simulator.
 */
const test = require('node:test');
const assert = require('node:assert');
const h = require('../lib/harness');
const pg = require('../lib/paygate');

const TTL = 2000;
const MCH = '755437000051';
const KEY = 'caches-key-0123456789';
const SECRET1 = 'caches-secret-one-0123456789';
let services, sim, gw, shop;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const psql = (sql) => services.pg.query(sql);
let seq = 0;
const otn = () => `C${Date.now().toString(36)}${seq++}`;
const order = () => ({ shop_id: 's1', out_trade_no: otn(), amount: 100, subject: 'Tea', method: 'wechat_qr' });

/* how many times paygated sent the statement (its query-duration histogram) */
async function reads(stmt) {
  const r = await h.request({ port: gw.port, path: '/metrics' });
  const line = r.body.split('\n').find((l) => l.startsWith(`paygate_pg_query_duration_seconds_count{statement="${stmt}"}`));
  return line ? Number(line.split(' ').pop()) : 0;
}

test.before(async () => {
  services = await h.startServices();
  sim = await pg.startSim('swiftpass', ['--time-scale', '0.01']);
  await sim.ctl('POST', '/_sim/merchants', { mch_id: MCH, sign_type: 'MD5', key: KEY });
  gw = await h.startPaygated({
    services,
    config: {
      api: { cache_ttl_ms: TTL },
      channels: { settings: { swiftpass: { gateway_url: `${sim.url}/pay/gateway` } } },
    },
  });
  shop = await pg.setupShop(gw, { secret: SECRET1, subs: [{ channel: 'swiftpass', mch_id: MCH, key: KEY }], methods: ['wechat_qr'] });
});

test.after(async () => {
  if (gw) assert.equal((await gw.stop()).code, 0, gw.logs().slice(-3000));
  if (sim) await sim.stop();
  if (services) await services.close();
});

test('past the TTL, 20 concurrent orders are served from the entries and refresh each once', async () => {
  const first = await shop.call('POST', '/v1/orders', order());
  assert.equal(first.status, 200, first.body);
  const m0 = await reads('merchant_get');
  const s0 = await reads('sub_get');
  assert.ok(m0 >= 1 && s0 >= 1, `the first order read both (${m0}, ${s0})`);
  // fresh: no read at all
  assert.equal((await shop.call('POST', '/v1/orders', order())).status, 200);
  assert.equal(await reads('merchant_get'), m0);
  assert.equal(await reads('sub_get'), s0);
  // stale (older than the TTL, younger than twice it)
  await sleep(TTL + 300);
  const replies = await Promise.all(Array.from({ length: 20 }, () => shop.call('POST', '/v1/orders', order())));
  for (const r of replies) {
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json.status, 'PENDING');
  }
  await h.waitFor(async () => (await reads('merchant_get')) > m0 && (await reads('sub_get')) > s0, 5000);
  await sleep(200);
  assert.equal(await reads('merchant_get'), m0 + 1, 'one background read of the merchant');
  assert.equal(await reads('sub_get'), s0 + 1, 'one background read of the sub-merchant');
  // refreshed: fresh again, no read
  assert.equal((await shop.call('POST', '/v1/orders', order())).status, 200);
  assert.equal(await reads('merchant_get'), m0 + 1);
});

test('a secret rotated on another node: the stale entry still accepts the old one, the refreshed entry only the new one', async () => {
  const secret2 = 'caches-secret-two-0123456789';
  // what another node's admin API writes (this node's cache is not told)
  psql(`UPDATE merchants SET secret = '${secret2}', updated_at = now() WHERE id = 'm1'`);
  const call2 = pg.merchantClient(gw, 'm1', secret2);
  await sleep(TTL + 300);
  const m0 = await reads('merchant_get');
  const old = await shop.call('GET', '/v1/orders?out_trade_no=none-such');
  assert.notEqual(old.status, 401, `the stale entry still knows the old secret: ${old.body}`);
  await h.waitFor(async () => (await reads('merchant_get')) === m0 + 1, 5000);
  await h.waitFor(async () => (await call2('GET', '/v1/orders?out_trade_no=none-such')).status !== 401, 5000);
  const refused = await shop.call('GET', '/v1/orders?out_trade_no=none-such');
  assert.equal(refused.status, 401, refused.body);
  assert.equal(refused.json.error.code, 'bad_signature');
  shop.call = call2;
});

test('an entry twice the TTL old is read before use: a merchant disabled elsewhere is refused at once', async () => {
  psql("UPDATE merchants SET status = 'disabled', updated_at = now() WHERE id = 'm1'");
  await sleep(2 * TTL + 300);
  const m0 = await reads('merchant_get');
  const r = await shop.call('POST', '/v1/orders', order());
  assert.equal(r.status, 403, r.body);
  assert.equal(r.json.error.code, 'merchant_disabled');
  assert.equal(await reads('merchant_get'), m0 + 1, 'read before the answer');
  psql("UPDATE merchants SET status = 'active', updated_at = now() WHERE id = 'm1'");
});

test('a merchant changed through this node is read again at once: a new secret and a disabled merchant', async () => {
  // a fresh entry first: nothing would be read without the forget
  await sleep(2 * TTL + 300);
  assert.equal((await shop.call('GET', '/v1/orders?out_trade_no=none-such')).status, 404);
  const secret3 = 'caches-secret-three-0123456789';
  const put = await pg.admin(gw, 'PUT', '/admin/merchants/m1', { name: 'Merchant m1', secret: secret3 });
  assert.deepEqual(Object.keys(put.result), ['id'], 'the answer holds no cache bookkeeping');
  const refused = await shop.call('GET', '/v1/orders?out_trade_no=none-such');
  assert.equal(refused.status, 401, refused.body);
  assert.equal(refused.json.error.code, 'bad_signature');
  const call3 = pg.merchantClient(gw, 'm1', secret3);
  assert.equal((await call3('GET', '/v1/orders?out_trade_no=none-such')).status, 404);
  await pg.admin(gw, 'PUT', '/admin/merchants/m1', { name: 'Merchant m1', secret: secret3, status: 'disabled' });
  const r = await call3('POST', '/v1/orders', order());
  assert.equal(r.status, 403, r.body);
  assert.equal(r.json.error.code, 'merchant_disabled');
  await pg.admin(gw, 'PUT', '/admin/merchants/m1', { name: 'Merchant m1', secret: secret3 });
  shop.call = call3;
});

test('a sub-merchant changed through this node is read again at once, not served stale', async () => {
  // the simulator learns a new key; the old one would fail its signature check
  const key2 = 'caches-key-two-0123456789';
  await sim.ctl('POST', '/_sim/merchants', { mch_id: MCH, sign_type: 'MD5', key: key2 });
  const sub = shop.subIds[0];
  // an upsert on (channel, mch_id): the same row, a new key
  const again = await pg.admin(gw, 'POST', '/admin/sub-merchants', { channel: 'swiftpass', mch_id: MCH, key: key2 });
  assert.equal(again.result.id, sub);
  // wait out the disabled merchant's entry (twice the TTL) so the merchant is read again
  await sleep(2 * TTL + 300);
  const s0 = await reads('sub_get');
  const r = await shop.call('POST', '/v1/orders', order());
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 'PENDING', 'signed with the new key');
  assert.equal(await reads('sub_get'), s0 + 1);
});
