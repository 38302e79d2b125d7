/*
 * test_client.c — core/client.c (libcurl multi on libuv) against a small
 * HTTP/1.1 server on the same loop, on loopback.
 *
 * The server answers every request with "conn=<its connection number>
 * req=<request number on that connection>", so a test sees which
 * connection carried a request.  It can close a connection after a number
 * of answers (a peer closing a kept connection while it is idle) and stop
 * listening (a peer that is gone).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "client.h"
#include "gw.h"

static uv_loop_t loop;

/* ------------------------------------------------------------------ server */

typedef struct {
    uv_tcp_t tcp;
    int port;
    int accepted;
    int close_after; /* close a connection after this many answers; 0: never */
    int open;        /* connections open now */
    struct sconn *conns[64]; /* by number - 1 */
} srv_t;

typedef struct sconn {
    uv_tcp_t h;
    uv_shutdown_t sd;
    srv_t *s;
    int id, served, closing;
    char buf[16384];
    size_t len;
} sconn_t;

typedef struct {
    uv_write_t w;
    char data[256];
} swrite_t;

static void sconn_closed(uv_handle_t *h)
{
    sconn_t *c = h->data;
    c->s->open--;
    if (c->id <= 64) c->s->conns[c->id - 1] = NULL;
    free(c);
}

static void sconn_close(sconn_t *c)
{
    if (c->closing) return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->h, sconn_closed);
}

static void on_shutdown(uv_shutdown_t *r, int status)
{
    (void)status;
    sconn_close(r->data);
}

static void swrite_done(uv_write_t *w, int status)
{
    (void)status;
    free(w->data);
}

static void salloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    sconn_t *c = h->data;
    b->base = c->buf + c->len;
    b->len = sizeof(c->buf) - c->len;
}

/* Answers every whole request in the buffer. */
static void sread(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    sconn_t *c = st->data;
    if (n < 0) {
        sconn_close(c);
        return;
    }
    c->len += (size_t)n;
    for (;;) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (end == NULL) break;
        size_t head = (size_t)(end - c->buf) + 4, body = 0;
        char *cl = memmem(c->buf, head, "Content-Length: ", 16);
        if (cl) body = (size_t)strtoul(cl + 16, NULL, 10);
        if (c->len < head + body) break;
        memmove(c->buf, c->buf + head + body, c->len - head - body);
        c->len -= head + body;
        c->served++;
        swrite_t *w = malloc(sizeof(*w));
        assert_non_null(w);
        w->w.data = w;
        char msg[64];
        int m = snprintf(msg, sizeof(msg), "conn=%d req=%d", c->id, c->served);
        int k = snprintf(w->data, sizeof(w->data), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                                   "Content-Length: %d\r\n\r\n%s", m, msg);
        uv_buf_t out = uv_buf_init(w->data, (unsigned)k);
        assert_int_equal(uv_write(&w->w, st, &out, 1, swrite_done), 0);
        if (c->s->close_after && c->served >= c->s->close_after) {
            /* the answer first, then FIN, then close */
            uv_read_stop(st);
            c->sd.data = c;
            assert_int_equal(uv_shutdown(&c->sd, st, on_shutdown), 0);
            return;
        }
    }
}

static void on_conn(uv_stream_t *l, int status)
{
    assert_int_equal(status, 0);
    srv_t *s = l->data;
    sconn_t *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->s = s;
    c->id = ++s->accepted;
    uv_tcp_init(&loop, &c->h);
    c->h.data = c;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&c->h), 0);
    s->open++;
    if (c->id <= 64) s->conns[c->id - 1] = c;
    uv_read_start((uv_stream_t *)&c->h, salloc, sread);
}

static void srv_start(srv_t *s, int close_after)
{
    memset(s, 0, sizeof(*s));
    s->close_after = close_after;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(&loop, &s->tcp);
    s->tcp.data = s;
    assert_int_equal(uv_tcp_bind(&s->tcp, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->tcp, 128, on_conn), 0);
    struct sockaddr_in got;
    int len = sizeof(got);
    uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&got, &len);
    s->port = ntohs(got.sin_port);
}

static void srv_stop(srv_t *s) { uv_close((uv_handle_t *)&s->tcp, NULL); }

/* ------------------------------------------------------------------ client side */

typedef struct {
    int done;
    gw_err_t err;
    int status, sent;
    char body[64];
} result_t;

static void on_resp(void *udata, gw_client_response_t *r)
{
    result_t *res = udata;
    res->done = 1;
    res->err = r->err;
    res->status = r->status;
    res->sent = r->sent;
    snprintf(res->body, sizeof(res->body), "%.*s", (int)r->body.len, r->body.data ? r->body.data : "");
}

static gw_client_t *client_new(void)
{
    gw_client_opts_t o = { .max_host_connections = 16 };
    gw_client_t *c = gw_client_new(&loop, &o);
    assert_non_null(c);
    return c;
}

static const char *send_pool; /* gw_client_request_t.pool of send_one's requests */

static void send_one(gw_client_t *c, int port, result_t *res)
{
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", port);
    gw_client_request_t rq = { .method = "POST", .url = url, .headers = "Content-Type: text/plain\r\n",
                               .body = "ping", .body_len = 4, .timeout_ms = 5000, .pool = send_pool };
    memset(res, 0, sizeof(*res));
    assert_int_equal(gw_client_send(c, &rq, on_resp, res), GW_OK);
}

static void wait_all(result_t *r, int n);

/* One request, answered 200 by the server's connection number conn as its
 * request number req on that connection. */
static void expect_answer(gw_client_t *c, int port, int conn, int req)
{
    result_t r;
    send_one(c, port, &r);
    wait_all(&r, 1);
    assert_int_equal(r.err, GW_OK);
    assert_int_equal(r.status, 200);
    char want[32];
    snprintf(want, sizeof(want), "conn=%d req=%d", conn, req);
    assert_string_equal(r.body, want);
}

/* Runs the loop until every result is done (the loop may stay alive with
 * the server's handles). */
static void wait_all(result_t *r, int n)
{
    for (int guard = 0; guard < 100000; guard++) {
        int all = 1;
        for (int i = 0; i < n; i++) all &= r[i].done;
        if (all) return;
        uv_run(&loop, UV_RUN_ONCE);
    }
    fail_msg("requests did not finish");
}

static void timer_noop(uv_timer_t *t) { (void)t; }

static void sleep_loop(uint64_t ms)
{
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, timer_noop, ms, 0);
    while (uv_is_active((uv_handle_t *)&t)) uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

static int closed_flag;
static void on_client_closed(void *u)
{
    (void)u;
    closed_flag = 1;
}

static void client_close(gw_client_t *c)
{
    closed_flag = 0;
    gw_client_close(c, on_client_closed, NULL);
    for (int guard = 0; guard < 1000 && !closed_flag; guard++) uv_run(&loop, UV_RUN_ONCE);
    assert_true(closed_flag);
}

/* Everything closed: the loop closes without busy handles. */
static void loop_drain(void)
{
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(uv_loop_init(&loop), 0);
}

static int setup(void **state)
{
    (void)state;
    return uv_loop_init(&loop);
}

static int teardown(void **state)
{
    (void)state;
    uv_run(&loop, UV_RUN_DEFAULT);
    return uv_loop_close(&loop);
}

/* ------------------------------------------------------------------ tests */

/* Requests one after the other share one keep-alive connection. */
static void test_keepalive_reuse(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&s, 0);
    gw_client_t *c = client_new();
    for (int i = 1; i <= 20; i++) expect_answer(c, s.port, 1, i);
    assert_int_equal(s.accepted, 1);
    assert_int_equal(gw_client_inflight(c), 0);
    client_close(c);
    srv_stop(&s);
    loop_drain();
}

/* Connections are kept per pool: a pool's requests reuse its connection,
 * another pool's never do (each has its own connection cache), the common
 * pool (NULL) is one more; closing the client closes them all. */
static void test_pools(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&s, 0);
    gw_client_t *c = client_new();
    send_pool = "alpha";
    expect_answer(c, s.port, 1, 1);
    expect_answer(c, s.port, 1, 2);
    send_pool = "beta";
    expect_answer(c, s.port, 2, 1);
    expect_answer(c, s.port, 2, 2);
    send_pool = NULL;
    expect_answer(c, s.port, 3, 1);
    send_pool = "alpha";
    expect_answer(c, s.port, 1, 3);
    send_pool = "beta";
    expect_answer(c, s.port, 2, 3);
    send_pool = NULL;
    expect_answer(c, s.port, 3, 2);
    assert_int_equal(s.accepted, 3);
    assert_int_equal(s.open, 3);
    client_close(c);
    sleep_loop(50);
    assert_int_equal(s.open, 0);
    srv_stop(&s);
    loop_drain();
}

/* The peer closes each connection after one answer, while the client keeps
 * it idle: the next request goes on a new connection and succeeds; the
 * descriptor numbers are reused by the kernel and a poll handle per
 * socket must not get in the way. */
static void test_peer_closes_idle(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&s, 1);
    gw_client_t *c = client_new();
    for (int i = 1; i <= 6; i++) {
        expect_answer(c, s.port, i, 1);
        sleep_loop(20); /* the close arrives while the connection is idle */
    }
    assert_int_equal(s.accepted, 6);
    assert_int_equal(s.open, 0);
    /* a closed idle socket is no longer watched: the loop sleeps instead of
     * being woken again and again by the same end of file (CPU time spent
     * over a quarter of a second of waiting, well under half of it) */
    struct rusage u0, u1;
    getrusage(RUSAGE_SELF, &u0);
    sleep_loop(250);
    getrusage(RUSAGE_SELF, &u1);
    long us = (u1.ru_utime.tv_sec - u0.ru_utime.tv_sec) * 1000000L + (u1.ru_utime.tv_usec - u0.ru_utime.tv_usec) +
              (u1.ru_stime.tv_sec - u0.ru_stime.tv_sec) * 1000000L + (u1.ru_stime.tv_usec - u0.ru_stime.tv_usec);
    assert_true(us < 125000);
    client_close(c);
    srv_stop(&s);
    loop_drain();
}

/* Many at once: one connection each (up to the cap), every answer arrives;
 * a second wave reuses the first wave's connections. */
static void test_concurrent_then_reuse(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&s, 0);
    gw_client_t *c = client_new();
    enum { N = 12 };
    result_t r[N];
    for (int wave = 0; wave < 2; wave++) {
        for (int i = 0; i < N; i++) send_one(c, s.port, &r[i]);
        wait_all(r, N);
        for (int i = 0; i < N; i++) {
            assert_int_equal(r[i].err, GW_OK);
            assert_int_equal(r[i].status, 200);
            assert_non_null(strstr(r[i].body, wave == 0 ? " req=1" : " req=2"));
        }
    }
    assert_int_equal(s.accepted, N);
    /* closing the client with twelve idle connections closes them all */
    client_close(c);
    sleep_loop(20);
    assert_int_equal(s.open, 0);
    srv_stop(&s);
    loop_drain();
}

static int watchdog_fired;
static void on_watchdog(uv_timer_t *t)
{
    watchdog_fired = 1;
    uv_stop(t->loop);
}

/* An idle kept connection does not keep the loop alive: once a request is
 * answered, the client holds the loop only while it has work (paygated's
 * own handles keep its loop running). */
static void test_idle_does_not_hold_loop(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&s, 0);
    gw_client_t *c = client_new();
    expect_answer(c, s.port, 1, 1);
    assert_int_equal(s.open, 1);
    /* the server's handles stop counting; a watchdog that does not count
     * either ends the loop if something else still holds it */
    uv_unref((uv_handle_t *)&s.tcp);
    uv_unref((uv_handle_t *)&s.conns[0]->h);
    uv_timer_t wd;
    uv_timer_init(&loop, &wd);
    uv_timer_start(&wd, on_watchdog, 2000, 0);
    uv_unref((uv_handle_t *)&wd);
    watchdog_fired = 0;
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_false(watchdog_fired);
    uv_close((uv_handle_t *)&wd, NULL);
    /* and the connection is still there to be reused */
    expect_answer(c, s.port, 1, 2);
    client_close(c);
    srv_stop(&s);
    loop_drain();
}

/* The peer is gone (its kept connection closed, nothing listening): the
 * next request is refused before anything was sent — failover is safe. */
static void test_peer_gone(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&s, 0);
    int port = s.port;
    gw_client_t *c = client_new();
    expect_answer(c, port, 1, 1);
    srv_stop(&s);
    sconn_close(s.conns[0]);
    sleep_loop(20);
    assert_int_equal(s.open, 0);
    result_t r;
    send_one(c, port, &r);
    wait_all(&r, 1);
    assert_int_equal(r.err, GW_EUNAVAIL);
    assert_int_equal(r.sent, 0);
    client_close(c);
    loop_drain();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_keepalive_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pools, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_closes_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_then_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_does_not_hold_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_gone, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
