/*
 * app.c — routing, health and metrics endpoints.
 */
#include "app.h"
#include "api.h"
#include "json.h"
#include "metrics.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

void gw_respond_json(gw_http_req_t *req, int status, cJSON *json)
{
    char *text = json ? gw_json_print(json) : NULL;
    cJSON_Delete(json);
    if (text == NULL) {
        gw_http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    gw_http_respond(req, status, "application/json", text, strlen(text));
    free(text);
}

int gw_route_dispatch(gw_app_t *app, const gw_route_t *routes, gw_http_req_t *req)
{
    int path_known = 0;
    char allow[128] = "";
    for (const gw_route_t *r = routes; r->path; r++) {
        size_t n = strlen(r->path);
        int match = r->prefix ? (req->path.len > n && memcmp(req->path.ptr, r->path, n) == 0)
                              : (req->path.len == n && memcmp(req->path.ptr, r->path, n) == 0);
        if (!match) continue;
        if (strcmp(r->method, req->method_name) == 0) {
            req->route = r->label;
            r->fn(app, req);
            return 1;
        }
        path_known = 1;
        if (!strstr(allow, r->method)) {
            size_t l = strlen(allow);
            snprintf(allow + l, sizeof(allow) - l, "%s%s", l ? ", " : "", r->method);
        }
    }
    if (path_known) {
        req->route = "-";
        gw_http_add_header(req, "Allow", allow);
        gw_http_respond_error(req, 405, "method_not_allowed", "method not allowed for this path");
        return 1;
    }
    return 0;
}

/* ---- /healthz: a live query through the pool ---- */

typedef struct {
    gw_app_t *app;
    gw_http_req_t *req;
} health_ctx_t;

static void health_reply(gw_app_t *app, gw_http_req_t *req, int db_ok, const char *why)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "status", db_ok ? "ok" : "unavailable");
    cJSON *pg = cJSON_AddObjectToObject(j, "postgres");
    cJSON_AddNumberToObject(pg, "up", gw_pg_up(app->pg));
    cJSON_AddNumberToObject(pg, "size", gw_pg_size(app->pg));
    if (!db_ok && why) cJSON_AddStringToObject(pg, "error", why);
    cJSON *rd = cJSON_AddObjectToObject(j, "redis");
    cJSON_AddBoolToObject(rd, "up", gw_redis_up(app->redis));
    cJSON_AddNumberToObject(j, "uptime_s", (double)((gw_now_ms() - app->started_ms) / 1000));
    gw_respond_json(req, db_ok ? 200 : 503, j);
}

static void health_pg_cb(void *udata, gw_err_t err, PGresult *res)
{
    health_ctx_t *h = udata;
    (void)res;
    health_reply(h->app, h->req, err == GW_OK, err == GW_OK ? NULL : gw_strerror(err));
    free(h);
}

static void route_healthz(gw_app_t *app, gw_http_req_t *req)
{
    health_ctx_t *h = malloc(sizeof(*h));
    if (h == NULL) {
        gw_http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    h->app = app;
    h->req = req;
    gw_err_t rc = gw_pg_exec_sql(app->pg, "SELECT 1", 0, NULL, health_pg_cb, h);
    if (rc != GW_OK) {
        free(h);
        health_reply(app, req, 0, gw_strerror(rc));
    }
}

static void route_metrics(gw_app_t *app, gw_http_req_t *req)
{
    (void)app;
    gw_buf_t out;
    gw_buf_init(&out, 16 << 20);
    if (gw_metrics_render(&out) != GW_OK) {
        gw_buf_free(&out);
        gw_http_respond_error(req, 500, "internal", "metrics too large");
        return;
    }
    gw_http_respond(req, 200, "text/plain; version=0.0.4", out.data ? out.data : "", out.len);
    gw_buf_free(&out);
}

static const gw_route_t public_routes[] = {
    { "GET", "/healthz", 0, "/healthz", route_healthz },
    { "GET", "/metrics", 0, "/metrics", route_metrics },
    { NULL, NULL, 0, NULL, NULL }
};

void gw_app_public_handler(gw_http_req_t *req, void *udata)
{
    if (!gw_route_dispatch(udata, public_routes, req)) gw_api_dispatch(udata, req);
}

/* ---- admin listener: bearer token ---- */

static int token_ok(const gw_app_t *app, const gw_http_req_t *req)
{
    gw_str_t auth = gw_http_header(req, "Authorization");
    const char *tok = app->cfg.admin_token;
    size_t n = strlen(tok);
    if (auth.len != 7 + n || strncasecmp(auth.ptr, "Bearer ", 7) != 0) return 0;
    /* constant-time comparison */
    unsigned char diff = 0;
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)(auth.ptr[7 + i] ^ tok[i]);
    return diff == 0;
}

static const gw_route_t admin_routes[] = {
    { "GET", "/healthz", 0, "admin:/healthz", route_healthz },
    { "GET", "/metrics", 0, "admin:/metrics", route_metrics },
    { NULL, NULL, 0, NULL, NULL }
};

void gw_app_admin_handler(gw_http_req_t *req, void *udata)
{
    gw_app_t *app = udata;
    if (!token_ok(app, req)) {
        req->route = "admin";
        gw_http_add_header(req, "WWW-Authenticate", "Bearer");
        gw_http_respond_error(req, 401, "unauthorized", "a valid admin bearer token is required");
        return;
    }
    if (!gw_route_dispatch(app, admin_routes, req)) gw_admin_dispatch(app, req);
}

/* ---- metrics ---- */

void gw_app_observe(const gw_http_req_t *req, int status, void *udata)
{
    (void)udata;
    char labels[160];
    char st[24];
    gw_i64toa(status, st);
    gw_strjoin(labels, sizeof(labels), "route=\"", req->route ? req->route : "-", "\",status=\"", st, "\"", NULL);
    gw_metric_add("paygate_http_requests_total", labels, 1);
    gw_strjoin(labels, sizeof(labels), "route=\"", req->route ? req->route : "-", "\"", NULL);
    gw_metric_observe("paygate_http_request_duration_seconds", labels,
                      (double)(gw_mono_us() - req->start_us) / 1e6);
    gw_log_req(GW_LOG_DEBUG, req->id, "%s %s %.*s %d", req->peer, req->method_name,
               (int)req->path.len, req->path.ptr, status);
}

static void refresh_gauges(void *udata)
{
    gw_app_t *app = udata;
    gw_metric_set("paygate_http_connections_open", "listener=\"public\"",
                  app->http ? gw_http_open_connections(app->http) : 0);
    gw_metric_set("paygate_http_connections_open", "listener=\"admin\"",
                  app->admin ? gw_http_open_connections(app->admin) : 0);
    gw_metric_set("paygate_postgres_connections_up", NULL, gw_pg_up(app->pg));
    gw_metric_set("paygate_postgres_pending_jobs", NULL, gw_pg_pending(app->pg));
    uint64_t batches, batched;
    gw_pg_batch_counts(app->pg, &batches, &batched);
    gw_metric_set("paygate_postgres_batches_total", NULL, (double)batches);
    gw_metric_set("paygate_postgres_batched_jobs_total", NULL, (double)batched);
    gw_metric_set("paygate_redis_up", NULL, gw_redis_up(app->redis));
}

void gw_app_metrics_init(gw_app_t *app)
{
    gw_metric_declare("paygate_http_requests_total", "counter", "HTTP requests by route and status");
    gw_metric_declare("paygate_http_request_duration_seconds", "histogram",
                      "HTTP request latency from first byte to response");
    gw_metric_declare("paygate_http_connections_open", "gauge", "Open HTTP connections");
    gw_metric_declare("paygate_postgres_connections_up", "gauge", "PostgreSQL connections up");
    gw_metric_declare("paygate_postgres_pending_jobs", "gauge", "PostgreSQL jobs queued or in flight");
    gw_metric_declare("paygate_postgres_batches_total", "counter",
                      "Batches sent (several queued jobs of one statement in one transaction)");
    gw_metric_declare("paygate_postgres_batched_jobs_total", "counter", "Jobs carried by those batches");
    gw_metric_declare("paygate_redis_up", "gauge", "1 when the Redis connection is up");
    gw_metrics_on_render(refresh_gauges, app);
}
