/*
 * app.h — the daemon's process-wide state and its HTTP routing.
 */
#ifndef GW_APP_H
#define GW_APP_H

#include <uv.h>
#include "gw.h"
#include "config.h"
#include "http.h"
#include "pg.h"
#include "redis.h"

typedef struct gw_app gw_app_t;

typedef void (*gw_route_fn)(gw_app_t *app, gw_http_req_t *req);

typedef struct gw_route {
    const char *method;  /* "GET", … */
    const char *path;    /* exact, or a prefix when it ends in '/' and prefix is set */
    int prefix;
    const char *label;   /* metrics label */
    gw_route_fn fn;
} gw_route_t;

struct gw_app {
    uv_loop_t *loop;
    gw_config_t cfg;
    gw_pg_t *pg;
    gw_redis_t *redis;
    gw_http_server_t *http;   /* merchant API, notifications, health */
    gw_http_server_t *admin;  /* operators: loopback + bearer token */
    struct gw_client *client;             /* outbound HTTP (channels, merchants) */
    struct gw_chan_registry *channels;    /* loaded channel modules */
    struct gw_merchant_cache *merchants;  /* merchant secrets, short TTL */
    struct gw_tasks *tasks;               /* background follow-up */
    struct gw_health *health;             /* per-channel bulkheads and breakers */
    uv_signal_t sig_term, sig_int, sig_hup;
    int stopping;
    int pending_stops;
    uint64_t started_ms;
};

/* Dispatches a request against a route table: 405 (with Allow) for a known
 * path with another method; returns 0 (nothing answered) for an unknown path. */
int gw_route_dispatch(gw_app_t *app, const gw_route_t *routes, gw_http_req_t *req);

/* Request handlers of the public and admin listeners. */
void gw_app_public_handler(gw_http_req_t *req, void *udata);
void gw_app_admin_handler(gw_http_req_t *req, void *udata);
void gw_app_observe(const gw_http_req_t *req, int status, void *udata);
void gw_app_metrics_init(gw_app_t *app);

/* Sends a JSON body (a cJSON tree it then frees). */
struct cJSON;
void gw_respond_json(gw_http_req_t *req, int status, struct cJSON *json);

#endif
