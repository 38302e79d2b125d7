/*
 * health.h — per-channel bulkheads and circuit breakers (in process, per
 * node).
 *
 * Bulkhead: at most max_inflight calls to one channel at a time; a call
 * beyond it is refused before anything is sent (GW_EBUSY), so a slow channel
 * can hold only its own slots, never the loop or another channel's.
 *
 * Breaker:  CLOSED ──(error rate ≥ error_pct over ≥ min_calls in window_ms,
 *           or `consecutive` failures in a row)──> OPEN ──(open_ms)──>
 *           HALF_OPEN: one probe call at a time; `close_after` successes →
 *           CLOSED, one failure → OPEN again.
 * A failure is a call whose outcome the channel did not give: a transport
 * error (refused, reset, timeout), an HTTP 5xx, or an answer that could not
 * be trusted.  Business refusals (declined, not paid) are successes.
 */
#ifndef GW_HEALTH_H
#define GW_HEALTH_H

#include "gw.h"

typedef struct gw_app gw_app_t;

enum gw_breaker_state { GW_BREAKER_CLOSED = 0, GW_BREAKER_HALF_OPEN = 1, GW_BREAKER_OPEN = 2 };

/* May a new call go to channel now (breaker allows it and a slot is free)?
 * Does not take anything: for routing decisions. */
int gw_health_available(gw_app_t *app, const char *channel);
/* Counts a routing decision that skipped channel (metrics). */
void gw_health_note_refusal(gw_app_t *app, const char *channel);
/* Takes a slot (GW_OK) or refuses (GW_EBUSY: bulkhead full or breaker open /
 * half-open probe already out). */
gw_err_t gw_health_acquire(gw_app_t *app, const char *channel);
/* Gives the slot back with the call's outcome (failed != 0: see above). */
void gw_health_release(gw_app_t *app, const char *channel, int failed);
enum gw_breaker_state gw_health_state(gw_app_t *app, const char *channel);
const char *gw_breaker_state_name(enum gw_breaker_state s);
int gw_health_inflight(gw_app_t *app, const char *channel);
void gw_health_free(gw_app_t *app);

#endif
