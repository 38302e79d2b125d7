'use strict';
/*
 * `make run`'s sandbox (test/lib/devrun.sh) end to end, on private ports and a private VAR_DIR
 * in a temporary directory, so that it can run beside a developer's `make run`:
 *   1. the first start makes the keys, starts PostgreSQL, Redis, the four simulators and
 *      paygated, and seeds merchant m1 with a shop per channel;
 *   2. one c-to-b order through each channel, signed as a merchant signs (HMAC-SHA256, computed
 *      here with node's crypto by test/lib/paygate.js): PENDING with a QR from that channel's
 *      simulator; the customer "scans" it there (POST /_sim/pay with the QR's token) and the
 *      simulator's signed notification makes the order SUCCESS;
 *   3. SIGTERM: devrun stops everything it started (no simulator, paygated, PostgreSQL or Redis
 *      process left, every port free);
 *   4. a second start on the same VAR_DIR: the same keys, the same sub-merchant ids and rows
 *      (seeding changes nothing), the first run's orders still there, and every channel still
 *      takes and settles an order; then SIGTERM again.
 * The daemon is the binary the other integration tests use (PAYGATED_BIN, default
 * build/asan/paygated) with the channel modules built beside it.
 */
const test = require('node:test');
const assert = require('node:assert');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, execFileSync } = require('node:child_process');
const h = require('../lib/harness');
const pg = require('../lib/paygate');

const DEVRUN = path.join(h.ROOT, 'test', 'lib', 'devrun.sh');
const SECRET = '0123456789abcdef0123';       // the sandbox merchant m1's, as devrun.sh seeds it
const ADMIN_TOKEN = 'dev-admin-token';       // config/dev.json
// per channel: the shop devrun seeds for it, a c-to-b method it serves, where the QR's token is
const CHANNELS = [
  { channel: 'swiftpass', shop: 's1', method: 'wechat_qr', portVar: 'SWIFTPASS_SIM_PORT', qr: (u) => `${u}/_sim/qr/` },
  { channel: 'mybank', shop: 's-mybank', method: 'alipay_qr', portVar: 'MYBANK_SIM_PORT', qr: (u) => `${u}/_sim/qr/` },
  { channel: 'alipay', shop: 's-alipay', method: 'alipay_qr', portVar: 'ALIPAY_SIM_PORT', qr: (u) => `${u}/_sim/qr/` },
  { channel: 'wechatpay', shop: 's-wechatpay', method: 'wechat_qr', portVar: 'WECHATPAY_SIM_PORT', qr: () => 'weixin://wxpay/bizpayurl?pr=' },
];
const PORT_VARS = ['API_PORT', 'ADMIN_PORT', 'PG_PORT', 'REDIS_PORT', ...CHANNELS.map((c) => c.portVar)];

let tmp, varDir;
const ports = {};
let run = null;        // the devrun.sh being run: {proc, out(), exited}
const seenPids = new Map();   // pid -> argv of what devrun started: killed at clean-up if left
const firstRun = {};   // what the first start seeded and created

// ---------------------------------------------------------------- processes
/* /proc/<pid>/stat → {state, ppid}; null when there is no such process. */
function procStat(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { state: f[0], ppid: Number(f[1]) };
  } catch (_) { return null; }
}
const alive = (pid) => { const s = procStat(pid); return !!s && s.state !== 'Z'; };
const cmdline = (pid) => {
  try { return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean); } catch (_) { return []; }
};
/* Every live process below pid. */
function descendants(pid) {
  const children = new Map();
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const s = procStat(e);
    if (s) (children.get(s.ppid) || children.set(s.ppid, []).get(s.ppid)).push(Number(e));
  }
  const out = [];
  const todo = [pid];
  while (todo.length) for (const c of children.get(todo.pop()) || []) { out.push(c); todo.push(c); }
  return out.filter(alive);
}
const pidFile = (f) => Number(fs.readFileSync(f, 'utf8').split('\n')[0].trim());

function startDevrun() {
  const proc = spawn('bash', [DEVRUN], {
    cwd: h.ROOT,
    env: {
      ...process.env,
      VAR_DIR: varDir,
      PAYGATED_BIN: h.defaultBinary(),
      PAYGATED_CHANNELS_DIR: path.join(path.dirname(h.defaultBinary()), 'channels'),
      ...Object.fromEntries(PORT_VARS.map((v) => [v, String(ports[v])])),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stdout.on('data', (d) => { out += d; });
  proc.stderr.on('data', (d) => { out += d; });
  const exited = new Promise((resolve) => proc.on('close', (code, signal) => resolve({ code, signal })));
  run = { proc, out: () => out, exited };
  return run;
}

/* Waits for "sandbox ready"; returns {channel: {shop, methods, mchs, ids, sim}} from the
 * per-channel lines devrun prints. */
async function waitSeeded(r) {
  let done = false;
  r.exited.then(() => { done = true; });
  await h.waitFor(() => {
    if (/^devrun: seeding failed/m.test(r.out()) || done) {
      throw new Error(`devrun did not seed the sandbox:\n${r.out().slice(-4000)}`);
    }
    return /^devrun: sandbox ready: /m.test(r.out());
  }, 90000, 100).catch((e) => { throw new Error(`${e.message}\n--- devrun output\n${r.out().slice(-4000)}`); });
  const seeded = {};
  const re = /^devrun: sandbox (\w+): shop (\S+), methods ([^;]+); sub-merchants ([^(]+) \(ids ([\d,]+)\); simulator (\S+)$/gm;
  for (const m of r.out().matchAll(re)) {
    seeded[m[1]] = { shop: m[2], methods: m[3].split(' '), mchs: m[4].trim().split(' '), ids: m[5].split(',').map(Number), sim: m[6] };
  }
  return seeded;
}

/* The processes devrun started: the simulators and paygated below it, PostgreSQL and Redis
 * from their pid files (pg_ctl and redis-server detach from it). */
function startedProcesses(r) {
  const below = descendants(r.proc.pid).map((pid) => ({ pid, argv: cmdline(pid) }));
  for (const p of below) seenPids.set(p.pid, p.argv.join(' '));
  const svc = path.join(varDir, 'services');
  return {
    sims: Object.fromEntries(CHANNELS.map(({ channel }) => [channel,
      below.filter((p) => p.argv.some((a) => a.endsWith(`test/sim/${channel}.js`))).map((p) => p.pid)])),
    paygated: below.filter((p) => p.argv[0] && path.basename(p.argv[0]) === 'paygated').map((p) => p.pid),
    postgres: pidFile(path.join(fs.realpathSync(path.join(svc, 'pg')), 'data', 'postmaster.pid')),
    redis: pidFile(path.join(svc, 'redis', 'redis.pid')),
  };
}

/* SIGTERM, as a supervisor (or Ctrl-C) stops it; then nothing it started may be left. */
async function stopAndCheck(r, procs) {
  r.proc.kill('SIGTERM');
  let t;
  const res = await Promise.race([r.exited, new Promise((resolve) => { t = setTimeout(resolve, 40000, null); })]);
  clearTimeout(t);
  assert.ok(res, `devrun did not exit within 40 s of SIGTERM\n${r.out().slice(-3000)}`);
  assert.equal(res.code, 130, `devrun's exit status after SIGTERM\n${r.out().slice(-3000)}`);
  run = null;
  const all = [...Object.values(procs.sims).flat(), ...procs.paygated, procs.postgres, procs.redis];
  const left = all.filter(alive).map((pid) => `${pid} ${cmdline(pid).join(' ')}`);
  assert.deepEqual(left, [], 'processes devrun started are still running');
  for (const v of PORT_VARS) {
    assert.ok(await h.connectionRefused(ports[v]), `${v} ${ports[v]} still accepts connections after devrun stopped`);
  }
  assert.doesNotMatch(r.out(), /AddressSanitizer|LeakSanitizer|runtime error:/, r.out().slice(-5000));
  assert.match(r.out(), /^devrun: stopping paygated/m);
}

// ---------------------------------------------------------------- the sandbox, as a merchant
const gw = () => ({ port: ports.API_PORT, adminPort: ports.ADMIN_PORT, adminToken: ADMIN_TOKEN });
const simUrl = (c) => `http://127.0.0.1:${ports[c.portVar]}`;

/* A c-to-b order through each channel, paid at its simulator; → {channel: trade_no}. */
async function orderThroughEachChannel(tag) {
  const call = pg.merchantClient(gw(), 'm1', SECRET);
  const made = {};
  for (const c of CHANNELS) {
    const otn = `DEV${tag}${c.channel}${Date.now().toString(36)}`;
    const r = await call('POST', '/v1/orders', { shop_id: c.shop, out_trade_no: otn, amount: 1288, subject: 'Longjing tea', method: c.method });
    assert.equal(r.status, 200, `${c.channel}: ${r.body}`);
    assert.equal(r.json.status, 'PENDING', `${c.channel}: ${r.body}`);
    assert.equal(r.json.channel, c.channel, r.body);
    const url = r.json.pay_data && r.json.pay_data.code_url;
    const prefix = c.qr(simUrl(c));
    assert.ok(typeof url === 'string' && url.startsWith(prefix) && url.length > prefix.length,
      `${c.channel}: the QR ${url} is not one of its simulator (${prefix}…)`);
    // the customer scans it: the simulator knows the token, and notifies paygate
    const token = url.slice(prefix.length);
    const p = await h.request({ port: ports[c.portVar], method: 'POST', path: '/_sim/pay', body: { token } });
    assert.equal(p.status, 200, `${c.channel} /_sim/pay: ${p.body}`);
    assert.ok(p.body.includes(r.json.trade_no), `${c.channel}: the simulator paid another trade: ${p.body}`);
    made[c.channel] = r.json.trade_no;
  }
  for (const c of CHANNELS) {
    const o = await h.waitFor(async () => {
      const a = (await pg.admin(gw(), 'GET', `/admin/orders/${made[c.channel]}`)).result;
      return a.order.status === 'SUCCESS' ? a : null;
    }, 15000).catch((e) => { throw new Error(`${c.channel}: ${e.message}\n${run && run.out().slice(-3000)}`); });
    // by the simulator's notification (to the API port given), not by a query of paygate's own
    assert.deepEqual(o.events.map((e) => `${e.from_status}->${e.to_status}:${e.source}`),
      ['null->CREATED:api', 'CREATED->PENDING:channel', 'PENDING->SUCCESS:notify'], c.channel);
  }
  return made;
}

function psql(sql) {
  return execFileSync('psql', [`host=127.0.0.1 port=${ports.PG_PORT} dbname=paygate user=paygate`, '-At', '-c', sql],
    { encoding: 'utf8' }).trim();
}
/* What seeding writes (timestamps aside), credentials as digests: equal after a second start. */
const sandboxRows = () => psql('SELECT (SELECT json_agg(json_build_array(id, channel, mch_id, app_id, ' +
  "md5(key || '/' || private_key || '/' || public_key || '/' || extra::text)) ORDER BY id) FROM sub_merchants), " +
  '(SELECT json_agg(json_build_array(shop_id, method, priority, channel) ORDER BY 1, 2, 3) FROM shop_bindings), ' +
  '(SELECT json_agg(json_build_array(shop_id, method, priority, sub_merchant_id, position) ORDER BY 1, 2, 3, 5) FROM binding_sub_merchants), ' +
  '(SELECT json_agg(json_build_array(id, merchant_id, name) ORDER BY id) FROM shops), ' +
  '(SELECT json_agg(json_build_array(id, name, status) ORDER BY id) FROM merchants)');

/* sha256 of every file under VAR_DIR/keys, and the files' modes. */
function keyFiles() {
  const d = path.join(varDir, 'keys');
  return Object.fromEntries(fs.readdirSync(d).sort().map((f) => {
    const p = path.join(d, f);
    return [f, { sha256: crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex'), mode: fs.statSync(p).mode & 0o777 }];
  }));
}

// ---------------------------------------------------------------- set-up and clean-up
function cleanupSync() {
  if (run && run.proc.exitCode === null && run.proc.signalCode === null) {
    try { run.proc.kill('SIGTERM'); } catch (_) { /* gone */ }
    // devrun stops its own children and the services; wait for it synchronously (this also
    // runs on 'exit'), a zombie counting as gone
    const until = Date.now() + 45000;
    while (alive(run.proc.pid) && Date.now() < until) execFileSync('sleep', ['0.2']);
    try { run.proc.kill('SIGKILL'); } catch (_) { /* gone */ }
  }
  run = null;
  // what a broken devrun left behind (the assertions have reported it by now)
  for (const [pid, argv] of seenPids) {
    if (alive(pid) && cmdline(pid).join(' ') === argv) { try { process.kill(pid, 'SIGKILL'); } catch (_) { /* gone */ } }
  }
  seenPids.clear();
  if (varDir && fs.existsSync(path.join(varDir, 'services'))) {
    try {
      execFileSync('bash', [path.join(h.ROOT, 'test', 'lib', 'services.sh'), 'destroy', path.join(varDir, 'services')],
        { stdio: 'ignore', timeout: 60000, env: { ...process.env, SERVICES_QUIET: '1' } });
    } catch (_) { /* best effort */ }
  }
  if (tmp) { fs.rmSync(tmp, { recursive: true, force: true }); tmp = null; }
}
process.on('exit', cleanupSync);
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => { cleanupSync(); process.kill(process.pid, sig); });

test.before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'paygate-devrun-'));
  fs.chmodSync(tmp, 0o711);   // the postgres user must traverse it
  varDir = path.join(tmp, 'var');
  const taken = new Set();
  for (const v of PORT_VARS) {
    let p;
    do p = await h.freePort(); while (taken.has(p));
    taken.add(p);
    ports[v] = p;
  }
  assert.ok(fs.existsSync(h.defaultBinary()), `${h.defaultBinary()} not built`);
});

test.after(() => cleanupSync());

// ---------------------------------------------------------------- the tests
test('first start: keys made, services, four simulators and paygated on the given ports, the sandbox seeded', async () => {
  const devJson = fs.readFileSync(path.join(h.ROOT, 'config', 'dev.json'), 'utf8');
  const r = startDevrun();
  const seeded = await waitSeeded(r);
  assert.deepEqual(Object.keys(seeded).sort(), CHANNELS.map((c) => c.channel).sort(), r.out().slice(-3000));
  for (const c of CHANNELS) {
    assert.equal(seeded[c.channel].shop, c.shop);
    assert.ok(seeded[c.channel].methods.includes(c.method), `${c.channel}: ${seeded[c.channel].methods}`);
    assert.equal(seeded[c.channel].sim, simUrl(c));
    assert.equal(seeded[c.channel].ids.length, seeded[c.channel].mchs.length);
  }
  assert.equal(seeded.swiftpass.ids.length, 3);   // config/sim/swiftpass.json's three merchants
  // every simulator answers on its port
  for (const c of CHANNELS) {
    const hc = await h.request({ port: ports[c.portVar], path: '/_sim/health' });
    assert.equal(hc.status, 200, `${c.channel} simulator: ${hc.body}`);
  }
  // private keys only in VAR_DIR, readable by the owner alone; the committed config untouched
  const keys = keyFiles();
  const pems = Object.keys(keys).filter((f) => f.endsWith('.pem'));
  assert.ok(pems.length >= 6, JSON.stringify(Object.keys(keys)));
  for (const f of pems) assert.equal(keys[f].mode, 0o600, `${f} mode ${keys[f].mode.toString(8)}`);
  assert.equal(fs.readFileSync(path.join(h.ROOT, 'config', 'dev.json'), 'utf8'), devJson);
  const gen = JSON.parse(fs.readFileSync(path.join(varDir, 'paygated.json'), 'utf8'));
  assert.equal(gen.listen.port, ports.API_PORT);
  assert.equal(gen.admin.port, ports.ADMIN_PORT);
  Object.assign(firstRun, { seeded, keys, procs: startedProcesses(r), rows: sandboxRows() });
  for (const c of CHANNELS) assert.equal(firstRun.procs.sims[c.channel].length, 1, `${c.channel} simulator processes`);
  assert.equal(firstRun.procs.paygated.length, 1, 'paygated processes');
  assert.ok(alive(firstRun.procs.postgres) && alive(firstRun.procs.redis), 'PostgreSQL and Redis run');
});

test('one c-to-b order through each channel: PENDING, its simulator\'s QR, paid there, SUCCESS by notification', async () => {
  assert.ok(run, 'devrun is running');
  firstRun.orders = await orderThroughEachChannel('1');
});

test('SIGTERM stops everything devrun started', async () => {
  assert.ok(run, 'devrun is running');
  await stopAndCheck(run, firstRun.procs);
});

test('a second start on the same VAR_DIR: same keys, seeding changes nothing, the data kept, every channel works', async () => {
  const r = startDevrun();
  const seeded = await waitSeeded(r);
  for (const c of CHANNELS) {
    assert.deepEqual(seeded[c.channel], firstRun.seeded[c.channel], `${c.channel}: seeded differently the second time`);
  }
  assert.deepEqual(keyFiles(), firstRun.keys, 'the keys were made again');
  assert.equal(sandboxRows(), firstRun.rows, 'seeding changed the sub-merchants, bindings, shops or merchants');
  const procs = startedProcesses(r);
  // the first run's orders are still there, as the merchant sees them
  const call = pg.merchantClient(gw(), 'm1', SECRET);
  for (const c of CHANNELS) {
    const q = await call('GET', `/v1/orders/${firstRun.orders[c.channel]}`);
    assert.equal(q.status, 200, q.body);
    assert.equal(q.json.status, 'SUCCESS', q.body);
  }
  // the regenerated configs carry the same keys: every channel still signs and verifies
  await orderThroughEachChannel('2');
  await stopAndCheck(r, procs);
});
