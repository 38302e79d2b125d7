/*
 * test_alipay.c — the Alipay channel module (channels/alipay/).
 *
 * Every signature is checked against an INDEPENDENT computation: the test
 * reads the request back with its own URL/form decoder, builds the string to
 * sign itself (PROTOCOLS.md §C.2) and asks the OpenSSL command line to verify
 * the SHA256withRSA signature (popen of `openssl dgst`).  Answers and
 * notifications are written and signed by the test the same way (§C.3: the
 * raw text of the response object; §C.4: sorted, decoded fields without
 * sign and sign_type), so the module never agrees with itself only.  The
 * interoperability with Alipay's official Node SDK is proven separately by
 * test/integration/alipay.test.js.
 *
 * Keys: test/fixtures/alipay/ (throw-away RSA-2048 pairs made with
 * `openssl genpkey`, see the README there).
 *
 * The suite runs twice (two cmocka groups):
 *   - "in-process": channels/alipay/alipay.c is #included here, so the module
 *     code itself runs under ASan+UBSan;
 *   - "dlopen": the same tests against build/asan/channels/alipay.so, loaded
 *     with dlopen(RTLD_NOW|RTLD_LOCAL) + dlsym("gw_channel_entry").
 *
 * Run from the repository root (paths are relative to it).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

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
#include "../../channels/alipay/alipay.c"

#define SO_PATH "build/asan/channels/alipay.so"
#define FIX "test/fixtures/alipay/"

#define APP_ID "2021000123456789"
#define SELLER "2088102177001234"
#define TOKEN "202411BB8d7f3e5a0c9b4e2f61a7d3c5e9f0a1b2"
#define OWN_APP "2021000999999999"
#define CT_FIELDS_MAX 64 /* fields_t capacity */

/* H, CH, DL, CTX, TMPD and the helpers every channel suite shares */
#include "chantest.h"

/* ------------------------------------------------------------------ */
/* test state */

static char *APP_PRIV, *APP_PUB, *APP_PRIV_B64, *APP_PRIV_PKCS1, *ALI_PRIV, *ALI_PUB, *ALI_PUB_B64, *ROGUE_PRIV,
    *ROGUE_PUB;
static char SETTINGS[16384];

static gw_chan_merchant_t M_ISV, M_NOTOKEN, M_OWN, M_OVERRIDE;

/* ------------------------------------------------------------------ */
/* shell / openssl (the independent implementation) */

/* Base64 SHA256withRSA signature of the n bytes at s, by `openssl dgst -sign`. */
static char *ossl_sign_n(const char *keyfile, const char *s, size_t n)
{
    char *r = ct_ossl_sign_n(keyfile, "sha256", s, n);
    assert_true(strlen(r) > 100);
    return r;
}

static char *ossl_sign(const char *keyfile, const char *s)
{
    return ossl_sign_n(keyfile, s, strlen(s));
}

/* 1 when `openssl dgst -verify` accepts the Base64 signature of s. */
static int ossl_verify(const char *pubfile, const char *s, const char *sig_b64)
{
    return ct_ossl_verify(pubfile, "sha256", s, sig_b64);
}

/* ------------------------------------------------------------------ */
/* the test's own form decoder and signing string */

static int hexv(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static char *pct_decode(const char *s, size_t n)
{
    char *o = malloc(n + 1);
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hexv(s[i + 1]) >= 0 && hexv(s[i + 2]) >= 0) {
            o[w++] = (char)(hexv(s[i + 1]) * 16 + hexv(s[i + 2]));
            i += 2;
        } else if (s[i] == '+') {
            o[w++] = ' ';
        } else {
            o[w++] = s[i];
        }
    }
    o[w] = '\0';
    return o;
}

/* k=v&k=v (URL-encoded) appended to f; duplicate keys fail the test */
static void parse_form_into(const char *s, fields_t *f)
{
    while (*s) {
        const char *amp = strchr(s, '&');
        size_t seg = amp ? (size_t)(amp - s) : strlen(s);
        const char *eq = memchr(s, '=', seg);
        assert_non_null(eq);
        char *k = pct_decode(s, (size_t)(eq - s));
        char *v = pct_decode(eq + 1, seg - (size_t)(eq - s) - 1);
        assert_null(fget(f, k));
        assert_true(f->n < 64);
        f->k[f->n] = k;
        f->v[f->n] = v;
        f->n++;
        s += seg + (amp ? 1 : 0);
    }
}

/* PROTOCOLS.md §C.2 / §C.4, written independently of the module and host:
 * the fields not in `skip`, empty values dropped, keys sorted byte-wise. */
static char *sign_string_of(const fields_t *f, const char *const *skip)
{
    int idx[64], n = 0;
    for (int i = 0; i < f->n; i++) {
        int sk = f->v[i][0] == '\0';
        for (const char *const *p = skip; *p; p++)
            if (strcmp(f->k[i], *p) == 0) sk = 1;
        if (!sk) idx[n++] = i;
    }
    SORT_F = f;
    qsort(idx, (size_t)n, sizeof(int), cmp_idx);
    char *s = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&s, &len);
    assert_non_null(m);
    for (int i = 0; i < n; i++) fprintf(m, "%s%s=%s", i ? "&" : "", f->k[idx[i]], f->v[idx[i]]);
    fclose(m);
    return s;
}

static const char *const SKIP_SIGN[] = { "sign", NULL };
static const char *const SKIP_SIGN_TYPE[] = { "sign", "sign_type", NULL };

/* percent-encodes everything but unreserved characters (a form value) */
static void pct_encode_into(FILE *m, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
            c == '_' || c == '.' || c == '~')
            fputc(c, m);
        else if (c == ' ')
            fputc('+', m);
        else
            fprintf(m, "%%%02X", c);
    }
}

/* ------------------------------------------------------------------ */
/* signed answers, written by the test */

enum { SG_NONE, SG_ALIPAY, SG_ROGUE, SG_UNESCAPED, SG_TAMPER };

/* {"<key>":<text>,"sign":"…"} with the signature over text (as mode says). */
static char *mkresp_key(const char *key, const char *text, int mode)
{
    char *sig = NULL, *out = NULL;
    switch (mode) {
    case SG_NONE: break;
    case SG_ALIPAY:
    case SG_TAMPER: sig = ossl_sign(FIX "alipay_priv.pem", text); break;
    case SG_ROGUE: sig = ossl_sign(FIX "rogue_priv.pem", text); break;
    case SG_UNESCAPED: {
        /* the signature covers the text with "\/" read as "/" */
        char *u = strdup(text);
        size_t w = 0;
        for (size_t i = 0; text[i]; i++) {
            if (text[i] == '\\' && text[i + 1] == '/') continue;
            u[w++] = text[i];
        }
        u[w] = '\0';
        sig = ossl_sign(FIX "alipay_priv.pem", u);
        free(u);
        break;
    }
    }
    char *t = strdup(text);
    if (mode == SG_TAMPER) {
        char *p = strstr(t, "10000");
        if (p) p[4] = '3'; /* 10000 → 10003 */
        else t[1] = ' ';
    }
    if (sig) assert_true(asprintf(&out, "{\"%s\":%s,\"sign\":\"%s\"}", key, t, sig) > 0);
    else assert_true(asprintf(&out, "{\"%s\":%s}", key, t) > 0);
    free(t);
    free(sig);
    return out;
}

static char *mkresp(const char *method_us, const char *text, int mode)
{
    char key[128];
    snprintf(key, sizeof(key), "%s_response", method_us);
    return mkresp_key(key, text, mode);
}

/* ------------------------------------------------------------------ */
/* calls */

static void req_init(gw_chan_request_t *r)
{
    ct_req_init(r, 8192, 4096, 65536, 65536);
}

static gw_chan_order_t order_qr(void)
{
    gw_chan_order_t o;
    memset(&o, 0, sizeof(o));
    o.out_trade_no = S("PG20240101000001");
    o.amount = 8888;
    o.currency = S("CNY");
    o.subject = S("龙井 \"tea\" & /cake\\");
    o.method = GW_METHOD_ALIPAY_QR;
    o.client_ip = S("203.0.113.7");
    o.notify_url = S("https://pay.example.com/notify/alipay");
    o.expire_ms = 1704081600000; /* 2024-01-01 12:00:00 GMT+8 */
    o.created_ms = 1704074400000;
    return o;
}

static gw_chan_order_t order_bar(void)
{
    gw_chan_order_t o = order_qr();
    o.method = GW_METHOD_BARCODE;
    o.auth_code = S("287654321012345678");
    o.amount = 1;
    o.subject = S("tea");
    o.expire_ms = 0;
    return o;
}

/* Builds a request and reads it back with the test's own decoder: the URL's
 * query string and the form body, merged (no key in both). */
static void build(build_fn fn, const gw_chan_call_t *c, gw_chan_request_t *req, fields_t *f)
{
    req_init(req);
    assert_int_equal(fn(c, req), GW_OK);
    assert_string_equal(req->method, "POST");
    assert_string_equal(req->headers.data, "Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n");
    const char *q = strchr(req->url.data, '?');
    assert_non_null(q);
    f->n = 0;
    parse_form_into(q + 1, f);
    /* the SDK's placement: everything but biz_content in the URL */
    assert_null(fget(f, "biz_content"));
    assert_non_null(req->body.data);
    assert_true(strncmp(req->body.data, "biz_content=", 12) == 0);
    parse_form_into(req->body.data, f);
}

/* The request's sign verifies with OpenSSL and the app's public key over
 * the test's own string, which is also req->sign_string. */
static void check_signed(const gw_chan_request_t *req, const fields_t *f, const char *pubfile)
{
    char *s = sign_string_of(f, SKIP_SIGN);
    assert_string_equal(req->sign_string.data, s);
    assert_non_null(strstr(s, "sign_type=RSA2")); /* sign_type IS signed */
    assert_true(ossl_verify(pubfile, s, fget(f, "sign")));
    assert_false(ossl_verify(FIX "alipay_pub.pem", s, fget(f, "sign")));
    free(s);
}

/* "yyyy-MM-dd HH:mm:ss" GMT+8 within a few seconds of now */
static void check_timestamp(const char *ts)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    assert_non_null(ts);
    assert_int_equal(strlen(ts), 19);
    char *end = strptime(ts, "%Y-%m-%d %H:%M:%S", &tm);
    assert_non_null(end);
    assert_int_equal(*end, '\0');
    time_t t = timegm(&tm) - 8 * 3600;
    long d = (long)(t - time(NULL));
    assert_true(d >= -5 && d <= 5);
}

static void check_common(const fields_t *f, const char *method, const char *app_id, const char *token)
{
    assert_string_equal(fget(f, "app_id"), app_id);
    assert_string_equal(fget(f, "method"), method);
    assert_string_equal(fget(f, "format"), "JSON");
    assert_string_equal(fget(f, "charset"), "utf-8");
    assert_string_equal(fget(f, "sign_type"), "RSA2");
    assert_string_equal(fget(f, "version"), "1.0");
    check_timestamp(fget(f, "timestamp"));
    if (token) assert_string_equal(fget(f, "app_auth_token"), token);
    else assert_null(fget(f, "app_auth_token"));
}

/* Runs a parse function on an HTTP answer; returns res->status. */
static int parse(parse_fn fn, const gw_chan_call_t *c, int http, const char *body, gw_chan_result_t *res)
{
    return ct_parse(fn, c, http, NULL, body, res);
}

static int parse_free(parse_fn fn, const gw_chan_call_t *c, int http, char *body, gw_chan_result_t *res)
{
    int st = parse(fn, c, http, body, res);
    free(body);
    H->buf_free(&res->pay_data);
    return st;
}

/* ------------------------------------------------------------------ */
/* group setup */

static void check_init_reason(gw_err_t rc, const gw_buf_t *err)
{
    if (rc != GW_OK) {
        /* the reason never holds key material */
        assert_non_null(err->data);
        assert_null(strstr(err->data, "MII"));
    }
}

static void *new_ctx(const char *settings, gw_err_t want)
{
    return ct_new_ctx(settings, want, NULL, 0, check_init_reason);
}

/* settings JSON with the given extra members (a trailing comma-less list) */
static void mk_settings(char *out, size_t cap, const char *extra)
{
    char priv[4096], pub[2048];
    json_escape_into(priv, sizeof(priv), APP_PRIV);
    json_escape_into(pub, sizeof(pub), ALI_PUB);
    snprintf(out, cap,
             "{\"gateway_url\":\"https://openapi.example.com/gateway.do\",\"app_id\":\"" APP_ID "\","
             "\"private_key\":\"%s\",\"alipay_public_key\":\"%s\"%s%s}",
             priv, pub, extra && *extra ? "," : "", extra ? extra : "");
}

static int common_setup(void)
{
    H = gw_host_api();
    if (ct_tmpdir_make("test_alipay") != 0) return -1;
    APP_PRIV = read_file(FIX "app_priv.pem");
    APP_PUB = read_file(FIX "app_pub.pem");
    APP_PRIV_B64 = read_file(FIX "app_priv.b64");
    APP_PRIV_PKCS1 = read_file(FIX "app_priv_pkcs1.pem");
    ALI_PRIV = read_file(FIX "alipay_priv.pem");
    ALI_PUB = read_file(FIX "alipay_pub.pem");
    ALI_PUB_B64 = read_file(FIX "alipay_pub.b64");
    ROGUE_PRIV = read_file(FIX "rogue_priv.pem");
    ROGUE_PUB = read_file(FIX "rogue_pub.pem");
    mk_settings(SETTINGS, sizeof(SETTINGS), "\"expire_grace_s\":60");

    memset(&M_ISV, 0, sizeof(M_ISV));
    M_ISV.mch_id = S(SELLER);
    M_ISV.extra = S("{\"app_auth_token\":\"" TOKEN "\"}");

    M_NOTOKEN = M_ISV;
    M_NOTOKEN.extra = S("{}");

    /* a merchant with an app of its own: its app id and key, no token */
    memset(&M_OWN, 0, sizeof(M_OWN));
    M_OWN.mch_id = S("2088102177009999");
    M_OWN.app_id = S(OWN_APP);
    M_OWN.private_key = S(ROGUE_PRIV);
    M_OWN.public_key = S(ROGUE_PUB);

    /* the ISV app, but this merchant's row overrides both keys */
    M_OVERRIDE = M_ISV;
    M_OVERRIDE.private_key = S(ROGUE_PRIV);
    M_OVERRIDE.public_key = S(ROGUE_PUB);
    return 0;
}

static int common_teardown(void)
{
    free(APP_PRIV); free(APP_PUB); free(APP_PRIV_B64); free(APP_PRIV_PKCS1); free(ALI_PRIV); free(ALI_PUB);
    free(ALI_PUB_B64); free(ROGUE_PRIV); free(ROGUE_PUB);
    return 0;
}

/* the group's ctx block (chantest.h's fixtures call this once CH is set) */
static void *group_ctx(void)
{
    return new_ctx(SETTINGS, GW_OK);
}

/* ------------------------------------------------------------------ */
/* tests: the vtable, the shared object, init */

static void t_vtable(void **state)
{
    assert_int_equal(CH->abi_version, GW_CHANNEL_ABI_VERSION);
    assert_int_equal(CH->struct_size, sizeof(gw_channel_t));
    assert_string_equal(CH->name, "alipay");
    assert_string_equal(CH->version, "1.0.0");
    assert_string_equal(CH->build_sig, GW_CHANNEL_BUILD_SIG);
    assert_int_equal(CH->methods, GW_METHOD_ALIPAY_QR | GW_METHOD_BARCODE);
    assert_non_null(CH->init); assert_non_null(CH->fini);
    assert_non_null(CH->pay); assert_non_null(CH->pay_parse);
    assert_non_null(CH->query); assert_non_null(CH->query_parse);
    assert_non_null(CH->refund); assert_non_null(CH->refund_parse);
    assert_non_null(CH->close); assert_non_null(CH->close_parse);
    assert_non_null(CH->notify_parse); assert_non_null(CH->notify_verify);
    /* PROTOCOLS.md §C.5: query every 5 s, 5 times, cancel right after the
     * 5th; the refund query >= 10 s after the refund */
    assert_non_null(CH->policy);
    assert_int_equal(CH->policy->struct_size, sizeof(gw_chan_policy_t));
    assert_int_equal(CH->policy->poll_interval_ms, 5000);
    assert_int_equal(CH->policy->poll_deadline_ms, 25000);
    assert_int_equal(CH->policy->reverse_min_age_ms, 0);
    assert_int_equal(CH->policy->close_min_age_ms, 0);
    assert_int_equal(CH->policy->refund_query_delay_ms, 10000);
}

static void t_shared_object(void **state)
{
    ct_assert_so_exports(SO_PATH);
}

static void t_init(void **state)
{
    char s[16384];
    void *ctx = new_ctx("{}", GW_OK);
    gw_chan_order_t o = order_bar();
    gw_chan_call_t c = mkcall(ctx, &M_ISV, &o, NULL, 0);
    gw_chan_request_t req;
    /* no app id and no key in the settings: nothing can be built */
    req_init(&req);
    assert_int_equal(CH->query(&c, &req), GW_EINVAL);
    req_free(&req);
    c.merchant = &M_OWN; /* … unless the merchant brings its own app */
    fields_t f;
    build(CH->query, &c, &req, &f);
    assert_true(strncmp(req.url.data, "https://openapi.alipay.com/gateway.do?", 38) == 0);
    check_common(&f, "alipay.trade.query", OWN_APP, NULL);
    check_signed(&req, &f, FIX "rogue_pub.pem");
    fields_free(&f);
    req_free(&req);
    free_ctx(ctx);

    /* keys as bare Base64 (Alipay's key tool) and PKCS#1 PEM */
    char priv[4096];
    json_escape_into(priv, sizeof(priv), APP_PRIV_PKCS1);
    snprintf(s, sizeof(s), "{\"app_id\":\"" APP_ID "\",\"private_key\":\"%s\",\"alipay_public_key\":\"%s\","
             "\"gateway_url\":\"http://127.0.0.1:1/x/gateway.do\"}", APP_PRIV_B64, ALI_PUB_B64);
    ctx = new_ctx(s, GW_OK);
    c = mkcall(ctx, &M_ISV, &o, NULL, 0);
    build(CH->query, &c, &req, &f);
    assert_true(strncmp(req.url.data, "http://127.0.0.1:1/x/gateway.do?app_id=" APP_ID "&method=", 39 + 16 + 8) == 0);
    check_signed(&req, &f, FIX "app_pub.pem");
    fields_free(&f);
    req_free(&req);
    free_ctx(ctx);
    snprintf(s, sizeof(s), "{\"app_id\":\"" APP_ID "\",\"private_key\":\"%s\"}", priv);
    ctx = new_ctx(s, GW_OK);
    c = mkcall(ctx, &M_ISV, &o, NULL, 0);
    build(CH->close, &c, &req, &f);
    check_signed(&req, &f, FIX "app_pub.pem");
    fields_free(&f);
    req_free(&req);
    free_ctx(ctx);

    /* errors */
    new_ctx("[1,2]", GW_EINVAL);
    new_ctx("not json", GW_EINVAL);
    new_ctx("{\"gateway_url\":\"ftp://x\"}", GW_EINVAL);
    new_ctx("{\"gateway_url\":7}", GW_EINVAL);
    /* the common parameters go in the query string, each once */
    new_ctx("{\"gateway_url\":\"https://openapi.alipay.com/gateway.do?charset=utf-8\"}", GW_EINVAL);
    new_ctx("{\"app_id\":\"20 21\"}", GW_EINVAL);
    new_ctx("{\"app_id\":\"2021&x=1\"}", GW_EINVAL);
    new_ctx("{\"expire_grace_s\":-1}", GW_EINVAL);
    new_ctx("{\"expire_grace_s\":\"60\"}", GW_EINVAL);
    new_ctx("{\"private_key\":\"MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\"}", GW_EKEY);
    new_ctx("{\"alipay_public_key\":\"-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\\n\"}", GW_EKEY);
    new_ctx("{\"private_key\":5}", GW_EINVAL);
    /* a private key where the public one belongs */
    snprintf(s, sizeof(s), "{\"alipay_public_key\":\"%s\"}", priv);
    new_ctx(s, GW_EKEY);
}

/* ------------------------------------------------------------------ */
/* tests: requests */

static void t_fen_yuan(void **state)
{
    static const struct { int64_t fen; const char *yuan; } cases[] = {
        { 1, "0.01" }, { 10, "0.10" }, { 99, "0.99" }, { 100, "1.00" }, { 8888, "88.88" },
        { 123456789, "1234567.89" }, { 10000000000LL, "100000000.00" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char y[32];
        ap_yuan(cases[i].fen, y);
        assert_string_equal(y, cases[i].yuan);
        assert_int_equal(ap_parse_yuan(S(cases[i].yuan)), cases[i].fen);
        /* and through the module's request */
        gw_chan_order_t o = order_bar();
        o.amount = cases[i].fen;
        gw_chan_call_t c = mkcall(CTX, &M_ISV, &o, NULL, 0);
        gw_chan_request_t req;
        fields_t f;
        build(CH->pay, &c, &req, &f);
        char want[64];
        snprintf(want, sizeof(want), "\"total_amount\":\"%s\"", cases[i].yuan);
        assert_non_null(strstr(fget(&f, "biz_content"), want));
        fields_free(&f);
        req_free(&req);
    }
    static const struct { const char *s; int64_t fen; } parses[] = {
        { "88.8", 8880 }, { "88", 8800 }, { "0", 0 }, { "0.5", 50 }, { "0.05", 5 },
        { "88.888", -1 }, { "1.", -1 }, { ".5", -1 }, { "-1", -1 }, { "+1", -1 }, { "01", -1 },
        { "00.10", -1 }, { "1e2", -1 }, { "1,00", -1 }, { " 1", -1 }, { "1 ", -1 }, { "", -1 },
        { "100000000.01", -1 }, { "1000000000", -1 }, { "0x10", -1 }, { "１", -1 },
    };
    for (size_t i = 0; i < sizeof(parses) / sizeof(parses[0]); i++) {
        if (ap_parse_yuan(S(parses[i].s)) != parses[i].fen) fail_msg("parse \"%s\"", parses[i].s);
    }
}

static void t_precreate(void **state)
{
    gw_chan_order_t o = order_qr();
    gw_chan_call_t c = mkcall(CTX, &M_ISV, &o, NULL, 0);
    gw_chan_request_t req;
    fields_t f;
    build(CH->pay, &c, &req, &f);
    assert_true(strncmp(req.url.data, "https://openapi.example.com/gateway.do?", 39) == 0);
    check_common(&f, "alipay.trade.precreate", APP_ID, TOKEN);
    assert_string_equal(fget(&f, "notify_url"), "https://pay.example.com/notify/alipay");
    /* biz_content: compact JSON, our members in our order, escapes only
     * where JSON needs them (JSON.stringify writes the same bytes) */
    assert_string_equal(fget(&f, "biz_content"),
                        "{\"out_trade_no\":\"PG20240101000001\",\"total_amount\":\"88.88\","
                        "\"subject\":\"龙井 \\\"tea\\\" & /cake\\\\\",\"time_expire\":\"2024-01-01 12:00:00\"}");
    check_signed(&req, &f, FIX "app_pub.pem");
    /* the body is exactly the encoded biz_content */
    assert_null(strchr(req.body.data, ' '));
    assert_null(strstr(req.body.data, "&"));
    fields_free(&f);
    req_free(&req);

    /* no time_expire without an expiry; store_id and the ISV's PID when configured */
    char s[16384];
    mk_settings(s, sizeof(s), "\"sys_service_provider_id\":\"2088000000000009\"");
    void *ctx = new_ctx(s, GW_OK);
    gw_chan_merchant_t m = M_ISV;
    m.extra = S("{\"app_auth_token\":\"" TOKEN "\",\"store_id\":\"NJ_001\"}");
    o.expire_ms = 0;
    o.subject = S("x");
    c = mkcall(ctx, &m, &o, NULL, 0);
    build(CH->pay, &c, &req, &f);
    assert_string_equal(fget(&f, "biz_content"),
                        "{\"out_trade_no\":\"PG20240101000001\",\"total_amount\":\"88.88\",\"subject\":\"x\","
                        "\"store_id\":\"NJ_001\",\"extend_params\":{\"sys_service_provider_id\":\"2088000000000009\"}}");
    check_signed(&req, &f, FIX "app_pub.pem");
    fields_free(&f);
    req_free(&req);
    free_ctx(ctx);
}

static void t_pay_barcode(void **state)
{
    gw_chan_order_t o = order_bar();
    gw_chan_call_t c = mkcall(CTX, &M_ISV, &o, NULL, 0);
    gw_chan_request_t req;
    fields_t f;
    build(CH->pay, &c, &req, &f);
    check_common(&f, "alipay.trade.pay", APP_ID, TOKEN);
    assert_string_equal(fget(&f, "biz_content"),
                        "{\"out_trade_no\":\"PG20240101000001\",\"total_amount\":\"0.01\",\"subject\":\"tea\","
                        "\"scene\":\"bar_code\",\"auth_code\":\"287654321012345678\","
                        "\"product_code\":\"FACE_TO_FACE_PAYMENT\"}");
    check_signed(&req, &f, FIX "app_pub.pem");
    fields_free(&f);
    req_free(&req);
    /* the merchant's own keys override the app's */
    c.merchant = &M_OVERRIDE;
    build(CH->pay, &c, &req, &f);
    check_common(&f, "alipay.trade.pay", APP_ID, TOKEN);
    check_signed(&req, &f, FIX "rogue_pub.pem");
    fields_free(&f);
    req_free(&req);
}

static void t_other_requests(void **state)
{
    gw_chan_order_t o = order_bar();
    gw_chan_refund_t r;
    memset(&r, 0, sizeof(r));
    r.out_refund_no = S("RF2024000001");
    r.amount = 30;
    r.total_amount = 100;
    r.reason = S("too sweet");
    o.amount = 100;
    struct {
        build_fn fn;
        uint32_t flags;
        const gw_chan_refund_t *r;
        const char *method, *biz;
    } cases[] = {
        { CH->query, 0, NULL, "alipay.trade.query", "{\"out_trade_no\":\"PG20240101000001\"}" },
        { CH->query, GW_CALL_REFUND_QUERY, &r, "alipay.trade.fastpay.refund.query",
          "{\"out_trade_no\":\"PG20240101000001\",\"out_request_no\":\"RF2024000001\"}" },
        { CH->refund, 0, &r, "alipay.trade.refund",
          "{\"out_trade_no\":\"PG20240101000001\",\"refund_amount\":\"0.30\",\"out_request_no\":\"RF2024000001\","
          "\"refund_reason\":\"too sweet\"}" },
        { CH->close, 0, NULL, "alipay.trade.close", "{\"out_trade_no\":\"PG20240101000001\"}" },
        { CH->close, GW_CALL_REVERSE, NULL, "alipay.trade.cancel", "{\"out_trade_no\":\"PG20240101000001\"}" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        gw_chan_call_t c = mkcall(CTX, &M_ISV, &o, cases[i].r, cases[i].flags);
        gw_chan_request_t req;
        fields_t f;
        build(cases[i].fn, &c, &req, &f);
        check_common(&f, cases[i].method, APP_ID, TOKEN);
        assert_null(fget(&f, "notify_url"));
        assert_string_equal(fget(&f, "biz_content"), cases[i].biz);
        check_signed(&req, &f, FIX "app_pub.pem");
        fields_free(&f);
        req_free(&req);
    }
    /* only Alipay's trade number known */
    o.out_trade_no = S("");
    o.channel_trade_no = S("2024010122001400000000000001");
    gw_chan_call_t c = mkcall(CTX, &M_ISV, &o, NULL, 0);
    gw_chan_request_t req;
    fields_t f;
    build(CH->query, &c, &req, &f);
    assert_string_equal(fget(&f, "biz_content"), "{\"trade_no\":\"2024010122001400000000000001\"}");
    fields_free(&f);
    req_free(&req);
}

static void t_request_errors(void **state)
{
    gw_chan_order_t o = order_bar();
    gw_chan_refund_t r;
    memset(&r, 0, sizeof(r));
    r.out_refund_no = S("RF1");
    r.amount = 30;
    r.total_amount = 100;
    gw_chan_request_t req;
    typedef struct {
        build_fn fn;
        const gw_chan_merchant_t *m;
        gw_chan_order_t o;
        const gw_chan_refund_t *r;
        uint32_t flags;
        gw_err_t want;
    } case_t;
    case_t cases[32];
    int n = 0;
    gw_chan_order_t x;
#define CASE(FN, M, O, R, FL, W) cases[n++] = (case_t){ FN, M, O, R, FL, W }
    CASE(CH->pay, &M_NOTOKEN, o, NULL, 0, GW_EKEY);  /* ISV mode needs the token */
    x = o; x.amount = 0; CASE(CH->pay, &M_ISV, x, NULL, 0, GW_EINVAL);
    x = o; x.amount = -5; CASE(CH->pay, &M_ISV, x, NULL, 0, GW_EINVAL);
    x = o; x.amount = 10000000001LL; CASE(CH->pay, &M_ISV, x, NULL, 0, GW_EINVAL);
    x = o; x.subject = S(""); CASE(CH->pay, &M_ISV, x, NULL, 0, GW_EINVAL);
    x = o; x.out_trade_no = S(""); CASE(CH->pay, &M_ISV, x, NULL, 0, GW_EINVAL);
    x = o; x.auth_code = S(""); CASE(CH->pay, &M_ISV, x, NULL, 0, GW_EINVAL);
    x = order_qr(); x.notify_url = S(""); CASE(CH->pay, &M_ISV, x, NULL, 0, GW_EINVAL);
    x = o; x.method = GW_METHOD_WECHAT_QR; CASE(CH->pay, &M_ISV, x, NULL, 0, GW_ENOTSUP);
    x = o; x.method = GW_METHOD_ALIPAY_JSAPI; CASE(CH->pay, &M_ISV, x, NULL, 0, GW_ENOTSUP);
    x = o; x.out_trade_no = S(""); CASE(CH->query, &M_ISV, x, NULL, 0, GW_EINVAL);
    CASE(CH->query, &M_ISV, o, NULL, GW_CALL_REFUND_QUERY, GW_EINVAL);
    CASE(CH->refund, &M_ISV, o, NULL, 0, GW_EINVAL);
    static gw_chan_refund_t r_over, r_zero, r_noid;
    r_over = r; r_over.amount = 101;
    r_zero = r; r_zero.amount = 0;
    r_noid = r; r_noid.out_refund_no = S("");
    CASE(CH->refund, &M_ISV, o, &r_over, 0, GW_EINVAL);
    CASE(CH->refund, &M_ISV, o, &r_zero, 0, GW_EINVAL);
    CASE(CH->refund, &M_ISV, o, &r_noid, 0, GW_EINVAL);
    CASE(CH->query, &M_ISV, o, &r_noid, GW_CALL_REFUND_QUERY, GW_EINVAL);
    x = o; x.out_trade_no = S(""); CASE(CH->close, &M_ISV, x, NULL, GW_CALL_REVERSE, GW_EINVAL);
#undef CASE
    static gw_chan_merchant_t bad_extra, no_mch, bad_key;
    bad_extra = M_ISV; bad_extra.extra = S("{\"app_auth_token\":");
    no_mch = M_ISV; no_mch.mch_id = S("");
    bad_key = M_ISV; bad_key.private_key = S("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    cases[n++] = (case_t){ CH->query, &bad_extra, o, NULL, 0, GW_EINVAL };
    cases[n++] = (case_t){ CH->query, &no_mch, o, NULL, 0, GW_EINVAL };
    cases[n++] = (case_t){ CH->query, &bad_key, o, NULL, 0, GW_EKEY };
    cases[n++] = (case_t){ CH->query, NULL, o, NULL, 0, GW_EINVAL };
    for (int i = 0; i < n; i++) {
        gw_chan_call_t c = mkcall(CTX, cases[i].m, &cases[i].o, cases[i].r, cases[i].flags);
        req_init(&req);
        gw_err_t rc = cases[i].fn(&c, &req);
        if (rc != cases[i].want) fail_msg("case %d: %d, want %d", i, rc, cases[i].want);
        req_free(&req);
    }
}

/* ------------------------------------------------------------------ */
/* tests: answers */

#define PAY_OK "{\"code\":\"10000\",\"msg\":\"Success\",\"trade_no\":\"2024010122001455551234567890\"," \
               "\"out_trade_no\":\"PG20240101000001\",\"buyer_logon_id\":\"159****5620\",\"total_amount\":\"0.01\"," \
               "\"receipt_amount\":\"0.01\",\"gmt_payment\":\"2024-01-01 11:00:00\"," \
               "\"fund_bill_list\":[{\"fund_channel\":\"ALIPAYACCOUNT\",\"amount\":\"0.01\"}],\"buyer_user_id\":\"2088101117955611\"}"

static void t_pay_answers(void **state)
{
    gw_chan_order_t o = order_bar();
    gw_chan_call_t c = mkcall(CTX, &M_ISV, &o, NULL, 0);
    gw_chan_result_t res;
    const char *m = "alipay_trade_pay";
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, mkresp(m, PAY_OK, SG_ALIPAY), &res), GW_PAY_SUCCESS);
    assert_string_equal(res.channel_trade_no, "2024010122001455551234567890");
    assert_int_equal(res.amount, 1);
    assert_int_equal(res.retry, 0);
    assert_string_equal(res.mch_id, "");
    /* 10003: waiting for the password */
    assert_int_equal(parse_free(CH->pay_parse, &c, 200,
                                mkresp(m, "{\"code\":\"10003\",\"msg\":\"order success pay inprocess\","
                                          "\"trade_no\":\"2024010122001455551234567890\",\"out_trade_no\":\"PG20240101000001\","
                                          "\"total_amount\":\"0.01\"}", SG_ALIPAY), &res),
                     GW_PAY_USER_PAYING);
    assert_string_equal(res.raw_code, "10003");
    struct { const char *text; int want; const char *code; } cases[] = {
        { "{\"code\":\"20000\",\"msg\":\"Service Currently Unavailable\",\"sub_code\":\"isp.unknow-error\",\"sub_msg\":\"系统繁忙\"}",
          GW_PAY_UNKNOWN, "isp.unknow-error" },
        { "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.PAYMENT_AUTH_CODE_INVALID\",\"sub_msg\":\"付款码无效\"}",
          GW_PAY_FAILED, "ACQ.PAYMENT_AUTH_CODE_INVALID" },
        { "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.BUYER_BALANCE_NOT_ENOUGH\",\"sub_msg\":\"余额不足\"}",
          GW_PAY_FAILED, "ACQ.BUYER_BALANCE_NOT_ENOUGH" },
        { "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.SYSTEM_ERROR\",\"sub_msg\":\"系统错误\"}",
          GW_PAY_UNKNOWN, "ACQ.SYSTEM_ERROR" },
        { "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"aop.ACQ.SYSTEM_ERROR\",\"sub_msg\":\"系统错误\"}",
          GW_PAY_UNKNOWN, "aop.ACQ.SYSTEM_ERROR" },
        { "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.TRADE_HAS_SUCCESS\",\"sub_msg\":\"交易已被支付\"}",
          GW_PAY_UNKNOWN, "ACQ.TRADE_HAS_SUCCESS" },
        { "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.TRADE_HAS_CLOSE\",\"sub_msg\":\"交易已经关闭\"}",
          GW_PAY_UNKNOWN, "ACQ.TRADE_HAS_CLOSE" },
        { "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.CONTEXT_INCONSISTENT\",\"sub_msg\":\"交易信息被篡改\"}",
          GW_PAY_UNKNOWN, "ACQ.CONTEXT_INCONSISTENT" },
        { "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"isp.unknow-error\",\"sub_msg\":\"x\"}",
          GW_PAY_UNKNOWN, "isp.unknow-error" },
        { "{\"code\":\"40002\",\"msg\":\"Invalid Arguments\",\"sub_code\":\"isv.invalid-signature\",\"sub_msg\":\"验签出错\"}",
          GW_PAY_FAILED, "isv.invalid-signature" },
        { "{\"code\":\"20001\",\"msg\":\"Insufficient Token Permissions\",\"sub_code\":\"aop.invalid-app-auth-token\",\"sub_msg\":\"无效的应用授权令牌\"}",
          GW_PAY_FAILED, "aop.invalid-app-auth-token" },
        { "{\"code\":\"40006\",\"msg\":\"Insufficient Permissions\",\"sub_code\":\"isv.insufficient-isv-permissions\"}",
          GW_PAY_FAILED, "isv.insufficient-isv-permissions" },
        { "{\"code\":\"50000\",\"msg\":\"?\"}", GW_PAY_UNKNOWN, "50000" },
        { "{\"msg\":\"no code\"}", GW_PAY_UNKNOWN, "" },
        /* 10000 for another order, or another amount: not trusted */
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"PGX\",\"total_amount\":\"0.01\"}", GW_PAY_UNKNOWN, "10000" },
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"PG20240101000001\",\"total_amount\":\"0.02\"}",
          GW_PAY_UNKNOWN, "GW_EAMOUNT" },
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"PG20240101000001\",\"total_amount\":0.01}",
          GW_PAY_UNKNOWN, "GW_EAMOUNT" },
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"PG20240101000001\",\"total_amount\":\"0.010\"}",
          GW_PAY_UNKNOWN, "GW_EAMOUNT" },
        /* a seller echo that is not ours */
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"PG20240101000001\",\"seller_id\":\"2088000000000000\"}",
          GW_PAY_UNKNOWN, "GW_EMCHID" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int st = parse_free(CH->pay_parse, &c, 200, mkresp(m, cases[i].text, SG_ALIPAY), &res);
        if (st != cases[i].want || strcmp(res.raw_code, cases[i].code) != 0)
            fail_msg("case %zu: status %d raw_code %s, want %d %s", i, st, res.raw_code, cases[i].want, cases[i].code);
    }
    /* our seller echoed */
    assert_int_equal(parse_free(CH->pay_parse, &c, 200,
                                mkresp(m, "{\"code\":\"10000\",\"msg\":\"Success\",\"seller_id\":\"" SELLER "\"}", SG_ALIPAY),
                                &res), GW_PAY_SUCCESS);
    assert_string_equal(res.mch_id, SELLER);
    /* the same failure answered as error_response */
    assert_int_equal(parse_free(CH->pay_parse, &c, 200,
                                mkresp_key("error_response", "{\"code\":\"40004\",\"msg\":\"Business Failed\","
                                           "\"sub_code\":\"ACQ.PAYMENT_AUTH_CODE_INVALID\"}", SG_ALIPAY), &res),
                     GW_PAY_FAILED);
    /* 10003 is no answer to a precreate */
    gw_chan_order_t q = order_qr();
    c.order = &q;
    assert_int_equal(parse_free(CH->pay_parse, &c, 200,
                                mkresp("alipay_trade_precreate", "{\"code\":\"10003\",\"msg\":\"x\"}", SG_ALIPAY), &res),
                     GW_PAY_UNKNOWN);
}

static void t_precreate_answers(void **state)
{
    gw_chan_order_t o = order_qr();
    gw_chan_call_t c = mkcall(CTX, &M_ISV, &o, NULL, 0);
    gw_chan_result_t res;
    gw_chan_response_t resp;
    const char *m = "alipay_trade_precreate";
    /* "\/" as Alipay writes it; the signature covers exactly these bytes */
    char *body = mkresp(m, "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"PG20240101000001\","
                           "\"qr_code\":\"https:\\/\\/qr.alipay.com\\/bax08431nyjuqmpk0l7j0089\"}", SG_ALIPAY);
    memset(&resp, 0, sizeof(resp));
    resp.status = 200;
    resp.body = S(body);
    memset(&res, 0x5a, sizeof(res));
    H->buf_init(&res.pay_data, 65536);
    assert_int_equal(CH->pay_parse(&c, &resp, &res), GW_OK);
    assert_int_equal(res.status, GW_PAY_PENDING);
    assert_string_equal(res.pay_data.data, "{\"code_url\":\"https://qr.alipay.com/bax08431nyjuqmpk0l7j0089\"}");
    assert_string_equal(res.raw_code, "WAIT_BUYER_PAY");
    H->buf_free(&res.pay_data);
    free(body);
    /* without a qr_code: the QR may exist, but the payer has nothing */
    assert_int_equal(parse_free(CH->pay_parse, &c, 200,
                                mkresp(m, "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"PG20240101000001\"}",
                                       SG_ALIPAY), &res), GW_PAY_UNKNOWN);
    assert_int_equal(parse_free(CH->pay_parse, &c, 200,
                                mkresp(m, "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.TOTAL_FEE_EXCEED\"}",
                                       SG_ALIPAY), &res), GW_PAY_FAILED);
    /* the answer of another method does not count */
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, mkresp("alipay_trade_pay", PAY_OK, SG_ALIPAY), &res),
                     GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_EPARSE");
}

/* Which bytes are signed, and what is not trusted. */
static void t_response_signature(void **state)
{
    gw_chan_order_t o = order_bar();
    gw_chan_call_t c = mkcall(CTX, &M_ISV, &o, NULL, 0);
    gw_chan_result_t res;
    const char *m = "alipay_trade_pay";
    char *text, *sig, *body;

    /* pretty-printed by the gateway: the signed text keeps its whitespace */
    text = "{\n  \"code\" : \"10000\",\n  \"msg\": \"Success\",\"trade_no\":\"T\\/1\" }";
    sig = ossl_sign(FIX "alipay_priv.pem", text);
    assert_true(asprintf(&body, " { \"alipay_trade_pay_response\" :\t%s ,\n \"sign\" : \"%s\" }\n", text, sig) > 0);
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, body, &res), GW_PAY_SUCCESS);
    assert_string_equal(res.channel_trade_no, "T/1");
    /* the sign first, unknown members around (certificate mode) */
    assert_true(asprintf(&body, "{\"sign\":\"%s\",\"alipay_cert_sn\":\"abc\",\"alipay_trade_pay_response\":%s,\"x\":[1,{\"y\":\"}\"}]}",
                         sig, text) > 0);
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, body, &res), GW_PAY_SUCCESS);
    /* the same object re-serialised (whitespace dropped) no longer verifies */
    assert_true(asprintf(&body, "{\"alipay_trade_pay_response\":{\"code\":\"10000\",\"msg\":\"Success\",\"trade_no\":\"T\\/1\"},\"sign\":\"%s\"}",
                         sig) > 0);
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, body, &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_ESIGN");
    /* the same member twice, or an escaped key: ambiguous, refused */
    assert_true(asprintf(&body, "{\"alipay_trade_pay_response\":%s,\"alipay_trade_pay_response\":%s,\"sign\":\"%s\"}", text,
                         text, sig) > 0);
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, body, &res), GW_PAY_UNKNOWN);
    assert_true(asprintf(&body, "{\"alipay_trade_pay\\u005fresponse\":{\"code\":\"40004\"},\"alipay_trade_pay_response\":%s,\"sign\":\"%s\"}",
                         text, sig) > 0);
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, body, &res), GW_PAY_UNKNOWN);
    /* trailing garbage after the object */
    assert_true(asprintf(&body, "{\"alipay_trade_pay_response\":%s,\"sign\":\"%s\"}x", text, sig) > 0);
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, body, &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_EPARSE");
    free(sig);

    /* signed over the text with "\/" unescaped: accepted by the fallback */
    assert_int_equal(parse_free(CH->pay_parse, &c, 200,
                                mkresp(m, "{\"code\":\"10000\",\"msg\":\"Success\",\"trade_no\":\"a\\/b\"}", SG_UNESCAPED), &res),
                     GW_PAY_SUCCESS);
    /* untrusted: rogue key, tampered, unsigned, empty sign, HTTP errors, garbage */
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, mkresp(m, PAY_OK, SG_ROGUE), &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_ESIGN");
    assert_int_equal(parse_free(CH->pay_parse, &c, 200,
                                mkresp(m, "{\"code\":\"10000\",\"msg\":\"Success\"}", SG_TAMPER), &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_ESIGN");
    /* an unsigned definite-looking failure is still UNKNOWN, never FAILED */
    assert_int_equal(parse_free(CH->pay_parse, &c, 200,
                                mkresp(m, "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.PAYMENT_AUTH_CODE_INVALID\"}", SG_NONE),
                                &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_ESIGN");
    assert_non_null(strstr(res.raw_msg, "ACQ.PAYMENT_AUTH_CODE_INVALID"));
    assert_int_equal(parse_free(CH->pay_parse, &c, 200,
                                strdup("{\"alipay_trade_pay_response\":{\"code\":\"10000\"},\"sign\":\"\"}"), &res),
                     GW_PAY_UNKNOWN);
    assert_int_equal(parse_free(CH->pay_parse, &c, 502, mkresp(m, PAY_OK, SG_ALIPAY), &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "HTTP_502");
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, strdup("<html>oops</html>"), &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_EPARSE");
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, strdup("{\"alipay_trade_pay_response\":{\"code\":\"10"), &res),
                     GW_PAY_UNKNOWN);
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, strdup("{\"alipay_trade_pay_response\":\"10000\",\"sign\":\"x\"}"), &res),
                     GW_PAY_UNKNOWN);
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, strdup(""), &res), GW_PAY_UNKNOWN);
    /* no alipay key at all: nothing verifies */
    void *ctx = new_ctx("{\"app_id\":\"" APP_ID "\"}", GW_OK);
    c.ctx = ctx;
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, mkresp(m, PAY_OK, SG_ALIPAY), &res), GW_PAY_UNKNOWN);
    /* … unless the merchant row brings it */
    gw_chan_merchant_t mm = M_ISV;
    mm.public_key = S(ALI_PUB);
    c.merchant = &mm;
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, mkresp(m, PAY_OK, SG_ALIPAY), &res), GW_PAY_SUCCESS);
    free_ctx(ctx);
    /* the merchant's key replaces the app's: Alipay's key no longer verifies */
    c.ctx = CTX;
    c.merchant = &M_OVERRIDE;
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, mkresp(m, PAY_OK, SG_ALIPAY), &res), GW_PAY_UNKNOWN);
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, mkresp(m, PAY_OK, SG_ROGUE), &res), GW_PAY_SUCCESS);
}

static void t_query_answers(void **state)
{
    gw_chan_order_t o = order_bar();
    o.amount = 8888;
    gw_chan_call_t c = mkcall(CTX, &M_ISV, &o, NULL, 0);
    gw_chan_result_t res;
    const char *m = "alipay_trade_query";
    struct { const char *ts; int bar, qr; } states[] = {
        { "TRADE_SUCCESS", GW_PAY_SUCCESS, GW_PAY_SUCCESS },
        { "TRADE_FINISHED", GW_PAY_SUCCESS, GW_PAY_SUCCESS },
        { "WAIT_BUYER_PAY", GW_PAY_USER_PAYING, GW_PAY_NOT_PAID },
        { "TRADE_CLOSED", GW_PAY_CLOSED, GW_PAY_CLOSED },
        { "TRADE_SOMETHING_NEW", GW_PAY_UNKNOWN, GW_PAY_UNKNOWN },
    };
    for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
        char text[512];
        snprintf(text, sizeof(text), "{\"code\":\"10000\",\"msg\":\"Success\",\"trade_no\":\"2024A\","
                 "\"out_trade_no\":\"PG20240101000001\",\"trade_status\":\"%s\",\"total_amount\":\"88.88\"}", states[i].ts);
        o.method = GW_METHOD_BARCODE;
        assert_int_equal(parse_free(CH->query_parse, &c, 200, mkresp(m, text, SG_ALIPAY), &res), states[i].bar);
        assert_string_equal(res.raw_code, states[i].ts);
        assert_int_equal(res.amount, 8888);
        assert_string_equal(res.channel_trade_no, "2024A");
        o.method = GW_METHOD_ALIPAY_QR;
        assert_int_equal(parse_free(CH->query_parse, &c, 200, mkresp(m, text, SG_ALIPAY), &res), states[i].qr);
    }
    /* not known to Alipay (an unscanned QR, a lost pay request): not paid so far */
    assert_int_equal(parse_free(CH->query_parse, &c, 200,
                                mkresp(m, "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.TRADE_NOT_EXIST\","
                                          "\"sub_msg\":\"交易不存在\"}", SG_ALIPAY), &res), GW_PAY_NOT_PAID);
    assert_string_equal(res.raw_code, "ACQ.TRADE_NOT_EXIST");
    assert_int_equal(parse_free(CH->query_parse, &c, 200,
                                mkresp(m, "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.TRADE_NOT_EXIST\"}",
                                       SG_NONE), &res), GW_PAY_UNKNOWN);
    assert_int_equal(parse_free(CH->query_parse, &c, 200,
                                mkresp(m, "{\"code\":\"20000\",\"msg\":\"x\",\"sub_code\":\"isp.unknow-error\"}", SG_ALIPAY), &res),
                     GW_PAY_UNKNOWN);
    assert_int_equal(parse_free(CH->query_parse, &c, 200,
                                mkresp(m, "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.INVALID_PARAMETER\"}",
                                       SG_ALIPAY), &res), GW_PAY_UNKNOWN);
    /* another trade, another amount */
    o.channel_trade_no = S("2024A");
    assert_int_equal(parse_free(CH->query_parse, &c, 200,
                                mkresp(m, "{\"code\":\"10000\",\"msg\":\"Success\",\"trade_no\":\"2024B\",\"trade_status\":\"TRADE_SUCCESS\"}",
                                       SG_ALIPAY), &res), GW_PAY_UNKNOWN);
    assert_int_equal(parse_free(CH->query_parse, &c, 200,
                                mkresp(m, "{\"code\":\"10000\",\"msg\":\"Success\",\"trade_no\":\"2024A\",\"trade_status\":\"TRADE_SUCCESS\","
                                          "\"total_amount\":\"88.87\"}", SG_ALIPAY), &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_EAMOUNT");
    assert_int_equal(res.amount, -1);
}

static void t_refund_answers(void **state)
{
    gw_chan_order_t o = order_bar();
    o.amount = 100;
    gw_chan_refund_t r;
    memset(&r, 0, sizeof(r));
    r.out_refund_no = S("RF1");
    r.amount = 30;
    r.total_amount = 100;
    gw_chan_call_t c = mkcall(CTX, &M_ISV, &o, &r, 0);
    gw_chan_result_t res;
    const char *m = "alipay_trade_refund";
    assert_int_equal(parse_free(CH->refund_parse, &c, 200,
                                mkresp(m, "{\"code\":\"10000\",\"msg\":\"Success\",\"trade_no\":\"2024A\",\"out_trade_no\":\"PG20240101000001\","
                                          "\"fund_change\":\"Y\",\"refund_fee\":\"0.30\"}", SG_ALIPAY), &res),
                     GW_REFUND_SUCCESS);
    assert_int_equal(res.amount, -1); /* refund_fee is cumulative */
    /* N: a repeat of a refund that already went through, or not settled yet */
    assert_int_equal(parse_free(CH->refund_parse, &c, 200,
                                mkresp(m, "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"PG20240101000001\","
                                          "\"fund_change\":\"N\",\"refund_fee\":\"0.30\"}", SG_ALIPAY), &res),
                     GW_REFUND_PROCESSING);
    assert_int_equal(parse_free(CH->refund_parse, &c, 200,
                                mkresp(m, "{\"code\":\"10000\",\"msg\":\"Success\"}", SG_ALIPAY), &res), GW_REFUND_PROCESSING);
    struct { const char *sub; const char *code; int want; } cases[] = {
        { "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "40004", GW_REFUND_FAILED },
        { "ACQ.TRADE_NOT_ALLOW_REFUND", "40004", GW_REFUND_FAILED },
        { "ACQ.TRADE_STATUS_ERROR", "40004", GW_REFUND_FAILED },
        { "ACQ.SELLER_BALANCE_NOT_ENOUGH", "40004", GW_REFUND_FAILED },
        { "ACQ.SYSTEM_ERROR", "40004", GW_REFUND_UNKNOWN },
        { "ACQ.DISCORDANT_REPEAT_REQUEST", "40004", GW_REFUND_UNKNOWN },
        { "isp.unknow-error", "20000", GW_REFUND_UNKNOWN },
        { "isv.invalid-signature", "40002", GW_REFUND_FAILED },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text), "{\"code\":\"%s\",\"msg\":\"x\",\"sub_code\":\"%s\",\"sub_msg\":\"y\"}", cases[i].code,
                 cases[i].sub);
        int st = parse_free(CH->refund_parse, &c, 200, mkresp(m, text, SG_ALIPAY), &res);
        if (st != cases[i].want) fail_msg("refund %s: %d", cases[i].sub, st);
        assert_string_equal(res.raw_code, cases[i].sub);
        assert_string_equal(res.raw_msg, "y");
    }
    assert_int_equal(parse_free(CH->refund_parse, &c, 200,
                                mkresp(m, "{\"code\":\"40004\",\"msg\":\"x\",\"sub_code\":\"ACQ.TRADE_STATUS_ERROR\"}", SG_ROGUE), &res),
                     GW_REFUND_UNKNOWN);
    assert_int_equal(parse_free(CH->refund_parse, &c, 200,
                                mkresp(m, "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"OTHER\",\"fund_change\":\"Y\"}",
                                       SG_ALIPAY), &res), GW_REFUND_UNKNOWN);
}

static void t_refund_query_answers(void **state)
{
    gw_chan_order_t o = order_bar();
    o.amount = 100;
    gw_chan_refund_t r;
    memset(&r, 0, sizeof(r));
    r.out_refund_no = S("RF1");
    r.amount = 30;
    r.total_amount = 100;
    gw_chan_call_t c = mkcall(CTX, &M_ISV, &o, &r, GW_CALL_REFUND_QUERY);
    gw_chan_result_t res;
    const char *m = "alipay_trade_fastpay_refund_query";
    struct { const char *text; int want; const char *code; int64_t amount; } cases[] = {
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"PG20240101000001\",\"out_request_no\":\"RF1\","
          "\"refund_amount\":\"0.30\",\"total_amount\":\"1.00\",\"refund_status\":\"REFUND_SUCCESS\"}",
          GW_REFUND_SUCCESS, "REFUND_SUCCESS", 30 },
        /* data without refund_status: success (the documented rule) */
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"out_request_no\":\"RF1\",\"refund_amount\":\"0.30\"}",
          GW_REFUND_SUCCESS, "REFUND_SUCCESS", 30 },
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"out_request_no\":\"RF1\",\"refund_status\":\"REFUND_PROCESSING\"}",
          GW_REFUND_PROCESSING, "REFUND_PROCESSING", -1 },
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"out_request_no\":\"RF1\",\"refund_status\":\"REFUND_FAIL\"}",
          GW_REFUND_UNKNOWN, "REFUND_FAIL", -1 },
        /* 10000 without refund data: not received (yet), or failed */
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"PG20240101000001\",\"trade_no\":\"2024A\"}",
          GW_REFUND_UNKNOWN, "REFUND_NOT_FOUND", -1 },
        { "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.TRADE_NOT_EXIST\"}",
          GW_REFUND_UNKNOWN, "ACQ.TRADE_NOT_EXIST", -1 },
        /* another refund, another amount */
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"out_request_no\":\"RF2\",\"refund_amount\":\"0.30\"}",
          GW_REFUND_UNKNOWN, "10000", -1 },
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"out_request_no\":\"RF1\",\"refund_amount\":\"0.31\"}",
          GW_REFUND_UNKNOWN, "GW_EAMOUNT", -1 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int st = parse_free(CH->query_parse, &c, 200, mkresp(m, cases[i].text, SG_ALIPAY), &res);
        if (st != cases[i].want || strcmp(res.raw_code, cases[i].code) != 0 || res.amount != cases[i].amount)
            fail_msg("case %zu: %d %s %lld", i, st, res.raw_code, (long long)res.amount);
    }
    assert_int_equal(parse_free(CH->query_parse, &c, 200, mkresp(m, cases[0].text, SG_NONE), &res), GW_REFUND_UNKNOWN);
}

static void t_close_cancel(void **state)
{
    gw_chan_order_t o = order_qr();
    gw_chan_call_t c = mkcall(CTX, &M_ISV, &o, NULL, 0);
    gw_chan_result_t res;
    assert_int_equal(parse_free(CH->close_parse, &c, 200,
                                mkresp("alipay_trade_close", "{\"code\":\"10000\",\"msg\":\"Success\",\"trade_no\":\"2024A\","
                                       "\"out_trade_no\":\"PG20240101000001\"}", SG_ALIPAY), &res), GW_PAY_CLOSED);
    assert_int_equal(parse_free(CH->close_parse, &c, 200,
                                mkresp("alipay_trade_close", "{\"code\":\"40004\",\"msg\":\"x\",\"sub_code\":\"ACQ.TRADE_STATUS_ERROR\"}",
                                       SG_ALIPAY), &res), GW_PAY_UNKNOWN);
    /* never scanned: no trade at Alipay.  Conclusive only once the QR is
     * dead (time_expire + grace); before that it could still be paid */
    const char *ne = "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.TRADE_NOT_EXIST\"}";
    int64_t now = (int64_t)H->now_ms();
    o.expire_ms = now - 120000; /* expired 2 min ago, grace 60 s */
    assert_int_equal(parse_free(CH->close_parse, &c, 200, mkresp("alipay_trade_close", ne, SG_ALIPAY), &res), GW_PAY_CLOSED);
    assert_string_equal(res.raw_code, "ACQ.TRADE_NOT_EXIST");
    o.expire_ms = now - 10000;  /* within the grace */
    assert_int_equal(parse_free(CH->close_parse, &c, 200, mkresp("alipay_trade_close", ne, SG_ALIPAY), &res), GW_PAY_UNKNOWN);
    o.expire_ms = now + 600000;
    assert_int_equal(parse_free(CH->close_parse, &c, 200, mkresp("alipay_trade_close", ne, SG_ALIPAY), &res), GW_PAY_UNKNOWN);
    o.expire_ms = 0;            /* without time_expire: 2 h after creation */
    o.created_ms = now - 3 * 3600 * 1000LL;
    assert_int_equal(parse_free(CH->close_parse, &c, 200, mkresp("alipay_trade_close", ne, SG_ALIPAY), &res), GW_PAY_CLOSED);
    o.created_ms = now - 3600 * 1000LL;
    assert_int_equal(parse_free(CH->close_parse, &c, 200, mkresp("alipay_trade_close", ne, SG_ALIPAY), &res), GW_PAY_UNKNOWN);
    char s[16384];
    mk_settings(s, sizeof(s), "\"expire_grace_s\":0");
    void *ctx = new_ctx(s, GW_OK);
    c.ctx = ctx;
    o.expire_ms = now - 1000;
    assert_int_equal(parse_free(CH->close_parse, &c, 200, mkresp("alipay_trade_close", ne, SG_ALIPAY), &res), GW_PAY_CLOSED);
    assert_int_equal(parse_free(CH->close_parse, &c, 200, mkresp("alipay_trade_close", ne, SG_NONE), &res), GW_PAY_UNKNOWN);
    free_ctx(ctx);
    c.ctx = CTX;

    /* cancel */
    o = order_bar();
    c = mkcall(CTX, &M_ISV, &o, NULL, GW_CALL_REVERSE);
    const char *mc = "alipay_trade_cancel";
    struct { const char *text; int want; const char *code; int retry; } cases[] = {
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"action\":\"close\",\"out_trade_no\":\"PG20240101000001\",\"retry_flag\":\"N\","
          "\"trade_no\":\"2024A\"}", GW_PAY_REVERSED, "CANCELED_CLOSE", 0 },
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"action\":\"refund\",\"out_trade_no\":\"PG20240101000001\",\"retry_flag\":\"N\"}",
          GW_PAY_REVERSED, "CANCELED_REFUND", 0 },
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"PG20240101000001\",\"retry_flag\":\"N\"}",
          GW_PAY_REVERSED, "CANCELED", 0 },
        { "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.SYSTEM_ERROR\",\"retry_flag\":\"Y\"}",
          GW_PAY_UNKNOWN, "ACQ.SYSTEM_ERROR", 1 },
        { "{\"code\":\"40004\",\"msg\":\"Business Failed\",\"sub_code\":\"ACQ.TRADE_CANCEL_TIME_OUT\",\"retry_flag\":\"N\"}",
          GW_PAY_UNKNOWN, "ACQ.TRADE_CANCEL_TIME_OUT", 0 },
        { "{\"code\":\"20000\",\"msg\":\"x\",\"sub_code\":\"isp.unknow-error\"}", GW_PAY_UNKNOWN, "isp.unknow-error", 0 },
        { "{\"code\":\"10000\",\"msg\":\"Success\",\"out_trade_no\":\"OTHER\",\"retry_flag\":\"N\"}", GW_PAY_UNKNOWN, "10000", 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int st = parse_free(CH->close_parse, &c, 200, mkresp(mc, cases[i].text, SG_ALIPAY), &res);
        if (st != cases[i].want || strcmp(res.raw_code, cases[i].code) != 0 || res.retry != cases[i].retry)
            fail_msg("cancel %zu: %d %s retry %d", i, st, res.raw_code, res.retry);
    }
    /* a close answer is no cancel answer */
    assert_int_equal(parse_free(CH->close_parse, &c, 200,
                                mkresp("alipay_trade_close", "{\"code\":\"10000\",\"msg\":\"Success\"}", SG_ALIPAY), &res),
                     GW_PAY_UNKNOWN);
}

/* ------------------------------------------------------------------ */
/* tests: notifications */

typedef struct { const char *k, *v; } kvp_t;
#define END { NULL, NULL }

/* A trade notification as Alipay sends it: form-encoded, signed over the
 * decoded values without sign and sign_type (or as `mode` says). */
enum { NS_ALIPAY, NS_WITH_SIGN_TYPE, NS_ROGUE, NS_ENCODED };

static char *mknotify(const kvp_t *over, int mode)
{
    fields_t f = { .n = 0 };
    static const kvp_t base[] = {
        { "gmt_create", "2024-01-01 11:59:58" }, { "charset", "utf-8" }, { "seller_email", "shop@example.com" },
        { "subject", "龙井 50% & tea+cake=1" }, { "buyer_id", "2088101117955611" }, { "invoice_amount", "88.88" },
        { "notify_id", "2024010100222115959045551419371212" },
        { "fund_bill_list", "[{\"amount\":\"88.88\",\"fundChannel\":\"ALIPAYACCOUNT\"}]" },
        { "notify_type", "trade_status_sync" }, { "trade_status", "TRADE_SUCCESS" }, { "receipt_amount", "88.88" },
        { "app_id", APP_ID }, { "auth_app_id", "2021000111111111" }, { "buyer_pay_amount", "88.88" },
        { "sign_type", "RSA2" }, { "seller_id", SELLER }, { "gmt_payment", "2024-01-01 11:59:59" },
        { "notify_time", "2024-01-01 12:00:00" }, { "version", "1.0" }, { "out_trade_no", "PG20240101000001" },
        { "total_amount", "88.88" }, { "trade_no", "2024010122001455551234567890" },
        { "buyer_logon_id", "159****5620" }, { "point_amount", "0.00" }, { "passback_params", "" },
        END,
    };
    for (const kvp_t *p = base; p->k; p++) {
        const char *v = p->v;
        int skip = 0;
        for (const kvp_t *o = over; o && o->k; o++)
            if (strcmp(o->k, p->k) == 0) {
                v = o->v;
                if (v == NULL) skip = 1;
            }
        if (skip) continue;
        f.k[f.n] = strdup(p->k);
        f.v[f.n] = strdup(v);
        f.n++;
    }
    for (const kvp_t *o = over; o && o->k; o++) {
        if (o->v == NULL || fget(&f, o->k)) continue;
        f.k[f.n] = strdup(o->k);
        f.v[f.n] = strdup(o->v);
        f.n++;
    }
    char *s = sign_string_of(&f, mode == NS_WITH_SIGN_TYPE ? SKIP_SIGN : SKIP_SIGN_TYPE);
    char *sig;
    if (mode == NS_ENCODED) {
        /* signed over the URL-encoded values: wrong */
        char *e = NULL;
        size_t el = 0;
        FILE *m = open_memstream(&e, &el);
        pct_encode_into(m, s);
        fclose(m);
        sig = ossl_sign(FIX "alipay_priv.pem", e);
        free(e);
    } else {
        sig = ossl_sign(mode == NS_ROGUE ? FIX "rogue_priv.pem" : FIX "alipay_priv.pem", s);
    }
    free(s);
    char *out = NULL;
    size_t ol = 0;
    FILE *m = open_memstream(&out, &ol);
    for (int i = 0; i < f.n; i++) {
        fprintf(m, "%s%s=", i ? "&" : "", f.k[i]);
        pct_encode_into(m, f.v[i]);
    }
    fputs("&sign=", m);
    pct_encode_into(m, sig);
    fclose(m);
    free(sig);
    fields_free(&f);
    return out;
}

static gw_err_t notify(const gw_chan_merchant_t *m, const char *body, gw_chan_notify_t *n, gw_err_t *parse_rc)
{
    gw_chan_notify_in_t in;
    memset(&in, 0, sizeof(in));
    in.method = S("POST");
    in.path = S("/notify/alipay");
    in.headers = S("Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n");
    in.body = S(body);
    memset(n, 0x5a, sizeof(*n));
    H->buf_init(&n->sign_string, 65536);
    H->buf_init(&n->ack_ok_body, 4096);
    H->buf_init(&n->ack_fail_body, 4096);
    *parse_rc = CH->notify_parse(CTX, H, &in, n);
    if (*parse_rc != GW_OK) return *parse_rc;
    gw_chan_call_t c = mkcall(CTX, m, NULL, NULL, 0);
    return CH->notify_verify(&c, &in, n);
}

static void notify_free(gw_chan_notify_t *n)
{
    H->buf_free(&n->sign_string);
    H->buf_free(&n->ack_ok_body);
    H->buf_free(&n->ack_fail_body);
}

static void t_notify_ok(void **state)
{
    gw_chan_notify_t n;
    gw_err_t prc;
    char *body = mknotify(NULL, NS_ALIPAY);
    assert_int_equal(notify(&M_ISV, body, &n, &prc), GW_OK);
    assert_int_equal(n.kind, GW_NOTIFY_PAY);
    assert_string_equal(n.mch_id, SELLER);
    assert_string_equal(n.out_trade_no, "PG20240101000001");
    assert_int_equal(n.status, GW_PAY_SUCCESS);
    assert_int_equal(n.amount, 8888);
    assert_string_equal(n.channel_trade_no, "2024010122001455551234567890");
    assert_string_equal(n.raw_code, "TRADE_SUCCESS");
    assert_int_equal(n.ack_ok_status, 200);
    assert_string_equal(n.ack_ok_type, "text/plain");
    assert_int_equal(n.ack_ok_body.len, 7);
    assert_string_equal(n.ack_ok_body.data, "success");
    assert_string_equal(n.ack_fail_body.data, "fail");
    /* the verified string: decoded values, no sign, no sign_type, no empties */
    assert_null(strstr(n.sign_string.data, "sign_type="));
    assert_null(strstr(n.sign_string.data, "sign="));
    assert_null(strstr(n.sign_string.data, "passback_params"));
    assert_non_null(strstr(n.sign_string.data, "&subject=龙井 50% & tea+cake=1&"));
    assert_true(strncmp(n.sign_string.data, "app_id=" APP_ID "&auth_app_id=", 7 + strlen(APP_ID) + 13) == 0);
    notify_free(&n);
    free(body);

    struct { kvp_t over[3]; int status; } cases[] = {
        { { { "trade_status", "TRADE_FINISHED" }, END }, GW_PAY_SUCCESS },
        { { { "trade_status", "TRADE_CLOSED" }, END }, GW_PAY_CLOSED },
        { { { "trade_status", "WAIT_BUYER_PAY" }, END }, GW_PAY_NOT_PAID },
        { { { "trade_status", "SOMETHING_NEW" }, END }, GW_PAY_UNKNOWN },
        /* no sign_type at all, and a charset in capitals */
        { { { "sign_type", NULL }, { "charset", "UTF-8" }, END }, GW_PAY_SUCCESS },
        /* a partial refund of the paid trade: still paid */
        { { { "out_biz_no", "RF1" }, { "refund_fee", "10.00" }, END }, GW_PAY_SUCCESS },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        body = mknotify(cases[i].over, NS_ALIPAY);
        gw_err_t rc = notify(&M_ISV, body, &n, &prc);
        if (rc != GW_OK || n.status != cases[i].status) fail_msg("case %zu: rc %d status %d", i, rc, n.status);
        notify_free(&n);
        free(body);
    }
    body = mknotify((kvp_t[]){ { "out_biz_no", "RF1" }, { "refund_fee", "10.00" }, END }, NS_ALIPAY);
    assert_int_equal(notify(&M_ISV, body, &n, &prc), GW_OK);
    assert_string_equal(n.raw_msg, "refund RF1: refund_fee 10.00");
    notify_free(&n);
    free(body);
    /* the merchant's own Alipay key */
    body = mknotify(NULL, NS_ROGUE);
    assert_int_equal(notify(&M_OVERRIDE, body, &n, &prc), GW_OK);
    notify_free(&n);
    free(body);
    /* a merchant with an app of its own */
    body = mknotify((kvp_t[]){ { "app_id", OWN_APP }, { "seller_id", "2088102177009999" }, END }, NS_ROGUE);
    assert_int_equal(notify(&M_OWN, body, &n, &prc), GW_OK);
    notify_free(&n);
    free(body);
}

static void t_notify_bad(void **state)
{
    gw_chan_notify_t n;
    gw_err_t prc;
    struct { kvp_t over[3]; int mode; const gw_chan_merchant_t *m; gw_err_t parse, verify; } cases[] = {
        /* signed the rsaCheckV2 way (sign_type included): not a trade notification's signature */
        { { END }, NS_WITH_SIGN_TYPE, &M_ISV, GW_OK, GW_ESIGN },
        { { END }, NS_ROGUE, &M_ISV, GW_OK, GW_ESIGN },
        { { END }, NS_ENCODED, &M_ISV, GW_OK, GW_ESIGN },
        /* the Alipay key of another merchant row */
        { { END }, NS_ALIPAY, &M_OVERRIDE, GW_OK, GW_ESIGN },
        /* signed by Alipay, but for another seller or another app */
        { { END }, NS_ALIPAY, &M_OWN, GW_OK, GW_ESIGN },
        { { { "app_id", "2021000000000000" }, END }, NS_ALIPAY, &M_ISV, GW_OK, GW_ESIGN },
        { { { "app_id", NULL }, END }, NS_ALIPAY, &M_ISV, GW_OK, GW_ESIGN },
        { { { "sign_type", "RSA" }, END }, NS_ALIPAY, &M_ISV, GW_OK, GW_ESIGN },
        /* malformed or not for this module */
        { { { "seller_id", NULL }, END }, NS_ALIPAY, &M_ISV, GW_EPARSE, GW_EPARSE },
        { { { "out_trade_no", NULL }, END }, NS_ALIPAY, &M_ISV, GW_EPARSE, GW_EPARSE },
        { { { "notify_type", "servicemarket_order_notify" }, END }, NS_ALIPAY, &M_ISV, GW_EPARSE, GW_EPARSE },
        { { { "charset", "gbk" }, END }, NS_ALIPAY, &M_ISV, GW_EPARSE, GW_EPARSE },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *body = mknotify(cases[i].over, cases[i].mode);
        gw_err_t rc = notify(cases[i].m, body, &n, &prc);
        if (prc != cases[i].parse || rc != cases[i].verify) fail_msg("case %zu: parse %d verify %d", i, prc, rc);
        /* the failure acknowledgement is always there */
        assert_int_equal(n.ack_fail_status, 200);
        assert_string_equal(n.ack_fail_body.data, "fail");
        notify_free(&n);
        free(body);
    }
    /* tampered after signing: amount, status */
    char *body = mknotify(NULL, NS_ALIPAY);
    char *p = strstr(body, "total_amount=88.88");
    assert_non_null(p);
    p[13] = '9';
    assert_int_equal(notify(&M_ISV, body, &n, &prc), GW_ESIGN);
    assert_int_equal(n.status, GW_PAY_UNKNOWN);
    notify_free(&n);
    free(body);
    /* a field added after signing */
    body = mknotify(NULL, NS_ALIPAY);
    char *b2 = NULL;
    assert_true(asprintf(&b2, "%s&refund_fee=88.88", body) > 0);
    assert_int_equal(notify(&M_ISV, b2, &n, &prc), GW_ESIGN);
    notify_free(&n);
    free(b2);
    free(body);
    /* a repeated key, an empty body, not a form */
    const char *bad[] = { "seller_id=1&seller_id=2&out_trade_no=3&notify_type=trade_status_sync", "",
                          "<xml><a>1</a></xml>", "%zz=1" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(notify(&M_ISV, bad[i], &n, &prc), GW_EPARSE);
        notify_free(&n);
    }
}

/* ------------------------------------------------------------------ */
/* tests: concurrency */

typedef struct {
    const char *resp;
    const char *note;
} thr_arg_t;

static int thr_main(const void *p)
{
    const thr_arg_t *a = p;
    int failures = 0;
    gw_chan_order_t o = order_bar();
    for (int i = 0; i < 20; i++) {
        gw_chan_call_t c = mkcall(CTX, (i & 1) ? &M_OVERRIDE : &M_ISV, &o, NULL, 0);
        gw_chan_request_t req;
        req_init(&req);
        if (CH->pay(&c, &req) != GW_OK || req.url.len == 0) failures++;
        req_free(&req);
        c.merchant = &M_ISV;
        gw_chan_response_t resp = { 200, { NULL, 0 }, S(a->resp) };
        gw_chan_result_t res;
        memset(&res, 0, sizeof(res));
        H->buf_init(&res.pay_data, 4096);
        if (CH->pay_parse(&c, &resp, &res) != GW_OK || res.status != GW_PAY_SUCCESS) failures++;
        H->buf_free(&res.pay_data);
        gw_chan_notify_t n;
        gw_err_t prc;
        if (notify(&M_ISV, a->note, &n, &prc) != GW_OK || n.status != GW_PAY_SUCCESS) failures++;
        notify_free(&n);
    }
    return failures;
}

static void t_threads(void **state)
{
    char *resp = mkresp("alipay_trade_pay", PAY_OK, SG_ALIPAY);
    char *note = mknotify(NULL, NS_ALIPAY);
    const thr_arg_t a = { resp, note };
    int failures = ct_run_threads(thr_main, &a);
    free(resp);
    free(note);
    assert_int_equal(failures, 0);
}

/* ------------------------------------------------------------------ */

#define SUITE                                                                  \
    cmocka_unit_test(t_vtable),                                                \
    cmocka_unit_test(t_init),                                                  \
    cmocka_unit_test(t_fen_yuan),                                              \
    cmocka_unit_test(t_precreate),                                             \
    cmocka_unit_test(t_pay_barcode),                                           \
    cmocka_unit_test(t_other_requests),                                        \
    cmocka_unit_test(t_request_errors),                                        \
    cmocka_unit_test(t_pay_answers),                                           \
    cmocka_unit_test(t_precreate_answers),                                     \
    cmocka_unit_test(t_response_signature),                                    \
    cmocka_unit_test(t_query_answers),                                         \
    cmocka_unit_test(t_refund_answers),                                        \
    cmocka_unit_test(t_refund_query_answers),                                  \
    cmocka_unit_test(t_close_cancel),                                          \
    cmocka_unit_test(t_notify_ok),                                             \
    cmocka_unit_test(t_notify_bad),                                            \
    cmocka_unit_test(t_threads)

int main(void)
{
    gw_log_level = GW_LOG_ERR; /* the module's signature warnings are expected here */
    const struct CMUnitTest inproc[] = { SUITE };
    const struct CMUnitTest viadl[] = { SUITE, cmocka_unit_test(t_shared_object) };
    int fails = 0;
    fails += cmocka_run_group_tests_name("alipay in-process", inproc, setup_inproc, teardown_inproc);
    fails += cmocka_run_group_tests_name("alipay dlopen " SO_PATH, viadl, setup_dlopen, teardown_dlopen);
    gw_host_shutdown();
    return fails ? 1 : 0;
}
