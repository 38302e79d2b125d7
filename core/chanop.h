/*
 * chanop.h — one channel operation end to end: pin the channel module,
 * build the request (on the thread pool: RSA stays off the loop), send it
 * through the shared HTTP client, parse and verify the answer (thread pool),
 * unpin.  A transport failure is reported as an UNKNOWN result together
 * with whether the request may have left (failover is only safe when not).
 */
#ifndef GW_CHANOP_H
#define GW_CHANOP_H

#include "gw.h"

typedef struct gw_app gw_app_t;

/* The built-in stored-value channel (no module, no HTTP). */
#define GW_CHANNEL_BALANCE "balance"

enum gw_chanop_kind { GW_OP_PAY = 1, GW_OP_QUERY, GW_OP_REFUND, GW_OP_CLOSE };

typedef struct gw_chanop_out {
    gw_err_t err;          /* GW_OK: res is the module's verdict (may be UNKNOWN);
                              GW_ENOENT: no such channel loaded; GW_EBUSY: the
                              channel's in-flight cap is reached (nothing sent);
                              other: build failed (nothing sent) */
    int sent;              /* the request may have reached the channel */
    int http_status;
    gw_chan_result_t res;  /* buffers owned by chanop: valid during the callback */
    char channel_version[32];
} gw_chanop_out_t;

typedef void (*gw_chanop_cb)(void *udata, gw_chanop_out_t *out);

/* The inputs are borrowed until the callback.  Returns GW_OK and calls cb
 * exactly once later, or an error and never calls it. */
gw_err_t gw_chanop_run(gw_app_t *app, const char *channel, /* The built-in stored-value channel (no module, no HTTP). */
#define GW_CHANNEL_BALANCE "balance"

enum gw_chanop_kind op,
                       uint32_t flags, const gw_chan_merchant_t *merchant,
                       const gw_chan_order_t *order, const gw_chan_refund_t *refund,
                       gw_chanop_cb cb, void *udata);

void gw_chanop_metrics_init(void);

#endif
