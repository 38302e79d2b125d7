/*
 * test_swiftpass.c — the Swiftpass channel module (channels/swiftpass/).
 *
 * Every signature is checked against an INDEPENDENT computation: the test
 * parses the request body with its own flat-XML reader, builds the string to
 * sign itself (PROTOCOLS.md §A.5), and asks the OpenSSL command line for the
 * MD5 digest / SHA256withRSA signature / verification (popen of `openssl
 * dgst`).  Responses and notifications are built and signed the same way, so
 * the module never agrees with itself only.
 *
 * Keys: the *.pem files in test/fixtures/swiftpass/, throw-away RSA-2048 pairs made with
 * `openssl genpkey` (see test/fixtures/swiftpass/README.md).
 *
 * The suite runs twice (two cmocka groups):
 *   - "in-process": channels/swiftpass/swiftpass.c is #included here, so the
 *     module code itself runs under ASan+UBSan (the .so of build/asan is not
 *     built with sanitizers);
 *   - "dlopen": the same tests against build/asan/channels/swiftpass.so,
 *     loaded with dlopen(RTLD_NOW|RTLD_LOCAL) + dlsym("gw_channel_entry").
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
#include <unistd.h>

#include "host.h"

/* the module under test, compiled into this binary with the sanitizers */
#include "../../channels/swiftpass/swiftpass.c"

#define SO_PATH "build/asan/channels/swiftpass.so"
#define FIX "test/fixtures/swiftpass/"

#define MD5_KEY "paygateTESTONLYmd5key0123456789ab"
#define MD5_MCH "105510000001"
#define RSA_MCH "105520000002"
#define CT_FIELDS_MAX 128 /* fields_t capacity */

/* H, CH, DL, CTX, TMPD and the helpers every channel suite shares */
#include "chantest.h"

/* ------------------------------------------------------------------ */
/* test state */

static char *MERCH_PRIV, *MERCH_PUB, *PLAT_PRIV, *PLAT_PUB, *ROGUE_PRIV, *ROGUE_PUB;
static char SETTINGS[4096];

static gw_chan_merchant_t M_MD5, M_RSA, M_RSA11, M_AGENT, M_NOKEY;

/* ------------------------------------------------------------------ */
/* shell / openssl (the independent implementation) */

/* MD5 of s as upper-case hex, by `openssl dgst -md5`. */
static void ossl_md5_upper(const char *s, char out[33])
{
    char path[128], cmd[256];
    int st;
    snprintf(path, sizeof(path), "%s/md5.in", TMPD);
    write_file(path, s, strlen(s));
    snprintf(cmd, sizeof(cmd), "openssl dgst -md5 -r < %s", path);
    char *r = sh(cmd, &st);
    assert_int_equal(st, 0);
    assert_true(strlen(r) >= 32);
    for (int i = 0; i < 32; i++) out[i] = (char)((r[i] >= 'a' && r[i] <= 'f') ? r[i] - 32 : r[i]);
    out[32] = '\0';
    free(r);
}

/* Base64 SHA256withRSA (or sha1) signature of s with the PEM key file. */
static char *ossl_sign(const char *keyfile, const char *alg, const char *s)
{
    char *r = ct_ossl_sign_n(keyfile, alg, s, strlen(s));
    assert_true(strlen(r) > 100);
    return r;
}

/* ------------------------------------------------------------------ */
/* the test's own flat-XML reader and signing string */

/* Reads exactly <xml><k><![CDATA[v]]></k>…</xml> (values may be split
 * across CDATA sections).  Returns 0 on success. */
static int parse_wire_xml(const char *x, fields_t *f)
{
    f->n = 0;
    if (strncmp(x, "<xml>", 5) != 0) return -1;
    x += 5;
    while (strncmp(x, "</xml>", 6) != 0) {
        if (*x != '<' || f->n >= 128) return -1;
        const char *ke = strchr(x, '>');
        if (!ke) return -1;
        char *k = strndup(x + 1, (size_t)(ke - x - 1));
        x = ke + 1;
        size_t cap = strlen(x) + 1, vl = 0;
        char *v = malloc(cap);
        while (strncmp(x, "<![CDATA[", 9) == 0) {
            const char *e = strstr(x + 9, "]]>");
            if (!e) { free(k); free(v); return -1; }
            memcpy(v + vl, x + 9, (size_t)(e - x - 9));
            vl += (size_t)(e - x - 9);
            x = e + 3;
        }
        v[vl] = '\0';
        size_t kl = strlen(k);
        if (strncmp(x, "</", 2) != 0 || strncmp(x + 2, k, kl) != 0 || x[2 + kl] != '>') {
            free(k); free(v); return -1;
        }
        x += 3 + kl;
        f->k[f->n] = k;
        f->v[f->n] = v;
        f->n++;
    }
    return strcmp(x, "</xml>") == 0 ? 0 : -1;
}

/* PROTOCOLS.md §A.5 step 1-2, written independently of the module/host:
 * every field but sign, empty values dropped, byte-wise sorted keys. */
static char *sign_string_of(const fields_t *f)
{
    int idx[128], n = 0;
    for (int i = 0; i < f->n; i++) {
        if (strcmp(f->k[i], "sign") == 0 || f->v[i][0] == '\0') continue;
        idx[n++] = i;
    }
    SORT_F = f; /* single-threaded use only */
    qsort(idx, (size_t)n, sizeof(int), cmp_idx);
    char *s = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&s, &len);
    assert_non_null(m);
    for (int i = 0; i < n; i++) fprintf(m, "%s%s=%s", i ? "&" : "", f->k[idx[i]], f->v[idx[i]]);
    fclose(m);
    return s;
}

/* ------------------------------------------------------------------ */
/* building signed responses */

typedef struct { const char *k, *v; } kvp_t;

enum { SG_NONE, SG_MD5, SG_MD5_LOWER, SG_MD5_WRONGKEY, SG_MD5_EMPTYKEY, SG_RSA_PLAT,
       SG_RSA_ROGUE, SG_RSA_MERCH, SG_RSA11_PLAT };

static void fields_set(fields_t *f, const char *k, const char *v)
{
    for (int i = 0; i < f->n; i++) {
        if (strcmp(f->k[i], k) == 0) {
            free(f->v[i]);
            if (v == NULL) { /* remove */
                free(f->k[i]);
                f->k[i] = f->k[f->n - 1];
                f->v[i] = f->v[f->n - 1];
                f->n--;
            } else {
                f->v[i] = strdup(v);
            }
            return;
        }
    }
    if (v == NULL) return;
    f->k[f->n] = strdup(k);
    f->v[f->n] = strdup(v);
    f->n++;
}

static char *fields_xml(const fields_t *f)
{
    char *x = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&x, &len);
    assert_non_null(m);
    fputs("<xml>", m);
    for (int i = 0; i < f->n; i++) fprintf(m, "<%s><![CDATA[%s]]></%s>", f->k[i], f->v[i], f->k[i]);
    fputs("</xml>", m);
    fclose(m);
    return x;
}

/* A platform answer for merchant mch: the common fields, then extra (a NULL
 * value removes a field), signed independently as `mode` says. */
static char *mkresp(const char *mch, int mode, const kvp_t *extra)
{
    fields_t f = { .n = 0 };
    const char *st = (mode == SG_RSA_PLAT || mode == SG_RSA_ROGUE || mode == SG_RSA_MERCH) ? "RSA_1_256"
                     : mode == SG_RSA11_PLAT ? "RSA_1_1" : "MD5";
    fields_set(&f, "version", "2.0");
    fields_set(&f, "charset", "UTF-8");
    fields_set(&f, "sign_type", st);
    fields_set(&f, "status", "0");
    fields_set(&f, "result_code", "0");
    fields_set(&f, "mch_id", mch);
    fields_set(&f, "nonce_str", "4a5c1d0e9f8b7a6c5d4e3f2a1b0c9d8e");
    for (; extra && extra->k; extra++) fields_set(&f, extra->k, extra->v);
    char *s = sign_string_of(&f);
    char hex[33];
    char *sig = NULL;
    char *full = NULL;
    switch (mode) {
    case SG_NONE: break;
    case SG_MD5:
    case SG_MD5_LOWER:
    case SG_MD5_WRONGKEY:
    case SG_MD5_EMPTYKEY:
        assert_true(asprintf(&full, "%s&key=%s", s,
                             mode == SG_MD5_WRONGKEY ? "notTheMerchantKey"
                             : mode == SG_MD5_EMPTYKEY ? "" : MD5_KEY) > 0);
        ossl_md5_upper(full, hex);
        free(full);
        if (mode == SG_MD5_LOWER)
            for (int i = 0; i < 32; i++) hex[i] = (char)((hex[i] >= 'A' && hex[i] <= 'F') ? hex[i] + 32 : hex[i]);
        fields_set(&f, "sign", hex);
        break;
    case SG_RSA_PLAT: sig = ossl_sign(FIX "platform_priv.pem", "sha256", s); break;
    case SG_RSA11_PLAT: sig = ossl_sign(FIX "platform_priv.pem", "sha1", s); break;
    case SG_RSA_ROGUE: sig = ossl_sign(FIX "rogue_priv.pem", "sha256", s); break;
    case SG_RSA_MERCH: sig = ossl_sign(FIX "merchant_priv.pem", "sha256", s); break;
    }
    if (sig) {
        fields_set(&f, "sign", sig);
        free(sig);
    }
    char *x = fields_xml(&f);
    free(s);
    fields_free(&f);
    return x;
}

/* Replaces the first occurrence of a in *x by b (tampering). */
static void replace_once(char **x, const char *a, const char *b)
{
    char *p = strstr(*x, a);
    assert_non_null(p);
    size_t la = strlen(a), lb = strlen(b), lx = strlen(*x);
    char *y = malloc(lx - la + lb + 1);
    memcpy(y, *x, (size_t)(p - *x));
    memcpy(y + (p - *x), b, lb);
    memcpy(y + (p - *x) + lb, p + la, lx - (size_t)(p - *x) - la + 1);
    free(*x);
    *x = y;
}

/* ------------------------------------------------------------------ */
/* calls */

static void req_init(gw_chan_request_t *r)
{
    ct_req_init(r, 4096, 4096, 65536, 65536);
}

static gw_chan_order_t order_native(void)
{
    gw_chan_order_t o;
    memset(&o, 0, sizeof(o));
    o.out_trade_no = S("PG20240101000001");
    o.amount = 1234;
    o.currency = S("CNY");
    o.subject = S("测试商品 <&> test");
    o.method = GW_METHOD_WECHAT_QR;
    o.client_ip = S("203.0.113.7");
    o.notify_url = S("https://pay.example.com/notify/swiftpass");
    return o;
}

/* Builds a request and reads it back with the test's own reader. */
static void build(build_fn fn, const gw_chan_call_t *c, gw_chan_request_t *req, fields_t *f)
{
    req_init(req);
    assert_int_equal(fn(c, req), GW_OK);
    assert_non_null(req->body.data);
    assert_int_equal(parse_wire_xml(req->body.data, f), 0);
    assert_string_equal(req->method, "POST");
    assert_string_equal(req->headers.data, "Content-Type: text/xml; charset=utf-8\r\n");
}

/* The request's MD5 sign equals OpenSSL's MD5 over the test's own string,
 * and req->sign_string is that string with the key redacted. */
static void check_md5_request(const gw_chan_request_t *req, const fields_t *f, const char *key)
{
    char *s = sign_string_of(f);
    char *full = NULL, *red = NULL;
    assert_true(asprintf(&full, "%s&key=%s", s, key) > 0);
    char hex[33];
    ossl_md5_upper(full, hex);
    assert_string_equal(fget(f, "sign"), hex);
    assert_true(asprintf(&red, "%s&key=***", s) > 0);
    assert_string_equal(req->sign_string.data, red);
    assert_null(strstr(req->sign_string.data, key));
    assert_null(strstr(req->body.data, key));
    free(red);
    free(full);
    free(s);
}

static void check_rsa_request(const gw_chan_request_t *req, const fields_t *f, const char *alg)
{
    char *s = sign_string_of(f);
    assert_string_equal(req->sign_string.data, s);
    assert_null(strstr(s, "&key="));
    assert_true(ct_ossl_verify(FIX "merchant_pub.pem", alg, s, fget(f, "sign")));
    /* and not with another key */
    assert_false(ct_ossl_verify(FIX "platform_pub.pem", alg, s, fget(f, "sign")));
    free(s);
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
    return st;
}

/* ------------------------------------------------------------------ */
/* group setup: load the module one way or the other */

static void *new_ctx(const char *settings, gw_err_t want)
{
    return ct_new_ctx(settings, want, NULL, 0, NULL);
}

static int common_setup(void)
{
    H = gw_host_api();
    if (ct_tmpdir_make("test_swiftpass") != 0) return -1;
    MERCH_PRIV = read_file(FIX "merchant_priv.pem");
    MERCH_PUB = read_file(FIX "merchant_pub.pem");
    PLAT_PRIV = read_file(FIX "platform_priv.pem");
    PLAT_PUB = read_file(FIX "platform_pub.pem");
    ROGUE_PRIV = read_file(FIX "rogue_priv.pem");
    ROGUE_PUB = read_file(FIX "rogue_pub.pem");
    char esc[2048];
    json_escape_into(esc, sizeof(esc), PLAT_PUB);
    snprintf(SETTINGS, sizeof(SETTINGS), "{\"platform_public_key\":\"%s\"}", esc);

    memset(&M_MD5, 0, sizeof(M_MD5));
    M_MD5.mch_id = S(MD5_MCH);
    M_MD5.key = S(MD5_KEY);
    M_MD5.extra = S("{\"sign_type\":\"MD5\"}");

    memset(&M_RSA, 0, sizeof(M_RSA));
    M_RSA.mch_id = S(RSA_MCH);
    M_RSA.app_id = S("wx0123456789abcdef");
    M_RSA.private_key = S(MERCH_PRIV);
    M_RSA.extra = S("{\"sign_type\":\"RSA_1_256\"}");

    M_RSA11 = M_RSA;
    M_RSA11.extra = S("{\"sign_type\":\"RSA_1_1\"}");

    M_AGENT = M_MD5;
    M_AGENT.extra = S("{\"sign_type\":\"MD5\",\"sign_agentno\":\"108800000009\"}");

    M_NOKEY = M_MD5; /* MD5 merchant whose key is missing */
    M_NOKEY.key = S("");
    return 0;
}

static int common_teardown(void)
{
    free(MERCH_PRIV); free(MERCH_PUB); free(PLAT_PRIV); free(PLAT_PUB); free(ROGUE_PRIV); free(ROGUE_PUB);
    return 0;
}

/* the group's ctx block (chantest.h's fixtures call this once CH is set) */
static void *group_ctx(void)
{
    return new_ctx(SETTINGS, GW_OK);
}

/* ------------------------------------------------------------------ */
/* tests: the vtable and the shared object */

static void t_vtable(void **state)
{
    assert_int_equal(CH->abi_version, GW_CHANNEL_ABI_VERSION);
    assert_int_equal(CH->struct_size, sizeof(gw_channel_t));
    assert_true(CH->ctx_size >= sizeof(void *));
    assert_string_equal(CH->name, "swiftpass");
    assert_string_equal(CH->version, "1.0.0");
    assert_string_equal(CH->build_sig, GW_CHANNEL_BUILD_SIG);
    assert_int_equal(CH->methods, GW_METHOD_WECHAT_QR | GW_METHOD_WECHAT_JSAPI | GW_METHOD_ALIPAY_QR |
                                      GW_METHOD_ALIPAY_JSAPI | GW_METHOD_BARCODE);
    assert_non_null(CH->init); assert_non_null(CH->fini);
    assert_non_null(CH->pay); assert_non_null(CH->pay_parse);
    assert_non_null(CH->query); assert_non_null(CH->query_parse);
    assert_non_null(CH->refund); assert_non_null(CH->refund_parse);
    assert_non_null(CH->close); assert_non_null(CH->close_parse);
    assert_non_null(CH->notify_parse); assert_non_null(CH->notify_verify);
    /* 1.1: Swiftpass's timing rules (docs/channels/swiftpass.md) */
    assert_non_null(CH->policy);
    assert_int_equal(CH->policy->struct_size, sizeof(gw_chan_policy_t));
    assert_int_equal(CH->policy->poll_interval_ms, 5000);
    assert_int_equal(CH->policy->poll_deadline_ms, 30000);
    assert_int_equal(CH->policy->close_min_age_ms, 300000);
    assert_int_equal(CH->policy->reverse_min_age_ms, 0);
    assert_int_equal(CH->policy->refund_query_delay_ms, 0);
    /* 1.3: MD5 merchants are light (built and parsed on the core's loop),
     * RSA ones and unreadable extras are not */
    assert_non_null(CH->light);
    gw_chan_order_t o;
    memset(&o, 0, sizeof(o));
    gw_chan_call_t c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    assert_true(CH->light(&c));
    c = mkcall(CTX, &M_AGENT, &o, NULL, 0);
    assert_true(CH->light(&c));
    gw_chan_merchant_t plain = M_MD5;
    plain.extra = S(""); /* no sign_type: MD5 */
    c = mkcall(CTX, &plain, &o, NULL, 0);
    assert_true(CH->light(&c));
    c = mkcall(CTX, &M_RSA, &o, NULL, 0);
    assert_false(CH->light(&c));
    c = mkcall(CTX, &M_RSA11, &o, NULL, 0);
    assert_false(CH->light(&c));
    gw_chan_merchant_t bad = M_MD5;
    bad.extra = S("{\"sign_type\":");
    c = mkcall(CTX, &bad, &o, NULL, 0);
    assert_false(CH->light(&c));
}

/* The .so exports exactly one function and has no writable data of its own
 * (no globals: the module is reentrant by construction). */
static void t_shared_object(void **state)
{
    ct_assert_so_exports(SO_PATH);
    void *h = dlopen(SO_PATH, RTLD_NOW | RTLD_LOCAL);
    assert_non_null(h);
    assert_non_null(dlsym(h, "gw_channel_entry"));
    assert_null(dlsym(h, "sp_channel"));
    assert_null(dlsym(h, "sp_pay"));
    dlclose(h);
}

/* ------------------------------------------------------------------ */
/* tests: init */

static void t_init_defaults(void **state)
{
    void *ctx = new_ctx("{}", GW_OK);
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(ctx, &M_MD5, &o, NULL, 0);
    gw_chan_request_t req;
    fields_t f;
    build(CH->query, &c, &req, &f);
    assert_string_equal(req.url.data, "https://pay.swiftpass.cn/pay/gateway");
    assert_string_equal(fget(&f, "version"), "2.0");
    fields_free(&f);
    req_free(&req);
    /* without a platform key an RSA response cannot verify */
    c = mkcall(ctx, &M_RSA, &o, NULL, 0);
    gw_chan_result_t res;
    assert_int_equal(parse_free(CH->query_parse, &c, 200,
                                mkresp(RSA_MCH, SG_RSA_PLAT, (kvp_t[]){ { "trade_state", "SUCCESS" }, { NULL, NULL } }),
                                &res),
                     GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    free_ctx(ctx);
    /* empty settings text: defaults too */
    ctx = new_ctx("", GW_OK);
    free_ctx(ctx);
}

static void t_init_settings(void **state)
{
    void *ctx = new_ctx("{\"gateway_url\":\"http://127.0.0.1:8123/pay/gateway\",\"version\":\"2.1\"}", GW_OK);
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(ctx, &M_MD5, &o, NULL, 0);
    gw_chan_request_t req;
    fields_t f;
    build(CH->pay, &c, &req, &f);
    assert_string_equal(req.url.data, "http://127.0.0.1:8123/pay/gateway");
    assert_string_equal(fget(&f, "version"), "2.1");
    check_md5_request(&req, &f, MD5_KEY);
    fields_free(&f);
    req_free(&req);
    free_ctx(ctx);
}

static void t_init_errors(void **state)
{
    gw_buf_t err;
    void *ctx = calloc(1, CH->ctx_size);
    struct { const char *settings; gw_err_t want; } cases[] = {
        { "not json", GW_EINVAL },
        { "[1,2]", GW_EINVAL },
        { "{\"gateway_url\":\"ftp://x/y\"}", GW_EINVAL },
        { "{\"gateway_url\":42}", GW_EINVAL },
        { "{\"version\":\"\"}", GW_EINVAL },
        { "{\"platform_public_key\":\"-----BEGIN PUBLIC KEY-----\\nSECRETGARBAGE\\n-----END PUBLIC KEY-----\\n\"}", GW_EKEY },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        H->buf_init(&err, 4096);
        assert_int_equal(CH->init(ctx, H, cases[i].settings, strlen(cases[i].settings), &err), cases[i].want);
        assert_non_null(err.data);
        assert_non_null(strstr(err.data, "swiftpass"));
        assert_null(strstr(err.data, "SECRETGARBAGE")); /* never echo key material */
        H->buf_free(&err);
    }
    free(ctx);
}

/* ------------------------------------------------------------------ */
/* tests: requests */

static void t_pay_native_md5(void **state)
{
    gw_chan_order_t o = order_native();
    o.attach = S("a=1&b=2");
    gw_chan_call_t c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    gw_chan_request_t req;
    fields_t f;
    build(CH->pay, &c, &req, &f);
    assert_string_equal(req.url.data, "https://pay.swiftpass.cn/pay/gateway");
    assert_string_equal(fget(&f, "service"), "unified.trade.native");
    assert_string_equal(fget(&f, "version"), "2.0");
    assert_string_equal(fget(&f, "charset"), "UTF-8");
    assert_string_equal(fget(&f, "sign_type"), "MD5");
    assert_string_equal(fget(&f, "mch_id"), MD5_MCH);
    assert_string_equal(fget(&f, "out_trade_no"), "PG20240101000001");
    assert_string_equal(fget(&f, "body"), "测试商品 <&> test");
    assert_string_equal(fget(&f, "attach"), "a=1&b=2");
    assert_string_equal(fget(&f, "total_fee"), "1234");
    assert_string_equal(fget(&f, "mch_create_ip"), "203.0.113.7");
    assert_string_equal(fget(&f, "notify_url"), "https://pay.example.com/notify/swiftpass");
    assert_null(fget(&f, "time_expire"));
    assert_null(fget(&f, "sign_agentno"));
    const char *nonce = fget(&f, "nonce_str");
    assert_non_null(nonce);
    assert_int_equal(strlen(nonce), 32);
    assert_int_equal(strspn(nonce, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"), 32);
    /* sign_type is part of the signed string */
    assert_non_null(strstr(req.sign_string.data, "&sign_type=MD5&"));
    check_md5_request(&req, &f, MD5_KEY);
    fields_free(&f);
    req_free(&req);

    /* two requests get different nonces */
    gw_chan_request_t req2;
    fields_t f2;
    build(CH->pay, &c, &req, &f);
    build(CH->pay, &c, &req2, &f2);
    assert_string_not_equal(fget(&f, "nonce_str"), fget(&f2, "nonce_str"));
    fields_free(&f); fields_free(&f2);
    req_free(&req); req_free(&req2);
}

static void t_pay_alipay_qr(void **state)
{
    gw_chan_order_t o = order_native();
    o.method = GW_METHOD_ALIPAY_QR;
    o.client_ip = S("");
    gw_chan_call_t c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    gw_chan_request_t req;
    fields_t f;
    build(CH->pay, &c, &req, &f);
    assert_string_equal(fget(&f, "service"), "unified.trade.native");
    assert_string_equal(fget(&f, "mch_create_ip"), "127.0.0.1"); /* documented default */
    check_md5_request(&req, &f, MD5_KEY);
    fields_free(&f);
    req_free(&req);
}

static void t_pay_wechat_jsapi_rsa(void **state)
{
    gw_chan_order_t o = order_native();
    o.method = GW_METHOD_WECHAT_JSAPI;
    o.payer_id = S("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
    o.sub_appid = S("wxd678efh567hg6787");
    gw_chan_call_t c = mkcall(CTX, &M_RSA, &o, NULL, 0);
    gw_chan_request_t req;
    fields_t f;
    build(CH->pay, &c, &req, &f);
    assert_string_equal(fget(&f, "service"), "pay.weixin.jspay");
    assert_string_equal(fget(&f, "is_raw"), "1");
    assert_string_equal(fget(&f, "sub_openid"), "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
    assert_string_equal(fget(&f, "sub_appid"), "wxd678efh567hg6787");
    assert_string_equal(fget(&f, "sign_type"), "RSA_1_256");
    assert_non_null(strstr(req.sign_string.data, "&sign_type=RSA_1_256"));
    check_rsa_request(&req, &f, "sha256");
    fields_free(&f);
    req_free(&req);

    /* no sub_appid on the order: the merchant's app_id */
    o.sub_appid = S("");
    build(CH->pay, &c, &req, &f);
    assert_string_equal(fget(&f, "sub_appid"), "wx0123456789abcdef");
    fields_free(&f);
    req_free(&req);
}

static void t_pay_rsa_1_1(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(CTX, &M_RSA11, &o, NULL, 0);
    gw_chan_request_t req;
    fields_t f;
    build(CH->pay, &c, &req, &f);
    assert_string_equal(fget(&f, "sign_type"), "RSA_1_1");
    check_rsa_request(&req, &f, "sha1");
    fields_free(&f);
    req_free(&req);
}

static void t_pay_alipay_jsapi(void **state)
{
    gw_chan_order_t o = order_native();
    o.method = GW_METHOD_ALIPAY_JSAPI;
    o.payer_id = S("2088102146225135");
    gw_chan_call_t c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    gw_chan_request_t req;
    fields_t f;
    build(CH->pay, &c, &req, &f);
    assert_string_equal(fget(&f, "service"), "pay.alipay.jspay");
    assert_string_equal(fget(&f, "buyer_id"), "2088102146225135");
    assert_null(fget(&f, "is_raw"));
    assert_null(fget(&f, "sub_openid"));
    check_md5_request(&req, &f, MD5_KEY);
    fields_free(&f);
    req_free(&req);
}

static void t_pay_barcode(void **state)
{
    gw_chan_order_t o = order_native();
    o.method = GW_METHOD_BARCODE;
    o.auth_code = S("134567890123456789");
    o.notify_url = S("");
    gw_chan_call_t c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    gw_chan_request_t req;
    fields_t f;
    build(CH->pay, &c, &req, &f);
    assert_string_equal(fget(&f, "service"), "unified.trade.micropay");
    assert_string_equal(fget(&f, "auth_code"), "134567890123456789");
    assert_null(fget(&f, "notify_url"));
    check_md5_request(&req, &f, MD5_KEY);
    fields_free(&f);
    req_free(&req);
}

static void t_time_expire(void **state)
{
    gw_chan_order_t o = order_native();
    /* 2024-01-01T04:00:00Z = 1704081600 s: 12:00:00 in GMT+8 */
    o.expire_ms = 1704081600000LL + 999;
    gw_chan_call_t c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    gw_chan_request_t req;
    fields_t f;
    build(CH->pay, &c, &req, &f);
    assert_string_equal(fget(&f, "time_expire"), "20240101120000");
    check_md5_request(&req, &f, MD5_KEY);
    fields_free(&f);
    req_free(&req);
    /* crossing midnight and a year: 2023-12-31T16:30:05Z → 2024-01-01 00:30:05 */
    o.expire_ms = 1704040205000LL;
    build(CH->pay, &c, &req, &f);
    assert_string_equal(fget(&f, "time_expire"), "20240101003005");
    fields_free(&f);
    req_free(&req);
}

static void t_empty_dropped_space_kept(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    gw_chan_request_t req;
    fields_t f;
    /* empty: neither sent nor signed */
    o.attach = S("");
    build(CH->pay, &c, &req, &f);
    assert_null(fget(&f, "attach"));
    assert_null(strstr(req.sign_string.data, "attach="));
    check_md5_request(&req, &f, MD5_KEY);
    fields_free(&f);
    req_free(&req);
    /* one space: sent and signed raw */
    o.attach = S(" ");
    build(CH->pay, &c, &req, &f);
    assert_string_equal(fget(&f, "attach"), " ");
    assert_non_null(strstr(req.sign_string.data, "attach= &body="));
    check_md5_request(&req, &f, MD5_KEY);
    fields_free(&f);
    req_free(&req);
    /* a value with "]]>" survives the CDATA wrapping and is signed raw */
    o.attach = S("x]]>y");
    build(CH->pay, &c, &req, &f);
    assert_string_equal(fget(&f, "attach"), "x]]>y");
    check_md5_request(&req, &f, MD5_KEY);
    fields_free(&f);
    req_free(&req);
}

static void t_sign_agentno(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(CTX, &M_AGENT, &o, NULL, 0);
    gw_chan_request_t req;
    fields_t f;
    build(CH->pay, &c, &req, &f);
    assert_string_equal(fget(&f, "sign_agentno"), "108800000009");
    assert_string_equal(fget(&f, "mch_id"), MD5_MCH);
    assert_non_null(strstr(req.sign_string.data, "sign_agentno=108800000009"));
    check_md5_request(&req, &f, MD5_KEY);
    fields_free(&f);
    req_free(&req);
}

static void t_other_requests(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_refund_t r;
    memset(&r, 0, sizeof(r));
    r.out_refund_no = S("RF20240101000001");
    r.amount = 234;
    r.total_amount = 1234;
    gw_chan_request_t req;
    fields_t f;
    gw_chan_call_t c;

    c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    build(CH->query, &c, &req, &f);
    assert_string_equal(fget(&f, "service"), "unified.trade.query");
    assert_string_equal(fget(&f, "out_trade_no"), "PG20240101000001");
    assert_null(fget(&f, "total_fee"));
    check_md5_request(&req, &f, MD5_KEY);
    fields_free(&f); req_free(&req);

    c = mkcall(CTX, &M_MD5, &o, &r, GW_CALL_REFUND_QUERY);
    build(CH->query, &c, &req, &f);
    assert_string_equal(fget(&f, "service"), "unified.trade.refundquery");
    assert_string_equal(fget(&f, "out_refund_no"), "RF20240101000001");
    check_md5_request(&req, &f, MD5_KEY);
    fields_free(&f); req_free(&req);

    c = mkcall(CTX, &M_RSA, &o, &r, 0);
    build(CH->refund, &c, &req, &f);
    assert_string_equal(fget(&f, "service"), "unified.trade.refund");
    assert_string_equal(fget(&f, "out_trade_no"), "PG20240101000001");
    assert_string_equal(fget(&f, "out_refund_no"), "RF20240101000001");
    assert_string_equal(fget(&f, "total_fee"), "1234");
    assert_string_equal(fget(&f, "refund_fee"), "234");
    assert_string_equal(fget(&f, "op_user_id"), RSA_MCH);
    check_rsa_request(&req, &f, "sha256");
    fields_free(&f); req_free(&req);

    c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    build(CH->close, &c, &req, &f);
    assert_string_equal(fget(&f, "service"), "unified.trade.close");
    assert_string_equal(fget(&f, "out_trade_no"), "PG20240101000001");
    check_md5_request(&req, &f, MD5_KEY);
    fields_free(&f); req_free(&req);

    c = mkcall(CTX, &M_MD5, &o, NULL, GW_CALL_REVERSE);
    build(CH->close, &c, &req, &f);
    assert_string_equal(fget(&f, "service"), "unified.micropay.reverse");
    assert_string_equal(fget(&f, "out_trade_no"), "PG20240101000001");
    check_md5_request(&req, &f, MD5_KEY);
    fields_free(&f); req_free(&req);

    /* query by transaction_id when the order number is not known */
    o.out_trade_no = S("");
    o.channel_trade_no = S("105510000001202401011234567890");
    c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    build(CH->query, &c, &req, &f);
    assert_null(fget(&f, "out_trade_no"));
    assert_string_equal(fget(&f, "transaction_id"), "105510000001202401011234567890");
    fields_free(&f); req_free(&req);
}

static void t_request_errors(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_request_t req;
    gw_chan_call_t c;
    gw_chan_refund_t r;
    memset(&r, 0, sizeof(r));
    r.out_refund_no = S("RF1");
    r.amount = 2000;
    r.total_amount = 1000;

#define EXPECT(fn, call, want)                                                 \
    do {                                                                       \
        req_init(&req);                                                        \
        assert_int_equal((fn)(&(call), &req), (want));                         \
        req_free(&req);                                                        \
    } while (0)

    c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    o.method = 1u << 9;
    EXPECT(CH->pay, c, GW_ENOTSUP);
    o = order_native();
    o.subject = S("");
    EXPECT(CH->pay, c, GW_EINVAL);
    o = order_native();
    o.amount = 0;
    EXPECT(CH->pay, c, GW_EINVAL);
    o = order_native();
    o.notify_url = S(""); /* c-to-b needs it */
    EXPECT(CH->pay, c, GW_EINVAL);
    o = order_native();
    o.method = GW_METHOD_BARCODE; /* no auth_code */
    EXPECT(CH->pay, c, GW_EINVAL);
    o = order_native();
    o.method = GW_METHOD_WECHAT_JSAPI; /* no payer */
    EXPECT(CH->pay, c, GW_EINVAL);
    o = order_native();
    c = mkcall(CTX, &M_NOKEY, &o, NULL, 0);
    EXPECT(CH->pay, c, GW_EKEY);
    gw_chan_merchant_t m = M_RSA;
    m.private_key = S("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    c = mkcall(CTX, &m, &o, NULL, 0);
    EXPECT(CH->pay, c, GW_EKEY);
    m = M_MD5;
    m.extra = S("{\"sign_type\":\"HMAC\"}");
    c = mkcall(CTX, &m, &o, NULL, 0);
    EXPECT(CH->pay, c, GW_EINVAL);
    m.extra = S("{not json");
    EXPECT(CH->pay, c, GW_EINVAL);
    /* a refund above the order's amount, a refund query without a refund */
    c = mkcall(CTX, &M_MD5, &o, &r, 0);
    EXPECT(CH->refund, c, GW_EINVAL);
    c = mkcall(CTX, &M_MD5, &o, NULL, GW_CALL_REFUND_QUERY);
    EXPECT(CH->query, c, GW_EINVAL);
#undef EXPECT
}

/* ------------------------------------------------------------------ */
/* tests: responses */

static const kvp_t END = { NULL, NULL };

static void t_native_pending(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    gw_chan_result_t res;
    char *x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "code_url", "weixin://wxpay/bizpayurl?pr=abc\"d" },
                                                 { "code_img_url", "https://pay.swiftpass.cn/qr?x=1&y=2" },
                                                 { "uuid", "u1" }, END });
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, x, &res), GW_PAY_PENDING);
    assert_string_equal(res.mch_id, MD5_MCH);
    assert_int_equal(res.amount, -1);
    gw_json_t *j = H->json_parse(res.pay_data.data, res.pay_data.len);
    assert_non_null(j);
    assert_string_equal(H->json_string(H->json_get(j, "code_url")), "weixin://wxpay/bizpayurl?pr=abc\"d");
    assert_string_equal(H->json_string(H->json_get(j, "code_img_url")), "https://pay.swiftpass.cn/qr?x=1&y=2");
    H->json_free(j);
    H->buf_free(&res.pay_data);

    /* result_code 0 but no code_url: nothing to show the payer */
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "uuid", "u1" }, END });
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, x, &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);

    /* a business failure creating the order is a failure */
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "result_code", "1" }, { "err_code", "NOAUTH" },
                                           { "err_msg", "商户无此接口权限" }, END });
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, x, &res), GW_PAY_FAILED);
    assert_string_equal(res.raw_code, "NOAUTH");
    assert_string_equal(res.raw_msg, "商户无此接口权限");
    H->buf_free(&res.pay_data);
    /* … unless the order may exist */
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "result_code", "1" }, { "err_code", "ORDERPAID" }, END });
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, x, &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
}

static void t_jsapi_pending(void **state)
{
    gw_chan_order_t o = order_native();
    o.method = GW_METHOD_WECHAT_JSAPI;
    o.payer_id = S("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
    gw_chan_call_t c = mkcall(CTX, &M_RSA, &o, NULL, 0);
    gw_chan_result_t res;
    const char *info = "{\"appId\":\"wx2421b1c4370ec43b\",\"timeStamp\":\"1395712654\",\"nonceStr\":\"e61463f8efa94090b1f366cccfbbb444\","
                       "\"package\":\"prepay_id=u802345jgfjsdfgsdg888\",\"signType\":\"RSA\",\"paySign\":\"abc+/=\",\"status\":\"0\"}";
    char *x = mkresp(RSA_MCH, SG_RSA_PLAT, (kvp_t[]){ { "token_id", "tok123" }, { "pay_info", info }, END });
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, x, &res), GW_PAY_PENDING);
    gw_json_t *j = H->json_parse(res.pay_data.data, res.pay_data.len);
    assert_non_null(j);
    gw_json_t *pi = H->json_get(j, "pay_info");
    assert_non_null(pi);
    assert_string_equal(H->json_string(H->json_get(pi, "appId")), "wx2421b1c4370ec43b"); /* an object */
    assert_string_equal(H->json_string(H->json_get(pi, "package")), "prepay_id=u802345jgfjsdfgsdg888");
    assert_string_equal(H->json_string(H->json_get(j, "token_id")), "tok123");
    H->json_free(j);
    H->buf_free(&res.pay_data);

    /* pay_info that is not a JSON object travels as a string */
    o.method = GW_METHOD_ALIPAY_JSAPI;
    o.payer_id = S("2088102146225135");
    x = mkresp(RSA_MCH, SG_RSA_PLAT, (kvp_t[]){ { "pay_info", "{broken" }, { "pay_url", "https://x/y" }, END });
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, x, &res), GW_PAY_PENDING);
    j = H->json_parse(res.pay_data.data, res.pay_data.len);
    assert_non_null(j);
    assert_string_equal(H->json_string(H->json_get(j, "pay_info")), "{broken");
    assert_string_equal(H->json_string(H->json_get(j, "pay_url")), "https://x/y");
    H->json_free(j);
    H->buf_free(&res.pay_data);
}

static void t_micropay_statuses(void **state)
{
    gw_chan_order_t o = order_native();
    o.method = GW_METHOD_BARCODE;
    o.auth_code = S("134567890123456789");
    gw_chan_call_t c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    gw_chan_result_t res;
    struct {
        kvp_t f[6];
        int want;
    } cases[] = {
        { { { "pay_result", "0" }, { "need_query", "N" }, { "total_fee", "1234" },
            { "transaction_id", "105510000001202401011234567890" }, { "out_trade_no", "PG20240101000001" }, END },
          GW_PAY_SUCCESS },
        /* waiting for the password */
        { { { "result_code", "1" }, { "err_code", "USERPAYING" }, { "need_query", "Y" }, END }, GW_PAY_USER_PAYING },
        { { { "result_code", "1" }, { "err_code", "10003" }, END }, GW_PAY_USER_PAYING },
        { { { "result_code", "1" }, { "err_code", "USERPAYING" }, END }, GW_PAY_USER_PAYING },
        { { { "result_code", "1" }, { "err_code", "SYSTEMERROR" }, { "need_query", "Y" }, END }, GW_PAY_USER_PAYING },
        /* outcome not known */
        { { { "result_code", "1" }, { "err_code", "SYSTEMERROR" }, END }, GW_PAY_UNKNOWN },
        { { { "result_code", "1" }, { "err_code", "SYSTEMERROR" }, { "need_query", "N" }, END }, GW_PAY_UNKNOWN },
        { { { "result_code", "1" }, { "err_code", "ORDERPAID" }, { "need_query", "N" }, END }, GW_PAY_UNKNOWN },
        { { { "result_code", "0" }, { "pay_result", "1" }, END }, GW_PAY_UNKNOWN },
        /* need_query absent: only need_query=N makes a failure definite */
        { { { "result_code", "1" }, { "err_code", "AUTHCODEEXPIRE" }, END }, GW_PAY_UNKNOWN },
        /* definite failure */
        { { { "result_code", "1" }, { "err_code", "AUTHCODEEXPIRE" }, { "err_msg", "二维码已过期" },
            { "need_query", "N" }, END }, GW_PAY_FAILED },
        { { { "result_code", "1" }, { "err_code", "NOTENOUGH" }, { "need_query", "N" }, END }, GW_PAY_FAILED },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *x = mkresp(MD5_MCH, SG_MD5, cases[i].f);
        int st = parse_free(CH->pay_parse, &c, 200, x, &res);
        if (st != cases[i].want) fprintf(stderr, "micropay case %zu: %d, want %d\n", i, st, cases[i].want);
        assert_int_equal(st, cases[i].want);
        assert_string_equal(res.mch_id, MD5_MCH);
        if (i == 0) {
            assert_int_equal(res.amount, 1234);
            assert_string_equal(res.channel_trade_no, "105510000001202401011234567890");
            assert_string_equal(res.raw_code, "SUCCESS");
        }
        if (i == 1) assert_string_equal(res.raw_code, "USERPAYING");
        if (i == 10) {
            assert_string_equal(res.raw_code, "AUTHCODEEXPIRE");
            assert_string_equal(res.raw_msg, "二维码已过期");
        }
        H->buf_free(&res.pay_data);
    }
    /* an answer about another order */
    char *x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "pay_result", "0" }, { "out_trade_no", "PG-OTHER" }, END });
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, x, &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
}

static void t_query_statuses(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    gw_chan_result_t res;
    struct { const char *ts; int want; } cases[] = {
        { "SUCCESS", GW_PAY_SUCCESS },   { "REFUND", GW_PAY_REFUNDED },
        { "NOTPAY", GW_PAY_NOT_PAID },   { "CLOSED", GW_PAY_CLOSED },
        { "REVOKED", GW_PAY_REVERSED },  { "REVERSE", GW_PAY_REVERSED },
        { "USERPAYING", GW_PAY_USER_PAYING }, { "PAYERROR", GW_PAY_FAILED },
        { "SOMETHINGNEW", GW_PAY_UNKNOWN },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "trade_state", cases[i].ts }, { "out_trade_no", "PG20240101000001" },
                                                     { "total_fee", "1234" }, { "transaction_id", "T1" },
                                                     { "attach", "" } /* empty: not signed */, END });
        assert_int_equal(parse_free(CH->query_parse, &c, 200, x, &res), cases[i].want);
        assert_string_equal(res.raw_code, cases[i].ts);
        assert_int_equal(res.amount, 1234);
        assert_string_equal(res.channel_trade_no, "T1");
        H->buf_free(&res.pay_data);
    }
    char *x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "result_code", "1" }, { "err_code", "ORDERNOTEXIST" },
                                                 { "err_msg", "Order not exists" }, END });
    assert_int_equal(parse_free(CH->query_parse, &c, 200, x, &res), GW_PAY_NOT_PAID);
    assert_string_equal(res.raw_code, "ORDERNOTEXIST");
    H->buf_free(&res.pay_data);
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "result_code", "1" }, { "err_code", "SYSTEMERROR" }, END });
    assert_int_equal(parse_free(CH->query_parse, &c, 200, x, &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    /* a signed answer about another order */
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "trade_state", "SUCCESS" }, { "out_trade_no", "PG-OTHER" }, END });
    assert_int_equal(parse_free(CH->query_parse, &c, 200, x, &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
}

static void t_refund_statuses(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_refund_t r;
    memset(&r, 0, sizeof(r));
    r.out_refund_no = S("RF20240101000001");
    r.amount = 234;
    r.total_amount = 1234;
    gw_chan_call_t c = mkcall(CTX, &M_MD5, &o, &r, 0);
    gw_chan_result_t res;
    char *x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "out_refund_no", "RF20240101000001" }, { "refund_id", "R9" },
                                                 { "refund_fee", "234" }, { "out_trade_no", "PG20240101000001" },
                                                 { "transaction_id", "T1" }, END });
    assert_int_equal(parse_free(CH->refund_parse, &c, 200, x, &res), GW_REFUND_PROCESSING);
    assert_int_equal(res.amount, 234);
    assert_string_equal(res.channel_refund_no, "R9");
    assert_string_equal(res.channel_trade_no, "T1");
    H->buf_free(&res.pay_data);
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "out_refund_no", "RF20240101000001" }, { "refund_status", "SUCCESS" }, END });
    assert_int_equal(parse_free(CH->refund_parse, &c, 200, x, &res), GW_REFUND_SUCCESS);
    H->buf_free(&res.pay_data);
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "result_code", "1" }, { "err_code", "REFUND_FEE_INVALID" }, END });
    assert_int_equal(parse_free(CH->refund_parse, &c, 200, x, &res), GW_REFUND_FAILED);
    assert_string_equal(res.raw_code, "REFUND_FEE_INVALID");
    H->buf_free(&res.pay_data);
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "result_code", "1" }, { "err_code", "SYSTEMERROR" }, END });
    assert_int_equal(parse_free(CH->refund_parse, &c, 200, x, &res), GW_REFUND_UNKNOWN);
    H->buf_free(&res.pay_data);
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "out_refund_no", "RF-OTHER" }, END });
    assert_int_equal(parse_free(CH->refund_parse, &c, 200, x, &res), GW_REFUND_UNKNOWN);
    H->buf_free(&res.pay_data);
    /* transport trouble is UNKNOWN for refunds too */
    assert_int_equal(parse(CH->refund_parse, &c, 502, "bad gateway", &res), GW_REFUND_UNKNOWN);
    H->buf_free(&res.pay_data);
}

static void t_refund_query_statuses(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_refund_t r;
    memset(&r, 0, sizeof(r));
    r.out_refund_no = S("RF20240101000002");
    gw_chan_call_t c = mkcall(CTX, &M_MD5, &o, &r, GW_CALL_REFUND_QUERY);
    gw_chan_result_t res;
    struct { const char *st; int want; } cases[] = {
        { "SUCCESS", GW_REFUND_SUCCESS }, { "FAIL", GW_REFUND_FAILED },
        { "PROCESSING", GW_REFUND_PROCESSING }, { "NOTSURE", GW_REFUND_UNKNOWN },
        { "CHANGE", GW_REFUND_FAILED }, { "WHATEVER", GW_REFUND_UNKNOWN },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        /* ours is the second of two refunds (index 1) */
        char *x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){
            { "refund_count", "2" },
            { "out_refund_no_0", "RF20240101000001" }, { "refund_id_0", "R1" }, { "refund_fee_0", "100" },
            { "refund_status_0", "SUCCESS" },
            { "out_refund_no_1", "RF20240101000002" }, { "refund_id_1", "R2" }, { "refund_fee_1", "200" },
            { "refund_status_1", cases[i].st }, { "transaction_id", "T1" }, END });
        assert_int_equal(parse_free(CH->query_parse, &c, 200, x, &res), cases[i].want);
        assert_string_equal(res.raw_code, cases[i].st);
        assert_int_equal(res.amount, 200);
        assert_string_equal(res.channel_refund_no, "R2");
        H->buf_free(&res.pay_data);
    }
    /* not among the refunds listed */
    char *x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "refund_count", "1" }, { "out_refund_no_0", "RF-OTHER" },
                                                 { "refund_status_0", "SUCCESS" }, END });
    assert_int_equal(parse_free(CH->query_parse, &c, 200, x, &res), GW_REFUND_UNKNOWN);
    H->buf_free(&res.pay_data);
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "result_code", "1" }, { "err_code", "REFUNDNOTEXIST" }, END });
    assert_int_equal(parse_free(CH->query_parse, &c, 200, x, &res), GW_REFUND_UNKNOWN);
    H->buf_free(&res.pay_data);
}

static void t_close_reverse(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    gw_chan_result_t res;
    assert_int_equal(parse_free(CH->close_parse, &c, 200, mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ END }), &res),
                     GW_PAY_CLOSED);
    H->buf_free(&res.pay_data);
    c.flags = GW_CALL_REVERSE;
    assert_int_equal(parse_free(CH->close_parse, &c, 200, mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ END }), &res),
                     GW_PAY_REVERSED);
    H->buf_free(&res.pay_data);
    assert_int_equal(parse_free(CH->close_parse, &c, 200,
                                mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "result_code", "1" }, { "err_code", "ORDERPAID" },
                                                                   { "recall", "Y" }, END }),
                                &res),
                     GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "ORDERPAID");
    assert_int_equal(res.retry, 1);
    H->buf_free(&res.pay_data);
    /* a trade the platform never saw (the pay request did not reach it):
     * reversing or closing it past the deadline ends as reversed / closed */
    assert_int_equal(parse_free(CH->close_parse, &c, 200,
                                mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "result_code", "1" }, { "err_code", "ORDERNOTEXIST" }, END }),
                                &res),
                     GW_PAY_REVERSED);
    assert_string_equal(res.raw_code, "ORDERNOTEXIST");
    H->buf_free(&res.pay_data);
    c.flags = 0;
    assert_int_equal(parse_free(CH->close_parse, &c, 200,
                                mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "result_code", "1" }, { "err_code", "ORDERNOTEXIST" }, END }),
                                &res),
                     GW_PAY_CLOSED);
    H->buf_free(&res.pay_data);
}

/* Everything that cannot be trusted is UNKNOWN, never FAILED. */
static void t_untrusted_responses(void **state)
{
    gw_chan_order_t o = order_native();
    o.method = GW_METHOD_BARCODE;
    o.auth_code = S("134567890123456789");
    gw_chan_call_t c = mkcall(CTX, &M_MD5, &o, NULL, 0);
    gw_chan_result_t res;
    /* a definite failure, once properly signed… */
    const kvp_t failed[] = { { "result_code", "1" }, { "err_code", "AUTHCODEEXPIRE" }, { "need_query", "N" },
                             { "total_fee", "1234" }, END };
    char *x = mkresp(MD5_MCH, SG_MD5, failed);
    assert_int_equal(parse(CH->pay_parse, &c, 200, x, &res), GW_PAY_FAILED);
    H->buf_free(&res.pay_data);
    /* …is UNKNOWN over a non-200 status */
    assert_int_equal(parse(CH->pay_parse, &c, 500, x, &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "HTTP_500");
    H->buf_free(&res.pay_data);
    free(x);
    /* garbage, truncated XML, DOCTYPE */
    assert_int_equal(parse(CH->pay_parse, &c, 200, "<html>oops</html", &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    assert_int_equal(parse(CH->pay_parse, &c, 200, "", &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    assert_int_equal(parse(CH->pay_parse, &c, 200,
                           "<!DOCTYPE xml [<!ENTITY e \"x\">]><xml><status>0</status></xml>", &res),
                     GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    /* communication failure (unsigned) */
    x = strdup("<xml><version><![CDATA[2.0]]></version><status><![CDATA[400]]></status>"
               "<message><![CDATA[Signature error]]></message></xml>");
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, x, &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "status=400");
    assert_string_equal(res.raw_msg, "Signature error");
    H->buf_free(&res.pay_data);
    /* no sign */
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, mkresp(MD5_MCH, SG_NONE, failed), &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_ESIGN");
    H->buf_free(&res.pay_data);
    /* wrong key */
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, mkresp(MD5_MCH, SG_MD5_WRONGKEY, failed), &res),
                     GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    /* tampered after signing */
    x = mkresp(MD5_MCH, SG_MD5, failed);
    replace_once(&x, "<need_query><![CDATA[N]]>", "<need_query><![CDATA[Y]]>");
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, x, &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    /* a field added after signing */
    x = mkresp(MD5_MCH, SG_MD5, failed);
    replace_once(&x, "</xml>", "<extra><![CDATA[1]]></extra></xml>");
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, x, &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    /* a lower-case MD5 sign is accepted */
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, mkresp(MD5_MCH, SG_MD5_LOWER, failed), &res),
                     GW_PAY_FAILED);
    H->buf_free(&res.pay_data);
    /* properly signed, but for another merchant */
    assert_int_equal(parse_free(CH->pay_parse, &c, 200,
                                mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "pay_result", "0" }, { "mch_id", "999999" }, END }),
                                &res),
                     GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_EMCHID");
    H->buf_free(&res.pay_data);
    /* … or with no mch_id at all */
    assert_int_equal(parse_free(CH->pay_parse, &c, 200,
                                mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "pay_result", "0" }, { "mch_id", NULL }, END }),
                                &res),
                     GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    /* an unknown sign_type */
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "pay_result", "0" }, { "sign_type", "NONE" }, END });
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, x, &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    /* a merchant without a key never accepts an MD5 sign (md5(s + "&key=")) */
    gw_chan_call_t c2 = mkcall(CTX, &M_NOKEY, &o, NULL, 0);
    assert_int_equal(parse_free(CH->pay_parse, &c2, 200,
                                mkresp(MD5_MCH, SG_MD5_EMPTYKEY, (kvp_t[]){ { "pay_result", "0" }, END }), &res),
                     GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    gw_chan_call_t c3 = mkcall(CTX, &M_RSA, &o, NULL, 0);
    assert_int_equal(parse_free(CH->pay_parse, &c3, 200,
                                mkresp(RSA_MCH, SG_MD5_EMPTYKEY, (kvp_t[]){ { "pay_result", "0" }, END }), &res),
                     GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    /* the absent sign_type means the merchant's own (MD5 here) */
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "pay_result", "0" }, { "sign_type", NULL }, END });
    assert_int_equal(parse_free(CH->pay_parse, &c, 200, x, &res), GW_PAY_SUCCESS);
    H->buf_free(&res.pay_data);
}

static void t_rsa_responses(void **state)
{
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(CTX, &M_RSA, &o, NULL, 0);
    gw_chan_result_t res;
    const kvp_t paid[] = { { "trade_state", "SUCCESS" }, { "total_fee", "1234" }, { "attach", "" }, END };
    assert_int_equal(parse_free(CH->query_parse, &c, 200, mkresp(RSA_MCH, SG_RSA_PLAT, paid), &res), GW_PAY_SUCCESS);
    assert_int_equal(res.amount, 1234);
    H->buf_free(&res.pay_data);
    /* RSA_1_1 (SHA1withRSA) answers are verified with SHA-1 */
    assert_int_equal(parse_free(CH->query_parse, &c, 200, mkresp(RSA_MCH, SG_RSA11_PLAT, paid), &res),
                     GW_PAY_SUCCESS);
    H->buf_free(&res.pay_data);
    /* another key; the merchant's own key */
    assert_int_equal(parse_free(CH->query_parse, &c, 200, mkresp(RSA_MCH, SG_RSA_ROGUE, paid), &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    assert_int_equal(parse_free(CH->query_parse, &c, 200, mkresp(RSA_MCH, SG_RSA_MERCH, paid), &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    /* tampered amount */
    char *x = mkresp(RSA_MCH, SG_RSA_PLAT, paid);
    replace_once(&x, "<total_fee><![CDATA[1234]]>", "<total_fee><![CDATA[1]]>");
    assert_int_equal(parse_free(CH->query_parse, &c, 200, x, &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    /* the sign_type of the message picks the algorithm: RSA sign called RSA_1_1 fails */
    x = mkresp(RSA_MCH, SG_RSA_PLAT, paid);
    replace_once(&x, "<sign_type><![CDATA[RSA_1_256]]>", "<sign_type><![CDATA[RSA_1_1]]>");
    assert_int_equal(parse_free(CH->query_parse, &c, 200, x, &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    /* merchant.public_key overrides the settings' platform key */
    gw_chan_merchant_t m = M_RSA;
    m.public_key = S(ROGUE_PUB);
    gw_chan_call_t c2 = mkcall(CTX, &m, &o, NULL, 0);
    assert_int_equal(parse_free(CH->query_parse, &c2, 200, mkresp(RSA_MCH, SG_RSA_ROGUE, paid), &res), GW_PAY_SUCCESS);
    H->buf_free(&res.pay_data);
    assert_int_equal(parse_free(CH->query_parse, &c2, 200, mkresp(RSA_MCH, SG_RSA_PLAT, paid), &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    /* an MD5 merchant also accepts a platform-RSA-signed answer (the message's sign_type rules) */
    gw_chan_call_t c3 = mkcall(CTX, &M_MD5, &o, NULL, 0);
    assert_int_equal(parse_free(CH->query_parse, &c3, 200, mkresp(MD5_MCH, SG_RSA_PLAT, paid), &res), GW_PAY_SUCCESS);
    H->buf_free(&res.pay_data);
}

/* ------------------------------------------------------------------ */
/* tests: notifications */

static void notify_init(gw_chan_notify_t *n)
{
    memset(n, 0x5a, sizeof(*n));
    H->buf_init(&n->sign_string, 65536);
    H->buf_init(&n->ack_ok_body, 1024);
    H->buf_init(&n->ack_fail_body, 1024);
}

static void notify_free(gw_chan_notify_t *n)
{
    H->buf_free(&n->sign_string);
    H->buf_free(&n->ack_ok_body);
    H->buf_free(&n->ack_fail_body);
}

static const kvp_t NOTIFY_PAID[] = {
    { "pay_result", "0" }, { "out_trade_no", "PG20240101000001" }, { "total_fee", "1234" },
    { "transaction_id", "105510000001202401011234567890" }, { "trade_type", "pay.weixin.native" },
    { "openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" }, { "time_end", "20240101120101" }, { "attach", "" },
    { "bank_type", "CFT" }, { NULL, NULL },
};

static gw_err_t notify_run(const gw_chan_merchant_t *m, const char *body, gw_chan_notify_t *n)
{
    gw_chan_notify_in_t in;
    memset(&in, 0, sizeof(in));
    in.method = S("POST");
    in.path = S("/notify/swiftpass");
    in.body = S(body);
    notify_init(n);
    gw_err_t rc = CH->notify_parse(CTX, H, &in, n);
    if (rc != GW_OK) return rc;
    gw_chan_order_t o = order_native();
    gw_chan_call_t c = mkcall(CTX, m, &o, NULL, 0);
    return CH->notify_verify(&c, &in, n);
}

static void t_notify_ok(void **state)
{
    gw_chan_notify_t n;
    char *x = mkresp(MD5_MCH, SG_MD5, NOTIFY_PAID);
    assert_int_equal(notify_run(&M_MD5, x, &n), GW_OK);
    assert_int_equal(n.kind, GW_NOTIFY_PAY);
    assert_string_equal(n.mch_id, MD5_MCH);
    assert_string_equal(n.out_trade_no, "PG20240101000001");
    assert_int_equal(n.status, GW_PAY_SUCCESS);
    assert_int_equal(n.amount, 1234);
    assert_string_equal(n.channel_trade_no, "105510000001202401011234567890");
    assert_int_equal(n.ack_ok_status, 200);
    assert_string_equal(n.ack_ok_type, "text/plain");
    assert_string_equal(n.ack_ok_body.data, "success");
    assert_int_equal(n.ack_fail_status, 200);
    assert_string_equal(n.ack_fail_type, "text/plain");
    assert_string_equal(n.ack_fail_body.data, "fail");
    /* the verified string, independently built, with the key redacted */
    fields_t f;
    assert_int_equal(parse_wire_xml(x, &f), 0);
    char *s = sign_string_of(&f);
    char want[4096];
    snprintf(want, sizeof(want), "%s&key=***", s);
    assert_string_equal(n.sign_string.data, want);
    assert_null(strstr(n.sign_string.data, MD5_KEY));
    assert_null(strstr(n.sign_string.data, "attach="));   /* empty: dropped */
    assert_non_null(strstr(n.sign_string.data, "sign_type=MD5"));
    free(s);
    fields_free(&f);
    notify_free(&n);
    free(x);

    /* RSA notify for an RSA merchant */
    x = mkresp(RSA_MCH, SG_RSA_PLAT, NOTIFY_PAID);
    assert_int_equal(notify_run(&M_RSA, x, &n), GW_OK);
    assert_int_equal(n.status, GW_PAY_SUCCESS);
    assert_null(strstr(n.sign_string.data, "&key="));
    notify_free(&n);
    free(x);

    /* a lower-case sign */
    x = mkresp(MD5_MCH, SG_MD5_LOWER, NOTIFY_PAID);
    assert_int_equal(notify_run(&M_MD5, x, &n), GW_OK);
    assert_int_equal(n.status, GW_PAY_SUCCESS);
    notify_free(&n);
    free(x);
}

static void t_notify_bad(void **state)
{
    gw_chan_notify_t n;
    /* forged: signed with another key */
    char *x = mkresp(MD5_MCH, SG_MD5_WRONGKEY, NOTIFY_PAID);
    assert_int_equal(notify_run(&M_MD5, x, &n), GW_ESIGN);
    assert_int_not_equal(n.status, GW_PAY_SUCCESS);
    assert_string_equal(n.ack_fail_body.data, "fail");
    notify_free(&n);
    free(x);
    /* tampered amount */
    x = mkresp(MD5_MCH, SG_MD5, NOTIFY_PAID);
    replace_once(&x, "<total_fee><![CDATA[1234]]>", "<total_fee><![CDATA[1]]>");
    assert_int_equal(notify_run(&M_MD5, x, &n), GW_ESIGN);
    notify_free(&n);
    free(x);
    /* RSA: rogue key, and a sign from the merchant's own key */
    x = mkresp(RSA_MCH, SG_RSA_ROGUE, NOTIFY_PAID);
    assert_int_equal(notify_run(&M_RSA, x, &n), GW_ESIGN);
    notify_free(&n);
    free(x);
    /* unsigned */
    x = mkresp(MD5_MCH, SG_NONE, NOTIFY_PAID);
    assert_int_equal(notify_run(&M_MD5, x, &n), GW_ESIGN);
    notify_free(&n);
    free(x);
    /* signed correctly, but the credentials belong to another merchant */
    gw_chan_merchant_t other = M_MD5;
    other.mch_id = S("105510000777");
    x = mkresp(MD5_MCH, SG_MD5, NOTIFY_PAID);
    assert_int_equal(notify_run(&other, x, &n), GW_ESIGN);
    notify_free(&n);
    free(x);
    /* malformed */
    assert_int_equal(notify_run(&M_MD5, "not xml", &n), GW_EPARSE);
    assert_string_equal(n.ack_fail_body.data, "fail"); /* parse filled the fail ack */
    assert_int_equal(n.ack_fail_status, 200);
    notify_free(&n);
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "mch_id", NULL }, { "pay_result", "0" }, END });
    assert_int_equal(notify_run(&M_MD5, x, &n), GW_EPARSE); /* no merchant number */
    notify_free(&n);
    free(x);
    /* signed, but not a payment: left to a query */
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "pay_result", "1" }, { "pay_info", "用户取消" },
                                           { "out_trade_no", "PG20240101000001" }, END });
    assert_int_equal(notify_run(&M_MD5, x, &n), GW_OK);
    assert_int_equal(n.status, GW_PAY_UNKNOWN);
    assert_string_equal(n.raw_code, "pay_result=1");
    assert_string_equal(n.raw_msg, "用户取消");
    notify_free(&n);
    free(x);
    x = mkresp(MD5_MCH, SG_MD5, (kvp_t[]){ { "result_code", "1" }, { "err_code", "PAYERROR" },
                                           { "out_trade_no", "PG20240101000001" }, END });
    assert_int_equal(notify_run(&M_MD5, x, &n), GW_OK);
    assert_int_equal(n.status, GW_PAY_UNKNOWN);
    assert_string_equal(n.raw_code, "PAYERROR");
    notify_free(&n);
    free(x);
}

/* ------------------------------------------------------------------ */
/* reentrancy: many threads, one ctx */

typedef struct {
    const char *resp_md5;
    const char *resp_rsa;
} thr_arg_t;

static int thr_main(const void *p)
{
    const thr_arg_t *a = p;
    int failures = 0;
    gw_chan_order_t o = order_native();
    o.method = GW_METHOD_BARCODE;
    o.auth_code = S("134567890123456789");
    for (int i = 0; i < 25; i++) {
        const gw_chan_merchant_t *m = (i & 1) ? &M_RSA : &M_MD5;
        gw_chan_call_t c = mkcall(CTX, m, &o, NULL, 0);
        gw_chan_request_t req;
        req_init(&req);
        if (CH->pay(&c, &req) != GW_OK || req.body.len == 0) failures++;
        req_free(&req);
        gw_chan_response_t resp = { 200, { NULL, 0 }, S((i & 1) ? a->resp_rsa : a->resp_md5) };
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
    const kvp_t paid[] = { { "pay_result", "0" }, { "total_fee", "1234" }, END };
    char *md5 = mkresp(MD5_MCH, SG_MD5, paid);
    char *rsa = mkresp(RSA_MCH, SG_RSA_PLAT, paid);
    const thr_arg_t a = { md5, rsa };
    int failures = ct_run_threads(thr_main, &a);
    free(md5);
    free(rsa);
    assert_int_equal(failures, 0);
}

/* ------------------------------------------------------------------ */

#define SUITE                                                                  \
    cmocka_unit_test(t_vtable),                                                \
    cmocka_unit_test(t_init_defaults),                                         \
    cmocka_unit_test(t_init_settings),                                         \
    cmocka_unit_test(t_init_errors),                                           \
    cmocka_unit_test(t_pay_native_md5),                                        \
    cmocka_unit_test(t_pay_alipay_qr),                                         \
    cmocka_unit_test(t_pay_wechat_jsapi_rsa),                                  \
    cmocka_unit_test(t_pay_rsa_1_1),                                           \
    cmocka_unit_test(t_pay_alipay_jsapi),                                      \
    cmocka_unit_test(t_pay_barcode),                                           \
    cmocka_unit_test(t_time_expire),                                           \
    cmocka_unit_test(t_empty_dropped_space_kept),                              \
    cmocka_unit_test(t_sign_agentno),                                          \
    cmocka_unit_test(t_other_requests),                                        \
    cmocka_unit_test(t_request_errors),                                        \
    cmocka_unit_test(t_native_pending),                                        \
    cmocka_unit_test(t_jsapi_pending),                                         \
    cmocka_unit_test(t_micropay_statuses),                                     \
    cmocka_unit_test(t_query_statuses),                                        \
    cmocka_unit_test(t_refund_statuses),                                       \
    cmocka_unit_test(t_refund_query_statuses),                                 \
    cmocka_unit_test(t_close_reverse),                                         \
    cmocka_unit_test(t_untrusted_responses),                                   \
    cmocka_unit_test(t_rsa_responses),                                         \
    cmocka_unit_test(t_notify_ok),                                             \
    cmocka_unit_test(t_notify_bad),                                            \
    cmocka_unit_test(t_threads)

int main(void)
{
    gw_log_level = GW_LOG_ERR; /* the module's signature warnings are expected here */
    const struct CMUnitTest inproc[] = { SUITE };
    const struct CMUnitTest viadl[] = { SUITE, cmocka_unit_test(t_shared_object) };
    int fails = 0;
    fails += cmocka_run_group_tests_name("swiftpass in-process", inproc, setup_inproc, teardown_inproc);
    fails += cmocka_run_group_tests_name("swiftpass dlopen " SO_PATH, viadl, setup_dlopen, teardown_dlopen);
    gw_host_shutdown();
    return fails ? 1 : 0;
}
