/*
 * test_redis.c — storage/redis.c against a real Redis (never a mock).
 *
 * Needs, from test/run.sh (test/lib/services.sh):
 *   GW_TEST_REDIS_PORT   port of a scratch Redis on GW_TEST_REDIS_HOST
 *                        (default 127.0.0.1)
 *   GW_TEST_REDIS_CTL    "$GW_TEST_REDIS_CTL stop|start" stops/starts it
 * Missing variables fail every test with a message saying so.
 *
 * Keys carry the process id.  test_auth sets requirepass for a moment and
 * clears it again; the tests that stop the server start it again.
 *
 * The Sentinel tests (test_sentinel_*) need no variable: they start real
 * redis-server processes of their own (data nodes and sentinels, daemonized,
 * on free loopback ports, in a temporary directory removed by their
 * teardown).  A failover with three sentinels (kill -9 the master) is in
 * test/integration/sentinel.test.js; here: discovery past dead, silent and
 * bad sentinels, a sentinel that answered asked first, ROLE, READONLY, the
 * periodic check, and closing while a sentinel is being asked.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gw.h"
#include "redis.h"

static uv_loop_t loop;
static const char *host;
static int port;
static const char *redis_ctl;

/* ------------------------------------------------------------------ helpers */

static void need_env(void)
{
    const char *p = getenv("GW_TEST_REDIS_PORT");
    redis_ctl = getenv("GW_TEST_REDIS_CTL");
    host = getenv("GW_TEST_REDIS_HOST");
    if (host == NULL || *host == '\0') host = "127.0.0.1";
    if (p == NULL || *p == '\0' || redis_ctl == NULL || *redis_ctl == '\0')
        fail_msg("GW_TEST_REDIS_PORT and GW_TEST_REDIS_CTL must be set: run the unit tests with "
                 "'make unit' (test/run.sh starts Redis through test/lib/services.sh), or start "
                 "one with 'bash test/lib/services.sh start DIR' and export "
                 "GW_TEST_REDIS_PORT=$REDIS_PORT GW_TEST_REDIS_CTL=$REDIS_CTL_CMD from "
                 "DIR/services.env");
    port = (int)strtol(p, NULL, 10);
    if (port <= 0 || port > 65535) fail_msg("GW_TEST_REDIS_PORT=%s is not a port", p);
}

static void ctl(const char *what)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s %s", redis_ctl, what);
    int rc = system(cmd);
    if (rc != 0) fail_msg("'%s' failed (status %d)", cmd, rc);
}

static void tick(uv_timer_t *t)
{
    (void)t;
}

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

static int is_up(void *arg)
{
    return gw_redis_up(arg);
}

static int is_down(void *arg)
{
    return !gw_redis_up(arg);
}

static void closed_cb(void *arg)
{
    (*(int *)arg)++;
}

/* Closes r; with last set, also checks that no handle is left. */
static void close_client_(gw_redis_t *r, int last)
{
    int closed = 0;
    gw_redis_close(r, closed_cb, &closed);
    assert_true(run_until(flag_set, &closed, 5000));
    assert_int_equal(closed, 1);
    uv_run(&loop, UV_RUN_NOWAIT);
    if (last) assert_int_equal(uv_loop_alive(&loop), 0);
}

static void close_client(gw_redis_t *r)
{
    close_client_(r, 1);
}

static gw_redis_t *client(int db, const char *password, int timeout_ms)
{
    gw_redis_opts_t o = {
        .host = host,
        .port = port,
        .password = password,
        .db = db,
        .reconnect_min_ms = 50,
        .reconnect_max_ms = 400,
        .command_timeout_ms = timeout_ms,
    };
    gw_redis_t *r = gw_redis_new(&loop, &o);
    assert_non_null(r);
    return r;
}

static gw_redis_t *client_up(int db, const char *password, int timeout_ms)
{
    gw_redis_t *r = client(db, password, timeout_ms);
    gw_redis_start(r);
    if (!run_until(is_up, r, 10000)) fail_msg("redis client not up after 10 s");
    return r;
}

/* One command's outcome. */
typedef struct rec {
    int calls;
    int seq;
    gw_err_t err;
    int type;
    long long integer;
    char str[128];
    size_t len;
} rec_t;

static int seq_no;

static void rec_cb(void *udata, gw_err_t err, redisReply *reply)
{
    rec_t *r = udata;
    r->calls++;
    r->seq = ++seq_no;
    r->err = err;
    r->type = reply ? reply->type : -1;
    if (reply) {
        r->integer = reply->integer;
        r->len = reply->len;
        if (reply->str) memcpy(r->str, reply->str, reply->len < sizeof(r->str) ? reply->len : sizeof(r->str) - 1);
    }
}

static int rec_done(void *arg)
{
    return ((rec_t *)arg)->calls > 0;
}

static void wait_rec(rec_t *r, int ms)
{
    if (!run_until(rec_done, r, ms)) fail_msg("command not completed after %d ms", ms);
}

static char key[64];

static const char *k(const char *suffix)
{
    snprintf(key, sizeof(key), "gwtest:%d:%s", (int)getpid(), suffix);
    return key;
}

/* ------------------------------------------------------------------ tests */

/* SET/GET, binary values through argv, error replies, many commands in
 * order, exactly one callback each. */
static void test_set_get(void **state)
{
    (void)state;
    need_env();
    gw_redis_t *r = client_up(0, NULL, 1000);
    rec_t a, b, c, e;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&c, 0, sizeof(c));
    memset(&e, 0, sizeof(e));

    assert_int_equal(gw_redis_cmd(r, rec_cb, &a, "SET %s %s", k("s"), "hello"), GW_OK);
    assert_int_equal(gw_redis_cmd(r, rec_cb, &b, "GET %s", k("s")), GW_OK);
    const char *argv[3] = { "SET", k("bin"), "a\0b" };
    size_t argvlen[3] = { 3, strlen(argv[1]), 3 };
    assert_int_equal(gw_redis_cmdargv(r, rec_cb, &c, 3, argv, argvlen), GW_OK);
    assert_int_equal(gw_redis_cmd(r, rec_cb, &e, "INCR %s", k("s")), GW_OK); /* not a number */
    wait_rec(&e, 5000);
    assert_int_equal(a.err, GW_OK);
    assert_int_equal(a.type, REDIS_REPLY_STATUS);
    assert_string_equal(a.str, "OK");
    assert_int_equal(b.err, GW_OK);
    assert_int_equal(b.type, REDIS_REPLY_STRING);
    assert_string_equal(b.str, "hello");
    assert_int_equal(c.err, GW_OK);
    assert_int_equal(e.err, GW_OK);
    assert_int_equal(e.type, REDIS_REPLY_ERROR);

    memset(&b, 0, sizeof(b));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &b, "GET %s", k("bin")), GW_OK);
    wait_rec(&b, 5000);
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.str, "a\0b", 3);

    /* argv as given: a value longer than the formatting's stack buffer
     * (written to the heap), a key with a space and CRLF in it */
    static char big[3000];
    for (size_t i = 0; i < sizeof(big) - 1; i++) big[i] = (char)('a' + i % 26);
    char sk[64];
    snprintf(sk, sizeof(sk), "%s with space\r\n", k("big"));
    const char *set_big[3] = { "SET", sk, big };
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    assert_int_equal(gw_redis_cmdargv(r, rec_cb, &a, 3, set_big, NULL), GW_OK);
    assert_int_equal(gw_redis_cmdargv(r, rec_cb, &b, 2, (const char *[]){ "GET", sk }, NULL), GW_OK);
    wait_rec(&b, 5000);
    assert_int_equal(a.err, GW_OK);
    assert_string_equal(a.str, "OK");
    assert_int_equal(b.type, REDIS_REPLY_STRING);
    assert_int_equal(b.len, sizeof(big) - 1);
    assert_memory_equal(b.str, big, sizeof(b.str) - 1); /* what rec_cb keeps */
    memset(&b, 0, sizeof(b));
    assert_int_equal(gw_redis_cmdargv(r, rec_cb, &b, 4, (const char *[]){ "GETRANGE", sk, "2900", "-1" }, NULL), GW_OK);
    wait_rec(&b, 5000);
    assert_int_equal(b.len, sizeof(big) - 1 - 2900);
    assert_memory_equal(b.str, big + 2900, b.len); /* the tail arrived whole */
    memset(&b, 0, sizeof(b));
    assert_int_equal(gw_redis_cmdargv(r, rec_cb, &b, 2, (const char *[]){ "DEL", sk }, NULL), GW_OK);
    wait_rec(&b, 5000);
    assert_int_equal(b.integer, 1);
    const char *with_null[2] = { "GET", NULL };
    assert_int_equal(gw_redis_cmdargv(r, rec_cb, &b, 2, with_null, NULL), GW_EINVAL);

    enum { N = 1000 };
    rec_t *m = calloc(N, sizeof(*m));
    assert_non_null(m);
    seq_no = 0;
    for (int i = 0; i < N; i++) assert_int_equal(gw_redis_cmd(r, rec_cb, &m[i], "INCR %s", k("n")), GW_OK);
    wait_rec(&m[N - 1], 10000);
    for (int i = 0; i < N; i++) {
        assert_int_equal(m[i].calls, 1);
        assert_int_equal(m[i].err, GW_OK);
        assert_int_equal(m[i].integer, i + 1);
        assert_int_equal(m[i].seq, i + 1);
    }
    free(m);
    memset(&a, 0, sizeof(a));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &a, "DEL %s %s %s", k("s"), "x", "y"), GW_OK);
    const char *del[4] = { "DEL", NULL, NULL, NULL };
    char k1[64], k2[64], k3[64];
    snprintf(k1, sizeof(k1), "%s", k("s"));
    snprintf(k2, sizeof(k2), "%s", k("bin"));
    snprintf(k3, sizeof(k3), "%s", k("n"));
    del[1] = k1;
    del[2] = k2;
    del[3] = k3;
    memset(&b, 0, sizeof(b));
    assert_int_equal(gw_redis_cmdargv(r, rec_cb, &b, 4, del, NULL), GW_OK);
    wait_rec(&b, 5000);
    assert_int_equal(b.integer, 2); /* s was already deleted */
    close_client(r);
}

/* SELECT: a key written in db 3 is not in db 0. */
static void test_select(void **state)
{
    (void)state;
    need_env();
    gw_redis_t *r3 = client_up(3, NULL, 1000);
    gw_redis_t *r0 = client_up(0, NULL, 1000);
    rec_t a, b, c, d;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&c, 0, sizeof(c));
    memset(&d, 0, sizeof(d));
    assert_int_equal(gw_redis_cmd(r3, rec_cb, &a, "SET %s v3", k("db")), GW_OK);
    wait_rec(&a, 5000);
    assert_int_equal(gw_redis_cmd(r0, rec_cb, &b, "GET %s", k("db")), GW_OK);
    assert_int_equal(gw_redis_cmd(r3, rec_cb, &c, "GET %s", k("db")), GW_OK);
    wait_rec(&b, 5000);
    wait_rec(&c, 5000);
    assert_int_equal(b.type, REDIS_REPLY_NIL);
    assert_int_equal(c.type, REDIS_REPLY_STRING);
    assert_string_equal(c.str, "v3");
    assert_int_equal(gw_redis_cmd(r3, rec_cb, &d, "DEL %s", k("db")), GW_OK);
    wait_rec(&d, 5000);
    close_client_(r0, 0);
    close_client(r3);
}

/* AUTH: a refused handshake never counts as up; the right password works. */
static void test_auth(void **state)
{
    (void)state;
    need_env();
    rec_t a, b, c;
    memset(&a, 0, sizeof(a));

    /* no password configured on the server: AUTH is refused */
    gw_redis_t *bad = client(0, "wrong-password", 1000);
    gw_redis_start(bad);
    run_for(400);
    assert_false(gw_redis_up(bad));
    assert_int_equal(gw_redis_cmd(bad, rec_cb, &a, "PING"), GW_EUNAVAIL);
    assert_int_equal(a.calls, 0);
    close_client(bad);

    char pw[32];
    snprintf(pw, sizeof(pw), "gwtest-%d", (int)getpid());
    gw_redis_t *admin = client_up(0, NULL, 1000);
    memset(&a, 0, sizeof(a));
    assert_int_equal(gw_redis_cmd(admin, rec_cb, &a, "CONFIG SET requirepass %s", pw), GW_OK);
    wait_rec(&a, 5000);
    assert_int_equal(a.type, REDIS_REPLY_STATUS);

    gw_redis_t *good = client(0, pw, 1000);
    gw_redis_start(good);
    int up = run_until(is_up, good, 5000);
    memset(&b, 0, sizeof(b));
    if (up) assert_int_equal(gw_redis_cmd(good, rec_cb, &b, "PING"), GW_OK);
    if (up) wait_rec(&b, 5000);

    /* always restore the server (admin authenticated before the change) */
    memset(&c, 0, sizeof(c));
    assert_int_equal(gw_redis_cmd(admin, rec_cb, &c, "CONFIG SET requirepass %s", ""), GW_OK);
    wait_rec(&c, 5000);
    assert_int_equal(c.type, REDIS_REPLY_STATUS);

    assert_true(up);
    assert_int_equal(b.err, GW_OK);
    assert_string_equal(b.str, "PONG");
    close_client_(good, 0);
    close_client(admin);
}

/* A command not answered in time: GW_ETIMEDOUT, the connection is dropped
 * (what was pending with it fails too) and comes back. */
static void test_timeout(void **state)
{
    (void)state;
    need_env();
    gw_redis_t *r = client_up(0, NULL, 200);
    rec_t a, b, c;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&c, 0, sizeof(c));
    uint64_t t0 = gw_mono_us();
    /* BLPOP on an empty list answers only after 5 s */
    assert_int_equal(gw_redis_cmd(r, rec_cb, &a, "BLPOP %s 5", k("never")), GW_OK);
    assert_int_equal(gw_redis_cmd(r, rec_cb, &b, "PING"), GW_OK);
    wait_rec(&b, 5000);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.err, GW_ETIMEDOUT);
    assert_true(b.err == GW_ETIMEDOUT || b.err == GW_EIO);
    assert_true(gw_mono_us() - t0 < 2000000u);
    assert_false(gw_redis_up(r));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &c, "PING"), GW_EUNAVAIL);
    assert_true(run_until(is_up, r, 5000));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &c, "PING"), GW_OK);
    wait_rec(&c, 5000);
    assert_int_equal(c.err, GW_OK);
    assert_string_equal(c.str, "PONG");
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    close_client(r);
}

/* The server stops: a pending command fails GW_EIO, new ones GW_EUNAVAIL;
 * the same client reconnects when the server is back. */
static void test_server_restart(void **state)
{
    (void)state;
    need_env();
    gw_redis_t *r = client_up(0, NULL, 10000);
    rec_t a, b, c;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&c, 0, sizeof(c));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &a, "BLPOP %s 8", k("never")), GW_OK);
    run_for(50); /* sent */

    ctl("stop");
    wait_rec(&a, 5000);
    assert_int_equal(a.err, GW_EIO);
    assert_true(run_until(is_down, r, 5000));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &b, "PING"), GW_EUNAVAIL);
    run_for(500); /* refused reconnects with backoff */
    assert_false(gw_redis_up(r));
    assert_int_equal(b.calls, 0);

    ctl("start");
    if (!run_until(is_up, r, 10000)) fail_msg("redis client did not reconnect");
    assert_int_equal(gw_redis_cmd(r, rec_cb, &c, "SET %s back", k("restart")), GW_OK);
    wait_rec(&c, 5000);
    assert_int_equal(c.err, GW_OK);
    assert_string_equal(c.str, "OK");
    memset(&c, 0, sizeof(c));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &c, "DEL %s", k("restart")), GW_OK);
    wait_rec(&c, 5000);
    assert_int_equal(a.calls, 1);
    close_client(r);
}

/* Nothing listening: never up, GW_EUNAVAIL, retries (refused connects are
 * seen at once, not after the connect timeout) and a clean close. */
static void test_unreachable(void **state)
{
    (void)state;
    need_env();
    rec_t a;
    memset(&a, 0, sizeof(a));
    gw_redis_opts_t o = { .host = "127.0.0.1", .port = 1, .reconnect_min_ms = 20,
                          .reconnect_max_ms = 40, .command_timeout_ms = 5000 };
    gw_redis_t *r = gw_redis_new(&loop, &o);
    assert_non_null(r);
    assert_int_equal(gw_redis_cmd(r, rec_cb, &a, "PING"), GW_EUNAVAIL);
    gw_redis_start(r);
    run_for(300);
    assert_false(gw_redis_up(r));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &a, "PING"), GW_EUNAVAIL);
    assert_int_equal(a.calls, 0);
    close_client(r);
}

static gw_redis_t *closing_client;

static void close_from_cb(void *udata, gw_err_t err, redisReply *reply)
{
    rec_cb(udata, err, reply);
    gw_redis_close(closing_client, closed_cb, ((rec_t *)udata) + 1);
}

/* gw_redis_close: pending commands GW_ECANCELED; closing from inside a reply
 * callback; closing before start and while connecting. */
static void test_close(void **state)
{
    (void)state;
    need_env();
    rec_t a, b, c;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    gw_redis_t *r = client_up(0, NULL, 10000);
    assert_int_equal(gw_redis_cmd(r, rec_cb, &a, "BLPOP %s 5", k("never")), GW_OK);
    run_for(50);
    int closed = 0;
    gw_redis_close(r, closed_cb, &closed);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.err, GW_ECANCELED);
    assert_true(run_until(flag_set, &closed, 5000));
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_alive(&loop), 0);

    /* close inside a reply callback: the command after it is canceled */
    rec_t rr[2]; /* rr[1].calls counts the close callback */
    memset(rr, 0, sizeof(rr));
    memset(&b, 0, sizeof(b));
    closing_client = client_up(0, NULL, 10000);
    assert_int_equal(gw_redis_cmd(closing_client, close_from_cb, &rr[0], "PING"), GW_OK);
    assert_int_equal(gw_redis_cmd(closing_client, rec_cb, &b, "BLPOP %s 5", k("never")), GW_OK);
    assert_true(run_until(flag_set, &rr[1].calls, 5000));
    assert_int_equal(rr[0].calls, 1);
    assert_int_equal(rr[0].err, GW_OK);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.err, GW_ECANCELED);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_alive(&loop), 0);

    r = client(0, NULL, 1000); /* never started */
    close_client(r);
    r = client(0, NULL, 1000);
    gw_redis_start(r); /* connecting */
    memset(&c, 0, sizeof(c));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &c, "PING"), GW_EUNAVAIL);
    close_client(r);
}


/* ------------------------------------------------------------------ Sentinel */

static char sdir[64]; /* temporary directory of the nodes; "" when none */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    return system(cmd);
}

/* A port nothing listens on right now (bound and released). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0 };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* A listening socket that never accepts: connects succeed, nothing is ever
 * answered (a hung sentinel).  Returns the fd; *port gets its port. */
static int blackhole(int *portp)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0 };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *portp = ntohs(a.sin_port);
    return fd;
}

static int node_pings(int p)
{
    return sh("redis-cli -h 127.0.0.1 -p %d PING 2>/dev/null | grep -q PONG", p) == 0;
}

/* Starts a daemonized redis-server named name (a sentinel when sentinel_of
 * is a port: it monitors "mymaster" there, quorum 1, and never fails over
 * within a test) with extra config lines; returns its port. */
static int node_start(const char *name, const char *extra, int sentinel_of)
{
    if (sdir[0] == '\0') {
        snprintf(sdir, sizeof(sdir), "/tmp/gwtest-sentinel-XXXXXX");
        if (mkdtemp(sdir) == NULL) fail_msg("mkdtemp failed");
    }
    for (int attempt = 0; attempt < 4; attempt++) {
        int np = free_port();
        char conf[256];
        snprintf(conf, sizeof(conf), "%s/%s.conf", sdir, name);
        FILE *f = fopen(conf, "w");
        assert_non_null(f);
        fprintf(f, "port %d\nbind 127.0.0.1\nprotected-mode no\ndaemonize yes\n"
                   "pidfile %s/%s.pid\nlogfile %s/%s.log\ndir %s\n",
                np, sdir, name, sdir, name, sdir);
        if (sentinel_of > 0)
            fprintf(f, "sentinel resolve-hostnames no\n"
                       "sentinel monitor mymaster 127.0.0.1 %d 1\n"
                       "sentinel down-after-milliseconds mymaster 60000\n"
                       "sentinel failover-timeout mymaster 180000\n", sentinel_of);
        else
            fprintf(f, "save \"\"\nappendonly no\n");
        if (extra) fprintf(f, "%s\n", extra);
        fclose(f);
        if (sh("cd %s && redis-server %s%s >/dev/null 2>&1", sdir, conf, sentinel_of > 0 ? " --sentinel" : "") != 0)
            fail_msg("cannot run redis-server (is it installed?)");
        for (int i = 0; i < 100; i++) {
            if (node_pings(np)) return np;
            usleep(50 * 1000);
        }
        sh("kill -9 $(cat %s/%s.pid 2>/dev/null) 2>/dev/null", sdir, name); /* port taken: again */
    }
    fail_msg("%s did not start (see %s/%s.log)", name, sdir, name);
    return -1;
}

/* Teardown: every node started, then the directory. */
static int nodes_cleanup(void **state)
{
    (void)state;
    if (sdir[0] == '\0') return 0;
    sh("for f in %s/*.pid; do [ -f \"$f\" ] && kill -9 $(cat \"$f\") 2>/dev/null; done; sleep 0.1; rm -rf %s",
       sdir, sdir);
    sdir[0] = '\0';
    return 0;
}

static gw_redis_t *sentinel_client(const char *sentinels, const char *name, int timeout_ms, int check_ms)
{
    gw_redis_opts_t o = {
        .host = "127.0.0.1", .port = 1, /* ignored */
        .reconnect_min_ms = 50, .reconnect_max_ms = 400,
        .command_timeout_ms = timeout_ms,
        .sentinels = sentinels, .master_name = name,
        .sentinel_check_ms = check_ms,
    };
    gw_redis_t *r = gw_redis_new(&loop, &o);
    assert_non_null(r);
    return r;
}

/* The port of the server r is connected to (CONFIG GET port). */
static void port_cb(void *udata, gw_err_t err, redisReply *reply)
{
    int *p = udata;
    *p = -1;
    if (err == GW_OK && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[1]->type == REDIS_REPLY_STRING)
        *p = atoi(reply->element[1]->str);
}

static int server_port(gw_redis_t *r)
{
    int p = 0;
    assert_int_equal(gw_redis_cmd(r, port_cb, &p, "CONFIG GET port"), GW_OK);
    if (!run_until(flag_set, &p, 5000)) fail_msg("CONFIG GET port not answered");
    return p;
}

/* Discovery past a refused, a bad (host name) and a silent sentinel; the
 * one that answered is asked first after a reconnect (no timeout then). */
static void test_sentinel_discovery(void **state)
{
    (void)state;
    int m = node_start("m", NULL, 0);
    int s1 = node_start("s1", NULL, m);
    int bhport;
    int bh = blackhole(&bhport);
    char list[256];
    snprintf(list, sizeof(list), " 127.0.0.1:1 , localhost:26379,[::1]:1,127.0.0.1:%d,127.0.0.1:%d", bhport, s1);

    gw_redis_t *r = sentinel_client(list, "mymaster", 500, 0);
    uint64_t t0 = gw_mono_us();
    gw_redis_start(r);
    rec_t a;
    memset(&a, 0, sizeof(a));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &a, "PING"), GW_EUNAVAIL);
    if (!run_until(is_up, r, 10000)) fail_msg("not up through the sentinel");
    uint64_t took = gw_mono_us() - t0;
    assert_true(took >= 450000u); /* waited for the silent one */
    assert_int_equal(server_port(r), m);
    assert_int_equal(gw_redis_cmd(r, rec_cb, &a, "SET %s v", k("sentinel")), GW_OK);
    wait_rec(&a, 5000);
    assert_int_equal(a.err, GW_OK);
    assert_string_equal(a.str, "OK");

    /* the connection goes: back at once, the answering sentinel first */
    assert_int_equal(sh("redis-cli -h 127.0.0.1 -p %d CLIENT KILL TYPE normal >/dev/null", m), 0);
    if (!run_until(is_down, r, 5000)) fail_msg("connection kill not seen");
    t0 = gw_mono_us();
    if (!run_until(is_up, r, 5000)) fail_msg("not back up");
    took = gw_mono_us() - t0;
    assert_true(took < 400000u);
    assert_int_equal(server_port(r), m);
    close_client(r);
    close(bh);
}

/* The sentinel knows no such master: never up, commands fail fast. */
static void test_sentinel_unknown_master(void **state)
{
    (void)state;
    int m = node_start("m", NULL, 0);
    int s1 = node_start("s1", NULL, m);
    char list[64];
    snprintf(list, sizeof(list), "127.0.0.1:%d", s1);
    gw_redis_t *r = sentinel_client(list, "no-such-master", 500, 0);
    gw_redis_start(r);
    run_for(400);
    rec_t a;
    memset(&a, 0, sizeof(a));
    assert_false(gw_redis_up(r));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &a, "PING"), GW_EUNAVAIL);
    assert_int_equal(a.calls, 0);
    close_client(r);

    /* a plain Redis is not a sentinel (error reply): never up either */
    snprintf(list, sizeof(list), "127.0.0.1:%d", m);
    r = sentinel_client(list, "mymaster", 500, 0);
    gw_redis_start(r);
    run_for(300);
    assert_false(gw_redis_up(r));
    close_client(r);
}

/* The master becomes a replica behind the client's back: the next write
 * gets READONLY and the connection is dropped; the sentinel still names it,
 * but ROLE says "slave": not up again until it is a master again. */
static void test_sentinel_role_readonly(void **state)
{
    (void)state;
    int m = node_start("m", NULL, 0);
    int other = node_start("other", NULL, 0);
    int s1 = node_start("s1", NULL, m);
    char list[64];
    snprintf(list, sizeof(list), "127.0.0.1:%d", s1);
    gw_redis_t *r = sentinel_client(list, "mymaster", 1000, -1); /* no periodic check */
    gw_redis_start(r);
    if (!run_until(is_up, r, 10000)) fail_msg("not up through the sentinel");

    assert_int_equal(sh("redis-cli -h 127.0.0.1 -p %d REPLICAOF 127.0.0.1 %d >/dev/null", m, other), 0);
    rec_t a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &a, "SET %s v", k("ro")), GW_OK);
    assert_int_equal(gw_redis_cmd(r, rec_cb, &b, "PING"), GW_OK); /* pipelined behind it */
    wait_rec(&b, 5000);
    assert_int_equal(a.err, GW_OK);
    assert_int_equal(a.type, REDIS_REPLY_ERROR);
    assert_memory_equal(a.str, "READONLY", 8);
    assert_int_equal(b.calls, 1);
    assert_false(gw_redis_up(r));
    run_for(1000); /* several reconnects: ROLE refuses each */
    assert_false(gw_redis_up(r));
    memset(&a, 0, sizeof(a));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &a, "PING"), GW_EUNAVAIL);

    assert_int_equal(sh("redis-cli -h 127.0.0.1 -p %d REPLICAOF NO ONE >/dev/null", m), 0);
    if (!run_until(is_up, r, 5000)) fail_msg("not up once a master again");
    memset(&a, 0, sizeof(a));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &a, "SET %s v", k("ro")), GW_OK);
    wait_rec(&a, 5000);
    assert_string_equal(a.str, "OK");
    close_client(r);
}

/* The sentinel's answer changes while connected (the master is still
 * reachable and still a master): the periodic check moves the client. */
static void test_sentinel_check(void **state)
{
    (void)state;
    int m = node_start("m", NULL, 0);
    int m2 = node_start("m2", NULL, 0);
    int s1 = node_start("s1", NULL, m);
    char list[64];
    snprintf(list, sizeof(list), "127.0.0.1:%d", s1);
    gw_redis_t *r = sentinel_client(list, "mymaster", 1000, 200);
    gw_redis_start(r);
    if (!run_until(is_up, r, 10000)) fail_msg("not up through the sentinel");
    assert_int_equal(server_port(r), m);
    run_for(500); /* checks that find nothing new change nothing */
    assert_true(gw_redis_up(r));
    assert_int_equal(server_port(r), m);

    assert_int_equal(sh("redis-cli -h 127.0.0.1 -p %d SENTINEL REMOVE mymaster >/dev/null && "
                        "redis-cli -h 127.0.0.1 -p %d SENTINEL MONITOR mymaster 127.0.0.1 %d 1 >/dev/null",
                        s1, s1, m2), 0);
    int moved = 0;
    uint64_t end = gw_mono_us() + 5000000u;
    while (!moved && gw_mono_us() < end) {
        run_for(100);
        if (gw_redis_up(r) && server_port(r) == m2) moved = 1;
    }
    assert_true(moved);
    close_client(r);
}

/* No usable sentinel; closing while a (silent) sentinel is being asked. */
static void test_sentinel_unreachable(void **state)
{
    (void)state;
    gw_redis_t *r = sentinel_client("redis.example:26379, 10.0.0.1, nonsense", "mymaster", 500, 0);
    gw_redis_start(r);
    run_for(200);
    assert_false(gw_redis_up(r));
    close_client(r);

    int bhport;
    int bh = blackhole(&bhport);
    char list[64];
    snprintf(list, sizeof(list), "127.0.0.1:1,127.0.0.1:%d", bhport);
    r = sentinel_client(list, "mymaster", 5000, 0);
    gw_redis_start(r);
    run_for(200); /* refused, then waiting on the silent one */
    rec_t a;
    memset(&a, 0, sizeof(a));
    assert_int_equal(gw_redis_cmd(r, rec_cb, &a, "PING"), GW_EUNAVAIL);
    close_client(r);
    close(bh);

    r = sentinel_client(list, "mymaster", 5000, 0); /* never started */
    close_client(r);
}

/* ------------------------------------------------------------------ main */

/* After a test that stops the server: start it again even when the test
 * failed half-way (start is a no-op on a running server). */
static int ensure_started(void **state)
{
    (void)state;
    if (redis_ctl != NULL && *redis_ctl != '\0') {
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "%s start", redis_ctl);
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
        cmocka_unit_test(test_set_get),
        cmocka_unit_test(test_select),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test_teardown(test_server_restart, ensure_started),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_close),
        cmocka_unit_test_teardown(test_sentinel_discovery, nodes_cleanup),
        cmocka_unit_test_teardown(test_sentinel_unknown_master, nodes_cleanup),
        cmocka_unit_test_teardown(test_sentinel_role_readonly, nodes_cleanup),
        cmocka_unit_test_teardown(test_sentinel_check, nodes_cleanup),
        cmocka_unit_test(test_sentinel_unreachable),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
