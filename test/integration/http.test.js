'use strict';
/*
 * http.test.js — the HTTP/1.1 front end of paygated: keep-alive, pipelining,
 * chunked bodies, 100-continue, limits (431/413), malformed requests (400),
 * slow clients (408), the connection cap (503), JSON errors, X-Request-Id,
 * and /metrics.
 */
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

let services;
let gw;

const HEADER_TIMEOUT_MS = 1000;
const BODY_TIMEOUT_MS = 1500;
const MAX_BODY = 65536;

before(async () => {
  services = await h.startServices();
  gw = await h.startPaygated({
    services,
    config: { http: { header_timeout_ms: HEADER_TIMEOUT_MS, body_timeout_ms: BODY_TIMEOUT_MS } },
  });
});

after(async () => {
  try { if (gw && !gw.exitInfo) await gw.stop(); } catch (_) { /* reported by the last test */ }
  if (services) await services.close();
});

/* An error response: status, JSON {"error":{"code","message"}}, X-Request-Id. */
function assertError(r, status, code) {
  assert.equal(r.status, status, `status (body: ${r.body})`);
  assert.ok(r.json, `JSON body expected, got ${JSON.stringify(r.body)}`);
  assert.ok(r.json.error && typeof r.json.error === 'object', `"error" object expected: ${r.body}`);
  assert.equal(r.json.error.code, code);
  assert.equal(typeof r.json.error.message, 'string');
  assert.ok(r.json.error.message.length > 0, 'error.message not empty');
  assert.ok(r.headers['x-request-id'], 'X-Request-Id header');
}

function req(method, path, extra = '') {
  return `${method} ${path} HTTP/1.1\r\nHost: test\r\n${extra}\r\n`;
}

/* Waits until the server closes conn; fails after timeoutMs. */
async function assertClosedBy(conn, timeoutMs, what) {
  let t;
  const timer = new Promise((resolve) => { t = setTimeout(resolve, timeoutMs, 'timeout'); });
  const r = await Promise.race([conn.closed.then(() => 'closed'), timer]);
  clearTimeout(t);
  assert.equal(r, 'closed', `${what}: the server should close the connection within ${timeoutMs} ms`);
}

/* paygate_http_connections_open of the public listener: the series without
 * labels, or the one labelled listener="public" (0 when absent). */
function openConnections(metricsText) {
  const m = /^paygate_http_connections_open(?:\{(?=[^}]*listener="public")[^}]*\})? (\d+)$/m.exec(metricsText);
  return m ? Number(m[1]) : 0;
}

test('GET /healthz: 200, JSON status, X-Request-Id', async () => {
  // Redis connects asynchronously: give it a moment after start-up
  const r = await h.waitFor(async () => {
    const x = await h.request({ port: gw.port, path: '/healthz' });
    return x.status === 200 && x.json && x.json.redis && x.json.redis.up === true ? x : null;
  }, 10000).catch(() => h.request({ port: gw.port, path: '/healthz' }));
  assert.equal(r.status, 200, r.body);
  assert.match(r.headers['content-type'] || '', /application\/json/);
  assert.equal(r.json.status, 'ok');
  assert.equal(typeof r.json.postgres.up, 'number');
  assert.equal(typeof r.json.postgres.size, 'number');
  assert.ok(r.json.postgres.up >= 1, `postgres.up ${r.json.postgres.up}`);
  assert.equal(r.json.redis.up, true);
  assert.ok(r.headers['x-request-id']);
  const r2 = await h.request({ port: gw.port, path: '/healthz' });
  assert.notEqual(r2.headers['x-request-id'], r.headers['x-request-id'], 'request ids differ');
});

test('unknown path: 404 not_found', async () => {
  const r = await h.request({ port: gw.port, path: '/no/such/path' });
  assertError(r, 404, 'not_found');
});

test('wrong method: 405 method_not_allowed', async () => {
  const r = await h.request({ port: gw.port, method: 'POST', path: '/healthz', body: '' });
  assertError(r, 405, 'method_not_allowed');
  const d = await h.request({ port: gw.port, method: 'DELETE', path: '/metrics' });
  assertError(d, 405, 'method_not_allowed');
});

test('keep-alive: several requests on one connection', async () => {
  const c = await h.connect(gw.port);
  try {
    for (let i = 1; i <= 3; i++) {
      await c.write(req('GET', '/healthz'));
      const rs = await c.waitForResponses(i);
      assert.equal(rs[i - 1].status, 200);
    }
    assert.equal(c.isClosed(), false, 'connection stays open');
  } finally { c.destroy(); }
});

test('pipelined requests are answered in order; Connection: close honoured', async () => {
  const c = await h.connect(gw.port);
  try {
    await c.write(
      req('GET', '/healthz') +
      req('GET', '/pipelined-a') +
      req('POST', '/healthz', 'Content-Length: 0\r\n') +
      req('GET', '/metrics') +
      req('GET', '/pipelined-b', 'Connection: close\r\n'));
    const rs = await c.waitForResponses(5);
    assert.deepEqual(rs.map((r) => r.status), [200, 404, 405, 200, 404]);
    assert.equal(rs[0].json.status, 'ok');
    assert.equal(rs[1].json.error.code, 'not_found');
    assert.equal(rs[2].json.error.code, 'method_not_allowed');
    assert.match(rs[3].body, /paygate_http_requests_total/);
    const ids = new Set(rs.map((r) => r.headers['x-request-id']));
    assert.equal(ids.size, 5, 'each response has its own X-Request-Id');
    await assertClosedBy(c, 5000, 'after Connection: close');
    assert.equal(h.parseResponses(c.text()).length, 5, 'nothing after the last response');
  } finally { c.destroy(); }
});

/* paygated keeps reading while a request is handled (core/http.c,
 * on_message_complete); what a client sends ahead is kept, and past
 * 16 kB reading pauses until the answer.  /healthz answers after a query
 * through the PostgreSQL pool, so each of these requests is in the handler
 * while the next bytes arrive. */
test('a long pipeline (far past the 16 kB read-ahead) is answered completely and in order', async () => {
  const c = await h.connect(gw.port);
  try {
    const N = 900; // ~45 kB of requests in one write
    let text = '';
    const want = [];
    for (let i = 0; i < N; i++) {
      if (i % 3 === 2) { text += req('GET', `/no-such-path-${i}`, 'X-Pad: ' + 'p'.repeat(8) + '\r\n'); want.push(404); }
      else { text += req('GET', '/healthz', 'X-Pad: ' + 'p'.repeat(8) + '\r\n'); want.push(200); }
    }
    assert.ok(text.length > 3 * 16384, `${text.length} bytes`);
    await c.write(text);
    const rs = await c.waitForResponses(N, 30000);
    assert.deepEqual(rs.map((r) => r.status), want);
    // and the connection is still good for one more
    await c.write(req('GET', '/healthz'));
    const more = await c.waitForResponses(N + 1, 10000);
    assert.equal(more[N].status, 200);
    assert.equal(c.isClosed(), false);
  } finally { c.destroy(); }
});

test('a client that half-closes after its request still gets the answer, then the close', async () => {
  const c = await h.connect(gw.port);
  try {
    await c.write(req('GET', '/healthz'));
    c.end(); // FIN while paygated is still asking PostgreSQL
    const [r] = await c.waitForResponses(1, 10000);
    assert.equal(r.status, 200);
    assert.equal(r.json.status, 'ok');
    await assertClosedBy(c, 5000, 'after the answer to a half-closed client');
  } finally { c.destroy(); }
});

test('Connection: close on a single request closes the connection', async () => {
  const c = await h.connect(gw.port);
  try {
    await c.write(req('GET', '/healthz', 'Connection: close\r\n'));
    const [r] = await c.waitForResponses(1);
    assert.equal(r.status, 200);
    await assertClosedBy(c, 5000, 'Connection: close');
  } finally { c.destroy(); }
});

test('chunked request bodies are accepted (the connection stays usable)', async () => {
  const c = await h.connect(gw.port);
  try {
    // one write: a chunked POST (three chunks, one with an extension) then a GET
    await c.write(
      req('POST', '/healthz', 'Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n') +
      '5\r\n{"a":\r\n3;ext=1\r\n123\r\n1\r\n}\r\n0\r\n\r\n' +
      req('GET', '/healthz'));
    let rs = await c.waitForResponses(2);
    assert.deepEqual(rs.map((r) => r.status), [405, 200]);
    // the same, trickled chunk by chunk
    await c.write(req('POST', '/no-such-thing', 'Transfer-Encoding: chunked\r\n'));
    for (const part of ['4\r\nab', 'cd\r\n', '10\r\n0123456789abcdef\r\n', '0\r\n', '\r\n']) {
      await h.sleep(50);
      await c.write(part);
    }
    rs = await c.waitForResponses(3);
    assertError(rs[2], 404, 'not_found');
    await c.write(req('GET', '/healthz'));
    rs = await c.waitForResponses(4);
    assert.equal(rs[3].status, 200);
  } finally { c.destroy(); }
});

test('Expect: 100-continue gets an interim 100, then the final response', async () => {
  const c = await h.connect(gw.port);
  try {
    await c.write(req('POST', '/healthz', 'Content-Length: 5\r\nExpect: 100-continue\r\n'));
    await c.waitForText(/^HTTP\/1\.1 100 [^\r]*\r\n(?:[^\r]+\r\n)*\r\n/, 5000);
    assert.equal(h.parseResponses(c.text()).filter((r) => r.status >= 200).length, 0,
      'no final response before the body is sent');
    await c.write('hello');
    const rs = await c.waitForResponses(1);
    assertError(rs[0], 405, 'method_not_allowed');
  } finally { c.destroy(); }
});

test('oversize header: 431 header_too_large', async () => {
  const big = 'x'.repeat(20000);   // > max_header_bytes (16384)
  const raw = await h.rawRequest(gw.port, req('GET', '/healthz', `X-Big: ${big}\r\n`), { timeoutMs: 5000 });
  const rs = h.parseResponses(raw);
  assert.ok(rs.length >= 1, `a response expected, got ${JSON.stringify(raw.slice(0, 200))}`);
  assertError(rs[0], 431, 'header_too_large');
  // many small headers adding up past the limit
  let many = '';
  for (let i = 0; i < 400; i++) many += `X-H-${i}: ${'v'.repeat(50)}\r\n`;
  const rs2 = h.parseResponses(await h.rawRequest(gw.port, req('GET', '/healthz', many), { timeoutMs: 5000 }));
  assertError(rs2[0], 431, 'header_too_large');
});

test('Content-Length over max_body_bytes: 413 at once, before any body', async () => {
  const c = await h.connect(gw.port);
  try {
    await c.write(req('POST', '/healthz', `Content-Length: ${MAX_BODY * 4}\r\nContent-Type: application/json\r\n`));
    const rs = await c.waitForResponses(1, 5000);
    assertError(rs[0], 413, 'body_too_large');
  } finally { c.destroy(); }
});

test('chunked body growing past max_body_bytes: 413', async () => {
  const c = await h.connect(gw.port);
  try {
    await c.write(req('POST', '/healthz', 'Transfer-Encoding: chunked\r\n'));
    const chunk = `2000\r\n${'z'.repeat(0x2000)}\r\n`;    // 8 KiB
    for (let sent = 0; sent <= MAX_BODY + 0x2000 && !c.isClosed(); sent += 0x2000) {
      if (c.text().length) break;       // answered already
      await c.write(chunk);
      await h.sleep(10);
    }
    const rs = await c.waitForResponses(1, 5000);
    assertError(rs[0], 413, 'body_too_large');
  } finally { c.destroy(); }
});

test('malformed request line: 400 bad_request, connection closed', async () => {
  for (const bad of [
    'GET /healthz HTTX/1.1\r\nHost: test\r\n\r\n',
    'GET /healthz HTTP/1.1 extra\r\nHost: test\r\n\r\n',
    '\x01\x02\x03 garbage\r\n\r\n',
  ]) {
    const raw = await h.rawRequest(gw.port, bad, { timeoutMs: 5000 });
    const rs = h.parseResponses(raw);
    assert.ok(rs.length === 1, `one response for ${JSON.stringify(bad)}, got ${JSON.stringify(raw)}`);
    assertError(rs[0], 400, 'bad_request');
  }
  // a malformed header line
  const rs = h.parseResponses(await h.rawRequest(gw.port, 'GET /healthz HTTP/1.1\r\nHost test\r\n\r\n', { timeoutMs: 5000 }));
  assertError(rs[0], 400, 'bad_request');
});

test('slow headers (1 byte / 200 ms): 408 request_timeout and closed; others served meanwhile', async () => {
  const slow = await h.connect(gw.port);
  const t0 = Date.now();
  const text = req('GET', '/healthz', 'X-Slow-Client: yes\r\nUser-Agent: trickle\r\n');
  let stop = false;
  const trickle = (async () => {
    for (let i = 0; i < text.length && !stop && !slow.isClosed(); i++) {
      await slow.write(text[i]);
      await h.sleep(200);
    }
  })();
  try {
    // another client is served while the slow one dribbles
    await h.sleep(300);
    const other = await h.request({ port: gw.port, path: '/healthz', timeoutMs: 3000 });
    assert.equal(other.status, 200);
    assert.equal(slow.text(), '', 'the slow client has no answer yet');
    await assertClosedBy(slow, HEADER_TIMEOUT_MS + 4000, 'header timeout');
    const elapsed = Date.now() - t0;
    const rs = h.parseResponses(slow.text());
    assert.equal(rs.length, 1, `one response: ${JSON.stringify(slow.text())}`);
    assertError(rs[0], 408, 'request_timeout');
    assert.ok(elapsed < text.length * 200, 'closed long before the headers could complete');
  } finally {
    stop = true;
    await trickle;
    slow.destroy();
  }
});

test('body not complete within body_timeout_ms: 408 request_timeout and closed', async () => {
  const c = await h.connect(gw.port);
  try {
    await c.write(req('POST', '/healthz', 'Content-Length: 10\r\n') + '12345');
    await assertClosedBy(c, BODY_TIMEOUT_MS + 4000, 'body timeout');
    const rs = h.parseResponses(c.text());
    assert.equal(rs.length, 1, `one response: ${JSON.stringify(c.text())}`);
    assertError(rs[0], 408, 'request_timeout');
  } finally { c.destroy(); }
});

test('GET /metrics: Prometheus text with the HTTP, PostgreSQL and Redis series', async () => {
  await h.request({ port: gw.port, path: '/metrics-404-probe' });
  const r = await h.request({ port: gw.port, path: '/metrics' });
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type'] || '', /^text\/plain/);
  const body = r.body;
  const lines = body.split('\n');
  const has = (re, what) => assert.ok(lines.some((l) => re.test(l)), `${what} in:\n${body}`);
  has(/^# TYPE paygate_http_requests_total counter$/, 'TYPE of requests_total');
  has(/^paygate_http_requests_total\{(?=[^}]*route="[^"]+")(?=[^}]*status="200")[^}]*\} \d+(\.\d+)?$/, 'a 200 counter');
  has(/^paygate_http_requests_total\{(?=[^}]*route="[^"]+")(?=[^}]*status="404")[^}]*\} \d+(\.\d+)?$/, 'a 404 counter');
  has(/^# TYPE paygate_http_request_duration_seconds histogram$/, 'TYPE of the histogram');
  has(/^paygate_http_request_duration_seconds_bucket\{[^}]*le="\+Inf"[^}]*\} \d+/, 'histogram +Inf bucket');
  has(/^paygate_http_request_duration_seconds_bucket\{[^}]*le="[0-9.e+-]+"[^}]*\} \d+/, 'histogram buckets');
  has(/^paygate_http_request_duration_seconds_sum(\{[^}]*\})? [0-9.e+-]+$/, 'histogram _sum');
  has(/^paygate_http_request_duration_seconds_count(\{[^}]*\})? \d+/, 'histogram _count');
  has(/^paygate_http_connections_open(\{[^}]*\})? \d+$/, 'connections gauge');
  has(/^paygate_postgres_connections_up \d+$/, 'postgres gauge');
  has(/^paygate_redis_up [01]$/, 'redis gauge');
  assert.ok(openConnections(body) >= 1, 'this connection is open');
  assert.ok(Number(/^paygate_postgres_connections_up (\d+)$/m.exec(body)[1]) >= 1, 'postgres up');
  assert.equal(/^paygate_redis_up ([01])$/m.exec(body)[1], '1');

  // the healthz 200 counter counts
  const healthz200 = (text) => {
    const l = text.split('\n').find((x) => /^paygate_http_requests_total\{/.test(x) &&
      /route="[^"]*healthz[^"]*"/.test(x) && /status="200"/.test(x));
    return l ? Number(l.split(' ').pop()) : 0;
  };
  const before = healthz200(body);
  assert.ok(before >= 1, 'earlier /healthz requests were counted');
  for (let i = 0; i < 3; i++) await h.request({ port: gw.port, path: '/healthz' });
  const after = healthz200((await h.request({ port: gw.port, path: '/metrics' })).body);
  assert.ok(after >= before + 3, `counter grew from ${before} to ${after}`);
});

test('connection cap: with max_connections=5 the 6th gets 503 and is closed, the five keep working', async () => {
  const capped = await h.startPaygated({ services, config: { http: { max_connections: 5 } } });
  const conns = [];
  try {
    // wait until the start-up health probes' connections are gone: only the
    // connection asking is open
    await h.waitFor(async () => openConnections(
      (await h.request({ port: capped.port, path: '/metrics', timeoutMs: 2000 })).body) <= 1, 5000)
      .catch(() => h.sleep(500));
    for (let i = 0; i < 5; i++) {
      const c = await h.connect(capped.port);
      conns.push(c);
      await c.write(req('GET', '/healthz'));
      const rs = await c.waitForResponses(1);
      assert.equal(rs[0].status, 200, `connection ${i + 1}`);
    }
    const sixth = await h.connect(capped.port).catch((e) => e);
    if (!(sixth instanceof Error)) {
      try {
        // the server may answer at once; otherwise ask
        try { await sixth.waitForText('HTTP/1.1', 1000); } catch (_) {
          if (!sixth.isClosed()) await sixth.write(req('GET', '/healthz'));
        }
        await assertClosedBy(sixth, 5000, 'the connection over the cap');
        const rs = h.parseResponses(sixth.text());
        assert.equal(rs.length, 1, `one response: ${JSON.stringify(sixth.text())}`);
        assertError(rs[0], 503, 'too_many_connections');
      } finally { sixth.destroy(); }
    } else {
      assert.fail(`the 6th connection should be accepted and answered 503, got ${sixth.message}`);
    }
    // the first five still work
    for (const [i, c] of conns.entries()) {
      assert.equal(c.isClosed(), false, `connection ${i + 1} still open`);
      await c.write(req('GET', '/healthz'));
      const rs = await c.waitForResponses(2);
      assert.equal(rs[1].status, 200, `connection ${i + 1}, second request`);
    }
    // closing one frees a slot
    conns.shift().destroy();
    await h.waitFor(async () => (await h.request({ port: capped.port, path: '/healthz', timeoutMs: 2000 })).status === 200, 5000);
  } finally {
    for (const c of conns) c.destroy();
    const r = await capped.stop();
    assert.deepEqual(r, { code: 0, signal: null }, `capped daemon exit\n${capped.logs()}`);
  }
});

test('clean shutdown after the HTTP tests: exit 0, no sanitizer report', async () => {
  const r = await gw.stop('SIGTERM');
  assert.deepEqual(r, { code: 0, signal: null }, `exit status\n${gw.logs()}`);
  assert.doesNotMatch(gw.logs(), /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:/);
});
