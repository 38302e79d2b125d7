/*
 * tasks.h — background follow-up: order polling / re-query / reverse /
 * close, refund follow-up, merchant notifications (see tasks.c).
 */
#ifndef GW_TASKS_H
#define GW_TASKS_H

#include "app.h"

typedef struct gw_tasks gw_tasks_t;

/* Registers prepared statements: call before gw_pg_start. */
gw_tasks_t *gw_tasks_new(gw_app_t *app);
void gw_tasks_start(gw_tasks_t *t);
/* This node's lease owner name. */
const char *gw_tasks_owner(const gw_tasks_t *t);
/* Jobs in flight or being claimed. */
int gw_tasks_busy(const gw_tasks_t *t);
/* Stops claiming, waits for jobs in flight, frees t, then calls done. */
void gw_tasks_stop(gw_tasks_t *t, void (*done)(void *), void *udata);

/* When to look at an order (or, status "REFUND", a refund) first after it
 * entered status: the channel's policy and the configured grace periods,
 * time-scaled.  Used by the API when it writes a state. */
uint32_t gw_tasks_first_check_ms(gw_app_t *app, const char *channel, const char *status);

/* The channel's earliest age for a reverse (time-scaled; 0: any time). */
uint32_t gw_tasks_reverse_min_age_ms(gw_app_t *app, const char *channel);

/* Merchant notification signature: lower-case hex
 * HMAC-SHA256(secret, TIMESTAMP "\n" NONCE "\n" BODY). */
void gw_notification_sign(const char *secret, const char *ts, const char *nonce, const char *body,
                          char out[65]);

#endif
