'use strict';
/*
 * settlement.js — what the settlement and reconciliation integration tests
 * (test/integration/settlement*.test.js) share, on top of harness.js and
 * paygate.js:
 *
 *   const st = require('../lib/settlement');
 *   const ctx = st.setup({ sim: ['mybank', ['--time-scale', '0.01']], tmp: 'paygate-settle-mb-',
 *     async prepare(ctx) { … ctx.sim.ctl(…) … }, config: (ctx) => ({ … }), shop: (ctx) => ({ … }) });
 *   const rec = st.reconciler(ctx, { channel: 'mybank', date: DAY, mch: MCH, contentType: 'text/csv' });
 *   test('…', async () => { … await rec.expectClean(text, 5); … });
 *
 * setup() registers test.before (services and the simulator, then paygated
 * and a shop) and test.after (paygated must exit 0 with no sanitizer report;
 * everything is stopped and the temporary directory removed).  The context
 * it returns is filled in by test.before: ctx.services, ctx.sim, ctx.gw,
 * ctx.shop, ctx.tmp, and whatever prepare() adds; ctx.psql(sql) runs SQL on
 * the file's own PostgreSQL.
 */
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const h = require('./harness');
const pg = require('./paygate');

/* The business day (Asia/Shanghai = GMT+8, the simulators' zone) of now, YYYY-MM-DD. */
const today = () => new Date(Date.now() + 8 * 3600e3).toISOString().slice(0, 10);

/* Unique names in this test file (node --test runs each file in a process of its own). */
let seq = 0;
const otn = (p) => `${p}${process.pid}x${seq++}`;

/* fen → a yuan string ("-1.05"), and back, exactly (no floating point). */
const yuan = (v) => `${v < 0 ? '-' : ''}${Math.floor(Math.abs(v) / 100)}.${String(Math.abs(v) % 100).padStart(2, '0')}`;
const fen = (s) => {
  const t = s.trim();
  const [i, f = ''] = t.replace('-', '').split('.');
  const v = Number(i) * 100 + Number((f + '00').slice(0, 2));
  return t.startsWith('-') ? -v : v;
};

/*
 * opts.sim      [name, args] of the simulator (test/sim/<name>.js)
 * opts.tmp      prefix of a private temporary directory (ctx.tmp), or none
 * opts.prepare  async (ctx) before paygated starts: the simulator's merchants, keys, …
 * opts.config   (ctx) → paygated's configuration (merged over the harness's)
 * opts.shop     (ctx) → the options of pg.setupShop; ctx.shop is its result
 * opts.after    async (ctx) once the shop is set up: rates, more shops, …
 */
function setup(opts) {
  const ctx = {};
  ctx.psql = (sql) => execFileSync('psql', [ctx.services.pg.conninfo, '-At', '-F', '|', '-c', sql],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  test.before(async () => {
    if (opts.tmp) ctx.tmp = fs.mkdtempSync(path.join(os.tmpdir(), opts.tmp));
    const [name, args = []] = opts.sim;
    // both at once; whatever started is kept for test.after to stop, also when the other failed
    const started = await Promise.allSettled([h.startServices(), pg.startSim(name, args)]);
    [ctx.services, ctx.sim] = started.map((r) => r.value);
    const failed = started.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    if (opts.prepare) await opts.prepare(ctx);
    ctx.gw = await h.startPaygated({ services: ctx.services, config: opts.config(ctx) });
    ctx.shop = await pg.setupShop(ctx.gw, opts.shop(ctx));
    if (opts.after) await opts.after(ctx);
  });
  test.after(async () => {
    if (ctx.gw) {
      const r = await ctx.gw.stop();
      assert.equal(r.code, 0, `paygated exit status\n${ctx.gw.logs().slice(-3000)}`);
      assert.doesNotMatch(ctx.gw.logs(), /AddressSanitizer|LeakSanitizer|runtime error/);
    }
    if (ctx.sim) await ctx.sim.stop();
    if (ctx.services) await ctx.services.close();
    if (ctx.tmp) fs.rmSync(ctx.tmp, { recursive: true, force: true });
  });
  return ctx;
}

/* An admin API request, answered whatever its status (pg.admin insists on 200).
 * Content-Type only when contentType is given. */
function adminRequest(gw, { method = 'POST', path: p, body, contentType, timeoutMs }) {
  const headers = { Authorization: `Bearer ${gw.adminToken}` };
  if (contentType) headers['Content-Type'] = contentType;
  return h.request({ port: gw.adminPort, method, path: p, headers, body, timeoutMs });
}

/* The statement of a shop of ctx.shop's merchant (JSON, or format 'csv'): 200 or the test fails. */
async function statement(ctx, shopId, date, format) {
  const r = await ctx.shop.call('GET', `/v1/statements/${shopId}?date=${date}${format ? `&format=${format}` : ''}`);
  assert.equal(r.status, 200, r.body);
  return r;
}

/* Barcode payments of the given amounts in shop shopId, each paid at once: their orders. */
async function payBarcode(ctx, { shopId, prefix, amounts, subject = 'Tea', authCode }) {
  const paid = [];
  for (const amount of amounts) {
    const r = await ctx.shop.call('POST', '/v1/orders', { shop_id: shopId, out_trade_no: otn(prefix), amount, subject,
      method: 'barcode', auth_code: authCode });
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json.status, 'SUCCESS', r.body);
    paid.push(r.json);
  }
  return paid;
}

/* The one refund of shop shopId (of amount, on tradeNo), waited for until SUCCESS: its refund_no. */
async function refundOne(ctx, { shopId, tradeNo, amount }) {
  const rf = await ctx.shop.call('POST', `/v1/orders/${tradeNo}/refunds`, { out_refund_no: otn('RF'), amount });
  assert.equal(rf.status, 200, rf.body);
  await h.waitFor(() => ctx.psql(`SELECT count(*) FROM refunds r JOIN orders o ON o.id = r.order_id
      WHERE o.shop_id = '${shopId}' AND r.status = 'SUCCESS'`) === '1', 20000);
  return ctx.psql(`SELECT r.refund_no FROM refunds r JOIN orders o ON o.id = r.order_id WHERE o.shop_id = '${shopId}'`);
}

/* Parks an order in status (PENDING, UNKNOWN) a day away from its next check, once no job holds it. */
async function parkOrder(ctx, tradeNo, status) {
  await h.waitFor(() => ctx.psql(`UPDATE orders SET next_check_at = now() + interval '1 day'
      WHERE trade_no = '${tradeNo}' AND status = '${status}' AND (lease_until IS NULL OR lease_until < now())
      RETURNING 1`).startsWith('1'), 10000);
}

/* A reconciliation whose only finding is tradeNo, ours in status `ours`, paid on the bill: re-queried. */
function expectRequeried(rec, tradeNo, ours) {
  assert.equal(rec.status, 200, rec.body);
  const f = rec.json.result;
  assert.deepEqual([f.missing_ours.length, f.missing_theirs.length, f.requeried], [0, 0, 1], rec.body);
  assert.deepEqual(f.mismatch.map((x) => [x.kind, x.trade_no, x.ours, x.theirs, x.requery]),
    [['status', tradeNo, ours, 'SUCCESS', true]]);
}

/* The order becomes SUCCESS, and by a query (the follow-up's), not a notification. */
async function expectSettledByQuery(ctx, tradeNo, timeoutMs) {
  await h.waitFor(() => ctx.psql(`SELECT status FROM orders WHERE trade_no = '${tradeNo}'`) === 'SUCCESS', timeoutMs);
  assert.equal(ctx.psql(`SELECT e.source FROM order_events e JOIN orders o ON o.id = e.order_id
      WHERE o.trade_no = '${tradeNo}' AND e.to_status = 'SUCCESS'`), 'query');
}

/*
 * Reconciliation of the channel's bills of date for mch, by the admin API
 * (POST /admin/reconcile) and by the CLI (paygated channel reconcile --json,
 * the bill written to ctx.tmp as bill-N.<ext>).
 */
function reconciler(ctx, { channel, date, mch, contentType = 'text/plain', ext = 'csv', timeoutMs }) {
  const rec = {
    admin: (body) => adminRequest(ctx.gw, { path: `/admin/reconcile?channel=${channel}&date=${date}&mch_id=${mch}`,
      body, contentType, timeoutMs }),
    cli(body) {
      const file = path.join(ctx.tmp, `bill-${seq++}.${ext}`);
      fs.writeFileSync(file, body);
      return h.runPaygated(['channel', 'reconcile', '-c', ctx.gw.configFile, '--channel', channel, '--date', date,
        '--mch-id', mch, '--json', file]);
    },
    /* The admin API refuses the bill as invalid_bill (its message matching pattern, when given). */
    async refused(body, pattern) {
      const r = await rec.admin(body);
      assert.equal(r.status, 422, r.body);
      assert.equal(r.json.error.code, 'invalid_bill', r.body);
      if (pattern) assert.match(r.json.error.message, pattern);
      return r;
    },
    /* No findings over `lines` bill lines, by the admin API and the CLI (exit status 0). */
    async expectClean(body, lines) {
      const r = await rec.admin(body);
      assert.equal(r.status, 200, r.body);
      assert.deepEqual([r.json.result.findings, r.json.result.lines], [0, lines], r.body);
      const cli = await rec.cli(body);
      assert.equal(cli.code, 0, cli.stderr + cli.stdout);
      assert.equal(JSON.parse(cli.stdout).findings, 0);
    },
    /*
     * Exactly three findings: the payment `dropped` from the bill (missing theirs), the
     * payment `stranger` we never saw (missing ours; its mch_id checked when mch is given)
     * and `changed`, one fen more on the bill (an amount mismatch); the CLI (exit status 1)
     * reports the same.  The admin API's result.
     */
    async expectFindings(body, { dropped, changed, stranger = 'NOT-OURS-0000000000001', mch: mchId }) {
      const r = await rec.admin(body);
      assert.equal(r.status, 200, r.body);
      const f = r.json.result;
      assert.equal(f.findings, 3, r.body);
      assert.deepEqual(f.missing_ours.map((x) => (mchId ? [x.kind, x.trade_no, x.mch_id] : [x.kind, x.trade_no])),
        [mchId ? ['pay', stranger, mchId] : ['pay', stranger]]);
      assert.deepEqual(f.missing_theirs.map((x) => [x.kind, x.trade_no]), [['pay', dropped]]);
      assert.deepEqual(f.mismatch.map((x) => [x.kind, x.trade_no, x.theirs - x.ours]), [['amount', changed, 1]]);
      const cli = await rec.cli(body);
      assert.equal(cli.code, 1, cli.stderr + cli.stdout);
      const c = JSON.parse(cli.stdout);
      for (const k of ['missing_ours', 'missing_theirs', 'mismatch']) assert.deepEqual(c[k], f[k], k);
      return f;
    },
  };
  return rec;
}

/*
 * A QR order left PENDING here (its notification lost) while the customer
 * paid: the channel's bill (await bill()) names it paid, the reconciliation
 * schedules its re-query, which settles it; the bill then matches.
 *   order  the order's shop_id and method (wechat_qr, alipay_qr, …)
 *   pay    the simulator's /_sim/pay body, without out_trade_no
 */
async function pendingSettledByQuery(ctx, rec, { order, pay, bill }) {
  const r = await ctx.shop.call('POST', '/v1/orders', { ...order, out_trade_no: otn('Q'), amount: 2468, subject: 'Tea',
    expire_s: 86400 });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 'PENDING', r.body);
  const tradeNo = r.json.trade_no;
  await parkOrder(ctx, tradeNo, 'PENDING');
  let s = await ctx.sim.ctl('POST', '/_sim/faults', { drop_notify: true, count: 1 });
  assert.equal(s.status, 200, s.body);
  s = await ctx.sim.ctl('POST', '/_sim/pay', { ...pay, out_trade_no: tradeNo });
  assert.equal(s.status, 200, s.body);
  await h.sleep(500);
  assert.equal(ctx.psql(`SELECT status FROM orders WHERE trade_no = '${tradeNo}'`), 'PENDING');

  expectRequeried(await rec.admin(await bill()), tradeNo, 'PENDING');
  await expectSettledByQuery(ctx, tradeNo, 15000);
  const again = await rec.admin(await bill());
  assert.equal(again.json.result.findings, 0, again.body);
}

/* ---- the bill layout of Swiftpass and WeChat Pay: titles, "`"-prefixed lines, summary titles and values ---- */

/* The lines as arrays of values (without the "`"); idx(title) is a column's index. */
function parseTickBill(text) {
  const lines = text.split('\r\n').filter(Boolean);
  const cols = lines[0].split(',');
  const body = lines.slice(1, -2).map((l) => l.slice(1).split(',`'));
  return { cols, body, idx: (name) => cols.indexOf(name), summary: [lines.at(-2), lines.at(-1)] };
}
/* The bill of those lines, with the summary given. */
function buildTickBill(cols, body, summaryTitles, summaryValues) {
  const tick = (values) => values.map((x) => '`' + x).join(',');
  return [cols.join(','), ...body.map(tick), summaryTitles, tick(summaryValues)].join('\r\n') + '\r\n';
}

module.exports = {
  today, otn, yuan, fen, setup, adminRequest, statement, payBarcode, refundOne, parkOrder, expectRequeried,
  expectSettledByQuery, reconciler, pendingSettledByQuery, parseTickBill, buildTickBill,
};
