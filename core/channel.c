/*
 * channel.c — loading channel modules, generations, reload and draining.
 *
 * Loading one file (so_open + so_init), in this order, each failure a
 * rejection with a message naming what was wrong (PostgreSQL dfmgr.c,
 * nginx ngx_add_module):
 *
 *   1. open it without following symlinks; it must be a regular file, not
 *      world-writable, owned by root or by the user we run as;
 *   2. copy it to "<private dir>/<stem>.<generation>.<counter>.so": glibc's
 *      dlopen hands back the already-loaded object for a path (and file) it
 *      has seen, so a replaced file must reach it under a fresh name;
 *   3. dlopen(RTLD_NOW | RTLD_LOCAL): unresolved symbols fail here, and
 *      modules cannot interpose on each other;
 *   4. dlsym the entry function, call it, and check the vtable: ABI major
 *      equal, minor not newer than the core's, struct_size at least the 1.0
 *      size, build_sig equal, name [a-z0-9_]{1,31}, version present,
 *      ctx_size bounded, no unknown method bits, every mandatory method set;
 *      the vtable is then copied into core memory (members beyond the
 *      module's struct_size stay NULL), and so are name and version;
 *   5. (registry) the name must be unique within the generation;
 *   6. allocate ctx_size zeroed bytes, call init with the channel's settings.
 *
 * Module objects (gw__chan_so_t) are shared between generations: a module
 * that is carried over is referenced by both, and finalised only when the
 * last generation holding it is freed.  Everything here runs on the loop
 * thread, so counts are plain integers.
 */
#include "channel.h"
#include "host.h"
#include "json.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SO_MAX_FILE_BYTES (256u << 20) /* a module larger than this is refused */
#define SO_MAX_CTX_BYTES (16u << 20)
#define SO_ERR_MAX 512
#define INIT_ERR_MAX 1024
#define KNOWN_METHODS                                                          \
    (GW_METHOD_WECHAT_QR | GW_METHOD_WECHAT_JSAPI | GW_METHOD_ALIPAY_QR |      \
     GW_METHOD_ALIPAY_JSAPI | GW_METHOD_BARCODE)

struct gw__chan_so {
    gw_channel_t vt;       /* copy of the module's vtable */
    void *dl;
    void *ctx;
    char name[32];
    char version[64];
    char file[NAME_MAX + 1];
    char path[PATH_MAX];   /* the private copy */
    char tmpdir[PATH_MAX]; /* set for gw_chan_open_file: removed with it */
    unsigned long generation;
    uint64_t loaded_at_ms;
    int refs;              /* generations holding it (+1 for an open file) */
    long inflight;         /* pins taken through it */
    int initialized;
};

struct gw_chan_gen {
    unsigned long id;
    long refcnt;           /* 1 while current, +1 per pin */
    size_t n;
    gw_chan_module_t *mods;
    uint64_t retired_ms;   /* uv_now when superseded */
    gw_chan_gen_t *next;   /* retired list */
    gw_chan_registry_t *reg;
};

typedef struct {
    char file[NAME_MAX + 1];
    char name[32];         /* "" unless read */
    char *error;           /* NULL: loaded */
} file_status_t;

struct gw_chan_registry {
    uv_loop_t *loop;
    char *dir;
    const cJSON *settings;
    int drain_timeout_ms;
    char tmpdir[PATH_MAX];
    unsigned long gen_counter;
    unsigned long copy_counter;
    gw_chan_gen_t *current;
    gw_chan_gen_t *retired;
    file_status_t *files;
    size_t nfiles;
    uv_timer_t drain_timer;
};

/* ------------------------------------------------------------------ */
/* names */

const char *gw_chan_method_name(uint32_t bit)
{
    switch (bit) {
    case GW_METHOD_WECHAT_QR: return "wechat_qr";
    case GW_METHOD_WECHAT_JSAPI: return "wechat_jsapi";
    case GW_METHOD_ALIPAY_QR: return "alipay_qr";
    case GW_METHOD_ALIPAY_JSAPI: return "alipay_jsapi";
    case GW_METHOD_BARCODE: return "barcode";
    default: return NULL;
    }
}

const char *gw_chan_pay_status_name(int status)
{
    static const char *const names[] = { "UNKNOWN", "PENDING", "SUCCESS", "USER_PAYING", "NOT_PAID",
                                         "CLOSED", "REVERSED", "FAILED", "REFUNDED" };
    if (status < 0 || (size_t)status >= GW_ARRAY_SIZE(names)) return "INVALID";
    return names[status];
}

const char *gw_chan_refund_status_name(int status)
{
    static const char *const names[] = { "UNKNOWN", "PROCESSING", "SUCCESS", "FAILED" };
    if (status < 0 || (size_t)status >= GW_ARRAY_SIZE(names)) return "INVALID";
    return names[status];
}

/* ------------------------------------------------------------------ */
/* helpers */

/* Copies at most cap-1 bytes of a string coming from a module (or a file
 * name) into out, replacing anything unprintable, so log lines and JSON stay
 * clean whatever the module holds. */
static void copy_printable(char *out, size_t cap, const char *s)
{
    size_t i = 0;
    for (; s && s[i] && i + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[i] = '\0';
}

static int name_valid(const char *s)
{
    size_t n = strnlen(s, 32);
    if (n == 0 || n > 31) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return 0;
    }
    return 1;
}

static int version_valid(const char *s)
{
    size_t n = strnlen(s, 64);
    if (n == 0 || n > 63) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f) return 0;
    return 1;
}

static void so_seterr(char *err, size_t errlen, const char *file, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void so_seterr(char *err, size_t errlen, const char *file, const char *fmt, ...)
{
    char shown[NAME_MAX + 1];
    copy_printable(shown, sizeof(shown), file);
    int n = snprintf(err, errlen, "channel \"%s\": ", shown);
    if (n < 0 || (size_t)n >= errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

static gw_err_t copy_fd(int in, const char *path, char *why, size_t whylen)
{
    int out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0700);
    if (out < 0) {
        snprintf(why, whylen, "%s", strerror(errno));
        return GW_EIO;
    }
    gw_err_t rc = GW_OK;
    char buf[65536];
    for (;;) {
        ssize_t r = read(in, buf, sizeof(buf));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            snprintf(why, whylen, "read: %s", strerror(errno));
            rc = GW_EIO;
            break;
        }
        if (r == 0) break;
        for (ssize_t off = 0; off < r;) {
            ssize_t w = write(out, buf + off, (size_t)(r - off));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) {
                snprintf(why, whylen, "write: %s", strerror(errno));
                rc = GW_EIO;
                goto out;
            }
            off += w;
        }
    }
out:
    if (close(out) != 0 && rc == GW_OK) {
        snprintf(why, whylen, "close: %s", strerror(errno));
        rc = GW_EIO;
    }
    if (rc != GW_OK) unlink(path);
    return rc;
}

/* ------------------------------------------------------------------ */
/* the private directory of the module copies */

/*
 * Each process copies modules into "$TMPDIR/paygate-chan.<pid>.XXXXXX" and
 * removes the copies and the directory when it exits.  A process that
 * could not (SIGKILL, OOM killer, power loss) leaves them behind, about a
 * megabyte each time; the next start removes every such directory of ours
 * whose process is gone.  Only directories owned by our user, named with
 * a pid that no longer exists, holding nothing but regular files; never a
 * symlink followed.  A directory whose pid was reused by another process
 * waits for a later start.
 */
static const char *tmp_base(void)
{
    const char *tmp = getenv("TMPDIR");
    return tmp && *tmp ? tmp : "/tmp";
}

static gw_err_t private_dir(char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "%s/paygate-chan.%ld.XXXXXX", tmp_base(), (long)getpid());
    if (n < 0 || (size_t)n >= outlen || mkdtemp(out) == NULL) return GW_EIO;
    return GW_OK;
}

/* Removes what dir (opened relative to base) holds, then dir; returns the
 * number of files removed, -1 when something was not ours to remove. */
static int remove_stale(int base, const char *name)
{
    int fd = openat(base, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
        return -1;
    }
    int n = 0, bad = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        struct stat st;
        if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
            st.st_uid != geteuid() || unlinkat(fd, e->d_name, 0) != 0) {
            bad = 1;
            continue;
        }
        n++;
    }
    closedir(d);
    if (bad || unlinkat(base, name, AT_REMOVEDIR) != 0) return -1;
    return n;
}

void gw_chan_sweep_stale(void)
{
    const char *dir = tmp_base();
    int base = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (base < 0) return;
    DIR *d = fdopendir(base);
    if (d == NULL) {
        close(base);
        return;
    }
    static const char prefix[] = "paygate-chan.";
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strncmp(e->d_name, prefix, sizeof(prefix) - 1) != 0) continue;
        char *end;
        const char *p = e->d_name + sizeof(prefix) - 1;
        long pid = strtol(p, &end, 10);
        if (end == p || *end != '.' || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to ask */
        struct stat st;
        if (fstatat(base, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode) ||
            st.st_uid != geteuid())
            continue;
        int n = remove_stale(base, e->d_name);
        if (n >= 0)
            gw_log(GW_LOG_NOTICE, "channels: removed %s/%s (%d module copies of process %ld, "
                   "which did not exit cleanly)", dir, e->d_name, n, pid);
        else
            gw_log(GW_LOG_WARN, "channels: %s/%s is left by process %ld but could not be removed "
                   "whole", dir, e->d_name, pid);
    }
    closedir(d);
}

/* ------------------------------------------------------------------ */
/* one module */

static void so_destroy(gw__chan_so_t *so)
{
    if (so == NULL) return;
    if (so->initialized && so->vt.fini) so->vt.fini(so->ctx);
    if (so->ctx) gw_host_unregister_ctx(so->ctx);
    free(so->ctx);
    if (so->dl && dlclose(so->dl) != 0) {
        const char *e = dlerror();
        gw_log(GW_LOG_WARN, "channel \"%s\": dlclose: %s", so->file, e ? e : "failed");
    }
    if (so->path[0] && unlink(so->path) != 0 && errno != ENOENT)
        gw_log(GW_LOG_WARN, "channel \"%s\": unlink %s: %s", so->file, so->path, strerror(errno));
    if (so->tmpdir[0] && rmdir(so->tmpdir) != 0)
        gw_log(GW_LOG_WARN, "channel \"%s\": rmdir %s: %s", so->file, so->tmpdir, strerror(errno));
    free(so);
}

/* The mandatory 1.0 methods, by name for the rejection message. */
#define MANDATORY(XX)                                                          \
    XX(init) XX(pay) XX(pay_parse) XX(query) XX(query_parse) XX(refund)        \
    XX(refund_parse) XX(close) XX(close_parse) XX(notify_parse) XX(notify_verify)

static gw_err_t so_validate(gw__chan_so_t *so, const gw_channel_t *vt, char *err, size_t errlen)
{
    const char *f = so->file;
    char shown[72];
    uint32_t major = vt->abi_version >> 16, minor = vt->abi_version & 0xffffu;
    if (major != GW_CHANNEL_ABI_MAJOR) {
        so_seterr(err, errlen, f, "ABI major %u instead of %u", major, GW_CHANNEL_ABI_MAJOR);
        return GW_EINVAL;
    }
    if (minor > GW_CHANNEL_ABI_MINOR) {
        so_seterr(err, errlen, f, "ABI minor %u is newer than the core's %u (built for %u.%u)",
                  minor, GW_CHANNEL_ABI_MINOR, major, minor);
        return GW_EINVAL;
    }
    if (vt->struct_size < GW_CHANNEL_V1_SIZE) {
        so_seterr(err, errlen, f, "struct_size %u is smaller than the ABI 1.0 size %zu",
                  vt->struct_size, (size_t)GW_CHANNEL_V1_SIZE);
        return GW_EINVAL;
    }
    /* from here on every 1.0 member is inside the module's struct */
    if (vt->build_sig == NULL) {
        so_seterr(err, errlen, f, "build_sig is NULL instead of \"%s\"", GW_CHANNEL_BUILD_SIG);
        return GW_EINVAL;
    }
    if (strcmp(vt->build_sig, GW_CHANNEL_BUILD_SIG) != 0) {
        copy_printable(shown, sizeof(shown), vt->build_sig);
        so_seterr(err, errlen, f, "build_sig \"%s\" instead of \"%s\"", shown, GW_CHANNEL_BUILD_SIG);
        return GW_EINVAL;
    }
    if (vt->name == NULL) {
        so_seterr(err, errlen, f, "name is NULL");
        return GW_EINVAL;
    }
    if (!name_valid(vt->name)) {
        copy_printable(shown, sizeof(shown), vt->name);
        so_seterr(err, errlen, f, "name \"%s\" is not [a-z0-9_]{1,31}", shown);
        return GW_EINVAL;
    }
    copy_printable(so->name, sizeof(so->name), vt->name);
    if (vt->version == NULL) {
        so_seterr(err, errlen, f, "version is NULL");
        return GW_EINVAL;
    }
    if (!version_valid(vt->version)) {
        copy_printable(shown, sizeof(shown), vt->version);
        so_seterr(err, errlen, f, "version \"%s\" is not 1-63 printable characters", shown);
        return GW_EINVAL;
    }
    copy_printable(so->version, sizeof(so->version), vt->version);
    if (vt->ctx_size > SO_MAX_CTX_BYTES) {
        so_seterr(err, errlen, f, "ctx_size %u exceeds the limit %u", vt->ctx_size,
                  SO_MAX_CTX_BYTES);
        return GW_EINVAL;
    }
    if (vt->methods & ~(uint32_t)KNOWN_METHODS) {
        so_seterr(err, errlen, f, "methods 0x%x has unknown bits 0x%x", vt->methods,
                  vt->methods & ~(uint32_t)KNOWN_METHODS);
        return GW_EINVAL;
    }
#define GW__CHECK_METHOD(m)                                                    \
    if (vt->m == NULL) {                                                       \
        so_seterr(err, errlen, f, "mandatory method " #m " is NULL");          \
        return GW_EINVAL;                                                      \
    }
    MANDATORY(GW__CHECK_METHOD)
#undef GW__CHECK_METHOD
    /* the core-owned copy: members the module does not have stay NULL */
    size_t n = vt->struct_size < sizeof(gw_channel_t) ? vt->struct_size : sizeof(gw_channel_t);
    memcpy(&so->vt, vt, n);
    return GW_OK;
}

/* Steps 1-4 on an open file descriptor (which it closes). */
static gw_err_t so_open_fd(int fd, const char *file, const char *tmpdir, unsigned long gen,
                           unsigned long counter, gw__chan_so_t **out, char *err, size_t errlen)
{
    gw_err_t rc = GW_EINVAL;
    char why[256];
    gw__chan_so_t *so = calloc(1, sizeof(*so));
    if (so == NULL) {
        so_seterr(err, errlen, file, "out of memory");
        close(fd);
        return GW_ENOMEM;
    }
    copy_printable(so->file, sizeof(so->file), file);
    so->generation = gen;

    struct stat st;
    if (fstat(fd, &st) != 0) {
        so_seterr(err, errlen, file, "fstat: %s", strerror(errno));
        rc = GW_EIO;
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        so_seterr(err, errlen, file, "not a regular file; refusing to load it");
        goto fail;
    }
    if (st.st_mode & S_IWOTH) {
        so_seterr(err, errlen, file, "is world-writable (mode %04o); refusing to load it",
                  (unsigned)(st.st_mode & 07777));
        goto fail;
    }
    if (st.st_uid != 0 && st.st_uid != geteuid()) {
        so_seterr(err, errlen, file,
                  "is owned by uid %u, not by root or the current user (uid %u); refusing to load it",
                  (unsigned)st.st_uid, (unsigned)geteuid());
        goto fail;
    }
    if ((uint64_t)st.st_size > SO_MAX_FILE_BYTES) {
        so_seterr(err, errlen, file, "is larger than %u bytes", SO_MAX_FILE_BYTES);
        goto fail;
    }

    /* the private copy: <stem>.<generation>.<counter>.so */
    size_t flen = strlen(so->file);
    int stem = (int)(flen > 3 && strcmp(so->file + flen - 3, ".so") == 0 ? flen - 3 : flen);
    int pn = snprintf(so->path, sizeof(so->path), "%s/%.*s.%lu.%lu.so", tmpdir, stem, so->file,
                      gen, counter);
    if (pn < 0 || (size_t)pn >= sizeof(so->path)) {
        so->path[0] = '\0';
        so_seterr(err, errlen, file, "private path too long");
        goto fail;
    }
    if (copy_fd(fd, so->path, why, sizeof(why)) != GW_OK) {
        so->path[0] = '\0';
        so_seterr(err, errlen, file, "cannot copy to the private directory: %s", why);
        rc = GW_EIO;
        goto fail;
    }
    close(fd);
    fd = -1;

    dlerror();
    so->dl = dlopen(so->path, RTLD_NOW | RTLD_LOCAL);
    if (so->dl == NULL) {
        const char *e = dlerror();
        if (e == NULL) e = "unknown error";
        /* "<private path>: reason" → "reason" */
        size_t pl = strlen(so->path);
        if (strncmp(e, so->path, pl) == 0 && e[pl] == ':') e += pl + 1;
        while (*e == ' ') e++;
        so_seterr(err, errlen, file, "dlopen failed: %s", e);
        goto fail;
    }
    dlerror();
    void *sym = dlsym(so->dl, GW_CHANNEL_ENTRY_SYMBOL);
    if (sym == NULL) {
        so_seterr(err, errlen, file, "no " GW_CHANNEL_ENTRY_SYMBOL "() symbol: not a paygate channel module");
        goto fail;
    }
    gw_channel_entry_fn entry;
    memcpy(&entry, &sym, sizeof(entry)); /* POSIX: object pointer → function pointer */
    const gw_channel_t *vt = entry();
    if (vt == NULL) {
        so_seterr(err, errlen, file, GW_CHANNEL_ENTRY_SYMBOL "() returned NULL");
        goto fail;
    }
    rc = so_validate(so, vt, err, errlen);
    if (rc != GW_OK) goto fail;
    *out = so;
    return GW_OK;

fail:
    if (fd >= 0) close(fd);
    so_destroy(so); /* err holds copies only: safe to dlclose */
    return rc;
}

/* Step 6. */
static gw_err_t so_init(gw__chan_so_t *so, const char *settings, size_t settings_len, char *err,
                        size_t errlen)
{
    gw_err_t rc;
    gw_buf_t why;
    gw_buf_init(&why, INIT_ERR_MAX);
    so->ctx = calloc(1, so->vt.ctx_size ? so->vt.ctx_size : 1);
    if (so->ctx == NULL) {
        so_seterr(err, errlen, so->file, "out of memory for ctx_size %u", so->vt.ctx_size);
        return GW_ENOMEM;
    }
    rc = gw_host_register_ctx(so->ctx, so->name);
    if (rc != GW_OK) {
        so_seterr(err, errlen, so->file, "out of memory");
        goto fail;
    }
    rc = so->vt.init(so->ctx, gw_host_api(), settings, settings_len, &why);
    if (rc != GW_OK) {
        char shown[INIT_ERR_MAX];
        copy_printable(shown, sizeof(shown), why.len ? why.data : "no reason given");
        so_seterr(err, errlen, so->file, "init failed: %s (%s)", shown, gw_err_name(rc));
        if (rc > 0) rc = GW_EINVAL;
        goto fail;
    }
    so->initialized = 1;
    so->loaded_at_ms = gw_now_ms();
    gw_buf_free(&why);
    return GW_OK;
fail:
    gw_buf_free(&why);
    gw_host_unregister_ctx(so->ctx);
    free(so->ctx);
    so->ctx = NULL;
    return rc;
}

static void module_fill(gw_chan_module_t *m, gw__chan_so_t *so, gw_chan_gen_t *g)
{
    m->vt = &so->vt;
    m->ctx = so->ctx;
    m->host = gw_host_api();
    m->name = so->name;
    m->version = so->version;
    m->file = so->file;
    m->generation = g ? g->id : so->generation;
    m->gen_ = g;
    m->so_ = so;
}

/* ------------------------------------------------------------------ */
/* operator CLI: one file */

gw_err_t gw_chan_open_file(const char *path, const char *settings, size_t settings_len,
                           gw_chan_module_t **out, char *err, size_t errlen)
{
    *out = NULL;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (settings == NULL) {
        settings = "{}";
        settings_len = 2;
    }
    char tmpdir[PATH_MAX];
    if (private_dir(tmpdir, sizeof(tmpdir)) != GW_OK) {
        so_seterr(err, errlen, base, "cannot create a private directory: %s", strerror(errno));
        return GW_EIO;
    }
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        so_seterr(err, errlen, base, "%s", errno == ELOOP ? "is a symbolic link; refusing to load it"
                                                         : strerror(errno));
        rmdir(tmpdir);
        return errno == ENOENT ? GW_ENOENT : GW_EIO;
    }
    gw__chan_so_t *so = NULL;
    gw_err_t rc = so_open_fd(fd, base, tmpdir, 0, 1, &so, err, errlen);
    if (rc != GW_OK) {
        rmdir(tmpdir);
        return rc;
    }
    memcpy(so->tmpdir, tmpdir, sizeof(tmpdir));
    rc = so_init(so, settings, settings_len, err, errlen);
    gw_chan_module_t *m = rc == GW_OK ? calloc(1, sizeof(*m)) : NULL;
    if (m == NULL) {
        if (rc == GW_OK) {
            so_seterr(err, errlen, base, "out of memory");
            rc = GW_ENOMEM;
        }
        so_destroy(so);
        return rc;
    }
    so->refs = 1;
    module_fill(m, so, NULL);
    *out = m;
    return GW_OK;
}

void gw_chan_close_file(gw_chan_module_t *m)
{
    if (m == NULL) return;
    so_destroy(m->so_);
    free(m);
}

/* ------------------------------------------------------------------ */
/* generations */

static void so_unref(gw__chan_so_t *so)
{
    if (--so->refs > 0) return;
    char what[sizeof(so->name) + sizeof(so->version) + sizeof(so->file) + 8];
    snprintf(what, sizeof(what), "%s %s (%s)", so->name, so->version, so->file);
    so_destroy(so);
    gw_log(GW_LOG_INFO, "channel %s unloaded", what);
}

static void gen_free(gw_chan_gen_t *g)
{
    for (size_t i = 0; i < g->n; i++) so_unref(g->mods[i].so_);
    free(g->mods);
    free(g);
}

static void retired_unlink(gw_chan_registry_t *r, gw_chan_gen_t *g)
{
    for (gw_chan_gen_t **pp = &r->retired; *pp; pp = &(*pp)->next) {
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    }
    if (r->retired == NULL) uv_timer_stop(&r->drain_timer);
}

static void drain_tick(uv_timer_t *t)
{
    gw_chan_registry_t *r = t->data;
    uint64_t now = uv_now(r->loop);
    for (gw_chan_gen_t *g = r->retired; g; g = g->next) {
        if (now - g->retired_ms < (uint64_t)r->drain_timeout_ms) continue;
        char who[512] = "";
        size_t w = 0;
        for (size_t i = 0; i < g->n && w < sizeof(who); i++) {
            const gw__chan_so_t *so = g->mods[i].so_;
            if (so->inflight == 0) continue;
            int k = snprintf(who + w, sizeof(who) - w, "%s%s %s (%ld in flight)", w ? ", " : "",
                             so->name, so->version, so->inflight);
            if (k > 0) w += (size_t)k;
        }
        gw_log(GW_LOG_WARN,
               "channels: generation %lu superseded %llu ms ago is still pinned by %ld call(s): %s",
               g->id, (unsigned long long)(now - g->retired_ms), g->refcnt, w ? who : "-");
    }
}

static void gen_retire(gw_chan_registry_t *r, gw_chan_gen_t *g)
{
    g->retired_ms = uv_now(r->loop);
    if (--g->refcnt == 0) {
        gen_free(g);
        return;
    }
    g->next = r->retired;
    r->retired = g;
    gw_log(GW_LOG_INFO, "channels: generation %lu superseded with %ld call(s) in flight", g->id,
           g->refcnt);
    if (!uv_is_active((uv_handle_t *)&r->drain_timer)) {
        uint64_t every = r->drain_timeout_ms > 0 ? (uint64_t)r->drain_timeout_ms : 1000;
        uv_timer_start(&r->drain_timer, drain_tick, (uint64_t)r->drain_timeout_ms, every);
    }
}

gw_chan_module_t *gw_chan_acquire(gw_chan_registry_t *r, const char *name)
{
    gw_chan_gen_t *g = r->current;
    if (g == NULL || name == NULL) return NULL;
    for (size_t i = 0; i < g->n; i++) {
        gw_chan_module_t *m = &g->mods[i];
        if (strcmp(m->name, name) == 0) {
            g->refcnt++;
            m->so_->inflight++;
            return m;
        }
    }
    return NULL;
}

int gw_chan_light(const gw_channel_t *vt, const gw_chan_call_t *call)
{
    return vt->light != NULL && vt->light(call);
}

void gw_chan_release(gw_chan_module_t *m)
{
    if (m == NULL) return;
    gw_chan_gen_t *g = m->gen_;
    m->so_->inflight--;
    if (--g->refcnt > 0) return;
    /* only a superseded generation can reach 0: the current one holds 1 */
    gw_chan_registry_t *r = g->reg;
    retired_unlink(r, g);
    gw_log(GW_LOG_INFO, "channels: generation %lu drained", g->id);
    gen_free(g);
}

/* ------------------------------------------------------------------ */
/* the registry */

gw_chan_registry_t *gw_chan_registry_new(uv_loop_t *loop, const char *dir, const cJSON *settings,
                                         int drain_timeout_ms)
{
    gw_chan_registry_t *r = calloc(1, sizeof(*r));
    if (r == NULL) return NULL;
    r->dir = strdup(dir);
    if (r->dir == NULL) {
        free(r);
        return NULL;
    }
    r->loop = loop;
    r->settings = settings;
    r->drain_timeout_ms = drain_timeout_ms < 0 ? 0 : drain_timeout_ms;
    gw_chan_sweep_stale();
    if (private_dir(r->tmpdir, sizeof(r->tmpdir)) != GW_OK) {
        gw_log(GW_LOG_ERR, "channels: cannot create a private directory under %s: %s", tmp_base(),
               strerror(errno));
        free(r->dir);
        free(r);
        return NULL;
    }
    uv_timer_init(loop, &r->drain_timer);
    uv_unref((uv_handle_t *)&r->drain_timer); /* in-flight calls keep the loop alive, not this */
    r->drain_timer.data = r;
    return r;
}

void gw_chan_registry_set_settings(gw_chan_registry_t *r, const cJSON *settings)
{
    r->settings = settings;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int so_candidate(const char *name)
{
    size_t n = strlen(name);
    return name[0] != '.' && n > 3 && n <= NAME_MAX && strcmp(name + n - 3, ".so") == 0;
}

/* The directory's *.so names, sorted. */
static gw_err_t scan_dir(const char *dir, int *dfd_out, char ***names_out, size_t *n_out)
{
    DIR *d = opendir(dir);
    if (d == NULL) return GW_EIO;
    char **names = NULL;
    size_t n = 0, cap = 0;
    gw_err_t rc = GW_OK;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (e == NULL) {
            if (errno != 0) rc = GW_EIO;
            break;
        }
        if (!so_candidate(e->d_name)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **p = realloc(names, cap * sizeof(*p));
            if (p == NULL) {
                rc = GW_ENOMEM;
                break;
            }
            names = p;
        }
        if ((names[n] = strdup(e->d_name)) == NULL) {
            rc = GW_ENOMEM;
            break;
        }
        n++;
    }
    if (rc == GW_OK) {
        *dfd_out = dup(dirfd(d));
        if (*dfd_out < 0) rc = GW_EIO;
    }
    closedir(d);
    if (rc != GW_OK) {
        for (size_t i = 0; i < n; i++) free(names[i]);
        free(names);
        return rc;
    }
    if (n) qsort(names, n, sizeof(*names), cmp_names);
    *names_out = names;
    *n_out = n;
    return GW_OK;
}

static gw_chan_module_t *gen_find(gw_chan_gen_t *g, const char *name)
{
    for (size_t i = 0; g && i < g->n; i++)
        if (strcmp(g->mods[i].name, name) == 0) return &g->mods[i];
    return NULL;
}

static gw_chan_module_t *gen_find_file(gw_chan_gen_t *g, const char *file)
{
    for (size_t i = 0; g && i < g->n; i++)
        if (strcmp(g->mods[i].file, file) == 0) return &g->mods[i];
    return NULL;
}

static void files_free(file_status_t *files, size_t n)
{
    for (size_t i = 0; i < n; i++) free(files[i].error);
    free(files);
}

/* The channel's settings object as text (malloc'ed), "{}" when absent. */
static char *settings_text(const cJSON *settings, const char *name, int *not_object)
{
    const cJSON *s = settings ? cJSON_GetObjectItemCaseSensitive(settings, name) : NULL;
    *not_object = s != NULL && !cJSON_IsObject(s);
    if (s == NULL || *not_object) return strdup("{}");
    return gw_json_print(s);
}

/* Loads one file of the directory into the generation being built. */
static gw_err_t load_one(gw_chan_registry_t *r, int dfd, const char *file, gw_chan_gen_t *g,
                         file_status_t *st, char *err, size_t errlen)
{
    int fd = openat(dfd, file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        so_seterr(err, errlen, file, "%s", errno == ELOOP ? "is a symbolic link; refusing to load it"
                                                         : strerror(errno));
        return GW_EIO;
    }
    gw__chan_so_t *so = NULL;
    gw_err_t rc = so_open_fd(fd, file, r->tmpdir, g->id, ++r->copy_counter, &so, err, errlen);
    if (rc != GW_OK) return rc;
    memcpy(st->name, so->name, sizeof(st->name));
    gw_chan_module_t *dup = gen_find(g, so->name);
    if (dup != NULL) {
        so_seterr(err, errlen, file, "duplicate channel name \"%s\" (already loaded from \"%s\")",
                  so->name, dup->file);
        so_destroy(so);
        return GW_EEXIST;
    }
    int not_object = 0;
    char *text = settings_text(r->settings, so->name, &not_object);
    if (text == NULL || not_object) {
        if (not_object) so_seterr(err, errlen, file, "channels.settings.%s is not a JSON object", so->name);
        else so_seterr(err, errlen, file, "out of memory");
        free(text);
        so_destroy(so);
        return not_object ? GW_EINVAL : GW_ENOMEM;
    }
    rc = so_init(so, text, strlen(text), err, errlen);
    free(text);
    if (rc != GW_OK) {
        so_destroy(so);
        return rc;
    }
    so->refs = 1;
    module_fill(&g->mods[g->n++], so, g);
    gw_log(GW_LOG_NOTICE, "channel %s %s loaded from %s (generation %lu)", so->name, so->version,
           so->file, g->id);
    return GW_OK;
}

gw_err_t gw_chan_reload(gw_chan_registry_t *r)
{
    char **names = NULL;
    size_t n = 0;
    int dfd = -1;
    gw_err_t rc = scan_dir(r->dir, &dfd, &names, &n);
    if (rc != GW_OK) {
        gw_log(GW_LOG_ERR, "channels: cannot read directory %s: %s; keeping generation %lu",
               r->dir, rc == GW_EIO ? strerror(errno) : gw_strerror(rc), r->gen_counter);
        return rc;
    }
    gw_chan_gen_t *g = calloc(1, sizeof(*g));
    file_status_t *files = calloc(n ? n : 1, sizeof(*files));
    if (g) g->mods = calloc(n ? n : 1, sizeof(*g->mods));
    if (g == NULL || files == NULL || g->mods == NULL) {
        gw_log(GW_LOG_ERR, "channels: out of memory; keeping generation %lu", r->gen_counter);
        if (g) free(g->mods);
        free(g);
        free(files);
        rc = GW_ENOMEM;
        goto out;
    }
    g->id = r->gen_counter + 1;
    g->reg = r;
    size_t loaded = 0, carried = 0, rejected = 0;
    for (size_t i = 0; i < n; i++) {
        file_status_t *st = &files[i];
        copy_printable(st->file, sizeof(st->file), names[i]);
        char err[SO_ERR_MAX];
        err[0] = '\0';
        if (load_one(r, dfd, names[i], g, st, err, sizeof(err)) == GW_OK) {
            loaded++;
            continue;
        }
        rejected++;
        st->error = strdup(err);
        gw_chan_module_t *prev = gen_find_file(r->current, names[i]);
        if (prev && gen_find(g, prev->name) == NULL) {
            prev->so_->refs++;
            module_fill(&g->mods[g->n++], prev->so_, g);
            if (!st->name[0]) memcpy(st->name, prev->so_->name, sizeof(st->name));
            carried++;
            gw_log(GW_LOG_ERR, "%s; %s %s from generation %lu keeps serving", err, prev->name,
                   prev->version, prev->so_->generation);
        } else {
            gw_log(GW_LOG_ERR, "%s; not loaded", err);
        }
    }
    /* publish */
    gw_chan_gen_t *old = r->current;
    g->refcnt = 1;
    r->current = g;
    r->gen_counter = g->id;
    files_free(r->files, r->nfiles);
    r->files = files;
    r->nfiles = n;
    gw_log(GW_LOG_NOTICE, "channels: generation %lu published: %zu loaded, %zu rejected (%zu kept "
           "from earlier generations), %zu serving", g->id, loaded, rejected, carried, g->n);
    if (old) gen_retire(r, old);
    rc = GW_OK;
out:
    if (dfd >= 0) close(dfd);
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

unsigned long gw_chan_generation(const gw_chan_registry_t *r)
{
    return r->current ? r->current->id : 0;
}

size_t gw_chan_count(const gw_chan_registry_t *r)
{
    return r->current ? r->current->n : 0;
}

size_t gw_chan_draining(const gw_chan_registry_t *r)
{
    size_t n = 0;
    for (const gw_chan_gen_t *g = r->retired; g; g = g->next) n++;
    return n;
}

const char *gw_chan_last_error(const gw_chan_registry_t *r, const char *file)
{
    for (size_t i = 0; i < r->nfiles; i++)
        if (strcmp(r->files[i].file, file) == 0) return r->files[i].error;
    return NULL;
}

const char *gw_chan_private_dir(const gw_chan_registry_t *r)
{
    return r->tmpdir;
}

static void iso8601(uint64_t ms, char *out, size_t n)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(ms % 1000));
}

void gw_chan_registry_json(gw_chan_registry_t *r, cJSON *array)
{
    gw_chan_gen_t *g = r->current;
    for (size_t i = 0; g && i < g->n; i++) {
        const gw__chan_so_t *so = g->mods[i].so_;
        cJSON *o = cJSON_CreateObject();
        char abi[24], at[80];
        snprintf(abi, sizeof(abi), "%u.%u", so->vt.abi_version >> 16, so->vt.abi_version & 0xffffu);
        iso8601(so->loaded_at_ms, at, sizeof(at));
        cJSON_AddStringToObject(o, "name", so->name);
        cJSON_AddStringToObject(o, "version", so->version);
        cJSON_AddStringToObject(o, "file", so->file);
        cJSON_AddStringToObject(o, "abi", abi);
        cJSON_AddNumberToObject(o, "generation", (double)so->generation);
        cJSON_AddNumberToObject(o, "inflight", (double)so->inflight);
        cJSON *methods = cJSON_AddArrayToObject(o, "methods");
        for (uint32_t bit = 1; bit & KNOWN_METHODS; bit <<= 1)
            if (so->vt.methods & bit)
                cJSON_AddItemToArray(methods, cJSON_CreateString(gw_chan_method_name(bit)));
        cJSON_AddStringToObject(o, "loaded_at", at);
        const char *e = gw_chan_last_error(r, so->file);
        if (e) cJSON_AddStringToObject(o, "last_error", e);
        else cJSON_AddNullToObject(o, "last_error");
        cJSON_AddItemToArray(array, o);
    }
    for (size_t i = 0; i < r->nfiles; i++) {
        const file_status_t *st = &r->files[i];
        if (st->error == NULL || gen_find_file(g, st->file) != NULL) continue;
        cJSON *o = cJSON_CreateObject();
        if (st->name[0]) cJSON_AddStringToObject(o, "name", st->name);
        else cJSON_AddNullToObject(o, "name");
        cJSON_AddNullToObject(o, "version");
        cJSON_AddStringToObject(o, "file", st->file);
        cJSON_AddNullToObject(o, "abi");
        cJSON_AddNullToObject(o, "generation");
        cJSON_AddNumberToObject(o, "inflight", 0);
        cJSON_AddArrayToObject(o, "methods");
        cJSON_AddNullToObject(o, "loaded_at");
        cJSON_AddStringToObject(o, "last_error", st->error);
        cJSON_AddItemToArray(array, o);
    }
}

static void registry_closed(uv_handle_t *h)
{
    free(h->data);
}

void gw_chan_registry_free(gw_chan_registry_t *r)
{
    if (r == NULL) return;
    uv_timer_stop(&r->drain_timer);
    if (r->current) {
        gw_chan_gen_t *g = r->current;
        r->current = NULL;
        if (--g->refcnt == 0) gen_free(g);
        else {
            g->next = r->retired;
            r->retired = g;
        }
    }
    for (gw_chan_gen_t *g = r->retired; g; g = g->next)
        gw_log(GW_LOG_ERR, "channels: generation %lu still pinned by %ld call(s) at shutdown; "
               "its modules stay loaded", g->id, g->refcnt);
    if (r->retired == NULL && rmdir(r->tmpdir) != 0)
        gw_log(GW_LOG_WARN, "channels: rmdir %s: %s", r->tmpdir, strerror(errno));
    files_free(r->files, r->nfiles);
    r->files = NULL;
    r->nfiles = 0;
    free(r->dir);
    r->dir = NULL;
    uv_close((uv_handle_t *)&r->drain_timer, registry_closed);
}
