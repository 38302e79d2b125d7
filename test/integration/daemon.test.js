'use strict';
/*
 * daemon.test.js — paygated as a process: health while PostgreSQL or Redis
 * go away and come back (without restarting paygated), orderly shutdown on
 * SIGTERM with a request in flight, and configuration checking.
 */
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const h = require('../lib/harness');

let services;
let gw;

before(async () => {
  services = await h.startServices();
  gw = await h.startPaygated({ services });
});

after(async () => {
  try { if (gw && !gw.exitInfo) await gw.stop(); } catch (_) { /* ignore */ }
  if (services) await services.close();
});

const healthz = () => h.request({ port: gw.port, path: '/healthz', timeoutMs: 5000 });
const metric = async (name) => {
  const r = await h.request({ port: gw.port, path: '/metrics', timeoutMs: 5000 });
  const m = new RegExp(`^${name} ([0-9.]+)$`, 'm').exec(r.body);
  return m ? Number(m[1]) : undefined;
};
const noSanitizerReport = (logs) =>
  assert.doesNotMatch(logs, /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:/, logs);

test('healthz reports PostgreSQL and Redis up', async () => {
  // Redis connects asynchronously: give it a moment after start-up
  const r = await h.waitFor(async () => {
    const x = await healthz();
    return x.status === 200 && x.json && x.json.redis && x.json.redis.up === true ? x : null;
  }, 10000).catch(() => healthz());
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 'ok');
  assert.equal(r.json.postgres.size, 4, 'pool_size from the config');
  assert.ok(r.json.postgres.up >= 1 && r.json.postgres.up <= 4, r.body);
  assert.equal(r.json.redis.up, true);
  assert.ok(r.headers['x-request-id']);
});

test('PostgreSQL stopped: /healthz 503 "unavailable"; recovers when it returns, no restart', async () => {
  const pid = gw.proc.pid;
  await services.pg.stop();
  try {
    const down = await h.waitFor(async () => {
      const r = await healthz();
      return r.status === 503 ? r : null;
    }, 15000);
    assert.equal(down.json.status, 'unavailable', down.body);
    assert.ok(down.headers['x-request-id']);
    // the rest of the daemon keeps answering
    const nf = await h.request({ port: gw.port, path: '/nothing-here' });
    assert.equal(nf.status, 404);
    await h.waitFor(async () => (await metric('paygate_postgres_connections_up')) === 0, 15000);
  } finally {
    await services.pg.start();
  }
  const up = await h.waitFor(async () => {
    const r = await healthz();
    return r.status === 200 ? r : null;
  }, 20000);
  assert.equal(up.json.status, 'ok');
  assert.ok(up.json.postgres.up >= 1);
  assert.equal(gw.proc.pid, pid);
  assert.equal(gw.exitInfo, null, 'paygated still running');
});

test('Redis stopped: still served (200, redis up false); recovers when it returns', async () => {
  await services.redis.stop();
  try {
    const r = await h.waitFor(async () => {
      const x = await healthz();
      return x.status === 200 && x.json && x.json.redis.up === false ? x : null;
    }, 15000);
    assert.equal(r.json.status, 'ok');
    assert.ok(r.json.postgres.up >= 1);
    assert.equal(await metric('paygate_redis_up'), 0);
    const nf = await h.request({ port: gw.port, path: '/nothing-here' });
    assert.equal(nf.status, 404);
  } finally {
    await services.redis.start();
  }
  await h.waitFor(async () => {
    const x = await healthz();
    return x.status === 200 && x.json.redis.up === true;
  }, 20000);
  assert.equal(await metric('paygate_redis_up'), 1);
  assert.equal(gw.exitInfo, null, 'paygated still running');
});

test('SIGTERM: listener closes, the in-flight request completes, exit 0', async () => {
  const d = await h.startPaygated({ services });
  const c = await h.connect(d.port);
  try {
    await c.write('POST /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\n12345');
    await h.sleep(300);   // the server has read the headers and half the body
    d.proc.kill('SIGTERM');
    // a new connection is refused while the old one is still in flight
    await h.waitFor(() => h.connectionRefused(d.port), 5000);
    assert.equal(c.isClosed(), false, 'the in-flight connection is kept');
    assert.equal(d.exitInfo, null, 'still running while a request is in flight');
    await c.write('67890');
    const rs = await c.waitForResponses(1, 5000);
    assert.equal(rs[0].status, 405, rs[0].body);
    assert.equal(rs[0].json.error.code, 'method_not_allowed');
    let t;
    const r = await Promise.race([
      d.exited,
      new Promise((resolve) => { t = setTimeout(resolve, 15000, 'timeout'); }),
    ]);
    clearTimeout(t);
    assert.notEqual(r, 'timeout', `paygated did not exit after the request completed\n${d.logs()}`);
    assert.deepEqual(r, { code: 0, signal: null }, d.logs());
    noSanitizerReport(d.logs());
  } finally {
    c.destroy();
    await d.kill();
  }
});

test('SIGTERM with idle keep-alive connections: exits 0 promptly', async () => {
  const d = await h.startPaygated({ services });
  const c = await h.connect(d.port);
  try {
    await c.write('GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n');
    await c.waitForResponses(1);
    const r = await d.stop('SIGTERM', 15000);
    assert.deepEqual(r, { code: 0, signal: null }, d.logs());
    await c.closed;
    noSanitizerReport(d.logs());
  } finally {
    c.destroy();
    await d.kill();
  }
});

test('--check-config: a valid file exits 0', async () => {
  const file = h.writeConfig(h.baseConfig({ port: 18080, adminPort: 18081 }));
  const r = await h.runPaygated(['--check-config', file]);
  assert.equal(r.code, 0, r.stderr);
});

test('--check-config: config/dev.json is valid', async () => {
  const file = path.join(h.ROOT, 'config', 'dev.json');
  assert.ok(fs.existsSync(file), 'config/dev.json exists');
  const r = await h.runPaygated(['--check-config', file]);
  assert.equal(r.code, 0, r.stderr);
});

test('--check-config: config/paygated.example.json (every key documented) is valid', async () => {
  const file = path.join(h.ROOT, 'config', 'paygated.example.json');
  const r = await h.runPaygated(['--check-config', file]);
  assert.equal(r.code, 0, r.stderr);
  // and it names every top-level section the daemon knows
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8'));
  for (const k of ['listen', 'admin', 'http', 'postgres', 'redis', 'channels', 'api', 'tasks', 'settlement'])
    assert.ok(k in cfg, `example has ${k}`);
});

test('--check-config: bad files exit 2 naming the field', async (t) => {
  const base = h.baseConfig({ port: 18080, adminPort: 18081 });
  const cases = [
    ['unknown key', { http: { max_conections: 10 } }, 'http.max_conections'],
    ['unknown top-level key', { lisen: { port: 1 } }, 'lisen'],
    ['wrong type (string for integer)', { http: { max_connections: 'many' } }, 'http.max_connections'],
    ['wrong type (object for string)', { postgres: { conninfo: { host: 'x' } } }, 'postgres.conninfo'],
    ['wrong type (integer for object)', { redis: 6379 }, 'redis'],
    ['wrong type (string for port)', { listen: { port: '8080' } }, 'listen.port'],
  ];
  for (const [name, override, field] of cases) {
    await t.test(name, async () => {
      const file = h.writeConfig(h.deepMerge(base, override));
      const r = await h.runPaygated(['--check-config', file]);
      assert.equal(r.code, 2, `exit status (stderr: ${r.stderr})`);
      assert.ok(r.stderr.includes(field), `stderr names ${field}: ${r.stderr}`);
    });
  }
  await t.test('not JSON', async () => {
    const file = h.writeConfig('{"listen": {"port": 80,}');
    const r = await h.runPaygated(['--check-config', file]);
    assert.equal(r.code, 2, r.stderr);
    assert.ok(r.stderr.length > 0);
  });
  await t.test('missing required section', async () => {
    const { postgres, ...noPg } = base;   // eslint-disable-line no-unused-vars
    const file = h.writeConfig(noPg);
    const r = await h.runPaygated(['--check-config', file]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /postgres/);
  });
});

test('paygated -c with a bad config exits 2 without starting', async () => {
  const port = await h.freePort();
  const file = h.writeConfig(h.deepMerge(h.baseConfig({ port, adminPort: await h.freePort() }),
    { http: { max_conections: 10 } }));
  const r = await h.runPaygated(['-c', file], { timeoutMs: 15000 });
  assert.equal(r.code, 2, r.stderr);
  assert.ok(r.stderr.includes('http.max_conections'), r.stderr);
  assert.ok(await h.connectionRefused(port), 'nothing listens');
});

test('clean shutdown of the shared daemon: exit 0, no sanitizer report', async () => {
  const r = await gw.stop('SIGTERM');
  assert.deepEqual(r, { code: 0, signal: null }, gw.logs());
  noSanitizerReport(gw.logs());
});
