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
const path = require('node:path');
const h = require('../lib/harness');
const st = require('../lib/settlement');

const FIX = path.join(h.ROOT, 'test', 'fixtures', 'mybank');
const MCH = '226801000000000131';
const ISV_ORG = '202211000000000001';
const APPID = '2018000000000001';
const SCALE = 0.01;
const DAY = st.today();

const ctx = st.setup({
  sim: ['mybank', ['--time-scale', String(SCALE)]],
  tmp: 'paygate-settle-mb-',
  async prepare({ sim }) {
    let r = await sim.ctl('POST', '/_sim/bank', { private_key: fs.readFileSync(path.join(FIX, 'bank_priv.pem'), 'utf8') });
    assert.equal(r.status, 200, r.body);
    r = await sim.ctl('POST', '/_sim/merchants', { mch_id: MCH, isv_org_id: ISV_ORG, appid: APPID,
      public_key: fs.readFileSync(path.join(FIX, 'isv_pub.pem'), 'utf8') });
    assert.equal(r.status, 200, r.body);
    r = await sim.ctl('POST', '/_sim/settings', { refund_delay_s: 0 });
    assert.equal(r.status, 200, r.body);
  },
  config: ({ sim }) => ({
    api: { min_expire_s: 60 },
    tasks: { time_scale: SCALE, tick_ms: 20, created_grace_s: 300 },
    channels: {
      call_timeout_ms: 1500,
      settings: { mybank: { gateway_url: `${sim.url}/open/api/common/request.htm`, isv_org_id: ISV_ORG, appid: APPID,
        bank_public_key: fs.readFileSync(path.join(FIX, 'bank_pub_spki.b64'), 'utf8').trim() } },
    },
  }),
  shop: () => ({ merchant: 'mm', shop: 'sm1', methods: ['barcode', 'wechat_qr'],
    subs: [{ channel: 'mybank', mch_id: MCH, private_key: fs.readFileSync(path.join(FIX, 'isv_priv.pem'), 'utf8') }] }),
});
const { psql } = ctx;
const rec = st.reconciler(ctx, { channel: 'mybank', date: DAY, mch: MCH, contentType: 'text/csv' });

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
  const r = await ctx.sim.ctl('GET', `/_sim/bill?mch_id=${MCH}&date=${DAY}`);
  assert.equal(r.status, 200, r.body);
  assert.match(r.headers['content-type'], /^text\/csv/);
  return r.body;
}

test('a day of MyBank payments and a refund: the bill matches; removed, foreign and changed lines are exactly the findings', async (t) => {
  const paid = await st.payBarcode(ctx, { shopId: 'sm1', prefix: 'M', amounts: [1234, 999, 50001, 7],
    authCode: '134567890123456781' });
  // a failed payment: on the bill? no (never paid), and not ours to match either
  const failed = await ctx.shop.call('POST', '/v1/orders', { shop_id: 'sm1', out_trade_no: st.otn('F'), amount: 300,
    subject: 'Tea', method: 'barcode', auth_code: '134567890123450000' });
  assert.equal(failed.json.status, 'FAILED', failed.body);
  const refundNo = await st.refundOne(ctx, { shopId: 'sm1', tradeNo: paid[2].trade_no, amount: 10001 });
  if (st.today() !== DAY) { t.skip('the business day turned during the test'); return; }

  const text = await billText();
  const bill = parseBill(text);
  assert.equal(bill.cols.join(','), COLUMNS);
  assert.deepEqual(bill.summary, [SUMMARY, '5,4,52241,1,10001']);
  assert.equal(buildBill(bill), text);
  const T = bill.idx('TradeType'), OTN = bill.idx('OutTradeNo'), AMT = bill.idx('Amount');
  const refundLine = bill.body.find((v) => v[T] === 'REFUND');
  assert.deepEqual([refundLine[OTN], refundLine[bill.idx('OutRefundNo')], refundLine[AMT]], [paid[2].trade_no, refundNo, '10001']);

  await rec.expectClean(text, 5);

  const pays = bill.body.filter((v) => v[T] === 'PAY');
  const dropped = pays[0][OTN], changed = pays[1][OTN];
  const altered = bill.body.filter((v) => !(v[OTN] === dropped && v[T] === 'PAY'))
    .map((v) => (v[OTN] === changed && v[T] === 'PAY' ? v.map((x, i) => (i === AMT ? String(Number(x) + 1) : x)) : v));
  const stranger = pays[2].map((x, i) => (i === OTN ? 'NOT-OURS-0000000000001' : x));
  altered.push(stranger);
  const text2 = buildBill({ ...bill, body: altered });
  await rec.expectFindings(text2, { dropped, changed, mch: MCH });

  // refused: truncated (no summary), a summary that does not add up, a fractional amount
  await rec.refused(text2.split('\r\n').slice(0, -3).join('\r\n'), /truncated/);
  await rec.refused(text2.replace(/\r\n(\d+),/, (m, n) => `\r\n${Number(n) + 1},`), /TotalCount/);
  await rec.refused(text.replace(`,${pays[1][AMT]},CNY`, `,${pays[1][AMT]}.00,CNY`), /whole fen/);
  const badCli = await rec.cli(text2.split('\r\n').slice(0, -3).join('\r\n'));
  assert.equal(badCli.code, 2, badCli.stderr);
  assert.equal(Number(psql("SELECT count(*) FROM reconciliations WHERE channel = 'mybank'")), 4);
});

test('a bill naming as paid a QR order still PENDING here (its notification lost) gets it settled by query', () =>
  st.pendingSettledByQuery(ctx, rec, { order: { shop_id: 'sm1', method: 'wechat_qr' }, pay: { mch_id: MCH }, bill: billText }));
