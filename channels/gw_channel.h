/*
 * gw_channel.h — the one header a paygate channel module needs.
 *
 * This part holds the types shared by the core and modules: error codes and
 * strings.  The module ABI (vtable, host API) follows below.
 */
#ifndef GW_CHANNEL_H
#define GW_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

/*
 * Error codes.  Numbers are frozen: never renumber, never reuse; a retired
 * code stays as GW_EOBSOLETE_n (curl).  0 is success, errors are negative.
 * Payment outcomes (declined, user paying, …) are results, not errors.
 */
#define GW_ERR_MAP(XX)                                                         \
    XX(EAGAIN, -1, "operation in progress")                                    \
    XX(ENOMEM, -2, "out of memory")                                            \
    XX(EINVAL, -3, "invalid argument")                                         \
    XX(ENOTSUP, -4, "operation not supported")                                 \
    XX(ECANCELED, -5, "operation canceled")                                    \
    XX(ETIMEDOUT, -6, "timed out")                                             \
    XX(EIO, -7, "input/output error")                                          \
    XX(ENOENT, -8, "not found")                                                \
    XX(EEXIST, -9, "already exists")                                           \
    XX(ETOOBIG, -10, "too large")                                              \
    XX(EPARSE, -11, "malformed input")                                         \
    XX(ESIGN, -12, "signature verification failed")                            \
    XX(EUNAVAIL, -13, "service unavailable")                                   \
    XX(ECONFLICT, -14, "conflict")                                             \
    XX(ESTATE, -15, "invalid state")                                           \
    XX(ECRYPTO, -16, "cryptographic failure")                                  \
    XX(EBUSY, -17, "resource busy")                                            \
    XX(EKEY, -18, "invalid key")

typedef int gw_err_t;
#define GW_OK 0
#define GW__ERR_ENUM(name, val, msg) GW_##name = (val),
enum gw_err_e { GW_ERR_MAP(GW__ERR_ENUM) GW__ERR_LAST = -18 };
#undef GW__ERR_ENUM

/* A string that crosses an API: pointer and length, not NUL-terminated
 * unless stated (h2o_iovec_t, ngx_str_t). */
typedef struct gw_str {
    const char *ptr;
    size_t len;
} gw_str_t;

#endif /* GW_CHANNEL_H */
