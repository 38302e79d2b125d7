/*
 * chantest.h — scaffolding shared by the channel-module suites
 * (test_swiftpass.c, test_alipay.c, test_wechatpay.c, test_mybank.c).
 *
 * Header-only on purpose: the Makefile builds each test/unit/test_*.c as a
 * program of its own, so there is no second translation unit to link.  Every
 * function is static and marked unused, so a suite that does not need one
 * still builds with -Wall -Wextra -Werror.
 *
 * Include it after <cmocka.h>, "host.h", the module's own source (it calls
 * the module's gw_channel_entry() to tell the .so's vtable from the
 * in-process one) and a #define of SO_PATH.  It holds the state every suite
 * shares: the host API H, the vtable CH of the group being run, the dlopen
 * handle DL, the group's ctx block CTX, INPROC and the scratch directory
 * TMPD.
 *
 * It also defines the two cmocka groups' fixtures (setup_inproc,
 * setup_dlopen, teardown_inproc, teardown_dlopen).  They call three hooks
 * the suite defines:
 *   - common_setup(): host API, TMPD, fixtures, settings, merchants;
 *     before the module is loaded, so CH is not set yet; 0 or -1;
 *   - group_ctx(): the group's CTX, once CH is set;
 *   - common_teardown(): frees what common_setup made, but for CTX and
 *     TMPD, which the fixtures free (CTX first, TMPD last).
 *
 * Run from the repository root (fixture paths are relative to it).
 */
#ifndef PAYGATE_TEST_CHANTEST_H
#define PAYGATE_TEST_CHANTEST_H

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#ifndef SO_PATH
#error "define SO_PATH (the module's .so under build/asan) before including chantest.h"
#endif

#define CT_FN static __attribute__((unused))

/* ------------------------------------------------------------------ */
/* test state */

static const gw_host_api_t *H;
static const gw_channel_t *CH; /* the vtable of the group being run */
static void *DL;               /* dlopen handle (dlopen group) */
static void *CTX;              /* the group's ctx block, initialised with the suite's settings */
static char TMPD[64];          /* scratch directory for the external tools */
__attribute__((unused)) static int INPROC; /* 1 in the in-process group, 0 in the dlopen group */

typedef gw_err_t (*build_fn)(const gw_chan_call_t *, gw_chan_request_t *);
typedef gw_err_t (*parse_fn)(const gw_chan_call_t *, const gw_chan_response_t *, gw_chan_result_t *);

/* ------------------------------------------------------------------ */
/* files, strings, shell */

/* The whole file (malloc'd, NUL-terminated); fails the test when unreadable. */
CT_FN char *read_file(const char *path)
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
    return p;
}

CT_FN void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

CT_FN gw_str_t S(const char *s)
{
    return (gw_str_t){ s, s ? strlen(s) : 0 };
}

/* JSON string body for a PEM (newlines escaped, no quotes added) */
CT_FN void json_escape_into(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; *s && o + 3 < cap; s++) {
        if (*s == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *s;
        }
    }
    out[o] = '\0';
}

/* Runs cmd with sh; returns its stdout (malloc'd); *status gets the exit code. */
CT_FN char *sh(const char *cmd, int *status)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 4096, len = 0, n;
    char *out = malloc(cap);
    assert_non_null(out);
    while ((n = fread(out + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 2) {
            cap *= 2;
            out = realloc(out, cap);
            assert_non_null(out);
        }
    }
    out[len] = '\0';
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return out;
}

/* ------------------------------------------------------------------ */
/* key/value fields, for the suites that read requests with a reader of
 * their own: #define CT_FIELDS_MAX (the capacity) before including */

#ifdef CT_FIELDS_MAX
typedef struct {
    char *k[CT_FIELDS_MAX];
    char *v[CT_FIELDS_MAX];
    int n;
} fields_t;

CT_FN void fields_free(fields_t *f)
{
    for (int i = 0; i < f->n; i++) {
        free(f->k[i]);
        free(f->v[i]);
    }
    f->n = 0;
}

/* the value of the first field named k, NULL when there is none */
CT_FN const char *fget(const fields_t *f, const char *k)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->k[i], k) == 0) return f->v[i];
    return NULL;
}

/* qsort comparator of field indexes by key (byte-wise); SORT_F is the
 * fields_t being sorted (single-threaded use only) */
static const fields_t *SORT_F;
CT_FN int cmp_idx(const void *a, const void *b)
{
    return strcmp(SORT_F->k[*(const int *)a], SORT_F->k[*(const int *)b]);
}
#endif

/* ------------------------------------------------------------------ */
/* openssl (the independent implementation of signatures) */

/* Base64 signature of the n bytes at s with the PEM private key file and
 * digest alg ("sha256", "sha1"), by `openssl dgst -sign`; malloc'd. */
CT_FN char *ct_ossl_sign_n(const char *keyfile, const char *alg, const char *s, size_t n)
{
    char path[128], cmd[512];
    int st;
    snprintf(path, sizeof(path), "%s/sign.in", TMPD);
    write_file(path, s, n);
    snprintf(cmd, sizeof(cmd), "openssl dgst -%s -sign %s %s | openssl base64 -A", alg, keyfile, path);
    char *r = sh(cmd, &st);
    assert_int_equal(st, 0);
    return r;
}

/* 1 when `openssl dgst -<alg> -verify` accepts the Base64 signature of s. */
CT_FN int ct_ossl_verify(const char *pubfile, const char *alg, const char *s, const char *sig_b64)
{
    char data[128], sigb[128], sig[128], cmd[768];
    int st;
    snprintf(data, sizeof(data), "%s/verify.in", TMPD);
    snprintf(sigb, sizeof(sigb), "%s/verify.sig.b64", TMPD);
    snprintf(sig, sizeof(sig), "%s/verify.sig", TMPD);
    write_file(data, s, strlen(s));
    write_file(sigb, sig_b64, strlen(sig_b64));
    snprintf(cmd, sizeof(cmd),
             "openssl base64 -d -A -in %s -out %s && openssl dgst -%s -verify %s -signature %s %s 2>/dev/null",
             sigb, sig, alg, pubfile, sig, data);
    char *r = sh(cmd, &st);
    int ok = st == 0 && strstr(r, "Verified OK") != NULL;
    free(r);
    return ok;
}

/* ------------------------------------------------------------------ */
/* scratch directory */

/* Creates TMPD as /tmp/<name>.XXXXXX; -1 when it cannot. */
CT_FN int ct_tmpdir_make(const char *name)
{
    snprintf(TMPD, sizeof(TMPD), "/tmp/%s.XXXXXX", name);
    return mkdtemp(TMPD) == NULL ? -1 : 0;
}

CT_FN void ct_tmpdir_remove(void)
{
    char cmd[128];
    int st;
    snprintf(cmd, sizeof(cmd), "rm -rf %s", TMPD);
    free(sh(cmd, &st));
}

/* ------------------------------------------------------------------ */
/* calls */

CT_FN gw_chan_call_t mkcall(void *ctx, const gw_chan_merchant_t *m, const gw_chan_order_t *o,
                            const gw_chan_refund_t *r, uint32_t flags)
{
    gw_chan_call_t c;
    memset(&c, 0, sizeof(c));
    c.ctx = ctx;
    c.host = H;
    c.merchant = m;
    c.order = o;
    c.refund = r;
    c.flags = flags;
    return c;
}

/* A request with its four buffers set up at the given capacities. */
CT_FN void ct_req_init(gw_chan_request_t *r, size_t url_cap, size_t headers_cap, size_t body_cap, size_t sign_cap)
{
    memset(r, 0, sizeof(*r));
    H->buf_init(&r->url, url_cap);
    H->buf_init(&r->headers, headers_cap);
    H->buf_init(&r->body, body_cap);
    H->buf_init(&r->sign_string, sign_cap);
}

CT_FN void req_free(gw_chan_request_t *r)
{
    H->buf_free(&r->url);
    H->buf_free(&r->headers);
    H->buf_free(&r->body);
    H->buf_free(&r->sign_string);
}

/* Runs a parse function on an HTTP answer (headers may be NULL); returns
 * res->status.  res->pay_data is set up; the caller frees it. */
CT_FN int ct_parse(parse_fn fn, const gw_chan_call_t *c, int http, const char *headers, const char *body,
                   gw_chan_result_t *res)
{
    gw_chan_response_t resp;
    memset(&resp, 0, sizeof(resp));
    resp.status = http;
    resp.headers = S(headers);
    resp.body = S(body);
    memset(res, 0x5a, sizeof(*res)); /* the module must set every field it reports */
    H->buf_init(&res->pay_data, 65536);
    assert_int_equal(fn(c, &resp, res), GW_OK);
    return res->status;
}

/* ------------------------------------------------------------------ */
/* contexts and the two ways of loading the module */

/* A ctx block initialised with settings; asserts that init returns want.
 * The reason init gives goes to errout (when not NULL) and, before the
 * buffer is freed, to check (when not NULL).  NULL unless init succeeded. */
CT_FN void *ct_new_ctx(const char *settings, gw_err_t want, char *errout, size_t errcap,
                       void (*check)(gw_err_t rc, const gw_buf_t *err))
{
    void *ctx = calloc(1, CH->ctx_size);
    gw_buf_t err;
    H->buf_init(&err, 4096);
    gw_err_t rc = CH->init(ctx, H, settings, strlen(settings), &err);
    if (rc != want) fprintf(stderr, "init(%.200s) = %d: %s\n", settings, rc, err.data ? err.data : "");
    assert_int_equal(rc, want);
    if (check) check(rc, &err);
    if (errout) snprintf(errout, errcap, "%s", err.data ? err.data : "");
    H->buf_free(&err);
    if (rc != GW_OK) {
        free(ctx);
        return NULL;
    }
    return ctx;
}

CT_FN void free_ctx(void *ctx)
{
    if (ctx == NULL) return;
    CH->fini(ctx);
    free(ctx);
}

/* The "dlopen" group: loads so_path into DL with RTLD_NOW|RTLD_LOCAL and
 * returns the .so's own vtable (never the in-process one); NULL on failure. */
CT_FN const gw_channel_t *ct_dlopen_channel(const char *so_path)
{
    DL = dlopen(so_path, RTLD_NOW | RTLD_LOCAL);
    if (DL == NULL) {
        fprintf(stderr, "dlopen %s: %s (run 'make asan' first)\n", so_path, dlerror());
        return NULL;
    }
    gw_channel_entry_fn fn;
    *(void **)&fn = dlsym(DL, GW_CHANNEL_ENTRY_SYMBOL);
    if (fn == NULL) return NULL;
    const gw_channel_t *ch = fn();
    if (ch == gw_channel_entry()) return NULL; /* must be the .so's own table */
    return ch;
}

CT_FN void ct_dlclose(void)
{
    if (DL) dlclose(DL);
    DL = NULL;
}

/* The .so exports exactly one function (gw_channel_entry) and has no
 * writable data of its own: no globals in .data or .bss but the C
 * runtime's. */
CT_FN void ct_assert_so_exports(const char *so_path)
{
    char cmd[512];
    int st;
    snprintf(cmd, sizeof(cmd), "nm -D --defined-only %s | awk '$2 ~ /^[A-Z]$/ {print $3}'", so_path);
    char *out = sh(cmd, &st);
    assert_int_equal(st, 0);
    assert_string_equal(out, "gw_channel_entry\n");
    free(out);
    snprintf(cmd, sizeof(cmd),
             "objdump -t %s | awk '($4==\".data\"||$4==\".bss\") && $6!=\"completed.0\" && "
             "$6!=\"__dso_handle\" && $6!=\"__TMC_END__\" && $6!=\".data\" && $6!=\".bss\" {print $6}'",
             so_path);
    out = sh(cmd, &st);
    assert_int_equal(st, 0);
    assert_string_equal(out, "");
    free(out);
}

/* ------------------------------------------------------------------ */
/* reentrancy: many threads, one ctx */

typedef struct {
    int (*body)(const void *arg);
    const void *arg;
    int failures;
} ct_thr_t;

CT_FN void *ct_thr_main(void *p)
{
    ct_thr_t *t = p;
    t->failures = t->body(t->arg);
    return NULL;
}

/* Runs body(arg) in 8 threads at once (the group's CTX shared); returns
 * the sum of the failures they count.  pthread_create must succeed. */
CT_FN int ct_run_threads(int (*body)(const void *arg), const void *arg)
{
    enum { N = 8 };
    pthread_t t[N];
    ct_thr_t a[N];
    for (int i = 0; i < N; i++) {
        a[i] = (ct_thr_t){ body, arg, 0 };
        assert_int_equal(pthread_create(&t[i], NULL, ct_thr_main, &a[i]), 0);
    }
    int failures = 0;
    for (int i = 0; i < N; i++) pthread_join(t[i], NULL); /* all of them before any assert */
    for (int i = 0; i < N; i++) failures += a[i].failures;
    return failures;
}

/* ------------------------------------------------------------------ */
/* the two groups' fixtures, around the suite's hooks */

static int common_setup(void);
static void *group_ctx(void);
static int common_teardown(void);

static int setup_inproc(void **state)
{
    (void)state;
    if (common_setup() != 0) return -1;
    INPROC = 1;
    CH = gw_channel_entry();
    CTX = group_ctx();
    return 0;
}

static int setup_dlopen(void **state)
{
    (void)state;
    if (common_setup() != 0) return -1;
    INPROC = 0;
    CH = ct_dlopen_channel(SO_PATH);
    if (CH == NULL) return -1;
    CTX = group_ctx();
    return 0;
}

static void ct_group_teardown(void)
{
    free_ctx(CTX);
    CTX = NULL;
    common_teardown();
    ct_tmpdir_remove();
}

static int teardown_inproc(void **state)
{
    (void)state;
    ct_group_teardown();
    return 0;
}

static int teardown_dlopen(void **state)
{
    (void)state;
    ct_group_teardown();
    ct_dlclose();
    return 0;
}

#endif /* PAYGATE_TEST_CHANTEST_H */
