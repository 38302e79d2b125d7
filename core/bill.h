/*
 * bill.h — the channels' bill files, parsed into neutral rows for
 * reconciliation (gw_reconcile in storage/migrations/0007_settlement.sql;
 * settle.c calls it from the admin API and the CLI).  See bill.c for the
 * formats.
 */
#ifndef GW_BILL_H
#define GW_BILL_H

#include "gw.h"

struct cJSON;

/* Parses a channel's bill file into rows for gw_reconcile():
 * [{"kind": "pay"|"refund", "trade_no", "refund_no"?, "amount" (fen),
 *   "status", "mch_id", "channel_trade_no"?, "time"?}, …].
 * GW_ENOTSUP for a channel without a bill (the mock, any other name), GW_EPARSE for
 * a malformed bill (err says where; for Alipay's zip also a truncated,
 * oversized or otherwise refused archive), GW_ENOMEM / GW_EIO (iconv)
 * otherwise.  text need not be NUL-terminated (Alipay's bill is a zip). */
gw_err_t gw_bill_parse(const char *channel, const char *text, size_t len, struct cJSON **rows,
                       char *err, size_t errlen);

#endif
