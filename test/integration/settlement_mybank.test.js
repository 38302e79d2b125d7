'use strict';
/*
 * Reconciliation of a MyBank bill (docs/operations.md "Daily settlement", docs/channels/mybank.md
 * "Bill": a format paygate defined, no public source stating MyBank's), through the real daemon
 * with the MyBank module, PostgreSQL, Redis and test/sim/mybank.js (GET /_sim/bill), schedules
 * compressed (0.01):
 *   - a day of payments, a refund and a failed payment: no findings (admin API and CLI);
 *   - one payment removed, a foreign one added, one amount changed (summary recomputed here):
 *     exactly those three findings;
 *   - a truncated bill, a summary that does not add up, a fractional amount: invalid_bill;
 *   - a bill naming as paid a QR order still PENDING here (its notification lost) gets it settled
 *     by a query.
 */
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const h = require('../lib/harness');
const pg = require('../lib/paygate');

const FIX = path.join(h.ROOT, 'test', 'fixtures', 'mybank');
const MCH = '226801000000000131';
const ISV_ORG = '202211000000000001';
const APPID = '2018000000000001';
const SCALE = 0.01;
let services, sim, gw, shop, tmp;

function psql(sql) {
  return execFileSync('psql', [services.pg.conninfo, '-At', '-c', sql], { encoding: 'utf8' }).trim();
}
const today = () => new Date(Date.now() + 8 * 3600e3).toISOString().slice(0, 10);
const DAY = today();
let seq = 0;
const otn = (p) => `${p}${process.pid}x${seq++}`;

test.before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'paygate-settle-mb-'));
  [services, sim] = await Promise.all([h.startServices(), pg.startSim('mybank', ['--time-scale', String(SCALE)])]);
  let r = await sim.ctl('POST', '/_sim/bank', { private_key: fs.readFileSync(path.join(FIX, 'bank_priv.pem'), 'utf8') });
  assert.equal(r.status, 200, r.body);
  r = await sim.ctl('POST', '/_sim/merchants', { mch_id: MCH, isv_org_id: ISV_ORG, appid: APPID,
    public_key: fs.readFileSync(path.join(FIX, 'isv_pub.pem'), 'utf8') });
  assert.equal(r.status, 200, r.body);
  r = await sim.ctl('POST', '/_sim/settings', { refund_delay_s: 0 });
  assert.equal(r.status, 200, r.body);
  gw = await h.startPaygated({
    services,
    config: {
      api: { min_expire_s: 60 },
      tasks: { time_scale: SCALE, tick_ms: 20, created_grace_s: 300 },
      channels: {
        call_timeout_ms: 1500,
        settings: { mybank: { gateway_url: `${sim.url}/open/api/common/request.htm`, isv_org_id: ISV_ORG, appid: APPID,
          bank_public_key: fs.readFileSync(path.join(FIX, 'bank_pub_spki.b64'), 'utf8').trim() } },
      },
    },
  });
  shop = await pg.setupShop(gw, { merchant: 'mm', shop: 'sm1', methods: ['barcode', 'wechat_qr'],
    subs: [{ channel: 'mybank', mch_id: MCH, private_key: fs.readFileSync(path.join(FIX, 'isv_priv.pem'), 'utf8') }] });
});

test.after(async () => {
  if (gw) {
    const r = await gw.stop();
    assert.equal(r.code, 0, `paygated exit status\n${gw.logs().slice(-3000)}`);
    assert.doesNotMatch(gw.logs(), /AddressSanitizer|LeakSanitizer|runtime error/);
  }
  if (sim) await sim.stop();
  if (services) await services.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

const COLUMNS = 'TradeTime,MerchantId,OutTradeNo,OrderNo,TradeType,OutRefundNo,RefundOrderNo,Amount,Currency,TradeStatus';
const SUMMARY = 'TotalCount,PayCount,PayAmount,RefundCount,RefundAmount';
function parseBill(text) {
  const lines = text.split('\r\n').filter(Boolean);
  const cols = lines[0].split(',');
  return { cols, body: lines.slice(1, -2).map((l) => l.split(',')), summary: lines.slice(-2), idx: (n) => cols.indexOf(n) };
}
/* The bill with body as its lines and the summary computed here. */
function buildBill({ cols, body, idx }) {
  const succ = (type) => body.filter((v) => v[idx('TradeType')] === type && v[idx('TradeStatus')] === 'succ');
  const sum = (l) => l.reduce((s, v) => s + Number(v[idx('Amount')]), 0);
  return [cols.join(','), ...body.map((v) => v.join(',')), SUMMARY,
    [body.length, succ('PAY').length, sum(succ('PAY')), succ('REFUND').length, sum(succ('REFUND'))].join(',')].join('\r\n') + '\r\n';
}
async function billText() {
  const r = await sim.ctl('GET', `/_sim/bill?mch_id=${MCH}&date=${DAY}`);
  assert.equal(r.status, 200, r.body);
  assert.match(r.headers['content-type'], /^text\/csv/);
  return r.body;
}
async function reconcileAdmin(text) {
  return h.request({ port: gw.adminPort, method: 'POST', path: `/admin/reconcile?channel=mybank&date=${DAY}&mch_id=${MCH}`,
    headers: { Authorization: `Bearer ${gw.adminToken}`, 'Content-Type': 'text/csv' }, body: text });
}
async function reconcileCli(text) {
  const file = path.join(tmp, `bill-${seq++}.csv`);
  fs.writeFileSync(file, text);
  return h.runPaygated(['channel', 'reconcile', '-c', gw.configFile, '--channel', 'mybank', '--date', DAY,
    '--mch-id', MCH, '--json', file]);
}
async function refused(text, pattern) {
  const r = await reconcileAdmin(text);
  assert.equal(r.status, 422, r.body);
  assert.equal(r.json.error.code, 'invalid_bill', r.body);
  assert.match(r.json.error.message, pattern);
}

test('a day of MyBank payments and a refund: the bill matches; removed, foreign and changed lines are exactly the findings', async (t) => {
  const paid = [];
  for (const amount of [1234, 999, 50001, 7]) {
    const r = await shop.call('POST', '/v1/orders', { shop_id: 'sm1', out_trade_no: otn('M'), amount, subject: 'Tea',
      method: 'barcode', auth_code: '134567890123456781' });
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json.status, 'SUCCESS', r.body);
    paid.push(r.json);
  }
  // a failed payment: on the bill? no (never paid), and not ours to match either
  const failed = await shop.call('POST', '/v1/orders', { shop_id: 'sm1', out_trade_no: otn('F'), amount: 300, subject: 'Tea',
    method: 'barcode', auth_code: '134567890123450000' });
  assert.equal(failed.json.status, 'FAILED', failed.body);
  const rf = await shop.call('POST', `/v1/orders/${paid[2].trade_no}/refunds`, { out_refund_no: otn('RF'), amount: 10001 });
  assert.equal(rf.status, 200, rf.body);
  await h.waitFor(() => psql(`SELECT count(*) FROM refunds r JOIN orders o ON o.id = r.order_id
      WHERE o.shop_id = 'sm1' AND r.status = 'SUCCESS'`) === '1', 20000);
  const refundNo = psql("SELECT r.refund_no FROM refunds r JOIN orders o ON o.id = r.order_id WHERE o.shop_id = 'sm1'");
  if (today() !== DAY) { t.skip('the business day turned during the test'); return; }

  const text = await billText();
  const bill = parseBill(text);
  assert.equal(bill.cols.join(','), COLUMNS);
  assert.deepEqual(bill.summary, [SUMMARY, '5,4,52241,1,10001']);
  assert.equal(buildBill(bill), text);
  const T = bill.idx('TradeType'), OTN = bill.idx('OutTradeNo'), AMT = bill.idx('Amount');
  const refundLine = bill.body.find((v) => v[T] === 'REFUND');
  assert.deepEqual([refundLine[OTN], refundLine[bill.idx('OutRefundNo')], refundLine[AMT]], [paid[2].trade_no, refundNo, '10001']);

  const clean = await reconcileAdmin(text);
  assert.equal(clean.status, 200, clean.body);
  assert.deepEqual([clean.json.result.findings, clean.json.result.lines], [0, 5], clean.body);
  const cliClean = await reconcileCli(text);
  assert.equal(cliClean.code, 0, cliClean.stderr + cliClean.stdout);

  const pays = bill.body.filter((v) => v[T] === 'PAY');
  const dropped = pays[0][OTN], changed = pays[1][OTN];
  const altered = bill.body.filter((v) => !(v[OTN] === dropped && v[T] === 'PAY'))
    .map((v) => (v[OTN] === changed && v[T] === 'PAY' ? v.map((x, i) => (i === AMT ? String(Number(x) + 1) : x)) : v));
  const stranger = pays[2].map((x, i) => (i === OTN ? 'NOT-OURS-0000000000001' : x));
  altered.push(stranger);
  const text2 = buildBill({ ...bill, body: altered });
  const r = await reconcileAdmin(text2);
  assert.equal(r.status, 200, r.body);
  const f = r.json.result;
  assert.equal(f.findings, 3, r.body);
  assert.deepEqual(f.missing_ours.map((x) => [x.kind, x.trade_no, x.mch_id]), [['pay', 'NOT-OURS-0000000000001', MCH]]);
  assert.deepEqual(f.missing_theirs.map((x) => [x.kind, x.trade_no]), [['pay', dropped]]);
  assert.deepEqual(f.mismatch.map((x) => [x.kind, x.trade_no, x.theirs - x.ours]), [['amount', changed, 1]]);
  const cli = await reconcileCli(text2);
  assert.equal(cli.code, 1, cli.stderr + cli.stdout);
  const c = JSON.parse(cli.stdout);
  for (const k of ['missing_ours', 'missing_theirs', 'mismatch']) assert.deepEqual(c[k], f[k], k);

  // refused: truncated (no summary), a summary that does not add up, a fractional amount
  await refused(text2.split('\r\n').slice(0, -3).join('\r\n'), /truncated/);
  await refused(text2.replace(/\r\n(\d+),/, (m, n) => `\r\n${Number(n) + 1},`), /TotalCount/);
  await refused(text.replace(`,${pays[1][AMT]},CNY`, `,${pays[1][AMT]}.00,CNY`), /whole fen/);
  const badCli = await reconcileCli(text2.split('\r\n').slice(0, -3).join('\r\n'));
  assert.equal(badCli.code, 2, badCli.stderr);
  assert.equal(Number(psql("SELECT count(*) FROM reconciliations WHERE channel = 'mybank'")), 4);
});

test('a bill naming as paid a QR order still PENDING here (its notification lost) gets it settled by query', async () => {
  const r = await shop.call('POST', '/v1/orders', { shop_id: 'sm1', out_trade_no: otn('Q'), amount: 2468, subject: 'Tea',
    method: 'wechat_qr', expire_s: 86400 });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 'PENDING', r.body);
  const tradeNo = r.json.trade_no;
  await h.waitFor(() => psql(`UPDATE orders SET next_check_at = now() + interval '1 day'
      WHERE trade_no = '${tradeNo}' AND status = 'PENDING' AND (lease_until IS NULL OR lease_until < now())
      RETURNING 1`).startsWith('1'), 10000);
  let s = await sim.ctl('POST', '/_sim/faults', { drop_notify: true, count: 1 });
  assert.equal(s.status, 200, s.body);
  s = await sim.ctl('POST', '/_sim/pay', { mch_id: MCH, out_trade_no: tradeNo });
  assert.equal(s.status, 200, s.body);
  await h.sleep(500);
  assert.equal(psql(`SELECT status FROM orders WHERE trade_no = '${tradeNo}'`), 'PENDING');

  const rec = await reconcileAdmin(await billText());
  assert.equal(rec.status, 200, rec.body);
  const f = rec.json.result;
  assert.deepEqual([f.missing_ours.length, f.missing_theirs.length, f.requeried], [0, 0, 1], rec.body);
  assert.deepEqual(f.mismatch.map((x) => [x.kind, x.trade_no, x.ours, x.theirs, x.requery]),
    [['status', tradeNo, 'PENDING', 'SUCCESS', true]]);
  await h.waitFor(() => psql(`SELECT status FROM orders WHERE trade_no = '${tradeNo}'`) === 'SUCCESS', 15000);
  assert.equal(psql(`SELECT e.source FROM order_events e JOIN orders o ON o.id = e.order_id
      WHERE o.trade_no = '${tradeNo}' AND e.to_status = 'SUCCESS'`), 'query');
  const again = await reconcileAdmin(await billText());
  assert.equal(again.json.result.findings, 0, again.body);
});
