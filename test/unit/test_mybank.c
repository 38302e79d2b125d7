/*
 * test_mybank.c — the MyBank channel module (channels/mybank/).
 *
 * Every signature is checked against an INDEPENDENT implementation, the
 * xmlsec1 command-line tool (popen):
 *   - each request the module builds verifies with `xmlsec1 --verify
 *     --pubkey-pem isv_pub.pem` (and not with another key);
 *   - each bank answer and notification the module parses is built by the
 *     test as text and signed by `xmlsec1 --sign --privkey-pem
 *     bank_priv.pem` from a template; the acknowledgement the module signs
 *     verifies with xmlsec1 too.
 * Request fields are read with the test's own string scanning, not with the
 * host's XML reader.
 *
 * Keys: test/fixtures/mybank/ (throw-away; README.md there).
 *
 * The suite runs twice (two cmocka groups):
 *   - "in-process": channels/mybank/mybank.c is #included here, so the
 *     module code itself runs under ASan+UBSan, and its static helpers (the
 *     ReqMsgId MAC) can be tested directly;
 *   - "dlopen": the same tests against build/asan/channels/mybank.so.
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

#include "ctl.h"
#include "host.h"

/* the module under test, compiled into this binary with the sanitizers */
#include "../../channels/mybank/mybank.c"

#define SO_PATH "build/asan/channels/mybank.so"
#define FIX "test/fixtures/mybank/"

#define MCH "226801000000000001"
#define ISV_ORG "202211000000000001"
#define APPID "2018000000000001"
#define GW_URL "https://bkgw.example.com/open/api/common/request.htm"
#define NOTIFY_URL "https://paygate.example.com/notify/mybank"

/* H, CH, DL, CTX, TMPD and the helpers every channel suite shares */
#include "chantest.h"

/* ------------------------------------------------------------------ */
/* test state */

static char *ISV_PRIV, *ISV_PUB, *ISV_B64, *BANK_PUB, *BANK_B64, *ROGUE_PUB;
static char SETTINGS[8192];
static gw_chan_merchant_t M, M_B64, M_NOKEY, M_OVERRIDE;

/* 1 when xmlsec1 verifies doc with the public key file. */
static int xs_verify(const char *doc, size_t len, const char *pubfile)
{
    char path[128], cmd[512];
    int st;
    snprintf(path, sizeof(path), "%s/v.xml", TMPD);
    write_file(path, doc, len);
    snprintf(cmd, sizeof(cmd), "xmlsec1 --verify --pubkey-pem %s %s >/dev/null 2>&1", pubfile, path);
    free(sh(cmd, &st));
    return st == 0;
}

/* xmlsec1 starts in about 0.15 s, so documents are signed and verified in
 * batches: one process for many files. */

static const char SIG_TMPL[] =
    "<Signature xmlns=\"http://www.w3.org/2000/09/xmldsig#\"><SignedInfo>"
    "<CanonicalizationMethod Algorithm=\"http://www.w3.org/TR/2001/REC-xml-c14n-20010315\"/>"
    "<SignatureMethod Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#rsa-sha256\"/>"
    "<Reference URI=\"\"><Transforms><Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/>"
    "</Transforms><DigestMethod Algorithm=\"http://www.w3.org/2000/09/xmldsig#sha1\"/><DigestValue/>"
    "</Reference></SignedInfo><SignatureValue/></Signature>";

/* Signs n unsigned documents (each starting with an XML declaration) with
 * the profile's Signature template, in one xmlsec1 run; replaces docs[i]
 * with the signed text (malloc'd; the input is freed). */
static void xs_sign_many(char **docs, size_t n, const char *privfile)
{
    char *cmd = NULL;
    size_t cl = 0;
    FILE *mc = open_memstream(&cmd, &cl);
    fprintf(mc, "xmlsec1 --sign --privkey-pem %s", privfile);
    for (size_t i = 0; i < n; i++) {
        const char *end = strstr(docs[i], "</document>");
        assert_non_null(end);
        assert_true(strncmp(docs[i], "<?xml ", 6) == 0);
        char path[128];
        snprintf(path, sizeof(path), "%s/t%zu.xml", TMPD, i);
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        fwrite(docs[i], 1, (size_t)(end - docs[i]), f);
        fputs(SIG_TMPL, f);
        fputs(end, f);
        fclose(f);
        fprintf(mc, " %s", path);
        free(docs[i]);
        docs[i] = NULL;
    }
    fprintf(mc, " 2>%s/sign.err", TMPD);
    fclose(mc);
    int st;
    char *out = sh(cmd, &st);
    free(cmd);
    assert_int_equal(st, 0);
    /* the signed documents, one after the other, each from its declaration */
    char *p = out;
    for (size_t i = 0; i < n; i++) {
        assert_true(strncmp(p, "<?xml ", 6) == 0);
        char *next = strstr(p + 6, "<?xml ");
        size_t len = next ? (size_t)(next - p) : strlen(p);
        docs[i] = strndup(p, len);
        p += len;
    }
    assert_int_equal(*p, '\0');
    free(out);
}

static char *xs_sign(const char *unsigned_doc, const char *privfile)
{
    char *d = strdup(unsigned_doc);
    xs_sign_many(&d, 1, privfile);
    return d;
}

/* Requests waiting for their xmlsec1 verification (verify_pending). */
static char *PENDING[64];
static size_t NPENDING;

static void pend(const gw_buf_t *b)
{
    assert_true(NPENDING < sizeof(PENDING) / sizeof(PENDING[0]));
    PENDING[NPENDING++] = strndup(b->data, b->len);
}

/* Every pending document verifies with pubfile (one xmlsec1 run). */
static void verify_pending(const char *pubfile)
{
    if (NPENDING == 0) return;
    char *cmd = NULL;
    size_t cl = 0;
    FILE *mc = open_memstream(&cmd, &cl);
    fprintf(mc, "xmlsec1 --verify --pubkey-pem %s", pubfile);
    for (size_t i = 0; i < NPENDING; i++) {
        char path[128];
        snprintf(path, sizeof(path), "%s/p%zu.xml", TMPD, i);
        write_file(path, PENDING[i], strlen(PENDING[i]));
        fprintf(mc, " %s", path);
        free(PENDING[i]);
        PENDING[i] = NULL;
    }
    fprintf(mc, " >/dev/null 2>&1");
    fclose(mc);
    size_t n = NPENDING;
    NPENDING = 0;
    int st;
    free(sh(cmd, &st));
    free(cmd);
    if (st != 0) fail_msg("xmlsec1 does not verify all of %zu documents", n);
}

/* The text of the first <name>…</name> in doc (malloc'd), NULL when absent. */
static char *tag(const char *doc, const char *name)
{
    char open[96], close[96];
    snprintf(open, sizeof(open), "<%s>", name);
    snprintf(close, sizeof(close), "</%s>", name);
    const char *a = strstr(doc, open);
    if (a == NULL) return NULL;
    a += strlen(open);
    const char *b = strstr(a, close);
    if (b == NULL) return NULL;
    return strndup(a, (size_t)(b - a));
}

static void assert_tag(const char *doc, const char *name, const char *want)
{
    char *v = tag(doc, name);
    if (v == NULL || strcmp(v, want) != 0)
        fail_msg("<%s> is \"%s\", expected \"%s\"", name, v ? v : "(absent)", want);
    free(v);
}

/* ------------------------------------------------------------------ */
/* calls */

enum op { OP_PAY, OP_QUERY, OP_REFUND, OP_CLOSE };

static void req_init(gw_chan_request_t *r)
{
    ct_req_init(r, 4096, 4096, 1u << 20, 1u << 20);
}

static gw_err_t build(enum op op, const gw_chan_call_t *c, gw_chan_request_t *r)
{
    req_init(r);
    switch (op) {
    case OP_PAY: return CH->pay(c, r);
    case OP_QUERY: return CH->query(c, r);
    case OP_REFUND: return CH->refund(c, r);
    default: return CH->close(c, r);
    }
}

static int parse(enum op op, const gw_chan_call_t *c, int http, const char *body, gw_chan_result_t *res)
{
    parse_fn fn;
    switch (op) {
    case OP_PAY: fn = CH->pay_parse; break;
    case OP_QUERY: fn = CH->query_parse; break;
    case OP_REFUND: fn = CH->refund_parse; break;
    default: fn = CH->close_parse; break;
    }
    return ct_parse(fn, c, http, NULL, body, res);
}

/* A bank answer: <document><response> with the given Function, ReqMsgId and
 * body, signed by xmlsec1 with keyfile (NULL: unsigned); malloc'd. */
static char *bank_answer(const char *function, const char *msgid, const char *body, const char *keyfile)
{
    char *doc = NULL;
    assert_true(asprintf(&doc,
                         "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<document><response id=\"response\"><head>"
                         "<Version>1.0.0</Version><Appid>" APPID "</Appid><Function>%s</Function>"
                         "<RespTime>20240101120000</RespTime><RespTimeZone>UTC+8</RespTimeZone>"
                         "<ReqMsgId>%s</ReqMsgId><InputCharset>UTF-8</InputCharset><Reserve/>"
                         "<SignType>RSA</SignType></head><body>%s</body></response></document>\n",
                         function, msgid, body) > 0);
    if (keyfile == NULL) return doc;
    char *s = xs_sign(doc, keyfile);
    free(doc);
    return s;
}

#define RESP(st, code) "<RespInfo><ResultStatus>" st "</ResultStatus><ResultCode>" code "</ResultCode>" \
                       "<ResultMsg>msg " st "</ResultMsg></RespInfo>"
#define IDS "<MerchantId>" MCH "</MerchantId><IsvOrgId>" ISV_ORG "</IsvOrgId>"

/* Builds n requests for op with the call, answers request i with bodies[i]
 * signed by the bank (one xmlsec1 run) and parses each answer into res[i]
 * (pay_data freed: only its text is kept in pay[i] when pay is not NULL). */
static void roundtrips(enum op op, const gw_chan_call_t *c, size_t n, const char *const *bodies, gw_chan_result_t *res,
                       char **pay)
{
    char **ans = calloc(n, sizeof(*ans));
    assert_non_null(ans);
    for (size_t i = 0; i < n; i++) {
        gw_chan_request_t r;
        assert_int_equal(build(op, c, &r), GW_OK);
        char *fn = tag(r.body.data, "Function"), *id = tag(r.body.data, "ReqMsgId");
        assert_non_null(fn);
        assert_non_null(id);
        ans[i] = bank_answer(fn, id, bodies[i], NULL);
        free(fn);
        free(id);
        req_free(&r);
    }
    xs_sign_many(ans, n, FIX "bank_priv.pem");
    for (size_t i = 0; i < n; i++) {
        parse(op, c, 200, ans[i], &res[i]);
        if (pay) pay[i] = res[i].pay_data.data ? strdup(res[i].pay_data.data) : strdup("");
        H->buf_free(&res[i].pay_data);
        free(ans[i]);
    }
    free(ans);
}

static gw_chan_order_t order_barcode(void)
{
    gw_chan_order_t o;
    memset(&o, 0, sizeof(o));
    o.out_trade_no = S("PG20240101000001");
    o.amount = 1234;
    o.currency = S("CNY");
    o.subject = S("Tea <&> \xe9\xbe\x99\xe4\xba\x95");
    o.method = GW_METHOD_BARCODE;
    o.auth_code = S("134567890123456789");
    o.client_ip = S("10.0.0.8");
    return o;
}

static gw_chan_order_t order_ctob(uint32_t method)
{
    gw_chan_order_t o = order_barcode();
    o.method = method;
    o.auth_code = S("");
    o.notify_url = S(NOTIFY_URL);
    if (method == GW_METHOD_WECHAT_JSAPI || method == GW_METHOD_ALIPAY_JSAPI) o.payer_id = S("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
    return o;
}

static gw_chan_refund_t refund_one(void)
{
    gw_chan_refund_t f;
    memset(&f, 0, sizeof(f));
    f.out_refund_no = S("RF20240101000001");
    f.amount = 234;
    f.total_amount = 1234;
    f.reason = S("too sweet");
    return f;
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
    if (ct_tmpdir_make("test_mybank") != 0) return -1;
    if (system("xmlsec1 --version >/dev/null 2>&1") != 0) {
        fprintf(stderr, "test_mybank: the xmlsec1 command-line tool is required\n");
        return -1;
    }
    ISV_PRIV = read_file(FIX "isv_priv.pem");
    ISV_PUB = read_file(FIX "isv_pub.pem");
    ISV_B64 = read_file(FIX "isv_priv_pkcs8.b64");
    BANK_PUB = read_file(FIX "bank_pub.pem");
    BANK_B64 = read_file(FIX "bank_pub_spki.b64");
    ROGUE_PUB = read_file(FIX "rogue_pub.pem");
    snprintf(SETTINGS, sizeof(SETTINGS),
             "{\"gateway_url\":\"" GW_URL "\",\"isv_org_id\":\"" ISV_ORG "\",\"appid\":\"" APPID "\","
             "\"bank_public_key\":\"%s\"}",
             BANK_B64);
    memset(&M, 0, sizeof(M));
    M.mch_id = S(MCH);
    M.app_id = S("wx2421b1c4370ec43b");
    M.private_key = S(ISV_PRIV);
    M_B64 = M;
    M_B64.private_key = S(ISV_B64);
    M_NOKEY = M;
    M_NOKEY.private_key = S("");
    M_OVERRIDE = M;
    M_OVERRIDE.public_key = S(ROGUE_PUB); /* this merchant's bank key is another one */
    return 0;
}

static int common_teardown(void)
{
    free(ISV_PRIV);
    free(ISV_PUB);
    free(ISV_B64);
    free(BANK_PUB);
    free(BANK_B64);
    free(ROGUE_PUB);
    return 0;
}

/* the group's ctx block (chantest.h's fixtures call this once CH is set) */
static void *group_ctx(void)
{
    return new_ctx(SETTINGS, GW_OK, NULL, 0);
}

/* ------------------------------------------------------------------ */
/* the vtable, the shared object, init */

static void t_vtable(void **state)
{
    (void)state;
    assert_int_equal(CH->abi_version, GW_CHANNEL_ABI_VERSION);
    assert_true((CH->abi_version & 0xffff) >= 2); /* it uses the 1.2 host API */
    assert_int_equal(CH->struct_size, sizeof(gw_channel_t));
    assert_string_equal(CH->name, "mybank");
    assert_string_equal(CH->version, "1.0.0");
    assert_string_equal(CH->build_sig, GW_CHANNEL_BUILD_SIG);
    assert_int_equal(CH->methods, GW_METHOD_WECHAT_QR | GW_METHOD_WECHAT_JSAPI | GW_METHOD_ALIPAY_QR |
                                      GW_METHOD_ALIPAY_JSAPI | GW_METHOD_BARCODE);
    assert_non_null(CH->fini);
    /* the timing rules of docs/channels/mybank.md */
    assert_non_null(CH->policy);
    assert_int_equal(CH->policy->struct_size, sizeof(gw_chan_policy_t));
    assert_int_equal(CH->policy->poll_interval_ms, 5000);
    assert_int_equal(CH->policy->poll_deadline_ms, 60000);
    assert_int_equal(CH->policy->reverse_min_age_ms, 0);
    assert_int_equal(CH->policy->close_min_age_ms, 0);
    assert_int_equal(CH->policy->refund_query_delay_ms, 10000);
}

static void t_shared_object(void **state)
{
    (void)state;
    ct_assert_so_exports(SO_PATH);
}

static void t_init(void **state)
{
    (void)state;
    char err[512];
    /* no settings: loads, but builds nothing until configured */
    void *ctx = new_ctx("{}", GW_OK, NULL, 0);
    gw_chan_order_t o = order_barcode();
    gw_chan_call_t c = mkcall(ctx, &M, &o, NULL, 0);
    gw_chan_request_t r;
    assert_int_equal(build(OP_PAY, &c, &r), GW_EINVAL);
    assert_int_equal(r.body.len, 0);
    req_free(&r);
    free_ctx(ctx);
    /* a PEM bank key works as well as Base64 SPKI */
    char esc[2048], s[4096];
    json_escape_into(esc, sizeof(esc), BANK_PUB);
    snprintf(s, sizeof(s), "{\"gateway_url\":\"http://127.0.0.1:1/gw\",\"isv_org_id\":\"1\",\"appid\":\"2\","
                           "\"bank_public_key\":\"%s\",\"version\":\"1.0.1\"}", esc);
    ctx = new_ctx(s, GW_OK, NULL, 0);
    c = mkcall(ctx, &M, &o, NULL, 0);
    assert_int_equal(build(OP_PAY, &c, &r), GW_OK);
    assert_tag(r.body.data, "Version", "1.0.1");
    assert_string_equal(r.url.data, "http://127.0.0.1:1/gw");
    req_free(&r);
    free_ctx(ctx);
    /* errors, with reasons that carry no key material */
    struct { const char *s; gw_err_t rc; const char *why; } bad[] = {
        { "[1]", GW_EINVAL, "not a JSON object" },
        { "{\"gateway_url\":\"ftp://x\"}", GW_EINVAL, "gateway_url" },
        { "{\"gateway_url\":7}", GW_EINVAL, "gateway_url" },
        { "{\"isv_org_id\":\"a<b\"}", GW_EINVAL, "isv_org_id" },
        { "{\"appid\":1}", GW_EINVAL, "appid" },
        { "{\"bank_public_key\":\"MIIBnotakey\"}", GW_EKEY, "bank_public_key" },
        { "{\"bank_public_key\":5}", GW_EINVAL, "bank_public_key" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_null(new_ctx(bad[i].s, bad[i].rc, err, sizeof(err)));
        assert_non_null(strstr(err, bad[i].why));
    }
    /* a core without host API 1.2 is refused with a reason */
    gw_host_api_t old = *H;
    old.struct_size = (uint32_t)offsetof(gw_host_api_t, xml_escape);
    old.version = (1u << 16) | 1u;
    ctx = calloc(1, CH->ctx_size);
    gw_buf_t eb;
    H->buf_init(&eb, 512);
    assert_int_equal(CH->init(ctx, &old, "{}", 2, &eb), GW_ENOTSUP);
    assert_non_null(strstr(eb.data, "host API 1.2"));
    H->buf_free(&eb);
    free(ctx);
}

/* ------------------------------------------------------------------ */
/* requests */

/* The common checks of every request: signature (xmlsec1, right key only),
 * envelope, head, URL, headers, sign_string. */
static void check_request(const gw_chan_request_t *r, const char *function)
{
    const char *b = r->body.data;
    assert_string_equal(r->method, "POST");
    assert_string_equal(r->url.data, GW_URL);
    assert_string_equal(r->headers.data, "Content-Type: application/xml; charset=UTF-8\r\n");
    pend(&r->body); /* verify_pending: xmlsec1 with isv_pub.pem */
    static const char start[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><document><request id=\"request\"><head>";
    assert_true(strncmp(b, start, sizeof(start) - 1) == 0);
    /* the Signature is the last child of <document> */
    const char *sig = strstr(b, "<Signature xmlns=\"http://www.w3.org/2000/09/xmldsig#\">");
    assert_non_null(sig);
    assert_non_null(strstr(b, "</body></request><Signature"));
    assert_string_equal(b + r->body.len - strlen("</Signature></document>"), "</Signature></document>");
    /* sign_string: the document before it was signed */
    assert_int_equal(r->sign_string.len, (size_t)(sig - b) + strlen("</document>"));
    assert_memory_equal(r->sign_string.data, b, (size_t)(sig - b));
    assert_tag(b, "Version", "1.0.0");
    assert_tag(b, "Appid", APPID);
    assert_tag(b, "Function", function);
    assert_tag(b, "ReqTimeZone", "UTC+8");
    assert_tag(b, "InputCharset", "UTF-8");
    assert_tag(b, "SignType", "RSA");
    assert_non_null(strstr(b, "<Reserve/>"));
    /* ReqTime: now, yyyyMMddHHmmss in UTC+8 */
    char *t = tag(b, "ReqTime");
    assert_int_equal(strlen(t), 14);
    time_t now = time(NULL) + 8 * 3600;
    struct tm tm;
    gmtime_r(&now, &tm);
    char today[16];
    strftime(today, sizeof(today), "%Y%m%d", &tm);
    assert_memory_equal(t, today, 8);
    free(t);
    /* ReqMsgId: a UUID */
    char *id = tag(b, "ReqMsgId");
    assert_int_equal(strlen(id), 36);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) assert_int_equal(id[i], '-');
        else assert_non_null(strchr("0123456789abcdef", id[i]));
    }
    assert_int_equal(id[14], '4');
    free(id);
    assert_tag(b, "IsvOrgId", ISV_ORG);
    assert_tag(b, "MerchantId", MCH);
}

static void t_pay_barcode(void **state)
{
    (void)state;
    gw_chan_order_t o = order_barcode();
    o.attach = S("a&b");
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    gw_chan_request_t r;
    assert_int_equal(build(OP_PAY, &c, &r), GW_OK);
    check_request(&r, "ant.mybank.bkmerchanttrade.pay");
    const char *b = r.body.data;
    assert_tag(b, "AuthCode", "134567890123456789");
    assert_tag(b, "OutTradeNo", "PG20240101000001");
    assert_tag(b, "Body", "Tea &lt;&amp;&gt; \xe9\xbe\x99\xe4\xba\x95");
    assert_tag(b, "TotalAmount", "1234");
    assert_tag(b, "Currency", "CNY");
    assert_tag(b, "ChannelType", "WX");
    assert_tag(b, "DeviceCreateIp", "10.0.0.8");
    assert_tag(b, "Attach", "a&amp;b");
    assert_null(strstr(b, "<NotifyUrl>"));
    assert_null(strstr(b, "<ExpireExpress>"));
    char *id1 = tag(b, "ReqMsgId");
    req_free(&r);
    /* the wallet follows the pay code; each message its own ReqMsgId */
    struct { const char *code, *ct; } w[] = { { "284567890123456789", "ALI" }, { "104567890123456789", "WX" },
                                             { "914567890123456789", "QQ" }, { "184567890123456789", "JD" } };
    for (size_t i = 0; i < 4; i++) {
        o.auth_code = S(w[i].code);
        assert_int_equal(build(OP_PAY, &c, &r), GW_OK);
        assert_tag(r.body.data, "ChannelType", w[i].ct);
        char *id2 = tag(r.body.data, "ReqMsgId");
        assert_string_not_equal(id1, id2);
        free(id2);
        req_free(&r);
    }
    free(id1);
    o.auth_code = S("994567890123456789");
    assert_int_equal(build(OP_PAY, &c, &r), GW_EINVAL);
    req_free(&r);
    /* a merchant key as MyBank hands it out: bare Base64 PKCS#8 */
    o.auth_code = S("134567890123456789");
    c = mkcall(CTX, &M_B64, &o, NULL, 0);
    assert_int_equal(build(OP_PAY, &c, &r), GW_OK);
    pend(&r.body);
    /* and with the wrong key, xmlsec1 refuses it (the check is meaningful) */
    assert_false(xs_verify(r.body.data, r.body.len, FIX "rogue_pub.pem"));
    req_free(&r);
    /* no customer address: the loopback address; an expiry: whole minutes */
    o.client_ip = S("");
    o.expire_ms = (int64_t)H->now_ms() + 15 * 60000 + 30000;
    c = mkcall(CTX, &M, &o, NULL, 0);
    assert_int_equal(build(OP_PAY, &c, &r), GW_OK);
    assert_tag(r.body.data, "DeviceCreateIp", "127.0.0.1");
    assert_tag(r.body.data, "ExpireExpress", "15");
    req_free(&r);
    o.expire_ms = (int64_t)H->now_ms() + 5000;
    assert_int_equal(build(OP_PAY, &c, &r), GW_OK);
    assert_tag(r.body.data, "ExpireExpress", "1");
    req_free(&r);
    o.expire_ms = (int64_t)H->now_ms() + 10LL * 86400000;
    assert_int_equal(build(OP_PAY, &c, &r), GW_OK);
    assert_tag(r.body.data, "ExpireExpress", "1440");
    req_free(&r);
    verify_pending(FIX "isv_pub.pem");
}

static void t_prepay(void **state)
{
    (void)state;
    struct { uint32_t m; const char *ct; int jsapi; } k[] = {
        { GW_METHOD_WECHAT_QR, "WX", 0 }, { GW_METHOD_ALIPAY_QR, "ALI", 0 },
        { GW_METHOD_WECHAT_JSAPI, "WX", 1 }, { GW_METHOD_ALIPAY_JSAPI, "ALI", 1 },
    };
    for (size_t i = 0; i < 4; i++) {
        gw_chan_order_t o = order_ctob(k[i].m);
        gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
        gw_chan_request_t r;
        assert_int_equal(build(OP_PAY, &c, &r), GW_OK);
        check_request(&r, "ant.mybank.bkmerchanttrade.prePay");
        const char *b = r.body.data;
        assert_tag(b, "ChannelType", k[i].ct);
        assert_tag(b, "NotifyUrl", NOTIFY_URL);
        assert_null(strstr(b, "<AuthCode>"));
        if (k[i].jsapi) assert_tag(b, "OpenId", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
        else assert_null(strstr(b, "<OpenId>"));
        /* WeChat JSAPI: the merchant's app id when the order has none */
        if (k[i].m == GW_METHOD_WECHAT_JSAPI) assert_tag(b, "SubAppId", "wx2421b1c4370ec43b");
        else assert_null(strstr(b, "<SubAppId>"));
        req_free(&r);
    }
    gw_chan_order_t o = order_ctob(GW_METHOD_WECHAT_JSAPI);
    o.sub_appid = S("wxfromorder");
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    gw_chan_request_t r;
    assert_int_equal(build(OP_PAY, &c, &r), GW_OK);
    assert_tag(r.body.data, "SubAppId", "wxfromorder");
    req_free(&r);
    verify_pending(FIX "isv_pub.pem");
}

static void t_other_requests(void **state)
{
    (void)state;
    gw_chan_order_t o = order_barcode();
    gw_chan_refund_t f = refund_one();
    gw_chan_request_t r;
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    assert_int_equal(build(OP_QUERY, &c, &r), GW_OK);
    check_request(&r, "ant.mybank.bkmerchanttrade.payQuery");
    assert_tag(r.body.data, "OutTradeNo", "PG20240101000001");
    req_free(&r);
    c = mkcall(CTX, &M, &o, NULL, GW_CALL_REVERSE);
    assert_int_equal(build(OP_CLOSE, &c, &r), GW_OK);
    check_request(&r, "ant.mybank.bkmerchanttrade.payCancel");
    assert_tag(r.body.data, "OutTradeNo", "PG20240101000001");
    req_free(&r);
    c = mkcall(CTX, &M, &o, NULL, 0);
    assert_int_equal(build(OP_CLOSE, &c, &r), GW_OK);
    check_request(&r, "ant.mybank.bkmerchanttrade.payClose");
    req_free(&r);
    c = mkcall(CTX, &M, &o, &f, 0);
    assert_int_equal(build(OP_REFUND, &c, &r), GW_OK);
    check_request(&r, "ant.mybank.bkmerchanttrade.refund");
    assert_tag(r.body.data, "OutTradeNo", "PG20240101000001");
    assert_tag(r.body.data, "OutRefundNo", "RF20240101000001");
    assert_tag(r.body.data, "RefundAmount", "234");
    assert_tag(r.body.data, "RefundReason", "too sweet");
    assert_tag(r.body.data, "DeviceCreateIp", "10.0.0.8");
    req_free(&r);
    c = mkcall(CTX, &M, &o, &f, GW_CALL_REFUND_QUERY);
    assert_int_equal(build(OP_QUERY, &c, &r), GW_OK);
    check_request(&r, "ant.mybank.bkmerchanttrade.refundQuery");
    assert_tag(r.body.data, "OutRefundNo", "RF20240101000001");
    assert_null(strstr(r.body.data, "<OutTradeNo>"));
    req_free(&r);
    verify_pending(FIX "isv_pub.pem");
}

static void t_request_errors(void **state)
{
    (void)state;
    gw_chan_request_t r;
    gw_chan_order_t o;
    gw_chan_refund_t f = refund_one();
#define EXPECT(op, call, rc)                                                   \
    do {                                                                       \
        gw_chan_call_t cc_ = (call);                                           \
        assert_int_equal(build(op, &cc_, &r), rc);                             \
        assert_int_equal(r.body.len, 0);                                       \
        req_free(&r);                                                          \
    } while (0)
    o = order_barcode(); o.out_trade_no = S("");
    EXPECT(OP_PAY, mkcall(CTX, &M, &o, NULL, 0), GW_EINVAL);
    o = order_barcode(); o.amount = 0;
    EXPECT(OP_PAY, mkcall(CTX, &M, &o, NULL, 0), GW_EINVAL);
    o = order_barcode(); o.subject = S("");
    EXPECT(OP_PAY, mkcall(CTX, &M, &o, NULL, 0), GW_EINVAL);
    o = order_barcode(); o.auth_code = S("");
    EXPECT(OP_PAY, mkcall(CTX, &M, &o, NULL, 0), GW_EINVAL);
    o = order_ctob(GW_METHOD_WECHAT_QR); o.notify_url = S("");
    EXPECT(OP_PAY, mkcall(CTX, &M, &o, NULL, 0), GW_EINVAL);
    o = order_ctob(GW_METHOD_ALIPAY_JSAPI); o.payer_id = S("");
    EXPECT(OP_PAY, mkcall(CTX, &M, &o, NULL, 0), GW_EINVAL);
    o = order_barcode(); o.method = 1u << 7;
    EXPECT(OP_PAY, mkcall(CTX, &M, &o, NULL, 0), GW_ENOTSUP);
    o = order_barcode(); o.subject = S("bad \x01 control");
    EXPECT(OP_PAY, mkcall(CTX, &M, &o, NULL, 0), GW_EINVAL);
    o = order_barcode(); o.subject = S("bad \xff utf-8");
    EXPECT(OP_PAY, mkcall(CTX, &M, &o, NULL, 0), GW_EINVAL);
    o = order_barcode();
    EXPECT(OP_PAY, mkcall(CTX, &M_NOKEY, &o, NULL, 0), GW_EKEY);
    gw_chan_merchant_t bad = M;
    bad.private_key = S("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n");
    EXPECT(OP_PAY, mkcall(CTX, &bad, &o, NULL, 0), GW_EKEY);
    bad = M;
    bad.mch_id = S("");
    EXPECT(OP_QUERY, mkcall(CTX, &bad, &o, NULL, 0), GW_EINVAL);
    f.amount = 2000;
    EXPECT(OP_REFUND, mkcall(CTX, &M, &o, &f, 0), GW_EINVAL);
    f = refund_one(); f.out_refund_no = S("");
    EXPECT(OP_REFUND, mkcall(CTX, &M, &o, &f, 0), GW_EINVAL);
    EXPECT(OP_QUERY, mkcall(CTX, &M, &o, &f, GW_CALL_REFUND_QUERY), GW_EINVAL);
    EXPECT(OP_QUERY, mkcall(CTX, &M, &o, NULL, GW_CALL_REFUND_QUERY), GW_EINVAL);
    o.out_trade_no = S("");
    EXPECT(OP_CLOSE, mkcall(CTX, &M, &o, NULL, GW_CALL_REVERSE), GW_EINVAL);
#undef EXPECT
}

/* ------------------------------------------------------------------ */
/* answers */

/* One answer of a table: the body the bank signs, and what the module must
 * make of it (raw_code NULL: not checked). */
typedef struct {
    const char *body;
    int status;
    const char *raw_code;
} ans_t;

static void check_answers(enum op op, const gw_chan_call_t *c, const ans_t *a, size_t n, gw_chan_result_t *res,
                          char **pay)
{
    const char *bodies[32];
    assert_true(n <= 32);
    for (size_t i = 0; i < n; i++) bodies[i] = a[i].body;
    roundtrips(op, c, n, bodies, res, pay);
    for (size_t i = 0; i < n; i++) {
        if (res[i].status != a[i].status) fail_msg("answer %zu: status %d, expected %d", i, res[i].status, a[i].status);
        if (a[i].raw_code && strcmp(res[i].raw_code, a[i].raw_code) != 0)
            fail_msg("answer %zu: raw_code \"%s\", expected \"%s\"", i, res[i].raw_code, a[i].raw_code);
    }
}

static void free_pay(char **pay, size_t n)
{
    for (size_t i = 0; i < n; i++) free(pay[i]);
}

static void t_pay_statuses(void **state)
{
    (void)state;
    gw_chan_order_t o = order_barcode();
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    const ans_t a[] = {
        /* S: paid */
        { RESP("S", "0000") "<OutTradeNo>PG20240101000001</OutTradeNo><OrderNo>2024010100001</OrderNo>"
          "<TotalAmount>1234</TotalAmount>" IDS, GW_PAY_SUCCESS, "succ" },
        /* U: the customer is confirming: polled, then cancelled */
        { RESP("U", "USER_PAYING") IDS, GW_PAY_USER_PAYING, "U:USER_PAYING" },
        /* F: a definite failure */
        { RESP("F", "AUTH_CODE_EXPIRE") IDS, GW_PAY_FAILED, "F:AUTH_CODE_EXPIRE" },
        /* S with a TradeStatus that says otherwise */
        { RESP("S", "0000") "<TradeStatus>paying</TradeStatus>", GW_PAY_USER_PAYING, "paying" },
        /* anything else */
        { RESP("X", "0000"), GW_PAY_UNKNOWN, "ResultStatus=X" },
        { "<OutTradeNo>PG20240101000001</OutTradeNo>", GW_PAY_UNKNOWN, "ResultStatus=" },
        /* signed, but about another order or another amount */
        { RESP("S", "0000") "<OutTradeNo>OTHER</OutTradeNo>", GW_PAY_UNKNOWN, "GW_EORDER" },
        { RESP("S", "0000") "<TotalAmount>1</TotalAmount>", GW_PAY_UNKNOWN, "GW_EAMOUNT" },
    };
    gw_chan_result_t res[8];
    check_answers(OP_PAY, &c, a, 8, res, NULL);
    assert_int_equal(res[0].amount, 1234);
    assert_string_equal(res[0].channel_trade_no, "2024010100001");
    assert_string_equal(res[0].mch_id, MCH);
    assert_string_equal(res[0].raw_msg, "msg S");
    assert_int_equal(res[0].retry, 0);
    assert_int_equal(res[1].amount, -1);
    assert_string_equal(res[2].raw_msg, "msg F");
}

static void t_prepay_statuses(void **state)
{
    (void)state;
    gw_chan_order_t o = order_ctob(GW_METHOD_WECHAT_QR);
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    gw_chan_result_t res[8];
    char *pay[8];
    const ans_t qr[] = {
        { RESP("S", "0000") "<OutTradeNo>PG20240101000001</OutTradeNo><OrderNo>OD1</OrderNo>"
          "<QrCodeUrl>https://qr.example.com/x?a=1&amp;b=\"2\"</QrCodeUrl>" IDS, GW_PAY_PENDING, "S" },
        /* created, but nothing to pay with: the order exists, query it */
        { RESP("S", "0000") IDS, GW_PAY_UNKNOWN, "S" },
        { RESP("F", "OUT_TRADE_NO_USED") IDS, GW_PAY_FAILED, "F:OUT_TRADE_NO_USED" },
        { RESP("U", "SYSTEM_ERROR") IDS, GW_PAY_UNKNOWN, "U:SYSTEM_ERROR" },
        /* a QR order answered with PayInfo only */
        { RESP("S", "0000") "<PayInfo>https://qr.alipay.com/x</PayInfo>", GW_PAY_PENDING, NULL },
    };
    check_answers(OP_PAY, &c, qr, 5, res, pay);
    assert_string_equal(pay[0], "{\"code_url\":\"https://qr.example.com/x?a=1&b=\\\"2\\\"\"}");
    assert_string_equal(res[0].channel_trade_no, "OD1");
    assert_string_equal(pay[1], "");
    assert_string_equal(pay[4], "{\"code_url\":\"https://qr.alipay.com/x\"}");
    free_pay(pay, 5);
    /* JSAPI: the parameters as an object; a PayInfo that is not JSON is a
     * string; the other field as a fallback */
    o = order_ctob(GW_METHOD_WECHAT_JSAPI);
    const ans_t js[] = {
        { RESP("S", "0000") "<PayInfo>{\"appId\":\"wx1\",\"package\":\"prepay_id=wx2\"}</PayInfo>", GW_PAY_PENDING, NULL },
        { RESP("S", "0000") "<PayInfo>tradeNO=2024</PayInfo>", GW_PAY_PENDING, NULL },
        { RESP("S", "0000") "<QrCodeUrl>https://h5</QrCodeUrl>", GW_PAY_PENDING, NULL },
    };
    check_answers(OP_PAY, &c, js, 3, res, pay);
    assert_string_equal(pay[0], "{\"pay_info\":{\"appId\":\"wx1\",\"package\":\"prepay_id=wx2\"}}");
    assert_string_equal(pay[1], "{\"pay_info\":\"tradeNO=2024\"}");
    assert_string_equal(pay[2], "{\"pay_url\":\"https://h5\"}");
    free_pay(pay, 3);
}

static void t_query_statuses(void **state)
{
    (void)state;
    static const struct { const char *ts; int barcode, ctob; } k[] = {
        { "succ", GW_PAY_SUCCESS, GW_PAY_SUCCESS },
        { "refunding", GW_PAY_REFUNDED, GW_PAY_REFUNDED },
        { "closed", GW_PAY_CLOSED, GW_PAY_CLOSED },
        { "cancel", GW_PAY_REVERSED, GW_PAY_REVERSED },
        { "fail", GW_PAY_FAILED, GW_PAY_FAILED },
        { "paying", GW_PAY_USER_PAYING, GW_PAY_NOT_PAID },
        { "SUCC", GW_PAY_UNKNOWN, GW_PAY_UNKNOWN },
        { "", GW_PAY_UNKNOWN, GW_PAY_UNKNOWN },
    };
    enum { NK = sizeof(k) / sizeof(k[0]) };
    char bodies[NK][512];
    ans_t b[NK + 3], cb[NK];
    for (size_t i = 0; i < NK; i++) {
        snprintf(bodies[i], sizeof(bodies[i]), RESP("S", "0000") "<OutTradeNo>PG20240101000001</OutTradeNo>"
                 "<TradeStatus>%s</TradeStatus><TotalAmount>1234</TotalAmount>" IDS, k[i].ts);
        b[i] = (ans_t){ bodies[i], k[i].barcode, k[i].ts };
        cb[i] = (ans_t){ bodies[i], k[i].ctob, k[i].ts };
    }
    /* F (no such trade) and U tell nothing about the trade; another amount
     * is never SUCCESS */
    b[NK] = (ans_t){ RESP("F", "ORDER_NOT_EXIST") IDS, GW_PAY_UNKNOWN, "F:ORDER_NOT_EXIST" };
    b[NK + 1] = (ans_t){ RESP("U", "SYSTEM_ERROR") IDS, GW_PAY_UNKNOWN, "U:SYSTEM_ERROR" };
    b[NK + 2] = (ans_t){ RESP("S", "0000") "<TradeStatus>succ</TradeStatus><TotalAmount>1</TotalAmount>", GW_PAY_UNKNOWN,
                         "GW_EAMOUNT" };
    gw_chan_result_t res[NK + 3];
    gw_chan_order_t o = order_barcode();
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    check_answers(OP_QUERY, &c, b, NK + 3, res, NULL);
    for (size_t i = 0; i < NK; i++) assert_int_equal(res[i].amount, 1234);
    o = order_ctob(GW_METHOD_ALIPAY_QR);
    check_answers(OP_QUERY, &c, cb, NK, res, NULL);
}

static void t_refund_statuses(void **state)
{
    (void)state;
    gw_chan_order_t o = order_barcode();
    gw_chan_refund_t f = refund_one();
    gw_chan_call_t c = mkcall(CTX, &M, &o, &f, 0);
    const ans_t a[] = {
        /* accepted: asynchronous */
        { RESP("S", "0000") "<OutTradeNo>PG20240101000001</OutTradeNo><OutRefundNo>RF20240101000001</OutRefundNo>"
          "<RefundOrderNo>RO1</RefundOrderNo><RefundAmount>234</RefundAmount>" IDS, GW_REFUND_PROCESSING, "refunding" },
        { RESP("S", "0000") "<TradeStatus>succ</TradeStatus>", GW_REFUND_SUCCESS, "succ" },
        { RESP("S", "0000") "<TradeStatus>fail</TradeStatus>", GW_REFUND_FAILED, "fail" },
        { RESP("F", "REFUND_AMOUNT_EXCEED") IDS, GW_REFUND_FAILED, "F:REFUND_AMOUNT_EXCEED" },
        { RESP("U", "SYSTEM_ERROR") IDS, GW_REFUND_UNKNOWN, "U:SYSTEM_ERROR" },
        { RESP("S", "0000") "<OutRefundNo>OTHER</OutRefundNo>", GW_REFUND_UNKNOWN, "GW_EREFUND" },
        { RESP("S", "0000") "<OutTradeNo>OTHER</OutTradeNo>", GW_REFUND_UNKNOWN, "GW_EREFUND" },
        { RESP("S", "0000") "<RefundAmount>235</RefundAmount>", GW_REFUND_UNKNOWN, "GW_EAMOUNT" },
    };
    gw_chan_result_t res[8];
    check_answers(OP_REFUND, &c, a, 8, res, NULL);
    assert_string_equal(res[0].channel_refund_no, "RO1");
    assert_int_equal(res[0].amount, 234);
}

static void t_refund_query_statuses(void **state)
{
    (void)state;
    gw_chan_order_t o = order_barcode();
    gw_chan_refund_t f = refund_one();
    gw_chan_call_t c = mkcall(CTX, &M, &o, &f, GW_CALL_REFUND_QUERY);
#define RQ(ts) RESP("S", "0000") "<OutRefundNo>RF20240101000001</OutRefundNo><RefundOrderNo>RO9</RefundOrderNo>" \
               "<RefundAmount>234</RefundAmount><TradeStatus>" ts "</TradeStatus>" IDS
    const ans_t a[] = {
        { RQ("succ"), GW_REFUND_SUCCESS, "succ" },
        { RQ("fail"), GW_REFUND_FAILED, "fail" },
        { RQ("refunding"), GW_REFUND_PROCESSING, "refunding" },
        { RQ("other"), GW_REFUND_UNKNOWN, "other" },
        { RESP("F", "REFUND_NOT_EXIST") IDS, GW_REFUND_UNKNOWN, "F:REFUND_NOT_EXIST" },
        { RESP("S", "0000") "<OutRefundNo>X</OutRefundNo><TradeStatus>succ</TradeStatus>", GW_REFUND_UNKNOWN, "GW_EREFUND" },
        { RESP("S", "0000") "<RefundAmount>1</RefundAmount><TradeStatus>succ</TradeStatus>", GW_REFUND_UNKNOWN, "GW_EAMOUNT" },
    };
#undef RQ
    gw_chan_result_t res[7];
    check_answers(OP_QUERY, &c, a, 7, res, NULL);
    for (size_t i = 0; i < 4; i++) assert_string_equal(res[i].channel_refund_no, "RO9");
}

static void t_close_cancel(void **state)
{
    (void)state;
    gw_chan_order_t o = order_barcode();
    gw_chan_call_t rev = mkcall(CTX, &M, &o, NULL, GW_CALL_REVERSE), cl = mkcall(CTX, &M, &o, NULL, 0);
    gw_chan_result_t res[4];
    const ans_t r[] = {
        { RESP("S", "0000") "<OutTradeNo>PG20240101000001</OutTradeNo>" IDS, GW_PAY_REVERSED, "cancel" },
        /* an unclear cancel: to be repeated */
        { RESP("U", "SYSTEM_ERROR") IDS, GW_PAY_UNKNOWN, "U:SYSTEM_ERROR" },
        { RESP("S", "0000") "<OutTradeNo>OTHER</OutTradeNo>", GW_PAY_UNKNOWN, "GW_EORDER" },
    };
    check_answers(OP_CLOSE, &rev, r, 3, res, NULL);
    assert_int_equal(res[0].retry, 0);
    assert_int_equal(res[1].retry, 1);
    const ans_t k[] = {
        { RESP("S", "0000") IDS, GW_PAY_CLOSED, "closed" },
        /* not closed (paid, …): the order's state is for a query to tell */
        { RESP("F", "ORDER_PAID") IDS, GW_PAY_UNKNOWN, "F:ORDER_PAID" },
    };
    check_answers(OP_CLOSE, &cl, k, 2, res, NULL);
    assert_int_equal(res[1].retry, 0);
}

/* Answers that cannot be trusted are UNKNOWN, never a result. */
static void t_untrusted(void **state)
{
    (void)state;
    gw_chan_order_t o = order_barcode();
    gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
    gw_chan_result_t res;
    gw_chan_request_t r;
    assert_int_equal(build(OP_QUERY, &c, &r), GW_OK);
    char *id = tag(r.body.data, "ReqMsgId");
    const char *ok_body = RESP("S", "0000") "<OutTradeNo>PG20240101000001</OutTradeNo><TradeStatus>succ</TradeStatus>" IDS;
    char *good = bank_answer("ant.mybank.bkmerchanttrade.payQuery", id, ok_body, FIX "bank_priv.pem");
    assert_int_equal(parse(OP_QUERY, &c, 200, good, &res), GW_PAY_SUCCESS);
    H->buf_free(&res.pay_data);
    /* HTTP status */
    assert_int_equal(parse(OP_QUERY, &c, 502, good, &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "HTTP_502");
    H->buf_free(&res.pay_data);
    struct { char *doc; const char *code; const char *what; } k[8];
    size_t n = 0;
    /* unsigned */
    k[n].doc = bank_answer("ant.mybank.bkmerchanttrade.payQuery", id, ok_body, NULL);
    k[n].code = "GW_ESIGN", k[n++].what = "unsigned";
    /* signed with another key */
    k[n].doc = bank_answer("ant.mybank.bkmerchanttrade.payQuery", id, ok_body, FIX "rogue_priv.pem");
    k[n].code = "GW_ESIGN", k[n++].what = "rogue key";
    /* changed after signing */
    char *t = strdup(good);
    char *p = strstr(t, "<TradeStatus>succ");
    memcpy(p + 13, "fail", 4);
    k[n].doc = t, k[n].code = "GW_ESIGN", k[n++].what = "tampered";
    /* not XML at all */
    k[n].doc = strdup("<html>502 Bad Gateway</html>");
    k[n].code = "GW_ESIGN", k[n++].what = "garbage";
    size_t first_bank = n;
    /* signed by the bank, but for another Function */
    k[n].doc = bank_answer("ant.mybank.bkmerchanttrade.refundQuery", id, ok_body, NULL);
    k[n].code = "GW_EFUNCTION", k[n++].what = "another Function";
    /* signed, but a ReqMsgId this module never made (a replay, a forgery) */
    k[n].doc = bank_answer("ant.mybank.bkmerchanttrade.payQuery", "0e7c0f8a-2b1d-4c55-9d8e-3f2a1b0c9d8e", ok_body, NULL);
    k[n].code = "GW_EMSGID", k[n++].what = "foreign ReqMsgId";
    /* signed, for another merchant or ISV */
    k[n].doc = bank_answer("ant.mybank.bkmerchanttrade.payQuery", id,
                           RESP("S", "0000") "<TradeStatus>succ</TradeStatus><MerchantId>999</MerchantId>", NULL);
    k[n].code = "GW_EMCHID", k[n++].what = "another merchant";
    k[n].doc = bank_answer("ant.mybank.bkmerchanttrade.payQuery", id,
                           RESP("S", "0000") "<TradeStatus>succ</TradeStatus><IsvOrgId>999</IsvOrgId>", NULL);
    k[n].code = "GW_EISV", k[n++].what = "another ISV";
    char *docs[4];
    for (size_t i = first_bank; i < n; i++) docs[i - first_bank] = k[i].doc;
    xs_sign_many(docs, n - first_bank, FIX "bank_priv.pem");
    for (size_t i = first_bank; i < n; i++) k[i].doc = docs[i - first_bank];
    for (size_t i = 0; i < n; i++) {
        if (parse(OP_QUERY, &c, 200, k[i].doc, &res) != GW_PAY_UNKNOWN) fail_msg("trusted: %s", k[i].what);
        if (strcmp(res.raw_code, k[i].code) != 0) fail_msg("%s: raw_code %s", k[i].what, res.raw_code);
        H->buf_free(&res.pay_data);
        free(k[i].doc);
    }
    /* a genuine answer to the query of order A replayed for order B */
    gw_chan_order_t ob = order_barcode();
    ob.out_trade_no = S("PG20240101000002");
    gw_chan_call_t cb = mkcall(CTX, &M, &ob, NULL, 0);
    char *replay = bank_answer("ant.mybank.bkmerchanttrade.payQuery", id,
                               RESP("S", "0000") "<TradeStatus>succ</TradeStatus>" IDS, FIX "bank_priv.pem");
    assert_int_equal(parse(OP_QUERY, &cb, 200, replay, &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_EMSGID");
    H->buf_free(&res.pay_data);
    /* ... or for another merchant number */
    gw_chan_merchant_t m2 = M;
    m2.mch_id = S("226801000000000002");
    gw_chan_call_t cm = mkcall(CTX, &m2, &o, NULL, 0);
    assert_int_equal(parse(OP_QUERY, &cm, 200, replay, &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    free(replay);
    /* the answer of another ctx (another process) is foreign as well */
    void *ctx2 = new_ctx(SETTINGS, GW_OK, NULL, 0);
    gw_chan_call_t c2 = mkcall(ctx2, &M, &o, NULL, 0);
    assert_int_equal(parse(OP_QUERY, &c2, 200, good, &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_EMSGID");
    H->buf_free(&res.pay_data);
    free_ctx(ctx2);
    /* merchant.public_key overrides the settings' bank key */
    gw_chan_call_t co = mkcall(CTX, &M_OVERRIDE, &o, NULL, 0);
    assert_int_equal(parse(OP_QUERY, &co, 200, good, &res), GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    /* no bank key at all */
    char s[1024];
    snprintf(s, sizeof(s), "{\"gateway_url\":\"" GW_URL "\",\"isv_org_id\":\"" ISV_ORG "\",\"appid\":\"" APPID "\"}");
    void *ctx3 = new_ctx(s, GW_OK, NULL, 0);
    gw_chan_call_t c3 = mkcall(ctx3, &M, &o, NULL, 0);
    assert_int_equal(parse(OP_QUERY, &c3, 200, good, &res), GW_PAY_UNKNOWN);
    assert_string_equal(res.raw_code, "GW_EKEY");
    H->buf_free(&res.pay_data);
    free_ctx(ctx3);
    /* no response at all */
    memset(&res, 0, sizeof(res));
    H->buf_init(&res.pay_data, 1024);
    assert_int_equal(CH->query_parse(&c, NULL, &res), GW_OK);
    assert_int_equal(res.status, GW_PAY_UNKNOWN);
    H->buf_free(&res.pay_data);
    free(good);
    free(id);
    req_free(&r);
}

/* The ReqMsgId MAC itself (in-process only: static functions). */
static void t_msgid(void **state)
{
    (void)state;
    assert_true(INPROC);
    const mb_ctx_t *cx = CTX;
    char a[MB_MSGID_LEN + 1], b[MB_MSGID_LEN + 1];
    gw_str_t mch = S(MCH), otn = S("T1");
    assert_int_equal(mb_msgid(cx, H, F_QUERY, mch, otn, a), GW_OK);
    assert_true(mb_msgid_ok(cx, H, F_QUERY, mch, otn, S(a)));
    assert_false(mb_msgid_ok(cx, H, F_PAY, mch, otn, S(a)));
    assert_false(mb_msgid_ok(cx, H, F_QUERY, S("2268"), otn, S(a)));
    assert_false(mb_msgid_ok(cx, H, F_QUERY, mch, S("T2"), S(a)));
    assert_false(mb_msgid_ok(cx, H, F_QUERY, mch, otn, S("")));
    assert_false(mb_msgid_ok(cx, H, F_QUERY, mch, otn, S("not-a-uuid")));
    /* every character matters: the random half is the MAC's input, the
     * other half the MAC (but for the two fixed variant bits) */
    for (int i = 0; i < MB_MSGID_LEN; i++) {
        if (a[i] == '-') continue;
        memcpy(b, a, sizeof(a));
        b[i] = "0123456789abcdef"[mb_hexval(a[i]) ^ 1];
        if (mb_msgid_ok(cx, H, F_QUERY, mch, otn, S(b))) fail_msg("position %d not covered", i);
    }
    /* upper-case hex is the same id */
    for (int i = 0; i < MB_MSGID_LEN; i++) b[i] = (char)(a[i] >= 'a' && a[i] <= 'f' ? a[i] - 32 : a[i]);
    b[MB_MSGID_LEN] = '\0';
    assert_true(mb_msgid_ok(cx, H, F_QUERY, mch, otn, S(b)));
    /* unique */
    enum { N = 2000 };
    char (*ids)[MB_MSGID_LEN + 1] = calloc(N, sizeof(*ids));
    for (int i = 0; i < N; i++) assert_int_equal(mb_msgid(cx, H, F_QUERY, mch, otn, ids[i]), GW_OK);
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++) assert_string_not_equal(ids[i], ids[j]);
    free(ids);
}

/* ------------------------------------------------------------------ */
/* notifications */

static char *notice(const char *mch, const char *otn, const char *ts, const char *amount, const char *function,
                    const char *keyfile)
{
    char *doc = NULL;
    assert_true(asprintf(&doc,
                         "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<document>\n  <request id=\"request\">\n    <head>"
                         "<Version>1.0.0</Version><Appid>" APPID "</Appid><Function>%s</Function>"
                         "<ReqTime>20240101120005</ReqTime><ReqTimeZone>UTC+8</ReqTimeZone>"
                         "<ReqMsgId>9b2f6c1e-0d3a-4e7b-8c5f-1a2b3c4d5e6f</ReqMsgId><InputCharset>UTF-8</InputCharset>"
                         "<Reserve/><SignType>RSA</SignType></head>\n    <body><IsvOrgId>" ISV_ORG "</IsvOrgId>"
                         "<MerchantId>%s</MerchantId><OutTradeNo>%s</OutTradeNo><OrderNo>OD77</OrderNo>"
                         "<TotalAmount>%s</TotalAmount><Currency>CNY</Currency><ChannelType>WX</ChannelType>"
                         "<TradeStatus>%s</TradeStatus><GmtPayment>20240101120004</GmtPayment></body>\n  </request>\n"
                         "</document>\n",
                         function, mch, otn, amount, ts) > 0);
    char *s = keyfile ? xs_sign(doc, keyfile) : strdup(doc);
    free(doc);
    return s;
}

static void notify_init(gw_chan_notify_t *n)
{
    memset(n, 0, sizeof(*n));
    H->buf_init(&n->sign_string, 1u << 20);
    H->buf_init(&n->ack_ok_body, 65536);
    H->buf_init(&n->ack_fail_body, 65536);
}

static void notify_free(gw_chan_notify_t *n)
{
    H->buf_free(&n->sign_string);
    H->buf_free(&n->ack_ok_body);
    H->buf_free(&n->ack_fail_body);
}

static gw_err_t notify_run(const char *body, const gw_chan_merchant_t *m, const gw_chan_order_t *o,
                           gw_chan_notify_t *n, gw_err_t *parse_rc)
{
    gw_chan_notify_in_t in;
    memset(&in, 0, sizeof(in));
    in.method = S("POST");
    in.path = S("/notify/mybank");
    in.headers = S("Content-Type: application/xml\r\n");
    in.body = S(body);
    notify_init(n);
    *parse_rc = CH->notify_parse(CTX, H, &in, n);
    if (*parse_rc != GW_OK) return *parse_rc;
    gw_chan_call_t c = mkcall(CTX, m, o, NULL, 0);
    return CH->notify_verify(&c, &in, n);
}

static void t_notify_ok(void **state)
{
    (void)state;
    char *body = notice(MCH, "PG20240101000001", "succ", "1234", "ant.mybank.bkmerchanttrade.prePayNotice",
                        FIX "bank_priv.pem");
    gw_chan_notify_t n;
    gw_err_t prc;
    gw_chan_order_t o = order_ctob(GW_METHOD_WECHAT_QR);
    assert_int_equal(notify_run(body, &M, &o, &n, &prc), GW_OK);
    assert_int_equal(n.kind, GW_NOTIFY_PAY);
    assert_string_equal(n.mch_id, MCH);
    assert_string_equal(n.out_trade_no, "PG20240101000001");
    assert_int_equal(n.status, GW_PAY_SUCCESS);
    assert_int_equal(n.amount, 1234);
    assert_string_equal(n.channel_trade_no, "OD77");
    assert_string_equal(n.raw_code, "succ");
    assert_non_null(strstr(n.sign_string.data, "verified"));
    /* the acknowledgement: a signed response echoing Function and ReqMsgId, S/0000 */
    assert_int_equal(n.ack_ok_status, 200);
    assert_string_equal(n.ack_ok_type, "application/xml; charset=UTF-8");
    const char *a = n.ack_ok_body.data;
    assert_true(xs_verify(a, n.ack_ok_body.len, FIX "isv_pub.pem"));
    assert_non_null(strstr(a, "<document><response id=\"response\"><head>"));
    assert_tag(a, "Function", "ant.mybank.bkmerchanttrade.prePayNotice");
    assert_tag(a, "ReqMsgId", "9b2f6c1e-0d3a-4e7b-8c5f-1a2b3c4d5e6f");
    assert_tag(a, "Appid", APPID);
    char *rt = tag(a, "RespTime");
    assert_non_null(rt);
    assert_int_equal(strlen(rt), 14);
    free(rt);
    assert_tag(a, "ResultStatus", "S");
    assert_tag(a, "ResultCode", "0000");
    assert_non_null(strstr(a, "<ResultMsg></ResultMsg>"));
    /* the failure acknowledgement: F, unsigned */
    assert_int_equal(n.ack_fail_status, 200);
    assert_tag(n.ack_fail_body.data, "ResultStatus", "F");
    assert_tag(n.ack_fail_body.data, "ReqMsgId", "9b2f6c1e-0d3a-4e7b-8c5f-1a2b3c4d5e6f");
    assert_null(strstr(n.ack_fail_body.data, "<Signature"));
    notify_free(&n);
    /* the core may pass no order; a status other than succ is left to a query */
    free(body);
    body = notice(MCH, "PG20240101000001", "closed", "1234", "ant.mybank.bkmerchanttrade.prePayNotice",
                  FIX "bank_priv.pem");
    assert_int_equal(notify_run(body, &M, NULL, &n, &prc), GW_OK);
    assert_int_equal(n.status, GW_PAY_UNKNOWN);
    assert_string_equal(n.raw_code, "closed");
    notify_free(&n);
    free(body);
    /* no merchant private key: verified, acknowledged unsigned */
    body = notice(MCH, "PG20240101000001", "succ", "1234", "ant.mybank.bkmerchanttrade.prePayNotice",
                  FIX "bank_priv.pem");
    assert_int_equal(notify_run(body, &M_NOKEY, NULL, &n, &prc), GW_OK);
    assert_tag(n.ack_ok_body.data, "ResultStatus", "S");
    assert_null(strstr(n.ack_ok_body.data, "<Signature"));
    notify_free(&n);
    free(body);
}

static void t_notify_bad(void **state)
{
    (void)state;
    gw_chan_notify_t n;
    gw_err_t prc;
    const char *FNN = "ant.mybank.bkmerchanttrade.prePayNotice";
    /* parse errors */
    const char *garbage[] = { "", "<xml><a>1</a></xml>", "<document><request><head/></request></document>",
                              "<!DOCTYPE d [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><document/>" };
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(notify_run(garbage[i], &M, NULL, &n, &prc), GW_EPARSE);
        assert_int_equal(n.ack_fail_status, 200);
        assert_tag(n.ack_fail_body.data, "ResultStatus", "F");
        notify_free(&n);
    }
    char *body = notice(MCH, "PG1", "succ", "1234", "ant.mybank.bkmerchanttrade.pay", FIX "bank_priv.pem");
    assert_int_equal(notify_run(body, &M, NULL, &n, &prc), GW_EPARSE); /* not a notice */
    notify_free(&n);
    free(body);
    /* forged or tampered: GW_ESIGN after a clean parse */
    body = notice(MCH, "PG1", "succ", "1234", FNN, FIX "rogue_priv.pem");
    assert_int_equal(notify_run(body, &M, NULL, &n, &prc), GW_ESIGN);
    assert_int_equal(prc, GW_OK);
    assert_non_null(strstr(n.sign_string.data, "xmldsig:"));
    notify_free(&n);
    free(body);
    body = notice(MCH, "PG1", "succ", "1234", FNN, NULL);
    assert_int_equal(notify_run(body, &M, NULL, &n, &prc), GW_ESIGN);
    notify_free(&n);
    free(body);
    body = notice(MCH, "PG1", "succ", "1234", FNN, FIX "bank_priv.pem");
    char *t = strdup(body);
    char *p = strstr(t, "<TotalAmount>1234");
    p[13] = '9';
    assert_int_equal(notify_run(t, &M, NULL, &n, &prc), GW_ESIGN);
    assert_non_null(strstr(n.sign_string.data, "digest mismatch"));
    notify_free(&n);
    free(t);
    /* whitespace inside the signed part */
    p = strstr(body, "<body>") + 6;
    assert_true(asprintf(&t, "%.*s %s", (int)(p - body), body, p) > 0);
    assert_int_equal(notify_run(t, &M, NULL, &n, &prc), GW_ESIGN);
    notify_free(&n);
    free(t);
    /* signed by the bank, but for another merchant than the credentials */
    gw_chan_merchant_t m2 = M;
    m2.mch_id = S("226801000000000002");
    assert_int_equal(notify_run(body, &m2, NULL, &n, &prc), GW_ESIGN);
    notify_free(&n);
    /* ... or another order than the core passes */
    gw_chan_order_t o = order_ctob(GW_METHOD_WECHAT_QR);
    assert_int_equal(notify_run(body, &M, &o, &n, &prc), GW_ESIGN);
    notify_free(&n);
    /* the merchant's own bank key is another one */
    assert_int_equal(notify_run(body, &M_OVERRIDE, NULL, &n, &prc), GW_ESIGN);
    notify_free(&n);
    free(body);
}

/* The operator CLI on a captured notification (test/fixtures/mybank/
 * notify.http, signed by xmlsec1 with the bank key), through the loader. */
static int run_cli(const char *request, char **out_text)
{
    char settings[4096], merchant[512];
    snprintf(settings, sizeof(settings),
             "{\"gateway_url\":\"" GW_URL "\",\"isv_org_id\":\"" ISV_ORG "\",\"appid\":\"" APPID "\","
             "\"bank_public_key\":\"%s\"}", BANK_B64);
    snprintf(merchant, sizeof(merchant), "{\"mch_id\":\"" MCH "\",\"private_key\":\"@" FIX "isv_priv.pem\"}");
    const char *argv[] = { "channel", "notify-verify", "--module", SO_PATH, "--settings", settings,
                           "--merchant", merchant, request, NULL };
    char *buf = NULL, *ebuf = NULL;
    size_t len = 0, elen = 0;
    FILE *out = open_memstream(&buf, &len), *err = open_memstream(&ebuf, &elen);
    int st = gw_ctl_run(9, (char **)argv, out, err);
    fclose(out);
    fclose(err);
    free(ebuf);
    *out_text = buf;
    return st;
}

static void t_cli(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run_cli(FIX "notify.http", &out), 0);
    {
        char want[96];
        snprintf(want, sizeof(want), "module:           mybank 1.0.0 (mybank.so, ABI 1.%d)\n", GW_CHANNEL_ABI_MINOR);
        assert_non_null(strstr(out, want));
    }
    assert_non_null(strstr(out, "verdict:          VERIFIED\n"));
    assert_non_null(strstr(out, "sign_string:      xmldsig: verified: rsa-sha256 over C14N(SignedInfo)"));
    assert_non_null(strstr(out, "mch_id:           " MCH "\n"));
    assert_non_null(strstr(out, "out_trade_no:     2024010100000000000042\n"));
    assert_non_null(strstr(out, "status:           SUCCESS\n"));
    assert_non_null(strstr(out, "amount:           1234\n"));
    assert_non_null(strstr(out, "ack:              200 application/xml; charset=UTF-8\n"));
    assert_non_null(strstr(out, "<ResultStatus>S</ResultStatus>"));
    assert_null(strstr(out, "PRIVATE KEY"));
    free(out);
    /* one character of the signed part changed */
    char *req = read_file(FIX "notify.http");
    char *p = strstr(req, "<TotalAmount>1234<");
    assert_non_null(p);
    p[16] = '5';
    char path[128];
    snprintf(path, sizeof(path), "%s/tampered.http", TMPD);
    write_file(path, req, strlen(req));
    free(req);
    assert_int_equal(run_cli(path, &out), 1);
    assert_non_null(strstr(out, "verdict:          REJECTED: signature verification failed (GW_ESIGN)\n"));
    assert_non_null(strstr(out, "sign_string:      xmldsig: digest mismatch"));
    assert_non_null(strstr(out, "<ResultStatus>F</ResultStatus>"));
    free(out);
}

/* ------------------------------------------------------------------ */
/* threads: the module is reentrant on one ctx */

static int thr_main(const void *arg)
{
    (void)arg;
    int failures = 0;
    for (int i = 0; i < 25; i++) {
        gw_chan_order_t o = order_barcode();
        gw_chan_call_t c = mkcall(CTX, &M, &o, NULL, 0);
        gw_chan_request_t r;
        req_init(&r);
        if (CH->query(&c, &r) != GW_OK) {
            failures++;
        } else {
            gw_rsa_key_t *k = H->rsa_public(ISV_PUB, strlen(ISV_PUB));
            if (k == NULL || H->xmldsig_verify(r.body.data, r.body.len, k, NULL) != GW_OK) failures++;
        }
        req_free(&r);
    }
    return failures;
}

static void t_threads(void **state)
{
    (void)state;
    assert_int_equal(ct_run_threads(thr_main, NULL), 0);
}

/* ------------------------------------------------------------------ */

#define SUITE                                                                  \
    cmocka_unit_test(t_vtable),                                                \
    cmocka_unit_test(t_init),                                                  \
    cmocka_unit_test(t_pay_barcode),                                           \
    cmocka_unit_test(t_prepay),                                                \
    cmocka_unit_test(t_other_requests),                                        \
    cmocka_unit_test(t_request_errors),                                        \
    cmocka_unit_test(t_pay_statuses),                                          \
    cmocka_unit_test(t_prepay_statuses),                                       \
    cmocka_unit_test(t_query_statuses),                                        \
    cmocka_unit_test(t_refund_statuses),                                       \
    cmocka_unit_test(t_refund_query_statuses),                                 \
    cmocka_unit_test(t_close_cancel),                                          \
    cmocka_unit_test(t_untrusted),                                             \
    cmocka_unit_test(t_notify_ok),                                             \
    cmocka_unit_test(t_notify_bad),                                            \
    cmocka_unit_test(t_threads)

int main(void)
{
    gw_log_level = GW_LOG_CRIT; /* the module's signature warnings are expected here */
    const struct CMUnitTest inproc[] = { SUITE, cmocka_unit_test(t_msgid) };
    const struct CMUnitTest viadl[] = { SUITE, cmocka_unit_test(t_shared_object), cmocka_unit_test(t_cli) };
    int fails = 0;
    fails += cmocka_run_group_tests_name("mybank in-process", inproc, setup_inproc, teardown_inproc);
    fails += cmocka_run_group_tests_name("mybank dlopen " SO_PATH, viadl, setup_dlopen, teardown_dlopen);
    gw_host_shutdown();
    return fails ? 1 : 0;
}
