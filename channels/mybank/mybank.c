/*
 * mybank.c — the MyBank (浙江网商银行, Zhejiang Internet bank) channel module:
 * merchant trade, `ant.mybank.bkmerchanttrade.*`.
 *
 * Channel ABI 1.2 (fills the 1.1 policy; needs host API 1.2 for XML-DSig).
 * Protocol: /work/shared/PROTOCOLS.md §B.  Each request is an XML document
 * (document / request / head + body) POSTed to one gateway URL and signed
 * with an enveloped XML-DSig (inclusive C14N 1.0, rsa-sha256, one Reference
 * URI="" with the enveloped-signature transform, SHA-1 digest, the
 * Signature the last child of <document>: host->xmldsig_sign).  Answers and
 * the prePayNotice notification are signed by the bank the same way and
 * verified with host->xmldsig_verify before anything in them is read.
 * Behaviour, settings, the status mapping and every choice made where the
 * public documentation is silent are in docs/channels/mybank.md; keep the
 * two in step.
 *
 * ReqMsgId: unique per message, UUID-shaped, and self-authenticating: the
 * first 8 bytes are random, the last 8 are an HMAC (a key drawn at init,
 * never leaving the ctx) over those bytes, the Function, the merchant and
 * the trade or refund number.  An answer must echo a ReqMsgId that this
 * module made for this very operation — a signed answer of another request
 * (a replay, or one for another order) is UNKNOWN, never a result.
 *
 * The module is a codec: no I/O, no globals, everything through the host API;
 * every function is reentrant and the ctx is read-only after init.  Keys are
 * never logged or echoed.
 */
#include "gw_channel.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#ifndef GW_CHANNEL_NAME
#define GW_CHANNEL_NAME "mybank"
#endif

#define MB_VERSION "1.0.0"
#define MB_PROTO_VERSION "1.0.0"
#define MB_URL_MAX 1024
#define MB_ID_MAX 64
#define MB_DOC_MAX (256u * 1024u) /* an unsigned request document */
#define MB_MSGID_LEN 36

#define F_PREFIX "ant.mybank.bkmerchanttrade."
#define F_PAY F_PREFIX "pay"
#define F_PREPAY F_PREFIX "prePay"
#define F_QUERY F_PREFIX "payQuery"
#define F_CANCEL F_PREFIX "payCancel"
#define F_CLOSE F_PREFIX "payClose"
#define F_REFUND F_PREFIX "refund"
#define F_REFUND_QUERY F_PREFIX "refundQuery"
#define F_NOTICE F_PREFIX "prePayNotice"

#define MB_CONTENT_TYPE "application/xml; charset=UTF-8"

/* Per-channel state, in the core-allocated ctx_size block. */
typedef struct mb_ctx {
    const gw_host_api_t *host;
    char gateway_url[MB_URL_MAX]; /* "" until configured: requests are refused */
    char isv_org_id[MB_ID_MAX];
    char appid[MB_ID_MAX];
    char version[16];
    gw_rsa_key_t *bank_key;       /* settings.bank_public_key (core-cached); may be NULL */
    uint8_t msg_key[32];          /* ReqMsgId authentication key */
} mb_ctx_t;

/* ------------------------------------------------------------------ */
/* small helpers */

static gw_str_t mb_cstr(const char *s)
{
    gw_str_t r = { s, s ? strlen(s) : 0 };
    return r;
}

static int mb_present(gw_str_t s)
{
    return s.ptr != NULL && s.len > 0;
}

static int mb_eq(gw_str_t s, const char *lit)
{
    size_t n = strlen(lit);
    return s.ptr != NULL && s.len == n && memcmp(s.ptr, lit, n) == 0;
}

static int mb_streq(gw_str_t a, gw_str_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static void mb_copy(char *dst, size_t cap, gw_str_t s)
{
    size_t n = s.ptr ? s.len : 0;
    if (cap == 0) return;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(dst, s.ptr, n);
    dst[n] = '\0';
}

static void mb_copyz(char *dst, size_t cap, const char *s)
{
    mb_copy(dst, cap, mb_cstr(s));
}

/* Unsigned decimal integer (fen); -1 when absent or not a plain number. */
static int64_t mb_fen(gw_str_t s)
{
    int64_t v = 0;
    if (!mb_present(s) || s.len > 15) return -1;
    for (size_t i = 0; i < s.len; i++) {
        if (s.ptr[i] < '0' || s.ptr[i] > '9') return -1;
        v = v * 10 + (s.ptr[i] - '0');
    }
    return v;
}

static int mb_host_ok(const gw_host_api_t *h)
{
    return h != NULL && (h->version >> 16) == GW_CHANNEL_ABI_MAJOR &&
           h->struct_size >= offsetof(gw_host_api_t, xmldsig_verify) + sizeof(h->xmldsig_verify) &&
           h->xml_escape && h->xml_get && h->xml_kv && h->xmldsig_sign && h->xmldsig_verify;
}

/* The bank's key for this merchant: merchant.public_key when given, else
 * settings.bank_public_key.  NULL when neither is usable. */
static gw_rsa_key_t *mb_bank_key(const mb_ctx_t *cx, const gw_host_api_t *h, const gw_chan_merchant_t *m)
{
    if (m != NULL && mb_present(m->public_key)) return h->rsa_public(m->public_key.ptr, m->public_key.len);
    return cx ? cx->bank_key : NULL;
}

/* yyyyMMddHHmmss in UTC+8 (China has no daylight saving time). */
static void mb_time(uint64_t ms, char out[15])
{
    struct tm tm;
    time_t t = (time_t)(ms / 1000) + 8 * 3600;
    memset(&tm, 0, sizeof(tm));
    gmtime_r(&t, &tm);
    unsigned f[6] = { (unsigned)(tm.tm_year + 1900) % 10000u, (unsigned)(tm.tm_mon + 1) % 100u,
                      (unsigned)tm.tm_mday % 100u, (unsigned)tm.tm_hour % 100u,
                      (unsigned)tm.tm_min % 100u, (unsigned)tm.tm_sec % 100u };
    size_t o = 0;
    for (int i = 0; i < 6; i++) {
        unsigned v = f[i];
        int digits = i == 0 ? 4 : 2;
        for (int k = digits - 1; k >= 0; k--) {
            out[o + (size_t)k] = (char)('0' + v % 10);
            v /= 10;
        }
        o += (size_t)digits;
    }
    out[o] = '\0';
}

/* ------------------------------------------------------------------ */
/* ReqMsgId: 8 random bytes + 8 bytes of HMAC, written as a UUID */

static void mb_msgid_mac(const mb_ctx_t *cx, const gw_host_api_t *h, const uint8_t rnd[8],
                         const char *function, gw_str_t mch, gw_str_t id, uint8_t mac[32])
{
    uint8_t buf[8 + 64 + 1 + 2 * 128 + 1];
    size_t n = 0;
    memcpy(buf, rnd, 8);
    n = 8;
    size_t fl = strlen(function);
    if (fl > 64) fl = 64;
    memcpy(buf + n, function, fl);
    n += fl;
    buf[n++] = '\n';
    size_t ml = mch.len > 128 ? 128 : mch.len;
    if (ml) memcpy(buf + n, mch.ptr, ml);
    n += ml;
    buf[n++] = '\n';
    size_t il = id.len > 128 ? 128 : id.len;
    if (il) memcpy(buf + n, id.ptr, il);
    n += il;
    h->hmac_sha256(cx->msg_key, sizeof(cx->msg_key), buf, n, mac);
}

static void mb_uuid(const uint8_t b[16], char out[MB_MSGID_LEN + 1])
{
    static const char hx[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = hx[b[i] >> 4];
        out[o++] = hx[b[i] & 15];
    }
    out[o] = '\0';
}

static gw_err_t mb_msgid(const mb_ctx_t *cx, const gw_host_api_t *h, const char *function, gw_str_t mch,
                         gw_str_t id, char out[MB_MSGID_LEN + 1])
{
    char nonce[44];
    uint8_t seed[32], mac[32], b[16];
    gw_err_t rc = h->nonce(nonce, 43); /* 43 characters of 62: > 256 bits */
    if (rc != GW_OK) return rc;
    h->sha256(nonce, 43, seed);
    memcpy(b, seed, 8);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    mb_msgid_mac(cx, h, b, function, mch, id, mac);
    memcpy(b + 8, mac, 8);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    mb_uuid(b, out);
    return GW_OK;
}

static int mb_hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* 1 when got is a ReqMsgId this ctx made for (function, mch, id). */
static int mb_msgid_ok(const mb_ctx_t *cx, const gw_host_api_t *h, const char *function, gw_str_t mch,
                       gw_str_t id, gw_str_t got)
{
    uint8_t b[16], mac[32];
    size_t k = 0;
    unsigned diff = 0;
    if (got.ptr == NULL || got.len != MB_MSGID_LEN) return 0;
    for (size_t i = 0; i < got.len; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (got.ptr[i] != '-') return 0;
            continue;
        }
        int hi = mb_hexval(got.ptr[i]), lo = i + 1 < got.len ? mb_hexval(got.ptr[i + 1]) : -1;
        if (hi < 0 || lo < 0 || k >= 16) return 0;
        b[k++] = (uint8_t)(hi << 4 | lo);
        i++;
    }
    if (k != 16) return 0;
    mb_msgid_mac(cx, h, b, function, mch, id, mac);
    diff |= (unsigned)((b[8] ^ mac[0]) & 0x3f);
    for (size_t i = 1; i < 8; i++) diff |= (unsigned)(b[8 + i] ^ mac[i]);
    return diff == 0;
}

/* ------------------------------------------------------------------ */
/* life cycle */

static gw_err_t mb_setting_str(const gw_host_api_t *h, gw_json_t *j, const char *key, char *dst,
                               size_t cap, gw_buf_t *err)
{
    gw_json_t *v = h->json_get(j, key);
    const char *s;
    if (v == NULL) return GW_OK;
    s = h->json_string(v);
    if (s == NULL || strlen(s) >= cap || strpbrk(s, "<>&\"'\r\n\t") != NULL) {
        h->buf_appendf(err, "mybank: settings.%s must be a string of at most %zu plain characters", key,
                       cap - 1);
        return GW_EINVAL;
    }
    mb_copyz(dst, cap, s);
    return GW_OK;
}

static gw_err_t mb_init(void *ctx, const gw_host_api_t *host, const char *settings, size_t settings_len,
                        gw_buf_t *err)
{
    mb_ctx_t *cx = ctx;
    gw_json_t *j = NULL;
    gw_json_t *v;
    const char *s;
    gw_err_t rc = GW_EINVAL;
    char nonce[44];

    memset(cx, 0, sizeof(*cx));
    if (host == NULL || (host->version >> 16) != GW_CHANNEL_ABI_MAJOR) return GW_ENOTSUP;
    if (!mb_host_ok(host)) {
        host->buf_appendf(err, "mybank: needs host API 1.2 (XML-DSig); the core offers %u.%u",
                          host->version >> 16, host->version & 0xffffu);
        return GW_ENOTSUP;
    }
    cx->host = host;
    mb_copyz(cx->version, sizeof(cx->version), MB_PROTO_VERSION);
    if ((rc = host->nonce(nonce, 43)) != GW_OK) return rc;
    host->sha256(nonce, 43, cx->msg_key);
    rc = GW_EINVAL;

    if (settings == NULL || settings_len == 0) return GW_OK;
    for (size_t i = 0; i < settings_len; i++) {
        if (settings[i] == ' ' || settings[i] == '\t' || settings[i] == '\r' || settings[i] == '\n')
            continue;
        if (settings[i] == '{') j = host->json_parse(settings, settings_len);
        break;
    }
    if (j == NULL) {
        host->buf_appendf(err, "mybank: settings are not a JSON object");
        goto out;
    }
    if ((v = host->json_get(j, "gateway_url")) != NULL) {
        s = host->json_string(v);
        if (s == NULL || (strncmp(s, "https://", 8) != 0 && strncmp(s, "http://", 7) != 0) ||
            strlen(s) >= sizeof(cx->gateway_url) || strpbrk(s, " \t\r\n") != NULL) {
            host->buf_appendf(err, "mybank: gateway_url must be an http(s) URL shorter than %d bytes",
                              MB_URL_MAX);
            goto out;
        }
        mb_copyz(cx->gateway_url, sizeof(cx->gateway_url), s);
    }
    if (mb_setting_str(host, j, "isv_org_id", cx->isv_org_id, sizeof(cx->isv_org_id), err) != GW_OK ||
        mb_setting_str(host, j, "appid", cx->appid, sizeof(cx->appid), err) != GW_OK ||
        mb_setting_str(host, j, "version", cx->version, sizeof(cx->version), err) != GW_OK)
        goto out;
    if (cx->version[0] == '\0') mb_copyz(cx->version, sizeof(cx->version), MB_PROTO_VERSION);
    if ((v = host->json_get(j, "bank_public_key")) != NULL) {
        s = host->json_string(v);
        if (s == NULL) {
            host->buf_appendf(err, "mybank: bank_public_key must be a string (PEM or Base64 SPKI)");
            goto out;
        }
        if (s[0] != '\0') {
            cx->bank_key = host->rsa_public(s, strlen(s));
            if (cx->bank_key == NULL) {
                host->buf_appendf(err, "mybank: bank_public_key is not an RSA public key or certificate");
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

static void mb_fini(void *ctx)
{
    mb_ctx_t *cx = ctx;
    explicit_bzero(cx, sizeof(*cx));
}

/* ------------------------------------------------------------------ */
/* requests */

/* A document under construction: remembers the first error. */
typedef struct mb_doc {
    const gw_host_api_t *h;
    gw_buf_t b;
    gw_err_t err;
} mb_doc_t;

static void d_raw(mb_doc_t *d, const char *s)
{
    if (d->err == GW_OK) d->err = d->h->buf_append(&d->b, s, strlen(s));
}

/* <tag>escaped value</tag>; an empty value is left out unless always */
static void d_leaf(mb_doc_t *d, const char *tag, gw_str_t v, int always)
{
    if (d->err != GW_OK || (!mb_present(v) && !always)) return;
    d->err = d->h->buf_appendf(&d->b, "<%s>", tag);
    if (d->err == GW_OK && v.len) d->err = d->h->xml_escape(v.ptr, v.len, &d->b);
    if (d->err == GW_OK) d->err = d->h->buf_appendf(&d->b, "</%s>", tag);
}

static void d_leafz(mb_doc_t *d, const char *tag, const char *v)
{
    d_leaf(d, tag, mb_cstr(v), 0);
}

static void d_fen(mb_doc_t *d, const char *tag, int64_t fen)
{
    if (d->err == GW_OK) d->err = d->h->buf_appendf(&d->b, "<%s>%" PRId64 "</%s>", tag, fen, tag);
}

/* The head of a request (kind "request") or a response (kind "response"). */
static void d_head(mb_doc_t *d, const mb_ctx_t *cx, const char *kind, const char *function,
                   gw_str_t appid, const char *msgid)
{
    char ts[15];
    mb_time(d->h->now_ms(), ts);
    d_raw(d, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><document><");
    d_raw(d, kind);
    d_raw(d, " id=\"");
    d_raw(d, kind);
    d_raw(d, "\"><head>");
    d_leafz(d, "Version", cx->version);
    d_leaf(d, "Appid", appid, 1);
    d_leafz(d, "Function", function);
    if (strcmp(kind, "request") == 0) {
        d_leafz(d, "ReqTime", ts);
        d_leafz(d, "ReqTimeZone", "UTC+8");
    } else {
        d_leafz(d, "RespTime", ts);
        d_leafz(d, "RespTimeZone", "UTC+8");
    }
    d_leafz(d, "ReqMsgId", msgid);
    d_leafz(d, "InputCharset", "UTF-8");
    d_raw(d, "<Reserve/>");
    d_leafz(d, "SignType", "RSA");
    d_raw(d, "</head><body>");
}

static void d_end(mb_doc_t *d, const char *kind)
{
    d_raw(d, "</body></");
    d_raw(d, kind);
    d_raw(d, "></document>");
}

/* Starts a request: checks configuration and credentials, makes the ReqMsgId. */
static gw_err_t mb_begin(const gw_chan_call_t *call, const char *function, gw_str_t id, mb_doc_t *d)
{
    const mb_ctx_t *cx = call->ctx;
    const gw_host_api_t *h = call->host;
    const gw_chan_merchant_t *m = call->merchant;
    char msgid[MB_MSGID_LEN + 1];
    gw_err_t rc;

    d->h = h;
    d->err = GW_OK;
    h->buf_init(&d->b, MB_DOC_MAX);
    if (cx == NULL || cx->gateway_url[0] == '\0' || cx->isv_org_id[0] == '\0' || cx->appid[0] == '\0') {
        if (h->log)
            h->log(call->ctx, GW_LOG_ERR_, "not configured: settings.gateway_url, isv_org_id and appid are "
                                           "required");
        return GW_EINVAL;
    }
    if (m == NULL || !mb_present(m->mch_id)) return GW_EINVAL;
    if (!mb_present(m->private_key)) return GW_EKEY;
    if ((rc = mb_msgid(cx, h, function, m->mch_id, id, msgid)) != GW_OK) return rc;
    d_head(d, cx, "request", function, mb_cstr(cx->appid), msgid);
    d_leafz(d, "IsvOrgId", cx->isv_org_id);
    d_leaf(d, "MerchantId", m->mch_id, 1);
    return d->err;
}

/* Closes the document, signs it (PROTOCOLS.md §B.3) into req->body and
 * writes URL and headers.  req->sign_string gets the unsigned document: what
 * the Reference digest covers (before canonicalisation). */
static gw_err_t mb_finish(const gw_chan_call_t *call, mb_doc_t *d, gw_chan_request_t *req)
{
    const mb_ctx_t *cx = call->ctx;
    const gw_host_api_t *h = call->host;
    const gw_chan_merchant_t *m = call->merchant;
    gw_err_t rc;

    d_end(d, "request");
    if ((rc = d->err) != GW_OK) goto out;
    gw_rsa_key_t *key = h->rsa_private(m->private_key.ptr, m->private_key.len);
    if (key == NULL) {
        rc = GW_EKEY;
        goto out;
    }
    if ((rc = h->buf_append(&req->sign_string, d->b.data, d->b.len)) != GW_OK) goto out;
    if ((rc = h->xmldsig_sign(d->b.data, d->b.len, key, &req->body)) != GW_OK) goto out;
    req->method = "POST";
    if ((rc = h->buf_append(&req->url, cx->gateway_url, strlen(cx->gateway_url))) != GW_OK) goto out;
    rc = h->buf_appendf(&req->headers, "Content-Type: " MB_CONTENT_TYPE "\r\n");
out:
    h->buf_free(&d->b);
    return rc;
}

static void mb_abort(mb_doc_t *d)
{
    if (d->h) d->h->buf_free(&d->b);
}

/* The wallet of a pay code (PROTOCOLS.md §B.4 ChannelType): WeChat 10–15,
 * Alipay 25–30, JD 18, QQ 91; NULL when it is none of them. */
static const char *mb_code_wallet(gw_str_t code)
{
    if (code.len < 2) return NULL;
    for (size_t i = 0; i < code.len; i++)
        if (code.ptr[i] < '0' || code.ptr[i] > '9') return NULL;
    int p = (code.ptr[0] - '0') * 10 + (code.ptr[1] - '0');
    if (p >= 10 && p <= 15) return "WX";
    if (p >= 25 && p <= 30) return "ALI";
    if (p == 18) return "JD";
    if (p == 91) return "QQ";
    return NULL;
}

/* ExpireExpress: whole minutes left until expire_ms (rounded down, so the
 * bank never takes a payment much after paygate's deadline), 1..1440. */
static void d_expire(mb_doc_t *d, const gw_chan_order_t *o)
{
    if (o->expire_ms <= 0) return;
    int64_t left = o->expire_ms - (int64_t)d->h->now_ms();
    int64_t min = left / 60000;
    if (min < 1) min = 1;
    if (min > 1440) min = 1440;
    d_fen(d, "ExpireExpress", min);
}

static gw_err_t mb_pay(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    const char *wallet, *function;
    mb_doc_t d;
    gw_err_t rc;

    memset(&d, 0, sizeof(d));
    if (o == NULL || !mb_present(o->out_trade_no) || o->amount <= 0 || !mb_present(o->subject))
        return GW_EINVAL;
    switch (o->method) {
    case GW_METHOD_BARCODE:
        if (!mb_present(o->auth_code)) return GW_EINVAL;
        if ((wallet = mb_code_wallet(o->auth_code)) == NULL) return GW_EINVAL;
        function = F_PAY;
        break;
    case GW_METHOD_WECHAT_QR: wallet = "WX", function = F_PREPAY; break;
    case GW_METHOD_ALIPAY_QR: wallet = "ALI", function = F_PREPAY; break;
    case GW_METHOD_WECHAT_JSAPI: wallet = "WX", function = F_PREPAY; break;
    case GW_METHOD_ALIPAY_JSAPI: wallet = "ALI", function = F_PREPAY; break;
    default: return GW_ENOTSUP;
    }
    if (o->method != GW_METHOD_BARCODE) {
        if (!mb_present(o->notify_url)) return GW_EINVAL;
        if ((o->method == GW_METHOD_WECHAT_JSAPI || o->method == GW_METHOD_ALIPAY_JSAPI) &&
            !mb_present(o->payer_id))
            return GW_EINVAL;
    }
    if ((rc = mb_begin(call, function, o->out_trade_no, &d)) != GW_OK) goto fail;
    if (o->method == GW_METHOD_BARCODE) d_leaf(&d, "AuthCode", o->auth_code, 1);
    d_leaf(&d, "OutTradeNo", o->out_trade_no, 1);
    d_leaf(&d, "Body", o->subject, 1);
    d_fen(&d, "TotalAmount", o->amount);
    d_leaf(&d, "Currency", mb_present(o->currency) ? o->currency : mb_cstr("CNY"), 1);
    d_leafz(&d, "ChannelType", wallet);
    if (o->method == GW_METHOD_WECHAT_JSAPI || o->method == GW_METHOD_ALIPAY_JSAPI)
        d_leaf(&d, "OpenId", o->payer_id, 1);
    if (o->method != GW_METHOD_BARCODE) d_leaf(&d, "NotifyUrl", o->notify_url, 1);
    /* the customer's address is required; a server-side order has none */
    d_leaf(&d, "DeviceCreateIp", mb_present(o->client_ip) ? o->client_ip : mb_cstr("127.0.0.1"), 1);
    d_expire(&d, o);
    d_leaf(&d, "Attach", o->attach, 0);
    if (o->method == GW_METHOD_WECHAT_JSAPI)
        d_leaf(&d, "SubAppId", mb_present(o->sub_appid) ? o->sub_appid : call->merchant->app_id, 0);
    else
        d_leaf(&d, "SubAppId", o->sub_appid, 0);
    return mb_finish(call, &d, req);
fail:
    mb_abort(&d);
    return rc;
}

static gw_err_t mb_query(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    mb_doc_t d;
    gw_err_t rc;

    memset(&d, 0, sizeof(d));
    if (call->flags & GW_CALL_REFUND_QUERY) {
        const gw_chan_refund_t *f = call->refund;
        if (f == NULL || !mb_present(f->out_refund_no)) return GW_EINVAL;
        if ((rc = mb_begin(call, F_REFUND_QUERY, f->out_refund_no, &d)) != GW_OK) goto fail;
        d_leaf(&d, "OutRefundNo", f->out_refund_no, 1);
        return mb_finish(call, &d, req);
    }
    if (o == NULL || !mb_present(o->out_trade_no)) return GW_EINVAL;
    if ((rc = mb_begin(call, F_QUERY, o->out_trade_no, &d)) != GW_OK) goto fail;
    d_leaf(&d, "OutTradeNo", o->out_trade_no, 1);
    return mb_finish(call, &d, req);
fail:
    mb_abort(&d);
    return rc;
}

static gw_err_t mb_refund(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    const gw_chan_refund_t *f = call->refund;
    mb_doc_t d;
    gw_err_t rc;

    memset(&d, 0, sizeof(d));
    if (o == NULL || f == NULL || !mb_present(o->out_trade_no) || !mb_present(f->out_refund_no) ||
        f->amount <= 0 || (f->total_amount > 0 && f->amount > f->total_amount))
        return GW_EINVAL;
    if ((rc = mb_begin(call, F_REFUND, f->out_refund_no, &d)) != GW_OK) goto fail;
    d_leaf(&d, "OutTradeNo", o->out_trade_no, 1);
    d_leaf(&d, "OutRefundNo", f->out_refund_no, 1);
    d_fen(&d, "RefundAmount", f->amount);
    d_leaf(&d, "RefundReason", f->reason, 0);
    d_leaf(&d, "DeviceCreateIp", mb_present(o->client_ip) ? o->client_ip : mb_cstr("127.0.0.1"), 1);
    return mb_finish(call, &d, req);
fail:
    mb_abort(&d);
    return rc;
}

static gw_err_t mb_close(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    const char *function = (call->flags & GW_CALL_REVERSE) ? F_CANCEL : F_CLOSE;
    mb_doc_t d;
    gw_err_t rc;

    memset(&d, 0, sizeof(d));
    if (o == NULL || !mb_present(o->out_trade_no)) return GW_EINVAL;
    if ((rc = mb_begin(call, function, o->out_trade_no, &d)) != GW_OK) goto fail;
    d_leaf(&d, "OutTradeNo", o->out_trade_no, 1);
    return mb_finish(call, &d, req);
fail:
    mb_abort(&d);
    return rc;
}

/* ------------------------------------------------------------------ */
/* responses */

static void mb_result_reset(gw_chan_result_t *res, int unknown)
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

static void mb_untrust(gw_chan_result_t *res, int unknown, const char *code, const char *msg)
{
    res->status = unknown;
    if (code) mb_copyz(res->raw_code, sizeof(res->raw_code), code);
    mb_copyz(res->raw_msg, sizeof(res->raw_msg), msg);
}

/* A field that, when present, must equal what we sent. */
static int mb_echo_ok(gw_str_t got, gw_str_t want)
{
    return !mb_present(got) || !mb_present(want) || mb_streq(got, want);
}

/* The common part of every *_parse: HTTP status, the bank's signature, the
 * envelope, Function and ReqMsgId, the merchant echo.  id is the trade or
 * refund number the ReqMsgId was made for.  Returns 1 with *kvp (keys
 * "head/…", "body/…"; the caller frees it) when the answer can be trusted
 * and says ResultStatus; 0 when res already says UNKNOWN; <0 on ENOMEM. */
static int mb_response(const gw_chan_call_t *call, const gw_chan_response_t *resp, gw_chan_result_t *res,
                       int unknown, const char *function, gw_str_t id, gw_kv_t **kvp)
{
    const mb_ctx_t *cx = call->ctx;
    const gw_host_api_t *h = call->host;
    const gw_chan_merchant_t *m = call->merchant;
    gw_kv_t *kv;
    gw_str_t v, st;
    gw_rsa_key_t *key;

    *kvp = NULL;
    mb_result_reset(res, unknown);
    if (resp == NULL) {
        mb_untrust(res, unknown, NULL, "paygate: no response");
        return 0;
    }
    if (resp->status != 200) {
        snprintf(res->raw_code, sizeof(res->raw_code), "HTTP_%d", resp->status);
        mb_copyz(res->raw_msg, sizeof(res->raw_msg), "paygate: unexpected HTTP status");
        return 0;
    }
    if (m == NULL || !mb_present(m->mch_id)) {
        mb_untrust(res, unknown, "GW_EINVAL", "paygate: no merchant");
        return 0;
    }
    if ((key = mb_bank_key(cx, h, m)) == NULL) {
        mb_untrust(res, unknown, "GW_EKEY", "paygate: no bank public key to verify the answer with");
        return 0;
    }
    if (resp->body.ptr == NULL || h->xmldsig_verify(resp->body.ptr, resp->body.len, key, NULL) != GW_OK) {
        mb_untrust(res, unknown, "GW_ESIGN", "paygate: response signature does not verify");
        if (h->log)
            h->log(call->ctx, GW_LOG_WARN_, "%s: response signature does not verify (MerchantId %.*s)",
                   function, (int)(m->mch_id.len > 64 ? 64 : m->mch_id.len), m->mch_id.ptr);
        return 0;
    }
    kv = h->kv_new();
    if (kv == NULL) return GW_ENOMEM;
    if (h->xml_kv(resp->body.ptr, resp->body.len, "document/response", kv) != GW_OK) {
        mb_untrust(res, unknown, "GW_EPARSE", "paygate: response is not a document/response");
        goto untrusted;
    }
    if (!mb_eq(h->kv_get(kv, "head/Function"), function)) {
        mb_untrust(res, unknown, "GW_EFUNCTION", "paygate: response is for another Function");
        goto untrusted;
    }
    if (!mb_msgid_ok(cx, h, function, m->mch_id, id, h->kv_get(kv, "head/ReqMsgId"))) {
        mb_untrust(res, unknown, "GW_EMSGID", "paygate: response answers another request (ReqMsgId)");
        if (h->log) h->log(call->ctx, GW_LOG_WARN_, "%s: signed response with a foreign ReqMsgId", function);
        goto untrusted;
    }
    v = h->kv_get(kv, "body/MerchantId");
    if (!mb_echo_ok(v, m->mch_id)) {
        mb_untrust(res, unknown, "GW_EMCHID", "paygate: response is for another merchant");
        goto untrusted;
    }
    mb_copy(res->mch_id, sizeof(res->mch_id), m->mch_id);
    v = h->kv_get(kv, "body/IsvOrgId");
    if (cx->isv_org_id[0] && !mb_echo_ok(v, mb_cstr(cx->isv_org_id))) {
        mb_untrust(res, unknown, "GW_EISV", "paygate: response is for another IsvOrgId");
        goto untrusted;
    }
    st = h->kv_get(kv, "body/RespInfo/ResultStatus");
    mb_copy(res->raw_msg, sizeof(res->raw_msg), h->kv_get(kv, "body/RespInfo/ResultMsg"));
    if (!mb_eq(st, "S") && !mb_eq(st, "F") && !mb_eq(st, "U")) {
        snprintf(res->raw_code, sizeof(res->raw_code), "ResultStatus=%.*s", (int)(st.len > 40 ? 40 : st.len),
                 st.ptr ? st.ptr : "");
        goto untrusted;
    }
    v = h->kv_get(kv, "body/RespInfo/ResultCode");
    if (!mb_eq(st, "S")) {
        /* F/U: the bank's code, e.g. "F:ORDER_NOT_EXIST" */
        snprintf(res->raw_code, sizeof(res->raw_code), "%c:%.*s", st.ptr[0], (int)(v.len > 64 ? 64 : v.len),
                 v.ptr ? v.ptr : "");
    }
    mb_copy(res->channel_trade_no, sizeof(res->channel_trade_no), h->kv_get(kv, "body/OrderNo"));
    *kvp = kv;
    return 1;
untrusted:
    h->kv_free(kv);
    return 0;
}

static char mb_result_status(const gw_host_api_t *h, const gw_kv_t *kv)
{
    gw_str_t st = h->kv_get(kv, "body/RespInfo/ResultStatus");
    return st.len == 1 ? st.ptr[0] : '?';
}

/* TradeStatus of a trade → gw_pay_status_t (PROTOCOLS.md §B.5). */
static int mb_trade_status(gw_str_t ts, int barcode)
{
    if (mb_eq(ts, "succ")) return GW_PAY_SUCCESS;
    if (mb_eq(ts, "refunding")) return GW_PAY_REFUNDED;
    if (mb_eq(ts, "closed")) return GW_PAY_CLOSED;
    if (mb_eq(ts, "cancel")) return GW_PAY_REVERSED;
    if (mb_eq(ts, "fail")) return GW_PAY_FAILED;
    if (mb_eq(ts, "paying")) return barcode ? GW_PAY_USER_PAYING : GW_PAY_NOT_PAID;
    return GW_PAY_UNKNOWN;
}

/* TradeStatus of a refund → gw_refund_status_t. */
static int mb_refund_status(gw_str_t ts)
{
    if (mb_eq(ts, "succ")) return GW_REFUND_SUCCESS;
    if (mb_eq(ts, "fail")) return GW_REFUND_FAILED;
    if (mb_eq(ts, "refunding")) return GW_REFUND_PROCESSING;
    return GW_REFUND_UNKNOWN;
}

/* The order echo: OutTradeNo and TotalAmount, when present, must be ours.
 * 0 (and res UNKNOWN) when they are not. */
static int mb_order_echo(const gw_host_api_t *h, const gw_kv_t *kv, const gw_chan_order_t *o,
                         gw_chan_result_t *res)
{
    if (o == NULL) {
        mb_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: no order");
        return 0;
    }
    if (!mb_echo_ok(h->kv_get(kv, "body/OutTradeNo"), o->out_trade_no)) {
        mb_untrust(res, GW_PAY_UNKNOWN, "GW_EORDER", "paygate: response is for another order");
        return 0;
    }
    res->amount = mb_fen(h->kv_get(kv, "body/TotalAmount"));
    if (res->amount >= 0 && o->amount > 0 && res->amount != o->amount) {
        mb_untrust(res, GW_PAY_UNKNOWN, "GW_EAMOUNT", "paygate: the answer states another amount");
        return 0;
    }
    return 1;
}

/* pay_data of a prePay: QR → {"code_url":QrCodeUrl}; JSAPI →
 * {"pay_info":PayInfo} (embedded as an object when it is a JSON object).
 * The other field is accepted as a fallback.  GW_EPARSE when neither is
 * there. */
static gw_err_t mb_pay_data(const gw_host_api_t *h, const gw_kv_t *kv, uint32_t method, gw_buf_t *out)
{
    gw_str_t qr = h->kv_get(kv, "body/QrCodeUrl"), pi = h->kv_get(kv, "body/PayInfo");
    int jsapi = method == GW_METHOD_WECHAT_JSAPI || method == GW_METHOD_ALIPAY_JSAPI;
    gw_err_t rc;

    if (!mb_present(qr) && !mb_present(pi)) return GW_EPARSE;
    if (!jsapi && mb_present(qr)) {
        rc = h->buf_append(out, "{\"code_url\":", 12);
        if (rc == GW_OK) rc = h->json_quote(out, qr.ptr, qr.len);
    } else if (jsapi && mb_present(pi)) {
        size_t i = 0;
        while (i < pi.len && (pi.ptr[i] == ' ' || pi.ptr[i] == '\t' || pi.ptr[i] == '\r' || pi.ptr[i] == '\n'))
            i++;
        gw_json_t *j = (i < pi.len && pi.ptr[i] == '{') ? h->json_parse(pi.ptr, pi.len) : NULL;
        rc = h->buf_append(out, "{\"pay_info\":", 12);
        if (rc == GW_OK) rc = j ? h->buf_append(out, pi.ptr, pi.len) : h->json_quote(out, pi.ptr, pi.len);
        if (j) h->json_free(j);
    } else {
        /* QR without QrCodeUrl: a PayInfo URL; JSAPI without PayInfo: the URL */
        gw_str_t u = mb_present(qr) ? qr : pi;
        rc = h->buf_append(out, jsapi ? "{\"pay_url\":" : "{\"code_url\":", jsapi ? 11 : 12);
        if (rc == GW_OK) rc = h->json_quote(out, u.ptr, u.len);
    }
    if (rc == GW_OK) rc = h->buf_append(out, "}", 1);
    return rc;
}

static gw_err_t mb_pay_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp, gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_order_t *o = call->order;
    int barcode = o != NULL && o->method == GW_METHOD_BARCODE;
    gw_kv_t *kv;
    gw_err_t rc = GW_OK;
    int t = mb_response(call, resp, res, GW_PAY_UNKNOWN, barcode ? F_PAY : F_PREPAY,
                        o ? o->out_trade_no : mb_cstr(""), &kv);

    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (!mb_order_echo(h, kv, o, res)) goto out;
    switch (mb_result_status(h, kv)) {
    case 'S':
        if (barcode) {
            /* paid, unless the answer carries a TradeStatus that says otherwise */
            gw_str_t ts = h->kv_get(kv, "body/TradeStatus");
            res->status = mb_present(ts) ? mb_trade_status(ts, 1) : GW_PAY_SUCCESS;
            mb_copy(res->raw_code, sizeof(res->raw_code), mb_present(ts) ? ts : mb_cstr("succ"));
            break;
        }
        rc = mb_pay_data(h, kv, o->method, &res->pay_data);
        if (rc == GW_OK) {
            res->status = GW_PAY_PENDING;
            mb_copyz(res->raw_code, sizeof(res->raw_code), "S");
        } else {
            /* never hand out half a pay_data; the order exists: query it */
            h->buf_reset(&res->pay_data);
            mb_untrust(res, GW_PAY_UNKNOWN, "S", rc == GW_EPARSE ? "paygate: created, but without QrCodeUrl/PayInfo"
                                                                 : "paygate: payment parameters too large");
            if (rc != GW_ENOMEM) rc = GW_OK;
        }
        break;
    case 'U':
        /* b-to-c: the customer is confirming (password): poll, then payCancel */
        res->status = barcode ? GW_PAY_USER_PAYING : GW_PAY_UNKNOWN;
        break;
    case 'F':
        res->status = GW_PAY_FAILED;
        break;
    default:
        res->status = GW_PAY_UNKNOWN;
    }
out:
    h->kv_free(kv);
    return rc;
}

static gw_err_t mb_refund_query_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                                      gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_refund_t *f = call->refund;
    gw_kv_t *kv;
    int t = mb_response(call, resp, res, GW_REFUND_UNKNOWN, F_REFUND_QUERY, f ? f->out_refund_no : mb_cstr(""),
                        &kv);

    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (f == NULL) {
        mb_untrust(res, GW_REFUND_UNKNOWN, NULL, "paygate: no refund");
        goto out;
    }
    if (mb_result_status(h, kv) != 'S') {
        /* the query failed (e.g. no such refund yet): nothing learned */
        res->status = GW_REFUND_UNKNOWN;
        goto out;
    }
    if (!mb_echo_ok(h->kv_get(kv, "body/OutRefundNo"), f->out_refund_no)) {
        mb_untrust(res, GW_REFUND_UNKNOWN, "GW_EREFUND", "paygate: response is for another refund");
        goto out;
    }
    gw_str_t ts = h->kv_get(kv, "body/TradeStatus");
    mb_copy(res->raw_code, sizeof(res->raw_code), ts);
    res->amount = mb_fen(h->kv_get(kv, "body/RefundAmount"));
    mb_copy(res->channel_refund_no, sizeof(res->channel_refund_no), h->kv_get(kv, "body/RefundOrderNo"));
    if (res->amount >= 0 && f->amount > 0 && res->amount != f->amount) {
        mb_untrust(res, GW_REFUND_UNKNOWN, "GW_EAMOUNT", "paygate: the answer states another refund amount");
        goto out;
    }
    res->status = mb_refund_status(ts);
out:
    h->kv_free(kv);
    return GW_OK;
}

static gw_err_t mb_query_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp, gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_order_t *o = call->order;
    gw_kv_t *kv;
    int t;

    if (call->flags & GW_CALL_REFUND_QUERY) return mb_refund_query_parse(call, resp, res);
    t = mb_response(call, resp, res, GW_PAY_UNKNOWN, F_QUERY, o ? o->out_trade_no : mb_cstr(""), &kv);
    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (!mb_order_echo(h, kv, o, res)) goto out;
    if (mb_result_status(h, kv) != 'S') {
        /* the query failed (F, e.g. no such trade) or is unclear (U) */
        res->status = GW_PAY_UNKNOWN;
        goto out;
    }
    gw_str_t ts = h->kv_get(kv, "body/TradeStatus");
    mb_copy(res->raw_code, sizeof(res->raw_code), ts);
    res->status = mb_trade_status(ts, o->method == GW_METHOD_BARCODE);
out:
    h->kv_free(kv);
    return GW_OK;
}

static gw_err_t mb_refund_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp, gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_refund_t *f = call->refund;
    gw_kv_t *kv;
    int t = mb_response(call, resp, res, GW_REFUND_UNKNOWN, F_REFUND, f ? f->out_refund_no : mb_cstr(""), &kv);

    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (f == NULL) {
        mb_untrust(res, GW_REFUND_UNKNOWN, NULL, "paygate: no refund");
        goto out;
    }
    if (!mb_echo_ok(h->kv_get(kv, "body/OutRefundNo"), f->out_refund_no) ||
        (call->order && !mb_echo_ok(h->kv_get(kv, "body/OutTradeNo"), call->order->out_trade_no))) {
        mb_untrust(res, GW_REFUND_UNKNOWN, "GW_EREFUND", "paygate: response is for another refund");
        goto out;
    }
    switch (mb_result_status(h, kv)) {
    case 'S': {
        res->amount = mb_fen(h->kv_get(kv, "body/RefundAmount"));
        mb_copy(res->channel_refund_no, sizeof(res->channel_refund_no), h->kv_get(kv, "body/RefundOrderNo"));
        if (res->amount >= 0 && res->amount != f->amount) {
            mb_untrust(res, GW_REFUND_UNKNOWN, "GW_EAMOUNT", "paygate: the answer states another refund amount");
            break;
        }
        /* accepted: asynchronous unless the answer says how it ended */
        gw_str_t ts = h->kv_get(kv, "body/TradeStatus");
        int st = mb_present(ts) ? mb_refund_status(ts) : GW_REFUND_PROCESSING;
        res->status = st == GW_REFUND_UNKNOWN ? GW_REFUND_PROCESSING : st;
        mb_copy(res->raw_code, sizeof(res->raw_code), mb_present(ts) ? ts : mb_cstr("refunding"));
        break;
    }
    case 'F': res->status = GW_REFUND_FAILED; break;
    default: res->status = GW_REFUND_UNKNOWN; break;
    }
out:
    h->kv_free(kv);
    return GW_OK;
}

static gw_err_t mb_close_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp, gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_order_t *o = call->order;
    int rev = (call->flags & GW_CALL_REVERSE) != 0;
    gw_kv_t *kv;
    int t = mb_response(call, resp, res, GW_PAY_UNKNOWN, rev ? F_CANCEL : F_CLOSE,
                        o ? o->out_trade_no : mb_cstr(""), &kv);

    if (t <= 0) return t < 0 ? (gw_err_t)t : GW_OK;
    if (o != NULL && !mb_echo_ok(h->kv_get(kv, "body/OutTradeNo"), o->out_trade_no)) {
        mb_untrust(res, GW_PAY_UNKNOWN, "GW_EORDER", "paygate: response is for another order");
    } else if (mb_result_status(h, kv) == 'S') {
        res->status = rev ? GW_PAY_REVERSED : GW_PAY_CLOSED;
        mb_copyz(res->raw_code, sizeof(res->raw_code), rev ? "cancel" : "closed");
    } else {
        /* not closed (paid, too early, …): the order's state is for a query
         * to tell; an unclear cancel is to be repeated */
        res->status = GW_PAY_UNKNOWN;
        if (mb_result_status(h, kv) == 'U') res->retry = 1;
    }
    h->kv_free(kv);
    return GW_OK;
}

/* ------------------------------------------------------------------ */
/* notifications: ant.mybank.bkmerchanttrade.prePayNotice */

/* The acknowledgement: a response document echoing Function and ReqMsgId,
 * RespInfo status/code (S/0000 or F/…); signed with key when given. */
static gw_err_t mb_ack(const mb_ctx_t *cx, const gw_host_api_t *h, gw_str_t appid, gw_str_t msgid,
                       const char *status, const char *code, const char *msg, gw_rsa_key_t *key, gw_buf_t *out)
{
    mb_doc_t d;
    char id[MB_MSGID_LEN * 2 + 1];
    gw_err_t rc;
    memset(&d, 0, sizeof(d));
    d.h = h;
    h->buf_init(&d.b, 64 * 1024);
    mb_copy(id, sizeof(id), msgid);
    d_head(&d, cx, "response", F_NOTICE, mb_present(appid) ? appid : mb_cstr(cx->appid), id);
    d_raw(&d, "<RespInfo>");
    d_leafz(&d, "ResultStatus", status);
    d_leafz(&d, "ResultCode", code);
    d_leaf(&d, "ResultMsg", mb_cstr(msg), 1);
    d_raw(&d, "</RespInfo>");
    d_end(&d, "response");
    rc = d.err;
    h->buf_reset(out);
    if (rc == GW_OK) rc = key ? h->xmldsig_sign(d.b.data, d.b.len, key, out) : h->buf_append(out, d.b.data, d.b.len);
    h->buf_free(&d.b);
    return rc;
}

static gw_err_t mb_ack_fail(const mb_ctx_t *cx, const gw_host_api_t *h, const gw_chan_notify_in_t *in,
                            gw_chan_notify_t *out)
{
    gw_buf_t appid, msgid;
    gw_err_t rc;
    h->buf_init(&appid, MB_ID_MAX);
    h->buf_init(&msgid, 128);
    if (in && in->body.ptr) {
        /* echo what can be read; too long or absent → empty */
        if (h->xml_get(in->body.ptr, in->body.len, "document/request/head/ReqMsgId", &msgid) != GW_OK)
            h->buf_reset(&msgid);
        if (h->xml_get(in->body.ptr, in->body.len, "document/request/head/Appid", &appid) != GW_OK)
            h->buf_reset(&appid);
    }
    out->ack_fail_status = 200;
    mb_copyz(out->ack_fail_type, sizeof(out->ack_fail_type), MB_CONTENT_TYPE);
    /* unsigned: nothing the sender chose is signed before it is trusted */
    rc = mb_ack(cx, h, (gw_str_t){ appid.data, appid.len }, (gw_str_t){ msgid.data, msgid.len }, "F", "9999",
                "paygate: notification refused", NULL, &out->ack_fail_body);
    h->buf_free(&appid);
    h->buf_free(&msgid);
    return rc;
}

static gw_err_t mb_notify_parse(void *ctx, const gw_host_api_t *host, const gw_chan_notify_in_t *in,
                                gw_chan_notify_t *out)
{
    const mb_ctx_t *cx = ctx;
    gw_buf_t v;
    gw_err_t rc;

    out->kind = GW_NOTIFY_PAY;
    out->mch_id[0] = out->out_trade_no[0] = out->out_refund_no[0] = '\0';
    if (!mb_host_ok(host)) return GW_ENOTSUP;
    if ((rc = mb_ack_fail(cx, host, in, out)) != GW_OK) return rc;
    if (in == NULL || in->body.ptr == NULL || in->body.len == 0) return GW_EPARSE;
    host->buf_init(&v, 256);
    rc = host->xml_get(in->body.ptr, in->body.len, "document/request/head/Function", &v);
    if (rc != GW_OK || !mb_eq((gw_str_t){ v.data, v.len }, F_NOTICE)) goto bad;
    host->buf_reset(&v);
    rc = host->xml_get(in->body.ptr, in->body.len, "document/request/body/MerchantId", &v);
    if (rc != GW_OK || v.len == 0 || v.len >= sizeof(out->mch_id)) goto bad;
    mb_copy(out->mch_id, sizeof(out->mch_id), (gw_str_t){ v.data, v.len });
    host->buf_reset(&v);
    rc = host->xml_get(in->body.ptr, in->body.len, "document/request/body/OutTradeNo", &v);
    if (rc != GW_OK || v.len == 0 || v.len >= sizeof(out->out_trade_no)) goto bad;
    mb_copy(out->out_trade_no, sizeof(out->out_trade_no), (gw_str_t){ v.data, v.len });
    host->buf_free(&v);
    return GW_OK;
bad:
    host->buf_free(&v);
    out->mch_id[0] = out->out_trade_no[0] = '\0';
    return rc == GW_ENOMEM ? rc : GW_EPARSE;
}

static gw_err_t mb_notify_verify(const gw_chan_call_t *call, const gw_chan_notify_in_t *in, gw_chan_notify_t *out)
{
    const mb_ctx_t *cx = call->ctx;
    const gw_host_api_t *h = call->host;
    const gw_chan_merchant_t *m = call->merchant;
    gw_kv_t *kv = NULL;
    gw_rsa_key_t *key;
    gw_str_t v;
    gw_err_t rc;

    out->status = GW_PAY_UNKNOWN;
    out->amount = -1;
    out->channel_trade_no[0] = out->raw_code[0] = out->raw_msg[0] = '\0';
    if (!mb_host_ok(h)) return GW_ENOTSUP;
    if ((rc = mb_ack_fail(cx, h, in, out)) != GW_OK) return rc;
    if (in == NULL || in->body.ptr == NULL || in->body.len == 0) return GW_EPARSE;
    h->buf_reset(&out->sign_string);
    key = mb_bank_key(cx, h, m);
    if (key == NULL) {
        h->buf_appendf(&out->sign_string, "paygate: no bank public key (settings.bank_public_key)");
        return GW_ESIGN;
    }
    if (h->xmldsig_verify(in->body.ptr, in->body.len, key, &out->sign_string) != GW_OK) {
        if (h->log) h->log(call->ctx, GW_LOG_WARN_, "notification signature does not verify");
        return GW_ESIGN;
    }
    kv = h->kv_new();
    if (kv == NULL) return GW_ENOMEM;
    if (h->xml_kv(in->body.ptr, in->body.len, "document/request", kv) != GW_OK) {
        rc = GW_EPARSE;
        goto out;
    }
    /* signed, but must also be this kind of message, for this merchant and order */
    if (!mb_eq(h->kv_get(kv, "head/Function"), F_NOTICE) || m == NULL || !mb_present(m->mch_id) ||
        !mb_streq(h->kv_get(kv, "body/MerchantId"), m->mch_id) ||
        (cx->isv_org_id[0] && !mb_echo_ok(h->kv_get(kv, "body/IsvOrgId"), mb_cstr(cx->isv_org_id))) ||
        (call->order && !mb_echo_ok(h->kv_get(kv, "body/OutTradeNo"), call->order->out_trade_no))) {
        rc = GW_ESIGN;
        goto out;
    }
    out->amount = mb_fen(h->kv_get(kv, "body/TotalAmount"));
    mb_copy(out->channel_trade_no, sizeof(out->channel_trade_no), h->kv_get(kv, "body/OrderNo"));
    v = h->kv_get(kv, "body/TradeStatus");
    mb_copy(out->raw_code, sizeof(out->raw_code), v);
    /* a notice says "paid"; anything else is left to a query */
    out->status = mb_eq(v, "succ") ? GW_PAY_SUCCESS : GW_PAY_UNKNOWN;
    mb_copy(out->raw_msg, sizeof(out->raw_msg), h->kv_get(kv, "body/RespInfo/ResultMsg"));

    /* the acknowledgement, signed with the merchant's key (PHP AopClient::response) */
    gw_rsa_key_t *mkey = mb_present(m->private_key) ? h->rsa_private(m->private_key.ptr, m->private_key.len) : NULL;
    if (mkey == NULL && h->log)
        h->log(call->ctx, GW_LOG_WARN_, "no merchant private key: the acknowledgement goes unsigned");
    out->ack_ok_status = 200;
    mb_copyz(out->ack_ok_type, sizeof(out->ack_ok_type), MB_CONTENT_TYPE);
    rc = mb_ack(cx, h, h->kv_get(kv, "head/Appid"), h->kv_get(kv, "head/ReqMsgId"), "S", "0000", "", mkey,
                &out->ack_ok_body);
out:
    if (kv) h->kv_free(kv);
    return rc;
}

/* ------------------------------------------------------------------ */

/* Timing rules the core's follow-up tasks obey (ABI 1.1; 0 = core default),
 * docs/channels/mybank.md: the bank documents none, so b-to-c follows the
 * wallets behind it (Alipay: query every 3–6 s for about 60 s, then cancel
 * at once), and the first refund query waits 10 s (Alipay: query ≥ 10 s
 * after refunding). */
static const gw_chan_policy_t mb_policy = {
    .struct_size = sizeof(gw_chan_policy_t),
    .poll_interval_ms = 5000,
    .poll_deadline_ms = 60000,
    .reverse_min_age_ms = 0,
    .close_min_age_ms = 0,
    .refund_query_delay_ms = 10000,
};

static const gw_channel_t mb_channel = {
    .abi_version = GW_CHANNEL_ABI_VERSION,
    .struct_size = sizeof(gw_channel_t),
    .ctx_size = sizeof(mb_ctx_t),
    .methods = GW_METHOD_WECHAT_QR | GW_METHOD_WECHAT_JSAPI | GW_METHOD_ALIPAY_QR | GW_METHOD_ALIPAY_JSAPI |
               GW_METHOD_BARCODE,
    .name = GW_CHANNEL_NAME,
    .version = MB_VERSION,
    .build_sig = GW_CHANNEL_BUILD_SIG,
    .init = mb_init,
    .fini = mb_fini,
    .pay = mb_pay,
    .pay_parse = mb_pay_parse,
    .query = mb_query,
    .query_parse = mb_query_parse,
    .refund = mb_refund,
    .refund_parse = mb_refund_parse,
    .close = mb_close,
    .close_parse = mb_close_parse,
    .notify_parse = mb_notify_parse,
    .notify_verify = mb_notify_verify,
    /* added in 1.1 */
    .policy = &mb_policy,
};

GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry(void);

GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry(void)
{
    return &mb_channel;
}
