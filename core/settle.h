/*
 * settle.h — settlement statements and reconciliation against channel bills
 * (see settle.c; the storage side is storage/migrations/0007_settlement.sql;
 * the bills themselves are parsed by bill.h's gw_bill_parse).
 */
#ifndef GW_SETTLE_H
#define GW_SETTLE_H

#include <stdio.h>
#include "app.h"

/* Registers prepared statements; call before gw_pg_start. */
void gw_settle_init(gw_app_t *app);

/* GET /v1/statements/{shop_id}?date=YYYY-MM-DD[&format=csv] for an
 * authenticated merchant: answers req. */
void gw_settle_statement(gw_app_t *app, gw_http_req_t *req, const char *merchant_id,
                         const char *shop_id);

/* Admin: POST /admin/settlement/redrive {"from_event_id"} and
 * POST /admin/reconcile?channel=…&date=…[&mch_id=…] with the bill as body. */
void gw_settle_admin_redrive(gw_app_t *app, gw_http_req_t *req);
void gw_settle_admin_reconcile(gw_app_t *app, gw_http_req_t *req);

/* Admin: POST /admin/settlement/adjustments {"idempotency_key", "corrects": entry id,
 * "gross"?, "fee"?, "cashback"? (signed integer fen, not all 0), "net"? (must be
 * gross - fee + cashback), "note", "operator_id"?} books a correcting entry
 * (kind adjustment) dated now: 201 {"entry"}; the same key again 200 with
 * "replayed": true; the key with other content 409; an unknown entry 422. */
void gw_settle_admin_adjust(gw_app_t *app, gw_http_req_t *req);

/* "YYYY-MM-DD" or "YYYYMMDD" → "YYYY-MM-DD" (out of 11 bytes); 0 when invalid. */
int gw_settle_date(const char *in, char out[11]);

/* `paygated channel reconcile -c CONFIG --channel X --date D [--mch-id M] FILE`:
 * argv[0] is "reconcile".  Exit 0 no findings, 1 findings, 2 usage/input. */
int gw_settle_reconcile_cli(int argc, char **argv, FILE *out, FILE *err);

#endif
