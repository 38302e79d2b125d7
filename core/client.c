/*
 * client.c — libcurl multi-socket API on libuv (see client.h).
 */
#include "client.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define GW_CLIENT_POOLS 16

struct gw_client {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    gw_client_opts_t opts;
    int inflight;
    int closing;
    int handles_open;
    void (*done)(void *);
    void *done_udata;
    struct xfer *xfers; /* in flight, for cancellation */
    struct sock_ctx **byfd; /* every socket libcurl has open, by descriptor */
    int nbyfd;
    /* finished easy handles, reset, for the next requests: curl_easy_init
     * is a 5 kB calloc (a "large" request: glibc consolidates its fast bins
     * on each) and a cleanup per request otherwise */
    CURL *spare[256];
    int nspare;
    /* connection caches per pool (gw_client_request_t.pool): a curl share
     * of connections each; past GW_CLIENT_POOLS names, the common cache */
    struct {
        char name[32];
        CURLSH *share;
    } pools[GW_CLIENT_POOLS];
    int npools;
};

/* One per socket, from libcurl's first use of it until libcurl closes it
 * (CURLOPT_CLOSESOCKETFUNCTION) — not per transfer.  A keep-alive
 * connection between two requests is "idle": libcurl has removed it
 * (CURL_POLL_REMOVE) but the poll handle stays, watching for readability,
 * so that the next request on it changes nothing in epoll.  Per transfer,
 * a poll handle made and closed cost five epoll_ctl calls (libuv tests a new
 * descriptor by adding and removing it) — a tenth of paygated's time in the
 * c-to-b bench (docs/performance.md, "Third round"). */
typedef struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    int events;       /* what the poll handle watches now (0: stopped) */
    int idle;         /* libcurl keeps it for a later request */
    gw_client_t *client;
} sock_ctx_t;

typedef struct xfer {
    struct xfer *prev, *next;
    gw_client_t *client;
    CURL *easy;
    struct curl_slist *hdrs;
    gw_client_cb cb;
    void *udata;
    gw_client_response_t resp;
    int too_big;
} xfer_t;

static int curl_initialised;

static void check_multi_info(gw_client_t *c);
static void on_sock_close(uv_handle_t *h);
static void on_poll(uv_poll_t *h, int status, int events);

static void xfer_finish(xfer_t *x, gw_err_t err, const char *msg)
{
    gw_client_t *c = x->client;
    gw_client_response_t *r = &x->resp;
    long status = 0, reqsize = 0;
    double total = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(x->easy, CURLINFO_REQUEST_SIZE, &reqsize);
    curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME, &total);
    r->status = (int)status;
    r->total_s = total;
    r->err = err;
    r->sent = reqsize > 0;
    if (msg) snprintf(r->errmsg, sizeof(r->errmsg), "%s", msg);
    curl_multi_remove_handle(c->multi, x->easy);
    if (!c->closing && c->nspare < (int)(sizeof(c->spare) / sizeof(c->spare[0]))) {
        curl_easy_reset(x->easy);
        c->spare[c->nspare++] = x->easy;
    } else {
        curl_easy_cleanup(x->easy);
    }
    curl_slist_free_all(x->hdrs);
    if (x->prev) x->prev->next = x->next;
    else c->xfers = x->next;
    if (x->next) x->next->prev = x->prev;
    c->inflight--;
    x->cb(x->udata, r);
    gw_buf_free(&r->headers);
    gw_buf_free(&r->body);
    free(x);
}

static void check_multi_info(gw_client_t *c)
{
    CURLMsg *msg;
    int pending;
    while ((msg = curl_multi_info_read(c->multi, &pending))) {
        if (msg->msg != CURLMSG_DONE) continue;
        xfer_t *x = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        CURLcode cc = msg->data.result;
        gw_err_t err = GW_OK;
        const char *why = NULL;
        if (cc != CURLE_OK) {
            why = curl_easy_strerror(cc);
            if (cc == CURLE_OPERATION_TIMEDOUT) err = GW_ETIMEDOUT;
            else if (x->too_big || cc == CURLE_WRITE_ERROR) err = GW_ETOOBIG, why = "response too large";
            else if (cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST) err = GW_EUNAVAIL;
            else err = GW_EIO;
        }
        xfer_finish(x, err, why);
    }
}

static void sock_watch(sock_ctx_t *s, int events)
{
    /* an idle connection does not keep the loop alive */
    if (s->idle) uv_unref((uv_handle_t *)&s->poll);
    else uv_ref((uv_handle_t *)&s->poll);
    /* uv_poll_start re-registers the fd with epoll even for the same
     * events (two system calls): only when they change */
    if (events == s->events) return;
    s->events = events;
    if (events == 0) uv_poll_stop(&s->poll);
    else uv_poll_start(&s->poll, events, on_poll);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock_ctx_t *s = h->data;
    gw_client_t *c = s->client;
    if (s->idle) {
        /* the peer closed a kept connection (or sent what nobody asked
         * for): stop watching it; libcurl finds it dead when it next
         * looks at it and closes it */
        sock_watch(s, 0);
        return;
    }
    int flags = 0;
    if (status < 0) flags = CURL_CSELECT_ERR;
    else {
        if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    }
    int running;
    curl_multi_socket_action(c->multi, s->fd, flags, &running);
    check_multi_info(c);
}

static void on_timeout(uv_timer_t *t)
{
    gw_client_t *c = t->data;
    int running;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(c);
}

static int start_timeout(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    gw_client_t *c = userp;
    if (timeout_ms < 0) uv_timer_stop(&c->timer);
    else uv_timer_start(&c->timer, on_timeout, timeout_ms == 0 ? 1 : (uint64_t)timeout_ms, 0);
    return 0;
}

/* Before the descriptor is closed: uv_close stops the poll handle and
 * removes the descriptor from epoll at once (later, the number may already
 * belong to another socket). */
static void sock_release(sock_ctx_t *s)
{
    gw_client_t *c = s->client;
    if (s->fd >= 0 && s->fd < c->nbyfd && c->byfd[s->fd] == s) c->byfd[s->fd] = NULL;
    uv_close((uv_handle_t *)&s->poll, on_sock_close);
}

static sock_ctx_t *sock_find(gw_client_t *c, curl_socket_t fd)
{
    return fd >= 0 && fd < c->nbyfd ? c->byfd[fd] : NULL;
}

static sock_ctx_t *sock_new(gw_client_t *c, curl_socket_t fd)
{
    if (fd < 0) return NULL;
    if (fd >= c->nbyfd) {
        int n = c->nbyfd ? c->nbyfd : 64;
        while (n <= fd) n *= 2;
        sock_ctx_t **t = realloc(c->byfd, (size_t)n * sizeof(*t));
        if (t == NULL) return NULL;
        for (int i = c->nbyfd; i < n; i++) t[i] = NULL;
        c->byfd = t;
        c->nbyfd = n;
    }
    sock_ctx_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return NULL;
    s->fd = fd;
    s->client = c;
    if (uv_poll_init_socket(c->loop, &s->poll, fd) != 0) {
        free(s);
        return NULL;
    }
    s->poll.data = s;
    c->handles_open++;
    c->byfd[fd] = s;
    return s;
}

/* libcurl closes a socket: its poll handle goes first. */
static int close_socket(void *clientp, curl_socket_t fd)
{
    sock_ctx_t *s = sock_find(clientp, fd);
    if (s) sock_release(s);
    return close(fd);
}

static void on_sock_close(uv_handle_t *h)
{
    sock_ctx_t *s = h->data;
    gw_client_t *c = s->client;
    free(s);
    c->handles_open--;
    if (c->closing && c->handles_open == 0) {
        void (*done)(void *) = c->done;
        void *ud = c->done_udata;
        free(c);
        if (done) done(ud);
    }
}

static int handle_socket(CURL *easy, curl_socket_t fd, int action, void *userp, void *socketp)
{
    (void)easy;
    gw_client_t *c = userp;
    sock_ctx_t *s = socketp ? socketp : sock_find(c, fd);
    if (action == CURL_POLL_REMOVE) {
        /* kept for the next request on this connection, or closed next
         * (close_socket) */
        if (s) {
            s->idle = 1;
            sock_watch(s, UV_READABLE);
        }
        return 0;
    }
    if (s == NULL && (s = sock_new(c, fd)) == NULL) return -1;
    if (socketp == NULL) curl_multi_assign(c->multi, fd, s);
    s->idle = 0;
    int events = 0;
    if (action == CURL_POLL_IN || action == CURL_POLL_INOUT) events |= UV_READABLE;
    if (action == CURL_POLL_OUT || action == CURL_POLL_INOUT) events |= UV_WRITABLE;
    sock_watch(s, events);
    return 0;
}

static size_t on_body(char *ptr, size_t size, size_t n, void *udata)
{
    xfer_t *x = udata;
    if (gw_buf_append(&x->resp.body, ptr, size * n) != GW_OK) {
        x->too_big = 1;
        return 0;
    }
    return size * n;
}

static size_t on_header(char *ptr, size_t size, size_t n, void *udata)
{
    xfer_t *x = udata;
    size_t len = size * n;
    /* keep only the final response's headers (after 100 Continue etc.) */
    if (len > 5 && memcmp(ptr, "HTTP/", 5) == 0) gw_buf_reset(&x->resp.headers);
    if (gw_buf_append(&x->resp.headers, ptr, len) != GW_OK) {
        x->too_big = 1;
        return 0;
    }
    return len;
}

gw_client_t *gw_client_new(uv_loop_t *loop, const gw_client_opts_t *opts)
{
    if (!curl_initialised) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        curl_initialised = 1;
    }
    gw_client_t *c = gw_xcalloc(1, sizeof(*c));
    c->loop = loop;
    c->opts = *opts;
    if (c->opts.max_host_connections <= 0) c->opts.max_host_connections = 64;
    if (c->opts.max_total_connections <= 0) c->opts.max_total_connections = 1024;
    if (c->opts.max_conn_age_s <= 0) c->opts.max_conn_age_s = 60;
    if (c->opts.max_response_bytes == 0) c->opts.max_response_bytes = 1 << 20;
    if (c->opts.connect_timeout_ms <= 0) c->opts.connect_timeout_ms = 3000;
    c->multi = curl_multi_init();
    if (c->multi == NULL) {
        fprintf(stderr, "paygated: curl_multi_init failed\n");
        abort();
    }
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, handle_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, start_timeout);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)c->opts.max_host_connections);
    curl_multi_setopt(c->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)c->opts.max_total_connections);
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)c->opts.max_total_connections);
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->handles_open = 1;
    return c;
}

/* The share holding the connections of pool name, made on first use; NULL:
 * the multi handle's own cache. */
static CURLSH *pool_share(gw_client_t *c, const char *name)
{
    if (name == NULL || name[0] == '\0' || strlen(name) >= sizeof(c->pools[0].name)) return NULL;
    for (int i = 0; i < c->npools; i++)
        if (strcmp(c->pools[i].name, name) == 0) return c->pools[i].share;
    if (c->npools == GW_CLIENT_POOLS) return NULL;
    CURLSH *sh = curl_share_init();
    if (sh == NULL) return NULL;
    if (curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT) != CURLSHE_OK) {
        curl_share_cleanup(sh);
        return NULL;
    }
    snprintf(c->pools[c->npools].name, sizeof(c->pools[0].name), "%s", name);
    c->pools[c->npools++].share = sh;
    return sh;
}

gw_err_t gw_client_send(gw_client_t *c, const gw_client_request_t *req, gw_client_cb cb,
                        void *udata)
{
    if (c->closing) return GW_ECANCELED;
    xfer_t *x = calloc(1, sizeof(*x));
    if (x == NULL) return GW_ENOMEM;
    x->client = c;
    x->cb = cb;
    x->udata = udata;
    gw_buf_init(&x->resp.headers, 64 * 1024);
    gw_buf_init(&x->resp.body, c->opts.max_response_bytes);
    x->easy = c->nspare > 0 ? c->spare[--c->nspare] : curl_easy_init();
    if (x->easy == NULL) {
        free(x);
        return GW_ENOMEM;
    }
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_URL, req->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(req->timeout_ms > 0 ? req->timeout_ms : 10000));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->opts.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, (long)c->opts.max_conn_age_s);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)c->opts.max_response_bytes);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, c);
    curl_easy_setopt(e, CURLOPT_SHARE, pool_share(c, req->pool)); /* a reused handle may carry another */

    /* never wait for 100-continue; an empty Expect disables it */
    x->hdrs = curl_slist_append(NULL, "Expect:");
    if (req->headers) {
        const char *p = req->headers;
        while (*p) {
            const char *eol = strstr(p, "\r\n");
            size_t n = eol ? (size_t)(eol - p) : strlen(p);
            if (n > 0 && n < 8192) {
                char line[8192];
                memcpy(line, p, n);
                line[n] = '\0';
                struct curl_slist *nl = curl_slist_append(x->hdrs, line);
                if (nl) x->hdrs = nl;
            }
            p += n + (eol ? 2 : 0);
        }
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->hdrs);
    if (strcmp(req->method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, req->body ? req->body : "");
        if (strcmp(req->method, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    }
    x->next = c->xfers;
    if (c->xfers) c->xfers->prev = x;
    c->xfers = x;
    c->inflight++;
    if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
        c->xfers = x->next;
        if (x->next) x->next->prev = NULL;
        c->inflight--;
        curl_slist_free_all(x->hdrs);
        curl_easy_cleanup(e);
        gw_buf_free(&x->resp.headers);
        gw_buf_free(&x->resp.body);
        free(x);
        return GW_EIO;
    }
    return GW_OK;
}

int gw_client_inflight(const gw_client_t *c) { return c->inflight; }

static void on_timer_close(uv_handle_t *h)
{
    gw_client_t *c = h->data;
    c->handles_open--;
    if (c->handles_open == 0) {
        void (*done)(void *) = c->done;
        void *ud = c->done_udata;
        free(c);
        if (done) done(ud);
    }
}

void gw_client_close(gw_client_t *c, void (*done)(void *), void *udata)
{
    c->closing = 1;
    c->done = done;
    c->done_udata = udata;
    while (c->xfers) xfer_finish(c->xfers, GW_ECANCELED, "client closed");
    while (c->nspare > 0) curl_easy_cleanup(c->spare[--c->nspare]);
    /* closing the multi handle closes its sockets (close_socket), closing a
     * share the pool's (the callback is the connection's, whoever closes) */
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    for (int i = 0; i < c->npools; i++) curl_share_cleanup(c->pools[i].share);
    c->npools = 0;
    for (int fd = 0; fd < c->nbyfd; fd++)
        if (c->byfd[fd]) sock_release(c->byfd[fd]);
    free(c->byfd);
    c->byfd = NULL;
    c->nbyfd = 0;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_timer_close);
}
