/*
 * api.c — merchant API: authentication, orders, refunds.
 *
 * Every handler is a small chain of asynchronous steps over one api_req_t:
 * authenticate → validate → persist → call the channel → persist → answer.
 * The order row is written before any channel is contacted; every later
 * write is a guarded transition (storage/migrations), so a late or repeated
 * step changes nothing.
 */
#include "api.h"
#include "chanop.h"
#include "json.h"
#include "channel.h"
#include "crypto.h"
#include "metrics.h"
#include "health.h"
#include "rows.h"
#include "settle.h"
#include "tasks.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

/* ------------------------------------------------------------------ */
/* prepared statements */

static const struct {
    const char *name;
    const char *sql;
} stmts[] = {
    { "merchant_get", "SELECT jsonb_build_object('secret', secret, 'status', status) FROM merchants WHERE id = $1" },
    { "nonce_put", "INSERT INTO api_nonces (merchant_id, nonce, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3::int)) ON CONFLICT DO NOTHING RETURNING to_jsonb(true)" },
    { "sub_get", "SELECT to_jsonb(x) FROM (SELECT id AS sub_merchant_id, channel, mch_id, app_id, key, private_key, public_key, extra::text AS extra FROM sub_merchants WHERE id = $1) x" },
    { "sub_get_by_mch", "SELECT to_jsonb(x) FROM (SELECT id AS sub_merchant_id, channel, mch_id, app_id, key, private_key, public_key, extra::text AS extra FROM sub_merchants WHERE channel = $1 AND mch_id = $2) x" },
    { "notify_ingest", "SELECT gw_notify_ingest($1::jsonb)" },
    { "notify_ingest_many", "SELECT r, i FROM gw_notify_ingest_many($1::jsonb)" },
    { "order_create", "SELECT gw_order_create($1::jsonb)" },
    { "order_create_many", "SELECT r, i FROM gw_order_create_many($1::jsonb)" },
    { "balance_pay", "SELECT gw_balance_pay($1)" },
    { "balance_refund", "SELECT gw_balance_refund($1)" },
    { "balance_get", "SELECT jsonb_build_object('customer_id', customer_id, 'balance', balance, 'updated_at', updated_at) FROM balance_accounts WHERE merchant_id = $1 AND customer_id = $2" },
    { "balance_entries",
      "SELECT jsonb_build_object('entries', COALESCE(jsonb_agg(jsonb_build_object('id', e.id, 'amount', e.amount, "
      "'balance_after', e.balance_after, 'kind', e.kind, 'trade_no', o.trade_no, 'refund_no', r.refund_no, "
      "'reason', e.reason, 'created_at', e.created_at) ORDER BY e.id DESC), '[]'::jsonb)) "
      "FROM (SELECT * FROM balance_entries WHERE merchant_id = $1 AND customer_id = $2 AND id < $3::bigint "
      "ORDER BY id DESC LIMIT $4::int) e LEFT JOIN orders o ON o.id = e.order_id LEFT JOIN refunds r ON r.id = e.refund_id" },
    { "order_reroute", "SELECT gw_order_reroute($1::bigint, $2, $3::bigint, $4)" },
    { "shop_routes", "SELECT gw_shop_routes($1)" },
    { "rotation_next", "SELECT to_jsonb(gw_rotation_next($1))" },
    { "order_transition", "SELECT gw_order_transition($1::bigint, $2::text[], $3, $4::jsonb, $5)" },
    /* the first transition after the channel call: batched (0011) */
    { "order_transition_first", "SELECT gw_order_transition($1::bigint, $2::text[], $3, $4::jsonb, $5)" },
    { "order_transition_first_many", "SELECT r, i FROM gw_order_transition_first_many($1::jsonb)" },
    { "order_get", "SELECT to_jsonb(o) FROM orders o WHERE merchant_id = $1 AND trade_no = $2" },
    { "order_reversed_after_payment", "SELECT gw_order_reversed_after_payment($1::bigint, $2::jsonb)" },
    { "order_lease", "SELECT gw_order_lease($1::bigint, $2, $3::int)" },
    { "order_get_out", "SELECT to_jsonb(o) FROM orders o WHERE merchant_id = $1 AND out_trade_no = $2" },
    { "refund_create", "SELECT gw_refund_create($1::jsonb)" },
    { "refund_transition", "SELECT gw_refund_transition($1::bigint, $2, $3::jsonb, $4)" },
    { "refund_get", "SELECT jsonb_build_object('refund', to_jsonb(r), 'order', to_jsonb(o)) FROM refunds r JOIN orders o ON o.id = r.order_id WHERE r.merchant_id = $1 AND r.refund_no = $2" },
    { "refund_get_out", "SELECT jsonb_build_object('refund', to_jsonb(r), 'order', to_jsonb(o)) FROM refunds r JOIN orders o ON o.id = r.order_id WHERE r.merchant_id = $1 AND r.out_refund_no = $2" },
};

typedef struct pgj {
    gw_pg_json_cb cb;
    void *udata;
} pgj_t;

static void pg_json_done(void *udata, gw_err_t err, const char *value, size_t len)
{
    pgj_t *p = udata;
    cJSON *j = NULL;
    if (err == GW_OK) {
        if (value == NULL) err = GW_ENOENT;
        else if ((j = gw_json_parse(value, len)) == NULL) err = GW_EPARSE;
    }
    p->cb(p->udata, err, j);
    cJSON_Delete(j);
    free(p);
}

gw_err_t gw_pg_json(gw_app_t *app, const char *stmt, int n, const char *const *vals,
                    gw_pg_json_cb cb, void *udata)
{
    pgj_t *p = malloc(sizeof(*p));
    if (p == NULL) return GW_ENOMEM;
    p->cb = cb;
    p->udata = udata;
    gw_err_t rc = gw_pg_exec_value(app->pg, stmt, n, vals, pg_json_done, p);
    if (rc != GW_OK) free(p);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Credentials cached in process: merchant secrets and sub-merchant keys.
 * An entry is fresh for api.cache_ttl_ms (30 s).  The first request that
 * finds it older is still served from it and starts one background read
 * that refreshes it: when a busy merchant's entry expires, its requests
 * neither wait for the database nor send it the same read each (under
 * load, ~15 identical reads queued behind the order batches, ~14 ms each,
 * every 30 s).  An entry twice that old, or forgotten after an admin
 * change on this node, is read before use, as on a miss; so a change made
 * elsewhere takes effect within one to two TTLs. */
typedef struct {
    uint64_t fetched_ms;  /* 0: forgotten, read before use */
    unsigned gen;         /* bumped by a forget */
    int refreshing;       /* a background read is in flight */
} cache_meta_t;

/* Whether the entry may serve; *refresh: whether the caller should start
 * the background read (stale, and none in flight). */
static int cache_usable(const gw_app_t *app, const cache_meta_t *m, int *refresh)
{
    uint64_t ttl = (uint64_t)app->cfg.api.cache_ttl_ms, age = gw_now_ms() - m->fetched_ms;
    *refresh = age >= ttl && !m->refreshing;
    return age < 2 * ttl; /* a clock stepped back gives a huge age: read */
}

static void cache_forget(cache_meta_t *m)
{
    m->fetched_ms = 0;
    m->gen++;
}

/* A background read started at generation gen came back for the entry m
 * (NULL: no longer cached).  1: err is GW_OK and what was read may be
 * stored; otherwise the entry is dealt with here. */
static int cache_refreshed(const gw_app_t *app, cache_meta_t *m, unsigned gen, gw_err_t err,
                           const char *what, const char *id)
{
    if (m) m->refreshing = 0;
    if (m && m->gen != gen) return 0; /* forgotten meanwhile (an admin change): what was read may
                                         be from before it; the next use reads again */
    if (err == GW_OK) return 1;
    if (err == GW_ENOENT) {
        if (m) m->fetched_ms = 0; /* gone: the next use reads, and is refused */
    } else if (err != GW_ECANCELED) {
        gw_log(GW_LOG_WARN, "%s %s: refreshing its cached credentials failed (%s); "
               "the entry serves until it is %d ms old", what, id, gw_strerror(err), 2 * app->cfg.api.cache_ttl_ms);
    }
    return 0;
}

#define MC_BUCKETS 1024

typedef struct mc_entry {
    struct mc_entry *next;
    char id[40];
    char *secret;
    int active;
    cache_meta_t c;
} mc_entry_t;

struct gw_merchant_cache {
    mc_entry_t *b[MC_BUCKETS];
};

/* FNV-1a of a string, for the in-process caches' buckets. */
static unsigned str_hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static unsigned mc_hash(const char *s)
{
    return str_hash(s) % MC_BUCKETS;
}

static mc_entry_t *mc_find(gw_app_t *app, const char *id)
{
    for (mc_entry_t *e = app->merchants->b[mc_hash(id)]; e; e = e->next)
        if (strcmp(e->id, id) == 0) return e;
    return NULL;
}

static void mc_put(gw_app_t *app, const char *id, const char *secret, int active)
{
    unsigned h = mc_hash(id);
    mc_entry_t *e;
    for (e = app->merchants->b[h]; e; e = e->next)
        if (strcmp(e->id, id) == 0) break;
    if (e == NULL) {
        e = calloc(1, sizeof(*e));
        if (e == NULL) return;
        snprintf(e->id, sizeof(e->id), "%s", id);
        e->next = app->merchants->b[h];
        app->merchants->b[h] = e;
    }
    char *copy = strdup(secret);
    if (copy == NULL) {
        e->c.fetched_ms = 0; /* read again next time rather than serve the old one */
        return;
    }
    free(e->secret);
    e->secret = copy;
    e->active = active;
    e->c.fetched_ms = gw_now_ms();
}

/* The background read of a stale entry (the id, not the entry, is kept:
 * the callback looks it up again). */
typedef struct {
    gw_app_t *app;
    char id[40];
    unsigned gen;
} mc_refresh_t;

static void mc_refresh_cb(void *udata, gw_err_t err, cJSON *j)
{
    mc_refresh_t *r = udata;
    mc_entry_t *e = r->app->merchants ? mc_find(r->app, r->id) : NULL;
    if (cache_refreshed(r->app, e ? &e->c : NULL, r->gen, err, "merchant", r->id)) {
        const char *secret = gw_jstr(j, "secret"), *status = gw_jstr(j, "status");
        mc_put(r->app, r->id, secret ? secret : "", status && strcmp(status, "active") == 0);
    }
    free(r);
}

static void mc_refresh(gw_app_t *app, mc_entry_t *e)
{
    mc_refresh_t *r = malloc(sizeof(*r));
    if (r == NULL) return;
    r->app = app;
    memcpy(r->id, e->id, sizeof(r->id));
    r->gen = e->c.gen;
    const char *v[] = { r->id };
    if (gw_pg_json(app, "merchant_get", 1, v, mc_refresh_cb, r) != GW_OK) {
        free(r); /* the next request tries again */
        return;
    }
    e->c.refreshing = 1;
}

void gw_merchant_forget(gw_app_t *app, const char *id)
{
    mc_entry_t *e = app->merchants ? mc_find(app, id) : NULL;
    if (e) cache_forget(&e->c);
}

/* Sub-merchant credentials, cached in process (never in Redis: secrets),
 * fresh and refreshed as merchant secrets are (cache_usable). */
#define SC_BUCKETS 256

typedef struct sc_entry {
    struct sc_entry *next;
    int64_t id;
    cJSON *row;
    cache_meta_t c;
} sc_entry_t;

static sc_entry_t *subcache[SC_BUCKETS];

static sc_entry_t *sc_find(int64_t id)
{
    for (sc_entry_t *e = subcache[(uint64_t)id % SC_BUCKETS]; e; e = e->next)
        if (e->id == id) return e;
    return NULL;
}

typedef struct {
    gw_app_t *app;
    int64_t id;
    unsigned gen;
} sc_refresh_t;

static void sc_refresh_cb(void *udata, gw_err_t err, cJSON *j)
{
    sc_refresh_t *r = udata;
    sc_entry_t *e = sc_find(r->id);
    char num[24];
    gw_i64toa(r->id, num);
    if (cache_refreshed(r->app, e ? &e->c : NULL, r->gen, err, "sub-merchant", num)) gw_subcache_put(r->app, j);
    free(r);
}

static void sc_refresh(gw_app_t *app, sc_entry_t *e)
{
    sc_refresh_t *r = malloc(sizeof(*r));
    if (r == NULL) return;
    r->app = app;
    r->id = e->id;
    r->gen = e->c.gen;
    char num[24];
    gw_i64toa(e->id, num);
    const char *v[] = { num };
    if (gw_pg_json(app, "sub_get", 1, v, sc_refresh_cb, r) != GW_OK) {
        free(r); /* the next use tries again */
        return;
    }
    e->c.refreshing = 1;
}

const cJSON *gw_subcache_get(gw_app_t *app, int64_t id)
{
    sc_entry_t *e = sc_find(id);
    int refresh;
    if (e == NULL || e->row == NULL || !cache_usable(app, &e->c, &refresh)) return NULL;
    if (refresh) sc_refresh(app, e);
    return e->row;
}

static void sc_mch_put(const cJSON *row, int64_t id);

void gw_subcache_put(gw_app_t *app, const cJSON *row)
{
    (void)app;
    int64_t id = gw_jint(row, "sub_merchant_id");
    if (id <= 0) return;
    sc_entry_t **pp = &subcache[(uint64_t)id % SC_BUCKETS], *e;
    for (e = *pp; e; e = e->next)
        if (e->id == id) break;
    if (e == NULL) {
        e = calloc(1, sizeof(*e));
        if (e == NULL) return;
        e->id = id;
        e->next = *pp;
        *pp = e;
    }
    cJSON_Delete(e->row);
    e->row = cJSON_Duplicate(row, 1);
    e->c.fetched_ms = gw_now_ms();
    sc_mch_put(row, id);
}

void gw_subcache_forget(gw_app_t *app, int64_t id)
{
    (void)app;
    for (sc_entry_t *e = subcache[(uint64_t)id % SC_BUCKETS]; e; e = e->next)
        if (e->id == id) cache_forget(&e->c);
}

/* Notifications name the sub-merchant by (channel, merchant number): a
 * second index onto the same entries. */
typedef struct sc_mch {
    struct sc_mch *next;
    int64_t id;
    char key[96]; /* channel '/' mch_id */
} sc_mch_t;

static sc_mch_t *submch[SC_BUCKETS];

static unsigned sc_mch_hash(const char *k)
{
    return str_hash(k) % SC_BUCKETS;
}

static int sc_mch_key(char *key, size_t len, const char *channel, const char *mch_id)
{
    int n = snprintf(key, len, "%s/%s", channel ? channel : "", mch_id ? mch_id : "");
    return n > 0 && (size_t)n < len;
}

const cJSON *gw_subcache_get_by_mch(gw_app_t *app, const char *channel, const char *mch_id)
{
    char key[96];
    if (!sc_mch_key(key, sizeof(key), channel, mch_id)) return NULL;
    for (sc_mch_t *m = submch[sc_mch_hash(key)]; m; m = m->next) {
        if (strcmp(m->key, key) != 0) continue;
        const cJSON *row = gw_subcache_get(app, m->id);
        /* the entry may have been refreshed with another number meanwhile */
        const char *c = gw_jstr(row, "channel"), *mch = gw_jstr(row, "mch_id");
        return c && mch && strcmp(c, channel) == 0 && strcmp(mch, mch_id) == 0 ? row : NULL;
    }
    return NULL;
}

static void sc_mch_put(const cJSON *row, int64_t id)
{
    char key[96];
    if (!sc_mch_key(key, sizeof(key), gw_jstr(row, "channel"), gw_jstr(row, "mch_id"))) return;
    sc_mch_t **pp = &submch[sc_mch_hash(key)], *m;
    for (m = *pp; m; m = m->next)
        if (strcmp(m->key, key) == 0) break;
    if (m == NULL) {
        m = calloc(1, sizeof(*m));
        if (m == NULL) return;
        memcpy(m->key, key, sizeof(key));
        m->next = *pp;
        *pp = m;
    }
    m->id = id;
}

static void routes_cache_free(void);

static void subcache_free(void)
{
    for (int i = 0; i < SC_BUCKETS; i++) {
        for (sc_mch_t *m = submch[i], *n; m; m = n) {
            n = m->next;
            free(m);
        }
        submch[i] = NULL;
    }
    for (int i = 0; i < SC_BUCKETS; i++) {
        for (sc_entry_t *e = subcache[i], *n; e; e = n) {
            n = e->next;
            cJSON_Delete(e->row);
            free(e);
        }
        subcache[i] = NULL;
    }
}

void gw_api_init(gw_app_t *app)
{
    app->merchants = gw_xcalloc(1, sizeof(*app->merchants));
    for (size_t i = 0; i < GW_ARRAY_SIZE(stmts); i++) gw_pg_prepare(app->pg, stmts[i].name, stmts[i].sql);
    /* the hot writes: many orders per transaction and WAL flush when they
     * arrive together (docs/performance.md) */
    gw_pg_batchable(app->pg, "order_create", "order_create_many", 1u, 32);
    gw_pg_batchable(app->pg, "order_transition_first", "order_transition_first_many", 1u << 3, 32);
    gw_pg_batchable(app->pg, "notify_ingest", "notify_ingest_many", 1u, 64);
    gw_settle_init(app);
    gw_chanop_metrics_init();
    gw_metric_declare("paygate_orders_total", "counter", "Orders created by method and first status");
}

void gw_api_free(gw_app_t *app)
{
    subcache_free();
    routes_cache_free();
    if (app->merchants == NULL) return;
    for (int i = 0; i < MC_BUCKETS; i++) {
        for (mc_entry_t *e = app->merchants->b[i], *n; e; e = n) {
            n = e->next;
            free(e->secret);
            free(e);
        }
    }
    free(app->merchants);
    app->merchants = NULL;
}

/* ------------------------------------------------------------------ */
/* request context */

typedef struct api_req api_req_t;
typedef void (*step_fn)(api_req_t *a);
typedef void (*after_fn)(api_req_t *a, gw_err_t err);

struct api_req {
    gw_app_t *app;
    gw_http_req_t *req;
    char merchant_id[40];
    step_fn next;
    after_fn after;  /* continuation of a transition */
    cJSON *body;     /* the request's JSON */
    cJSON *order;    /* order row */
    cJSON *sent;     /* create: the order_create argument, until its answer */
    cJSON *refund;   /* refund row */
    cJSON *sub;      /* sub-merchant row (credentials) */
    cJSON *bindings; /* create: the shop's bindings for the method, in priority order */
    int binding_idx; /* create: the binding being tried */
    char path_id[72];
    char trade_no[72];
    int64_t amount;
    int transition_tries;
    const char *to_status;
    const char *from_states;
    char *patch;     /* transition patch JSON text */
    /* channel call inputs: strings point into the cJSON trees above */
    gw_chan_merchant_t cm;
    gw_chan_order_t co;
    gw_chan_refund_t cr;
    char notify_url[512];
    int sync_query;  /* GET order/refund: the channel was asked */
    uv_timer_t retry_timer;
    /* create: the rotation counter, asked for in the nonce's round trip to
     * Redis (rotation_prefetch) */
    int prefetch;      /* try it */
    int rot_wait;      /* its answer is outstanding: the nonce's outcome waits */
    int auth_outcome;  /* that outcome (AUTH_*), held meanwhile */
    gw_err_t auth_err;
    int64_t rot_n;     /* the counter's value; 0: none (ask again) */
    char rot_key[256]; /* the counter it is */
};

static api_req_t *api_new(gw_app_t *app, gw_http_req_t *req)
{
    api_req_t *a = calloc(1, sizeof(*a));
    if (a) {
        a->app = app;
        a->req = req;
    }
    return a;
}

static void api_free(api_req_t *a)
{
    cJSON_Delete(a->body);
    cJSON_Delete(a->order);
    cJSON_Delete(a->sent);
    cJSON_Delete(a->refund);
    cJSON_Delete(a->sub);
    cJSON_Delete(a->bindings);
    free(a->patch);
    free(a);
}

static void on_retry_timer_closed(uv_handle_t *h) { api_free(h->data); }

/* Frees a once answered (after its retry timer, if it had one). */
static void api_done(api_req_t *a)
{
    if (a->retry_timer.data) uv_close((uv_handle_t *)&a->retry_timer, on_retry_timer_closed);
    else api_free(a);
}

/* Answers and frees a. */
static void api_reply_json(api_req_t *a, int status, cJSON *j)
{
    gw_respond_json(a->req, status, j);
    api_done(a);
}

static void api_error(api_req_t *a, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void api_error(api_req_t *a, int status, const char *code, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (status >= 500) gw_log_req(GW_LOG_WARN, a->req->id, "%d %s: %s", status, code, msg);
    cJSON *j = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(j, "error");
    cJSON_AddStringToObject(e, "code", code);
    cJSON_AddStringToObject(e, "message", msg);
    api_reply_json(a, status, j);
}

static void api_db_error(api_req_t *a, gw_err_t err)
{
    if (err == GW_EUNAVAIL || err == GW_EIO || err == GW_EBUSY || err == GW_ETIMEDOUT)
        api_error(a, 503, "service_unavailable", "the database is unavailable, retry later");
    else api_error(a, 500, "internal", "database error: %s", gw_strerror(err));
}

#define jstr gw_jstr
#define jint gw_jint
#define sstr gw_sstr
static inline const char *nz(const char *s) { return s ? s : ""; }


/* ------------------------------------------------------------------ */
/* authentication */

void gw_api_sign(const char *secret, gw_str_t method, gw_str_t pq, gw_str_t ts, gw_str_t nonce,
                 gw_str_t body, char out[65])
{
    const gw_str_t nl = { "\n", 1 };
    const gw_str_t parts[] = { method, nl, pq, nl, ts, nl, nonce, nl, body };
    uint8_t mac[32];
    gw_hmac_sha256_v(secret, strlen(secret), parts, GW_ARRAY_SIZE(parts), mac);
    gw_hex_encode(mac, 32, out, 0);
}

static int ct_equal(const char *a, gw_str_t b)
{
    size_t n = strlen(a);
    if (n != b.len) return 0;
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++) d |= (unsigned char)(tolower((unsigned char)a[i]) ^ tolower((unsigned char)b.ptr[i]));
    return d == 0;
}

enum { AUTH_OK = 1, AUTH_REPLAYED, AUTH_DB_ERROR };

/* The nonce's outcome: the request goes on, or is answered.  While a
 * prefetched rotation counter is outstanding, its callback still holds a,
 * so the outcome waits for it (rotation_prefetch_cb). */
static void auth_outcome(api_req_t *a, int outcome, gw_err_t err)
{
    if (a->rot_wait) {
        a->auth_outcome = outcome;
        a->auth_err = err;
        return;
    }
    switch (outcome) {
    case AUTH_OK: a->next(a); break;
    case AUTH_REPLAYED: api_error(a, 401, "replayed_request", "this nonce was already used"); break;
    default: api_db_error(a, err); break;
    }
}

static void rotation_prefetch_cb(void *udata, gw_err_t err, redisReply *r)
{
    api_req_t *a = udata;
    a->rot_wait = 0;
    a->rot_n = err == GW_OK && r && r->type == REDIS_REPLY_INTEGER && r->integer > 0 ? (int64_t)r->integer : 0;
    if (a->auth_outcome) auth_outcome(a, a->auth_outcome, a->auth_err);
}

static void auth_nonce_pg_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    (void)j;
    auth_outcome(a, err == GW_ENOENT ? AUTH_REPLAYED : err != GW_OK ? AUTH_DB_ERROR : AUTH_OK, err);
}

static void auth_nonce_pg(api_req_t *a)
{
    gw_str_t nonce = gw_http_header(a->req, "X-Nonce");
    char nbuf[80], ttl[16];
    snprintf(nbuf, sizeof(nbuf), "%.*s", (int)nonce.len, nonce.ptr);
    snprintf(ttl, sizeof(ttl), "%d", 2 * a->app->cfg.api.timestamp_skew_s);
    const char *v[] = { a->merchant_id, nbuf, ttl };
    gw_err_t rc = gw_pg_json(a->app, "nonce_put", 3, v, auth_nonce_pg_cb, a);
    if (rc != GW_OK) auth_outcome(a, AUTH_DB_ERROR, rc);
}

static void auth_nonce_redis_cb(void *udata, gw_err_t err, redisReply *r)
{
    api_req_t *a = udata;
    if (err != GW_OK || r == NULL || r->type == REDIS_REPLY_ERROR) {
        /* Redis down: slower, not wrong — fall back to PostgreSQL */
        auth_nonce_pg(a);
        return;
    }
    auth_outcome(a, r->type == REDIS_REPLY_NIL ? AUTH_REPLAYED : AUTH_OK, GW_OK);
}

static int rotation_prefetch_key(api_req_t *a, char *key, size_t len);

static void auth_check_sig(api_req_t *a, const char *secret)
{
    gw_http_req_t *r = a->req;
    gw_str_t ts = gw_http_header(r, "X-Timestamp"), nonce = gw_http_header(r, "X-Nonce");
    gw_str_t sig = gw_http_header(r, "X-Signature");
    gw_str_t method = sstr(r->method_name);
    gw_str_t pq = { r->path.ptr, r->path.len + (r->query.len ? r->query.len + 1 : 0) };
    char want[65];
    gw_api_sign(secret, method, pq, ts, nonce, (gw_str_t){ r->body.data, r->body.len }, want);
    if (!ct_equal(want, sig)) {
        gw_log_req(GW_LOG_NOTICE, r->id, "merchant %s: bad request signature", a->merchant_id);
        api_error(a, 401, "bad_signature", "the request signature does not verify");
        return;
    }
    char key[160];
    size_t kl = gw_strjoin(key, sizeof(key), "gw:nonce:", a->merchant_id, ":", NULL);
    size_t nl = nonce.len < sizeof(key) - 1 - kl ? nonce.len : sizeof(key) - 1 - kl;
    memcpy(key + kl, nonce.ptr, nl);
    key[kl + nl] = '\0';
    char ttl[24];
    gw_i64toa(2 * (int64_t)a->app->cfg.api.timestamp_skew_s, ttl);
    const char *argv[] = { "SET", key, "1", "NX", "EX", ttl };
    if (gw_redis_cmdargv(a->app->redis, auth_nonce_redis_cb, a, 6, argv, NULL) != GW_OK) {
        auth_nonce_pg(a);
        return;
    }
    /* A create that will need the rotation counter asks for it now: both
     * commands go out in one write and come back in one read (a round trip
     * and a loop turn less per order).  A replayed or invalid request thus
     * still counts — it shifts the rotation by one, nothing else. */
    if (a->prefetch && rotation_prefetch_key(a, a->rot_key, sizeof(a->rot_key)) &&
        gw_redis_cmdargv(a->app->redis, rotation_prefetch_cb, a, 2, (const char *[]){ "INCR", a->rot_key }, NULL) == GW_OK)
        a->rot_wait = 1;
}

static void auth_merchant_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    if (err == GW_ENOENT) {
        api_error(a, 401, "unknown_merchant", "no such merchant");
        return;
    }
    if (err != GW_OK) {
        api_db_error(a, err);
        return;
    }
    const char *secret = jstr(j, "secret");
    const char *status = jstr(j, "status");
    int active = status && strcmp(status, "active") == 0;
    mc_put(a->app, a->merchant_id, secret ? secret : "", active);
    if (!active) {
        api_error(a, 403, "merchant_disabled", "this merchant is disabled");
        return;
    }
    auth_check_sig(a, secret ? secret : "");
}

static int valid_token(gw_str_t s, size_t max)
{
    if (s.len == 0 || s.len > max) return 0;
    for (size_t i = 0; i < s.len; i++)
        if (!isalnum((unsigned char)s.ptr[i]) && s.ptr[i] != '_' && s.ptr[i] != '-') return 0;
    return 1;
}

/* Authenticates the request, then runs next(a). */
static void api_auth(api_req_t *a, step_fn next)
{
    gw_http_req_t *r = a->req;
    a->next = next;
    gw_str_t mid = gw_http_header(r, "X-Merchant-Id");
    gw_str_t ts = gw_http_header(r, "X-Timestamp");
    gw_str_t nonce = gw_http_header(r, "X-Nonce");
    gw_str_t sig = gw_http_header(r, "X-Signature");
    if (!mid.len || !ts.len || !nonce.len || !sig.len) {
        api_error(a, 401, "missing_auth",
                  "X-Merchant-Id, X-Timestamp, X-Nonce and X-Signature are required");
        return;
    }
    if (!valid_token(mid, 32) || !valid_token(nonce, 64)) {
        api_error(a, 401, "missing_auth", "malformed X-Merchant-Id or X-Nonce");
        return;
    }
    char tsb[24];
    snprintf(tsb, sizeof(tsb), "%.*s", (int)(ts.len < 20 ? ts.len : 20), ts.ptr);
    char *end;
    long long t = strtoll(tsb, &end, 10);
    long long now = (long long)(gw_now_ms() / 1000);
    if (*end || end == tsb || llabs(now - t) > a->app->cfg.api.timestamp_skew_s) {
        api_error(a, 401, "stale_timestamp", "X-Timestamp must be within %d s of the server's clock",
                  a->app->cfg.api.timestamp_skew_s);
        return;
    }
    snprintf(a->merchant_id, sizeof(a->merchant_id), "%.*s", (int)mid.len, mid.ptr);
    mc_entry_t *e = mc_find(a->app, a->merchant_id);
    int refresh;
    if (e && cache_usable(a->app, &e->c, &refresh)) {
        if (refresh) mc_refresh(a->app, e);
        if (!e->active) {
            api_error(a, 403, "merchant_disabled", "this merchant is disabled");
            return;
        }
        auth_check_sig(a, e->secret);
        return;
    }
    const char *v[] = { a->merchant_id };
    gw_err_t rc = gw_pg_json(a->app, "merchant_get", 1, v, auth_merchant_cb, a);
    if (rc != GW_OK) api_db_error(a, rc);
}

/* ------------------------------------------------------------------ */
/* views */

static const char *const final_states[] = { "SUCCESS", "FAILED", "CLOSED", NULL };

static int is_final(const char *st)
{
    for (int i = 0; final_states[i]; i++)
        if (st && strcmp(st, final_states[i]) == 0) return 1;
    return 0;
}

static void copy_field(cJSON *dst, const cJSON *src, const char *key)
{
    const cJSON *v = gw_json_get(src, key);
    if (v && !cJSON_IsNull(v)) cJSON_AddItemToObject(dst, key, cJSON_Duplicate(v, 1));
}

static const char *const order_view_keys[] = { "trade_no", "out_trade_no", "merchant_id",
    "shop_id", "amount", "currency", "subject", "method", "status", "pay_data", "channel",
    "channel_trade_no", "channel_code", "channel_msg", "refunded_amount", "fee",
    "settle_amount", "customer_id", "attach", "created_at", "paid_at", "expire_at",
    "updated_at", NULL };

static cJSON *order_view(const cJSON *o)
{
    cJSON *j = cJSON_CreateObject();
    for (int i = 0; order_view_keys[i]; i++) copy_field(j, o, order_view_keys[i]);
    return j;
}

static cJSON *refund_view(const cJSON *r, const cJSON *o)
{
    static const char *const keys[] = { "refund_no", "out_refund_no", "amount", "reason",
        "status", "channel_refund_no", "channel_code", "channel_msg", "created_at",
        "finished_at", NULL };
    cJSON *j = cJSON_CreateObject();
    for (int i = 0; keys[i]; i++) copy_field(j, r, keys[i]);
    if (o) {
        copy_field(j, o, "trade_no");
        copy_field(j, o, "out_trade_no");
    }
    return j;
}

/* The order's view written straight from the row (no copied tree): the
 * text order_view would print. */
static void reply_order(api_req_t *a, int status)
{
    gw_buf_t b;
    gw_buf_init(&b, (size_t)1 << 24);
    if (gw_json_write_view(&b, a->order, order_view_keys) != GW_OK) {
        gw_buf_free(&b);
        api_reply_json(a, status, order_view(a->order));
        return;
    }
    gw_http_respond(a->req, status, "application/json", b.data, b.len);
    gw_buf_free(&b);
    api_done(a);
}

/* ------------------------------------------------------------------ */
/* channel call inputs from the rows */

static gw_err_t fill_merchant(api_req_t *a)
{
    return gw_rows_merchant(a->sub, &a->cm);
}

static void fill_order(api_req_t *a)
{
    gw_rows_order(a->app, a->order, &a->co, a->notify_url, sizeof(a->notify_url));
}

/* ------------------------------------------------------------------ */
/* guarded transitions with a few retries (the database may blink) */

static void transition_send(api_req_t *a);

static void on_retry_timer(uv_timer_t *t)
{
    transition_send(t->data);
}

/* Gives order changes' members, replacing those of the same name: one
 * walk of order, the values swapped in place (no key copied, no second
 * lookup); changes is left with what it replaced. */
static void order_merge(cJSON *order, cJSON *changes)
{
    if (!cJSON_IsObject(order) || !cJSON_IsObject(changes)) return;
    for (cJSON *o = order->child; o && changes->child; o = o->next) {
        for (cJSON *c = changes->child; c; c = c->next) {
            if (o->string == NULL || c->string == NULL || !gw_json_key_eq(o->string, c->string)) continue;
            /* swap the values; names and places stay */
            cJSON tmp = *o;
            /* (cJSON_StringIsConst belongs to the name, which stays) */
            o->type = (c->type & ~cJSON_StringIsConst) | (tmp.type & cJSON_StringIsConst);
            o->valuestring = c->valuestring;
            o->valueint = c->valueint;
            o->valuedouble = c->valuedouble;
            o->child = c->child;
            c->type = (tmp.type & ~cJSON_StringIsConst) | (c->type & cJSON_StringIsConst);
            c->valuestring = tmp.valuestring;
            c->valueint = tmp.valueint;
            c->valuedouble = tmp.valuedouble;
            c->child = tmp.child;
            cJSON_Delete(cJSON_DetachItemViaPointer(changes, c));
            break;
        }
    }
    /* names order lacks (a created order's computed columns, 0019; the
     * channel's answer to one): moved over with their names — an object's
     * members are a list like an array's, and AddItemToArray keeps the
     * item's name where AddItemToObject would copy it */
    while (changes->child) {
        cJSON *c = cJSON_DetachItemViaPointer(changes, changes->child);
        if (c->string == NULL || !cJSON_AddItemToArray(order, c)) cJSON_Delete(c);
    }
}

static void transition_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    after_fn after = a->after;
    if (err == GW_OK) {
        cJSON *o = cJSON_DetachItemFromObjectCaseSensitive(j, "order");
        if (o && !cJSON_IsNull(o)) {
            cJSON_Delete(a->order);
            a->order = o;
        } else cJSON_Delete(o);
        /* the first-transition batch answers only the columns it set (0018) */
        order_merge(a->order, gw_json_get(j, "changes"));
        after(a, GW_OK);
        return;
    }
    if ((err == GW_EUNAVAIL || err == GW_EIO || err == GW_EBUSY) && a->transition_tries < 4) {
        if (a->retry_timer.data == NULL) {
            uv_timer_init(a->app->loop, &a->retry_timer);
            a->retry_timer.data = a;
        }
        uv_timer_start(&a->retry_timer, on_retry_timer, 200u << a->transition_tries, 0);
        return;
    }
    after(a, err);
}

static void transition_send(api_req_t *a)
{
    char id[24];
    gw_i64toa(jint(a->order, "id"), id);
    const char *v[] = { id, a->from_states, a->to_status, a->patch ? a->patch : "{}", "channel" };
    a->transition_tries++;
    /* the first answer after the channel call goes in batches */
    const char *stmt = strcmp(a->from_states, "{CREATED}") == 0 ? "order_transition_first" : "order_transition";
    gw_err_t rc = gw_pg_json(a->app, stmt, 5, v, transition_cb, a);
    if (rc != GW_OK) transition_cb(a, rc, NULL);
}

/* The customer pays on their own phone (QR code, in-app): the answer to
 * the create is PENDING and a notification the usual end. */
static int is_ctob(const cJSON *order)
{
    uint32_t bit = gw_method_bit(jstr(order, "method"));
    return bit != 0 && bit != GW_METHOD_BARCODE;
}

/* When a new order is first looked at by the follow-up tasks.  A c-to-b
 * order's first check is fixed here, at the later of the two graces
 * (created_grace_s leaves a channel call in progress alone,
 * pending_grace_s gives the customer time to scan), and its first
 * transition to PENDING keeps it: that update then changes no indexed
 * column and stays on its page — a HOT update, no new index entries
 * (migration 0017, docs/performance.md). */
static uint32_t first_check_ms(gw_app_t *app, const cJSON *order)
{
    uint32_t ms = gw_tasks_first_check_ms(app, NULL, "CREATED");
    if (is_ctob(order)) {
        uint32_t pending = gw_tasks_first_check_ms(app, NULL, "PENDING");
        if (pending > ms) ms = pending;
    }
    return ms;
}

/* Moves the order from one of from_states ("{A,B}") to to; then after(). */
static void order_transition(api_req_t *a, const char *from_states, const char *to,
                             const gw_chan_result_t *res, after_fn after)
{
    cJSON *p = cJSON_CreateObject();
    /* a c-to-b order keeps the first check its creation fixed (first_check_ms) */
    int keep = strcmp(from_states, "{CREATED}") == 0 && strcmp(to, "PENDING") == 0 && is_ctob(a->order);
    if (!keep)
        cJSON_AddNumberToObject(p, "next_check_ms",
                                gw_tasks_first_check_ms(a->app, gw_jstr(a->order, "channel"), to));
    if (res) {
        if (res->channel_trade_no[0]) cJSON_AddStringToObject(p, "channel_trade_no", res->channel_trade_no);
        if (res->raw_code[0]) cJSON_AddStringToObject(p, "channel_code", res->raw_code);
        if (res->raw_msg[0]) cJSON_AddStringToObject(p, "channel_msg", res->raw_msg);
        if (res->pay_data.len) {
            cJSON *pd = gw_json_parse(res->pay_data.data, res->pay_data.len);
            if (pd) cJSON_AddItemToObject(p, "pay_data", pd);
        }
    }
    free(a->patch);
    a->patch = gw_json_print(p);
    cJSON_Delete(p);
    a->from_states = from_states;
    a->to_status = to;
    a->transition_tries = 0;
    a->after = after;
    transition_send(a);
}

/* ------------------------------------------------------------------ */
/* POST /v1/orders */

static int valid_chars(const char *s, size_t min, size_t max, const char *extra)
{
    size_t n = s ? strlen(s) : 0;
    if (n < min || n > max) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr(extra, s[i])) return 0;
    return 1;
}

/* A JSON number that is an exact positive integer (no fraction, no exponent
 * tricks beyond what doubles hold exactly: 2^53). */
static int json_int_ok(const cJSON *v, int64_t *out)
{
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (d != d || d < -9007199254740992.0 || d > 9007199254740992.0) return 0;
    int64_t i = (int64_t)d;
    if ((double)i != d) return 0;
    *out = i;
    return 1;
}

static void create_after_pay_transition(api_req_t *a, gw_err_t err)
{
    const char *code = jstr(a->order, "channel_code");
    if (err == GW_OK && code && strcmp(code, "INSUFFICIENT_BALANCE") == 0 &&
        strcmp(jstr(a->order, "status"), "FAILED") == 0) {
        cJSON *j = cJSON_CreateObject();
        cJSON *e = cJSON_AddObjectToObject(j, "error");
        cJSON_AddStringToObject(e, "code", "insufficient_balance");
        cJSON_AddStringToObject(e, "message", "the customer's balance does not cover the amount");
        cJSON_AddItemToObject(j, "order", order_view(a->order));
        api_reply_json(a, 422, j);
        return;
    }
    if (err != GW_OK)
        gw_log_req(GW_LOG_ERR, a->req->id, "order %s: recording the channel's answer failed (%s); "
                   "the re-query task will settle it", a->trade_no, gw_strerror(err));
    char labels[96];
    gw_strjoin(labels, sizeof(labels), "method=\"", nz(jstr(a->order, "method")), "\",status=\"",
               nz(jstr(a->order, "status")), "\"", NULL);
    gw_metric_add("paygate_orders_total", labels, 1);
    reply_order(a, 200);
}

static void try_binding(api_req_t *a);

/* Nothing left to try.  Before the order exists: 503, nothing written.
 * After (every remaining binding refused before sending): FAILED. */
static void no_binding_left(api_req_t *a)
{
    if (a->order == NULL) {
        api_error(a, 503, "channel_unavailable",
                  "no channel for %s is available at shop %s right now; retry later",
                  jstr(a->body, "method"), jstr(a->body, "shop_id"));
        return;
    }
    gw_chan_result_t res;
    memset(&res, 0, sizeof(res));
    snprintf(res.raw_code, sizeof(res.raw_code), "CHANNEL_UNAVAILABLE");
    snprintf(res.raw_msg, sizeof(res.raw_msg), "no channel could take the order; nothing was sent");
    order_transition(a, "{CREATED}", "FAILED", &res, create_after_pay_transition);
}

static void create_pay_cb(void *udata, gw_chanop_out_t *out)
{
    api_req_t *a = udata;
    const char *to = "UNKNOWN";
    /* certainly not sent (channel missing, bulkhead full, breaker open,
     * connection refused): another binding may take it */
    int not_sent = out->err != GW_OK || (out->res.status == GW_PAY_UNKNOWN && !out->sent);
    if (not_sent) {
        gw_log_req(GW_LOG_INFO, a->req->id, "order %s: %s did not take it (%s); trying the next binding",
                   a->trade_no, jstr(a->order, "channel"),
                   out->err != GW_OK ? gw_strerror(out->err) : out->res.raw_msg);
        a->binding_idx++;
        try_binding(a);
        return;
    }
    switch (out->res.status) {
    case GW_PAY_PENDING: to = "PENDING"; break;
    case GW_PAY_SUCCESS: to = "SUCCESS"; break;
    case GW_PAY_USER_PAYING: to = "USER_PAYING"; break;
    case GW_PAY_FAILED: to = "FAILED"; break;
    case GW_PAY_CLOSED:
    case GW_PAY_REVERSED: to = "CLOSED"; break;
    default: to = "UNKNOWN"; break;
    }
    gw_log_req(GW_LOG_INFO, a->req->id, "order %s: %s %s → %s (%s %s)", a->trade_no,
               jstr(a->order, "channel"), jstr(a->order, "method"), to, out->res.raw_code,
               out->res.raw_msg);
    order_transition(a, "{CREATED}", to, &out->res, create_after_pay_transition);
}

static void create_call_channel(api_req_t *a)
{
    if (fill_merchant(a) != GW_OK) {
        a->binding_idx++;
        try_binding(a);
        return;
    }
    fill_order(a);
    const cJSON *ac = gw_json_get(a->body, "auth_code");
    a->co.auth_code = sstr(cJSON_IsString(ac) ? ac->valuestring : NULL);
    const cJSON *att = gw_json_get(a->body, "attach");
    a->co.attach = sstr(cJSON_IsString(att) ? att->valuestring : NULL);
    gw_err_t rc = gw_chanop_run(a->app, jstr(a->order, "channel"), GW_OP_PAY, 0, &a->cm, &a->co,
                                NULL, create_pay_cb, a);
    if (rc != GW_OK) {
        gw_chanop_out_t out;
        memset(&out, 0, sizeof(out));
        out.err = rc;
        create_pay_cb(a, &out);
    }
}

static void create_order_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    if (err != GW_OK) {
        api_db_error(a, err);
        return;
    }
    cJSON *o = cJSON_DetachItemFromObjectCaseSensitive(j, "order");
    int created = cJSON_IsTrue(gw_json_get(j, "created"));
    if (created && a->sent && cJSON_IsObject(o) && gw_json_get(o, "merchant_id") == NULL) {
        /* the columns the insert computed (0019): the order is what was
         * sent with them */
        order_merge(a->sent, o);
        cJSON_Delete(o);
        o = a->sent;
        a->sent = NULL;
    }
    a->order = o;
    gw_strjoin(a->trade_no, sizeof(a->trade_no), nz(jstr(o, "trade_no")), NULL);
    if (!created) {
        const char *h = jstr(o, "request_hash");
        const char *mine = jstr(a->body, "__hash");
        if (h == NULL || mine == NULL || strcmp(h, mine) != 0) {
            api_error(a, 409, "conflict",
                      "out_trade_no %s was already used for a different order",
                      jstr(o, "out_trade_no"));
            return;
        }
        reply_order(a, 200); /* an identical repeat: the same order */
        return;
    }
    create_call_channel(a);
}

static void reroute_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    cJSON *o = err == GW_OK ? cJSON_DetachItemFromObjectCaseSensitive(j, "order") : NULL;
    if (o == NULL || cJSON_IsNull(o)) {
        /* the order moved on meanwhile (a task settled it) or the database
         * blinked: answer what is recorded */
        cJSON_Delete(o);
        reply_order(a, 200);
        return;
    }
    cJSON_Delete(a->order);
    a->order = o;
    create_call_channel(a);
}

/* The chosen binding's sub-merchant is known (a->sub): write the order, or
 * move the existing one over (failover). */
static void create_with_sub(api_req_t *a, const char *channel)
{
    gw_err_t rc;
    if (a->order) {
        char id[24], sub[24];
        snprintf(id, sizeof(id), "%lld", (long long)jint(a->order, "id"));
        snprintf(sub, sizeof(sub), "%lld", (long long)jint(a->sub, "sub_merchant_id"));
        const char *v[] = { id, channel, sub, jstr(a->sub, "mch_id") };
        rc = gw_pg_json(a->app, "order_reroute", 4, v, reroute_cb, a);
        if (rc != GW_OK) reroute_cb(a, rc, NULL);
        return;
    }
    cJSON *p = cJSON_Duplicate(a->body, 1);
    cJSON_DeleteItemFromObjectCaseSensitive(p, "auth_code"); /* never stored */
    cJSON_AddStringToObject(p, "merchant_id", a->merchant_id);
    cJSON_AddStringToObject(p, "channel", channel);
    cJSON_AddNumberToObject(p, "sub_merchant_id", (double)jint(a->sub, "sub_merchant_id"));
    cJSON_AddStringToObject(p, "channel_mch_id", jstr(a->sub, "mch_id") ? jstr(a->sub, "mch_id") : "");
    cJSON_AddStringToObject(p, "request_hash", jstr(a->body, "__hash"));
    cJSON_AddNumberToObject(p, "next_check_ms", first_check_ms(a->app, a->body));
    /* the order is ours until the channel answered (or could have) */
    if (a->app->tasks) {
        cJSON_AddNumberToObject(p, "lease_ms", a->app->cfg.channels.call_timeout_ms * 2 + 5000);
        cJSON_AddStringToObject(p, "lease_owner", gw_tasks_owner(a->app->tasks));
    }
    if (!jstr(p, "client_ip")) cJSON_AddStringToObject(p, "client_ip", a->req->peer);
    char *text = gw_json_print(p);
    cJSON_Delete(a->sent);
    a->sent = p; /* the created order's answer holds only what it computed */
    const char *v[] = { text };
    rc = gw_pg_json(a->app, "order_create", 1, v, create_order_cb, a);
    free(text);
    if (rc != GW_OK) api_db_error(a, rc);
}

static void create_sub_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    const cJSON *binding = cJSON_GetArrayItem(a->bindings, a->binding_idx);
    if (err != GW_OK) {
        if (err == GW_ENOENT) { /* removed meanwhile: skip it */
            a->binding_idx++;
            try_binding(a);
        } else api_db_error(a, err);
        return;
    }
    gw_subcache_put(a->app, j);
    cJSON_Delete(a->sub);
    a->sub = cJSON_Duplicate(j, 1);
    create_with_sub(a, jstr(binding, "channel"));
}

/* Rotation: the n-th payment (of this customer, or of the shop) at this
 * shop, method and channel uses sub-merchant n mod count. */
static void rotation_done(api_req_t *a, int64_t n)
{
    const cJSON *binding = cJSON_GetArrayItem(a->bindings, a->binding_idx);
    const cJSON *subs = gw_json_get(binding, "subs");
    int count = cJSON_GetArraySize(subs);
    int64_t idx = n > 0 ? (n - 1) % count : 0;
    const cJSON *pick = cJSON_GetArrayItem(subs, (int)idx);
    int64_t sub_id = jint(pick, "id");
    const cJSON *cached = gw_subcache_get(a->app, sub_id);
    if (cached) {
        cJSON_Delete(a->sub);
        a->sub = cJSON_Duplicate(cached, 1);
        create_with_sub(a, jstr(binding, "channel"));
        return;
    }
    char id[24];
    snprintf(id, sizeof(id), "%lld", (long long)sub_id);
    const char *v[] = { id };
    gw_err_t rc = gw_pg_json(a->app, "sub_get", 1, v, create_sub_cb, a);
    if (rc != GW_OK) api_db_error(a, rc);
}

static void rotation_pg_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    rotation_done(a, err == GW_OK && cJSON_IsNumber(j) ? (int64_t)j->valuedouble : 1);
}

static void rotation_key_of(api_req_t *a, const cJSON *binding, char *key, size_t len)
{
    const char *cust = jstr(a->body, "customer_id");
    gw_strjoin(key, len, "gw:rot:", nz(jstr(a->body, "shop_id")), ":", nz(jstr(a->body, "method")), ":",
               nz(jstr(binding, "channel")), ":", cust ? cust : "*", NULL);
}

static void rotation_key(api_req_t *a, char *key, size_t len)
{
    rotation_key_of(a, cJSON_GetArrayItem(a->bindings, a->binding_idx), key, len);
}

static void rotation_redis_cb(void *udata, gw_err_t err, redisReply *r)
{
    api_req_t *a = udata;
    if (err == GW_OK && r && r->type == REDIS_REPLY_INTEGER) {
        rotation_done(a, (int64_t)r->integer);
        return;
    }
    /* Redis down: the counter lives in PostgreSQL meanwhile */
    char key[256];
    rotation_key(a, key, sizeof(key));
    const char *v[] = { key };
    if (gw_pg_json(a->app, "rotation_next", 1, v, rotation_pg_cb, a) != GW_OK) rotation_done(a, 1);
}

/* A binding's sub-merchants; 0: it cannot take orders (no channel or none). */
static int binding_nsubs(const cJSON *b)
{
    return jstr(b, "channel") ? cJSON_GetArraySize(gw_json_get(b, "subs")) : 0;
}

static void try_binding(api_req_t *a)
{
    int n = cJSON_GetArraySize(a->bindings);
    for (; a->binding_idx < n; a->binding_idx++) {
        const cJSON *b = cJSON_GetArrayItem(a->bindings, a->binding_idx);
        const char *channel = jstr(b, "channel");
        int nsubs = binding_nsubs(b);
        if (nsubs == 0) continue;
        if (!gw_health_available(a->app, channel)) {
            gw_health_note_refusal(a->app, channel);
            gw_log_req(GW_LOG_INFO, a->req->id, "shop %s %s: skipping %s (%s breaker, %d in flight)",
                       jstr(a->body, "shop_id"), jstr(a->body, "method"), channel,
                       gw_breaker_state_name(gw_health_state(a->app, channel)),
                       gw_health_inflight(a->app, channel));
            continue;
        }
        if (nsubs == 1) {
            rotation_done(a, 1);
            return;
        }
        char key[256];
        rotation_key(a, key, sizeof(key));
        if (a->rot_n > 0 && strcmp(key, a->rot_key) == 0) { /* asked with the nonce */
            int64_t got = a->rot_n;
            a->rot_n = 0;
            rotation_done(a, got);
            return;
        }
        if (gw_redis_cmdargv(a->app->redis, rotation_redis_cb, a, 2, (const char *[]){ "INCR", key }, NULL) != GW_OK)
            rotation_redis_cb(a, GW_EUNAVAIL, NULL);
        return;
    }
    no_binding_left(a);
}

/* Shops' routing documents (no secrets), parsed, in process for a moment:
 * the Redis GET and the parse are saved for the orders of the next
 * ROUTES_TTL_MS.  A change on this node drops its entry at once
 * (gw_routes_forget); other nodes see it within ROUTES_TTL_MS. */
#define ROUTES_BUCKETS 256
#define ROUTES_TTL_MS 2000

typedef struct routes_entry {
    struct routes_entry *next;
    char shop[40];
    cJSON *doc;
    uint64_t fetched_ms;
} routes_entry_t;

static routes_entry_t *routes_cache[ROUTES_BUCKETS];

static routes_entry_t **routes_slot(const char *shop)
{
    routes_entry_t **pp = &routes_cache[str_hash(shop) % ROUTES_BUCKETS];
    while (*pp && strcmp((*pp)->shop, shop) != 0) pp = &(*pp)->next;
    return pp;
}

static const cJSON *routes_cached(const char *shop)
{
    routes_entry_t *e = *routes_slot(shop);
    return e && e->doc && gw_now_ms() - e->fetched_ms < ROUTES_TTL_MS ? e->doc : NULL;
}

/* Takes doc. */
static void routes_put(const char *shop, cJSON *doc)
{
    if (strlen(shop) >= sizeof(((routes_entry_t *)0)->shop)) {
        cJSON_Delete(doc);
        return;
    }
    routes_entry_t **pp = routes_slot(shop), *e = *pp;
    if (e == NULL) {
        e = calloc(1, sizeof(*e));
        if (e == NULL) {
            cJSON_Delete(doc);
            return;
        }
        snprintf(e->shop, sizeof(e->shop), "%s", shop);
        *pp = e;
    }
    cJSON_Delete(e->doc);
    e->doc = doc;
    e->fetched_ms = gw_now_ms();
}

void gw_routes_forget(gw_app_t *app, const char *shop)
{
    (void)app;
    routes_entry_t *e = *routes_slot(shop);
    if (e) e->fetched_ms = 0;
}

static void routes_cache_free(void)
{
    for (int i = 0; i < ROUTES_BUCKETS; i++) {
        for (routes_entry_t *e = routes_cache[i], *n; e; e = n) {
            n = e->next;
            cJSON_Delete(e->doc);
            free(e);
        }
        routes_cache[i] = NULL;
    }
}

/* The shop's bindings for the request's method, in priority order; NULL
 * when the shop is not this merchant's or has none. */
static const cJSON *shop_bindings(const api_req_t *a, const cJSON *routes)
{
    const char *owner = jstr(routes, "merchant_id");
    const cJSON *methods = gw_json_get(routes, "methods");
    const cJSON *bindings = gw_json_get(methods, jstr(a->body, "method"));
    if (owner == NULL || strcmp(owner, a->merchant_id) != 0 || cJSON_GetArraySize(bindings) == 0) return NULL;
    return bindings;
}

static void routes_ready(api_req_t *a, const cJSON *routes)
{
    const cJSON *bindings = shop_bindings(a, routes);
    if (bindings == NULL) {
        api_error(a, 422, "no_route", "shop %s has no channel for method %s",
                  jstr(a->body, "shop_id"), jstr(a->body, "method"));
        return;
    }
    a->bindings = cJSON_Duplicate(bindings, 1);
    a->binding_idx = 0;
    try_binding(a);
}

static void routes_pg_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    if (err == GW_ENOENT || (err == GW_OK && cJSON_IsNull(j))) {
        api_error(a, 422, "no_route", "no such shop: %s", jstr(a->body, "shop_id"));
        return;
    }
    if (err != GW_OK) {
        api_db_error(a, err);
        return;
    }
    /* cache for the other requests and nodes (no secrets in it) */
    char *text = gw_json_print(j);
    if (text) {
        char key[128];
        snprintf(key, sizeof(key), "gw:shop:%s", jstr(a->body, "shop_id"));
        const char *argv[] = { "SET", key, text, "EX", "300" };
        gw_redis_cmdargv(a->app->redis, NULL, NULL, 5, argv, NULL);
        free(text);
    }
    routes_put(jstr(a->body, "shop_id"), cJSON_Duplicate(j, 1));
    routes_ready(a, j);
}

static void routes_load_pg(api_req_t *a)
{
    const char *v[] = { jstr(a->body, "shop_id") };
    gw_err_t rc = gw_pg_json(a->app, "shop_routes", 1, v, routes_pg_cb, a);
    if (rc != GW_OK) api_db_error(a, rc);
}

static void routes_redis_cb(void *udata, gw_err_t err, redisReply *r)
{
    api_req_t *a = udata;
    if (err == GW_OK && r && r->type == REDIS_REPLY_STRING) {
        cJSON *j = gw_json_parse(r->str, r->len);
        if (j) {
            routes_ready(a, j);
            routes_put(jstr(a->body, "shop_id"), j);
            return;
        }
    }
    routes_load_pg(a); /* a miss, or Redis down: slower, not wrong */
}

static void create_validated(api_req_t *a)
{
    char key[128];
    const cJSON *cached = routes_cached(jstr(a->body, "shop_id"));
    if (cached) {
        routes_ready(a, cached);
        return;
    }
    snprintf(key, sizeof(key), "gw:shop:%s", jstr(a->body, "shop_id"));
    if (gw_redis_cmdargv(a->app->redis, routes_redis_cb, a, 2, (const char *[]){ "GET", key }, NULL) != GW_OK)
        routes_load_pg(a);
}

/* The rotation counter a create will ask for, if it can be told before the
 * request is checked: the body parses, the shop's routes are cached here,
 * and the first binding try_binding would take has several sub-merchants.
 * Nothing is decided here; try_binding uses the value only for that same
 * counter. */
static int rotation_prefetch_key(api_req_t *a, char *key, size_t len)
{
    if (a->body == NULL) a->body = gw_json_parse(a->req->body.data, a->req->body.len);
    const char *shop = cJSON_IsObject(a->body) ? jstr(a->body, "shop_id") : NULL;
    const cJSON *routes = shop && jstr(a->body, "method") ? routes_cached(shop) : NULL;
    const cJSON *bindings = routes ? shop_bindings(a, routes) : NULL;
    const cJSON *b;
    cJSON_ArrayForEach(b, bindings) {
        int nsubs = binding_nsubs(b);
        if (nsubs == 0 || !gw_health_available(a->app, jstr(b, "channel"))) continue;
        if (nsubs == 1) return 0;
        rotation_key_of(a, b, key, len);
        return 1;
    }
    return 0;
}

static const char *check_str(const cJSON *b, const char *key, int required, size_t max)
{
    const cJSON *v = gw_json_get(b, key);
    if (v == NULL || cJSON_IsNull(v)) return required ? "is required" : NULL;
    if (!cJSON_IsString(v)) return "must be a string";
    size_t n = strlen(v->valuestring);
    if (required && n == 0) return "must not be empty";
    if (n > max) return "is too long";
    return NULL;
}

static void create_authed(api_req_t *a)
{
    gw_http_req_t *r = a->req;
    if (a->body == NULL) a->body = gw_json_parse(r->body.data, r->body.len); /* or rotation_prefetch_key did */
    if (a->body == NULL || !cJSON_IsObject(a->body)) {
        api_error(a, 400, "invalid_json", "the body must be a JSON object");
        return;
    }
    cJSON *b = a->body;
    static const char *const allowed[] = { "shop_id", "out_trade_no", "amount", "currency",
        "subject", "method", "auth_code", "payer_id", "customer_id", "notify_url",
        "expire_s", "client_ip", "attach", NULL };
    const cJSON *it;
    cJSON_ArrayForEach(it, b) {
        int ok = 0;
        for (int i = 0; allowed[i] && !ok; i++) ok = gw_json_key_eq(allowed[i], it->string);
        if (!ok) {
            api_error(a, 400, "invalid_request", "%.64s: unknown field", it->string);
            return;
        }
    }
    static const struct { const char *key; int req; size_t max; } strs[] = {
        { "shop_id", 1, 32 }, { "out_trade_no", 1, 32 }, { "subject", 1, 128 },
        { "method", 1, 16 }, { "currency", 0, 3 }, { "auth_code", 0, 32 },
        { "payer_id", 0, 128 }, { "customer_id", 0, 64 }, { "notify_url", 0, 256 },
        { "client_ip", 0, 45 }, { "attach", 0, 127 },
    };
    for (size_t i = 0; i < GW_ARRAY_SIZE(strs); i++) {
        const char *why = check_str(b, strs[i].key, strs[i].req, strs[i].max);
        if (why) {
            api_error(a, 400, "invalid_request", "%s %s", strs[i].key, why);
            return;
        }
    }
    if (!valid_chars(jstr(b, "out_trade_no"), 1, 32, "_-")) {
        api_error(a, 400, "invalid_request", "out_trade_no must be 1-32 characters [A-Za-z0-9_-]");
        return;
    }
    int64_t amount;
    if (!json_int_ok(gw_json_get(b, "amount"), &amount)) {
        api_error(a, 400, "invalid_request", "amount must be an integer number of fen");
        return;
    }
    if (amount <= 0 || amount > a->app->cfg.api.max_amount) {
        api_error(a, 400, "invalid_amount", "amount must be between 1 and %lld fen",
                  (long long)a->app->cfg.api.max_amount);
        return;
    }
    a->amount = amount;
    const char *method = jstr(b, "method");
    uint32_t mbit = gw_method_bit(method);
    int balance = strcmp(method, "balance") == 0;
    if (mbit == 0 && !balance) {
        api_error(a, 400, "invalid_method",
                  "method must be one of wechat_qr, wechat_jsapi, alipay_qr, alipay_jsapi, barcode, balance");
        return;
    }
    if (balance && !jstr(b, "customer_id")) {
        api_error(a, 400, "invalid_request", "customer_id (the account to pay from) is required for balance");
        return;
    }
    if (mbit == GW_METHOD_BARCODE && !valid_chars(jstr(b, "auth_code"), 10, 32, "")) {
        api_error(a, 400, "invalid_request", "auth_code (10-32 digits) is required for barcode");
        return;
    }
    if ((mbit == GW_METHOD_WECHAT_JSAPI || mbit == GW_METHOD_ALIPAY_JSAPI) && !jstr(b, "payer_id")) {
        api_error(a, 400, "invalid_request", "payer_id is required for %s", method);
        return;
    }
    const char *cur = jstr(b, "currency");
    if (cur && strcmp(cur, "CNY") != 0) {
        api_error(a, 400, "invalid_request", "currency must be CNY");
        return;
    }
    const char *nu = jstr(b, "notify_url");
    if (nu && strncmp(nu, "http://", 7) != 0 && strncmp(nu, "https://", 8) != 0) {
        api_error(a, 400, "invalid_request", "notify_url must be an http(s) URL");
        return;
    }
    const cJSON *ex = gw_json_get(b, "expire_s");
    if (ex) {
        int64_t e;
        if (!json_int_ok(ex, &e) || e < a->app->cfg.api.min_expire_s || e > 86400) {
            api_error(a, 400, "invalid_request", "expire_s must be an integer from %d to 86400",
                      a->app->cfg.api.min_expire_s);
            return;
        }
    }
    /* what makes a repeat "identical" */
    gw_buf_t h;
    gw_buf_init(&h, 4096);
    char num[24];
    gw_i64toa(amount, num);
    /* "shop|amount|method|subject|payer_id|auth_code" */
    const char *const parts[] = { jstr(b, "shop_id"), "|", num, "|", method, "|", jstr(b, "subject"), "|",
                                  nz(jstr(b, "payer_id")), "|", nz(jstr(b, "auth_code")) };
    for (size_t i = 0; i < GW_ARRAY_SIZE(parts); i++) gw_buf_appends(&h, parts[i]);
    uint8_t d[32];
    char hex[65];
    gw_sha256(h.data, h.len, d);
    gw_hex_encode(d, 32, hex, 0);
    gw_buf_free(&h);
    cJSON_AddStringToObject(b, "__hash", hex);
    create_validated(a);
}

/* ------------------------------------------------------------------ */
/* GET /v1/orders/{trade_no}, GET /v1/orders?out_trade_no=… */

static void get_after_sync(api_req_t *a, gw_err_t err)
{
    (void)err;
    reply_order(a, 200);
}

static void get_query_cb(void *udata, gw_chanop_out_t *out)
{
    api_req_t *a = udata;
    const char *st = jstr(a->order, "status");
    const char *to = st; /* nothing learned: the same state, which reschedules and releases the lease */
    if (out->err == GW_OK) {
        switch (out->res.status) {
        case GW_PAY_SUCCESS:
        case GW_PAY_REFUNDED: to = "SUCCESS"; break;
        case GW_PAY_USER_PAYING: to = "USER_PAYING"; break;
        case GW_PAY_CLOSED:
        case GW_PAY_REVERSED: to = "CLOSED"; break;
        case GW_PAY_FAILED: to = "FAILED"; break;
        default: break; /* NOT_PAID, UNKNOWN */
        }
    }
    order_transition(a, "{PENDING,USER_PAYING,UNKNOWN}", to, &out->res, get_after_sync);
}

static void get_sub_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    if (err != GW_OK) {
        reply_order(a, 200); /* answer what we know */
        return;
    }
    a->sub = cJSON_Duplicate(j, 1);
    if (fill_merchant(a) != GW_OK) {
        reply_order(a, 200);
        return;
    }
    fill_order(a);
    gw_err_t rc = gw_chanop_run(a->app, jstr(a->order, "channel"), GW_OP_QUERY, 0, &a->cm, &a->co,
                                NULL, get_query_cb, a);
    if (rc != GW_OK) reply_order(a, 200);
}

static void get_order_cb_plain(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    if (err != GW_OK) {
        api_db_error(a, err);
        return;
    }
    a->order = cJSON_Duplicate(j, 1);
    reply_order(a, 200);
}

static void get_lease_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    (void)j;
    if (err != GW_OK) {
        /* the order moved on since we read it (a notification was applied),
         * or a task is talking to the channel about it: answer what is
         * recorded now */
        const char *v[] = { a->merchant_id, a->trade_no };
        cJSON_Delete(a->order);
        a->order = NULL;
        if (gw_pg_json(a->app, "order_get", 2, v, get_order_cb_plain, a) != GW_OK)
            api_error(a, 503, "service_unavailable", "the database is unavailable");
        return;
    }
    char id[24];
    snprintf(id, sizeof(id), "%lld", (long long)jint(a->order, "sub_merchant_id"));
    const char *v[] = { id };
    if (gw_pg_json(a->app, "sub_get", 1, v, get_sub_cb, a) != GW_OK) reply_order(a, 200);
}

static void get_order_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    if (err == GW_ENOENT) {
        api_error(a, 404, "order_not_found", "no such order");
        return;
    }
    if (err != GW_OK) {
        api_db_error(a, err);
        return;
    }
    a->order = cJSON_Duplicate(j, 1);
    snprintf(a->trade_no, sizeof(a->trade_no), "%s", jstr(j, "trade_no"));
    const char *st = jstr(j, "status");
    /* not final and not still being created: ask the channel — holding the
     * order's lease, so no task talks to the channel about it meanwhile */
    if (!is_final(st) && strcmp(st, "CREATED") != 0 && a->app->tasks) {
        char id[24];
        snprintf(id, sizeof(id), "%lld", (long long)jint(j, "id"));
        const char *v[] = { id, gw_tasks_owner(a->app->tasks), "15000" };
        if (gw_pg_json(a->app, "order_lease", 3, v, get_lease_cb, a) == GW_OK) return;
    }
    reply_order(a, 200);
}


/* Loads a row by the id in the path, or by ?param= (the merchant's own
 * number); both scoped to the authenticated merchant. */
static void lookup_row(api_req_t *a, const char *by_id, const char *by_param, const char *param,
                       gw_pg_json_cb cb)
{
    gw_err_t rc;
    if (a->path_id[0]) {
        const char *v[] = { a->merchant_id, a->path_id };
        rc = gw_pg_json(a->app, by_id, 2, v, cb, a);
    } else {
        char val[72];
        if (!gw_http_query_param(a->req, param, val, sizeof(val)) || !val[0]) {
            api_error(a, 400, "invalid_request", "give the id in the path or ?%s=", param);
            return;
        }
        const char *v[] = { a->merchant_id, val };
        rc = gw_pg_json(a->app, by_param, 2, v, cb, a);
    }
    if (rc != GW_OK) api_db_error(a, rc);
}

static void get_authed(api_req_t *a)
{
    lookup_row(a, "order_get", "order_get_out", "out_trade_no", get_order_cb);
}

/* ------------------------------------------------------------------ */
/* POST /v1/orders/{trade_no}/close */

static void close_after(api_req_t *a, gw_err_t err)
{
    (void)err;
    reply_order(a, 200);
}

static void close_reversal_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    (void)j;
    if (err != GW_OK)
        gw_log_req(GW_LOG_ERR, a->req->id, "order %s: recording the reversal after payment failed (%s)",
                   a->trade_no, gw_strerror(err));
    /* answer the order as it stands now (SUCCESS, refunded in full) */
    const char *v[] = { a->merchant_id, a->trade_no };
    cJSON_Delete(a->order);
    a->order = NULL;
    if (gw_pg_json(a->app, "order_get", 2, v, get_order_cb_plain, a) != GW_OK)
        api_error(a, 503, "service_unavailable", "the database is unavailable");
}

static void close_after_reverse(api_req_t *a, gw_err_t err)
{
    /* paid between our query and the reverse: the channel gave the money
     * back, which is recorded as a full refund */
    if (err == GW_OK && strcmp(jstr(a->order, "status"), "SUCCESS") == 0) {
        char id[24];
        snprintf(id, sizeof(id), "%lld", (long long)jint(a->order, "id"));
        const char *v[] = { id, "{\"reason\":\"reversed after payment (merchant close)\"}" };
        if (gw_pg_json(a->app, "order_reversed_after_payment", 2, v, close_reversal_cb, a) == GW_OK) return;
    }
    reply_order(a, 200);
}

static void close_cb(void *udata, gw_chanop_out_t *out)
{
    api_req_t *a = udata;
    if (out->err == GW_OK && out->res.status == GW_PAY_REVERSED) {
        order_transition(a, "{PENDING,USER_PAYING,UNKNOWN}", "CLOSED", &out->res, close_after_reverse);
        return;
    }
    if (out->err == GW_OK && out->res.status == GW_PAY_CLOSED) {
        order_transition(a, "{PENDING,USER_PAYING,UNKNOWN}", "CLOSED", &out->res, close_after);
        return;
    }
    if (out->err == GW_OK && out->res.status == GW_PAY_SUCCESS) {
        order_transition(a, "{PENDING,USER_PAYING,UNKNOWN}", "SUCCESS", &out->res, close_after);
        return;
    }
    api_error(a, 409, "close_failed", "the channel did not close the order: %s %s",
              out->res.raw_code, out->res.raw_msg);
}

static void close_sub_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    if (err != GW_OK) {
        api_db_error(a, err);
        return;
    }
    a->sub = cJSON_Duplicate(j, 1);
    fill_merchant(a);
    fill_order(a);
    uint32_t flags = a->co.method == GW_METHOD_BARCODE ? GW_CALL_REVERSE : 0;
    if (flags) {
        /* some channels refuse a reverse before a minimum age (WeChat: 15 s) */
        int64_t age = (int64_t)gw_now_ms() - a->co.created_ms;
        int64_t min = gw_tasks_reverse_min_age_ms(a->app, jstr(a->order, "channel"));
        if (a->co.created_ms > 0 && age < min) {
            char secs[32];
            snprintf(secs, sizeof(secs), "%lld", (long long)((min - age + 999) / 1000));
            gw_http_add_header(a->req, "Retry-After", secs);
            api_error(a, 409, "too_early",
                      "the channel accepts a reverse only %lld ms after the payment started; retry in %s s",
                      (long long)min, secs);
            return;
        }
    }
    gw_err_t rc = gw_chanop_run(a->app, jstr(a->order, "channel"), GW_OP_CLOSE, flags, &a->cm,
                                &a->co, NULL, close_cb, a);
    if (rc != GW_OK) api_error(a, 503, "channel_unavailable", "channel %s: %s",
                               jstr(a->order, "channel"), gw_strerror(rc));
}

static void close_order_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    if (err == GW_ENOENT) {
        api_error(a, 404, "order_not_found", "no such order");
        return;
    }
    if (err != GW_OK) {
        api_db_error(a, err);
        return;
    }
    a->order = cJSON_Duplicate(j, 1);
    const char *st = jstr(j, "status");
    if (strcmp(st, "CLOSED") == 0) {
        reply_order(a, 200);
        return;
    }
    if (strcmp(st, "SUCCESS") == 0 || strcmp(st, "FAILED") == 0 || strcmp(st, "CREATED") == 0) {
        api_error(a, 409, "order_not_closable", "an order in state %s cannot be closed", st);
        return;
    }
    char id[24];
    snprintf(id, sizeof(id), "%lld", (long long)jint(j, "sub_merchant_id"));
    const char *v[] = { id };
    gw_err_t rc = gw_pg_json(a->app, "sub_get", 1, v, close_sub_cb, a);
    if (rc != GW_OK) api_db_error(a, rc);
}

static void close_authed(api_req_t *a)
{
    const char *v[] = { a->merchant_id, a->path_id };
    gw_err_t rc = gw_pg_json(a->app, "order_get", 2, v, close_order_cb, a);
    if (rc != GW_OK) api_db_error(a, rc);
}

/* ------------------------------------------------------------------ */
/* refunds */

static void reply_refund(api_req_t *a, int status)
{
    api_reply_json(a, status, refund_view(a->refund, a->order));
}

static void refund_transition_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    if (err == GW_OK) {
        cJSON *r = cJSON_DetachItemFromObjectCaseSensitive(j, "refund");
        if (r && !cJSON_IsNull(r)) {
            cJSON_Delete(a->refund);
            a->refund = r;
        } else cJSON_Delete(r);
    } else {
        gw_log_req(GW_LOG_ERR, a->req->id, "refund %s: recording the channel's answer failed (%s)",
                   jstr(a->refund, "refund_no"), gw_strerror(err));
    }
    reply_refund(a, 200);
}

static void refund_result(api_req_t *a, gw_chanop_out_t *out)
{
    const char *to = NULL;
    if (out->err == GW_OK) {
        if (out->res.status == GW_REFUND_SUCCESS) to = "SUCCESS";
        else if (out->res.status == GW_REFUND_FAILED) to = "FAILED";
    }
    if (to == NULL && !(out->err == GW_OK && out->res.status == GW_REFUND_PROCESSING && !a->sync_query)) {
        reply_refund(a, 200); /* still PROCESSING: followed up by the tasks */
        return;
    }
    cJSON *p = cJSON_CreateObject();
    if (to == NULL) {
        /* the channel took the refund: from now on it is queried, not resent */
        to = "PROCESSING";
        cJSON_AddBoolToObject(p, "channel_ack", 1);
        cJSON_AddNumberToObject(p, "next_check_ms",
                                gw_tasks_first_check_ms(a->app, gw_jstr(a->order, "channel"), "REFUND"));
    }
    if (out->res.channel_refund_no[0]) cJSON_AddStringToObject(p, "channel_refund_no", out->res.channel_refund_no);
    if (out->res.raw_code[0]) cJSON_AddStringToObject(p, "channel_code", out->res.raw_code);
    if (out->res.raw_msg[0]) cJSON_AddStringToObject(p, "channel_msg", out->res.raw_msg);
    char *patch = gw_json_print(p);
    cJSON_Delete(p);
    char id[24];
    snprintf(id, sizeof(id), "%lld", (long long)jint(a->refund, "id"));
    const char *v[] = { id, to, patch, "channel" };
    gw_err_t rc = gw_pg_json(a->app, "refund_transition", 4, v, refund_transition_cb, a);
    free(patch);
    if (rc != GW_OK) refund_transition_cb(a, rc, NULL);
}

static void refund_cb(void *udata, gw_chanop_out_t *out)
{
    api_req_t *a = udata;
    gw_log_req(GW_LOG_INFO, a->req->id, "refund %s of %s: %s (%s %s)", jstr(a->refund, "refund_no"),
               a->trade_no, out->err == GW_OK ? gw_chan_refund_status_name(out->res.status) : gw_strerror(out->err),
               out->res.raw_code, out->res.raw_msg);
    refund_result(a, out);
}

static void refund_fill(api_req_t *a)
{
    gw_rows_refund(a->refund, a->order, &a->cr);
}

static void refund_sub_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    if (err != GW_OK) {
        reply_refund(a, 200); /* PROCESSING; the follow-up sends it */
        return;
    }
    a->sub = cJSON_Duplicate(j, 1);
    fill_merchant(a);
    fill_order(a);
    refund_fill(a);
    int op = a->sync_query ? GW_OP_QUERY : GW_OP_REFUND;
    uint32_t flags = a->sync_query ? GW_CALL_REFUND_QUERY : 0;
    gw_err_t rc = gw_chanop_run(a->app, jstr(a->order, "channel"), (enum gw_chanop_kind)op, flags,
                                &a->cm, &a->co, &a->cr, refund_cb, a);
    if (rc != GW_OK) reply_refund(a, 200);
}

static void refund_sub_lookup(api_req_t *a)
{
    char id[24];
    snprintf(id, sizeof(id), "%lld", (long long)jint(a->order, "sub_merchant_id"));
    const char *v[] = { id };
    if (gw_pg_json(a->app, "sub_get", 1, v, refund_sub_cb, a) != GW_OK) reply_refund(a, 200);
}

static void refund_create_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    if (err != GW_OK) {
        api_db_error(a, err);
        return;
    }
    const char *e = jstr(j, "error");
    if (e) {
        if (strcmp(e, "order_not_found") == 0) api_error(a, 404, "order_not_found", "no such order");
        else if (strcmp(e, "order_not_paid") == 0)
            api_error(a, 422, "order_not_paid", "only a paid order can be refunded");
        else if (strcmp(e, "refund_exceeds_paid") == 0)
            api_error(a, 422, "refund_exceeds_paid", "the refund exceeds the refundable amount (%lld fen left)",
                      (long long)jint(j, "refundable"));
        else api_error(a, 500, "internal", "%s", e);
        return;
    }
    a->order = cJSON_DetachItemFromObjectCaseSensitive(j, "order");
    a->refund = cJSON_DetachItemFromObjectCaseSensitive(j, "refund");
    snprintf(a->trade_no, sizeof(a->trade_no), "%s", jstr(a->order, "trade_no"));
    if (!cJSON_IsTrue(gw_json_get(j, "created"))) {
        if (jint(a->refund, "amount") != a->amount || jint(a->refund, "order_id") != jint(a->order, "id")) {
            api_error(a, 409, "conflict", "out_refund_no %s was already used for a different refund",
                      jstr(a->refund, "out_refund_no"));
            return;
        }
        reply_refund(a, 200);
        return;
    }
    refund_sub_lookup(a);
}

static void refund_authed(api_req_t *a)
{
    gw_http_req_t *r = a->req;
    a->body = gw_json_parse(r->body.data, r->body.len);
    if (a->body == NULL || !cJSON_IsObject(a->body)) {
        api_error(a, 400, "invalid_json", "the body must be a JSON object");
        return;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, a->body) {
        if (strcmp(it->string, "out_refund_no") && strcmp(it->string, "amount") && strcmp(it->string, "reason")) {
            api_error(a, 400, "invalid_request", "%.64s: unknown field", it->string);
            return;
        }
    }
    const char *orn = jstr(a->body, "out_refund_no");
    if (!valid_chars(orn, 1, 32, "_-")) {
        api_error(a, 400, "invalid_request", "out_refund_no must be 1-32 characters [A-Za-z0-9_-]");
        return;
    }
    const char *why = check_str(a->body, "reason", 0, 128);
    if (why) {
        api_error(a, 400, "invalid_request", "reason %s", why);
        return;
    }
    int64_t amount;
    if (!json_int_ok(gw_json_get(a->body, "amount"), &amount) || amount <= 0) {
        api_error(a, 400, "invalid_amount", "amount must be a positive integer number of fen");
        return;
    }
    a->amount = amount;
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "merchant_id", a->merchant_id);
    cJSON_AddStringToObject(p, "trade_no", a->path_id);
    cJSON_AddStringToObject(p, "out_refund_no", orn);
    cJSON_AddNumberToObject(p, "amount", (double)amount);
    if (jstr(a->body, "reason")) cJSON_AddStringToObject(p, "reason", jstr(a->body, "reason"));
    cJSON_AddNumberToObject(p, "next_check_ms", gw_tasks_first_check_ms(a->app, NULL, "REFUND"));
    if (a->app->tasks) { /* ours until the channel answered */
        cJSON_AddNumberToObject(p, "lease_ms", a->app->cfg.channels.call_timeout_ms * 2 + 5000);
        cJSON_AddStringToObject(p, "lease_owner", gw_tasks_owner(a->app->tasks));
    }
    char *text = gw_json_print(p);
    cJSON_Delete(p);
    const char *v[] = { text };
    gw_err_t rc = gw_pg_json(a->app, "refund_create", 1, v, refund_create_cb, a);
    free(text);
    if (rc != GW_OK) api_db_error(a, rc);
}

static void refund_get_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    if (err == GW_ENOENT) {
        api_error(a, 404, "refund_not_found", "no such refund");
        return;
    }
    if (err != GW_OK) {
        api_db_error(a, err);
        return;
    }
    a->order = cJSON_DetachItemFromObjectCaseSensitive(j, "order");
    a->refund = cJSON_DetachItemFromObjectCaseSensitive(j, "refund");
    snprintf(a->trade_no, sizeof(a->trade_no), "%s", jstr(a->order, "trade_no"));
    if (strcmp(jstr(a->refund, "status"), "PROCESSING") == 0) {
        a->sync_query = 1;
        refund_sub_lookup(a);
        return;
    }
    reply_refund(a, 200);
}

static void refund_get_authed(api_req_t *a)
{
    lookup_row(a, "refund_get", "refund_get_out", "out_refund_no", refund_get_cb);
}

/* ------------------------------------------------------------------ */
/* GET /v1/balances/{customer_id}[/entries?before=ID&limit=N] */

static void balance_get_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    if (err == GW_ENOENT) {
        cJSON *z = cJSON_CreateObject();
        cJSON_AddStringToObject(z, "customer_id", a->path_id);
        cJSON_AddNumberToObject(z, "balance", 0);
        api_reply_json(a, 200, z);
        return;
    }
    if (err != GW_OK) {
        api_db_error(a, err);
        return;
    }
    api_reply_json(a, 200, cJSON_Duplicate(j, 1));
}

static void balance_entries_cb(void *udata, gw_err_t err, cJSON *j)
{
    api_req_t *a = udata;
    if (err != GW_OK) {
        api_db_error(a, err);
        return;
    }
    cJSON *out = cJSON_Duplicate(j, 1);
    cJSON *entries = gw_json_get(out, "entries");
    int n = cJSON_GetArraySize(entries);
    if (n > 0 && n == (int)a->amount) /* a full page: there may be more */
        cJSON_AddNumberToObject(out, "next_before", (double)jint(cJSON_GetArrayItem(entries, n - 1), "id"));
    api_reply_json(a, 200, out);
}

static void balance_authed(api_req_t *a)
{
    gw_err_t rc;
    if (a->sync_query) { /* entries */
        char before[40] = "9223372036854775807", limit[40] = "50";
        char tmp[32];
        if (gw_http_query_param(a->req, "before", tmp, sizeof(tmp)) && tmp[0]) snprintf(before, sizeof(before), "%s", tmp);
        if (gw_http_query_param(a->req, "limit", tmp, sizeof(tmp)) && tmp[0]) snprintf(limit, sizeof(limit), "%s", tmp);
        char *end;
        long long bv = strtoll(before, &end, 10);
        long lv = strtol(limit, NULL, 10);
        if (*end || bv <= 0 || lv < 1 || lv > 500) {
            api_error(a, 400, "invalid_request", "before must be an entry id and limit 1-500");
            return;
        }
        snprintf(limit, sizeof(limit), "%ld", lv);
        a->amount = lv;
        const char *v[] = { a->merchant_id, a->path_id, before, limit };
        rc = gw_pg_json(a->app, "balance_entries", 4, v, balance_entries_cb, a);
    } else {
        const char *v[] = { a->merchant_id, a->path_id };
        rc = gw_pg_json(a->app, "balance_get", 2, v, balance_get_cb, a);
    }
    if (rc != GW_OK) api_db_error(a, rc);
}

/* ------------------------------------------------------------------ */
/* GET /v1/statements/{shop_id}?date=YYYY-MM-DD[&format=csv] (settle.c) */

static void statement_authed(api_req_t *a)
{
    gw_settle_statement(a->app, a->req, a->merchant_id, a->path_id); /* answers the request */
    api_free(a);
}

/* ------------------------------------------------------------------ */
/* dispatch */

void gw_notify_handle(gw_app_t *app, gw_http_req_t *req, gw_str_t channel);

static int path_segments(gw_str_t path, gw_str_t *seg, int max)
{
    int n = 0;
    const char *p = path.ptr, *end = path.ptr + path.len;
    while (p < end && n < max) {
        if (*p == '/') {
            p++;
            continue;
        }
        const char *s = p;
        while (p < end && *p != '/') p++;
        seg[n++] = (gw_str_t){ s, (size_t)(p - s) };
    }
    return p < end ? max + 1 : n;
}

static int seg_is(gw_str_t s, const char *lit) { return gw_str_eq(s, lit); }

void gw_api_dispatch(gw_app_t *app, gw_http_req_t *req)
{
    gw_str_t seg[6];
    int n = path_segments(req->path, seg, 5);
    int get = strcmp(req->method_name, "GET") == 0, post = strcmp(req->method_name, "POST") == 0;
    step_fn step = NULL;
    const char *route = NULL;
    gw_str_t id = { NULL, 0 };

    /* /notify/{channel}[/…]: what follows the channel name is the module's
     * (e.g. a merchant number in the URL it gave the channel) */
    if ((n == 2 || n == 3) && seg_is(seg[0], "notify")) {
        if (!post) goto not_allowed;
        req->route = "/notify/{channel}";
        gw_notify_handle(app, req, seg[1]);
        return;
    }
    if (n >= 2 && seg_is(seg[0], "v1") && seg_is(seg[1], "orders")) {
        if (n == 2) {
            if (post) step = create_authed, route = "POST /v1/orders";
            else if (get) step = get_authed, route = "GET /v1/orders";
            else goto not_allowed;
        } else if (n == 3) {
            if (!get) goto not_allowed;
            step = get_authed, route = "GET /v1/orders/{id}", id = seg[2];
        } else if (n == 4 && seg_is(seg[3], "close")) {
            if (!post) goto not_allowed;
            step = close_authed, route = "POST /v1/orders/{id}/close", id = seg[2];
        } else if (n == 4 && seg_is(seg[3], "refunds")) {
            if (!post) goto not_allowed;
            step = refund_authed, route = "POST /v1/orders/{id}/refunds", id = seg[2];
        }
    } else if ((n == 3 || n == 4) && seg_is(seg[0], "v1") && seg_is(seg[1], "balances")) {
        if (!get) goto not_allowed;
        if (n == 4 && !seg_is(seg[3], "entries")) step = NULL;
        else step = balance_authed, route = n == 3 ? "GET /v1/balances/{customer}" : "GET /v1/balances/{customer}/entries", id = seg[2];
    } else if (n == 3 && seg_is(seg[0], "v1") && seg_is(seg[1], "statements")) {
        if (!get) goto not_allowed;
        step = statement_authed, route = "GET /v1/statements/{shop}", id = seg[2];
    } else if (n >= 2 && seg_is(seg[0], "v1") && seg_is(seg[1], "refunds")) {
        if (!get) goto not_allowed;
        if (n == 2) step = refund_get_authed, route = "GET /v1/refunds";
        else if (n == 3) step = refund_get_authed, route = "GET /v1/refunds/{id}", id = seg[2];
    }
    if (step == NULL) {
        gw_http_respond_error(req, 404, "not_found", "no such endpoint");
        return;
    }
    req->route = route;
    api_req_t *a = api_new(app, req);
    if (a == NULL) {
        gw_http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    if (id.len) {
        if (!valid_token(id, 64)) {
            api_error(a, 404, "not_found", "no such resource");
            return;
        }
        snprintf(a->path_id, sizeof(a->path_id), "%.*s", (int)id.len, id.ptr);
    }
    if (step == balance_authed && n == 4) a->sync_query = 1;
    a->prefetch = step == create_authed;
    api_auth(a, step);
    return;
not_allowed:
    gw_http_respond_error(req, 405, "method_not_allowed", "method not allowed for this path");
}
