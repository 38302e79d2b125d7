/*
 * channel.h — the channel-module loader: generations, reload, pinning.
 *
 * A registry owns the modules loaded from one directory.  Each reload
 * (SIGHUP) builds a complete new *generation* — every *.so in the directory
 * copied to a private path, dlopen'ed, validated and initialised — and
 * publishes it with one pointer swap.  A file that fails any step is logged
 * and recorded (last_error), and the module previously loaded from that file
 * keeps serving: it is carried into the new generation unchanged (same
 * handle, same ctx).  A file that disappeared takes its module out of the
 * new generation.
 *
 * Generations are reference counted (nginx cycles): gw_chan_acquire() pins
 * the current generation for one call, gw_chan_release() unpins it.  A
 * superseded generation is freed when its last pin goes; a module is
 * finalised (fini, dlclose, private copy unlinked) when no generation holds
 * it any more.  A drain timer logs generations still pinned after
 * drain_timeout_ms; nothing is freed under a caller.
 *
 * Threads: every function here runs on the loop thread.  Between acquire
 * and release the module's own functions may be called from any thread.
 */
#ifndef GW_CORE_CHANNEL_H
#define GW_CORE_CHANNEL_H

#include <uv.h>
#include "gw.h"

typedef struct cJSON cJSON;

/* sizeof(gw_channel_t) of ABI 1.0: a module's struct_size must reach it. */
#define GW_CHANNEL_V1_SIZE                                                     \
    (offsetof(gw_channel_t, notify_verify) + sizeof(((gw_channel_t *)0)->notify_verify))

/* A method appended after 1.0 may be called only when this holds. */
#define GW_CHAN_HAS(m, method) ((m)->vt->method != NULL)

typedef struct gw_chan_registry gw_chan_registry_t;
typedef struct gw_chan_gen gw_chan_gen_t;
typedef struct gw__chan_so gw__chan_so_t;

/* One channel as seen through one generation.  Callers read the public
 * fields only; all of them stay valid until gw_chan_release(). */
typedef struct gw_chan_module {
    /* read-only */
    const gw_channel_t *vt;       /* core-owned copy of the vtable: members the
                                     module's struct_size does not cover are NULL */
    void *ctx;                    /* the module's ctx_size block */
    const gw_host_api_t *host;
    const char *name;
    const char *version;
    const char *file;             /* file name in the channels directory */
    unsigned long generation;     /* the generation this entry belongs to */
    /* private */
    gw_chan_gen_t *gen_;
    gw__chan_so_t *so_;
} gw_chan_module_t;

/* Fills a call context for m (merchant, order, refund and flags are the
 * caller's). */
static inline void gw_chan_call_init(gw_chan_call_t *call, const gw_chan_module_t *m)
{
    memset(call, 0, sizeof(*call));
    call->ctx = m->ctx;
    call->host = m->host;
}

/* settings is the "channels.settings" object (channel name → its settings
 * object), borrowed: it must outlive the registry or be replaced with
 * gw_chan_registry_set_settings() before it is freed.  Creates the private
 * directory for the copies under $TMPDIR (default /tmp; it must not be
 * mounted noexec), "paygate-chan.<pid>.XXXXXX", after removing those of
 * processes that are gone (gw_chan_sweep_stale).  Loads nothing: call
 * gw_chan_reload() for that.  NULL when the private directory cannot be
 * created (logged). */
gw_chan_registry_t *gw_chan_registry_new(uv_loop_t *loop, const char *dir, const cJSON *settings,
                                         int drain_timeout_ms);
void gw_chan_registry_set_settings(gw_chan_registry_t *r, const cJSON *settings);
/* Removes the private directories under $TMPDIR that processes of our user
 * left when they did not exit cleanly (their pid is gone): their module
 * copies and the directory, each removal logged. */
void gw_chan_sweep_stale(void);

/* Builds and publishes a new generation.  GW_OK when it was published, even
 * if some files were rejected (see gw_chan_last_error / the JSON listing);
 * GW_EIO when the directory cannot be read, GW_ENOMEM — the current
 * generation then stays entirely as it was. */
gw_err_t gw_chan_reload(gw_chan_registry_t *r);

/* Pins the current generation and returns its module called name (NULL when
 * there is none: nothing is pinned then).  Every non-NULL result must be
 * handed to gw_chan_release() exactly once. */
gw_chan_module_t *gw_chan_acquire(gw_chan_registry_t *r, const char *name);
void gw_chan_release(gw_chan_module_t *m);

/* Nonzero when the module declares this call light (ABI 1.3): build, parse
 * and notification verification then run on the loop, not the thread pool.
 * Modules older than 1.3 have light NULL in the core's copy: never. */
int gw_chan_light(const gw_channel_t *vt, const gw_chan_call_t *call);

/* Appends one object per channel of the current generation to array:
 *   {"name","version","file","abi":"1.0","generation" (where it was loaded),
 *    "inflight","methods":[…],"loaded_at" (ISO 8601 UTC),"last_error"|null}
 * then one per rejected file that has no serving version (name null unless
 * it was read, version/abi/generation/loaded_at null). */
void gw_chan_registry_json(gw_chan_registry_t *r, cJSON *array);

/* Number of the current generation (0 before the first reload). */
unsigned long gw_chan_generation(const gw_chan_registry_t *r);
/* Channels in the current generation. */
size_t gw_chan_count(const gw_chan_registry_t *r);
/* Superseded generations still pinned. */
size_t gw_chan_draining(const gw_chan_registry_t *r);
/* The last reload's error for a file of the directory ("x.so"), NULL when
 * it loaded or is unknown.  Valid until the next reload. */
const char *gw_chan_last_error(const gw_chan_registry_t *r, const char *file);
/* The directory holding the private copies. */
const char *gw_chan_private_dir(const gw_chan_registry_t *r);

/* At shutdown, after every gw_chan_release(): finalises and unloads every
 * module, removes the private directory.  The registry's memory is released
 * in its timer's close callback, so the loop must run once more (libuv
 * rule).  Generations still pinned are logged and left loaded. */
void gw_chan_registry_free(gw_chan_registry_t *r);

/* ---- one module outside any registry (operator CLI) ---- */

/* Loads the file at path through the same checks as the registry (file
 * ownership and mode, private copy, dlopen, ABI validation, init with
 * settings, a JSON object text, "{}" when NULL).  On failure returns an
 * error and writes the reason ("channel \"x.so\": …") into err. */
gw_err_t gw_chan_open_file(const char *path, const char *settings, size_t settings_len,
                           gw_chan_module_t **out, char *err, size_t errlen);
/* fini, dlclose, remove the private copy. */
void gw_chan_close_file(gw_chan_module_t *m);

/* Names of the GW_METHOD_* bits ("wechat_qr", …), NULL for an unknown bit. */
const char *gw_chan_method_name(uint32_t bit);
const char *gw_chan_pay_status_name(int status);
const char *gw_chan_refund_status_name(int status);

#endif /* GW_CORE_CHANNEL_H */
