/*
 * api.h — the merchant API (/v1/…), channel notifications (/notify/…) and
 * the admin API (/admin/…).  docs/api.md is the reference.
 */
#ifndef GW_API_H
#define GW_API_H

#include "app.h"

/* Registers prepared statements; call before gw_pg_start. */
void gw_api_init(gw_app_t *app);
void gw_api_free(gw_app_t *app);

/* The routes of the public listener after /healthz and /metrics. */
void gw_api_dispatch(gw_app_t *app, gw_http_req_t *req);
/* Admin routes (token already checked). */
void gw_admin_dispatch(gw_app_t *app, gw_http_req_t *req);

/* Runs a prepared statement returning one jsonb column; the callback gets
 * the parsed value (owned by the callee: freed after the callback) or NULL
 * with an error. */
typedef void (*gw_pg_json_cb)(void *udata, gw_err_t err, struct cJSON *json);
gw_err_t gw_pg_json(gw_app_t *app, const char *stmt, int n, const char *const *vals,
                    gw_pg_json_cb cb, void *udata);

/* Sub-merchant credential rows cached in process (api.cache_ttl_ms): NULL
 * when absent, forgotten or older than twice the TTL; a stale row is
 * returned and refreshed in the background.  Forget after an admin change
 * on this node. */
const struct cJSON *gw_subcache_get(gw_app_t *app, int64_t id);
void gw_subcache_put(gw_app_t *app, const struct cJSON *row);
void gw_subcache_forget(gw_app_t *app, int64_t id);
/* Drops this node's cached secret of a merchant (admin changes): the next
 * request reads it. */
void gw_merchant_forget(gw_app_t *app, const char *id);
/* Drops this node's cached routing document of a shop (admin changes). */
void gw_routes_forget(gw_app_t *app, const char *shop);
/* The same rows by the channel's merchant number (notifications). */
const struct cJSON *gw_subcache_get_by_mch(gw_app_t *app, const char *channel, const char *mch_id);

/* Merchant request signature: lower-case hex HMAC-SHA256(secret,
 * METHOD "\n" PATH_AND_QUERY "\n" TIMESTAMP "\n" NONCE "\n" BODY). */
void gw_api_sign(const char *secret, gw_str_t method, gw_str_t path_and_query, gw_str_t ts,
                 gw_str_t nonce, gw_str_t body, char out[65]);

#endif
