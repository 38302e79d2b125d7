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
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const h = require('../lib/harness');
const pg = require('../lib/paygate');

const SCALE = 0.01;
const APPID = 'wxd678efh567hg6787';
const MCH = '1900000451';
let services, sim, gw, shop, tmp;

function psql(sql) {
  return execFileSync('psql', [services.pg.conninfo, '-At', '-c', sql], { encoding: 'utf8' }).trim();
}
const pem = (k, type) => k.export(type === 'private' ? { type: 'pkcs8', format: 'pem' } : { type: 'spki', format: 'pem' });
/* The business day (Asia/Shanghai = the simulator's GMT+8) of now, YYYY-MM-DD. */
const today = () => new Date(Date.now() + 8 * 3600e3).toISOString().slice(0, 10);
const DAY = today();
let seq = 0;
const otn = (p) => `${p}${process.pid}x${seq++}`;

test.before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'paygate-settle-wx-'));
  [services, sim] = await Promise.all([h.startServices(), pg.startSim('wechatpay', ['--time-scale', String(SCALE)])]);
  const { publicKey, privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const apiv3 = crypto.randomBytes(16).toString('hex');
  const serial = crypto.randomBytes(20).toString('hex').toUpperCase();
  const plat = (await sim.ctl('GET', '/_sim/platform')).json;
  let r = await sim.ctl('POST', '/_sim/merchants', { mch_id: MCH, appid: APPID, apiv3_key: apiv3,
    merchant_public_key: pem(publicKey), merchant_serial: serial });
  assert.equal(r.status, 200, r.body);
  r = await sim.ctl('POST', '/_sim/settings', { refund_delay_s: 0 });
  assert.equal(r.status, 200, r.body);
  const chdir = path.join(tmp, 'channels');
  fs.mkdirSync(chdir, { mode: 0o755 });
  fs.copyFileSync(path.join(h.ROOT, 'build', 'asan', 'channels', 'wechatpay.so'), path.join(chdir, 'wechatpay.so'));
  fs.chmodSync(path.join(chdir, 'wechatpay.so'), 0o755);
  gw = await h.startPaygated({
    services,
    config: {
      api: { min_expire_s: 60 },
      tasks: { time_scale: SCALE, tick_ms: 20 },
      channels: {
        dir: chdir,
        call_timeout_ms: 2000,
        settings: { wechatpay: { base_url: sim.url, platform_keys: [{ key: plat.certificate.pem },
          { serial: plat.public_key.id, key: plat.public_key.pem }] } },
      },
    },
  });
  shop = await pg.setupShop(gw, { merchant: 'mw', shop: 'sw1', methods: ['barcode', 'wechat_qr'],
    subs: [{ channel: 'wechatpay', mch_id: MCH, app_id: APPID, key: apiv3, private_key: pem(privateKey, 'private'),
      extra: { serial_no: serial } }] });
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

/* ---- the bill, as arrays of values, and rebuilt with a correct summary ---- */

const SUMMARY = '总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额';
function parseBill(text) {
  const lines = text.split('\r\n').filter(Boolean);
  const cols = lines[0].split(',');
  const body = lines.slice(1, -2).map((l) => l.slice(1).split(',`'));
  return { cols, body, idx: (name) => cols.indexOf(name), summary: [lines.at(-2), lines.at(-1)] };
}
/* yuan string ↔ fen, exactly */
const fen = (s) => { const [i, f = ''] = s.replace('-', '').split('.'); const v = Number(i) * 100 + Number((f + '00').slice(0, 2)); return s.startsWith('-') ? -v : v; };
const yuan = (v) => `${v < 0 ? '-' : ''}${Math.floor(Math.abs(v) / 100)}.${String(Math.abs(v) % 100).padStart(2, '0')}`;
function buildBill({ cols, body, idx }) {
  const sum = (name) => yuan(body.reduce((s, v) => s + fen(v[idx(name)]), 0));
  return [cols.join(','), ...body.map((v) => v.map((x) => '`' + x).join(',')), SUMMARY,
    ['`' + body.length, '`' + sum('应结订单金额'), '`' + sum('退款金额'), '`0.00', '`' + sum('手续费'), '`' + sum('订单金额'),
      '`' + sum('申请退款金额')].join(',')].join('\r\n') + '\r\n';
}

async function billText() {
  const r = await sim.ctl('GET', `/_sim/bill?mchid=${MCH}&date=${DAY}`);
  assert.equal(r.status, 200, r.body);
  return r.body;
}
async function reconcileAdmin(text) {
  return h.request({
    port: gw.adminPort, method: 'POST', path: `/admin/reconcile?channel=wechatpay&date=${DAY}&mch_id=${MCH}`,
    headers: { Authorization: `Bearer ${gw.adminToken}`, 'Content-Type': 'text/plain' }, body: text,
  });
}
async function reconcileCli(text) {
  const file = path.join(tmp, `bill-${seq++}.csv`);
  fs.writeFileSync(file, text);
  return h.runPaygated(['channel', 'reconcile', '-c', gw.configFile, '--channel', 'wechatpay', '--date', DAY,
    '--mch-id', MCH, '--json', file]);
}

test('a day of WeChat Pay payments and a refund: the simulator\'s bill matches; removed, foreign and changed lines are exactly the findings', async (t) => {
  // a few paid orders (codepay, immediate SUCCESS) and one refund
  const paid = [];
  for (const amount of [1234, 999, 50001, 7]) {
    const r = await shop.call('POST', '/v1/orders', { shop_id: 'sw1', out_trade_no: otn('W'), amount, subject: 'Tea',
      method: 'barcode', auth_code: '134567890123456781' });
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json.status, 'SUCCESS', r.body);
    paid.push(r.json);
  }
  const rf = await shop.call('POST', `/v1/orders/${paid[2].trade_no}/refunds`, { out_refund_no: otn('RF'), amount: 10001 });
  assert.equal(rf.status, 200, rf.body);
  await h.waitFor(() => psql(`SELECT count(*) FROM refunds r JOIN orders o ON o.id = r.order_id
      WHERE o.shop_id = 'sw1' AND r.status = 'SUCCESS'`) === '1', 20000);
  const refundNo = psql(`SELECT r.refund_no FROM refunds r JOIN orders o ON o.id = r.order_id WHERE o.shop_id = 'sw1'`);
  if (today() !== DAY) { // midnight GMT+8 passed during the test: the day is split
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

  const clean = await reconcileAdmin(text);
  assert.equal(clean.status, 200, clean.body);
  assert.deepEqual([clean.json.result.findings, clean.json.result.lines], [0, 5], clean.body);
  const cliClean = await reconcileCli(text);
  assert.equal(cliClean.code, 0, cliClean.stderr + cliClean.stdout);
  assert.equal(JSON.parse(cliClean.stdout).findings, 0);

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

  const r = await reconcileAdmin(text2);
  assert.equal(r.status, 200, r.body);
  const f = r.json.result;
  assert.equal(f.findings, 3, r.body);
  assert.deepEqual(f.missing_ours.map((x) => [x.kind, x.trade_no, x.mch_id]), [['pay', 'NOT-OURS-0000000000001', MCH]]);
  assert.deepEqual(f.missing_theirs.map((x) => [x.kind, x.trade_no]), [['pay', dropped]]);
  assert.equal(f.mismatch.length, 1);
  assert.deepEqual([f.mismatch[0].kind, f.mismatch[0].trade_no], ['amount', changed]);
  assert.equal(f.mismatch[0].theirs, f.mismatch[0].ours + 1);
  const cli = await reconcileCli(text2);
  assert.equal(cli.code, 1, cli.stderr + cli.stdout);
  const c = JSON.parse(cli.stdout);
  for (const k of ['missing_ours', 'missing_theirs', 'mismatch']) assert.deepEqual(c[k], f[k], k);
  assert.ok(Number(psql("SELECT count(*) FROM reconciliations WHERE channel = 'wechatpay'")) >= 4);

  // a truncated bill, a summary that does not add up, and one amount changed without its summary are refused
  const trunc = await reconcileAdmin(text2.split('\r\n').slice(0, -3).join('\r\n'));
  assert.equal(trunc.status, 422, trunc.body);
  assert.equal(trunc.json.error.code, 'invalid_bill');
  const lying = await reconcileAdmin(text2.replace(/\r\n`(\d+),/, (m, n) => `\r\n\`${Number(n) + 1},`));
  assert.equal(lying.status, 422, lying.body);
  assert.equal(lying.json.error.code, 'invalid_bill');
  const unsummed = text.split('\r\n').map((l) => {
    if (!l.startsWith('`') || l.slice(1).split(',`')[OTN] !== changed) return l;
    const v = l.slice(1).split(',`');
    v[TOTAL] = yuan(fen(v[TOTAL]) + 100);
    return v.map((x) => '`' + x).join(',');
  }).join('\r\n');
  assert.notEqual(unsummed, text);
  const bad = await reconcileAdmin(unsummed);
  assert.equal(bad.status, 422, bad.body);
  assert.match(bad.json.error.message, /订单总金额/);
  const badCli = await reconcileCli(unsummed);
  assert.equal(badCli.code, 2, badCli.stderr + badCli.stdout);
  // a Swiftpass bill is not a WeChat Pay bill
  const swift = await reconcileAdmin('交易时间,商户号\r\n总交易单数,总交易额,总退款金额\r\n`0,`0.00,`0.00\r\n');
  assert.equal(swift.status, 422, swift.body);
});
