/*
 * client.h — outbound HTTP on one shared libcurl multi handle driven by the
 * libuv loop (curl docs/examples/multi-uv.c): keep-alive connections reused
 * per host, a cap per host, idle connections aged out, a deadline on every
 * request, a hard cap on response size.
 */
#ifndef GW_CLIENT_H
#define GW_CLIENT_H

#include <uv.h>
#include "gw.h"

typedef struct gw_client gw_client_t;

typedef struct gw_client_opts {
    int max_host_connections;  /* CURLMOPT_MAX_HOST_CONNECTIONS, default 64 */
    int max_total_connections; /* CURLMOPT_MAX_TOTAL_CONNECTIONS, default 1024 */
    int max_conn_age_s;        /* CURLOPT_MAXAGE_CONN: idle connections older are not reused, default 60 */
    size_t max_response_bytes; /* default 1 MiB */
    int connect_timeout_ms;    /* default 3000 */
} gw_client_opts_t;

typedef struct gw_client_request {
    const char *method;   /* "GET" / "POST" */
    const char *url;
    const char *headers;  /* "Name: value\r\n" lines, may be NULL */
    const char *body;
    size_t body_len;
    int timeout_ms;       /* whole request deadline */
    const char *pool;     /* connections are kept and reused per pool (the
                             channel's name); NULL: the common pool.  libcurl
                             7.88 walks every connection of a transfer's cache
                             when it removes the transfer, so a slow channel's
                             hundreds of open connections in one shared cache
                             made every other channel's calls dearer. */
} gw_client_request_t;

typedef struct gw_client_response {
    gw_err_t err;          /* GW_OK when an HTTP response arrived (any status) */
    int sent;              /* 0 only when the request certainly never left
                              (connect failed / refused): failover is safe */
    int status;
    gw_buf_t headers;      /* raw header lines of the final response */
    gw_buf_t body;
    double total_s;
    char errmsg[128];      /* curl's reason when err != GW_OK */
} gw_client_response_t;

/* resp is valid during the callback only.  Exactly once when send returned
 * GW_OK. */
typedef void (*gw_client_cb)(void *udata, gw_client_response_t *resp);

gw_client_t *gw_client_new(uv_loop_t *loop, const gw_client_opts_t *opts);
/* All request strings are copied. */
gw_err_t gw_client_send(gw_client_t *c, const gw_client_request_t *req, gw_client_cb cb,
                        void *udata);
int gw_client_inflight(const gw_client_t *c);
/* Cancels requests in flight (their callbacks get GW_ECANCELED), frees. */
void gw_client_close(gw_client_t *c, void (*done)(void *), void *udata);

#endif
