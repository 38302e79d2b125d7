/*
 * config.h — the daemon's one JSON configuration file.
 * config/paygated.example.json documents every key.  Unknown keys and wrong
 * types are errors that name the field (exit status 2).
 */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include "gw.h"

typedef struct cJSON cJSON;

typedef struct gw_config {
    char *listen_host;
    int listen_port;
    char *admin_host;
    int admin_port;
    char *admin_token;
    int log_level;
    char *pid_file; /* NULL: none */
    struct {
        int max_connections;
        int max_header_bytes;
        int max_body_bytes;
        int header_timeout_ms;
        int body_timeout_ms;
        int idle_timeout_ms;
        int shutdown_timeout_ms;
    } http;
    struct {
        char *conninfo;
        int pool_size;
        int max_pipeline;
        int query_timeout_ms;
        int batch_inflight; /* 0: no limit */
    } pg;
    struct {
        char *host;
        int port;
        char *password;
        int db;
        int command_timeout_ms;
        /* Sentinel: when sentinels are given, host/port are ignored and the
         * master of master_name is discovered (and followed on failover) */
        char *sentinels;      /* "host:port,host:port,…" */
        char *master_name;
    } redis;
    struct {
        char *dir;
        int drain_timeout_ms;
        int call_timeout_ms;      /* default deadline of one channel call */
        char *notify_base_url;    /* how channels reach /notify/{channel} */
        cJSON *settings; /* object: channel name -> its settings object (owned) */
        int max_inflight;         /* bulkhead: calls in flight per channel */
        cJSON *limits;            /* object: channel name -> {"max_inflight": N} (owned) */
        struct {
            int window_ms;        /* error-rate window */
            int min_calls;        /* calls in the window before the rate counts */
            int error_pct;        /* open at this failure percentage */
            int consecutive;      /* or after this many failures in a row */
            int open_ms;          /* then wait this long before a probe */
            int close_after;      /* probe successes that close it again */
        } breaker;
    } channels;
    struct {
        int enabled;               /* 0: this node runs no background tasks */
        int tick_ms;               /* how often due work is claimed */
        double time_scale;         /* multiplies every schedule delay (tests: 0.01) */
        int batch;                 /* rows claimed per kind per tick */
        int lease_ms;              /* a claimed row is this node's for so long */
        int notify_schedule_s[16]; /* merchant notification attempts, from the first */
        int notify_schedule_len;
        int notify_timeout_ms;     /* one delivery attempt */
        int notify_per_merchant;   /* deliveries in flight per merchant */
        int pending_grace_s;       /* first re-query of a c-to-b order without notification */
        int created_grace_s;       /* an order still CREATED this long is settled by query */
        int backoff_max_s;         /* cap of the re-query backoff */
        char *node_id;             /* lease owner name; default host:pid */
    } tasks;
    struct {
        int64_t max_amount;        /* fen, per order */
        int timestamp_skew_s;      /* merchant request timestamps */
        int min_expire_s;          /* smallest expire_s a merchant may ask for */
        int cache_ttl_ms;          /* credentials fresh in process; refreshed in the background */
    } api;
    struct {
        char *timezone;            /* business day of statements and bills [Asia/Shanghai] */
    } settlement;
} gw_config_t;

/* Parses and validates text.  On error returns GW_EINVAL and writes a message
 * naming the field into err (e.g. "http.max_conections: unknown key"). */
gw_err_t gw_config_parse(const char *text, size_t len, gw_config_t *cfg, char *err, size_t errlen);
gw_err_t gw_config_load(const char *path, gw_config_t *cfg, char *err, size_t errlen);
void gw_config_free(gw_config_t *cfg);

#endif /* GW_CONFIG_H */
