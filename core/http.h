/*
 * http.h — HTTP/1.1 server on libuv + llhttp.
 *
 * One request per connection is processed at a time: when a request is
 * complete the parser is paused and reading stops until the handler has
 * responded, so pipelined requests are answered in order and a client cannot
 * queue unbounded work.  Limits answer with JSON errors:
 * 431 header_too_large, 413 body_too_large, 400 bad_request,
 * 408 request_timeout, 503 too_many_connections.
 */
#ifndef GW_HTTP_H
#define GW_HTTP_H

#include <uv.h>
#include "gw.h"

#define GW_HTTP_MAX_HEADERS 64

typedef struct gw_http_server gw_http_server_t;
typedef struct gw_http_conn gw_http_conn_t;

typedef struct gw_http_header {
    gw_str_t name;
    gw_str_t value;
} gw_http_header_t;

typedef struct gw_http_req {
    /* read-only: valid until the response is sent */
    int method;              /* llhttp_method_t */
    const char *method_name; /* "GET", … */
    gw_str_t path;           /* raw (not percent-decoded), without the query */
    gw_str_t query;          /* without '?'; len 0 when absent */
    gw_http_header_t headers[GW_HTTP_MAX_HEADERS];
    int nheaders;
    gw_buf_t body;           /* NUL-terminated */
    char id[24];             /* request id, also sent as X-Request-Id */
    uint64_t start_us;       /* monotonic, first byte */
    char peer[48];           /* client address "ip" */
    /* public: set by the handler */
    const char *route;       /* metrics label (a static string), "-" unmatched */
    void *udata;
    /* private */
    gw_http_conn_t *conn_;
    gw_buf_t raw_;           /* url and header bytes */
    gw_buf_t resp_headers_;  /* extra response header lines */
    int hdr_state_;
    size_t url_off_, url_len_;
    size_t hoff_[GW_HTTP_MAX_HEADERS][2][2];
} gw_http_req_t;

typedef void (*gw_http_handler_fn)(gw_http_req_t *req, void *udata);
/* Called once per response after it is queued: for metrics and access logs. */
typedef void (*gw_http_observer_fn)(const gw_http_req_t *req, int status, void *udata);

typedef struct gw_http_limits {
    int max_connections;
    int max_header_bytes;
    int max_body_bytes;
    int header_timeout_ms;
    int body_timeout_ms;
    int idle_timeout_ms;
} gw_http_limits_t;

gw_http_server_t *gw_http_server_new(uv_loop_t *loop, const char *name,
                                     const gw_http_limits_t *limits,
                                     gw_http_handler_fn handler, void *udata);
void gw_http_set_observer(gw_http_server_t *srv, gw_http_observer_fn fn, void *udata);
/* Binds and listens; port 0 picks one (see gw_http_port). */
gw_err_t gw_http_listen(gw_http_server_t *srv, const char *host, int port);
int gw_http_port(const gw_http_server_t *srv);
int gw_http_open_connections(const gw_http_server_t *srv);

/* ?name=value of the request, percent-decoded ('+' is a space) into out
 * (NUL-terminated); 0 when absent, malformed or longer than outlen - 1. */
int gw_http_query_param(const gw_http_req_t *req, const char *name, char *out, size_t outlen);
/* Header lookup, case-insensitive; {NULL,0} when absent. */
gw_str_t gw_http_header(const gw_http_req_t *req, const char *name);
/* Adds a response header (before gw_http_respond). */
void gw_http_add_header(gw_http_req_t *req, const char *name, const char *value);
/* Sends the response and releases req: req must not be used afterwards.
 * Exactly once per request, from the loop thread. */
void gw_http_respond(gw_http_req_t *req, int status, const char *content_type,
                     const char *body, size_t len);
/* {"error":{"code":code,"message":message}} */
void gw_http_respond_error(gw_http_req_t *req, int status, const char *code, const char *message);
const char *gw_http_reason(int status);

/* Stops accepting, closes idle connections, lets in-flight requests finish
 * (their connections then close), force-closes what is left after
 * timeout_ms, frees the server, then calls done. */
void gw_http_shutdown(gw_http_server_t *srv, int timeout_ms, void (*done)(void *), void *udata);

#endif /* GW_HTTP_H */
