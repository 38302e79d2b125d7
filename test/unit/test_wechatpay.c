/*
 * test_wechatpay.c — the WeChat Pay API v3 channel module (channels/wechatpay/).
 *
 * Every signature and every ciphertext is checked against an INDEPENDENT
 * computation:
 *   - requests: the test reads the Authorization header with its own parser,
 *     builds "METHOD\nPATH\nTS\nNONCE\nBODY\n" itself (PROTOCOLS.md §D.3) and
 *     asks `openssl dgst -sha256 -verify` with the merchant's public key;
 *   - answers and notifications: the test signs "TS\nNONCE\nBODY\n" with
 *     `openssl dgst -sha256 -sign` (platform certificate key, WeChat Pay
 *     public key, an attacker's key) and, for notifications, encrypts the
 *     resource with AEAD_AES_256_GCM through Node's crypto (`node -e`; the
 *     OpenSSL command line has no AEAD mode);
 *   - JSON bodies are read with cJSON directly, not through the host API.
 *
 * Keys: test/fixtures/wechatpay/ (throw-away keys and self-signed
 * certificates made with openssl, see its README.md).
 *
 * The suite runs twice (two cmocka groups): in-process (the module's source
 * #included here, so it runs under ASan+UBSan) and through dlopen of
 * build/asan/channels/wechatpay.so.  Run from the repository root.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "host.h"

/* the module under test, compiled into this binary with the sanitizers */
#include "../../channels/wechatpay/wechatpay.c"

#define SO_PATH "build/asan/channels/wechatpay.so"
#define FIX "test/fixtures/wechatpay/"

#define MCH "1900000109"
#define APPID "wxd678efh567hg6787"
#define APIV3_KEY "0123456789abcdef0123456789ABCDEF" /* 32 bytes */
#define MERCH_SERIAL "3D1F8A0C5B7E2946A1C3E5F7092B4D6E8F1A3C5E"
#define CERT_SERIAL "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
#define PUBKEY_ID "PUB_KEY_ID_0119000001092025010100000000000001"
#define OTN "PG20240101000001"
#define TXN "4200001234202401011234567890"

/* H, CH, DL, CTX, TMPD and the helpers every channel suite shares */
#include "chantest.h"

/* ------------------------------------------------------------------ */
/* test state */

static char *MERCH_PRIV, *PLAT_CERT, *PUBKEY_PUB, *ROGUE_CERT, *ROGUE_PUB;
static char SETTINGS[16384];
static gw_chan_merchant_t M;

/* a JSON string literal (quotes included) */
static char *jq(const char *s)
{
    cJSON *j = cJSON_CreateString(s);
    char *out = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return out;
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    assert_true(vasprintf(&s, fmt, ap) >= 0);
    va_end(ap);
    return s;
}

/* ------------------------------------------------------------------ */
/* the independent implementations: openssl and node */

/* Results of the external tools, keyed by their whole input: the same
 * signed answer is needed many times (and again by the dlopen group), and
 * every answer is signed with the fixed timestamp TS0 (+ offset) and a fixed
 * nonce, so spawning openssl/node once per distinct input is enough. */
typedef struct memo {
    struct memo *next;
    char *key, *val;
} memo_t;
static memo_t *MEMO;
static long TS0;

static const char *memo_get(const char *key)
{
    for (memo_t *m = MEMO; m; m = m->next)
        if (strcmp(m->key, key) == 0) return m->val;
    return NULL;
}

static char *memo_put(char *key, const char *val)
{
    memo_t *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    m->key = key;
    m->val = strdup(val);
    m->next = MEMO;
    MEMO = m;
    return strdup(val);
}

static void memo_free(void)
{
    while (MEMO) {
        memo_t *m = MEMO;
        MEMO = m->next;
        free(m->key);
        free(m->val);
        free(m);
    }
}

static char *ossl_sign_raw(const char *keyfile, const char *s);

/* Base64 SHA256withRSA signature of s by `openssl dgst` (memoised). */
static char *ossl_sign(const char *keyfile, const char *s)
{
    char *key = xasprintf("sign\1%s\1%s", keyfile, s);
    const char *hit = memo_get(key);
    if (hit) {
        free(key);
        return strdup(hit);
    }
    char *r = ossl_sign_raw(keyfile, s);
    char *out = memo_put(key, r);
    free(r);
    return out;
}

static char *ossl_sign_raw(const char *keyfile, const char *s)
{
    char *r = ct_ossl_sign_n(keyfile, "sha256", s, strlen(s));
    assert_true(strlen(r) > 300);
    return r;
}

/* 1 when `openssl dgst -verify` accepts the Base64 signature of s. */
static int ossl_verify(const char *pubfile, const char *s, const char *sig_b64)
{
    return ct_ossl_verify(pubfile, "sha256", s, sig_b64);
}

static char *node_gcm_raw(const char *key, const char *nonce, const char *aad, const char *plain);

/* AEAD_AES_256_GCM by Node's crypto: Base64(ciphertext || 16-byte tag)
 * (memoised). */
static char *node_gcm(const char *key, const char *nonce, const char *aad, const char *plain)
{
    char *k = xasprintf("gcm\1%s\1%s\1%s\1%s", key, nonce, aad, plain);
    const char *hit = memo_get(k);
    if (hit) {
        free(k);
        return strdup(hit);
    }
    char *r = node_gcm_raw(key, nonce, aad, plain);
    char *out = memo_put(k, r);
    free(r);
    return out;
}

static char *node_gcm_raw(const char *key, const char *nonce, const char *aad, const char *plain)
{
    char kf[128], nf[128], af[128], pf[128], cmd[1024];
    int st;
    snprintf(kf, sizeof(kf), "%s/gcm.key", TMPD);
    snprintf(nf, sizeof(nf), "%s/gcm.nonce", TMPD);
    snprintf(af, sizeof(af), "%s/gcm.aad", TMPD);
    snprintf(pf, sizeof(pf), "%s/gcm.plain", TMPD);
    write_file(kf, key, strlen(key));
    write_file(nf, nonce, strlen(nonce));
    write_file(af, aad, strlen(aad));
    write_file(pf, plain, strlen(plain));
    snprintf(cmd, sizeof(cmd),
             "node -e 'const c=require(\"crypto\"),f=require(\"fs\"),r=(p)=>f.readFileSync(p);"
             "const x=c.createCipheriv(\"aes-256-gcm\",r(\"%s\"),r(\"%s\"));x.setAAD(r(\"%s\"));"
             "process.stdout.write(Buffer.concat([x.update(r(\"%s\")),x.final(),x.getAuthTag()]).toString(\"base64\"))'",
             kf, nf, af, pf);
    char *r = sh(cmd, &st);
    assert_int_equal(st, 0);
    assert_true(strlen(r) > 16);
    return r;
}

/* ------------------------------------------------------------------ */
/* signed answers */

typedef struct {
    const char *keyfile; /* signing key; NULL: no signature headers at all */
    const char *serial;  /* Wechatpay-Serial */
    long ts_off;         /* seconds added to now */
    const char *extra;   /* extra header lines */
    const char *sig;     /* overrides the signature */
} signer_t;

static const signer_t BY_CERT = { FIX "platform_priv.pem", CERT_SERIAL, 0, NULL, NULL };
static const signer_t BY_PUBKEY = { FIX "pubkey_priv.pem", PUBKEY_ID, 0, NULL, NULL };

/* "Wechatpay-…" header lines for body, signed as sg says. */
static char *mkheaders(const signer_t *sg, const char *body)
{
    if (sg == NULL || sg->keyfile == NULL) return xasprintf("Content-Type: application/json\r\n");
    char ts[32], nonce[40];
    /* offsets are tested against the live clock; plain answers use TS0 */
    snprintf(ts, sizeof(ts), "%ld", sg->ts_off ? (long)time(NULL) + sg->ts_off : TS0);
    snprintf(nonce, sizeof(nonce), "%s", "593BEC0C930BF1AFEB40B4A08C8FB242");
    char *s = xasprintf("%s\n%s\n%s\n", ts, nonce, body);
    char *sig = sg->sig ? strdup(sg->sig) : ossl_sign(sg->keyfile, s);
    char *h = xasprintf("Server: nginx\r\nDate: Mon, 01 Jan 2024 04:00:00 GMT\r\nContent-Type: application/json\r\n"
                        "Request-ID: 08F4D3E1B20610C80118A0B5C0A00620B2C60128AE9A-0\r\n"
                        "Wechatpay-Nonce: %s\r\nWechatpay-Signature: %s\r\nWechatpay-Timestamp: %s\r\n"
                        "Wechatpay-Serial: %s\r\n%s",
                        nonce, sig, ts, sg->serial, sg->extra ? sg->extra : "");
    free(s);
    free(sig);
    return h;
}

/* ------------------------------------------------------------------ */
/* calls */

static void req_init(gw_chan_request_t *r)
{
    ct_req_init(r, 4096, 16384, 65536, 65536);
}

static gw_chan_order_t order_native(void)
{
    gw_chan_order_t o;
    memset(&o, 0, sizeof(o));
    o.out_trade_no = S(OTN);
    o.amount = 1234;
    o.currency = S("CNY");
    o.subject = S("测试商品 \"quoted\" \\ <&>");
    o.method = GW_METHOD_WECHAT_QR;
    o.client_ip = S("203.0.113.7");
    o.notify_url = S("https://pay.example.com/notify/wechatpay");
    return o;
}

static gw_chan_order_t order_jsapi(void)
{
    gw_chan_order_t o = order_native();
    o.method = GW_METHOD_WECHAT_JSAPI;
    o.payer_id = S("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
    return o;
}

static gw_chan_order_t order_codepay(void)
{
    gw_chan_order_t o = order_native();
    o.method = GW_METHOD_BARCODE;
    o.auth_code = S("134567890123456789");
    o.notify_url = S("");
    return o;
}

static gw_chan_refund_t refund_of(int64_t amount)
{
    gw_chan_refund_t r;
    memset(&r, 0, sizeof(r));
    r.out_refund_no = S("RF20240101000001");
    r.amount = amount;
    r.total_amount = 1234;
    r.reason = S("too sweet");
    return r;
}

/* ---- the Authorization header, read independently ---- */

typedef struct {
    char mchid[64], nonce[64], signature[1024], timestamp[32], serial[80];
    int items;
} auth_t;

static void header_value(const char *headers, const char *name, char *out, size_t cap)
{
    out[0] = '\0';
    size_t n = strlen(name);
    for (const char *p = headers; p && *p;) {
        const char *e = strstr(p, "\r\n");
        assert_non_null(e);
        if ((size_t)(e - p) > n + 1 && strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ') v++;
            snprintf(out, cap, "%.*s", (int)(e - v), v);
            return;
        }
        p = e + 2;
    }
}

static void parse_auth(const char *headers, auth_t *a)
{
    char v[2048];
    memset(a, 0, sizeof(*a));
    header_value(headers, "Authorization", v, sizeof(v));
    assert_true(strncmp(v, "WECHATPAY2-SHA256-RSA2048 ", 26) == 0);
    char *p = v + 26;
    while (*p) {
        char *eq = strchr(p, '=');
        assert_non_null(eq);
        assert_true(eq[1] == '"');
        char *end = strchr(eq + 2, '"');
        assert_non_null(end);
        char key[32];
        snprintf(key, sizeof(key), "%.*s", (int)(eq - p), p);
        int vl = (int)(end - eq - 2);
        char *dst = NULL;
        size_t cap = 0;
        if (strcmp(key, "mchid") == 0) dst = a->mchid, cap = sizeof(a->mchid);
        else if (strcmp(key, "nonce_str") == 0) dst = a->nonce, cap = sizeof(a->nonce);
        else if (strcmp(key, "signature") == 0) dst = a->signature, cap = sizeof(a->signature);
        else if (strcmp(key, "timestamp") == 0) dst = a->timestamp, cap = sizeof(a->timestamp);
        else if (strcmp(key, "serial_no") == 0) dst = a->serial, cap = sizeof(a->serial);
        assert_non_null(dst);
        assert_int_equal(dst[0], '\0'); /* each item once */
        snprintf(dst, cap, "%.*s", vl, eq + 2);
        a->items++;
        p = end + 1;
        if (*p == ',') p++;
        else assert_int_equal(*p, '\0');
    }
    assert_int_equal(a->items, 5);
}

/* Builds a request, checks its signature independently, returns its JSON
 * body (NULL for GET). */
static cJSON *build(build_fn fn, const gw_chan_call_t *c, gw_chan_request_t *req, const char *method,
                    const char *path)
{
    req_init(req);
    assert_int_equal(fn(c, req), GW_OK);
    assert_string_equal(req->method, method);
    char *url = xasprintf("https://api.mch.weixin.qq.com%s", path);
    if (strncmp(req->url.data, "https://api.mch.weixin.qq.com", 29) == 0) assert_string_equal(req->url.data, url);
    free(url);
    char v[256];
    header_value(req->headers.data, "Accept", v, sizeof(v));
    assert_string_equal(v, "application/json");
    header_value(req->headers.data, "User-Agent", v, sizeof(v));
    assert_true(strlen(v) > 0);
    header_value(req->headers.data, "Content-Type", v, sizeof(v));
    assert_string_equal(v, strcmp(method, "GET") == 0 ? "" : "application/json");
    auth_t a;
    parse_auth(req->headers.data, &a);
    assert_string_equal(a.mchid, MCH);
    assert_string_equal(a.serial, MERCH_SERIAL);
    assert_int_equal(strlen(a.nonce), 32);
    long ts = atol(a.timestamp);
    assert_true(labs(ts - (long)time(NULL)) <= 5);
    const char *body = req->body.data ? req->body.data : "";
    if (strcmp(method, "GET") == 0) assert_int_equal(req->body.len, 0);
    char *s = xasprintf("%s\n%s\n%s\n%s\n%s\n", method, path, a.timestamp, a.nonce, body);
    assert_string_equal(req->sign_string.data, s);
    assert_true(ossl_verify(FIX "merchant_pub.pem", s, a.signature));
    /* the secrets are nowhere */
    assert_null(strstr(req->headers.data, APIV3_KEY));
    assert_null(strstr(req->sign_string.data, "PRIVATE KEY"));
    free(s);
    if (strcmp(method, "GET") == 0) return NULL;
    cJSON *j = cJSON_ParseWithLength(req->body.data, req->body.len);
    assert_non_null(j);
    return j;
}

static const char *js(const cJSON *o, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    const cJSON *cur = o;
    for (char *tok = strtok(buf, "."); tok; tok = strtok(NULL, ".")) cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
    return cJSON_IsString(cur) ? cur->valuestring : NULL;
}

static double jn(const cJSON *o, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    const cJSON *cur = o;
    for (char *tok = strtok(buf, "."); tok; tok = strtok(NULL, ".")) cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
    return cJSON_IsNumber(cur) ? cur->valuedouble : -1;
}

/* Runs a parse function on an answer; returns res->status. */
static int parse(parse_fn fn, const gw_chan_call_t *c, int http, const char *body, const signer_t *sg,
                 gw_chan_result_t *res)
{
    char *hdrs = mkheaders(sg, body);
    int st = ct_parse(fn, c, http, hdrs, body, res);
    free(hdrs);
    return st;
}

static int parse1(parse_fn fn, const gw_chan_call_t *c, int http, const char *body, const signer_t *sg)
{
    gw_chan_result_t res;
    int st = parse(fn, c, http, body, sg, &res);
    H->buf_free(&res.pay_data);
    return st;
}

/* a transaction object as the platform answers a query */
static char *txn(const char *mch, const char *otn, const char *state, long total)
{
    return xasprintf("{\"appid\":\"%s\",\"mchid\":\"%s\",\"out_trade_no\":\"%s\",\"transaction_id\":\"%s\","
                     "\"trade_type\":\"NATIVE\",\"trade_state\":\"%s\",\"trade_state_desc\":\"desc %s\","
                     "\"bank_type\":\"OTHERS\",\"attach\":\"\",\"success_time\":\"2024-01-01T12:01:01+08:00\","
                     "\"payer\":{\"openid\":\"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o\"},"
                     "\"amount\":{\"total\":%ld,\"payer_total\":%ld,\"currency\":\"CNY\",\"payer_currency\":\"CNY\"},"
                     "\"promotion_detail\":[{\"coupon_id\":\"1\",\"amount\":0}]}",
                     APPID, mch, otn, TXN, state, state, total, total);
}

static char *refund_obj(const char *orn, const char *status, long refund)
{
    return xasprintf("{\"refund_id\":\"50000000382019052709732678859\",\"out_refund_no\":\"%s\","
                     "\"transaction_id\":\"%s\",\"out_trade_no\":\"%s\",\"channel\":\"ORIGINAL\","
                     "\"user_received_account\":\"招商银行信用卡0403\",\"create_time\":\"2024-01-01T12:02:00+08:00\","
                     "\"status\":\"%s\",\"funds_account\":\"AVAILABLE\",\"amount\":{\"total\":1234,\"refund\":%ld,"
                     "\"from\":[],\"payer_total\":1234,\"payer_refund\":%ld,\"settlement_refund\":%ld,"
                     "\"settlement_total\":1234,\"discount_refund\":0,\"currency\":\"CNY\"}}",
                     orn, TXN, OTN, status, refund, refund, refund);
}

/* ------------------------------------------------------------------ */
/* group setup */

static void *new_ctx(const char *settings, gw_err_t want, char *errout, size_t errcap)
{
    return ct_new_ctx(settings, want, errout, errcap, NULL);
}

static int common_setup(void)
{
    H = gw_host_api();
    if (TS0 == 0) TS0 = (long)time(NULL); /* both groups together take far less than 5 minutes */
    if (ct_tmpdir_make("test_wechatpay") != 0) return -1;
    MERCH_PRIV = read_file(FIX "merchant_priv.pem");
    PLAT_CERT = read_file(FIX "platform_cert.pem");
    PUBKEY_PUB = read_file(FIX "pubkey_pub.pem");
    ROGUE_CERT = read_file(FIX "rogue_cert.pem");
    ROGUE_PUB = read_file(FIX "rogue_pub.pem");
    char *c = jq(PLAT_CERT), *p = jq(PUBKEY_PUB);
    /* the certificate's serial is taken from the certificate */
    snprintf(SETTINGS, sizeof(SETTINGS),
             "{\"platform_keys\":[{\"key\":%s},{\"serial\":\"%s\",\"key\":%s}],\"other\":[1,{\"a\":\"]\"}]}", c,
             PUBKEY_ID, p);
    free(c);
    free(p);
    memset(&M, 0, sizeof(M));
    M.mch_id = S(MCH);
    M.app_id = S(APPID);
    M.key = S(APIV3_KEY);
    M.private_key = S(MERCH_PRIV);
    M.extra = S("{\"serial_no\":\"" MERCH_SERIAL "\"}");
    return 0;
}

static int common_teardown(void)
{
    free(MERCH_PRIV);
    free(PLAT_CERT);
    free(PUBKEY_PUB);
    free(ROGUE_CERT);
    free(ROGUE_PUB);
    return 0;
}

/* the group's ctx block (chantest.h's fixtures call this once CH is set) */
static void *group_ctx(void)
{
    return new_ctx(SETTINGS, GW_OK, NULL, 0);
}

/* ------------------------------------------------------------------ */
/* the vtable and the shared object */

static void t_vtable(void **state)
{
    assert_int_equal(CH->abi_version, GW_CHANNEL_ABI_VERSION);
    assert_int_equal(CH->struct_size, sizeof(gw_channel_t));
    assert_string_equal(CH->name, "wechatpay");
    assert_string_equal(CH->version, "1.0.0");
    assert_string_equal(CH->build_sig, GW_CHANNEL_BUILD_SIG);
    assert_int_equal(CH->methods, GW_METHOD_WECHAT_QR | GW_METHOD_WECHAT_JSAPI | GW_METHOD_BARCODE);
    assert_non_null(CH->fini);
    /* WeChat's timing (docs/channels/wechatpay.md) */
    assert_non_null(CH->policy);
    assert_int_equal(CH->policy->struct_size, sizeof(gw_chan_policy_t));
    assert_int_equal(CH->policy->poll_interval_ms, 10000);
    assert_int_equal(CH->policy->poll_deadline_ms, 45000);
    assert_int_equal(CH->policy->reverse_min_age_ms, 15000);
    assert_int_equal(CH->policy->close_min_age_ms, 300000);
    assert_int_equal(CH->policy->refund_query_delay_ms, 0);
}

static void t_shared_object(void **state)
{
    ct_assert_so_exports(SO_PATH);
}

/* ------------------------------------------------------------------ */
/* init */

static void t_init_defaults(void **state)
{
    void *ctx = new_ctx("{}", GW_OK, NULL, 0);
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(ctx, &M, &o, NULL, 0);
    gw_chan_request_t req;
    build(CH->query, &c, &req, "GET", "/v3/pay/transactions/out-trade-no/" OTN "?mchid=" MCH);
    assert_string_equal(req.url.data, "https://api.mch.weixin.qq.com/v3/pay/transactions/out-trade-no/" OTN
                                      "?mchid=" MCH);
    assert_null(strstr(req.headers.data, "Wechatpay-Serial"));
    req_free(&req);
    /* no platform key: nothing verifies */
    char *b = txn(MCH, OTN, "SUCCESS", 1234);
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &BY_CERT), GW_PAY_UNKNOWN);
    free(b);
    free_ctx(ctx);
}

static void t_init_settings(void **state)
{
    char *p = jq(PUBKEY_PUB);
    char *set = xasprintf("{\"base_url\":\"http://127.0.0.1:8080/wx/\",\"clock_skew_s\":3600,"
                          "\"request_serial\":\"%s\",\"platform_keys\":[{\"serial\":\"%s\",\"key\":%s}]}",
                          PUBKEY_ID, PUBKEY_ID, p);
    void *ctx = new_ctx(set, GW_OK, NULL, 0);
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(ctx, &M, &o, NULL, 0);
    gw_chan_request_t req;
    cJSON_Delete(build(CH->close, &c, &req, "POST", "/v3/pay/transactions/out-trade-no/" OTN "/close"));
    assert_string_equal(req.url.data, "http://127.0.0.1:8080/wx/v3/pay/transactions/out-trade-no/" OTN "/close");
    char v[128];
    header_value(req.headers.data, "Wechatpay-Serial", v, sizeof(v));
    assert_string_equal(v, PUBKEY_ID);
    req_free(&req);
    /* clock_skew_s 3600: a 20-minute-old answer verifies; the certificate is not configured here */
    signer_t old = BY_PUBKEY;
    old.ts_off = -1200;
    assert_int_equal(parse1(CH->close_parse, &c, 204, "", &old), GW_PAY_CLOSED);
    assert_int_equal(parse1(CH->close_parse, &c, 204, "", &BY_CERT), GW_PAY_UNKNOWN);
    free_ctx(ctx);
    free(set);
    free(p);
}

static void t_init_errors(void **state)
{
    char err[4096];
    char *c = jq(PLAT_CERT), *p = jq(PUBKEY_PUB), *rc = jq(ROGUE_CERT);
    struct {
        char *settings;
        gw_err_t rc;
        const char *msg;
    } cases[] = {
        { xasprintf("[]"), GW_EINVAL, "not a JSON object" },
        { xasprintf("{\"base_url\":\"ftp://x\"}"), GW_EINVAL, "base_url" },
        { xasprintf("{\"base_url\":\"https://x/?a=1\"}"), GW_EINVAL, "base_url" },
        { xasprintf("{\"clock_skew_s\":0}"), GW_EINVAL, "clock_skew_s" },
        { xasprintf("{\"clock_skew_s\":1.5}"), GW_EINVAL, "clock_skew_s" },
        { xasprintf("{\"platform_keys\":{\"serial\":\"x\"}}"), GW_EINVAL, "array" },
        { xasprintf("{\"platform_keys\":[{\"serial\":\"x\"}]}"), GW_EINVAL, "platform_keys[0]" },
        { xasprintf("{\"platform_keys\":[{\"key\":%s}]}", p), GW_EINVAL, "PUB_KEY_ID" },
        { xasprintf("{\"platform_keys\":[{\"serial\":\"ABC\",\"key\":%s}]}", c), GW_EINVAL, "not the certificate's serial" },
        { xasprintf("{\"platform_keys\":[{\"key\":%s},{\"key\":%s}]}", c, rc), GW_EINVAL, "twice" },
        { xasprintf("{\"platform_keys\":[{\"serial\":\"PUB_KEY_ID_1\",\"key\":\"-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\\n\"}]}"), GW_EKEY, "not an RSA public key" },
        { xasprintf("{\"platform_keys\":[{\"serial\":\"bad serial\",\"key\":%s}]}", p), GW_EINVAL, "serial" },
        { xasprintf("{\"request_serial\":\"PUB_KEY_ID_9\",\"platform_keys\":[{\"key\":%s}]}", c), GW_EINVAL, "request_serial" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_null(new_ctx(cases[i].settings, cases[i].rc, err, sizeof(err)));
        if (strstr(err, cases[i].msg) == NULL) fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].msg);
        assert_null(strstr(err, "PRIVATE"));
        free(cases[i].settings);
    }
    /* 17 keys are too many */
    char *many = xasprintf("{\"platform_keys\":[");
    for (int i = 0; i < 17; i++) {
        char *n = xasprintf("%s%s{\"serial\":\"PUB_KEY_ID_%d\",\"key\":%s}", many, i ? "," : "", i, p);
        free(many);
        many = n;
    }
    char *n = xasprintf("%s]}", many);
    assert_null(new_ctx(n, GW_EINVAL, err, sizeof(err)));
    assert_non_null(strstr(err, "at most 16"));
    free(n);
    free(many);
    free(c);
    free(p);
    free(rc);
}

/* ------------------------------------------------------------------ */
/* requests */

static void t_pay_native(void **state)
{
    gw_chan_order_t o = order_native();
    o.expire_ms = 1704081600999; /* 2024-01-01 12:00:00.999 +08:00 */
    o.attach = S("a=1&b=2");
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    gw_chan_request_t req;
    cJSON *j = build(CH->pay, &c, &req, "POST", "/v3/pay/transactions/native");
    assert_string_equal(js(j, "appid"), APPID);
    assert_string_equal(js(j, "mchid"), MCH);
    assert_string_equal(js(j, "description"), "测试商品 \"quoted\" \\ <&>");
    assert_string_equal(js(j, "out_trade_no"), OTN);
    assert_string_equal(js(j, "attach"), "a=1&b=2");
    {   /* signed with the merchant's key, not with some other one */
        auth_t a;
        parse_auth(req.headers.data, &a);
        assert_false(ossl_verify(FIX "platform_pub.pem", req.sign_string.data, a.signature));
    }
    assert_string_equal(js(j, "time_expire"), "2024-01-01T12:00:00+08:00");
    /* the merchant number rides in the notify path */
    assert_string_equal(js(j, "notify_url"), "https://pay.example.com/notify/wechatpay/" MCH);
    assert_true(jn(j, "amount.total") == 1234);
    assert_string_equal(js(j, "amount.currency"), "CNY");
    assert_string_equal(js(j, "scene_info.payer_client_ip"), "203.0.113.7");
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "payer"));
    cJSON_Delete(j);
    req_free(&req);
    /* no expire, no attach, a trailing slash on notify_url, no client ip */
    o = order_native();
    o.notify_url = S("https://pay.example.com/notify/wechatpay/");
    o.client_ip = S("");
    c = mkcall(CTX, &M, &o, NULL, 0);
    j = build(CH->pay, &c, &req, "POST", "/v3/pay/transactions/native");
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "time_expire"));
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "attach"));
    assert_string_equal(js(j, "notify_url"), "https://pay.example.com/notify/wechatpay/" MCH);
    assert_string_equal(js(j, "scene_info.payer_client_ip"), "127.0.0.1");
    cJSON_Delete(j);
    req_free(&req);
}

static void t_pay_jsapi(void **state)
{
    gw_chan_order_t o = order_jsapi();
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    gw_chan_request_t req;
    cJSON *j = build(CH->pay, &c, &req, "POST", "/v3/pay/transactions/jsapi");
    assert_string_equal(js(j, "payer.openid"), "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
    assert_string_equal(js(j, "appid"), APPID);
    cJSON_Delete(j);
    req_free(&req);
    /* the order's sub_appid (a mini program) wins */
    o.sub_appid = S("wx1234567890abcdef");
    j = build(CH->pay, &c, &req, "POST", "/v3/pay/transactions/jsapi");
    assert_string_equal(js(j, "appid"), "wx1234567890abcdef");
    cJSON_Delete(j);
    req_free(&req);
}

static void t_pay_codepay(void **state)
{
    gw_chan_order_t o = order_codepay();
    o.expire_ms = 1704081600000;
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    gw_chan_request_t req;
    cJSON *j = build(CH->pay, &c, &req, "POST", "/v3/pay/transactions/codepay");
    assert_string_equal(js(j, "payer.auth_code"), "134567890123456789");
    assert_string_equal(js(j, "scene_info.device_ip"), "203.0.113.7");
    assert_true(jn(j, "amount.total") == 1234);
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "notify_url"));
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "time_expire"));
    cJSON_Delete(j);
    req_free(&req);
}

static void t_other_requests(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_refund_t r = refund_of(300);
    gw_chan_request_t req;
    cJSON *j;

    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    assert_null(build(CH->query, &c, &req, "GET", "/v3/pay/transactions/out-trade-no/" OTN "?mchid=" MCH));
    req_free(&req);
    /* by transaction id when the order number is unknown */
    gw_chan_order_t o2 = o;
    o2.out_trade_no = S("");
    o2.channel_trade_no = S(TXN);
    c = mkcall(CTX, &M, &o2, NULL, 0);
    assert_null(build(CH->query, &c, &req, "GET", "/v3/pay/transactions/id/" TXN "?mchid=" MCH));
    req_free(&req);
    /* a number with characters outside RFC 3986's unreserved set is percent-encoded, and signed so */
    o2 = o;
    o2.out_trade_no = S("A*B|C");
    c = mkcall(CTX, &M, &o2, NULL, 0);
    assert_null(build(CH->query, &c, &req, "GET", "/v3/pay/transactions/out-trade-no/A%2AB%7CC?mchid=" MCH));
    req_free(&req);

    c = mkcall(CTX, &M, &o, &r, GW_CALL_REFUND_QUERY);
    assert_null(build(CH->query, &c, &req, "GET", "/v3/refund/domestic/refunds/RF20240101000001"));
    req_free(&req);

    c = mkcall(CTX, &M, &o, &r, 0);
    j = build(CH->refund, &c, &req, "POST", "/v3/refund/domestic/refunds");
    assert_string_equal(js(j, "out_trade_no"), OTN);
    assert_string_equal(js(j, "out_refund_no"), "RF20240101000001");
    assert_string_equal(js(j, "reason"), "too sweet");
    assert_true(jn(j, "amount.refund") == 300);
    assert_true(jn(j, "amount.total") == 1234);
    assert_string_equal(js(j, "amount.currency"), "CNY");
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "notify_url"));
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "mchid"));
    cJSON_Delete(j);
    req_free(&req);
    c = mkcall(CTX, &M, &o2, &r, 0);
    o2.out_trade_no = S("");
    o2.channel_trade_no = S(TXN);
    j = build(CH->refund, &c, &req, "POST", "/v3/refund/domestic/refunds");
    assert_string_equal(js(j, "transaction_id"), TXN);
    assert_null(js(j, "out_trade_no"));
    cJSON_Delete(j);
    req_free(&req);

    c = mkcall(CTX, &M, &o, NULL, 0);
    j = build(CH->close, &c, &req, "POST", "/v3/pay/transactions/out-trade-no/" OTN "/close");
    assert_string_equal(js(j, "mchid"), MCH);
    assert_int_equal(cJSON_GetArraySize(j), 1);
    cJSON_Delete(j);
    req_free(&req);

    gw_chan_order_t b = order_codepay();
    c = mkcall(CTX, &M, &b, NULL, GW_CALL_REVERSE);
    j = build(CH->close, &c, &req, "POST", "/v3/pay/transactions/out-trade-no/" OTN "/reverse");
    assert_string_equal(js(j, "mchid"), MCH);
    assert_string_equal(js(j, "appid"), APPID);
    cJSON_Delete(j);
    req_free(&req);
}

static void t_request_errors(void **state)
{
    gw_chan_request_t req;
    gw_chan_order_t o;
    gw_chan_refund_t r = refund_of(300);
    gw_chan_merchant_t m;
    gw_chan_call_t c;
#define EXPECT(fn, call, want)                                                                  \
    do {                                                                                        \
        req_init(&req);                                                                         \
        assert_int_equal(fn(&(call), &req), want);                                              \
        req_free(&req);                                                                         \
    } while (0)

    o = order_native();
    m = M; m.extra = S("{}");                           c = mkcall(CTX, &m, &o, NULL, 0); EXPECT(CH->pay, c, GW_EKEY);
    m = M; m.extra = S("{\"serial_no\":\"a b\"}");      c = mkcall(CTX, &m, &o, NULL, 0); EXPECT(CH->pay, c, GW_EINVAL);
    m = M; m.extra = S("{not json");                    c = mkcall(CTX, &m, &o, NULL, 0); EXPECT(CH->query, c, GW_EINVAL);
    m = M; m.private_key = S("");                       c = mkcall(CTX, &m, &o, NULL, 0); EXPECT(CH->query, c, GW_EKEY);
    m = M; m.private_key = S("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    c = mkcall(CTX, &m, &o, NULL, 0); EXPECT(CH->query, c, GW_EKEY);
    m = M; m.app_id = S("");                            c = mkcall(CTX, &m, &o, NULL, 0); EXPECT(CH->pay, c, GW_EKEY);
    m = M; m.mch_id = S("19000\"00109");                c = mkcall(CTX, &m, &o, NULL, 0); EXPECT(CH->pay, c, GW_EINVAL);
    c = mkcall(CTX, NULL, &o, NULL, 0); EXPECT(CH->query, c, GW_EINVAL);

    o = order_native(); o.amount = 0;                   c = mkcall(CTX, &M, &o, NULL, 0); EXPECT(CH->pay, c, GW_EINVAL);
    o = order_native(); o.subject = S("");              c = mkcall(CTX, &M, &o, NULL, 0); EXPECT(CH->pay, c, GW_EINVAL);
    o = order_native(); o.notify_url = S("");           c = mkcall(CTX, &M, &o, NULL, 0); EXPECT(CH->pay, c, GW_EINVAL);
    o = order_native(); o.out_trade_no = S("123456789012345678901234567890123"); /* 33 > 32 */
    c = mkcall(CTX, &M, &o, NULL, 0); EXPECT(CH->pay, c, GW_EINVAL);
    o = order_native(); o.method = GW_METHOD_ALIPAY_QR; c = mkcall(CTX, &M, &o, NULL, 0); EXPECT(CH->pay, c, GW_ENOTSUP);
    o = order_jsapi(); o.payer_id = S("");              c = mkcall(CTX, &M, &o, NULL, 0); EXPECT(CH->pay, c, GW_EINVAL);
    o = order_codepay(); o.auth_code = S("");           c = mkcall(CTX, &M, &o, NULL, 0); EXPECT(CH->pay, c, GW_EINVAL);
    o = order_native(); o.out_trade_no = S("");         c = mkcall(CTX, &M, &o, NULL, 0); EXPECT(CH->query, c, GW_EINVAL);
    EXPECT(CH->close, c, GW_EINVAL);
    o = order_native(); m = M; m.app_id = S("");        c = mkcall(CTX, &m, &o, NULL, GW_CALL_REVERSE); EXPECT(CH->close, c, GW_EKEY);

    o = order_native();
    r = refund_of(0);    c = mkcall(CTX, &M, &o, &r, 0); EXPECT(CH->refund, c, GW_EINVAL);
    r = refund_of(1235); c = mkcall(CTX, &M, &o, &r, 0); EXPECT(CH->refund, c, GW_EINVAL);
    r = refund_of(1); r.out_refund_no = S(""); c = mkcall(CTX, &M, &o, &r, 0); EXPECT(CH->refund, c, GW_EINVAL);
    c = mkcall(CTX, &M, &o, &r, GW_CALL_REFUND_QUERY); EXPECT(CH->query, c, GW_EINVAL);
    c = mkcall(CTX, &M, &o, NULL, 0); EXPECT(CH->refund, c, GW_EINVAL);
#undef EXPECT
}

/* ------------------------------------------------------------------ */
/* answers */

static void t_native_pending(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    gw_chan_result_t res;
    /* both configured keys verify: the certificate, and the public key */
    const signer_t *sg[] = { &BY_CERT, &BY_PUBKEY };
    for (int i = 0; i < 2; i++) {
        assert_int_equal(parse(CH->pay_parse, &c, 200, "{\"code_url\":\"weixin://wxpay/bizpayurl?pr=p4lpSuKzz\"}",
                               sg[i], &res),
                         GW_PAY_PENDING);
        assert_string_equal(res.pay_data.data, "{\"code_url\":\"weixin://wxpay/bizpayurl?pr=p4lpSuKzz\"}");
        assert_int_equal(res.amount, -1);
        H->buf_free(&res.pay_data);
    }
    /* created, but nothing to show the payer: query */
    assert_int_equal(parse(CH->pay_parse, &c, 200, "{}", &BY_CERT, &res), GW_PAY_UNKNOWN);
    assert_int_equal(res.pay_data.len, 0);
    H->buf_free(&res.pay_data);
    /* signed refusals */
    assert_int_equal(parse1(CH->pay_parse, &c, 400, "{\"code\":\"PARAM_ERROR\",\"message\":\"参数错误\"}", &BY_CERT),
                     GW_PAY_FAILED);
    assert_int_equal(parse(CH->pay_parse, &c, 403, "{\"code\":\"NO_AUTH\",\"message\":\"商户无权限\"}", &BY_CERT, &res),
                     GW_PAY_FAILED);
    assert_string_equal(res.raw_code, "NO_AUTH");
    assert_string_equal(res.raw_msg, "商户无权限");
    H->buf_free(&res.pay_data);
    /* ambiguous or transient ones are not */
    const char *open[] = { "OUT_TRADE_NO_USED", "ORDERPAID", "INVALID_REQUEST", "SYSTEM_ERROR" };
    for (size_t i = 0; i < 4; i++) {
        char *b = xasprintf("{\"code\":\"%s\",\"message\":\"x\"}", open[i]);
        assert_int_equal(parse1(CH->pay_parse, &c, 400, b, &BY_CERT), GW_PAY_UNKNOWN);
        free(b);
    }
    assert_int_equal(parse1(CH->pay_parse, &c, 429, "{\"code\":\"FREQUENCY_LIMITED\",\"message\":\"x\"}", &BY_CERT),
                     GW_PAY_UNKNOWN);
    assert_int_equal(parse1(CH->pay_parse, &c, 500, "{\"code\":\"PARAM_ERROR\",\"message\":\"x\"}", &BY_CERT),
                     GW_PAY_UNKNOWN);
    /* an error without a code */
    assert_int_equal(parse1(CH->pay_parse, &c, 400, "{\"message\":\"x\"}", &BY_CERT), GW_PAY_UNKNOWN);
    /* 202 for a c-to-b order is not a documented answer */
    assert_int_equal(parse1(CH->pay_parse, &c, 202, "{\"code_url\":\"weixin://x\"}", &BY_CERT), GW_PAY_UNKNOWN);
}

static void t_jsapi_pending(void **state)
{
    gw_chan_order_t o = order_jsapi();
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    gw_chan_result_t res;
    assert_int_equal(parse(CH->pay_parse, &c, 200, "{\"prepay_id\":\"wx201410272009395522657a690389285100\"}",
                           &BY_PUBKEY, &res),
                     GW_PAY_PENDING);
    cJSON *j = cJSON_Parse(res.pay_data.data);
    assert_non_null(j);
    assert_string_equal(js(j, "prepay_id"), "wx201410272009395522657a690389285100");
    assert_string_equal(js(j, "pay_info.appId"), APPID);
    assert_string_equal(js(j, "pay_info.package"), "prepay_id=wx201410272009395522657a690389285100");
    assert_string_equal(js(j, "pay_info.signType"), "RSA");
    assert_int_equal(strlen(js(j, "pay_info.nonceStr")), 32);
    assert_true(labs(atol(js(j, "pay_info.timeStamp")) - (long)time(NULL)) <= 5);
    /* paySign: the merchant's SHA256withRSA over appId\ntimeStamp\nnonceStr\npackage\n */
    char *s = xasprintf("%s\n%s\n%s\n%s\n", js(j, "pay_info.appId"), js(j, "pay_info.timeStamp"),
                        js(j, "pay_info.nonceStr"), js(j, "pay_info.package"));
    assert_true(ossl_verify(FIX "merchant_pub.pem", s, js(j, "pay_info.paySign")));
    free(s);
    cJSON_Delete(j);
    H->buf_free(&res.pay_data);
}

static void t_codepay_statuses(void **state)
{
    gw_chan_order_t o = order_codepay();
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    gw_chan_result_t res;
    char *b = txn(MCH, OTN, "SUCCESS", 1234);
    assert_int_equal(parse(CH->pay_parse, &c, 200, b, &BY_CERT, &res), GW_PAY_SUCCESS);
    assert_int_equal(res.amount, 1234);
    assert_string_equal(res.channel_trade_no, TXN);
    assert_string_equal(res.mch_id, MCH);
    assert_string_equal(res.raw_code, "SUCCESS");
    H->buf_free(&res.pay_data);
    free(b);
    /* 202 USERPAYING, in both shapes */
    assert_int_equal(parse(CH->pay_parse, &c, 202, "{\"code\":\"USERPAYING\",\"message\":\"用户支付中，需要输入密码\"}",
                           &BY_PUBKEY, &res),
                     GW_PAY_USER_PAYING);
    assert_string_equal(res.raw_code, "USERPAYING");
    H->buf_free(&res.pay_data);
    b = txn(MCH, OTN, "USERPAYING", 1234);
    assert_int_equal(parse1(CH->pay_parse, &c, 202, b, &BY_PUBKEY), GW_PAY_USER_PAYING);
    free(b);
    /* a definite decline, and a PAYERROR trade */
    assert_int_equal(parse1(CH->pay_parse, &c, 403, "{\"code\":\"AUTHCODEEXPIRE\",\"message\":\"二维码已过期\"}", &BY_CERT),
                     GW_PAY_FAILED);
    b = txn(MCH, OTN, "PAYERROR", 1234);
    assert_int_equal(parse1(CH->pay_parse, &c, 200, b, &BY_CERT), GW_PAY_FAILED);
    free(b);
    /* outcome open */
    assert_int_equal(parse1(CH->pay_parse, &c, 500, "{\"code\":\"SYSTEM_ERROR\",\"message\":\"x\"}", &BY_CERT),
                     GW_PAY_UNKNOWN);
    assert_int_equal(parse1(CH->pay_parse, &c, 400, "{\"code\":\"USERPAYING\",\"message\":\"x\"}", &BY_CERT),
                     GW_PAY_USER_PAYING);
    assert_int_equal(parse1(CH->pay_parse, &c, 403, "{\"code\":\"ORDERPAID\",\"message\":\"x\"}", &BY_CERT),
                     GW_PAY_UNKNOWN);
    assert_int_equal(parse1(CH->pay_parse, &c, 200, "{\"mchid\":\"" MCH "\"}", &BY_CERT), GW_PAY_UNKNOWN);
    b = txn(MCH, OTN, "NOTPAY", 1234);
    assert_int_equal(parse1(CH->pay_parse, &c, 200, b, &BY_CERT), GW_PAY_UNKNOWN);
    free(b);
    /* a SUCCESS that is not about this order, merchant or amount */
    b = txn("1900000999", OTN, "SUCCESS", 1234);
    assert_int_equal(parse(CH->pay_parse, &c, 200, b, &BY_CERT, &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_EMCHID");
    H->buf_free(&res.pay_data);
    free(b);
    b = txn(MCH, "PG20240101000002", "SUCCESS", 1234);
    assert_int_equal(parse1(CH->pay_parse, &c, 200, b, &BY_CERT), GW_PAY_UNKNOWN);
    free(b);
    b = txn(MCH, OTN, "SUCCESS", 1);
    assert_int_equal(parse1(CH->pay_parse, &c, 200, b, &BY_CERT), GW_PAY_UNKNOWN);
    free(b);
    b = xasprintf("{\"mchid\":\"%s\",\"trade_state\":\"SUCCESS\",\"amount\":{\"total\":1234}}", MCH);
    assert_int_equal(parse1(CH->pay_parse, &c, 200, b, &BY_CERT), GW_PAY_UNKNOWN); /* no out_trade_no */
    free(b);
}

static void t_query_statuses(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    gw_chan_result_t res;
    struct { const char *st; int want; } map[] = {
        { "SUCCESS", GW_PAY_SUCCESS }, { "REFUND", GW_PAY_REFUNDED }, { "NOTPAY", GW_PAY_NOT_PAID },
        { "CLOSED", GW_PAY_CLOSED }, { "REVOKED", GW_PAY_REVERSED }, { "USERPAYING", GW_PAY_USER_PAYING },
        { "PAYERROR", GW_PAY_FAILED }, { "ACCEPT", GW_PAY_UNKNOWN }, { "", GW_PAY_UNKNOWN },
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        char *b = txn(MCH, OTN, map[i].st, 1234);
        assert_int_equal(parse(CH->query_parse, &c, 200, b, (i & 1) ? &BY_CERT : &BY_PUBKEY, &res), map[i].want);
        assert_string_equal(res.raw_code, map[i].st);
        if (map[i].want != GW_PAY_UNKNOWN) {
            assert_int_equal(res.amount, 1234);
            assert_string_equal(res.channel_trade_no, TXN);
            assert_string_equal(res.mch_id, MCH);
        }
        H->buf_free(&res.pay_data);
        free(b);
    }
    /* the order does not exist (signed): nothing paid so far */
    assert_int_equal(parse(CH->query_parse, &c, 404, "{\"code\":\"ORDER_NOT_EXIST\",\"message\":\"订单不存在\"}",
                           &BY_CERT, &res),
                     GW_PAY_NOT_PAID);
    assert_string_equal(res.raw_code, "ORDER_NOT_EXIST");
    H->buf_free(&res.pay_data);
    assert_int_equal(parse1(CH->query_parse, &c, 404, "{\"code\":\"ORDERNOTEXIST\",\"message\":\"x\"}", &BY_CERT),
                     GW_PAY_NOT_PAID);
    /* … but unsigned it proves nothing */
    assert_int_equal(parse1(CH->query_parse, &c, 404, "{\"code\":\"ORDER_NOT_EXIST\",\"message\":\"x\"}", NULL),
                     GW_PAY_UNKNOWN);
    assert_int_equal(parse1(CH->query_parse, &c, 400, "{\"code\":\"PARAM_ERROR\",\"message\":\"x\"}", &BY_CERT),
                     GW_PAY_UNKNOWN);
    /* the merchant echo is mandatory */
    char *b = xasprintf("{\"out_trade_no\":\"%s\",\"trade_state\":\"SUCCESS\",\"amount\":{\"total\":1234}}", OTN);
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &BY_CERT), GW_PAY_UNKNOWN);
    free(b);
    /* asked by transaction id: the answer must carry that id */
    gw_chan_order_t o2 = o;
    o2.out_trade_no = S("");
    o2.channel_trade_no = S("4200009999");
    c = mkcall(CTX, &M, &o2, NULL, 0);
    b = txn(MCH, OTN, "SUCCESS", 1234);
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &BY_CERT), GW_PAY_UNKNOWN);
    o2.channel_trade_no = S(TXN);
    o2.amount = 1234;
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &BY_CERT), GW_PAY_SUCCESS);
    free(b);
}

static void t_refund_statuses(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_refund_t r = refund_of(300);
    gw_chan_result_t res;
    struct { const char *st; int want; } map[] = {
        { "PROCESSING", GW_REFUND_PROCESSING }, { "SUCCESS", GW_REFUND_SUCCESS },
        { "CLOSED", GW_REFUND_FAILED }, { "ABNORMAL", GW_REFUND_FAILED }, { "WHATEVER", GW_REFUND_UNKNOWN },
    };
    for (int q = 0; q < 2; q++) {
        gw_chan_call_t c = mkcall(CTX, &M, &o, &r, q ? GW_CALL_REFUND_QUERY : 0);
        parse_fn fn = q ? CH->query_parse : CH->refund_parse;
        for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
            char *b = refund_obj("RF20240101000001", map[i].st, 300);
            assert_int_equal(parse(fn, &c, 200, b, &BY_CERT, &res), map[i].want);
            assert_string_equal(res.raw_code, map[i].st);
            assert_int_equal(res.amount, 300);
            assert_string_equal(res.channel_refund_no, "50000000382019052709732678859");
            H->buf_free(&res.pay_data);
            free(b);
        }
        /* another refund's answer, or a SUCCESS for another amount */
        char *b = refund_obj("RF20240101000002", "SUCCESS", 300);
        assert_int_equal(parse1(fn, &c, 200, b, &BY_CERT), GW_REFUND_UNKNOWN);
        free(b);
        b = refund_obj("RF20240101000001", "SUCCESS", 301);
        assert_int_equal(parse1(fn, &c, 200, b, &BY_CERT), GW_REFUND_UNKNOWN);
        free(b);
        assert_int_equal(parse1(fn, &c, 500, "{\"code\":\"SYSTEM_ERROR\",\"message\":\"x\"}", &BY_CERT),
                         GW_REFUND_UNKNOWN);
        assert_int_equal(parse1(fn, &c, 429, "{\"code\":\"FREQUENCY_LIMITED\",\"message\":\"x\"}", &BY_CERT),
                         GW_REFUND_UNKNOWN);
        assert_int_equal(parse1(fn, &c, 400, "{\"code\":\"INVALID_REQUEST\",\"message\":\"x\"}", NULL),
                         GW_REFUND_UNKNOWN);
    }
    /* a signed refusal of the refund itself is final … */
    gw_chan_call_t c = mkcall(CTX, &M, &o, &r, 0);
    assert_int_equal(parse(CH->refund_parse, &c, 400, "{\"code\":\"INVALID_REQUEST\",\"message\":\"退款金额超过可退金额\"}",
                           &BY_CERT, &res),
                     GW_REFUND_FAILED);
    assert_string_equal(res.raw_code, "INVALID_REQUEST");
    H->buf_free(&res.pay_data);
    assert_int_equal(parse1(CH->refund_parse, &c, 403, "{\"code\":\"NOT_ENOUGH\",\"message\":\"余额不足\"}", &BY_CERT),
                     GW_REFUND_FAILED);
    /* … a missing refund in a refund query is not */
    c = mkcall(CTX, &M, &o, &r, GW_CALL_REFUND_QUERY);
    assert_int_equal(parse1(CH->query_parse, &c, 404, "{\"code\":\"RESOURCE_NOT_EXISTS\",\"message\":\"退款单不存在\"}",
                            &BY_CERT),
                     GW_REFUND_UNKNOWN);
}

static void t_close_reverse(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    gw_chan_result_t res;
    /* 204 No Content, signed over "TS\nNONCE\n\n" */
    assert_int_equal(parse(CH->close_parse, &c, 204, "", &BY_CERT, &res), GW_PAY_CLOSED);
    assert_string_equal(res.raw_code, "CLOSED");
    H->buf_free(&res.pay_data);
    assert_int_equal(parse1(CH->close_parse, &c, 204, "", NULL), GW_PAY_UNKNOWN);
    assert_int_equal(parse1(CH->close_parse, &c, 400, "{\"code\":\"ORDERPAID\",\"message\":\"订单已支付\"}", &BY_CERT),
                     GW_PAY_UNKNOWN);
    gw_chan_order_t b = order_codepay();
    c = mkcall(CTX, &M, &b, NULL, GW_CALL_REVERSE);
    char *body = xasprintf("{\"appid\":\"%s\",\"mchid\":\"%s\",\"out_trade_no\":\"%s\"}", APPID, MCH, OTN);
    assert_int_equal(parse(CH->close_parse, &c, 200, body, &BY_PUBKEY, &res), GW_PAY_REVERSED);
    assert_string_equal(res.raw_code, "REVOKED");
    assert_string_equal(res.mch_id, MCH);
    H->buf_free(&res.pay_data);
    free(body);
    body = xasprintf("{\"appid\":\"%s\",\"mchid\":\"%s\",\"out_trade_no\":\"%s\"}", APPID, MCH, "OTHER");
    assert_int_equal(parse1(CH->close_parse, &c, 200, body, &BY_PUBKEY), GW_PAY_UNKNOWN);
    free(body);
    body = xasprintf("{\"appid\":\"%s\",\"mchid\":\"%s\",\"out_trade_no\":\"%s\"}", APPID, "1900000999", OTN);
    assert_int_equal(parse1(CH->close_parse, &c, 200, body, &BY_PUBKEY), GW_PAY_UNKNOWN);
    free(body);
    assert_int_equal(parse1(CH->close_parse, &c, 400, "{\"code\":\"INVALID_REQUEST\",\"message\":\"x\"}", &BY_PUBKEY),
                     GW_PAY_UNKNOWN);
    assert_int_equal(parse1(CH->close_parse, &c, 202, "{\"code\":\"USERPAYING\",\"message\":\"x\"}", &BY_PUBKEY),
                     GW_PAY_UNKNOWN);
}

static void t_untrusted(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    gw_chan_result_t res;
    char *b = txn(MCH, OTN, "SUCCESS", 1234);
    signer_t sg;

    /* the baseline verifies */
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &BY_CERT), GW_PAY_SUCCESS);
    /* not signed at all */
    assert_int_equal(parse(CH->query_parse, &c, 200, b, NULL, &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_ENOSIGN");
    H->buf_free(&res.pay_data);
    /* an attacker's key under the platform certificate's serial */
    sg = BY_CERT;
    sg.keyfile = FIX "rogue_priv.pem";
    assert_int_equal(parse(CH->query_parse, &c, 200, b, &sg, &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_ESIGN");
    H->buf_free(&res.pay_data);
    /* the right key under the other serial: the serial selects the key */
    sg = BY_PUBKEY;
    sg.serial = CERT_SERIAL;
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &sg), GW_PAY_UNKNOWN);
    /* a serial nobody configured */
    sg = BY_CERT;
    sg.serial = "7132D72A03E93CDDF8C03BBD1F37EEDF2B2E0A7C";
    assert_int_equal(parse(CH->query_parse, &c, 200, b, &sg, &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_ESERIAL");
    H->buf_free(&res.pay_data);
    /* a serial in lower case is the same serial */
    sg = BY_CERT;
    sg.serial = "5157f09efdc096de15ebe81a47057a7232f1b8e1";
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &sg), GW_PAY_SUCCESS);
    /* timestamps more than 5 minutes off, either way */
    long offs[] = { -310, 310, -3600 }; /* margins: signing takes a moment */
    for (size_t i = 0; i < 3; i++) {
        sg = BY_CERT;
        sg.ts_off = offs[i];
        assert_int_equal(parse(CH->query_parse, &c, 200, b, &sg, &res), GW_PAY_UNKNOWN);
        assert_string_equal(res.raw_code, "GW_ESTALE");
        H->buf_free(&res.pay_data);
    }
    sg = BY_CERT;
    sg.ts_off = -280;
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &sg), GW_PAY_SUCCESS);
    sg.ts_off = 280;
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &sg), GW_PAY_SUCCESS);
    /* WeChat's deliberate probe signatures */
    sg = BY_CERT;
    sg.sig = "WECHATPAY/SIGNTEST/dGhpcyBpcyBub3QgYSBzaWduYXR1cmU=";
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &sg), GW_PAY_UNKNOWN);
    /* another signature type */
    sg = BY_CERT;
    sg.extra = "Wechatpay-Signature-Type: WECHATPAY2-SM2-WITH-SM3\r\n";
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &sg), GW_PAY_UNKNOWN);
    sg.extra = "Wechatpay-Signature-Type: WECHATPAY2-SHA256-RSA2048\r\n";
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &sg), GW_PAY_SUCCESS);
    /* a body changed after signing */
    {
        char *hdrs = mkheaders(&BY_CERT, b);
        char *t = txn(MCH, OTN, "SUCCESS", 1234);
        char *p = strstr(t, "\"total\":1234");
        memcpy(p, "\"total\":1239", 12);
        gw_chan_response_t resp = { 200, S(hdrs), S(t) };
        memset(&res, 0, sizeof(res));
        H->buf_init(&res.pay_data, 1024);
        assert_int_equal(CH->query_parse(&c, &resp, &res), GW_OK);
        assert_int_equal(res.status, GW_PAY_UNKNOWN);
        assert_string_equal(res.raw_code, "GW_ESIGN");
        H->buf_free(&res.pay_data);
        free(hdrs);
        free(t);
    }
    /* a signed answer that is not JSON, an unsigned gateway error page */
    assert_int_equal(parse(CH->query_parse, &c, 200, "<html>oops</html>", &BY_CERT, &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_EPARSE");
    H->buf_free(&res.pay_data);
    assert_int_equal(parse(CH->query_parse, &c, 502, "<html>502 Bad Gateway</html>", NULL, &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "HTTP_502");
    H->buf_free(&res.pay_data);
    /* an unsigned error: its code is shown, not believed */
    assert_int_equal(parse(CH->query_parse, &c, 401, "{\"code\":\"SIGN_ERROR\",\"message\":\"签名错误\"}", NULL, &res),
                     GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "HTTP_401");
    assert_non_null(strstr(res.raw_msg, "SIGN_ERROR"));
    H->buf_free(&res.pay_data);
    /* an odd HTTP status */
    assert_int_equal(parse1(CH->query_parse, &c, 302, "", &BY_CERT), GW_PAY_UNKNOWN);
    /* no response */
    memset(&res, 0, sizeof(res));
    H->buf_init(&res.pay_data, 1024);
    assert_int_equal(CH->query_parse(&c, NULL, &res), GW_OK);
    assert_int_equal(res.status, GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    free(b);
}

static void t_merchant_public_key(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_result_t res;
    char *b = txn(MCH, OTN, "SUCCESS", 1234);
    /* a merchant's own certificate takes its serial over the settings' key of
     * the same serial */
    gw_chan_merchant_t m = M;
    m.public_key = S(ROGUE_CERT);
    gw_chan_call_t c = mkcall(CTX, &m, &o, NULL, 0);
    signer_t sg = BY_CERT;
    sg.keyfile = FIX "rogue_priv.pem";
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &sg), GW_PAY_SUCCESS);
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &BY_CERT), GW_PAY_UNKNOWN);
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &BY_PUBKEY), GW_PAY_SUCCESS); /* settings' other key */
    /* a bare public key needs its id in extra.public_key_id */
    m = M;
    m.public_key = S(ROGUE_PUB);
    c = mkcall(CTX, &m, &o, NULL, 0);
    sg.serial = "PUB_KEY_ID_0000000000000000000000000000000042";
    assert_int_equal(parse1(CH->query_parse, &c, 200, b, &sg), GW_PAY_UNKNOWN);
    m.extra = S("{\"serial_no\":\"" MERCH_SERIAL "\",\"public_key_id\":\"PUB_KEY_ID_0000000000000000000000000000000042\"}");
    assert_int_equal(parse(CH->query_parse, &c, 200, b, &sg, &res), GW_PAY_SUCCESS);
    H->buf_free(&res.pay_data);
    free(b);
}

/* ------------------------------------------------------------------ */
/* notifications */

typedef struct {
    const char *event;         /* TRANSACTION.SUCCESS */
    const char *plain;         /* the resource's plaintext */
    const char *key;           /* AES key (APIv3 key) */
    const char *aad;           /* associated_data */
    const char *aad_sent;      /* what the body says (tampering); NULL: aad */
    const char *algorithm;
    const char *path;
} nt_t;

static char *paid_plain(const char *mch, const char *otn, const char *state, long total)
{
    return xasprintf("{\"mchid\":\"%s\",\"appid\":\"%s\",\"out_trade_no\":\"%s\",\"transaction_id\":\"%s\","
                     "\"trade_type\":\"JSAPI\",\"trade_state\":\"%s\",\"trade_state_desc\":\"支付成功\","
                     "\"bank_type\":\"CMC\",\"attach\":\"\",\"success_time\":\"2024-01-01T12:01:01+08:00\","
                     "\"payer\":{\"openid\":\"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o\"},"
                     "\"amount\":{\"total\":%ld,\"payer_total\":%ld,\"currency\":\"CNY\",\"payer_currency\":\"CNY\"}}",
                     mch, APPID, otn, TXN, state, total, total);
}

static char *mkbody(const nt_t *n)
{
    const char *nonce = "fdasflkja484";
    char *ct = node_gcm(n->key ? n->key : APIV3_KEY, nonce, n->aad ? n->aad : "transaction", n->plain);
    char *body = xasprintf("{\"id\":\"EV-2018022511223320873\",\"create_time\":\"2024-01-01T12:01:02+08:00\","
                           "\"resource_type\":\"encrypt-resource\",\"event_type\":\"%s\",\"summary\":\"支付成功\","
                           "\"resource\":{\"original_type\":\"%s\",\"algorithm\":\"%s\",\"ciphertext\":\"%s\","
                           "\"associated_data\":\"%s\",\"nonce\":\"%s\"}}",
                           n->event ? n->event : "TRANSACTION.SUCCESS",
                           n->event && strncmp(n->event, "REFUND.", 7) == 0 ? "refund" : "transaction",
                           n->algorithm ? n->algorithm : "AEAD_AES_256_GCM", ct,
                           n->aad_sent ? n->aad_sent : (n->aad ? n->aad : "transaction"), nonce);
    free(ct);
    return body;
}

static void notify_init(gw_chan_notify_t *n)
{
    memset(n, 0x5a, sizeof(*n));
    H->buf_init(&n->sign_string, 1 << 20);
    H->buf_init(&n->ack_ok_body, 1024);
    H->buf_init(&n->ack_fail_body, 1024);
}

static void notify_free(gw_chan_notify_t *n)
{
    H->buf_free(&n->sign_string);
    H->buf_free(&n->ack_ok_body);
    H->buf_free(&n->ack_fail_body);
}

/* parse + verify as the core does (verify only when parse succeeded) */
static gw_err_t notify_run(const gw_chan_merchant_t *m, const gw_chan_order_t *o, const char *path, const char *body,
                           const signer_t *sg, gw_chan_notify_t *n)
{
    char *hdrs = mkheaders(sg, body);
    gw_chan_notify_in_t in;
    memset(&in, 0, sizeof(in));
    in.method = S("POST");
    in.path = S(path ? path : "/notify/wechatpay/" MCH);
    in.headers = S(hdrs);
    in.body = S(body);
    notify_init(n);
    gw_err_t rc = CH->notify_parse(CTX, H, &in, n);
    if (rc == GW_OK) {
        gw_chan_call_t c = mkcall(CTX, m, o, NULL, 0);
        rc = CH->notify_verify(&c, &in, n);
        /* the verified string is exactly TS\nNONCE\nBODY\n */
        if (sg && sg->keyfile) {
            char ts[32], nonce[64];
            header_value(hdrs, "Wechatpay-Timestamp", ts, sizeof(ts));
            header_value(hdrs, "Wechatpay-Nonce", nonce, sizeof(nonce));
            char *s = xasprintf("%s\n%s\n%s\n", ts, nonce, body);
            if (rc == GW_OK) assert_string_equal(n->sign_string.data, s);
            free(s);
        }
    }
    free(hdrs);
    return rc;
}

static void t_notify_ok(void **state)
{
    gw_chan_notify_t n;
    char *plain = paid_plain(MCH, OTN, "SUCCESS", 1234);
    nt_t nt = { .plain = plain };
    char *body = mkbody(&nt);
    const signer_t *sg[] = { &BY_CERT, &BY_PUBKEY };
    for (int i = 0; i < 2; i++) {
        assert_int_equal(notify_run(&M, NULL, NULL, body, sg[i], &n), GW_OK);
        assert_int_equal(n.kind, GW_NOTIFY_PAY);
        assert_string_equal(n.mch_id, MCH);
        assert_string_equal(n.out_trade_no, OTN);
        assert_int_equal(n.status, GW_PAY_SUCCESS);
        assert_int_equal(n.amount, 1234);
        assert_string_equal(n.channel_trade_no, TXN);
        assert_string_equal(n.raw_code, "SUCCESS");
        assert_int_equal(n.ack_ok_status, 200);
        assert_string_equal(n.ack_ok_type, "application/json");
        cJSON *a = cJSON_Parse(n.ack_ok_body.data);
        assert_string_equal(js(a, "code"), "SUCCESS");
        cJSON_Delete(a);
        assert_true(n.ack_fail_status >= 400);
        a = cJSON_Parse(n.ack_fail_body.data);
        assert_string_equal(js(a, "code"), "FAIL");
        assert_non_null(js(a, "message"));
        cJSON_Delete(a);
        assert_null(strstr(n.sign_string.data, APIV3_KEY));
        notify_free(&n);
    }
    /* with the order (the core may pass it) */
    gw_chan_order_t o = order_jsapi();
    assert_int_equal(notify_run(&M, &o, NULL, body, &BY_CERT, &n), GW_OK);
    notify_free(&n);
    free(body);
    free(plain);
    /* an empty associated_data */
    plain = paid_plain(MCH, OTN, "SUCCESS", 1234);
    nt.plain = plain;
    nt.aad = "";
    body = mkbody(&nt);
    assert_int_equal(notify_run(&M, NULL, NULL, body, &BY_CERT, &n), GW_OK);
    assert_int_equal(n.status, GW_PAY_SUCCESS);
    notify_free(&n);
    free(body);
    free(plain);
    /* a refund notification */
    plain = xasprintf("{\"mchid\":\"%s\",\"out_trade_no\":\"%s\",\"transaction_id\":\"%s\","
                      "\"out_refund_no\":\"RF20240101000001\",\"refund_id\":\"50000000382019052709732678859\","
                      "\"refund_status\":\"SUCCESS\",\"success_time\":\"2024-01-01T12:05:00+08:00\","
                      "\"user_received_account\":\"招商银行信用卡0403\","
                      "\"amount\":{\"total\":1234,\"refund\":300,\"payer_total\":1234,\"payer_refund\":300}}",
                      MCH, OTN, TXN);
    nt_t rn = { .event = "REFUND.SUCCESS", .plain = plain, .aad = "refund" };
    body = mkbody(&rn);
    assert_int_equal(notify_run(&M, NULL, NULL, body, &BY_PUBKEY, &n), GW_OK);
    assert_int_equal(n.kind, GW_NOTIFY_REFUND);
    assert_string_equal(n.out_trade_no, OTN);
    assert_string_equal(n.out_refund_no, "RF20240101000001");
    assert_int_equal(n.status, GW_REFUND_SUCCESS);
    assert_int_equal(n.amount, 300);
    notify_free(&n);
    free(body);
    free(plain);
    /* a signed and sealed notification that does not say "paid" is left to a query */
    plain = paid_plain(MCH, OTN, "NOTPAY", 1234);
    nt_t un = { .plain = plain };
    body = mkbody(&un);
    assert_int_equal(notify_run(&M, NULL, NULL, body, &BY_CERT, &n), GW_OK);
    assert_int_equal(n.status, GW_PAY_UNKNOWN);
    assert_string_equal(n.raw_code, "NOTPAY");
    notify_free(&n);
    free(body);
    free(plain);
}

static void t_notify_bad(void **state)
{
    gw_chan_notify_t n;
    char *plain = paid_plain(MCH, OTN, "SUCCESS", 1234);
    nt_t nt = { .plain = plain };
    char *body = mkbody(&nt);
    signer_t sg;

    /* no merchant number in the path: cannot pick the APIv3 key */
    assert_int_equal(notify_run(&M, NULL, "/notify/wechatpay", body, &BY_CERT, &n), GW_EPARSE);
    assert_true(n.ack_fail_status >= 400);
    assert_non_null(strstr(n.ack_fail_body.data, "\"FAIL\""));
    notify_free(&n);
    assert_int_equal(notify_run(&M, NULL, "/notify/wechatpay/19000<00109", body, &BY_CERT, &n), GW_EPARSE);
    notify_free(&n);
    assert_int_equal(notify_run(&M, NULL, "/notify/other/" MCH, body, &BY_CERT, &n), GW_EPARSE);
    notify_free(&n);
    /* not the notification format */
    assert_int_equal(notify_run(&M, NULL, NULL, "<xml/>", &BY_CERT, &n), GW_EPARSE);
    notify_free(&n);
    assert_int_equal(notify_run(&M, NULL, NULL, "{\"id\":\"x\"}", &BY_CERT, &n), GW_EPARSE);
    notify_free(&n);
    /* unsigned, forged, unknown serial, stale */
    assert_int_equal(notify_run(&M, NULL, NULL, body, NULL, &n), GW_ESIGN);
    assert_true(n.ack_fail_status >= 400 && n.ack_fail_status <= 599);
    assert_int_not_equal(n.status, GW_PAY_SUCCESS);
    notify_free(&n);
    sg = BY_CERT;
    sg.keyfile = FIX "rogue_priv.pem";
    assert_int_equal(notify_run(&M, NULL, NULL, body, &sg, &n), GW_ESIGN);
    assert_int_not_equal(n.status, GW_PAY_SUCCESS);
    notify_free(&n);
    sg = BY_CERT;
    sg.serial = "PUB_KEY_ID_0000000000000000000000000000000001";
    assert_int_equal(notify_run(&M, NULL, NULL, body, &sg, &n), GW_ESIGN);
    assert_string_equal(n.raw_code, "GW_ESERIAL");
    notify_free(&n);
    sg = BY_CERT;
    sg.ts_off = -400;
    assert_int_equal(notify_run(&M, NULL, NULL, body, &sg, &n), GW_ESIGN);
    assert_string_equal(n.raw_code, "GW_ESTALE");
    notify_free(&n);
    /* the path names another merchant than the credentials */
    assert_int_equal(notify_run(&M, NULL, "/notify/wechatpay/1900000999", body, &BY_CERT, &n), GW_ESIGN);
    notify_free(&n);
    free(body);
    /* encrypted with another APIv3 key; associated_data changed */
    nt_t k2 = { .plain = plain, .key = "ffffffffffffffffffffffffffffffff" };
    body = mkbody(&k2);
    assert_int_equal(notify_run(&M, NULL, NULL, body, &BY_CERT, &n), GW_ESIGN);
    assert_string_equal(n.raw_code, "GW_EDECRYPT");
    assert_int_not_equal(n.status, GW_PAY_SUCCESS);
    notify_free(&n);
    free(body);
    nt_t a2 = { .plain = plain, .aad_sent = "transactionX" };
    body = mkbody(&a2);
    assert_int_equal(notify_run(&M, NULL, NULL, body, &BY_CERT, &n), GW_ESIGN);
    notify_free(&n);
    free(body);
    /* another algorithm */
    nt_t al = { .plain = plain, .algorithm = "AEAD_SM4_GCM" };
    body = mkbody(&al);
    assert_int_equal(notify_run(&M, NULL, NULL, body, &BY_CERT, &n), GW_EPARSE);
    notify_free(&n);
    free(body);
    /* a merchant whose APIv3 key is not 32 bytes */
    body = mkbody(&nt);
    gw_chan_merchant_t m = M;
    m.key = S("short");
    assert_int_equal(notify_run(&m, NULL, NULL, body, &BY_CERT, &n), GW_EKEY);
    notify_free(&n);
    /* the right merchant and key, but the notification is for another order */
    gw_chan_order_t o = order_native();
    o.out_trade_no = S("PG20240101000002");
    assert_int_equal(notify_run(&M, &o, NULL, body, &BY_CERT, &n), GW_ESIGN);
    notify_free(&n);
    free(body);
    free(plain);
    /* sealed with this merchant's key, but naming another merchant inside */
    plain = paid_plain("1900000999", OTN, "SUCCESS", 1234);
    nt_t om = { .plain = plain };
    body = mkbody(&om);
    assert_int_equal(notify_run(&M, NULL, NULL, body, &BY_CERT, &n), GW_ESIGN);
    notify_free(&n);
    free(body);
    free(plain);
    /* sealed garbage */
    nt_t gb = { .plain = "not json" };
    body = mkbody(&gb);
    assert_int_equal(notify_run(&M, NULL, NULL, body, &BY_CERT, &n), GW_EPARSE);
    notify_free(&n);
    free(body);
}

/* ------------------------------------------------------------------ */
/* reentrancy: many threads, one ctx */

typedef struct {
    const char *resp_body;
    const char *resp_headers;
} thr_arg_t;

static int thr_main(const void *p)
{
    const thr_arg_t *a = p;
    int failures = 0;
    gw_chan_order_t o = order_codepay();
    for (int i = 0; i < 20; i++) {
        gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
        gw_chan_request_t req;
        req_init(&req);
        if (CH->pay(&c, &req) != GW_OK || req.body.len == 0) failures++;
        req_free(&req);
        gw_chan_response_t resp = { 200, S(a->resp_headers), S(a->resp_body) };
        gw_chan_result_t res;
        memset(&res, 0, sizeof(res));
        H->buf_init(&res.pay_data, 4096);
        if (CH->pay_parse(&c, &resp, &res) != GW_OK || res.status != GW_PAY_SUCCESS) failures++;
        H->buf_free(&res.pay_data);
    }
    return failures;
}

static void t_threads(void **state)
{
    char *b = txn(MCH, OTN, "SUCCESS", 1234);
    char *hdrs = mkheaders(&BY_PUBKEY, b);
    const thr_arg_t a = { b, hdrs };
    int failures = ct_run_threads(thr_main, &a);
    free(b);
    free(hdrs);
    assert_int_equal(failures, 0);
}

/* ------------------------------------------------------------------ */

#define SUITE                                                                  \
    cmocka_unit_test(t_vtable),                                                \
    cmocka_unit_test(t_init_defaults),                                         \
    cmocka_unit_test(t_init_settings),                                         \
    cmocka_unit_test(t_init_errors),                                           \
    cmocka_unit_test(t_pay_native),                                            \
    cmocka_unit_test(t_pay_jsapi),                                             \
    cmocka_unit_test(t_pay_codepay),                                           \
    cmocka_unit_test(t_other_requests),                                        \
    cmocka_unit_test(t_request_errors),                                        \
    cmocka_unit_test(t_native_pending),                                        \
    cmocka_unit_test(t_jsapi_pending),                                         \
    cmocka_unit_test(t_codepay_statuses),                                      \
    cmocka_unit_test(t_query_statuses),                                        \
    cmocka_unit_test(t_refund_statuses),                                       \
    cmocka_unit_test(t_close_reverse),                                         \
    cmocka_unit_test(t_untrusted),                                             \
    cmocka_unit_test(t_merchant_public_key),                                   \
    cmocka_unit_test(t_notify_ok),                                             \
    cmocka_unit_test(t_notify_bad),                                            \
    cmocka_unit_test(t_threads)

int main(void)
{
    gw_log_level = GW_LOG_CRIT; /* the module's verification warnings are expected here */
    const struct CMUnitTest inproc[] = { SUITE };
    const struct CMUnitTest viadl[] = { SUITE, cmocka_unit_test(t_shared_object) };
    int fails = 0;
    fails += cmocka_run_group_tests_name("wechatpay in-process", inproc, setup_inproc, teardown_inproc);
    fails += cmocka_run_group_tests_name("wechatpay dlopen " SO_PATH, viadl, setup_dlopen, teardown_dlopen);
    gw_host_shutdown();
    memo_free();
    return fails ? 1 : 0;
}
