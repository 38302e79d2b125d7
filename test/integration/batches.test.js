'use strict';
/*
 * PostgreSQL batches (docs/architecture.md "PostgreSQL batches",
 * storage/migrations/0011_batches.sql): storage/pg.c sends the jobs of one
 * statement queued in the same loop turn as ONE statement of its batch form.
 * One request at a time never forms a batch, so the other tests hardly ever
 * run gw_order_create_many, gw_order_transition_first_many or
 * gw_notify_ingest_many.  This file sends bursts of concurrent requests so
 * that batches do form, and checks that the outcome is exactly what the
 * single functions give:
 *   1. c-to-b creates + first transitions, with identical repeats and
 *      conflicting reuses of an out_trade_no in the same burst; fees and
 *      cashback computed by the batch insert (they used to be a trigger);
 *   2. b-to-c immediate successes: CREATED→SUCCESS and the merchant
 *      notification written by the first-transition batch;
 *   3. Swiftpass payment notifications: genuine, duplicate, wrong amount,
 *      forged, and for a closed / failed order, all at once.
 * Nothing here depends on how the jobs were grouped: every assertion except
 * "the batch counters moved" holds just as well when each job runs alone
 * (which pg.c does anyway for what a batch form leaves to the single one).
 * Real PostgreSQL and Redis, the Swiftpass module and its simulator.
 */
const test = require('node:test');
const assert = require('node:assert');
const crypto = require('node:crypto');
const http = require('node:http');
const { spawnSync } = require('node:child_process');
const h = require('../lib/harness');
const pg = require('../lib/paygate');

const MCH = '755437000061';
const KEY = 'batches-md5-key-000000000061';
const RATE_PPM = 5000;      // 0.5 %: amount ≡ 100 (mod 200) is exactly half a fen
const CB_QR_PPM = 1000;     // 0.1 % cashback on wechat_qr: amount ≡ 500 (mod 1000) is half a fen
const CB_BAR_PPM = 1500;    // 0.15 % on barcode
const GOOD_CODE = '134567890123456781';   // the simulator pays it at once
const FAIL_CODE = '134567890123450000';   // the simulator declines it
let services, sim, gw, shop, merchant;

const psql = (sql) => services.pg.query(sql);
/* The rows of a query as objects. */
function rows(sql) {
  return JSON.parse(psql(`SELECT COALESCE(json_agg(x), '[]') FROM (${sql}) x`));
}
const lit = (a) => `ARRAY[${a.map((s) => `'${s}'`).join(',')}]::text[]`;

/* ppm of an amount rounded half up to the fen, as gw_ppm_of (0003). */
const ppmOf = (amount, ppm) => Math.floor((amount * ppm + 500000) / 1000000);

/* Swiftpass MD5 sign and XML, computed here independently of the C module
 * (as in orders_swiftpass.test.js). */
function spSign(fields, key) {
  const s = Object.keys(fields).filter((k) => k !== 'sign' && fields[k] !== '' && fields[k] != null)
    .sort().map((k) => `${k}=${fields[k]}`).join('&');
  return crypto.createHash('md5').update(`${s}&key=${key}`, 'utf8').digest('hex').toUpperCase();
}
function spXml(fields) {
  return '<xml>' + Object.entries(fields).map(([k, v]) => `<${k}><![CDATA[${v}]]></${k}>`).join('') + '</xml>';
}
/* A signed "paid" notification for one of our orders. */
function paidNotification(tradeNo, totalFee, transactionId, key = KEY) {
  const f = {
    version: '2.0', charset: 'UTF-8', sign_type: 'MD5', status: '0', result_code: '0', pay_result: '0',
    mch_id: MCH, nonce_str: crypto.randomBytes(8).toString('hex'), out_trade_no: tradeNo,
    transaction_id: transactionId, total_fee: String(totalFee), trade_type: 'pay.weixin.native',
    time_end: '20261128120000',
  };
  f.sign = spSign(f, key);
  return spXml(f);
}
function postNotify(xml) {
  return h.request({
    port: gw.port, method: 'POST', path: '/notify/swiftpass',
    headers: { 'Content-Type': 'text/xml; charset=UTF-8' }, body: xml, timeoutMs: 30000,
  });
}

/* The merchant's endpoint for order.paid: acknowledges everything. */
function merchantServer() {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => { res.writeHead(200, { 'Content-Type': 'text/plain' }); res.end('success'); });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}/paid`,
    close: () => new Promise((r) => server.close(r)),
  })));
}

async function batchCounters() {
  const r = await h.request({ port: gw.port, path: '/metrics' });
  assert.equal(r.status, 200);
  const get = (name) => {
    const m = new RegExp(`^${name}(?:\\{\\})? (\\S+)$`, 'm').exec(r.body);
    assert.ok(m, `${name} in /metrics`);
    return Number(m[1]);
  };
  return { batches: get('paygate_postgres_batches_total'), jobs: get('paygate_postgres_batched_jobs_total') };
}

/* Runs fn (a burst) and returns [its result, how far the batch counters moved]. */
async function measured(t, label, fn) {
  const before = await batchCounters();
  const result = await fn();
  const after = await batchCounters();
  const d = { batches: after.batches - before.batches, jobs: after.jobs - before.jobs };
  t.diagnostic(`${label}: ${d.batches} batch(es) carrying ${d.jobs} job(s)`);
  return [result, d];
}

/* Every request is built first, then all are started in the same tick:
 * fresh connections that paygated reads in the same few loop turns. */
const burst = (thunks) => Promise.all(thunks.map((f) => f()));

/* A fixed permutation (no Math.random: a failure must be reproducible). */
function shuffled(a) {
  const out = a.slice();
  let s = 12345;
  for (let i = out.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) % 2147483648;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

let seq = 0;
const otn = (p) => `${p}${process.pid}x${seq++}`;

function eventsOf(orderIds) {
  const r = rows(`SELECT o.id, string_agg(COALESCE(e.from_status, 'null') || '>' || e.to_status || ':' || e.source,
                                         ',' ORDER BY e.id) AS ev
                    FROM orders o LEFT JOIN order_events e ON e.order_id = o.id
                   WHERE o.id = ANY (ARRAY[${orderIds.join(',')}]::bigint[]) GROUP BY o.id`);
  return new Map(r.map((x) => [Number(x.id), x.ev]));
}

test.before(async () => {
  services = await h.startServices();
  sim = await pg.startSim('swiftpass', ['--time-scale', '0.01']);
  await sim.ctl('POST', '/_sim/merchants', { mch_id: MCH, sign_type: 'MD5', key: KEY });
  await sim.ctl('POST', '/_sim/settings', { close_min_age_s: 0 });
  merchant = await merchantServer();
  gw = await h.startPaygated({
    services,
    config: {
      channels: {
        call_timeout_ms: 10000,
        settings: { swiftpass: { gateway_url: `${sim.url}/pay/gateway` } },
      },
    },
  });
  shop = await pg.setupShop(gw, { subs: [{ channel: 'swiftpass', mch_id: MCH, key: KEY }] });
  await pg.admin(gw, 'PUT', '/admin/shops/s1/rates/swiftpass', { current_ppm: RATE_PPM });
  await pg.admin(gw, 'PUT', '/admin/shops/s1/cashback/wechat_qr', { ppm: CB_QR_PPM });
  await pg.admin(gw, 'PUT', '/admin/shops/s1/cashback/barcode', { ppm: CB_BAR_PPM });
  // one order of each kind first, so that the caches (merchant, routes,
  // sub-merchant) are warm and the bursts below reach PostgreSQL together
  for (const b of [{ method: 'wechat_qr' }, { method: 'barcode', auth_code: GOOD_CODE }]) {
    const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('W'), amount: 100, subject: 'warm-up', ...b });
    assert.equal(r.status, 200, r.body);
  }
});

test.after(async () => {
  if (gw) {
    const logs = gw.logs();
    const failed = logs.split('\n').filter((l) => /a batch of \d+ .* jobs failed/.test(l));
    // a failed batch is not an error (its jobs run alone), but worth seeing
    if (failed.length) console.log(`batches that fell back to one by one:\n${failed.join('\n')}`);
    const r = await gw.stop();
    assert.equal(r.code, 0, `paygated exit status\n${gw.logs().slice(-3000)}`);
  }
  if (merchant) await merchant.close();
  if (sim) await sim.stop();
  if (services) await services.close();
});

test('a burst of c-to-b creates: repeats, conflicts, fees and the first transition as if one by one', async (t) => {
  const N = 40;
  const distinct = Array.from({ length: N }, (_, i) => ({
    shop_id: 's1', out_trade_no: otn('C'), amount: 100 + 50 * i, subject: `Tea ${i}`, method: 'wechat_qr',
    ...(i % 4 !== 3 ? { notify_url: merchant.url } : {}),
  }));
  // identical repeats of 5 orders; 2 reuses of an out_trade_no with another amount
  const repeats = [0, 7, 14, 21, 28].map((i) => distinct[i]);
  const conflicts = [10, 33].map((i) => ({ ...distinct[i], amount: distinct[i].amount + 1 }));
  const sends = [
    ...distinct.map((b) => ({ kind: 'distinct', b })),
    ...repeats.map((b) => ({ kind: 'repeat', b })),
    ...conflicts.map((b) => ({ kind: 'conflict', b })),
  ];
  // The burst must be big and simultaneous enough for jobs of one statement
  // to meet in one loop turn; if batches ever stop forming here, grow N
  // rather than weakening the metric assertion at the end.
  const [res, d] = await measured(t, 'creates', () =>
    burst(sends.map((s) => () => shop.call('POST', '/v1/orders', s.b, { timeoutMs: 30000 }))));
  sends.forEach((s, k) => { s.r = res[k]; });
  for (const s of sends) assert.ok([200, 409].includes(s.r.status), `${s.kind} ${s.b.out_trade_no}: ${s.r.status} ${s.r.body}`);

  // Per out_trade_no: every request identical to the stored order gets it
  // (200, the same trade_no), any other is 409 conflict.  Which of an
  // original and its conflicting reuse arrives first is a race with or
  // without batches, so "the conflicting one" is whichever lost it: exactly
  // one 409 per contested out_trade_no.
  const byOtn = new Map();
  for (const s of sends) {
    if (!byOtn.has(s.b.out_trade_no)) byOtn.set(s.b.out_trade_no, []);
    byOtn.get(s.b.out_trade_no).push(s);
  }
  const stored = new Map(rows(`SELECT id, out_trade_no, trade_no, amount, status, rate_ppm, fee, cashback,
                                      settle_amount, pay_data, notify_url
                                 FROM orders WHERE out_trade_no = ANY (${lit([...byOtn.keys()])})`)
    .map((o) => [o.out_trade_no, o]));
  assert.equal(stored.size, N, 'one row per distinct out_trade_no');
  assert.equal(psql(`SELECT count(*) FROM orders WHERE out_trade_no = ANY (${lit([...byOtn.keys()])})`), String(N));
  let n409 = 0;
  for (const [no, group] of byOtn) {
    const o = stored.get(no);
    assert.ok(o, `order ${no} stored`);
    const winners = group.filter((s) => s.b.amount === o.amount);
    const losers = group.filter((s) => s.b.amount !== o.amount);
    assert.ok(winners.length >= 1, `${no}: the stored amount ${o.amount} is one that was asked for`);
    for (const s of winners) {
      assert.equal(s.r.status, 200, `${s.kind} ${no}: ${s.r.body}`);
      assert.equal(s.r.json.trade_no, o.trade_no, `${s.kind} ${no}: the same order`);
    }
    for (const s of losers) {
      assert.equal(s.r.status, 409, `${s.kind} ${no} (amount ${s.b.amount}): ${s.r.body}`);
      assert.equal(s.r.json.error.code, 'conflict');
      n409++;
    }
    // the request that created it called the channel: PENDING with a code_url
    // (a repeat may have been answered before the first transition)
    assert.ok(winners.some((s) => s.r.json.status === 'PENDING' && /^http/.test(s.r.json.pay_data && s.r.json.pay_data.code_url)),
      `${no}: one answer is PENDING with a code_url: ${winners.map((s) => s.r.body).join('\n')}`);
    for (const s of winners) assert.ok(['CREATED', 'PENDING'].includes(s.r.json.status), s.r.body);
    // the answer of the request that made the transition is the stored row
    for (const s of winners) if (s.r.json.status === 'PENDING' && s.kind === 'distinct') assertReplyIsRow(s.r.json);
    assert.equal(o.status, 'PENDING', no);
    assert.match(o.pay_data.code_url, /^http/, no);
    // fee and cashback fixed by the insert from the shop's rate (0011)
    assert.equal(o.rate_ppm, RATE_PPM, no);
    assert.equal(o.fee, ppmOf(o.amount, RATE_PPM), `${no}: fee of ${o.amount}`);
    assert.equal(o.cashback, ppmOf(o.amount, CB_QR_PPM), `${no}: cashback of ${o.amount}`);
    assert.equal(o.settle_amount, o.amount - o.fee + o.cashback, no);
    const mine = group.find((s) => s.b.amount === o.amount).b;
    assert.equal(o.notify_url, mine.notify_url ?? null, no);
  }
  assert.equal(n409, conflicts.length, 'one 409 per reused out_trade_no');
  // the half-fen cases were among them and rounded up
  assert.equal(ppmOf(100, RATE_PPM), 1);
  assert.equal(ppmOf(500, CB_QR_PPM), 1);
  assert.ok([...stored.values()].some((o) => o.amount === 100 && o.fee === 1));
  assert.ok([...stored.values()].some((o) => o.amount === 500 && o.cashback === 1));

  // exactly two events each: NULL→CREATED (api), CREATED→PENDING (channel)
  const ev = eventsOf([...stored.values()].map((o) => o.id));
  for (const o of stored.values()) {
    assert.equal(ev.get(Number(o.id)), 'null>CREATED:api,CREATED>PENDING:channel', o.out_trade_no);
  }
  // the channel was asked once per order, never for the 409s
  const reqs = (await sim.ctl('GET', '/_sim/requests?limit=1000')).json
    .filter((x) => x.service === 'unified.trade.native');
  for (const o of stored.values()) {
    assert.equal(reqs.filter((x) => x.out_trade_no === o.trade_no).length, 1, `${o.out_trade_no}: one channel call`);
  }
  // batching happened (its size is up to the loop and the database)
  assert.ok(d.batches >= 1, `no batch formed during the burst: ${JSON.stringify(d)}`);
  assert.ok(d.jobs >= 10, `fewer than 10 jobs went in batches: ${JSON.stringify(d)}`);
});

/* The fields of an order in the merchant API (core/api.c order_view_keys;
 * null ones are left out). */
const VIEW_KEYS = ['trade_no', 'out_trade_no', 'merchant_id', 'shop_id', 'amount', 'currency', 'subject',
  'method', 'status', 'pay_data', 'channel', 'channel_trade_no', 'channel_code', 'channel_msg',
  'refunded_amount', 'fee', 'settle_amount', 'customer_id', 'attach', 'created_at', 'paid_at',
  'expire_at', 'updated_at'];
/* The order's row as the merchant API shows it. */
function rowView(tradeNo) {
  const o = JSON.parse(psql(`SELECT row_to_json(o) FROM orders o WHERE trade_no = '${tradeNo}'`));
  return Object.fromEntries(VIEW_KEYS.filter((k) => o[k] !== null && o[k] !== undefined).map((k) => [k, o[k]]));
}
/* A reply made after the first-transition batch (which answers only the
 * columns it set, 0018, merged into the created row by paygated) is the
 * stored row, field for field. */
function assertReplyIsRow(reply) {
  const got = Object.fromEntries(VIEW_KEYS.filter((k) => k in reply).map((k) => [k, reply[k]]));
  assert.deepEqual(got, rowView(reply.trade_no), `reply of ${reply.trade_no}`);
}

/* The orders table's update counters (PostgreSQL's statistics reach
 * pg_stat_user_tables within a second or so of each transaction). */
const updCounters = () => {
  const [upd, hot] = psql(`SELECT n_tup_upd || ' ' || n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'orders'`)
    .split(' ').map(Number);
  return { upd, hot };
};

test('a c-to-b order\'s first check is fixed when it is created; its first transition is a HOT update (0017)', async () => {
  // the due index names next_check_at only (status is not in its predicate)
  const def = psql(`SELECT indexdef FROM pg_indexes WHERE indexname = 'orders_due_idx'`);
  assert.match(def, /WHERE \(next_check_at IS NOT NULL\)$/, def);
  assert.match(psql(`SELECT reloptions::text FROM pg_class WHERE relname = 'orders'`), /fillfactor=70/);

  const before = updCounters();
  const bodies = Array.from({ length: 8 }, (_, i) => ({
    shop_id: 's1', out_trade_no: otn('H'), amount: 200 + i, subject: `HOT ${i}`, method: i % 2 ? 'alipay_qr' : 'wechat_qr',
  }));
  const res = await burst(bodies.map((b) => () => shop.call('POST', '/v1/orders', b, { timeoutMs: 30000 })));
  res.forEach((r) => assert.equal(r.status, 200, r.body));
  // the later of created_grace_s (30) and pending_grace_s (60), counted from
  // the creation (created_at and next_check_at are both the insert's now())
  // and kept by the transition to PENDING
  const got = rows(`SELECT id, status, extract(epoch FROM next_check_at - created_at)::float8 AS first_check_s
                      FROM orders WHERE out_trade_no = ANY (${lit(bodies.map((b) => b.out_trade_no))})`);
  assert.equal(got.length, bodies.length);
  for (const o of got) {
    assert.equal(o.status, 'PENDING', JSON.stringify(o));
    assert.equal(o.first_check_s, 60, JSON.stringify(o));
  }
  const ev = eventsOf(got.map((o) => o.id));
  for (const o of got) assert.equal(ev.get(Number(o.id)), 'null>CREATED:api,CREATED>PENDING:channel');
  // one update per order (the first transition), each of them HOT: no
  // indexed column changed.  (Before 0017 none was: status and
  // next_check_at were in orders_due_idx.)  Other updates meanwhile, if any,
  // only add to both counts.
  let after = updCounters();
  for (let i = 0; i < 50 && after.upd - before.upd < bodies.length; i++) {
    await new Promise((r) => setTimeout(r, 100));
    after = updCounters();
  }
  assert.ok(after.upd - before.upd >= bodies.length, `updates counted: ${JSON.stringify({ before, after })}`);
  assert.ok(after.hot - before.hot >= bodies.length, `HOT updates: ${JSON.stringify({ before, after })}`);
});

test('a burst of b-to-c immediate successes: one SUCCESS event and one order.paid each', async (t) => {
  const N = 30;
  // the simulator's own notifications for these payments are dropped, so
  // that the first transition (the batch form) is what makes them SUCCESS
  const fr = await sim.ctl('POST', '/_sim/faults', { drop_notify: true, count: N, service: 'unified.trade.micropay' });
  assert.equal(fr.status, 200, fr.body);
  const bodies = Array.from({ length: N }, (_, i) => ({
    shop_id: 's1', out_trade_no: otn('B'), amount: 1000 + 333 * i, subject: `Tea ${i}`, method: 'barcode',
    auth_code: GOOD_CODE, ...(i % 3 !== 2 ? { notify_url: merchant.url } : {}),
  }));
  let res, d;
  try {
    [res, d] = await measured(t, 'b-to-c', () =>
      burst(bodies.map((b) => () => shop.call('POST', '/v1/orders', b, { timeoutMs: 30000 }))));
  } finally {
    await sim.ctl('DELETE', '/_sim/faults');
  }
  res.forEach((r, i) => {
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json.status, 'SUCCESS', r.body);
    assert.equal(r.json.out_trade_no, bodies[i].out_trade_no);
    assert.ok(r.json.channel_trade_no, r.body);
    assertReplyIsRow(r.json); // paid_at and the channel's fields included
  });
  const got = rows(`SELECT id, out_trade_no, trade_no, amount, status, paid_at, channel_trade_no, notify_url,
                          fee, cashback, settle_amount
                     FROM orders WHERE out_trade_no = ANY (${lit(bodies.map((b) => b.out_trade_no))})`);
  assert.equal(got.length, N);
  const ev = eventsOf(got.map((o) => o.id));
  const notes = rows(`SELECT order_id, event, url, payload FROM merchant_notifications
                       WHERE order_id = ANY (ARRAY[${got.map((o) => o.id).join(',')}]::bigint[])`);
  for (const o of got) {
    const i = bodies.findIndex((b) => b.out_trade_no === o.out_trade_no);
    assert.equal(o.trade_no, res[i].json.trade_no);
    assert.equal(o.status, 'SUCCESS', o.out_trade_no);
    assert.ok(o.paid_at, `${o.out_trade_no}: paid_at`);
    assert.equal(o.channel_trade_no, res[i].json.channel_trade_no);
    assert.equal(o.fee, ppmOf(o.amount, RATE_PPM), o.out_trade_no);
    assert.equal(o.cashback, ppmOf(o.amount, CB_BAR_PPM), o.out_trade_no);
    assert.equal(o.settle_amount, o.amount - o.fee + o.cashback, o.out_trade_no);
    assert.equal(ev.get(Number(o.id)), 'null>CREATED:api,CREATED>SUCCESS:channel', o.out_trade_no);
    const mine = notes.filter((x) => Number(x.order_id) === Number(o.id));
    if (bodies[i].notify_url) {
      assert.equal(mine.length, 1, `${o.out_trade_no}: one merchant notification: ${JSON.stringify(mine)}`);
      assert.equal(mine[0].event, 'order.paid');
      assert.equal(mine[0].url, merchant.url);
      assert.equal(mine[0].payload.event, 'order.paid');
      assert.equal(mine[0].payload.order.trade_no, o.trade_no);
      assert.equal(mine[0].payload.order.status, 'SUCCESS');
      assert.equal(mine[0].payload.order.amount, o.amount);
      assert.equal(mine[0].payload.order.channel_trade_no, o.channel_trade_no);
    } else {
      assert.equal(mine.length, 0, `${o.out_trade_no}: no notify_url, no notification`);
    }
  }
  // charged once each
  const reqs = (await sim.ctl('GET', '/_sim/requests?limit=1000')).json
    .filter((x) => x.service === 'unified.trade.micropay');
  for (const o of got) assert.equal(reqs.filter((x) => x.out_trade_no === o.trade_no).length, 1, o.out_trade_no);
  assert.ok(d.batches >= 1, `no batch formed during the burst: ${JSON.stringify(d)}`);
});

test('a burst of Swiftpass notifications: applied once each, duplicates, mismatches and forgeries as one by one', async (t) => {
  const N = 40;
  // 40 PENDING c-to-b orders (themselves created in a burst)
  const bodies = Array.from({ length: N }, (_, i) => ({
    shop_id: 's1', out_trade_no: otn('N'), amount: 2000 + 77 * i, subject: `Tea ${i}`, method: 'wechat_qr',
    ...(i % 5 !== 4 ? { notify_url: merchant.url } : {}),
  }));
  const created = await burst(bodies.map((b) => () => shop.call('POST', '/v1/orders', b, { timeoutMs: 30000 })));
  const orders = created.map((r, i) => {
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json.status, 'PENDING', r.body);
    return { ...r.json, notify_url: bodies[i].notify_url, txn: `${MCH}20261128${String(4000000000 + i)}` };
  });
  // an order closed beforehand, and one that failed
  const c = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('X'), amount: 777, subject: 'Tea', method: 'wechat_qr', notify_url: merchant.url });
  assert.equal(c.json.status, 'PENDING', c.body);
  const cl = await shop.call('POST', `/v1/orders/${c.json.trade_no}/close`);
  assert.equal(cl.status, 200, cl.body);
  assert.equal(cl.json.status, 'CLOSED');
  const f = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('F'), amount: 888, subject: 'Tea', method: 'barcode', auth_code: FAIL_CODE, notify_url: merchant.url });
  assert.equal(f.json.status, 'FAILED', f.body);
  const idOf = new Map(rows(`SELECT trade_no, id FROM orders WHERE trade_no = ANY (${lit([...orders, c.json, f.json].map((o) => o.trade_no))})`)
    .map((x) => [x.trade_no, Number(x.id)]));
  for (const o of orders) o.id = idOf.get(o.trade_no);
  const closed = { ...c.json, id: idOf.get(c.json.trade_no) };
  const failed = { ...f.json, id: idOf.get(f.json.trade_no) };

  // the notifications: one genuine per order; the same body again for 5
  // (a channel's retry); a validly signed wrong total_fee for 3; a forged
  // signature for 2; two genuine ones for the closed order, one for the failed
  const sends = orders.map((o) => ({ kind: 'genuine', o, xml: paidNotification(o.trade_no, o.amount, o.txn) }));
  for (const k of [0, 9, 18, 27, 36]) sends.push({ kind: 'duplicate', o: orders[k], xml: sends[k].xml });
  for (const k of [3, 12, 21]) sends.push({ kind: 'amount', o: orders[k], xml: paidNotification(orders[k].trade_no, orders[k].amount - 1, orders[k].txn) });
  for (const k of [6, 15]) sends.push({ kind: 'forged', o: orders[k], xml: paidNotification(orders[k].trade_no, orders[k].amount, `${MCH}20261128999999999${k}`, 'not-the-key') });
  for (let k = 0; k < 2; k++) sends.push({ kind: 'closed', o: closed, xml: paidNotification(closed.trade_no, closed.amount, `${MCH}202611285000000000`) });
  sends.push({ kind: 'failed', o: failed, xml: paidNotification(failed.trade_no, failed.amount, `${MCH}202611286000000000`) });
  const order = shuffled(sends);
  const [res, d] = await measured(t, 'notifications', () => burst(order.map((s) => () => postNotify(s.xml))));
  order.forEach((s, k) => { s.r = res[k]; });

  // the acknowledgement: every verified one is recorded and acknowledged
  for (const s of sends) {
    assert.equal(s.r.body.trim(), s.kind === 'forged' ? 'fail' : 'success', `${s.kind} ${s.o.trade_no}: ${s.r.status} ${s.r.body}`);
  }

  const ids = orders.map((o) => o.id);
  const got = new Map(rows(`SELECT id, trade_no, status, paid_at, channel_trade_no FROM orders
                            WHERE id = ANY (ARRAY[${ids.join(',')}]::bigint[])`).map((o) => [o.trade_no, o]));
  const ev = eventsOf(ids);
  const inbox = rows(`SELECT detail->>'out_trade_no' AS trade_no, order_id, verified, outcome,
                             detail->>'amount' AS amount, detail->>'channel_trade_no' AS txn
                        FROM notify_inbox
                       WHERE detail->>'out_trade_no' = ANY (${lit([...orders, closed, failed].map((o) => o.trade_no))})`);
  const notes = rows(`SELECT order_id, event, payload FROM merchant_notifications
                       WHERE order_id = ANY (ARRAY[${[...ids, closed.id, failed.id].join(',')}]::bigint[])`);
  for (const o of orders) {
    const row = got.get(o.trade_no);
    assert.equal(row.status, 'SUCCESS', o.trade_no);
    assert.ok(row.paid_at, `${o.trade_no}: paid_at`);
    assert.equal(row.channel_trade_no, o.txn, `${o.trade_no}: channel_trade_no from the notification`);
    assert.equal(ev.get(Number(o.id)), 'null>CREATED:api,CREATED>PENDING:channel,PENDING>SUCCESS:notify', o.trade_no);
    const mine = inbox.filter((x) => x.trade_no === o.trade_no);
    const applied = mine.filter((x) => x.outcome === 'applied');
    assert.equal(applied.length, 1, `${o.trade_no}: applied once: ${JSON.stringify(mine)}`);
    assert.equal(Number(applied[0].order_id), Number(o.id));
    assert.equal(applied[0].verified, true);
    assert.equal(Number(applied[0].amount), o.amount, `${o.trade_no}: the genuine one was applied`);
    assert.equal(applied[0].txn, o.txn);
    const paid = notes.filter((x) => Number(x.order_id) === Number(o.id));
    if (o.notify_url) {
      assert.equal(paid.length, 1, `${o.trade_no}: one merchant notification: ${JSON.stringify(paid)}`);
      assert.equal(paid[0].event, 'order.paid');
      assert.equal(paid[0].payload.order.status, 'SUCCESS');
      assert.equal(paid[0].payload.order.channel_trade_no, o.txn);
    } else {
      assert.equal(paid.length, 0, `${o.trade_no}: no notify_url, no notification`);
    }
  }
  // the inbox: one row per notification, with the single function's outcomes
  const count = (pred) => inbox.filter(pred).length;
  const forOrders = (x) => got.has(x.trade_no);
  assert.equal(count(forOrders), 40 + 5 + 3 + 2, JSON.stringify(inbox.filter(forOrders).map((x) => x.outcome)));
  assert.equal(count((x) => forOrders(x) && x.outcome === 'applied'), 40);
  assert.equal(count((x) => forOrders(x) && x.outcome === 'duplicate'), 5);
  assert.equal(count((x) => forOrders(x) && x.outcome === 'rejected: amount mismatch'), 3);
  assert.equal(count((x) => forOrders(x) && x.outcome === 'rejected: bad signature'), 2);
  for (const k of [0, 9, 18, 27, 36]) {
    assert.deepEqual(inbox.filter((x) => x.trade_no === orders[k].trade_no).map((x) => x.outcome).sort(), ['applied', 'duplicate']);
  }
  for (const k of [3, 12, 21]) {
    const w = inbox.filter((x) => x.trade_no === orders[k].trade_no && x.outcome !== 'applied');
    assert.deepEqual(w.map((x) => [x.outcome, Number(x.amount), Number(x.order_id)]),
      [['rejected: amount mismatch', orders[k].amount - 1, Number(orders[k].id)]]);
  }
  for (const k of [6, 15]) {
    const w = inbox.filter((x) => x.trade_no === orders[k].trade_no && x.outcome !== 'applied');
    assert.deepEqual(w.map((x) => [x.outcome, x.verified, x.order_id]), [['rejected: bad signature', false, null]]);
  }
  // the closed and the failed order stay as they were: a conflict for the operator
  assert.deepEqual(inbox.filter((x) => x.trade_no === closed.trade_no).map((x) => x.outcome),
    ['conflict: the channel says paid, the order is CLOSED', 'conflict: the channel says paid, the order is CLOSED']);
  assert.deepEqual(inbox.filter((x) => x.trade_no === failed.trade_no).map((x) => x.outcome),
    ['conflict: the channel says paid, the order is FAILED']);
  assert.equal(psql(`SELECT status || ' ' || (paid_at IS NULL) FROM orders WHERE id = ${closed.id}`), 'CLOSED true');
  assert.equal(psql(`SELECT status || ' ' || (paid_at IS NULL) FROM orders WHERE id = ${failed.id}`), 'FAILED true');
  assert.equal(psql(`SELECT count(*) FROM order_events WHERE order_id IN (${closed.id}, ${failed.id}) AND to_status = 'SUCCESS'`), '0');
  assert.equal(notes.filter((x) => [Number(closed.id), Number(failed.id)].includes(Number(x.order_id))).length, 0);

  assert.ok(d.batches >= 1, `no batch formed during the burst: ${JSON.stringify(d)}`);
  assert.ok(d.jobs >= 10, `fewer than 10 jobs went in batches: ${JSON.stringify(d)}`);
});

/* The first-transition batch's UPDATE reads orders by primary key, call
 * after call: its plan is made once per session (0014: generic, sequential
 * and bitmap scans off; a plan made per call would show the ids as
 * constants, not as a parameter), and must not turn into a scan of the table or of
 * the due index (0011: both were measured, each cost more per batch as the
 * table grew).  auto_explain (as the superuser, in one session) prints the
 * plan of every statement run inside the function; the orders are put back
 * to CREATED inside a transaction that is rolled back. */
test('the first-transition batch is planned as a primary-key lookup, call after call', () => {
  const ids = rows(`SELECT id FROM orders WHERE status <> 'CREATED' ORDER BY id LIMIT 7`).map((x) => Number(x.id));
  assert.equal(ids.length, 7, 'the earlier tests left orders to use');
  const calls = ids.map((id) => `SELECT count(*) FROM gw_order_transition_first_many(
      jsonb_build_array(jsonb_build_array(${id}, '{CREATED}', 'PENDING', '{"channel_msg":"plan"}'::jsonb, 'channel')));`);
  const sql = [
    'BEGIN;',
    "LOAD 'auto_explain';",
    'SET auto_explain.log_min_duration = 0;',
    'SET auto_explain.log_nested_statements = on;',
    'SET auto_explain.log_level = notice;',
    'SET client_min_messages = notice;',
    `UPDATE orders SET status = 'CREATED' WHERE id = ANY (ARRAY[${ids.join(',')}]::bigint[]);`,
    ...calls,
    `SELECT count(*) FROM orders WHERE id = ANY (ARRAY[${ids.join(',')}]::bigint[]) AND channel_msg = 'plan';`,
    'ROLLBACK;',
  ].join('\n');
  const r = spawnSync('psql', [services.pg.superConninfo, '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-f', '-'],
    { input: sql, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  // every call changed its order (the last count is of the seven updates)
  assert.deepEqual(r.stdout.trim().split('\n'), [...ids.map(() => '1'), '7']);
  // the plans of the function's UPDATE, one per call
  const plans = r.stderr.split(/NOTICE: {2}duration: /).filter((p) => /upd AS \(/.test(p) && /Update on orders/.test(p));
  assert.equal(plans.length, ids.length, r.stderr);
  for (const p of plans) {
    const plan = p.slice(p.indexOf('\nCTE Scan on upd'));  // the plan, without the query's text
    // the orders come from the primary key (0020 joins the input's rows
    // to them by a hash on the id: the index scan feeds the hash)
    assert.match(plan, /Update on orders o [\s\S]*->  Index Scan using orders_pkey on orders o /, p);
    assert.doesNotMatch(plan, /Seq Scan on orders|Bitmap|orders_due_idx/, p);
    // generic: the ids are a parameter, not the constants of a plan made for this call
    assert.match(plan, /Index Cond: \(id = ANY \(\$\d+\)\)/, p);
  }
  // rolled back: none of them is CREATED or carries the marker
  assert.equal(psql(`SELECT count(*) FROM orders WHERE id = ANY (ARRAY[${ids.join(',')}]::bigint[])
                       AND (status = 'CREATED' OR channel_msg = 'plan')`), '0');
});

/* The set-based notification batch (0016) writes, for an applied
 * notification, exactly what the single function gw_notify_ingest writes:
 * two twin PENDING orders, the same notification for each, one through
 * gw_notify_ingest and one through gw_notify_ingest_many; the order row,
 * its new event, its merchant notification and its inbox row are compared
 * with the ids, numbers and times that differ between twins taken out.  The
 * batch leaves to the single function (no row) everything but the first
 * verified, matching "paid" notification of an open order. */
test('the notification batch writes what the single function writes, and leaves it the rest', async () => {
  const twins = [];
  for (let k = 0; k < 2; k++) {
    const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('T'), amount: 4321, subject: 'Twin', method: 'wechat_qr', notify_url: merchant.url });
    assert.equal(r.json.status, 'PENDING', r.body);
    twins.push(r.json.trade_no);
  }
  const note = (tradeNo, extra = {}) => JSON.stringify({
    channel: 'swiftpass', headers: 'content-type: text/xml', body: `<xml>${tradeNo}</xml>`, verified: true,
    mch_id: MCH, out_trade_no: tradeNo, kind: 'pay', status: 'SUCCESS', amount: 4321,
    channel_trade_no: 'TW0001', raw_code: '0', raw_msg: 'paid', ...extra,
  });
  const single = JSON.parse(psql(`SELECT gw_notify_ingest('${note(twins[0])}'::jsonb)`));
  assert.equal(single.outcome, 'applied');
  // the batch: the twin, a repeat of it, a wrong amount, an unverified one
  // and an unknown order; only the first is the batch's to decide
  const batch = rows(`SELECT r, i FROM gw_notify_ingest_many(jsonb_build_array(
      jsonb_build_array('${note(twins[1])}'::jsonb), jsonb_build_array('${note(twins[1])}'::jsonb),
      jsonb_build_array('${note(twins[1], { amount: 4320 })}'::jsonb),
      jsonb_build_array('${note(twins[1], { verified: false, reason: 'bad signature' })}'::jsonb),
      jsonb_build_array('${note('no-such-order')}'::jsonb)))`);
  assert.deepEqual(batch, [{ r: { outcome: 'applied' }, i: 0 }]);

  const view = (tradeNo) => {
    const [o] = rows(`SELECT id, status, channel_trade_no, channel_code, channel_msg, paid_at IS NOT NULL AS paid,
                             next_check_at, check_attempts, lease_owner, lease_until, updated_at = paid_at AS touched
                        FROM orders WHERE trade_no = '${tradeNo}'`);
    const id = Number(o.id);
    delete o.id;
    const ev = rows(`SELECT from_status, to_status, source, detail FROM order_events
                      WHERE order_id = ${id} ORDER BY id DESC LIMIT 1`);
    const mn = rows(`SELECT event, url, status, payload #- '{order,trade_no}' #- '{order,out_trade_no}' #- '{order,paid_at}'
                            #- '{order,created_at}' #- '{order,updated_at}' #- '{order,expire_at}' AS payload
                       FROM merchant_notifications WHERE order_id = ${id}`);
    const ib = rows(`SELECT channel, headers, replace(body, '${tradeNo}', 'T') AS body, verified, outcome,
                            detail - 'out_trade_no' AS detail, detail->>'out_trade_no' = '${tradeNo}' AS named
                       FROM notify_inbox WHERE order_id = ${id}`);
    return { o, ev, mn, ib };
  };
  const a = view(twins[0]);
  const b = view(twins[1]);
  assert.equal(a.o.status, 'SUCCESS');
  assert.equal(a.ev[0].source, 'notify');
  assert.equal(a.mn.length, 1);
  assert.equal(a.ib.length, 1);
  assert.deepEqual(b, a);
  // the batch did not record the others: no inbox row names them yet
  assert.equal(psql(`SELECT count(*) FROM notify_inbox WHERE detail->>'out_trade_no' IN ('${twins[1]}', 'no-such-order')`), '1');
});
