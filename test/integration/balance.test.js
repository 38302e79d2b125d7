'use strict';
/*
 * Balance (stored value): a ledger that never goes negative and always sums
 * up.  Top-ups (idempotent), payments through the ordinary create-order
 * call and routing, refunds crediting back, the statement with running
 * balances, concurrency from two gateway processes, and kill -9 in the
 * middle of payments and refunds.
 */
const test = require('node:test');
const assert = require('node:assert');
const h = require('../lib/harness');
const pg = require('../lib/paygate');

let services, gw, shop;

const psql = (sql) => services.pg.query(sql);

const CFG = { tasks: { time_scale: 0.01, tick_ms: 20 } };

async function topup(customer, amount, requestId) {
  return pg.admin(gw, 'POST', `/admin/balances/m1/${customer}`, { amount, kind: 'topup', reason: 'test top-up', operator_id: 'op-7', request_id: requestId });
}

let seq = 0;
const otn = (p) => `${p}${process.pid}x${seq++}`;
const pay = (call, customer, amount, extra = {}, opts = {}) => call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('BAL'), amount, subject: 'coffee', method: 'balance', customer_id: customer, ...extra }, opts);

/* the ledger invariant for every account */
function assertLedger() {
  const bad = psql(`SELECT a.merchant_id || '/' || a.customer_id || ' ' || a.balance || ' vs ' || COALESCE(sum(e.amount), 0)
                      FROM balance_accounts a LEFT JOIN balance_entries e USING (merchant_id, customer_id)
                     GROUP BY a.merchant_id, a.customer_id, a.balance HAVING a.balance <> COALESCE(sum(e.amount), 0)`);
  assert.equal(bad, '', `balance = sum of entries: ${bad}`);
  assert.equal(psql('SELECT count(*) FROM balance_accounts WHERE balance < 0'), '0');
  // running balances: each entry's balance_after = previous + amount
  const chain = psql(`SELECT count(*) FROM (SELECT balance_after, amount,
                        lag(balance_after, 1, 0::bigint) OVER (PARTITION BY merchant_id, customer_id ORDER BY id) AS prev
                        FROM balance_entries) x WHERE balance_after <> prev + amount`);
  assert.equal(chain, '0', 'running balance chain');
  // a paid balance order has exactly one debit, a failed one none
  assert.equal(psql(`SELECT count(*) FROM orders o WHERE method = 'balance' AND status = 'SUCCESS'
                       AND (SELECT count(*) FROM balance_entries e WHERE e.order_id = o.id AND kind = 'pay') <> 1`), '0');
  assert.equal(psql(`SELECT count(*) FROM orders o WHERE method = 'balance' AND status <> 'SUCCESS'
                       AND EXISTS (SELECT 1 FROM balance_entries e WHERE e.order_id = o.id AND kind = 'pay')`), '0');
  assert.equal(psql(`SELECT count(*) FROM refunds r JOIN orders o ON o.id = r.order_id WHERE o.method = 'balance'
                       AND (SELECT count(*) FROM balance_entries e WHERE e.refund_id = r.id) <> (CASE WHEN r.status = 'SUCCESS' THEN 1 ELSE 0 END)`), '0');
}

test.before(async () => {
  services = await h.startServices();
  gw = await h.startPaygated({ services, config: CFG });
  shop = await pg.setupShop(gw, { subs: [{ channel: 'balance', mch_id: 'BALANCE-m1' }], methods: ['balance'] });
});

test.after(async () => {
  if (gw) assert.equal((await gw.stop()).code, 0, gw.logs().slice(-3000));
  if (services) await services.close();
});

test('top-ups are idempotent per request_id; an unknown account has balance 0', async () => {
  const zero = await shop.call('GET', '/v1/balances/nobody');
  assert.deepEqual([zero.status, zero.json.balance], [200, 0]);
  const a = await topup('alice', 1000, 'T-1');
  const b = await topup('alice', 1000, 'T-1');
  assert.equal(a.result.balance_after, 1000);
  assert.equal(b.result.repeated, true);
  const bal = await shop.call('GET', '/v1/balances/alice');
  assert.equal(bal.json.balance, 1000);
  const conflict = await h.request({ port: gw.adminPort, method: 'POST', path: '/admin/balances/m1/alice',
    headers: { Authorization: `Bearer ${gw.adminToken}` }, body: { amount: 999, kind: 'topup', reason: 'x', operator_id: 'op', request_id: 'T-1' } });
  assert.equal(conflict.status, 200);
  assert.equal(conflict.json.result.error, 'conflict');
  const neg = await h.request({ port: gw.adminPort, method: 'POST', path: '/admin/balances/m1/alice',
    headers: { Authorization: `Bearer ${gw.adminToken}` }, body: { amount: -5000, kind: 'adjust', reason: 'x', operator_id: 'op' } });
  assert.equal(neg.json.result.error, 'insufficient_balance', 'an adjustment cannot go below zero');
  assertLedger();
});

test('pay from balance: immediate SUCCESS, then a clear insufficient_balance; an identical repeat charges once', async () => {
  await topup('bob', 300, 'T-bob');
  const body = { shop_id: 's1', out_trade_no: otn('R'), amount: 200, subject: 'tea', method: 'balance', customer_id: 'bob' };
  const r1 = await shop.call('POST', '/v1/orders', body);
  assert.equal(r1.status, 200, r1.body);
  assert.equal(r1.json.status, 'SUCCESS');
  const r2 = await shop.call('POST', '/v1/orders', body);
  assert.equal(r2.json.trade_no, r1.json.trade_no);
  assert.equal((await shop.call('GET', '/v1/balances/bob')).json.balance, 100);
  const poor = await pay(shop.call, 'bob', 101);
  assert.equal(poor.status, 422);
  assert.equal(poor.json.error.code, 'insufficient_balance');
  assert.equal(poor.json.order.status, 'FAILED');
  assert.equal((await shop.call('GET', '/v1/balances/bob')).json.balance, 100);
  const noCustomer = await shop.call('POST', '/v1/orders', { ...body, out_trade_no: otn('R'), customer_id: undefined });
  assert.equal(noCustomer.status, 400);
  assertLedger();
});

test('refunds credit the account back; the statement pages with running balances', async () => {
  await topup('carol', 1000, 'T-carol');
  const p = await pay(shop.call, 'carol', 400);
  assert.equal(p.json.status, 'SUCCESS');
  const rf = await shop.call('POST', `/v1/orders/${p.json.trade_no}/refunds`, { out_refund_no: otn('RF'), amount: 150 });
  assert.equal(rf.json.status, 'SUCCESS', rf.body);
  assert.equal((await shop.call('GET', '/v1/balances/carol')).json.balance, 750);
  const over = await shop.call('POST', `/v1/orders/${p.json.trade_no}/refunds`, { out_refund_no: otn('RF'), amount: 251 });
  assert.equal(over.status, 422);
  const page1 = await shop.call('GET', '/v1/balances/carol/entries?limit=2');
  assert.deepEqual(page1.json.entries.map((e) => [e.kind, e.amount, e.balance_after]), [['refund', 150, 750], ['pay', -400, 600]]);
  const page2 = await shop.call('GET', `/v1/balances/carol/entries?limit=2&before=${page1.json.next_before}`);
  assert.deepEqual(page2.json.entries.map((e) => [e.kind, e.amount, e.balance_after]), [['topup', 1000, 1000]]);
  assert.equal(page2.json.next_before, undefined);
  assertLedger();
});

test('concurrent payments from two gateway processes: exactly as many succeed as the balance allows', async () => {
  const gw2 = await h.startPaygated({ services, config: { ...CFG, tasks: { ...CFG.tasks, node_id: 'two' } } });
  try {
    const call2 = pg.merchantClient(gw2, shop.merchant, shop.secret);
    await topup('dave', 1000, 'T-dave');
    const rs = await Promise.all(Array.from({ length: 30 }, (_, i) => pay(i % 2 ? call2 : shop.call, 'dave', 100)));
    const ok = rs.filter((r) => r.status === 200 && r.json.status === 'SUCCESS');
    const refused = rs.filter((r) => r.status === 422 && r.json.error.code === 'insufficient_balance');
    assert.equal(ok.length, 10, rs.map((r) => r.status).join(','));
    assert.equal(refused.length, 20);
    // refunds, also concurrent, credit back exactly
    const refunds = await Promise.all(ok.slice(0, 4).map((r, i) => (i % 2 ? call2 : shop.call)('POST', `/v1/orders/${r.json.trade_no}/refunds`, { out_refund_no: otn('DR'), amount: 60 })));
    for (const r of refunds) assert.equal(r.json.status, 'SUCCESS', r.body);
    assert.equal((await shop.call('GET', '/v1/balances/dave')).json.balance, 1000 - 1000 + 240);
    assertLedger();
  } finally {
    assert.equal((await gw2.stop()).code, 0);
  }
});

test('kill -9 during concurrent payments and refunds: the ledger still holds', async () => {
  await topup('erin', 5000, 'T-erin');
  const paid = [];
  let stop = false;
  const worker = async (k) => {
    for (let i = 0; !stop; i++) {
      try {
        const r = await pay(shop.call, 'erin', 100 + k, {}, { timeoutMs: 3000 });
        if (r.json && r.json.status === 'SUCCESS') {
          paid.push(r.json.trade_no);
          if (i % 2 === 0) await shop.call('POST', `/v1/orders/${r.json.trade_no}/refunds`, { out_refund_no: otn('ER'), amount: 50 }, { timeoutMs: 3000 });
        }
      } catch (_) { /* the daemon died under us: expected */ }
    }
  };
  const workers = [0, 1, 2, 3].map(worker);
  await new Promise((r) => setTimeout(r, 700 + Math.floor(Math.random() * 800)));
  await gw.kill();
  stop = true;
  await Promise.all(workers);
  assert.ok(paid.length > 0, 'payments flowed before the kill');
  gw = await h.startPaygated({ services, config: CFG });
  shop.call = pg.merchantClient(gw, shop.merchant, shop.secret);
  // the tasks finish what the crash interrupted
  await h.waitFor(() => psql("SELECT count(*) FROM orders WHERE method = 'balance' AND status NOT IN ('SUCCESS', 'FAILED', 'CLOSED')") === '0'
    && psql("SELECT count(*) FROM refunds WHERE status = 'PROCESSING'") === '0', 30000);
  for (const t of paid) assert.equal(psql(`SELECT status FROM orders WHERE trade_no = '${t}'`), 'SUCCESS');
  assertLedger();
  const [bal, expect] = psql(`SELECT a.balance || ' ' || (5000
      - (SELECT COALESCE(sum(amount), 0) FROM orders WHERE customer_id = 'erin' AND status = 'SUCCESS')
      + (SELECT COALESCE(sum(r.amount), 0) FROM refunds r JOIN orders o ON o.id = r.order_id WHERE o.customer_id = 'erin' AND r.status = 'SUCCESS'))
      FROM balance_accounts a WHERE customer_id = 'erin'`).split(' ');
  assert.equal(bal, expect, 'balance = top-ups - payments + refunds');
});
