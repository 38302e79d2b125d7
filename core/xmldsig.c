/*
 * xmldsig.c — structured XML documents and the enveloped XML-DSig profile
 * of host API 1.2 (see xmldsig.h for the contract).
 *
 * libxml2 does the parsing and the canonicalisation (xmlC14NExecute with a
 * visibility callback: "the document without the Signature subtree" for
 * the reference digest, "only the SignedInfo subtree" for the signature),
 * which is exactly what xmlsec1 does, so the two interoperate byte for byte.
 * mbedTLS (crypto.c) does the hashing and RSA.
 *
 * Reentrancy: a call owns its parser context and document; libxml2's error
 * handlers are per thread and are replaced by silent ones for the duration
 * of a call (restored afterwards).  xmlInitParser runs once.
 */
#include "xmldsig.h"
#include "crypto.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <strings.h>

#include <libxml/c14n.h>
#include <libxml/parser.h>
#include <libxml/parserInternals.h>
#include <libxml/tree.h>
#include <libxml/xmlIO.h>
#include <libxml/xmlerror.h>

#define C14N_MAX (4u * GW_XML_MAX) /* canonical form: <a/> grows to <a></a> */
#define SIG_B64_MAX 4096u          /* RSA-16384 */

/* ------------------------------------------------------------------ */
/* libxml2 set-up and quiet error reporting */

static pthread_once_t xml_once = PTHREAD_ONCE_INIT;

static void xml_init_once(void)
{
    xmlInitParser();
}

static void quiet_structured(void *u, xmlErrorPtr e)
{
    (void)u;
    (void)e;
}

static void quiet_generic(void *u, const char *msg, ...)
{
    (void)u;
    (void)msg;
}

typedef struct {
    xmlStructuredErrorFunc sfunc;
    void *sctx;
    xmlGenericErrorFunc gfunc;
    void *gctx;
} quiet_t;

static void quiet_begin(quiet_t *q)
{
    pthread_once(&xml_once, xml_init_once);
    q->sfunc = xmlStructuredError;
    q->sctx = xmlStructuredErrorContext;
    q->gfunc = xmlGenericError;
    q->gctx = xmlGenericErrorContext;
    xmlSetStructuredErrorFunc(NULL, quiet_structured);
    xmlSetGenericErrorFunc(NULL, quiet_generic);
}

static void quiet_end(const quiet_t *q)
{
    xmlSetStructuredErrorFunc(q->sctx, q->sfunc);
    xmlSetGenericErrorFunc(q->gctx, q->gfunc);
}

/* ------------------------------------------------------------------ */
/* the one way documents are parsed */

/* SAX hook: a DOCTYPE stops the parse before its internal subset is read,
 * so no entity is ever declared (no XXE, no "billion laughs"). */
static void on_doctype(void *userdata, const xmlChar *name, const xmlChar *ext_id,
                       const xmlChar *sys_id)
{
    xmlParserCtxtPtr ctxt = userdata;
    (void)name;
    (void)ext_id;
    (void)sys_id;
    *(int *)ctxt->_private = 1;
    xmlStopParser(ctxt);
}

/* Every node of the tree is an element, text or CDATA; the document node
 * has the root element as its only child. */
static int tree_ok(xmlDocPtr doc)
{
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (root == NULL) return 0;
    for (xmlNodePtr n = doc->children; n != NULL; n = n->next)
        if (n != root) return 0;
    xmlNodePtr n = root;
    while (n != NULL) {
        if (n->type != XML_ELEMENT_NODE && n->type != XML_TEXT_NODE &&
            n->type != XML_CDATA_SECTION_NODE)
            return 0;
        if (n->type == XML_ELEMENT_NODE && n->children != NULL) {
            n = n->children;
            continue;
        }
        while (n != NULL && n != root && n->next == NULL) n = n->parent;
        if (n == NULL || n == root) break;
        n = n->next;
    }
    return 1;
}

static gw_err_t xparse(const char *text, size_t len, xmlDocPtr *out)
{
    *out = NULL;
    if (text == NULL) return GW_EINVAL;
    if (len > GW_XML_MAX) return GW_ETOOBIG;
    /* a NUL byte: not UTF-8 text (UTF-16/32 would be auto-detected) */
    if (len == 0 || memchr(text, '\0', len) != NULL) return GW_EPARSE;

    int saw_dtd = 0;
    gw_err_t rc = GW_EPARSE;
    xmlParserCtxtPtr ctxt = xmlCreateMemoryParserCtxt(text, (int)len);
    if (ctxt == NULL) return GW_ENOMEM;
    /* no NOENT (no substitution), no DTDLOAD/DTDATTR/DTDVALID, no XInclude,
     * no HUGE (libxml2's depth and size limits stay), no network */
    xmlCtxtUseOptions(ctxt, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    ctxt->sax->internalSubset = on_doctype;
    ctxt->sax->externalSubset = NULL;
    ctxt->_private = &saw_dtd;
    xmlParseDocument(ctxt);
    xmlDocPtr doc = ctxt->myDoc;
    ctxt->myDoc = NULL;
    if (saw_dtd || !ctxt->wellFormed || !ctxt->nsWellFormed || doc == NULL ||
        doc->intSubset != NULL || doc->extSubset != NULL)
        goto out;
    if (doc->encoding != NULL && strcasecmp((const char *)doc->encoding, "UTF-8") != 0) goto out;
    if (!tree_ok(doc)) goto out;
    *out = doc;
    doc = NULL;
    rc = GW_OK;
out:
    if (doc) xmlFreeDoc(doc);
    xmlFreeParserCtxt(ctxt);
    return rc;
}

/* ------------------------------------------------------------------ */
/* small tree helpers */

static int is_blank(const xmlChar *s)
{
    for (; s && *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') return 0;
    return 1;
}

static int has_element_child(xmlNodePtr n)
{
    for (xmlNodePtr c = n->children; c != NULL; c = c->next)
        if (c->type == XML_ELEMENT_NODE) return 1;
    return 0;
}

/* the text of a leaf: text and CDATA children; GW_EPARSE on an element child */
static gw_err_t leaf_text(xmlNodePtr n, gw_buf_t *out)
{
    gw_err_t rc = GW_OK;
    for (xmlNodePtr c = n->children; rc == GW_OK && c != NULL; c = c->next) {
        if (c->type != XML_TEXT_NODE && c->type != XML_CDATA_SECTION_NODE) return GW_EPARSE;
        if (c->content) rc = gw_buf_appends(out, (const char *)c->content);
    }
    if (rc == GW_OK && out->data == NULL) rc = gw_buf_append(out, "", 0);
    return rc;
}

static int in_subtree(xmlNodePtr n, xmlNodePtr top)
{
    for (; n != NULL; n = n->parent)
        if (n == top) return 1;
    return 0;
}

/* The element at a '/'-separated path of local names (no namespace). */
static gw_err_t find_path(xmlDocPtr doc, const char *path, xmlNodePtr *out)
{
    *out = NULL;
    if (path == NULL || path[0] == '\0') return GW_EINVAL;
    xmlNodePtr cur = NULL;
    const char *p = path;
    while (1) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 0) return GW_EINVAL;
        xmlNodePtr hit = NULL;
        int count = 0;
        xmlNodePtr first = cur ? cur->children : doc->children;
        for (xmlNodePtr c = first; c != NULL; c = c->next) {
            if (c->type != XML_ELEMENT_NODE || c->ns != NULL) continue;
            if (strlen((const char *)c->name) == n && memcmp(c->name, p, n) == 0) {
                hit = c;
                count++;
            }
        }
        if (count == 0) return GW_ENOENT;
        if (count > 1) return GW_EPARSE; /* ambiguous: which one was meant? */
        cur = hit;
        if (slash == NULL) break;
        p = slash + 1;
    }
    *out = cur;
    return GW_OK;
}

/* ------------------------------------------------------------------ */
/* public: escaping, reading */

/* Length of the valid UTF-8 sequence at s (n bytes left) that XML 1.0 may
 * carry, 0 when invalid or not allowed. */
static size_t xml_char_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    uint32_t cp;
    size_t len;
    if (c < 0x80) {
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') return 0;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef) len = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07;
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff))) return 0;
    if (cp >= 0xd800 && cp <= 0xdfff) return 0;
    if (cp == 0xfffe || cp == 0xffff) return 0;
    return len;
}

gw_err_t gw_xml_escape(const char *s, size_t n, gw_buf_t *out)
{
    if (out == NULL || (s == NULL && n != 0)) return GW_EINVAL;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t l = xml_char_len(p + i, n - i);
        if (l == 0) return GW_EINVAL;
        i += l;
    }
    size_t len0 = out->len;
    gw_err_t rc = GW_OK;
    size_t run = 0;
    for (size_t i = 0; rc == GW_OK && i <= n; i++) {
        const char *esc = NULL;
        if (i < n) {
            switch (s[i]) {
            case '&': esc = "&amp;"; break;
            case '<': esc = "&lt;"; break;
            case '>': esc = "&gt;"; break;
            case '"': esc = "&quot;"; break;
            case '\'': esc = "&apos;"; break;
            case '\r': esc = "&#13;"; break;
            default: continue;
            }
        }
        if (i > run) rc = gw_buf_append(out, s + run, i - run);
        if (rc == GW_OK && esc) rc = gw_buf_appends(out, esc);
        run = i + 1;
    }
    if (rc == GW_OK && out->data == NULL) rc = gw_buf_append(out, "", 0);
    if (rc != GW_OK && out->data) {
        out->len = len0;
        out->data[len0] = '\0';
    }
    return rc;
}

gw_err_t gw_xml_get(const char *text, size_t len, const char *path, gw_buf_t *out)
{
    if (out == NULL || path == NULL) return GW_EINVAL;
    quiet_t q;
    quiet_begin(&q);
    xmlDocPtr doc;
    xmlNodePtr n;
    size_t len0 = out->len;
    gw_err_t rc = xparse(text, len, &doc);
    if (rc == GW_OK) {
        rc = find_path(doc, path, &n);
        if (rc == GW_OK) rc = leaf_text(n, out);
        if (rc != GW_OK && out->data) {
            out->len = len0;
            out->data[len0] = '\0';
        }
        xmlFreeDoc(doc);
    }
    quiet_end(&q);
    return rc;
}

typedef struct {
    gw_xml_leaf_cb cb;
    void *udata;
    gw_buf_t key;
    gw_buf_t val;
} leaves_t;

static gw_err_t leaves_walk(leaves_t *w, xmlNodePtr n)
{
    gw_err_t rc = GW_OK;
    size_t base = w->key.len;
    for (xmlNodePtr c = n->children; rc == GW_OK && c != NULL; c = c->next) {
        if (c->type != XML_ELEMENT_NODE) {
            /* text beside elements: only whitespace (no mixed content) */
            if (!is_blank(c->content) || c->type == XML_CDATA_SECTION_NODE) rc = GW_EPARSE;
            continue;
        }
        if (c->ns != NULL) return GW_EPARSE;
        w->key.len = base;
        if (w->key.data) w->key.data[base] = '\0';
        if (base > 0) rc = gw_buf_append(&w->key, "/", 1);
        if (rc == GW_OK) rc = gw_buf_appends(&w->key, (const char *)c->name);
        if (rc != GW_OK) break;
        if (has_element_child(c)) {
            rc = leaves_walk(w, c);
        } else {
            gw_buf_reset(&w->val);
            rc = leaf_text(c, &w->val);
            if (rc == GW_OK)
                rc = w->cb(w->udata, w->key.data, w->key.len, w->val.data, w->val.len);
            if (rc == GW_EEXIST) rc = GW_EPARSE;
        }
    }
    w->key.len = base;
    if (w->key.data) w->key.data[base] = '\0';
    return rc;
}

gw_err_t gw_xml_leaves(const char *text, size_t len, const char *path, gw_xml_leaf_cb cb,
                       void *udata)
{
    if (cb == NULL || path == NULL) return GW_EINVAL;
    quiet_t q;
    quiet_begin(&q);
    xmlDocPtr doc;
    xmlNodePtr n;
    gw_err_t rc = xparse(text, len, &doc);
    if (rc == GW_OK) {
        rc = find_path(doc, path, &n);
        if (rc == GW_OK) {
            leaves_t w = { .cb = cb, .udata = udata };
            gw_buf_init(&w.key, 64 * 1024);
            gw_buf_init(&w.val, GW_XML_MAX);
            rc = leaves_walk(&w, n);
            gw_buf_free(&w.key);
            gw_buf_free(&w.val);
        }
        xmlFreeDoc(doc);
    }
    quiet_end(&q);
    return rc;
}

/* ------------------------------------------------------------------ */
/* canonicalisation */

typedef struct {
    xmlNodePtr top;
    int only; /* 1: only the subtree of top; 0: everything but it */
} vis_t;

/* libxml2 asks about namespace and attribute nodes with the element that
 * carries them as parent. */
static int vis_cb(void *udata, xmlNodePtr node, xmlNodePtr parent)
{
    const vis_t *v = udata;
    xmlNodePtr at = node;
    if (node == NULL || node->type == XML_NAMESPACE_DECL || node->type == XML_ATTRIBUTE_NODE)
        at = parent;
    int in = in_subtree(at, v->top);
    return v->only ? in : !in;
}

static gw_err_t c14n(xmlDocPtr doc, xmlNodePtr top, int only, gw_buf_t *out)
{
    vis_t v = { top, only };
    xmlOutputBufferPtr ob = xmlAllocOutputBuffer(NULL);
    if (ob == NULL) return GW_ENOMEM;
    gw_err_t rc = GW_EPARSE;
    int r = xmlC14NExecute(doc, vis_cb, &v, XML_C14N_1_0, NULL, 0, ob);
    if (r >= 0) {
        const xmlChar *p = xmlOutputBufferGetContent(ob);
        size_t n = xmlOutputBufferGetSize(ob);
        rc = gw_buf_append(out, p ? (const char *)p : "", p ? n : 0);
        if (rc == GW_OK && out->data == NULL) rc = gw_buf_append(out, "", 0);
    }
    xmlOutputBufferClose(ob);
    return rc;
}

/* ------------------------------------------------------------------ */
/* the profile */

static int is_dsig_ns(xmlNodePtr n)
{
    return n->ns != NULL && n->ns->href != NULL && strcmp((const char *)n->ns->href, GW_DSIG_NS) == 0;
}

static int is_dsig(xmlNodePtr n, const char *name)
{
    return n != NULL && n->type == XML_ELEMENT_NODE && is_dsig_ns(n) &&
           strcmp((const char *)n->name, name) == 0;
}

typedef struct {
    gw_buf_t *diag;
    int failed;
} why_t;

static void why(why_t *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void why(why_t *w, const char *fmt, ...)
{
    if (w->failed) return; /* the first reason counts */
    w->failed = 1;
    if (w->diag == NULL) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    gw_buf_appends(w->diag, "xmldsig: ");
    gw_buf_appends(w->diag, line);
}

/* The element children of n, which must be exactly the dsig elements named
 * in names (a trailing "?" marks an optional one), in that order, with only
 * whitespace between them. */
static int children_are(why_t *w, xmlNodePtr n, const char *const *names, xmlNodePtr *out)
{
    size_t k = 0;
    for (xmlNodePtr c = n->children; c != NULL; c = c->next) {
        if (c->type != XML_ELEMENT_NODE) {
            if (c->type == XML_CDATA_SECTION_NODE || !is_blank(c->content)) {
                why(w, "text inside <%s>", (const char *)n->name);
                return 0;
            }
            continue;
        }
        for (;;) {
            if (names[k] == NULL) {
                why(w, "unexpected <%s> inside <%s>", (const char *)c->name, (const char *)n->name);
                return 0;
            }
            size_t nl = strlen(names[k]);
            int opt = nl > 0 && names[k][nl - 1] == '?';
            char want[64];
            snprintf(want, sizeof(want), "%.*s", (int)(opt ? nl - 1 : nl), names[k]);
            if (is_dsig(c, want)) {
                out[k++] = c;
                break;
            }
            if (!opt) {
                why(w, "<%s> where <%s> was expected inside <%s>", (const char *)c->name, want,
                    (const char *)n->name);
                return 0;
            }
            out[k++] = NULL;
        }
    }
    for (; names[k] != NULL; k++) {
        size_t nl = strlen(names[k]);
        if (nl == 0 || names[k][nl - 1] != '?') {
            why(w, "<%s> lacks <%s>", (const char *)n->name, names[k]);
            return 0;
        }
        out[k] = NULL;
    }
    return 1;
}

/* n's attributes are a subset of allowed (no namespace); required ones are
 * present. */
static int attrs_are(why_t *w, xmlNodePtr n, const char *const *allowed, const char *required)
{
    for (xmlAttrPtr a = n->properties; a != NULL; a = a->next) {
        int ok = 0;
        for (size_t i = 0; a->ns == NULL && allowed[i] != NULL; i++)
            if (strcmp((const char *)a->name, allowed[i]) == 0) ok = 1;
        if (!ok) {
            why(w, "attribute %s is not allowed on <%s>", (const char *)a->name, (const char *)n->name);
            return 0;
        }
    }
    if (required != NULL && !xmlHasNsProp(n, (const xmlChar *)required, NULL)) {
        why(w, "<%s> lacks the attribute %s", (const char *)n->name, required);
        return 0;
    }
    return 1;
}

/* An empty element (only whitespace) whose one attribute Algorithm is want. */
static int algorithm_is(why_t *w, xmlNodePtr n, const char *want)
{
    static const char *const alg[] = { "Algorithm", NULL };
    if (!attrs_are(w, n, alg, "Algorithm")) return 0;
    for (xmlNodePtr c = n->children; c != NULL; c = c->next) {
        if (c->type == XML_ELEMENT_NODE || c->type == XML_CDATA_SECTION_NODE || !is_blank(c->content)) {
            why(w, "<%s> has content (parameters are not part of the profile)", (const char *)n->name);
            return 0;
        }
    }
    xmlChar *v = xmlGetNoNsProp(n, (const xmlChar *)"Algorithm");
    int ok = v != NULL && strcmp((const char *)v, want) == 0;
    if (!ok) why(w, "%s Algorithm \"%.200s\" is not %s", (const char *)n->name, v ? (const char *)v : "", want);
    xmlFree(v);
    return ok;
}

typedef struct {
    xmlNodePtr sig, signed_info, digest_value, signature_value;
} prof_t;

/* The structural checks: one Signature, the last element child of the
 * root, and nothing in the dsig namespace outside it. */
static int profile(why_t *w, xmlDocPtr doc, prof_t *p)
{
    static const char *const id_only[] = { "Id", NULL };
    static const char *const ref_attrs[] = { "URI", "Id", NULL };
    static const char *const none[] = { NULL };
    static const char *const sig_kids[] = { "SignedInfo", "SignatureValue", "KeyInfo?", NULL };
    static const char *const si_kids[] = { "CanonicalizationMethod", "SignatureMethod", "Reference", NULL };
    static const char *const ref_kids[] = { "Transforms", "DigestMethod", "DigestValue", NULL };
    static const char *const tr_kids[] = { "Transform", NULL };
    xmlNodePtr k[4];
    memset(p, 0, sizeof(*p));
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (is_dsig_ns(root)) {
        why(w, "the root element is in the dsig namespace");
        return 0;
    }
    xmlNodePtr last = NULL;
    for (xmlNodePtr c = root->children; c != NULL; c = c->next)
        if (c->type == XML_ELEMENT_NODE) last = c;
    if (!is_dsig(last, "Signature")) {
        why(w, "the last element child of <%s> is not a dsig <Signature>", (const char *)root->name);
        return 0;
    }
    for (xmlNodePtr c = last->next; c != NULL; c = c->next) {
        if (c->type == XML_CDATA_SECTION_NODE || !is_blank(c->content)) {
            why(w, "text after <Signature>");
            return 0;
        }
    }
    p->sig = last;
    /* every element: no second Signature (in any namespace), no dsig
     * element or attribute outside the Signature */
    xmlNodePtr n = root;
    while (n != NULL) {
        if (n->type == XML_ELEMENT_NODE) {
            int inside = in_subtree(n, p->sig);
            if (n != p->sig && strcmp((const char *)n->name, "Signature") == 0) {
                why(w, "more than one <Signature>");
                return 0;
            }
            if (!inside && is_dsig_ns(n)) {
                why(w, "dsig element <%s> outside the Signature", (const char *)n->name);
                return 0;
            }
            for (xmlAttrPtr a = n->properties; !inside && a != NULL; a = a->next) {
                if (a->ns && a->ns->href && strcmp((const char *)a->ns->href, GW_DSIG_NS) == 0) {
                    why(w, "dsig attribute outside the Signature");
                    return 0;
                }
            }
            if (n->children != NULL) {
                n = n->children;
                continue;
            }
        }
        while (n != NULL && n != root && n->next == NULL) n = n->parent;
        if (n == NULL || n == root) break;
        n = n->next;
    }
    if (!attrs_are(w, p->sig, id_only, NULL) || !children_are(w, p->sig, sig_kids, k)) return 0;
    p->signed_info = k[0];
    p->signature_value = k[1];
    /* k[2]: KeyInfo, never used (the key is configured, not taken from the message) */
    if (!attrs_are(w, p->signature_value, id_only, NULL)) return 0;
    if (has_element_child(p->signature_value)) {
        why(w, "<SignatureValue> has element children");
        return 0;
    }
    if (!attrs_are(w, p->signed_info, id_only, NULL) || !children_are(w, p->signed_info, si_kids, k))
        return 0;
    xmlNodePtr ref = k[2];
    if (!algorithm_is(w, k[0], GW_DSIG_C14N) || !algorithm_is(w, k[1], GW_DSIG_RSA_SHA256)) return 0;
    if (!attrs_are(w, ref, ref_attrs, "URI")) return 0;
    xmlChar *uri = xmlGetNoNsProp(ref, (const xmlChar *)"URI");
    int uri_ok = uri != NULL && uri[0] == '\0';
    if (!uri_ok) why(w, "Reference URI \"%.200s\" is not \"\" (the whole document)", uri ? (const char *)uri : "");
    xmlFree(uri);
    if (!uri_ok || !children_are(w, ref, ref_kids, k)) return 0;
    xmlNodePtr transforms = k[0], digest_method = k[1];
    p->digest_value = k[2];
    if (!attrs_are(w, transforms, none, NULL) || !children_are(w, transforms, tr_kids, k)) return 0;
    if (!algorithm_is(w, k[0], GW_DSIG_ENVELOPED) || !algorithm_is(w, digest_method, GW_DSIG_SHA1)) return 0;
    if (!attrs_are(w, p->digest_value, none, NULL)) return 0;
    if (has_element_child(p->digest_value)) {
        why(w, "<DigestValue> has element children");
        return 0;
    }
    return 1;
}

static int ct_equal(const uint8_t *a, const uint8_t *b, size_t n)
{
    unsigned d = 0;
    for (size_t i = 0; i < n; i++) d |= (unsigned)(a[i] ^ b[i]);
    return d == 0;
}

/* The verification on a parsed document. */
static gw_err_t verify_doc(xmlDocPtr doc, gw_rsa_key_t *key, why_t *w)
{
    prof_t p;
    gw_buf_t canon, dv, dvbin, sv;
    gw_err_t rc = GW_ESIGN;
    gw_buf_init(&canon, C14N_MAX);
    gw_buf_init(&dv, 4096);
    gw_buf_init(&dvbin, 4096);
    gw_buf_init(&sv, 4 * SIG_B64_MAX);
    if (!profile(w, doc, &p)) goto out;

    uint8_t md[20];
    if (leaf_text(p.digest_value, &dv) != GW_OK || gw_base64_decode(dv.data, dv.len, &dvbin) != GW_OK ||
        dvbin.len != sizeof(md)) {
        why(w, "DigestValue is not the Base64 of a SHA-1 digest");
        goto out;
    }
    if (c14n(doc, p.sig, 0, &canon) != GW_OK) {
        why(w, "the document cannot be canonicalised");
        goto out;
    }
    gw_sha1(canon.data, canon.len, md);
    if (!ct_equal(md, (const uint8_t *)dvbin.data, sizeof(md))) {
        gw_buf_t mine;
        gw_buf_init(&mine, 64);
        gw_base64_encode(md, sizeof(md), &mine);
        why(w, "digest mismatch: the signed part was changed (DigestValue %.40s, computed %s over %zu "
               "canonical bytes)", dv.data, mine.data ? mine.data : "", canon.len);
        gw_buf_free(&mine);
        goto out;
    }
    size_t doc_bytes = canon.len;
    gw_buf_reset(&canon);
    if (c14n(doc, p.signed_info, 1, &canon) != GW_OK) {
        why(w, "SignedInfo cannot be canonicalised");
        goto out;
    }
    if (leaf_text(p.signature_value, &sv) != GW_OK) {
        why(w, "SignatureValue is too large");
        goto out;
    }
    if (key == NULL) {
        why(w, "no key to verify with");
        goto out;
    }
    if (gw_rsa_verify(key, GW_HASH_SHA256, canon.data, canon.len, sv.data, sv.len) != GW_OK) {
        why(w, "SignatureValue does not verify over the canonical SignedInfo (%zu bytes) with this key",
            canon.len);
        goto out;
    }
    if (w->diag) {
        gw_buf_appendf(w->diag,
                       "xmldsig: verified: rsa-sha256 over C14N(SignedInfo) (%zu bytes); Reference URI=\"\" "
                       "enveloped sha1 %s over %zu canonical bytes",
                       canon.len, dv.data, doc_bytes);
    }
    rc = GW_OK;
out:
    gw_buf_free(&canon);
    gw_buf_free(&dv);
    gw_buf_free(&dvbin);
    gw_buf_free(&sv);
    return rc;
}

gw_err_t gw_xmldsig_verify(const char *text, size_t len, gw_rsa_key_t *key, gw_buf_t *diag)
{
    why_t w = { diag, 0 };
    quiet_t q;
    quiet_begin(&q);
    xmlDocPtr doc;
    gw_err_t rc = xparse(text, len, &doc);
    if (rc != GW_OK) {
        why(&w, "the document is not acceptable XML (%s)", gw_err_name(rc));
        rc = GW_ESIGN;
    } else {
        rc = verify_doc(doc, key, &w);
        xmlFreeDoc(doc);
    }
    quiet_end(&q);
    return rc;
}

/* ------------------------------------------------------------------ */
/* signing */

/* Offset of the root's end tag "</name>" at the end of text (only
 * whitespace after it), or -1. */
static long end_tag_at(const char *text, size_t len, const char *name)
{
    size_t e = len;
    while (e > 0 && (text[e - 1] == ' ' || text[e - 1] == '\t' || text[e - 1] == '\r' || text[e - 1] == '\n'))
        e--;
    if (e < 4 || text[e - 1] != '>') return -1;
    size_t i = e - 1;
    while (i > 0 && !(text[i - 1] == '<' && text[i] == '/')) i--;
    if (i == 0) return -1;
    size_t start = i - 1, nl = strlen(name);
    const char *p = text + i + 1;
    if ((size_t)(text + e - p) < nl + 1 || memcmp(p, name, nl) != 0) return -1;
    p += nl;
    while (p < text + e - 1 && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    if (p != text + e - 1) return -1;
    return (long)start;
}

static gw_err_t sign_doc(const char *text, size_t len, gw_rsa_key_t *key, gw_buf_t *out)
{
    xmlDocPtr doc = NULL, tmpdoc = NULL;
    gw_buf_t canon, head, tmp, sig;
    gw_err_t rc;
    gw_buf_init(&canon, C14N_MAX);
    gw_buf_init(&head, 8192);
    gw_buf_init(&tmp, GW_XML_MAX + 16384);
    gw_buf_init(&sig, SIG_B64_MAX);

    if ((rc = xparse(text, len, &doc)) != GW_OK) goto out;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    /* nothing signature-like in the input */
    for (xmlNodePtr n = root; n != NULL;) {
        if (n->type == XML_ELEMENT_NODE &&
            (is_dsig_ns(n) || strcmp((const char *)n->name, "Signature") == 0)) {
            rc = GW_EINVAL;
            goto out;
        }
        if (n->type == XML_ELEMENT_NODE && n->children != NULL) {
            n = n->children;
            continue;
        }
        while (n != NULL && n != root && n->next == NULL) n = n->parent;
        if (n == NULL || n == root) break;
        n = n->next;
    }
    char qname[256];
    if (root->ns && root->ns->prefix)
        snprintf(qname, sizeof(qname), "%s:%s", (const char *)root->ns->prefix, (const char *)root->name);
    else
        snprintf(qname, sizeof(qname), "%s", (const char *)root->name);
    long at = end_tag_at(text, len, qname);
    if (at < 0) {
        rc = GW_EINVAL; /* <root/>: nowhere to put the Signature */
        goto out;
    }

    /* the reference: the whole document (it has no Signature yet) */
    uint8_t md[20];
    if ((rc = c14n(doc, NULL, 0, &canon)) != GW_OK) goto out;
    gw_sha1(canon.data, canon.len, md);
    rc = gw_buf_appends(&head, "<Signature xmlns=\"" GW_DSIG_NS "\"><SignedInfo>"
                               "<CanonicalizationMethod Algorithm=\"" GW_DSIG_C14N "\"/>"
                               "<SignatureMethod Algorithm=\"" GW_DSIG_RSA_SHA256 "\"/>"
                               "<Reference URI=\"\"><Transforms>"
                               "<Transform Algorithm=\"" GW_DSIG_ENVELOPED "\"/></Transforms>"
                               "<DigestMethod Algorithm=\"" GW_DSIG_SHA1 "\"/><DigestValue>");
    if (rc == GW_OK) rc = gw_base64_encode(md, sizeof(md), &head);
    if (rc == GW_OK)
        rc = gw_buf_appends(&head, "</DigestValue></Reference></SignedInfo><SignatureValue>");
    if (rc != GW_OK) goto out;
    static const char tail[] = "</SignatureValue></Signature>";

    /* SignedInfo is canonicalised in its place: inclusive C14N takes the
     * namespaces in scope there */
    rc = gw_buf_append(&tmp, text, (size_t)at);
    if (rc == GW_OK) rc = gw_buf_append(&tmp, head.data, head.len);
    if (rc == GW_OK) rc = gw_buf_appends(&tmp, tail);
    if (rc == GW_OK) rc = gw_buf_append(&tmp, text + at, len - (size_t)at);
    if (rc != GW_OK) goto out;
    if ((rc = xparse(tmp.data, tmp.len, &tmpdoc)) != GW_OK) goto out;
    xmlNodePtr sig_el = xmlDocGetRootElement(tmpdoc)->last;
    while (sig_el && sig_el->type != XML_ELEMENT_NODE) sig_el = sig_el->prev;
    xmlNodePtr si = sig_el ? sig_el->children : NULL;
    if (!is_dsig(sig_el, "Signature") || !is_dsig(si, "SignedInfo")) {
        rc = GW_EINVAL;
        goto out;
    }
    gw_buf_reset(&canon);
    if ((rc = c14n(tmpdoc, si, 1, &canon)) != GW_OK) goto out;
    if ((rc = gw_rsa_sign(key, GW_HASH_SHA256, canon.data, canon.len, &sig)) != GW_OK) goto out;

    size_t len0 = out->len;
    rc = gw_buf_append(out, text, (size_t)at);
    if (rc == GW_OK) rc = gw_buf_append(out, head.data, head.len);
    if (rc == GW_OK) rc = gw_buf_append(out, sig.data, sig.len);
    if (rc == GW_OK) rc = gw_buf_appends(out, tail);
    if (rc == GW_OK) rc = gw_buf_append(out, text + at, len - (size_t)at);
    if (rc == GW_OK) {
        /* what we hand out verifies, or nothing is handed out */
        xmlDocPtr check;
        rc = xparse(out->data + len0, out->len - len0, &check);
        if (rc == GW_OK) {
            why_t w = { NULL, 0 };
            rc = verify_doc(check, key, &w) == GW_OK ? GW_OK : GW_ECRYPTO;
            xmlFreeDoc(check);
        }
    }
    if (rc != GW_OK && out->data) {
        out->len = len0;
        out->data[len0] = '\0';
    }
out:
    if (doc) xmlFreeDoc(doc);
    if (tmpdoc) xmlFreeDoc(tmpdoc);
    gw_buf_free(&canon);
    gw_buf_free(&head);
    gw_buf_free(&tmp);
    gw_buf_free(&sig);
    return rc;
}

gw_err_t gw_xmldsig_sign(const char *text, size_t len, gw_rsa_key_t *key, gw_buf_t *signed_doc)
{
    if (signed_doc == NULL) return GW_EINVAL;
    if (key == NULL) return GW_EKEY;
    quiet_t q;
    quiet_begin(&q);
    gw_err_t rc = sign_doc(text, len, key, signed_doc);
    quiet_end(&q);
    return rc;
}
