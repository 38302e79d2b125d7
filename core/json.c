/*
 * json.c — compact JSON text of a cJSON tree (see json.h).
 */
#include "json.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <limits.h>
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
/* parsing (json.h) */

typedef struct {
    const unsigned char *p, *end;
} jp_t;

#define JP_MAX_DEPTH 64
#define JP_MAX_DIGITS 15 /* every integer of up to 15 digits is exact in a double */

static void jp_ws(jp_t *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static cJSON *jp_item(int type)
{
    cJSON *c = cJSON_malloc(sizeof(cJSON));
    if (c) {
        memset(c, 0, sizeof(*c));
        c->type = type;
    }
    return c;
}

/* The string whose opening quote is at j->p, from cJSON_malloc; NULL to
 * decline (\u escapes, raw control characters, no closing quote). */
static char *jp_string(jp_t *j)
{
    const unsigned char *s = j->p + 1, *q = s;
    size_t esc = 0;
    for (;;) {
        /* (eight bytes at a time measured no better: the strings are short) */
        while (q < j->end && *q >= 0x20 && *q != '"' && *q != '\\') q++;
        if (q >= j->end || *q < 0x20) return NULL;
        if (*q == '"') break;
        /* a backslash */
        if (q + 1 >= j->end) return NULL;
        switch (q[1]) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            break;
        default:
            return NULL;
        }
        esc++;
        q += 2;
    }
    size_t n = (size_t)(q - s) - esc;
    char *out = cJSON_malloc(n + 1);
    if (out == NULL) return NULL;
    if (esc == 0) {
        memcpy(out, s, n);
    } else {
        char *o = out;
        for (const unsigned char *r = s; r < q; r++) {
            if (*r != '\\') {
                *o++ = (char)*r;
                continue;
            }
            r++;
            switch (*r) {
            case 'b': *o++ = '\b'; break;
            case 'f': *o++ = '\f'; break;
            case 'n': *o++ = '\n'; break;
            case 'r': *o++ = '\r'; break;
            case 't': *o++ = '\t'; break;
            default: *o++ = (char)*r; break; /* " \ / */
            }
        }
    }
    out[n] = '\0';
    j->p = q + 1;
    return out;
}

static cJSON *jp_value(jp_t *j, int depth);

/* An object or array at j->p ('{' or '['), its members linked as cJSON
 * links them (the first one's prev is the last). */
static cJSON *jp_container(jp_t *j, int depth)
{
    int obj = *j->p == '{';
    unsigned char close = obj ? '}' : ']';
    cJSON *c = jp_item(obj ? cJSON_Object : cJSON_Array), *last = NULL;
    if (c == NULL) return NULL;
    j->p++;
    jp_ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        return c;
    }
    for (;;) {
        char *key = NULL;
        if (obj) {
            jp_ws(j);
            if (j->p >= j->end || *j->p != '"' || (key = jp_string(j)) == NULL) goto decline;
            jp_ws(j);
            if (j->p >= j->end || *j->p != ':') {
                cJSON_free(key);
                goto decline;
            }
            j->p++;
        }
        cJSON *v = jp_value(j, depth + 1);
        if (v == NULL) {
            cJSON_free(key);
            goto decline;
        }
        v->string = key;
        if (last) {
            last->next = v;
            v->prev = last;
        } else {
            c->child = v;
        }
        last = v;
        jp_ws(j);
        if (j->p >= j->end) goto decline;
        if (*j->p == ',') {
            j->p++;
            continue;
        }
        if (*j->p != close) goto decline;
        j->p++;
        c->child->prev = last;
        return c;
    }
decline:
    if (last) c->child->prev = last;
    cJSON_Delete(c);
    return NULL;
}

static cJSON *jp_number(jp_t *j)
{
    const unsigned char *q = j->p;
    int neg = *q == '-';
    if (neg) q++;
    int64_t v = 0;
    int digits = 0;
    while (q < j->end && *q >= '0' && *q <= '9' && digits <= JP_MAX_DIGITS) {
        v = v * 10 + (*q - '0');
        q++;
        digits++;
    }
    /* fractions, exponents and longer integers: strtod's reading, cJSON's */
    if (digits == 0 || digits > JP_MAX_DIGITS ||
        (q < j->end && (*q == '.' || *q == 'e' || *q == 'E' || *q == '+' || *q == '-' ||
                        (*q >= '0' && *q <= '9'))))
        return NULL;
    cJSON *c = jp_item(cJSON_Number);
    if (c == NULL) return NULL;
    double d = neg ? -(double)v : (double)v;
    c->valuedouble = d;
    c->valueint = d >= INT_MAX ? INT_MAX : d <= (double)INT_MIN ? INT_MIN : (int)d;
    j->p = q;
    return c;
}

static int jp_literal(const jp_t *j, const char *lit, size_t n)
{
    return (size_t)(j->end - j->p) >= n && memcmp(j->p, lit, n) == 0;
}

static cJSON *jp_value(jp_t *j, int depth)
{
    jp_ws(j);
    if (j->p >= j->end || depth > JP_MAX_DEPTH) return NULL;
    unsigned char ch = *j->p;
    cJSON *c = NULL;
    if (ch == '"') {
        char *s = jp_string(j);
        if (s == NULL) return NULL;
        if ((c = jp_item(cJSON_String)) == NULL) {
            cJSON_free(s);
            return NULL;
        }
        c->valuestring = s;
    } else if (ch == '{' || ch == '[') {
        c = jp_container(j, depth);
    } else if (ch == '-' || (ch >= '0' && ch <= '9')) {
        c = jp_number(j);
    } else if (jp_literal(j, "null", 4)) {
        if ((c = jp_item(cJSON_NULL))) j->p += 4;
    } else if (jp_literal(j, "false", 5)) {
        if ((c = jp_item(cJSON_False))) j->p += 5;
    } else if (jp_literal(j, "true", 4)) {
        if ((c = jp_item(cJSON_True))) {
            c->valueint = 1;
            j->p += 4;
        }
    }
    return c;
}

cJSON *gw__json_parse_fast(const char *text, size_t len)
{
    if (text == NULL || len == 0) return NULL;
    jp_t j = { (const unsigned char *)text, (const unsigned char *)text + len };
    cJSON *c = jp_value(&j, 0);
    if (c) {
        jp_ws(&j);
        if (j.p == j.end) return c;
        cJSON_Delete(c); /* something after the value: as cJSON would take it */
    }
    return NULL;
}

cJSON *gw_json_parse(const char *text, size_t len)
{
    cJSON *c = gw__json_parse_fast(text, len);
    return c ? c : cJSON_ParseWithLength(text, len);
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
