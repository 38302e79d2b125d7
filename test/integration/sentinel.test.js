'use strict';
/*
 * sentinel.test.js — Redis Sentinel with real servers on loopback: two
 * redis-server processes (a master and a replica of it) and three sentinels
 * (quorum 2), all in a temporary directory on free ports.  paygated is given
 * only the sentinels and the master's name (redis.sentinels, master_name).
 *
 *   1. it finds the master through the sentinels (/healthz redis up) and the
 *      merchant API's nonce replay protection (Redis SET NX) writes its keys
 *      on that master;
 *   2. the master is killed (SIGKILL): the sentinels promote the replica and
 *      the daemon, still serving (/healthz 200 throughout), follows: new nonce
 *      keys land on the promoted replica, and replays (old and new nonces)
 *      are still refused;
 *   3. the old master comes back as a replica, and a manual failover
 *      (SENTINEL FAILOVER) makes it master again: followed too, within
 *      seconds, although the previous master stays reachable and still a
 *      master for a while (the sentinels demote it some 10 s later): the
 *      daemon asks a sentinel every second while connected.
 *
 * PostgreSQL comes from harness.startServices() (its Redis is unused).
 */
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, execFile, execFileSync } = require('node:child_process');
const h = require('../lib/harness');
const pg = require('../lib/paygate');

const MASTER_NAME = 'mymaster';
const SECRET = 'sentinel-merchant-secret-0123456789';

let work;             // temporary directory of the Redis/Sentinel processes
const nodes = [];     // every redis-server/sentinel we started
let master;           // the data node that was master at the start
let replica;          // the other one
const sentinels = [];
let services;
let gw;
let call;             // signing merchant client

process.on('exit', () => {
  for (const n of nodes) { try { n.proc.kill('SIGKILL'); } catch (_) { /* gone */ } }
  if (work) { try { fs.rmSync(work, { recursive: true, force: true }); } catch (_) { /* ignore */ } }
});

// ------------------------------------------------------------ helpers
function cli(port, ...args) {
  return new Promise((resolve, reject) => {
    execFile('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: 5000 },
      (err, stdout, stderr) => {
        if (err) { err.message += `\n${stderr}`; reject(err); } else resolve(stdout.trim());
      });
  });
}

/* redis-cli's flat key/value lines (SENTINEL master) → object */
function pairs(text) {
  const l = text.split('\n');
  const o = {};
  for (let i = 0; i + 1 < l.length; i += 2) o[l[i]] = l[i + 1];
  return o;
}

function tail(file, n = 30) {
  try { return fs.readFileSync(file, 'utf8').split('\n').slice(-n).join('\n'); } catch (_) { return ''; }
}

function allLogs() {
  return nodes.map((n) => `--- ${n.name} (port ${n.port})\n${tail(n.log)}`).join('\n');
}

/* Runs redis-server on conf (args appended) until it answers PING on port;
 * rejects when it exits first. */
async function runNode(name, port, conf, log, extraArgs = []) {
  const proc = spawn('redis-server', [conf, ...extraArgs], { cwd: path.dirname(conf), stdio: 'ignore' });
  const node = { name, port, proc, log, conf, exitInfo: null };
  node.exited = new Promise((r) => proc.on('exit', (code, sig) => { node.exitInfo = { code, sig }; r(); }));
  proc.on('error', () => {});
  nodes.push(node);
  try {
    await h.waitFor(async () => {
      if (node.exitInfo) throw new Error(`${name} exited: ${tail(log)}`);
      return (await cli(port, 'PING').catch(() => '')) === 'PONG';
    }, 10000, 50);
  } catch (e) {
    try { proc.kill('SIGKILL'); } catch (_) { /* gone */ }
    await node.exited;
    nodes.splice(nodes.indexOf(node), 1);
    throw e;
  }
  return node;
}

/* Starts redis-server with the config lines confLines(port) (plus the
 * common ones) on a free port; a port taken meanwhile is retried. */
async function startNode(name, confLines, extraArgs = []) {
  for (let attempt = 1; ; attempt++) {
    const port = await h.freePort();
    const dir = path.join(work, name);
    fs.mkdirSync(dir, { recursive: true });
    const conf = path.join(dir, `${name}.conf`);
    const log = path.join(dir, `${name}.log`);
    fs.writeFileSync(conf, [
      `port ${port}`, 'bind 127.0.0.1', 'protected-mode no', `dir ${dir}`, `logfile ${log}`,
      ...confLines(port), '',
    ].join('\n'));
    try {
      return await runNode(name, port, conf, log, extraArgs);
    } catch (e) {
      if (attempt >= 4) throw e;
    }
  }
}

const dataConf = (extra = []) => () => ['save ""', 'appendonly no', ...extra];

function sentinelConf(masterPort) {
  return () => [
    'sentinel resolve-hostnames no',
    `sentinel monitor ${MASTER_NAME} 127.0.0.1 ${masterPort} 2`,
    `sentinel down-after-milliseconds ${MASTER_NAME} 1000`,
    `sentinel failover-timeout ${MASTER_NAME} 5000`,
  ];
}

/* The port every sentinel gives for the master (null while they disagree). */
async function sentinelsMasterPort() {
  const ports = await Promise.all(sentinels.map(async (s) => {
    const out = await cli(s.port, 'SENTINEL', 'get-master-addr-by-name', MASTER_NAME).catch(() => '');
    const [host, port] = out.split('\n');
    return host === '127.0.0.1' ? Number(port) : null;
  }));
  return ports.every((p) => p !== null && p === ports[0]) ? ports[0] : null;
}

/* Every sentinel sees the master up, one replica and the two other sentinels. */
async function sentinelsSettled(masterPort) {
  for (const s of sentinels) {
    const m = pairs(await cli(s.port, 'SENTINEL', 'master', MASTER_NAME).catch(() => ''));
    if (Number(m.port) !== masterPort || m.flags !== 'master' || m['num-slaves'] !== '1' ||
        m['num-other-sentinels'] !== '2') return false;
  }
  return true;
}

async function role(port) {
  return (await cli(port, 'ROLE').catch(() => '')).split('\n')[0];
}

async function replicaInSync(port) {
  return /master_link_status:up/.test(await cli(port, 'INFO', 'replication').catch(() => ''));
}

const healthz = () => h.request({ port: gw.port, path: '/healthz', timeoutMs: 5000 });

async function redisUp() {
  const r = await healthz();
  return r.status === 200 && r.json && r.json.redis && r.json.redis.up === true;
}

const nonceKey = (nonce) => `gw:nonce:m1:${nonce}`;

function pgNonces(nonce) {
  return execFileSync('psql', [services.pg.conninfo, '-At', '-c',
    `SELECT count(*) FROM api_nonces WHERE merchant_id = 'm1' AND nonce = '${nonce}'`],
  { encoding: 'utf8' }).trim();
}

/* An authenticated merchant call whose nonce went through Redis; resolves
 * the response (404: the order does not exist, but authentication passed). */
async function authedCall() {
  const r = await call('GET', '/v1/orders/no-such-order');
  assert.equal(r.status, 404, r.body);
  assert.equal(r.json.error.code, 'order_not_found', r.body);
  return r;
}

async function assertReplayRefused(r) {
  const again = await call('GET', '/v1/orders/no-such-order', undefined, { nonce: r.nonce, ts: r.ts });
  assert.equal(again.status, 401, again.body);
  assert.equal(again.json.error.code, 'replayed_request', again.body);
}

/* Polls /healthz until stop() and records what it saw. */
function watchHealth() {
  const seen = [];
  let on = true;
  const loop = (async () => {
    while (on) {
      const t = Date.now();
      try {
        const r = await healthz();
        seen.push({ t, status: r.status, redis: r.json && r.json.redis && r.json.redis.up });
      } catch (e) {
        seen.push({ t, status: 0, error: e.message });
      }
      await h.sleep(200);
    }
  })();
  return { seen, async stop() { on = false; await loop; return seen; } };
}

// ------------------------------------------------------------ set-up
before(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'paygate-sentinel-'));
  // PostgreSQL starts meanwhile
  const svcP = h.startServices();
  svcP.catch(() => {});
  try {
    master = await startNode('redis-a', dataConf());
    replica = await startNode('redis-b', dataConf([`replicaof 127.0.0.1 ${master.port}`]));
    await h.waitFor(() => replicaInSync(replica.port), 15000).catch((e) => {
      throw new Error(`${e.message}\n${allLogs()}`);
    });
    for (const n of ['sentinel-1', 'sentinel-2', 'sentinel-3']) {
      sentinels.push(await startNode(n, sentinelConf(master.port), ['--sentinel']));
    }
    // the sentinels find the replica (INFO) and each other (hello messages,
    // every 2 s): only then can they agree on a failover
    const t0 = Date.now();
    await h.waitFor(() => sentinelsSettled(master.port), 20000, 200).catch((e) => {
      throw new Error(`${e.message}\n${allLogs()}`);
    });
    process.stderr.write(`sentinels settled in ${Date.now() - t0} ms\n`);
  } finally {
    services = await svcP;
  }

  gw = await h.startPaygated({
    services,
    config: {
      redis: {
        sentinels: sentinels.map((s) => `127.0.0.1:${s.port}`).join(','),
        master_name: MASTER_NAME,
      },
    },
  });
  await pg.admin(gw, 'PUT', '/admin/merchants/m1', { name: 'Merchant m1', secret: SECRET });
  call = pg.merchantClient(gw, 'm1', SECRET);
});

after(async () => {
  try {
    if (gw && !gw.exitInfo) {
      const r = await gw.stop('SIGTERM');
      assert.deepEqual(r, { code: 0, signal: null }, gw.logs());
      assert.doesNotMatch(gw.logs(), /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:/, gw.logs());
    }
  } finally {
    for (const n of nodes) { try { n.proc.kill('SIGTERM'); } catch (_) { /* gone */ } }
    await Promise.all(nodes.map((n) => Promise.race([n.exited, h.sleep(5000)])));
    for (const n of nodes) { try { n.proc.kill('SIGKILL'); } catch (_) { /* gone */ } }
    if (services) await services.close();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  }
});

// ------------------------------------------------------------ tests
test('the master is found through the sentinels: /healthz redis up', async () => {
  await h.waitFor(redisUp, 10000).catch(() => {});
  const r = await healthz();
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.redis.up, true, `${r.body}\n${gw.logs()}`);
  assert.match(gw.logs(), new RegExp(`master "${MASTER_NAME}" is 127\\.0\\.0\\.1:${master.port}, according to sentinel`));
  assert.match(gw.logs(), new RegExp(`redis: connected to 127\\.0\\.0\\.1:${master.port} `));
  assert.doesNotMatch(gw.logs(), /password/i);
});

test('nonce replay protection writes to the master (SET NX), a replay is refused', async () => {
  const r = await authedCall();
  assert.equal(await cli(master.port, 'EXISTS', nonceKey(r.nonce)), '1', 'the nonce key is on the master');
  assert.equal(pgNonces(r.nonce), '0', 'Redis decided, not the PostgreSQL fallback');
  await assertReplayRefused(r);
  // replicated (asynchronously) before the master goes away below
  await h.waitFor(async () => (await cli(replica.port, 'EXISTS', nonceKey(r.nonce))) === '1', 5000);
  master.firstNonce = r;
});

test('kill -9 the master: the replica is promoted and the daemon follows, serving throughout', async (t) => {
  const watch = watchHealth();
  const t0 = Date.now();
  master.proc.kill('SIGKILL');
  await master.exited;

  // requests keep being answered while Redis is away (nonces fall back to PostgreSQL)
  const during = await authedCall();
  await assertReplayRefused(during);

  const promotedPort = await h.waitFor(async () => {
    const p = await sentinelsMasterPort();
    return p === replica.port && (await role(replica.port)) === 'master' ? p : null;
  }, 30000, 200).catch((e) => { throw new Error(`${e.message}\n${allLogs()}`); });
  const tPromoted = Date.now();

  // the daemon connects to the promoted replica, and writes there
  let r;
  await h.waitFor(async () => {
    if (!(await redisUp())) return false;
    const x = await authedCall();
    if ((await cli(replica.port, 'EXISTS', nonceKey(x.nonce))) !== '1') return false;
    r = x;
    return true;
  }, 15000, 200).catch((e) => { throw new Error(`${e.message}\n${gw.logs()}`); });
  const tFollowed = Date.now();
  const seen = await watch.stop();

  assert.equal(promotedPort, replica.port);
  assert.equal(pgNonces(r.nonce), '0', 'the new nonce went to Redis');
  await assertReplayRefused(r);
  await assertReplayRefused(master.firstNonce); // written before the failover, replicated
  assert.ok(tFollowed - tPromoted < 8000,
    `followed ${tFollowed - tPromoted} ms after the promotion\n${gw.logs()}`);
  const bad = seen.filter((s) => s.status !== 200);
  assert.deepEqual(bad, [], `/healthz not 200 during the failover: ${JSON.stringify(bad)}`);
  assert.ok(seen.some((s) => s.redis === false), 'redis was seen down during the failover');
  assert.equal((await healthz()).json.redis.up, true);
  assert.match(gw.logs(), new RegExp(`master "${MASTER_NAME}" is now 127\\.0\\.0\\.1:${replica.port} ` +
    `\\(was 127\\.0\\.0\\.1:${master.port}\\), according to sentinel`));
  assert.equal(gw.exitInfo, null, 'paygated still running');
  t.diagnostic(`promoted ${tPromoted - t0} ms after the kill, daemon on the new master ` +
    `${tFollowed - tPromoted} ms later`);
});

test('the old master returns as a replica; a manual failover back is followed too', async (t) => {
  const t0 = Date.now();
  // same port and config, as a replica of the new master (as the sentinels
  // would make it, only sooner)
  const old = master;
  const back = await runNode('redis-a (back)', old.port, old.conf, old.log,
    ['--replicaof', '127.0.0.1', String(replica.port)]);

  await h.waitFor(async () => (await role(back.port)) === 'slave' && (await replicaInSync(back.port)), 30000, 200)
    .catch((e) => { throw new Error(`${e.message}\n${allLogs()}`); });
  // the sentinels know it as a replica before they can fail over to it
  await h.waitFor(async () => {
    const m = pairs(await cli(sentinels[0].port, 'SENTINEL', 'master', MASTER_NAME).catch(() => ''));
    const reps = await cli(sentinels[0].port, 'SENTINEL', 'replicas', MASTER_NAME).catch(() => '');
    return m.flags === 'master' && m['num-slaves'] === '1' && reps.includes(`\n${back.port}\n`) &&
      /\nflags\nslave\n/.test(reps);
  }, 20000, 200).catch((e) => { throw new Error(`${e.message}\n${allLogs()}`); });

  t.diagnostic(`old master back as a known replica after ${Date.now() - t0} ms`);
  // the daemon is still on the current master
  const before1 = await authedCall();
  assert.equal(await cli(replica.port, 'EXISTS', nonceKey(before1.nonce)), '1');

  const watch = watchHealth();
  assert.equal(await cli(sentinels[0].port, 'SENTINEL', 'FAILOVER', MASTER_NAME), 'OK');
  await h.waitFor(async () => (await sentinelsMasterPort()) === back.port &&
    (await role(back.port)) === 'master', 20000, 200)
    .catch((e) => { throw new Error(`${e.message}\n${allLogs()}`); });
  const tSwitched = Date.now();
  let r;
  await h.waitFor(async () => {
    if (!(await redisUp())) return false;
    const x = await authedCall();
    if ((await cli(back.port, 'EXISTS', nonceKey(x.nonce))) !== '1') return false;
    r = x;
    return true;
  }, 15000, 200).catch((e) => { throw new Error(`${e.message}\n${gw.logs()}`); });
  const tFollowed = Date.now();
  const seen = await watch.stop();
  // the sentinels demote the previous master only some 10 s after the
  // switch: the daemon leaves it on its periodic check, not on an error
  const prevRole = await role(replica.port);
  t.diagnostic(`sentinels switched ${tSwitched - t0} ms in, daemon followed ` +
    `${tFollowed - tSwitched} ms later (previous master's role then: ${prevRole})`);
  assert.ok(tFollowed - tSwitched < 5000, `followed ${tFollowed - tSwitched} ms after the switch\n${gw.logs()}`);
  await assertReplayRefused(r);
  const bad = seen.filter((s) => s.status !== 200);
  assert.deepEqual(bad, [], `/healthz not 200 during the failover: ${JSON.stringify(bad)}`);
  assert.match(gw.logs(), new RegExp(`master "${MASTER_NAME}" is now 127\\.0\\.0\\.1:${back.port} ` +
    `\\(was 127\\.0\\.0\\.1:${replica.port}\\)`));
});
