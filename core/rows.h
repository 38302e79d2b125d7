/*
 * rows.h — channel call inputs from the JSON rows the storage functions
 * return (orders, sub_merchants).  The strings point into the cJSON trees:
 * keep them alive for the duration of the call.
 */
#ifndef GW_ROWS_H
#define GW_ROWS_H

#include "app.h"

struct cJSON;

const char *gw_jstr(const struct cJSON *o, const char *key); /* NULL when absent / not a string */
int64_t gw_jint(const struct cJSON *o, const char *key);     /* -1 when absent / not a number */
gw_str_t gw_sstr(const char *s);                              /* NULL → "" */

/* GW_EINVAL when the row has no merchant number. */
gw_err_t gw_rows_merchant(const struct cJSON *sub, gw_chan_merchant_t *cm);
/* notify_url receives the URL the channel notifies (buffer of notify_len). */
void gw_rows_order(const gw_app_t *app, const struct cJSON *order, gw_chan_order_t *co,
                   char *notify_url, size_t notify_len);
void gw_rows_refund(const struct cJSON *refund, const struct cJSON *order, gw_chan_refund_t *cr);
uint32_t gw_method_bit(const char *method);
/* PostgreSQL JSON timestamp → epoch ms (0 when unparseable). */
int64_t gw_parse_ts_ms(const char *s);

#endif
