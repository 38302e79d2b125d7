'use strict';
/*
 * mock.js — the peer of the test channel test/channels/mock (its made-up
 * protocol is described at the top of mock.c).  Used by the reload and
 * bulkhead tests: it verifies each request's HMAC, answers signed JSON, and
 * reports in "msg" which module version sent the request, so a test can tell
 * which generation of the module served a call.
 *
 *   node test/sim/mock.js --port N --key KEY [--latency-ms N]
 *
 * Control: GET /_sim/health; POST /_sim/settings {"latency_ms": N,
 * "fail": true|false}; GET /_sim/stats → {requests, bad_signatures, by_version}.
 *
 * Barcode payments (method 16) succeed at once; others are PENDING with a
 * code_url.  Query answers SUCCESS for a known order.
 */
const http = require('node:http');
const crypto = require('node:crypto');

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const port = Number(opt('port', '0'));
const key = opt('key', 'mock-key');
let latencyMs = Number(opt('latency-ms', '0'));
let fail = false;
const SIGNED = ['amount', 'code', 'code_url', 'kind', 'mch_id', 'msg', 'out_refund_no', 'out_trade_no',
  'refund_no', 'status', 'trade_no'];
const orders = new Map();
const stats = { requests: 0, bad_signatures: 0, by_version: {} };

function hmac(s) { return crypto.createHmac('sha256', key).update(s).digest('hex'); }
function sign(obj) {
  const s = SIGNED.filter((k) => obj[k] !== undefined && obj[k] !== '').map((k) => `${k}=${obj[k]}`).join('&');
  return { ...obj, sig: hmac(s) };
}

const server = http.createServer((req, res) => {
  let body = '';
  req.on('data', (d) => { body += d; });
  req.on('end', () => {
    const url = req.url.split('?')[0];
    const reply = (code, obj) => {
      res.writeHead(code, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(obj));
    };
    if (url === '/_sim/health') return reply(200, { ok: true });
    if (url === '/_sim/stats') return reply(200, stats);
    if (url === '/_sim/settings') {
      const s = JSON.parse(body || '{}');
      if (s.latency_ms !== undefined) latencyMs = Number(s.latency_ms);
      if (s.fail !== undefined) fail = !!s.fail;
      return reply(200, { latency_ms: latencyMs, fail });
    }
    stats.requests++;
    const version = req.headers['x-mock-version'] || '?';
    stats.by_version[version] = (stats.by_version[version] || 0) + 1;
    if (req.headers['x-mock-signature'] !== hmac(body)) {
      stats.bad_signatures++;
      return reply(401, { error: 'bad signature' });
    }
    const j = JSON.parse(body);
    const op = url.replace(/^\//, '');
    const answer = () => {
      if (fail) return reply(503, { error: 'down' });
      let out;
      if (op === 'pay') {
        const barcode = j.method === 16;
        const o = { trade_no: `M${crypto.randomBytes(6).toString('hex')}`, amount: j.amount, paid: barcode };
        orders.set(j.out_trade_no, o);
        out = { status: barcode ? 'SUCCESS' : 'PENDING', out_trade_no: j.out_trade_no, trade_no: o.trade_no,
          amount: j.amount, mch_id: j.mch_id, msg: `served by ${version}` };
        if (!barcode) out.code_url = `mock://qr/${o.trade_no}`;
      } else if (op === 'query') {
        const o = orders.get(j.out_trade_no);
        out = o ? { status: o.paid ? 'SUCCESS' : 'NOT_PAID', out_trade_no: j.out_trade_no, trade_no: o.trade_no,
          amount: o.amount, mch_id: j.mch_id, msg: `served by ${version}` }
          : { status: 'NOT_PAID', out_trade_no: j.out_trade_no, mch_id: j.mch_id, msg: 'no such order' };
      } else if (op === 'close' || op === 'reverse') {
        out = { status: op === 'close' ? 'CLOSED' : 'REVERSED', out_trade_no: j.out_trade_no, mch_id: j.mch_id };
      } else if (op === 'refund' || op === 'refund-query') {
        out = { status: 'SUCCESS', out_trade_no: j.out_trade_no, out_refund_no: j.out_refund_no,
          refund_no: `MR${j.out_refund_no}`, mch_id: j.mch_id };
      } else {
        return reply(404, { error: 'no such op' });
      }
      reply(200, sign(out));
    };
    if (latencyMs > 0) setTimeout(answer, latencyMs);
    else answer();
  });
});
server.keepAliveTimeout = 60000;
server.listen(port, '127.0.0.1', () => {
  console.log(`mock-sim listening on http://127.0.0.1:${server.address().port}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
