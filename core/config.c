/*
 * config.c — table-driven validation of the JSON configuration.
 *
 * Each object in the file has a table of fields.  Every key present must be
 * in the table (else "unknown key"), every value must have the field's type
 * and range, and required fields must be present.  Errors name the full
 * dotted path of the field.
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

enum gw__cfg_type { CFG_INT, CFG_INT64, CFG_STR, CFG_OBJ, CFG_LOGLEVEL, CFG_ANYOBJ, CFG_BOOL,
                    CFG_DOUBLE, CFG_INTLIST };

typedef struct gw__cfg_field gw__cfg_field_t;
struct gw__cfg_field {
    const char *key;
    enum gw__cfg_type type;
    size_t offset;
    int required;
    int64_t min, max;              /* CFG_INT / CFG_INT64 */
    const gw__cfg_field_t *fields; /* CFG_OBJ */
};

#define OFF(f) offsetof(gw_config_t, f)
#define INT(k, f, req, lo, hi) { k, CFG_INT, OFF(f), req, lo, hi, NULL }
#define I64(k, f, req, lo, hi) { k, CFG_INT64, OFF(f), req, lo, hi, NULL }
#define STR(k, f, req) { k, CFG_STR, OFF(f), req, 0, 0, NULL }
#define OBJ(k, sub, req) { k, CFG_OBJ, 0, req, 0, 0, sub }
#define END { NULL, 0, 0, 0, 0, 0, NULL }

static const gw__cfg_field_t listen_fields[] = {
    STR("host", listen_host, 0),
    INT("port", listen_port, 1, 0, 65535),
    END
};
static const gw__cfg_field_t admin_fields[] = {
    STR("host", admin_host, 0),
    INT("port", admin_port, 1, 0, 65535),
    STR("token", admin_token, 1),
    END
};
static const gw__cfg_field_t http_fields[] = {
    INT("max_connections", http.max_connections, 0, 1, 1000000),
    INT("max_header_bytes", http.max_header_bytes, 0, 1024, 1 << 20),
    INT("max_body_bytes", http.max_body_bytes, 0, 1024, 64 << 20),
    INT("header_timeout_ms", http.header_timeout_ms, 0, 10, 3600000),
    INT("body_timeout_ms", http.body_timeout_ms, 0, 10, 3600000),
    INT("idle_timeout_ms", http.idle_timeout_ms, 0, 10, 86400000),
    INT("shutdown_timeout_ms", http.shutdown_timeout_ms, 0, 0, 3600000),
    END
};
static const gw__cfg_field_t pg_fields[] = {
    STR("conninfo", pg.conninfo, 1),
    INT("pool_size", pg.pool_size, 0, 1, 256),
    INT("max_pipeline", pg.max_pipeline, 0, 1, 4096),
    INT("query_timeout_ms", pg.query_timeout_ms, 0, 0, 3600000),
    INT("batch_inflight", pg.batch_inflight, 0, 0, 4096),
    END
};
static const gw__cfg_field_t redis_fields[] = {
    STR("host", redis.host, 0),
    INT("port", redis.port, 0, 1, 65535),
    STR("password", redis.password, 0),
    INT("db", redis.db, 0, 0, 1024),
    INT("command_timeout_ms", redis.command_timeout_ms, 0, 1, 600000),
    STR("sentinels", redis.sentinels, 0),
    STR("master_name", redis.master_name, 0),
    END
};
static const gw__cfg_field_t breaker_fields[] = {
    INT("window_ms", channels.breaker.window_ms, 0, 100, 3600000),
    INT("min_calls", channels.breaker.min_calls, 0, 1, 1000000),
    INT("error_pct", channels.breaker.error_pct, 0, 1, 100),
    INT("consecutive", channels.breaker.consecutive, 0, 1, 1000000),
    INT("open_ms", channels.breaker.open_ms, 0, 10, 3600000),
    INT("close_after", channels.breaker.close_after, 0, 1, 1000),
    END
};
static const gw__cfg_field_t channels_fields[] = {
    STR("dir", channels.dir, 1),
    INT("drain_timeout_ms", channels.drain_timeout_ms, 0, 0, 3600000),
    INT("call_timeout_ms", channels.call_timeout_ms, 0, 10, 600000),
    STR("notify_base_url", channels.notify_base_url, 0),
    { "settings", CFG_ANYOBJ, OFF(channels.settings), 0, 0, 0, NULL },
    INT("max_inflight", channels.max_inflight, 0, 1, 1000000),
    { "limits", CFG_ANYOBJ, OFF(channels.limits), 0, 0, 0, NULL },
    OBJ("breaker", breaker_fields, 0),
    END
};
/* CFG_INTLIST stores the count in the int that follows the 16 slots */
_Static_assert(offsetof(gw_config_t, tasks.notify_schedule_len) ==
                   offsetof(gw_config_t, tasks.notify_schedule_s) + 16 * sizeof(int),
               "notify_schedule_len must follow notify_schedule_s[16]");

static const gw__cfg_field_t tasks_fields[] = {
    { "enabled", CFG_BOOL, OFF(tasks.enabled), 0, 0, 0, NULL },
    INT("tick_ms", tasks.tick_ms, 0, 5, 60000),
    { "time_scale", CFG_DOUBLE, OFF(tasks.time_scale), 0, 0, 1000, NULL },
    INT("batch", tasks.batch, 0, 1, 10000),
    INT("lease_ms", tasks.lease_ms, 0, 1000, 3600000),
    { "notify_schedule_s", CFG_INTLIST, OFF(tasks.notify_schedule_s), 0, 0, 86400, NULL },
    INT("notify_timeout_ms", tasks.notify_timeout_ms, 0, 100, 600000),
    INT("notify_per_merchant", tasks.notify_per_merchant, 0, 1, 1000),
    INT("pending_grace_s", tasks.pending_grace_s, 0, 0, 86400),
    INT("created_grace_s", tasks.created_grace_s, 0, 0, 86400),
    INT("backoff_max_s", tasks.backoff_max_s, 0, 1, 86400),
    STR("node_id", tasks.node_id, 0),
    END
};
static const gw__cfg_field_t api_fields[] = {
    I64("max_amount", api.max_amount, 0, 1, INT64_C(100000000000)),
    INT("timestamp_skew_s", api.timestamp_skew_s, 0, 1, 86400),
    INT("min_expire_s", api.min_expire_s, 0, 1, 86400),
    INT("cache_ttl_ms", api.cache_ttl_ms, 0, 100, 3600000),
    END
};
static const gw__cfg_field_t settlement_fields[] = {
    STR("timezone", settlement.timezone, 0),
    END
};
static const gw__cfg_field_t root_fields[] = {
    OBJ("listen", listen_fields, 1),
    OBJ("admin", admin_fields, 1),
    { "log_level", CFG_LOGLEVEL, OFF(log_level), 0, 0, 0, NULL },
    STR("pid_file", pid_file, 0),
    OBJ("http", http_fields, 0),
    OBJ("postgres", pg_fields, 1),
    OBJ("redis", redis_fields, 0),
    OBJ("channels", channels_fields, 1),
    OBJ("api", api_fields, 0),
    OBJ("tasks", tasks_fields, 0),
    OBJ("settlement", settlement_fields, 0),
    END
};

static void gw__cfg_defaults(gw_config_t *c)
{
    memset(c, 0, sizeof(*c));
    c->log_level = GW_LOG_INFO;
    c->http.max_connections = 10000;
    c->http.max_header_bytes = 16384;
    c->http.max_body_bytes = 65536;
    c->http.header_timeout_ms = 10000;
    c->http.body_timeout_ms = 30000;
    c->http.idle_timeout_ms = 60000;
    c->http.shutdown_timeout_ms = 10000;
    c->pg.pool_size = 16; /* more connections, more commits per WAL flush (docs/performance.md) */
    c->pg.max_pipeline = 64;
    c->pg.batch_inflight = 1; /* group commit: docs/operations.md */
    c->pg.query_timeout_ms = 10000;
    c->redis.port = 6379;
    c->redis.command_timeout_ms = 1000;
    c->channels.drain_timeout_ms = 30000;
    c->channels.call_timeout_ms = 10000;
    c->channels.max_inflight = 256;
    c->channels.breaker.window_ms = 10000;
    c->channels.breaker.min_calls = 20;
    c->channels.breaker.error_pct = 50;
    c->channels.breaker.consecutive = 5;
    c->channels.breaker.open_ms = 5000;
    c->channels.breaker.close_after = 3;
    c->api.max_amount = INT64_C(100000000); /* 1 000 000.00 yuan */
    c->api.timestamp_skew_s = 300;
    c->api.min_expire_s = 60;
    c->api.cache_ttl_ms = 30000;
    c->tasks.enabled = 1;
    c->tasks.tick_ms = 200;
    c->tasks.time_scale = 1.0;
    c->tasks.batch = 100;
    c->tasks.lease_ms = 60000;
    static const int schedule[] = { 0, 15, 15, 30, 180, 1800, 1800, 1800, 1800, 3600 };
    memcpy(c->tasks.notify_schedule_s, schedule, sizeof(schedule));
    c->tasks.notify_schedule_len = (int)GW_ARRAY_SIZE(schedule);
    c->tasks.notify_timeout_ms = 5000;
    c->tasks.notify_per_merchant = 4;
    c->tasks.pending_grace_s = 60;
    c->tasks.created_grace_s = 30;
    c->tasks.backoff_max_s = 600;
}

static const char *gw__cfg_typename(enum gw__cfg_type t)
{
    switch (t) {
    case CFG_INT:
    case CFG_INT64: return "an integer";
    case CFG_STR: return "a string";
    case CFG_LOGLEVEL: return "one of emerg, alert, crit, error, warn, notice, info, debug";
    case CFG_BOOL: return "true or false";
    case CFG_DOUBLE: return "a number";
    case CFG_INTLIST: return "an array of 1-16 integers";
    default: return "an object";
    }
}

static gw_err_t gw__cfg_walk(const cJSON *obj, const gw__cfg_field_t *fields, const char *prefix,
                             gw_config_t *cfg, char *err, size_t errlen)
{
    char path[256];
    const cJSON *item;

    cJSON_ArrayForEach(item, obj) {
        const gw__cfg_field_t *f = fields;
        while (f->key && strcmp(f->key, item->string) != 0) f++;
        snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "", item->string);
        if (f->key == NULL) {
            snprintf(err, errlen, "%s: unknown key", path);
            return GW_EINVAL;
        }
        char *base = (char *)cfg + f->offset;
        switch (f->type) {
        case CFG_INT:
        case CFG_INT64: {
            double d = item->valuedouble;
            if (!cJSON_IsNumber(item) || d != (double)(int64_t)d) goto type_error;
            int64_t v = (int64_t)d;
            if (v < f->min || v > f->max) {
                snprintf(err, errlen, "%s: %lld is out of range [%lld, %lld]", path, (long long)v,
                         (long long)f->min, (long long)f->max);
                return GW_EINVAL;
            }
            if (f->type == CFG_INT) *(int *)base = (int)v;
            else *(int64_t *)base = v;
            break;
        }
        case CFG_STR:
            if (!cJSON_IsString(item)) goto type_error;
            if (item->valuestring[0] == '\0') {
                snprintf(err, errlen, "%s: must not be empty", path);
                return GW_EINVAL;
            }
            free(*(char **)base);
            *(char **)base = gw_xstrdup(item->valuestring);
            break;
        case CFG_BOOL:
            if (!cJSON_IsBool(item)) goto type_error;
            *(int *)base = cJSON_IsTrue(item);
            break;
        case CFG_DOUBLE:
            if (!cJSON_IsNumber(item) || item->valuedouble <= 0 || item->valuedouble > (double)f->max)
                goto type_error;
            *(double *)base = item->valuedouble;
            break;
        case CFG_INTLIST: {
            /* the length lives in the int right after the 16-slot array */
            int n = cJSON_GetArraySize(item);
            if (!cJSON_IsArray(item) || n < 1 || n > 16) goto type_error;
            int *arr = (int *)base;
            for (int i = 0; i < n; i++) {
                const cJSON *e = cJSON_GetArrayItem(item, i);
                if (!cJSON_IsNumber(e) || e->valuedouble != (double)(int)e->valuedouble ||
                    e->valuedouble < (double)f->min || e->valuedouble > (double)f->max) {
                    snprintf(err, errlen, "%s[%d]: must be an integer in [%lld, %lld]", path, i,
                             (long long)f->min, (long long)f->max);
                    return GW_EINVAL;
                }
                arr[i] = (int)e->valuedouble;
            }
            arr[16] = n;
            break;
        }
        case CFG_LOGLEVEL: {
            int lvl = cJSON_IsString(item) ? gw_log_level_parse(item->valuestring) : -1;
            if (lvl < 0) goto type_error;
            *(int *)base = lvl;
            break;
        }
        case CFG_ANYOBJ: {
            if (!cJSON_IsObject(item)) goto type_error;
            const cJSON *sub;
            cJSON_ArrayForEach(sub, item) {
                if (!cJSON_IsObject(sub)) {
                    snprintf(err, errlen, "%s.%s: must be an object", path, sub->string);
                    return GW_EINVAL;
                }
            }
            cJSON_Delete(*(cJSON **)base);
            *(cJSON **)base = cJSON_Duplicate(item, 1);
            break;
        }
        case CFG_OBJ:
            if (!cJSON_IsObject(item)) goto type_error;
            if (gw__cfg_walk(item, f->fields, path, cfg, err, errlen) != GW_OK) return GW_EINVAL;
            break;
        }
        continue;
    type_error:
        snprintf(err, errlen, "%s: must be %s", path, gw__cfg_typename(f->type));
        return GW_EINVAL;
    }
    for (const gw__cfg_field_t *f = fields; f->key; f++) {
        if (f->required && cJSON_GetObjectItemCaseSensitive(obj, f->key) == NULL) {
            snprintf(err, errlen, "%s%s%s: required", prefix, *prefix ? "." : "", f->key);
            return GW_EINVAL;
        }
    }
    return GW_OK;
}

gw_err_t gw_config_parse(const char *text, size_t len, gw_config_t *cfg, char *err, size_t errlen)
{
    gw__cfg_defaults(cfg);
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (root == NULL) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= text && at <= text + len ? (long)(at - text) : -1;
        snprintf(err, errlen, "not valid JSON (near byte %ld)", off);
        return GW_EINVAL;
    }
    gw_err_t rc = GW_EINVAL;
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "the top level must be an object");
        goto out;
    }
    rc = gw__cfg_walk(root, root_fields, "", cfg, err, errlen);
    if (rc != GW_OK) goto out;
    if (!cfg->listen_host) cfg->listen_host = gw_xstrdup("127.0.0.1");
    if (!cfg->admin_host) cfg->admin_host = gw_xstrdup("127.0.0.1");
    if (!cfg->redis.host) cfg->redis.host = gw_xstrdup("127.0.0.1");
    if (!cfg->settlement.timezone) cfg->settlement.timezone = gw_xstrdup("Asia/Shanghai");
    if ((cfg->redis.sentinels == NULL) != (cfg->redis.master_name == NULL)) {
        snprintf(err, errlen, "redis.%s: required with redis.%s",
                 cfg->redis.sentinels ? "master_name" : "sentinels",
                 cfg->redis.sentinels ? "sentinels" : "master_name");
        rc = GW_EINVAL;
        goto out;
    }
    if (!cfg->channels.settings) cfg->channels.settings = cJSON_CreateObject();
out:
    cJSON_Delete(root);
    if (rc != GW_OK) gw_config_free(cfg);
    return rc;
}

gw_err_t gw_config_load(const char *path, gw_config_t *cfg, char *err, size_t errlen)
{
    gw__cfg_defaults(cfg);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return GW_EINVAL;
    }
    gw_buf_t b;
    gw_buf_init(&b, 4 << 20);
    char chunk[8192];
    size_t n;
    gw_err_t rc = GW_OK;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if ((rc = gw_buf_append(&b, chunk, n)) != GW_OK) break;
    fclose(f);
    if (rc != GW_OK) {
        snprintf(err, errlen, "%s: file too large", path);
        gw_buf_free(&b);
        return GW_EINVAL;
    }
    rc = gw_config_parse(b.data ? b.data : "", b.len, cfg, err, errlen);
    gw_buf_free(&b);
    return rc;
}

void gw_config_free(gw_config_t *c)
{
    free(c->listen_host);
    free(c->admin_host);
    free(c->admin_token);
    free(c->pid_file);
    free(c->pg.conninfo);
    free(c->redis.host);
    free(c->redis.password);
    free(c->redis.sentinels);
    free(c->redis.master_name);
    free(c->channels.dir);
    free(c->channels.notify_base_url);
    free(c->tasks.node_id);
    free(c->settlement.timezone);
    cJSON_Delete(c->channels.settings);
    cJSON_Delete(c->channels.limits);
    memset(c, 0, sizeof(*c));
}
