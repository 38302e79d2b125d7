'use strict';
/*
 * Reconciliation of a WeChat Pay trade bill (docs/operations.md "Daily
 * settlement", docs/channels/wechatpay.md "Bill"), through the WeChat Pay
 * module and test/sim/wechatpay.js, schedules compressed (0.01):
 *   - a day of a few paid orders and one refund: the simulator's own bill
 *     (GET /_sim/bill, the tradebill ALL format) gives no findings, by the
 *     admin API and by the CLI;
 *   - the bill with one payment line removed, a foreign one added and one
 *     amount changed (the summary recomputed) gives exactly those three
 *     findings;
 *   - a truncated bill and a summary that does not add up are refused.
 * The daemon loads the module from a private channels directory holding a
 * copy of build/asan/channels/wechatpay.so.
 */
const test = require('node:test');
const assert = require('node:assert');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const h = require('../lib/harness');
const st = require('../lib/settlement');

const SCALE = 0.01;
const APPID = 'wxd678efh567hg6787';
const MCH = '1900000451';
const DAY = st.today();

const pem = (k, type) => k.export(type === 'private' ? { type: 'pkcs8', format: 'pem' } : { type: 'spki', format: 'pem' });
const ctx = st.setup({
  sim: ['wechatpay', ['--time-scale', String(SCALE)]],
  tmp: 'paygate-settle-wx-',
  async prepare(c) {
    const { publicKey, privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    c.privateKey = privateKey;
    c.apiv3 = crypto.randomBytes(16).toString('hex');
    c.serial = crypto.randomBytes(20).toString('hex').toUpperCase();
    c.plat = (await c.sim.ctl('GET', '/_sim/platform')).json;
    let r = await c.sim.ctl('POST', '/_sim/merchants', { mch_id: MCH, appid: APPID, apiv3_key: c.apiv3,
      merchant_public_key: pem(publicKey), merchant_serial: c.serial });
    assert.equal(r.status, 200, r.body);
    r = await c.sim.ctl('POST', '/_sim/settings', { refund_delay_s: 0 });
    assert.equal(r.status, 200, r.body);
    c.chdir = path.join(c.tmp, 'channels');
    fs.mkdirSync(c.chdir, { mode: 0o755 });
    fs.copyFileSync(path.join(h.ROOT, 'build', 'asan', 'channels', 'wechatpay.so'), path.join(c.chdir, 'wechatpay.so'));
    fs.chmodSync(path.join(c.chdir, 'wechatpay.so'), 0o755);
  },
  config: ({ sim, chdir, plat }) => ({
    api: { min_expire_s: 60 },
    tasks: { time_scale: SCALE, tick_ms: 20 },
    channels: {
      dir: chdir,
      call_timeout_ms: 2000,
      settings: { wechatpay: { base_url: sim.url, platform_keys: [{ key: plat.certificate.pem },
        { serial: plat.public_key.id, key: plat.public_key.pem }] } },
    },
  }),
  shop: (c) => ({ merchant: 'mw', shop: 'sw1', methods: ['barcode', 'wechat_qr'],
    subs: [{ channel: 'wechatpay', mch_id: MCH, app_id: APPID, key: c.apiv3, private_key: pem(c.privateKey, 'private'),
      extra: { serial_no: c.serial } }] }),
});
const { psql } = ctx;
const rec = st.reconciler(ctx, { channel: 'wechatpay', date: DAY, mch: MCH });

/* ---- the bill, as arrays of values, and rebuilt with a correct summary ---- */

const SUMMARY = '总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额';
const { fen, yuan, parseTickBill: parseBill } = st;
function buildBill({ cols, body, idx }) {
  const sum = (name) => yuan(body.reduce((s, v) => s + fen(v[idx(name)]), 0));
  return st.buildTickBill(cols, body, SUMMARY,
    [body.length, sum('应结订单金额'), sum('退款金额'), '0.00', sum('手续费'), sum('订单金额'), sum('申请退款金额')]);
}

async function billText() {
  const r = await ctx.sim.ctl('GET', `/_sim/bill?mchid=${MCH}&date=${DAY}`);
  assert.equal(r.status, 200, r.body);
  return r.body;
}

test('a day of WeChat Pay payments and a refund: the simulator\'s bill matches; removed, foreign and changed lines are exactly the findings', async (t) => {
  // a few paid orders (codepay, immediate SUCCESS) and one refund
  const paid = await st.payBarcode(ctx, { shopId: 'sw1', prefix: 'W', amounts: [1234, 999, 50001, 7],
    authCode: '134567890123456781' });
  const refundNo = await st.refundOne(ctx, { shopId: 'sw1', tradeNo: paid[2].trade_no, amount: 10001 });
  if (st.today() !== DAY) { // midnight GMT+8 passed during the test: the day is split
    t.skip('the business day turned during the test');
    return;
  }

  const text = await billText();
  const bill = parseBill(text);
  assert.equal(text.split('\r\n')[0], '交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,' +
    '交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,' +
    '商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注');
  assert.equal(bill.summary[0], SUMMARY);
  assert.equal(bill.body.length, 5, text);
  const S = bill.idx('交易状态'), OTN = bill.idx('商户订单号'), TOTAL = bill.idx('订单金额'), TXN = bill.idx('微信订单号');
  assert.ok(bill.body.every((v) => v.length === bill.cols.length));
  const refundLine = bill.body.find((v) => v[S] === 'REFUND');
  assert.deepEqual([refundLine[OTN], refundLine[bill.idx('商户退款单号')], refundLine[bill.idx('申请退款金额')]],
    [paid[2].trade_no, refundNo, '100.01']);
  // the simulator's summary is the one the test computes
  assert.equal(buildBill(bill), text);

  await rec.expectClean(text, 5);

  // alter it: drop one payment line, add a payment we never saw, change an amount
  const pays = bill.body.filter((v) => v[S] === 'SUCCESS');
  const dropped = pays[0][OTN];
  const changed = pays[1][OTN];
  const altered = bill.body.filter((v) => v[OTN] !== dropped || v[S] !== 'SUCCESS').map((v) => {
    if (v[OTN] !== changed || v[S] !== 'SUCCESS') return v;
    const w = [...v];
    w[TOTAL] = yuan(fen(w[TOTAL]) + 1);
    w[bill.idx('应结订单金额')] = w[TOTAL];
    return w;
  });
  const stranger = [...pays[2]];
  stranger[OTN] = 'NOT-OURS-0000000000001';
  stranger[TXN] = '4200000000202601010000000001';
  altered.push(stranger);
  const text2 = buildBill({ ...bill, body: altered });

  await rec.expectFindings(text2, { dropped, changed, mch: MCH });
  assert.ok(Number(psql("SELECT count(*) FROM reconciliations WHERE channel = 'wechatpay'")) >= 4);

  // a truncated bill, a summary that does not add up, and one amount changed without its summary are refused
  await rec.refused(text2.split('\r\n').slice(0, -3).join('\r\n'));
  await rec.refused(text2.replace(/\r\n`(\d+),/, (m, n) => `\r\n\`${Number(n) + 1},`));
  const unsummed = text.split('\r\n').map((l) => {
    if (!l.startsWith('`') || l.slice(1).split(',`')[OTN] !== changed) return l;
    const v = l.slice(1).split(',`');
    v[TOTAL] = yuan(fen(v[TOTAL]) + 100);
    return v.map((x) => '`' + x).join(',');
  }).join('\r\n');
  assert.notEqual(unsummed, text);
  await rec.refused(unsummed, /订单总金额/);
  const badCli = await rec.cli(unsummed);
  assert.equal(badCli.code, 2, badCli.stderr + badCli.stdout);
  // a Swiftpass bill is not a WeChat Pay bill
  const swift = await rec.admin('交易时间,商户号\r\n总交易单数,总交易额,总退款金额\r\n`0,`0.00,`0.00\r\n');
  assert.equal(swift.status, 422, swift.body);
});
