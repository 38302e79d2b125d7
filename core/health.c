/*
 * health.c — per-channel bulkheads and circuit breakers (see health.h).
 * Loop thread only.
 */
#include "health.h"
#include "app.h"
#include "metrics.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#define SLOTS 20 /* the window is kept as SLOTS buckets */

typedef struct chan_health {
    struct chan_health *next;
    char name[32];
    int max_inflight;
    int inflight;
    enum gw_breaker_state state;
    uint64_t opened_at_ms;
    int probes_out;        /* half-open: calls in flight */
    int probe_successes;
    int consecutive_failures;
    uint64_t bucket_start[SLOTS];
    int calls[SLOTS], fails[SLOTS];
} chan_health_t;

struct gw_health {
    chan_health_t *list;
};

const char *gw_breaker_state_name(enum gw_breaker_state s)
{
    switch (s) {
    case GW_BREAKER_OPEN: return "open";
    case GW_BREAKER_HALF_OPEN: return "half_open";
    default: return "closed";
    }
}

static uint64_t now_ms(void) { return gw_mono_us() / 1000; }

static chan_health_t *get(gw_app_t *app, const char *channel)
{
    if (app->health == NULL) {
        app->health = gw_xcalloc(1, sizeof(*app->health));
        gw_metric_declare("paygate_channel_breaker_state", "gauge",
                          "Circuit breaker per channel: 0 closed, 1 half-open, 2 open");
        gw_metric_declare("paygate_channel_breaker_transitions_total", "counter",
                          "Circuit breaker transitions per channel and new state");
        gw_metric_declare("paygate_channel_inflight", "gauge", "Calls in flight per channel");
        gw_metric_declare("paygate_channel_rejected_total", "counter",
                          "Calls refused before sending (bulkhead full or breaker open)");
    }
    for (chan_health_t *h = app->health->list; h; h = h->next)
        if (strcmp(h->name, channel) == 0) return h;
    chan_health_t *h = calloc(1, sizeof(*h));
    if (h == NULL) return NULL;
    snprintf(h->name, sizeof(h->name), "%s", channel);
    h->max_inflight = app->cfg.channels.max_inflight;
    const cJSON *lim = cJSON_GetObjectItemCaseSensitive(app->cfg.channels.limits, channel);
    const cJSON *mi = cJSON_GetObjectItemCaseSensitive(lim, "max_inflight");
    if (cJSON_IsNumber(mi) && mi->valuedouble >= 1) h->max_inflight = (int)mi->valuedouble;
    h->next = app->health->list;
    app->health->list = h;
    return h;
}

static void set_state(gw_app_t *app, chan_health_t *h, enum gw_breaker_state st, const char *why)
{
    if (h->state == st) return;
    gw_log(st == GW_BREAKER_CLOSED ? GW_LOG_NOTICE : GW_LOG_WARN, "channel %s: breaker %s → %s (%s)",
           h->name, gw_breaker_state_name(h->state), gw_breaker_state_name(st), why);
    h->state = st;
    char labels[96];
    snprintf(labels, sizeof(labels), "channel=\"%s\",state=\"%s\"", h->name, gw_breaker_state_name(st));
    gw_metric_add("paygate_channel_breaker_transitions_total", labels, 1);
    gw_strjoin(labels, sizeof(labels), "channel=\"", h->name, "\"", NULL);
    gw_metric_set("paygate_channel_breaker_state", labels, st);
    if (st == GW_BREAKER_OPEN) h->opened_at_ms = now_ms();
    if (st != GW_BREAKER_CLOSED) {
        h->probe_successes = 0;
    } else {
        memset(h->calls, 0, sizeof(h->calls));
        memset(h->fails, 0, sizeof(h->fails));
        h->consecutive_failures = 0;
    }
    (void)app;
}

/* OPEN whose wait is over becomes HALF_OPEN on the next look */
static void tick(gw_app_t *app, chan_health_t *h)
{
    if (h->state == GW_BREAKER_OPEN && now_ms() - h->opened_at_ms >= (uint64_t)app->cfg.channels.breaker.open_ms) {
        h->probes_out = 0;
        set_state(app, h, GW_BREAKER_HALF_OPEN, "open period over, probing");
    }
}

static int allows(gw_app_t *app, chan_health_t *h)
{
    tick(app, h);
    if (h->inflight >= h->max_inflight) return 0;
    if (h->state == GW_BREAKER_OPEN) return 0;
    if (h->state == GW_BREAKER_HALF_OPEN && h->probes_out > 0) return 0;
    return 1;
}

int gw_health_available(gw_app_t *app, const char *channel)
{
    chan_health_t *h = get(app, channel);
    return h ? allows(app, h) : 1;
}

static void count_refusal(chan_health_t *h)
{
    char labels[96];
    snprintf(labels, sizeof(labels), "channel=\"%s\",reason=\"%s\"", h->name,
             h->inflight >= h->max_inflight ? "bulkhead" : "breaker");
    gw_metric_add("paygate_channel_rejected_total", labels, 1);
}

void gw_health_note_refusal(gw_app_t *app, const char *channel)
{
    chan_health_t *h = get(app, channel);
    if (h) count_refusal(h);
}

gw_err_t gw_health_acquire(gw_app_t *app, const char *channel)
{
    chan_health_t *h = get(app, channel);
    if (h == NULL) return GW_OK;
    if (!allows(app, h)) {
        count_refusal(h);
        return GW_EBUSY;
    }
    h->inflight++;
    if (h->state == GW_BREAKER_HALF_OPEN) h->probes_out++;
    char labels[64];
    gw_strjoin(labels, sizeof(labels), "channel=\"", h->name, "\"", NULL);
    gw_metric_set("paygate_channel_inflight", labels, h->inflight);
    return GW_OK;
}

void gw_health_release(gw_app_t *app, const char *channel, int failed)
{
    chan_health_t *h = get(app, channel);
    if (h == NULL) return;
    const __typeof__(app->cfg.channels.breaker) *b = &app->cfg.channels.breaker;
    if (h->inflight > 0) h->inflight--;
    char labels[64];
    gw_strjoin(labels, sizeof(labels), "channel=\"", h->name, "\"", NULL);
    gw_metric_set("paygate_channel_inflight", labels, h->inflight);

    if (h->state == GW_BREAKER_HALF_OPEN) {
        if (h->probes_out > 0) h->probes_out--;
        if (failed) {
            set_state(app, h, GW_BREAKER_OPEN, "probe failed");
        } else if (++h->probe_successes >= b->close_after) {
            set_state(app, h, GW_BREAKER_CLOSED, "probes succeeded");
        }
        return;
    }
    if (h->state == GW_BREAKER_OPEN) return; /* a call started before it opened */

    /* CLOSED: count in the sliding window */
    uint64_t now = now_ms();
    uint64_t width = (uint64_t)b->window_ms / SLOTS;
    if (width == 0) width = 1;
    uint64_t start = now - now % width;
    int i = (int)((now / width) % SLOTS);
    if (h->bucket_start[i] != start) {
        h->bucket_start[i] = start;
        h->calls[i] = h->fails[i] = 0;
    }
    h->calls[i]++;
    if (failed) h->fails[i]++;
    h->consecutive_failures = failed ? h->consecutive_failures + 1 : 0;
    if (h->consecutive_failures >= b->consecutive) {
        char why[64];
        snprintf(why, sizeof(why), "%d failures in a row", h->consecutive_failures);
        set_state(app, h, GW_BREAKER_OPEN, why);
        return;
    }
    int calls = 0, fails = 0;
    for (int k = 0; k < SLOTS; k++) {
        if (now - h->bucket_start[k] < (uint64_t)b->window_ms) {
            calls += h->calls[k];
            fails += h->fails[k];
        }
    }
    if (calls >= b->min_calls && fails * 100 >= b->error_pct * calls) {
        char why[64];
        snprintf(why, sizeof(why), "%d of %d calls failed", fails, calls);
        set_state(app, h, GW_BREAKER_OPEN, why);
    }
}

enum gw_breaker_state gw_health_state(gw_app_t *app, const char *channel)
{
    chan_health_t *h = get(app, channel);
    if (h == NULL) return GW_BREAKER_CLOSED;
    tick(app, h);
    return h->state;
}

int gw_health_inflight(gw_app_t *app, const char *channel)
{
    chan_health_t *h = get(app, channel);
    return h ? h->inflight : 0;
}

void gw_health_free(gw_app_t *app)
{
    if (app->health == NULL) return;
    for (chan_health_t *h = app->health->list, *n; h; h = n) {
        n = h->next;
        free(h);
    }
    free(app->health);
    app->health = NULL;
}
