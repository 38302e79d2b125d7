/*
 * gw.h — the core's common definitions: error codes, strings, bounded
 * buffers, logging and clocks.  Every core and storage file includes this.
 *
 * Conventions (see docs/architecture.md):
 *   - public core symbols are gw_*, internal non-static ones gw__*;
 *   - errors are negative gw_err_t values from GW_ERR_MAP, 0 is GW_OK;
 *   - out of memory is fatal at start-up and propagated (GW_ENOMEM) on
 *     request paths;
 *   - every growable buffer carries a hard maximum.
 */
#ifndef GW_H
#define GW_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include <string.h>

#include "gw_channel.h" /* gw_err_t, GW_ERR_MAP, gw_str_t are shared with modules */

#define GW_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define GW_STRLIT(s) ((gw_str_t){ (s), sizeof(s) - 1 })
#define GW_UNUSED(x) ((void)(x))

static inline gw_str_t gw_str(const char *s) { return (gw_str_t){ s, s ? strlen(s) : 0 }; }
static inline int gw_str_eq(gw_str_t a, const char *b)
{
    size_t n = strlen(b);
    return a.len == n && memcmp(a.ptr, b, n) == 0;
}

/* The hot paths' "%s…%s" / "%lld" / "%08x" formatting without printf's
 * parsing (~1 000 instructions a call; a dozen calls per order).
 * gw_strjoin copies the strings up to a NULL into dst, truncated like
 * snprintf (always terminated when n > 0), and returns the length written;
 * NULL pieces are not allowed (pass ""). */
size_t gw_strjoin(char *dst, size_t n, ...) __attribute__((sentinel));
/* v in decimal; dst has room for 21 bytes; returns the length */
size_t gw_i64toa(int64_t v, char *dst);
/* v's low 4 × digits bits as `digits` lower-case hex digits, zero-padded,
 * NUL-terminated; returns digits */
size_t gw_hex_u64(uint64_t v, int digits, char *dst);

const char *gw_strerror(gw_err_t err);
const char *gw_err_name(gw_err_t err);

/* ---- bounded growable buffer (curl dynbuf); gw_buf_t is in gw_channel.h ---- */
void gw_buf_init(gw_buf_t *b, size_t max);
void gw_buf_free(gw_buf_t *b);
void gw_buf_reset(gw_buf_t *b);
gw_err_t gw_buf_append(gw_buf_t *b, const void *p, size_t n);
/* Room for extra more bytes (and the NUL) without another allocation, so
 * that a writer can copy pieces with gw_buf_put_reserved; GW_ETOOBIG past
 * max. */
gw_err_t gw_buf_reserve(gw_buf_t *b, size_t extra);
/* Appends n bytes into room gw_buf_reserve made (no check, no NUL: the
 * writer ends with gw_buf_put_end). */
static inline void gw_buf_put_reserved(gw_buf_t *b, const void *p, size_t n)
{
    memcpy(b->data + b->len, p, n);
    b->len += n;
}
static inline void gw_buf_put_end(gw_buf_t *b) { b->data[b->len] = '\0'; }
gw_err_t gw_buf_appendf(gw_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
gw_err_t gw_buf_appends(gw_buf_t *b, const char *s);
/* Remove the first n bytes. */
void gw_buf_consume(gw_buf_t *b, size_t n);

/* ---- allocation: fatal variants for start-up paths ---- */
void *gw_xmalloc(size_t n);
void *gw_xcalloc(size_t n, size_t m);
char *gw_xstrdup(const char *s);

/* ---- logging (levels as nginx) ---- */
enum {
    GW_LOG_EMERG = 0,
    GW_LOG_ALERT,
    GW_LOG_CRIT,
    GW_LOG_ERR,
    GW_LOG_WARN,
    GW_LOG_NOTICE,
    GW_LOG_INFO,
    GW_LOG_DEBUG
};
extern int gw_log_level;
int gw_log_level_parse(const char *name); /* -1 when unknown */
const char *gw_log_level_name(int level);
void gw__log(int level, const char *reqid, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void gw__vlog(int level, const char *reqid, const char *tag, const char *fmt, va_list ap);

/* Arguments are evaluated only when the level is enabled (redis serverLog). */
#define gw_log(level, ...)                                                     \
    do {                                                                       \
        if ((level) <= gw_log_level) gw__log((level), NULL, __VA_ARGS__);      \
    } while (0)
#define gw_log_req(level, reqid, ...)                                          \
    do {                                                                       \
        if ((level) <= gw_log_level) gw__log((level), (reqid), __VA_ARGS__);   \
    } while (0)

/* ---- clocks ---- */
uint64_t gw_now_ms(void);   /* wall clock, ms since the epoch */
uint64_t gw_mono_us(void);  /* monotonic, microseconds */

/* ---- random bytes (getrandom) ---- */
gw_err_t gw_random(void *buf, size_t n);
/* n random characters from [0-9A-Za-z] plus NUL; out must hold n+1 bytes. */
gw_err_t gw_nonce(char *out, size_t n);

#endif /* GW_H */
