/*
 * util.c — errors, bounded buffers, allocation, logging, clocks, randomness.
 */
#include "gw.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* ---- errors ---- */

#define GW__ERR_STR(name, val, msg) case GW_##name: return msg;
const char *gw_strerror(gw_err_t err)
{
    switch (err) {
    case GW_OK: return "success";
    GW_ERR_MAP(GW__ERR_STR)
    default: return "unknown error";
    }
}
#undef GW__ERR_STR

#define GW__ERR_NAME(name, val, msg) case GW_##name: return "GW_" #name;
const char *gw_err_name(gw_err_t err)
{
    switch (err) {
    case GW_OK: return "GW_OK";
    GW_ERR_MAP(GW__ERR_NAME)
    default: return "GW_EUNKNOWN";
    }
}
#undef GW__ERR_NAME

/* ---- allocation ---- */

static void gw__oom(size_t n)
{
    fprintf(stderr, "paygated: out of memory allocating %zu bytes\n", n);
    abort();
}

void *gw_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL) gw__oom(n);
    return p;
}

void *gw_xcalloc(size_t n, size_t m)
{
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (p == NULL) gw__oom(n * m);
    return p;
}

char *gw_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = gw_xmalloc(n);
    memcpy(p, s, n);
    return p;
}

/* ---- buffers ---- */

void gw_buf_init(gw_buf_t *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void gw_buf_free(gw_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void gw_buf_reset(gw_buf_t *b)
{
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

static gw_err_t gw__buf_reserve(gw_buf_t *b, size_t extra)
{
    if (extra > b->max || b->len > b->max - extra) return GW_ETOOBIG;
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return GW_OK;
    /* A first allocation of 1 KiB: most buffers (a request, a reply, a
     * channel call's body and headers) fit, where growing from 64 bytes
     * took five or six reallocs each (40 per c-to-b order, 5 % of
     * paygated's instructions in callgrind). */
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < need) cap *= 2;
    if (cap > b->max + 1) cap = b->max + 1;
    char *p = realloc(b->data, cap);
    if (p == NULL) return GW_ENOMEM;
    b->data = p;
    b->cap = cap;
    return GW_OK;
}

gw_err_t gw_buf_reserve(gw_buf_t *b, size_t extra)
{
    return gw__buf_reserve(b, extra);
}

gw_err_t gw_buf_append(gw_buf_t *b, const void *p, size_t n)
{
    gw_err_t rc = gw__buf_reserve(b, n);
    if (rc != GW_OK) return rc;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return GW_OK;
}

gw_err_t gw_buf_appends(gw_buf_t *b, const char *s)
{
    return gw_buf_append(b, s, strlen(s));
}

gw_err_t gw_buf_appendf(gw_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    char small[256];
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) return GW_EINVAL;
    if ((size_t)n < sizeof(small)) return gw_buf_append(b, small, (size_t)n);
    gw_err_t rc = gw__buf_reserve(b, (size_t)n);
    if (rc != GW_OK) return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return GW_OK;
}

void gw_buf_consume(gw_buf_t *b, size_t n)
{
    if (n >= b->len) {
        gw_buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

/* ---- logging ---- */

int gw_log_level = GW_LOG_INFO;

static const char *const gw__level_names[] = {
    "emerg", "alert", "crit", "error", "warn", "notice", "info", "debug"
};

int gw_log_level_parse(const char *name)
{
    for (size_t i = 0; i < GW_ARRAY_SIZE(gw__level_names); i++)
        if (strcmp(name, gw__level_names[i]) == 0) return (int)i;
    return -1;
}

const char *gw_log_level_name(int level)
{
    if (level < 0 || level >= (int)GW_ARRAY_SIZE(gw__level_names)) return "?";
    return gw__level_names[level];
}

void gw__vlog(int level, const char *reqid, const char *tag, const char *fmt, va_list ap)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s pid=%d",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, gw_log_level_name(level), (int)getpid());
    if (reqid && n < (int)sizeof(line))
        n += snprintf(line + n, sizeof(line) - (size_t)n, " req=%s", reqid);
    if (tag && n < (int)sizeof(line))
        n += snprintf(line + n, sizeof(line) - (size_t)n, " [%s]", tag);
    if (n < (int)sizeof(line) - 1) {
        line[n++] = ' ';
        int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        if (m > 0) n += m;
    }
    if (n >= (int)sizeof(line) - 1) n = (int)sizeof(line) - 2;
    /* one line per event: fold embedded newlines */
    for (int i = 0; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
    line[n++] = '\n';
    /* a single write keeps lines whole between threads and processes */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}

void gw__log(int level, const char *reqid, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    gw__vlog(level, reqid, NULL, fmt, ap);
    va_end(ap);
}

/* ---- clocks ---- */

uint64_t gw_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t gw_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- randomness ---- */

gw_err_t gw_random(void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return GW_EIO;
        }
        p += r;
        n -= (size_t)r;
    }
    return GW_OK;
}

/* Nonces take their bytes from a per-thread pool refilled by getrandom 1 kB
 * at a time: in a VM a getrandom call costs tens of microseconds, and every
 * channel request needs a nonce (docs/performance.md).  Bytes are used once
 * and wiped; a forked child refills before using any. */
static _Thread_local struct {
    uint8_t b[1024];
    size_t left;
} nonce_pool;
static pthread_once_t nonce_once = PTHREAD_ONCE_INIT;

/* In a forked child only the forking thread exists: its pool is emptied. */
static void nonce_after_fork(void)
{
    memset(nonce_pool.b, 0, sizeof(nonce_pool.b));
    nonce_pool.left = 0;
}

static void nonce_init(void)
{
    pthread_atfork(NULL, NULL, nonce_after_fork);
}

static gw_err_t nonce_bytes(uint8_t *out, size_t n)
{
    pthread_once(&nonce_once, nonce_init);
    while (n > 0) {
        if (nonce_pool.left == 0) {
            gw_err_t rc = gw_random(nonce_pool.b, sizeof(nonce_pool.b));
            if (rc != GW_OK) return rc;
            nonce_pool.left = sizeof(nonce_pool.b);
        }
        size_t k = n < nonce_pool.left ? n : nonce_pool.left;
        uint8_t *src = nonce_pool.b + sizeof(nonce_pool.b) - nonce_pool.left;
        memcpy(out, src, k);
        memset(src, 0, k);
        nonce_pool.left -= k;
        out += k;
        n -= k;
    }
    return GW_OK;
}

gw_err_t gw_nonce(char *out, size_t n)
{
    static const char alphabet[] =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    uint8_t rnd[64];
    size_t i = 0;
    while (i < n) {
        size_t chunk = n - i < sizeof(rnd) ? n - i : sizeof(rnd);
        gw_err_t rc = nonce_bytes(rnd, chunk);
        if (rc != GW_OK) return rc;
        for (size_t j = 0; j < chunk; j++) {
            /* 248 = 62*4: reject the tail to keep the distribution uniform */
            if (rnd[j] >= 248) continue;
            out[i++] = alphabet[rnd[j] % 62];
        }
    }
    out[n] = '\0';
    return GW_OK;
}

/* ---- formatting without printf ---- */

size_t gw_strjoin(char *dst, size_t n, ...)
{
    size_t len = 0;
    va_list ap;
    if (n == 0) return 0;
    va_start(ap, n);
    for (const char *p = va_arg(ap, const char *); p; p = va_arg(ap, const char *)) {
        size_t k = strlen(p);
        if (k > n - 1 - len) k = n - 1 - len;
        memcpy(dst + len, p, k);
        len += k;
        if (len == n - 1) break;
    }
    va_end(ap);
    dst[len] = '\0';
    return len;
}

size_t gw_i64toa(int64_t v, char *dst)
{
    char tmp[20];
    size_t n = 0, len = 0;
    /* through uint64_t, so that INT64_MIN negates */
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) dst[len++] = '-';
    while (n) dst[len++] = tmp[--n];
    dst[len] = '\0';
    return len;
}

size_t gw_hex_u64(uint64_t v, int digits, char *dst)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = digits - 1; i >= 0; i--, v >>= 4) dst[i] = hex[v & 15];
    dst[digits] = '\0';
    return (size_t)digits;
}
