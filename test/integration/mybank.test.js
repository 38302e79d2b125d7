'use strict';
/*
 * Orders end to end through the real MyBank module (build/asan/channels/mybank.so) and its
 * simulator (test/sim/mybank.js), on a real PostgreSQL and Redis, with the follow-up schedules
 * compressed (tasks.time_scale 0.01; the simulator's --time-scale 0.01):
 *   - c-to-b: prePay → PENDING with a code_url (and JSAPI pay_info), paid at the bank, the
 *     bank-signed prePayNotice makes it SUCCESS, paygate's signed acknowledgement is accepted;
 *   - b-to-c: S at once; U (password) polled with payQuery until paid; U past the deadline →
 *     payCancel → CLOSED; U SYSTEM_ERROR that was in fact paid; F;
 *   - cancel of a waiting b-to-c order by the merchant (payCancel); close of an unpaid c-to-b
 *     order (payClose);
 *   - refunds: accepted (asynchronous), settled by refundQuery, by the follow-up task and on
 *     request, failed refunds;
 *   - answers that cannot be trusted (bad signature, unsigned, a foreign ReqMsgId) → UNKNOWN,
 *     settled by a later query;
 *   - notifications forged (another key), tampered, with a wrong amount, duplicated;
 *   - the operator CLI verifies a captured notification (and rejects a tampered copy).
 * Every document that crossed the wire is also checked with the xmlsec1 command-line tool:
 * module requests and acknowledgements with the ISV key, simulator answers and notifications
 * with the bank key — neither side only agrees with itself.
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
const MCH = '226801000000000101';
const ISV_ORG = '202211000000000001';
const APPID = '2018000000000001';
const SCALE = 0.01;
const ISV_PRIV = fs.readFileSync(path.join(FIX, 'isv_priv.pem'), 'utf8');
const ISV_PUB = fs.readFileSync(path.join(FIX, 'isv_pub.pem'), 'utf8');
const BANK_PRIV = fs.readFileSync(path.join(FIX, 'bank_priv.pem'), 'utf8');
const BANK_B64 = fs.readFileSync(path.join(FIX, 'bank_pub_spki.b64'), 'utf8').trim();
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'mybank-it-'));
let services, sim, gw, shop;

const psql = (sql) => services.pg.query(sql);

// ---------------------------------------------------------------- xmlsec1, the independent verifier
let tmpSeq = 0;
function xmlsecVerify(xml, pubFile) {
  const f = path.join(TMP, `v${tmpSeq++}.xml`);
  fs.writeFileSync(f, xml);
  try {
    execFileSync('xmlsec1', ['--verify', '--pubkey-pem', path.join(FIX, pubFile), f], { stdio: 'ignore' });
    return true;
  } catch (_) { return false; }
}
const SIG_TMPL = '<Signature xmlns="http://www.w3.org/2000/09/xmldsig#"><SignedInfo>' +
  '<CanonicalizationMethod Algorithm="http://www.w3.org/TR/2001/REC-xml-c14n-20010315"/>' +
  '<SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/><Reference URI="">' +
  '<Transforms><Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/></Transforms>' +
  '<DigestMethod Algorithm="http://www.w3.org/2000/09/xmldsig#sha1"/><DigestValue/></Reference></SignedInfo>' +
  '<SignatureValue/></Signature>';
function xmlsecSign(xml, privFile) {
  const at = xml.lastIndexOf('</document>');
  const f = path.join(TMP, `s${tmpSeq++}.xml`);
  const out = `${f}.out`;
  fs.writeFileSync(f, xml.slice(0, at) + SIG_TMPL + xml.slice(at));
  execFileSync('xmlsec1', ['--sign', '--privkey-pem', path.join(FIX, privFile), '--output', out, f], { stdio: 'ignore' });
  return fs.readFileSync(out, 'utf8');
}
const tagOf = (xml, name) => { const m = new RegExp(`<${name}>([^<]*)</${name}>`).exec(xml); return m ? m[1] : null; };

// ---------------------------------------------------------------- set-up
function gwConfig() {
  return {
    api: { min_expire_s: 1 },
    // a CREATED order (its pay call still running) is first checked 3 s (scaled) after creation,
    // so that the untrusted-answer tests see the call's own verdict, even on a slow machine
    tasks: { time_scale: SCALE, tick_ms: 20, created_grace_s: 300 },
    channels: {
      call_timeout_ms: 1500,
      settings: { mybank: { gateway_url: `${sim.url}/open/api/common/request.htm`, isv_org_id: ISV_ORG, appid: APPID,
        bank_public_key: BANK_B64 } },
    },
  };
}

test.before(async () => {
  services = await h.startServices();
  sim = await pg.startSim('mybank', ['--time-scale', String(SCALE)]);
  let r = await sim.ctl('POST', '/_sim/bank', { private_key: BANK_PRIV });
  assert.equal(r.status, 200, r.body);
  r = await sim.ctl('POST', '/_sim/merchants', { mch_id: MCH, isv_org_id: ISV_ORG, appid: APPID, public_key: ISV_PUB });
  assert.equal(r.status, 200, r.body);
  await sim.ctl('POST', '/_sim/settings', { refund_delay_s: -1 });
  gw = await h.startPaygated({ services, config: gwConfig() });
  shop = await pg.setupShop(gw, { subs: [{ channel: 'mybank', mch_id: MCH, private_key: ISV_PRIV }] });
});

test.after(async () => {
  if (gw) {
    const r = await gw.stop();
    assert.equal(r.code, 0, `paygated exit status\n${gw.logs().slice(-3000)}`);
  }
  if (sim) await sim.stop();
  if (services) await services.close();
  fs.rmSync(TMP, { recursive: true, force: true });
});

let seq = 0;
const otn = (p) => `${p}${process.pid}x${seq++}`;

async function adminOrder(tradeNo) {
  return (await pg.admin(gw, 'GET', `/admin/orders/${tradeNo}`)).result;
}
async function waitStatus(tradeNo, status, ms = 15000) {
  return h.waitFor(async () => {
    const o = await adminOrder(tradeNo);
    return o.order.status === status ? o : null;
  }, ms);
}
async function simRequests(filter) {
  const all = (await sim.ctl('GET', '/_sim/requests?limit=1000')).json;
  return all.filter(filter).reverse(); // oldest first
}
const fnIs = (short) => (x) => x.function === `ant.mybank.bkmerchanttrade.${short}`;
const barcode = (code, extra = {}) => shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('B'), amount: 800,
  subject: 'Longjing <tea> & 龙井', method: 'barcode', auth_code: code, ...extra });

// ---------------------------------------------------------------- c-to-b
test('c-to-b: prePay → PENDING; paid at the bank; the signed prePayNotice → SUCCESS; the signed acknowledgement is accepted', async () => {
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('Q'), amount: 1234, subject: 'Tea', method: 'wechat_qr' });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 'PENDING', r.body);
  assert.match(r.json.pay_data.code_url, new RegExp(`^${sim.url}/_sim/qr/`));
  const tradeNo = r.json.trade_no;
  const p = await sim.ctl('POST', '/_sim/pay', { mch_id: MCH, out_trade_no: tradeNo });
  assert.equal(p.status, 200, p.body);
  const o = await waitStatus(tradeNo, 'SUCCESS');
  assert.deepEqual(o.events.map((e) => `${e.from_status}->${e.to_status}:${e.source}`),
    ['null->CREATED:api', 'CREATED->PENDING:channel', 'PENDING->SUCCESS:notify']);
  assert.ok(o.order.channel_trade_no, 'OrderNo recorded');
  assert.match(psql(`SELECT outcome FROM notify_inbox WHERE order_id = ${o.order.id} ORDER BY id`), /^applied/);

  // the bank saw a signed acknowledgement echoing its ReqMsgId
  const so = (await sim.ctl('GET', `/_sim/orders/${MCH}/${tradeNo}`)).json;
  const n = so.notifications[0];
  const last = n.attempts[n.attempts.length - 1];
  assert.equal(n.state, 'acknowledged', JSON.stringify(n.attempts));
  assert.equal(last.ack_signed, true);
  assert.equal(last.ack_verified, true);
  assert.equal(tagOf(last.body, 'ReqMsgId'), n.req_msg_id);
  assert.equal(tagOf(last.body, 'Function'), 'ant.mybank.bkmerchanttrade.prePayNotice');
  assert.equal(tagOf(last.body, 'ResultStatus'), 'S');
  assert.equal(tagOf(last.body, 'ResultCode'), '0000');

  // every document of the exchange, checked by xmlsec1
  const [pre] = await simRequests((x) => x.out_trade_no === tradeNo && fnIs('prePay')(x));
  assert.equal(pre.sign_verified, true);
  assert.ok(xmlsecVerify(pre.body, 'isv_pub.pem'), 'the module\'s prePay request verifies with xmlsec1');
  assert.ok(!xmlsecVerify(pre.body, 'bank_pub.pem'));
  assert.ok(xmlsecVerify(pre.response.body, 'bank_pub.pem'), 'the simulator\'s answer verifies with xmlsec1');
  assert.ok(xmlsecVerify(n.body, 'bank_pub.pem'), 'the simulator\'s notification verifies with xmlsec1');
  assert.ok(xmlsecVerify(last.body, 'isv_pub.pem'), 'the module\'s acknowledgement verifies with xmlsec1');
  assert.equal(tagOf(pre.body, 'Body'), 'Tea');
  assert.equal(tagOf(pre.body, 'NotifyUrl'), `http://127.0.0.1:${gw.port}/notify/mybank`);
});

test('c-to-b JSAPI: pay_info carries the wallet parameters', async () => {
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('J'), amount: 300, subject: 'Tea',
    method: 'wechat_jsapi', payer_id: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o' });
  assert.equal(r.json.status, 'PENDING', r.body);
  assert.match(r.json.pay_data.pay_info.package, /^prepay_id=/);
  const a = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('J'), amount: 300, subject: 'Tea',
    method: 'alipay_jsapi', payer_id: '2088102146225135' });
  assert.equal(a.json.status, 'PENDING', a.body);
  assert.ok(a.json.pay_data.pay_info.tradeNO);
  const [req] = await simRequests((x) => x.out_trade_no === a.json.trade_no);
  assert.equal(req.fields['body/OpenId'], '2088102146225135');
  assert.equal(req.fields['body/ChannelType'], 'ALI');
});

// ---------------------------------------------------------------- b-to-c
test('b-to-c: S → SUCCESS at once', async () => {
  const r = await barcode('134567890123456781');
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 'SUCCESS', r.body);
  assert.ok(r.json.channel_trade_no);
  const [req] = await simRequests((x) => x.out_trade_no === r.json.trade_no);
  assert.equal(req.function, 'ant.mybank.bkmerchanttrade.pay');
  assert.equal(req.fields['body/AuthCode'], '134567890123456781');
  assert.equal(req.fields['body/ChannelType'], 'WX');
  assert.equal(req.fields['body/Body'], 'Longjing <tea> & 龙井');
  assert.ok(xmlsecVerify(req.body, 'isv_pub.pem'));
  assert.ok(xmlsecVerify(req.response.body, 'bank_pub.pem'));
});

test('b-to-c: U (the customer enters the password) → USER_PAYING, polled with payQuery until paid', async () => {
  // ...9929: the 2nd payQuery finds it paid (well before the 600 ms deadline)
  const r = await barcode('284567890123459929');
  assert.equal(r.json.status, 'USER_PAYING', r.body);
  const o = await waitStatus(r.json.trade_no, 'SUCCESS');
  assert.deepEqual(o.events.map((e) => e.to_status), ['CREATED', 'USER_PAYING', 'SUCCESS']);
  assert.equal(o.events.at(-1).source, 'query');
  const qs = await simRequests((x) => x.out_trade_no === r.json.trade_no && fnIs('payQuery')(x));
  assert.ok(qs.length >= 2, `${qs.length} queries`);
  // every 5 s, scaled 0.01: 50 ms apart at least
  for (let i = 1; i < qs.length; i++) assert.ok(Date.parse(qs[i].at) - Date.parse(qs[i - 1].at) >= 45);
  assert.ok(qs.every((q) => q.sign_verified === true));
  const cancels = await simRequests((x) => x.out_trade_no === r.json.trade_no && fnIs('payCancel')(x));
  assert.equal(cancels.length, 0, 'paid: never cancelled');
});

test('b-to-c: U past the deadline → payCancel → CLOSED, the trade cancelled at the bank', async () => {
  const r = await barcode('134567890123459999');
  assert.equal(r.json.status, 'USER_PAYING', r.body);
  const created = Date.parse(r.json.created_at);
  const o = await waitStatus(r.json.trade_no, 'CLOSED');
  assert.deepEqual(o.events.map((e) => e.to_status), ['CREATED', 'USER_PAYING', 'CLOSED']);
  const reqs = await simRequests((x) => x.out_trade_no === r.json.trade_no);
  const cancel = reqs.find(fnIs('payCancel'));
  assert.ok(cancel, 'cancelled at the bank');
  assert.equal(cancel.response.result_status, 'S');
  // the deadline: 60 s scaled = 600 ms after creation; polled before it
  assert.ok(Date.parse(cancel.at) - created >= 600 * 0.9, `cancel after ${Date.parse(cancel.at) - created} ms`);
  assert.ok(reqs.filter(fnIs('payQuery')).length >= 3);
  const so = (await sim.ctl('GET', `/_sim/orders/${MCH}/${r.json.trade_no}`)).json;
  assert.equal(so.state, 'cancel');
  // the customer's late confirmation cannot pay it any more
  const late = await sim.ctl('POST', '/_sim/pay', { mch_id: MCH, out_trade_no: r.json.trade_no });
  assert.equal(late.status, 409);
});

test('b-to-c: U SYSTEM_ERROR although the bank took the money → a query finds it paid', async () => {
  const r = await barcode('134567890123457777');
  assert.equal(r.json.status, 'USER_PAYING', r.body);
  await waitStatus(r.json.trade_no, 'SUCCESS');
});

test('b-to-c: F → FAILED', async () => {
  const r = await barcode('134567890123450000');
  assert.equal(r.json.status, 'FAILED', r.body);
  assert.match(r.json.channel_code, /AUTH_CODE_EXPIRE/);
});

test('cancel: the merchant cancels a waiting b-to-c order (payCancel)', async () => {
  const r = await barcode('134567890123459999');
  assert.equal(r.json.status, 'USER_PAYING', r.body);
  const c = await shop.call('POST', `/v1/orders/${r.json.trade_no}/close`);
  assert.equal(c.status, 200, c.body);
  assert.equal(c.json.status, 'CLOSED');
  const reqs = await simRequests((x) => x.out_trade_no === r.json.trade_no && fnIs('payCancel')(x));
  assert.ok(reqs.length >= 1);
  assert.equal((await sim.ctl('GET', `/_sim/orders/${MCH}/${r.json.trade_no}`)).json.state, 'cancel');
});

test('close: an unpaid c-to-b order is closed at the bank (payClose); a paid one is not closable', async () => {
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('X'), amount: 100, subject: 'Tea', method: 'alipay_qr' });
  assert.equal(r.json.status, 'PENDING', r.body);
  const c = await shop.call('POST', `/v1/orders/${r.json.trade_no}/close`);
  assert.equal(c.status, 200, c.body);
  assert.equal(c.json.status, 'CLOSED');
  const [cl] = await simRequests((x) => x.out_trade_no === r.json.trade_no && fnIs('payClose')(x));
  assert.equal(cl.response.result_status, 'S');
  assert.ok(xmlsecVerify(cl.body, 'isv_pub.pem'));
  assert.equal((await sim.ctl('GET', `/_sim/orders/${MCH}/${r.json.trade_no}`)).json.state, 'closed');
  const paid = await barcode('134567890123456782');
  const c2 = await shop.call('POST', `/v1/orders/${paid.json.trade_no}/close`);
  assert.equal(c2.status, 409);
});

// ---------------------------------------------------------------- refunds
test('refunds: accepted → PROCESSING; refundQuery settles it; over-refund refused; a failed refund', async () => {
  const o = await barcode('134567890123456783', { amount: 1000 });
  assert.equal(o.json.status, 'SUCCESS', o.body);
  const r1 = await shop.call('POST', `/v1/orders/${o.json.trade_no}/refunds`, { out_refund_no: otn('R'), amount: 300, reason: 'too sweet' });
  assert.equal(r1.status, 200, r1.body);
  assert.equal(r1.json.status, 'PROCESSING');
  const [rq] = await simRequests((x) => x.out_refund_no === r1.json.refund_no && fnIs('refund')(x));
  assert.equal(rq.fields['body/RefundAmount'], '300');
  assert.equal(rq.fields['body/RefundReason'], 'too sweet');
  assert.ok(xmlsecVerify(rq.body, 'isv_pub.pem'));
  // still refunding at the bank: a refund query on request says so
  let q = await shop.call('GET', `/v1/refunds/${r1.json.refund_no}`);
  assert.equal(q.json.status, 'PROCESSING', q.body);
  const st = await sim.ctl('POST', '/_sim/refund/settle', { mch_id: MCH, out_refund_no: r1.json.refund_no });
  assert.equal(st.status, 200, st.body);
  q = await shop.call('GET', `/v1/refunds/${r1.json.refund_no}`);
  assert.equal(q.json.status, 'SUCCESS', q.body);
  const rqs = await simRequests((x) => x.out_refund_no === r1.json.refund_no && fnIs('refundQuery')(x));
  assert.ok(rqs.length >= 1);
  assert.ok(rqs.some((x) => x.response.trade_status === 'succ'));
  assert.ok(xmlsecVerify(rqs.at(-1).response.body, 'bank_pub.pem'));
  const over = await shop.call('POST', `/v1/orders/${o.json.trade_no}/refunds`, { out_refund_no: otn('R'), amount: 701 });
  assert.equal(over.status, 422);
  // a refund the bank fails
  const r2 = await shop.call('POST', `/v1/orders/${o.json.trade_no}/refunds`, { out_refund_no: otn('R'), amount: 200 });
  assert.equal(r2.json.status, 'PROCESSING', r2.body);
  await sim.ctl('POST', '/_sim/refund/settle', { mch_id: MCH, out_refund_no: r2.json.refund_no, status: 'fail' });
  q = await shop.call('GET', `/v1/refunds/${r2.json.refund_no}`);
  assert.equal(q.json.status, 'FAILED', q.body);
  const ord = await shop.call('GET', `/v1/orders/${o.json.trade_no}`);
  assert.equal(ord.json.refunded_amount, 300);
});

test('refunds: the follow-up task settles a PROCESSING refund with refundQuery by itself', async () => {
  await sim.ctl('POST', '/_sim/settings', { refund_delay_s: 20 }); // 200 ms scaled
  try {
    const o = await barcode('134567890123456784', { amount: 500 });
    const rf = await shop.call('POST', `/v1/orders/${o.json.trade_no}/refunds`, { out_refund_no: otn('RF'), amount: 500 });
    assert.equal(rf.json.status, 'PROCESSING', rf.body);
    await h.waitFor(() => psql(`SELECT status FROM refunds WHERE refund_no = '${rf.json.refund_no}'`) === 'SUCCESS', 15000);
    const sent = await simRequests((x) => x.out_refund_no === rf.json.refund_no);
    assert.equal(sent.filter(fnIs('refund')).length, 1, 'the refund reached the bank once');
    assert.ok(sent.filter(fnIs('refundQuery')).length >= 1);
    // the first refund query waits the policy's 10 s (scaled: 100 ms)
    const first = sent.find(fnIs('refundQuery'));
    assert.ok(Date.parse(first.at) - Date.parse(sent[0].at) >= 90);
  } finally {
    await sim.ctl('POST', '/_sim/settings', { refund_delay_s: -1 });
  }
});

// ---------------------------------------------------------------- untrusted answers
test('answers that cannot be trusted leave the order UNKNOWN; a later query settles it', async () => {
  for (const fault of [{ bad_sign: true }, { unsigned: true }, { foreign_msgid: true }]) {
    const fr = await sim.ctl('POST', '/_sim/faults', { ...fault, count: 1, function: 'pay' });
    assert.equal(fr.status, 200, fr.body);
    const r = await barcode('134567890123456785');
    assert.equal(r.json.status, 'UNKNOWN', `${JSON.stringify(fault)}: ${r.body}`);
    assert.match(r.json.channel_code, /GW_ESIGN|GW_EMSGID/);
    // the bank did carry the payment out
    const q = await shop.call('GET', `/v1/orders/${r.json.trade_no}`);
    assert.equal(q.json.status, 'SUCCESS', q.body);
  }
  // an answer that never comes (the bank took the money): UNKNOWN, never FAILED
  await sim.ctl('POST', '/_sim/faults', { timeout: true, count: 1, function: 'pay' });
  const t = await barcode('134567890123456786');
  assert.equal(t.json.status, 'UNKNOWN', t.body);
  assert.match(t.json.channel_code, /GW_ETIMEDOUT/);
  await sim.ctl('DELETE', '/_sim/faults');
  const [held] = await simRequests((x) => x.out_trade_no === t.json.trade_no && fnIs('pay')(x));
  assert.equal(held.held, true);
  const q = await shop.call('GET', `/v1/orders/${t.json.trade_no}`);
  assert.equal(q.json.status, 'SUCCESS', q.body);
});

// ---------------------------------------------------------------- notifications
function noticeXml(tradeNo, amount, extra = '') {
  return '<?xml version="1.0" encoding="UTF-8"?><document><request id="request"><head><Version>1.0.0</Version>' +
    `<Appid>${APPID}</Appid><Function>ant.mybank.bkmerchanttrade.prePayNotice</Function><ReqTime>20240101120000</ReqTime>` +
    `<ReqTimeZone>UTC+8</ReqTimeZone><ReqMsgId>${require('node:crypto').randomUUID()}</ReqMsgId><InputCharset>UTF-8</InputCharset>` +
    `<Reserve/><SignType>RSA</SignType></head><body><IsvOrgId>${ISV_ORG}</IsvOrgId><MerchantId>${MCH}</MerchantId>` +
    `<OutTradeNo>${tradeNo}</OutTradeNo><OrderNo>OD${Date.now()}</OrderNo><TotalAmount>${amount}</TotalAmount>` +
    `<Currency>CNY</Currency><ChannelType>WX</ChannelType><TradeStatus>succ</TradeStatus>${extra}</body></request></document>`;
}
const postNotice = (xml) => h.request({ port: gw.port, method: 'POST', path: '/notify/mybank',
  headers: { 'Content-Type': 'application/xml; charset=UTF-8' }, body: xml });

test('notifications: forged, tampered and wrong-amount ones change nothing; the genuine one applies once', async () => {
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('G'), amount: 4200, subject: 'Tea', method: 'wechat_qr' });
  assert.equal(r.json.status, 'PENDING');
  const tradeNo = r.json.trade_no;
  // signed by xmlsec1 with an attacker's key
  const forged = await postNotice(xmlsecSign(noticeXml(tradeNo, 4200), 'rogue_priv.pem'));
  assert.equal(forged.status, 200);
  assert.equal(tagOf(forged.body, 'ResultStatus'), 'F');
  // the bank's signature, then the amount changed
  const tampered = xmlsecSign(noticeXml(tradeNo, 4200), 'bank_priv.pem').replace('<TotalAmount>4200<', '<TotalAmount>4201<');
  assert.equal(tagOf((await postNotice(tampered)).body, 'ResultStatus'), 'F');
  // genuinely signed, with a wrong amount: verified (acknowledged), not applied
  const wrong = await postNotice(xmlsecSign(noticeXml(tradeNo, 1), 'bank_priv.pem'));
  assert.equal(tagOf(wrong.body, 'ResultStatus'), 'S');
  assert.equal((await adminOrder(tradeNo)).order.status, 'PENDING');
  // garbage
  const garbage = await postNotice('<document><oops');
  assert.equal(tagOf(garbage.body, 'ResultStatus'), 'F');
  // the genuine one, twice
  const good = xmlsecSign(noticeXml(tradeNo, 4200), 'bank_priv.pem');
  for (let i = 0; i < 2; i++) {
    const g = await postNotice(good);
    assert.equal(g.status, 200);
    assert.equal(tagOf(g.body, 'ResultStatus'), 'S');
    assert.equal(tagOf(g.body, 'ReqMsgId'), tagOf(good, 'ReqMsgId'));
    assert.ok(xmlsecVerify(g.body, 'isv_pub.pem'), 'the acknowledgement is signed with the merchant key');
  }
  const o = await adminOrder(tradeNo);
  assert.equal(o.order.status, 'SUCCESS');
  assert.equal(o.events.filter((e) => e.to_status === 'SUCCESS').length, 1);
  const outcomes = psql(`SELECT outcome FROM notify_inbox WHERE detail->>'out_trade_no' = '${tradeNo}' ORDER BY id`).split('\n');
  assert.deepEqual(outcomes.slice(0, 3), ['rejected: bad signature', 'rejected: bad signature', 'rejected: amount mismatch']);
  assert.match(outcomes[3], /^applied/);
  assert.match(outcomes[4], /duplicate/);
});

test('operator CLI: paygated channel notify-verify verifies a captured notification and rejects a tampered copy', async () => {
  // a real notification, captured by paygate in notify_inbox
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: otn('C'), amount: 777, subject: 'Tea', method: 'alipay_qr' });
  await sim.ctl('POST', '/_sim/pay', { mch_id: MCH, out_trade_no: r.json.trade_no });
  const o = await waitStatus(r.json.trade_no, 'SUCCESS');
  const row = JSON.parse(psql(`SELECT json_build_object('headers', headers, 'body', body) FROM notify_inbox WHERE order_id = ${o.order.id} AND verified ORDER BY id LIMIT 1`));
  const capture = path.join(TMP, 'notify.http');
  fs.writeFileSync(capture, `POST /notify/mybank HTTP/1.1\r\n${row.headers}\r\n${row.body}`);
  const settings = path.join(TMP, 'settings.json');
  fs.writeFileSync(settings, JSON.stringify({ gateway_url: 'http://127.0.0.1:1/', isv_org_id: ISV_ORG, appid: APPID, bank_public_key: BANK_B64 }));
  const merchant = path.join(TMP, 'merchant.json');
  fs.writeFileSync(merchant, JSON.stringify({ mch_id: MCH, private_key: `@${path.join(FIX, 'isv_priv.pem')}` }));
  const mod = path.join(h.ROOT, 'build', 'asan', 'channels', 'mybank.so');
  const run = (file) => h.runPaygated(['channel', 'notify-verify', '--module', mod, '--settings', `@${settings}`,
    '--merchant', `@${merchant}`, file]);
  const ok = await run(capture);
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  assert.match(ok.stdout, /^module: +mybank 1\.0\.0 \(mybank\.so, ABI 1\.([2-9]|[1-9][0-9])\)$/m);
  assert.match(ok.stdout, /^verdict: +VERIFIED$/m);
  assert.match(ok.stdout, /^sign_string: +xmldsig: verified: rsa-sha256 over C14N\(SignedInfo\)/m);
  assert.match(ok.stdout, /^status: +SUCCESS$/m);
  assert.match(ok.stdout, /^amount: +777$/m);
  assert.match(ok.stdout, new RegExp(`^out_trade_no: +${r.json.trade_no}$`, 'm'));
  assert.match(ok.stdout, /^ack: +200 application\/xml; charset=UTF-8$/m);
  assert.match(ok.stdout, /<ResultStatus>S<\/ResultStatus>/);
  assert.ok(!ok.stdout.includes(ISV_PRIV.split('\n')[1]), 'the private key is never printed');
  // the same capture with one character of the signed part changed
  const bad = path.join(TMP, 'notify-tampered.http');
  fs.writeFileSync(bad, fs.readFileSync(capture, 'utf8').replace('<TotalAmount>777<', '<TotalAmount>778<'));
  const rej = await run(bad);
  assert.equal(rej.code, 1, rej.stdout + rej.stderr);
  assert.match(rej.stdout, /^verdict: +REJECTED: signature verification failed \(GW_ESIGN\)$/m);
  assert.match(rej.stdout, /^sign_string: +xmldsig: digest mismatch/m);
  assert.match(rej.stdout, /<ResultStatus>F<\/ResultStatus>/);
});
