'use strict';
/*
 * Reconciliation of an Alipay trade bill (docs/operations.md "Daily settlement",
 * docs/channels/alipay.md "Bill"): the real daemon with the Alipay module, PostgreSQL, Redis and
 * test/sim/alipay.js, schedules compressed (0.01):
 *   - the bill's URL comes from alipay.data.dataservice.bill.downloadurl.query, asked with
 *     Alipay's official Node SDK (which also verifies the simulator's signature); the zip it
 *     serves is opened here independently (node's zlib, a central-directory reader of this file,
 *     TextDecoder('gbk')): two GBK CSV files, the 业务明细 layout of the public samples;
 *   - a day of payments and a refund: no findings (admin API and CLI);
 *   - one payment removed, a foreign one added, one amount changed (totals recomputed, the zip
 *     rebuilt here): exactly those three findings;
 *   - refused with invalid_bill: not a zip, a truncated zip, a corrupt entry (CRC), an entry
 *     declaring 3 GiB, a real zip bomb (100 MiB of zeros), an entry inflating beyond its declared
 *     size, and totals that do not match the lines;
 *   - a bill naming as paid a QR order we still have as PENDING (its notification lost) gets it
 *     settled by a query.
 */
process.env.TZ = 'Asia/Shanghai'; // the SDK writes its timestamp in local time; Alipay's is GMT+8

const test = require('node:test');
const assert = require('node:assert');
const crypto = require('node:crypto');
const http = require('node:http');
const zlib = require('node:zlib');
const { AlipaySdk } = require('alipay-sdk');
const h = require('../lib/harness');
const st = require('../lib/settlement');

const SCALE = 0.01;
const APP_ID = '2021004100000031';
const SELLER = '2088102170000031';
const TOKEN = '202411BBe5a2c7d9f03b4c1e8a6d2f7b9c0e1a31';
const DAY = st.today();

const pem = (k, type) => k.export({ type, format: 'pem' });
const genKeys = () => { const { publicKey, privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { pub: publicKey, priv: privateKey, pubPem: pem(publicKey, 'spki'), privPem: pem(privateKey, 'pkcs8') }; };
const ctx = st.setup({
  sim: ['alipay', ['--time-scale', String(SCALE)]],
  tmp: 'paygate-settle-ali-',
  async prepare(c) {
    c.keys = { app: genKeys(), alipay: genKeys() };
    const r = await c.sim.ctl('POST', '/_sim/apps', { app_id: APP_ID, app_public_key: c.keys.app.pubPem,
      alipay_private_key: c.keys.alipay.privPem, merchants: [{ seller_id: SELLER, app_auth_token: TOKEN }] });
    assert.equal(r.status, 200, r.body);
  },
  config: ({ sim, keys }) => ({
    http: { max_body_bytes: 4 << 20 }, // room for the zip bombs below
    api: { min_expire_s: 60 },
    tasks: { time_scale: SCALE, tick_ms: 20, created_grace_s: 600 },
    channels: {
      call_timeout_ms: 2000,
      settings: { alipay: { gateway_url: `${sim.url}/gateway.do`, app_id: APP_ID, private_key: keys.app.privPem,
        alipay_public_key: keys.alipay.pubPem } },
    },
  }),
  shop: () => ({ merchant: 'ma', shop: 'sa1', methods: ['alipay_qr', 'barcode'],
    subs: [{ channel: 'alipay', mch_id: SELLER, extra: { app_auth_token: TOKEN } }] }),
});
const { psql } = ctx;
const rec = st.reconciler(ctx, { channel: 'alipay', date: DAY, mch: SELLER, contentType: 'application/zip', ext: 'zip',
  timeoutMs: 30000 });

/* ---- zip, independently of the simulator: read the central directory, write archives ---- */

function unzip(buf) {
  let e = buf.length - 22;
  while (e >= 0 && buf.readUInt32LE(e) !== 0x06054b50) e--;
  assert.ok(e >= 0, 'an end-of-central-directory record');
  const files = [];
  let p = buf.readUInt32LE(e + 16);
  for (let i = 0; i < buf.readUInt16LE(e + 10); i++) {
    assert.equal(buf.readUInt32LE(p), 0x02014b50);
    const flags = buf.readUInt16LE(p + 8), method = buf.readUInt16LE(p + 10), crc = buf.readUInt32LE(p + 16);
    const csize = buf.readUInt32LE(p + 20), nlen = buf.readUInt16LE(p + 28), local = buf.readUInt32LE(p + 42);
    const name = buf.subarray(p + 46, p + 46 + nlen);
    const at = local + 30 + buf.readUInt16LE(local + 26) + buf.readUInt16LE(local + 28);
    const raw = buf.subarray(at, at + csize);
    const data = method === 8 ? zlib.inflateRawSync(raw) : Buffer.from(raw);
    assert.equal(zlib.crc32(data), crc, 'CRC-32');
    files.push({ name, flags, data });
    p += 46 + nlen + buf.readUInt16LE(p + 30) + buf.readUInt16LE(p + 32);
  }
  return files;
}
/* files: [{name: Buffer, data: Buffer, usize?: declared size, comp?: Buffer}] */
function zip(files) {
  const parts = [], central = [];
  let off = 0;
  for (const f of files) {
    const comp = f.comp || zlib.deflateRawSync(f.data);
    const usize = f.usize ?? f.data.length;
    const crc = f.data ? zlib.crc32(f.data) : 0;
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0); lh.writeUInt16LE(20, 4); lh.writeUInt16LE(8, 8); lh.writeUInt32LE(crc, 14);
    lh.writeUInt32LE(comp.length, 18); lh.writeUInt32LE(usize, 22); lh.writeUInt16LE(f.name.length, 26);
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0); ch.writeUInt16LE(20, 4); ch.writeUInt16LE(20, 6); ch.writeUInt16LE(8, 10);
    ch.writeUInt32LE(crc, 16); ch.writeUInt32LE(comp.length, 20); ch.writeUInt32LE(usize, 24);
    ch.writeUInt16LE(f.name.length, 28); ch.writeUInt32LE(off, 42);
    parts.push(lh, f.name, comp);
    central.push(ch, f.name);
    off += 30 + f.name.length + comp.length;
  }
  const cd = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0); end.writeUInt16LE(files.length, 8); end.writeUInt16LE(files.length, 10);
  end.writeUInt32LE(cd.length, 12); end.writeUInt32LE(off, 16);
  return Buffer.concat([...parts, cd, end]);
}
const gbk = new TextDecoder('gbk', { fatal: true });

function getBinary(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
    }).on('error', reject);
  });
}

/* The bill's URL as Alipay's official SDK gets it, then the zip. */
async function billZip() {
  const { keys, sim } = ctx;
  const sdk = new AlipaySdk({ appId: APP_ID, privateKey: keys.app.privPem, keyType: 'PKCS8',
    alipayPublicKey: keys.alipay.pubPem, gateway: `${sim.url}/gateway.do` });
  const r = await sdk.exec('alipay.data.dataservice.bill.downloadurl.query',
    { bizContent: { bill_type: 'trade', bill_date: DAY }, appAuthToken: TOKEN }, { validateSign: true });
  assert.equal(r.code, '10000', JSON.stringify(r));
  const got = await getBinary(r.billDownloadUrl);
  assert.equal(got.status, 200);
  assert.equal(got.headers['content-type'], 'application/zip');
  return got.body;
}

/*
 * The 业务明细 file of a zip, byte-wise: GBK never uses an ASCII byte below 0x40 as a trail byte,
 * so commas, digits, '.', '-', CR and LF are what they look like in a latin1 view; the columns
 * are told apart by decoding the title line.
 */
function details(zipBuf) {
  const files = unzip(zipBuf);
  const i = files.findIndex((f) => /_业务明细\.csv$/.test(gbk.decode(f.name)));
  assert.ok(i >= 0, files.map((f) => gbk.decode(f.name)).join(', '));
  const lines = files[i].data.toString('latin1').split('\r\n');
  const title = lines.findIndex((l) => !l.startsWith('#') && l !== '');
  const cols = gbk.decode(Buffer.from(lines[title], 'latin1')).split(',');
  const endAt = lines.findIndex((l) => gbk.decode(Buffer.from(l, 'latin1')).includes('业务明细列表结束'));
  const body = lines.slice(title + 1, endAt).map((l) => l.split(','));
  return { files, i, lines, title, endAt, cols, body, idx: (n) => cols.indexOf(n),
    text: () => gbk.decode(files[i].data), type: (v) => gbk.decode(Buffer.from(v[cols.indexOf('业务类型')], 'latin1')).trim() };
}
const { fen: fenOf, yuan } = st;
/* The file rebuilt with body as its lines and its totals lines recomputed (their numbers replaced in place). */
function rebuild(d, body) {
  const R = d.idx('商家实收（元）');
  const totals = (kind) => { const l = body.filter((v) => d.type(v) === kind); return [l.length, l.reduce((s, v) => s + fenOf(v[R]), 0)]; };
  const out = [...d.lines.slice(0, d.title + 1), ...body.map((v) => v.join(',')), d.lines[d.endAt]];
  for (const l of d.lines.slice(d.endAt + 1)) {
    const text = gbk.decode(Buffer.from(l, 'latin1'));
    const k = text.includes('交易合计') ? '交易' : text.includes('退款合计') ? '退款' : null;
    if (!k) { out.push(l); continue; }
    const [n, sum] = totals(k);
    let i = 0;
    out.push(l.replace(/-?\d+(\.\d+)?/g, (m) => [String(n), yuan(sum)][i++] ?? m));
  }
  const files = d.files.map((f, j) => (j === d.i ? { name: f.name, data: Buffer.from(out.join('\r\n'), 'latin1') } : f));
  return zip(files);
}

test('a day of Alipay payments and a refund: the bill matches; removed, foreign and changed lines are exactly the findings', async (t) => {
  const paid = await st.payBarcode(ctx, { shopId: 'sa1', prefix: 'A', amounts: [1234, 999, 50001, 7],
    subject: 'Longjing 龙井', authCode: '283456789012345671' });
  const refundNo = await st.refundOne(ctx, { shopId: 'sa1', tradeNo: paid[2].trade_no, amount: 10001 });
  if (st.today() !== DAY) { t.skip('the business day turned during the test'); return; }

  // the archive: two GBK CSV files with GBK names (no UTF-8 flag), the 业务明细 layout
  const z = await billZip();
  const d = details(z);
  assert.deepEqual(d.files.map((f) => [gbk.decode(f.name), f.flags & 0x800]).sort(),
    [[`${SELLER}_${DAY.replace(/-/g, '')}_业务明细(汇总).csv`, 0], [`${SELLER}_${DAY.replace(/-/g, '')}_业务明细.csv`, 0]]);
  const text = d.text();
  assert.match(text, new RegExp(`^#支付宝业务明细查询\r\n#账号：\\[${SELLER}0156\\]\r\n`));
  assert.equal(d.cols.join(','), '支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,' +
    '对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,' +
    '商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注');
  assert.equal(d.body.length, 5, text);
  const OTN = d.idx('商户订单号'), A = d.idx('订单金额（元）'), REQ = d.idx('退款批次号/请求号'), TXN = d.idx('支付宝交易号');
  const refundLine = d.body.find((v) => d.type(v) === '退款');
  assert.deepEqual([refundLine[OTN].trim(), refundLine[REQ].trim(), refundLine[A]], [paid[2].trade_no, refundNo, '-100.01']);
  assert.match(text, /#交易合计：4笔，商家实收共522\.41元，商家优惠共0\.00元\r\n#退款合计：1笔，商家实收退款共-100\.01元，/);
  // the test's own rebuild of the untouched lines gives the very same file
  assert.deepEqual(details(rebuild(d, d.body)).files[d.i].data, d.files[d.i].data);

  await rec.expectClean(z, 5);

  // drop one payment, add one we never saw, change an amount by one fen (商家实收 too)
  const pays = d.body.filter((v) => d.type(v) === '交易');
  const dropped = pays[0][OTN].trim(), changed = pays[1][OTN].trim();
  const altered = d.body.filter((v) => !(v[OTN].trim() === dropped && d.type(v) === '交易')).map((v) => {
    if (v[OTN].trim() !== changed || d.type(v) !== '交易') return v;
    const w = [...v];
    w[A] = w[d.idx('商家实收（元）')] = yuan(fenOf(w[A]) + 1);
    return w;
  });
  const stranger = [...pays[2]];
  stranger[OTN] = 'NOT-OURS-0000000000001\t';
  stranger[TXN] = '2026010122001400000000000001\t';
  altered.push(stranger);
  const z2 = rebuild(d, altered);
  await rec.expectFindings(z2, { dropped, changed, mch: SELLER });

  // refused: not a zip, truncated, corrupt, the totals not adding up
  await rec.refused(d.files[d.i].data, /not a zip/);
  await rec.refused(z.subarray(0, z.length - 40), /truncated|corrupt/);
  const corrupt = Buffer.from(z);
  corrupt[30 + z.readUInt16LE(26) + z.readUInt16LE(28) + 20] ^= 0xff; // inside the first entry's deflate data
  await rec.refused(corrupt, /corrupt|CRC|deflate/);
  const unsummed = zip(d.files.map((x, j) => (j === d.i ? { name: x.name,
    data: Buffer.from(x.data.toString('latin1').replace(`,${pays[1][A]},${pays[1][A]},`,
      `,${yuan(fenOf(pays[1][A]) + 100)},${yuan(fenOf(pays[1][A]) + 100)},`), 'latin1') } : x)));
  await rec.refused(unsummed, /交易合计/);
  const cutTotals = zip(d.files.map((x, j) => (j === d.i ? { name: x.name,
    data: Buffer.from(d.lines.slice(0, d.endAt).join('\r\n'), 'latin1') } : x)));
  await rec.refused(cutTotals, /truncated/);
  // zip bombs: an entry declaring 3 GiB, 100 MiB of zeros (declared truthfully), one inflating beyond its declared size
  const name = d.files[d.i].name;
  await rec.refused(zip([{ name, data: Buffer.alloc(1), usize: 3 * 2 ** 30 }]), /declares/);
  const zeros = Buffer.alloc(100 << 20);
  const bomb = zip([{ name, data: zeros, comp: zlib.deflateRawSync(zeros, { level: 9 }) }]);
  assert.ok(bomb.length < ctx.gw.config.http.max_body_bytes, `${bomb.length} bytes`);
  await rec.refused(bomb, /declares/);
  await rec.refused(zip([{ name, data: Buffer.alloc(1000), comp: zlib.deflateRawSync(Buffer.alloc(100000)), usize: 1000 }]),
    /beyond its declared/);
  const cliBomb = await rec.cli(bomb);
  assert.equal(cliBomb.code, 2, cliBomb.stderr);
  assert.match(cliBomb.stderr, /declares/);
  // nothing was written for any of the refused bills; the daemon is still well
  const runs = Number(psql("SELECT count(*) FROM reconciliations WHERE channel = 'alipay'"));
  assert.equal(runs, 4); // clean (admin, CLI), altered (admin, CLI)
  assert.equal((await h.request({ port: ctx.gw.port, path: '/healthz' })).status, 200);
});

test('a bill naming as paid a QR order still PENDING here (its notification lost) gets it settled by query', () =>
  st.pendingSettledByQuery(ctx, rec, { order: { shop_id: 'sa1', method: 'alipay_qr' }, pay: { seller_id: SELLER },
    bill: billZip }));
