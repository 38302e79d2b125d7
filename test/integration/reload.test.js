'use strict';
/*
 * Hot reload of channel modules under load (issue: channel modules).
 *
 * The mock channel is deployed in version 1, orders flow through it
 * continuously, version 2 is copied over the same path and SIGHUP sent:
 * no request fails, calls in flight finish on version 1, new calls use
 * version 2, /admin/channels reports 2.0.0, and version 1's private copy
 * disappears from /proc/PID/maps once drained.  Then a broken build is
 * deployed: it is rejected with its reason and version 2 keeps serving.
 */
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const h = require('../lib/harness');
const pg = require('../lib/paygate');

const ROOT = path.resolve(__dirname, '..', '..');
const MOCK_SRC = path.join(ROOT, 'test', 'channels', 'mock', 'mock.c');
const KEY = 'mock-merchant-key-0001';

function buildMock(out, defines = []) {
  execFileSync('cc', ['-std=c11', '-D_GNU_SOURCE', '-O1', '-g', '-Wall', '-Wextra', '-Werror', '-fPIC',
    '-Wno-unused-parameter', '-fvisibility=hidden', '-DGW_CHANNEL_NAME="mock"', `-I${path.join(ROOT, 'channels')}`, ...defines, '-shared', '-o', out, MOCK_SRC]);
}

/* Replaces dst by src the way a deploy does (new inode, same path). */
function deploy(src, dst) {
  const tmp = `${dst}.tmp-${process.pid}`;
  fs.copyFileSync(src, tmp);
  fs.chmodSync(tmp, 0o755);
  fs.renameSync(tmp, dst);
}

function mappedMocks(pid) {
  const maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
  return [...new Set(maps.split('\n').filter((l) => /mock[^/]*\.so/.test(l)).map((l) => l.split(/\s+/).pop()))];
}

let services, sim, gw, shop, work;

test.before(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'paygate-reload-'));
  fs.mkdirSync(path.join(work, 'channels'));
  buildMock(path.join(work, 'mock-v1.so'));
  buildMock(path.join(work, 'mock-v2.so'), ['-DMOCK_VERSION="2.0.0"']);
  buildMock(path.join(work, 'mock-broken.so'), ['-DMOCK_VERSION="3.0.0"', '-DMOCK_BREAK_INIT']);
  deploy(path.join(work, 'mock-v1.so'), path.join(work, 'channels', 'mock.so'));
  services = await h.startServices();
  sim = await pg.startSim('mock', ['--key', KEY, '--latency-ms', '150']);
  gw = await h.startPaygated({
    services,
    config: { channels: { dir: path.join(work, 'channels'), drain_timeout_ms: 5000,
      settings: { mock: { gateway_url: sim.url } } } },
  });
  shop = await pg.setupShop(gw, { subs: [{ channel: 'mock', mch_id: 'MOCK-1', key: KEY }], methods: ['barcode'] });
});

test.after(async () => {
  if (gw) {
    const r = await gw.stop();
    assert.equal(r.code, 0, `paygated exit status\n${gw.logs().slice(-3000)}`);
  }
  if (sim) await sim.stop();
  if (services) await services.close();
  fs.rmSync(work, { recursive: true, force: true });
});

async function channelInfo() {
  const r = await pg.admin(gw, 'GET', '/admin/channels');
  return r.channels.find((c) => c.name === 'mock');
}

test('SIGHUP under load: zero failed requests, in-flight calls finish on v1, v1 unloaded', async () => {
  assert.equal((await channelInfo()).version, '1.0.0');
  assert.equal(mappedMocks(gw.proc.pid).length, 1);
  const results = [];
  let hupAt = 0;
  let stop = false;
  let n = 0;
  const worker = async () => {
    while (!stop) {
      const start = Date.now();
      const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: `L${process.pid}x${n++}`, amount: 100, subject: 'load', method: 'barcode', auth_code: '134567890123456789' });
      results.push({ start, end: Date.now(), status: r.status, order: r.json });
    }
  };
  const workers = Array.from({ length: 8 }, worker);
  await new Promise((r) => setTimeout(r, 1200));
  deploy(path.join(work, 'mock-v2.so'), path.join(work, 'channels', 'mock.so'));
  hupAt = Date.now();
  process.kill(gw.proc.pid, 'SIGHUP');
  await h.waitFor(async () => (await channelInfo()).version === '2.0.0', 5000);
  await new Promise((r) => setTimeout(r, 1200));
  stop = true;
  await Promise.all(workers);

  const failed = results.filter((r) => r.status !== 200 || r.order.status !== 'SUCCESS');
  assert.equal(failed.length, 0, JSON.stringify(failed.slice(0, 3)));
  assert.ok(results.length > 40, `load ran: ${results.length} orders`);
  const servedBy = (r) => r.order.channel_msg;
  const v1 = results.filter((r) => servedBy(r) === 'served by 1.0.0');
  const v2 = results.filter((r) => servedBy(r) === 'served by 2.0.0');
  assert.equal(v1.length + v2.length, results.length);
  assert.ok(v2.length > 0, 'new calls use version 2');
  // calls in flight at the SIGHUP finished on the old code
  const straddling = v1.filter((r) => r.start < hupAt && r.end > hupAt);
  assert.ok(straddling.length > 0, 'some v1 calls were in flight across the reload');
  assert.ok(v2.every((r) => r.end > hupAt), 'no v2 before the reload');
  // v1's private copy is unloaded once drained
  await h.waitFor(() => mappedMocks(gw.proc.pid).length === 1, 10000);
  const info = await channelInfo();
  assert.equal(info.version, '2.0.0');
  assert.equal(info.inflight, 0);
  assert.match(gw.logs(), /fini v1\.0\.0/);
});

test('a broken build is rejected with its reason while version 2 keeps serving', async () => {
  deploy(path.join(work, 'mock-broken.so'), path.join(work, 'channels', 'mock.so'));
  process.kill(gw.proc.pid, 'SIGHUP');
  await h.waitFor(async () => {
    const c = await pg.admin(gw, 'GET', '/admin/channels');
    const m = c.channels.find((x) => x.name === 'mock');
    return m && m.last_error ? m : null;
  }, 5000);
  const info = await channelInfo();
  assert.equal(info.version, '2.0.0');
  assert.match(info.last_error, /init/);
  assert.match(info.last_error, /broken on purpose/);
  const r = await shop.call('POST', '/v1/orders', { shop_id: 's1', out_trade_no: `AFTER${process.pid}`, amount: 100, subject: 'after', method: 'barcode', auth_code: '134567890123456789' });
  assert.equal(r.json.status, 'SUCCESS');
  assert.equal(r.json.channel_msg, 'served by 2.0.0');
  // a file that is not a shared object: rejected, nothing else changes
  fs.writeFileSync(path.join(work, 'channels', 'junk.so'), 'not an ELF file\n');
  fs.chmodSync(path.join(work, 'channels', 'junk.so'), 0o755);
  const reload = await h.request({ port: gw.adminPort, method: 'POST', path: '/admin/channels/reload', headers: { Authorization: `Bearer ${gw.adminToken}` } });
  assert.equal(reload.status, 200, reload.body);
  const junk = reload.json.channels.find((c) => (c.file || '').startsWith('junk'));
  assert.ok(junk && junk.last_error, reload.body);
  assert.equal(reload.json.channels.find((c) => c.name === 'mock').version, '2.0.0');
});
