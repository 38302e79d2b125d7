/*
 * settle.c — daily statements per shop, the settlement re-drive, and
 * reconciliation of a channel's bill against our orders and refunds.
 *
 * The entries themselves are written by the settlement consumer
 * (gw_settle_run in storage/migrations/0007_settlement.sql), which the task
 * runner (tasks.c, kind "settlement") calls every tick; this file only
 * reads them, and books corrections (adjustments).  Bills are parsed by
 * bill.c, per channel format, into neutral rows ({"kind", "trade_no",
 * "refund_no", "amount" in fen, …}); the matching is one SQL function
 * (gw_reconcile), shared by the admin API and the CLI.
 *
 * Money is integer fen throughout.
 */
#include "settle.h"
#include "api.h"
#include "bill.h"
#include "rows.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <libpq-fe.h>
#include <stdint.h>
#include <stdlib.h>

#define RECONCILE_SQL "SELECT gw_reconcile($1, $2::date, $3, $4, $5::jsonb)"

static const struct {
    const char *name;
    const char *sql;
} settle_stmts[] = {
    { "settle_statement", "SELECT gw_statement($1, $2, $3::date, $4)" },
    { "settle_redrive", "SELECT gw_settle_redrive($1::bigint)" },
    { "settle_reconcile", RECONCILE_SQL },
    { "settle_adjust", "SELECT gw_settle_adjust($1, $2::bigint, $3::bigint, $4::bigint, $5::bigint, $6, $7)" },
};

void gw_settle_init(gw_app_t *app)
{
    for (size_t i = 0; i < GW_ARRAY_SIZE(settle_stmts); i++)
        gw_pg_prepare(app->pg, settle_stmts[i].name, settle_stmts[i].sql);
}

/* ------------------------------------------------------------------ */
/* small helpers */

static int is_leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

int gw_settle_date(const char *in, char out[11])
{
    char d[9];
    size_t n = in ? strlen(in) : 0;
    if (n == 10 && in[4] == '-' && in[7] == '-') {
        memcpy(d, in, 4);
        memcpy(d + 4, in + 5, 2);
        memcpy(d + 6, in + 8, 2);
    } else if (n == 8) {
        memcpy(d, in, 8);
    } else return 0;
    d[8] = '\0';
    for (int i = 0; i < 8; i++)
        if (d[i] < '0' || d[i] > '9') return 0;
    int y = (d[0] - '0') * 1000 + (d[1] - '0') * 100 + (d[2] - '0') * 10 + (d[3] - '0');
    int m = (d[4] - '0') * 10 + (d[5] - '0');
    int day = (d[6] - '0') * 10 + (d[7] - '0');
    static const int mdays[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    if (y < 2000 || y > 2999 || m < 1 || m > 12 || day < 1) return 0;
    if (day > mdays[m - 1] + (m == 2 && is_leap(y))) return 0;
    snprintf(out, 11, "%.4s-%.2s-%.2s", d, d + 4, d + 6);
    return 1;
}


static void respond_db_error(gw_http_req_t *req, gw_err_t err)
{
    if (err == GW_EUNAVAIL || err == GW_EIO || err == GW_EBUSY || err == GW_ETIMEDOUT)
        gw_http_respond_error(req, 503, "service_unavailable", "the database is unavailable, retry later");
    else {
        char msg[160];
        snprintf(msg, sizeof(msg), "database error: %s", gw_strerror(err));
        gw_http_respond_error(req, 500, "internal", msg);
    }
}

/* ------------------------------------------------------------------ */
/* statements */

typedef struct st_req {
    gw_http_req_t *req;
    int csv;
    char shop[72];
    char date[11];
} st_req_t;

static void csv_field(gw_buf_t *b, const char *s)
{
    if (s == NULL) return;
    if (strpbrk(s, ",\"\r\n") == NULL) {
        gw_buf_appends(b, s);
        return;
    }
    gw_buf_append(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        if (*p == '"') gw_buf_append(b, "\"", 1);
        gw_buf_append(b, p, 1);
    }
    gw_buf_append(b, "\"", 1);
}

static void statement_csv(st_req_t *s, const cJSON *j)
{
    static const char *const text_cols[] = { "type", "local_time", "trade_no", "out_trade_no",
                                              "refund_no", "out_refund_no", "channel",
                                              "channel_mch_id", "method" };
    static const char *const num_cols[] = { "rate_ppm", "gross", "fee", "cashback", "net" };
    gw_buf_t b;
    gw_buf_init(&b, 256u << 20);
    for (size_t i = 0; i < GW_ARRAY_SIZE(text_cols); i++) gw_buf_appendf(&b, "%s,", text_cols[i]);
    for (size_t i = 0; i < GW_ARRAY_SIZE(num_cols); i++)
        gw_buf_appendf(&b, "%s%s", num_cols[i], i + 1 < GW_ARRAY_SIZE(num_cols) ? "," : "\r\n");
    const cJSON *line;
    cJSON_ArrayForEach(line, cJSON_GetObjectItemCaseSensitive(j, "lines")) {
        for (size_t i = 0; i < GW_ARRAY_SIZE(text_cols); i++) {
            csv_field(&b, gw_jstr(line, text_cols[i]));
            gw_buf_append(&b, ",", 1);
        }
        for (size_t i = 0; i < GW_ARRAY_SIZE(num_cols); i++)
            gw_buf_appendf(&b, "%lld%s", (long long)gw_jint(line, num_cols[i]),
                           i + 1 < GW_ARRAY_SIZE(num_cols) ? "," : "\r\n");
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "totals");
    gw_buf_appendf(&b, "total,,,,,,,,,,%lld,%lld,%lld,%lld\r\n", (long long)gw_jint(t, "gross"),
                   (long long)gw_jint(t, "fee"), (long long)gw_jint(t, "cashback"),
                   (long long)gw_jint(t, "net"));
    char disp[160];
    snprintf(disp, sizeof(disp), "attachment; filename=\"statement-%s-%s.csv\"", s->shop, s->date);
    gw_http_add_header(s->req, "Content-Disposition", disp);
    gw_http_respond(s->req, 200, "text/csv; charset=utf-8", b.data ? b.data : "", b.len);
    gw_buf_free(&b);
}

static void statement_cb(void *udata, gw_err_t err, cJSON *j)
{
    st_req_t *s = udata;
    if (err == GW_ENOENT) gw_http_respond_error(s->req, 404, "not_found", "no such shop");
    else if (err != GW_OK) respond_db_error(s->req, err);
    else if (s->csv) statement_csv(s, j);
    else gw_respond_json(s->req, 200, cJSON_Duplicate(j, 1));
    free(s);
}

void gw_settle_statement(gw_app_t *app, gw_http_req_t *req, const char *merchant_id, const char *shop_id)
{
    char date[40], fmt[16] = "json";
    st_req_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        gw_http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    s->req = req;
    snprintf(s->shop, sizeof(s->shop), "%s", shop_id);
    if (!gw_http_query_param(req, "date", date, sizeof(date)) || !gw_settle_date(date, s->date)) {
        free(s);
        gw_http_respond_error(req, 400, "invalid_request", "date=YYYY-MM-DD is required");
        return;
    }
    if (req->query.len && memmem(req->query.ptr, req->query.len, "format=", 7) &&
        (!gw_http_query_param(req, "format", fmt, sizeof(fmt)) || (strcmp(fmt, "csv") && strcmp(fmt, "json")))) {
        free(s);
        gw_http_respond_error(req, 400, "invalid_request", "format is json or csv");
        return;
    }
    s->csv = strcmp(fmt, "csv") == 0;
    const char *v[] = { merchant_id, shop_id, s->date, app->cfg.settlement.timezone };
    gw_err_t rc = gw_pg_json(app, "settle_statement", 4, v, statement_cb, s);
    if (rc != GW_OK) {
        free(s);
        respond_db_error(req, rc);
    }
}

/* ------------------------------------------------------------------ */
/* admin */

static void admin_result_cb(void *udata, gw_err_t err, cJSON *j)
{
    gw_http_req_t *req = udata;
    if (err == GW_ESTATE) {
        gw_http_respond_error(req, 422, "invalid_request", "rejected by the database");
        return;
    }
    if (err != GW_OK) {
        respond_db_error(req, err);
        return;
    }
    cJSON *out = cJSON_CreateObject();
    cJSON_AddBoolToObject(out, "ok", 1);
    cJSON_AddItemToObject(out, "result", cJSON_Duplicate(j, 1));
    gw_respond_json(req, 200, out);
}

void gw_settle_admin_redrive(gw_app_t *app, gw_http_req_t *req)
{
    cJSON *b = cJSON_ParseWithLength(req->body.data ? req->body.data : "", req->body.len);
    const cJSON *from = cJSON_GetObjectItemCaseSensitive(b, "from_event_id");
    double d = cJSON_IsNumber(from) ? from->valuedouble : -1;
    cJSON_Delete(b);
    if (d < 0 || d != (double)(int64_t)d || d > 9e15) {
        gw_http_respond_error(req, 400, "invalid_request", "from_event_id (an event id, 0 for all) is required");
        return;
    }
    char fb[24];
    snprintf(fb, sizeof(fb), "%lld", (long long)d);
    const char *v[] = { fb };
    gw_log(GW_LOG_NOTICE, "settlement: re-drive from event %s requested", fb);
    gw_err_t rc = gw_pg_json(app, "settle_redrive", 1, v, admin_result_cb, req);
    if (rc != GW_OK) respond_db_error(req, rc);
}

void gw_settle_admin_reconcile(gw_app_t *app, gw_http_req_t *req)
{
    char channel[40], date_in[40], date[11], mch[72];
    if (!gw_http_query_param(req, "channel", channel, sizeof(channel)) || !channel[0] ||
        !gw_http_query_param(req, "date", date_in, sizeof(date_in)) || !gw_settle_date(date_in, date)) {
        gw_http_respond_error(req, 400, "invalid_request", "?channel=…&date=YYYY-MM-DD are required");
        return;
    }
    int have_mch = gw_http_query_param(req, "mch_id", mch, sizeof(mch)) && mch[0];
    cJSON *rows = NULL;
    char err[256];
    gw_err_t rc = gw_bill_parse(channel, req->body.data ? req->body.data : "", req->body.len, &rows,
                                err, sizeof(err));
    if (rc == GW_ENOTSUP) {
        gw_http_respond_error(req, 422, "unsupported_channel", err);
        return;
    }
    if (rc == GW_ENOMEM || rc == GW_EIO) {
        gw_http_respond_error(req, 500, "internal", err);
        return;
    }
    if (rc != GW_OK) {
        gw_http_respond_error(req, 422, "invalid_bill", err);
        return;
    }
    char *text = cJSON_PrintUnformatted(rows);
    cJSON_Delete(rows);
    const char *v[] = { channel, date, app->cfg.settlement.timezone, have_mch ? mch : NULL, text };
    rc = text ? gw_pg_json(app, "settle_reconcile", 5, v, admin_result_cb, req) : GW_ENOMEM;
    cJSON_free(text);
    if (rc != GW_OK) respond_db_error(req, rc);
}

/* ------------------------------------------------------------------ */
/* corrections: POST /admin/settlement/adjustments */

#define ADJ_MAX_FEN 10000000000000LL /* 1e13 fen: anything larger is a typo */

/* A JSON integer (fen, or an id) within ±max; 0 when absent or not one. */
static int json_int(const cJSON *v, int64_t max, int64_t *out)
{
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= -(double)max && d <= (double)max) || d != (double)(int64_t)d) return 0;
    *out = (int64_t)d;
    return 1;
}

/* A string of 1..max bytes, not only blanks; NULL otherwise. */
static const char *json_text(const cJSON *v, size_t max)
{
    const char *s = cJSON_GetStringValue(v);
    if (s == NULL || strlen(s) > max || strspn(s, " \t\r\n") == strlen(s)) return NULL;
    return s;
}

typedef struct {
    char key[72], corrects[24], gross[24], fee[24], cashback[24];
    const char *note, *operator_id;
} adj_t;

/* Validates the body into a; on failure answers req (400) and returns 0. */
static int adjust_body(gw_http_req_t *req, const cJSON *b, adj_t *a)
{
    static const char *const known[] = { "idempotency_key", "corrects", "gross", "fee", "cashback", "net",
                                         "note", "operator_id" };
    static const char *const money[] = { "gross", "fee", "cashback" };
    char *const dst[] = { a->gross, a->fee, a->cashback };
    char msg[200];
    const cJSON *it;
    int64_t v[3] = { 0, 0, 0 }, id, net;
    const char *key = json_text(cJSON_GetObjectItemCaseSensitive(b, "idempotency_key"), 64);
    cJSON_ArrayForEach(it, b) {
        size_t i = 0;
        while (i < GW_ARRAY_SIZE(known) && strcmp(it->string, known[i])) i++;
        if (i == GW_ARRAY_SIZE(known)) {
            snprintf(msg, sizeof(msg), "unknown field \"%.40s\"", it->string);
            goto bad;
        }
    }
    if (key == NULL || strspn(key, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:") != strlen(key)) {
        snprintf(msg, sizeof(msg), "idempotency_key (1-64 characters [A-Za-z0-9_.:-]) is required");
        goto bad;
    }
    if (!json_int(cJSON_GetObjectItemCaseSensitive(b, "corrects"), 1000000000000000LL, &id) || id <= 0) {
        snprintf(msg, sizeof(msg), "corrects (the id of the settlement entry corrected, an integer) is required");
        goto bad;
    }
    for (size_t i = 0; i < GW_ARRAY_SIZE(money); i++) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(b, money[i]);
        if (m && !json_int(m, ADJ_MAX_FEN, &v[i])) {
            snprintf(msg, sizeof(msg), "%s must be an integer amount of fen (signed, |%s| < 1e13)", money[i], money[i]);
            goto bad;
        }
        snprintf(dst[i], 24, "%lld", (long long)v[i]);
    }
    if (v[0] == 0 && v[1] == 0 && v[2] == 0) {
        snprintf(msg, sizeof(msg), "an adjustment needs a non-zero gross, fee or cashback (integer fen)");
        goto bad;
    }
    it = cJSON_GetObjectItemCaseSensitive(b, "net");
    if (it && (!json_int(it, 3 * ADJ_MAX_FEN, &net) || net != v[0] - v[1] + v[2])) {
        snprintf(msg, sizeof(msg), "net, when given, must be the integer gross - fee + cashback (%lld)",
                 (long long)(v[0] - v[1] + v[2]));
        goto bad;
    }
    a->note = json_text(cJSON_GetObjectItemCaseSensitive(b, "note"), 1000);
    if (a->note == NULL) {
        snprintf(msg, sizeof(msg), "note (why the entry is corrected, 1-1000 bytes) is required");
        goto bad;
    }
    it = cJSON_GetObjectItemCaseSensitive(b, "operator_id");
    a->operator_id = json_text(it, 64);
    if (it && a->operator_id == NULL) {
        snprintf(msg, sizeof(msg), "operator_id must be a string of 1-64 bytes");
        goto bad;
    }
    snprintf(a->key, sizeof(a->key), "%s", key);
    snprintf(a->corrects, sizeof(a->corrects), "%lld", (long long)id);
    return 1;
bad:
    gw_http_respond_error(req, 400, "invalid_request", msg);
    return 0;
}

static void adjust_cb(void *udata, gw_err_t err, cJSON *j)
{
    gw_http_req_t *req = udata;
    const char *st = gw_jstr(j, "status");
    if (err != GW_OK || st == NULL) {
        respond_db_error(req, err != GW_OK ? err : GW_EPARSE);
        return;
    }
    if (strcmp(st, "unknown_entry") == 0) {
        gw_http_respond_error(req, 422, "unknown_entry", "corrects names no settlement entry");
        return;
    }
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(j, "entry");
    if (strcmp(st, "conflict") == 0) {
        char msg[160];
        snprintf(msg, sizeof(msg), "idempotency_key was already used for another adjustment (entry %lld)",
                 (long long)gw_jint(entry, "id"));
        gw_http_respond_error(req, 409, "conflict", msg);
        return;
    }
    int created = strcmp(st, "created") == 0;
    if (created)
        gw_log(GW_LOG_NOTICE, "settlement: adjustment %lld of entry %lld booked", (long long)gw_jint(entry, "id"),
               (long long)gw_jint(entry, "corrects"));
    cJSON *out = cJSON_CreateObject();
    cJSON_AddBoolToObject(out, "ok", 1);
    cJSON_AddBoolToObject(out, "replayed", !created);
    cJSON_AddItemToObject(out, "entry", cJSON_Duplicate(entry, 1));
    gw_respond_json(req, created ? 201 : 200, out);
}

void gw_settle_admin_adjust(gw_app_t *app, gw_http_req_t *req)
{
    cJSON *b = cJSON_ParseWithLength(req->body.data ? req->body.data : "", req->body.len);
    adj_t a;
    if (!cJSON_IsObject(b)) {
        gw_http_respond_error(req, 400, "invalid_request", "the body must be a JSON object");
    } else if (adjust_body(req, b, &a)) {
        const char *v[] = { a.key, a.corrects, a.gross, a.fee, a.cashback, a.note, a.operator_id };
        gw_err_t rc = gw_pg_json(app, "settle_adjust", 7, v, adjust_cb, req);
        if (rc != GW_OK) respond_db_error(req, rc);
    }
    cJSON_Delete(b);
}

/* ------------------------------------------------------------------ */
/* CLI: paygated channel reconcile */

static void cli_usage(FILE *f)
{
    fprintf(f, "usage: paygated channel reconcile -c CONFIG --channel NAME --date YYYY-MM-DD\n"
               "                [--mch-id MCH] [--json] BILL_FILE|-\n"
               "exit status: 0 no findings, 1 findings, 2 usage, input or database error\n");
}

static void print_list(FILE *out, const char *label, const cJSON *arr)
{
    const cJSON *x;
    cJSON_ArrayForEach(x, arr) {
        const char *kind = gw_jstr(x, "kind");
        const char *no = gw_jstr(x, "refund_no") ? gw_jstr(x, "refund_no") : gw_jstr(x, "trade_no");
        if (cJSON_GetObjectItemCaseSensitive(x, "ours") && cJSON_GetObjectItemCaseSensitive(x, "theirs")) {
            const cJSON *ours = cJSON_GetObjectItemCaseSensitive(x, "ours");
            const cJSON *theirs = cJSON_GetObjectItemCaseSensitive(x, "theirs");
            char ob[40], tb[40];
            if (cJSON_IsNumber(ours)) snprintf(ob, sizeof(ob), "%lld", (long long)ours->valuedouble);
            else snprintf(ob, sizeof(ob), "%s", cJSON_GetStringValue(ours) ? ours->valuestring : "?");
            if (cJSON_IsNumber(theirs)) snprintf(tb, sizeof(tb), "%lld", (long long)theirs->valuedouble);
            else snprintf(tb, sizeof(tb), "%s", cJSON_GetStringValue(theirs) ? theirs->valuestring : "?");
            fprintf(out, "%-15s %s %s: ours %s, theirs %s%s\n", label, kind ? kind : "?", no ? no : "?", ob,
                    tb, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(x, "requery")) ? " (re-query scheduled)" : "");
        } else {
            fprintf(out, "%-15s %s %s %lld fen (mch %s)\n", label, kind ? kind : "?", no ? no : "?",
                    (long long)gw_jint(x, "amount"), gw_jstr(x, "mch_id") ? gw_jstr(x, "mch_id") : "?");
        }
    }
}

int gw_settle_reconcile_cli(int argc, char **argv, FILE *out, FILE *err)
{
    const char *cfg_path = NULL, *channel = NULL, *date_in = NULL, *mch = NULL, *file = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = NULL;
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) dst = &cfg_path;
        else if (strcmp(a, "--channel") == 0) dst = &channel;
        else if (strcmp(a, "--date") == 0) dst = &date_in;
        else if (strcmp(a, "--mch-id") == 0) dst = &mch;
        else if (strcmp(a, "--json") == 0) json = 1;
        else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            cli_usage(out);
            return 0;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(err, "paygated channel reconcile: unknown option \"%s\"\n", a);
            cli_usage(err);
            return 2;
        } else if (file == NULL) file = a;
        else {
            fprintf(err, "paygated channel reconcile: unexpected argument \"%s\"\n", a);
            return 2;
        }
        if (dst) {
            if (i + 1 >= argc) {
                fprintf(err, "paygated channel reconcile: %s needs a value\n", a);
                return 2;
            }
            *dst = argv[++i];
        }
    }
    char date[11];
    if (!cfg_path || !channel || !date_in || !file) {
        cli_usage(err);
        return 2;
    }
    if (!gw_settle_date(date_in, date)) {
        fprintf(err, "paygated channel reconcile: --date must be YYYY-MM-DD\n");
        return 2;
    }
    gw_config_t cfg;
    char msg[512];
    if (gw_config_load(cfg_path, &cfg, msg, sizeof(msg)) != GW_OK) {
        fprintf(err, "paygated channel reconcile: configuration error: %s\n", msg);
        return 2;
    }
    int status = 2;
    gw_buf_t bill;
    gw_buf_init(&bill, 256u << 20);
    cJSON *rows = NULL, *res = NULL;
    char *rows_text = NULL;
    PGconn *conn = NULL;
    PGresult *r = NULL;
    FILE *f = strcmp(file, "-") == 0 ? stdin : fopen(file, "rb");
    if (f == NULL) {
        fprintf(err, "paygated channel reconcile: %s: %s\n", file, strerror(errno));
        goto out;
    }
    char chunk[8192];
    size_t n;
    gw_err_t rc = GW_OK;
    while (rc == GW_OK && (n = fread(chunk, 1, sizeof(chunk), f)) > 0) rc = gw_buf_append(&bill, chunk, n);
    if (f != stdin) fclose(f);
    if (rc != GW_OK) {
        fprintf(err, "paygated channel reconcile: %s: %s\n", file, gw_strerror(rc));
        goto out;
    }
    rc = gw_bill_parse(channel, bill.data ? bill.data : "", bill.len, &rows, msg, sizeof(msg));
    if (rc != GW_OK) {
        fprintf(err, "paygated channel reconcile: %s: %s\n", file, msg);
        goto out;
    }
    rows_text = cJSON_PrintUnformatted(rows);
    conn = PQconnectdb(cfg.pg.conninfo);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(err, "paygated channel reconcile: cannot connect to PostgreSQL: %s", PQerrorMessage(conn));
        goto out;
    }
    const char *v[] = { channel, date, cfg.settlement.timezone, mch, rows_text };
    r = PQexecParams(conn, RECONCILE_SQL, 5, NULL, v, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        fprintf(err, "paygated channel reconcile: %s", PQerrorMessage(conn));
        goto out;
    }
    res = cJSON_Parse(PQgetvalue(r, 0, 0));
    if (res == NULL) {
        fprintf(err, "paygated channel reconcile: unreadable answer from the database\n");
        goto out;
    }
    int64_t findings = gw_jint(res, "findings");
    if (json) {
        char *t = cJSON_Print(res);
        fprintf(out, "%s\n", t ? t : "{}");
        cJSON_free(t);
    } else {
        fprintf(out, "reconcile %s %s (%s)%s%s: %lld bill lines matched, %lld findings (run %lld)\n", channel,
                date, cfg.settlement.timezone, mch ? ", mch " : "", mch ? mch : "",
                (long long)gw_jint(res, "lines"), (long long)findings, (long long)gw_jint(res, "id"));
        print_list(out, "missing ours:", cJSON_GetObjectItemCaseSensitive(res, "missing_ours"));
        print_list(out, "missing theirs:", cJSON_GetObjectItemCaseSensitive(res, "missing_theirs"));
        print_list(out, "mismatch:", cJSON_GetObjectItemCaseSensitive(res, "mismatch"));
        if (gw_jint(res, "requeried") > 0)
            fprintf(out, "re-queries scheduled: %lld\n", (long long)gw_jint(res, "requeried"));
    }
    status = findings == 0 ? 0 : 1;
out:
    fflush(out);
    if (r) PQclear(r);
    if (conn) PQfinish(conn);
    cJSON_Delete(res);
    cJSON_Delete(rows);
    cJSON_free(rows_text);
    gw_buf_free(&bill);
    gw_config_free(&cfg);
    return status;
}
