'use strict';
/*
 * harness.js — helpers for the integration tests (node:test), no npm deps.
 *
 *   const h = require('../lib/harness');
 *   const services = await h.startServices();          // private PG + Redis
 *   const gw = await h.startPaygated({ services, config: { http: { max_connections: 5 } } });
 *   const res = await h.request({ port: gw.port, path: '/healthz' });
 *   await gw.stop(); await services.close();
 *
 * Every test file gets services of its own (files may run in parallel), in a
 * fresh directory under os.tmpdir() (test/run.sh points TMPDIR into its own
 * temporary directory and cleans up after a crash).  Services, daemons and
 * temporary files are also cleaned up when the process exits or is
 * interrupted.
 */
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const net = require('node:net');
const http = require('node:http');
const { spawn, execFile, execFileSync } = require('node:child_process');

const ROOT = path.resolve(__dirname, '..', '..');
const SERVICES_SH = path.join(__dirname, 'services.sh');
const ADMIN_TOKEN = 'test-admin-token';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------ cleanup on exit
const liveServices = new Set();   // dirs with services running
const liveProcs = new Set();      // spawned daemons
const tempPaths = new Set();      // files/dirs to remove

function cleanupSync() {
  for (const p of liveProcs) {
    try { p.kill('SIGKILL'); } catch (_) { /* gone */ }
  }
  liveProcs.clear();
  for (const dir of liveServices) {
    try {
      execFileSync('bash', [SERVICES_SH, 'destroy', dir], {
        stdio: 'ignore', timeout: 60000, env: { ...process.env, SERVICES_QUIET: '1' },
      });
    } catch (_) { /* best effort */ }
    try { fs.rmSync(dir, { recursive: true, force: true }); } catch (_) { /* ignore */ }
  }
  liveServices.clear();
  for (const p of tempPaths) {
    try { fs.rmSync(p, { recursive: true, force: true }); } catch (_) { /* ignore */ }
  }
  tempPaths.clear();
}
process.on('exit', cleanupSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => {
    cleanupSync();
    process.kill(process.pid, sig);   // default action now that the handler is gone
  });
}

// ------------------------------------------------------------ small helpers
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function run(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 120000, maxBuffer: 16 << 20, ...opts }, (err, stdout, stderr) => {
      if (err) {
        err.message += `\n--- stdout\n${stdout}\n--- stderr\n${stderr}`;
        err.stdout = stdout; err.stderr = stderr;
        reject(err);
      } else resolve({ stdout, stderr });
    });
  });
}

function parseEnvFile(text) {
  const env = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z_][A-Z0-9_]*)='(.*)'$/.exec(line);
    if (m) env[m[1]] = m[2].replace(/'\\''/g, "'");
  }
  return env;
}

async function waitFor(fn, timeoutMs = 10000, intervalMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let lastErr;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      lastErr = undefined;
    } catch (e) { lastErr = e; }
    if (Date.now() >= deadline) {
      const e = new Error(`waitFor: condition not met within ${timeoutMs} ms` +
        (lastErr ? `; last error: ${lastErr.message}` : ''));
      if (lastErr) e.cause = lastErr;
      throw e;
    }
    await sleep(intervalMs);
  }
}

function deepMerge(base, over) {
  if (over === undefined) return base;
  if (over === null || typeof over !== 'object' || Array.isArray(over) ||
      base === null || typeof base !== 'object' || Array.isArray(base)) return over;
  const out = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = deepMerge(base[k], v);
  return out;
}

// ------------------------------------------------------------ services
async function startServices() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'paygate-it-'));
  liveServices.add(dir);
  const ctl = (cmd) => run('bash', [SERVICES_SH, cmd, dir], { env: { ...process.env, SERVICES_QUIET: '1' } });
  try {
    await ctl('start');
  } catch (e) {
    await ctl('destroy').catch(() => {});
    cleanupDir(dir);
    throw e;
  }
  const env = parseEnvFile(fs.readFileSync(path.join(dir, 'services.env'), 'utf8'));
  const svc = {
    dir,
    pg: {
      port: Number(env.PG_PORT),
      conninfo: env.PG_CONNINFO,
      superConninfo: env.PG_SUPER_CONNINFO,
      /* one statement through psql as the paygate user; its unaligned output, trimmed */
      query: (sql) => execFileSync('psql', [env.PG_CONNINFO, '-At', '-c', sql],
        { encoding: 'utf8', maxBuffer: 256 << 20 }).trim(),
      stop: () => ctl('pg-stop').then(() => undefined),
      start: () => ctl('pg-start').then(() => undefined),
    },
    redis: {
      port: Number(env.REDIS_PORT),
      host: '127.0.0.1',
      stop: () => ctl('redis-stop').then(() => undefined),
      start: () => ctl('redis-start').then(() => undefined),
    },
    closed: false,
    async close() {
      if (svc.closed) return;
      svc.closed = true;
      try { await ctl('destroy'); } finally { cleanupDir(dir); }
    },
  };
  return svc;
}

function cleanupDir(dir) {
  liveServices.delete(dir);
  try { fs.rmSync(dir, { recursive: true, force: true }); } catch (_) { /* ignore */ }
}

// ------------------------------------------------------------ config
let cfgDir;
function writeConfig(obj) {
  if (!cfgDir) {
    cfgDir = fs.mkdtempSync(path.join(os.tmpdir(), 'paygate-cfg-'));
    tempPaths.add(cfgDir);
  }
  const file = path.join(cfgDir, `config-${process.pid}-${Math.random().toString(36).slice(2, 10)}.json`);
  fs.writeFileSync(file, typeof obj === 'string' ? obj : JSON.stringify(obj, null, 2));
  return file;
}

function defaultBinary() {
  return process.env.PAYGATED_BIN
    ? path.resolve(ROOT, process.env.PAYGATED_BIN)
    : path.join(ROOT, 'build', 'asan', 'paygated');
}

/* The base configuration (the schema of config/dev.json). */
function baseConfig({ port, adminPort, pgConninfo, redisPort, channelsDir } = {}) {
  return {
    listen: { host: '127.0.0.1', port: port ?? 0 },
    admin: { host: '127.0.0.1', port: adminPort ?? 0, token: ADMIN_TOKEN },
    log_level: 'info',
    http: {
      max_connections: 1000,
      max_header_bytes: 16384,
      max_body_bytes: 65536,
      header_timeout_ms: 10000,
      body_timeout_ms: 30000,
      idle_timeout_ms: 60000,
      shutdown_timeout_ms: 10000,
    },
    postgres: {
      conninfo: pgConninfo ?? 'host=127.0.0.1 port=5432 dbname=paygate user=paygate',
      pool_size: 4,
    },
    redis: { host: '127.0.0.1', port: redisPort ?? 6379 },
    channels: { dir: channelsDir ?? path.join(path.dirname(defaultBinary()), 'channels') },
  };
}

function sanitizerEnv(env) {
  return {
    ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=1',
    UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1',
    ...env,
  };
}

// ------------------------------------------------------------ the daemon
/*
 * startPaygated({services, config, binary, migrate = false, waitHealthy = true,
 *                env, args, timeoutMs = 20000})
 * config: overrides deep-merged into the base config.  migrate: run
 * `paygated migrate -c FILE` first (the daemon also migrates at start-up).
 * waitHealthy: wait for GET /healthz 200 (false: only until the port accepts
 * connections).  Resolves {port, adminPort, url, proc, logs(), stop(signal),
 * kill(), exited, ...}; rejects with the daemon's stderr when it exits or is
 * not healthy within timeoutMs.
 */
async function startPaygated(opts = {}) {
  const { services, config: overrides, migrate = false, waitHealthy = true,
          env = {}, args = [], timeoutMs = 20000 } = opts;
  const binary = opts.binary ? path.resolve(ROOT, opts.binary) : defaultBinary();
  if (!fs.existsSync(binary)) throw new Error(`paygated binary not found: ${binary} (run 'make asan')`);
  const port = await freePort();
  let adminPort = await freePort();
  while (adminPort === port) adminPort = await freePort();
  const base = baseConfig({
    port, adminPort,
    pgConninfo: services && services.pg.conninfo,
    redisPort: services && services.redis.port,
  });
  const cfg = deepMerge(base, overrides || {});
  try { fs.mkdirSync(cfg.channels.dir, { recursive: true }); } catch (_) { /* daemon reports */ }
  const configFile = writeConfig(cfg);
  const childEnv = sanitizerEnv({ ...process.env, ...env });

  if (migrate) {
    try {
      await run(binary, ['migrate', '-c', configFile], { env: childEnv, cwd: ROOT, timeout: 60000 });
    } catch (e) {
      throw new Error(`paygated migrate failed (status ${e.code}): ${e.stderr || e.message}`);
    }
  }

  const proc = spawn(binary, ['-c', configFile, ...args], {
    cwd: ROOT, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'],
  });
  liveProcs.add(proc);
  let stderr = '';
  let stdout = '';
  proc.stderr.setEncoding('utf8');
  proc.stdout.setEncoding('utf8');
  proc.stderr.on('data', (d) => { stderr += d; if (process.env.PAYGATE_TEST_VERBOSE) process.stderr.write(d); });
  proc.stdout.on('data', (d) => { stdout += d; });
  let exitInfo = null;
  // 'close': the process has exited and its stdout/stderr are drained (an
  // ASan report written at exit is in logs() by then)
  const exitedP = new Promise((resolve) => {
    proc.on('close', (code, signal) => {
      exitInfo = { code, signal };
      liveProcs.delete(proc);
      resolve(exitInfo);
    });
  });
  proc.on('error', (e) => { stderr += `\n[spawn error] ${e.message}`; });
  // A daemon a test forgot to stop must not keep the test file's process
  // alive (the exit hook kills it): unreferenced, except while awaited.
  const setRef = (on) => {
    for (const h of [proc, proc.stdout, proc.stderr]) {
      try { if (on) h.ref(); else h.unref(); } catch (_) { /* closed */ }
    }
  };
  setRef(false);
  const exited = () => {
    if (exitInfo) return Promise.resolve(exitInfo);
    setRef(true);
    return exitedP;
  };

  const gw = {
    port, adminPort, url: `http://127.0.0.1:${port}`, adminUrl: `http://127.0.0.1:${adminPort}`,
    adminToken: cfg.admin && cfg.admin.token, config: cfg, configFile, binary, proc,
    logs: () => stderr,
    stdout: () => stdout,
    /* Promise of {code, signal} once the process has exited. */
    get exited() { return exited(); },
    get exitInfo() { return exitInfo; },
    async stop(signal = 'SIGTERM', waitMs = 30000) {
      if (exitInfo) return exitInfo;
      try { proc.kill(signal); } catch (_) { /* gone */ }
      let t;
      const timer = new Promise((resolve) => { t = setTimeout(resolve, waitMs, null); });
      const r = await Promise.race([exited(), timer]);
      clearTimeout(t);
      if (r) return r;
      proc.kill('SIGKILL');
      await exited();
      throw new Error(`paygated did not exit within ${waitMs} ms after ${signal}\n--- stderr\n${stderr}`);
    },
    kill() {
      if (!exitInfo) { try { proc.kill('SIGKILL'); } catch (_) { /* gone */ } }
      return exited();
    },
  };

  const deadline = Date.now() + timeoutMs;
  let last = 'no answer';
  for (;;) {
    if (exitInfo) {
      throw new Error(`paygated exited during start-up (code ${exitInfo.code}, signal ${exitInfo.signal})\n--- stderr\n${stderr}`);
    }
    try {
      if (waitHealthy) {
        const r = await request({ port, path: '/healthz', timeoutMs: 2000 });
        if (r.status === 200) break;
        last = `GET /healthz ${r.status} ${r.body}`;
      } else {
        await new Promise((resolve, reject) => {
          const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(); });
          s.on('error', reject);
        });
        break;
      }
    } catch (e) { last = e.message; }
    if (Date.now() > deadline) {
      await gw.kill();
      throw new Error(`paygated not healthy within ${timeoutMs} ms (last: ${last})\n--- stderr\n${stderr}`);
    }
    await sleep(100);
  }
  return gw;
}

/* Runs the binary with args (no daemon), resolves {code, signal, stdout, stderr}. */
function runPaygated(args, { binary, env = {}, timeoutMs = 30000 } = {}) {
  const bin = binary ? path.resolve(ROOT, binary) : defaultBinary();
  return new Promise((resolve, reject) => {
    const p = spawn(bin, args, { cwd: ROOT, env: sanitizerEnv({ ...process.env, ...env }), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => { stdout += d; });
    p.stderr.on('data', (d) => { stderr += d; });
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', (e) => { clearTimeout(t); reject(e); });
    p.on('close', (code, signal) => { clearTimeout(t); resolve({ code, signal, stdout, stderr }); });
  });
}

// ------------------------------------------------------------ HTTP clients
/*
 * request({port, host, method, path, headers, body, timeoutMs}) →
 * {status, headers, body, json}.  body: string | Buffer | object (sent as
 * JSON).  A fresh agent each time: no connection reuse between calls.
 */
function request({ port, host = '127.0.0.1', method = 'GET', path: p = '/', headers = {}, body, timeoutMs = 10000 }) {
  return new Promise((resolve, reject) => {
    const agent = new http.Agent({ keepAlive: false });
    const hdrs = { ...headers };
    let payload;
    if (body !== undefined && body !== null) {
      if (Buffer.isBuffer(body) || typeof body === 'string') payload = body;
      else {
        payload = JSON.stringify(body);
        if (!Object.keys(hdrs).some((k) => k.toLowerCase() === 'content-type')) hdrs['Content-Type'] = 'application/json';
      }
      if (!Object.keys(hdrs).some((k) => ['content-length', 'transfer-encoding'].includes(k.toLowerCase()))) {
        hdrs['Content-Length'] = Buffer.byteLength(payload);
      }
    }
    const req = http.request({ host, port, method, path: p, headers: hdrs, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        agent.destroy();
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch (_) { json = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, body: text, json });
      });
      res.on('error', (e) => { agent.destroy(); reject(e); });
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`request timed out after ${timeoutMs} ms`)));
    req.on('error', (e) => { agent.destroy(); reject(e); });
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

/*
 * rawRequest(port, bytesOrChunks, {delayMs, timeoutMs, host}) → raw text of
 * everything the server sent until it closed the connection (or timeoutMs,
 * default 10 s, passed).  bytesOrChunks: a string/Buffer, or an array of them
 * written one by one with delayMs between them.
 */
function rawRequest(port, bytesOrChunks, { delayMs = 0, timeoutMs = 10000, host = '127.0.0.1' } = {}) {
  return new Promise((resolve, reject) => {
    const chunks = Array.isArray(bytesOrChunks) ? bytesOrChunks : [bytesOrChunks];
    const sock = net.connect(port, host);
    const got = [];
    let done = false;
    let timer;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(Buffer.concat(got).toString('latin1'));
    };
    timer = setTimeout(finish, timeoutMs);
    sock.on('data', (d) => got.push(d));
    sock.on('end', finish);
    sock.on('close', finish);
    sock.on('error', (e) => {
      if (got.length || e.code === 'ECONNRESET' || e.code === 'EPIPE') finish();
      else { done = true; clearTimeout(timer); reject(e); }
    });
    sock.on('connect', async () => {
      for (let i = 0; i < chunks.length && !done; i++) {
        if (i > 0 && delayMs) await sleep(delayMs);
        if (done || sock.destroyed) break;
        sock.write(chunks[i]);
      }
    });
  });
}

/*
 * Parses a byte stream of HTTP/1.1 responses (as returned by rawRequest) into
 * [{status, reason, headers (lower-case keys), body, json}], in order.
 * Interim (1xx) responses are included.  Handles Content-Length and chunked;
 * a response whose body has not fully arrived is the last one and has
 * incomplete: true.
 */
function parseResponses(text) {
  const out = [];
  let rest = Buffer.isBuffer(text) ? text.toString('latin1') : text;
  while (rest.length) {
    const he = rest.indexOf('\r\n\r\n');
    if (he < 0) break;
    const lines = rest.slice(0, he).split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3}) ?(.*)$/.exec(lines[0]);
    if (!m) break;
    const headers = {};
    for (const l of lines.slice(1)) {
      const i = l.indexOf(':');
      if (i > 0) {
        const k = l.slice(0, i).trim().toLowerCase();
        const v = l.slice(i + 1).trim();
        headers[k] = headers[k] !== undefined ? `${headers[k]}, ${v}` : v;
      }
    }
    const status = Number(m[1]);
    rest = rest.slice(he + 4);
    let body = '';
    let incomplete = false;
    if (status >= 100 && status < 200) {
      // no body
    } else if (/chunked/i.test(headers['transfer-encoding'] || '')) {
      for (;;) {
        const le = rest.indexOf('\r\n');
        if (le < 0) { incomplete = true; rest = ''; break; }
        const n = parseInt(rest.slice(0, le), 16);
        if (!n) {
          const te = rest.indexOf('\r\n\r\n', le);
          if (te < 0) { incomplete = true; rest = ''; } else rest = rest.slice(te + 4);
          break;
        }
        if (rest.length < le + 2 + n + 2) { incomplete = true; body += rest.slice(le + 2); rest = ''; break; }
        body += rest.slice(le + 2, le + 2 + n);
        rest = rest.slice(le + 2 + n + 2);
      }
    } else if (headers['content-length'] !== undefined) {
      const n = Number(headers['content-length']);
      if (rest.length < n) incomplete = true;
      body = rest.slice(0, n);
      rest = rest.slice(n);
    } else if (status !== 204 && status !== 304) {
      body = rest; rest = '';   // delimited by the close of the connection
    }
    body = Buffer.from(body, 'latin1').toString('utf8');
    let json;
    try { json = JSON.parse(body); } catch (_) { json = undefined; }
    const r = { status, reason: m[2], headers, body, json };
    if (incomplete) r.incomplete = true;
    out.push(r);
    if (incomplete) break;
  }
  return out;
}

/*
 * A raw connection for step-by-step tests: connect(port) → {sock, write(data),
 * text() (all received so far), waitForText(re|str, timeoutMs), closed
 * (Promise), isClosed(), destroy()}.
 */
function connect(port, host = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, host);
    let buf = '';
    let closed = false;
    let closeResolve;
    const closedP = new Promise((r) => { closeResolve = r; });
    const waiters = new Set();
    const check = () => { for (const w of [...waiters]) w(); };
    sock.on('data', (d) => { buf += d.toString('latin1'); check(); });
    sock.on('close', () => { closed = true; closeResolve(); check(); });
    let connected = false;
    // before connect: a failure to connect; after: a reset, followed by 'close'
    sock.on('error', (e) => { if (!connected) reject(e); });
    sock.on('connect', () => {
      connected = true;
      resolve({
        sock,
        write: (d) => new Promise((r) => { if (sock.destroyed) r(); else sock.write(d, () => r()); }),
        text: () => buf,
        closed: closedP,
        isClosed: () => closed,
        destroy: () => sock.destroy(),
        end: () => sock.end(),
        /* All responses received so far (see parseResponses). */
        responses: () => parseResponses(buf),
        /* Resolves the list once n complete final (non-1xx) responses have
         * arrived; rejects on timeout or when the connection closes first. */
        async waitForResponses(n, timeoutMs = 10000) {
          const ok = () => {
            const rs = parseResponses(buf).filter((r) => !r.incomplete && r.status >= 200);
            return rs.length >= n;
          };
          await this.waitForText({ test: ok, toString: () => `${n} response(s)` }, timeoutMs);
          return parseResponses(buf).filter((r) => r.status >= 200);
        },
        waitForText(pattern, timeoutMs = 10000) {
          const test = () => (typeof pattern === 'string' ? buf.includes(pattern) : pattern.test(buf));
          // pattern: a string, a RegExp, or any object with test(buf)
          return new Promise((res, rej) => {
            if (test()) { res(buf); return; }
            const t = setTimeout(() => {
              waiters.delete(w);
              rej(new Error(`timed out waiting for ${pattern}; got ${JSON.stringify(buf)}`));
            }, timeoutMs);
            const w = () => {
              if (test()) { clearTimeout(t); waiters.delete(w); res(buf); } else if (closed) {
                clearTimeout(t); waiters.delete(w);
                rej(new Error(`connection closed while waiting for ${pattern}; got ${JSON.stringify(buf)}`));
              }
            };
            waiters.add(w);
          });
        },
      });
    });
  });
}

/* Resolves true when a TCP connection to port is refused (nothing listens). */
function connectionRefused(port, host = '127.0.0.1', timeoutMs = 2000) {
  return new Promise((resolve) => {
    const s = net.connect(port, host);
    const t = setTimeout(() => { s.destroy(); resolve(false); }, timeoutMs);
    s.on('connect', () => { clearTimeout(t); s.destroy(); resolve(false); });
    s.on('error', (e) => { clearTimeout(t); resolve(e.code === 'ECONNREFUSED'); });
  });
}

module.exports = {
  ROOT, ADMIN_TOKEN,
  freePort, startServices, writeConfig, baseConfig, deepMerge, startPaygated, runPaygated,
  request, rawRequest, parseResponses, connect, connectionRefused, waitFor, sleep,
  defaultBinary,
};
