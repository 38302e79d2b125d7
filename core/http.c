/*
 * http.c — HTTP/1.1 server on libuv + llhttp (see http.h).
 *
 * Connection life cycle:
 *
 *   WAIT ──first byte──> HEADERS ──headers complete──> BODY ──complete──>
 *   HANDLER (parser paused, reading stopped) ──response written──> WAIT …
 *
 * Each state has one timer: WAIT uses header_timeout for a fresh connection
 * and idle_timeout between keep-alive requests (closed silently), HEADERS
 * header_timeout and BODY body_timeout (408 then close).  HANDLER has none:
 * the handler owns its own deadlines.
 *
 * Ownership: a connection is freed in its close callback, or, when a request
 * is with the handler at that moment, when that request is answered.
 */
#include "http.h"
#include "crypto.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

/* Bytes a client may send ahead while its request is being handled before
 * reading stops (pipelining; see on_message_complete). */
#define HTTP_PENDING_PAUSE 16384

enum conn_state { ST_WAIT, ST_HEADERS, ST_BODY, ST_HANDLER, ST_CLOSING };

struct gw_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int listening;
    char name[16];
    gw_http_limits_t limits;
    gw_http_handler_fn handler;
    void *udata;
    gw_http_observer_fn observer;
    void *observer_udata;
    llhttp_settings_t settings;
    int nconns;
    gw_http_conn_t *conns; /* doubly linked list of open connections */
    uint64_t next_id;
    uint32_t id_prefix;
    int port;
    /* shutdown */
    int draining;
    uv_timer_t drain_timer;
    void (*drain_done)(void *);
    void *drain_udata;
    int pending_closes; /* listener + drain timer close callbacks */
    int nalloc;         /* connection structs not yet freed */
    int finishing;
    /* every read of every connection lands here: conn_process copies what
     * it keeps, and libuv reads one stream at a time on the loop thread.  A
     * 16 kB malloc per read was a "large" request for glibc, which
     * consolidates its fast bins on each one (docs/performance.md, "Third
     * round"). */
    char rbuf[16384];
    /* request structs kept for reuse (4.6 kB each: another large malloc and
     * a consolidation per request otherwise) */
    gw_http_req_t *spare[64];
    int nspare;
};

struct gw_http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    gw_http_server_t *srv;
    gw_http_conn_t *prev, *next;
    llhttp_t parser;
    enum conn_state state;
    gw_http_req_t *req;       /* being parsed, or with the handler */
    gw_buf_t pending;         /* bytes received while the handler runs */
    char peer[48];
    int handles_open;         /* tcp + timer close callbacks outstanding */
    unsigned keepalive : 1;
    unsigned closed : 1;      /* uv_close called */
    unsigned fresh : 1;       /* no request yet on this connection */
    unsigned in_handler : 1;  /* req is owned by the handler */
    unsigned reading : 1;
    unsigned dispatching : 1;  /* inside the handler call from conn_process */
    unsigned resume_wanted : 1;
};

typedef struct {
    uv_write_t w;
    gw_http_conn_t *conn;
    int close_after;
    char data[];
} gw__write_t;

static void conn_close(gw_http_conn_t *c);
static void conn_process(gw_http_conn_t *c, const char *data, size_t len);
static void conn_fail(gw_http_conn_t *c, int status, const char *code, const char *msg);

/* ------------------------------------------------------------------ */

const char *gw_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

static void req_free(gw_http_req_t *r)
{
    gw_buf_free(&r->body);
    gw_buf_free(&r->raw_);
    gw_buf_free(&r->resp_headers_);
    gw_http_server_t *s = r->conn_ ? r->conn_->srv : NULL;
    if (s && s->nspare < (int)GW_ARRAY_SIZE(s->spare)) s->spare[s->nspare++] = r;
    else free(r);
}

/* The server's next request id into out (n bytes, at least 17): "%08x%08llx"
 * of its random prefix and its count, written without printf (a count past
 * 2^60 would keep its low digits where snprintf kept the high ones). */
static void next_req_id(gw_http_server_t *s, char *out, size_t n)
{
    uint64_t count = ++s->next_id;
    int digits = 8;
    while (digits < (int)n - 9 && (count >> (4 * digits)) != 0) digits++;
    gw_hex_u64(s->id_prefix, 8, out);
    gw_hex_u64(count, digits, out + 8);
}

static gw_http_req_t *req_new(gw_http_conn_t *c)
{
    gw_http_server_t *s = c->srv;
    gw_http_req_t *r;
    if (s->nspare > 0) {
        r = s->spare[--s->nspare];
        memset(r, 0, sizeof(*r));
    } else if ((r = calloc(1, sizeof(*r))) == NULL) {
        return NULL;
    }
    gw_buf_init(&r->raw_, (size_t)s->limits.max_header_bytes);
    gw_buf_init(&r->body, (size_t)s->limits.max_body_bytes);
    gw_buf_init(&r->resp_headers_, 4096);
    r->conn_ = c;
    r->route = "-";
    r->start_us = gw_mono_us();
    next_req_id(s, r->id, sizeof(r->id));
    memcpy(r->peer, c->peer, sizeof(r->peer));
    return r;
}

static void timer_set(gw_http_conn_t *c, int ms);

static void set_state(gw_http_conn_t *c, enum conn_state st)
{
    gw_http_limits_t *l = &c->srv->limits;
    c->state = st;
    switch (st) {
    case ST_WAIT:
        timer_set(c, c->fresh ? l->header_timeout_ms : l->idle_timeout_ms);
        break;
    case ST_HEADERS: timer_set(c, l->header_timeout_ms); break;
    case ST_BODY: timer_set(c, l->body_timeout_ms); break;
    default: timer_set(c, 0); break;
    }
}

/* ---- parser callbacks ---- */

static int on_message_begin(llhttp_t *p)
{
    gw_http_conn_t *c = p->data;
    c->req = req_new(c);
    if (c->req == NULL) return -1;
    set_state(c, ST_HEADERS);
    return 0;
}

static int append_raw(gw_http_conn_t *c, const char *at, size_t len)
{
    if (gw_buf_append(&c->req->raw_, at, len) != GW_OK) {
        conn_fail(c, 431, "header_too_large", "request header fields too large");
        return HPE_USER;
    }
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    gw_http_conn_t *c = p->data;
    if (c->req->url_len_ == 0) c->req->url_off_ = c->req->raw_.len;
    c->req->url_len_ += len;
    return append_raw(c, at, len);
}

/* hdr_state_: 0 none, 1 in field, 2 in value */
static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    gw_http_conn_t *c = p->data;
    gw_http_req_t *r = c->req;
    if (r->hdr_state_ != 1) {
        if (r->nheaders >= GW_HTTP_MAX_HEADERS) {
            conn_fail(c, 431, "header_too_large", "too many header fields");
            return HPE_USER;
        }
        r->hoff_[r->nheaders][0][0] = r->raw_.len;
        r->hoff_[r->nheaders][0][1] = 0;
        r->hoff_[r->nheaders][1][0] = r->raw_.len;
        r->hoff_[r->nheaders][1][1] = 0;
        r->nheaders++;
        r->hdr_state_ = 1;
    }
    r->hoff_[r->nheaders - 1][0][1] += len;
    return append_raw(c, at, len);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    gw_http_conn_t *c = p->data;
    gw_http_req_t *r = c->req;
    if (r->hdr_state_ != 2) {
        r->hoff_[r->nheaders - 1][1][0] = r->raw_.len;
        r->hdr_state_ = 2;
    }
    r->hoff_[r->nheaders - 1][1][1] += len;
    return append_raw(c, at, len);
}

static void write_raw(gw_http_conn_t *c, const char *data, size_t len, int close_after);

static int on_headers_complete(llhttp_t *p)
{
    gw_http_conn_t *c = p->data;
    gw_http_req_t *r = c->req;
    const char *base = r->raw_.data ? r->raw_.data : "";

    for (int i = 0; i < r->nheaders; i++) {
        r->headers[i].name = (gw_str_t){ base + r->hoff_[i][0][0], r->hoff_[i][0][1] };
        r->headers[i].value = (gw_str_t){ base + r->hoff_[i][1][0], r->hoff_[i][1][1] };
    }
    gw_str_t url = { base + r->url_off_, r->url_len_ };
    const char *q = memchr(url.ptr, '?', url.len);
    if (q) {
        r->path = (gw_str_t){ url.ptr, (size_t)(q - url.ptr) };
        r->query = (gw_str_t){ q + 1, url.len - (size_t)(q - url.ptr) - 1 };
    } else {
        r->path = url;
        r->query = (gw_str_t){ url.ptr + url.len, 0 };
    }
    r->method = llhttp_get_method(p);
    r->method_name = llhttp_method_name((llhttp_method_t)r->method);

    if (llhttp_get_upgrade(p) || r->method == HTTP_CONNECT) {
        conn_fail(c, 400, "bad_request", "upgrade and CONNECT are not supported");
        return HPE_USER;
    }
    if ((p->flags & F_CONTENT_LENGTH) &&
        p->content_length > (uint64_t)c->srv->limits.max_body_bytes) {
        conn_fail(c, 413, "body_too_large", "request body exceeds the limit");
        return HPE_USER;
    }
    gw_str_t expect = gw_http_header(r, "Expect");
    if (expect.len) {
        if (expect.len == 12 && strncasecmp(expect.ptr, "100-continue", 12) == 0) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            write_raw(c, cont, sizeof(cont) - 1, 0);
        } else {
            conn_fail(c, 417, "bad_request", "unsupported Expect header");
            return HPE_USER;
        }
    }
    set_state(c, ST_BODY);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    gw_http_conn_t *c = p->data;
    if (gw_buf_append(&c->req->body, at, len) != GW_OK) {
        conn_fail(c, 413, "body_too_large", "request body exceeds the limit");
        return HPE_USER;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    gw_http_conn_t *c = p->data;
    gw_http_req_t *r = c->req;
    c->keepalive = llhttp_should_keep_alive(p) && !c->srv->draining;
    if (r->body.data == NULL) gw_buf_append(&r->body, "", 0);
    c->fresh = 0;
    c->in_handler = 1;
    set_state(c, ST_HANDLER);
    /* reading goes on while the handler runs: a client that waits for the
     * answer sends nothing meanwhile, and stopping and restarting the read
     * cost two epoll_ctl calls per request (docs/performance.md, "Third
     * round").  What does arrive meanwhile (pipelined requests) is kept in
     * c->pending; past HTTP_PENDING_PAUSE bytes reading stops until the
     * answer (conn_process). */
    return HPE_PAUSED;
}

/* ---- response writing ---- */

static void on_write(uv_write_t *w, int status)
{
    gw__write_t *wr = (gw__write_t *)w;
    gw_http_conn_t *c = wr->conn;
    int close_after = wr->close_after;
    free(wr);
    if (c->closed) return;
    if (status < 0 || close_after) conn_close(c);
}

/* Head and body (either may be empty) go out at once when the socket takes
 * them (uv_try_write refuses while earlier writes are queued, so order is
 * kept); only what it does not take is copied and queued. */
static void write_parts(gw_http_conn_t *c, const char *head, size_t hlen, const char *body, size_t blen,
                        int close_after)
{
    if (c->closed) return;
    uv_buf_t parts[2] = { uv_buf_init((char *)head, (unsigned)hlen), uv_buf_init((char *)body, (unsigned)blen) };
    int n = uv_try_write((uv_stream_t *)&c->tcp, parts, 2);
    if (n < 0 && n != UV_EAGAIN) {
        conn_close(c);
        return;
    }
    size_t done = n > 0 ? (size_t)n : 0;
    if (done == hlen + blen) {
        if (close_after) conn_close(c);
        return;
    }
    size_t len = hlen + blen - done;
    gw__write_t *wr = malloc(sizeof(*wr) + len);
    if (wr == NULL) {
        conn_close(c);
        return;
    }
    size_t from_head = done < hlen ? hlen - done : 0;
    if (from_head) memcpy(wr->data, head + done, from_head);
    memcpy(wr->data + from_head, body + (done > hlen ? done - hlen : 0), len - from_head);
    wr->conn = c;
    wr->close_after = close_after;
    uv_buf_t b = uv_buf_init(wr->data, (unsigned)len);
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        free(wr);
        conn_close(c);
    }
}

static void write_raw(gw_http_conn_t *c, const char *data, size_t len, int close_after)
{
    write_parts(c, data, len, "", 0, close_after);
}

/* The status line and headers; the body is written after them. */
static void build_head(gw_buf_t *out, int status, const char *ctype, size_t len, const char *reqid,
                       const gw_buf_t *extra, int keepalive)
{
    char num[24];
    gw_i64toa(status, num);
    gw_buf_appends(out, "HTTP/1.1 ");
    gw_buf_appends(out, num);
    gw_buf_appends(out, " ");
    gw_buf_appends(out, gw_http_reason(status));
    gw_buf_appends(out, "\r\n");
    /* 204 and 304 carry no body and no Content-Length (RFC 9110 §8.6) */
    int bodiless = status == 204 || status == 304;
    if (bodiless) len = 0;
    if (ctype && !bodiless) {
        gw_buf_appends(out, "Content-Type: ");
        gw_buf_appends(out, ctype);
        gw_buf_appends(out, "\r\n");
    }
    if (!bodiless) {
        gw_i64toa((int64_t)len, num);
        gw_buf_appends(out, "Content-Length: ");
        gw_buf_appends(out, num);
        gw_buf_appends(out, "\r\n");
    }
    if (reqid) {
        gw_buf_appends(out, "X-Request-Id: ");
        gw_buf_appends(out, reqid);
        gw_buf_appends(out, "\r\n");
    }
    if (extra && extra->len) gw_buf_append(out, extra->data, extra->len);
    gw_buf_appends(out, keepalive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
}

static void error_body(gw_buf_t *out, const char *code, const char *message)
{
    /* code and message are ours (no user input), but escape quotes anyway */
    gw_buf_appendf(out, "{\"error\":{\"code\":\"%s\",\"message\":\"", code);
    for (const char *m = message; *m; m++) {
        if (*m == '"' || *m == '\\') gw_buf_append(out, "\\", 1);
        if ((unsigned char)*m < 0x20) continue;
        gw_buf_append(out, m, 1);
    }
    gw_buf_appends(out, "\"}}");
}

/* Answers an error the server itself detected and closes the connection. */
static void conn_fail(gw_http_conn_t *c, int status, const char *code, const char *msg)
{
    if (c->closed || c->state == ST_CLOSING) return;
    gw_buf_t body, out;
    gw_buf_init(&body, 4096);
    gw_buf_init(&out, 8192);
    error_body(&body, code, msg);
    gw_http_req_t *r = c->req;
    char idbuf[24];
    if (r == NULL) /* no request parsed yet (connection cap): still give an id */
        next_req_id(c->srv, idbuf, sizeof(idbuf));
    const char *id = r ? r->id : idbuf;
    build_head(&out, status, "application/json", body.len, id, NULL, 0);
    gw_log_req(GW_LOG_INFO, id, "%s: %s %d %s (%s)", c->srv->name, c->peer, status, code, msg);
    if (r && c->srv->observer) c->srv->observer(r, status, c->srv->observer_udata);
    if (out.data) write_parts(c, out.data, out.len, body.data ? body.data : "", body.len, 1);
    else conn_close(c);
    gw_buf_free(&body);
    gw_buf_free(&out);
    c->state = ST_CLOSING;
    timer_set(c, 5000); /* give the write a moment, then close regardless */
}

void gw_http_add_header(gw_http_req_t *req, const char *name, const char *value)
{
    gw_buf_appends(&req->resp_headers_, name);
    gw_buf_appends(&req->resp_headers_, ": ");
    gw_buf_appends(&req->resp_headers_, value);
    gw_buf_appends(&req->resp_headers_, "\r\n");
}

static void conn_resume(gw_http_conn_t *c);
static void conn_maybe_free(gw_http_conn_t *c);

void gw_http_respond(gw_http_req_t *req, int status, const char *content_type, const char *body,
                     size_t len)
{
    gw_http_conn_t *c = req->conn_;
    gw_http_server_t *s = c->srv;
    if (s->observer) s->observer(req, status, s->observer_udata);
    c->in_handler = 0;
    c->req = NULL;
    if (!c->closed) {
        int keep = c->keepalive && !s->draining;
        gw_buf_t out;
        gw_buf_init(&out, SIZE_MAX / 2);
        build_head(&out, status, content_type, len, req->id, &req->resp_headers_, keep);
        /* 204 and 304: no body (build_head) */
        if (status == 204 || status == 304) len = 0;
        if (out.data) write_parts(c, out.data, out.len, body ? body : "", len, !keep);
        else conn_close(c);
        gw_buf_free(&out);
        req_free(req);
        if (keep && !c->closed) conn_resume(c);
    } else {
        req_free(req);
        conn_maybe_free(c);
    }
}

void gw_http_respond_error(gw_http_req_t *req, int status, const char *code, const char *message)
{
    gw_buf_t body;
    gw_buf_init(&body, 4096);
    error_body(&body, code, message);
    gw_http_respond(req, status, "application/json", body.data, body.len);
    gw_buf_free(&body);
}

int gw_http_query_param(const gw_http_req_t *r, const char *name, char *out, size_t outlen)
{
    size_t n = strlen(name);
    const char *p = r->query.ptr, *end = r->query.ptr + r->query.len;
    while (p && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        if ((size_t)(e - p) > n && memcmp(p, name, n) == 0 && p[n] == '=') {
            gw_buf_t b;
            gw_buf_init(&b, outlen - 1);
            int ok = gw_url_decode(p + n + 1, (size_t)(e - p - (ptrdiff_t)n - 1), 1, &b) == GW_OK;
            if (ok) snprintf(out, outlen, "%s", b.data ? b.data : "");
            gw_buf_free(&b);
            return ok;
        }
        p = amp ? amp + 1 : NULL;
    }
    return 0;
}

gw_str_t gw_http_header(const gw_http_req_t *req, const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < req->nheaders; i++) {
        if (req->headers[i].name.len == n && strncasecmp(req->headers[i].name.ptr, name, n) == 0)
            return req->headers[i].value;
    }
    return (gw_str_t){ NULL, 0 };
}

/* ---- connection I/O ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    gw_http_conn_t *c = h->data;
    buf->base = c->srv->rbuf;
    buf->len = sizeof(c->srv->rbuf);
}

static void conn_stop_reading(gw_http_conn_t *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    gw_http_conn_t *c = st->data;
    if (nread > 0) conn_process(c, buf->base, (size_t)nread);
    else if (nread < 0 && c->in_handler) {
        /* the client shut its side while its request is being handled (a
         * half-close still wants the answer): read again after answering,
         * which meets the end of file (or the error) again and closes */
        conn_stop_reading(c);
    } else if (nread < 0) {
        /* EOF or error: a request mid-way is abandoned; nothing to answer */
        conn_close(c);
    }
    (void)buf; /* the server's read buffer */
}

static void conn_start_reading(gw_http_conn_t *c)
{
    if (!c->reading && !c->closed) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = 1;
        else conn_close(c);
    }
}

/*
 * Parses data; dispatches each complete request.  A handler that answers
 * synchronously does not recurse: gw_http_respond only flags the connection
 * (resume_wanted) and this loop goes on with the bytes that followed.
 */
static void conn_process(gw_http_conn_t *c, const char *data, size_t len)
{
    gw_buf_t held; /* bytes being parsed that came from c->pending */
    gw_buf_init(&held, 0);
    for (;;) {
        if (c->closed || c->state == ST_CLOSING) break;
        if (c->in_handler) {
            if (gw_buf_append(&c->pending, data, len) != GW_OK) conn_close(c);
            else if (c->pending.len > HTTP_PENDING_PAUSE) conn_stop_reading(c);
            break;
        }
        llhttp_errno_t e = llhttp_execute(&c->parser, data, len);
        if (e == HPE_OK) break;
        if (e == HPE_USER) break; /* conn_fail already answered */
        if (e != HPE_PAUSED) {
            char msg[160];
            snprintf(msg, sizeof(msg), "malformed request: %s",
                     llhttp_get_error_reason(&c->parser));
            conn_fail(c, 400, "bad_request", msg);
            break;
        }
        const char *pos = llhttp_get_error_pos(&c->parser);
        size_t used = pos && pos >= data && pos <= data + len ? (size_t)(pos - data) : len;
        if (used < len && gw_buf_append(&c->pending, data + used, len - used) != GW_OK) {
            conn_close(c);
            break;
        }
        gw_http_server_t *s = c->srv;
        c->dispatching = 1;
        s->handler(c->req, s->udata);
        c->dispatching = 0;
        if (!c->resume_wanted) break; /* answered later: conn_resume then */
        c->resume_wanted = 0;
        if (c->closed) break;
        llhttp_resume(&c->parser);
        set_state(c, ST_WAIT);
        gw_buf_free(&held);
        held = c->pending;
        gw_buf_init(&c->pending, held.max);
        data = held.data ? held.data : "";
        len = held.len;
        if (len == 0) break;
    }
    gw_buf_free(&held);
    if (!c->in_handler && !c->closed && c->state != ST_CLOSING && !c->dispatching)
        conn_start_reading(c);
}

/* After a response with keep-alive: continue with buffered bytes. */
static void conn_resume(gw_http_conn_t *c)
{
    if (c->dispatching) {
        c->resume_wanted = 1;
        return;
    }
    llhttp_resume(&c->parser);
    set_state(c, ST_WAIT);
    gw_buf_t tmp = c->pending;
    gw_buf_init(&c->pending, tmp.max);
    conn_process(c, tmp.data ? tmp.data : "", tmp.len);
    gw_buf_free(&tmp);
}

static void on_timer(uv_timer_t *t)
{
    gw_http_conn_t *c = t->data;
    switch (c->state) {
    case ST_HEADERS:
    case ST_BODY:
        conn_fail(c, 408, "request_timeout", "request not received in time");
        break;
    default:
        conn_close(c);
        break;
    }
}

static void timer_set(gw_http_conn_t *c, int ms)
{
    if (c->closed) return;
    if (ms > 0) uv_timer_start(&c->timer, on_timer, (uint64_t)ms, 0);
    else uv_timer_stop(&c->timer);
}

static void server_maybe_done(gw_http_server_t *s);

static void conn_maybe_free(gw_http_conn_t *c)
{
    if (c->handles_open > 0 || c->in_handler) return;
    gw_http_server_t *s = c->srv;
    if (c->req) req_free(c->req);
    gw_buf_free(&c->pending);
    free(c);
    s->nalloc--;
    server_maybe_done(s);
}

static void on_conn_close(uv_handle_t *h)
{
    gw_http_conn_t *c = h->data;
    c->handles_open--;
    conn_maybe_free(c);
}

static void conn_close(gw_http_conn_t *c)
{
    if (c->closed) return;
    c->closed = 1;
    gw_http_server_t *s = c->srv;
    /* unlink now so the server's count is right */
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->nconns--;
    uv_close((uv_handle_t *)&c->tcp, on_conn_close);
    uv_close((uv_handle_t *)&c->timer, on_conn_close);
}

static void on_connection(uv_stream_t *server, int status)
{
    gw_http_server_t *s = server->data;
    if (status < 0) {
        gw_log(GW_LOG_WARN, "%s: accept: %s", s->name, uv_strerror(status));
        return;
    }
    gw_http_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return;
    c->srv = s;
    c->fresh = 1;
    s->nalloc++;
    gw_buf_init(&c->pending, (size_t)s->limits.max_header_bytes + (size_t)s->limits.max_body_bytes + 65536);
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    strcpy(c->peer, "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            uv_ip4_name((struct sockaddr_in *)&ss, c->peer, sizeof(c->peer));
        else if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->peer, sizeof(c->peer));
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    c->parser.data = c;
    if (s->nconns > s->limits.max_connections || s->draining) {
        gw_log(GW_LOG_WARN, "%s: connection from %s refused: %d open (max %d)", s->name, c->peer,
               s->nconns - 1, s->limits.max_connections);
        conn_fail(c, 503, "too_many_connections", "too many open connections");
        return;
    }
    set_state(c, ST_WAIT);
    conn_start_reading(c);
}

/* ---- server ---- */

gw_http_server_t *gw_http_server_new(uv_loop_t *loop, const char *name,
                                     const gw_http_limits_t *limits, gw_http_handler_fn handler,
                                     void *udata)
{
    gw_http_server_t *s = gw_xcalloc(1, sizeof(*s));
    s->loop = loop;
    snprintf(s->name, sizeof(s->name), "%s", name);
    s->limits = *limits;
    s->handler = handler;
    s->udata = udata;
    llhttp_settings_init(&s->settings);
    s->settings.on_message_begin = on_message_begin;
    s->settings.on_url = on_url;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_value = on_header_value;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_body = on_body;
    s->settings.on_message_complete = on_message_complete;
    gw_random(&s->id_prefix, sizeof(s->id_prefix));
    return s;
}

void gw_http_set_observer(gw_http_server_t *srv, gw_http_observer_fn fn, void *udata)
{
    srv->observer = fn;
    srv->observer_udata = udata;
}

gw_err_t gw_http_listen(gw_http_server_t *s, const char *host, int port)
{
    struct sockaddr_storage ss;
    int rc;
    if (strchr(host, ':')) rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
    else rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    if (rc != 0) {
        gw_log(GW_LOG_ERR, "%s: bad listen address %s: %s", s->name, host, uv_strerror(rc));
        return GW_EINVAL;
    }
    uv_tcp_init(s->loop, &s->listener);
    s->listener.data = s;
    s->listening = 1;
    rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&ss, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection);
    if (rc != 0) {
        gw_log(GW_LOG_ERR, "%s: listen on %s:%d: %s", s->name, host, port, uv_strerror(rc));
        return GW_EIO;
    }
    int sl = sizeof(ss);
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &sl);
    s->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                            : ((struct sockaddr_in6 *)&ss)->sin6_port);
    gw_log(GW_LOG_NOTICE, "%s: listening on %s:%d", s->name, host, s->port);
    return GW_OK;
}

int gw_http_port(const gw_http_server_t *s) { return s->port; }
int gw_http_open_connections(const gw_http_server_t *s) { return s->nconns; }

static void on_server_handle_close(uv_handle_t *h)
{
    gw_http_server_t *s = h->data;
    s->pending_closes--;
    if (!s->finishing) {
        server_maybe_done(s);
        return;
    }
    if (s->pending_closes > 0) return;
    void (*done)(void *) = s->drain_done;
    void *ud = s->drain_udata;
    while (s->nspare > 0) free(s->spare[--s->nspare]);
    free(s);
    if (done) done(ud);
}

/* Frees the server once draining and every connection struct is gone. */
static void server_maybe_done(gw_http_server_t *s)
{
    if (!s->draining || s->finishing || s->nalloc > 0) return;
    s->finishing = 1;
    uv_timer_stop(&s->drain_timer);
    s->pending_closes++;
    uv_close((uv_handle_t *)&s->drain_timer, on_server_handle_close);
}

static void on_drain_timeout(uv_timer_t *t)
{
    gw_http_server_t *s = t->data;
    int n = 0;
    for (gw_http_conn_t *c = s->conns, *next; c; c = next) {
        next = c->next;
        n++;
        conn_close(c);
    }
    if (n) gw_log(GW_LOG_WARN, "%s: shutdown deadline: closed %d connections", s->name, n);
}

void gw_http_shutdown(gw_http_server_t *s, int timeout_ms, void (*done)(void *), void *udata)
{
    s->draining = 1;
    s->drain_done = done;
    s->drain_udata = udata;
    uv_timer_init(s->loop, &s->drain_timer);
    s->drain_timer.data = s;
    uv_timer_start(&s->drain_timer, on_drain_timeout, (uint64_t)timeout_ms, 0);
    if (s->listening) {
        s->listening = 0;
        s->pending_closes++;
        uv_close((uv_handle_t *)&s->listener, on_server_handle_close);
    }
    /* idle connections go now; the others close after their response */
    for (gw_http_conn_t *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->state == ST_WAIT) conn_close(c);
    }
    server_maybe_done(s);
}
