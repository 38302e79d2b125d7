/*
 * alipay.c — the Alipay OpenAPI (v2 gateway) channel module, ISV mode.
 *
 * Channel ABI 1.1 (fills the 1.1 policy).
 * Protocol: /work/shared/PROTOCOLS.md §C: a form POST to one gateway URL
 * (common parameters in the query string as the official SDKs do,
 * biz_content in the body), RSA2 (SHA256withRSA) request signatures over
 * every parameter except sign, signed JSON answers whose signature covers
 * the raw text of the "<method>_response" object, and form-encoded trade
 * notifications signed without sign and sign_type.  Behaviour, settings and
 * the status mapping are documented in docs/channels/alipay.md; keep the two
 * in step.
 *
 * One ISV app (settings: app_id, private_key, alipay_public_key) acts for
 * each sub-merchant with the sub-merchant's app_auth_token
 * (merchant.extra).  merchant.mch_id is the sub-merchant's seller id
 * (PID 2088…), which notifications carry as seller_id.
 *
 * The module is a codec: it builds requests and parses/verifies responses
 * and notifications; the core does all I/O and runs these functions on the
 * libuv thread pool (the RSA private-key operation of every request happens
 * there, never on the event loop).  Everything goes through the host API, no
 * globals: every function is reentrant.  Amounts are converted between fen
 * and yuan strings with integer arithmetic only.
 */
#include "gw_channel.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#ifndef GW_CHANNEL_NAME
#define GW_CHANNEL_NAME "alipay"
#endif

#define AP_VERSION "1.0.0"
#define AP_DEFAULT_URL "https://openapi.alipay.com/gateway.do"
#define AP_URL_MAX 1024
#define AP_ID_MAX 64                /* app ids, PIDs, store ids */
#define AP_TOKEN_MAX 256            /* app_auth_token (about 40 characters in practice) */
#define AP_SIGN_MAX (256u * 1024u)  /* signing-string scratch buffers */
#define AP_SIG_MAX 4096u            /* a Base64 RSA signature (RSA-16384) */
#define AP_BIZ_MAX (64u * 1024u)    /* biz_content */
#define AP_MAX_FEN 10000000000LL    /* Alipay's upper bound: 100000000.00 yuan */
#define AP_QR_VALID_MS (2LL * 3600 * 1000) /* an unscanned QR without time_expire */
#define AP_DEFAULT_GRACE_MS 60000LL

#define M_PRECREATE "alipay.trade.precreate"
#define M_PAY "alipay.trade.pay"
#define M_QUERY "alipay.trade.query"
#define M_REFUND "alipay.trade.refund"
#define M_REFUND_QUERY "alipay.trade.fastpay.refund.query"
#define M_CLOSE "alipay.trade.close"
#define M_CANCEL "alipay.trade.cancel"

/* Per-channel state, in the core-allocated ctx_size block; read-only after init. */
typedef struct ap_ctx {
    const gw_host_api_t *host;
    char gateway_url[AP_URL_MAX];
    char app_id[AP_ID_MAX];
    char sys_service_provider_id[AP_ID_MAX];
    gw_rsa_key_t *app_key;    /* settings.private_key; owned (cached) by the core; may be NULL */
    gw_rsa_key_t *alipay_key; /* settings.alipay_public_key; may be NULL */
    int64_t expire_grace_ms;
} ap_ctx_t;

/* The credentials of one call: the ISV app acting for a sub-merchant. */
typedef struct ap_cred {
    char app_id[AP_ID_MAX];
    char app_auth_token[AP_TOKEN_MAX];
    char store_id[AP_ID_MAX];
    gw_rsa_key_t *priv;
} ap_cred_t;

static const char *const ap_req_exclude[] = { "sign", NULL };
static const char *const ap_notify_exclude[] = { "sign", "sign_type", NULL };

/* ------------------------------------------------------------------ */
/* small helpers */

static gw_str_t ap_cstr(const char *s)
{
    gw_str_t r = { s, s ? strlen(s) : 0 };
    return r;
}

static int ap_present(gw_str_t s)
{
    return s.ptr != NULL && s.len > 0;
}

static int ap_eq(gw_str_t s, const char *lit)
{
    size_t n = strlen(lit);
    return s.ptr != NULL && s.len == n && memcmp(s.ptr, lit, n) == 0;
}

static int ap_streq(gw_str_t a, gw_str_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static int ap_eq_ci(gw_str_t s, const char *lit)
{
    size_t n = strlen(lit);
    if (s.ptr == NULL || s.len != n) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char a = (unsigned char)s.ptr[i], b = (unsigned char)lit[i];
        if (a >= 'A' && a <= 'Z') a = (unsigned char)(a - 'A' + 'a');
        if (b >= 'A' && b <= 'Z') b = (unsigned char)(b - 'A' + 'a');
        if (a != b) return 0;
    }
    return 1;
}

/* Copies s into a fixed array, truncated, always NUL-terminated. */
static void ap_copy(char *dst, size_t cap, gw_str_t s)
{
    size_t n = s.ptr ? s.len : 0;
    if (cap == 0) return;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(dst, s.ptr, n);
    dst[n] = '\0';
}

static void ap_copyz(char *dst, size_t cap, const char *s)
{
    ap_copy(dst, cap, ap_cstr(s));
}

static void ap_wipe(gw_buf_t *b)
{
    if (b->data && b->cap) explicit_bzero(b->data, b->cap);
}

/* fen → "yuan.ff" (1 → "0.01", 100 → "1.00"); fen must be >= 0. */
static void ap_yuan(int64_t fen, char out[32])
{
    snprintf(out, 32, "%" PRId64 ".%02d", fen / 100, (int)(fen % 100));
}

/* "88.88" → 8888 fen, exactly.  Accepts [0-9]+ with an optional fraction of
 * one or two digits; no sign, no exponent, no leading zeros ("0.5" is fine,
 * "00.5" is not), at most AP_MAX_FEN.  -1 when absent or malformed. */
static int64_t ap_parse_yuan(gw_str_t s)
{
    size_t i = 0, int_digits = 0;
    int64_t whole = 0, frac = 0;
    if (!ap_present(s) || s.len > 16) return -1;
    while (i < s.len && s.ptr[i] >= '0' && s.ptr[i] <= '9') {
        whole = whole * 10 + (s.ptr[i] - '0');
        i++;
        int_digits++;
    }
    if (int_digits == 0 || int_digits > 9 || (int_digits > 1 && s.ptr[0] == '0')) return -1;
    if (i < s.len) {
        size_t fd = 0;
        if (s.ptr[i] != '.') return -1;
        i++;
        while (i < s.len && s.ptr[i] >= '0' && s.ptr[i] <= '9') {
            frac = frac * 10 + (s.ptr[i] - '0');
            i++;
            fd++;
        }
        if (fd == 0 || fd > 2 || i != s.len) return -1;
        if (fd == 1) frac *= 10;
    }
    if (whole * 100 + frac > AP_MAX_FEN) return -1;
    return whole * 100 + frac;
}

#define AP_TIME_MAX 80 /* room for what snprintf could write; the text is 19 characters */
#define AP_MS_MAX 253402300799999LL /* 9999-12-31 23:59:59.999 */

/* Epoch ms → "yyyy-MM-dd HH:mm:ss" in GMT+8 (China has no daylight saving). */
static int ap_fmt_time(int64_t ms, char out[AP_TIME_MAX])
{
    struct tm tm;
    time_t t = (time_t)(ms / 1000) + 8 * 3600;
    if (ms < 0 || ms > AP_MS_MAX - 8 * 3600 * 1000LL || gmtime_r(&t, &tm) == NULL) return -1;
    snprintf(out, AP_TIME_MAX, "%04d-%02d-%02d %02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return 0;
}

/* A string member of a JSON object, or {NULL,0}. */
static gw_str_t ap_jget(const gw_host_api_t *h, const gw_json_t *obj, const char *key)
{
    const char *s = obj ? h->json_string(h->json_get(obj, key)) : NULL;
    return ap_cstr(s);
}

/* The alipay public key for this merchant: merchant.public_key when given,
 * else the one from the settings.  NULL when neither is usable. */
static gw_rsa_key_t *ap_alipay_key(const ap_ctx_t *cx, const gw_host_api_t *h,
                                   const gw_chan_merchant_t *m)
{
    if (m != NULL && ap_present(m->public_key)) return h->rsa_public(m->public_key.ptr, m->public_key.len);
    return cx ? cx->alipay_key : NULL;
}

/* The app id the calls of this merchant go out under. */
static gw_str_t ap_app_id(const ap_ctx_t *cx, const gw_chan_merchant_t *m)
{
    if (m != NULL && ap_present(m->app_id)) return m->app_id;
    return ap_cstr(cx->app_id);
}

/* merchant.extra: {"app_auth_token":"…","store_id":"…"}.  GW_EINVAL when
 * malformed. */
static gw_err_t ap_extra(const gw_host_api_t *h, const gw_chan_merchant_t *m, ap_cred_t *c)
{
    gw_json_t *j, *v;
    const char *s;
    gw_err_t rc = GW_OK;

    c->app_auth_token[0] = c->store_id[0] = '\0';
    if (m == NULL || !ap_present(m->extra)) return GW_OK;
    j = h->json_parse(m->extra.ptr, m->extra.len);
    if (j == NULL) return GW_EINVAL;
    if ((v = h->json_get(j, "app_auth_token")) != NULL) {
        s = h->json_string(v);
        if (s == NULL || strlen(s) >= sizeof(c->app_auth_token) || strpbrk(s, "\r\n") != NULL) rc = GW_EINVAL;
        else ap_copyz(c->app_auth_token, sizeof(c->app_auth_token), s);
    }
    if (rc == GW_OK && (v = h->json_get(j, "store_id")) != NULL) {
        s = h->json_string(v);
        if (s == NULL || strlen(s) >= sizeof(c->store_id)) rc = GW_EINVAL;
        else ap_copyz(c->store_id, sizeof(c->store_id), s);
    }
    h->json_free(j);
    return rc;
}

/* Everything a request needs: app id, token, private key.  GW_EINVAL for a
 * malformed merchant row, GW_EKEY for missing or unusable credentials. */
static gw_err_t ap_cred(const gw_chan_call_t *call, ap_cred_t *c)
{
    const ap_ctx_t *cx = call->ctx;
    const gw_host_api_t *h = call->host;
    const gw_chan_merchant_t *m = call->merchant;
    gw_str_t app;
    gw_err_t rc;

    if (m == NULL || !ap_present(m->mch_id)) return GW_EINVAL;
    if ((rc = ap_extra(h, m, c)) != GW_OK) return rc;
    app = ap_app_id(cx, m);
    if (!ap_present(app) || app.len >= sizeof(c->app_id)) return GW_EINVAL;
    ap_copy(c->app_id, sizeof(c->app_id), app);
    /* ISV mode acts for the sub-merchant through its token; a merchant with
     * an app of its own (merchant.app_id) needs none */
    if (c->app_auth_token[0] == '\0' && !ap_present(m->app_id)) return GW_EKEY;
    if (ap_present(m->private_key)) c->priv = h->rsa_private(m->private_key.ptr, m->private_key.len);
    else c->priv = cx->app_key;
    return c->priv ? GW_OK : GW_EKEY;
}

/* ------------------------------------------------------------------ */
/* life cycle */

static gw_err_t ap_setting_str(const gw_host_api_t *h, const gw_json_t *j, const char *key, char *dst,
                               size_t cap, gw_buf_t *err)
{
    gw_json_t *v = h->json_get(j, key);
    const char *s;
    if (v == NULL) return GW_OK;
    s = h->json_string(v);
    if (s == NULL || strlen(s) >= cap || strpbrk(s, " \t\r\n&=?#") != NULL) {
        h->buf_appendf(err, "alipay: %s must be a short string without spaces", key);
        return GW_EINVAL;
    }
    ap_copyz(dst, cap, s);
    return GW_OK;
}

static gw_err_t ap_init(void *ctx, const gw_host_api_t *host, const char *settings, size_t settings_len,
                        gw_buf_t *err)
{
    ap_ctx_t *cx = ctx;
    gw_json_t *j = NULL;
    gw_json_t *v;
    const char *s;
    gw_err_t rc = GW_EINVAL;

    memset(cx, 0, sizeof(*cx));
    /* the module uses the host API 1.0 members only */
    if (host == NULL || (host->version >> 16) != GW_CHANNEL_ABI_MAJOR ||
        host->struct_size < offsetof(gw_host_api_t, header_get) + sizeof(host->header_get))
        return GW_ENOTSUP; /* cannot even report through err */
    cx->host = host;
    ap_copyz(cx->gateway_url, sizeof(cx->gateway_url), AP_DEFAULT_URL);
    cx->expire_grace_ms = AP_DEFAULT_GRACE_MS;

    if (settings == NULL || settings_len == 0) return GW_OK;
    for (size_t i = 0; i < settings_len; i++) {
        if (settings[i] == ' ' || settings[i] == '\t' || settings[i] == '\r' || settings[i] == '\n')
            continue;
        if (settings[i] == '{') j = host->json_parse(settings, settings_len);
        break;
    }
    if (j == NULL) {
        host->buf_appendf(err, "alipay: settings are not a JSON object");
        goto out;
    }
    if ((v = host->json_get(j, "gateway_url")) != NULL) {
        s = host->json_string(v);
        if (s == NULL || (strncmp(s, "https://", 8) != 0 && strncmp(s, "http://", 7) != 0) ||
            strlen(s) >= sizeof(cx->gateway_url) || strpbrk(s, " \t\r\n#?") != NULL) {
            /* no query string: the common parameters go there, each once */
            host->buf_appendf(err, "alipay: gateway_url must be an http(s) URL without a query string, "
                              "shorter than %d bytes", AP_URL_MAX);
            goto out;
        }
        ap_copyz(cx->gateway_url, sizeof(cx->gateway_url), s);
    }
    if (ap_setting_str(host, j, "app_id", cx->app_id, sizeof(cx->app_id), err) != GW_OK) goto out;
    if (ap_setting_str(host, j, "sys_service_provider_id", cx->sys_service_provider_id,
                       sizeof(cx->sys_service_provider_id), err) != GW_OK)
        goto out;
    if ((v = host->json_get(j, "expire_grace_s")) != NULL) {
        int64_t g;
        if (host->json_int(v, &g) != GW_OK || g < 0 || g > 86400) {
            host->buf_appendf(err, "alipay: expire_grace_s must be an integer from 0 to 86400");
            goto out;
        }
        cx->expire_grace_ms = g * 1000;
    }
    if ((v = host->json_get(j, "private_key")) != NULL) {
        s = host->json_string(v);
        if (s == NULL) {
            host->buf_appendf(err, "alipay: private_key must be a string (PEM or Base64 DER)");
            goto out;
        }
        if (s[0] != '\0') {
            cx->app_key = host->rsa_private(s, strlen(s));
            if (cx->app_key == NULL) {
                host->buf_appendf(err, "alipay: private_key is not an RSA private key");
                rc = GW_EKEY;
                goto out;
            }
        }
    }
    if ((v = host->json_get(j, "alipay_public_key")) != NULL) {
        s = host->json_string(v);
        if (s == NULL) {
            host->buf_appendf(err, "alipay: alipay_public_key must be a string (PEM or Base64 DER)");
            goto out;
        }
        if (s[0] != '\0') {
            cx->alipay_key = host->rsa_public(s, strlen(s));
            if (cx->alipay_key == NULL) {
                host->buf_appendf(err, "alipay: alipay_public_key is not an RSA public key or certificate");
                rc = GW_EKEY;
                goto out;
            }
        }
    }
    rc = GW_OK;
out:
    if (j) host->json_free(j);
    if (rc != GW_OK) memset(cx, 0, sizeof(*cx));
    return rc;
}

static void ap_fini(void *ctx)
{
    ap_ctx_t *cx = ctx;
    memset(cx, 0, sizeof(*cx));
}

/* ------------------------------------------------------------------ */
/* requests */

/* biz_content under construction: a JSON object built with json_quote,
 * members in the order they are added, empty values left out. */
typedef struct ap_biz {
    const gw_host_api_t *h;
    gw_buf_t b;
    int n;
    gw_err_t err;
} ap_biz_t;

static void biz_init(ap_biz_t *z, const gw_host_api_t *h)
{
    z->h = h;
    z->n = 0;
    z->err = GW_OK;
    h->buf_init(&z->b, AP_BIZ_MAX);
}

static void biz_key(ap_biz_t *z, const char *k)
{
    if (z->err != GW_OK) return;
    z->err = z->h->buf_append(&z->b, z->n ? "," : "{", 1);
    if (z->err == GW_OK) z->err = z->h->json_quote(&z->b, k, strlen(k));
    if (z->err == GW_OK) z->err = z->h->buf_append(&z->b, ":", 1);
    z->n++;
}

static void biz_str(ap_biz_t *z, const char *k, gw_str_t v)
{
    if (z->err != GW_OK || !ap_present(v)) return;
    biz_key(z, k);
    if (z->err == GW_OK) z->err = z->h->json_quote(&z->b, v.ptr, v.len);
}

static void biz_yuan(ap_biz_t *z, const char *k, int64_t fen)
{
    char y[32];
    ap_yuan(fen, y);
    biz_str(z, k, ap_cstr(y));
}

static void biz_end(ap_biz_t *z)
{
    if (z->err == GW_OK) z->err = z->h->buf_append(&z->b, z->n ? "}" : "{}", z->n ? 1 : 2);
}

/* The trade the call is about: out_trade_no, or trade_no when ours is not
 * known. */
static void biz_trade(ap_biz_t *z, const gw_chan_order_t *o)
{
    if (ap_present(o->out_trade_no)) biz_str(z, "out_trade_no", o->out_trade_no);
    else biz_str(z, "trade_no", o->channel_trade_no);
}

static gw_err_t ap_kv(gw_kv_t *kv, const gw_host_api_t *h, const char *k, gw_str_t v)
{
    if (!ap_present(v)) return GW_OK; /* an empty value would not be signed either */
    return h->kv_add(kv, k, strlen(k), v.ptr, v.len);
}

/* Signs (PROTOCOLS.md §C.2) and writes the request: common parameters (and
 * sign) in the URL's query string, biz_content in the form body, as the
 * official SDKs place them. */
static gw_err_t ap_send(const gw_chan_call_t *call, const ap_cred_t *c, const char *method,
                        ap_biz_t *z, gw_str_t notify_url, gw_chan_request_t *req)
{
    const ap_ctx_t *cx = call->ctx;
    const gw_host_api_t *h = call->host;
    gw_kv_t *kv = NULL;
    gw_buf_t s, sig;
    char ts[AP_TIME_MAX];
    gw_err_t rc = z->err;

    h->buf_init(&s, AP_SIGN_MAX);
    h->buf_init(&sig, AP_SIG_MAX);
    if (rc != GW_OK) goto out;
    biz_end(z);
    if ((rc = z->err) != GW_OK) goto out;
    if (ap_fmt_time((int64_t)h->now_ms(), ts) != 0) {
        rc = GW_EINVAL;
        goto out;
    }
    if ((kv = h->kv_new()) == NULL) {
        rc = GW_ENOMEM;
        goto out;
    }
    if ((rc = ap_kv(kv, h, "app_id", ap_cstr(c->app_id))) != GW_OK ||
        (rc = ap_kv(kv, h, "method", ap_cstr(method))) != GW_OK ||
        (rc = ap_kv(kv, h, "format", ap_cstr("JSON"))) != GW_OK ||
        (rc = ap_kv(kv, h, "charset", ap_cstr("utf-8"))) != GW_OK ||
        (rc = ap_kv(kv, h, "sign_type", ap_cstr("RSA2"))) != GW_OK ||
        (rc = ap_kv(kv, h, "timestamp", ap_cstr(ts))) != GW_OK ||
        (rc = ap_kv(kv, h, "version", ap_cstr("1.0"))) != GW_OK ||
        (rc = ap_kv(kv, h, "notify_url", notify_url)) != GW_OK ||
        (rc = ap_kv(kv, h, "app_auth_token", ap_cstr(c->app_auth_token))) != GW_OK ||
        (rc = ap_kv(kv, h, "biz_content", (gw_str_t){ z->b.data, z->b.len })) != GW_OK)
        goto out;
    /* every parameter but sign, empties dropped, byte-wise sorted, raw values */
    if ((rc = h->kv_sign_string(kv, ap_req_exclude, GW_KV_DROP_EMPTY | GW_KV_SORTED, &s)) != GW_OK)
        goto out;
    if ((rc = h->buf_append(&req->sign_string, s.data ? s.data : "", s.len)) != GW_OK) goto out;
    if ((rc = h->rsa_sign(c->priv, GW_HASH_SHA256, s.data ? s.data : "", s.len, &sig)) != GW_OK) goto out;
    if ((rc = h->kv_add(kv, "sign", 4, sig.data, sig.len)) != GW_OK) goto out;

    req->method = "POST";
    if ((rc = h->buf_append(&req->url, cx->gateway_url, strlen(cx->gateway_url))) != GW_OK) goto out;
    for (size_t i = 0, first = 1; rc == GW_OK && i < h->kv_count(kv); i++) {
        gw_str_t k = h->kv_key_at(kv, i), v = h->kv_value_at(kv, i);
        if (ap_eq(k, "biz_content")) continue;
        rc = h->buf_append(&req->url, first ? "?" : "&", 1);
        first = 0;
        if (rc == GW_OK) rc = h->buf_append(&req->url, k.ptr, k.len);
        if (rc == GW_OK) rc = h->buf_append(&req->url, "=", 1);
        if (rc == GW_OK) rc = h->url_encode(v.ptr, v.len, &req->url);
    }
    if (rc != GW_OK) goto out;
    if ((rc = h->buf_appendf(&req->headers, "Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n"))
        != GW_OK)
        goto out;
    if ((rc = h->buf_append(&req->body, "biz_content=", 12)) != GW_OK) goto out;
    rc = h->url_encode(z->b.data, z->b.len, &req->body);
out:
    ap_wipe(&s);
    h->buf_free(&s);
    h->buf_free(&sig);
    h->buf_free(&z->b);
    if (kv) h->kv_free(kv);
    return rc;
}

/* extend_params.sys_service_provider_id: the ISV's PID, for its commission. */
static void biz_extend(ap_biz_t *z, const ap_ctx_t *cx)
{
    static const char pfx[] = "{\"sys_service_provider_id\":";
    if (cx->sys_service_provider_id[0] == '\0' || z->err != GW_OK) return;
    biz_key(z, "extend_params");
    if (z->err == GW_OK) z->err = z->h->buf_append(&z->b, pfx, sizeof(pfx) - 1);
    if (z->err == GW_OK)
        z->err = z->h->json_quote(&z->b, cx->sys_service_provider_id, strlen(cx->sys_service_provider_id));
    if (z->err == GW_OK) z->err = z->h->buf_append(&z->b, "}", 1);
}

static gw_err_t ap_pay(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const ap_ctx_t *cx = call->ctx;
    const gw_chan_order_t *o = call->order;
    ap_cred_t c;
    ap_biz_t z;
    gw_err_t rc;

    if (o == NULL || !ap_present(o->out_trade_no) || !ap_present(o->subject) || o->amount <= 0 ||
        o->amount > AP_MAX_FEN)
        return GW_EINVAL;
    if (o->method != GW_METHOD_ALIPAY_QR && o->method != GW_METHOD_BARCODE) return GW_ENOTSUP;
    if (o->method == GW_METHOD_BARCODE && !ap_present(o->auth_code)) return GW_EINVAL;
    if (o->method == GW_METHOD_ALIPAY_QR && !ap_present(o->notify_url)) return GW_EINVAL;
    if ((rc = ap_cred(call, &c)) != GW_OK) return rc;
    biz_init(&z, call->host);
    biz_str(&z, "out_trade_no", o->out_trade_no);
    biz_yuan(&z, "total_amount", o->amount);
    biz_str(&z, "subject", o->subject);
    if (o->method == GW_METHOD_BARCODE) {
        biz_str(&z, "scene", ap_cstr("bar_code"));
        biz_str(&z, "auth_code", o->auth_code);
        biz_str(&z, "product_code", ap_cstr("FACE_TO_FACE_PAYMENT"));
    } else if (o->expire_ms > 0) {
        char te[AP_TIME_MAX];
        if (ap_fmt_time(o->expire_ms, te) != 0) {
            call->host->buf_free(&z.b);
            return GW_EINVAL;
        }
        biz_str(&z, "time_expire", ap_cstr(te));
    }
    biz_str(&z, "store_id", ap_cstr(c.store_id));
    biz_extend(&z, cx);
    return ap_send(call, &c, o->method == GW_METHOD_BARCODE ? M_PAY : M_PRECREATE, &z, o->notify_url, req);
}

static gw_err_t ap_query(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    int refund_q = (call->flags & GW_CALL_REFUND_QUERY) != 0;
    ap_cred_t c;
    ap_biz_t z;
    gw_err_t rc;

    if (o == NULL || (!ap_present(o->out_trade_no) && !ap_present(o->channel_trade_no))) return GW_EINVAL;
    if (refund_q && (call->refund == NULL || !ap_present(call->refund->out_refund_no))) return GW_EINVAL;
    if ((rc = ap_cred(call, &c)) != GW_OK) return rc;
    biz_init(&z, call->host);
    biz_trade(&z, o);
    if (refund_q) biz_str(&z, "out_request_no", call->refund->out_refund_no);
    return ap_send(call, &c, refund_q ? M_REFUND_QUERY : M_QUERY, &z, ap_cstr(NULL), req);
}

static gw_err_t ap_refund(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    const gw_chan_refund_t *f = call->refund;
    ap_cred_t c;
    ap_biz_t z;
    gw_err_t rc;

    if (o == NULL || f == NULL || !ap_present(f->out_refund_no) || f->amount <= 0 ||
        f->total_amount <= 0 || f->amount > f->total_amount || f->amount > AP_MAX_FEN ||
        (!ap_present(o->out_trade_no) && !ap_present(o->channel_trade_no)))
        return GW_EINVAL;
    if ((rc = ap_cred(call, &c)) != GW_OK) return rc;
    biz_init(&z, call->host);
    biz_trade(&z, o);
    biz_yuan(&z, "refund_amount", f->amount);
    /* required for partial refunds and reused on retry: our refund number */
    biz_str(&z, "out_request_no", f->out_refund_no);
    biz_str(&z, "refund_reason", f->reason);
    return ap_send(call, &c, M_REFUND, &z, ap_cstr(NULL), req);
}

static gw_err_t ap_close(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    int reverse = (call->flags & GW_CALL_REVERSE) != 0;
    ap_cred_t c;
    ap_biz_t z;
    gw_err_t rc;

    if (o == NULL || (!ap_present(o->out_trade_no) && !ap_present(o->channel_trade_no))) return GW_EINVAL;
    if ((rc = ap_cred(call, &c)) != GW_OK) return rc;
    biz_init(&z, call->host);
    biz_trade(&z, o);
    return ap_send(call, &c, reverse ? M_CANCEL : M_CLOSE, &z, ap_cstr(NULL), req);
}

/* ------------------------------------------------------------------ */
/* response text: which bytes are signed (PROTOCOLS.md §C.3) */

static size_t ap_ws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) i++;
    return i;
}

/* s[i] is '"'.  Index after the closing quote, 0 when unterminated; *esc
 * is set when the string holds an escape. */
static size_t ap_skip_string(const char *s, size_t n, size_t i, int *esc)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\') {
            if (esc) *esc = 1;
            i++;
        } else if (s[i] == '"') {
            return i + 1;
        }
    }
    return 0;
}

/* Index after the JSON value that starts at i, 0 when malformed.  Objects
 * and arrays are skipped by counting brackets outside strings (the whole
 * document has been validated by the JSON parser already). */
static size_t ap_skip_value(const char *s, size_t n, size_t i)
{
    int depth = 0;
    if (i >= n) return 0;
    if (s[i] == '"') return ap_skip_string(s, n, i, NULL);
    if (s[i] != '{' && s[i] != '[') {
        while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\t' &&
               s[i] != '\r' && s[i] != '\n')
            i++;
        return i;
    }
    while (i < n) {
        char ch = s[i];
        if (ch == '"') {
            if ((i = ap_skip_string(s, n, i, NULL)) == 0) return 0;
            continue;
        }
        if (ch == '{' || ch == '[') depth++;
        else if ((ch == '}' || ch == ']') && --depth == 0) return i + 1;
        i++;
    }
    return 0;
}

/* Finds the member `key` of the top-level object in the raw text and gives
 * the exact bytes of its value, from its first to its last character.
 * 1 found, 0 absent, -1 when the text is not one object, a top-level key is
 * escaped, or the key is there twice (each would make "the signed text"
 * ambiguous). */
static int ap_member(const char *s, size_t n, const char *key, gw_str_t *val)
{
    size_t klen = strlen(key), i = ap_ws(s, n, 0);
    int found = 0;
    if (i >= n || s[i] != '{') return -1;
    i = ap_ws(s, n, i + 1);
    if (i < n && s[i] == '}') return 0;
    while (i < n) {
        int esc = 0;
        size_t ks, ke, vs, ve;
        if (s[i] != '"') return -1;
        ks = i + 1;
        if ((ke = ap_skip_string(s, n, i, &esc)) == 0 || esc) return -1;
        i = ap_ws(s, n, ke);
        if (i >= n || s[i] != ':') return -1;
        vs = ap_ws(s, n, i + 1);
        if ((ve = ap_skip_value(s, n, vs)) == 0) return -1;
        if (ke - 1 - ks == klen && memcmp(s + ks, key, klen) == 0) {
            if (found) return -1;
            found = 1;
            val->ptr = s + vs;
            val->len = ve - vs;
        }
        i = ap_ws(s, n, ve);
        if (i < n && s[i] == ',') {
            i = ap_ws(s, n, i + 1);
            continue;
        }
        if (i < n && s[i] == '}') return found;
        return -1;
    }
    return -1;
}

/* Verifies sig over the signed text; when that fails and the text holds
 * "\/", once more with "\/" read as "/" (the Java client's fallback for
 * gateways that sign the unescaped text). */
static gw_err_t ap_verify_text(const gw_host_api_t *h, gw_rsa_key_t *key, gw_str_t text, gw_str_t sig)
{
    gw_buf_t u;
    gw_err_t rc;
    if (key == NULL || !ap_present(sig)) return GW_ESIGN;
    if (h->rsa_verify(key, GW_HASH_SHA256, text.ptr, text.len, sig.ptr, sig.len) == GW_OK) return GW_OK;
    if (memmem(text.ptr, text.len, "\\/", 2) == NULL) return GW_ESIGN;
    h->buf_init(&u, text.len + 1);
    rc = GW_ESIGN;
    for (size_t i = 0; i < text.len; i++) {
        if (text.ptr[i] == '\\' && i + 1 < text.len && text.ptr[i + 1] == '/') i++;
        if (h->buf_append(&u, text.ptr + i, 1) != GW_OK) goto out;
    }
    if (h->rsa_verify(key, GW_HASH_SHA256, u.data ? u.data : "", u.len, sig.ptr, sig.len) == GW_OK) rc = GW_OK;
out:
    h->buf_free(&u);
    return rc;
}

/* ------------------------------------------------------------------ */
/* responses */

static void ap_result_reset(gw_chan_result_t *res, int unknown)
{
    res->status = unknown;
    res->amount = -1;
    res->channel_trade_no[0] = '\0';
    res->channel_refund_no[0] = '\0';
    res->mch_id[0] = '\0';
    res->raw_code[0] = '\0';
    res->raw_msg[0] = '\0';
    res->retry = 0;
}

static void ap_untrust(gw_chan_result_t *res, int unknown, const char *code, const char *msg)
{
    res->status = unknown;
    if (code) ap_copyz(res->raw_code, sizeof(res->raw_code), code);
    ap_copyz(res->raw_msg, sizeof(res->raw_msg), msg);
}

/* code / sub_code / msg / sub_msg → raw_code (sub_code, else code) and
 * raw_msg (sub_msg, else msg). */
static void ap_codes(const gw_host_api_t *h, const gw_json_t *obj, gw_chan_result_t *res)
{
    gw_str_t sc = ap_jget(h, obj, "sub_code"), sm = ap_jget(h, obj, "sub_msg");
    ap_copy(res->raw_code, sizeof(res->raw_code), ap_present(sc) ? sc : ap_jget(h, obj, "code"));
    ap_copy(res->raw_msg, sizeof(res->raw_msg), ap_present(sm) ? sm : ap_jget(h, obj, "msg"));
}

/* The common part of every *_parse: HTTP status, JSON, the signed
 * "<method>_response" (or "error_response") text and its signature, the
 * seller echo.  Returns 1 with *objp (the parsed response object, owned by
 * the caller) when the answer can be trusted; 0 when res already says
 * UNKNOWN; <0 on ENOMEM. */
static int ap_response(const gw_chan_call_t *call, const gw_chan_response_t *resp, gw_chan_result_t *res,
                       int unknown, const char *method, gw_json_t **objp)
{
    const ap_ctx_t *cx = call->ctx;
    const gw_host_api_t *h = call->host;
    char key[96];
    gw_json_t *root = NULL, *obj = NULL;
    gw_str_t text = { NULL, 0 }, sig, seller;
    int t;

    *objp = NULL;
    ap_result_reset(res, unknown);
    if (resp == NULL) {
        ap_untrust(res, unknown, NULL, "paygate: no response");
        return 0;
    }
    if (resp->status != 200) {
        snprintf(res->raw_code, sizeof(res->raw_code), "HTTP_%d", resp->status);
        ap_copyz(res->raw_msg, sizeof(res->raw_msg), "paygate: unexpected HTTP status");
        return 0;
    }
    if (resp->body.ptr == NULL || (root = h->json_parse(resp->body.ptr, resp->body.len)) == NULL) {
        ap_untrust(res, unknown, "GW_EPARSE", "paygate: the answer is not JSON");
        return 0;
    }
    snprintf(key, sizeof(key), "%s_response", method);
    for (char *p = key; *p; p++)
        if (*p == '.') *p = '_';
    t = ap_member(resp->body.ptr, resp->body.len, key, &text);
    if (t == 0) t = ap_member(resp->body.ptr, resp->body.len, "error_response", &text);
    if (t <= 0 || text.len == 0 || text.ptr[0] != '{' ||
        (obj = h->json_parse(text.ptr, text.len)) == NULL) {
        ap_untrust(res, unknown, "GW_EPARSE", t < 0 ? "paygate: the answer is ambiguous (repeated or escaped keys)"
                                                     : "paygate: the answer has no response object");
        goto untrusted;
    }
    sig = ap_jget(h, root, "sign");
    if (!ap_present(sig)) {
        /* an unsigned answer (e.g. an unknown app) says nothing we can act on */
        gw_str_t sc = ap_jget(h, obj, "sub_code"), c = ap_jget(h, obj, "code");
        ap_copyz(res->raw_code, sizeof(res->raw_code), "GW_ESIGN");
        snprintf(res->raw_msg, sizeof(res->raw_msg), "paygate: the answer is not signed (%.*s %.*s)",
                 (int)(c.len > 16 ? 16 : c.len), c.ptr ? c.ptr : "", (int)(sc.len > 64 ? 64 : sc.len),
                 sc.ptr ? sc.ptr : "");
        goto untrusted;
    }
    if (ap_verify_text(h, ap_alipay_key(cx, h, call->merchant), text, sig) != GW_OK) {
        ap_untrust(res, unknown, "GW_ESIGN", "paygate: response signature does not verify");
        if (h->log)
            h->log(call->ctx, GW_LOG_WARN_, "%s: response signature does not verify (seller %.*s)", method,
                   (int)(call->merchant ? call->merchant->mch_id.len : 0),
                   call->merchant ? call->merchant->mch_id.ptr : "");
        goto untrusted;
    }
    seller = ap_jget(h, obj, "seller_id");
    if (ap_present(seller)) {
        if (call->merchant == NULL || !ap_streq(seller, call->merchant->mch_id)) {
            ap_untrust(res, unknown, "GW_EMCHID", "paygate: the answer is for another seller");
            goto untrusted;
        }
        ap_copy(res->mch_id, sizeof(res->mch_id), seller);
    }
    ap_codes(h, obj, res);
    ap_copy(res->channel_trade_no, sizeof(res->channel_trade_no), ap_jget(h, obj, "trade_no"));
    h->json_free(root);
    *objp = obj;
    return 1;
untrusted:
    if (obj) h->json_free(obj);
    h->json_free(root);
    return 0;
}

/* A field that, when present, must equal what we sent. */
static int ap_echo_ok(const gw_host_api_t *h, const gw_json_t *obj, const char *key, gw_str_t want)
{
    gw_str_t v = ap_jget(h, obj, key);
    return !ap_present(v) || !ap_present(want) || ap_streq(v, want);
}

/* An amount field: -1 when absent; -2 when present but malformed or, with
 * want > 0, different from want. */
static int64_t ap_amount(const gw_host_api_t *h, const gw_json_t *obj, const char *key, int64_t want)
{
    gw_json_t *v = h->json_get(obj, key);
    const char *s;
    int64_t fen;
    if (v == NULL) return -1;
    s = h->json_string(v);
    if (s == NULL) return -2; /* a JSON number cannot be read exactly: refuse it */
    fen = ap_parse_yuan(ap_cstr(s));
    if (fen < 0 || (want > 0 && fen != want)) return -2;
    return fen;
}

static int ap_code(const gw_host_api_t *h, const gw_json_t *obj, const char *want)
{
    return ap_eq(ap_jget(h, obj, "code"), want);
}

/* sub_code without the "aop." prefix some gateways put in front. */
static gw_str_t ap_sub_code(const gw_host_api_t *h, const gw_json_t *obj)
{
    gw_str_t s = ap_jget(h, obj, "sub_code");
    if (s.len > 4 && memcmp(s.ptr, "aop.", 4) == 0) {
        s.ptr += 4;
        s.len -= 4;
    }
    return s;
}

static int ap_in(gw_str_t s, const char *const *list)
{
    for (; *list; list++)
        if (ap_eq(s, *list)) return 1;
    return 0;
}

/* Sub-codes that say a trade may exist or its outcome is open: never a
 * definite failure of a payment. */
static const char *const ap_pay_ambiguous[] = {
    "ACQ.SYSTEM_ERROR", "ACQ.TRADE_HAS_SUCCESS", "ACQ.TRADE_HAS_FINISHED", "ACQ.TRADE_HAS_CLOSE",
    "ACQ.CONTEXT_INCONSISTENT", "ACQ.TRADE_STATUS_ERROR", "ACQ.TRADE_BUYER_NOT_MATCH", NULL
};
static const char *const ap_refund_ambiguous[] = {
    "ACQ.SYSTEM_ERROR", "ACQ.DISCORDANT_REPEAT_REQUEST", NULL
};

/* The outcome class of a non-success answer to a call that creates
 * something (pay, precreate, refund): 1 = definitely refused (nothing was
 * done), 0 = open. */
static int ap_refused(const gw_host_api_t *h, const gw_json_t *obj, const char *const *ambiguous)
{
    gw_str_t code = ap_jget(h, obj, "code"), sc = ap_sub_code(h, obj);
    if (sc.len >= 4 && memcmp(sc.ptr, "isp.", 4) == 0) return 0; /* the gateway's own trouble */
    if (ap_eq(code, "40004")) return !ap_in(sc, ambiguous);
    /* missing/invalid arguments, permissions, token: refused before any processing */
    return ap_eq(code, "40001") || ap_eq(code, "40002") || ap_eq(code, "40006") || ap_eq(code, "20001");
}

static gw_err_t ap_pay_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp, gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_order_t *o = call->order;
    int barcode = o != NULL && o->method == GW_METHOD_BARCODE;
    gw_json_t *obj;
    gw_err_t rc = GW_OK;
    int t = ap_response(call, resp, res, GW_PAY_UNKNOWN, barcode ? M_PAY : M_PRECREATE, &obj);

    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (o == NULL) {
        ap_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: no order");
        goto out;
    }
    if (!ap_echo_ok(h, obj, "out_trade_no", o->out_trade_no)) {
        ap_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: the answer is for another order");
        goto out;
    }
    if (ap_code(h, obj, "10000")) {
        res->amount = ap_amount(h, obj, "total_amount", o->amount);
        if (res->amount == -2) {
            res->amount = -1;
            ap_untrust(res, GW_PAY_UNKNOWN, "GW_EAMOUNT", "paygate: the answer states another amount");
            goto out;
        }
        if (barcode) {
            res->status = GW_PAY_SUCCESS;
            ap_copyz(res->raw_code, sizeof(res->raw_code), "TRADE_SUCCESS");
        } else {
            gw_str_t qr = ap_jget(h, obj, "qr_code");
            if (!ap_present(qr)) {
                ap_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: created, but without a qr_code");
                goto out;
            }
            rc = h->buf_append(&res->pay_data, "{\"code_url\":", 12);
            if (rc == GW_OK) rc = h->json_quote(&res->pay_data, qr.ptr, qr.len);
            if (rc == GW_OK) rc = h->buf_append(&res->pay_data, "}", 1);
            if (rc != GW_OK) {
                /* never hand out half a pay_data; the QR exists: query it */
                h->buf_reset(&res->pay_data);
                ap_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: payment parameters too large");
                if (rc != GW_ENOMEM) rc = GW_OK;
                goto out;
            }
            res->status = GW_PAY_PENDING;
            ap_copyz(res->raw_code, sizeof(res->raw_code), "WAIT_BUYER_PAY");
        }
    } else if (barcode && ap_code(h, obj, "10003")) {
        /* the customer confirms or enters the password: poll, then cancel */
        res->status = GW_PAY_USER_PAYING;
        ap_copyz(res->raw_code, sizeof(res->raw_code), "10003");
    } else if (ap_refused(h, obj, ap_pay_ambiguous)) {
        res->status = GW_PAY_FAILED;
    } else {
        res->status = GW_PAY_UNKNOWN; /* 20000, ambiguous sub-codes, anything new */
    }
out:
    h->json_free(obj);
    return rc;
}

static gw_err_t ap_refund_query_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                                      gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_refund_t *f = call->refund;
    gw_json_t *obj;
    gw_str_t st, orn;
    int t = ap_response(call, resp, res, GW_REFUND_UNKNOWN, M_REFUND_QUERY, &obj);

    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (f == NULL || call->order == NULL) {
        ap_untrust(res, GW_REFUND_UNKNOWN, NULL, "paygate: no refund");
        goto out;
    }
    if (!ap_code(h, obj, "10000")) {
        res->status = GW_REFUND_UNKNOWN; /* including ACQ.TRADE_NOT_EXIST */
        goto out;
    }
    orn = ap_jget(h, obj, "out_request_no");
    if (!ap_echo_ok(h, obj, "out_trade_no", call->order->out_trade_no) ||
        !ap_echo_ok(h, obj, "out_request_no", f->out_refund_no)) {
        ap_untrust(res, GW_REFUND_UNKNOWN, NULL, "paygate: the answer is for another refund");
        goto out;
    }
    if (!ap_present(orn) && h->json_get(obj, "refund_amount") == NULL) {
        /* 10000 without refund data: not received (yet) or failed; the
         * refund is repeated with the same out_request_no or queried again */
        ap_untrust(res, GW_REFUND_UNKNOWN, "REFUND_NOT_FOUND", "paygate: the refund is not in the answer");
        goto out;
    }
    res->amount = ap_amount(h, obj, "refund_amount", f->amount);
    if (res->amount == -2) {
        res->amount = -1;
        ap_untrust(res, GW_REFUND_UNKNOWN, "GW_EAMOUNT", "paygate: the answer states another refund amount");
        goto out;
    }
    st = ap_jget(h, obj, "refund_status");
    if (!ap_present(st) || ap_eq(st, "REFUND_SUCCESS")) {
        res->status = GW_REFUND_SUCCESS;
        ap_copyz(res->raw_code, sizeof(res->raw_code), "REFUND_SUCCESS");
    } else if (ap_eq(st, "REFUND_PROCESSING")) {
        res->status = GW_REFUND_PROCESSING;
        ap_copy(res->raw_code, sizeof(res->raw_code), st);
    } else {
        res->status = GW_REFUND_UNKNOWN;
        ap_copy(res->raw_code, sizeof(res->raw_code), st);
    }
out:
    h->json_free(obj);
    return GW_OK;
}

static gw_err_t ap_query_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                               gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_order_t *o = call->order;
    gw_json_t *obj;
    gw_str_t ts;
    int t;

    if (call->flags & GW_CALL_REFUND_QUERY) return ap_refund_query_parse(call, resp, res);
    t = ap_response(call, resp, res, GW_PAY_UNKNOWN, M_QUERY, &obj);
    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (o == NULL) {
        ap_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: no order");
        goto out;
    }
    if (!ap_code(h, obj, "10000")) {
        /* the trade is not known to Alipay: nothing has been paid so far
         * (docs: why NOT_PAID; a precreated QR exists only once scanned) */
        res->status = ap_eq(ap_sub_code(h, obj), "ACQ.TRADE_NOT_EXIST") ? GW_PAY_NOT_PAID : GW_PAY_UNKNOWN;
        goto out;
    }
    if (!ap_echo_ok(h, obj, "out_trade_no", o->out_trade_no) ||
        !ap_echo_ok(h, obj, "trade_no", o->channel_trade_no)) {
        ap_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: the answer is for another order");
        goto out;
    }
    res->amount = ap_amount(h, obj, "total_amount", o->amount);
    if (res->amount == -2) {
        res->amount = -1;
        ap_untrust(res, GW_PAY_UNKNOWN, "GW_EAMOUNT", "paygate: the answer states another amount");
        goto out;
    }
    ts = ap_jget(h, obj, "trade_status");
    ap_copy(res->raw_code, sizeof(res->raw_code), ts);
    if (ap_eq(ts, "TRADE_SUCCESS") || ap_eq(ts, "TRADE_FINISHED")) res->status = GW_PAY_SUCCESS;
    else if (ap_eq(ts, "WAIT_BUYER_PAY"))
        res->status = o->method == GW_METHOD_BARCODE ? GW_PAY_USER_PAYING : GW_PAY_NOT_PAID;
    else if (ap_eq(ts, "TRADE_CLOSED")) res->status = GW_PAY_CLOSED; /* unpaid and closed, or fully refunded */
    else res->status = GW_PAY_UNKNOWN;
out:
    h->json_free(obj);
    return GW_OK;
}

static gw_err_t ap_refund_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                                gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    gw_json_t *obj;
    gw_str_t fc;
    int t = ap_response(call, resp, res, GW_REFUND_UNKNOWN, M_REFUND, &obj);

    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (call->refund == NULL || call->order == NULL) {
        ap_untrust(res, GW_REFUND_UNKNOWN, NULL, "paygate: no refund");
        goto out;
    }
    if (!ap_code(h, obj, "10000")) {
        res->status = ap_refused(h, obj, ap_refund_ambiguous) ? GW_REFUND_FAILED : GW_REFUND_UNKNOWN;
        goto out;
    }
    if (!ap_echo_ok(h, obj, "out_trade_no", call->order->out_trade_no) ||
        !ap_echo_ok(h, obj, "trade_no", call->order->channel_trade_no)) {
        ap_untrust(res, GW_REFUND_UNKNOWN, NULL, "paygate: the answer is for another order");
        goto out;
    }
    /* refund_fee is the trade's cumulative refunded amount, not this
     * refund's: amount stays -1.  fund_change=Y: money moved, the refund
     * is done.  N (also a repeat of a refund that already succeeded) or
     * absent: settle it with the refund query. */
    fc = ap_jget(h, obj, "fund_change");
    if (ap_eq(fc, "Y")) {
        res->status = GW_REFUND_SUCCESS;
        ap_copyz(res->raw_code, sizeof(res->raw_code), "REFUND_SUCCESS");
    } else {
        res->status = GW_REFUND_PROCESSING;
        ap_copyz(res->raw_code, sizeof(res->raw_code), "fund_change=N");
    }
out:
    h->json_free(obj);
    return GW_OK;
}

/* An unscanned QR is no trade at Alipay ("ACQ.TRADE_NOT_EXIST"), so close
 * cannot close it; it is conclusively dead once the time_expire we sent
 * (or, without one, the QR's 2 h validity) has passed, plus a grace for
 * clock differences. */
static int ap_qr_dead(const ap_ctx_t *cx, const gw_host_api_t *h, const gw_chan_order_t *o)
{
    int64_t deadline;
    if (o == NULL || o->method == GW_METHOD_BARCODE) return 0;
    if (o->expire_ms > 0) deadline = o->expire_ms;
    else if (o->created_ms > 0) deadline = o->created_ms + AP_QR_VALID_MS;
    else return 0;
    return (int64_t)h->now_ms() >= deadline + cx->expire_grace_ms;
}

static gw_err_t ap_close_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                               gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_order_t *o = call->order;
    int rev = (call->flags & GW_CALL_REVERSE) != 0;
    gw_json_t *obj;
    int t = ap_response(call, resp, res, GW_PAY_UNKNOWN, rev ? M_CANCEL : M_CLOSE, &obj);

    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (o != NULL && !ap_echo_ok(h, obj, "out_trade_no", o->out_trade_no)) {
        ap_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: the answer is for another order");
        goto out;
    }
    if (rev) {
        gw_str_t action = ap_jget(h, obj, "action");
        if (ap_eq(ap_jget(h, obj, "retry_flag"), "Y")) res->retry = 1;
        if (ap_code(h, obj, "10000")) {
            /* action close: it was not paid; refund: it was, the money went
             * back; none: Alipay had no such trade and will not take one */
            res->status = GW_PAY_REVERSED;
            res->retry = 0;
            snprintf(res->raw_code, sizeof(res->raw_code), "CANCELED%s%.*s", ap_present(action) ? "_" : "",
                     (int)(action.len > 32 ? 32 : action.len), action.ptr ? action.ptr : "");
            for (char *p = res->raw_code; *p; p++)
                if (*p >= 'a' && *p <= 'z') *p = (char)(*p - 'a' + 'A');
        } else {
            /* retry_flag=Y: repeat the cancel; otherwise a query tells */
            res->status = GW_PAY_UNKNOWN;
        }
    } else if (ap_code(h, obj, "10000")) {
        res->status = GW_PAY_CLOSED;
        ap_copyz(res->raw_code, sizeof(res->raw_code), "TRADE_CLOSED");
    } else if (ap_eq(ap_sub_code(h, obj), "ACQ.TRADE_NOT_EXIST") && ap_qr_dead(call->ctx, h, o)) {
        res->status = GW_PAY_CLOSED;
        ap_copyz(res->raw_msg, sizeof(res->raw_msg), "paygate: never scanned, and past its time_expire");
    } else {
        /* not closed (paid, not scanned yet, …): the order's state is for a
         * query to tell */
        res->status = GW_PAY_UNKNOWN;
    }
out:
    h->json_free(obj);
    return GW_OK;
}

/* ------------------------------------------------------------------ */
/* notifications (PROTOCOLS.md §C.4) */

static gw_err_t ap_acks(const gw_host_api_t *h, gw_chan_notify_t *out, int ok_too)
{
    gw_err_t rc;
    out->ack_fail_status = 200;
    ap_copyz(out->ack_fail_type, sizeof(out->ack_fail_type), "text/plain");
    h->buf_reset(&out->ack_fail_body);
    if ((rc = h->buf_append(&out->ack_fail_body, "fail", 4)) != GW_OK) return rc;
    if (!ok_too) return GW_OK;
    /* exactly the 7 characters "success", or Alipay sends it again */
    out->ack_ok_status = 200;
    ap_copyz(out->ack_ok_type, sizeof(out->ack_ok_type), "text/plain");
    h->buf_reset(&out->ack_ok_body);
    return h->buf_append(&out->ack_ok_body, "success", 7);
}

/* The form body, URL-decoded; the fields every trade notification has. */
static gw_err_t ap_notify_kv(const gw_host_api_t *h, const gw_chan_notify_in_t *in, gw_kv_t **kvp)
{
    gw_kv_t *kv;
    gw_str_t v;
    *kvp = NULL;
    if (in == NULL || in->body.ptr == NULL || in->body.len == 0) return GW_EPARSE;
    if ((kv = h->kv_new()) == NULL) return GW_ENOMEM;
    if (h->kv_parse_form(kv, in->body.ptr, in->body.len) != GW_OK) goto bad;
    /* trade notifications only (rsaCheckV1); other notify types are signed
     * another way and are not for this module */
    if (!ap_eq(h->kv_get(kv, "notify_type"), "trade_status_sync")) goto bad;
    v = h->kv_get(kv, "charset");
    if (ap_present(v) && !ap_eq_ci(v, "utf-8") && !ap_eq_ci(v, "utf8")) goto bad;
    *kvp = kv;
    return GW_OK;
bad:
    h->kv_free(kv);
    return GW_EPARSE;
}

static gw_err_t ap_notify_parse(void *ctx, const gw_host_api_t *host, const gw_chan_notify_in_t *in,
                                gw_chan_notify_t *out)
{
    gw_kv_t *kv;
    gw_str_t seller, otn;
    gw_err_t rc;

    (void)ctx;
    out->kind = GW_NOTIFY_PAY;
    out->mch_id[0] = out->out_trade_no[0] = out->out_refund_no[0] = '\0';
    if ((rc = ap_acks(host, out, 0)) != GW_OK) return rc;
    if ((rc = ap_notify_kv(host, in, &kv)) != GW_OK) return rc;
    seller = host->kv_get(kv, "seller_id");
    otn = host->kv_get(kv, "out_trade_no");
    if (!ap_present(seller) || seller.len >= sizeof(out->mch_id) || !ap_present(otn) ||
        otn.len >= sizeof(out->out_trade_no)) {
        rc = GW_EPARSE;
    } else {
        ap_copy(out->mch_id, sizeof(out->mch_id), seller);
        ap_copy(out->out_trade_no, sizeof(out->out_trade_no), otn);
    }
    host->kv_free(kv);
    return rc;
}

static gw_err_t ap_notify_verify(const gw_chan_call_t *call, const gw_chan_notify_in_t *in,
                                 gw_chan_notify_t *out)
{
    const ap_ctx_t *cx = call->ctx;
    const gw_host_api_t *h = call->host;
    const gw_chan_merchant_t *m = call->merchant;
    gw_kv_t *kv;
    gw_buf_t s;
    gw_str_t st, ts, v, sign;
    gw_err_t rc;

    out->status = GW_PAY_UNKNOWN;
    out->amount = -1;
    out->channel_trade_no[0] = out->raw_code[0] = out->raw_msg[0] = '\0';
    if ((rc = ap_acks(h, out, 1)) != GW_OK) return rc;
    if ((rc = ap_notify_kv(h, in, &kv)) != GW_OK) return rc;
    h->buf_init(&s, AP_SIGN_MAX);
    h->buf_reset(&out->sign_string);
    rc = GW_ESIGN;
    /* every field but sign and sign_type, empties dropped, sorted, decoded */
    if (h->kv_sign_string(kv, ap_notify_exclude, GW_KV_DROP_EMPTY | GW_KV_SORTED, &s) != GW_OK) goto out;
    h->buf_append(&out->sign_string, s.data ? s.data : "", s.len);
    st = h->kv_get(kv, "sign_type");
    sign = h->kv_get(kv, "sign");
    if ((ap_present(st) && !ap_eq(st, "RSA2")) || !ap_present(sign) ||
        ap_verify_text(h, ap_alipay_key(cx, h, m), (gw_str_t){ s.data ? s.data : "", s.len }, sign) != GW_OK) {
        if (h->log) h->log(call->ctx, GW_LOG_WARN_, "notification signature does not verify");
        goto out;
    }
    /* signed, but must also be for our app, this seller and this order */
    v = h->kv_get(kv, "app_id");
    if (m == NULL || !ap_present(m->mch_id) || !ap_streq(h->kv_get(kv, "seller_id"), m->mch_id) ||
        !ap_present(v) || !ap_streq(v, ap_app_id(cx, m)) ||
        (call->order && !ap_streq(h->kv_get(kv, "out_trade_no"), call->order->out_trade_no)))
        goto out;
    out->amount = ap_parse_yuan(h->kv_get(kv, "total_amount"));
    ap_copy(out->channel_trade_no, sizeof(out->channel_trade_no), h->kv_get(kv, "trade_no"));
    ts = h->kv_get(kv, "trade_status");
    ap_copy(out->raw_code, sizeof(out->raw_code), ts);
    /* only TRADE_SUCCESS / TRADE_FINISHED mean paid (also on the
     * notifications Alipay sends about a refund of a paid trade);
     * TRADE_CLOSED: unpaid and closed, or fully refunded */
    if (ap_eq(ts, "TRADE_SUCCESS") || ap_eq(ts, "TRADE_FINISHED")) out->status = GW_PAY_SUCCESS;
    else if (ap_eq(ts, "TRADE_CLOSED")) out->status = GW_PAY_CLOSED;
    else if (ap_eq(ts, "WAIT_BUYER_PAY")) out->status = GW_PAY_NOT_PAID;
    else out->status = GW_PAY_UNKNOWN;
    v = h->kv_get(kv, "out_biz_no");
    if (ap_present(v) || ap_present(h->kv_get(kv, "refund_fee"))) {
        gw_str_t fee = h->kv_get(kv, "refund_fee");
        snprintf(out->raw_msg, sizeof(out->raw_msg), "refund %.*s: refund_fee %.*s",
                 (int)(v.len > 64 ? 64 : v.len), v.ptr ? v.ptr : "", (int)(fee.len > 24 ? 24 : fee.len),
                 fee.ptr ? fee.ptr : "");
    }
    rc = GW_OK;
out:
    ap_wipe(&s);
    h->buf_free(&s);
    h->kv_free(kv);
    return rc;
}

/* ------------------------------------------------------------------ */

/* Timing rules the core's follow-up tasks obey (ABI 1.1; 0 = core default).
 * b-to-c (PROTOCOLS.md §C.5, the official F2F demo): after 10003 query
 * every 5 s, 5 times, and cancel right after the last query (the deadline
 * of 25 s makes the 5th query the last one).  No rule on the age of a
 * cancel or a close.  The refund query comes >= 10 s after the refund. */
static const gw_chan_policy_t ap_policy = {
    .struct_size = sizeof(gw_chan_policy_t),
    .poll_interval_ms = 5000,
    .poll_deadline_ms = 25000,
    .reverse_min_age_ms = 0,
    .close_min_age_ms = 0,
    .refund_query_delay_ms = 10000,
};

static const gw_channel_t ap_channel = {
    .abi_version = GW_CHANNEL_ABI_VERSION,
    .struct_size = sizeof(gw_channel_t),
    .ctx_size = sizeof(ap_ctx_t),
    .methods = GW_METHOD_ALIPAY_QR | GW_METHOD_BARCODE,
    .name = GW_CHANNEL_NAME,
    .version = AP_VERSION,
    .build_sig = GW_CHANNEL_BUILD_SIG,
    .init = ap_init,
    .fini = ap_fini,
    .pay = ap_pay,
    .pay_parse = ap_pay_parse,
    .query = ap_query,
    .query_parse = ap_query_parse,
    .refund = ap_refund,
    .refund_parse = ap_refund_parse,
    .close = ap_close,
    .close_parse = ap_close_parse,
    .notify_parse = ap_notify_parse,
    .notify_verify = ap_notify_verify,
    /* added in 1.1 */
    .policy = &ap_policy,
};

GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry(void);

GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry(void)
{
    return &ap_channel;
}
