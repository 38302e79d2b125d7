'use strict';
/*
 * Correction booking (POST /admin/settlement/adjustments, docs/operations.md "Daily settlement"):
 * the real daemon, PostgreSQL, Redis, the Swiftpass module and simulator.
 *   - an adjustment of a payment entry is a new entry (kind adjustment, corrects, note) on the
 *     statement of the day it is booked: the totals move by exactly its amounts (JSON and CSV);
 *   - the same idempotency key again books nothing (200, replayed, the same entry), also when two
 *     requests race; the key with other content is a 409;
 *   - bad input gets a precise 4xx naming the problem and writes nothing: fractional or string
 *     amounts, no note, a blank note, an unknown entry, all amounts 0, a net that does not add up,
 *     an unknown field, no key, a body that is not JSON.
 */
const test = require('node:test');
const assert = require('node:assert');
const h = require('../lib/harness');
const pg = require('../lib/paygate');
const st = require('../lib/settlement');

const MCH = '755437000051';
const KEY = 'settlement-md5-key-00000051';
const ctx = st.setup({
  sim: ['swiftpass', ['--time-scale', '0.01']],
  async prepare({ sim }) {
    await sim.ctl('POST', '/_sim/merchants', { mch_id: MCH, sign_type: 'MD5', key: KEY });
  },
  config: ({ sim }) => ({
    tasks: { time_scale: 0.01, tick_ms: 20 },
    channels: { call_timeout_ms: 1500, settings: { swiftpass: { gateway_url: `${sim.url}/pay/gateway` } } },
  }),
  shop: () => ({ merchant: 'mj', shop: 'sj1', subs: [{ channel: 'swiftpass', mch_id: MCH, key: KEY }], methods: ['barcode'] }),
  after: ({ gw }) => pg.admin(gw, 'PUT', '/admin/shops/sj1/rates/swiftpass', { current_ppm: 6000 }),
});
const { psql } = ctx;
const { today } = st;

const adjust = (body) => st.adminRequest(ctx.gw, { path: '/admin/settlement/adjustments', contentType: 'application/json',
  body: typeof body === 'string' ? body : JSON.stringify(body) });
const statement = (date, format) => st.statement(ctx, 'sj1', date, format);
const entries = () => psql('SELECT count(*) FROM settlement_entries');
const adjustments = () => psql("SELECT count(*) FROM settlement_entries WHERE kind = 'adjustment'");

test('an adjustment is a new entry on the statement of its day; a retry books nothing twice; bad input writes nothing', async (t) => {
  await st.payBarcode(ctx, { shopId: 'sj1', prefix: 'J', amounts: [10000, 2500], authCode: '134567890123456711' });
  await h.waitFor(() => psql("SELECT count(*) FROM settlement_entries WHERE shop_id = 'sj1'") === '2', 10000);
  const day = today();
  const before = (await statement(day)).json;
  assert.deepEqual([before.totals.payments, before.totals.adjustments, before.totals.fee], [2, 0, 60 + 15]);
  const target = before.lines.find((l) => l.gross === 10000);

  // book: the fee of the 100.00 payment was 60 fen, it should have been 38 (0.38 %): 22 fen back
  const body = { idempotency_key: `fee-fix-${process.pid}`, corrects: target.entry_id, fee: -22, note: 'rate 0.38 % agreed',
    operator_id: 'ops-7' };
  const r = await adjust(body);
  assert.equal(r.status, 201, r.body);
  const e = r.json.entry;
  assert.equal(r.json.replayed, false);
  assert.deepEqual([e.kind, e.corrects, e.gross, e.fee, e.cashback, e.net, e.note, e.operator_id, e.trade_no, e.shop_id],
    ['adjustment', target.entry_id, 0, -22, 0, 22, 'rate 0.38 % agreed', 'ops-7', target.trade_no, 'sj1']);
  if (today() !== day) { t.skip('the business day turned during the test'); return; }
  const after = (await statement(day)).json;
  assert.equal(after.totals.adjustments, 1);
  assert.equal(after.totals.payments, 2);
  for (const k of ['gross', 'cashback', 'paid', 'refunded']) assert.equal(after.totals[k], before.totals[k], k);
  assert.equal(after.totals.fee, before.totals.fee - 22);
  assert.equal(after.totals.net, before.totals.net + 22);
  const line = after.lines.find((l) => l.type === 'adjustment');
  assert.deepEqual([line.entry_id, line.corrects, line.note, line.net], [e.id, target.entry_id, 'rate 0.38 % agreed', 22]);
  const csv = (await statement(day, 'csv')).body.trim().split('\r\n').map((l) => l.split(','));
  assert.equal(csv.filter((l) => l[0] === 'adjustment').length, 1);
  assert.deepEqual(csv.at(-1).slice(-4).map(Number), [after.totals.gross, after.totals.fee, after.totals.cashback, after.totals.net]);
  // the corrected entry itself is unchanged (insert-only)
  assert.equal(psql(`SELECT fee FROM settlement_entries WHERE id = ${target.entry_id}`), '60');

  // a retry books nothing: the same entry, 200, replayed
  const again = await adjust(body);
  assert.equal(again.status, 200, again.body);
  assert.deepEqual([again.json.replayed, again.json.entry.id], [true, e.id]);
  assert.equal(adjustments(), '1');
  assert.deepEqual((await statement(day)).json.totals, after.totals);
  // the key with other content: 409, nothing written
  const other = await adjust({ ...body, fee: -23 });
  assert.equal(other.status, 409, other.body);
  assert.equal(other.json.error.code, 'conflict');
  assert.match(other.json.error.message, new RegExp(`entry ${e.id}`));
  // two requests racing with one new key: one entry
  const race = await Promise.all([1, 2, 3].map(() => adjust({ ...body, idempotency_key: `race-${process.pid}`, fee: 0, cashback: 5 })));
  assert.deepEqual(race.map((x) => x.status).sort(), [200, 200, 201], race.map((x) => x.body).join('\n'));
  assert.equal(new Set(race.map((x) => x.json.entry.id)).size, 1);
  assert.equal(adjustments(), '2');

  // bad input: a precise 4xx, nothing written
  const n = entries();
  const bad = [
    [{ ...body, idempotency_key: 'b1', fee: -22.5 }, 400, /fee must be an integer/],
    [{ ...body, idempotency_key: 'b2', fee: '-22' }, 400, /fee must be an integer/],
    [{ ...body, idempotency_key: 'b3', gross: 1e14 }, 400, /gross must be an integer/],
    [{ ...body, idempotency_key: 'b4', note: undefined }, 400, /note/],
    [{ ...body, idempotency_key: 'b5', note: '   ' }, 400, /note/],
    [{ ...body, idempotency_key: 'b6', corrects: 987654321 }, 422, /no settlement entry/],
    [{ ...body, idempotency_key: 'b7', corrects: 1.5 }, 400, /corrects/],
    [{ ...body, idempotency_key: 'b8', fee: 0 }, 400, /non-zero/],
    [{ ...body, idempotency_key: 'b9', net: 21 }, 400, /net, when given, must be .* \(22\)/],
    [{ ...body, idempotency_key: 'b10', amount: 5 }, 400, /unknown field "amount"/],
    [{ ...body, idempotency_key: undefined }, 400, /idempotency_key/],
    [{ ...body, idempotency_key: 'has space' }, 400, /idempotency_key/],
    ['{"corrects": 1,', 400, /JSON object/],
  ];
  for (const [b, status, msg] of bad) {
    const x = await adjust(b);
    assert.equal(x.status, status, `${JSON.stringify(b)}: ${x.body}`);
    assert.match(x.json.error.message, msg, x.body);
  }
  assert.equal((await adjust({ ...body, idempotency_key: 'b6', corrects: 987654321 })).json.error.code, 'unknown_entry');
  assert.equal(entries(), n);
  assert.equal(psql("SELECT count(*) FROM settlement_entries WHERE idempotency_key LIKE 'b%'"), '0');
  // a net that adds up is accepted
  const ok = await adjust({ ...body, idempotency_key: `net-${process.pid}`, fee: 0, gross: -100, cashback: 0, net: -100 });
  assert.equal(ok.status, 201, ok.body);
  assert.equal((await statement(day)).json.totals.adjustments, 3);
  // GET is not allowed there
  const get = await st.adminRequest(ctx.gw, { method: 'GET', path: '/admin/settlement/adjustments' });
  assert.equal(get.status, 405);
});
