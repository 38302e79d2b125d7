/*
 * redis.h — Redis on the event loop through hiredis' async API and its libuv
 * adapter, with reconnect and backoff.  While Redis is down every command
 * fails at once with GW_EUNAVAIL, and callers degrade (slower, not wrong).
 */
#ifndef GW_REDIS_H
#define GW_REDIS_H

#include <uv.h>
#include <hiredis/hiredis.h>
#include "gw.h"

typedef struct gw_redis gw_redis_t;

typedef struct gw_redis_opts {
    const char *host;        /* default 127.0.0.1 */
    int port;                /* default 6379 */
    const char *password;    /* optional AUTH; never logged */
    int db;                  /* SELECT, default 0 */
    int reconnect_min_ms;    /* default 100 */
    int reconnect_max_ms;    /* default 5000 */
    int command_timeout_ms;  /* default 1000: a command not answered by then
                                completes with GW_ETIMEDOUT and the connection
                                is dropped and re-established */
    /* Sentinel (optional): "host:port,host:port" and the master's name.
     * When set, host/port are ignored: the master is asked of the sentinels
     * (SENTINEL get-master-addr-by-name), checked with ROLE, and asked again
     * after every disconnect, so a failover is followed.  Hosts are IP
     * addresses (IPv6 as "[addr]:port"); other entries are logged and
     * skipped.  A sentinel is asked over a connection of its own, non-
     * blocking, with command_timeout_ms; one that answered is asked first
     * next time.  A command that gets a READONLY error reply (the master was
     * demoted) drops the connection, and the sentinels are asked again.  The
     * reconnect backoff is capped at min(reconnect_max_ms, 1000) in this
     * mode.  Sentinels without a password only (no AUTH to them). */
    const char *sentinels;
    const char *master_name;
    /* Sentinel: while connected, a sentinel is asked every so often
     * (default 1000 ms, < 0: never) and an address that changed drops the
     * connection: after a manual failover the old master is demoted only
     * seconds later, and would take writes meanwhile. */
    int sentinel_check_ms;
} gw_redis_opts_t;

/* err GW_OK with reply (which may be a REDIS_REPLY_ERROR reply: check
 * reply->type); GW_EUNAVAIL / GW_EIO / GW_ETIMEDOUT / GW_ECANCELED with reply
 * NULL.  reply is borrowed for the callback.  Exactly once when the submit
 * call returned GW_OK, never otherwise. */
typedef void (*gw_redis_cb)(void *udata, gw_err_t err, redisReply *reply);

gw_redis_t *gw_redis_new(uv_loop_t *loop, const gw_redis_opts_t *opts);
void gw_redis_start(gw_redis_t *r);
gw_err_t gw_redis_cmd(gw_redis_t *r, gw_redis_cb cb, void *udata, const char *fmt, ...);
gw_err_t gw_redis_cmdargv(gw_redis_t *r, gw_redis_cb cb, void *udata, int argc,
                          const char **argv, const size_t *argvlen);
int gw_redis_up(const gw_redis_t *r);
void gw_redis_close(gw_redis_t *r, void (*done)(void *), void *udata);

#endif /* GW_REDIS_H */
