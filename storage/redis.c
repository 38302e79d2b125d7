/*
 * redis.c — Redis on the event loop (see redis.h), over hiredis 0.14's async
 * API and its libuv adapter.
 *
 * One connection.  States:
 *
 *   DOWN --timer--> CONNECTING --connect cb ok--> HANDSHAKE --PING ok--> UP
 *     ^                 |                             |                   |
 *     +-----------------+----- failure / timeout -----+------ lost -------+
 *
 * HANDSHAKE sends AUTH (when a password is set), SELECT (db != 0) and PING;
 * the connection is UP, and accepts commands, only once they all succeeded,
 * so a command never reaches an unauthenticated or wrong-database session and
 * "up" means the server answers.
 *
 * hiredis 0.14 ownership rules this file relies on:
 *   - redisAsyncContext is freed by hiredis itself after a failed connect
 *     (onConnect(REDIS_ERR)), after an I/O error (onDisconnect(REDIS_ERR)),
 *     and by redisAsyncFree(); inside a reply callback redisAsyncFree only
 *     flags the context and hiredis frees it when the callback returns.
 *   - when a context is freed every pending reply callback runs once with a
 *     NULL reply, before onDisconnect.
 *   - redisAsyncFree must not be called from onConnect (hiredis touches the
 *     context after that callback returns); this file never does.
 * Each command gets a cmd record (privdata for hiredis) freed in its reply
 * callback, which runs exactly once, so each gw callback runs exactly once.
 * r->ac is cleared *before* a context goes away, so callbacks that belong to
 * an old context are recognised (r->ac != ac) and user code that runs inside
 * them sees the client DOWN (new commands get GW_EUNAVAIL).
 *
 * The adapter's poll callback ignores poll errors, and libuv stops a poll
 * handle on POLLERR — which is how a refused non-blocking connect or a reset
 * reports itself — so hiredis would never learn of them.  The adapter's
 * read/write hooks are therefore replaced by the same code with a poll
 * callback that hands errors to hiredis (as later hiredis releases do); the
 * adapter's attach and cleanup are used as they are.
 *
 * hiredis 0.14 resolves a host name with a blocking getaddrinfo() when it
 * connects: configure Redis by address.
 *
 * Sentinel (opts.sentinels + opts.master_name).  Before every connect the
 * master's address is asked of the sentinels, in turn, each over a
 * short-lived async connection of its own (r->sac, same adapter hooks, same
 * timeout as a command):
 *
 *   DOWN --timer--> ASK sentinel i --address--> CONNECTING ... (as above)
 *                     |  refused / timeout / no answer / not an IP
 *                     +--> ASK sentinel i+1 ... none left: DOWN (backoff)
 *
 * A sentinel that gave an address moves to the front of the list, so the
 * next discovery asks it first.  Only IP addresses are accepted (from the
 * configuration and from the sentinels): a host name would block the loop.
 * The handshake then sends ROLE (after AUTH, before SELECT/PING): anything but
 * "master" (a replica the sentinels are about to promote, or an old master
 * not yet reconfigured) drops the connection and the sentinels are asked
 * again after the backoff.  A connection that was UP is dropped when a
 * command gets a READONLY error reply: the master was demoted to a replica
 * (after a failover the old master comes back as one) and the sentinels know
 * the new one.  A sentinel whose address fails the ROLE check goes to the
 * back of the list (it may be one with a stale view).  While UP a sentinel is
 * asked again every sentinel_check_ms (the "check"): an address that changed
 * drops the connection (after a manual failover the sentinels demote the old
 * master only some 10 s later, and it takes writes meanwhile); a check that
 * gets no answer changes nothing.  A connection lost during a check ends the
 * check (its context is freed) and discovery starts after the backoff.  With
 * sentinels the backoff is capped at 1 s (or reconnect_max_ms when smaller):
 * a failover takes seconds and asking is cheap.
 *
 * r->sac is never freed by us from inside one of its own callbacks except
 * where hiredis defers it (a reply callback); r->sac is cleared before a
 * sentinel context goes away, as r->ac is.  User callbacks can run inside a
 * sentinel reply callback (a check that drops the connection), after r->sac
 * was cleared, so gw_redis_close from there does not touch that context.
 *
 * Timeouts: one timer is armed for the earliest deadline, i.e. the connect
 * deadline while CONNECTING, else the oldest pending command's (commands all
 * have the same timeout, so the oldest is the first in the list).  An expired
 * command fails with GW_ETIMEDOUT and the connection is dropped and
 * re-established (a late reply cannot be matched to a command any more).
 */
#include "redis.h"

#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>

#define REDIS_DEFAULT_HOST "127.0.0.1"
#define REDIS_DEFAULT_PORT 6379
#define REDIS_DEFAULT_RECONNECT_MIN 100
#define REDIS_DEFAULT_RECONNECT_MAX 5000
#define REDIS_DEFAULT_TIMEOUT 1000
#define REDIS_SENTINEL_BACKOFF_CAP 1000
#define REDIS_DEFAULT_SENTINEL_CHECK 1000

typedef struct sentinel_addr {
    char host[INET6_ADDRSTRLEN];
    int port;
} sentinel_addr_t;

enum redis_state { R_DOWN = 0, R_CONNECTING, R_HANDSHAKE, R_UP };

typedef struct redis_cmd redis_cmd_t;
struct redis_cmd {
    redis_cmd_t *prev, *next; /* pending list, in send order */
    gw_redis_t *r;
    gw_redis_cb cb;
    void *udata;
    uint64_t deadline;        /* uv_now() ms */
    unsigned finished : 1;    /* gw callback already run */
    unsigned timed_out : 1;
    unsigned handshake : 1;
    unsigned last : 1;        /* the handshake's final PING */
};

struct gw_redis {
    uv_loop_t *loop;
    char *host;
    char *password;
    int port, db;
    int reconnect_min_ms, reconnect_max_ms, timeout_ms;

    redisAsyncContext *ac; /* current context; NULL when DOWN */
    enum redis_state state;
    redis_cmd_t *head, *tail;
    uint64_t connect_deadline;
    int backoff_ms;

    uv_timer_t reconnect_timer;
    uv_timer_t deadline_timer;
    uv_timer_t check_timer;     /* Sentinel: periodic check while UP */
    int nhandles;
    unsigned started : 1;
    unsigned closing : 1;
    unsigned outage_logged : 1;
    void (*close_done)(void *);
    void *close_udata;

    /* Sentinel mode: master_name != NULL (then host/port are what the
     * sentinels said last) */
    char *master_name;
    sentinel_addr_t *sentinels; /* in asking order; one that answered first */
    int nsentinels;
    int backoff_cap_ms;
    int check_ms;               /* <= 0: no periodic check */
    unsigned checking : 1;      /* the sentinel query is a check while UP */
    redisAsyncContext *sac;     /* the sentinel being asked; NULL otherwise */
    int sidx;                   /* its index in sentinels */
    uint64_t sentinel_deadline;
    char said_by[INET6_ADDRSTRLEN + 8];  /* "ip:port" of the last that answered */
    char why[256];              /* why the last sentinel asked gave no address */
    char known[INET6_ADDRSTRLEN + 8];    /* master last announced in the log */
};

static void schedule_reconnect(gw_redis_t *r);
static void arm_deadline(gw_redis_t *r);
static void sentinel_try(gw_redis_t *r);
static void on_check_timer(uv_timer_t *t);

/* ---------------------------------------------------------------- adapter */

static void gw__redis_poll(uv_poll_t *handle, int status, int events)
{
    redisLibuvEvents *p = handle->data;
    /* on an error libuv has stopped the handle: let hiredis read/write to
     * find the error (it then frees the context, or the hooks restart) */
    int ev = status < 0 ? p->events : events;
    if (status < 0) p->events = 0; /* stopped: the next hook call must start it again */
    if (p->context != NULL && (ev & UV_READABLE)) redisAsyncHandleRead(p->context);
    if (p->context != NULL && (ev & UV_WRITABLE)) redisAsyncHandleWrite(p->context);
}

static void gw__redis_set_events(redisLibuvEvents *p, int events)
{
    if (events == p->events) return; /* no epoll_ctl for a change that is none */
    p->events = events;
    if (events) uv_poll_start(&p->handle, events, gw__redis_poll);
    else uv_poll_stop(&p->handle);
}

static void gw__redis_add_read(void *privdata)
{
    redisLibuvEvents *p = privdata;
    gw__redis_set_events(p, p->events | UV_READABLE);
}

static void gw__redis_del_read(void *privdata)
{
    redisLibuvEvents *p = privdata;
    gw__redis_set_events(p, p->events & ~UV_READABLE);
}

static void gw__redis_add_write(void *privdata)
{
    redisLibuvEvents *p = privdata;
    gw__redis_set_events(p, p->events | UV_WRITABLE);
}

static void gw__redis_del_write(void *privdata)
{
    redisLibuvEvents *p = privdata;
    gw__redis_set_events(p, p->events & ~UV_WRITABLE);
}

/* ---------------------------------------------------------------- commands */

static void cmd_link(gw_redis_t *r, redis_cmd_t *c)
{
    c->next = NULL;
    c->prev = r->tail;
    if (r->tail) r->tail->next = c;
    else r->head = c;
    r->tail = c;
}

static void cmd_unlink(gw_redis_t *r, redis_cmd_t *c)
{
    if (c->prev) c->prev->next = c->next;
    else r->head = c->next;
    if (c->next) c->next->prev = c->prev;
    else r->tail = c->prev;
    c->prev = c->next = NULL;
}

static redis_cmd_t *cmd_new(gw_redis_t *r, gw_redis_cb cb, void *udata)
{
    redis_cmd_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return NULL;
    c->r = r;
    c->cb = cb;
    c->udata = udata;
    c->deadline = uv_now(r->loop) + (uint64_t)r->timeout_ms;
    return c;
}

/* ---------------------------------------------------------------- state */

static const char *ac_error(const redisAsyncContext *ac)
{
    if (ac && ac->err && ac->errstr && *ac->errstr) return ac->errstr;
    /* not yet copied to ac->err inside the connect callback */
    if (ac && ac->c.err && ac->c.errstr[0]) return ac->c.errstr;
    return "connection closed";
}

/* The connection we use went away (hiredis is freeing it, or we are). */
static void conn_lost(gw_redis_t *r, const redisAsyncContext *ac, const char *why)
{
    if (ac != NULL && r->ac != ac) return; /* an old context: already handled */
    enum redis_state was = r->state;
    r->ac = NULL;
    r->state = R_DOWN;
    if (r->sac != NULL && r->checking) {
        /* a check in progress: pointless now (never inside its callbacks:
         * r->sac is cleared before anything is called from them) */
        redisAsyncContext *sac = r->sac;
        r->sac = NULL;
        r->checking = 0;
        redisAsyncFree(sac);
    }
    if (r->closing) {
        gw_log(GW_LOG_INFO, "redis: connection to %s:%d closed", r->host, r->port);
    } else if (was == R_UP) {
        gw_log(GW_LOG_WARN, "redis: connection to %s:%d lost: %s", r->host, r->port, why);
    } else if (!r->outage_logged) {
        r->outage_logged = 1;
        gw_log(GW_LOG_WARN, "redis: cannot connect to %s:%d: %s (retrying every %d..%d ms)",
               r->host, r->port, why, r->reconnect_min_ms, r->backoff_cap_ms);
    } else {
        gw_log(GW_LOG_DEBUG, "redis: %s:%d: connect failed: %s", r->host, r->port, why);
    }
    if (!r->closing) schedule_reconnect(r);
}

/* Drops the current connection ourselves: pending commands complete (with
 * GW_ETIMEDOUT when marked timed out, GW_ECANCELED when closing, else
 * GW_EIO) from hiredis' free, at once or, inside a reply callback, when that
 * callback returns. */
static void conn_drop(gw_redis_t *r, const char *why)
{
    redisAsyncContext *ac = r->ac;
    if (ac == NULL) return;
    conn_lost(r, ac, why);
    redisAsyncFree(ac);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_cmd_t *c = privdata;
    gw_redis_t *r = c->r;
    const redisReply *rp = reply;

    cmd_unlink(r, c);
    if (reply == NULL) conn_lost(r, ac, ac_error(ac)); /* no-op if we dropped it */
    /* a master demoted to a replica (Sentinel): the sentinels know the new one */
    int demoted = rp != NULL && r->master_name != NULL && rp->type == REDIS_REPLY_ERROR &&
                  rp->len >= 8 && memcmp(rp->str, "READONLY", 8) == 0;
    if (!c->finished) {
        c->finished = 1;
        gw_err_t err = GW_OK;
        if (reply == NULL) err = r->closing ? GW_ECANCELED : c->timed_out ? GW_ETIMEDOUT : GW_EIO;
        if (c->cb) c->cb(c->udata, err, reply);
    }
    free(c);
    /* r outlives the callback even when it closed r (freed from a close
     * callback, later); the context is freed when this callback returns */
    if (demoted && r->ac == ac && !r->closing)
        conn_drop(r, "READONLY reply: the server is a replica now, asking the sentinels again");
}

/* Handshake replies (udata = r).  Connection loss is handled elsewhere. */
static void on_handshake(void *udata, gw_err_t err, redisReply *reply)
{
    gw_redis_t *r = udata;
    if (err != GW_OK || r->state != R_HANDSHAKE) return;
    if (reply->type == REDIS_REPLY_ERROR) {
        char why[256];
        /* the server's message, never the password */
        snprintf(why, sizeof(why), "handshake refused: %.*s", (int)reply->len, reply->str);
        conn_drop(r, why);
    }
}

/* ROLE (Sentinel mode): only a master will do. */
static void on_handshake_role(void *udata, gw_err_t err, redisReply *reply)
{
    gw_redis_t *r = udata;
    if (err != GW_OK || r->state != R_HANDSHAKE) return;
    if (reply->type == REDIS_REPLY_ERROR) {
        on_handshake(udata, err, reply);
        return;
    }
    const redisReply *e = reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 ? reply->element[0] : NULL;
    if (e != NULL && (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS) &&
        e->len == 6 && memcmp(e->str, "master", 6) == 0)
        return;
    char why[160];
    if (e != NULL && (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS))
        snprintf(why, sizeof(why), "not the master yet (ROLE: %.*s)", (int)(e->len < 32 ? e->len : 32), e->str);
    else
        snprintf(why, sizeof(why), "not the master (unexpected ROLE reply)");
    /* the sentinel that gave this address (the first: see sentinel_answered)
     * may have a stale view: ask the others first next time */
    if (r->nsentinels > 1) {
        sentinel_addr_t s = r->sentinels[0];
        memmove(&r->sentinels[0], &r->sentinels[1], (size_t)(r->nsentinels - 1) * sizeof(s));
        r->sentinels[r->nsentinels - 1] = s;
    }
    conn_drop(r, why);
}

static void on_handshake_done(void *udata, gw_err_t err, redisReply *reply)
{
    gw_redis_t *r = udata;
    if (err != GW_OK || r->state != R_HANDSHAKE) return;
    if (reply->type == REDIS_REPLY_ERROR) {
        on_handshake(udata, err, reply);
        return;
    }
    r->state = R_UP;
    r->backoff_ms = r->reconnect_min_ms;
    r->outage_logged = 0;
    if (r->master_name) {
        gw_log(GW_LOG_NOTICE, "redis: connected to %s:%d (db %d), master \"%s\" according to sentinel %s",
               r->host, r->port, r->db, r->master_name, r->said_by);
        if (r->check_ms > 0)
            uv_timer_start(&r->check_timer, on_check_timer, (uint64_t)r->check_ms, (uint64_t)r->check_ms);
    } else
        gw_log(GW_LOG_NOTICE, "redis: connected to %s:%d (db %d)", r->host, r->port, r->db);
}

static int send_internal(gw_redis_t *r, gw_redis_cb cb, int argc, const char **argv)
{
    redis_cmd_t *c = cmd_new(r, cb, r);
    if (c == NULL) return -1;
    c->handshake = 1;
    if (redisAsyncCommandArgv(r->ac, on_reply, c, argc, argv, NULL) != REDIS_OK) {
        free(c);
        return -1;
    }
    cmd_link(r, c);
    return 0;
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    gw_redis_t *r = cac->data;
    if (r->ac != cac) return; /* dropped while connecting */
    if (status != REDIS_OK) {
        /* hiredis frees the context when this returns */
        conn_lost(r, cac, ac_error(cac));
        return;
    }
    r->state = R_HANDSHAKE;
    char dbs[16];
    snprintf(dbs, sizeof(dbs), "%d", r->db);
    const char *auth[2] = { "AUTH", r->password };
    const char *sel[2] = { "SELECT", dbs };
    const char *ping[1] = { "PING" };
    const char *role[1] = { "ROLE" };
    if ((r->password && send_internal(r, on_handshake, 2, auth) != 0) ||
        (r->master_name && send_internal(r, on_handshake_role, 1, role) != 0) ||
        (r->db != 0 && send_internal(r, on_handshake, 2, sel) != 0) ||
        send_internal(r, on_handshake_done, 1, ping) != 0) {
        /* cannot free the context here: let the deadline timer drop it */
        r->connect_deadline = 0;
        r->state = R_CONNECTING;
    }
    arm_deadline(r);
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    gw_redis_t *r = cac->data;
    conn_lost(r, cac, status == REDIS_OK ? "closed" : ac_error(cac));
}

/* A new async context to host:port on the loop with our poll hooks, or NULL
 * with why filled in (nothing left to free). */
static redisAsyncContext *ctx_new(gw_redis_t *r, const char *host, int port, char *why, size_t whylen)
{
    redisAsyncContext *ac = redisAsyncConnect(host, port);
    if (ac == NULL) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    if (ac->err) {
        snprintf(why, whylen, "%s", ac_error(ac));
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = r;
    if (redisLibuvAttach(ac, r->loop) != REDIS_OK) {
        /* the adapter installs its hooks before it can fail: without this
         * its cleanup would run on ev.data == NULL */
        if (ac->ev.data == NULL) memset(&ac->ev, 0, sizeof(ac->ev));
        redisAsyncFree(ac);
        snprintf(why, whylen, "cannot attach to the loop");
        return NULL;
    }
    ac->ev.addRead = gw__redis_add_read;
    ac->ev.delRead = gw__redis_del_read;
    ac->ev.addWrite = gw__redis_add_write;
    ac->ev.delWrite = gw__redis_del_write;
    return ac;
}

static void conn_start(gw_redis_t *r)
{
    char why[128];
    redisAsyncContext *ac = ctx_new(r, r->host, r->port, why, sizeof(why));
    if (ac == NULL) {
        conn_lost(r, NULL, why);
        return;
    }
    r->ac = ac;
    r->state = R_CONNECTING;
    r->connect_deadline = uv_now(r->loop) + (uint64_t)r->timeout_ms;
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* last: it starts watching for the connect (the hooks must be set) */
    redisAsyncSetConnectCallback(ac, on_connect);
    arm_deadline(r);
}

/* ---------------------------------------------------------------- sentinel */

/* s (n bytes) as "ipv4:port" or "[ipv6]:port" into out; 0 when it is not
 * (a host name, no port, IPv6 without brackets, ...). */
static int parse_ip_port(const char *s, size_t n, sentinel_addr_t *out)
{
    const char *hs = s, *he, *ps;
    if (n > 0 && s[0] == '[') {
        const char *rb = memchr(s, ']', n);
        if (rb == NULL || rb + 1 >= s + n || rb[1] != ':') return 0;
        hs = s + 1;
        he = rb;
        ps = rb + 2;
    } else {
        he = NULL;
        for (const char *p = s; p < s + n; p++)
            if (*p == ':') {
                if (he != NULL) return 0; /* IPv6 without brackets */
                he = p;
            }
        if (he == NULL) return 0;
        ps = he + 1;
    }
    size_t hl = (size_t)(he - hs), pl = (size_t)(s + n - ps);
    if (hl == 0 || hl >= sizeof(out->host) || pl == 0 || pl > 5) return 0;
    int port = 0;
    for (size_t i = 0; i < pl; i++) {
        if (ps[i] < '0' || ps[i] > '9') return 0;
        port = port * 10 + (ps[i] - '0');
    }
    if (port <= 0 || port > 65535) return 0;
    char host[INET6_ADDRSTRLEN];
    memcpy(host, hs, hl);
    host[hl] = '\0';
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, host, buf) != 1 && inet_pton(AF_INET6, host, buf) != 1) return 0;
    memcpy(out->host, host, hl + 1);
    out->port = port;
    return 1;
}

/* Fills r->sentinels from "ip:port,ip:port"; bad entries are logged and
 * skipped.  -1 on out of memory. */
static int parse_sentinels(gw_redis_t *r, const char *list)
{
    size_t n = 1;
    for (const char *p = list; *p; p++) n += *p == ',';
    r->sentinels = calloc(n, sizeof(*r->sentinels));
    if (r->sentinels == NULL) return -1;
    const char *p = list;
    for (;;) {
        const char *end = strchr(p, ',');
        if (end == NULL) end = p + strlen(p);
        const char *a = p, *b = end;
        while (a < b && (*a == ' ' || *a == '\t')) a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
        if (b > a) {
            if (parse_ip_port(a, (size_t)(b - a), &r->sentinels[r->nsentinels]))
                r->nsentinels++;
            else
                gw_log(GW_LOG_ERR, "redis: sentinel \"%.*s\" ignored: not IP:port (an IP address, "
                       "IPv6 in brackets; host names are not resolved)", (int)(b - a > 80 ? 80 : b - a), a);
        }
        if (*end == '\0') break;
        p = end + 1;
    }
    if (r->nsentinels == 0)
        gw_log(GW_LOG_ERR, "redis: no usable sentinel in \"%.200s\": Redis stays unavailable", list);
    return 0;
}

/* Every sentinel was asked, none gave an address: wait (backoff), ask again. */
static void sentinel_round_failed(gw_redis_t *r)
{
    if (r->checking) { /* a check: keep the connection we have */
        r->checking = 0;
        gw_log(GW_LOG_DEBUG, "redis: check of master \"%s\": no sentinel answered (last: %s)",
               r->master_name, r->why[0] ? r->why : "no sentinel configured");
        return;
    }
    if (!r->outage_logged) {
        r->outage_logged = 1;
        gw_log(GW_LOG_WARN, "redis: no sentinel gave the address of master \"%s\" (last: %s); "
               "retrying every %d..%d ms", r->master_name, r->why[0] ? r->why : "no sentinel configured",
               r->reconnect_min_ms, r->backoff_cap_ms);
    } else {
        gw_log(GW_LOG_DEBUG, "redis: no sentinel gave the address of master \"%s\" (last: %s)",
               r->master_name, r->why[0] ? r->why : "no sentinel configured");
    }
    schedule_reconnect(r);
}

/* The sentinel being asked failed (r->sac already NULL): ask the next. */
static void sentinel_failed(gw_redis_t *r, const char *why)
{
    const sentinel_addr_t *s = &r->sentinels[r->sidx];
    snprintf(r->why, sizeof(r->why), "sentinel %s:%d: %s", s->host, s->port, why);
    gw_log(GW_LOG_DEBUG, "redis: %s", r->why);
    r->sidx++;
    sentinel_try(r);
}

/* An address from the sentinel at r->sidx: it goes to the front, and we
 * connect to the master. */
static void sentinel_answered(gw_redis_t *r, const sentinel_addr_t *m)
{
    sentinel_addr_t s = r->sentinels[r->sidx];
    memmove(&r->sentinels[1], &r->sentinels[0], (size_t)r->sidx * sizeof(s));
    r->sentinels[0] = s;
    snprintf(r->said_by, sizeof(r->said_by), "%s:%d", s.host, s.port);
    if (r->checking) {
        r->checking = 0;
        if (r->ac != NULL && strcmp(m->host, r->host) == 0 && m->port == r->port) return;
    }
    char addr[sizeof(r->known)];
    snprintf(addr, sizeof(addr), "%s:%d", m->host, m->port);
    if (strcmp(addr, r->known) != 0) {
        if (r->known[0])
            gw_log(GW_LOG_NOTICE, "redis: master \"%s\" is now %s (was %s), according to sentinel %s",
                   r->master_name, addr, r->known, r->said_by);
        else
            gw_log(GW_LOG_NOTICE, "redis: master \"%s\" is %s, according to sentinel %s",
                   r->master_name, addr, r->said_by);
        memcpy(r->known, addr, sizeof(addr));
    }
    if (r->ac != NULL) {
        /* a check found the master moved: drop the connection (pending
         * commands fail GW_EIO now) and connect to the new one after the
         * backoff, asking again */
        conn_drop(r, "the sentinels moved the master");
        return;
    }
    if (strcmp(r->host, m->host) != 0) {
        char *h = strdup(m->host);
        if (h == NULL) {
            conn_lost(r, NULL, "out of memory");
            return;
        }
        free(r->host);
        r->host = h;
    }
    r->port = m->port;
    conn_start(r);
}

static void on_sentinel_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    gw_redis_t *r = privdata;
    if (r->sac != ac) return; /* dropped by us (timeout, close) */
    r->sac = NULL;
    if (reply == NULL) { /* hiredis is freeing the context */
        sentinel_failed(r, ac_error(ac));
        return;
    }
    const redisReply *rp = reply;
    sentinel_addr_t m;
    char why[160];
    int ok = 0;
    if (rp->type == REDIS_REPLY_ARRAY && rp->elements == 2 &&
        rp->element[0]->type == REDIS_REPLY_STRING && rp->element[1]->type == REDIS_REPLY_STRING) {
        char buf[INET6_ADDRSTRLEN + 16];
        const redisReply *h = rp->element[0], *p = rp->element[1];
        int n = snprintf(buf, sizeof(buf), strchr(h->str, ':') ? "[%.*s]:%.*s" : "%.*s:%.*s",
                         (int)(h->len < 64 ? h->len : 64), h->str, (int)(p->len < 8 ? p->len : 8), p->str);
        ok = n > 0 && (size_t)n < sizeof(buf) && parse_ip_port(buf, (size_t)n, &m);
        if (!ok) snprintf(why, sizeof(why), "answered \"%.100s\", not an IP address and port", buf);
    } else if (rp->type == REDIS_REPLY_NIL) {
        snprintf(why, sizeof(why), "does not know master \"%.64s\"", r->master_name);
    } else if (rp->type == REDIS_REPLY_ERROR) {
        snprintf(why, sizeof(why), "error: %.*s", (int)(rp->len < 120 ? rp->len : 120), rp->str);
    } else {
        snprintf(why, sizeof(why), "unexpected reply (type %d)", rp->type);
    }
    /* inside a reply callback: hiredis frees it when this returns */
    redisAsyncFree(ac);
    if (ok) sentinel_answered(r, &m);
    else sentinel_failed(r, why);
}

static void on_sentinel_connect(const redisAsyncContext *cac, int status)
{
    gw_redis_t *r = cac->data;
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    if (r->sac != ac) return;
    if (status != REDIS_OK) {
        /* hiredis frees the context when this returns */
        char why[128];
        snprintf(why, sizeof(why), "%s", ac_error(cac));
        r->sac = NULL;
        sentinel_failed(r, why);
        return;
    }
    const char *argv[3] = { "SENTINEL", "get-master-addr-by-name", r->master_name };
    if (redisAsyncCommandArgv(ac, on_sentinel_reply, r, 3, argv, NULL) != REDIS_OK) {
        /* cannot free the context here: let the deadline timer drop it */
        r->sentinel_deadline = 0;
        arm_deadline(r);
    }
}

static void on_sentinel_disconnect(const redisAsyncContext *cac, int status)
{
    gw_redis_t *r = cac->data;
    if (r->sac != cac) return; /* the usual case: handled in the reply callback */
    r->sac = NULL;
    sentinel_failed(r, status == REDIS_OK ? "closed" : ac_error(cac));
}

/* Asks the sentinel at r->sidx, or the next one that can be reached. */
static void sentinel_try(gw_redis_t *r)
{
    while (!r->closing && r->sidx < r->nsentinels) {
        const sentinel_addr_t *s = &r->sentinels[r->sidx];
        char why[128];
        redisAsyncContext *ac = ctx_new(r, s->host, s->port, why, sizeof(why));
        if (ac == NULL) {
            snprintf(r->why, sizeof(r->why), "sentinel %s:%d: %s", s->host, s->port, why);
            r->sidx++;
            continue;
        }
        r->sac = ac;
        r->sentinel_deadline = uv_now(r->loop) + (uint64_t)r->timeout_ms;
        redisAsyncSetDisconnectCallback(ac, on_sentinel_disconnect);
        redisAsyncSetConnectCallback(ac, on_sentinel_connect); /* last: starts watching */
        arm_deadline(r);
        return;
    }
    if (!r->closing) sentinel_round_failed(r);
}

static void discover_start(gw_redis_t *r)
{
    r->sidx = 0;
    r->why[0] = '\0';
    sentinel_try(r);
}

/* While UP: ask a sentinel whether the master is still where we are. */
static void on_check_timer(uv_timer_t *t)
{
    gw_redis_t *r = t->data;
    if (r->closing || r->state != R_UP || r->sac != NULL) {
        if (r->state != R_UP) uv_timer_stop(t);
        return;
    }
    r->checking = 1;
    discover_start(r);
}

/* ---------------------------------------------------------------- reconnect */

static void on_reconnect_timer(uv_timer_t *t)
{
    gw_redis_t *r = t->data;
    if (r->closing || r->ac != NULL || r->sac != NULL) return;
    if (r->master_name) discover_start(r);
    else conn_start(r);
}

static void schedule_reconnect(gw_redis_t *r)
{
    if (r->closing || uv_is_active((uv_handle_t *)&r->reconnect_timer)) return;
    uv_timer_start(&r->reconnect_timer, on_reconnect_timer, (uint64_t)r->backoff_ms, 0);
    int cap = r->backoff_cap_ms;
    r->backoff_ms = r->backoff_ms >= cap / 2 ? cap : r->backoff_ms * 2;
}

/* ---------------------------------------------------------------- deadlines */

static void on_deadline(uv_timer_t *t)
{
    gw_redis_t *r = t->data;
    uint64_t now = uv_now(r->loop);

    if (r->sac && r->sentinel_deadline <= now) {
        /* not inside a hiredis callback: freed at once, its reply callback
         * (NULL reply) sees r->sac != ac */
        redisAsyncContext *ac = r->sac;
        r->sac = NULL;
        redisAsyncFree(ac);
        char why[64];
        snprintf(why, sizeof(why), "no answer within %d ms", r->timeout_ms);
        sentinel_failed(r, why);
    } else if (r->state == R_CONNECTING && r->ac && r->connect_deadline <= now) {
        conn_drop(r, "connect timed out");
    } else if (r->head && r->head->deadline <= now) {
        for (redis_cmd_t *c = r->head; c; c = c->next)
            if (c->deadline <= now) c->timed_out = 1;
        char why[96];
        snprintf(why, sizeof(why), "%s timed out after %d ms",
                 r->head->handshake ? "handshake" : "command", r->timeout_ms);
        conn_drop(r, why);
    }
    arm_deadline(r);
}

static void arm_deadline(gw_redis_t *r)
{
    if (r->closing) return;
    uint64_t due = UINT64_MAX;
    if (r->state == R_CONNECTING && r->ac) due = r->connect_deadline;
    if (r->sac && r->sentinel_deadline < due) due = r->sentinel_deadline;
    if (r->head && r->head->deadline < due) due = r->head->deadline;
    if (due == UINT64_MAX) {
        uv_timer_stop(&r->deadline_timer);
        return;
    }
    /* an armed timer is due no later: deadlines only grow */
    if (uv_is_active((uv_handle_t *)&r->deadline_timer) && due > uv_now(r->loop)) return;
    uint64_t now = uv_now(r->loop);
    uv_timer_start(&r->deadline_timer, on_deadline, due > now ? due - now : 0, 0);
}

/* ---------------------------------------------------------------- public */

gw_redis_t *gw_redis_new(uv_loop_t *loop, const gw_redis_opts_t *opts)
{
    gw_redis_t *r = calloc(1, sizeof(*r));
    if (r == NULL) return NULL;
    r->loop = loop;
    r->host = strdup(opts && opts->host && *opts->host ? opts->host : REDIS_DEFAULT_HOST);
    r->password = opts && opts->password && *opts->password ? strdup(opts->password) : NULL;
    if (r->host == NULL || (opts && opts->password && *opts->password && r->password == NULL)) {
        free(r->host);
        free(r->password);
        free(r);
        return NULL;
    }
    r->port = opts && opts->port > 0 ? opts->port : REDIS_DEFAULT_PORT;
    r->db = opts && opts->db > 0 ? opts->db : 0;
    r->reconnect_min_ms =
        opts && opts->reconnect_min_ms > 0 ? opts->reconnect_min_ms : REDIS_DEFAULT_RECONNECT_MIN;
    r->reconnect_max_ms =
        opts && opts->reconnect_max_ms > 0 ? opts->reconnect_max_ms : REDIS_DEFAULT_RECONNECT_MAX;
    if (r->reconnect_max_ms < r->reconnect_min_ms) r->reconnect_max_ms = r->reconnect_min_ms;
    r->timeout_ms =
        opts && opts->command_timeout_ms > 0 ? opts->command_timeout_ms : REDIS_DEFAULT_TIMEOUT;
    r->backoff_ms = r->reconnect_min_ms;
    r->backoff_cap_ms = r->reconnect_max_ms;
    if (opts && opts->sentinels && *opts->sentinels && opts->master_name && *opts->master_name) {
        r->master_name = strdup(opts->master_name);
        if (r->master_name == NULL || parse_sentinels(r, opts->sentinels) != 0) {
            free(r->master_name);
            free(r->sentinels);
            free(r->host);
            free(r->password);
            free(r);
            return NULL;
        }
        if (r->backoff_cap_ms > REDIS_SENTINEL_BACKOFF_CAP) r->backoff_cap_ms = REDIS_SENTINEL_BACKOFF_CAP;
        r->check_ms = opts->sentinel_check_ms == 0 ? REDIS_DEFAULT_SENTINEL_CHECK : opts->sentinel_check_ms;
        if (r->backoff_cap_ms < r->reconnect_min_ms) r->backoff_cap_ms = r->reconnect_min_ms;
    } else if (opts && ((opts->sentinels && *opts->sentinels) || (opts->master_name && *opts->master_name))) {
        gw_log(GW_LOG_ERR, "redis: sentinels and master_name go together: using %s:%d", r->host, r->port);
    }
    uv_timer_init(loop, &r->reconnect_timer);
    uv_timer_init(loop, &r->deadline_timer);
    uv_timer_init(loop, &r->check_timer);
    r->reconnect_timer.data = r;
    r->deadline_timer.data = r;
    r->check_timer.data = r;
    r->nhandles = 3;
    return r;
}

void gw_redis_start(gw_redis_t *r)
{
    if (r == NULL || r->started || r->closing) return;
    r->started = 1;
    if (r->master_name) discover_start(r);
    else conn_start(r);
}

static gw_err_t submit_check(gw_redis_t *r)
{
    if (r == NULL) return GW_EINVAL;
    if (r->closing) return GW_ECANCELED;
    if (r->state != R_UP || r->ac == NULL) return GW_EUNAVAIL;
    /* hiredis is tearing the context down (we learn of it in a moment) */
    if (r->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)) return GW_EUNAVAIL;
    return GW_OK;
}

static void submitted(gw_redis_t *r, redis_cmd_t *c)
{
    cmd_link(r, c);
    if (!uv_is_active((uv_handle_t *)&r->deadline_timer)) arm_deadline(r);
}

gw_err_t gw_redis_cmd(gw_redis_t *r, gw_redis_cb cb, void *udata, const char *fmt, ...)
{
    gw_err_t rc = submit_check(r);
    if (rc != GW_OK) return rc;
    if (fmt == NULL) return GW_EINVAL;
    redis_cmd_t *c = cmd_new(r, cb, udata);
    if (c == NULL) return GW_ENOMEM;
    va_list ap;
    va_start(ap, fmt);
    int st = redisvAsyncCommand(r->ac, on_reply, c, fmt, ap);
    va_end(ap);
    if (st != REDIS_OK) {
        free(c);
        return GW_EINVAL; /* a bad format (the context is usable: checked) */
    }
    submitted(r, c);
    return GW_OK;
}

gw_err_t gw_redis_cmdargv(gw_redis_t *r, gw_redis_cb cb, void *udata, int argc,
                          const char **argv, const size_t *argvlen)
{
    gw_err_t rc = submit_check(r);
    if (rc != GW_OK) return rc;
    if (argc <= 0 || argv == NULL) return GW_EINVAL;
    /* The command in RESP, written here: hiredis' own formatting
     * (redisFormatCommandArgv, sds growth and "%u" through sdscatfmt) cost
     * ~5 000 instructions per short command; a whole c-to-b order takes
     * paygated ~290 000. */
    char stack[512];
    size_t need = 32; /* "*", a count (gw_i64toa: up to 21 bytes with its NUL), CRLF */
    for (int i = 0; i < argc; i++) {
        if (argv[i] == NULL) return GW_EINVAL;
        need += 32 + (argvlen ? argvlen[i] : strlen(argv[i])); /* "$", a length, CRLF, CRLF */
    }
    char *cmd = need <= sizeof(stack) ? stack : malloc(need);
    if (cmd == NULL) return GW_ENOMEM;
    char *p = cmd;
    *p++ = '*';
    p += gw_i64toa(argc, p);
    *p++ = '\r';
    *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        size_t n = argvlen ? argvlen[i] : strlen(argv[i]);
        *p++ = '$';
        p += gw_i64toa((int64_t)n, p);
        *p++ = '\r';
        *p++ = '\n';
        memcpy(p, argv[i], n);
        p += n;
        *p++ = '\r';
        *p++ = '\n';
    }
    redis_cmd_t *c = cmd_new(r, cb, udata);
    int st = c ? redisAsyncFormattedCommand(r->ac, on_reply, c, cmd, (size_t)(p - cmd)) : REDIS_ERR;
    if (cmd != stack) free(cmd);
    if (st != REDIS_OK) {
        free(c);
        return GW_ENOMEM;
    }
    submitted(r, c);
    return GW_OK;
}

int gw_redis_up(const gw_redis_t *r)
{
    return r != NULL && r->state == R_UP;
}

static void on_handle_closed(uv_handle_t *h)
{
    gw_redis_t *r = h->data;
    if (--r->nhandles > 0) return;
    void (*done)(void *) = r->close_done;
    void *udata = r->close_udata;
    free(r->host);
    free(r->password);
    free(r->master_name);
    free(r->sentinels);
    free(r);
    if (done) done(udata);
}

void gw_redis_close(gw_redis_t *r, void (*done)(void *), void *udata)
{
    if (r == NULL) {
        if (done) done(udata);
        return;
    }
    if (r->closing) return;
    r->closing = 1;
    r->close_done = done;
    r->close_udata = udata;
    /* our timers first: libuv runs close callbacks last-closed-first, so the
     * adapter's poll handle (closed by hiredis' cleanup below) is normally
     * gone before on_handle_closed frees r and calls done */
    uv_close((uv_handle_t *)&r->reconnect_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->deadline_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->check_timer, on_handle_closed);
    /* a sentinel being asked (never inside one of its callbacks: see top) */
    if (r->sac != NULL) {
        redisAsyncContext *sac = r->sac;
        r->sac = NULL;
        redisAsyncFree(sac);
    }
    /* pending commands complete with GW_ECANCELED */
    conn_drop(r, "closing");
}
