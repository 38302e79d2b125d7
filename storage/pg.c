/*
 * pg.c — PostgreSQL on the event loop (see pg.h).
 *
 * A pool of libpq connections, each in non-blocking pipeline mode and watched
 * by one uv_poll_t.  Every job is sent as one extended-protocol query followed
 * by its own PQpipelineSync, so each job runs in its own implicit transaction
 * and an error in one never aborts its neighbours.  Per connection the results
 * come back in send order as
 *
 *     result(s) of job, NULL, PGRES_PIPELINE_SYNC
 *
 * and a job completes at its PIPELINE_SYNC, i.e. after its implicit commit.
 *
 * Lifecycle of a connection:
 *
 *   IDLE --start--> CONNECTING --ok--> READY --lost--> WAIT --timer--> CONNECTING
 *                        |                                 ^
 *                        +------------failed---------------+
 *   any state --gw_pg_close (after in-flight jobs)--> CLOSED
 *
 * Re-entrancy: user callbacks are never called while a connection's state is
 * being changed.  Finished jobs are appended to pg->done and run_done() calls
 * their callbacks at the end of each entry point (poll, timer, prepare
 * callbacks and gw_pg_close), when all internal state is consistent.
 * gw_pg_exec never calls a callback: it only queues and arms a uv_prepare
 * handle, which sends everything queued in this loop iteration just before
 * the loop polls (that also batches the writes).
 *
 * libuv handles are freed only in their close callbacks; pg itself is freed
 * when the last handle has closed, and only then is the close callback run.
 *
 * Note: PQconnectStart resolves a host name with getaddrinfo(), which blocks;
 * production conninfo should name the server by address (host=10.0.0.5 or
 * hostaddr=), as libpq's documentation advises for non-blocking use.
 */
#include "pg.h"
#include "migrations.h"
#include "metrics.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#define PG_DEFAULT_POOL 4
#define PG_DEFAULT_PIPELINE 32
#define PG_DEFAULT_QUEUE 10000
#define PG_DEFAULT_RECONNECT_MIN 100
#define PG_DEFAULT_RECONNECT_MAX 5000
#define PG_DEFAULT_CONNECT_TIMEOUT_MS 10000
#define PG_MAX_PARAMS 65535
#define PG_MAX_SEND_FAILURES 3

/* The key of the session advisory lock that serialises migrations. */
#define PG_MIGRATE_LOCK_KEY "7061796761746501"

typedef struct pg_job pg_job_t;
typedef struct pg_conn pg_conn_t;

struct pg_job {
    pg_job_t *next;
    gw_pg_cb cb;
    gw_pg_value_cb vcb;   /* instead of cb: gw_pg_exec_value */
    void *udata;
    const char *stmt;     /* prepared statement name, or NULL */
    const char *sql;      /* SQL text when stmt is NULL */
    const char *const *values;
    int nparams;
    unsigned internal : 1; /* a PQsendPrepare at connection set-up */
    unsigned synced : 1;   /* the job's results ended (NULL seen) */
    unsigned nobatch : 1;  /* run alone (a batch it was in failed) */
    int stmt_idx;         /* index in pg->stmts, -1 for SQL text */
    pg_job_t **members;   /* a batch: the jobs it carries */
    int nmembers;
    int send_failures;
    uint64_t sent_at;     /* uv_now() when sent */
    uint64_t queued_ns;   /* uv_hrtime() when submitted */
    uint64_t sent_ns;     /* uv_hrtime() when sent */
    PGresult *res;        /* result kept for the callback */
    gw_err_t err;         /* set when the job is finished */
    /* followed by the values array and the strings */
};

typedef struct pg_list {
    pg_job_t *head, *tail;
    int n;
} pg_list_t;

enum pg_conn_state {
    PG_C_IDLE = 0,  /* gw_pg_start not called yet */
    PG_C_WAIT,      /* waiting for the reconnect timer */
    PG_C_CONNECTING,
    PG_C_READY,
    PG_C_CLOSED
};

struct pg_conn {
    gw_pg_t *pg;
    int idx;
    enum pg_conn_state state;
    PGconn *conn;
    uv_poll_t *poll;  /* NULL when none; freed in its close callback */
    int poll_events;
    int want_write;   /* PQflush returned 1 */
    uv_timer_t timer; /* backoff (WAIT), connect timeout (CONNECTING),
                         query timeout (READY) */
    int backoff_ms;
    pg_list_t inflight; /* sent, in pipeline order (internal entries too) */
    int nuser;          /* user jobs in inflight */
};

typedef struct pg_stmt {
    char *name;
    char *sql;
    int batch;          /* index of the batch form, -1: never batched */
    unsigned raw_mask;  /* parameters that are JSON text, embedded as is */
    int max_batch;
    int family;         /* the single statement a batch form belongs to (itself otherwise) */
    int inflight;       /* sent jobs of the family (counted on its single statement) */
} pg_stmt_t;

struct gw_pg {
    uv_loop_t *loop;
    char *conninfo;
    int pool_size, max_pipeline, max_queue, batch_inflight;
    int reconnect_min_ms, reconnect_max_ms, query_timeout_ms, connect_timeout_ms;

    pg_stmt_t *stmts;
    int nstmts, capstmts;

    pg_conn_t *conns;
    int nup;             /* connections READY */
    pg_list_t queue;     /* not yet sent */
    pg_list_t done;      /* finished, callback not yet run */
    int ninflight_user;
    int nheld;           /* jobs carried by batches in flight */
    uint64_t nbatches, nbatched; /* batches sent, jobs they carried */

    uv_prepare_t dispatcher;
    int nhandles;        /* open libuv handles (closing ones included) */
    unsigned started : 1;
    unsigned closing : 1;
    unsigned dispatcher_closed : 1;
    unsigned running_done : 1;
    unsigned outage_logged : 1; /* a connect failure was logged at warn */
    void (*close_done)(void *);
    void *close_udata;
};

/* ---------------------------------------------------------------- lists */

static void list_push(pg_list_t *l, pg_job_t *j)
{
    j->next = NULL;
    if (l->tail) l->tail->next = j;
    else l->head = j;
    l->tail = j;
    l->n++;
}

static void list_push_front(pg_list_t *l, pg_job_t *j)
{
    j->next = l->head;
    l->head = j;
    if (l->tail == NULL) l->tail = j;
    l->n++;
}

static void on_prepare(uv_prepare_t *h);
static void stmt_left(gw_pg_t *pg, pg_job_t *j);

static pg_job_t *list_pop(pg_list_t *l)
{
    pg_job_t *j = l->head;
    if (j == NULL) return NULL;
    l->head = j->next;
    if (l->head == NULL) l->tail = NULL;
    l->n--;
    j->next = NULL;
    return j;
}

/* ---------------------------------------------------------------- helpers */

/* PQerrorMessage without its trailing newline, for logs and errbuf. */
static const char *pg_errmsg(const PGconn *conn, char *buf, size_t len)
{
    const char *m = conn ? PQerrorMessage(conn) : "out of memory";
    if (m == NULL || *m == '\0') m = "unknown error";
    snprintf(buf, len, "%s", m);
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) buf[--n] = '\0';
    return buf;
}

static const char *job_label(const pg_job_t *j, char *buf, size_t len)
{
    if (j->internal) {
        snprintf(buf, len, "prepare of statement %s", j->stmt);
    } else if (j->stmt) {
        snprintf(buf, len, "statement %s", j->stmt);
    } else {
        /* the SQL text is the program's own (parameters are $n), but may be
         * long: show its beginning only */
        snprintf(buf, len, "query \"%.60s%s\"", j->sql, strlen(j->sql) > 60 ? "..." : "");
    }
    return buf;
}

static void job_finish(gw_pg_t *pg, pg_job_t *j, gw_err_t err)
{
    j->err = err;
    if (err != GW_OK && err != GW_ECONFLICT && err != GW_ESTATE && j->res) {
        PQclear(j->res);
        j->res = NULL;
    }
    list_push(&pg->done, j);
}

static void job_free(pg_job_t *j)
{
    if (j->res) PQclear(j->res);
    free(j->members);
    free(j);
}

static void handle_closed(uv_handle_t *h);

/* ---------------------------------------------------------------- logging */

static void notice_processor(void *arg, const char *message)
{
    pg_conn_t *c = arg;
    /* server notices may quote data: debug level only */
    gw_log(GW_LOG_DEBUG, "pg: connection %d notice: %s", c->idx + 1, message);
}

static void log_result_error(const pg_job_t *j, const PGresult *res)
{
    char label[128];
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (state == NULL) state = "?????";
    if (msg == NULL) msg = PQresultErrorMessage(res);
    /* Class 22 (data exception) messages echo the offending input, e.g.
     * 'invalid input syntax for type integer: "…"': never log those.  The
     * DETAIL field, which shows key values, is never logged either. */
    if (strncmp(state, "22", 2) == 0) msg = "(message withheld: it may quote a parameter value)";
    gw_log(GW_LOG_WARN, "pg: %s failed: SQLSTATE %s: %s", job_label(j, label, sizeof(label)), state,
           msg);
}

/* ---------------------------------------------------------------- forward */

static void conn_connect(pg_conn_t *c);
static void conn_fail(pg_conn_t *c, const char *why);
static void conn_shutdown(pg_conn_t *c);
static void conn_flush(pg_conn_t *c);
static void dispatch(gw_pg_t *pg);
static void run_done(gw_pg_t *pg);
static void maybe_finalize(gw_pg_t *pg);

/* ---------------------------------------------------------------- polls */

static void poll_close(pg_conn_t *c)
{
    if (c->poll == NULL) return;
    /* uv_close removes the fd from epoll at once, so a new poll handle may
     * watch the same descriptor number right away */
    uv_close((uv_handle_t *)c->poll, handle_closed);
    c->poll = NULL;
    c->poll_events = 0;
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Watches the connection's current socket for events; 0 or -1. */
static int poll_watch(pg_conn_t *c, int events)
{
    gw_pg_t *pg = c->pg;
    if (c->poll == NULL) {
        int fd = PQsocket(c->conn);
        if (fd < 0) return -1;
        uv_poll_t *p = malloc(sizeof(*p));
        if (p == NULL) return -1;
        int rc = uv_poll_init(pg->loop, p, fd);
        if (rc != 0) {
            gw_log(GW_LOG_ERR, "pg: connection %d: uv_poll_init: %s", c->idx + 1, uv_strerror(rc));
            free(p);
            return -1;
        }
        p->data = c;
        pg->nhandles++;
        c->poll = p;
        c->poll_events = 0;
    }
    if (events != c->poll_events) {
        int rc = events ? uv_poll_start(c->poll, events, on_poll) : uv_poll_stop(c->poll);
        if (rc != 0) return -1;
        c->poll_events = events;
    }
    return 0;
}

static void conn_update_poll(pg_conn_t *c)
{
    if (c->state != PG_C_READY) return;
    if (poll_watch(c, UV_READABLE | (c->want_write ? UV_WRITABLE : 0)) != 0)
        conn_fail(c, "cannot watch the socket");
}

/* ---------------------------------------------------------------- timers */

static void on_timer(uv_timer_t *t);

static void conn_arm_query_timer(pg_conn_t *c)
{
    gw_pg_t *pg = c->pg;
    if (pg->query_timeout_ms <= 0 || c->state != PG_C_READY) return;
    if (c->inflight.head == NULL) {
        uv_timer_stop(&c->timer);
        return;
    }
    if (uv_is_active((uv_handle_t *)&c->timer)) return;
    uint64_t due = c->inflight.head->sent_at + (uint64_t)pg->query_timeout_ms;
    uint64_t now = uv_now(pg->loop);
    uv_timer_start(&c->timer, on_timer, due > now ? due - now : 0, 0);
}

static void on_timer(uv_timer_t *t)
{
    pg_conn_t *c = t->data;
    gw_pg_t *pg = c->pg;
    switch (c->state) {
    case PG_C_WAIT:
        conn_connect(c);
        break;
    case PG_C_CONNECTING:
        conn_fail(c, "connect timed out");
        break;
    case PG_C_READY: {
        pg_job_t *head = c->inflight.head;
        if (pg->query_timeout_ms > 0 && head &&
            head->sent_at + (uint64_t)pg->query_timeout_ms <= uv_now(pg->loop)) {
            char label[128], why[192];
            snprintf(why, sizeof(why), "%s timed out after %d ms", job_label(head, label, sizeof(label)),
                     pg->query_timeout_ms);
            conn_fail(c, why);
        } else {
            conn_arm_query_timer(c);
        }
        break;
    }
    default:
        break;
    }
    run_done(pg);
}

/* ---------------------------------------------------------------- state */

static void conn_ready(pg_conn_t *c)
{
    gw_pg_t *pg = c->pg;
    char err[256];

    if (PQsetnonblocking(c->conn, 1) != 0 || PQenterPipelineMode(c->conn) != 1) {
        conn_fail(c, pg_errmsg(c->conn, err, sizeof(err)));
        return;
    }
    uint64_t now = uv_now(pg->loop);
    for (int i = 0; i < pg->nstmts; i++) {
        pg_job_t *j = calloc(1, sizeof(*j));
        if (j == NULL) {
            conn_fail(c, "out of memory");
            return;
        }
        j->internal = 1;
        j->stmt = pg->stmts[i].name;
        j->sent_at = now;
        /* one sync per statement: a bad statement does not abort the others */
        if (!PQsendPrepare(c->conn, pg->stmts[i].name, pg->stmts[i].sql, 0, NULL) ||
            !PQpipelineSync(c->conn)) {
            free(j);
            conn_fail(c, pg_errmsg(c->conn, err, sizeof(err)));
            return;
        }
        list_push(&c->inflight, j);
    }

    c->state = PG_C_READY;
    c->backoff_ms = pg->reconnect_min_ms;
    uv_timer_stop(&c->timer);
    pg->nup++;
    pg->outage_logged = 0;
    gw_log(GW_LOG_NOTICE, "pg: connection %d/%d up (%s:%s db %s, server %d)", c->idx + 1,
           pg->pool_size, PQhost(c->conn), PQport(c->conn), PQdb(c->conn),
           PQserverVersion(c->conn));
    conn_arm_query_timer(c);
    conn_flush(c); /* also sets up the poll handle */
    if (c->state == PG_C_READY) dispatch(pg);
}

static void conn_connect_step(pg_conn_t *c)
{
    char err[256];
    /* the socket may change between PQconnectPoll calls (libpq docs): drop
     * the watcher first and watch whatever socket libpq has afterwards */
    poll_close(c);
    switch (PQconnectPoll(c->conn)) {
    case PGRES_POLLING_READING:
        if (poll_watch(c, UV_READABLE) != 0) conn_fail(c, "cannot watch the socket");
        break;
    case PGRES_POLLING_WRITING:
        if (poll_watch(c, UV_WRITABLE) != 0) conn_fail(c, "cannot watch the socket");
        break;
    case PGRES_POLLING_OK:
        conn_ready(c);
        break;
    default: /* PGRES_POLLING_FAILED */
        conn_fail(c, pg_errmsg(c->conn, err, sizeof(err)));
        break;
    }
}

static void conn_connect(pg_conn_t *c)
{
    gw_pg_t *pg = c->pg;
    char err[256];

    c->conn = PQconnectStart(pg->conninfo);
    if (c->conn == NULL) {
        conn_fail(c, "out of memory");
        return;
    }
    if (PQstatus(c->conn) == CONNECTION_BAD) {
        conn_fail(c, pg_errmsg(c->conn, err, sizeof(err)));
        return;
    }
    PQsetNoticeProcessor(c->conn, notice_processor, c);
    c->state = PG_C_CONNECTING;
    uv_timer_start(&c->timer, on_timer, (uint64_t)pg->connect_timeout_ms, 0);
    /* just after PQconnectStart, behave as if PQconnectPoll said WRITING */
    if (poll_watch(c, UV_WRITABLE) != 0) conn_fail(c, "cannot watch the socket");
}

/* The connection is unusable: fail what was sent, maybe what was queued, and
 * reconnect later (or close when the pool is closing). */
static void conn_fail(pg_conn_t *c, const char *why)
{
    gw_pg_t *pg = c->pg;
    int was_ready = c->state == PG_C_READY;

    if (was_ready) {
        pg->nup--;
        c->state = PG_C_WAIT;
        gw_log(GW_LOG_WARN, "pg: connection %d/%d down: %s%s", c->idx + 1, pg->pool_size, why,
               c->nuser ? " (jobs in flight fail with GW_EIO)" : "");
    } else if (!pg->closing && !pg->outage_logged) {
        pg->outage_logged = 1;
        gw_log(GW_LOG_WARN, "pg: cannot connect: %s (retrying every %d..%d ms)", why,
               pg->reconnect_min_ms, pg->reconnect_max_ms);
    } else {
        gw_log(GW_LOG_DEBUG, "pg: connection %d/%d: connect failed: %s", c->idx + 1,
               pg->pool_size, why);
    }

    poll_close(c);
    if (c->conn) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
    c->want_write = 0;
    uv_timer_stop(&c->timer);

    /* sent jobs: the outcome is unknown */
    pg_job_t *j;
    while ((j = list_pop(&c->inflight)) != NULL) {
        if (j->internal) {
            job_free(j);
        } else {
            pg->ninflight_user--;
            stmt_left(pg, j);
            job_finish(pg, j, GW_EIO);
        }
    }
    c->nuser = 0;

    /* queued jobs wait for another connection, if there is one */
    if (pg->nup == 0) {
        while ((j = list_pop(&pg->queue)) != NULL) job_finish(pg, j, GW_EUNAVAIL);
    }

    if (pg->closing) {
        conn_shutdown(c);
        return;
    }
    c->state = PG_C_WAIT;
    uv_timer_start(&c->timer, on_timer, (uint64_t)c->backoff_ms, 0);
    c->backoff_ms = c->backoff_ms >= pg->reconnect_max_ms / 2 ? pg->reconnect_max_ms : c->backoff_ms * 2;
}

/* Final close of one connection (pool closing, nothing in flight). */
static void conn_shutdown(pg_conn_t *c)
{
    gw_pg_t *pg = c->pg;
    if (c->state == PG_C_CLOSED) return;
    if (c->state == PG_C_READY) pg->nup--;
    poll_close(c);
    if (c->conn) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
    c->state = PG_C_CLOSED;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, handle_closed);
    maybe_finalize(pg);
}

/* ---------------------------------------------------------------- I/O */

static void conn_flush(pg_conn_t *c)
{
    char err[256];
    int rc = PQflush(c->conn);
    if (rc < 0) {
        conn_fail(c, pg_errmsg(c->conn, err, sizeof(err)));
        return;
    }
    c->want_write = rc == 1;
    conn_update_poll(c);
}

/* A result that means the session is gone rather than the statement failed:
 * libpq's own errors (no SQLSTATE), FATAL/PANIC from the server (shutdown,
 * pg_terminate_backend) or a connection libpq already marked bad. */
static int result_is_conn_error(const PGconn *conn, const PGresult *res)
{
    if (PQstatus(conn) == CONNECTION_BAD) return 1;
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_FATAL_ERROR && st != PGRES_NONFATAL_ERROR) return 0;
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (state == NULL) return 1;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    return sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
}

/* A sent user job is done with its connection (answered or lost): its
 * statement family has one less in flight, and jobs held back by
 * batch_inflight may go. */
static void stmt_left(gw_pg_t *pg, pg_job_t *j)
{
    if (j->stmt_idx < 0) return;
    pg_stmt_t *f = &pg->stmts[pg->stmts[j->stmt_idx].family];
    f->inflight--;
    if (pg->batch_inflight > 0 && f->batch >= 0 && pg->queue.head && !pg->closing)
        uv_prepare_start(&pg->dispatcher, on_prepare);
}

/* The metrics of a job that came back: how long it waited in paygated
 * (queue, batch_inflight; for a batch, its oldest member's wait) and how
 * long PostgreSQL took (sent to result, commit included). */
static void observe(const gw_pg_t *pg, const pg_job_t *j)
{
    char lab[96];
    gw_strjoin(lab, sizeof(lab), "statement=\"", j->stmt_idx >= 0 ? pg->stmts[j->stmt_idx].name : "sql",
               "\"", NULL);
    uint64_t queued = j->nmembers ? UINT64_MAX : j->queued_ns;
    for (int k = 0; k < j->nmembers; k++)
        if (j->members[k] && j->members[k]->queued_ns < queued) queued = j->members[k]->queued_ns;
    gw_metric_observe("paygate_pg_wait_seconds", lab, (double)(j->sent_ns - queued) / 1e9);
    gw_metric_observe("paygate_pg_query_duration_seconds", lab, (double)(uv_hrtime() - j->sent_ns) / 1e9);
}

static void job_complete(pg_conn_t *c, pg_job_t *j)
{
    gw_pg_t *pg = c->pg;
    PGresult *res = j->res;
    gw_err_t err;
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;

    switch (st) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
        err = GW_OK;
        break;
    default: {
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        if (state && strcmp(state, "23505") == 0 && !j->internal) {
            err = GW_ECONFLICT;
        } else {
            err = GW_ESTATE;
            if (res) {
                log_result_error(j, res);
            } else {
                char label[128];
                gw_log(GW_LOG_WARN, "pg: %s: no result", job_label(j, label, sizeof(label)));
            }
        }
        break;
    }
    }
    if (j->internal) {
        job_free(j);
        return;
    }
    c->nuser--;
    pg->ninflight_user--;
    observe(pg, j);
    stmt_left(pg, j);
    job_finish(pg, j, err);
}

/* Reads what has arrived and completes the jobs whose sync came back.
 * Returns 0, or -1 when the connection was failed. */
static int conn_read_once(pg_conn_t *c)
{
    char err[256];
    int consumed = PQconsumeInput(c->conn);

    /* deliver what arrived whole even when the read hit EOF */
    pg_job_t *j;
    while ((j = c->inflight.head) != NULL) {
        if (PQisBusy(c->conn)) break;
        PGresult *res = PQgetResult(c->conn);
        if (res == NULL) {
            if (j->synced) break; /* nothing more yet */
            j->synced = 1;
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            list_pop(&c->inflight);
            job_complete(c, j);
            continue;
        }
        if (result_is_conn_error(c->conn, res)) {
            char why[256];
            const char *m = PQresultErrorMessage(res);
            snprintf(why, sizeof(why), "%s", m && *m ? m : pg_errmsg(c->conn, err, sizeof(err)));
            size_t n = strlen(why);
            while (n > 0 && (why[n - 1] == '\n' || why[n - 1] == ' ')) why[--n] = '\0';
            PQclear(res);
            conn_fail(c, why);
            return -1;
        }
        /* keep the first result, but an error wins over a success (an
         * error may follow, e.g. at the implicit commit) */
        if (j->res == NULL) {
            j->res = res;
        } else if ((st == PGRES_FATAL_ERROR || st == PGRES_PIPELINE_ABORTED) &&
                   PQresultStatus(j->res) != PGRES_FATAL_ERROR) {
            PQclear(j->res);
            j->res = res;
        } else {
            PQclear(res);
        }
    }
    if (!consumed || PQstatus(c->conn) == CONNECTION_BAD) {
        conn_fail(c, pg_errmsg(c->conn, err, sizeof(err)));
        return -1;
    }
    return 0;
}

static int conn_read(pg_conn_t *c)
{
    /* With TLS, PQconsumeInput asks OpenSSL for >= 8 kB; a record carries
     * up to 16 kB, and plaintext left inside OpenSSL does not make the
     * socket readable again.  PostgreSQL <= 16 writes records of <= 8 kB, so
     * this does not happen with them, but newer servers send large messages
     * in one write: while a result is incomplete, read again a few times
     * (two rounds empty a 16 kB record). */
    for (int round = 0;; round++) {
        if (conn_read_once(c) != 0) return -1;
        if (round >= 3 || c->inflight.head == NULL || !PQsslInUse(c->conn) || !PQisBusy(c->conn))
            return 0;
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    pg_conn_t *c = h->data;
    gw_pg_t *pg = c->pg;

    if (c->state == PG_C_CONNECTING) {
        /* errors too go to PQconnectPoll, which finds out what happened */
        conn_connect_step(c);
        run_done(pg);
        return;
    }
    if (c->state != PG_C_READY) return;

    if (status < 0) {
        /* POLLERR (libuv has stopped the handle): let libpq find the error,
         * and restart the watcher if the connection survives */
        events = UV_READABLE | UV_WRITABLE;
        c->poll_events = 0;
    }
    if (events & UV_WRITABLE) {
        conn_flush(c);
        if (c->state != PG_C_READY) goto out;
    }
    if (events & UV_READABLE) {
        if (conn_read(c) != 0) goto out;
        if (c->want_write) conn_flush(c); /* libpq may have more to send */
        if (c->state != PG_C_READY) goto out;
    }
    conn_update_poll(c);
    if (c->state != PG_C_READY) goto out;
    uv_timer_stop(&c->timer);
    conn_arm_query_timer(c);
    if (pg->closing && c->inflight.head == NULL) {
        conn_shutdown(c);
        goto out;
    }
    dispatch(pg); /* slots may have freed */
out:
    run_done(pg);
}

/* ---------------------------------------------------------------- dispatch */

static pg_conn_t *least_loaded(gw_pg_t *pg)
{
    pg_conn_t *best = NULL;
    for (int i = 0; i < pg->pool_size; i++) {
        pg_conn_t *c = &pg->conns[i];
        if (c->state != PG_C_READY || c->inflight.n >= pg->max_pipeline) continue;
        if (best == NULL || c->inflight.n < best->inflight.n) best = c;
    }
    return best;
}

/* Sends one job; 0, or -1 when the connection failed (the job is queued
 * again at the front: it certainly did not commit, no Sync reached the
 * server). */
static int conn_send(pg_conn_t *c, pg_job_t *j)
{
    gw_pg_t *pg = c->pg;
    char err[256];
    int ok = j->stmt ? PQsendQueryPrepared(c->conn, j->stmt, j->nparams, j->values, NULL, NULL, 0)
                     : PQsendQueryParams(c->conn, j->sql, j->nparams, NULL, j->values, NULL, NULL, 0);
    if (ok) ok = PQpipelineSync(c->conn);
    if (!ok) {
        if (++j->send_failures >= PG_MAX_SEND_FAILURES) job_finish(pg, j, GW_EIO);
        else list_push_front(&pg->queue, j);
        conn_fail(c, pg_errmsg(c->conn, err, sizeof(err)));
        return -1;
    }
    j->sent_at = uv_now(pg->loop);
    j->sent_ns = uv_hrtime();
    j->synced = 0;
    list_push(&c->inflight, j);
    if (j->stmt_idx >= 0) pg->stmts[pg->stmts[j->stmt_idx].family].inflight++;
    c->nuser++;
    pg->ninflight_user++;
    return 0;
}

/* ---------------------------------------------------------------- batches */

static void on_prepare(uv_prepare_t *h);
static pg_job_t *job_new(const char *stmt, const char *sql, int nparams, const char *const *values);

/* gw_buf_append whose first error sticks in *rc (later appends do nothing). */
static void put(gw_buf_t *b, gw_err_t *rc, const char *s, size_t n)
{
    if (*rc == GW_OK) *rc = gw_buf_append(b, s, n);
}

/* s as a JSON string (NULL: null). */
static void put_json_str(gw_buf_t *b, gw_err_t *rc, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    if (s == NULL) {
        put(b, rc, "null", 4);
        return;
    }
    put(b, rc, "\"", 1);
    const char *run = s;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        put(b, rc, run, (size_t)(s - run));
        char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
        if (c == '"' || c == '\\') put(b, rc, (char[]){ '\\', (char)c }, 2);
        else put(b, rc, esc, 6);
        run = s + 1;
    }
    put(b, rc, run, (size_t)(s - run));
    put(b, rc, "\"", 1);
}

/* The batch's one parameter: [[job 0's parameters], [job 1's], ...]; NULL
 * when it cannot be built (no memory, over PostgreSQL's 1 GB). */
static char *batch_param(const pg_stmt_t *st, pg_job_t *const *m, int n)
{
    gw_buf_t b;
    gw_err_t rc = GW_OK;
    gw_buf_init(&b, (size_t)1 << 30);
    put(&b, &rc, "[", 1);
    for (int k = 0; k < n; k++) {
        put(&b, &rc, k ? ",[" : "[", k ? 2 : 1);
        for (int i = 0; i < m[k]->nparams; i++) {
            const char *v = m[k]->values[i];
            if (i) put(&b, &rc, ",", 1);
            if (v && i < 32 && (st->raw_mask >> i & 1u)) put(&b, &rc, v, strlen(v));
            else put_json_str(&b, &rc, v);
        }
        put(&b, &rc, "]", 1);
    }
    put(&b, &rc, "]", 1);
    if (rc != GW_OK) {
        gw_buf_free(&b);
        return NULL;
    }
    return b.data;
}

/* first was just taken from the queue: takes the queued jobs of the same
 * statement with it into one batch job, or returns first itself (nothing to
 * batch it with, or no memory). */
static pg_job_t *batch_gather(gw_pg_t *pg, pg_job_t *first)
{
    const pg_stmt_t *st = &pg->stmts[first->stmt_idx];
    pg_job_t **m = malloc((size_t)st->max_batch * sizeof(*m));
    if (m == NULL) return first;
    int n = 1;
    m[0] = first;
    pg_job_t *prev = NULL, *q = pg->queue.head;
    while (q && n < st->max_batch) {
        pg_job_t *next = q->next;
        if (q->stmt_idx == first->stmt_idx && !q->nobatch) {
            if (prev) prev->next = next;
            else pg->queue.head = next;
            if (pg->queue.tail == q) pg->queue.tail = prev;
            pg->queue.n--;
            q->next = NULL;
            m[n++] = q;
        } else {
            prev = q;
        }
        q = next;
    }
    char *param = n > 1 ? batch_param(st, m, n) : NULL;
    pg_job_t *b = param ? job_new(pg->stmts[st->batch].name, NULL, 1, (const char *const *)&param) : NULL;
    free(param);
    if (b == NULL) { /* alone, or out of memory: the others go back, in order */
        for (int k = n - 1; k >= 1; k--) list_push_front(&pg->queue, m[k]);
        free(m);
        return first;
    }
    b->stmt_idx = st->batch;
    b->members = m;
    b->nmembers = n;
    pg->nheld += n - 1; /* the batch job itself counts as one of them */
    pg->nbatches++;
    pg->nbatched += (uint64_t)n;
    return b;
}

/* A member the batch did not answer for runs alone. */
static void batch_requeue(gw_pg_t *pg, pg_job_t *j)
{
    j->nobatch = 1;
    j->send_failures = 0;
    j->synced = 0;
    if (pg->closing) job_finish(pg, j, GW_ECANCELED);
    else if (pg->nup == 0) job_finish(pg, j, GW_EUNAVAIL);
    else {
        list_push(&pg->queue, j);
        uv_prepare_start(&pg->dispatcher, on_prepare);
    }
}

/* A batch finished: each member gets its own row as a one-row result of the
 * batch's columns (r, i), so that its callback sees what the single statement
 * would have returned in column 0. */
static void batch_deliver(gw_pg_t *pg, pg_job_t *b)
{
    int n = b->nmembers;
    pg->nheld -= n - 1;
    if (b->err == GW_ECONFLICT || b->err == GW_ESTATE) {
        gw_log(GW_LOG_INFO, "pg: a batch of %d %s jobs failed; running them one by one", n,
               pg->stmts[b->stmt_idx].name);
        for (int k = 0; k < n; k++) batch_requeue(pg, b->members[k]);
        return;
    }
    if (b->err != GW_OK) { /* lost (outcome unknown), cancelled, unavailable */
        for (int k = 0; k < n; k++) job_finish(pg, b->members[k], b->err);
        return;
    }
    int rows = PQntuples(b->res);
    for (int row = 0; row < rows && PQnfields(b->res) == 2; row++) {
        const char *iv = PQgetvalue(b->res, row, 1);
        char *end;
        long k = strtol(iv, &end, 10);
        if (PQgetisnull(b->res, row, 1) || end == iv || *end != '\0' || k < 0 || k >= n ||
            b->members[k] == NULL || PQgetisnull(b->res, row, 0))
            continue;
        pg_job_t *j = b->members[k];
        if (j->vcb) { /* the value itself: no one-row result to build */
            b->members[k] = NULL;
            j->vcb(j->udata, GW_OK, PQgetvalue(b->res, row, 0), (size_t)PQgetlength(b->res, row, 0));
            free(j);
            continue;
        }
        PGresult *one = PQcopyResult(b->res, PG_COPYRES_ATTRS);
        if (one == NULL ||
            !PQsetvalue(one, 0, 0, PQgetvalue(b->res, row, 0), PQgetlength(b->res, row, 0)) ||
            !PQsetvalue(one, 0, 1, PQgetvalue(b->res, row, 1), PQgetlength(b->res, row, 1))) {
            if (one) PQclear(one);
            continue; /* no memory: it runs alone */
        }
        b->members[k] = NULL;
        if (j->cb) j->cb(j->udata, GW_OK, one);
        PQclear(one);
        free(j);
    }
    for (int k = 0; k < n; k++)
        if (b->members[k]) batch_requeue(pg, b->members[k]);
}

static void dispatch(gw_pg_t *pg)
{
    int sent = 0;
    pg_list_t held = { 0 }; /* batchable jobs over batch_inflight: back in front, in order */
    while (pg->queue.head) {
        pg_job_t *j = pg->queue.head;
        int batchable = j->stmt_idx >= 0 && pg->stmts[j->stmt_idx].batch >= 0 && !j->nobatch;
        if (batchable && pg->batch_inflight > 0 &&
            pg->stmts[j->stmt_idx].inflight >= pg->batch_inflight) {
            list_push(&held, list_pop(&pg->queue)); /* no connection needed to hold it */
            continue;
        }
        pg_conn_t *c = least_loaded(pg);
        if (c == NULL) break;
        j = list_pop(&pg->queue);
        if (batchable) j = batch_gather(pg, j);
        if (conn_send(c, j) == 0) sent = 1;
    }
    if (held.head) { /* in front of what is left, in their order */
        held.tail->next = pg->queue.head;
        if (pg->queue.tail == NULL) pg->queue.tail = held.tail;
        pg->queue.head = held.head;
        pg->queue.n += held.n;
    }
    if (!sent) return;
    for (int i = 0; i < pg->pool_size; i++) {
        pg_conn_t *c = &pg->conns[i];
        if (c->state != PG_C_READY) continue;
        conn_arm_query_timer(c);
        conn_flush(c);
    }
}

static void on_prepare(uv_prepare_t *h)
{
    gw_pg_t *pg = h->data;
    uv_prepare_stop(h);
    if (!pg->closing) dispatch(pg);
    run_done(pg);
}

/* ---------------------------------------------------------------- done */

static void run_done(gw_pg_t *pg)
{
    if (pg->running_done) return; /* the outer call picks up new entries */
    pg->running_done = 1;
    pg_job_t *j;
    while ((j = list_pop(&pg->done)) != NULL) {
        if (j->members) batch_deliver(pg, j);
        else if (j->cb) j->cb(j->udata, j->err, j->res);
        else if (j->vcb) {
            int some = j->err == GW_OK && j->res && PQntuples(j->res) > 0 && PQnfields(j->res) > 0 &&
                       !PQgetisnull(j->res, 0, 0);
            j->vcb(j->udata, j->err, some ? PQgetvalue(j->res, 0, 0) : NULL,
                   some ? (size_t)PQgetlength(j->res, 0, 0) : 0);
        }
        job_free(j);
    }
    pg->running_done = 0;
}

/* ---------------------------------------------------------------- close */

static void finalize(gw_pg_t *pg)
{
    void (*done)(void *) = pg->close_done;
    void *udata = pg->close_udata;
    for (int i = 0; i < pg->nstmts; i++) {
        free(pg->stmts[i].name);
        free(pg->stmts[i].sql);
    }
    free(pg->stmts);
    free(pg->conns);
    free(pg->conninfo);
    free(pg);
    if (done) done(udata);
}

static void handle_closed(uv_handle_t *h)
{
    gw_pg_t *pg;
    if (h->type == UV_POLL) {
        pg_conn_t *c = h->data;
        pg = c->pg;
        free(h);
    } else if (h->type == UV_TIMER) {
        pg_conn_t *c = h->data;
        pg = c->pg;
    } else {
        pg = h->data;
    }
    if (--pg->nhandles == 0 && pg->dispatcher_closed) finalize(pg);
}

static void maybe_finalize(gw_pg_t *pg)
{
    if (!pg->closing || pg->dispatcher_closed) return;
    for (int i = 0; i < pg->pool_size; i++)
        if (pg->conns[i].state != PG_C_CLOSED) return;
    pg->dispatcher_closed = 1;
    uv_close((uv_handle_t *)&pg->dispatcher, handle_closed);
}

void gw_pg_close(gw_pg_t *pg, void (*done)(void *), void *udata)
{
    if (pg == NULL) {
        if (done) done(udata);
        return;
    }
    if (pg->closing) return;
    pg->closing = 1;
    pg->close_done = done;
    pg->close_udata = udata;
    uv_prepare_stop(&pg->dispatcher);

    pg_job_t *j;
    while ((j = list_pop(&pg->queue)) != NULL) job_finish(pg, j, GW_ECANCELED);

    for (int i = 0; i < pg->pool_size; i++) {
        pg_conn_t *c = &pg->conns[i];
        /* READY connections with jobs in flight close when those finish */
        if (c->state == PG_C_READY && c->inflight.head != NULL) continue;
        conn_shutdown(c);
    }
    maybe_finalize(pg);
    run_done(pg);
}

/* ---------------------------------------------------------------- public */

static int parse_connect_timeout(const char *conninfo, char *err, size_t errlen)
{
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &msg);
    if (opts == NULL) {
        snprintf(err, errlen, "%s", msg ? msg : "out of memory");
        if (msg) PQfreemem(msg);
        size_t n = strlen(err);
        while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == ' ')) err[--n] = '\0';
        return -1;
    }
    int ms = PG_DEFAULT_CONNECT_TIMEOUT_MS;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && *o->val) {
            char *end;
            long s = strtol(o->val, &end, 10);
            /* libpq: values below 2 s count as 2 s, 0 means forever */
            if (*end == '\0' && s > 0) ms = (int)(s < 2 ? 2000 : s > 86400 ? 86400000 : s * 1000);
        }
    }
    PQconninfoFree(opts);
    return ms;
}

gw_pg_t *gw_pg_new(uv_loop_t *loop, const gw_pg_opts_t *opts)
{
    char err[256];
    gw_metric_declare("paygate_pg_wait_seconds", "histogram",
                      "Time a statement waited in paygated before it was sent (a batch: its oldest member)");
    gw_metric_declare("paygate_pg_query_duration_seconds", "histogram",
                      "PostgreSQL statement latency (sent to result, commit included), by prepared statement");
    const char *conninfo = opts && opts->conninfo ? opts->conninfo : "";
    int cto = parse_connect_timeout(conninfo, err, sizeof(err));
    if (cto < 0) {
        /* libpq's message names the bad option, never a value */
        gw_log(GW_LOG_ERR, "pg: invalid connection string: %s", err);
        return NULL;
    }

    gw_pg_t *pg = calloc(1, sizeof(*pg));
    if (pg == NULL) return NULL;
    pg->loop = loop;
    pg->conninfo = strdup(conninfo);
    pg->pool_size = opts && opts->pool_size > 0 ? opts->pool_size : PG_DEFAULT_POOL;
    pg->max_pipeline = opts && opts->max_pipeline > 0 ? opts->max_pipeline : PG_DEFAULT_PIPELINE;
    pg->max_queue = opts && opts->max_queue > 0 ? opts->max_queue : PG_DEFAULT_QUEUE;
    pg->batch_inflight = opts && opts->batch_inflight > 0 ? opts->batch_inflight : 0;
    pg->reconnect_min_ms =
        opts && opts->reconnect_min_ms > 0 ? opts->reconnect_min_ms : PG_DEFAULT_RECONNECT_MIN;
    pg->reconnect_max_ms =
        opts && opts->reconnect_max_ms > 0 ? opts->reconnect_max_ms : PG_DEFAULT_RECONNECT_MAX;
    if (pg->reconnect_max_ms < pg->reconnect_min_ms) pg->reconnect_max_ms = pg->reconnect_min_ms;
    pg->query_timeout_ms = opts && opts->query_timeout_ms > 0 ? opts->query_timeout_ms : 0;
    pg->connect_timeout_ms = cto;
    pg->conns = calloc((size_t)pg->pool_size, sizeof(*pg->conns));
    if (pg->conninfo == NULL || pg->conns == NULL) {
        free(pg->conninfo);
        free(pg->conns);
        free(pg);
        return NULL;
    }
    uv_prepare_init(loop, &pg->dispatcher);
    pg->dispatcher.data = pg;
    pg->nhandles++;
    for (int i = 0; i < pg->pool_size; i++) {
        pg_conn_t *c = &pg->conns[i];
        c->pg = pg;
        c->idx = i;
        c->state = PG_C_IDLE;
        c->backoff_ms = pg->reconnect_min_ms;
        uv_timer_init(loop, &c->timer);
        c->timer.data = c;
        pg->nhandles++;
    }
    return pg;
}

gw_err_t gw_pg_prepare(gw_pg_t *pg, const char *name, const char *sql)
{
    if (pg == NULL || name == NULL || *name == '\0' || sql == NULL) return GW_EINVAL;
    if (pg->started || pg->closing) return GW_EINVAL;
    for (int i = 0; i < pg->nstmts; i++)
        if (strcmp(pg->stmts[i].name, name) == 0) return GW_EEXIST;
    if (pg->nstmts == pg->capstmts) {
        int cap = pg->capstmts ? pg->capstmts * 2 : 16;
        pg_stmt_t *s = realloc(pg->stmts, (size_t)cap * sizeof(*s));
        if (s == NULL) return GW_ENOMEM;
        pg->stmts = s;
        pg->capstmts = cap;
    }
    char *n = strdup(name), *q = strdup(sql);
    if (n == NULL || q == NULL) {
        free(n);
        free(q);
        return GW_ENOMEM;
    }
    pg->stmts[pg->nstmts].name = n;
    pg->stmts[pg->nstmts].sql = q;
    pg->stmts[pg->nstmts].batch = -1;
    pg->stmts[pg->nstmts].raw_mask = 0;
    pg->stmts[pg->nstmts].max_batch = 0;
    pg->stmts[pg->nstmts].family = pg->nstmts;
    pg->stmts[pg->nstmts].inflight = 0;
    pg->nstmts++;
    return GW_OK;
}

void gw_pg_start(gw_pg_t *pg)
{
    if (pg == NULL || pg->started || pg->closing) return;
    pg->started = 1;
    for (int i = 0; i < pg->pool_size; i++) conn_connect(&pg->conns[i]);
    run_done(pg);
}

/* One allocation: job, values[], then the strings. */
static pg_job_t *job_new(const char *stmt, const char *sql, int nparams, const char *const *values)
{
    const char *text = stmt ? stmt : sql;
    size_t tlen = strlen(text) + 1;
    size_t size = sizeof(pg_job_t) + (size_t)nparams * sizeof(char *) + tlen;
    for (int i = 0; i < nparams; i++)
        if (values[i]) size += strlen(values[i]) + 1;
    pg_job_t *j = malloc(size);
    if (j == NULL) return NULL;
    memset(j, 0, sizeof(*j));
    j->stmt_idx = -1;
    char **vals = (char **)(j + 1);
    char *p = (char *)(vals + nparams);
    memcpy(p, text, tlen);
    if (stmt) j->stmt = p;
    else j->sql = p;
    p += tlen;
    for (int i = 0; i < nparams; i++) {
        if (values[i] == NULL) {
            vals[i] = NULL;
            continue;
        }
        size_t n = strlen(values[i]) + 1;
        memcpy(p, values[i], n);
        vals[i] = p;
        p += n;
    }
    j->values = (const char *const *)vals;
    j->nparams = nparams;
    return j;
}

static int stmt_find(const gw_pg_t *pg, const char *name)
{
    for (int i = 0; i < pg->nstmts; i++)
        if (strcmp(pg->stmts[i].name, name) == 0) return i;
    return -1;
}

static gw_err_t pg_submit(gw_pg_t *pg, const char *stmt, const char *sql, int nparams,
                          const char *const *values, gw_pg_cb cb, gw_pg_value_cb vcb, void *udata)
{
    if (pg == NULL) return GW_EINVAL;
    if (pg->closing) return GW_ECANCELED;
    if (nparams < 0 || nparams > PG_MAX_PARAMS || (nparams > 0 && values == NULL))
        return GW_EINVAL;
    int idx = -1;
    if (stmt) {
        idx = stmt_find(pg, stmt);
        if (idx < 0) return GW_EINVAL;
    } else if (sql == NULL) {
        return GW_EINVAL;
    }
    if (pg->nup == 0) return GW_EUNAVAIL;
    if (pg->queue.n >= pg->max_queue) return GW_EBUSY;

    pg_job_t *j = job_new(stmt, sql, nparams, values);
    if (j == NULL) return GW_ENOMEM;
    j->stmt_idx = idx;
    j->cb = cb;
    j->vcb = vcb;
    j->udata = udata;
    j->queued_ns = uv_hrtime();
    list_push(&pg->queue, j);
    /* sent just before the loop next polls: never from inside this call */
    uv_prepare_start(&pg->dispatcher, on_prepare);
    return GW_OK;
}

gw_err_t gw_pg_exec(gw_pg_t *pg, const char *stmt, int nparams, const char *const *values,
                    gw_pg_cb cb, void *udata)
{
    if (stmt == NULL) return GW_EINVAL;
    return pg_submit(pg, stmt, NULL, nparams, values, cb, NULL, udata);
}

gw_err_t gw_pg_exec_value(gw_pg_t *pg, const char *stmt, int nparams, const char *const *values,
                          gw_pg_value_cb cb, void *udata)
{
    if (stmt == NULL || cb == NULL) return GW_EINVAL;
    return pg_submit(pg, stmt, NULL, nparams, values, NULL, cb, udata);
}

gw_err_t gw_pg_exec_sql(gw_pg_t *pg, const char *sql, int nparams, const char *const *values,
                        gw_pg_cb cb, void *udata)
{
    if (sql == NULL) return GW_EINVAL;
    return pg_submit(pg, NULL, sql, nparams, values, cb, NULL, udata);
}

int gw_pg_up(const gw_pg_t *pg)
{
    return pg ? pg->nup : 0;
}

int gw_pg_size(const gw_pg_t *pg)
{
    return pg ? pg->pool_size : 0;
}

int gw_pg_pending(const gw_pg_t *pg)
{
    return pg ? pg->queue.n + pg->ninflight_user + pg->nheld : 0;
}

gw_err_t gw_pg_batchable(gw_pg_t *pg, const char *stmt, const char *batch_stmt, unsigned raw_mask,
                         int max_batch)
{
    if (pg == NULL || stmt == NULL || batch_stmt == NULL || max_batch < 2) return GW_EINVAL;
    if (pg->started || pg->closing) return GW_EINVAL;
    int s = stmt_find(pg, stmt), b = stmt_find(pg, batch_stmt);
    if (s < 0 || b < 0 || s == b || pg->stmts[b].batch >= 0) return GW_EINVAL;
    for (int i = 0; i < pg->nstmts; i++) /* a batch form is never batched itself */
        if (pg->stmts[i].batch == s) return GW_EINVAL;
    pg->stmts[s].batch = b;
    pg->stmts[s].raw_mask = raw_mask;
    pg->stmts[s].max_batch = max_batch;
    pg->stmts[b].family = s;
    return GW_OK;
}

void gw_pg_batch_counts(const gw_pg_t *pg, uint64_t *batches, uint64_t *jobs)
{
    *batches = pg ? pg->nbatches : 0;
    *jobs = pg ? pg->nbatched : 0;
}

/* ---------------------------------------------------------------- migrations */

static void quiet_notice(void *arg, const char *message)
{
    (void)arg;
    gw_log(GW_LOG_DEBUG, "pg: migrate: %s", message);
}

/* Runs a command; 0 or -1 with errbuf filled ("what: message"). */
static int mig_exec(PGconn *conn, const char *sql, int nparams, const char *const *values,
                    PGresult **out, const char *what, char *errbuf, size_t errlen)
{
    PGresult *res = nparams ? PQexecParams(conn, sql, nparams, NULL, values, NULL, NULL, 0)
                            : PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        if (out) *out = res;
        else PQclear(res);
        return 0;
    }
    char msg[512], cmsg[256];
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *m = res ? PQresultErrorMessage(res) : NULL;
    if (m == NULL || *m == '\0') m = pg_errmsg(conn, cmsg, sizeof(cmsg));
    snprintf(msg, sizeof(msg), "%s", m);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) msg[--n] = '\0';
    if (errbuf && errlen) snprintf(errbuf, errlen, "%s: %s%s%s", what, state ? state : "", state ? " " : "", msg);
    PQclear(res);
    return -1;
}

/* Internal, for tests: gw_pg_migrate_sync over an explicit list (terminated
 * by version 0). */
gw_err_t gw__pg_migrate(const char *conninfo, const gw_migration_t *list, int *applied,
                        char *errbuf, size_t errlen);

gw_err_t gw__pg_migrate(const char *conninfo, const gw_migration_t *list, int *applied,
                        char *errbuf, size_t errlen)
{
    gw_err_t rc = GW_ESTATE;
    PGresult *res = NULL;
    char *done_map = NULL;
    int count = 0, nlist = 0, locked = 0;
    char what[160];

    if (applied) *applied = 0;
    if (errbuf && errlen) errbuf[0] = '\0';
    if (conninfo == NULL || list == NULL) {
        if (errbuf && errlen) snprintf(errbuf, errlen, "no connection string");
        return GW_EINVAL;
    }
    for (nlist = 0; list[nlist].version != 0; nlist++) {
        if (list[nlist].version < 0 || (nlist > 0 && list[nlist].version <= list[nlist - 1].version)) {
            if (errbuf && errlen)
                snprintf(errbuf, errlen, "migration %s: versions must be positive and ascending",
                         list[nlist].name ? list[nlist].name : "?");
            return GW_EINVAL;
        }
    }

    PGconn *conn = PQconnectdb(conninfo);
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        char m[256];
        if (errbuf && errlen) snprintf(errbuf, errlen, "connect: %s", pg_errmsg(conn, m, sizeof(m)));
        PQfinish(conn);
        return GW_EUNAVAIL;
    }
    PQsetNoticeProcessor(conn, quiet_notice, NULL);

    /* the lock first: concurrent CREATE TABLE IF NOT EXISTS can still race */
    if (mig_exec(conn, "SELECT pg_advisory_lock(" PG_MIGRATE_LOCK_KEY ")", 0, NULL, NULL,
                 "advisory lock", errbuf, errlen) != 0)
        goto out;
    locked = 1;
    if (mig_exec(conn,
                 "CREATE TABLE IF NOT EXISTS schema_migrations ("
                 " version int PRIMARY KEY,"
                 " name text NOT NULL,"
                 " applied_at timestamptz NOT NULL DEFAULT now())",
                 0, NULL, NULL, "create schema_migrations", errbuf, errlen) != 0)
        goto out;
    if (mig_exec(conn, "SELECT version FROM schema_migrations", 0, NULL, &res,
                 "read schema_migrations", errbuf, errlen) != 0)
        goto out;

    done_map = calloc((size_t)nlist + 1, 1);
    if (done_map == NULL) {
        if (errbuf && errlen) snprintf(errbuf, errlen, "out of memory");
        rc = GW_ENOMEM;
        goto out;
    }
    int newest = 0;
    for (int r = 0; r < PQntuples(res); r++) {
        int v = (int)strtol(PQgetvalue(res, r, 0), NULL, 10); /* an int column */
        if (v > newest) newest = v;
        for (int i = 0; i < nlist; i++)
            if (list[i].version == v) done_map[i] = 1;
    }
    PQclear(res);
    res = NULL;
    if (nlist > 0 && newest > list[nlist - 1].version)
        gw_log(GW_LOG_WARN, "pg: migrate: the database has schema version %d, newer than this "
               "build's %d", newest, list[nlist - 1].version);

    for (int i = 0; i < nlist; i++) {
        if (done_map[i]) continue;
        const gw_migration_t *m = &list[i];
        char ver[16];
        snprintf(ver, sizeof(ver), "%d", m->version);
        const char *params[2] = { ver, m->name ? m->name : "" };

        snprintf(what, sizeof(what), "migration %s", m->name ? m->name : ver);
        if (mig_exec(conn, "BEGIN", 0, NULL, NULL, what, errbuf, errlen) != 0) goto out;
        if (mig_exec(conn, m->sql ? m->sql : "", 0, NULL, NULL, what, errbuf, errlen) != 0 ||
            mig_exec(conn, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", 2,
                     params, NULL, what, errbuf, errlen) != 0 ||
            mig_exec(conn, "COMMIT", 0, NULL, NULL, what, errbuf, errlen) != 0) {
            PQclear(PQexec(conn, "ROLLBACK"));
            goto out;
        }
        count++;
        gw_log(GW_LOG_NOTICE, "pg: migrate: applied %s", m->name ? m->name : ver);
    }
    rc = GW_OK;

out:
    if (locked) PQclear(PQexec(conn, "SELECT pg_advisory_unlock(" PG_MIGRATE_LOCK_KEY ")"));
    if (rc != GW_OK && PQstatus(conn) != CONNECTION_OK) rc = GW_EIO;
    PQclear(res);
    PQfinish(conn);
    free(done_map);
    if (applied) *applied = count;
    return rc;
}

gw_err_t gw_pg_migrate_sync(const char *conninfo, int *applied, char *errbuf, size_t errlen)
{
    return gw__pg_migrate(conninfo, gw_migrations, applied, errbuf, errlen);
}
