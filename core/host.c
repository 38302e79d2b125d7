/*
 * host.c — the host-API table (gw_host_api_t 1.2) handed to channel modules.
 *
 * Buffers, hashing, RSA, AES-GCM and the encodings are the core's own
 * functions (util.c, crypto.c), wired into the table as they are.  This file
 * implements what only modules need:
 *
 *   log         lines tagged with the module's name, found from its ctx
 *               pointer in a small map the loader fills (register_ctx);
 *   rsa_*       a process-wide cache of parsed keys keyed by the SHA-256 of
 *               the key text, so a module can ask for its merchant's key on
 *               every call; the returned pointer lives until exit;
 *   kv_*        ordered key/value lists: flat <xml> documents (libxml2 with
 *               no network, no DTD, no entity substitution), URL-encoded
 *               forms, and the "k=v&…" strings the channels sign;
 *   json_*      thin, NULL-safe helpers over cJSON;
 *   header_get  a header value from raw "Name: value\r\n" lines;
 *   xml_*       (1.2) structured XML documents and the enveloped XML-DSig
 *               profile: xmldsig.c, and xml_kv's wrapper into kv lists.
 *
 * Everything here may run on the thread pool: shared state (the ctx map and
 * the key cache) is behind mutexes, everything else works on its arguments.
 * Key text is never logged.
 */
#include "host.h"
#include "crypto.h"
#include "xmldsig.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <libxml/parser.h>
#include <libxml/parserInternals.h>
#include <libxml/tree.h>

/* ------------------------------------------------------------------ */
/* logging, tagged by ctx */

typedef struct {
    const void *ctx;
    char name[32];
} ctx_name_t;

static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static ctx_name_t *ctx_names;
static size_t ctx_n, ctx_cap;

gw_err_t gw_host_register_ctx(const void *ctx, const char *name)
{
    gw_err_t rc = GW_OK;
    pthread_mutex_lock(&ctx_lock);
    if (ctx_n == ctx_cap) {
        size_t cap = ctx_cap ? ctx_cap * 2 : 16;
        ctx_name_t *p = realloc(ctx_names, cap * sizeof(*p));
        if (p == NULL) {
            rc = GW_ENOMEM;
            goto out;
        }
        ctx_names = p;
        ctx_cap = cap;
    }
    ctx_names[ctx_n].ctx = ctx;
    snprintf(ctx_names[ctx_n].name, sizeof(ctx_names[ctx_n].name), "%s", name);
    ctx_n++;
out:
    pthread_mutex_unlock(&ctx_lock);
    return rc;
}

void gw_host_unregister_ctx(const void *ctx)
{
    pthread_mutex_lock(&ctx_lock);
    for (size_t i = 0; i < ctx_n; i++) {
        if (ctx_names[i].ctx == ctx) {
            ctx_names[i] = ctx_names[--ctx_n];
            break;
        }
    }
    if (ctx_n == 0) {
        free(ctx_names);
        ctx_names = NULL;
        ctx_cap = 0;
    }
    pthread_mutex_unlock(&ctx_lock);
}

static void host_log(const void *ctx, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void host_log(const void *ctx, int level, const char *fmt, ...)
{
    if (level < GW_LOG_EMERG) level = GW_LOG_EMERG;
    if (level > GW_LOG_DEBUG) level = GW_LOG_DEBUG;
    if (level > gw_log_level || fmt == NULL) return;
    char tag[32] = "channel";
    pthread_mutex_lock(&ctx_lock);
    for (size_t i = 0; i < ctx_n; i++) {
        if (ctx != NULL && ctx_names[i].ctx == ctx) {
            memcpy(tag, ctx_names[i].name, sizeof(tag));
            break;
        }
    }
    pthread_mutex_unlock(&ctx_lock);
    va_list ap;
    va_start(ap, fmt);
    gw__vlog(level, NULL, tag, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ */
/* RSA key cache */

typedef struct {
    uint8_t id[32]; /* SHA-256 of the key text */
    int priv;
    gw_rsa_key_t *key;
} rsa_slot_t;

static pthread_mutex_t rsa_lock = PTHREAD_MUTEX_INITIALIZER;
static rsa_slot_t rsa_slots[GW_RSA_CACHE_MAX];
static size_t rsa_n;
static int rsa_full_logged;

static gw_rsa_key_t *rsa_find(const uint8_t id[32], int priv)
{
    for (size_t i = 0; i < rsa_n; i++)
        if (rsa_slots[i].priv == priv && memcmp(rsa_slots[i].id, id, 32) == 0)
            return rsa_slots[i].key;
    return NULL;
}

/* Parsing happens outside the lock (it takes milliseconds for a private
 * key); a second thread that raced us on the same text keeps the first key
 * inserted and frees its own. */
static gw_rsa_key_t *rsa_cached(int priv, const char *text, size_t len)
{
    if (text == NULL || len == 0) return NULL;
    uint8_t id[32];
    gw_sha256(text, len, id);
    pthread_mutex_lock(&rsa_lock);
    gw_rsa_key_t *key = rsa_find(id, priv);
    pthread_mutex_unlock(&rsa_lock);
    if (key != NULL) return key;

    gw_rsa_key_t *fresh = NULL;
    gw_err_t rc = priv ? gw_rsa_load_private(text, len, &fresh) : gw_rsa_load_public(text, len, &fresh);
    if (rc != GW_OK) {
        gw_log(GW_LOG_DEBUG, "host: %s key rejected: %s", priv ? "private" : "public",
               gw_strerror(rc));
        return NULL;
    }
    pthread_mutex_lock(&rsa_lock);
    key = rsa_find(id, priv);
    if (key == NULL && rsa_n < GW_RSA_CACHE_MAX) {
        memcpy(rsa_slots[rsa_n].id, id, 32);
        rsa_slots[rsa_n].priv = priv;
        rsa_slots[rsa_n].key = fresh;
        rsa_n++;
        key = fresh;
        fresh = NULL;
    } else if (key == NULL && !rsa_full_logged) {
        rsa_full_logged = 1;
        gw_log(GW_LOG_ERR, "host: RSA key cache full (%u keys); further keys are refused",
               GW_RSA_CACHE_MAX);
    }
    pthread_mutex_unlock(&rsa_lock);
    if (fresh != NULL) gw_rsa_free(fresh);
    return key;
}

static gw_rsa_key_t *host_rsa_private(const char *text, size_t len)
{
    return rsa_cached(1, text, len);
}

static gw_rsa_key_t *host_rsa_public(const char *text, size_t len)
{
    return rsa_cached(0, text, len);
}

size_t gw_host_rsa_cache_size(void)
{
    pthread_mutex_lock(&rsa_lock);
    size_t n = rsa_n;
    pthread_mutex_unlock(&rsa_lock);
    return n;
}

void gw_host_shutdown(void)
{
    pthread_mutex_lock(&rsa_lock);
    for (size_t i = 0; i < rsa_n; i++) gw_rsa_free(rsa_slots[i].key);
    memset(rsa_slots, 0, sizeof(rsa_slots));
    rsa_n = 0;
    rsa_full_logged = 0;
    pthread_mutex_unlock(&rsa_lock);
}

/* ------------------------------------------------------------------ */
/* key/value lists */

typedef struct {
    char *k;
    size_t klen;
    char *v; /* NUL-terminated copy; may contain NUL bytes before vlen */
    size_t vlen;
} kv_item_t;

struct gw_kv {
    kv_item_t *items;
    size_t n, cap;
};

static gw_kv_t *host_kv_new(void)
{
    return calloc(1, sizeof(gw_kv_t));
}

/* Drops the items from index n on (the rollback of a failed parse). */
static void kv_truncate(gw_kv_t *kv, size_t n)
{
    while (kv->n > n) {
        kv->n--;
        free(kv->items[kv->n].k); /* the value shares its block */
    }
}

static void host_kv_free(gw_kv_t *kv)
{
    if (kv == NULL) return;
    kv_truncate(kv, 0);
    free(kv->items);
    free(kv);
}

static kv_item_t *kv_find(const gw_kv_t *kv, const char *key, size_t klen)
{
    for (size_t i = 0; i < kv->n; i++)
        if (kv->items[i].klen == klen && memcmp(kv->items[i].k, key, klen) == 0)
            return &kv->items[i];
    return NULL;
}

/* Keys are non-empty, contain no NUL and are unique: a repeated key in a
 * signed document is how signature-confusion attacks start. */
static gw_err_t host_kv_add(gw_kv_t *kv, const char *key, size_t klen, const char *val, size_t vlen)
{
    if (kv == NULL || key == NULL || klen == 0 || memchr(key, '\0', klen) != NULL ||
        (val == NULL && vlen != 0))
        return GW_EINVAL;
    if (kv_find(kv, key, klen) != NULL) return GW_EEXIST;
    if (kv->n >= GW_KV_MAX_ITEMS) return GW_ETOOBIG;
    if (kv->n == kv->cap) {
        size_t cap = kv->cap ? kv->cap * 2 : 16;
        kv_item_t *p = realloc(kv->items, cap * sizeof(*p));
        if (p == NULL) return GW_ENOMEM;
        kv->items = p;
        kv->cap = cap;
    }
    if (vlen > SIZE_MAX - klen - 2) return GW_ETOOBIG;
    char *k = malloc(klen + 1 + vlen + 1); /* name and value in one block */
    if (k == NULL) return GW_ENOMEM;
    char *v = k + klen + 1;
    memcpy(k, key, klen);
    k[klen] = '\0';
    if (vlen) memcpy(v, val, vlen);
    v[vlen] = '\0';
    kv->items[kv->n++] = (kv_item_t){ k, klen, v, vlen };
    return GW_OK;
}

static gw_err_t host_kv_addf(gw_kv_t *kv, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static gw_err_t host_kv_addf(gw_kv_t *kv, const char *key, const char *fmt, ...)
{
    if (key == NULL || fmt == NULL) return GW_EINVAL;
    /* one formatting pass into the stack on the common path (a number, a
     * time): the measuring pass and a malloc were 1.8 % of paygated's
     * instructions per c-to-b order */
    char small[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) return GW_EINVAL;
    if ((size_t)n > GW_KV_XML_MAX) return GW_ETOOBIG;
    if ((size_t)n < sizeof(small)) return host_kv_add(kv, key, strlen(key), small, (size_t)n);
    char *s = malloc((size_t)n + 1);
    if (s == NULL) return GW_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    gw_err_t rc = host_kv_add(kv, key, strlen(key), s, (size_t)n);
    free(s);
    return rc;
}

static gw_str_t host_kv_get(const gw_kv_t *kv, const char *key)
{
    if (kv == NULL || key == NULL) return (gw_str_t){ NULL, 0 };
    const kv_item_t *it = kv_find(kv, key, strlen(key));
    return it ? (gw_str_t){ it->v, it->vlen } : (gw_str_t){ NULL, 0 };
}

static size_t host_kv_count(const gw_kv_t *kv)
{
    return kv ? kv->n : 0;
}

static gw_str_t host_kv_key_at(const gw_kv_t *kv, size_t i)
{
    if (kv == NULL || i >= kv->n) return (gw_str_t){ NULL, 0 };
    return (gw_str_t){ kv->items[i].k, kv->items[i].klen };
}

static gw_str_t host_kv_value_at(const gw_kv_t *kv, size_t i)
{
    if (kv == NULL || i >= kv->n) return (gw_str_t){ NULL, 0 };
    return (gw_str_t){ kv->items[i].v, kv->items[i].vlen };
}

/* ---- flat XML ---- */

static pthread_once_t xml_once = PTHREAD_ONCE_INIT;

static void xml_init(void)
{
    xmlInitParser();
}

/* SAX hook: a DOCTYPE stops the parse before its internal subset is read,
 * so no entity is ever declared (no XXE, no "billion laughs"). */
static void xml_on_doctype(void *userdata, const xmlChar *name, const xmlChar *ext_id,
                           const xmlChar *sys_id)
{
    xmlParserCtxtPtr ctxt = userdata;
    int *saw_dtd = ctxt->_private;
    *saw_dtd = 1;
    xmlStopParser(ctxt);
}

static int xml_is_blank(const xmlChar *s)
{
    for (; s && *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') return 0;
    return 1;
}

static gw_err_t xml_collect(gw_kv_t *kv, xmlNodePtr root)
{
    gw_buf_t val;
    gw_buf_init(&val, GW_KV_XML_MAX);
    gw_err_t rc = GW_OK;
    if (root->properties != NULL || root->nsDef != NULL || root->ns != NULL ||
        strcmp((const char *)root->name, "xml") != 0) {
        rc = GW_EPARSE;
        goto out;
    }
    for (xmlNodePtr n = root->children; n != NULL; n = n->next) {
        if (n->type == XML_TEXT_NODE && xml_is_blank(n->content)) continue;
        if (n->type != XML_ELEMENT_NODE || n->properties != NULL || n->nsDef != NULL ||
            n->ns != NULL || strchr((const char *)n->name, ':') != NULL) {
            rc = GW_EPARSE;
            goto out;
        }
        gw_buf_reset(&val);
        for (xmlNodePtr c = n->children; c != NULL; c = c->next) {
            if (c->type != XML_TEXT_NODE && c->type != XML_CDATA_SECTION_NODE) {
                rc = GW_EPARSE; /* nested element, entity reference, comment, PI */
                goto out;
            }
            if (c->content && (rc = gw_buf_appends(&val, (const char *)c->content)) != GW_OK)
                goto out;
        }
        const char *k = (const char *)n->name;
        rc = host_kv_add(kv, k, strlen(k), val.data ? val.data : "", val.len);
        if (rc == GW_EEXIST) rc = GW_EPARSE;
        if (rc != GW_OK) goto out;
    }
out:
    gw_buf_free(&val);
    return rc;
}

/* The flat documents channels send, read without libxml2: "<xml>", then
 * elements "<name>" text and CDATA sections "</name>" apart from blanks,
 * "</xml>", blanks.  Only that subset, in ASCII, without references, CR,
 * empty-element tags or anything else: whatever falls outside returns 0 with
 * the list as it was, and libxml2 decides (gw__kv_parse_xml_libxml).  So it
 * never accepts what libxml2 refuses and gives the same pairs; the unit test
 * compares the two on generated documents.  libxml2 (a parser context, a
 * tree, a node and a copy per value) was 15 % of paygated's instructions per
 * c-to-b order (docs/performance.md, "Third round"). */
static int xml_plain_char(unsigned char c)
{
    return (c >= 0x20 && c < 0x80) || c == '\t' || c == '\n';
}

static int kv_parse_xml_fast(gw_kv_t *kv, const char *x, size_t len)
{
    const char *p = x, *end = x + len;
    size_t n0 = kv->n;
    gw_buf_t val;
    gw_buf_init(&val, GW_KV_XML_MAX);
    if (len < 11 || memcmp(p, "<xml>", 5) != 0) goto fallback;
    p += 5;
    for (;;) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
        if (p >= end || *p != '<') goto fallback;
        p++;
        if (p < end && *p == '/') { /* the end of the document */
            if (end - p < 5 || memcmp(p, "/xml>", 5) != 0) goto fallback;
            for (p += 5; p < end; p++)
                if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') goto fallback;
            gw_buf_free(&val);
            return 1;
        }
        const char *name = p;
        while (p < end && ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
                           (p > name && ((*p >= '0' && *p <= '9') || *p == '-' || *p == '.'))))
            p++;
        size_t nlen = (size_t)(p - name);
        if (nlen == 0 || p >= end || *p != '>') goto fallback;
        p++;
        gw_buf_reset(&val);
        for (;;) {
            if (p >= end) goto fallback;
            if (*p == '<') {
                if (end - p >= 9 && memcmp(p, "<![CDATA[", 9) == 0) {
                    const char *s = p + 9, *e = memmem(s, (size_t)(end - s), "]]>", 3);
                    if (e == NULL) goto fallback;
                    for (const char *q = s; q < e; q++)
                        if (!xml_plain_char((unsigned char)*q)) goto fallback;
                    if (gw_buf_append(&val, s, (size_t)(e - s)) != GW_OK) goto fallback;
                    p = e + 3;
                    continue;
                }
                if ((size_t)(end - p) < nlen + 3 || p[1] != '/' || memcmp(p + 2, name, nlen) != 0 ||
                    p[2 + nlen] != '>')
                    goto fallback;
                p += nlen + 3;
                break;
            }
            const char *s = p;
            for (; p < end && *p != '<'; p++) {
                unsigned char c = (unsigned char)*p;
                if (c == '&' || !xml_plain_char(c) || (c == '>' && p - s >= 2 && p[-1] == ']' && p[-2] == ']'))
                    goto fallback;
            }
            if (gw_buf_append(&val, s, (size_t)(p - s)) != GW_OK) goto fallback;
        }
        if (host_kv_add(kv, name, nlen, val.data ? val.data : "", val.len) != GW_OK) goto fallback;
    }
fallback:
    kv_truncate(kv, n0);
    gw_buf_free(&val);
    return 0;
}

static gw_err_t host_kv_parse_xml(gw_kv_t *kv, const char *xml, size_t len)
{
    if (kv == NULL || xml == NULL) return GW_EINVAL;
    if (len > GW_KV_XML_MAX) return GW_ETOOBIG;
    if (kv_parse_xml_fast(kv, xml, len)) return GW_OK;
    return gw__kv_parse_xml_libxml(kv, xml, len);
}

gw_err_t gw__kv_parse_xml_libxml(gw_kv_t *kv, const char *xml, size_t len)
{
    if (kv == NULL || xml == NULL) return GW_EINVAL;
    if (len > GW_KV_XML_MAX) return GW_ETOOBIG;
    if (len == 0) return GW_EPARSE;
    pthread_once(&xml_once, xml_init);

    size_t n0 = kv->n;
    gw_err_t rc = GW_EPARSE;
    int saw_dtd = 0;
    xmlDocPtr doc = NULL;
    xmlParserCtxtPtr ctxt = xmlCreateMemoryParserCtxt(xml, (int)len);
    if (ctxt == NULL) return GW_ENOMEM;
    /* no XML_PARSE_NOENT (no substitution), no DTDLOAD/DTDATTR/DTDVALID,
     * no XInclude, no network; errors are ours to report, not stderr's */
    xmlCtxtUseOptions(ctxt, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    ctxt->sax->internalSubset = xml_on_doctype;
    ctxt->sax->externalSubset = NULL;
    ctxt->_private = &saw_dtd;
    xmlParseDocument(ctxt);
    doc = ctxt->myDoc;
    ctxt->myDoc = NULL;
    if (saw_dtd || !ctxt->wellFormed || !ctxt->nsWellFormed || doc == NULL || doc->intSubset != NULL ||
        doc->extSubset != NULL)
        goto out;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (root == NULL) goto out;
    /* nothing but the root element at top level (comments/PIs refused) */
    for (xmlNodePtr n = doc->children; n != NULL; n = n->next)
        if (n != root) goto out;
    rc = xml_collect(kv, root);
out:
    if (rc != GW_OK) kv_truncate(kv, n0);
    if (doc) xmlFreeDoc(doc);
    xmlFreeParserCtxt(ctxt);
    return rc;
}

static int xml_name_ok(const char *k, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)k[i];
        int alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
        int more = (c >= '0' && c <= '9') || c == '-' || c == '.';
        if (!(alpha || (i > 0 && more))) return 0;
    }
    /* "xml…" names are reserved by the XML spec */
    return n > 0 && !(n >= 3 && strncasecmp(k, "xml", 3) == 0);
}

static int xml_value_ok(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') return 0;
    }
    return 1;
}

/* The next "]]>" in [p, end), or NULL (memchr first: values rarely hold
 * a ']'). */
static const char *cdata_end(const char *p, const char *end)
{
    if (p >= end || memchr(p, ']', (size_t)(end - p)) == NULL) return NULL;
    return memmem(p, (size_t)(end - p), "]]>", 3);
}

/* A value containing "]]>" is split across two CDATA sections:
 * "a]]>b" → <![CDATA[a]]]]><![CDATA[>b]]>. */
static gw_err_t host_kv_to_xml(const gw_kv_t *kv, gw_buf_t *out)
{
    if (kv == NULL || out == NULL) return GW_EINVAL;
    /* the size first (each "]]>" costs a CDATA split: 12 bytes more), one
     * reservation, then copies: appending piece by piece (90 calls for a
     * Swiftpass request) was 3 % of paygated's instructions per order */
    static const char open_[] = "<xml>", close_[] = "</xml>";
    size_t need = sizeof(open_) - 1 + sizeof(close_) - 1;
    for (size_t i = 0; i < kv->n; i++) {
        const kv_item_t *it = &kv->items[i];
        if (!xml_name_ok(it->k, it->klen) || !xml_value_ok(it->v, it->vlen)) return GW_EINVAL;
        if (it->vlen > GW_KV_XML_MAX || it->klen > GW_KV_XML_MAX) return GW_ETOOBIG;
        need += 2 * it->klen + it->vlen + 17; /* <k><![CDATA[v]]></k> */
        for (const char *p = it->v, *end = it->v + it->vlen, *hit; (hit = cdata_end(p, end)); p = hit + 2)
            need += 12;
        if (need > GW_KV_XML_MAX * 4) return GW_ETOOBIG;
    }
    gw_err_t rc = gw_buf_reserve(out, need);
    if (rc != GW_OK) return rc;
#define PUT_LIT(lit) gw_buf_put_reserved(out, lit, sizeof(lit) - 1)
    PUT_LIT(open_);
    for (size_t i = 0; i < kv->n; i++) {
        const kv_item_t *it = &kv->items[i];
        PUT_LIT("<");
        gw_buf_put_reserved(out, it->k, it->klen);
        PUT_LIT("><![CDATA[");
        const char *p = it->v, *end = it->v + it->vlen, *hit;
        while ((hit = cdata_end(p, end))) {
            gw_buf_put_reserved(out, p, (size_t)(hit - p) + 2); /* up to "]]" */
            PUT_LIT("]]><![CDATA[");
            p = hit + 2; /* ">" starts the next section */
        }
        gw_buf_put_reserved(out, p, (size_t)(end - p));
        PUT_LIT("]]></");
        gw_buf_put_reserved(out, it->k, it->klen);
        PUT_LIT(">");
    }
    PUT_LIT(close_);
#undef PUT_LIT
    gw_buf_put_end(out);
    return GW_OK;
}

/* ---- forms ---- */

static gw_err_t host_kv_parse_form(gw_kv_t *kv, const char *form, size_t len)
{
    if (kv == NULL || (form == NULL && len != 0)) return GW_EINVAL;
    if (len > GW_KV_XML_MAX) return GW_ETOOBIG;
    size_t n0 = kv->n;
    gw_buf_t k, v;
    gw_buf_init(&k, GW_KV_XML_MAX);
    gw_buf_init(&v, GW_KV_XML_MAX);
    gw_err_t rc = GW_OK;
    const char *p = form, *end = form ? form + len : NULL;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *seg_end = amp ? amp : end;
        if (seg_end > p) {
            const char *eq = memchr(p, '=', (size_t)(seg_end - p));
            const char *kend = eq ? eq : seg_end;
            gw_buf_reset(&k);
            gw_buf_reset(&v);
            rc = gw_url_decode(p, (size_t)(kend - p), 1, &k);
            if (rc == GW_OK && eq) rc = gw_url_decode(eq + 1, (size_t)(seg_end - eq - 1), 1, &v);
            if (rc != GW_OK) goto out;
            if (k.len == 0) {
                rc = GW_EPARSE;
                goto out;
            }
            rc = host_kv_add(kv, k.data, k.len, v.data ? v.data : "", v.len);
            if (rc == GW_EEXIST || rc == GW_EINVAL) rc = GW_EPARSE;
            if (rc != GW_OK) goto out;
        }
        p = amp ? amp + 1 : end;
    }
out:
    if (rc != GW_OK) kv_truncate(kv, n0);
    gw_buf_free(&k);
    gw_buf_free(&v);
    return rc;
}

static gw_err_t host_kv_to_form(const gw_kv_t *kv, gw_buf_t *out)
{
    if (kv == NULL || out == NULL) return GW_EINVAL;
    size_t len0 = out->len;
    gw_err_t rc = GW_OK;
    for (size_t i = 0; rc == GW_OK && i < kv->n; i++) {
        if (i > 0) rc = gw_buf_append(out, "&", 1);
        if (rc == GW_OK) rc = gw_url_encode(kv->items[i].k, kv->items[i].klen, out);
        if (rc == GW_OK) rc = gw_buf_append(out, "=", 1);
        if (rc == GW_OK) rc = gw_url_encode(kv->items[i].v, kv->items[i].vlen, out);
    }
    if (rc != GW_OK && out->data) {
        out->len = len0;
        out->data[len0] = '\0';
    }
    return rc;
}

/* ---- signing strings ---- */

static int kv_item_cmp(const void *a, const void *b)
{
    const kv_item_t *x = *(const kv_item_t *const *)a, *y = *(const kv_item_t *const *)b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->k, y->k, n);
    if (c != 0) return c;
    return x->klen < y->klen ? -1 : x->klen > y->klen;
}

static int kv_excluded(const kv_item_t *it, const char *const *exclude)
{
    for (; exclude && *exclude; exclude++)
        if (strlen(*exclude) == it->klen && memcmp(*exclude, it->k, it->klen) == 0) return 1;
    return 0;
}

static gw_err_t host_kv_sign_string(const gw_kv_t *kv, const char *const *exclude, unsigned flags,
                                    gw_buf_t *out)
{
    if (kv == NULL || out == NULL) return GW_EINVAL;
    const kv_item_t **sel = malloc((kv->n ? kv->n : 1) * sizeof(*sel));
    if (sel == NULL) return GW_ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < kv->n; i++) {
        const kv_item_t *it = &kv->items[i];
        if (kv_excluded(it, exclude)) continue;
        if ((flags & GW_KV_DROP_EMPTY) && it->vlen == 0) continue;
        sel[n++] = it;
    }
    if (flags & GW_KV_SORTED) qsort(sel, n, sizeof(*sel), kv_item_cmp);
    /* the size, one reservation, then copies (as host_kv_to_xml) */
    size_t need = 0;
    for (size_t i = 0; i < n; i++) need += sel[i]->klen + sel[i]->vlen + 2;
    gw_err_t rc = gw_buf_reserve(out, need);
    if (rc == GW_OK) {
        for (size_t i = 0; i < n; i++) {
            if (i > 0) gw_buf_put_reserved(out, "&", 1);
            gw_buf_put_reserved(out, sel[i]->k, sel[i]->klen);
            gw_buf_put_reserved(out, "=", 1);
            gw_buf_put_reserved(out, sel[i]->v, sel[i]->vlen);
        }
        gw_buf_put_end(out); /* always a C string */
    }
    free(sel);
    return rc;
}

/* ------------------------------------------------------------------ */
/* JSON */

static gw_json_t *host_json_parse(const char *text, size_t len)
{
    if (text == NULL || len == 0 || len > GW_JSON_MAX) return NULL;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (j == NULL) return NULL;
    /* the whole text must be one value: trailing garbage is refused */
    const char *stop = text + len;
    while (end && end < stop && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
        end++;
    if (end != stop) {
        cJSON_Delete(j);
        return NULL;
    }
    return (gw_json_t *)j;
}

static void host_json_free(gw_json_t *j)
{
    cJSON_Delete((cJSON *)j);
}

static gw_json_t *host_json_get(const gw_json_t *obj, const char *key)
{
    const cJSON *o = (const cJSON *)obj;
    if (!cJSON_IsObject(o) || key == NULL) return NULL;
    return (gw_json_t *)cJSON_GetObjectItemCaseSensitive(o, key);
}

static const char *host_json_string(const gw_json_t *j)
{
    const cJSON *v = (const cJSON *)j;
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static gw_err_t host_json_int(const gw_json_t *j, int64_t *out)
{
    const cJSON *v = (const cJSON *)j;
    if (!cJSON_IsNumber(v) || out == NULL) return GW_EINVAL;
    double d = v->valuedouble;
    /* exactly representable integers only (cJSON holds numbers as double) */
    if (!(d >= -9007199254740992.0 && d <= 9007199254740992.0)) return GW_EINVAL;
    int64_t i = (int64_t)d;
    if ((double)i != d) return GW_EINVAL;
    *out = i;
    return GW_OK;
}

static gw_err_t host_json_quote(gw_buf_t *out, const char *s, size_t len)
{
    if (out == NULL || (s == NULL && len != 0)) return GW_EINVAL;
    size_t len0 = out->len;
    gw_err_t rc = gw_buf_append(out, "\"", 1);
    size_t run = 0; /* start of the pending run of bytes copied as they are */
    for (size_t i = 0; rc == GW_OK && i <= len; i++) {
        unsigned char c = i < len ? (unsigned char)s[i] : 0;
        const char *esc = NULL;
        char u[8];
        if (i < len) {
            switch (c) {
            case '"': esc = "\\\""; break;
            case '\\': esc = "\\\\"; break;
            case '\b': esc = "\\b"; break;
            case '\f': esc = "\\f"; break;
            case '\n': esc = "\\n"; break;
            case '\r': esc = "\\r"; break;
            case '\t': esc = "\\t"; break;
            default:
                if (c < 0x20) {
                    snprintf(u, sizeof(u), "\\u%04x", c);
                    esc = u;
                }
            }
            if (esc == NULL) continue;
        }
        if (i > run) rc = gw_buf_append(out, s + run, i - run);
        if (rc == GW_OK && esc) rc = gw_buf_appends(out, esc);
        run = i + 1;
    }
    if (rc == GW_OK) rc = gw_buf_append(out, "\"", 1);
    if (rc != GW_OK && out->data) {
        out->len = len0;
        out->data[len0] = '\0';
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* headers */

static gw_str_t host_header_get(gw_str_t headers, const char *name)
{
    if (headers.ptr == NULL || name == NULL) return (gw_str_t){ NULL, 0 };
    size_t nlen = strlen(name);
    const char *p = headers.ptr, *end = headers.ptr + headers.len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = (size_t)((nl ? nl : end) - p);
        if (len > 0 && p[len - 1] == '\r') len--;
        const char *colon = memchr(p, ':', len);
        if (colon && (size_t)(colon - p) == nlen && strncasecmp(p, name, nlen) == 0) {
            const char *v = colon + 1, *ve = p + len;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            return (gw_str_t){ v, (size_t)(ve - v) };
        }
        p = nl ? nl + 1 : end;
    }
    return (gw_str_t){ NULL, 0 };
}

/* ------------------------------------------------------------------ */
/* XML documents (host API 1.2): xmldsig.c, plus the kv list wrapper */

static gw_err_t xml_kv_add(void *udata, const char *key, size_t klen, const char *val, size_t vlen)
{
    return host_kv_add(udata, key, klen, val, vlen);
}

static gw_err_t host_xml_kv(const char *doc, size_t len, const char *path, gw_kv_t *kv)
{
    if (kv == NULL) return GW_EINVAL;
    size_t n0 = kv->n;
    gw_err_t rc = gw_xml_leaves(doc, len, path, xml_kv_add, kv);
    if (rc != GW_OK) kv_truncate(kv, n0);
    return rc;
}

/* ------------------------------------------------------------------ */
/* the table */

static const gw_host_api_t host_api = {
    .version = GW_CHANNEL_ABI_VERSION,
    .struct_size = sizeof(gw_host_api_t),

    .log = host_log,
    .now_ms = gw_now_ms,
    .nonce = gw_nonce,

    .buf_append = gw_buf_append,
    .buf_appendf = gw_buf_appendf,
    .buf_reset = gw_buf_reset,
    .buf_init = gw_buf_init,
    .buf_free = gw_buf_free,

    .md5 = gw_md5,
    .sha1 = gw_sha1,
    .sha256 = gw_sha256,
    .hmac_sha256 = gw_hmac_sha256,
    .hex_encode = gw_hex_encode,
    .base64_encode = gw_base64_encode,
    .base64_decode = gw_base64_decode,
    .url_encode = gw_url_encode,
    .url_decode = gw_url_decode,

    .rsa_private = host_rsa_private,
    .rsa_public = host_rsa_public,
    .rsa_sign = gw_rsa_sign,
    .rsa_verify = gw_rsa_verify,
    .x509_serial = gw_x509_serial,
    .aes256gcm_encrypt = gw_aes256gcm_encrypt,
    .aes256gcm_decrypt = gw_aes256gcm_decrypt,

    .kv_new = host_kv_new,
    .kv_free = host_kv_free,
    .kv_add = host_kv_add,
    .kv_addf = host_kv_addf,
    .kv_get = host_kv_get,
    .kv_count = host_kv_count,
    .kv_key_at = host_kv_key_at,
    .kv_value_at = host_kv_value_at,
    .kv_parse_xml = host_kv_parse_xml,
    .kv_to_xml = host_kv_to_xml,
    .kv_parse_form = host_kv_parse_form,
    .kv_to_form = host_kv_to_form,
    .kv_sign_string = host_kv_sign_string,

    .json_parse = host_json_parse,
    .json_free = host_json_free,
    .json_get = host_json_get,
    .json_string = host_json_string,
    .json_int = host_json_int,
    .json_quote = host_json_quote,

    .header_get = host_header_get,

    /* added in 1.2 */
    .xml_escape = gw_xml_escape,
    .xml_get = gw_xml_get,
    .xml_kv = host_xml_kv,
    .xmldsig_sign = gw_xmldsig_sign,
    .xmldsig_verify = gw_xmldsig_verify,
};

const gw_host_api_t *gw_host_api(void)
{
    return &host_api;
}
