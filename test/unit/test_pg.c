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
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
