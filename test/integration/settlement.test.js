'use strict';
/*
 * Settlement and reconciliation (docs/operations.md "Daily settlement"),
 * through the Swiftpass module and simulator, schedules compressed
 * (tasks.time_scale 0.01):
 *   - a day of mixed traffic (barcode and QR payments, partial and full
 *     refunds, a closed order, a fee-rate switch at a moment we choose):
 *     the statement's lines and totals equal independent arithmetic over
 *     the orders and refunds tables, to the fen; JSON and CSV agree;
 *   - re-running the settlement consumer from the start (watermark reset)
 *     and the admin re-drive give identical entries and totals; entries
 *     cannot be updated;
 *   - the simulator's bill of the day matches (no findings); a bill with one
 *     order missing on each side and one amount changed gives exactly those
 *     three findings (admin API and CLI);
 *   - a bill naming as paid an order we still have as UNKNOWN schedules its
 *     re-query, which settles it.
 */
const test = require('node:test');
const assert = require('node:assert');
const h = require('../lib/harness');
const pg = require('../lib/paygate');
const st = require('../lib/settlement');

const MCH = '755437000041';
const KEY = 'settlement-md5-key-00000041';
const SCALE = 0.01;

function gwConfig(tasks = {}) {
  return {
    api: { min_expire_s: 60 },
    tasks: { time_scale: SCALE, tick_ms: 20, ...tasks },
    channels: { call_timeout_ms: 1500, settings: { swiftpass: { gateway_url: `${ctx.sim.url}/pay/gateway` } } },
  };
}
const ctx = st.setup({
  sim: ['swiftpass', ['--time-scale', String(SCALE), '--close-min-age', '0']],
  tmp: 'paygate-settle-',
  async prepare({ sim }) {
    await sim.ctl('POST', '/_sim/merchants', { mch_id: MCH, sign_type: 'MD5', key: KEY });
  },
  config: () => gwConfig(),
  shop: () => ({ merchant: 'ms', shop: 'st1', subs: [{ channel: 'swiftpass', mch_id: MCH, key: KEY }],
    methods: ['barcode', 'wechat_qr'] }),
  async after({ gw, shop }) {
    await pg.admin(gw, 'PUT', '/admin/shops/st2', { merchant_id: 'ms', name: 'second shop' });
    await pg.admin(gw, 'PUT', '/admin/shops/st2/bindings/barcode', [{ channel: 'swiftpass', sub_merchant_ids: [shop.subIds[0]] }]);
  },
});
const { psql } = ctx;
const { otn } = st;
const rowsOf = (out) => (out ? out.split('\n').map((l) => l.split('|')) : []);

/* round_half_up(part * num / den), the rule docs/operations.md states */
const prorate = (part, num, den) => (den <= 0 ? 0 : Math.floor((part * num * 2 + den) / (2 * den)));
const ppmOf = (amount, ppm) => Math.floor((amount * ppm + 500000) / 1000000);

const DAY = st.today();
const traffic = { before: [], after: [], closed: null, ctob: null };
const rec = st.reconciler(ctx, { channel: 'swiftpass', date: DAY, mch: MCH });

async function orderStatus(tradeNo) {
  return psql(`SELECT status FROM orders WHERE trade_no = '${tradeNo}'`);
}

async function settledCount(shopId) {
  return Number(psql(`SELECT count(*) FROM settlement_entries WHERE shop_id = '${shopId}'`));
}

const barcode = (amount, extra = {}) => ({ shop_id: 'st1', out_trade_no: otn('B'), amount, subject: 'Tea',
  method: 'barcode', auth_code: '134567890123456711', ...extra });
const qr = (amount) => ({ shop_id: 'st1', out_trade_no: otn('Q'), amount, subject: 'Tea', method: 'wechat_qr' });

async function pay(body) {
  const r = await ctx.shop.call('POST', '/v1/orders', body);
  assert.equal(r.status, 200, r.body);
  return r.json;
}

async function refund(tradeNo, amount) {
  const r = await ctx.shop.call('POST', `/v1/orders/${tradeNo}/refunds`, { out_refund_no: otn('RF'), amount });
  assert.equal(r.status, 200, r.body);
  return r.json;
}

const statement = (shopId, date, format) => st.statement(ctx, shopId, date, format);

/* Independent arithmetic over the orders table (and refunds), in JS. */
function expectedTotals(shopId) {
  const orders = rowsOf(psql(`SELECT amount, fee, cashback, refunded_amount, rate_ppm,
      (SELECT count(*) FROM refunds r WHERE r.order_id = o.id AND r.status = 'SUCCESS')
      FROM orders o WHERE shop_id = '${shopId}' AND status = 'SUCCESS'`)).map((r) => r.map(Number));
  const t = { payments: 0, refunds: 0, paid: 0, refunded: 0, fee: 0, cashback: 0 };
  for (const [amount, fee, cashback, refunded, , nref] of orders) {
    t.payments++;
    t.refunds += nref;
    t.paid += amount;
    t.refunded += refunded;
    t.fee += fee - prorate(fee, refunded, amount);
    t.cashback += cashback - prorate(cashback, refunded, amount);
  }
  t.gross = t.paid - t.refunded;
  t.net = t.gross - t.fee + t.cashback;
  return t;
}

test('a day of mixed traffic: the statement equals independent arithmetic over the orders, to the fen', async () => {
  // 0.38 % now, 0.6 % from a moment we choose (the "noon" switch); 0.1 % cashback on barcode
  const from = new Date(Date.now() + 2500).toISOString();
  await pg.admin(ctx.gw, 'PUT', '/admin/shops/st1/rates/swiftpass', { current_ppm: 3800, future_ppm: 6000, future_from: from });
  await pg.admin(ctx.gw, 'PUT', '/admin/shops/st1/cashback/barcode', { ppm: 1000 });
  for (const amount of [12345, 999, 100, 50001, 131]) traffic.before.push(await pay(barcode(amount)));
  // a c-to-b order paid by the customer (the channel's notification), and one closed
  traffic.ctob = await pay(qr(8888));
  traffic.closed = await pay(qr(4321));
  assert.equal(traffic.ctob.status, 'PENDING');
  const paid = await ctx.sim.ctl('POST', '/_sim/pay', { mch_id: MCH, out_trade_no: traffic.ctob.trade_no });
  assert.equal(paid.status, 200, paid.body);
  const closed = await ctx.shop.call('POST', `/v1/orders/${traffic.closed.trade_no}/close`);
  assert.equal(closed.status, 200, closed.body);
  assert.equal(closed.json.status, 'CLOSED');
  await h.waitFor(async () => (await orderStatus(traffic.ctob.trade_no)) === 'SUCCESS', 10000);
  assert.ok(Date.now() < Date.parse(from), 'the orders before the switch were created before it');
  await h.sleep(Math.max(0, Date.parse(from) - Date.now()) + 200);
  for (const amount of [20000, 333, 7777]) traffic.after.push(await pay(barcode(amount)));
  for (const o of [...traffic.before, ...traffic.after]) assert.equal(o.status, 'SUCCESS', JSON.stringify(o));

  // partial refunds, two on one order (an odd fen left), a full one, one on the QR order
  const [o12345, , , o50001] = traffic.before;
  const [, o333] = traffic.after;
  await refund(o12345.trade_no, 5000);
  await refund(o50001.trade_no, 10000);
  await refund(o50001.trade_no, 1);
  await refund(o333.trade_no, 333);
  await refund(traffic.ctob.trade_no, 1111);
  await h.waitFor(() => psql(`SELECT count(*) FROM refunds r JOIN orders o ON o.id = r.order_id
      WHERE o.shop_id = 'st1' AND r.status = 'SUCCESS'`) === '5', 20000);

  // the rate fixed on each order: before the switch 3800, after it 6000
  for (const o of traffic.before) assert.equal(psql(`SELECT rate_ppm FROM orders WHERE trade_no = '${o.trade_no}'`), '3800');
  for (const o of traffic.after) assert.equal(psql(`SELECT rate_ppm FROM orders WHERE trade_no = '${o.trade_no}'`), '6000');
  // fee and cashback of each order, recomputed here from amount and rate
  for (const [amount, fee, cashback, rate, method] of rowsOf(psql(`SELECT amount, fee, cashback, rate_ppm, method
      FROM orders WHERE shop_id = 'st1' AND status = 'SUCCESS'`))) {
    assert.equal(Number(fee), ppmOf(Number(amount), Number(rate)));
    assert.equal(Number(cashback), method === 'barcode' ? ppmOf(Number(amount), 1000) : 0);
  }

  // the consumer has written one entry per payment and per refund
  await h.waitFor(async () => (await settledCount('st1')) === 9 + 5, 10000);
  const st = (await statement('st1', DAY)).json;
  const want = expectedTotals('st1');
  assert.equal(want.payments, 9);
  assert.equal(want.refunds, 5);
  for (const k of ['payments', 'refunds', 'paid', 'refunded', 'gross', 'fee', 'cashback', 'net'])
    assert.equal(st.totals[k], want[k], `totals.${k}: ${JSON.stringify(st.totals)} vs ${JSON.stringify(want)}`);
  assert.equal(st.date, DAY);
  assert.equal(st.timezone, 'Asia/Shanghai');
  // the lines add up to the totals; the closed order has none; both rates appear
  assert.equal(st.lines.length, 14);
  for (const k of ['gross', 'fee', 'cashback', 'net'])
    assert.equal(st.lines.reduce((s, l) => s + l[k], 0), st.totals[k], k);
  for (const l of st.lines) assert.equal(l.net, l.gross - l.fee + l.cashback);
  assert.ok(!st.lines.some((l) => l.trade_no === traffic.closed.trade_no), 'no line for the closed order');
  assert.deepEqual([...new Set(st.lines.map((l) => l.rate_ppm))].sort(), [3800, 6000]);
  // a full refund returns the whole fee and cashback
  const full = st.lines.filter((l) => l.trade_no === o333.trade_no);
  assert.equal(full.length, 2);
  assert.equal(full.reduce((s, l) => s + l.net, 0), 0);
  assert.deepEqual(st.by_channel.map((c) => [c.channel, c.channel_mch_id, c.net]), [['swiftpass', MCH, want.net]]);

  // CSV: one line per entry and a total line equal to the JSON totals
  const csv = await statement('st1', DAY, 'csv');
  assert.match(csv.headers['content-type'], /^text\/csv/);
  const lines = csv.body.trim().split('\r\n').map((l) => l.split(','));
  assert.deepEqual(lines[0].slice(-5), ['rate_ppm', 'gross', 'fee', 'cashback', 'net']);
  assert.equal(lines.length, 1 + 14 + 1);
  const total = lines[lines.length - 1];
  assert.equal(total[0], 'total');
  assert.deepEqual(total.slice(-4).map(Number), [want.gross, want.fee, want.cashback, want.net]);
  assert.deepEqual(lines.slice(1, -1).map((l) => Number(l[l.length - 1])), st.lines.map((l) => l.net));

  // another day is empty; another merchant's shop is not found; a bad date is refused
  const other = (await statement('st1', '2001-01-01')).json;
  assert.deepEqual([other.lines.length, other.totals.net], [0, 0]);
  assert.equal((await ctx.shop.call('GET', `/v1/statements/nosuchshop?date=${DAY}`)).status, 404);
  assert.equal((await ctx.shop.call('GET', '/v1/statements/st1?date=2026-02-30')).status, 400);
});

test('re-running the settlement consumer from the start gives identical entries and totals', async () => {
  const snapshot = () => psql(`SELECT source_event_id, kind, order_id, refund_id, gross, fee, cashback, net,
      occurred_at, rate_ppm FROM settlement_entries ORDER BY source_event_id`);
  const before = snapshot();
  const totals = (await statement('st1', DAY)).json.totals;
  const entries = Number(psql('SELECT count(*) FROM settlement_entries'));
  assert.ok(entries >= 14);
  // the consumer from the very beginning of the event log
  const events = Number(psql('SELECT count(*) FROM order_events'));
  const seen = Number(psql("SELECT events FROM settlement_cursor WHERE name = 'main'"));
  psql("UPDATE settlement_cursor SET watermark = '0' WHERE name = 'main'");
  await h.waitFor(() => Number(psql("SELECT events FROM settlement_cursor WHERE name = 'main'")) >= seen + events, 10000);
  assert.equal(snapshot(), before);
  // the operator's re-drive from event 0: nothing new, nothing different
  const rd = await pg.admin(ctx.gw, 'POST', '/admin/settlement/redrive', { from_event_id: 0 });
  assert.equal(rd.result.inserted, 0, JSON.stringify(rd));
  assert.equal(rd.result.differing, 0, JSON.stringify(rd));
  assert.equal(rd.result.identical, entries, JSON.stringify(rd));
  assert.equal(snapshot(), before);
  assert.deepEqual((await statement('st1', DAY)).json.totals, totals);
  // entries are insert-only
  assert.throws(() => psql('UPDATE settlement_entries SET fee = fee + 1'), /insert-only/);
  assert.throws(() => psql('DELETE FROM settlement_entries'), /insert-only/);
});

/* ---- bills ---- */

async function billText() {
  const r = await ctx.sim.ctl('GET', `/_sim/bill?mch_id=${MCH}&date=${DAY.replace(/-/g, '')}`);
  assert.equal(r.status, 200, r.body);
  return r.body;
}

/* The bill's lines as arrays of values (without the "`"), and the bill
 * rebuilt with a correct summary. */
const parseBill = st.parseTickBill;
function buildBill({ cols, body, idx }) {
  const fen = (s) => Math.round(Number(s) * 100);
  const paid = body.filter((v) => v[idx('交易状态')] === 'SUCCESS').reduce((s, v) => s + fen(v[idx('总金额')]), 0);
  const refunded = body.filter((v) => v[idx('交易状态')] === 'REFUND').reduce((s, v) => s + fen(v[idx('退款金额')]), 0);
  const y = (f) => (f / 100).toFixed(2);
  return st.buildTickBill(cols, body, '总交易单数,总交易额,总退款金额,总企业红包退款金额,手续费总金额',
    [body.length, y(paid), y(refunded), '0.00', '0.00']);
}

test('the simulator\'s bill of the day matches; one missing on each side and one amount mismatch are exactly the findings', async () => {
  const text = await billText();
  const bill = parseBill(text);
  // 9 payments + 5 refunds of shop st1 (st2 has no traffic yet)
  assert.equal(bill.body.length, 14, text);
  assert.match(text.split('\r\n')[0], /^交易时间,公众账号ID,第三方商户号,商户号,/);
  await rec.expectClean(text, 14);

  // alter it: drop one payment line, add a payment we never saw, change an amount
  const S = bill.idx('交易状态'), OTN = bill.idx('商户订单号'), TOTAL = bill.idx('总金额'), TXN = bill.idx('平台订单号');
  const pays = bill.body.filter((v) => v[S] === 'SUCCESS');
  const dropped = pays[0][OTN];
  const changed = pays[1][OTN];
  const altered = bill.body.filter((v) => v[OTN] !== dropped || v[S] !== 'SUCCESS').map((v) => {
    if (v[OTN] === changed && v[S] === 'SUCCESS') {
      const w = [...v];
      w[TOTAL] = ((Math.round(Number(w[TOTAL]) * 100) + 1) / 100).toFixed(2);
      return w;
    }
    return v;
  });
  const stranger = [...pays[2]];
  stranger[OTN] = 'NOT-OURS-0000000000001';
  stranger[TXN] = `${MCH}0000000000000001`;
  altered.push(stranger);
  const text2 = buildBill({ ...bill, body: altered });

  // the CLI says the same, exit status 1
  await rec.expectFindings(text2, { dropped, changed });
  // every run is recorded
  assert.ok(Number(psql("SELECT count(*) FROM reconciliations WHERE channel = 'swiftpass'")) >= 4);

  // a truncated bill (no summary) and a summary that does not add up are refused
  await rec.refused(text2.split('\r\n').slice(0, -3).join('\r\n'));
  await rec.refused(text2.replace(/\r\n`(\d+),/, (m, n) => `\r\n\`${Number(n) + 1},`));
  const other = await st.adminRequest(ctx.gw, { path: `/admin/reconcile?channel=mock&date=${DAY}`, body: 'x' });
  assert.equal(other.status, 422);
  assert.equal(other.json.error.code, 'unsupported_channel');
});

test('a bill naming an order we still have as UNKNOWN gets it settled by query', async () => {
  // this part runs on real schedules (time_scale 1): the follow-up would not
  // look at the order again for a while on its own
  assert.equal((await ctx.gw.stop()).code, 0, ctx.gw.logs().slice(-3000));
  ctx.gw = await h.startPaygated({ services: ctx.services, config: gwConfig({ time_scale: 1, tick_ms: 50, node_id: 'recon' }) });
  const call = pg.merchantClient(ctx.gw, ctx.shop.merchant, ctx.shop.secret);
  // the channel never answers the payment (…8888): the order is UNKNOWN
  const r = await call('POST', '/v1/orders', { shop_id: 'st2', out_trade_no: otn('U'), amount: 2468, subject: 'Tea',
    method: 'barcode', auth_code: '134567890123458888' });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 'UNKNOWN', r.body);
  const tradeNo = r.json.trade_no;
  // the customer confirms; the channel's notification is lost
  await ctx.sim.ctl('POST', '/_sim/faults', { drop_notify: true, count: 1 });
  const p = await ctx.sim.ctl('POST', '/_sim/pay', { mch_id: MCH, out_trade_no: tradeNo });
  assert.equal(p.status, 200, p.body);
  // park the order's next check a day away (only while no job holds it)
  await st.parkOrder(ctx, tradeNo, 'UNKNOWN');
  await h.sleep(300);
  assert.equal(await orderStatus(tradeNo), 'UNKNOWN');

  st.expectRequeried(await rec.admin(await billText()), tradeNo, 'UNKNOWN');
  // the follow-up queries it now and finds it paid
  await st.expectSettledByQuery(ctx, tradeNo, 10000);
  // settled: an entry, and the bill now matches
  await h.waitFor(() => psql(`SELECT count(*) FROM settlement_entries WHERE trade_no = '${tradeNo}'`) === '1', 10000);
  const again = await rec.admin(await billText());
  assert.equal(again.json.result.findings, 0, again.body);
});
