/*
 * swiftpass.c — the Swiftpass (威富通) channel module.
 *
 * Channel ABI 1.1 (fills the 1.1 policy).
 * Protocol: /work/shared/PROTOCOLS.md §A (flat UTF-8 XML over POST, MD5 or
 * RSA_1_256 / RSA_1_1 signatures, `status` = communication flag,
 * `result_code` = business flag).  Behaviour, settings and the status
 * mapping are documented in docs/channels/swiftpass.md; keep the two in step.
 *
 * The module is a codec: it builds requests and parses/verifies responses and
 * notifications; the core does all I/O.  Everything goes through the host API
 * (no libc allocation of anything handed back, no globals), so every function
 * is reentrant.  Keys are never logged or echoed: the MD5 signing string in
 * req->sign_string / notify->sign_string ends in "&key=***".
 */
#include "gw_channel.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#ifndef GW_CHANNEL_NAME
#define GW_CHANNEL_NAME "swiftpass"
#endif

#define SP_VERSION "1.0.0"
#define SP_DEFAULT_URL "https://pay.swiftpass.cn/pay/gateway"
#define SP_DEFAULT_PROTO_VERSION "2.0"
#define SP_URL_MAX 1024
#define SP_PROTO_VERSION_MAX 16
#define SP_NONCE_LEN 32
#define SP_SIGN_MAX (64u * 1024u)   /* bound of the signing-string scratch buffers */
#define SP_SIG_MAX 4096u            /* bound of a Base64 RSA signature (RSA-16384) */

/* Per-channel state, in the core-allocated ctx_size block. */
typedef struct sp_ctx {
    const gw_host_api_t *host;
    char gateway_url[SP_URL_MAX];
    char version[SP_PROTO_VERSION_MAX];
    gw_rsa_key_t *platform_key; /* from settings; owned (cached) by the core; may be NULL */
} sp_ctx_t;

enum sp_sign_type { SP_SIGN_NONE = 0, SP_SIGN_MD5, SP_SIGN_RSA_1_256, SP_SIGN_RSA_1_1 };

/* Per-call view of merchant.extra. */
typedef struct sp_merchant_opts {
    enum sp_sign_type sign_type;
    char sign_agentno[64];
} sp_merchant_opts_t;

static const char *const sp_sign_exclude[] = { "sign", NULL };

/* ------------------------------------------------------------------ */
/* small helpers */

static gw_str_t sp_cstr(const char *s)
{
    gw_str_t r = { s, s ? strlen(s) : 0 };
    return r;
}

static int sp_eq(gw_str_t s, const char *lit)
{
    size_t n = strlen(lit);
    return s.ptr != NULL && s.len == n && memcmp(s.ptr, lit, n) == 0;
}

static int sp_streq(gw_str_t a, gw_str_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static int sp_present(gw_str_t s)
{
    return s.ptr != NULL && s.len > 0;
}

/* Copies s into a fixed array, truncated, always NUL-terminated. */
static void sp_copy(char *dst, size_t cap, gw_str_t s)
{
    size_t n = s.ptr ? s.len : 0;
    if (cap == 0) return;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(dst, s.ptr, n);
    dst[n] = '\0';
}

static void sp_copyz(char *dst, size_t cap, const char *s)
{
    sp_copy(dst, cap, sp_cstr(s));
}

/* Unsigned decimal integer (fen); -1 when absent or not a plain number. */
static int64_t sp_parse_fen(gw_str_t s)
{
    int64_t v = 0;
    if (!sp_present(s) || s.len > 15) return -1;
    for (size_t i = 0; i < s.len; i++) {
        if (s.ptr[i] < '0' || s.ptr[i] > '9') return -1;
        v = v * 10 + (s.ptr[i] - '0');
    }
    return v;
}

static unsigned char sp_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

/* Case-insensitive comparison of hex digests without an early exit. */
static int sp_hex_eq_ci(const char *a, size_t alen, const char *b, size_t blen)
{
    unsigned diff;
    if (alen != blen) return 0;
    diff = 0;
    for (size_t i = 0; i < alen; i++)
        diff |= (unsigned)(sp_lower((unsigned char)a[i]) ^ sp_lower((unsigned char)b[i]));
    return diff == 0;
}

static void sp_wipe(gw_buf_t *b)
{
    if (b->data && b->cap) explicit_bzero(b->data, b->cap);
}

static enum sp_sign_type sp_sign_type_of(gw_str_t s)
{
    if (sp_eq(s, "MD5")) return SP_SIGN_MD5;
    if (sp_eq(s, "RSA_1_256")) return SP_SIGN_RSA_1_256;
    if (sp_eq(s, "RSA_1_1")) return SP_SIGN_RSA_1_1;
    return SP_SIGN_NONE;
}

static const char *sp_sign_type_name(enum sp_sign_type t)
{
    switch (t) {
    case SP_SIGN_MD5: return "MD5";
    case SP_SIGN_RSA_1_256: return "RSA_1_256";
    case SP_SIGN_RSA_1_1: return "RSA_1_1";
    default: return "";
    }
}

/* merchant.extra: {"sign_type":"MD5"|"RSA_1_256"|"RSA_1_1","sign_agentno":"…"}.
 * Missing sign_type: MD5.  GW_EINVAL on a malformed object or bad value. */
static gw_err_t sp_merchant_opts(const gw_host_api_t *h, const gw_chan_merchant_t *m,
                                 sp_merchant_opts_t *o)
{
    gw_json_t *j;
    gw_json_t *v;
    const char *s;
    gw_err_t rc = GW_OK;

    o->sign_type = SP_SIGN_MD5;
    o->sign_agentno[0] = '\0';
    if (m == NULL || !sp_present(m->extra)) return GW_OK;
    j = h->json_parse(m->extra.ptr, m->extra.len);
    if (j == NULL) return GW_EINVAL;
    v = h->json_get(j, "sign_type");
    if (v != NULL) {
        s = h->json_string(v);
        o->sign_type = s ? sp_sign_type_of(sp_cstr(s)) : SP_SIGN_NONE;
        if (o->sign_type == SP_SIGN_NONE) rc = GW_EINVAL;
    }
    v = h->json_get(j, "sign_agentno");
    if (rc == GW_OK && v != NULL) {
        s = h->json_string(v);
        if (s == NULL || strlen(s) >= sizeof(o->sign_agentno)) rc = GW_EINVAL;
        else sp_copyz(o->sign_agentno, sizeof(o->sign_agentno), s);
    }
    h->json_free(j);
    return rc;
}

/* The platform key for this merchant: merchant.public_key when given, else the
 * one from the settings.  NULL when neither is usable. */
static gw_rsa_key_t *sp_platform_key(const sp_ctx_t *cx, const gw_host_api_t *h,
                                     const gw_chan_merchant_t *m)
{
    if (m != NULL && sp_present(m->public_key)) return h->rsa_public(m->public_key.ptr, m->public_key.len);
    return cx ? cx->platform_key : NULL;
}

/* ------------------------------------------------------------------ */
/* life cycle */

static gw_err_t sp_init(void *ctx, const gw_host_api_t *host, const char *settings,
                        size_t settings_len, gw_buf_t *err)
{
    sp_ctx_t *cx = ctx;
    gw_json_t *j = NULL;
    gw_json_t *v;
    const char *s;
    gw_err_t rc = GW_EINVAL;

    memset(cx, 0, sizeof(*cx));
    if (host == NULL || (host->version >> 16) != GW_CHANNEL_ABI_MAJOR ||
        host->struct_size < sizeof(gw_host_api_t))
        return GW_ENOTSUP; /* cannot even report through err: no buf_append */
    cx->host = host;
    sp_copyz(cx->gateway_url, sizeof(cx->gateway_url), SP_DEFAULT_URL);
    sp_copyz(cx->version, sizeof(cx->version), SP_DEFAULT_PROTO_VERSION);

    if (settings == NULL || settings_len == 0) return GW_OK;
    for (size_t i = 0; i < settings_len; i++) {
        if (settings[i] == ' ' || settings[i] == '\t' || settings[i] == '\r' || settings[i] == '\n')
            continue;
        if (settings[i] == '{') j = host->json_parse(settings, settings_len);
        break;
    }
    if (j == NULL) {
        host->buf_appendf(err, "swiftpass: settings are not a JSON object");
        goto out;
    }
    if ((v = host->json_get(j, "gateway_url")) != NULL) {
        s = host->json_string(v);
        if (s == NULL || (strncmp(s, "https://", 8) != 0 && strncmp(s, "http://", 7) != 0) ||
            strlen(s) >= sizeof(cx->gateway_url) || strpbrk(s, " \t\r\n") != NULL) {
            host->buf_appendf(err, "swiftpass: gateway_url must be an http(s) URL shorter than %d bytes",
                              SP_URL_MAX);
            goto out;
        }
        sp_copyz(cx->gateway_url, sizeof(cx->gateway_url), s);
    }
    if ((v = host->json_get(j, "version")) != NULL) {
        s = host->json_string(v);
        if (s == NULL || s[0] == '\0' || strlen(s) >= sizeof(cx->version)) {
            host->buf_appendf(err, "swiftpass: version must be a short string such as \"2.0\"");
            goto out;
        }
        sp_copyz(cx->version, sizeof(cx->version), s);
    }
    if ((v = host->json_get(j, "platform_public_key")) != NULL) {
        s = host->json_string(v);
        if (s == NULL) {
            host->buf_appendf(err, "swiftpass: platform_public_key must be a string (PEM)");
            goto out;
        }
        if (s[0] != '\0') {
            cx->platform_key = host->rsa_public(s, strlen(s));
            if (cx->platform_key == NULL) {
                host->buf_appendf(err, "swiftpass: platform_public_key is not an RSA public key or certificate");
                rc = GW_EKEY;
                goto out;
            }
        }
    }
    rc = GW_OK;
out:
    if (j) host->json_free(j);
    return rc;
}

static void sp_fini(void *ctx)
{
    sp_ctx_t *cx = ctx;
    memset(cx, 0, sizeof(*cx));
}

/* ------------------------------------------------------------------ */
/* requests */

/* A request under construction: adds skip empty values (they would be left
 * out of the signature anyway) and remember the first error. */
typedef struct sp_req {
    const gw_host_api_t *h;
    gw_kv_t *kv;
    gw_err_t err;
} sp_req_t;

static void sp_put(sp_req_t *r, const char *key, gw_str_t v)
{
    if (r->err != GW_OK || !sp_present(v)) return;
    r->err = r->h->kv_add(r->kv, key, strlen(key), v.ptr, v.len);
}

static void sp_putz(sp_req_t *r, const char *key, const char *v)
{
    sp_put(r, key, sp_cstr(v));
}

static void sp_put_fen(sp_req_t *r, const char *key, int64_t fen)
{
    if (r->err != GW_OK) return;
    r->err = r->h->kv_addf(r->kv, key, "%" PRId64, fen);
}

/* Epoch ms → yyyyMMddHHmmss in GMT+8 (China has no daylight saving time). */
static void sp_put_time(sp_req_t *r, const char *key, int64_t ms)
{
    struct tm tm;
    time_t t;
    if (r->err != GW_OK || ms <= 0) return;
    t = (time_t)(ms / 1000) + 8 * 3600;
    if (gmtime_r(&t, &tm) == NULL) {
        r->err = GW_EINVAL;
        return;
    }
    r->err = r->h->kv_addf(r->kv, key, "%04d%02d%02d%02d%02d%02d", tm.tm_year + 1900,
                           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* Starts a request: the common parameters. */
static gw_err_t sp_begin(const gw_chan_call_t *call, const char *service, sp_req_t *r,
                         sp_merchant_opts_t *mo)
{
    const sp_ctx_t *cx = call->ctx;
    const gw_host_api_t *h = call->host;
    char nonce[SP_NONCE_LEN + 1];
    gw_err_t rc;

    r->h = h;
    r->kv = NULL;
    r->err = GW_OK;
    if (call->merchant == NULL || !sp_present(call->merchant->mch_id)) return GW_EINVAL;
    if ((rc = sp_merchant_opts(h, call->merchant, mo)) != GW_OK) return rc;
    if (mo->sign_type == SP_SIGN_MD5 && !sp_present(call->merchant->key)) return GW_EKEY;
    if (mo->sign_type != SP_SIGN_MD5 && !sp_present(call->merchant->private_key)) return GW_EKEY;
    if ((rc = h->nonce(nonce, SP_NONCE_LEN)) != GW_OK) return rc;
    r->kv = h->kv_new();
    if (r->kv == NULL) return GW_ENOMEM;
    sp_putz(r, "service", service);
    sp_putz(r, "version", cx->version);
    sp_putz(r, "charset", "UTF-8");
    sp_putz(r, "sign_type", sp_sign_type_name(mo->sign_type));
    sp_put(r, "mch_id", call->merchant->mch_id);
    sp_putz(r, "sign_agentno", mo->sign_agentno);
    sp_putz(r, "nonce_str", nonce);
    return r->err;
}

/* Signs (PROTOCOLS.md §A.5), then writes URL, headers and the XML body. */
static gw_err_t sp_finish(const gw_chan_call_t *call, sp_req_t *r, const sp_merchant_opts_t *mo,
                          gw_chan_request_t *req)
{
    const sp_ctx_t *cx = call->ctx;
    const gw_host_api_t *h = call->host;
    const gw_chan_merchant_t *m = call->merchant;
    gw_buf_t s, sig;
    gw_err_t rc = r->err;

    h->buf_init(&s, SP_SIGN_MAX);
    h->buf_init(&sig, SP_SIG_MAX);
    if (rc != GW_OK) goto out;
    /* every parameter but sign, empties dropped, byte-wise sorted, sign_type kept */
    if ((rc = h->kv_sign_string(r->kv, sp_sign_exclude, GW_KV_DROP_EMPTY | GW_KV_SORTED, &s)) != GW_OK)
        goto out;
    if ((rc = h->buf_append(&req->sign_string, s.data ? s.data : "", s.len)) != GW_OK) goto out;
    if (mo->sign_type == SP_SIGN_MD5) {
        uint8_t md[16];
        char hex[33];
        size_t base = s.len;
        if ((rc = h->buf_append(&req->sign_string, "&key=***", 8)) != GW_OK) goto out;
        if ((rc = h->buf_append(&s, "&key=", 5)) != GW_OK) goto out;
        if ((rc = h->buf_append(&s, m->key.ptr, m->key.len)) != GW_OK) goto out;
        h->md5(s.data, s.len, md);
        explicit_bzero(s.data + base, s.len - base);
        h->hex_encode(md, sizeof(md), hex, 1);
        rc = h->kv_add(r->kv, "sign", 4, hex, 32);
    } else {
        gw_rsa_key_t *key = h->rsa_private(m->private_key.ptr, m->private_key.len);
        if (key == NULL) {
            rc = GW_EKEY;
            goto out;
        }
        rc = h->rsa_sign(key, mo->sign_type == SP_SIGN_RSA_1_1 ? GW_HASH_SHA1 : GW_HASH_SHA256,
                         s.data, s.len, &sig);
        if (rc == GW_OK) rc = h->kv_add(r->kv, "sign", 4, sig.data, sig.len);
    }
    if (rc != GW_OK) goto out;
    req->method = "POST";
    if ((rc = h->buf_append(&req->url, cx->gateway_url, strlen(cx->gateway_url))) != GW_OK) goto out;
    if ((rc = h->buf_appendf(&req->headers, "Content-Type: text/xml; charset=utf-8\r\n")) != GW_OK)
        goto out;
    rc = h->kv_to_xml(r->kv, &req->body);
out:
    sp_wipe(&s);
    h->buf_free(&s);
    h->buf_free(&sig);
    if (r->kv) h->kv_free(r->kv);
    r->kv = NULL;
    return rc;
}

static gw_err_t sp_pay(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    const char *service;
    sp_merchant_opts_t mo;
    sp_req_t r;
    gw_err_t rc;

    if (o == NULL || !sp_present(o->out_trade_no) || o->amount <= 0 || !sp_present(o->subject))
        return GW_EINVAL;
    switch (o->method) {
    case GW_METHOD_WECHAT_QR:
    case GW_METHOD_ALIPAY_QR: service = "unified.trade.native"; break;
    case GW_METHOD_WECHAT_JSAPI: service = "pay.weixin.jspay"; break;
    case GW_METHOD_ALIPAY_JSAPI: service = "pay.alipay.jspay"; break;
    case GW_METHOD_BARCODE: service = "unified.trade.micropay"; break;
    default: return GW_ENOTSUP;
    }
    if (o->method == GW_METHOD_BARCODE) {
        if (!sp_present(o->auth_code)) return GW_EINVAL;
    } else {
        if (!sp_present(o->notify_url)) return GW_EINVAL;
        if ((o->method == GW_METHOD_WECHAT_JSAPI || o->method == GW_METHOD_ALIPAY_JSAPI) &&
            !sp_present(o->payer_id))
            return GW_EINVAL;
    }
    if ((rc = sp_begin(call, service, &r, &mo)) != GW_OK) goto fail;
    sp_put(&r, "out_trade_no", o->out_trade_no);
    sp_put(&r, "body", o->subject);
    sp_put(&r, "attach", o->attach);
    sp_put_fen(&r, "total_fee", o->amount);
    /* mch_create_ip is required by the platform; a server-side order without
     * the customer's address sends the loopback address (docs). */
    sp_put(&r, "mch_create_ip", sp_present(o->client_ip) ? o->client_ip : sp_cstr("127.0.0.1"));
    sp_put(&r, "notify_url", o->notify_url);
    sp_put_time(&r, "time_expire", o->expire_ms);
    switch (o->method) {
    case GW_METHOD_WECHAT_JSAPI:
        sp_putz(&r, "is_raw", "1");
        sp_put(&r, "sub_openid", o->payer_id);
        sp_put(&r, "sub_appid", sp_present(o->sub_appid) ? o->sub_appid : call->merchant->app_id);
        break;
    case GW_METHOD_ALIPAY_JSAPI:
        sp_put(&r, "buyer_id", o->payer_id);
        break;
    case GW_METHOD_BARCODE:
        sp_put(&r, "auth_code", o->auth_code);
        sp_put(&r, "sub_appid", o->sub_appid);
        break;
    default: /* native QR */
        sp_put(&r, "sub_appid", o->sub_appid);
        break;
    }
    return sp_finish(call, &r, &mo, req);
fail:
    if (r.kv) call->host->kv_free(r.kv);
    return rc;
}

static gw_err_t sp_query(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    int refund_q = (call->flags & GW_CALL_REFUND_QUERY) != 0;
    sp_merchant_opts_t mo;
    sp_req_t r;
    gw_err_t rc;

    if (refund_q) {
        if (call->refund == NULL || !sp_present(call->refund->out_refund_no)) return GW_EINVAL;
    } else if (o == NULL || (!sp_present(o->out_trade_no) && !sp_present(o->channel_trade_no))) {
        return GW_EINVAL;
    }
    rc = sp_begin(call, refund_q ? "unified.trade.refundquery" : "unified.trade.query", &r, &mo);
    if (rc != GW_OK) {
        if (r.kv) call->host->kv_free(r.kv);
        return rc;
    }
    if (refund_q) {
        /* one key is enough; the refund's own number is the most specific */
        sp_put(&r, "out_refund_no", call->refund->out_refund_no);
    } else if (sp_present(o->out_trade_no)) {
        sp_put(&r, "out_trade_no", o->out_trade_no);
    } else {
        sp_put(&r, "transaction_id", o->channel_trade_no);
    }
    return sp_finish(call, &r, &mo, req);
}

static gw_err_t sp_refund(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    const gw_chan_refund_t *f = call->refund;
    sp_merchant_opts_t mo;
    sp_req_t r;
    gw_err_t rc;

    if (o == NULL || f == NULL || !sp_present(f->out_refund_no) || f->amount <= 0 ||
        f->total_amount <= 0 || f->amount > f->total_amount ||
        (!sp_present(o->out_trade_no) && !sp_present(o->channel_trade_no)))
        return GW_EINVAL;
    if ((rc = sp_begin(call, "unified.trade.refund", &r, &mo)) != GW_OK) {
        if (r.kv) call->host->kv_free(r.kv);
        return rc;
    }
    if (sp_present(o->out_trade_no)) sp_put(&r, "out_trade_no", o->out_trade_no);
    else sp_put(&r, "transaction_id", o->channel_trade_no);
    sp_put(&r, "out_refund_no", f->out_refund_no);
    sp_put_fen(&r, "total_fee", f->total_amount);
    sp_put_fen(&r, "refund_fee", f->amount);
    sp_put(&r, "op_user_id", call->merchant->mch_id);
    return sp_finish(call, &r, &mo, req);
}

static gw_err_t sp_close(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    int reverse = (call->flags & GW_CALL_REVERSE) != 0;
    sp_merchant_opts_t mo;
    sp_req_t r;
    gw_err_t rc;

    if (o == NULL || !sp_present(o->out_trade_no)) return GW_EINVAL;
    rc = sp_begin(call, reverse ? "unified.micropay.reverse" : "unified.trade.close", &r, &mo);
    if (rc != GW_OK) {
        if (r.kv) call->host->kv_free(r.kv);
        return rc;
    }
    sp_put(&r, "out_trade_no", o->out_trade_no);
    return sp_finish(call, &r, &mo, req);
}

/* ------------------------------------------------------------------ */
/* verification */

/* Verifies the sign of a parsed message (response or notify).  The algorithm
 * comes from the message's own sign_type (absent: the merchant's configured
 * one): MD5 with the merchant key (case-insensitive hex), RSA_1_256/RSA_1_1
 * with the platform public key.  diag, when not NULL, receives the string
 * that was verified (MD5: with "&key=***").  GW_OK or GW_ESIGN. */
static gw_err_t sp_verify(const sp_ctx_t *cx, const gw_host_api_t *h, const gw_chan_merchant_t *m,
                          const gw_kv_t *kv, gw_buf_t *diag)
{
    gw_str_t sign = h->kv_get(kv, "sign");
    gw_str_t st = h->kv_get(kv, "sign_type");
    enum sp_sign_type t;
    sp_merchant_opts_t mo;
    gw_buf_t s;
    gw_err_t rc = GW_ESIGN;

    if (!sp_present(sign) || m == NULL) return GW_ESIGN;
    if (sp_present(st)) {
        t = sp_sign_type_of(st);
    } else {
        if (sp_merchant_opts(h, m, &mo) != GW_OK) return GW_ESIGN;
        t = mo.sign_type;
    }
    if (t == SP_SIGN_NONE) return GW_ESIGN;
    h->buf_init(&s, SP_SIGN_MAX);
    if (h->kv_sign_string(kv, sp_sign_exclude, GW_KV_DROP_EMPTY | GW_KV_SORTED, &s) != GW_OK) goto out;
    if (diag) {
        h->buf_append(diag, s.data ? s.data : "", s.len);
        if (t == SP_SIGN_MD5) h->buf_append(diag, "&key=***", 8);
    }
    if (t == SP_SIGN_MD5) {
        uint8_t md[16];
        char hex[33];
        /* an empty key would make the signature forgeable */
        if (!sp_present(m->key)) goto out;
        if (h->buf_append(&s, "&key=", 5) != GW_OK) goto out;
        if (h->buf_append(&s, m->key.ptr, m->key.len) != GW_OK) goto out;
        h->md5(s.data, s.len, md);
        h->hex_encode(md, sizeof(md), hex, 1);
        if (sp_hex_eq_ci(hex, 32, sign.ptr, sign.len)) rc = GW_OK;
    } else {
        gw_rsa_key_t *key = sp_platform_key(cx, h, m);
        if (key == NULL) goto out;
        if (h->rsa_verify(key, t == SP_SIGN_RSA_1_1 ? GW_HASH_SHA1 : GW_HASH_SHA256, s.data ? s.data : "",
                          s.len, sign.ptr, sign.len) == GW_OK)
            rc = GW_OK;
    }
out:
    sp_wipe(&s);
    h->buf_free(&s);
    return rc;
}

/* ------------------------------------------------------------------ */
/* responses */

/* Error codes that say the trade may exist (or its outcome is not known):
 * never a definite failure, whatever need_query says. */
static int sp_err_ambiguous(gw_str_t ec)
{
    static const char *const codes[] = {
        "SYSTEMERROR", "USERPAYING", "10003", "ORDERPAID", "OUT_TRADE_NO_USED",
        "ORDERSTATUSERROR", "ORDERREVERSED", "ORDERCLOSED", "BANKERROR",
        "REFUNDINFOTEXIST", "REFUNDNOTEXIST", "ORDERNOTEXIST", "ORDER_NOT_EXIST", NULL
    };
    if (!sp_present(ec)) return 0;
    for (size_t i = 0; codes[i]; i++)
        if (sp_eq(ec, codes[i])) return 1;
    return 0;
}

static void sp_result_reset(gw_chan_result_t *res, int unknown)
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

/* The common part of every *_parse: HTTP status, XML, status flag, signature,
 * merchant echo.  Returns 1 with *kvp set when the message can be trusted
 * (the caller frees it); 0 when res already says UNKNOWN; <0 on ENOMEM. */
static int sp_response(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                       gw_chan_result_t *res, int unknown, gw_kv_t **kvp)
{
    const sp_ctx_t *cx = call->ctx;
    const gw_host_api_t *h = call->host;
    gw_kv_t *kv;
    gw_str_t v;

    *kvp = NULL;
    sp_result_reset(res, unknown);
    if (resp == NULL) {
        sp_copyz(res->raw_msg, sizeof(res->raw_msg), "paygate: no response");
        return 0;
    }
    if (resp->status != 200) {
        snprintf(res->raw_code, sizeof(res->raw_code), "HTTP_%d", resp->status);
        sp_copyz(res->raw_msg, sizeof(res->raw_msg), "paygate: unexpected HTTP status");
        return 0;
    }
    kv = h->kv_new();
    if (kv == NULL) return GW_ENOMEM;
    if (resp->body.ptr == NULL || h->kv_parse_xml(kv, resp->body.ptr, resp->body.len) != GW_OK) {
        sp_copyz(res->raw_code, sizeof(res->raw_code), "GW_EPARSE");
        sp_copyz(res->raw_msg, sizeof(res->raw_msg), "paygate: response is not a flat XML document");
        goto untrusted;
    }
    v = h->kv_get(kv, "status");
    if (!sp_eq(v, "0")) {
        /* communication failure: unsigned, and says nothing about the trade */
        snprintf(res->raw_code, sizeof(res->raw_code), "status=%.*s",
                 (int)(v.len > 40 ? 40 : v.len), v.ptr ? v.ptr : "");
        sp_copy(res->raw_msg, sizeof(res->raw_msg), h->kv_get(kv, "message"));
        goto untrusted;
    }
    if (sp_verify(cx, h, call->merchant, kv, NULL) != GW_OK) {
        sp_copyz(res->raw_code, sizeof(res->raw_code), "GW_ESIGN");
        sp_copyz(res->raw_msg, sizeof(res->raw_msg), "paygate: response signature does not verify");
        if (h->log)
            h->log(call->ctx, GW_LOG_WARN_, "response signature does not verify (mch_id %.*s)",
                   (int)(call->merchant ? call->merchant->mch_id.len : 0),
                   call->merchant ? call->merchant->mch_id.ptr : "");
        goto untrusted;
    }
    v = h->kv_get(kv, "mch_id");
    if (!sp_streq(v, call->merchant->mch_id) || !sp_present(v)) {
        sp_copyz(res->raw_code, sizeof(res->raw_code), "GW_EMCHID");
        sp_copyz(res->raw_msg, sizeof(res->raw_msg), "paygate: response is for another merchant");
        goto untrusted;
    }
    sp_copy(res->mch_id, sizeof(res->mch_id), v);
    sp_copy(res->channel_trade_no, sizeof(res->channel_trade_no), h->kv_get(kv, "transaction_id"));
    if (sp_eq(h->kv_get(kv, "recall"), "Y")) res->retry = 1;
    if (!sp_eq(h->kv_get(kv, "result_code"), "0")) {
        sp_copy(res->raw_code, sizeof(res->raw_code), h->kv_get(kv, "err_code"));
        v = h->kv_get(kv, "err_msg");
        sp_copy(res->raw_msg, sizeof(res->raw_msg), sp_present(v) ? v : h->kv_get(kv, "message"));
    } else {
        sp_copy(res->raw_msg, sizeof(res->raw_msg), h->kv_get(kv, "message"));
    }
    *kvp = kv;
    return 1;
untrusted:
    h->kv_free(kv);
    return 0;
}

static int sp_result_ok(const gw_host_api_t *h, const gw_kv_t *kv)
{
    return sp_eq(h->kv_get(kv, "result_code"), "0");
}

/* A field that, when present, must equal what we sent. */
static int sp_echo_ok(const gw_host_api_t *h, const gw_kv_t *kv, const char *key, gw_str_t want)
{
    gw_str_t v = h->kv_get(kv, key);
    return !sp_present(v) || !sp_present(want) || sp_streq(v, want);
}

static void sp_untrust(gw_chan_result_t *res, int unknown, const char *msg)
{
    res->status = unknown;
    sp_copyz(res->raw_msg, sizeof(res->raw_msg), msg);
}

/* pay_data for a c-to-b order; GW_EPARSE when the fields the payer needs are
 * missing. */
static gw_err_t sp_pay_data(const gw_host_api_t *h, const gw_kv_t *kv, uint32_t method,
                            gw_buf_t *out)
{
    gw_str_t v;
    gw_err_t rc = GW_OK;

    if (method == GW_METHOD_WECHAT_QR || method == GW_METHOD_ALIPAY_QR) {
        v = h->kv_get(kv, "code_url");
        if (!sp_present(v)) return GW_EPARSE;
        rc = h->buf_append(out, "{\"code_url\":", 12);
        if (rc == GW_OK) rc = h->json_quote(out, v.ptr, v.len);
        v = h->kv_get(kv, "code_img_url");
        if (rc == GW_OK && sp_present(v)) {
            rc = h->buf_append(out, ",\"code_img_url\":", 16);
            if (rc == GW_OK) rc = h->json_quote(out, v.ptr, v.len);
        }
    } else {
        gw_json_t *j;
        size_t i;
        v = h->kv_get(kv, "pay_info");
        if (!sp_present(v)) return GW_EPARSE;
        rc = h->buf_append(out, "{\"pay_info\":", 12);
        /* a JSON object (the JSAPI parameters) is embedded as an object,
         * after it has been parsed; anything else as a string */
        for (i = 0; i < v.len && (v.ptr[i] == ' ' || v.ptr[i] == '\t' || v.ptr[i] == '\r' ||
                                  v.ptr[i] == '\n'); i++)
            ;
        j = (i < v.len && v.ptr[i] == '{') ? h->json_parse(v.ptr, v.len) : NULL;
        if (rc == GW_OK) rc = j ? h->buf_append(out, v.ptr, v.len) : h->json_quote(out, v.ptr, v.len);
        if (j) h->json_free(j);
        v = h->kv_get(kv, "token_id");
        if (rc == GW_OK && sp_present(v)) {
            rc = h->buf_append(out, ",\"token_id\":", 12);
            if (rc == GW_OK) rc = h->json_quote(out, v.ptr, v.len);
        }
        v = h->kv_get(kv, "pay_url");
        if (rc == GW_OK && sp_present(v)) {
            rc = h->buf_append(out, ",\"pay_url\":", 11);
            if (rc == GW_OK) rc = h->json_quote(out, v.ptr, v.len);
        }
    }
    if (rc == GW_OK) rc = h->buf_append(out, "}", 1);
    return rc;
}

static gw_err_t sp_pay_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                             gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_order_t *o = call->order;
    gw_kv_t *kv;
    gw_str_t ec, nq;
    gw_err_t rc = GW_OK;
    int t = sp_response(call, resp, res, GW_PAY_UNKNOWN, &kv);

    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (o == NULL) {
        sp_untrust(res, GW_PAY_UNKNOWN, "paygate: no order");
        goto out;
    }
    if (!sp_echo_ok(h, kv, "out_trade_no", o->out_trade_no)) {
        sp_untrust(res, GW_PAY_UNKNOWN, "paygate: response is for another order");
        goto out;
    }
    res->amount = sp_parse_fen(h->kv_get(kv, "total_fee"));
    ec = h->kv_get(kv, "err_code");
    if (o->method == GW_METHOD_BARCODE) {
        nq = h->kv_get(kv, "need_query");
        if (sp_result_ok(h, kv) && sp_eq(h->kv_get(kv, "pay_result"), "0")) {
            res->status = GW_PAY_SUCCESS;
            sp_copyz(res->raw_code, sizeof(res->raw_code), "SUCCESS");
        } else if (sp_result_ok(h, kv)) {
            /* result_code 0 without pay_result 0: not a documented answer */
            res->status = GW_PAY_UNKNOWN;
            sp_copy(res->raw_code, sizeof(res->raw_code), h->kv_get(kv, "pay_result"));
            if (res->raw_msg[0] == '\0')
                sp_copy(res->raw_msg, sizeof(res->raw_msg), h->kv_get(kv, "pay_info"));
        } else if (sp_eq(ec, "USERPAYING") || sp_eq(ec, "10003") || sp_eq(nq, "Y")) {
            res->status = GW_PAY_USER_PAYING;
        } else if (sp_eq(nq, "N") && !sp_err_ambiguous(ec)) {
            res->status = GW_PAY_FAILED;
        } else {
            res->status = GW_PAY_UNKNOWN;
        }
    } else if (sp_result_ok(h, kv)) {
        rc = sp_pay_data(h, kv, o->method, &res->pay_data);
        if (rc == GW_OK) {
            res->status = GW_PAY_PENDING;
        } else {
            /* never hand out half a pay_data; the order exists: query it */
            h->buf_reset(&res->pay_data);
            sp_untrust(res, GW_PAY_UNKNOWN, rc == GW_EPARSE
                                                ? "paygate: created, but without the payment parameters"
                                                : "paygate: payment parameters too large");
            if (rc != GW_ENOMEM) rc = GW_OK;
        }
    } else {
        res->status = sp_err_ambiguous(ec) ? GW_PAY_UNKNOWN : GW_PAY_FAILED;
    }
out:
    h->kv_free(kv);
    return rc;
}

/* Finds out_refund_no among the indexed out_refund_no_$n keys; returns the
 * index suffix (e.g. "0") in idx, or 0 when absent. */
static int sp_find_refund(const gw_host_api_t *h, const gw_kv_t *kv, gw_str_t want, char *idx,
                          size_t idxcap)
{
    static const char pfx[] = "out_refund_no_";
    size_t n = h->kv_count(kv);
    for (size_t i = 0; i < n; i++) {
        gw_str_t k = h->kv_key_at(kv, i);
        size_t sl;
        int digits = 1;
        if (k.len <= sizeof(pfx) - 1 || memcmp(k.ptr, pfx, sizeof(pfx) - 1) != 0) continue;
        sl = k.len - (sizeof(pfx) - 1);
        for (size_t d = 0; d < sl; d++)
            if (k.ptr[sizeof(pfx) - 1 + d] < '0' || k.ptr[sizeof(pfx) - 1 + d] > '9') digits = 0;
        if (!digits || sl >= idxcap) continue;
        if (!sp_streq(h->kv_value_at(kv, i), want)) continue;
        memcpy(idx, k.ptr + sizeof(pfx) - 1, sl);
        idx[sl] = '\0';
        return 1;
    }
    return 0;
}

static gw_str_t sp_get_n(const gw_host_api_t *h, const gw_kv_t *kv, const char *base, const char *idx)
{
    char key[64];
    snprintf(key, sizeof(key), "%s_%s", base, idx);
    return h->kv_get(kv, key);
}

static gw_err_t sp_refund_query_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                                      gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    gw_kv_t *kv;
    gw_str_t st;
    char idx[16];
    int t = sp_response(call, resp, res, GW_REFUND_UNKNOWN, &kv);

    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (call->refund == NULL) {
        sp_untrust(res, GW_REFUND_UNKNOWN, "paygate: no refund");
        goto out;
    }
    if (!sp_result_ok(h, kv)) {
        /* REFUNDNOTEXIST included: right after a lost refund request it
         * proves nothing; repeat the refund with the same out_refund_no */
        res->status = GW_REFUND_UNKNOWN;
        goto out;
    }
    if (!sp_find_refund(h, kv, call->refund->out_refund_no, idx, sizeof(idx))) {
        sp_untrust(res, GW_REFUND_UNKNOWN, "paygate: the refund is not in the answer");
        goto out;
    }
    st = sp_get_n(h, kv, "refund_status", idx);
    sp_copy(res->raw_code, sizeof(res->raw_code), st);
    res->amount = sp_parse_fen(sp_get_n(h, kv, "refund_fee", idx));
    sp_copy(res->channel_refund_no, sizeof(res->channel_refund_no), sp_get_n(h, kv, "refund_id", idx));
    if (sp_eq(st, "SUCCESS")) res->status = GW_REFUND_SUCCESS;
    else if (sp_eq(st, "PROCESSING")) res->status = GW_REFUND_PROCESSING;
    else if (sp_eq(st, "FAIL")) res->status = GW_REFUND_FAILED;
    else if (sp_eq(st, "CHANGE")) res->status = GW_REFUND_FAILED; /* 退款异常: manual handling (docs) */
    else res->status = GW_REFUND_UNKNOWN;                          /* NOTSURE, anything new */
out:
    h->kv_free(kv);
    return GW_OK;
}

static gw_err_t sp_query_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                               gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_order_t *o = call->order;
    gw_kv_t *kv;
    gw_str_t ts;
    int t;

    if (call->flags & GW_CALL_REFUND_QUERY) return sp_refund_query_parse(call, resp, res);
    t = sp_response(call, resp, res, GW_PAY_UNKNOWN, &kv);
    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (o == NULL) {
        sp_untrust(res, GW_PAY_UNKNOWN, "paygate: no order");
        goto out;
    }
    if (!sp_result_ok(h, kv)) {
        gw_str_t ec = h->kv_get(kv, "err_code");
        /* the order is not known to the platform (docs: why NOT_PAID) */
        res->status = (sp_eq(ec, "ORDERNOTEXIST") || sp_eq(ec, "ORDER_NOT_EXIST")) ? GW_PAY_NOT_PAID
                                                                                  : GW_PAY_UNKNOWN;
        goto out;
    }
    if (!sp_echo_ok(h, kv, "out_trade_no", o->out_trade_no) ||
        !sp_echo_ok(h, kv, "transaction_id", o->channel_trade_no)) {
        sp_untrust(res, GW_PAY_UNKNOWN, "paygate: response is for another order");
        goto out;
    }
    res->amount = sp_parse_fen(h->kv_get(kv, "total_fee"));
    ts = h->kv_get(kv, "trade_state");
    sp_copy(res->raw_code, sizeof(res->raw_code), ts);
    if (res->raw_msg[0] == '\0') sp_copy(res->raw_msg, sizeof(res->raw_msg), h->kv_get(kv, "trade_state_desc"));
    if (sp_eq(ts, "SUCCESS")) res->status = GW_PAY_SUCCESS;
    else if (sp_eq(ts, "REFUND")) res->status = GW_PAY_REFUNDED;
    else if (sp_eq(ts, "NOTPAY")) res->status = GW_PAY_NOT_PAID;
    else if (sp_eq(ts, "CLOSED")) res->status = GW_PAY_CLOSED;
    else if (sp_eq(ts, "REVOKED") || sp_eq(ts, "REVERSE")) res->status = GW_PAY_REVERSED;
    else if (sp_eq(ts, "USERPAYING")) res->status = GW_PAY_USER_PAYING;
    else if (sp_eq(ts, "PAYERROR")) res->status = GW_PAY_FAILED;
    else res->status = GW_PAY_UNKNOWN;
out:
    h->kv_free(kv);
    return GW_OK;
}

static gw_err_t sp_refund_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                                gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    gw_kv_t *kv;
    gw_str_t st;
    int t = sp_response(call, resp, res, GW_REFUND_UNKNOWN, &kv);

    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (call->refund == NULL) {
        sp_untrust(res, GW_REFUND_UNKNOWN, "paygate: no refund");
        goto out;
    }
    if (!sp_result_ok(h, kv)) {
        res->status = sp_err_ambiguous(h->kv_get(kv, "err_code")) ? GW_REFUND_UNKNOWN : GW_REFUND_FAILED;
        goto out;
    }
    if (!sp_echo_ok(h, kv, "out_refund_no", call->refund->out_refund_no) ||
        (call->order && !sp_echo_ok(h, kv, "out_trade_no", call->order->out_trade_no))) {
        sp_untrust(res, GW_REFUND_UNKNOWN, "paygate: response is for another refund");
        goto out;
    }
    res->amount = sp_parse_fen(h->kv_get(kv, "refund_fee"));
    sp_copy(res->channel_refund_no, sizeof(res->channel_refund_no), h->kv_get(kv, "refund_id"));
    /* refunds are asynchronous: accepted means PROCESSING, unless the answer
     * carries a final refund_status */
    st = h->kv_get(kv, "refund_status");
    if (sp_eq(st, "SUCCESS")) res->status = GW_REFUND_SUCCESS;
    else res->status = GW_REFUND_PROCESSING;
    sp_copy(res->raw_code, sizeof(res->raw_code), sp_present(st) ? st : sp_cstr("PROCESSING"));
out:
    h->kv_free(kv);
    return GW_OK;
}

static gw_err_t sp_close_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                               gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    gw_kv_t *kv;
    int t = sp_response(call, resp, res, GW_PAY_UNKNOWN, &kv);

    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (call->order && !sp_echo_ok(h, kv, "out_trade_no", call->order->out_trade_no)) {
        sp_untrust(res, GW_PAY_UNKNOWN, "paygate: response is for another order");
    } else if (sp_result_ok(h, kv)) {
        int rev = (call->flags & GW_CALL_REVERSE) != 0;
        res->status = rev ? GW_PAY_REVERSED : GW_PAY_CLOSED;
        sp_copyz(res->raw_code, sizeof(res->raw_code), rev ? "REVERSED" : "CLOSED");
    } else if (sp_eq(h->kv_get(kv, "err_code"), "ORDERNOTEXIST")) {
        /* The platform has no such trade: the pay request never reached it
         * (a crash or a proxy error before it left).  The core closes or
         * reverses only past the order's deadline, so nothing can pay it
         * any more: it is closed, and saying so ends the follow-up. */
        int rev = (call->flags & GW_CALL_REVERSE) != 0;
        res->status = rev ? GW_PAY_REVERSED : GW_PAY_CLOSED;
        sp_copyz(res->raw_code, sizeof(res->raw_code), "ORDERNOTEXIST");
    } else {
        /* not closed (ORDERPAID, ORDERSTATUSERROR, …): the order's state is
         * for a query to tell */
        res->status = GW_PAY_UNKNOWN;
    }
    h->kv_free(kv);
    return GW_OK;
}

/* ------------------------------------------------------------------ */
/* notifications */

static gw_err_t sp_acks(const gw_host_api_t *h, gw_chan_notify_t *out, int ok_too)
{
    gw_err_t rc;
    out->ack_fail_status = 200;
    sp_copyz(out->ack_fail_type, sizeof(out->ack_fail_type), "text/plain");
    h->buf_reset(&out->ack_fail_body);
    if ((rc = h->buf_append(&out->ack_fail_body, "fail", 4)) != GW_OK) return rc;
    if (!ok_too) return GW_OK;
    out->ack_ok_status = 200;
    sp_copyz(out->ack_ok_type, sizeof(out->ack_ok_type), "text/plain");
    h->buf_reset(&out->ack_ok_body);
    return h->buf_append(&out->ack_ok_body, "success", 7);
}

static gw_err_t sp_notify_kv(const gw_host_api_t *h, const gw_chan_notify_in_t *in, gw_kv_t **kvp)
{
    gw_kv_t *kv;
    *kvp = NULL;
    if (in == NULL || in->body.ptr == NULL || in->body.len == 0) return GW_EPARSE;
    kv = h->kv_new();
    if (kv == NULL) return GW_ENOMEM;
    if (h->kv_parse_xml(kv, in->body.ptr, in->body.len) != GW_OK) {
        h->kv_free(kv);
        return GW_EPARSE;
    }
    *kvp = kv;
    return GW_OK;
}

static gw_err_t sp_notify_parse(void *ctx, const gw_host_api_t *host, const gw_chan_notify_in_t *in,
                                gw_chan_notify_t *out)
{
    gw_kv_t *kv;
    gw_str_t mch, otn;
    gw_err_t rc;

    (void)ctx;
    out->kind = GW_NOTIFY_PAY;
    out->mch_id[0] = out->out_trade_no[0] = out->out_refund_no[0] = '\0';
    if ((rc = sp_acks(host, out, 0)) != GW_OK) return rc;
    if ((rc = sp_notify_kv(host, in, &kv)) != GW_OK) return rc;
    mch = host->kv_get(kv, "mch_id");
    otn = host->kv_get(kv, "out_trade_no");
    if (!sp_present(mch) || mch.len >= sizeof(out->mch_id) || !sp_present(otn) ||
        otn.len >= sizeof(out->out_trade_no)) {
        rc = GW_EPARSE;
    } else {
        sp_copy(out->mch_id, sizeof(out->mch_id), mch);
        sp_copy(out->out_trade_no, sizeof(out->out_trade_no), otn);
    }
    host->kv_free(kv);
    return rc;
}

static gw_err_t sp_notify_verify(const gw_chan_call_t *call, const gw_chan_notify_in_t *in,
                                 gw_chan_notify_t *out)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_merchant_t *m = call->merchant;
    gw_kv_t *kv;
    gw_str_t v, ec;
    gw_err_t rc;

    out->status = GW_PAY_UNKNOWN;
    out->amount = -1;
    out->channel_trade_no[0] = out->raw_code[0] = out->raw_msg[0] = '\0';
    if ((rc = sp_acks(h, out, 1)) != GW_OK) return rc;
    if ((rc = sp_notify_kv(h, in, &kv)) != GW_OK) return rc;
    h->buf_reset(&out->sign_string);
    if (sp_verify(call->ctx, h, m, kv, &out->sign_string) != GW_OK) {
        rc = GW_ESIGN;
        if (h->log) h->log(call->ctx, GW_LOG_WARN_, "notification signature does not verify");
        goto out;
    }
    /* signed, but must also be about this merchant and this order */
    if (m == NULL || !sp_present(m->mch_id) || !sp_streq(h->kv_get(kv, "mch_id"), m->mch_id) ||
        (call->order && !sp_echo_ok(h, kv, "out_trade_no", call->order->out_trade_no))) {
        rc = GW_ESIGN;
        goto out;
    }
    out->amount = sp_parse_fen(h->kv_get(kv, "total_fee"));
    sp_copy(out->channel_trade_no, sizeof(out->channel_trade_no), h->kv_get(kv, "transaction_id"));
    ec = h->kv_get(kv, "err_code");
    if (sp_eq(h->kv_get(kv, "status"), "0") && sp_eq(h->kv_get(kv, "result_code"), "0") &&
        sp_eq(h->kv_get(kv, "pay_result"), "0")) {
        out->status = GW_PAY_SUCCESS;
        sp_copyz(out->raw_code, sizeof(out->raw_code), "SUCCESS");
    } else {
        /* Swiftpass notifies payments; anything else is left to a query */
        out->status = GW_PAY_UNKNOWN;
        if (sp_present(ec)) {
            sp_copy(out->raw_code, sizeof(out->raw_code), ec);
        } else {
            v = h->kv_get(kv, "pay_result");
            snprintf(out->raw_code, sizeof(out->raw_code), "pay_result=%.*s",
                     (int)(v.len > 32 ? 32 : v.len), v.ptr ? v.ptr : "");
        }
    }
    v = h->kv_get(kv, "err_msg");
    if (!sp_present(v)) v = h->kv_get(kv, "pay_info");
    if (!sp_present(v)) v = h->kv_get(kv, "message");
    sp_copy(out->raw_msg, sizeof(out->raw_msg), v);
    rc = GW_OK;
out:
    h->kv_free(kv);
    return rc;
}

/* ------------------------------------------------------------------ */

/* Timing rules the core's follow-up tasks obey (ABI 1.1; 0 = core default).
 * b-to-c: the pay.swiftpass.cn integration in PROTOCOLS.md §A.4 queries 6
 * times at 5 s intervals before unified.micropay.reverse; the platform
 * refuses unified.trade.close within 5 minutes of the order's creation
 * ("订单生成后5分钟内不能关单").  No documented rule for the reverse's
 * minimum age or the first refund query: core defaults. */
static const gw_chan_policy_t sp_policy = {
    .struct_size = sizeof(gw_chan_policy_t),
    .poll_interval_ms = 5000,
    .poll_deadline_ms = 30000,
    .reverse_min_age_ms = 0,
    .close_min_age_ms = 5 * 60 * 1000,
    .refund_query_delay_ms = 0,
};

/* MD5 merchants are light (ABI 1.3): build, parse and verify are an MD5 of
 * a few hundred bytes and a flat XML scan.  RSA merchants are not. */
static int sp_light(const gw_chan_call_t *call)
{
    sp_merchant_opts_t o;
    if (call == NULL || call->host == NULL) return 0;
    if (sp_merchant_opts(call->host, call->merchant, &o) != GW_OK) return 0;
    return o.sign_type == SP_SIGN_MD5;
}

static const gw_channel_t sp_channel = {
    .abi_version = GW_CHANNEL_ABI_VERSION,
    .struct_size = sizeof(gw_channel_t),
    .ctx_size = sizeof(sp_ctx_t),
    .methods = GW_METHOD_WECHAT_QR | GW_METHOD_WECHAT_JSAPI | GW_METHOD_ALIPAY_QR |
               GW_METHOD_ALIPAY_JSAPI | GW_METHOD_BARCODE,
    .name = GW_CHANNEL_NAME,
    .version = SP_VERSION,
    .build_sig = GW_CHANNEL_BUILD_SIG,
    .init = sp_init,
    .fini = sp_fini,
    .pay = sp_pay,
    .pay_parse = sp_pay_parse,
    .query = sp_query,
    .query_parse = sp_query_parse,
    .refund = sp_refund,
    .refund_parse = sp_refund_parse,
    .close = sp_close,
    .close_parse = sp_close_parse,
    .notify_parse = sp_notify_parse,
    .notify_verify = sp_notify_verify,
    /* added in 1.1 */
    .policy = &sp_policy,
    .light = sp_light,
};

GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry(void);

GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry(void)
{
    return &sp_channel;
}
