/*
 * wechatpay.c — the direct WeChat Pay channel module, API v3.
 *
 * Channel ABI 1.1 (fills the 1.1 policy).
 * Protocol: /work/shared/PROTOCOLS.md §D.3 — JSON over HTTPS, requests
 * signed with the merchant's RSA key (Authorization: WECHATPAY2-SHA256-
 * RSA2048 …), answers and notifications signed by WeChat Pay with a platform
 * certificate or a WeChat Pay public key (chosen by Wechatpay-Serial),
 * notification resources encrypted with AEAD_AES_256_GCM under the
 * merchant's APIv3 key.  Behaviour, settings and the status mapping are
 * documented in docs/channels/wechatpay.md; keep the two in step.
 *
 * The module is a codec: it builds requests and parses/verifies responses and
 * notifications; the core does all I/O.  Everything goes through the host API
 * (no libc allocation of anything handed back, no globals), so every function
 * is reentrant.  The merchant's private key and APIv3 key are never logged
 * and never written into a diagnostic string.
 *
 * Notifications carry the merchant number only inside the encrypted
 * resource, yet the APIv3 key that decrypts it is per merchant.  The module
 * therefore sends notify_url = order.notify_url + "/" + mch_id and reads the
 * merchant number back from the path (POST /notify/wechatpay/<mch_id>).
 */
#include "gw_channel.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#ifndef GW_CHANNEL_NAME
#define GW_CHANNEL_NAME "wechatpay"
#endif

#define WX_VERSION "1.0.0"
#define WX_DEFAULT_BASE "https://api.mch.weixin.qq.com"
#define WX_AUTH_SCHEME "WECHATPAY2-SHA256-RSA2048"
#define WX_USER_AGENT "paygate-wechatpay/" WX_VERSION
#define WX_URL_MAX 1024
#define WX_KEYS_MAX 16
#define WX_SERIAL_MAX 72            /* serials and key ids, NUL included */
#define WX_ID_MAX 64                /* mch_id, out_trade_no … accepted length */
#define WX_NONCE_LEN 32
#define WX_SKEW_DEFAULT_S 300       /* PROTOCOLS.md §D.3: ±5 minutes */
#define WX_SKEW_MAX_S (3650u * 86400u)
#define WX_SIG_MAX 4096u            /* bound of a Base64 RSA signature */
#define WX_SCRATCH_MAX ((2u << 20) + 4096u) /* signing strings: a 1 MiB body and more */
#define WX_APIV3_KEY_LEN 32

/* A platform key: a certificate (serial = its serial number) or a WeChat Pay
 * public key (serial = its PUB_KEY_ID_…). */
typedef struct wx_pkey {
    char serial[WX_SERIAL_MAX];
    gw_rsa_key_t *key; /* owned (cached) by the core */
} wx_pkey_t;

/* Per-channel state, in the core-allocated ctx_size block; read-only after
 * init. */
typedef struct wx_ctx {
    const gw_host_api_t *host;
    char base_url[WX_URL_MAX];
    char request_serial[WX_SERIAL_MAX]; /* sent as Wechatpay-Serial ("" = not sent) */
    uint32_t skew_s;
    size_t nkeys;
    wx_pkey_t keys[WX_KEYS_MAX];
} wx_ctx_t;

/* Per-call view of merchant.extra and merchant.public_key. */
typedef struct wx_mopts {
    char serial_no[WX_SERIAL_MAX];   /* the merchant certificate's serial */
    char pub_serial[WX_SERIAL_MAX];  /* serial of merchant.public_key ("" = none) */
    gw_rsa_key_t *pub;               /* merchant.public_key, parsed */
} wx_mopts_t;

/* Outcome of reading an answer. */
enum { WX_UNTRUSTED = 0, WX_OK = 1, WX_ERROR = 2 };

/* ------------------------------------------------------------------ */
/* small helpers */

static gw_str_t wx_cstr(const char *s)
{
    gw_str_t r = { s, s ? strlen(s) : 0 };
    return r;
}

static int wx_present(gw_str_t s)
{
    return s.ptr != NULL && s.len > 0;
}

static int wx_eq(gw_str_t s, const char *lit)
{
    size_t n = strlen(lit);
    return s.ptr != NULL && s.len == n && memcmp(s.ptr, lit, n) == 0;
}

static int wx_streq(gw_str_t a, gw_str_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static unsigned char wx_upper(unsigned char c)
{
    return (c >= 'a' && c <= 'z') ? (unsigned char)(c - 'a' + 'A') : c;
}

/* Serials compare case-insensitively (hex certificate serials are written
 * either way; PUB_KEY_ID_… is upper case anyway). */
static int wx_serial_eq(gw_str_t a, const char *b)
{
    size_t n = strlen(b);
    if (a.ptr == NULL || a.len != n || n == 0) return 0;
    for (size_t i = 0; i < n; i++)
        if (wx_upper((unsigned char)a.ptr[i]) != wx_upper((unsigned char)b[i])) return 0;
    return 1;
}

static void wx_copy(char *dst, size_t cap, gw_str_t s)
{
    size_t n = s.ptr ? s.len : 0;
    if (cap == 0) return;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(dst, s.ptr, n);
    dst[n] = '\0';
}

static void wx_copyz(char *dst, size_t cap, const char *s)
{
    wx_copy(dst, cap, wx_cstr(s));
}

/* [0-9A-Za-z_-], 1..max: merchant numbers, serials, ids that go into a
 * header or a path unquoted. */
static int wx_token_ok(gw_str_t s, size_t max)
{
    if (!wx_present(s) || s.len > max) return 0;
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' ||
              c == '-'))
            return 0;
    }
    return 1;
}

static void wx_wipe(gw_buf_t *b)
{
    if (b->data && b->cap) explicit_bzero(b->data, b->cap);
}

/* ---- JSON reading (values borrowed from the parsed root) ---- */

static gw_str_t wx_jstr(const gw_host_api_t *h, const gw_json_t *o, const char *key)
{
    const char *s = o ? h->json_string(h->json_get(o, key)) : NULL;
    return wx_cstr(s);
}

static const gw_json_t *wx_jobj(const gw_host_api_t *h, const gw_json_t *o, const char *key)
{
    return o ? h->json_get(o, key) : NULL;
}

/* integer member, -1 when absent or not an integer */
static int64_t wx_jint(const gw_host_api_t *h, const gw_json_t *o, const char *key)
{
    int64_t v;
    const gw_json_t *j = o ? h->json_get(o, key) : NULL;
    if (j == NULL || h->json_int(j, &v) != GW_OK) return -1;
    return v;
}

/* ---- JSON writing ---- */

typedef struct wx_jw {
    const gw_host_api_t *h;
    gw_buf_t *b;
    gw_err_t err;
    int depth;
    int count[8]; /* members written at each depth */
} wx_jw_t;

static void jw_raw(wx_jw_t *w, const char *s, size_t n)
{
    if (w->err == GW_OK) w->err = w->h->buf_append(w->b, s, n);
}

static void jw_key(wx_jw_t *w, const char *key)
{
    if (w->err != GW_OK) return;
    if (w->count[w->depth]++ > 0) jw_raw(w, ",", 1);
    if (w->err == GW_OK) w->err = w->h->json_quote(w->b, key, strlen(key));
    jw_raw(w, ":", 1);
}

static void jw_open(wx_jw_t *w, const char *key)
{
    if (key) jw_key(w, key);
    jw_raw(w, "{", 1);
    if (w->err == GW_OK && w->depth + 1 >= (int)(sizeof(w->count) / sizeof(w->count[0]))) w->err = GW_EINVAL;
    if (w->err == GW_OK) w->count[++w->depth] = 0;
}

static void jw_close(wx_jw_t *w)
{
    jw_raw(w, "}", 1);
    if (w->err == GW_OK) w->depth--;
}

static void jw_str(wx_jw_t *w, const char *key, gw_str_t v)
{
    jw_key(w, key);
    if (w->err == GW_OK) w->err = w->h->json_quote(w->b, v.ptr ? v.ptr : "", v.ptr ? v.len : 0);
}

/* only when present */
static void jw_opt(wx_jw_t *w, const char *key, gw_str_t v)
{
    if (wx_present(v)) jw_str(w, key, v);
}

static void jw_int(wx_jw_t *w, const char *key, int64_t v)
{
    jw_key(w, key);
    if (w->err == GW_OK) w->err = w->h->buf_appendf(w->b, "%" PRId64, v);
}

/* ------------------------------------------------------------------ */
/* keys */

/* Adds a platform key; serial "" means "take it from the certificate". */
static gw_err_t wx_add_key(wx_ctx_t *cx, const gw_host_api_t *h, gw_str_t serial, gw_str_t pem,
                           gw_buf_t *err)
{
    char derived[WX_SERIAL_MAX] = "";
    int is_cert = pem.ptr && memmem(pem.ptr, pem.len, "-----BEGIN CERTIFICATE-----", 27) != NULL;
    wx_pkey_t *k;

    if (cx->nkeys >= WX_KEYS_MAX) {
        h->buf_appendf(err, "wechatpay: at most %d platform_keys", WX_KEYS_MAX);
        return GW_EINVAL;
    }
    if (!wx_present(pem)) {
        h->buf_appendf(err, "wechatpay: platform_keys[%zu].key is empty", cx->nkeys);
        return GW_EINVAL;
    }
    if (is_cert && h->x509_serial(pem.ptr, pem.len, derived, sizeof(derived)) != GW_OK) {
        h->buf_appendf(err, "wechatpay: platform_keys[%zu].key is not a readable certificate", cx->nkeys);
        return GW_EKEY;
    }
    if (!wx_present(serial)) {
        if (!is_cert) {
            h->buf_appendf(err, "wechatpay: platform_keys[%zu] is a public key: give its \"serial\" (PUB_KEY_ID_…)",
                           cx->nkeys);
            return GW_EINVAL;
        }
        serial = wx_cstr(derived);
    } else if (!wx_token_ok(serial, WX_SERIAL_MAX - 1)) {
        h->buf_appendf(err, "wechatpay: platform_keys[%zu].serial must be [0-9A-Za-z_-]{1,%d}", cx->nkeys,
                       WX_SERIAL_MAX - 1);
        return GW_EINVAL;
    } else if (is_cert && !wx_serial_eq(serial, derived)) {
        h->buf_appendf(err, "wechatpay: platform_keys[%zu].serial %.*s is not the certificate's serial %s",
                       cx->nkeys, (int)serial.len, serial.ptr, derived);
        return GW_EINVAL;
    }
    for (size_t i = 0; i < cx->nkeys; i++) {
        if (wx_serial_eq(serial, cx->keys[i].serial)) {
            h->buf_appendf(err, "wechatpay: platform key serial %.*s appears twice", (int)serial.len, serial.ptr);
            return GW_EINVAL;
        }
    }
    k = &cx->keys[cx->nkeys];
    k->key = h->rsa_public(pem.ptr, pem.len);
    if (k->key == NULL) {
        h->buf_appendf(err, "wechatpay: platform_keys[%zu].key is not an RSA public key or certificate",
                       cx->nkeys);
        return GW_EKEY;
    }
    wx_copy(k->serial, sizeof(k->serial), serial);
    cx->nkeys++;
    return GW_OK;
}

/* merchant.extra {"serial_no","public_key_id"} and merchant.public_key.
 * GW_EINVAL on malformed extra; a missing serial_no is left "" (signing
 * checks it). */
static gw_err_t wx_merchant_opts(const gw_host_api_t *h, const gw_chan_merchant_t *m, wx_mopts_t *o)
{
    gw_json_t *j = NULL;
    gw_str_t serial = { NULL, 0 }, pkid = { NULL, 0 };
    gw_err_t rc = GW_OK;

    memset(o, 0, sizeof(*o));
    if (m == NULL) return GW_EINVAL;
    if (wx_present(m->extra)) {
        const gw_json_t *v;
        j = h->json_parse(m->extra.ptr, m->extra.len);
        if (j == NULL) return GW_EINVAL;
        if ((v = h->json_get(j, "serial_no")) != NULL) {
            serial = wx_cstr(h->json_string(v));
            if (!wx_token_ok(serial, WX_SERIAL_MAX - 1)) rc = GW_EINVAL;
        }
        if (rc == GW_OK && (v = h->json_get(j, "public_key_id")) != NULL) {
            pkid = wx_cstr(h->json_string(v));
            if (!wx_token_ok(pkid, WX_SERIAL_MAX - 1)) rc = GW_EINVAL;
        }
        if (rc == GW_OK) {
            wx_copy(o->serial_no, sizeof(o->serial_no), serial);
            wx_copy(o->pub_serial, sizeof(o->pub_serial), pkid);
        }
        h->json_free(j);
        if (rc != GW_OK) return rc;
    }
    if (wx_present(m->public_key)) {
        if (memmem(m->public_key.ptr, m->public_key.len, "-----BEGIN CERTIFICATE-----", 27) != NULL &&
            o->pub_serial[0] == '\0' &&
            h->x509_serial(m->public_key.ptr, m->public_key.len, o->pub_serial, sizeof(o->pub_serial)) != GW_OK)
            o->pub_serial[0] = '\0';
        /* a bare public key without its PUB_KEY_ID cannot be selected */
        if (o->pub_serial[0]) o->pub = h->rsa_public(m->public_key.ptr, m->public_key.len);
    }
    return GW_OK;
}

/* The key that Wechatpay-Serial names: the merchant's own first, then the
 * settings'.  NULL when nobody configured that serial. */
static gw_rsa_key_t *wx_find_key(const wx_ctx_t *cx, const wx_mopts_t *mo, gw_str_t serial)
{
    if (mo && mo->pub && wx_serial_eq(serial, mo->pub_serial)) return mo->pub;
    for (size_t i = 0; cx && i < cx->nkeys; i++)
        if (wx_serial_eq(serial, cx->keys[i].serial)) return cx->keys[i].key;
    return NULL;
}

/* ------------------------------------------------------------------ */
/* settings.platform_keys
 *
 * The host's JSON API reaches object members by name but cannot walk an
 * array (docs: a host-API gap), so the array's elements are located in the
 * settings text here and each one is handed to json_parse.  The text has
 * already been accepted by json_parse as a whole, so this scanner only needs
 * to skip well-formed values. */

static size_t js_ws(const char *s, size_t i, size_t n)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) i++;
    return i;
}

/* index just past the string starting at s[i] == '"' */
static size_t js_skip_string(const char *s, size_t i, size_t n)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\') i++;
        else if (s[i] == '"') return i + 1;
    }
    return n;
}

/* index just past the value starting at s[i] */
static size_t js_skip_value(const char *s, size_t i, size_t n)
{
    int depth = 0;
    if (i >= n) return n;
    if (s[i] == '"') return js_skip_string(s, i, n);
    if (s[i] != '{' && s[i] != '[') {
        while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\t' &&
               s[i] != '\r' && s[i] != '\n')
            i++;
        return i;
    }
    while (i < n) {
        if (s[i] == '"') {
            i = js_skip_string(s, i, n);
            continue;
        }
        if (s[i] == '{' || s[i] == '[') depth++;
        else if (s[i] == '}' || s[i] == ']') {
            if (--depth == 0) return i + 1;
        }
        i++;
    }
    return n;
}

/* The text of the first top-level member named key (written without
 * escapes), or {NULL,0}. */
static gw_str_t js_member(const char *s, size_t n, const char *key)
{
    size_t klen = strlen(key), i = js_ws(s, 0, n);
    if (i >= n || s[i] != '{') return (gw_str_t){ NULL, 0 };
    i = js_ws(s, i + 1, n);
    while (i < n && s[i] == '"') {
        size_t ks = i + 1, ke = js_skip_string(s, i, n), vs, ve;
        int match = ke - 1 - ks == klen && memcmp(s + ks, key, klen) == 0;
        i = js_ws(s, ke, n);
        if (i >= n || s[i] != ':') break;
        vs = js_ws(s, i + 1, n);
        ve = js_skip_value(s, vs, n);
        if (match) return (gw_str_t){ s + vs, ve - vs };
        i = js_ws(s, ve, n);
        if (i < n && s[i] == ',') i = js_ws(s, i + 1, n);
        else break;
    }
    return (gw_str_t){ NULL, 0 };
}

static gw_err_t wx_init_keys(wx_ctx_t *cx, const gw_host_api_t *h, const char *settings, size_t len,
                             gw_buf_t *err)
{
    gw_str_t arr = js_member(settings, len, "platform_keys");
    size_t i, n;
    const char *s;

    if (arr.ptr == NULL || arr.len == 0 || arr.ptr[0] != '[') {
        h->buf_appendf(err, "wechatpay: platform_keys must be an array of {\"serial\",\"key\"} objects");
        return GW_EINVAL;
    }
    s = arr.ptr;
    n = arr.len;
    i = js_ws(s, 1, n);
    while (i < n && s[i] != ']') {
        size_t e = js_skip_value(s, i, n);
        gw_json_t *el = h->json_parse(s + i, e - i);
        const gw_json_t *jser = NULL, *jkey = NULL;
        gw_err_t rc;
        if (el != NULL) {
            jkey = h->json_get(el, "key");
            jser = h->json_get(el, "serial");
        }
        if (el == NULL || jkey == NULL || h->json_string(jkey) == NULL ||
            (jser != NULL && h->json_string(jser) == NULL)) {
            if (el) h->json_free(el);
            h->buf_appendf(err, "wechatpay: platform_keys[%zu] must be {\"serial\": string, \"key\": PEM string}",
                           cx->nkeys);
            return GW_EINVAL;
        }
        rc = wx_add_key(cx, h, wx_cstr(jser ? h->json_string(jser) : NULL), wx_cstr(h->json_string(jkey)),
                        err);
        h->json_free(el);
        if (rc != GW_OK) return rc;
        i = js_ws(s, e, n);
        if (i < n && s[i] == ',') i = js_ws(s, i + 1, n);
    }
    return GW_OK;
}

/* ------------------------------------------------------------------ */
/* life cycle */

static gw_err_t wx_init(void *ctx, const gw_host_api_t *host, const char *settings, size_t settings_len,
                        gw_buf_t *err)
{
    wx_ctx_t *cx = ctx;
    gw_json_t *j = NULL;
    const gw_json_t *v;
    const char *s;
    gw_err_t rc = GW_EINVAL;

    memset(cx, 0, sizeof(*cx));
    /* every host member this module uses is a 1.0 one */
    if (host == NULL || (host->version >> 16) != GW_CHANNEL_ABI_MAJOR ||
        host->struct_size < offsetof(gw_host_api_t, header_get) + sizeof(host->header_get))
        return GW_ENOTSUP; /* cannot even report through err: no buf_append */
    cx->host = host;
    cx->skew_s = WX_SKEW_DEFAULT_S;
    wx_copyz(cx->base_url, sizeof(cx->base_url), WX_DEFAULT_BASE);
    if (settings == NULL || settings_len == 0) return GW_OK;
    for (size_t i = 0; i < settings_len; i++) {
        if (settings[i] == ' ' || settings[i] == '\t' || settings[i] == '\r' || settings[i] == '\n') continue;
        if (settings[i] == '{') j = host->json_parse(settings, settings_len);
        break;
    }
    if (j == NULL) {
        host->buf_appendf(err, "wechatpay: settings are not a JSON object");
        goto out;
    }
    if ((v = host->json_get(j, "base_url")) != NULL) {
        size_t n;
        s = host->json_string(v);
        n = s ? strlen(s) : 0;
        while (n > 0 && s[n - 1] == '/') n--; /* paths are appended with their own "/" */
        if (s == NULL || (strncmp(s, "https://", 8) != 0 && strncmp(s, "http://", 7) != 0) ||
            n >= sizeof(cx->base_url) || n <= 8 || strpbrk(s, " \t\r\n?#") != NULL) {
            host->buf_appendf(err, "wechatpay: base_url must be an http(s) URL without query, shorter than %d bytes",
                              WX_URL_MAX);
            goto out;
        }
        wx_copy(cx->base_url, sizeof(cx->base_url), (gw_str_t){ s, n });
    }
    if ((v = host->json_get(j, "clock_skew_s")) != NULL) {
        int64_t sk;
        if (host->json_int(v, &sk) != GW_OK || sk < 1 || sk > (int64_t)WX_SKEW_MAX_S) {
            host->buf_appendf(err, "wechatpay: clock_skew_s must be an integer from 1 to %u", WX_SKEW_MAX_S);
            goto out;
        }
        cx->skew_s = (uint32_t)sk;
    }
    if ((v = host->json_get(j, "request_serial")) != NULL) {
        gw_str_t rs = wx_cstr(host->json_string(v));
        if (!wx_token_ok(rs, WX_SERIAL_MAX - 1)) {
            host->buf_appendf(err, "wechatpay: request_serial must be a platform key serial");
            goto out;
        }
        wx_copy(cx->request_serial, sizeof(cx->request_serial), rs);
    }
    if (host->json_get(j, "platform_keys") != NULL &&
        (rc = wx_init_keys(cx, host, settings, settings_len, err)) != GW_OK)
        goto out;
    rc = GW_EINVAL;
    if (cx->request_serial[0] && wx_find_key(cx, NULL, wx_cstr(cx->request_serial)) == NULL) {
        host->buf_appendf(err, "wechatpay: request_serial %s is not among platform_keys", cx->request_serial);
        goto out;
    }
    rc = GW_OK;
out:
    if (j) host->json_free(j);
    return rc;
}

static void wx_fini(void *ctx)
{
    wx_ctx_t *cx = ctx;
    memset(cx, 0, sizeof(*cx));
}

/* ------------------------------------------------------------------ */
/* requests */

/* A request under construction. */
typedef struct wx_req {
    const gw_host_api_t *h;
    gw_buf_t path; /* path and query, exactly as sent and signed */
    gw_buf_t body; /* JSON text; empty for GET */
    wx_jw_t w;
    wx_mopts_t mo;
    gw_err_t err;
} wx_req_t;

static void wx_req_free(wx_req_t *r)
{
    r->h->buf_free(&r->path);
    r->h->buf_free(&r->body);
}

/* Checks the merchant's signing credentials and starts a request. */
static gw_err_t wx_begin(const gw_chan_call_t *call, wx_req_t *r)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_merchant_t *m = call->merchant;
    gw_err_t rc;

    memset(r, 0, sizeof(*r));
    r->h = h;
    h->buf_init(&r->path, WX_URL_MAX);
    h->buf_init(&r->body, 256u * 1024u);
    r->w.h = h;
    r->w.b = &r->body;
    if (m == NULL || !wx_token_ok(m->mch_id, 32)) return GW_EINVAL;
    if ((rc = wx_merchant_opts(h, m, &r->mo)) != GW_OK) return rc;
    if (r->mo.serial_no[0] == '\0' || !wx_present(m->private_key)) return GW_EKEY;
    return GW_OK;
}

static void wx_path(wx_req_t *r, const char *lit)
{
    if (r->err == GW_OK) r->err = r->h->buf_append(&r->path, lit, strlen(lit));
}

/* a path segment or query value, percent-encoded */
static void wx_path_enc(wx_req_t *r, gw_str_t v)
{
    if (r->err == GW_OK) r->err = r->h->url_encode(v.ptr ? v.ptr : "", v.ptr ? v.len : 0, &r->path);
}

/* Epoch ms → RFC 3339 in China time, e.g. 2024-01-01T12:00:00+08:00
 * (milliseconds truncated). */
static int wx_rfc3339(int64_t ms, char *out, size_t cap)
{
    struct tm tm;
    time_t t = (time_t)(ms / 1000) + 8 * 3600;
    if (ms <= 0 || gmtime_r(&t, &tm) == NULL) return -1;
    snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d+08:00", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec);
    return 0;
}

/* Signs (PROTOCOLS.md §D.3) and writes URL, headers and body. */
static gw_err_t wx_finish(const gw_chan_call_t *call, wx_req_t *r, const char *method, gw_chan_request_t *req)
{
    const wx_ctx_t *cx = call->ctx;
    const gw_host_api_t *h = call->host;
    const gw_chan_merchant_t *m = call->merchant;
    int post = strcmp(method, "GET") != 0;
    char nonce[WX_NONCE_LEN + 1], ts[24];
    gw_buf_t s, sig;
    gw_rsa_key_t *key;
    gw_err_t rc = r->err != GW_OK ? r->err : r->w.err;

    h->buf_init(&s, WX_SCRATCH_MAX);
    h->buf_init(&sig, WX_SIG_MAX);
    if (rc != GW_OK) goto out;
    if (r->path.data == NULL || (post && r->body.data == NULL)) {
        rc = GW_EINVAL;
        goto out;
    }
    if ((rc = h->nonce(nonce, WX_NONCE_LEN)) != GW_OK) goto out;
    snprintf(ts, sizeof(ts), "%" PRIu64, h->now_ms() / 1000);
    /* METHOD\nPATH_WITH_QUERY\nTIMESTAMP\nNONCE\nBODY\n (GET: empty body) */
    rc = h->buf_appendf(&s, "%s\n%s\n%s\n%s\n", method, r->path.data, ts, nonce);
    if (rc == GW_OK && post) rc = h->buf_append(&s, r->body.data, r->body.len);
    if (rc == GW_OK) rc = h->buf_append(&s, "\n", 1);
    if (rc != GW_OK) goto out;
    key = h->rsa_private(m->private_key.ptr, m->private_key.len);
    if (key == NULL) {
        rc = GW_EKEY;
        goto out;
    }
    if ((rc = h->rsa_sign(key, GW_HASH_SHA256, s.data, s.len, &sig)) != GW_OK) goto out;
    req->method = post ? "POST" : "GET";
    if ((rc = h->buf_appendf(&req->url, "%s%s", cx->base_url, r->path.data)) != GW_OK) goto out;
    rc = h->buf_appendf(&req->headers, "Accept: application/json\r\nUser-Agent: %s\r\n", WX_USER_AGENT);
    if (rc == GW_OK && post) rc = h->buf_appendf(&req->headers, "Content-Type: application/json\r\n");
    if (rc == GW_OK && cx->request_serial[0])
        rc = h->buf_appendf(&req->headers, "Wechatpay-Serial: %s\r\n", cx->request_serial);
    if (rc == GW_OK)
        rc = h->buf_appendf(&req->headers,
                            "Authorization: " WX_AUTH_SCHEME " mchid=\"%.*s\",nonce_str=\"%s\",signature=\"%s\","
                            "timestamp=\"%s\",serial_no=\"%s\"\r\n",
                            (int)m->mch_id.len, m->mch_id.ptr, nonce, sig.data, ts, r->mo.serial_no);
    if (rc == GW_OK && post) rc = h->buf_append(&req->body, r->body.data, r->body.len);
    if (rc == GW_OK) rc = h->buf_append(&req->sign_string, s.data, s.len);
out:
    h->buf_free(&s);
    h->buf_free(&sig);
    wx_req_free(r);
    return rc;
}

static gw_err_t wx_pay(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    const gw_chan_merchant_t *m = call->merchant;
    gw_str_t appid, ip, notify;
    char expire[96];
    wx_req_t r;
    gw_err_t rc;

    if (o == NULL || !wx_present(o->out_trade_no) || o->out_trade_no.len > 32 || o->amount <= 0 ||
        !wx_present(o->subject))
        return GW_EINVAL;
    switch (o->method) {
    case GW_METHOD_WECHAT_QR:
        if (!wx_present(o->notify_url)) return GW_EINVAL;
        break;
    case GW_METHOD_WECHAT_JSAPI:
        if (!wx_present(o->notify_url) || !wx_present(o->payer_id)) return GW_EINVAL;
        break;
    case GW_METHOD_BARCODE:
        if (!wx_present(o->auth_code)) return GW_EINVAL;
        break;
    default:
        return GW_ENOTSUP;
    }
    appid = (o->method == GW_METHOD_WECHAT_JSAPI && wx_present(o->sub_appid)) ? o->sub_appid
                                                                              : (m ? m->app_id : wx_cstr(NULL));
    if (!wx_present(appid)) return GW_EKEY;
    if ((rc = wx_begin(call, &r)) != GW_OK) {
        wx_req_free(&r);
        return rc;
    }
    ip = wx_present(o->client_ip) ? o->client_ip : wx_cstr("127.0.0.1");
    notify = o->notify_url;
    while (notify.len > 0 && notify.ptr[notify.len - 1] == '/') notify.len--;

    switch (o->method) {
    case GW_METHOD_WECHAT_QR: wx_path(&r, "/v3/pay/transactions/native"); break;
    case GW_METHOD_WECHAT_JSAPI: wx_path(&r, "/v3/pay/transactions/jsapi"); break;
    default: wx_path(&r, "/v3/pay/transactions/codepay"); break;
    }
    jw_open(&r.w, NULL);
    jw_str(&r.w, "appid", appid);
    jw_str(&r.w, "mchid", m->mch_id);
    jw_str(&r.w, "description", o->subject);
    jw_str(&r.w, "out_trade_no", o->out_trade_no);
    jw_opt(&r.w, "attach", o->attach);
    if (o->method != GW_METHOD_BARCODE) {
        if (o->expire_ms > 0 && wx_rfc3339(o->expire_ms, expire, sizeof(expire)) == 0)
            jw_str(&r.w, "time_expire", wx_cstr(expire));
        /* the merchant number rides in the path: the notification names it
         * only inside the encrypted resource */
        jw_key(&r.w, "notify_url");
        if (r.w.err == GW_OK) {
            gw_buf_t u;
            r.h->buf_init(&u, 2048);
            r.w.err = r.h->buf_append(&u, notify.ptr, notify.len);
            if (r.w.err == GW_OK) r.w.err = r.h->buf_append(&u, "/", 1);
            if (r.w.err == GW_OK) r.w.err = r.h->buf_append(&u, m->mch_id.ptr, m->mch_id.len);
            if (r.w.err == GW_OK) r.w.err = r.h->json_quote(&r.body, u.data, u.len);
            r.h->buf_free(&u);
        }
    }
    jw_open(&r.w, "amount");
    jw_int(&r.w, "total", o->amount);
    jw_str(&r.w, "currency", wx_present(o->currency) ? o->currency : wx_cstr("CNY"));
    jw_close(&r.w);
    if (o->method == GW_METHOD_WECHAT_JSAPI) {
        jw_open(&r.w, "payer");
        jw_str(&r.w, "openid", o->payer_id);
        jw_close(&r.w);
    } else if (o->method == GW_METHOD_BARCODE) {
        jw_open(&r.w, "payer");
        jw_str(&r.w, "auth_code", o->auth_code);
        jw_close(&r.w);
    }
    jw_open(&r.w, "scene_info");
    jw_str(&r.w, o->method == GW_METHOD_BARCODE ? "device_ip" : "payer_client_ip", ip);
    jw_close(&r.w);
    jw_close(&r.w);
    return wx_finish(call, &r, "POST", req);
}

static gw_err_t wx_query(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    wx_req_t r;
    gw_err_t rc;

    if (call->flags & GW_CALL_REFUND_QUERY) {
        if (call->refund == NULL || !wx_present(call->refund->out_refund_no)) return GW_EINVAL;
    } else if (o == NULL || (!wx_present(o->out_trade_no) && !wx_present(o->channel_trade_no))) {
        return GW_EINVAL;
    }
    if ((rc = wx_begin(call, &r)) != GW_OK) {
        wx_req_free(&r);
        return rc;
    }
    if (call->flags & GW_CALL_REFUND_QUERY) {
        wx_path(&r, "/v3/refund/domestic/refunds/");
        wx_path_enc(&r, call->refund->out_refund_no);
    } else {
        if (wx_present(o->out_trade_no)) {
            wx_path(&r, "/v3/pay/transactions/out-trade-no/");
            wx_path_enc(&r, o->out_trade_no);
        } else {
            wx_path(&r, "/v3/pay/transactions/id/");
            wx_path_enc(&r, o->channel_trade_no);
        }
        wx_path(&r, "?mchid=");
        wx_path_enc(&r, call->merchant->mch_id);
    }
    return wx_finish(call, &r, "GET", req);
}

static gw_err_t wx_refund(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    const gw_chan_refund_t *f = call->refund;
    wx_req_t r;
    gw_err_t rc;

    if (o == NULL || f == NULL || !wx_present(f->out_refund_no) || f->out_refund_no.len > 64 || f->amount <= 0 ||
        f->total_amount <= 0 || f->amount > f->total_amount ||
        (!wx_present(o->out_trade_no) && !wx_present(o->channel_trade_no)))
        return GW_EINVAL;
    if ((rc = wx_begin(call, &r)) != GW_OK) {
        wx_req_free(&r);
        return rc;
    }
    wx_path(&r, "/v3/refund/domestic/refunds");
    jw_open(&r.w, NULL);
    if (wx_present(o->out_trade_no)) jw_str(&r.w, "out_trade_no", o->out_trade_no);
    else jw_str(&r.w, "transaction_id", o->channel_trade_no);
    jw_str(&r.w, "out_refund_no", f->out_refund_no);
    jw_opt(&r.w, "reason", f->reason);
    /* no notify_url: refunds are settled by refund queries (docs) */
    jw_open(&r.w, "amount");
    jw_int(&r.w, "refund", f->amount);
    jw_int(&r.w, "total", f->total_amount);
    jw_str(&r.w, "currency", wx_present(o->currency) ? o->currency : wx_cstr("CNY"));
    jw_close(&r.w);
    jw_close(&r.w);
    return wx_finish(call, &r, "POST", req);
}

static gw_err_t wx_close(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    const gw_chan_order_t *o = call->order;
    int reverse = (call->flags & GW_CALL_REVERSE) != 0;
    wx_req_t r;
    gw_err_t rc;

    if (o == NULL || !wx_present(o->out_trade_no)) return GW_EINVAL;
    if (reverse && (call->merchant == NULL || !wx_present(call->merchant->app_id))) return GW_EKEY;
    if ((rc = wx_begin(call, &r)) != GW_OK) {
        wx_req_free(&r);
        return rc;
    }
    wx_path(&r, "/v3/pay/transactions/out-trade-no/");
    wx_path_enc(&r, o->out_trade_no);
    wx_path(&r, reverse ? "/reverse" : "/close");
    jw_open(&r.w, NULL);
    if (reverse) jw_str(&r.w, "appid", call->merchant->app_id);
    jw_str(&r.w, "mchid", call->merchant->mch_id);
    jw_close(&r.w);
    return wx_finish(call, &r, "POST", req);
}

/* ------------------------------------------------------------------ */
/* verification */

typedef struct wx_why {
    const char *code; /* GW_ENOSIGN, GW_ESTALE, GW_ESERIAL, GW_ESIGN */
    char msg[200];
} wx_why_t;

/* Verifies Wechatpay-Signature over "TIMESTAMP\nNONCE\nBODY\n" with the key
 * Wechatpay-Serial names, and the timestamp's distance from now.  diag, when
 * not NULL, receives the verified string.  GW_OK or GW_ESIGN (why says
 * which check failed). */
static gw_err_t wx_verify_sig(const wx_ctx_t *cx, const gw_host_api_t *h, const wx_mopts_t *mo,
                              gw_str_t headers, gw_str_t body, gw_buf_t *diag, wx_why_t *why)
{
    gw_str_t ts = h->header_get(headers, "Wechatpay-Timestamp");
    gw_str_t nonce = h->header_get(headers, "Wechatpay-Nonce");
    gw_str_t sig = h->header_get(headers, "Wechatpay-Signature");
    gw_str_t serial = h->header_get(headers, "Wechatpay-Serial");
    gw_str_t stype = h->header_get(headers, "Wechatpay-Signature-Type");
    gw_rsa_key_t *key;
    int64_t t = 0, now, off;
    gw_buf_t s;
    gw_err_t rc = GW_ESIGN;

    why->code = "GW_ESIGN";
    why->msg[0] = '\0';
    if (!wx_present(ts) || !wx_present(nonce) || !wx_present(sig) || !wx_present(serial)) {
        why->code = "GW_ENOSIGN";
        snprintf(why->msg, sizeof(why->msg), "paygate: not signed (Wechatpay-Timestamp/Nonce/Signature/Serial missing)");
        return GW_ESIGN;
    }
    if (ts.len > 12) goto bad_ts;
    for (size_t i = 0; i < ts.len; i++) {
        if (ts.ptr[i] < '0' || ts.ptr[i] > '9') goto bad_ts;
        t = t * 10 + (ts.ptr[i] - '0');
    }
    now = (int64_t)(h->now_ms() / 1000);
    off = now > t ? now - t : t - now;
    if (off > (int64_t)cx->skew_s) {
        why->code = "GW_ESTALE";
        snprintf(why->msg, sizeof(why->msg), "paygate: Wechatpay-Timestamp is %" PRId64 " s off the local clock (max %u)",
                 off, cx->skew_s);
        return GW_ESIGN;
    }
    if (nonce.len > 128 || memchr(nonce.ptr, '\n', nonce.len) != NULL || sig.len > WX_SIG_MAX) {
        snprintf(why->msg, sizeof(why->msg), "paygate: malformed Wechatpay-Nonce or Wechatpay-Signature");
        return GW_ESIGN;
    }
    if (wx_present(stype) && !wx_eq(stype, WX_AUTH_SCHEME)) {
        snprintf(why->msg, sizeof(why->msg), "paygate: unsupported Wechatpay-Signature-Type %.*s",
                 (int)(stype.len > 64 ? 64 : stype.len), stype.ptr);
        return GW_ESIGN;
    }
    key = wx_find_key(cx, mo, serial);
    if (key == NULL) {
        why->code = "GW_ESERIAL";
        snprintf(why->msg, sizeof(why->msg), "paygate: no platform certificate or public key with serial %.*s",
                 (int)(serial.len > 80 ? 80 : serial.len), serial.ptr);
        return GW_ESIGN;
    }
    h->buf_init(&s, WX_SCRATCH_MAX);
    if (h->buf_append(&s, ts.ptr, ts.len) != GW_OK || h->buf_append(&s, "\n", 1) != GW_OK ||
        h->buf_append(&s, nonce.ptr, nonce.len) != GW_OK || h->buf_append(&s, "\n", 1) != GW_OK ||
        h->buf_append(&s, body.ptr ? body.ptr : "", body.ptr ? body.len : 0) != GW_OK ||
        h->buf_append(&s, "\n", 1) != GW_OK) {
        snprintf(why->msg, sizeof(why->msg), "paygate: message too large to verify");
        goto out;
    }
    if (diag) h->buf_append(diag, s.data, s.len);
    if (h->rsa_verify(key, GW_HASH_SHA256, s.data, s.len, sig.ptr, sig.len) == GW_OK) rc = GW_OK;
    else snprintf(why->msg, sizeof(why->msg), "paygate: Wechatpay-Signature does not verify (serial %.*s)",
                  (int)(serial.len > 80 ? 80 : serial.len), serial.ptr);
out:
    h->buf_free(&s);
    return rc;
bad_ts:
    snprintf(why->msg, sizeof(why->msg), "paygate: malformed Wechatpay-Timestamp");
    return GW_ESIGN;
}

/* ------------------------------------------------------------------ */
/* responses */

static void wx_result_reset(gw_chan_result_t *res, int unknown)
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

static void wx_untrust(gw_chan_result_t *res, int unknown, const char *code, const char *msg)
{
    res->status = unknown;
    if (code) wx_copyz(res->raw_code, sizeof(res->raw_code), code);
    if (msg) wx_copyz(res->raw_msg, sizeof(res->raw_msg), msg);
}

/* The common part of every *_parse: signature (key by serial, timestamp),
 * HTTP status, JSON.  Returns WX_OK (2xx; *jp is the body, NULL when
 * empty), WX_ERROR (a signed 4xx/5xx; raw_code/raw_msg are the answer's
 * code/message, *jp the body) or WX_UNTRUSTED (res says UNKNOWN and why).
 * The caller frees *jp. */
static int wx_response(const gw_chan_call_t *call, const gw_chan_response_t *resp, gw_chan_result_t *res,
                       int unknown, gw_json_t **jp)
{
    const wx_ctx_t *cx = call->ctx;
    const gw_host_api_t *h = call->host;
    wx_mopts_t mo;
    wx_why_t why;
    gw_json_t *j = NULL;
    int http;

    *jp = NULL;
    wx_result_reset(res, unknown);
    if (resp == NULL) {
        wx_untrust(res, unknown, NULL, "paygate: no response");
        return WX_UNTRUSTED;
    }
    http = resp->status;
    if (wx_merchant_opts(h, call->merchant, &mo) != GW_OK) {
        wx_untrust(res, unknown, "GW_EINVAL", "paygate: merchant.extra is malformed");
        return WX_UNTRUSTED;
    }
    if (resp->body.ptr && resp->body.len > 0) j = h->json_parse(resp->body.ptr, resp->body.len);
    if (wx_verify_sig(cx, h, &mo, resp->headers, resp->body, NULL, &why) != GW_OK) {
        if (http < 200 || http > 299) {
            /* an unsigned error page or answer: tell humans what it said */
            gw_str_t c = wx_jstr(h, j, "code"), msg = wx_jstr(h, j, "message");
            snprintf(res->raw_code, sizeof(res->raw_code), "HTTP_%d", http);
            snprintf(res->raw_msg, sizeof(res->raw_msg), "%s%s%.*s%s%.*s", why.msg, c.len ? "; unverified " : "",
                     (int)(c.len > 64 ? 64 : c.len), c.ptr ? c.ptr : "", msg.len ? ": " : "",
                     (int)(msg.len > 100 ? 100 : msg.len), msg.ptr ? msg.ptr : "");
        } else {
            wx_untrust(res, unknown, why.code, why.msg);
            if (h->log)
                h->log(cx, GW_LOG_WARN_, "response does not verify (mch_id %.*s): %s",
                       (int)(call->merchant ? call->merchant->mch_id.len : 0),
                       call->merchant ? call->merchant->mch_id.ptr : "", why.msg);
        }
        if (j) h->json_free(j);
        return WX_UNTRUSTED;
    }
    if (resp->body.len > 0 && j == NULL) {
        if (http >= 200 && http <= 299) wx_copyz(res->raw_code, sizeof(res->raw_code), "GW_EPARSE");
        else snprintf(res->raw_code, sizeof(res->raw_code), "HTTP_%d", http);
        wx_untrust(res, unknown, NULL, "paygate: the answer is not JSON");
        return WX_UNTRUSTED;
    }
    if (http == 200 || http == 202 || http == 204) {
        gw_str_t c = wx_jstr(h, j, "code");
        if (wx_present(c)) {
            wx_copy(res->raw_code, sizeof(res->raw_code), c);
            wx_copy(res->raw_msg, sizeof(res->raw_msg), wx_jstr(h, j, "message"));
        }
        *jp = j;
        return WX_OK;
    }
    if (http >= 400 && http <= 599) {
        gw_str_t c = wx_jstr(h, j, "code");
        if (wx_present(c)) wx_copy(res->raw_code, sizeof(res->raw_code), c);
        else snprintf(res->raw_code, sizeof(res->raw_code), "HTTP_%d", http);
        wx_copy(res->raw_msg, sizeof(res->raw_msg), wx_jstr(h, j, "message"));
        *jp = j;
        return WX_ERROR;
    }
    snprintf(res->raw_code, sizeof(res->raw_code), "HTTP_%d", http);
    wx_untrust(res, unknown, NULL, "paygate: unexpected HTTP status");
    if (j) h->json_free(j);
    return WX_UNTRUSTED;
}

static int wx_code_in(gw_str_t code, const char *const *list)
{
    for (size_t i = 0; list[i]; i++)
        if (wx_eq(code, list[i])) return 1;
    return 0;
}

/* Error codes that say the trade may exist or its outcome is open: never a
 * definite failure of a payment, a close or a reverse. */
static const char *const wx_ambiguous[] = {
    "SYSTEM_ERROR", "SYSTEMERROR", "BANK_ERROR", "BANKERROR", "USERPAYING", "ORDERPAID", "ORDER_PAID",
    "OUT_TRADE_NO_USED", "ORDERREVERSED", "ORDER_REVERSED", "ORDERCLOSED", "ORDER_CLOSED", "ORDERNOTEXIST",
    "ORDER_NOT_EXIST", "RESOURCE_NOT_EXISTS", "FREQUENCY_LIMITED", "INVALID_REQUEST", NULL
};

/* For refunds, only the transient ones: a refund refused for any other
 * reason was not made (the core would otherwise send it again forever). */
static const char *const wx_transient[] = {
    "SYSTEM_ERROR", "SYSTEMERROR", "BANK_ERROR", "BANKERROR", "FREQUENCY_LIMITED", NULL
};

/* A signed error answer: FAILED when it is a definite refusal (4xx but 429,
 * a code, not on the list), else the unknown status. */
static int wx_error_status(const gw_chan_response_t *resp, const gw_chan_result_t *res,
                           const char *const *open_codes, int failed, int unknown)
{
    gw_str_t c = wx_cstr(res->raw_code);
    if (resp->status < 400 || resp->status > 499 || resp->status == 429) return unknown;
    if (!wx_present(c) || strncmp(res->raw_code, "HTTP_", 5) == 0) return unknown;
    return wx_code_in(c, open_codes) ? unknown : failed;
}

/* A member that, when present, must equal what was asked. */
static int wx_echo_ok(const gw_host_api_t *h, const gw_json_t *j, const char *key, gw_str_t want)
{
    gw_str_t v = wx_jstr(h, j, key);
    return !wx_present(v) || !wx_present(want) || wx_streq(v, want);
}

/* mchid must be present and the merchant's */
static int wx_mchid_ok(const gw_chan_call_t *call, const gw_json_t *j, gw_chan_result_t *res)
{
    gw_str_t v = wx_jstr(call->host, j, "mchid");
    if (!wx_present(v) || call->merchant == NULL || !wx_streq(v, call->merchant->mch_id)) return 0;
    wx_copy(res->mch_id, sizeof(res->mch_id), v);
    return 1;
}

static int wx_trade_status(gw_str_t ts)
{
    if (wx_eq(ts, "SUCCESS")) return GW_PAY_SUCCESS;
    if (wx_eq(ts, "REFUND")) return GW_PAY_REFUNDED;
    if (wx_eq(ts, "NOTPAY")) return GW_PAY_NOT_PAID;
    if (wx_eq(ts, "CLOSED")) return GW_PAY_CLOSED;
    if (wx_eq(ts, "REVOKED")) return GW_PAY_REVERSED;
    if (wx_eq(ts, "USERPAYING")) return GW_PAY_USER_PAYING;
    if (wx_eq(ts, "PAYERROR")) return GW_PAY_FAILED;
    return GW_PAY_UNKNOWN;
}

static int wx_refund_status(gw_str_t st)
{
    if (wx_eq(st, "SUCCESS")) return GW_REFUND_SUCCESS;
    if (wx_eq(st, "PROCESSING")) return GW_REFUND_PROCESSING;
    if (wx_eq(st, "CLOSED")) return GW_REFUND_FAILED;   /* 退款关闭 */
    if (wx_eq(st, "ABNORMAL")) return GW_REFUND_FAILED; /* 退款异常: manual handling (docs) */
    return GW_REFUND_UNKNOWN;
}

/* Reads a transaction object (codepay answer, query answer) into res: the
 * merchant and order echoes, trade_state, amount, transaction_id.  Returns
 * the mapped status, or UNKNOWN (with raw_msg) when the object is not about
 * this merchant and order or disagrees with the order's amount. */
static int wx_transaction(const gw_chan_call_t *call, const gw_json_t *j, gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_order_t *o = call->order;
    gw_str_t ts = wx_jstr(h, j, "trade_state");
    int st;

    if (!wx_mchid_ok(call, j, res)) {
        wx_untrust(res, GW_PAY_UNKNOWN, "GW_EMCHID", "paygate: the answer is for another merchant");
        return GW_PAY_UNKNOWN;
    }
    if (o == NULL || (wx_present(o->out_trade_no) && !wx_streq(wx_jstr(h, j, "out_trade_no"), o->out_trade_no)) ||
        !wx_echo_ok(h, j, "transaction_id", o->channel_trade_no)) {
        wx_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: the answer is for another order");
        return GW_PAY_UNKNOWN;
    }
    wx_copy(res->channel_trade_no, sizeof(res->channel_trade_no), wx_jstr(h, j, "transaction_id"));
    res->amount = wx_jint(h, wx_jobj(h, j, "amount"), "total");
    wx_copy(res->raw_code, sizeof(res->raw_code), ts);
    wx_copy(res->raw_msg, sizeof(res->raw_msg), wx_jstr(h, j, "trade_state_desc"));
    st = wx_trade_status(ts);
    if ((st == GW_PAY_SUCCESS || st == GW_PAY_REFUNDED) && o->amount > 0 && res->amount != o->amount) {
        wx_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: the paid amount differs from the order's");
        return GW_PAY_UNKNOWN;
    }
    return st;
}

/* pay_data for a JSAPI order: the prepay_id and the parameters the payer's
 * WeChat needs (wx.requestPayment / WeixinJSBridge), paySign made with the
 * merchant's key over "appId\ntimeStamp\nnonceStr\npackage\n". */
static gw_err_t wx_jsapi_data(const gw_chan_call_t *call, gw_str_t prepay, gw_buf_t *out)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_order_t *o = call->order;
    const gw_chan_merchant_t *m = call->merchant;
    gw_str_t appid = wx_present(o->sub_appid) ? o->sub_appid : m->app_id;
    char nonce[WX_NONCE_LEN + 1], ts[24];
    gw_buf_t s, sig, pkg;
    gw_rsa_key_t *key = h->rsa_private(m->private_key.ptr, m->private_key.len);
    wx_jw_t w;
    gw_err_t rc;

    if (key == NULL) return GW_EKEY;
    if ((rc = h->nonce(nonce, WX_NONCE_LEN)) != GW_OK) return rc;
    snprintf(ts, sizeof(ts), "%" PRIu64, h->now_ms() / 1000);
    h->buf_init(&s, 8192);
    h->buf_init(&sig, WX_SIG_MAX);
    h->buf_init(&pkg, 1024);
    rc = h->buf_append(&pkg, "prepay_id=", 10);
    if (rc == GW_OK) rc = h->buf_append(&pkg, prepay.ptr, prepay.len);
    if (rc == GW_OK)
        rc = h->buf_appendf(&s, "%.*s\n%s\n%s\n%s\n", (int)appid.len, appid.ptr, ts, nonce, pkg.data);
    if (rc == GW_OK) rc = h->rsa_sign(key, GW_HASH_SHA256, s.data, s.len, &sig);
    if (rc == GW_OK) {
        memset(&w, 0, sizeof(w));
        w.h = h;
        w.b = out;
        jw_open(&w, NULL);
        jw_str(&w, "prepay_id", prepay);
        jw_open(&w, "pay_info");
        jw_str(&w, "appId", appid);
        jw_str(&w, "timeStamp", wx_cstr(ts));
        jw_str(&w, "nonceStr", wx_cstr(nonce));
        jw_str(&w, "package", wx_cstr(pkg.data));
        jw_str(&w, "signType", wx_cstr("RSA"));
        jw_str(&w, "paySign", wx_cstr(sig.data));
        jw_close(&w);
        jw_close(&w);
        rc = w.err;
    }
    h->buf_free(&s);
    h->buf_free(&sig);
    h->buf_free(&pkg);
    return rc;
}

static gw_err_t wx_pay_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp, gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    const gw_chan_order_t *o = call->order;
    gw_json_t *j;
    gw_err_t rc = GW_OK;
    int t = wx_response(call, resp, res, GW_PAY_UNKNOWN, &j);

    if (t == WX_UNTRUSTED) return GW_OK;
    if (o == NULL) {
        wx_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: no order");
        goto out;
    }
    if (o->method == GW_METHOD_BARCODE) {
        gw_str_t ts = wx_jstr(h, j, "trade_state");
        if (t == WX_ERROR) {
            res->status = wx_eq(wx_cstr(res->raw_code), "USERPAYING")
                              ? GW_PAY_USER_PAYING
                              : wx_error_status(resp, res, wx_ambiguous, GW_PAY_FAILED, GW_PAY_UNKNOWN);
        } else if (wx_present(ts)) {
            int st = wx_transaction(call, j, res);
            /* a codepay answer is final only for SUCCESS and PAYERROR;
             * anything else is for the queries to settle */
            res->status = (st == GW_PAY_SUCCESS || st == GW_PAY_USER_PAYING || st == GW_PAY_FAILED) ? st
                                                                                                  : GW_PAY_UNKNOWN;
        } else if (wx_eq(wx_cstr(res->raw_code), "USERPAYING")) {
            res->status = GW_PAY_USER_PAYING; /* 202 {"code":"USERPAYING"} */
        } else {
            wx_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: codepay answer without trade_state");
        }
        goto out;
    }
    if (t == WX_ERROR) {
        res->status = wx_error_status(resp, res, wx_ambiguous, GW_PAY_FAILED, GW_PAY_UNKNOWN);
        goto out;
    }
    if (resp->status != 200) {
        snprintf(res->raw_code, sizeof(res->raw_code), "HTTP_%d", resp->status);
        wx_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: unexpected HTTP status");
        goto out;
    }
    if (o->method == GW_METHOD_WECHAT_QR) {
        gw_str_t cu = wx_jstr(h, j, "code_url");
        if (!wx_present(cu)) {
            wx_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: created, but without code_url");
            goto out;
        }
        rc = h->buf_append(&res->pay_data, "{\"code_url\":", 12);
        if (rc == GW_OK) rc = h->json_quote(&res->pay_data, cu.ptr, cu.len);
        if (rc == GW_OK) rc = h->buf_append(&res->pay_data, "}", 1);
    } else {
        gw_str_t pp = wx_jstr(h, j, "prepay_id");
        if (!wx_present(pp)) {
            wx_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: created, but without prepay_id");
            goto out;
        }
        rc = wx_jsapi_data(call, pp, &res->pay_data);
    }
    if (rc == GW_OK) {
        res->status = GW_PAY_PENDING;
        wx_copyz(res->raw_code, sizeof(res->raw_code), "NOTPAY");
    } else {
        /* never hand out half a pay_data; the order exists: query it */
        h->buf_reset(&res->pay_data);
        wx_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: the payment parameters could not be written");
        if (rc != GW_ENOMEM) rc = GW_OK;
    }
out:
    if (j) h->json_free(j);
    return rc;
}

static gw_err_t wx_refund_answer(const gw_chan_call_t *call, const gw_json_t *j, gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    gw_str_t st = wx_jstr(h, j, "status");

    if (call->refund == NULL || !wx_streq(wx_jstr(h, j, "out_refund_no"), call->refund->out_refund_no) ||
        (call->order && !wx_echo_ok(h, j, "out_trade_no", call->order->out_trade_no))) {
        wx_untrust(res, GW_REFUND_UNKNOWN, NULL, "paygate: the answer is for another refund");
        return GW_OK;
    }
    res->amount = wx_jint(h, wx_jobj(h, j, "amount"), "refund");
    wx_copy(res->channel_refund_no, sizeof(res->channel_refund_no), wx_jstr(h, j, "refund_id"));
    wx_copy(res->channel_trade_no, sizeof(res->channel_trade_no), wx_jstr(h, j, "transaction_id"));
    wx_copy(res->raw_code, sizeof(res->raw_code), st);
    res->raw_msg[0] = '\0';
    res->status = wx_refund_status(st);
    if (res->status == GW_REFUND_SUCCESS && res->amount != call->refund->amount) {
        wx_untrust(res, GW_REFUND_UNKNOWN, NULL, "paygate: the refunded amount differs from the refund's");
        return GW_OK;
    }
    if (!wx_present(st)) wx_untrust(res, GW_REFUND_UNKNOWN, NULL, "paygate: refund answer without status");
    return GW_OK;
}

static gw_err_t wx_query_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp, gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    int refund_q = (call->flags & GW_CALL_REFUND_QUERY) != 0;
    int unknown = refund_q ? GW_REFUND_UNKNOWN : GW_PAY_UNKNOWN;
    gw_json_t *j;
    int t = wx_response(call, resp, res, unknown, &j);

    if (t == WX_UNTRUSTED) return GW_OK;
    if (t == WX_ERROR) {
        /* the order is not known to the platform: nothing paid so far
         * (docs: why NOT_PAID); a missing refund proves nothing */
        if (!refund_q && resp->status == 404 &&
            (wx_eq(wx_cstr(res->raw_code), "ORDER_NOT_EXIST") || wx_eq(wx_cstr(res->raw_code), "ORDERNOTEXIST")))
            res->status = GW_PAY_NOT_PAID;
        else res->status = unknown;
    } else if (resp->status != 200 || j == NULL) {
        snprintf(res->raw_code, sizeof(res->raw_code), "HTTP_%d", resp->status);
        wx_untrust(res, unknown, NULL, "paygate: unexpected answer to a query");
    } else if (refund_q) {
        wx_refund_answer(call, j, res);
    } else {
        res->status = wx_transaction(call, j, res);
    }
    if (j) h->json_free(j);
    return GW_OK;
}

static gw_err_t wx_refund_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp, gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    gw_json_t *j;
    int t = wx_response(call, resp, res, GW_REFUND_UNKNOWN, &j);

    if (t == WX_UNTRUSTED) return GW_OK;
    if (t == WX_ERROR) {
        res->status = wx_error_status(resp, res, wx_transient, GW_REFUND_FAILED, GW_REFUND_UNKNOWN);
    } else if (resp->status != 200 || j == NULL) {
        snprintf(res->raw_code, sizeof(res->raw_code), "HTTP_%d", resp->status);
        wx_untrust(res, GW_REFUND_UNKNOWN, NULL, "paygate: unexpected answer to a refund");
    } else {
        wx_refund_answer(call, j, res);
    }
    if (j) h->json_free(j);
    return GW_OK;
}

static gw_err_t wx_close_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp, gw_chan_result_t *res)
{
    const gw_host_api_t *h = call->host;
    int rev = (call->flags & GW_CALL_REVERSE) != 0;
    gw_json_t *j;
    int t = wx_response(call, resp, res, GW_PAY_UNKNOWN, &j);

    if (t == WX_UNTRUSTED) return GW_OK;
    if (t == WX_ERROR) {
        /* not closed (ORDERPAID, …): the order's state is for a query to tell */
        res->status = GW_PAY_UNKNOWN;
    } else if (!(resp->status == 204 || resp->status == 200) || wx_present(wx_cstr(res->raw_code))) {
        wx_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: unexpected answer to a close/reverse");
    } else if (j && ((call->merchant && !wx_echo_ok(h, j, "mchid", call->merchant->mch_id)) ||
                     (call->order && !wx_echo_ok(h, j, "out_trade_no", call->order->out_trade_no)))) {
        wx_untrust(res, GW_PAY_UNKNOWN, NULL, "paygate: the answer is for another order");
    } else {
        res->status = rev ? GW_PAY_REVERSED : GW_PAY_CLOSED;
        wx_copyz(res->raw_code, sizeof(res->raw_code), rev ? "REVOKED" : "CLOSED");
        wx_copy(res->mch_id, sizeof(res->mch_id), wx_jstr(h, j, "mchid"));
    }
    if (j) h->json_free(j);
    return GW_OK;
}

/* ------------------------------------------------------------------ */
/* notifications */

static gw_err_t wx_ack(const gw_host_api_t *h, int *status, char *type, size_t typecap, gw_buf_t *body, int st,
                       const char *code, const char *msg)
{
    gw_err_t rc;
    *status = st;
    wx_copyz(type, typecap, "application/json");
    h->buf_reset(body);
    rc = h->buf_appendf(body, "{\"code\":\"%s\",\"message\":", code);
    if (rc == GW_OK) rc = h->json_quote(body, msg, strlen(msg));
    if (rc == GW_OK) rc = h->buf_append(body, "}", 1);
    return rc;
}

static gw_err_t wx_ack_fail(const gw_host_api_t *h, gw_chan_notify_t *out, int st, const char *msg)
{
    return wx_ack(h, &out->ack_fail_status, out->ack_fail_type, sizeof(out->ack_fail_type), &out->ack_fail_body,
                  st, "FAIL", msg);
}

/* The merchant number from POST /notify/<name>/<mch_id>. */
static gw_str_t wx_path_mchid(gw_str_t path)
{
    static const char pfx[] = "/notify/" GW_CHANNEL_NAME "/";
    gw_str_t r = { NULL, 0 };
    if (path.ptr == NULL || path.len <= sizeof(pfx) - 1 || memcmp(path.ptr, pfx, sizeof(pfx) - 1) != 0) return r;
    r.ptr = path.ptr + sizeof(pfx) - 1;
    r.len = path.len - (sizeof(pfx) - 1);
    return wx_token_ok(r, 32) ? r : (gw_str_t){ NULL, 0 };
}

/* The notification body: {id, event_type, resource{…}}. */
static gw_json_t *wx_notify_json(const gw_host_api_t *h, const gw_chan_notify_in_t *in, gw_str_t *event)
{
    gw_json_t *j;
    if (in == NULL || in->body.ptr == NULL || in->body.len == 0) return NULL;
    j = h->json_parse(in->body.ptr, in->body.len);
    if (j == NULL) return NULL;
    *event = wx_jstr(h, j, "event_type");
    if (!wx_present(*event) || h->json_get(j, "resource") == NULL) {
        h->json_free(j);
        return NULL;
    }
    return j;
}

static gw_err_t wx_notify_parse(void *ctx, const gw_host_api_t *host, const gw_chan_notify_in_t *in,
                                gw_chan_notify_t *out)
{
    gw_json_t *j;
    gw_str_t mch, event = { NULL, 0 };
    gw_err_t rc;

    (void)ctx;
    out->kind = GW_NOTIFY_PAY;
    out->mch_id[0] = out->out_trade_no[0] = out->out_refund_no[0] = '\0';
    if ((rc = wx_ack_fail(host, out, 400, "malformed notification")) != GW_OK) return rc;
    mch = in ? wx_path_mchid(in->path) : wx_cstr(NULL);
    if (!wx_present(mch)) {
        wx_ack_fail(host, out, 404, "no merchant number in the notification path");
        return GW_EPARSE;
    }
    if ((j = wx_notify_json(host, in, &event)) == NULL) return GW_EPARSE;
    if (event.len > 7 && memcmp(event.ptr, "REFUND.", 7) == 0) out->kind = GW_NOTIFY_REFUND;
    wx_copy(out->mch_id, sizeof(out->mch_id), mch);
    /* out_trade_no is inside the encrypted resource: notify_verify fills it */
    host->json_free(j);
    return GW_OK;
}

static gw_err_t wx_notify_verify(const gw_chan_call_t *call, const gw_chan_notify_in_t *in, gw_chan_notify_t *out)
{
    const wx_ctx_t *cx = call->ctx;
    const gw_host_api_t *h = call->host;
    const gw_chan_merchant_t *m = call->merchant;
    gw_json_t *j = NULL, *p = NULL;
    const gw_json_t *res_j;
    gw_str_t event = { NULL, 0 }, alg, ct, nonce, aad, otype, mch;
    gw_buf_t raw, plain;
    wx_mopts_t mo;
    wx_why_t why;
    gw_err_t rc;

    out->status = GW_PAY_UNKNOWN;
    out->amount = -1;
    out->channel_trade_no[0] = out->raw_code[0] = out->raw_msg[0] = '\0';
    h->buf_init(&raw, 1u << 20);
    h->buf_init(&plain, 1u << 20);
    if ((rc = wx_ack(h, &out->ack_ok_status, out->ack_ok_type, sizeof(out->ack_ok_type), &out->ack_ok_body, 200,
                     "SUCCESS", "成功")) != GW_OK)
        goto out;
    /* what the core answers when it cannot record a verified notification */
    if ((rc = wx_ack_fail(h, out, 500, "not recorded, please retry")) != GW_OK) goto out;
    rc = GW_ESIGN;
    mch = in ? wx_path_mchid(in->path) : wx_cstr(NULL);
    if (m == NULL || !wx_present(mch) || !wx_streq(mch, m->mch_id)) {
        wx_ack_fail(h, out, 401, "the notification is not for this merchant");
        goto out;
    }
    if (wx_merchant_opts(h, m, &mo) != GW_OK) {
        rc = GW_EINVAL;
        wx_ack_fail(h, out, 500, "merchant configuration error");
        goto out;
    }
    h->buf_reset(&out->sign_string);
    if (wx_verify_sig(cx, h, &mo, in->headers, in->body, &out->sign_string, &why) != GW_OK) {
        wx_copyz(out->raw_code, sizeof(out->raw_code), why.code);
        wx_copyz(out->raw_msg, sizeof(out->raw_msg), why.msg);
        wx_ack_fail(h, out, 401, "signature verification failed");
        if (h->log) h->log(cx, GW_LOG_WARN_, "notification does not verify (mch_id %s): %s", out->mch_id, why.msg);
        goto out;
    }
    rc = GW_EPARSE;
    if ((j = wx_notify_json(h, in, &event)) == NULL) {
        wx_ack_fail(h, out, 400, "malformed notification");
        goto out;
    }
    res_j = h->json_get(j, "resource");
    alg = wx_jstr(h, res_j, "algorithm");
    ct = wx_jstr(h, res_j, "ciphertext");
    nonce = wx_jstr(h, res_j, "nonce");
    aad = wx_jstr(h, res_j, "associated_data");
    otype = wx_jstr(h, res_j, "original_type");
    if (!wx_eq(alg, "AEAD_AES_256_GCM") || !wx_present(ct) || !wx_present(nonce) || nonce.len > 64) {
        wx_ack_fail(h, out, 400, "unsupported or malformed resource");
        goto out;
    }
    if (m->key.len != WX_APIV3_KEY_LEN) {
        /* the APIv3 key is exactly 32 bytes; without it nothing decrypts */
        rc = GW_EKEY;
        wx_ack_fail(h, out, 500, "merchant configuration error");
        if (h->log) h->log(cx, GW_LOG_ERR_, "merchant %s: the APIv3 key (merchant.key) is not 32 bytes", out->mch_id);
        goto out;
    }
    if (h->base64_decode(ct.ptr, ct.len, &raw) != GW_OK || raw.len <= 16) {
        wx_ack_fail(h, out, 400, "malformed ciphertext");
        goto out;
    }
    if (h->aes256gcm_decrypt((const uint8_t *)m->key.ptr, (const uint8_t *)nonce.ptr, nonce.len,
                             (const uint8_t *)(aad.ptr ? aad.ptr : ""), aad.ptr ? aad.len : 0,
                             (const uint8_t *)raw.data, raw.len, &plain) != GW_OK) {
        rc = GW_ESIGN;
        wx_copyz(out->raw_code, sizeof(out->raw_code), "GW_EDECRYPT");
        wx_copyz(out->raw_msg, sizeof(out->raw_msg), "paygate: the resource does not decrypt with the APIv3 key");
        wx_ack_fail(h, out, 401, "decryption failed");
        goto out;
    }
    if ((p = plain.len ? h->json_parse(plain.data, plain.len) : NULL) == NULL) {
        wx_ack_fail(h, out, 400, "malformed resource");
        goto out;
    }
    /* authenticated twice (RSA and AEAD), but must also be about this
     * merchant (and this order, when the core passes it) */
    rc = GW_ESIGN;
    if (!wx_streq(wx_jstr(h, p, "mchid"), m->mch_id)) {
        wx_ack_fail(h, out, 401, "the notification is not for this merchant");
        goto out;
    }
    {
        gw_str_t otn = wx_jstr(h, p, "out_trade_no");
        if (!wx_present(otn) || otn.len >= sizeof(out->out_trade_no) ||
            (call->order && wx_present(call->order->out_trade_no) && !wx_streq(otn, call->order->out_trade_no))) {
            wx_ack_fail(h, out, 400, "the notification is not for this order");
            goto out;
        }
        wx_copy(out->out_trade_no, sizeof(out->out_trade_no), otn);
    }
    wx_copy(out->channel_trade_no, sizeof(out->channel_trade_no), wx_jstr(h, p, "transaction_id"));
    if (out->kind == GW_NOTIFY_REFUND) {
        gw_str_t orn = wx_jstr(h, p, "out_refund_no"), st = wx_jstr(h, p, "refund_status");
        rc = GW_EPARSE;
        if ((wx_present(otype) && !wx_eq(otype, "refund")) || !wx_present(orn) ||
            orn.len >= sizeof(out->out_refund_no)) {
            wx_ack_fail(h, out, 400, "malformed refund resource");
            goto out;
        }
        wx_copy(out->out_refund_no, sizeof(out->out_refund_no), orn);
        out->amount = wx_jint(h, wx_jobj(h, p, "amount"), "refund");
        wx_copy(out->raw_code, sizeof(out->raw_code), st);
        wx_copy(out->raw_msg, sizeof(out->raw_msg), event);
        out->status = wx_refund_status(st);
    } else {
        gw_str_t st = wx_jstr(h, p, "trade_state");
        rc = GW_EPARSE;
        if (wx_present(otype) && !wx_eq(otype, "transaction")) {
            wx_ack_fail(h, out, 400, "malformed transaction resource");
            goto out;
        }
        out->amount = wx_jint(h, wx_jobj(h, p, "amount"), "total");
        wx_copy(out->raw_code, sizeof(out->raw_code), st);
        wx_copy(out->raw_msg, sizeof(out->raw_msg), wx_jstr(h, p, "trade_state_desc"));
        out->status = wx_trade_status(st);
        /* TRANSACTION.SUCCESS must say SUCCESS; anything odd is for a query */
        if (wx_eq(event, "TRANSACTION.SUCCESS") != (out->status == GW_PAY_SUCCESS)) out->status = GW_PAY_UNKNOWN;
    }
    /* acknowledged from here on, whatever the status: retries would not
     * change it */
    rc = wx_ack_fail(h, out, 500, "not recorded, please retry");
out:
    if (p) h->json_free(p);
    if (j) h->json_free(j);
    wx_wipe(&plain);
    h->buf_free(&raw);
    h->buf_free(&plain);
    return rc;
}

/* ------------------------------------------------------------------ */

/* Timing rules the core's follow-up tasks obey (ABI 1.1; 0 = core default).
 * b-to-c (PROTOCOLS.md §D.2, the current micropay guide, which the v3
 * codepay guide repeats): on USERPAYING query about every 10 s until about
 * 45 s, then reverse — never earlier than 15 s after the order was created.
 * Close: the guide recommends at least 5 minutes between creating and
 * closing an order.  The first refund query: no documented rule. */
static const gw_chan_policy_t wx_policy = {
    .struct_size = sizeof(gw_chan_policy_t),
    .poll_interval_ms = 10000,
    .poll_deadline_ms = 45000,
    .reverse_min_age_ms = 15000,
    .close_min_age_ms = 5 * 60 * 1000,
    .refund_query_delay_ms = 0,
};

static const gw_channel_t wx_channel = {
    .abi_version = GW_CHANNEL_ABI_VERSION,
    .struct_size = sizeof(gw_channel_t),
    .ctx_size = sizeof(wx_ctx_t),
    .methods = GW_METHOD_WECHAT_QR | GW_METHOD_WECHAT_JSAPI | GW_METHOD_BARCODE,
    .name = GW_CHANNEL_NAME,
    .version = WX_VERSION,
    .build_sig = GW_CHANNEL_BUILD_SIG,
    .init = wx_init,
    .fini = wx_fini,
    .pay = wx_pay,
    .pay_parse = wx_pay_parse,
    .query = wx_query,
    .query_parse = wx_query_parse,
    .refund = wx_refund,
    .refund_parse = wx_refund_parse,
    .close = wx_close,
    .close_parse = wx_close_parse,
    .notify_parse = wx_notify_parse,
    .notify_verify = wx_notify_verify,
    /* added in 1.1 */
    .policy = &wx_policy,
};

GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry(void);

GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry(void)
{
    return &wx_channel;
}
