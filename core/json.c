/*
 * json.c — compact JSON text of a cJSON tree (see json.h).
 */
#include "json.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define JA_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define JA_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define JA_POISON(p, n) ((void)(p), (void)(n))
#define JA_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* gw_buf_append without the call when the buffer has room (the writer
 * appends many short pieces).  cap never exceeds max + 1, so room within
 * cap is room within max. */
static inline gw_err_t put(gw_buf_t *b, const void *p, size_t n)
{
    if (b->cap - b->len > n) {
        memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = '\0';
        return GW_OK;
    }
    return gw_buf_append(b, p, n);
}

/* cJSON's print_number: "%1.15g", or "%1.17g" when 15 digits do not read
 * back within DBL_EPSILON (relative) of the double; NaN and infinities as
 * null.  For an integral value below 1e15 (not -0), "%1.15g" prints its
 * decimal digits, written here directly. */
static gw_err_t write_number(gw_buf_t *b, double d)
{
    char tmp[32];
    int n;
    if (isnan(d) || isinf(d)) return put(b, "null", 4);
    if (d > -1e15 && d < 1e15 && d == (double)(int64_t)d && !(d == 0 && signbit(d))) {
        int64_t v = (int64_t)d;
        uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
        char *p = tmp + sizeof(tmp);
        do {
            *--p = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        if (v < 0) *--p = '-';
        return put(b, p, (size_t)(tmp + sizeof(tmp) - p));
    }
    n = snprintf(tmp, sizeof(tmp), "%1.15g", d);
    if (n < 0 || (size_t)n >= sizeof(tmp)) return GW_EINVAL;
    double back = strtod(tmp, NULL);
    double max = fabs(back) > fabs(d) ? fabs(back) : fabs(d);
    if (!(fabs(back - d) <= max * DBL_EPSILON)) {
        n = snprintf(tmp, sizeof(tmp), "%1.17g", d);
        if (n < 0 || (size_t)n >= sizeof(tmp)) return GW_EINVAL;
    }
    return put(b, tmp, (size_t)n);
}

/* cJSON's print_string_ptr: '"' and '\\' escaped, \b \f \n \r \t by name,
 * other bytes below 0x20 as \u00xx; everything else (UTF-8 included) as
 * it is.  NULL is the empty string. */
static gw_err_t write_string(gw_buf_t *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    gw_err_t rc = put(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    const unsigned char *run = p;
    for (; rc == GW_OK && *p; p++) {
        unsigned char c = *p;
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        if (p > run) rc = put(b, run, (size_t)(p - run));
        char esc[6] = { '\\', 0, 0, 0, 0, 0 };
        size_t n = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        }
        if (rc == GW_OK) rc = put(b, esc, n);
        run = p + 1;
    }
    if (rc == GW_OK && p > run) rc = put(b, run, (size_t)(p - run));
    if (rc == GW_OK) rc = put(b, "\"", 1);
    return rc;
}

static gw_err_t write_value(gw_buf_t *b, const cJSON *j, int depth)
{
    gw_err_t rc = GW_OK;
    if (depth > 1000) return GW_EINVAL; /* cJSON's CJSON_NESTING_LIMIT */
    switch (j->type & 0xFF) {
    case cJSON_NULL: return put(b, "null", 4);
    case cJSON_False: return put(b, "false", 5);
    case cJSON_True: return put(b, "true", 4);
    case cJSON_Number: return write_number(b, j->valuedouble);
    case cJSON_String: return write_string(b, j->valuestring);
    case cJSON_Raw:
        if (j->valuestring == NULL) return GW_EINVAL;
        return put(b, j->valuestring, strlen(j->valuestring));
    case cJSON_Array:
    case cJSON_Object: {
        int obj = (j->type & 0xFF) == cJSON_Object;
        rc = put(b, obj ? "{" : "[", 1);
        for (const cJSON *c = j->child; c && rc == GW_OK; c = c->next) {
            if (c != j->child) rc = put(b, ",", 1);
            if (obj && rc == GW_OK) {
                rc = write_string(b, c->string);
                if (rc == GW_OK) rc = put(b, ":", 1);
            }
            if (rc == GW_OK) rc = write_value(b, c, depth + 1);
        }
        if (rc == GW_OK) rc = put(b, obj ? "}" : "]", 1);
        return rc;
    }
    default: return GW_EINVAL;
    }
}

gw_err_t gw_json_write(gw_buf_t *b, const cJSON *j)
{
    if (j == NULL) return GW_EINVAL;
    return write_value(b, j, 0);
}

gw_err_t gw_json_write_view(gw_buf_t *b, const cJSON *obj, const char *const keys[])
{
    if (obj == NULL || !cJSON_IsObject(obj)) return GW_EINVAL;
    gw_err_t rc = put(b, "{", 1);
    const cJSON *from = obj->child;
    int first = 1;
    for (int i = 0; keys[i] && rc == GW_OK; i++) {
        const cJSON *hit = NULL;
        /* from `from` to the end, then from the start to `from` */
        for (const cJSON *c = from; c && !hit; c = c->next)
            if (c->string && gw_json_key_eq(c->string, keys[i])) hit = c;
        for (const cJSON *c = obj->child; c != from && !hit; c = c->next)
            if (c->string && gw_json_key_eq(c->string, keys[i])) hit = c;
        if (hit == NULL) continue;
        from = hit->next ? hit->next : obj->child;
        if (cJSON_IsNull(hit)) continue;
        if (!first) rc = put(b, ",", 1);
        first = 0;
        if (rc == GW_OK) rc = write_string(b, keys[i]);
        if (rc == GW_OK) rc = put(b, ":", 1);
        if (rc == GW_OK) rc = write_value(b, hit, 1);
    }
    if (rc == GW_OK) rc = put(b, "}", 1);
    return rc;
}

cJSON *gw_json_get(const cJSON *obj, const char *key)
{
    if (obj == NULL || key == NULL || !cJSON_IsObject(obj)) return NULL;
    for (cJSON *c = obj->child; c; c = c->next)
        if (c->string && gw_json_key_eq(c->string, key)) return c;
    return NULL;
}

char *gw_json_print(const cJSON *j)
{
    gw_buf_t b;
    gw_buf_init(&b, (size_t)1 << 30);
    b.data = malloc(1024); /* an order's reply fits: no regrowth on the common path */
    if (b.data == NULL) return NULL;
    b.cap = 1024;
    b.data[0] = '\0';
    if (gw_json_write(&b, j) != GW_OK) {
        gw_buf_free(&b);
        return NULL;
    }
    return b.data; /* NUL-terminated by gw_buf_append */
}

/* ------------------------------------------------------------------ */
/* allocation hooks (json.h) */

#define JA_CLASSES 16           /* 16, 32, … 256 bytes */
#define JA_HDR 16               /* keeps the user block 16-byte aligned */
#define JA_BIG 0xFFu

typedef struct ja_free_block {
    struct ja_free_block *next;
} ja_free_block_t;

typedef struct {
    ja_free_block_t *head[JA_CLASSES];
    unsigned n[JA_CLASSES];
    int on; /* only the thread that installed the hooks keeps blocks */
} ja_cache_t;

static __thread ja_cache_t ja_cache;

static void *ja_malloc(size_t n)
{
    size_t k = n ? (n - 1) >> 4 : 0;
    ja_cache_t *c = &ja_cache;
    if (k < JA_CLASSES) {
        ja_free_block_t *b = c->head[k];
        if (b) {
            JA_UNPOISON(b, (k + 1) * 16);
            c->head[k] = b->next;
            c->n[k]--;
            return b;
        }
        n = (k + 1) * 16;
    } else if (n > SIZE_MAX - JA_HDR) {
        return NULL;
    }
    unsigned char *h = malloc(JA_HDR + n);
    if (h == NULL) return NULL;
    h[0] = k < JA_CLASSES ? (unsigned char)k : JA_BIG;
    return h + JA_HDR;
}

static void ja_free(void *p)
{
    if (p == NULL) return;
    unsigned char *h = (unsigned char *)p - JA_HDR;
    unsigned k = h[0];
    ja_cache_t *c = &ja_cache;
    if (k < JA_CLASSES && c->on && c->n[k] < GW_JSON_CACHE_KEEP) {
        ja_free_block_t *b = p;
        b->next = c->head[k];
        c->head[k] = b;
        c->n[k]++;
        JA_POISON(b, (k + 1) * 16);
        return;
    }
    free(h);
}

void gw_json_alloc_init(void)
{
    cJSON_Hooks hooks = { .malloc_fn = ja_malloc, .free_fn = ja_free };
    cJSON_InitHooks(&hooks);
    ja_cache.on = 1;
    atexit(gw_json_alloc_trim); /* exit() runs it in this thread: the cache is empty for leak checkers */
}

void gw_json_alloc_trim(void)
{
    ja_cache_t *c = &ja_cache;
    for (int k = 0; k < JA_CLASSES; k++) {
        while (c->head[k]) {
            ja_free_block_t *b = c->head[k];
            JA_UNPOISON(b, (size_t)(k + 1) * 16);
            c->head[k] = b->next;
            free((char *)b - JA_HDR);
        }
        c->n[k] = 0;
    }
}

size_t gw_json_alloc_cached(void)
{
    size_t n = 0;
    for (int k = 0; k < JA_CLASSES; k++) n += ja_cache.n[k];
    return n;
}
