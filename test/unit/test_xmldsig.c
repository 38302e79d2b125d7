/*
 * test_xmldsig.c — host API 1.2: structured XML documents and the enveloped
 * XML-DSig profile of MyBank (core/xmldsig.c through the host table).
 *
 * The independent implementation is the xmlsec1 command-line tool (Debian
 * package xmlsec1, popen):
 *   - documents the core signs verify with `xmlsec1 --verify --pubkey-pem`;
 *   - documents xmlsec1 signs from a template (`xmlsec1 --sign
 *     --privkey-pem`), compact or pretty-printed with a ds: prefix and a
 *     KeyInfo, verify in the core;
 *   - every tamper (an element, an attribute, whitespace, one character of
 *     text inside the signed part; the DigestValue or SignatureValue) makes
 *     BOTH verifiers fail, so each tamper is proven to be a real change of
 *     the signed content, not a quirk of ours;
 *   - signatures xmlsec1 accepts but the profile does not (rsa-sha1, a
 *     SHA-256 digest, exclusive or with-comments C14N, an ID reference, two
 *     references, an extra transform, a Signature elsewhere, two
 *     Signatures, an Object, comments: the signature-wrapping family) are
 *     rejected by the core.
 * Keys: test/fixtures/mybank/ (throw-away; README.md there).
 * Run from the repository root.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "host.h"
#include "xmldsig.h"

#define FIX "test/fixtures/mybank/"

static const gw_host_api_t *H;
static char TMPD[64];
static gw_rsa_key_t *ISV, *ISV_PUB, *BANK_PUB, *ROGUE;

/* ------------------------------------------------------------------ */
/* helpers */

static char *read_file(const char *path, size_t *lenp)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    p[n] = '\0';
    fclose(f);
    if (lenp) *lenp = (size_t)n;
    return p;
}

static void write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static gw_rsa_key_t *load_key(const char *file, int priv)
{
    size_t n;
    char *t = read_file(file, &n);
    gw_rsa_key_t *k = priv ? H->rsa_private(t, n) : H->rsa_public(t, n);
    free(t);
    assert_non_null(k);
    return k;
}

/* Runs cmd with sh, returns the exit status (output discarded unless out). */
static int sh(const char *cmd, char **out)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 4096, len = 0, n;
    char *buf = malloc(cap);
    assert_non_null(buf);
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 2) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    buf[len] = '\0';
    int st = pclose(p);
    if (out) *out = buf;
    else free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* xmlsec1 --verify of the document with a public key file; 1 when verified. */
static int xmlsec_verify(const char *doc, const char *pubfile, const char *extra)
{
    char path[128], cmd[512];
    snprintf(path, sizeof(path), "%s/verify.xml", TMPD);
    write_file(path, doc, strlen(doc));
    snprintf(cmd, sizeof(cmd), "xmlsec1 --verify --pubkey-pem %s %s %s >/dev/null 2>&1", pubfile,
             extra ? extra : "", path);
    return sh(cmd, NULL) == 0;
}

/* xmlsec1 --verify of each document (its own process, 8 at a time: one
 * xmlsec1 run stops at the first document that fails); ok[i] = 1 when
 * document i verified. */
static void xmlsec_verify_each(char *const *docs, size_t n, const char *pubfile, int *ok)
{
    char list[128], cmd[768];
    snprintf(list, sizeof(list), "%s/list", TMPD);
    FILE *lf = fopen(list, "w");
    assert_non_null(lf);
    for (size_t i = 0; i < n; i++) {
        char path[128];
        snprintf(path, sizeof(path), "%s/each%zu.xml", TMPD, i);
        write_file(path, docs[i], strlen(docs[i]));
        fprintf(lf, "%s\n", path);
        ok[i] = -1;
    }
    fclose(lf);
    snprintf(cmd, sizeof(cmd),
             "xargs -P 8 -n 1 sh -c 'xmlsec1 --verify --pubkey-pem %s \"$0\" >/dev/null 2>&1; echo \"$0 $?\"' < %s",
             pubfile, list);
    char *out = NULL;
    assert_int_equal(sh(cmd, &out), 0);
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        size_t i;
        int rc;
        char fmt[160];
        snprintf(fmt, sizeof(fmt), "%s/each%%zu.xml %%d", TMPD);
        if (sscanf(line, fmt, &i, &rc) == 2 && i < n) ok[i] = rc == 0;
    }
    free(out);
    for (size_t i = 0; i < n; i++) assert_int_not_equal(ok[i], -1);
}

/* xmlsec1 --sign of a template with a private key file; the signed text. */
static char *xmlsec_sign(const char *tmpl, const char *privfile, const char *extra)
{
    char in[128], out[128], cmd[640];
    snprintf(in, sizeof(in), "%s/tmpl.xml", TMPD);
    snprintf(out, sizeof(out), "%s/signed.xml", TMPD);
    write_file(in, tmpl, strlen(tmpl));
    unlink(out);
    snprintf(cmd, sizeof(cmd), "xmlsec1 --sign --privkey-pem %s %s --output %s %s 2>&1", privfile,
             extra ? extra : "", out, in);
    char *msg = NULL;
    int st = sh(cmd, &msg);
    if (st != 0) fprintf(stderr, "xmlsec1 --sign failed: %s\n", msg);
    free(msg);
    assert_int_equal(st, 0);
    return read_file(out, NULL);
}

static gw_err_t verify(const char *doc, gw_rsa_key_t *key, gw_buf_t *diag)
{
    return H->xmldsig_verify(doc, strlen(doc), key, diag);
}

/* malloc'd copy of s with the first occurrence of from replaced by to */
static char *replace1(const char *s, const char *from, const char *to)
{
    const char *hit = strstr(s, from);
    assert_non_null(hit);
    size_t a = (size_t)(hit - s), fl = strlen(from), tl = strlen(to), sl = strlen(s);
    char *r = malloc(sl - fl + tl + 1);
    assert_non_null(r);
    memcpy(r, s, a);
    memcpy(r + a, to, tl);
    memcpy(r + a + tl, hit + fl, sl - a - fl + 1);
    return r;
}

/* malloc'd copy of s with ins inserted at offset at */
static char *insert_at(const char *s, size_t at, const char *ins)
{
    size_t sl = strlen(s), il = strlen(ins);
    char *r = malloc(sl + il + 1);
    assert_non_null(r);
    memcpy(r, s, at);
    memcpy(r + at, ins, il);
    memcpy(r + at + il, s + at, sl - at + 1);
    return r;
}

/* ------------------------------------------------------------------ */
/* documents */

/* A MyBank request as the official demo lays it out: pretty-printed, with
 * text that needs escaping and non-ASCII text. */
static const char UNSIGNED[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<document>\n"
    "  <request id=\"request\">\n"
    "    <head>\n"
    "      <Version>1.0.0</Version>\n"
    "      <Appid>2018000000000001</Appid>\n"
    "      <Function>ant.mybank.bkmerchanttrade.pay</Function>\n"
    "      <ReqTime>20240101120000</ReqTime>\n"
    "      <ReqTimeZone>UTC+8</ReqTimeZone>\n"
    "      <ReqMsgId>5d1f3a0e-7c2b-4e51-9f0a-1b2c3d4e5f60</ReqMsgId>\n"
    "      <InputCharset>UTF-8</InputCharset>\n"
    "      <Reserve/>\n"
    "      <SignType>RSA</SignType>\n"
    "    </head>\n"
    "    <body>\n"
    "      <IsvOrgId>202211000000000001</IsvOrgId>\n"
    "      <MerchantId>226801000000000001</MerchantId>\n"
    "      <Body>Longjing &amp; &lt;tea&gt; \xe9\xbe\x99\xe4\xba\x95 <![CDATA[a]]></Body>\n"
    "      <TotalAmount>1234</TotalAmount>\n"
    "    </body>\n"
    "  </request>\n"
    "</document>\n";

/* The same, compact (the module's own layout). */
static const char COMPACT[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
    "<document><response id=\"response\"><head><Version>1.0.0</Version><Appid>2018000000000001</Appid>"
    "<Function>ant.mybank.bkmerchanttrade.payQuery</Function><RespTime>20240101120001</RespTime>"
    "<RespTimeZone>UTC+8</RespTimeZone><ReqMsgId>abc</ReqMsgId><InputCharset>UTF-8</InputCharset>"
    "<Reserve></Reserve><SignType>RSA</SignType></head><body><RespInfo><ResultStatus>S</ResultStatus>"
    "<ResultCode>0000</ResultCode><ResultMsg/></RespInfo><OutTradeNo>T1</OutTradeNo>"
    "<TradeStatus>succ</TradeStatus></body></response></document>";

#define DS_NS "http://www.w3.org/2000/09/xmldsig#"
#define ALG_C14N "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
#define ALG_C14N_COMMENTS "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments"
#define ALG_EXC_C14N "http://www.w3.org/2001/10/xml-exc-c14n#"
#define ALG_RSA_SHA256 "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
#define ALG_RSA_SHA1 "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
#define ALG_SHA1 "http://www.w3.org/2000/09/xmldsig#sha1"
#define ALG_SHA256 "http://www.w3.org/2001/04/xmlenc#sha256"
#define ALG_ENV "http://www.w3.org/2000/09/xmldsig#enveloped-signature"

#define TR_ENV "<Transform Algorithm=\"" ALG_ENV "\"/>"

/* A Signature template for xmlsec1 --sign. */
static char *sig_tmpl(const char *c14n, const char *sigalg, const char *refs_xml, const char *extra)
{
    char *s = malloc(8192);
    assert_non_null(s);
    snprintf(s, 8192,
             "<Signature xmlns=\"" DS_NS "\"><SignedInfo><CanonicalizationMethod Algorithm=\"%s\"/>"
             "<SignatureMethod Algorithm=\"%s\"/>%s</SignedInfo><SignatureValue/>%s</Signature>",
             c14n, sigalg, refs_xml, extra ? extra : "");
    return s;
}

static char *ref_tmpl(const char *uri, const char *transforms, const char *digest)
{
    char *s = malloc(2048);
    assert_non_null(s);
    snprintf(s, 2048,
             "<Reference URI=\"%s\"><Transforms>%s</Transforms><DigestMethod Algorithm=\"%s\"/>"
             "<DigestValue/></Reference>",
             uri, transforms, digest);
    return s;
}

/* doc with sig inserted before its last "</document>" */
static char *with_sig(const char *doc, const char *sig)
{
    const char *p = doc, *last = NULL;
    while ((p = strstr(p, "</document>")) != NULL) last = p++;
    assert_non_null(last);
    return insert_at(doc, (size_t)(last - doc), sig);
}

static char *profile_tmpl(const char *doc)
{
    char *ref = ref_tmpl("", TR_ENV, ALG_SHA1);
    char *sig = sig_tmpl(ALG_C14N, ALG_RSA_SHA256, ref, NULL);
    char *t = with_sig(doc, sig);
    free(ref);
    free(sig);
    return t;
}

static char *gw_sign(const char *doc, gw_rsa_key_t *key)
{
    gw_buf_t out;
    H->buf_init(&out, 4u << 20);
    assert_int_equal(H->xmldsig_sign(doc, strlen(doc), key, &out), GW_OK);
    char *r = strdup(out.data);
    H->buf_free(&out);
    return r;
}

/* ------------------------------------------------------------------ */
/* the host table */

static void t_host_table(void **state)
{
    (void)state;
    /* the XML members came with 1.2; later minors only append */
    assert_true(GW_CHANNEL_ABI_MINOR >= 2);
    assert_int_equal(H->version, GW_CHANNEL_ABI_VERSION);
    assert_int_equal(H->struct_size, sizeof(gw_host_api_t));
    /* appended at the end: after every 1.0 member */
    assert_true(offsetof(gw_host_api_t, xml_escape) > offsetof(gw_host_api_t, header_get));
    assert_int_equal(offsetof(gw_host_api_t, xmldsig_verify) + sizeof(void *), sizeof(gw_host_api_t));
    assert_non_null(H->xml_escape);
    assert_non_null(H->xml_get);
    assert_non_null(H->xml_kv);
    assert_non_null(H->xmldsig_sign);
    assert_non_null(H->xmldsig_verify);
}

/* ------------------------------------------------------------------ */
/* signing: exactly the profile; xmlsec1 verifies it */

static void t_sign_profile_xmlsec_verifies(void **state)
{
    (void)state;
    const char *docs[] = { UNSIGNED, COMPACT };
    for (size_t i = 0; i < 2; i++) {
        char *s = gw_sign(docs[i], ISV);
        /* the input bytes are kept; the Signature is the root's last child */
        const char *end = strrchr(docs[i], '<'); /* "</document>" */
        size_t pre = (size_t)(end - docs[i]);
        assert_memory_equal(s, docs[i], pre);
        assert_string_equal(s + strlen(s) - strlen(end), end);
        const char *sig = s + pre;
        assert_true(strncmp(sig, "<Signature xmlns=\"" DS_NS "\"><SignedInfo>"
                                 "<CanonicalizationMethod Algorithm=\"" ALG_C14N "\"/>"
                                 "<SignatureMethod Algorithm=\"" ALG_RSA_SHA256 "\"/>"
                                 "<Reference URI=\"\"><Transforms><Transform Algorithm=\"" ALG_ENV
                                 "\"/></Transforms><DigestMethod Algorithm=\"" ALG_SHA1
                                 "\"/><DigestValue>",
                             strlen("<Signature xmlns=\"" DS_NS "\"><SignedInfo>"
                                    "<CanonicalizationMethod Algorithm=\"" ALG_C14N "\"/>"
                                    "<SignatureMethod Algorithm=\"" ALG_RSA_SHA256 "\"/>"
                                    "<Reference URI=\"\"><Transforms><Transform Algorithm=\"" ALG_ENV
                                    "\"/></Transforms><DigestMethod Algorithm=\"" ALG_SHA1
                                    "\"/><DigestValue>")) == 0);
        assert_non_null(strstr(sig, "</DigestValue></Reference></SignedInfo><SignatureValue>"));
        assert_non_null(strstr(sig, "</SignatureValue></Signature></document>"));
        /* the independent verifier agrees; the wrong key does not verify */
        assert_true(xmlsec_verify(s, FIX "isv_pub.pem", NULL));
        assert_false(xmlsec_verify(s, FIX "rogue_pub.pem", NULL));
        gw_buf_t diag;
        H->buf_init(&diag, 4096);
        assert_int_equal(verify(s, ISV_PUB, &diag), GW_OK);
        assert_non_null(strstr(diag.data, "verified"));
        H->buf_reset(&diag);
        assert_int_equal(verify(s, ROGUE, &diag), GW_ESIGN);
        assert_non_null(strstr(diag.data, "SignatureValue does not verify"));
        H->buf_free(&diag);
        free(s);
    }
}

/* RSA signatures are deterministic (PKCS#1 v1.5): from the same document
 * xmlsec1 computes the same DigestValue and SignatureValue as the core
 * (xmlsec1 re-serialises the rest of the document, e.g. <Reserve></Reserve>
 * as <Reserve/>, and wraps the Base64 at 64 columns: the values compare with
 * line breaks removed). */
static void element_text(const char *doc, const char *name, char *out, size_t cap)
{
    char open[64], close[64];
    snprintf(open, sizeof(open), "<%s>", name);
    snprintf(close, sizeof(close), "</%s>", name);
    const char *a = strstr(doc, open);
    assert_non_null(a);
    a += strlen(open);
    const char *b = strstr(a, close);
    assert_non_null(b);
    size_t n = 0;
    for (; a < b && n + 1 < cap; a++)
        if (*a != '\n' && *a != '\r') out[n++] = *a;
    out[n] = '\0';
}

static void t_sign_equals_xmlsec(void **state)
{
    (void)state;
    const char *docs[] = { COMPACT, UNSIGNED };
    for (size_t i = 0; i < 2; i++) {
        char *ours = gw_sign(docs[i], ISV);
        char *tmpl = profile_tmpl(docs[i]);
        char *theirs = xmlsec_sign(tmpl, FIX "isv_priv.pem", NULL);
        char a[1024], b[1024];
        element_text(ours, "DigestValue", a, sizeof(a));
        element_text(theirs, "DigestValue", b, sizeof(b));
        assert_string_equal(a, b);
        element_text(ours, "SignatureValue", a, sizeof(a));
        element_text(theirs, "SignatureValue", b, sizeof(b));
        assert_true(strlen(a) > 300);
        assert_string_equal(a, b);
        free(ours);
        free(tmpl);
        free(theirs);
    }
}

/* ------------------------------------------------------------------ */
/* verification of what xmlsec1 signs */

static void t_verify_xmlsec_signed(void **state)
{
    (void)state;
    /* 1. the compact profile template */
    char *tmpl = profile_tmpl(UNSIGNED);
    char *s = xmlsec_sign(tmpl, FIX "bank_priv.pem", NULL);
    assert_int_equal(verify(s, BANK_PUB, NULL), GW_OK);
    assert_int_equal(verify(s, ISV_PUB, NULL), GW_ESIGN);
    free(tmpl);
    free(s);
    /* 2. pretty-printed, ds: prefix, a KeyInfo that xmlsec1 fills (ignored:
     * the key is configured, never taken from the message) */
    static const char pretty[] =
        "<ds:Signature xmlns:ds=\"" DS_NS "\">\n"
        "    <ds:SignedInfo>\n"
        "      <ds:CanonicalizationMethod Algorithm=\"" ALG_C14N "\"/>\n"
        "      <ds:SignatureMethod Algorithm=\"" ALG_RSA_SHA256 "\"/>\n"
        "      <ds:Reference URI=\"\">\n"
        "        <ds:Transforms>\n"
        "          <ds:Transform Algorithm=\"" ALG_ENV "\"/>\n"
        "        </ds:Transforms>\n"
        "        <ds:DigestMethod Algorithm=\"" ALG_SHA1 "\"/>\n"
        "        <ds:DigestValue/>\n"
        "      </ds:Reference>\n"
        "    </ds:SignedInfo>\n"
        "    <ds:SignatureValue/>\n"
        "    <ds:KeyInfo><ds:KeyValue/></ds:KeyInfo>\n"
        "  </ds:Signature>\n";
    tmpl = with_sig(UNSIGNED, pretty);
    s = xmlsec_sign(tmpl, FIX "bank_priv.pem", NULL);
    assert_non_null(strstr(s, "<ds:Modulus>")); /* xmlsec1 did fill the KeyInfo */
    assert_int_equal(verify(s, BANK_PUB, NULL), GW_OK);
    assert_int_equal(verify(s, ROGUE, NULL), GW_ESIGN);
    free(tmpl);
    free(s);
    /* 3. keys as MyBank hands them out: bare Base64 PKCS#8 / SPKI */
    size_t n;
    char *b64 = read_file(FIX "bank_pub_spki.b64", &n);
    gw_rsa_key_t *k = H->rsa_public(b64, n);
    free(b64);
    assert_non_null(k);
    tmpl = profile_tmpl(COMPACT);
    s = xmlsec_sign(tmpl, FIX "bank_priv.pem", NULL);
    assert_int_equal(verify(s, k, NULL), GW_OK);
    free(tmpl);
    free(s);
    b64 = read_file(FIX "isv_priv_pkcs8.b64", &n);
    k = H->rsa_private(b64, n);
    free(b64);
    assert_non_null(k);
    s = gw_sign(COMPACT, k);
    assert_true(xmlsec_verify(s, FIX "isv_pub.pem", NULL));
    free(s);
}

/* ------------------------------------------------------------------ */
/* tampering inside the signed part */

typedef struct {
    char *doc;
    char what[96];
} variant_t;

/* Every tamper of the signed part of s (from "<document>" to the
 * Signature): one character added to each text node, an element inserted
 * after each tag, each leaf element removed, whitespace added between
 * elements and inside text, attribute changes. */
static size_t tampers(const char *s, variant_t *v, size_t cap)
{
    size_t n = 0;
    const char *start = strstr(s, "<document>");
    const char *stop = strstr(s, "<Signature");
    if (stop == NULL) stop = strstr(s, "<ds:Signature");
    assert_non_null(start);
    assert_non_null(stop);
    for (const char *p = start; p < stop && n + 4 < cap; p++) {
        if (*p != '>') continue;
        size_t at = (size_t)(p + 1 - s);
        if (p[1] != '<' && p[1] != ' ' && p[1] != '\n') {
            v[n].doc = insert_at(s, at, "Z");
            snprintf(v[n++].what, sizeof(v[0].what), "a character in the text at %zu", at);
            v[n].doc = insert_at(s, at, " ");
            snprintf(v[n++].what, sizeof(v[0].what), "a space in the text at %zu", at);
        } else {
            v[n].doc = insert_at(s, at, p[1] == '<' ? "\n" : " ");
            snprintf(v[n++].what, sizeof(v[0].what), "whitespace between elements at %zu", at);
        }
        v[n].doc = insert_at(s, at, "<Extra/>");
        snprintf(v[n++].what, sizeof(v[0].what), "an element inserted at %zu", at);
    }
    /* each leaf element removed */
    static const char *const leaves[] = { "<Version>1.0.0</Version>", "<Reserve/>", "<Reserve></Reserve>",
                                          "<TotalAmount>1234</TotalAmount>", "<ResultMsg/>", NULL };
    for (size_t i = 0; leaves[i] && n < cap; i++) {
        if (strstr(s, leaves[i]) == NULL) continue;
        v[n].doc = replace1(s, leaves[i], "");
        snprintf(v[n++].what, sizeof(v[0].what), "%s removed", leaves[i]);
    }
    /* attributes */
    const char *id = strstr(s, " id=\"re");
    assert_non_null(id);
    const char *kind = strstr(s, "<request") ? "request" : "response";
    char from[64], to[96];
    snprintf(from, sizeof(from), "id=\"%s\"", kind);
    snprintf(to, sizeof(to), "id=\"%sX\"", kind);
    v[n].doc = replace1(s, from, to);
    snprintf(v[n++].what, sizeof(v[0].what), "attribute value changed");
    snprintf(to, sizeof(to), "id=\" %s\"", kind);
    v[n].doc = replace1(s, from, to);
    snprintf(v[n++].what, sizeof(v[0].what), "whitespace in an attribute value");
    snprintf(to, sizeof(to), "%s x=\"1\"", from);
    v[n].doc = replace1(s, from, to);
    snprintf(v[n++].what, sizeof(v[0].what), "attribute added");
    v[n].doc = replace1(s, from, "");
    snprintf(v[n++].what, sizeof(v[0].what), "attribute removed");
    /* an element renamed */
    char *half = replace1(s, "<head>", "<Head>");
    v[n].doc = replace1(half, "</head>", "</Head>");
    free(half);
    snprintf(v[n++].what, sizeof(v[0].what), "element renamed");
    return n;
}

/* Every tamper is refused by the core; xmlsec1 confirms that the tamper
 * changed the signed content for every stride-th one (xmlsec1 takes about
 * 0.2 s a run). */
static void check_tampers(const char *signed_doc, gw_rsa_key_t *key, const char *pubfile, size_t stride)
{
    enum { CAP = 400 };
    variant_t *v = calloc(CAP, sizeof(*v));
    assert_non_null(v);
    assert_int_equal(verify(signed_doc, key, NULL), GW_OK);
    assert_true(xmlsec_verify(signed_doc, pubfile, NULL));
    size_t n = tampers(signed_doc, v, CAP);
    assert_true(n >= 30);
    char **docs = calloc(n, sizeof(*docs));
    int *ok = calloc(n, sizeof(*ok));
    size_t *idx = calloc(n, sizeof(*idx));
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (verify(v[i].doc, key, NULL) != GW_ESIGN) fail_msg("tamper not detected: %s", v[i].what);
        /* the last tampers (attributes, removals, renaming) always, the
         * per-position ones every stride-th */
        if (i % stride == 0 || i + 8 >= n) {
            idx[m] = i;
            docs[m++] = v[i].doc;
        }
    }
    /* a real change of the signed content: xmlsec1 refuses it too */
    xmlsec_verify_each(docs, m, pubfile, ok);
    for (size_t j = 0; j < m; j++)
        if (ok[j]) fail_msg("xmlsec1 accepts the tamper: %s", v[idx[j]].what);
    for (size_t i = 0; i < n; i++) free(v[i].doc);
    free(idx);
    free(docs);
    free(ok);
    free(v);
}

static void t_tamper_own(void **state)
{
    (void)state;
    char *s = gw_sign(UNSIGNED, ISV);
    check_tampers(s, ISV_PUB, FIX "isv_pub.pem", 5);
    free(s);
    s = gw_sign(COMPACT, ISV);
    check_tampers(s, ISV_PUB, FIX "isv_pub.pem", 1);
    free(s);
}

static void t_tamper_xmlsec(void **state)
{
    (void)state;
    char *tmpl = profile_tmpl(UNSIGNED);
    char *s = xmlsec_sign(tmpl, FIX "bank_priv.pem", NULL);
    check_tampers(s, BANK_PUB, FIX "bank_pub.pem", 5);
    free(tmpl);
    free(s);
}

static void t_tamper_signature(void **state)
{
    (void)state;
    char *s = gw_sign(COMPACT, ISV);
    gw_buf_t diag;
    H->buf_init(&diag, 4096);
    /* DigestValue: one character changed */
    char *dv = strstr(s, "<DigestValue>") + strlen("<DigestValue>");
    char *t = strdup(s);
    t[dv - s] = (char)(t[dv - s] == 'A' ? 'B' : 'A');
    assert_int_equal(verify(t, ISV_PUB, &diag), GW_ESIGN);
    assert_false(xmlsec_verify(t, FIX "isv_pub.pem", NULL));
    free(t);
    /* SignatureValue: one character changed */
    char *sv = strstr(s, "<SignatureValue>") + strlen("<SignatureValue>") + 10;
    t = strdup(s);
    t[sv - s] = (char)(t[sv - s] == 'A' ? 'B' : 'A');
    H->buf_reset(&diag);
    assert_int_equal(verify(t, ISV_PUB, &diag), GW_ESIGN);
    assert_non_null(strstr(diag.data, "SignatureValue does not verify"));
    assert_false(xmlsec_verify(t, FIX "isv_pub.pem", NULL));
    free(t);
    /* the digest of a changed document is reported */
    t = replace1(s, "<OutTradeNo>T1<", "<OutTradeNo>T2<");
    H->buf_reset(&diag);
    assert_int_equal(verify(t, ISV_PUB, &diag), GW_ESIGN);
    assert_non_null(strstr(diag.data, "digest mismatch"));
    free(t);
    /* whitespace inside SignedInfo is signed as well */
    t = replace1(s, "<SignedInfo><Canon", "<SignedInfo> <Canon");
    assert_int_equal(verify(t, ISV_PUB, NULL), GW_ESIGN);
    assert_false(xmlsec_verify(t, FIX "isv_pub.pem", NULL));
    free(t);
    /* the Base64 may be wrapped (xmlsec1 does): not a change */
    t = insert_at(s, (size_t)(sv - s), "\n");
    assert_int_equal(verify(t, ISV_PUB, NULL), GW_OK);
    assert_true(xmlsec_verify(t, FIX "isv_pub.pem", NULL));
    free(t);
    H->buf_free(&diag);
    free(s);
}

/* What canonical XML does not carry is not signed, by either verifier:
 * whitespace inside a tag, the XML declaration, whitespace after the root,
 * the form of an empty element, the quotes around an attribute value, an
 * entity reference versus the character. */
static void t_insignificant(void **state)
{
    (void)state;
    char *s = gw_sign(COMPACT, ISV);
    const char *pairs[][2] = {
        { "<response id=\"response\">", "<response  id=\"response\" >" },
        { "<response id=\"response\">", "<response id='response'>" },
        { "<?xml version=\"1.0\" encoding=\"UTF-8\"?>", "" },
        { "<Reserve></Reserve>", "<Reserve/>" },
        { "<ReqMsgId>abc</ReqMsgId>", "<ReqMsgId>&#97;bc</ReqMsgId>" },
        { "<ReqMsgId>abc</ReqMsgId>", "<ReqMsgId><![CDATA[abc]]></ReqMsgId>" },
        { "</document>", "</document>\n\n" },
    };
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        char *t = replace1(s, pairs[i][0], pairs[i][1]);
        assert_int_equal(verify(t, ISV_PUB, NULL), GW_OK);
        assert_true(xmlsec_verify(t, FIX "isv_pub.pem", NULL));
        free(t);
    }
    free(s);
}

/* ------------------------------------------------------------------ */
/* profile: what xmlsec1 accepts but the profile does not */

static void expect_profile_reject(const char *tmpl, const char *signer, const char *pub,
                                  gw_rsa_key_t *key, const char *xs_extra, const char *why)
{
    char *s = xmlsec_sign(tmpl, signer, xs_extra);
    /* a genuine signature in xmlsec1's eyes ... */
    if (!xmlsec_verify(s, pub, xs_extra)) fail_msg("xmlsec1 does not verify the %s variant", why);
    /* ... that the profile refuses */
    gw_buf_t diag;
    H->buf_init(&diag, 4096);
    gw_err_t rc = verify(s, key, &diag);
    if (rc != GW_ESIGN) fail_msg("accepted: %s", why);
    if (strstr(diag.data ? diag.data : "", "xmldsig: ") == NULL) fail_msg("no reason for %s", why);
    H->buf_free(&diag);
    free(s);
}

static void t_profile_rejects(void **state)
{
    (void)state;
    const char *B = FIX "bank_priv.pem", *P = FIX "bank_pub.pem";
    char *ref, *sig, *t, *ref2, *refs;
    /* other signature / digest / canonicalisation algorithms */
    struct { const char *c14n, *sigalg, *tr, *dig, *why; } alg[] = {
        { ALG_C14N, ALG_RSA_SHA1, TR_ENV, ALG_SHA1, "rsa-sha1" },
        { ALG_C14N, ALG_RSA_SHA256, TR_ENV, ALG_SHA256, "a SHA-256 digest" },
        { ALG_EXC_C14N, ALG_RSA_SHA256, TR_ENV, ALG_SHA1, "exclusive C14N" },
        { ALG_C14N_COMMENTS, ALG_RSA_SHA256, TR_ENV, ALG_SHA1, "C14N with comments" },
        { ALG_C14N, ALG_RSA_SHA256, TR_ENV "<Transform Algorithm=\"" ALG_C14N "\"/>", ALG_SHA1,
          "a second transform" },
    };
    for (size_t i = 0; i < sizeof(alg) / sizeof(alg[0]); i++) {
        ref = ref_tmpl("", alg[i].tr, alg[i].dig);
        sig = sig_tmpl(alg[i].c14n, alg[i].sigalg, ref, NULL);
        t = with_sig(COMPACT, sig);
        expect_profile_reject(t, B, P, BANK_PUB, NULL, alg[i].why);
        free(ref);
        free(sig);
        free(t);
    }
    /* an ID reference instead of the whole document */
    ref = ref_tmpl("#response", TR_ENV, ALG_SHA1);
    sig = sig_tmpl(ALG_C14N, ALG_RSA_SHA256, ref, NULL);
    t = with_sig(COMPACT, sig);
    expect_profile_reject(t, B, P, BANK_PUB, "--id-attr:id response", "Reference URI=#response");
    free(ref);
    free(sig);
    free(t);
    /* two references */
    ref = ref_tmpl("", TR_ENV, ALG_SHA1);
    ref2 = ref_tmpl("#response", TR_ENV, ALG_SHA1);
    refs = malloc(strlen(ref) + strlen(ref2) + 1);
    strcpy(refs, ref);
    strcat(refs, ref2);
    sig = sig_tmpl(ALG_C14N, ALG_RSA_SHA256, refs, NULL);
    t = with_sig(COMPACT, sig);
    expect_profile_reject(t, B, P, BANK_PUB, "--id-attr:id response", "two references");
    free(ref2);
    free(refs);
    free(sig);
    free(t);
    /* an Object inside the Signature (the classic wrapping hiding place) */
    sig = sig_tmpl(ALG_C14N, ALG_RSA_SHA256, ref, "<Object><x>hidden</x></Object>");
    t = with_sig(COMPACT, sig);
    expect_profile_reject(t, B, P, BANK_PUB, NULL, "an Object");
    free(sig);
    free(t);
    /* the Signature not the last child of the root: inside <response> */
    sig = sig_tmpl(ALG_C14N, ALG_RSA_SHA256, ref, NULL);
    t = replace1(COMPACT, "</response>", "");
    char *t2 = with_sig(t, sig);
    char *t3 = replace1(t2, "</document>", "</response></document>");
    expect_profile_reject(t3, B, P, BANK_PUB, NULL, "a Signature inside <response>");
    free(t);
    free(t2);
    free(t3);
    /* the Signature as the first child of the root */
    t = replace1(COMPACT, "<document>", "");
    t2 = insert_at(t, strstr(t, "<response") - t, sig);
    t3 = insert_at(t2, strstr(t2, "<Signature") - t2, "<document>");
    expect_profile_reject(t3, B, P, BANK_PUB, NULL, "a Signature before <response>");
    free(t);
    free(t2);
    free(t3);
    /* comments: URI="" leaves them out of the digest, so a comment could
     * split a value differently from what was signed (<!----> in a value) */
    t = replace1(COMPACT, "<OutTradeNo>T1</OutTradeNo>", "<OutTradeNo>T1<!---->.evil</OutTradeNo>");
    t2 = with_sig(t, sig);
    expect_profile_reject(t2, B, P, BANK_PUB, NULL, "a comment in the document");
    free(t);
    free(t2);
    free(sig);
    free(ref);
}

/* Wrapping attacks built from a genuine signed document. */
static void t_wrapping(void **state)
{
    (void)state;
    char *tmpl = profile_tmpl(COMPACT);
    char *s = xmlsec_sign(tmpl, FIX "bank_priv.pem", NULL);
    free(tmpl);
    const char *sig = strstr(s, "<Signature");
    const char *sig_end = strstr(s, "</Signature>") + strlen("</Signature>");
    size_t siglen = (size_t)(sig_end - sig);
    char sigcopy[8192];
    memcpy(sigcopy, sig, siglen);
    sigcopy[siglen] = '\0';
    /* 1. a second (copied) Signature */
    char *t = insert_at(s, (size_t)(sig - s), sigcopy);
    assert_int_equal(verify(t, BANK_PUB, NULL), GW_ESIGN);
    free(t);
    /* 2. a forged response moved in front, the genuine one kept after the
     * Signature (whose reference still covers "the whole document") */
    t = insert_at(s, (size_t)(sig_end - s),
                  "<response id=\"response\"><body><RespInfo><ResultStatus>S</ResultStatus></RespInfo>"
                  "</body></response>");
    assert_int_equal(verify(t, BANK_PUB, NULL), GW_ESIGN);
    free(t);
    /* 3. the genuine <response> wrapped inside the Signature's KeyInfo, a
     * forged one outside */
    const char *r0 = strstr(s, "<response"), *r1 = strstr(s, "</response>") + strlen("</response>");
    char genuine[4096];
    snprintf(genuine, sizeof(genuine), "<KeyInfo>%.*s</KeyInfo></Signature>", (int)(r1 - r0), r0);
    char *t2 = replace1(s, "<TradeStatus>succ</TradeStatus>", "<TradeStatus>fail</TradeStatus>");
    t = replace1(t2, "</Signature>", genuine);
    assert_int_equal(verify(t, BANK_PUB, NULL), GW_ESIGN);
    free(t);
    free(t2);
    /* 4. a dsig element outside the Signature */
    t = replace1(s, "<body>", "<body><ds:X xmlns:ds=\"" DS_NS "\"/>");
    assert_int_equal(verify(t, BANK_PUB, NULL), GW_ESIGN);
    free(t);
    /* 5. an element named Signature elsewhere (any namespace) */
    t = replace1(s, "<body>", "<body><Signature/>");
    assert_int_equal(verify(t, BANK_PUB, NULL), GW_ESIGN);
    free(t);
    /* 6. text after the Signature */
    t = replace1(s, "</Signature>", "</Signature>x");
    assert_int_equal(verify(t, BANK_PUB, NULL), GW_ESIGN);
    free(t);
    /* 7. no Signature at all */
    assert_int_equal(verify(COMPACT, BANK_PUB, NULL), GW_ESIGN);
    /* 8. a DOCTYPE declaring an entity (XXE), with the genuine signature */
    t = replace1(s, "<document>",
                 "<!DOCTYPE document [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><document>");
    gw_buf_t diag;
    H->buf_init(&diag, 4096);
    assert_int_equal(verify(t, BANK_PUB, &diag), GW_ESIGN);
    assert_non_null(strstr(diag.data, "not acceptable XML"));
    H->buf_free(&diag);
    free(t);
    /* 9. an unexpected attribute on a profile element */
    t = replace1(s, "<Reference URI=\"\">", "<Reference URI=\"\" Type=\"x\">");
    assert_int_equal(verify(t, BANK_PUB, NULL), GW_ESIGN);
    free(t);
    /* 10. NULL key */
    assert_int_equal(verify(s, NULL, NULL), GW_ESIGN);
    free(s);
}

/* ------------------------------------------------------------------ */
/* sign: inputs it refuses */

static void t_sign_errors(void **state)
{
    (void)state;
    gw_buf_t out;
    H->buf_init(&out, 1u << 20);
    /* already signed */
    char *s = gw_sign(COMPACT, ISV);
    assert_int_equal(H->xmldsig_sign(s, strlen(s), ISV, &out), GW_EINVAL);
    free(s);
    /* an empty root */
    assert_int_equal(H->xmldsig_sign("<document/>", 11, ISV, &out), GW_EINVAL);
    /* malformed */
    assert_int_equal(H->xmldsig_sign("<document><a></document>", 24, ISV, &out), GW_EPARSE);
    /* a public key cannot sign */
    assert_int_equal(H->xmldsig_sign(COMPACT, strlen(COMPACT), ISV_PUB, &out), GW_EKEY);
    assert_int_equal(H->xmldsig_sign(COMPACT, strlen(COMPACT), NULL, &out), GW_EKEY);
    assert_int_equal(out.len, 0);
    /* a namespaced root and trailing whitespace are fine */
    const char ns[] = "<p:document xmlns:p=\"urn:x\"><p:a>1</p:a></p:document>\n";
    assert_int_equal(H->xmldsig_sign(ns, strlen(ns), ISV, &out), GW_OK);
    assert_true(xmlsec_verify(out.data, FIX "isv_pub.pem", NULL));
    assert_int_equal(verify(out.data, ISV_PUB, NULL), GW_OK);
    H->buf_free(&out);
    /* too large for the output buffer: nothing appended */
    H->buf_init(&out, 100);
    assert_int_equal(H->xmldsig_sign(COMPACT, strlen(COMPACT), ISV, &out), GW_ETOOBIG);
    assert_int_equal(out.len, 0);
    H->buf_free(&out);
}

/* ------------------------------------------------------------------ */
/* reading documents */

static void t_xml_get(void **state)
{
    (void)state;
    gw_buf_t b;
    H->buf_init(&b, 1u << 20);
    const char *D = UNSIGNED;
    size_t L = strlen(D);
    assert_int_equal(H->xml_get(D, L, "document/request/head/ReqMsgId", &b), GW_OK);
    assert_string_equal(b.data, "5d1f3a0e-7c2b-4e51-9f0a-1b2c3d4e5f60");
    H->buf_reset(&b);
    assert_int_equal(H->xml_get(D, L, "document/request/body/Body", &b), GW_OK);
    assert_string_equal(b.data, "Longjing & <tea> \xe9\xbe\x99\xe4\xba\x95 a");
    H->buf_reset(&b);
    assert_int_equal(H->xml_get(D, L, "document/request/head/Reserve", &b), GW_OK);
    assert_string_equal(b.data, "");
    assert_int_equal(H->xml_get(D, L, "document/request/head/Nope", &b), GW_ENOENT);
    assert_int_equal(H->xml_get(D, L, "document/response/head", &b), GW_ENOENT);
    assert_int_equal(H->xml_get(D, L, "xml/request", &b), GW_ENOENT);
    assert_int_equal(H->xml_get(D, L, "document/request/head", &b), GW_EPARSE); /* not a leaf */
    assert_int_equal(H->xml_get(D, L, "document//head", &b), GW_EINVAL);
    assert_int_equal(H->xml_get(D, L, "", &b), GW_EINVAL);
    assert_int_equal(b.len, 0);
    /* ambiguous: two siblings of that name */
    const char dup[] = "<document><a><b>1</b><b>2</b></a></document>";
    assert_int_equal(H->xml_get(dup, strlen(dup), "document/a/b", &b), GW_EPARSE);
    /* namespaced elements never match */
    const char ns[] = "<document xmlns:x=\"urn:x\"><a><x:b>1</x:b></a><c xmlns=\"urn:y\">2</c></document>";
    assert_int_equal(H->xml_get(ns, strlen(ns), "document/a/b", &b), GW_ENOENT);
    assert_int_equal(H->xml_get(ns, strlen(ns), "document/c", &b), GW_ENOENT);
    /* the parse rules */
    const char *bad[] = {
        "<!DOCTYPE d [<!ENTITY e \"x\">]><document><a>&e;</a></document>",
        "<!DOCTYPE d SYSTEM \"http://example.com/x.dtd\"><document><a>1</a></document>",
        "<document><a>1<!-- c --></a></document>",
        "<document><?pi x?><a>1</a></document>",
        "<!-- c --><document><a>1</a></document>",
        "<?xml version=\"1.0\" encoding=\"GBK\"?><document><a>1</a></document>",
        "<document><a>&nbsp;</a></document>",
        "<document><a>1</a>",
        "<document><a>\xff</a></document>",
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        gw_err_t rc = H->xml_get(bad[i], strlen(bad[i]), "document/a", &b);
        if (rc != GW_EPARSE) fail_msg("bad[%zu] gave %d", i, rc);
    }
    const char nul[] = "<document><a>1</a></document>";
    char withnul[sizeof(nul)];
    memcpy(withnul, nul, sizeof(nul));
    withnul[13] = '\0';
    assert_int_equal(H->xml_get(withnul, sizeof(nul) - 1, "document/a", &b), GW_EPARSE);
    /* size bound */
    size_t big = (1u << 20) + 1;
    char *huge = malloc(big + 1);
    memset(huge, ' ', big);
    memcpy(huge, "<document><a>", 13);
    memcpy(huge + big - 15, "</a></document>", 15);
    huge[big] = '\0';
    assert_int_equal(H->xml_get(huge, big, "document/a", &b), GW_ETOOBIG);
    assert_int_equal(H->xmldsig_verify(huge, big, BANK_PUB, NULL), GW_ESIGN);
    assert_int_equal(H->xmldsig_sign(huge, big, ISV, &b), GW_ETOOBIG);
    free(huge);
    assert_int_equal(b.len, 0);
    H->buf_free(&b);
}

static void t_xml_kv(void **state)
{
    (void)state;
    gw_kv_t *kv = H->kv_new();
    assert_int_equal(H->xml_kv(COMPACT, strlen(COMPACT), "document/response/body", kv), GW_OK);
    assert_int_equal(H->kv_count(kv), 5);
    gw_str_t v = H->kv_get(kv, "RespInfo/ResultStatus");
    assert_int_equal(v.len, 1);
    assert_memory_equal(v.ptr, "S", 1);
    v = H->kv_get(kv, "RespInfo/ResultMsg");
    assert_non_null(v.ptr);
    assert_int_equal(v.len, 0);
    v = H->kv_get(kv, "TradeStatus");
    assert_memory_equal(v.ptr, "succ", 4);
    assert_string_equal(H->kv_key_at(kv, 0).ptr, "RespInfo/ResultStatus");
    /* the head too, into the same list */
    assert_int_equal(H->xml_kv(COMPACT, strlen(COMPACT), "document/response/head", kv), GW_OK);
    assert_int_equal(H->kv_count(kv), 14);
    /* a repeated key: refused, the list left as it was */
    const char dup[] = "<document><body><A>1</A><B>2</B><A>3</A></body></document>";
    assert_int_equal(H->xml_kv(dup, strlen(dup), "document/body", kv), GW_EPARSE);
    assert_int_equal(H->kv_count(kv), 14);
    H->kv_free(kv);
    kv = H->kv_new();
    const char *bad[] = {
        "<document><body>text<A>1</A></body></document>",         /* mixed content */
        "<document><body><A>1<B>2</B></A></body></document>",     /* mixed below */
        "<document><body><x:A xmlns:x=\"u\">1</x:A></body></document>",
        "<document><body><A>1</A></body><body/></document>",      /* ambiguous path */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        gw_err_t rc = H->xml_kv(bad[i], strlen(bad[i]), "document/body", kv);
        if (rc != GW_EPARSE) fail_msg("bad[%zu] gave %d", i, rc);
        assert_int_equal(H->kv_count(kv), 0);
    }
    assert_int_equal(H->xml_kv(COMPACT, strlen(COMPACT), "document/nope", kv), GW_ENOENT);
    H->kv_free(kv);
}

static void t_xml_escape(void **state)
{
    (void)state;
    gw_buf_t b, doc, back;
    H->buf_init(&b, 4096);
    H->buf_init(&doc, 8192);
    H->buf_init(&back, 4096);
    const char tricky[] = "a&b<c>d\"e'f\r\ng\th]]>\xe9\xbe\x99 \xf0\x9f\x8d\xb5";
    assert_int_equal(H->xml_escape(tricky, strlen(tricky), &b), GW_OK);
    assert_string_equal(b.data, "a&amp;b&lt;c&gt;d&quot;e&apos;f&#13;\ng\th]]&gt;\xe9\xbe\x99 \xf0\x9f\x8d\xb5");
    /* round trip, as text and as an attribute value, through the parser */
    H->buf_appendf(&doc, "<document><a>%s</a></document>", b.data);
    assert_int_equal(H->xml_get(doc.data, doc.len, "document/a", &back), GW_OK);
    assert_string_equal(back.data, tricky);
    /* and through a signature */
    char *s = gw_sign(doc.data, ISV);
    assert_true(xmlsec_verify(s, FIX "isv_pub.pem", NULL));
    free(s);
    const char *bad[] = { "\x01", "a\x1f", "\xff", "\xc0\xaf", "\xed\xa0\x80", "\xef\xbf\xbe", "\xe9\xbe" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        H->buf_reset(&b);
        H->buf_append(&b, "keep", 4);
        assert_int_equal(H->xml_escape(bad[i], strlen(bad[i]), &b), GW_EINVAL);
        assert_string_equal(b.data, "keep");
    }
    H->buf_reset(&b);
    assert_int_equal(H->xml_escape("", 0, &b), GW_OK);
    assert_non_null(b.data);
    H->buf_free(&b);
    H->buf_free(&doc);
    H->buf_free(&back);
}

/* ------------------------------------------------------------------ */
/* threads */

typedef struct {
    const char *bank_signed;
    int failures;
} thr_t;

static void *thr_main(void *arg)
{
    thr_t *t = arg;
    for (int i = 0; i < 40; i++) {
        gw_buf_t out, diag;
        H->buf_init(&out, 1u << 20);
        H->buf_init(&diag, 4096);
        if (H->xmldsig_sign(COMPACT, strlen(COMPACT), ISV, &out) != GW_OK) t->failures++;
        else if (H->xmldsig_verify(out.data, out.len, ISV_PUB, &diag) != GW_OK) t->failures++;
        if (H->xmldsig_verify(t->bank_signed, strlen(t->bank_signed), BANK_PUB, NULL) != GW_OK) t->failures++;
        if (H->xmldsig_verify(t->bank_signed, strlen(t->bank_signed), ROGUE, NULL) != GW_ESIGN) t->failures++;
        H->buf_reset(&out);
        if (H->xml_get(t->bank_signed, strlen(t->bank_signed), "document/request/head/ReqMsgId", &out) != GW_OK)
            t->failures++;
        H->buf_free(&out);
        H->buf_free(&diag);
    }
    return NULL;
}

static void t_threads(void **state)
{
    (void)state;
    char *tmpl = profile_tmpl(UNSIGNED);
    char *s = xmlsec_sign(tmpl, FIX "bank_priv.pem", NULL);
    enum { N = 8 };
    pthread_t th[N];
    thr_t a[N];
    for (int i = 0; i < N; i++) {
        a[i] = (thr_t){ s, 0 };
        assert_int_equal(pthread_create(&th[i], NULL, thr_main, &a[i]), 0);
    }
    int failures = 0;
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++) failures += a[i].failures;
    assert_int_equal(failures, 0);
    free(tmpl);
    free(s);
}

/* ------------------------------------------------------------------ */

static int setup(void **state)
{
    (void)state;
    H = gw_host_api();
    snprintf(TMPD, sizeof(TMPD), "/tmp/test_xmldsig.XXXXXX");
    if (mkdtemp(TMPD) == NULL) return -1;
    if (system("xmlsec1 --version >/dev/null 2>&1") != 0) {
        fprintf(stderr, "test_xmldsig: the xmlsec1 command-line tool is required (apt-get install xmlsec1)\n");
        return -1;
    }
    ISV = load_key(FIX "isv_priv.pem", 1);
    ISV_PUB = load_key(FIX "isv_pub.pem", 0);
    BANK_PUB = load_key(FIX "bank_pub.pem", 0);
    ROGUE = load_key(FIX "rogue_pub.pem", 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", TMPD);
    if (system(cmd) != 0) return -1;
    return 0;
}

int main(void)
{
    gw_log_level = GW_LOG_ERR;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_host_table),
        cmocka_unit_test(t_sign_profile_xmlsec_verifies),
        cmocka_unit_test(t_sign_equals_xmlsec),
        cmocka_unit_test(t_verify_xmlsec_signed),
        cmocka_unit_test(t_tamper_own),
        cmocka_unit_test(t_tamper_xmlsec),
        cmocka_unit_test(t_tamper_signature),
        cmocka_unit_test(t_insignificant),
        cmocka_unit_test(t_profile_rejects),
        cmocka_unit_test(t_wrapping),
        cmocka_unit_test(t_sign_errors),
        cmocka_unit_test(t_xml_get),
        cmocka_unit_test(t_xml_kv),
        cmocka_unit_test(t_xml_escape),
        cmocka_unit_test(t_threads),
    };
    int fails = cmocka_run_group_tests_name("xmldsig (host API 1.2)", tests, setup, teardown);
    gw_host_shutdown();
    return fails ? 1 : 0;
}
