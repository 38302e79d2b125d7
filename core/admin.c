/*
 * admin.c — the operators' API on the admin listener (bearer token checked
 * by the caller).  Secrets are write-only: never returned, never logged.
 *
 *   PUT  /admin/merchants/{id}              {name, secret, status?}
 *   PUT  /admin/shops/{id}                  {merchant_id, name}
 *   POST /admin/sub-merchants               {channel, mch_id, app_id?, key?, private_key?,
 *                                            public_key?, extra?} → {id}
 *   PUT  /admin/shops/{id}/bindings/{method} [{channel, sub_merchant_ids:[…]}, …]
 *   PUT  /admin/shops/{id}/rates/{channel}  {current_ppm, future_ppm?, future_from?}
 *   PUT  /admin/shops/{id}/cashback/{method} {ppm}
 *   GET  /admin/channels                    loaded channel modules, breaker, calls in flight
 *   POST /admin/channels/reload             the same as SIGHUP
 *   POST /admin/balances/{merchant}/{customer} {amount, kind, reason, operator_id, request_id?}
 *   GET  /admin/orders/{trade_no}           an order with its events
 *   GET  /admin/notifications?status=FAILED merchant notifications by state
 *   POST /admin/notifications/{id}/resend   deliver once more
 *   POST /admin/settlement/redrive          {from_event_id} (settle.c)
 *   POST /admin/settlement/adjustments      {idempotency_key, corrects, gross?, fee?, cashback?, note, …} (settle.c)
 *   POST /admin/reconcile?channel=&date=[&mch_id=]  the channel's bill as body (settle.c)
 */
#include "api.h"
#include "channel.h"
#include "health.h"
#include "settle.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct adm {
    gw_app_t *app;
    gw_http_req_t *req;
    const char *what;
    char shop[40]; /* routing cache of this shop to drop on success */
} adm_t;

/* Drops what this node caches of what the change touched: the shop's
 * routing document, and those of every shop listed in result.shops (a
 * sub-merchant's change touches those); the sub-merchant's credentials
 * (result.sub_merchant_id); the merchant's secret (result.cached_merchant). */
static void invalidate(adm_t *a, const cJSON *result)
{
    char key[96];
    if (a->shop[0]) {
        snprintf(key, sizeof(key), "gw:shop:%s", a->shop);
        const char *argv[] = { "DEL", key };
        gw_redis_cmdargv(a->app->redis, NULL, NULL, 2, argv, NULL);
        gw_routes_forget(a->app, a->shop);
    }
    const cJSON *shops = cJSON_GetObjectItemCaseSensitive(result, "shops"), *it;
    cJSON_ArrayForEach(it, shops) {
        if (!cJSON_IsString(it)) continue;
        snprintf(key, sizeof(key), "gw:shop:%s", it->valuestring);
        const char *argv[] = { "DEL", key };
        gw_redis_cmdargv(a->app->redis, NULL, NULL, 2, argv, NULL);
        gw_routes_forget(a->app, it->valuestring);
    }
    const cJSON *sub = cJSON_GetObjectItemCaseSensitive(result, "sub_merchant_id");
    if (cJSON_IsNumber(sub)) gw_subcache_forget(a->app, (int64_t)sub->valuedouble);
    /* "cached_merchant": a merchant's secret or status changed (put_merchant) */
    const cJSON *merchant = cJSON_GetObjectItemCaseSensitive(result, "cached_merchant");
    if (cJSON_IsString(merchant)) gw_merchant_forget(a->app, merchant->valuestring);
}

static int id_ok(gw_str_t s)
{
    if (s.len == 0 || s.len > 32) return 0;
    for (size_t i = 0; i < s.len; i++)
        if (!isalnum((unsigned char)s.ptr[i]) && s.ptr[i] != '_' && s.ptr[i] != '-') return 0;
    return 1;
}

static void adm_pg_cb(void *udata, gw_err_t err, PGresult *res)
{
    adm_t *a = udata;
    if (err == GW_OK) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddBoolToObject(j, "ok", 1);
        if (PQntuples(res) > 0 && PQnfields(res) > 0 && !PQgetisnull(res, 0, 0)) {
            cJSON *v = cJSON_Parse(PQgetvalue(res, 0, 0));
            if (v) {
                invalidate(a, v);
                cJSON_DeleteItemFromObjectCaseSensitive(v, "shops");
                cJSON_DeleteItemFromObjectCaseSensitive(v, "sub_merchant_id");
                cJSON_DeleteItemFromObjectCaseSensitive(v, "cached_merchant");
                cJSON_AddItemToObject(j, "result", v);
            }
        } else invalidate(a, NULL);
        gw_respond_json(a->req, 200, j);
    } else if (err == GW_ECONFLICT) {
        gw_http_respond_error(a->req, 409, "conflict", "conflicts with an existing record");
    } else if (err == GW_ESTATE) {
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        char msg[160];
        snprintf(msg, sizeof(msg), "%s rejected by the database (SQLSTATE %s)", a->what,
                 state ? state : "?");
        gw_http_respond_error(a->req, 422, "invalid_request", msg);
    } else {
        gw_http_respond_error(a->req, 503, "service_unavailable", "the database is unavailable");
    }
    free(a);
}

static void adm_exec_shop(gw_app_t *app, gw_http_req_t *req, const char *what, const char *shop,
                          const char *sql, int n, const char *const *vals);
static void adm_exec(gw_app_t *app, gw_http_req_t *req, const char *what, const char *sql, int n,
                     const char *const *vals)
{
    adm_exec_shop(app, req, what, NULL, sql, n, vals);
}

static void adm_exec_shop(gw_app_t *app, gw_http_req_t *req, const char *what, const char *shop,
                          const char *sql, int n, const char *const *vals)
{
    adm_t *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        gw_http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    a->app = app;
    a->req = req;
    a->what = what;
    if (shop) snprintf(a->shop, sizeof(a->shop), "%s", shop);
    gw_err_t rc = gw_pg_exec_sql(app->pg, sql, n, vals, adm_pg_cb, a);
    if (rc != GW_OK) {
        free(a);
        gw_http_respond_error(req, 503, "service_unavailable", "the database is unavailable");
    }
}

static cJSON *body_object(gw_http_req_t *req)
{
    cJSON *j = cJSON_ParseWithLength(req->body.data, req->body.len);
    if (j && !cJSON_IsObject(j) && !cJSON_IsArray(j)) {
        cJSON_Delete(j);
        j = NULL;
    }
    if (j == NULL) gw_http_respond_error(req, 400, "invalid_json", "the body must be JSON");
    return j;
}

static const char *s_or(const cJSON *o, const char *k, const char *dflt)
{
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, k));
    return s ? s : dflt;
}

static void put_merchant(gw_app_t *app, gw_http_req_t *req, gw_str_t id)
{
    cJSON *b = body_object(req);
    if (b == NULL) return;
    const char *name = s_or(b, "name", NULL), *secret = s_or(b, "secret", NULL);
    const char *status = s_or(b, "status", "active");
    if (name == NULL || secret == NULL || strlen(secret) < 16) {
        gw_http_respond_error(req, 400, "invalid_request", "name and secret (16+ characters) are required");
        cJSON_Delete(b);
        return;
    }
    char idb[40];
    snprintf(idb, sizeof(idb), "%.*s", (int)id.len, id.ptr);
    const char *v[] = { idb, name, secret, status };
    adm_exec(app, req, "merchant",
             "INSERT INTO merchants (id, name, secret, status) VALUES ($1, $2, $3, $4) "
             "ON CONFLICT (id) DO UPDATE SET name = $2, secret = $3, status = $4, updated_at = now() "
             "RETURNING jsonb_build_object('id', id, 'cached_merchant', id)",
             4, v);
    cJSON_Delete(b);
}

static void put_shop(gw_app_t *app, gw_http_req_t *req, gw_str_t id)
{
    cJSON *b = body_object(req);
    if (b == NULL) return;
    const char *name = s_or(b, "name", NULL), *mid = s_or(b, "merchant_id", NULL);
    if (name == NULL || mid == NULL) {
        gw_http_respond_error(req, 400, "invalid_request", "merchant_id and name are required");
        cJSON_Delete(b);
        return;
    }
    char idb[40];
    snprintf(idb, sizeof(idb), "%.*s", (int)id.len, id.ptr);
    const char *v[] = { idb, mid, name };
    adm_exec_shop(app, req, "shop", idb,
             "INSERT INTO shops (id, merchant_id, name) VALUES ($1, $2, $3) "
             "ON CONFLICT (id) DO UPDATE SET name = $3, updated_at = now() "
             "WHERE shops.merchant_id = $2 RETURNING jsonb_build_object('id', id)",
             3, v);
    cJSON_Delete(b);
}

static void post_sub_merchant(gw_app_t *app, gw_http_req_t *req)
{
    cJSON *b = body_object(req);
    if (b == NULL) return;
    const char *channel = s_or(b, "channel", NULL), *mch = s_or(b, "mch_id", NULL);
    if (channel == NULL || mch == NULL) {
        gw_http_respond_error(req, 400, "invalid_request", "channel and mch_id are required");
        cJSON_Delete(b);
        return;
    }
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(b, "extra");
    char *extra_text = extra ? cJSON_PrintUnformatted(extra) : NULL;
    const char *v[] = { channel, mch, s_or(b, "app_id", ""), s_or(b, "key", ""),
                        s_or(b, "private_key", ""), s_or(b, "public_key", ""),
                        extra_text ? extra_text : "{}" };
    adm_exec(app, req, "sub-merchant",
             "INSERT INTO sub_merchants (channel, mch_id, app_id, key, private_key, public_key, extra) "
             "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) ON CONFLICT (channel, mch_id) DO UPDATE SET "
             "app_id = $3, key = $4, private_key = $5, public_key = $6, extra = $7::jsonb, updated_at = now() "
             "RETURNING jsonb_build_object('id', id, 'sub_merchant_id', id, 'shops', "
             "(SELECT COALESCE(jsonb_agg(DISTINCT shop_id), '[]'::jsonb) FROM binding_sub_merchants "
             "WHERE sub_merchant_id = sub_merchants.id))",
             7, v);
    cJSON_free(extra_text);
    cJSON_Delete(b);
}

static void put_bindings(gw_app_t *app, gw_http_req_t *req, gw_str_t shop, gw_str_t method)
{
    cJSON *b = body_object(req);
    if (b == NULL) return;
    if (!cJSON_IsArray(b)) {
        gw_http_respond_error(req, 400, "invalid_request", "the body must be an array of bindings");
        cJSON_Delete(b);
        return;
    }
    char sb[40], mb[40];
    snprintf(sb, sizeof(sb), "%.*s", (int)shop.len, shop.ptr);
    snprintf(mb, sizeof(mb), "%.*s", (int)method.len, method.ptr);
    char *text = cJSON_PrintUnformatted(b);
    const char *v[] = { sb, mb, text };
    adm_exec_shop(app, req, "bindings", sb, "SELECT to_jsonb(gw_bindings_set($1, $2, $3::jsonb))", 3, v);
    cJSON_free(text);
    cJSON_Delete(b);
}

/* PUT /admin/shops/{id}/rates/{channel} {"current_ppm", "future_ppm"?, "future_from"?} */
static void put_rates(gw_app_t *app, gw_http_req_t *req, gw_str_t shop, gw_str_t channel)
{
    cJSON *b = body_object(req);
    if (b == NULL) return;
    const cJSON *cur = cJSON_GetObjectItemCaseSensitive(b, "current_ppm");
    const cJSON *fut = cJSON_GetObjectItemCaseSensitive(b, "future_ppm");
    const char *from = s_or(b, "future_from", NULL);
    if (!cJSON_IsNumber(cur) || (fut && !cJSON_IsNumber(fut)) || ((fut == NULL) != (from == NULL))) {
        gw_http_respond_error(req, 400, "invalid_request",
                              "current_ppm is required; future_ppm and future_from go together");
        cJSON_Delete(b);
        return;
    }
    char sb[40], cb[40], curb[24], futb[24];
    snprintf(sb, sizeof(sb), "%.*s", (int)shop.len, shop.ptr);
    snprintf(cb, sizeof(cb), "%.*s", (int)channel.len, channel.ptr);
    snprintf(curb, sizeof(curb), "%.0f", cur->valuedouble);
    if (fut) snprintf(futb, sizeof(futb), "%.0f", fut->valuedouble);
    const char *v[] = { sb, cb, curb, fut ? futb : NULL, from };
    adm_exec_shop(app, req, "rates", sb,
                  "INSERT INTO shop_rates (shop_id, channel, current_ppm, future_ppm, future_from) "
                  "VALUES ($1, $2, $3::int, $4::int, $5::timestamptz) ON CONFLICT (shop_id, channel) DO UPDATE "
                  "SET current_ppm = $3::int, future_ppm = $4::int, future_from = $5::timestamptz, updated_at = now() "
                  "RETURNING jsonb_build_object('shop_id', shop_id, 'channel', channel, "
                  "'current_ppm', current_ppm, 'future_ppm', future_ppm, 'future_from', future_from)",
                  5, v);
    cJSON_Delete(b);
}

/* PUT /admin/shops/{id}/cashback/{method} {"ppm"} */
static void put_cashback(gw_app_t *app, gw_http_req_t *req, gw_str_t shop, gw_str_t method)
{
    cJSON *b = body_object(req);
    if (b == NULL) return;
    const cJSON *ppm = cJSON_GetObjectItemCaseSensitive(b, "ppm");
    if (!cJSON_IsNumber(ppm)) {
        gw_http_respond_error(req, 400, "invalid_request", "ppm is required");
        cJSON_Delete(b);
        return;
    }
    char sb[40], mb[40], pb[24];
    snprintf(sb, sizeof(sb), "%.*s", (int)shop.len, shop.ptr);
    snprintf(mb, sizeof(mb), "%.*s", (int)method.len, method.ptr);
    snprintf(pb, sizeof(pb), "%.0f", ppm->valuedouble);
    const char *v[] = { sb, mb, pb };
    adm_exec_shop(app, req, "cashback", sb,
                  "INSERT INTO shop_cashback (shop_id, method, ppm) VALUES ($1, $2, $3::int) "
                  "ON CONFLICT (shop_id, method) DO UPDATE SET ppm = $3::int "
                  "RETURNING jsonb_build_object('shop_id', shop_id, 'method', method, 'ppm', ppm)",
                  3, v);
    cJSON_Delete(b);
}

/* POST /admin/balances/{merchant}/{customer}
 * {"amount": signed fen, "kind": "topup"|"adjust", "reason", "operator_id", "request_id"?} */
static void post_balance(gw_app_t *app, gw_http_req_t *req, gw_str_t merchant, gw_str_t customer)
{
    cJSON *b = body_object(req);
    if (b == NULL) return;
    const cJSON *amt = cJSON_GetObjectItemCaseSensitive(b, "amount");
    const char *kind = s_or(b, "kind", "topup");
    const char *reason = s_or(b, "reason", NULL), *op = s_or(b, "operator_id", NULL);
    double d = cJSON_IsNumber(amt) ? amt->valuedouble : 0;
    if (d == 0 || d != (double)(int64_t)d || d > 1e13 || d < -1e13 ||
        (strcmp(kind, "topup") != 0 && strcmp(kind, "adjust") != 0) || (strcmp(kind, "topup") == 0 && d < 0) ||
        reason == NULL || op == NULL) {
        gw_http_respond_error(req, 400, "invalid_request",
                              "amount (integer fen, not 0; positive for topup), kind topup|adjust, "
                              "reason and operator_id are required");
        cJSON_Delete(b);
        return;
    }
    char mb[40], cb[72], ab[24];
    snprintf(mb, sizeof(mb), "%.*s", (int)merchant.len, merchant.ptr);
    snprintf(cb, sizeof(cb), "%.*s", (int)customer.len, customer.ptr);
    snprintf(ab, sizeof(ab), "%lld", (long long)d);
    const char *v[] = { mb, cb, ab, kind, reason, op, s_or(b, "request_id", NULL) };
    adm_exec(app, req, "balance", "SELECT gw_balance_adjust($1, $2, $3::bigint, $4, $5, $6, $7)", 7, v);
    cJSON_Delete(b);
}

static void get_order(gw_app_t *app, gw_http_req_t *req, gw_str_t trade_no)
{
    char tb[72];
    snprintf(tb, sizeof(tb), "%.*s", (int)trade_no.len, trade_no.ptr);
    const char *v[] = { tb };
    adm_exec(app, req, "order",
             "SELECT jsonb_build_object('order', to_jsonb(o), 'events', "
             "(SELECT jsonb_agg(to_jsonb(e) ORDER BY e.id) FROM order_events e WHERE e.order_id = o.id), "
             "'refunds', (SELECT jsonb_agg(to_jsonb(r) ORDER BY r.id) FROM refunds r WHERE r.order_id = o.id)) "
             "FROM orders o WHERE trade_no = $1",
             1, v);
}

static void get_notifications(gw_app_t *app, gw_http_req_t *req)
{
    static const char *const states[] = { "PENDING", "DELIVERED", "FAILED" };
    const char *st = NULL;
    char given[16] = "FAILED";
    if (req->query.len && !gw_http_query_param(req, "status", given, sizeof(given)))
        snprintf(given, sizeof(given), "FAILED");
    for (size_t i = 0; i < GW_ARRAY_SIZE(states); i++)
        if (strcmp(given, states[i]) == 0) st = states[i];
    if (st == NULL) {
        gw_http_respond_error(req, 400, "invalid_request", "status must be PENDING, DELIVERED or FAILED");
        return;
    }
    const char *v[] = { st };
    adm_exec(app, req, "notifications",
             "SELECT COALESCE(jsonb_agg(jsonb_build_object('id', n.id, 'merchant_id', n.merchant_id, "
             "'trade_no', o.trade_no, 'event', n.event, 'url', n.url, 'status', n.status, "
             "'attempts', n.attempts, 'last_http_status', n.last_http_status, 'last_error', n.last_error, "
             "'next_at', n.next_at, 'created_at', n.created_at) ORDER BY n.id), '[]'::jsonb) "
             "FROM (SELECT * FROM merchant_notifications WHERE status = $1 ORDER BY id DESC LIMIT 500) n "
             "JOIN orders o ON o.id = n.order_id",
             1, v);
}

static void post_resend(gw_app_t *app, gw_http_req_t *req, gw_str_t id)
{
    char idb[24];
    for (size_t i = 0; i < id.len; i++)
        if (id.ptr[i] < '0' || id.ptr[i] > '9' || id.len > 18) {
            gw_http_respond_error(req, 404, "not_found", "no such notification");
            return;
        }
    snprintf(idb, sizeof(idb), "%.*s", (int)id.len, id.ptr);
    const char *v[] = { idb };
    adm_exec(app, req, "notification",
             "UPDATE merchant_notifications SET status = 'PENDING', next_at = now(), "
             "lease_owner = NULL, lease_until = NULL WHERE id = $1::bigint "
             "RETURNING jsonb_build_object('id', id, 'status', status, 'attempts', attempts)",
             1, v);
}

static void add_health(gw_app_t *app, cJSON *arr)
{
    cJSON *c;
    cJSON_ArrayForEach(c, arr) {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "name"));
        if (name == NULL) continue;
        cJSON_AddStringToObject(c, "breaker", gw_breaker_state_name(gw_health_state(app, name)));
        cJSON_AddNumberToObject(c, "calls_in_flight", gw_health_inflight(app, name));
    }
}

static void get_channels(gw_app_t *app, gw_http_req_t *req)
{
    cJSON *j = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(j, "channels");
    if (app->channels) gw_chan_registry_json(app->channels, arr);
    add_health(app, arr);
    gw_respond_json(req, 200, j);
}

static void post_reload(gw_app_t *app, gw_http_req_t *req)
{
    gw_err_t rc = app->channels ? gw_chan_reload(app->channels) : GW_ENOENT;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddBoolToObject(j, "ok", rc == GW_OK);
    if (rc != GW_OK) cJSON_AddStringToObject(j, "error", gw_strerror(rc));
    cJSON *arr = cJSON_AddArrayToObject(j, "channels");
    if (app->channels) gw_chan_registry_json(app->channels, arr);
    gw_respond_json(req, rc == GW_OK ? 200 : 500, j);
}

void gw_admin_dispatch(gw_app_t *app, gw_http_req_t *req)
{
    gw_str_t seg[6];
    int n = 0;
    const char *p = req->path.ptr, *end = req->path.ptr + req->path.len;
    while (p < end && n < 6) {
        if (*p == '/') {
            p++;
            continue;
        }
        const char *s = p;
        while (p < end && *p != '/') p++;
        seg[n++] = (gw_str_t){ s, (size_t)(p - s) };
    }
    const char *m = req->method_name;
    int get = !strcmp(m, "GET"), put = !strcmp(m, "PUT"), post = !strcmp(m, "POST");
    if (n < 2 || !gw_str_eq(seg[0], "admin")) goto not_found;
    if (n == 3 && gw_str_eq(seg[1], "merchants") && id_ok(seg[2])) {
        req->route = "admin:merchants";
        if (put) return put_merchant(app, req, seg[2]);
        goto not_allowed;
    }
    if (n == 3 && gw_str_eq(seg[1], "shops") && id_ok(seg[2])) {
        req->route = "admin:shops";
        if (put) return put_shop(app, req, seg[2]);
        goto not_allowed;
    }
    if (n == 5 && gw_str_eq(seg[1], "shops") && id_ok(seg[2]) && gw_str_eq(seg[3], "bindings") &&
        id_ok(seg[4])) {
        req->route = "admin:bindings";
        if (put) return put_bindings(app, req, seg[2], seg[4]);
        goto not_allowed;
    }
    if (n == 5 && gw_str_eq(seg[1], "shops") && id_ok(seg[2]) && gw_str_eq(seg[3], "rates") &&
        id_ok(seg[4])) {
        req->route = "admin:rates";
        if (put) return put_rates(app, req, seg[2], seg[4]);
        goto not_allowed;
    }
    if (n == 5 && gw_str_eq(seg[1], "shops") && id_ok(seg[2]) && gw_str_eq(seg[3], "cashback") &&
        id_ok(seg[4])) {
        req->route = "admin:cashback";
        if (put) return put_cashback(app, req, seg[2], seg[4]);
        goto not_allowed;
    }
    if (n == 2 && gw_str_eq(seg[1], "sub-merchants")) {
        req->route = "admin:sub-merchants";
        if (post) return post_sub_merchant(app, req);
        goto not_allowed;
    }
    if (n == 2 && gw_str_eq(seg[1], "channels")) {
        req->route = "admin:channels";
        if (get) return get_channels(app, req);
        goto not_allowed;
    }
    if (n == 3 && gw_str_eq(seg[1], "channels") && gw_str_eq(seg[2], "reload")) {
        req->route = "admin:channels/reload";
        if (post) return post_reload(app, req);
        goto not_allowed;
    }
    if (n == 4 && gw_str_eq(seg[1], "balances") && id_ok(seg[2]) && seg[3].len > 0 && seg[3].len <= 64) {
        req->route = "admin:balances";
        if (post) return post_balance(app, req, seg[2], seg[3]);
        goto not_allowed;
    }
    if (n == 2 && gw_str_eq(seg[1], "notifications")) {
        req->route = "admin:notifications";
        if (get) return get_notifications(app, req);
        goto not_allowed;
    }
    if (n == 4 && gw_str_eq(seg[1], "notifications") && gw_str_eq(seg[3], "resend")) {
        req->route = "admin:notifications/resend";
        if (post) return post_resend(app, req, seg[2]);
        goto not_allowed;
    }
    if (n == 3 && gw_str_eq(seg[1], "settlement") && gw_str_eq(seg[2], "redrive")) {
        req->route = "admin:settlement/redrive";
        if (post) return gw_settle_admin_redrive(app, req);
        goto not_allowed;
    }
    if (n == 3 && gw_str_eq(seg[1], "settlement") && gw_str_eq(seg[2], "adjustments")) {
        req->route = "admin:settlement/adjustments";
        if (post) return gw_settle_admin_adjust(app, req);
        goto not_allowed;
    }
    if (n == 2 && gw_str_eq(seg[1], "reconcile")) {
        req->route = "admin:reconcile";
        if (post) return gw_settle_admin_reconcile(app, req);
        goto not_allowed;
    }
    if (n == 3 && gw_str_eq(seg[1], "orders")) {
        req->route = "admin:orders";
        if (get) return get_order(app, req, seg[2]);
        goto not_allowed;
    }
not_found:
    gw_http_respond_error(req, 404, "not_found", "no such endpoint");
    return;
not_allowed:
    gw_http_respond_error(req, 405, "method_not_allowed", "method not allowed for this path");
}
