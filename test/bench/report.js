'use strict';
/*
 * report.js — turns build/bench/results.jsonl (one JSON object per phase,
 * written by test/bench/run.sh) into the markdown table of docs/performance.md.
 *
 *   node test/bench/report.js build/bench/results.jsonl
 */
const fs = require('node:fs');

const rows = fs.readFileSync(process.argv[2] || 'build/bench/results.jsonl', 'utf8')
  .split('\n').filter(Boolean).map((l) => JSON.parse(l));
const get = (phase) => rows.find((r) => r.phase === phase);
const pgb = (c) => rows.find((r) => r.phase === 'pgbench' && r.clients === c);

const n0 = (x) => (x === undefined || x === null ? '–' : Math.round(x).toLocaleString('en-US'));
const n1 = (x) => (x === undefined || x === null ? '–' : Number(x).toFixed(1));
const n2 = (x) => (x === undefined || x === null ? '–' : Number(x).toFixed(2));
const pct = (x) => (x === undefined || x === null || !Number.isFinite(x) ? '–' : `${(x * 100).toFixed(0)} %`);
const mb = (kb) => (kb === undefined || kb === null ? '–' : `${(kb / 1024).toFixed(1)} MB`);
const verdict = (ok) => (ok === undefined ? '' : ok ? ' ✔' : ' ✘');

function cpu(r) {
  if (!r || !r.cpu_pct) return '–';
  const c = r.cpu_pct;
  const parts = Object.entries(c).filter(([k, v]) => v >= 0.5 || k === 'paygated').map(([k, v]) => `${k} ${v.toFixed(0)}`);
  return `${parts.join(', ')}; box ${n0(r.box_busy_pct)}`;
}

const out = [];
const f = get('facts');
if (f) {
  out.push(`Machine: ${f.cpu}, ${f.cores} cores, ${Math.round(f.mem_mb / 1024)} GiB; Linux ${f.kernel}; ` +
    `PostgreSQL ${f.postgres} (fsync on, synchronous_commit on), Redis ${f.redis}, Node ${f.node}; ` +
    `paygate ${f.commit}; ${f.date}; load average at start ${f.loadavg}.`);
  const st = get('settings');
  if (st) {
    out.push('');
    out.push(`Settings: ${st.conns} connections per load phase, ${st.duration_s} s per phase (first ${st.warmup_s} s not counted); ` +
      `postgres.pool_size ${st.pg_pool}; synchronous_commit ${st.synchronous_commit}${st.synchronous_commit !== 'on' ? ' (DIAGNOSTIC, not a headline figure)' : ''}; ` +
      `Swiftpass side: ${st.swiftpass_side === 'node' ? 'the Node simulator' : 'the C stub (gwload sp-stub)'}; slow channel: ${st.slow_conns} connections.`);
  }
  out.push('');
}
out.push('| measurement | result | p50 / p99 / p99.9 (ms) | target | CPU, % of one core (box: all processes, of 200) | load avg |');
out.push('|---|---|---|---|---|---|');

const bare = get('bare_http');
const pgo4 = rows.find((r) => r.phase === 'pgbench_orders' && r.clients === 4);
const pg4 = pgb(4);
const pgBest = Math.max(...rows.filter((r) => r.phase === 'pgbench').map((r) => r.tps), 0) || undefined;
const lat = (r) => (r ? `${n2(r.p50_ms)} / ${n2(r.p99_ms)} / ${n2(r.p999_ms)}` : '–');
/* paygated's read/write system calls and context switches per request (gwload) */
const sysc = (r) => (r && r.rw_syscalls_per_req !== undefined
  ? `paygated ${n2(r.rw_syscalls_per_req)} read/write system calls and ${n2(r.ctx_switches_per_req)} context switches per order; ` : '');
const pgs = (r) => (r && r.pg ? `; PG ${n0(r.pg.commits_per_s)} transactions/s, ${n0(r.pg.wal_syncs_per_s)} WAL flushes/s (${n2(r.pg.commits_per_sync)} transactions/flush)` +
  (r.pg.order_updates_per_s ? `, ${n0(r.pg.order_updates_hot_pct)} % of ${n0(r.pg.order_updates_per_s)} order updates/s HOT` : '') : '');
const bad = (r) => (r && r.bad ? ` (${n0(r.bad)} bad: ${JSON.stringify(r.status)})` : '');

if (bare) out.push(`| ceiling: bare HTTP, one libuv loop (${bare.conns} conns) | ${n0(bare.rate)} req/s | ${lat(bare)} | | ${cpu(bare)} | ${bare.loadavg_end} |`);
const fs1 = get('fsync');
if (fs1 && fs1.fdatasync_per_s > 0) out.push(`| machine: one 8 kB write + fdatasync on the database's disk (pg_test_fsync) | ${n0(fs1.fdatasync_per_s)} per s = ${n2(1000 / fs1.fdatasync_per_s)} ms each | | | | ${fs1.loadavg_end} |`);
for (const c of [1, 4, 16]) {
  const p = pgb(c);
  if (p) out.push(`| ceiling: PostgreSQL durable 1-row INSERT, pgbench -c ${c} | ${n0(p.tps)} commits/s | mean ${n2(p.latency_ms)} | | | ${p.loadavg_end} |`);
}
for (const c of [4, 16]) {
  const p = rows.find((r) => r.phase === 'pgbench_orders' && r.clients === c);
  if (p) out.push(`| ceiling: PostgreSQL with only the c-to-b statements, one order per transaction (create + transition, 2 commits; paygated batches them), pgbench -c ${c} | ${n0(p.tps)} orders/s | mean ${n2(p.latency_ms)} | | | ${p.loadavg_end} |`);
}
const sim = get('swiftpass_sim');
if (sim) out.push(`| ceiling: Swiftpass simulator alone (Node, ${sim.conns} conns) | ${n0(sim.rate)} req/s${bad(sim)} | ${lat(sim)} | | ${cpu(sim)} | ${sim.loadavg_end} |`);
const stub = get('swiftpass_stub');
if (stub) out.push(`| ceiling: Swiftpass stub alone (C, gwload sp-stub, ${stub.conns} conns) | ${n0(stub.rate)} req/s${bad(stub)} | ${lat(stub)} | | ${cpu(stub)} | ${stub.loadavg_end} |`);

for (const kind of ['order', 'notify']) {
  const sc = rows.filter((r) => r.phase === 'sqlcost' && r.kind === kind);
  if (sc.length) {
    const what = kind === 'order' ? 'c-to-b order (create + first transition, 2 transactions)' : 'notification (applied)';
    out.push(`| PostgreSQL CPU per ${what}, one session, batches of ${sc.map((r) => r.batch).join(' / ')} | ` +
      `${sc.map((r) => r.ms_per_unit.toFixed(3)).join(' / ')} ms | | | | ${sc[sc.length - 1].loadavg_end} |`);
  }
}
const ctob = get('ctob');
if (ctob) {
  const ok = ctob.rate >= 5000 && ctob.p99_ms < 50;
  out.push(`| **c-to-b create via Swiftpass** (${ctob.conns} conns) | **${n0(ctob.rate)} orders/s**${bad(ctob)}; RSS ${mb(ctob.rss_kb)}; ${sysc(ctob)}` +
    `${pct(ctob.rate / (bare && bare.rate))} of bare HTTP, ${pct(ctob.rate / (pg4 && pg4.tps))} of pgbench -c 4's durable single-row commits/s, ` +
    `${pct(ctob.rate / (pgo4 && pgo4.tps))} of the c-to-b statements run one order per transaction (pgbench -c 4)${pgs(ctob)} | ${lat(ctob)} | ≥ 5 000/s, p99 < 50 ms${verdict(ok)} | ${cpu(ctob)} | ${ctob.loadavg_end} |`);
}
const cr = get('ctobrate');
if (cr) {
  // met: (almost) everything offered was answered in the window, p99 < 50 ms
  const ok = cr.rate >= 0.99 * cr.offered_rate && cr.p99_ms < 50;
  out.push(`| **c-to-b at a fixed ${n0(cr.offered_rate)} orders/s offered** (open loop, ≤ ${cr.conns} conns; latency from when each was due) | ` +
    `**${n0(cr.rate)} orders/s answered**${bad(cr)}; ${n0(cr.unsent_at_end)} due but unsent at the end; ${sysc(cr)}` +
    `RSS ${mb(cr.rss_kb)}${pgs(cr)} | ${lat(cr)} | ≥ 5 000/s, p99 < 50 ms${verdict(ok && cr.offered_rate >= 5000)} | ${cpu(cr)} | ${cr.loadavg_end} |`);
}
const btoc = get('btoc');
if (btoc) {
  out.push(`| b-to-c create, immediate success (${btoc.conns} conns) | ${n0(btoc.rate)} orders/s${bad(btoc)}; RSS ${mb(btoc.rss_kb)}; ` +
    `${pct(btoc.rate / (bare && bare.rate))} of bare HTTP${pgs(btoc)} | ${lat(btoc)} | | ${cpu(btoc)} | ${btoc.loadavg_end} |`);
}
const nt = get('notify');
if (nt) {
  const ok = nt.rate >= 10000;
  const oc = nt.inbox_outcomes ? `; inbox: ${Object.entries(nt.inbox_outcomes).map(([k, v]) => `${k} ${v}`).join(', ')}` : '';
  out.push(`| notification ingestion (${nt.conns} conns) | ${n0(nt.rate)} notifications/s${bad(nt)}; ` +
    `${pct(nt.rate / (pg4 && pg4.tps))} of pgbench -c 4${oc}${pgs(nt)} | ${lat(nt)} | ≥ 10 000/s${verdict(ok)} | ${cpu(nt)} | ${nt.loadavg_end} |`);
}
const sf = get('slow_fast');
const sc = get('slow_channel');
const sref1 = get('slow_ref');
const sref2 = get('slow_ref2');
if (sref1) {
  out.push(`| c-to-b reference, right before the slow-channel run | ${n0(sref1.rate)} orders/s${bad(sref1)} | ${lat(sref1)} | | ${cpu(sref1)} | ${sref1.loadavg_end} |`);
}
if (sref2) {
  out.push(`| c-to-b reference, right after the slow-channel run | ${n0(sref2.rate)} orders/s${bad(sref2)} | ${lat(sref2)} | | ${cpu(sref2)} | ${sref2.loadavg_end} |`);
}
// the reference: the mean of the runs before and after (the box drifts
// between windows), or the one there is, or the ctob phase
const refs = [sref1, sref2].filter(Boolean);
const sref = refs.length ? {
  rate: refs.reduce((a, r) => a + r.rate, 0) / refs.length,
  p99_ms: refs.reduce((a, r) => a + r.p99_ms, 0) / refs.length,
} : ctob;
if (sf) {
  const rel = sref ? sf.rate / sref.rate : undefined;
  const p99rel = sref ? sf.p99_ms / sref.p99_ms : undefined;
  const ok = rel !== undefined ? rel >= 0.9 && p99rel <= 1.2 : undefined;
  const what = refs.length === 2 ? 'the mean of the references before and after' : 'the reference';
  out.push(`| c-to-b while the other channel takes 3 s (${sc ? sc.conns : '?'} in flight there) | ${n0(sf.rate)} orders/s${bad(sf)} = ` +
    `${pct(rel)} of ${what}; p99 ${pct(p99rel)} of theirs | ${lat(sf)} | ≥ 90 %, p99 ≤ 120 %${verdict(ok)} | ${cpu(sf)} | ${sf.loadavg_end} |`);
}
if (sc) out.push(`| … the slow channel meanwhile | ${n1(sc.rate)} orders/s${bad(sc)} | ${lat(sc)} | | | |`);
const idle = get('idle');
if (idle) {
  const ok = idle.rss_kb < 100 * 1024;
  const per = idle.answered ? ((idle.rss_kb - idle.rss_before_kb) * 1024 / idle.answered) : undefined;
  out.push(`| ${n0(idle.answered)} idle keep-alive connections | RSS ${mb(idle.rss_kb)} (before ${mb(idle.rss_before_kb)}; ` +
    `${n0(per)} B per connection); ${n0(idle.open_at_end)} still open after ${n0(idle.window_s)} s | | < 100 MB${verdict(ok)} | ${cpu(idle)} | ${idle.loadavg_end} |`);
}
if (pgBest && ctob) out.push('');
console.log(out.join('\n'));
