/*
 * mock.c — the test channel, and the worked example of docs/channels.md.
 *
 * A complete channel in one small file: it builds signed JSON requests and
 * verifies signed JSON responses and notifications.  Its wire protocol is
 * made up for tests (the simulators under test/ speak it):
 *
 *   request    POST <gateway_url>/<op>, op one of pay, query, refund-query,
 *              refund, close, reverse; a JSON body; headers
 *              "X-Mock-Signature: hex(HMAC-SHA256(merchant key, body))" and
 *              "X-Mock-Version: <module version>".
 *   response   200 with a JSON object carrying some of the SIGNED fields
 *              below and "sig" = hex(HMAC-SHA256(merchant key, S)), where S
 *              is "k=v&k=v…" over the signed fields present, byte-wise
 *              sorted by key, empty values left out, integers in decimal.
 *              "status" is SUCCESS, PENDING, USER_PAYING, NOT_PAID, CLOSED,
 *              REVERSED, FAILED or REFUNDED (refunds: PROCESSING, SUCCESS,
 *              FAILED); anything else, a bad "sig" or a non-200 answer is
 *              UNKNOWN.
 *   notify     the same object plus "kind": "pay" | "refund"; acknowledged
 *              with "ok v<module version>" (200) or "fail" (400).
 *
 * Settings: {"gateway_url": "http://…" (required), "version_tag": "…"}
 * (sent as X-Mock-Tag, to see which settings a generation was built with).
 *
 * Build variants for tests: -DMOCK_VERSION='"2.0.0"' (default "1.0.0"),
 * -DMOCK_BREAK_INIT (init always fails), -DMOCK_ABI_1_0 (declares ABI 1.0
 * and the 1.0 struct size, to test that the core ignores later members).
 */
#include "gw_channel.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#ifndef MOCK_VERSION
#define MOCK_VERSION "1.0.0"
#endif

/* Per-channel state: lives in the ctx_size block the core allocates. */
typedef struct {
    const gw_host_api_t *host;
    char gateway_url[512];
    char version_tag[64];
} mock_ctx_t;

/* Sorted, so the signing string is in this order anyway. */
static const char *const SIGNED[] = { "amount", "code", "code_url", "kind", "mch_id", "msg",
                                      "out_refund_no", "out_trade_no", "refund_no", "status",
                                      "trade_no", NULL };

static void put(char *dst, size_t n, const char *s)
{
    snprintf(dst, n, "%s", s ? s : "");
}

/* ---- life cycle ---- */

static gw_err_t mock_init(void *vctx, const gw_host_api_t *host, const char *settings,
                          size_t settings_len, gw_buf_t *err)
{
    mock_ctx_t *ctx = vctx;
    ctx->host = host;
#ifdef MOCK_BREAK_INIT
    host->buf_appendf(err, "broken on purpose (MOCK_BREAK_INIT)");
    return GW_EINVAL;
#endif
    gw_json_t *j = host->json_parse(settings, settings_len);
    const char *url = host->json_string(host->json_get(j, "gateway_url"));
    const char *tag = host->json_string(host->json_get(j, "version_tag"));
    gw_err_t rc = GW_EINVAL;
    if (j == NULL) {
        host->buf_appendf(err, "settings are not a JSON object");
    } else if (url == NULL || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)) {
        host->buf_appendf(err, "settings.gateway_url must be an http(s) URL");
    } else if (strlen(url) >= sizeof(ctx->gateway_url) || (tag && strlen(tag) >= sizeof(ctx->version_tag))) {
        host->buf_appendf(err, "settings.gateway_url or version_tag is too long");
    } else {
        put(ctx->gateway_url, sizeof(ctx->gateway_url), url);
        put(ctx->version_tag, sizeof(ctx->version_tag), tag);
        host->log(ctx, GW_LOG_INFO_, "v%s ready, gateway %s", MOCK_VERSION, ctx->gateway_url);
        rc = GW_OK;
    }
    host->json_free(j);
    return rc;
}

static void mock_fini(void *vctx)
{
    mock_ctx_t *ctx = vctx;
    ctx->host->log(ctx, GW_LOG_NOTICE_, "fini v%s", MOCK_VERSION);
}

/* ---- requests ---- */

static gw_err_t jstr(const gw_host_api_t *h, gw_buf_t *b, const char *k, gw_str_t v)
{
    gw_err_t rc = h->buf_appendf(b, "%s\"%s\":", b->len > 1 ? "," : "", k);
    return rc != GW_OK ? rc : h->json_quote(b, v.ptr, v.len);
}

static gw_err_t jint(const gw_host_api_t *h, gw_buf_t *b, const char *k, int64_t v)
{
    return h->buf_appendf(b, "%s\"%s\":%lld", b->len > 1 ? "," : "", k, (long long)v);
}

/* URL, headers and signature around a body that holds "{…" (without the
 * closing brace yet). */
static gw_err_t finish(const gw_chan_call_t *call, gw_chan_request_t *req, const char *op)
{
    const gw_host_api_t *h = call->host;
    const mock_ctx_t *ctx = call->ctx;
    const gw_str_t key = call->merchant->key;
    char nonce[17], hex[65];
    uint8_t mac[32];
    if (key.len == 0) return GW_EKEY;
    gw_err_t rc = h->nonce(nonce, 16);
    if (rc == GW_OK) rc = jstr(h, &req->body, "nonce", (gw_str_t){ nonce, 16 });
    if (rc == GW_OK) rc = h->buf_append(&req->body, "}", 1);
    if (rc != GW_OK) return rc;
    h->hmac_sha256(key.ptr, key.len, req->body.data, req->body.len, mac);
    h->hex_encode(mac, sizeof(mac), hex, 0);
    req->method = "POST";
    rc = h->buf_appendf(&req->url, "%s/%s", ctx->gateway_url, op);
    if (rc == GW_OK)
        rc = h->buf_appendf(&req->headers, "Content-Type: application/json\r\n"
                                           "X-Mock-Signature: %s\r\nX-Mock-Version: %s\r\n",
                            hex, MOCK_VERSION);
    if (rc == GW_OK && ctx->version_tag[0])
        rc = h->buf_appendf(&req->headers, "X-Mock-Tag: %s\r\n", ctx->version_tag);
    if (rc == GW_OK) rc = h->buf_append(&req->sign_string, req->body.data, req->body.len);
    return rc;
}

static gw_err_t mock_pay(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_order_t *o = call->order;
    gw_buf_t *b = &req->body;
    gw_err_t rc = h->buf_append(b, "{", 1);
    if (rc == GW_OK) rc = jstr(h, b, "mch_id", call->merchant->mch_id);
    if (rc == GW_OK) rc = jstr(h, b, "out_trade_no", o->out_trade_no);
    if (rc == GW_OK) rc = jint(h, b, "amount", o->amount);
    if (rc == GW_OK) rc = jstr(h, b, "subject", o->subject);
    if (rc == GW_OK) rc = jint(h, b, "method", o->method);
    if (rc == GW_OK && o->auth_code.len) rc = jstr(h, b, "auth_code", o->auth_code);
    if (rc == GW_OK && o->payer_id.len) rc = jstr(h, b, "payer_id", o->payer_id);
    if (rc == GW_OK) rc = jstr(h, b, "notify_url", o->notify_url);
    return rc != GW_OK ? rc : finish(call, req, "pay");
}

static gw_err_t mock_query(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_host_api_t *h = call->host;
    int refund = (call->flags & GW_CALL_REFUND_QUERY) != 0;
    gw_buf_t *b = &req->body;
    gw_err_t rc = h->buf_append(b, "{", 1);
    if (rc == GW_OK) rc = jstr(h, b, "mch_id", call->merchant->mch_id);
    if (rc == GW_OK) rc = jstr(h, b, "out_trade_no", call->order->out_trade_no);
    if (rc == GW_OK && refund) {
        if (call->refund == NULL) return GW_EINVAL;
        rc = jstr(h, b, "out_refund_no", call->refund->out_refund_no);
    }
    return rc != GW_OK ? rc : finish(call, req, refund ? "refund-query" : "query");
}

static gw_err_t mock_refund(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_refund_t *r = call->refund;
    gw_buf_t *b = &req->body;
    if (r == NULL) return GW_EINVAL;
    gw_err_t rc = h->buf_append(b, "{", 1);
    if (rc == GW_OK) rc = jstr(h, b, "mch_id", call->merchant->mch_id);
    if (rc == GW_OK) rc = jstr(h, b, "out_trade_no", call->order->out_trade_no);
    if (rc == GW_OK) rc = jstr(h, b, "out_refund_no", r->out_refund_no);
    if (rc == GW_OK) rc = jint(h, b, "amount", r->amount);
    if (rc == GW_OK) rc = jint(h, b, "total_amount", r->total_amount);
    if (rc == GW_OK) rc = jstr(h, b, "reason", r->reason);
    return rc != GW_OK ? rc : finish(call, req, "refund");
}

static gw_err_t mock_close(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_host_api_t *h = call->host;
    gw_buf_t *b = &req->body;
    gw_err_t rc = h->buf_append(b, "{", 1);
    if (rc == GW_OK) rc = jstr(h, b, "mch_id", call->merchant->mch_id);
    if (rc == GW_OK) rc = jstr(h, b, "out_trade_no", call->order->out_trade_no);
    return rc != GW_OK ? rc : finish(call, req, (call->flags & GW_CALL_REVERSE) ? "reverse" : "close");
}

/* ---- responses and notifications ---- */

/* GW_OK when obj's "sig" is the HMAC of its signed fields under key;
 * the signing string goes to sign_string (may be NULL). */
static gw_err_t verify(const gw_host_api_t *h, gw_str_t key, const gw_json_t *obj, gw_buf_t *sign_string)
{
    gw_buf_t s;
    h->buf_init(&s, 1 << 20);
    gw_kv_t *kv = h->kv_new();
    gw_err_t rc = kv ? GW_OK : GW_ENOMEM;
    for (size_t i = 0; rc == GW_OK && SIGNED[i]; i++) {
        const gw_json_t *v = h->json_get(obj, SIGNED[i]);
        const char *str = h->json_string(v);
        int64_t num;
        if (v == NULL) continue;
        if (str) rc = h->kv_add(kv, SIGNED[i], strlen(SIGNED[i]), str, strlen(str));
        else if (h->json_int(v, &num) == GW_OK) rc = h->kv_addf(kv, SIGNED[i], "%lld", (long long)num);
        else rc = GW_EPARSE; /* a signed field of another type */
    }
    if (rc == GW_OK) rc = h->kv_sign_string(kv, NULL, GW_KV_SORTED | GW_KV_DROP_EMPTY, &s);
    if (rc == GW_OK && sign_string) rc = h->buf_append(sign_string, s.data, s.len);
    if (rc == GW_OK) {
        const char *sig = h->json_string(h->json_get(obj, "sig"));
        uint8_t mac[32];
        char hex[65];
        h->hmac_sha256(key.ptr, key.len, s.data, s.len, mac);
        h->hex_encode(mac, sizeof(mac), hex, 0);
        if (key.len == 0 || sig == NULL || strlen(sig) != 64) rc = GW_ESIGN;
        else {
            unsigned char diff = 0;
            for (int i = 0; i < 64; i++) diff |= (unsigned char)(sig[i] ^ hex[i]);
            rc = diff ? GW_ESIGN : GW_OK;
        }
    }
    h->kv_free(kv);
    h->buf_free(&s);
    return rc;
}

static int map_status(const char *s, int refund)
{
    static const char *const pay[] = { "UNKNOWN", "PENDING", "SUCCESS", "USER_PAYING", "NOT_PAID",
                                       "CLOSED", "REVERSED", "FAILED", "REFUNDED", NULL };
    static const char *const ref[] = { "UNKNOWN", "PROCESSING", "SUCCESS", "FAILED", NULL };
    const char *const *names = refund ? ref : pay;
    for (int i = 0; s && names[i]; i++)
        if (strcmp(s, names[i]) == 0) return i;
    return 0; /* GW_PAY_UNKNOWN / GW_REFUND_UNKNOWN: never FAILED on doubt */
}

static gw_err_t parse(const gw_chan_call_t *call, const gw_chan_response_t *resp, gw_chan_result_t *res,
                      int refund)
{
    const gw_host_api_t *h = call->host;
    res->status = 0;
    res->amount = -1;
    if (resp->status != 200) {
        snprintf(res->raw_code, sizeof(res->raw_code), "HTTP %d", resp->status);
        return GW_OK;
    }
    gw_json_t *j = h->json_parse(resp->body.ptr, resp->body.len);
    if (j == NULL || verify(h, call->merchant->key, j, NULL) != GW_OK) {
        put(res->raw_msg, sizeof(res->raw_msg), j ? "bad signature" : "unparseable response");
        h->json_free(j);
        return GW_OK;
    }
    res->status = map_status(h->json_string(h->json_get(j, "status")), refund);
    if (h->json_int(h->json_get(j, "amount"), &res->amount) != GW_OK) res->amount = -1;
    put(res->channel_trade_no, sizeof(res->channel_trade_no), h->json_string(h->json_get(j, "trade_no")));
    put(res->channel_refund_no, sizeof(res->channel_refund_no), h->json_string(h->json_get(j, "refund_no")));
    put(res->mch_id, sizeof(res->mch_id), h->json_string(h->json_get(j, "mch_id")));
    put(res->raw_code, sizeof(res->raw_code), h->json_string(h->json_get(j, "code")));
    put(res->raw_msg, sizeof(res->raw_msg), h->json_string(h->json_get(j, "msg")));
    const char *code_url = h->json_string(h->json_get(j, "code_url"));
    gw_err_t rc = GW_OK;
    if (code_url) {
        rc = h->buf_append(&res->pay_data, "{\"code_url\":", 12);
        if (rc == GW_OK) rc = h->json_quote(&res->pay_data, code_url, strlen(code_url));
        if (rc == GW_OK) rc = h->buf_append(&res->pay_data, "}", 1);
    }
    h->json_free(j);
    return rc;
}

static gw_err_t mock_pay_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                               gw_chan_result_t *res)
{
    return parse(call, resp, res, 0);
}

static gw_err_t mock_query_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                                 gw_chan_result_t *res)
{
    return parse(call, resp, res, (call->flags & GW_CALL_REFUND_QUERY) != 0);
}

static gw_err_t mock_refund_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                                  gw_chan_result_t *res)
{
    return parse(call, resp, res, 1);
}

static gw_err_t mock_close_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                                 gw_chan_result_t *res)
{
    return parse(call, resp, res, 0);
}

static gw_err_t ack_fail(const gw_host_api_t *h, gw_chan_notify_t *out)
{
    out->ack_fail_status = 400;
    put(out->ack_fail_type, sizeof(out->ack_fail_type), "text/plain");
    h->buf_reset(&out->ack_fail_body);
    return h->buf_append(&out->ack_fail_body, "fail", 4);
}

/* Step 1: who is it for?  Nothing here is trusted yet. */
static gw_err_t mock_notify_parse(void *ctx, const gw_host_api_t *h, const gw_chan_notify_in_t *in,
                                  gw_chan_notify_t *out)
{
    gw_err_t rc = ack_fail(h, out);
    gw_json_t *j = h->json_parse(in->body.ptr, in->body.len);
    const char *kind = h->json_string(h->json_get(j, "kind"));
    const char *mch_id = h->json_string(h->json_get(j, "mch_id"));
    if (rc == GW_OK && (kind == NULL || mch_id == NULL)) rc = GW_EPARSE;
    if (rc == GW_OK) {
        out->kind = strcmp(kind, "refund") == 0 ? GW_NOTIFY_REFUND : GW_NOTIFY_PAY;
        if (strcmp(kind, "pay") != 0 && out->kind != GW_NOTIFY_REFUND) rc = GW_EPARSE;
        put(out->mch_id, sizeof(out->mch_id), mch_id);
        put(out->out_trade_no, sizeof(out->out_trade_no), h->json_string(h->json_get(j, "out_trade_no")));
        put(out->out_refund_no, sizeof(out->out_refund_no), h->json_string(h->json_get(j, "out_refund_no")));
    }
    h->json_free(j);
    return rc;
}

/* Step 2: with that merchant's key, is it genuine, and what does it say? */
static gw_err_t mock_notify_verify(const gw_chan_call_t *call, const gw_chan_notify_in_t *in,
                                   gw_chan_notify_t *out)
{
    const gw_host_api_t *h = call->host;
    gw_err_t rc = ack_fail(h, out);
    gw_json_t *j = h->json_parse(in->body.ptr, in->body.len);
    if (rc == GW_OK) rc = j ? verify(h, call->merchant->key, j, &out->sign_string) : GW_EPARSE;
    if (rc == GW_OK) {
        int refund = out->kind == GW_NOTIFY_REFUND;
        out->status = map_status(h->json_string(h->json_get(j, "status")), refund);
        if (h->json_int(h->json_get(j, "amount"), &out->amount) != GW_OK) out->amount = -1;
        put(out->channel_trade_no, sizeof(out->channel_trade_no), h->json_string(h->json_get(j, "trade_no")));
        put(out->raw_code, sizeof(out->raw_code), h->json_string(h->json_get(j, "code")));
        put(out->raw_msg, sizeof(out->raw_msg), h->json_string(h->json_get(j, "msg")));
        out->ack_ok_status = 200;
        put(out->ack_ok_type, sizeof(out->ack_ok_type), "text/plain");
        h->buf_reset(&out->ack_ok_body);
        rc = h->buf_appendf(&out->ack_ok_body, "ok v%s", MOCK_VERSION);
    }
    h->json_free(j);
    return rc;
}

/* ---- the vtable and the one exported symbol ---- */

/* ABI 1.1: the timing rules the core's follow-up tasks obey (short, for tests). */
static const gw_chan_policy_t mock_policy = {
    .struct_size = sizeof(gw_chan_policy_t),
    .poll_interval_ms = 1000,
    .poll_deadline_ms = 6000,
    .reverse_min_age_ms = 0,
    .close_min_age_ms = 0,
    .refund_query_delay_ms = 1000,
};

static const gw_channel_t mock_channel = {
#ifdef MOCK_ABI_1_0
    /* built as an ABI 1.0 module would be: the struct ends at notify_verify,
     * so the core must not see the policy member set below */
    .abi_version = (1 << 16) | 0,
    .struct_size = offsetof(gw_channel_t, notify_verify) + sizeof(void *),
#else
    .abi_version = GW_CHANNEL_ABI_VERSION,
    .struct_size = sizeof(gw_channel_t),
#endif
    .ctx_size = sizeof(mock_ctx_t),
    .methods = GW_METHOD_WECHAT_QR | GW_METHOD_ALIPAY_QR | GW_METHOD_BARCODE,
    .name = GW_CHANNEL_NAME, /* "mock", from the Makefile */
    .version = MOCK_VERSION,
    .build_sig = GW_CHANNEL_BUILD_SIG,
    .init = mock_init,
    .fini = mock_fini,
    .pay = mock_pay,
    .pay_parse = mock_pay_parse,
    .query = mock_query,
    .query_parse = mock_query_parse,
    .refund = mock_refund,
    .refund_parse = mock_refund_parse,
    .close = mock_close,
    .close_parse = mock_close_parse,
    .notify_parse = mock_notify_parse,
    .notify_verify = mock_notify_verify,
    .policy = &mock_policy,
};

GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry(void);
GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry(void)
{
    return &mock_channel;
}
