/*
 * test_pg.c — storage/pg.c against a real PostgreSQL (never a mock).
 *
 * Needs, from test/run.sh (test/lib/services.sh):
 *   GW_TEST_PG_CONNINFO  libpq conninfo of a scratch database
 *   GW_TEST_PG_CTL       "$GW_TEST_PG_CTL stop|start" stops/starts that server
 * Missing variables fail every test with a message saying so.
 *
 * The tests that stop the server or terminate backends restore it before
 * they return.  Tables and schemas they create carry the process id and are
 * dropped at the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gw.h"
#include "pg.h"
#include "metrics.h"
#include "migrations.h"

/* internal to storage/pg.c: gw_pg_migrate_sync over an explicit list */
gw_err_t gw__pg_migrate(const char *conninfo, const gw_migration_t *list, int *applied,
                        char *errbuf, size_t errlen);

static uv_loop_t loop;
static const char *conninfo;
static const char *pg_ctl;

/* ------------------------------------------------------------------ helpers */

static void need_env(void)
{
    conninfo = getenv("GW_TEST_PG_CONNINFO");
    pg_ctl = getenv("GW_TEST_PG_CTL");
    if (conninfo == NULL || *conninfo == '\0' || pg_ctl == NULL || *pg_ctl == '\0')
        fail_msg("GW_TEST_PG_CONNINFO and GW_TEST_PG_CTL must be set: run the unit tests with "
                 "'make unit' (test/run.sh starts PostgreSQL through test/lib/services.sh), or "
                 "start one with 'bash test/lib/services.sh start DIR' and export "
                 "GW_TEST_PG_CONNINFO=$PG_CONNINFO GW_TEST_PG_CTL=$PG_CTL_CMD from DIR/services.env");
}

static void ctl(const char *what)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s %s", pg_ctl, what);
    int rc = system(cmd);
    if (rc != 0) fail_msg("'%s' failed (status %d)", cmd, rc);
}

static int num(const char *s)
{
    return (int)strtol(s, NULL, 10);
}

static void tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until pred(arg) holds or timeout_ms passes; returns pred. */
static int run_until(int (*pred)(void *), void *arg, int timeout_ms)
{
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, tick, 5, 5);
    uint64_t end = gw_mono_us() + (uint64_t)timeout_ms * 1000u;
    while (!pred(arg) && gw_mono_us() < end) uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    return pred(arg);
}

static int never(void *arg)
{
    (void)arg;
    return 0;
}

static void run_for(int ms)
{
    run_until(never, NULL, ms);
}

static int flag_set(void *arg)
{
    return *(int *)arg != 0;
}

static int pool_all_up(void *arg)
{
    gw_pg_t *pg = arg;
    return gw_pg_up(pg) == gw_pg_size(pg);
}

static int pool_down(void *arg)
{
    return gw_pg_up(arg) == 0;
}

static void closed_cb(void *arg)
{
    (*(int *)arg)++;
}

/* Closes the pool and checks every handle is gone. */
static void close_pool(gw_pg_t *pg)
{
    int closed = 0;
    gw_pg_close(pg, closed_cb, &closed);
    assert_true(run_until(flag_set, &closed, 10000));
    assert_int_equal(closed, 1);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_alive(&loop), 0);
}

static gw_pg_t *new_pool(int size, int pipeline, int queue, int qtimeout)
{
    gw_pg_opts_t o = {
        .conninfo = conninfo,
        .pool_size = size,
        .max_pipeline = pipeline,
        .max_queue = queue,
        .reconnect_min_ms = 50,
        .reconnect_max_ms = 400,
        .query_timeout_ms = qtimeout,
    };
    gw_pg_t *pg = gw_pg_new(&loop, &o);
    assert_non_null(pg);
    return pg;
}

static void start_and_wait(gw_pg_t *pg)
{
    gw_pg_start(pg);
    if (!run_until(pool_all_up, pg, 10000))
        fail_msg("pool not up after 10 s (%d of %d connections)", gw_pg_up(pg), gw_pg_size(pg));
}

/* A blocking side connection for set-up and checks: runs sql, returns the
 * first value of the first row (or "" when none) in a static buffer. */
static void quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static const char *side_sql_ci(const char *ci, const char *sql)
{
    static char out[256];
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK) fail_msg("side connection: %s", PQerrorMessage(c));
    PQsetNoticeProcessor(c, quiet, NULL);
    PGresult *res = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
        fail_msg("side query '%s': %s", sql, PQresultErrorMessage(res));
    out[0] = '\0';
    if (st == PGRES_TUPLES_OK && PQntuples(res) > 0 && PQnfields(res) > 0)
        snprintf(out, sizeof(out), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    PQfinish(c);
    return out;
}

static const char *side_sql(const char *sql)
{
    return side_sql_ci(conninfo, sql);
}

/* How many other sessions are running a statement that contains tag. */
static int active_with(const char *tag)
{
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
             "AND pid <> pg_backend_pid() AND strpos(query, '%s') > 0",
             tag);
    return num(side_sql(sql));
}

typedef struct wait_tag {
    const char *tag;
    int n;
} wait_tag_t;

static int tag_active(void *arg)
{
    wait_tag_t *w = arg;
    return active_with(w->tag) >= w->n;
}

static void wait_active(const char *tag, int n)
{
    wait_tag_t w = { tag, n };
    if (!run_until(tag_active, &w, 10000)) fail_msg("'%s' not running on the server", tag);
}

static void terminate(const char *tag)
{
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE state = 'active' "
             "AND pid <> pg_backend_pid() AND strpos(query, '%s') > 0",
             tag);
    assert_string_equal(side_sql(sql), "1");
}

/* One job's outcome. */
typedef struct rec {
    int calls;
    int seq;
    gw_err_t err;
    ExecStatusType st;
    int has_res;
    char sqlstate[8];
    char v0[64], v1[64];
    int ntuples;
    char cmdtuples[16];
} rec_t;

static int seq_no;

static void rec_cb(void *udata, gw_err_t err, PGresult *res)
{
    rec_t *r = udata;
    r->calls++;
    r->seq = ++seq_no;
    r->err = err;
    r->has_res = res != NULL;
    if (res) {
        r->st = PQresultStatus(res);
        const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        snprintf(r->sqlstate, sizeof(r->sqlstate), "%s", s ? s : "");
        snprintf(r->cmdtuples, sizeof(r->cmdtuples), "%s", PQcmdTuples(res));
        r->ntuples = PQntuples(res);
        if (r->ntuples > 0 && PQnfields(res) > 0)
            snprintf(r->v0, sizeof(r->v0), "%s", PQgetvalue(res, 0, 0));
        if (r->ntuples > 0 && PQnfields(res) > 1)
            snprintf(r->v1, sizeof(r->v1), "%s", PQgetvalue(res, 0, 1));
    }
}

static int rec_done(void *arg)
{
    return ((rec_t *)arg)->calls > 0;
}

typedef struct recs {
    rec_t *r;
    int n;
} recs_t;

static int recs_done(void *arg)
{
    recs_t *rs = arg;
    for (int i = 0; i < rs->n; i++)
        if (rs->r[i].calls == 0) return 0;
    return 1;
}

static void wait_rec(rec_t *r, int ms)
{
    if (!run_until(rec_done, r, ms)) fail_msg("job not completed after %d ms", ms);
}

static void wait_recs(rec_t *r, int n, int ms)
{
    recs_t rs = { r, n };
    if (!run_until(recs_done, &rs, ms)) fail_msg("jobs not completed after %d ms", ms);
}

static void exec_ok(gw_pg_t *pg, const char *sql, rec_t *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(gw_pg_exec_sql(pg, sql, 0, NULL, rec_cb, r), GW_OK);
}

/* ------------------------------------------------------------------ tests */

/* 2000 jobs, half prepared, half literal SQL, over 4 pipelined connections:
 * every one answered once and correctly, spread over the connections. */
static void test_many_concurrent(void **state)
{
    (void)state;
    need_env();
    enum { N = 2000 };
    gw_pg_t *pg = new_pool(4, 32, 10000, 0);
    assert_int_equal(gw_pg_prepare(pg, "add1", "SELECT $1::int + 1, pg_backend_pid()"), GW_OK);
    start_and_wait(pg);

    rec_t *r = calloc(N, sizeof(*r));
    assert_non_null(r);
    for (int i = 0; i < N; i++) {
        char v[16];
        snprintf(v, sizeof(v), "%d", i);
        const char *vals[1] = { v }; /* copied by gw_pg_exec: v dies here */
        gw_err_t rc = i % 2 ? gw_pg_exec(pg, "add1", 1, vals, rec_cb, &r[i])
                            : gw_pg_exec_sql(pg, "SELECT $1::int + 1, pg_backend_pid()", 1, vals,
                                             rec_cb, &r[i]);
        assert_int_equal(rc, GW_OK);
    }
    assert_int_equal(gw_pg_pending(pg), N);
    wait_recs(r, N, 20000);

    int pids[N], npids = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].err, GW_OK);
        assert_int_equal(r[i].st, PGRES_TUPLES_OK);
        assert_int_equal(num(r[i].v0), i + 1);
        int pid = num(r[i].v1), seen = 0;
        for (int k = 0; k < npids && !seen; k++) seen = pids[k] == pid;
        if (!seen) pids[npids++] = pid;
    }
    assert_true(npids >= 2 && npids <= 4); /* least-loaded spreads the work */
    assert_int_equal(gw_pg_pending(pg), 0);
    free(r);
    close_pool(pg);
}

/* Checks each row holds only 'x' and all rows the same length; v0 = it. */
static void large_cb(void *udata, gw_err_t err, PGresult *res)
{
    rec_t *r = udata;
    rec_cb(udata, err, NULL);
    if (res == NULL) return;
    r->ntuples = PQntuples(res);
    int len = -1;
    for (int row = 0; row < r->ntuples; row++) {
        int l = PQgetlength(res, row, 0);
        const char *p = PQgetvalue(res, row, 0);
        for (int k = 0; k < l; k++)
            if (p[k] != 'x') l = -2;
        if (len != -1 && l != len) l = -3;
        len = l;
    }
    snprintf(r->v0, sizeof(r->v0), "%d", len);
}

/* Results far larger than libpq's buffers, many at once (several reads per
 * result; with TLS, several records). */
static void test_large_results(void **state)
{
    (void)state;
    need_env();
    enum { N = 24 };
    gw_pg_t *pg = new_pool(2, 8, 100, 0);
    start_and_wait(pg);
    rec_t r[N];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < N; i++) {
        char n[16];
        snprintf(n, sizeof(n), "%d", 100000 * (i + 1));
        const char *v[1] = { n };
        assert_int_equal(gw_pg_exec_sql(pg, "SELECT repeat('x', $1::int), g "
                                            "FROM generate_series(1, 3) g",
                                        1, v, large_cb, &r[i]),
                         GW_OK);
    }
    wait_recs(r, N, 20000);
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].err, GW_OK);
        assert_int_equal(r[i].ntuples, 3);
        assert_int_equal(num(r[i].v0), 100000 * (i + 1)); /* every row whole */
    }
    close_pool(pg);
}

/* One connection, five jobs in one pipeline: a unique violation and a
 * division by zero fail only their own job; the others commit; callbacks
 * come in order. */
static void test_errors_isolated(void **state)
{
    (void)state;
    need_env();
    char sql[256], tbl[64];
    snprintf(tbl, sizeof(tbl), "gwtest_pg_%d", (int)getpid());
    snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS %s; CREATE TABLE %s (id int PRIMARY KEY, v text)",
             tbl, tbl);
    side_sql(sql);

    gw_pg_t *pg = new_pool(1, 32, 100, 0);
    char ins[128];
    snprintf(ins, sizeof(ins), "INSERT INTO %s (id, v) VALUES ($1, $2)", tbl);
    assert_int_equal(gw_pg_prepare(pg, "ins", ins), GW_OK);
    start_and_wait(pg);

    rec_t r[5];
    memset(r, 0, sizeof(r));
    seq_no = 0;
    const char *a[2] = { "1", "a" }, *b[2] = { "1", "b" }, *d[2] = { "2", "d" };
    char cnt[128];
    snprintf(cnt, sizeof(cnt), "SELECT count(*), string_agg(v, ',' ORDER BY id) FROM %s", tbl);
    assert_int_equal(gw_pg_exec(pg, "ins", 2, a, rec_cb, &r[0]), GW_OK);
    assert_int_equal(gw_pg_exec(pg, "ins", 2, b, rec_cb, &r[1]), GW_OK);
    assert_int_equal(gw_pg_exec_sql(pg, "SELECT 1 / 0", 0, NULL, rec_cb, &r[2]), GW_OK);
    assert_int_equal(gw_pg_exec(pg, "ins", 2, d, rec_cb, &r[3]), GW_OK);
    assert_int_equal(gw_pg_exec_sql(pg, cnt, 0, NULL, rec_cb, &r[4]), GW_OK);
    wait_recs(r, 5, 10000);

    for (int i = 0; i < 5; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].seq, i + 1); /* one connection: in order */
    }
    assert_int_equal(r[0].err, GW_OK);
    assert_string_equal(r[0].cmdtuples, "1");
    assert_int_equal(r[1].err, GW_ECONFLICT);
    assert_true(r[1].has_res);
    assert_string_equal(r[1].sqlstate, "23505");
    assert_int_equal(r[2].err, GW_ESTATE);
    assert_true(r[2].has_res);
    assert_string_equal(r[2].sqlstate, "22012");
    assert_int_equal(r[3].err, GW_OK);
    assert_int_equal(r[4].err, GW_OK);
    assert_string_equal(r[4].v0, "2");
    assert_string_equal(r[4].v1, "a,d");

    close_pool(pg);
    snprintf(sql, sizeof(sql), "DROP TABLE %s", tbl);
    side_sql(sql);
}

/* Prepared statements: NULL parameters, a statement that fails to prepare
 * (the connection still works), registration rules, unknown names. */
static void test_prepared(void **state)
{
    (void)state;
    need_env();
    gw_pg_t *pg = new_pool(2, 8, 100, 0);
    assert_int_equal(gw_pg_prepare(pg, "nulls", "SELECT $1::text IS NULL, $2::text"), GW_OK);
    assert_int_equal(gw_pg_prepare(pg, "broken", "SELEC 1"), GW_OK);
    assert_int_equal(gw_pg_prepare(pg, "nulls", "SELECT 1"), GW_EEXIST);
    start_and_wait(pg);
    assert_int_equal(gw_pg_prepare(pg, "late", "SELECT 1"), GW_EINVAL);

    rec_t r[3];
    memset(r, 0, sizeof(r));
    const char *v[2] = { NULL, "x" };
    assert_int_equal(gw_pg_exec(pg, "nulls", 2, v, rec_cb, &r[0]), GW_OK);
    assert_int_equal(gw_pg_exec(pg, "broken", 0, NULL, rec_cb, &r[1]), GW_OK);
    assert_int_equal(gw_pg_exec(pg, "nulls", 2, v, rec_cb, &r[2]), GW_OK);
    assert_int_equal(gw_pg_exec(pg, "nosuch", 0, NULL, rec_cb, &r[0]), GW_EINVAL);
    assert_int_equal(gw_pg_exec(pg, "nulls", -1, v, rec_cb, &r[0]), GW_EINVAL);
    wait_recs(r, 3, 10000);
    assert_int_equal(r[0].err, GW_OK);
    assert_string_equal(r[0].v0, "t");
    assert_string_equal(r[0].v1, "x");
    assert_int_equal(r[1].err, GW_ESTATE);
    assert_string_equal(r[1].sqlstate, "26000"); /* invalid_sql_statement_name */
    assert_int_equal(r[2].err, GW_OK);
    assert_int_equal(gw_pg_up(pg), 2);
    close_pool(pg);
}

/* No server: GW_EUNAVAIL at once (before and after start), retries do not
 * leak; a full queue gives GW_EBUSY. */
static void test_unavailable_and_busy(void **state)
{
    (void)state;
    need_env();
    rec_t r[5];
    memset(r, 0, sizeof(r));

    gw_pg_opts_t o = { .conninfo = "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2",
                       .pool_size = 2, .reconnect_min_ms = 20, .reconnect_max_ms = 80 };
    gw_pg_t *pg = gw_pg_new(&loop, &o);
    assert_non_null(pg);
    assert_int_equal(gw_pg_exec_sql(pg, "SELECT 1", 0, NULL, rec_cb, &r[0]), GW_EUNAVAIL);
    gw_pg_start(pg);
    assert_int_equal(gw_pg_exec_sql(pg, "SELECT 1", 0, NULL, rec_cb, &r[0]), GW_EUNAVAIL);
    run_for(500); /* several refused attempts */
    assert_int_equal(gw_pg_up(pg), 0);
    assert_int_equal(gw_pg_exec_sql(pg, "SELECT 1", 0, NULL, rec_cb, &r[0]), GW_EUNAVAIL);
    assert_int_equal(r[0].calls, 0);
    close_pool(pg);

    /* a bad connection string is refused up front */
    gw_pg_opts_t bad = { .conninfo = "nosuchoption=1" };
    assert_null(gw_pg_new(&loop, &bad));

    /* the queue bound: jobs sent only when the loop runs, so all queue */
    pg = new_pool(1, 1, 4, 0);
    start_and_wait(pg);
    for (int i = 0; i < 4; i++) exec_ok(pg, "SELECT 1", &r[i]);
    assert_int_equal(gw_pg_exec_sql(pg, "SELECT 1", 0, NULL, rec_cb, &r[4]), GW_EBUSY);
    wait_recs(r, 4, 10000);
    for (int i = 0; i < 4; i++) assert_int_equal(r[i].err, GW_OK);
    assert_int_equal(r[4].calls, 0);
    close_pool(pg);
}

/* Connection loss: jobs sent fail GW_EIO; a job not yet sent stays queued
 * while another connection is up and runs after the reconnect; with no
 * connection left it fails GW_EUNAVAIL. */
static void test_loss_semantics(void **state)
{
    (void)state;
    need_env();
    rec_t a, b, c;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&c, 0, sizeof(c));

    /* two connections, one job each in flight, a third queued */
    gw_pg_t *pg = new_pool(2, 1, 100, 0);
    start_and_wait(pg);
    assert_int_equal(gw_pg_exec_sql(pg, "SELECT pg_sleep(30), 'gwtest-a'", 0, NULL, rec_cb, &a), GW_OK);
    assert_int_equal(gw_pg_exec_sql(pg, "SELECT pg_sleep(30), 'gwtest-b'", 0, NULL, rec_cb, &b), GW_OK);
    assert_int_equal(gw_pg_exec_sql(pg, "SELECT 3", 0, NULL, rec_cb, &c), GW_OK);
    wait_active("gwtest-a", 1);
    wait_active("gwtest-b", 1);
    assert_int_equal(gw_pg_pending(pg), 3);
    terminate("gwtest-a");
    wait_rec(&a, 10000);
    assert_int_equal(a.err, GW_EIO);
    assert_false(a.has_res);
    /* c waited for the reconnect of a's connection, then ran there */
    wait_rec(&c, 10000);
    assert_int_equal(c.err, GW_OK);
    assert_string_equal(c.v0, "3");
    assert_int_equal(b.calls, 0);
    terminate("gwtest-b");
    wait_rec(&b, 10000);
    assert_int_equal(b.err, GW_EIO);
    assert_true(run_until(pool_all_up, pg, 10000));
    close_pool(pg);

    /* one connection: the queued job has nowhere to go */
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    pg = new_pool(1, 1, 100, 0);
    start_and_wait(pg);
    seq_no = 0;
    assert_int_equal(gw_pg_exec_sql(pg, "SELECT pg_sleep(30), 'gwtest-c'", 0, NULL, rec_cb, &a), GW_OK);
    assert_int_equal(gw_pg_exec_sql(pg, "SELECT 2", 0, NULL, rec_cb, &b), GW_OK);
    wait_active("gwtest-c", 1);
    terminate("gwtest-c");
    wait_rec(&b, 10000);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.err, GW_EIO);
    assert_int_equal(b.err, GW_EUNAVAIL);
    assert_int_equal(gw_pg_pending(pg), 0);
    close_pool(pg);
}

/* The server stops: in-flight work fails GW_EIO, new work GW_EUNAVAIL; when
 * it is back the same pool reconnects by itself. */
static void test_server_restart(void **state)
{
    (void)state;
    need_env();
    rec_t a, b;
    memset(&a, 0, sizeof(a));
    gw_pg_t *pg = new_pool(3, 8, 100, 0);
    assert_int_equal(gw_pg_prepare(pg, "add1", "SELECT $1::int + 1"), GW_OK);
    start_and_wait(pg);
    assert_int_equal(gw_pg_exec_sql(pg, "SELECT pg_sleep(20), 'gwtest-r'", 0, NULL, rec_cb, &a), GW_OK);
    wait_active("gwtest-r", 1);

    ctl("stop");
    wait_rec(&a, 10000);
    assert_int_equal(a.err, GW_EIO);
    assert_true(run_until(pool_down, pg, 10000));
    assert_int_equal(gw_pg_exec_sql(pg, "SELECT 1", 0, NULL, rec_cb, &b), GW_EUNAVAIL);
    run_for(600); /* a few refused reconnects with backoff */
    assert_int_equal(gw_pg_up(pg), 0);

    ctl("start");
    if (!run_until(pool_all_up, pg, 15000))
        fail_msg("pool did not reconnect (%d of %d up)", gw_pg_up(pg), gw_pg_size(pg));
    const char *v[1] = { "41" };
    memset(&b, 0, sizeof(b));
    assert_int_equal(gw_pg_exec(pg, "add1", 1, v, rec_cb, &b), GW_OK); /* re-prepared */
    wait_rec(&b, 10000);
    assert_int_equal(b.err, GW_OK);
    assert_string_equal(b.v0, "42");
    close_pool(pg);
}

/* query_timeout_ms: the connection is reset, its jobs fail GW_EIO, and it
 * comes back. */
static void test_query_timeout(void **state)
{
    (void)state;
    need_env();
    rec_t a, b, c;
    gw_pg_t *pg = new_pool(1, 8, 100, 300);
    start_and_wait(pg);
    uint64_t t0 = gw_mono_us();
    exec_ok(pg, "SELECT pg_sleep(5)", &a);
    exec_ok(pg, "SELECT 1", &b); /* pipelined behind it */
    wait_rec(&b, 10000);
    assert_int_equal(a.err, GW_EIO);
    assert_int_equal(b.err, GW_EIO);
    assert_true(gw_mono_us() - t0 < 3000000u);
    assert_true(run_until(pool_all_up, pg, 10000));
    exec_ok(pg, "SELECT 7", &c);
    wait_rec(&c, 10000);
    assert_int_equal(c.err, GW_OK);
    assert_string_equal(c.v0, "7");
    close_pool(pg);
}

static void close_order_cb(void *arg)
{
    int *order = arg;
    *order = ++seq_no;
}

/* gw_pg_close: queued jobs GW_ECANCELED at once, the in-flight one finishes,
 * then done; a pool closed while connecting, or never started, closes too. */
static void test_close(void **state)
{
    (void)state;
    need_env();
    rec_t a, b, c;
    gw_pg_t *pg = new_pool(1, 1, 100, 0);
    start_and_wait(pg);
    seq_no = 0;
    exec_ok(pg, "SELECT pg_sleep(0.3), 'gwtest-close'", &a);
    exec_ok(pg, "SELECT 2", &b);
    exec_ok(pg, "SELECT 3", &c);
    wait_active("gwtest-close", 1);
    int done_at = 0;
    gw_pg_close(pg, close_order_cb, &done_at);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.err, GW_ECANCELED);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.err, GW_ECANCELED);
    assert_int_equal(a.calls, 0);
    assert_int_equal(gw_pg_exec_sql(pg, "SELECT 1", 0, NULL, rec_cb, &b), GW_ECANCELED);
    assert_true(run_until(flag_set, &done_at, 10000));
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.err, GW_OK);
    assert_true(a.seq < done_at);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_alive(&loop), 0);

    pg = new_pool(3, 1, 100, 0);
    gw_pg_start(pg); /* still connecting */
    close_pool(pg);

    pg = new_pool(2, 1, 100, 0); /* never started */
    close_pool(pg);
}

/* ---- migrations ---- */

/* conninfo with search_path set to schema (works for URIs and key=value). */
static char *conninfo_with_schema(const char *schema)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    if (opts == NULL) fail_msg("cannot parse GW_TEST_PG_CONNINFO: %s", err ? err : "?");
    gw_buf_t b;
    gw_buf_init(&b, 8192);
    int have_options = 0;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (o->val == NULL) continue;
        char val[1024];
        if (strcmp(o->keyword, "options") == 0) {
            snprintf(val, sizeof(val), "-csearch_path=%s %s", schema, o->val);
            have_options = 1;
        } else {
            snprintf(val, sizeof(val), "%s", o->val);
        }
        gw_buf_appendf(&b, "%s='", o->keyword);
        for (const char *p = val; *p; p++) {
            if (*p == '\'' || *p == '\\') gw_buf_append(&b, "\\", 1);
            gw_buf_append(&b, p, 1);
        }
        gw_buf_appends(&b, "' ");
    }
    if (!have_options) gw_buf_appendf(&b, "options='-csearch_path=%s'", schema);
    PQconninfoFree(opts);
    return b.data;
}

static void drop_schema(const char *schema)
{
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    side_sql(sql);
}

static void create_schema(const char *schema)
{
    char sql[256];
    drop_schema(schema);
    snprintf(sql, sizeof(sql), "CREATE SCHEMA %s", schema);
    side_sql(sql);
}

static const gw_migration_t mig2[] = {
    { 1, "0001_a", "CREATE TABLE mig_a (id int);\nINSERT INTO mig_a VALUES (1);\n" },
    { 2, "0002_b", "CREATE TABLE mig_b (id int);\n" },
    { 0, 0, 0 },
};
static const gw_migration_t mig3[] = {
    { 1, "0001_a", "CREATE TABLE mig_a (id int);\nINSERT INTO mig_a VALUES (1);\n" },
    { 2, "0002_b", "CREATE TABLE mig_b (id int);\n" },
    { 3, "0003_c", "ALTER TABLE mig_b ADD COLUMN v text;\n" },
    { 0, 0, 0 },
};
static const gw_migration_t mig4_bad[] = {
    { 1, "0001_a", "CREATE TABLE mig_a (id int);\nINSERT INTO mig_a VALUES (1);\n" },
    { 2, "0002_b", "CREATE TABLE mig_b (id int);\n" },
    { 3, "0003_c", "ALTER TABLE mig_b ADD COLUMN v text;\n" },
    { 4, "0004_bad", "CREATE TABLE mig_d (id int);\nSELEC broken;\n" },
    { 0, 0, 0 },
};

static void test_migrate_list(void **state)
{
    (void)state;
    need_env();
    char schema[64], sql[256], err[512];
    int applied = -1;
    snprintf(schema, sizeof(schema), "gwtest_mig_%d", (int)getpid());
    create_schema(schema);
    char *ci = conninfo_with_schema(schema);

    assert_int_equal(gw__pg_migrate(ci, mig2, &applied, err, sizeof(err)), GW_OK);
    assert_int_equal(applied, 2);
    assert_int_equal(gw__pg_migrate(ci, mig2, &applied, err, sizeof(err)), GW_OK);
    assert_int_equal(applied, 0);
    assert_int_equal(gw__pg_migrate(ci, mig3, &applied, err, sizeof(err)), GW_OK);
    assert_int_equal(applied, 1);
    snprintf(sql, sizeof(sql), "SELECT string_agg(version || ':' || name, ',' ORDER BY version) "
             "FROM %s.schema_migrations", schema);
    assert_string_equal(side_sql(sql), "1:0001_a,2:0002_b,3:0003_c");

    /* a failing migration: nothing of it stays, the error names it */
    assert_int_equal(gw__pg_migrate(ci, mig4_bad, &applied, err, sizeof(err)), GW_ESTATE);
    assert_int_equal(applied, 0);
    assert_non_null(strstr(err, "0004_bad"));
    assert_non_null(strstr(err, "42601"));
    assert_string_equal(side_sql(sql), "1:0001_a,2:0002_b,3:0003_c");
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_tables WHERE schemaname = '%s' "
             "AND tablename = 'mig_d'", schema);
    assert_string_equal(side_sql(sql), "0");

    /* unreachable server */
    assert_int_equal(gw__pg_migrate("host=127.0.0.1 port=1 connect_timeout=2", mig2, &applied, err,
                                    sizeof(err)),
                     GW_EUNAVAIL);
    assert_non_null(strstr(err, "connect"));

    free(ci);
    drop_schema(schema);
}

typedef struct mig_thread {
    const char *ci;
    int applied;
    gw_err_t rc;
    char err[256];
} mig_thread_t;

static void *mig_thread_main(void *arg)
{
    mig_thread_t *t = arg;
    t->rc = gw__pg_migrate(t->ci, mig3, &t->applied, t->err, sizeof(t->err));
    return NULL;
}

/* Nodes starting at once: the advisory lock makes each migration apply once. */
static void test_migrate_concurrent(void **state)
{
    (void)state;
    need_env();
    enum { T = 4 };
    char schema[64];
    snprintf(schema, sizeof(schema), "gwtest_migc_%d", (int)getpid());
    create_schema(schema);
    char *ci = conninfo_with_schema(schema);
    mig_thread_t t[T];
    pthread_t tid[T];
    for (int i = 0; i < T; i++) {
        memset(&t[i], 0, sizeof(t[i]));
        t[i].ci = ci;
        assert_int_equal(pthread_create(&tid[i], NULL, mig_thread_main, &t[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(tid[i], NULL);
        if (t[i].rc != GW_OK) fail_msg("thread %d: %s", i, t[i].err);
        total += t[i].applied;
    }
    assert_int_equal(total, 3);
    free(ci);
    drop_schema(schema);
}

/* gw_pg_migrate_sync with the migrations built in (storage/migrations/NNNN_*.sql),
 * in a schema of its own: all apply, a second run applies none. */
static void test_migrate_sync(void **state)
{
    (void)state;
    need_env();
    char schema[64], sql[256], err[512];
    int n = 0, applied = -1;
    while (gw_migrations[n].version != 0) n++;
    snprintf(schema, sizeof(schema), "gwtest_migs_%d", (int)getpid());
    create_schema(schema);
    char *ci = conninfo_with_schema(schema);

    if (gw_pg_migrate_sync(ci, &applied, err, sizeof(err)) != GW_OK)
        fail_msg("gw_pg_migrate_sync: %s", err);
    assert_int_equal(applied, n);
    assert_int_equal(gw_pg_migrate_sync(ci, &applied, err, sizeof(err)), GW_OK);
    assert_int_equal(applied, 0);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.schema_migrations", schema);
    char want[16];
    snprintf(want, sizeof(want), "%d", n);
    assert_string_equal(side_sql(sql), want);
    for (int i = 0; i < n; i++) {
        snprintf(sql, sizeof(sql), "SELECT name FROM %s.schema_migrations WHERE version = %d", schema,
                 gw_migrations[i].version);
        assert_string_equal(side_sql(sql), gw_migrations[i].name);
    }
    free(ci);
    drop_schema(schema);
}

/* ---- batches (gw_pg_batchable) ---- */

/*
 * The SQL objects of one batch test, named after the test and the process:
 *
 *   TBL (k int PRIMARY KEY, v text, via text, tx bigint): what was written.
 *   IMPL(a jsonb, b text, how text) -> text: inserts (a->>'k', b, how,
 *       txid_current()), raises P0001 when a->>'fail' is true, and returns
 *       "k|s|b" (s = a->>'s', a NULL b as "<null>").
 *   ONE(a jsonb, b text): the single form, IMPL(a, b, 'one').
 *   MANY(p jsonb) -> (r text, i int): the batch form.  It first checks that
 *       every element is [object, string or null] (parameter 0 embedded as
 *       JSON, parameter 1 as a JSON string), raising otherwise, then per
 *       element does what the variant says (B_PLAIN: one row from
 *       IMPL(a, b, 'many')).
 *
 * So a row's `via` tells whether the batch or the single statement wrote
 * it, and its `tx` which transaction.
 */
enum bvariant {
    B_PLAIN,      /* one row per element, in array order */
    B_GAPS,       /* k%4 = 0: no row; 1: NULL r; 2: the row, then rows with
                     bad indexes (out of range, a repeat of its own) */
    B_NULL_INDEX, /* first a row ('bogus', NULL i), then B_PLAIN */
    B_SLOW        /* pg_sleep(sleep_s) first, then B_PLAIN */
};

typedef struct bsql {
    char tbl[64], impl[64], one[64], many[64];
    char one_sql[160], many_sql[160];
} bsql_t;

static void bsql_drop(const bsql_t *s)
{
    char sql[512];
    snprintf(sql, sizeof(sql),
             "DROP FUNCTION IF EXISTS %s(jsonb); DROP FUNCTION IF EXISTS %s(jsonb, text); "
             "DROP FUNCTION IF EXISTS %s(jsonb, text, text); DROP TABLE IF EXISTS %s",
             s->many, s->one, s->impl, s->tbl);
    side_sql(sql);
}

static void bsql_create(bsql_t *s, const char *tag, enum bvariant v, double sleep_s)
{
    int pid = (int)getpid();
    snprintf(s->tbl, sizeof(s->tbl), "gwtest_%s_%d", tag, pid);
    snprintf(s->impl, sizeof(s->impl), "gwtest_%s_%d_impl", tag, pid);
    snprintf(s->one, sizeof(s->one), "gwtest_%s_%d_one", tag, pid);
    snprintf(s->many, sizeof(s->many), "gwtest_%s_%d_many", tag, pid);
    snprintf(s->one_sql, sizeof(s->one_sql), "SELECT %s($1::jsonb, $2)", s->one);
    snprintf(s->many_sql, sizeof(s->many_sql), "SELECT r, i FROM %s($1::jsonb)", s->many);
    bsql_drop(s);

    char row[256];
    snprintf(row, sizeof(row), "i := e.n; r := %s(e.a->0, e.a->>1, 'many'); RETURN NEXT;", s->impl);
    gw_buf_t b;
    gw_buf_init(&b, 1u << 16);
    gw_buf_appendf(&b,
                   "CREATE TABLE %s (k int PRIMARY KEY, v text, via text NOT NULL, tx bigint NOT NULL);\n"
                   "CREATE FUNCTION %s(a jsonb, b text, how text) RETURNS text LANGUAGE plpgsql AS $f$\n"
                   "BEGIN\n"
                   "  IF (a->>'fail')::boolean THEN\n"
                   "    RAISE EXCEPTION 'gwtest: element %% fails', a->>'k';\n"
                   "  END IF;\n"
                   "  INSERT INTO %s VALUES ((a->>'k')::int, b, how, txid_current());\n"
                   "  RETURN (a->>'k') || '|' || coalesce(a->>'s', '') || '|' || coalesce(b, '<null>');\n"
                   "END $f$;\n"
                   "CREATE FUNCTION %s(a jsonb, b text) RETURNS text LANGUAGE sql AS $f$\n"
                   "  SELECT %s(a, b, 'one') $f$;\n",
                   s->tbl, s->impl, s->tbl, s->one, s->impl);
    gw_buf_appendf(&b,
                   "CREATE FUNCTION %s(p jsonb) RETURNS TABLE (r text, i int) LANGUAGE plpgsql AS $f$\n"
                   "DECLARE\n"
                   "  e record;\n"
                   "  k int;\n"
                   "BEGIN\n",
                   s->many);
    if (v == B_SLOW) gw_buf_appendf(&b, "  PERFORM pg_sleep(%g);\n", sleep_s);
    if (v == B_NULL_INDEX) gw_buf_appends(&b, "  i := NULL; r := 'bogus'; RETURN NEXT;\n");
    gw_buf_appends(&b,
                   "  FOR e IN SELECT (x.ord - 1)::int AS n, x.v AS a\n"
                   "             FROM jsonb_array_elements(p) WITH ORDINALITY AS x(v, ord)\n"
                   "            ORDER BY x.ord LOOP\n"
                   "    IF jsonb_typeof(e.a) <> 'array' OR jsonb_array_length(e.a) <> 2\n"
                   "       OR jsonb_typeof(e.a->0) <> 'object'\n"
                   "       OR jsonb_typeof(e.a->1) NOT IN ('string', 'null') THEN\n"
                   "      RAISE EXCEPTION 'gwtest: element % is not [object, string|null]', e.n;\n"
                   "    END IF;\n"
                   "    k := (e.a->0->>'k')::int;\n");
    if (v == B_GAPS) {
        gw_buf_appends(&b,
                       "    IF k % 4 = 0 THEN CONTINUE; END IF;\n"
                       "    IF k % 4 = 1 THEN i := e.n; r := NULL; RETURN NEXT; CONTINUE; END IF;\n");
        gw_buf_appendf(&b, "    %s\n", row);
        gw_buf_appends(&b,
                       "    IF k % 4 = 2 THEN\n"
                       "      i := jsonb_array_length(p); r := 'bogus'; RETURN NEXT;\n"
                       "      i := 999; r := 'bogus'; RETURN NEXT;\n"
                       "      i := -1; r := 'bogus'; RETURN NEXT;\n"
                       "      i := e.n; r := 'repeat'; RETURN NEXT;\n"
                       "    END IF;\n");
    } else {
        gw_buf_appendf(&b, "    %s\n", row);
    }
    gw_buf_appends(&b, "  END LOOP;\nEND $f$;\n");
    side_sql(b.data);
    gw_buf_free(&b);
}

static int side_int(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int side_int(const char *fmt, ...)
{
    char sql[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    return num(side_sql(sql));
}

/* One batchable job's outcome. */
typedef struct bjob {
    int calls;
    gw_err_t err;
    int has_res;
    ExecStatusType st;
    int ntuples, isnull;
    char sqlstate[8];
    char v0[4200];
    char want[4200];
} bjob_t;

static void bjob_cb(void *udata, gw_err_t err, PGresult *res)
{
    bjob_t *j = udata;
    j->calls++;
    j->err = err;
    j->has_res = res != NULL;
    if (res == NULL) return;
    j->st = PQresultStatus(res);
    const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    snprintf(j->sqlstate, sizeof(j->sqlstate), "%s", s ? s : "");
    j->ntuples = PQntuples(res);
    if (j->ntuples > 0 && PQnfields(res) > 0) {
        j->isnull = PQgetisnull(res, 0, 0);
        snprintf(j->v0, sizeof(j->v0), "%s", PQgetvalue(res, 0, 0));
    }
}

typedef struct bjobs {
    bjob_t *j;
    int n;
} bjobs_t;

static int bjobs_done(void *arg)
{
    bjobs_t *b = arg;
    for (int i = 0; i < b->n; i++)
        if (b->j[i].calls == 0) return 0;
    return 1;
}

static void wait_bjobs(bjob_t *j, int n, int ms)
{
    bjobs_t b = { j, n };
    if (!run_until(bjobs_done, &b, ms)) fail_msg("batchable jobs not completed after %d ms", ms);
}

/* Submits a job of stmt (the single form) with parameter 0 the JSON text a
 * and parameter 1 b (NULL: SQL NULL); want is its expected result. */
static gw_err_t bjob_submit_raw(gw_pg_t *pg, const char *stmt, bjob_t *j, const char *a,
                                const char *b, const char *want)
{
    memset(j, 0, sizeof(*j));
    snprintf(j->want, sizeof(j->want), "%s", want ? want : "");
    const char *v[2] = { a, b };
    return gw_pg_exec(pg, stmt, 2, v, bjob_cb, j);
}

/* Job k: parameter 0 {"k": k, "s": "q\"\u00e9\\"} (with "fail": true when
 * fail), parameter 1 b.  Expected result "k|q\"é\\|b". */
static gw_err_t bjob_submit(gw_pg_t *pg, const char *stmt, bjob_t *j, int k, const char *b, int fail)
{
    size_t wlen = strlen(b ? b : "") + 64;
    char a[128], *want = malloc(wlen);
    assert_non_null(want);
    snprintf(a, sizeof(a), "{\"k\": %d, \"s\": \"q\\\"\\u00e9\\\\\"%s}", k,
             fail ? ", \"fail\": true" : "");
    snprintf(want, wlen, "%d|q\"\xc3\xa9\\|%s", k, b ? b : "<null>");
    gw_err_t rc = bjob_submit_raw(pg, stmt, j, a, b, want);
    free(want);
    return rc;
}

/* The _count of a histogram's series for statement stmt in the metrics
 * (this process's, cumulative), 0 when the series is not there. */
static long long metric_count(const char *name, const char *stmt)
{
    gw_buf_t out;
    gw_buf_init(&out, (size_t)1 << 24);
    assert_int_equal(gw_metrics_render(&out), GW_OK);
    char want[256];
    snprintf(want, sizeof(want), "%s_count{statement=\"%s\"} ", name, stmt);
    const char *p = out.data ? strstr(out.data, want) : NULL;
    long long v = p ? atoll(p + strlen(want)) : 0;
    gw_buf_free(&out);
    return v;
}

static gw_pg_t *batch_pool(const bsql_t *s, int size, int pipeline, int max_batch)
{
    gw_pg_t *pg = new_pool(size, pipeline, 1000, 0);
    assert_int_equal(gw_pg_prepare(pg, s->one, s->one_sql), GW_OK);
    assert_int_equal(gw_pg_prepare(pg, s->many, s->many_sql), GW_OK);
    assert_int_equal(gw_pg_batchable(pg, s->one, s->many, 1u, max_batch), GW_OK);
    start_and_wait(pg);
    return pg;
}

/* Text parameters that JSON must escape, or that look like JSON but are
 * strings; NULL is SQL NULL. */
static const char *const tricky[] = {
    "plain",
    "double \"quotes\" inside",
    "back\\slash, \\\\ two, \\u0041 not an escape, \\n neither",
    "tab\there, newline\nhere, cr\rhere",
    "control \x01\x02\x1f bytes and DEL \x7f",
    "UTF-8 \xc5\xbc\xc3\xb3\xc5\x82\xc4\x87 \xe2\x82\xac \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80",
    NULL,
    "",
    "null",
    "{\"k\": 1}",
    "[1, 2]",
    "123",
    "it's 'single'; -- $1 ]}, [{",
    "\"",
    "\\",
    "\x1b[0m ends with a backslash \\",
};
#define NTRICKY ((int)(sizeof(tricky) / sizeof(tricky[0])))

/* 1. Jobs queued in one loop turn go as batches of at most max_batch (in
 * one transaction each), between jobs of other statements; every callback
 * gets exactly its own result, once, with parameters that need escaping. */
static void test_batch_one_turn(void **state)
{
    (void)state;
    need_env();
    enum { N = 20, MAXB = 8, NOTHER = 7 };
    bsql_t s;
    bsql_create(&s, "bturn", B_PLAIN, 0);
    gw_pg_t *pg = batch_pool(&s, 2, 4, MAXB);
    uint64_t nb = 99, nj = 99;
    gw_pg_batch_counts(pg, &nb, &nj);
    assert_int_equal(nb, 0);
    assert_int_equal(nj, 0);

    char lng[4001]; /* also past the batch parameter's first buffer */
    for (int i = 0; i < 1000; i++) memcpy(lng + 4 * i, "ab\"\\", 4);
    lng[4000] = '\0';

    bjob_t *j = calloc(N, sizeof(*j));
    assert_non_null(j);
    rec_t other[NOTHER];
    memset(other, 0, sizeof(other));
    int o = 0, nullk = -1;
    for (int k = 0; k < N; k++) {
        const char *b = k == N - 1 ? lng : tricky[k % NTRICKY];
        if (b == NULL) nullk = k;
        assert_int_equal(bjob_submit(pg, s.one, &j[k], k, b, 0), GW_OK);
        if (k % 3 == 1 && o < NOTHER) { /* other statements in between */
            char v[16];
            snprintf(v, sizeof(v), "%d", k);
            const char *vals[1] = { v };
            assert_int_equal(gw_pg_exec_sql(pg, "SELECT $1::int * 2", 1, vals, rec_cb, &other[o++]),
                             GW_OK);
        }
    }
    assert_int_equal(o, NOTHER);
    assert_int_equal(gw_pg_pending(pg), N + NOTHER);
    wait_bjobs(j, N, 10000);
    wait_recs(other, NOTHER, 10000);
    run_for(50); /* no second callback */
    gw_pg_batch_counts(pg, &nb, &nj);
    int pending = gw_pg_pending(pg);
    int rows = side_int("SELECT count(*) FROM %s", s.tbl);
    int rows_many = side_int("SELECT count(*) FROM %s WHERE via = 'many'", s.tbl);
    int ntx = side_int("SELECT count(DISTINCT tx) FROM %s", s.tbl);
    int biggest = side_int("SELECT max(c) FROM (SELECT count(*) c FROM %s GROUP BY tx) t", s.tbl);
    int nulls = side_int("SELECT count(*) FROM %s WHERE v IS NULL", s.tbl);
    int nullrow = side_int("SELECT coalesce(min(k), -1) FROM %s WHERE v IS NULL", s.tbl);
    int lngrow = side_int("SELECT count(*) FROM %s WHERE k = %d AND v = repeat('ab\"\\', 1000)",
                          s.tbl, N - 1);
    /* the latency metrics: one observation per statement sent, a batch once */
    long long q_many = metric_count("paygate_pg_query_duration_seconds", s.many);
    long long w_many = metric_count("paygate_pg_wait_seconds", s.many);
    long long q_one = metric_count("paygate_pg_query_duration_seconds", s.one);
    long long q_sql = metric_count("paygate_pg_query_duration_seconds", "sql");
    close_pool(pg);
    bsql_drop(&s);

    for (int k = 0; k < N; k++) {
        assert_int_equal(j[k].calls, 1);
        if (j[k].err != GW_OK) fail_msg("job %d: %s", k, gw_err_name(j[k].err));
        assert_int_equal(j[k].st, PGRES_TUPLES_OK);
        assert_int_equal(j[k].ntuples, 1);
        assert_false(j[k].isnull);
        if (strcmp(j[k].v0, j[k].want) != 0)
            fail_msg("job %d: got \"%s\", want \"%s\"", k, j[k].v0, j[k].want);
    }
    for (int i = 0; i < NOTHER; i++) {
        assert_int_equal(other[i].calls, 1);
        assert_int_equal(other[i].err, GW_OK);
        assert_int_equal(num(other[i].v0), 2 * (3 * i + 1));
    }
    assert_int_equal(pending, 0);
    /* at least ceil(20 / 8) batches, each a transaction of at most 8 rows,
     * carrying all 20 jobs, each written by the batch form */
    assert_true(nb >= (N + MAXB - 1) / MAXB);
    assert_true(nb < N);
    assert_int_equal(nj, N);
    assert_int_equal(rows, N);
    assert_int_equal(rows_many, N);
    assert_int_equal(ntx, (int)nb);
    assert_true(biggest <= MAXB);
    assert_int_equal(nulls, 1);
    assert_int_equal(nullrow, nullk);
    assert_int_equal(lngrow, 1);
    assert_int_equal(q_many, (long long)nb);
    assert_int_equal(w_many, (long long)nb);
    assert_int_equal(q_one, 0); /* every job went in a batch */
    assert_true(q_sql >= NOTHER);
    free(j);
}

/* 2. A batch is one transaction; a job alone in its turn (or alone among
 * other statements' jobs) is sent as the single statement. */
static void test_batch_one_transaction(void **state)
{
    (void)state;
    need_env();
    enum { N = 10 };
    bsql_t s;
    bsql_create(&s, "btx", B_PLAIN, 0);
    gw_pg_t *pg = batch_pool(&s, 1, 8, 64);

    bjob_t j[N], lone[2];
    for (int k = 0; k < N; k++)
        assert_int_equal(bjob_submit(pg, s.one, &j[k], k, tricky[k % NTRICKY], 0), GW_OK);
    wait_bjobs(j, N, 10000);
    uint64_t nb1, nj1, nb2, nj2, nb3, nj3;
    gw_pg_batch_counts(pg, &nb1, &nj1);
    int ntx1 = side_int("SELECT count(DISTINCT tx) FROM %s", s.tbl);
    int many1 = side_int("SELECT count(*) FROM %s WHERE via = 'many'", s.tbl);

    /* later turn, nothing else queued */
    assert_int_equal(bjob_submit(pg, s.one, &lone[0], 100, "alone", 0), GW_OK);
    wait_bjobs(&lone[0], 1, 10000);
    gw_pg_batch_counts(pg, &nb2, &nj2);

    /* later turn, only other statements' jobs with it */
    rec_t other[2];
    exec_ok(pg, "SELECT 1", &other[0]);
    assert_int_equal(bjob_submit(pg, s.one, &lone[1], 101, NULL, 0), GW_OK);
    exec_ok(pg, "SELECT 2", &other[1]);
    wait_bjobs(&lone[1], 1, 10000);
    wait_recs(other, 2, 10000);
    gw_pg_batch_counts(pg, &nb3, &nj3);

    int ntx = side_int("SELECT count(DISTINCT tx) FROM %s", s.tbl);
    int rows = side_int("SELECT count(*) FROM %s", s.tbl);
    int lone_one = side_int("SELECT count(*) FROM %s WHERE k IN (100, 101) AND via = 'one'", s.tbl);
    close_pool(pg);
    bsql_drop(&s);

    for (int k = 0; k < N; k++) {
        assert_int_equal(j[k].calls, 1);
        assert_int_equal(j[k].err, GW_OK);
        assert_string_equal(j[k].v0, j[k].want);
    }
    assert_int_equal(nb1, 1);
    assert_int_equal(nj1, N);
    assert_int_equal(many1, N);
    assert_int_equal(ntx1, 1); /* every element in the same transaction */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(lone[i].calls, 1);
        assert_int_equal(lone[i].err, GW_OK);
        assert_string_equal(lone[i].v0, lone[i].want);
        assert_int_equal(other[i].err, GW_OK);
        assert_int_equal(num(other[i].v0), i + 1);
    }
    assert_int_equal(nb2, 1);
    assert_int_equal(nj2, N);
    assert_int_equal(nb3, 1);
    assert_int_equal(nj3, N);
    assert_int_equal(lone_one, 2);
    assert_int_equal(rows, N + 2);
    assert_int_equal(ntx, 3);
}

/* 3. One element fails: the batch rolls back and every job runs alone; only
 * the bad one fails.  The same when a raw (JSON) parameter is not JSON, so
 * that the batch's parameter itself is invalid. */
static void test_batch_failure_reruns(void **state)
{
    (void)state;
    need_env();
    enum { N = 12, BAD = 9, N2 = 6, BAD2 = 3 };
    bsql_t s;
    bsql_create(&s, "bfail", B_PLAIN, 0);
    gw_pg_t *pg = batch_pool(&s, 1, 8, 64);

    /* BAD is late in the array: rows for 0..8 were written, then undone */
    bjob_t j[N], j2[N2];
    for (int k = 0; k < N; k++)
        assert_int_equal(bjob_submit(pg, s.one, &j[k], k, tricky[k % NTRICKY], k == BAD), GW_OK);
    wait_bjobs(j, N, 10000);
    run_for(50);
    uint64_t nb1, nj1, nb2, nj2;
    gw_pg_batch_counts(pg, &nb1, &nj1);
    int rows1 = side_int("SELECT count(*) FROM %s", s.tbl);
    int many1 = side_int("SELECT count(*) FROM %s WHERE via = 'many'", s.tbl);
    int bad1 = side_int("SELECT count(*) FROM %s WHERE k = %d", s.tbl, BAD);
    int ntx1 = side_int("SELECT count(DISTINCT tx) FROM %s", s.tbl);

    for (int k = 0; k < N2; k++) {
        if (k == BAD2) {
            assert_int_equal(bjob_submit_raw(pg, s.one, &j2[k], "{\"k\": 103, broken", "x", NULL),
                             GW_OK);
        } else {
            assert_int_equal(bjob_submit(pg, s.one, &j2[k], 100 + k, "y", 0), GW_OK);
        }
    }
    wait_bjobs(j2, N2, 10000);
    run_for(50);
    gw_pg_batch_counts(pg, &nb2, &nj2);
    int rows2 = side_int("SELECT count(*) FROM %s WHERE k >= 100", s.tbl);
    int many2 = side_int("SELECT count(*) FROM %s WHERE via = 'many'", s.tbl);
    close_pool(pg);
    bsql_drop(&s);

    for (int k = 0; k < N; k++) {
        assert_int_equal(j[k].calls, 1);
        if (k == BAD) {
            assert_int_equal(j[k].err, GW_ESTATE);
            assert_true(j[k].has_res);
            assert_string_equal(j[k].sqlstate, "P0001");
        } else {
            if (j[k].err != GW_OK) fail_msg("job %d: %s", k, gw_err_name(j[k].err));
            assert_string_equal(j[k].v0, j[k].want);
        }
    }
    assert_int_equal(nb1, 1);  /* the failed batch; the re-runs went alone */
    assert_int_equal(nj1, N);
    assert_int_equal(rows1, N - 1);
    assert_int_equal(many1, 0); /* nothing of the batch attempt remains */
    assert_int_equal(bad1, 0);
    assert_int_equal(ntx1, N - 1); /* one transaction each */

    for (int k = 0; k < N2; k++) {
        assert_int_equal(j2[k].calls, 1);
        if (k == BAD2) {
            assert_int_equal(j2[k].err, GW_ESTATE);
            assert_string_equal(j2[k].sqlstate, "22P02"); /* invalid JSON */
        } else {
            if (j2[k].err != GW_OK) fail_msg("job2 %d: %s", k, gw_err_name(j2[k].err));
            assert_string_equal(j2[k].v0, j2[k].want);
        }
    }
    assert_int_equal(nb2, 2);
    assert_int_equal(nj2, N + N2);
    assert_int_equal(rows2, N2 - 1);
    assert_int_equal(many2, 0);
}

/* 4. Jobs the batch returns no row for, or a NULL r, or only rows with bad
 * indexes besides their own, get their result from the single statement;
 * stray rows reach nobody. */
static void test_batch_missing_rows(void **state)
{
    (void)state;
    need_env();
    enum { N = 16 };
    bsql_t s;
    bsql_create(&s, "bgap", B_GAPS, 0);
    gw_pg_t *pg = batch_pool(&s, 2, 8, 64);

    bjob_t j[N];
    for (int k = 0; k < N; k++)
        assert_int_equal(bjob_submit(pg, s.one, &j[k], k, tricky[k % NTRICKY], 0), GW_OK);
    wait_bjobs(j, N, 10000);
    run_for(50);
    uint64_t nb, nj;
    gw_pg_batch_counts(pg, &nb, &nj);
    char one_ks[128], many_ks[128];
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT string_agg(k::text, ',' ORDER BY k) FROM %s WHERE via = 'one'",
             s.tbl);
    snprintf(one_ks, sizeof(one_ks), "%s", side_sql(sql));
    snprintf(sql, sizeof(sql), "SELECT string_agg(k::text, ',' ORDER BY k) FROM %s WHERE via = 'many'",
             s.tbl);
    snprintf(many_ks, sizeof(many_ks), "%s", side_sql(sql));
    int pending = gw_pg_pending(pg);
    close_pool(pg);
    bsql_drop(&s);

    for (int k = 0; k < N; k++) {
        assert_int_equal(j[k].calls, 1);
        if (j[k].err != GW_OK) fail_msg("job %d: %s", k, gw_err_name(j[k].err));
        assert_int_equal(j[k].ntuples, 1);
        assert_false(j[k].isnull);
        if (strcmp(j[k].v0, j[k].want) != 0)
            fail_msg("job %d: got \"%s\", want \"%s\"", k, j[k].v0, j[k].want);
    }
    assert_int_equal(nb, 1);
    assert_int_equal(nj, N);
    assert_string_equal(one_ks, "0,1,4,5,8,9,12,13");
    assert_string_equal(many_ks, "2,3,6,7,10,11,14,15");
    assert_int_equal(pending, 0);
}

/* gw_pg_exec_value: the first column of the first row, as text.  A batch
 * member gets its value from the batch's own result; members that the
 * batch leaves out (B_GAPS) run alone and still get theirs; value jobs and
 * result jobs mix in one batch.  No row and SQL NULL give NULL; an error
 * gives its code and NULL. */
static void vjob_cb(void *udata, gw_err_t err, const char *value, size_t len)
{
    bjob_t *j = udata;
    j->calls++;
    j->err = err;
    j->has_res = value != NULL;
    j->ntuples = value != NULL;
    j->isnull = value == NULL;
    if (value) {
        assert_int_equal(strlen(value), len);
        snprintf(j->v0, sizeof(j->v0), "%s", value);
    }
}

static void test_batch_values(void **state)
{
    (void)state;
    need_env();
    enum { N = 16 };
    bsql_t s;
    bsql_create(&s, "bval", B_GAPS, 0);
    gw_pg_t *pg = new_pool(2, 8, 1000, 0);
    assert_int_equal(gw_pg_prepare(pg, s.one, s.one_sql), GW_OK);
    assert_int_equal(gw_pg_prepare(pg, s.many, s.many_sql), GW_OK);
    assert_int_equal(gw_pg_batchable(pg, s.one, s.many, 1u, 64), GW_OK);
    assert_int_equal(gw_pg_prepare(pg, "v_none", "SELECT 1 WHERE false"), GW_OK);
    assert_int_equal(gw_pg_prepare(pg, "v_null", "SELECT NULL::text, 2"), GW_OK);
    assert_int_equal(gw_pg_prepare(pg, "v_fail", "SELECT 1 / (0 * $1::int)"), GW_OK);
    start_and_wait(pg);

    bjob_t j[N], none, null, fail;
    for (int k = 0; k < N; k++) {
        char a[64], want[64];
        const char *b = k % 5 == 0 ? NULL : "v";
        snprintf(a, sizeof(a), "{\"k\": %d, \"s\": \"x\"}", k);
        snprintf(want, sizeof(want), "%d|x|%s", k, b ? b : "<null>");
        memset(&j[k], 0, sizeof(j[k]));
        snprintf(j[k].want, sizeof(j[k].want), "%s", want);
        const char *v[2] = { a, b };
        if (k % 2) assert_int_equal(gw_pg_exec_value(pg, s.one, 2, v, vjob_cb, &j[k]), GW_OK);
        else assert_int_equal(gw_pg_exec(pg, s.one, 2, v, bjob_cb, &j[k]), GW_OK);
    }
    memset(&none, 0, sizeof(none));
    memset(&null, 0, sizeof(null));
    memset(&fail, 0, sizeof(fail));
    const char *one[1] = { "1" };
    assert_int_equal(gw_pg_exec_value(pg, "v_none", 0, NULL, vjob_cb, &none), GW_OK);
    assert_int_equal(gw_pg_exec_value(pg, "v_null", 0, NULL, vjob_cb, &null), GW_OK);
    assert_int_equal(gw_pg_exec_value(pg, "v_fail", 1, one, vjob_cb, &fail), GW_OK);
    assert_int_equal(gw_pg_exec_value(pg, NULL, 0, NULL, vjob_cb, &fail), GW_EINVAL);
    assert_int_equal(gw_pg_exec_value(pg, "v_none", 0, NULL, NULL, NULL), GW_EINVAL);
    wait_bjobs(j, N, 10000);
    wait_bjobs(&none, 1, 10000);
    wait_bjobs(&null, 1, 10000);
    wait_bjobs(&fail, 1, 10000);
    run_for(50); /* no second callback */
    uint64_t nb, nj;
    gw_pg_batch_counts(pg, &nb, &nj);
    int via_many = side_int("SELECT count(*) FROM %s WHERE via = 'many'", s.tbl);
    close_pool(pg);
    bsql_drop(&s);

    for (int k = 0; k < N; k++) {
        assert_int_equal(j[k].calls, 1);
        if (j[k].err != GW_OK) fail_msg("job %d: %s", k, gw_err_name(j[k].err));
        assert_false(j[k].isnull);
        if (strcmp(j[k].v0, j[k].want) != 0) fail_msg("job %d: got \"%s\", want \"%s\"", k, j[k].v0, j[k].want);
    }
    assert_int_equal(nb, 1);
    assert_int_equal(nj, N);
    assert_int_equal(via_many, N / 2); /* B_GAPS: half by the batch, half alone */
    assert_int_equal(none.calls, 1);
    assert_int_equal(none.err, GW_OK);
    assert_true(none.isnull);
    assert_int_equal(null.calls, 1);
    assert_int_equal(null.err, GW_OK);
    assert_true(null.isnull);
    assert_int_equal(fail.calls, 1);
    assert_int_equal(fail.err, GW_ESTATE);
    assert_true(fail.isnull);
}

/* 5. A unique violation in a batch: every job runs alone; the duplicates
 * get GW_ECONFLICT, the others succeed. */
static void test_batch_unique_violation(void **state)
{
    (void)state;
    need_env();
    enum { N = 10, DUP = 3 };
    bsql_t s;
    bsql_create(&s, "buniq", B_PLAIN, 0);
    side_int("INSERT INTO %s VALUES (1003, 'there', 'side', 0)", s.tbl);
    gw_pg_t *pg = batch_pool(&s, 2, 8, 64);

    /* jobs 0..7: k 1000..1007 (1003 exists); jobs 8, 9: both k 2000 */
    bjob_t j[N];
    for (int k = 0; k < N; k++)
        assert_int_equal(bjob_submit(pg, s.one, &j[k], k < 8 ? 1000 + k : 2000, "u", 0), GW_OK);
    wait_bjobs(j, N, 10000);
    run_for(50);
    uint64_t nb, nj;
    gw_pg_batch_counts(pg, &nb, &nj);
    int rows = side_int("SELECT count(*) FROM %s", s.tbl);
    int many = side_int("SELECT count(*) FROM %s WHERE via = 'many'", s.tbl);
    int side = side_int("SELECT count(*) FROM %s WHERE k = 1003 AND via = 'side'", s.tbl);
    close_pool(pg);
    bsql_drop(&s);

    for (int k = 0; k < 8; k++) {
        assert_int_equal(j[k].calls, 1);
        if (k == DUP) {
            assert_int_equal(j[k].err, GW_ECONFLICT);
            assert_true(j[k].has_res);
            assert_string_equal(j[k].sqlstate, "23505");
        } else {
            if (j[k].err != GW_OK) fail_msg("job %d: %s", k, gw_err_name(j[k].err));
            assert_string_equal(j[k].v0, j[k].want);
        }
    }
    assert_int_equal(j[8].calls, 1);
    assert_int_equal(j[9].calls, 1);
    int ok = (j[8].err == GW_OK) + (j[9].err == GW_OK);
    int conflict = (j[8].err == GW_ECONFLICT) + (j[9].err == GW_ECONFLICT);
    assert_int_equal(ok, 1);
    assert_int_equal(conflict, 1);
    bjob_t *won = j[8].err == GW_OK ? &j[8] : &j[9];
    assert_string_equal(won->v0, won->want);
    assert_int_equal(nb, 1);
    assert_int_equal(nj, N);
    assert_int_equal(many, 0);
    assert_int_equal(side, 1);
    assert_int_equal(rows, 1 + 7 + 1);
}

/* 6. gw_pg_batchable's argument checks; a refused call registers nothing. */
static void test_batch_args(void **state)
{
    (void)state;
    need_env();
    bsql_t s;
    bsql_create(&s, "bargs", B_PLAIN, 0);
    gw_pg_t *pg = new_pool(1, 8, 100, 0);
    assert_int_equal(gw_pg_prepare(pg, s.one, s.one_sql), GW_OK);
    assert_int_equal(gw_pg_prepare(pg, s.many, s.many_sql), GW_OK);
    assert_int_equal(gw_pg_prepare(pg, "other", "SELECT $1::int + 1"), GW_OK);

    assert_int_equal(gw_pg_batchable(NULL, s.one, s.many, 1u, 8), GW_EINVAL);
    assert_int_equal(gw_pg_batchable(pg, NULL, s.many, 1u, 8), GW_EINVAL);
    assert_int_equal(gw_pg_batchable(pg, s.one, NULL, 1u, 8), GW_EINVAL);
    assert_int_equal(gw_pg_batchable(pg, "nosuch", s.many, 1u, 8), GW_EINVAL);
    assert_int_equal(gw_pg_batchable(pg, s.one, "nosuch", 1u, 8), GW_EINVAL);
    assert_int_equal(gw_pg_batchable(pg, s.one, s.one, 1u, 8), GW_EINVAL);
    assert_int_equal(gw_pg_batchable(pg, "other", "other", 0, 8), GW_EINVAL);
    assert_int_equal(gw_pg_batchable(pg, s.one, s.many, 1u, 1), GW_EINVAL);
    assert_int_equal(gw_pg_batchable(pg, s.one, s.many, 1u, 0), GW_EINVAL);
    assert_int_equal(gw_pg_batchable(pg, s.one, s.many, 1u, -5), GW_EINVAL);
    assert_int_equal(gw_pg_batchable(pg, "other", s.many, 0, 1), GW_EINVAL);
    assert_int_equal(gw_pg_batchable(pg, s.one, s.many, 1u, 2), GW_OK);
    start_and_wait(pg);
    /* after start, even a valid pair */
    assert_int_equal(gw_pg_batchable(pg, "other", s.many, 0, 8), GW_EINVAL);
    assert_int_equal(gw_pg_batchable(pg, s.one, s.many, 1u, 8), GW_EINVAL);

    /* "other" was never made batchable; one is, with max 2 (not 8) */
    rec_t r[3];
    bjob_t j[5];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < 3; i++) {
        char v[16];
        snprintf(v, sizeof(v), "%d", i);
        const char *vals[1] = { v };
        assert_int_equal(gw_pg_exec(pg, "other", 1, vals, rec_cb, &r[i]), GW_OK);
    }
    wait_recs(r, 3, 10000);
    uint64_t nb1, nj1, nb2, nj2, cb = 7, cj = 7;
    gw_pg_batch_counts(pg, &nb1, &nj1);
    for (int k = 0; k < 5; k++) assert_int_equal(bjob_submit(pg, s.one, &j[k], k, "a", 0), GW_OK);
    wait_bjobs(j, 5, 10000);
    gw_pg_batch_counts(pg, &nb2, &nj2);
    int ntx = side_int("SELECT count(DISTINCT tx) FROM %s WHERE via = 'many'", s.tbl);
    int biggest = side_int("SELECT max(c) FROM (SELECT count(*) c FROM %s GROUP BY tx) t", s.tbl);
    close_pool(pg);
    bsql_drop(&s);
    gw_pg_batch_counts(NULL, &cb, &cj);

    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].err, GW_OK);
        assert_int_equal(num(r[i].v0), i + 1);
    }
    assert_int_equal(nb1, 0);
    assert_int_equal(nj1, 0);
    for (int k = 0; k < 5; k++) {
        assert_int_equal(j[k].err, GW_OK);
        assert_string_equal(j[k].v0, j[k].want);
    }
    /* 5 jobs, at most 2 a batch: 2 + 2 and one alone */
    assert_int_equal(nb2, 2);
    assert_int_equal(nj2, 4);
    assert_int_equal(ntx, 2);
    assert_int_equal(biggest, 2);
    assert_int_equal(cb, 0);
    assert_int_equal(cj, 0);
}

/* 7. While a batch runs, gw_pg_pending counts the jobs it carries; when its
 * connection is lost all of them get GW_EIO (the outcome is unknown: none
 * is run again). */
static void test_batch_in_flight(void **state)
{
    (void)state;
    need_env();
    enum { N = 6 };
    bsql_t s;
    bsql_create(&s, "bslow", B_SLOW, 30);
    gw_pg_t *pg = batch_pool(&s, 1, 8, 64);

    bjob_t j[N];
    for (int k = 0; k < N; k++) assert_int_equal(bjob_submit(pg, s.one, &j[k], k, "z", 0), GW_OK);
    wait_active(s.many, 1);
    int pending_running = gw_pg_pending(pg);
    int calls_running = 0;
    for (int k = 0; k < N; k++) calls_running += j[k].calls;
    terminate(s.many);
    wait_bjobs(j, N, 10000);
    run_for(100);
    int pending_after = gw_pg_pending(pg);
    uint64_t nb, nj;
    gw_pg_batch_counts(pg, &nb, &nj);
    int up = run_until(pool_all_up, pg, 10000);
    int rows = side_int("SELECT count(*) FROM %s", s.tbl);
    close_pool(pg);
    bsql_drop(&s);

    assert_int_equal(calls_running, 0);
    for (int k = 0; k < N; k++) {
        assert_int_equal(j[k].calls, 1);
        assert_int_equal(j[k].err, GW_EIO);
        assert_false(j[k].has_res);
    }
    assert_int_equal(nb, 1);
    assert_int_equal(nj, N);
    assert_int_equal(rows, 0); /* not run again alone */
    assert_true(up);
    assert_int_equal(pending_after, 0);
    assert_int_equal(pending_running, N);
}

/* postgres.batch_inflight: with a batch of a statement in flight, the jobs
 * of that statement queued meanwhile — one per loop turn, which alone would
 * each go out by itself — wait, and go out together as the next batch when
 * it returns (group commit).  Without the limit the same submissions go out
 * one by one.  Other statements are not held. */
static void batch_cap_run(int cap, uint64_t *nb, uint64_t *nj, int *ntx, int *late_ok)
{
    enum { LATE = 10 };
    bsql_t s;
    bsql_create(&s, "bcap", B_SLOW, 0.4);
    gw_pg_opts_t o = { .conninfo = conninfo, .pool_size = 4, .max_pipeline = 8, .max_queue = 1000,
                       .reconnect_min_ms = 50, .reconnect_max_ms = 400, .batch_inflight = cap };
    gw_pg_t *pg = gw_pg_new(&loop, &o);
    assert_non_null(pg);
    assert_int_equal(gw_pg_prepare(pg, s.one, s.one_sql), GW_OK);
    assert_int_equal(gw_pg_prepare(pg, s.many, s.many_sql), GW_OK);
    assert_int_equal(gw_pg_batchable(pg, s.one, s.many, 1u, 64), GW_OK);
    start_and_wait(pg);

    bjob_t j[2 + LATE];
    assert_int_equal(bjob_submit(pg, s.one, &j[0], 0, "a", 0), GW_OK);
    assert_int_equal(bjob_submit(pg, s.one, &j[1], 1, "b", 0), GW_OK);
    wait_active(s.many, 1); /* the first batch (two jobs, 0.4 s) is running */
    rec_t other;
    memset(&other, 0, sizeof(other));
    for (int k = 2; k < 2 + LATE; k++) {
        assert_int_equal(bjob_submit(pg, s.one, &j[k], k, "late", 0), GW_OK);
        run_for(5);
    }
    /* another statement is not held behind the batch */
    assert_int_equal(gw_pg_exec_sql(pg, "SELECT 21 * 2", 0, NULL, rec_cb, &other), GW_OK);
    wait_recs(&other, 1, 300);
    wait_bjobs(j, 2 + LATE, 10000);
    run_for(50);
    gw_pg_batch_counts(pg, nb, nj);
    *ntx = side_int("SELECT count(DISTINCT tx) FROM %s", s.tbl);
    *late_ok = side_int("SELECT count(*) FROM %s WHERE k >= 2 AND v = 'late'", s.tbl);
    close_pool(pg);
    bsql_drop(&s);
    for (int k = 0; k < 2 + LATE; k++) {
        assert_int_equal(j[k].calls, 1);
        if (j[k].err != GW_OK) fail_msg("job %d: %s", k, gw_err_name(j[k].err));
    }
    assert_int_equal(other.calls, 1);
}

static void test_batch_inflight_cap(void **state)
{
    (void)state;
    need_env();
    uint64_t nb, nj;
    int ntx, late;
    batch_cap_run(1, &nb, &nj, &ntx, &late);
    assert_int_equal(late, 10);
    assert_int_equal(nb, 2);   /* the first two, then the ten held */
    assert_int_equal(nj, 12);
    assert_int_equal(ntx, 2);
    /* the control: no limit, each late job goes out in its own turn */
    batch_cap_run(0, &nb, &nj, &ntx, &late);
    assert_int_equal(late, 10);
    assert_int_equal(nb, 1);
    assert_int_equal(nj, 2);
    assert_int_equal(ntx, 11);
}

/* gw_pg_close with a batch in flight and batchable jobs queued: the queued
 * ones GW_ECANCELED at once, the batch's members complete, then done. */
static void test_batch_close(void **state)
{
    (void)state;
    need_env();
    enum { N = 5, Q = 3 };
    bsql_t s;
    bsql_create(&s, "bclose", B_SLOW, 1.0);
    gw_pg_t *pg = batch_pool(&s, 1, 8, 64);

    bjob_t j[N + Q];
    for (int k = 0; k < N; k++) assert_int_equal(bjob_submit(pg, s.one, &j[k], k, "c", 0), GW_OK);
    wait_active(s.many, 1);
    for (int k = N; k < N + Q; k++)
        assert_int_equal(bjob_submit(pg, s.one, &j[k], k, "c", 0), GW_OK);
    uint64_t nb, nj;
    gw_pg_batch_counts(pg, &nb, &nj);
    int closed = 0, cancelled_at_once = 0, early = 0;
    gw_pg_close(pg, closed_cb, &closed);
    for (int k = N; k < N + Q; k++) cancelled_at_once += j[k].calls == 1 && j[k].err == GW_ECANCELED;
    for (int k = 0; k < N; k++) early += j[k].calls;
    int ok = run_until(flag_set, &closed, 10000);
    uv_run(&loop, UV_RUN_NOWAIT);
    int alive = uv_loop_alive(&loop);
    int rows = side_int("SELECT count(*) FROM %s WHERE via = 'many'", s.tbl);
    bsql_drop(&s);

    assert_true(ok);
    assert_int_equal(alive, 0);
    assert_int_equal(nb, 1);
    assert_int_equal(nj, N);
    assert_int_equal(cancelled_at_once, Q);
    assert_int_equal(early, 0);
    for (int k = 0; k < N; k++) {
        assert_int_equal(j[k].calls, 1);
        assert_int_equal(j[k].err, GW_OK);
        assert_string_equal(j[k].v0, j[k].want);
    }
    for (int k = N; k < N + Q; k++) assert_int_equal(j[k].calls, 1);
    assert_int_equal(rows, N);
}

/* A row whose index i is NULL belongs to no job: it must not be taken as
 * job 0's (here it comes before job 0's own row). */
static void test_batch_null_index(void **state)
{
    (void)state;
    need_env();
    enum { N = 4 };
    bsql_t s;
    bsql_create(&s, "bnulli", B_NULL_INDEX, 0);
    gw_pg_t *pg = batch_pool(&s, 1, 8, 64);
    bjob_t j[N];
    for (int k = 0; k < N; k++) assert_int_equal(bjob_submit(pg, s.one, &j[k], k, "n", 0), GW_OK);
    wait_bjobs(j, N, 10000);
    run_for(50);
    uint64_t nb, nj;
    gw_pg_batch_counts(pg, &nb, &nj);
    close_pool(pg);
    bsql_drop(&s);

    assert_int_equal(nb, 1);
    assert_int_equal(nj, N);
    for (int k = 0; k < N; k++) {
        assert_int_equal(j[k].calls, 1);
        assert_int_equal(j[k].err, GW_OK);
        if (strcmp(j[k].v0, j[k].want) != 0)
            fail_msg("job %d: got \"%s\", want \"%s\"", k, j[k].v0, j[k].want);
    }
}

/* ------------------------------------------------------------------ main */

/* After a test that stops the server: start it again even when the test
 * failed half-way (start is a no-op on a running server). */
static int ensure_started(void **state)
{
    (void)state;
    if (pg_ctl != NULL && *pg_ctl != '\0') {
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "%s start", pg_ctl);
        if (system(cmd) != 0) return -1;
    }
    return 0;
}

static int setup(void **state)
{
    (void)state;
    return uv_loop_init(&loop);
}

static int teardown(void **state)
{
    (void)state;
    uv_run(&loop, UV_RUN_NOWAIT);
    return uv_loop_close(&loop);
}

int main(void)
{
    const char *lvl = getenv("GW_TEST_LOG_LEVEL");
    gw_log_level = lvl && gw_log_level_parse(lvl) >= 0 ? gw_log_level_parse(lvl) : GW_LOG_WARN;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_concurrent),
        cmocka_unit_test(test_large_results),
        cmocka_unit_test(test_errors_isolated),
        cmocka_unit_test(test_prepared),
        cmocka_unit_test(test_unavailable_and_busy),
        cmocka_unit_test(test_loss_semantics),
        cmocka_unit_test_teardown(test_server_restart, ensure_started),
        cmocka_unit_test(test_query_timeout),
        cmocka_unit_test(test_close),
        cmocka_unit_test(test_migrate_list),
        cmocka_unit_test(test_migrate_concurrent),
        cmocka_unit_test(test_migrate_sync),
        cmocka_unit_test(test_batch_one_turn),
        cmocka_unit_test(test_batch_one_transaction),
        cmocka_unit_test(test_batch_failure_reruns),
        cmocka_unit_test(test_batch_missing_rows),
        cmocka_unit_test(test_batch_unique_violation),
        cmocka_unit_test(test_batch_args),
        cmocka_unit_test(test_batch_in_flight),
        cmocka_unit_test(test_batch_inflight_cap),
        cmocka_unit_test(test_batch_close),
        cmocka_unit_test(test_batch_null_index),
        cmocka_unit_test(test_batch_values),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
