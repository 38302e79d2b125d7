'use strict';
/*
 * Crash safety: kill -9 of paygated at random moments while orders, refunds
 * and notifications flow, then a restart.  After several rounds and a final
 * restart that is left to settle:
 *   1. every order and refund the API acknowledged (200 with a trade_no /
 *      refund_no) exists;
 *   2. every order is final and agrees with the Swiftpass simulator's ledger;
 *   3. no refund reached the channel twice (the simulator holds at most one
 *      refund per refund_no, nothing we do not know of), and the refunded
 *      totals agree;
 *   4. every merchant notification (order.paid, refund.succeeded) was
 *      delivered, signed, at least once;
 *   5. the last daemon stops cleanly (exit 0, no sanitizer report).
 *
 * The traffic mix and the kill moments come from a PRNG seeded by CRASH_SEED
 * (printed; random when unset) so that a failure can be replayed (the
 * interleaving of concurrent requests is not deterministic, the choices
 * are).  CRASH_ROUNDS (default 4) sets the number of kill rounds.
 *
 * Channel notifications reach the daemon through a small TCP forwarder on a
 * fixed port (channels.notify_base_url), as they would reach a restarted
 * daemon at its stable address; the daemon itself gets a fresh port per
 * start.
 */
const test = require('node:test');
const assert = require('node:assert');
const crypto = require('node:crypto');
const http = require('node:http');
const net = require('node:net');
const h = require('../lib/harness');
const pg = require('../lib/paygate');

const MCH = '755437000031';
const KEY = 'crash-md5-key-0000000000031';
const SCALE = 0.01;
const SEED = process.env.CRASH_SEED ? Number(process.env.CRASH_SEED) >>> 0 : crypto.randomInt(1, 2 ** 31);
const ROUNDS = Number(process.env.CRASH_ROUNDS || 4);
const LOOPS = 6;
const SETTLE_MS = Number(process.env.CRASH_SETTLE_MS || 30000);
const FINAL = ['SUCCESS', 'FAILED', 'CLOSED'];
const SECRET = 'crash-merchant-secret-0123456789';

let services, sim, gw, shop, merchant, proxy;

/* mulberry32 */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rint = (rnd, lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
const digits = (rnd, n) => Array.from({ length: n }, () => rint(rnd, 0, 9)).join('');

const psql = (sql) => services.pg.query(sql);
function psqlJson(sql) {
  const out = psql(`SELECT COALESCE(json_agg(x), '[]') FROM (${sql}) x`);
  return JSON.parse(out || '[]');
}

/* A fixed address for the channel's notifications, forwarded to whichever
 * daemon is running (refused while none is). */
function startForwarder() {
  const socks = new Set();
  const srv = net.createServer((c) => {
    socks.add(c);
    const port = gw && !gw.exitInfo ? gw.port : 0;
    if (!port) { c.destroy(); return; }
    const u = net.connect(port, '127.0.0.1');
    socks.add(u);
    c.pipe(u);
    u.pipe(c);
    const end = () => { c.destroy(); u.destroy(); socks.delete(c); socks.delete(u); };
    c.on('error', end); u.on('error', end); c.on('close', end); u.on('close', end);
  });
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${srv.address().port}`,
    close: () => new Promise((r) => { for (const s of socks) s.destroy(); srv.close(r); }),
  })));
}

/* The merchant's endpoint: records every delivery; the first attempt of
 * about a quarter of the notifications is answered 500 (a retry follows). */
function startMerchant(rnd) {
  const deliveries = [];
  const attempts = new Map();
  const failFirst = new Map();
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      let j = null;
      try { j = JSON.parse(body); } catch (_) { /* recorded as is */ }
      const event = j && j.event;
      const trade = j && j.order ? j.order.trade_no : null;
      const refundNo = j && j.refund ? j.refund.refund_no : null;
      const key = `${event}|${trade}|${refundNo || ''}`;
      const n = (attempts.get(key) || 0) + 1;
      attempts.set(key, n);
      if (!failFirst.has(key)) failFirst.set(key, rnd() < 0.25);
      const sig = crypto.createHmac('sha256', SECRET)
        .update(`${req.headers['x-paygate-timestamp']}\n${req.headers['x-paygate-nonce']}\n${body}`).digest('hex');
      const fail = n === 1 && failFirst.get(key);
      deliveries.push({
        at: Date.now(), key, n, event, trade, refundNo, headers: req.headers, body, json: j,
        sigOk: req.headers['x-paygate-signature'] === sig, answered: fail ? 500 : 200,
      });
      if (fail) { res.writeHead(500, { 'Content-Type': 'text/plain' }); res.end('try later'); return; }
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('success');
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}/paygate/notify`,
    deliveries,
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }),
  })));
}

function gwConfig() {
  return {
    api: { min_expire_s: 1 },
    tasks: { time_scale: SCALE, tick_ms: 20, lease_ms: 3000, notify_timeout_ms: 1500 },
    channels: {
      call_timeout_ms: 2000,
      notify_base_url: proxy.url,
      settings: { swiftpass: { gateway_url: `${sim.url}/pay/gateway` } },
    },
  };
}

async function startDaemon() {
  gw = await h.startPaygated({ services, config: gwConfig() });
  if (shop) shop.call = pg.merchantClient(gw, shop.merchant, shop.secret);
  return gw;
}

// ------------------------------------------------------------------ traffic

/* What the test knows: acknowledged orders and refunds, attempts that were
 * not acknowledged (retried in a later round, like a merchant would, or
 * abandoned), anything unexpected the API said before the kill. */
const state = {
  orders: new Map(),     // trade_no → {kind, body, status (as answered), round, paid: bool|undefined}
  refunds: new Map(),    // refund_no → {trade_no, out_refund_no, amount, status}
  unackedOrders: [],     // {kind, body}
  unackedRefunds: [],    // {trade_no, body}
  budget: new Map(),     // trade_no → amount not yet asked for in refunds (acked or not)
  unexpected: [],
  pays: [],              // /_sim/pay results {trade_no, status, body}
  counts: { orders: 0, refunds: 0, unackedOrders: 0, unackedRefunds: 0, retried: 0 },
};
let seq = 0;
const otn = (p) => `${p}${SEED.toString(36)}x${seq++}`;

function authCode(rnd, kind) {
  // rules (test/sim/README.md): 0000 declined, 99K9 paid at the K-th query;
  // a 5 before the last three digits matches no special suffix
  const head = `13${digits(rnd, 12)}`;
  if (kind === 'bc_fail') return `${head}0000`;
  if (kind === 'bc_poll') return `${head}9929`;
  return `${head}5${digits(rnd, 3)}`;
}

function pickKind(rnd) {
  const x = rnd();
  if (x < 0.35) return 'bc_ok';
  if (x < 0.50) return 'bc_poll';
  if (x < 0.60) return 'bc_fail';
  if (x < 0.85) return 'qr_paid';
  return 'qr_unpaid';
}

function orderBody(rnd, kind) {
  const b = {
    shop_id: 's1', out_trade_no: otn(kind.startsWith('bc') ? 'B' : 'Q'), amount: rint(rnd, 100, 20000),
    subject: `crash ${kind}`, method: kind.startsWith('bc') ? 'barcode' : 'wechat_qr', notify_url: merchant.url,
  };
  if (kind.startsWith('bc')) b.auth_code = authCode(rnd, kind);
  if (kind === 'qr_paid') b.expire_s = 5;
  if (kind === 'qr_unpaid') b.expire_s = 1;
  return b;
}

class Killed extends Error {}

function makeRunner(ctx, round) {
  /* A request before the kill must be answered; after it, failures are the
   * point (those requests were never acknowledged). */
  async function call(method, p, body) {
    if (ctx.killed) throw new Killed('killed');
    try {
      return await shop.call(method, p, body, { timeoutMs: 15000 });
    } catch (e) {
      if (ctx.killed) throw new Killed(e.message);
      throw e;
    }
  }

  async function createOrder(rnd, kind, body, retry) {
    let r;
    try {
      r = await call('POST', '/v1/orders', body);
    } catch (e) {
      if (e instanceof Killed) {
        state.counts.unackedOrders++;
        state.unackedOrders.push({ kind, body });
        return null;
      }
      throw e;
    }
    if (r.status !== 200 || !r.json || !r.json.trade_no) {
      state.unexpected.push(`round ${round}: POST /v1/orders (${kind}${retry ? ', retry' : ''}) → ${r.status} ${r.body}`);
      return null;
    }
    const o = r.json;
    state.counts.orders++;
    state.orders.set(o.trade_no, { kind, body, status: o.status, round, retry });
    if (!state.budget.has(o.trade_no)) state.budget.set(o.trade_no, o.amount);
    if (kind === 'qr_paid' && o.status === 'PENDING') {
      await h.sleep(rint(rnd, 0, 150));
      const p = await sim.ctl('POST', '/_sim/pay', { mch_id: MCH, out_trade_no: o.trade_no });
      state.pays.push({ trade_no: o.trade_no, status: p.status, body: p.body });
      state.orders.get(o.trade_no).paid = p.status === 200;
      if (rnd() < 0.5) await call('GET', `/v1/orders/${o.trade_no}`).catch((e) => { if (!(e instanceof Killed)) throw e; });
    }
    if (kind === 'bc_poll' && o.status === 'USER_PAYING') {
      // a cashier polling the order
      for (let i = 0; i < 3; i++) {
        await h.sleep(rint(rnd, 10, 60));
        let q;
        try { q = await call('GET', `/v1/orders/${o.trade_no}`); } catch (e) { if (e instanceof Killed) return o; throw e; }
        if (q.status !== 200) state.unexpected.push(`round ${round}: GET order ${o.trade_no} → ${q.status} ${q.body}`);
        else if (FINAL.includes(q.json.status)) break;
      }
    }
    return o;
  }

  async function createRefund(rnd, tradeNo, body, retry) {
    let r;
    try {
      r = await call('POST', `/v1/orders/${tradeNo}/refunds`, body);
    } catch (e) {
      if (e instanceof Killed) {
        state.counts.unackedRefunds++;
        state.unackedRefunds.push({ trade_no: tradeNo, body });
        return null;
      }
      throw e;
    }
    if (r.status !== 200 || !r.json || !r.json.refund_no) {
      state.unexpected.push(`round ${round}: POST refund of ${tradeNo} ${JSON.stringify(body)}${retry ? ' (retry)' : ''} → ${r.status} ${r.body}`);
      return null;
    }
    state.counts.refunds++;
    state.refunds.set(r.json.refund_no, { trade_no: tradeNo, out_refund_no: body.out_refund_no, amount: body.amount, status: r.json.status, round });
    return r.json;
  }

  async function refundSome(rnd, tradeNo) {
    const left = state.budget.get(tradeNo) || 0;
    if (left < 2) return;
    const amount = rint(rnd, 1, Math.max(1, Math.floor(left / 2)));
    state.budget.set(tradeNo, left - amount);
    await createRefund(rnd, tradeNo, { out_refund_no: otn('R'), amount, reason: 'crash test' });
  }

  async function loop(rnd, retries) {
    for (const x of retries) {
      if (ctx.killed) { (x.refund ? state.unackedRefunds : state.unackedOrders).push(x.item); continue; }
      state.counts.retried++;
      if (x.refund) await createRefund(rnd, x.item.trade_no, x.item.body, true);
      else await createOrder(rnd, x.item.kind, x.item.body, true);
    }
    while (!ctx.killed) {
      const kind = pickKind(rnd);
      const o = await createOrder(rnd, kind, orderBody(rnd, kind));
      if (o && o.status === 'SUCCESS' && rnd() < 0.5) {
        const n = rint(rnd, 1, 2);
        for (let i = 0; i < n && !ctx.killed; i++) await refundSome(rnd, o.trade_no);
      }
      // now and then a refund of an order paid in an earlier round
      if (!ctx.killed && rnd() < 0.15) {
        const old = [...state.orders].filter(([, v]) => v.round < round && v.status === 'SUCCESS');
        if (old.length) await refundSome(rnd, old[rint(rnd, 0, old.length - 1)][0]);
      }
    }
  }
  return { loop };
}

// ------------------------------------------------------------------ set-up

test.before(async () => {
  services = await h.startServices();
  sim = await pg.startSim('swiftpass', ['--time-scale', String(SCALE)]);
  await sim.ctl('POST', '/_sim/merchants', { mch_id: MCH, sign_type: 'MD5', key: KEY });
  proxy = await startForwarder();
  merchant = await startMerchant(prng(SEED ^ 0x5eed));
  await startDaemon();
  shop = await pg.setupShop(gw, { secret: SECRET, subs: [{ channel: 'swiftpass', mch_id: MCH, key: KEY }] });
});

test.after(async () => {
  if (gw && !gw.exitInfo) await gw.kill();
  if (merchant) await merchant.close();
  if (proxy) await proxy.close();
  if (sim) await sim.stop();
  if (services) await services.close();
});

// ------------------------------------------------------------------ the test

test(`kill -9 at random moments, restart: nothing acknowledged is lost or done twice (CRASH_SEED=${SEED})`, { timeout: 240000 }, async (t) => {
  t.diagnostic(`CRASH_SEED=${SEED} rounds=${ROUNDS}`);
  process.stderr.write(`crash.test.js: CRASH_SEED=${SEED}\n`);
  const rnd = prng(SEED);
  const t0 = Date.now();
  const killLog = [];

  for (let round = 1; round <= ROUNDS; round++) {
    if (round > 1) await startDaemon();
    const ctx = { killed: false };
    const runner = makeRunner(ctx, round);
    // a merchant retries about half of what was not acknowledged
    const retries = [];
    for (const item of state.unackedOrders.splice(0)) if (rnd() < 0.5) retries.push({ refund: false, item });
    for (const item of state.unackedRefunds.splice(0)) if (rnd() < 0.5) retries.push({ refund: true, item });
    const loops = [];
    for (let i = 0; i < LOOPS; i++) {
      const mine = retries.filter((_, k) => k % LOOPS === i);
      loops.push(runner.loop(prng((SEED + round * 7919 + i * 104729) >>> 0), mine));
    }
    const killAfter = rint(rnd, 300, 2500);
    const before = state.counts.orders + state.counts.refunds;
    const loopsDone = Promise.all(loops);
    let loopErr = null;
    loopsDone.catch((e) => { loopErr = e; });
    await Promise.race([h.sleep(killAfter), loopsDone.catch(() => {})]);
    if (loopErr) throw loopErr;
    ctx.killed = true;
    const ex = await gw.kill();
    assert.equal(ex.signal, 'SIGKILL', `round ${round}: the daemon had already exited: ${JSON.stringify(ex)}\n${gw.logs().slice(-3000)}`);
    await loopsDone;
    const acked = state.counts.orders + state.counts.refunds - before;
    killLog.push({ round, killAfter, acked });
    t.diagnostic(`round ${round}: killed after ${killAfter} ms; ${acked} acknowledged this round`);
    assert.ok(acked > 0, `round ${round}: the daemon acknowledged nothing in ${killAfter} ms`);
  }

  // the last restart: let it finish everything
  await startDaemon();
  const open = () => psqlJson(`
      SELECT 'order' AS kind, trade_no AS id, status, check_attempts, next_check_at, lease_until FROM orders
       WHERE status IN ('CREATED','PENDING','USER_PAYING','UNKNOWN')
      UNION ALL SELECT 'refund', refund_no, status, check_attempts, next_check_at, lease_until FROM refunds WHERE status = 'PROCESSING'
      UNION ALL SELECT 'notification', id::text, status, attempts, next_at, lease_until FROM merchant_notifications WHERE status = 'PENDING'`);
  let left = [];
  const settleStart = Date.now();
  for (;;) {
    left = open();
    if (left.length === 0 || Date.now() - settleStart > SETTLE_MS) break;
    await h.sleep(250);
  }
  t.diagnostic(`settled in ${Date.now() - settleStart} ms; ${left.length} left open`);
  // the channel's notifications still in flight may still come (no harm)
  await h.sleep(300);

  const problems = [];
  if (left.length) {
    // evidence for what is still open: our events, the channel's view, the
    // channel requests about it, the daemon's log lines
    const reqs = (await sim.ctl('GET', '/_sim/requests?limit=1000')).json || [];
    for (const x of left) {
      let extra = '';
      if (x.kind === 'order') {
        const a = state.orders.get(x.id);
        const so = await sim.ctl('GET', `/_sim/orders/${MCH}/${x.id}`);
        const ev = psql(`SELECT max(o.method) || ', ' || string_agg(coalesce(from_status, '-') || '>' || e.to_status || ':' || e.source, ' ' ORDER BY e.id) FROM order_events e JOIN orders o ON o.id = e.order_id WHERE o.trade_no = '${x.id}'`);
        const mine = reqs.filter((q) => q.out_trade_no === x.id);
        const svc = [...new Set(mine.map((q) => `${q.service}→${q.response && (q.response.err_code || q.response.trade_state || q.response.result_code)}`))];
        const logs = gw.logs().split('\n').filter((l) => l.includes(x.id)).slice(-3);
        extra = ` acknowledged: ${a ? JSON.stringify({ kind: a.kind, answered: a.status, round: a.round, retry: !!a.retry }) : 'no'};`
          + ` events: ${ev}; channel: ${so.status === 200 ? so.json.state : `${so.status} ${JSON.stringify(so.json)}`};`
          + ` last ${mine.length} channel requests: ${svc.join(', ')}; log: ${JSON.stringify(logs)}`;
      }
      problems.push(`still open after ${SETTLE_MS} ms: ${JSON.stringify(x)}${extra}`);
    }
  }
  for (const u of state.unexpected) problems.push(`unexpected answer before the kill: ${u}`);

  const orders = psqlJson(`SELECT id, trade_no, out_trade_no, status, amount, refunded_amount, method, notify_url,
                                  (SELECT string_agg(coalesce(from_status, '-') || '>' || to_status || ':' || source, ' ' ORDER BY e.id)
                                     FROM order_events e WHERE e.order_id = o.id AND e.refund_id IS NULL) AS events
                             FROM orders o`);
  const refunds = psqlJson(`SELECT r.refund_no, r.out_refund_no, r.amount, r.status, r.channel_ack, o.trade_no
                              FROM refunds r JOIN orders o ON o.id = r.order_id`);
  const notes = psqlJson(`SELECT n.id, n.event, n.status, n.attempts, o.trade_no, r.refund_no
                            FROM merchant_notifications n JOIN orders o ON o.id = n.order_id
                            LEFT JOIN refunds r ON r.id = n.refund_id`);
  const byTrade = new Map(orders.map((o) => [o.trade_no, o]));
  const refundsByNo = new Map(refunds.map((r) => [r.refund_no, r]));
  const refundsOfTrade = new Map();
  for (const r of refunds) (refundsOfTrade.get(r.trade_no) || refundsOfTrade.set(r.trade_no, []).get(r.trade_no)).push(r);

  // (1) everything acknowledged exists
  for (const [tn, a] of state.orders) {
    const o = byTrade.get(tn);
    if (!o) problems.push(`acknowledged order ${tn} (${a.kind}, answered ${a.status}) is not in the database`);
    else if (o.out_trade_no !== a.body.out_trade_no || Number(o.amount) !== a.body.amount) {
      problems.push(`order ${tn}: stored ${o.out_trade_no}/${o.amount}, acknowledged ${a.body.out_trade_no}/${a.body.amount}`);
    }
  }
  for (const [rn, a] of state.refunds) {
    const r = refundsByNo.get(rn);
    if (!r) problems.push(`acknowledged refund ${rn} of ${a.trade_no} is not in the database`);
    else if (r.trade_no !== a.trade_no || Number(r.amount) !== a.amount) problems.push(`refund ${rn}: stored ${r.trade_no}/${r.amount}, acknowledged ${a.trade_no}/${a.amount}`);
  }

  // (2) every order final and as in the simulator's ledger
  const simOrders = new Map();
  const list = [...orders];
  for (let i = 0; i < list.length; i += 32) {
    await Promise.all(list.slice(i, i + 32).map(async (o) => {
      const r = await sim.ctl('GET', `/_sim/orders/${MCH}/${o.trade_no}`);
      simOrders.set(o.trade_no, r.status === 200 ? r.json : null);
      if (r.status !== 200 && r.status !== 404) problems.push(`simulator: GET order ${o.trade_no} → ${r.status} ${r.body}`);
    }));
  }
  const paidAtSim = (so) => so && (so.state === 'SUCCESS' || so.state === 'REFUND');
  for (const o of orders) {
    const so = simOrders.get(o.trade_no);
    const a = state.orders.get(o.trade_no);
    const who = `order ${o.trade_no} (${a ? `acknowledged ${a.kind} as ${a.status} in round ${a.round}` : 'not acknowledged'}; events ${o.events})`;
    if (!FINAL.includes(o.status)) continue; // reported above
    if (o.status === 'SUCCESS' && !paidAtSim(so)) problems.push(`${who}: SUCCESS here, simulator ${so ? so.state : 'has no such trade'}`);
    if (o.status !== 'SUCCESS' && paidAtSim(so)) problems.push(`${who}: ${o.status} here, simulator ${so.state}`);
    if (so && so.revoke_refunded_fee) problems.push(`${who}: the simulator reversed a paid trade (${so.revoke_refunded_fee} fen returned), ours is ${o.status}`);
    if (so && so.total_fee !== Number(o.amount)) problems.push(`${who}: amount ${o.amount} here, ${so.total_fee} at the simulator`);
    if (a) {
      // what the kind of order must come to
      // (an order whose pay request never reached the channel — a kill
      // between persisting it and sending — is closed: the channel has no
      // such trade, so nothing can pay it)
      const expect = so === null ? ['CLOSED', 'FAILED'] : {
        bc_ok: ['SUCCESS'], bc_fail: ['FAILED'], qr_unpaid: ['CLOSED'], bc_poll: ['SUCCESS', 'CLOSED'],
        qr_paid: a.paid ? ['SUCCESS'] : ['CLOSED', 'SUCCESS'],
      }[a.kind];
      if (!expect.includes(o.status)) problems.push(`${who}: ends ${o.status}, expected ${expect.join(' or ')}`);
      if (a.status === 'SUCCESS' && o.status !== 'SUCCESS') problems.push(`${who}: answered SUCCESS, ends ${o.status}`);
    }
  }

  // (3) refunds: final, as at the channel, never twice, totals agree
  for (const r of refunds) {
    const so = simOrders.get(r.trade_no);
    const at = so ? so.refunds.filter((x) => x.out_refund_no === r.refund_no) : [];
    const who = `refund ${r.refund_no} (${r.amount} fen of ${r.trade_no}, ${state.refunds.has(r.refund_no) ? 'acknowledged' : 'not acknowledged'})`;
    if (at.length > 1) problems.push(`${who}: ${at.length} refunds at the channel`);
    if (r.status === 'SUCCESS' && !(at.length === 1 && at[0].status === 'SUCCESS')) problems.push(`${who}: SUCCESS here, channel ${JSON.stringify(at)}`);
    if (r.status === 'FAILED' && at.some((x) => x.status === 'SUCCESS')) problems.push(`${who}: FAILED here, SUCCESS at the channel`);
    if (r.status === 'FAILED') problems.push(`${who}: FAILED (${JSON.stringify(at)}) although the order had the amount left`);
  }
  for (const o of orders) {
    const so = simOrders.get(o.trade_no);
    const mine = refundsOfTrade.get(o.trade_no) || [];
    const okSum = mine.filter((r) => r.status === 'SUCCESS').reduce((s, r) => s + Number(r.amount), 0);
    if (Number(o.refunded_amount) !== okSum) problems.push(`order ${o.trade_no}: refunded_amount ${o.refunded_amount}, its SUCCESS refunds sum to ${okSum}`);
    if (!so) { if (mine.length) problems.push(`order ${o.trade_no}: refunds ${mine.map((r) => r.refund_no)} but no trade at the channel`); continue; }
    const simSum = so.refunds.filter((x) => x.status === 'SUCCESS').reduce((s, x) => s + x.refund_fee, 0);
    if (simSum !== Number(o.refunded_amount)) problems.push(`order ${o.trade_no}: refunded_amount ${o.refunded_amount}, the channel refunded ${simSum}`);
    for (const x of so.refunds) {
      if (!mine.some((r) => r.refund_no === x.out_refund_no)) problems.push(`order ${o.trade_no}: the channel holds refund ${x.out_refund_no} (${x.refund_fee}) we do not know`);
    }
    const seen = new Set();
    for (const x of so.refunds) {
      if (seen.has(x.out_refund_no)) problems.push(`order ${o.trade_no}: refund ${x.out_refund_no} twice at the channel`);
      seen.add(x.out_refund_no);
    }
  }

  // (4) merchant notifications: every one delivered, signed, at least once
  const dl = merchant.deliveries;
  for (const d of dl) {
    if (!d.sigOk) problems.push(`delivery ${d.key} #${d.n}: bad signature`);
    if (d.headers['x-paygate-event'] !== d.event) problems.push(`delivery ${d.key} #${d.n}: X-Paygate-Event ${d.headers['x-paygate-event']}`);
    if (d.event === 'order.paid' && (!byTrade.has(d.trade) || byTrade.get(d.trade).status !== 'SUCCESS')) {
      problems.push(`order.paid delivered for ${d.trade}, which ends ${byTrade.has(d.trade) ? byTrade.get(d.trade).status : 'missing'}`);
    }
    if (d.event === 'refund.succeeded' && (!refundsByNo.has(d.refundNo) || refundsByNo.get(d.refundNo).status !== 'SUCCESS')) {
      problems.push(`refund.succeeded delivered for ${d.refundNo}, which ends ${refundsByNo.has(d.refundNo) ? refundsByNo.get(d.refundNo).status : 'missing'}`);
    }
  }
  const delivered = (pred) => dl.some((d) => d.sigOk && d.answered === 200 && pred(d));
  for (const o of orders) {
    if (o.status !== 'SUCCESS' || !o.notify_url) continue;
    if (!delivered((d) => d.event === 'order.paid' && d.trade === o.trade_no && d.json.order.status === 'SUCCESS' && d.json.order.amount === Number(o.amount))) {
      problems.push(`order ${o.trade_no} SUCCESS: no order.paid delivered (attempts seen: ${dl.filter((d) => d.trade === o.trade_no && d.event === 'order.paid').length})`);
    }
  }
  for (const r of refunds) {
    if (r.status !== 'SUCCESS') continue;
    if (!delivered((d) => d.event === 'refund.succeeded' && d.refundNo === r.refund_no && d.trade === r.trade_no && d.json.refund.amount === Number(r.amount))) {
      problems.push(`refund ${r.refund_no} SUCCESS: no refund.succeeded delivered`);
    }
  }
  for (const n of notes) {
    if (n.status !== 'DELIVERED') problems.push(`merchant notification ${n.id} (${n.event} ${n.trade_no} ${n.refund_no || ''}) is ${n.status} after ${n.attempts} attempts`);
  }

  // (5) a clean stop
  const ex = await gw.stop();
  const stopLogs = gw.logs();
  if (ex.code !== 0) problems.push(`final SIGTERM: exit ${JSON.stringify(ex)}\n${stopLogs.slice(-4000)}`);

  const st = (xs) => xs.reduce((m, x) => { m[x.status] = (m[x.status] || 0) + 1; return m; }, {});
  const redelivered = new Set(dl.filter((d) => d.n > 1).map((d) => d.key)).size;
  t.diagnostic(`seed ${SEED}: ${Date.now() - t0} ms; kills ${JSON.stringify(killLog)}`);
  t.diagnostic(`acknowledged: ${state.counts.orders} orders, ${state.counts.refunds} refunds; not acknowledged: ${state.counts.unackedOrders} orders, ${state.counts.unackedRefunds} refunds (${state.counts.retried} retried)`);
  t.diagnostic(`database: ${orders.length} orders ${JSON.stringify(st(orders))}, ${refunds.length} refunds ${JSON.stringify(st(refunds))}, ${notes.length} notifications ${JSON.stringify(st(notes))}; ${dl.length} deliveries, ${redelivered} notifications delivered more than once`);
  if (problems.length) {
    process.stderr.write(`crash.test.js: CRASH_SEED=${SEED}: ${problems.length} problems\n${problems.join('\n')}\n`);
  }
  assert.deepEqual(problems.slice(0, 40), [], `CRASH_SEED=${SEED}: ${problems.length} problems`);
});
