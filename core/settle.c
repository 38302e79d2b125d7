/*
 * settle.c — daily statements per shop, the settlement re-drive, and
 * reconciliation of a channel's bill against our orders and refunds.
 *
 * The entries themselves are written by the settlement consumer
 * (gw_settle_run in storage/migrations/0007_settlement.sql), which the task
 * runner (tasks.c, kind "settlement") calls every tick; this file only
 * reads them.  Bills are parsed here, per channel format, into neutral rows
 * ({"kind", "trade_no", "refund_no", "amount" in fen, …}); the matching is
 * one SQL function (gw_reconcile), shared by the admin API and the CLI.
 *
 * Money is integer fen throughout: bill amounts ("12.34" yuan) are parsed
 * digit by digit, never through a floating-point number.
 */
#include "settle.h"
#include "api.h"
#include "crypto.h"
#include "rows.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <iconv.h>
#include <libpq-fe.h>
#include <stdint.h>
#include <stdlib.h>
#include <zlib.h>

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
/* bills */

/* A decimal "12.34" / "-0.5" / "12" → an integer in units of 10^-scale
 * (scale 2: yuan → fen); at most `scale` decimals, no exponent, blanks
 * around allowed, a leading '-' only when allow_neg.  0 when malformed. */
static int decimal_parse(const char *s, size_t n, int scale, int allow_neg, int64_t *out)
{
    while (n && (*s == ' ' || *s == '\t')) s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    int neg = n && *s == '-';
    if (neg && !allow_neg) return 0;
    s += neg, n -= neg;
    int64_t v = 0;
    size_t i = 0, int_digits = 0;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++, int_digits++) {
        if (int_digits >= 13 || (scale > 5 && int_digits >= 18 - (size_t)scale)) return 0;
        v = v * 10 + (s[i] - '0');
    }
    if (int_digits == 0) return 0;
    int64_t frac = 0;
    int frac_digits = 0;
    if (i < n && s[i] == '.') {
        for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
            if (++frac_digits > scale) return 0;
            frac = frac * 10 + (s[i] - '0');
        }
        if (frac_digits == 0) return 0;
    }
    if (i != n) return 0;
    for (int k = 0; k < scale; k++) v *= 10;
    for (; frac_digits < scale; frac_digits++) frac *= 10;
    *out = neg ? -(v + frac) : v + frac;
    return 1;
}

/* "12.34" / "12.3" / "12" (yuan) → fen; 0 when malformed (or negative). */
static int yuan_to_fen(const char *s, size_t n, int64_t *out) { return decimal_parse(s, n, 2, 0, out); }

/* The same, a leading '-' allowed ("-0.01": refund lines, fees returned). */
static int signed_yuan_to_fen(const char *s, size_t n, int64_t *out) { return decimal_parse(s, n, 2, 1, out); }

typedef struct {
    const char *p;
    size_t n;
} span_t;

/* Splits a bill line into fields: a data line is "`a,`b,`c" (every value
 * carries a leading back-quote so spreadsheets keep long numbers as text);
 * a title line is "a,b,c". */
static int split_fields(const char *line, size_t len, span_t *f, int max)
{
    int n = 0;
    int ticked = len > 0 && line[0] == '`';
    const char *p = line + ticked, *end = line + len;
    for (;;) {
        const char *q = p;
        if (ticked) {
            while (q < end && !(q[0] == ',' && q + 1 < end && q[1] == '`')) q++;
        } else {
            while (q < end && *q != ',') q++;
        }
        if (n >= max) return -1;
        f[n++] = (span_t){ p, (size_t)(q - p) };
        if (q >= end) break;
        p = q + 1 + ticked;
    }
    return n;
}

/* s without surrounding blanks (spaces, tabs: Alipay ends values with a tab). */
static span_t span_trim(span_t s)
{
    while (s.n && (s.p[0] == ' ' || s.p[0] == '\t')) s.p++, s.n--;
    while (s.n && (s.p[s.n - 1] == ' ' || s.p[s.n - 1] == '\t')) s.n--;
    return s;
}

static int span_eq(span_t s, const char *lit)
{
    while (s.n && (s.p[0] == ' ' || s.p[0] == '\t' || s.p[0] == '`')) s.p++, s.n--;
    s = span_trim(s);
    return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0;
}

static char *span_dup(span_t s)
{
    s = span_trim(s);
    char *r = malloc(s.n + 1);
    if (r) {
        memcpy(r, s.p, s.n);
        r[s.n] = '\0';
    }
    return r;
}

static void add_span(cJSON *o, const char *key, span_t s)
{
    char *v = span_dup(s);
    if (v && v[0]) cJSON_AddStringToObject(o, key, v);
    free(v);
}

#define BILL_MAX_COLS 64

/*
 * Swiftpass (威富通) merchant bill, as pay.bill.merchant returns it (and
 * test/sim/swiftpass.js GET /_sim/bill produces it): UTF-8 text,
 *   line 1   column titles, comma-separated;
 *   then     one line per trade or refund, every value prefixed with "`";
 *   then     the summary titles (总交易单数,总交易额,总退款金额,…) and one line
 *            of their values, "`"-prefixed.
 * Columns are found by title, so extra or reordered columns are accepted.
 * A trade line has 交易状态 SUCCESS; a refund line REFUND, with the refund in
 * 商户退款单号 / 退款金额 / 退款状态.  Amounts are yuan with two decimals.  The
 * summary must agree with the lines (a truncated file is refused).
 */
/* The next line of [*p, end) without its line end (LF or CRLF); 0 at the end. */
static int next_line(const char **p, const char *end, const char **line, size_t *len)
{
    if (*p >= end) return 0;
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    const char *le = nl ? nl : end;
    *line = *p;
    *len = (size_t)(le - *p);
    if (*len && (*p)[*len - 1] == '\r') (*len)--;
    *p = nl ? nl + 1 : end;
    return 1;
}

/* col[c] = index of the field titled titles[c] in the header fields f
 * (first match), -1 when absent. */
static void find_columns(const span_t *f, int n, const char *const *titles, int ntitles, int *col)
{
    for (int c = 0; c < ntitles; c++) col[c] = -1;
    for (int i = 0; i < n; i++)
        for (int c = 0; c < ntitles; c++)
            if (col[c] < 0 && span_eq(f[i], titles[c])) col[c] = i;
}

static gw_err_t bill_swiftpass(const char *text, size_t len, cJSON **rows_out, char *err, size_t errlen)
{
    enum { C_TIME, C_MCH, C_TXN, C_OUT_TRADE, C_STATE, C_TOTAL, C_OUT_REFUND, C_REFUND_FEE,
           C_REFUND_STATE, C_N };
    static const char *const titles[C_N] = { "交易时间", "商户号", "平台订单号", "商户订单号", "交易状态",
                                             "总金额", "商户退款单号", "退款金额", "退款状态" };
    int col[C_N];
    int ncols = 0;
    span_t f[BILL_MAX_COLS];
    cJSON *rows = cJSON_CreateArray();
    int64_t sum_paid = 0, sum_refund = 0, nlines = 0;
    int state = 0; /* 0 header, 1 lines, 2 summary titles seen, 3 summary values seen */
    static const char *const sum_titles[3] = { "总交易单数", "总交易额", "总退款金额" };
    int scol[3] = { -1, -1, -1 };
    int lineno = 0;
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) text += 3, len -= 3;
    const char *p = text, *end = text + len;
    const char *line;
    size_t ll;
    while (next_line(&p, end, &line, &ll)) {
        lineno++;
        if (ll == 0) continue;
        int n = split_fields(line, ll, f, BILL_MAX_COLS);
        if (n < 0) {
            snprintf(err, errlen, "line %d: more than %d columns", lineno, BILL_MAX_COLS);
            goto bad;
        }
        if (state == 0) {
            ncols = n;
            find_columns(f, n, titles, C_N, col);
            for (int c = 0; c < C_N; c++)
                if (col[c] < 0) {
                    snprintf(err, errlen, "line 1: no column \"%s\" (not a Swiftpass bill?)", titles[c]);
                    goto bad;
                }
            state = 1;
            continue;
        }
        if (line[0] != '`') { /* the summary titles */
            if (state != 1) {
                snprintf(err, errlen, "line %d: unexpected text after the summary", lineno);
                goto bad;
            }
            find_columns(f, n, sum_titles, 3, scol);
            if (scol[0] < 0 || scol[1] < 0 || scol[2] < 0) {
                snprintf(err, errlen, "line %d: the summary needs 总交易单数, 总交易额 and 总退款金额", lineno);
                goto bad;
            }
            state = 2;
            continue;
        }
        if (state == 2) { /* the summary values */
            int64_t cnt, paid, refunded;
            char *cs = n > scol[0] ? span_dup(f[scol[0]]) : NULL;
            char *endp = NULL;
            errno = 0;
            cnt = cs && cs[0] ? strtoll(cs, &endp, 10) : -1;
            int cnt_ok = cs && endp && *endp == '\0' && errno == 0;
            free(cs);
            if (!cnt_ok || n <= scol[1] || n <= scol[2] ||
                !yuan_to_fen(f[scol[1]].p, f[scol[1]].n, &paid) ||
                !yuan_to_fen(f[scol[2]].p, f[scol[2]].n, &refunded)) {
                snprintf(err, errlen, "line %d: malformed summary values", lineno);
                goto bad;
            }
            if (cnt != nlines || paid != sum_paid || refunded != sum_refund) {
                snprintf(err, errlen,
                         "the summary (%lld lines, paid %lld, refunded %lld fen) does not match the "
                         "lines (%lld, %lld, %lld): truncated or altered file",
                         (long long)cnt, (long long)paid, (long long)refunded, (long long)nlines,
                         (long long)sum_paid, (long long)sum_refund);
                goto bad;
            }
            state = 3;
            continue;
        }
        if (state == 3) {
            snprintf(err, errlen, "line %d: unexpected text after the summary", lineno);
            goto bad;
        }
        if (n != ncols) {
            snprintf(err, errlen, "line %d: %d columns, the title line has %d", lineno, n, ncols);
            goto bad;
        }
        nlines++;
        int refund = span_eq(f[col[C_STATE]], "REFUND");
        int64_t amount;
        span_t a = refund ? f[col[C_REFUND_FEE]] : f[col[C_TOTAL]];
        if (!yuan_to_fen(a.p, a.n, &amount)) {
            snprintf(err, errlen, "line %d: malformed amount \"%.*s\"", lineno, (int)(a.n > 32 ? 32 : a.n), a.p);
            goto bad;
        }
        if (refund) sum_refund += amount;
        else if (span_eq(f[col[C_STATE]], "SUCCESS")) sum_paid += amount;
        /* matched: paid trades and successful refunds; other states (a
         * revoked trade, a refund still being processed) are counted in the
         * summary check only */
        if (!(refund ? span_eq(f[col[C_REFUND_STATE]], "SUCCESS") : span_eq(f[col[C_STATE]], "SUCCESS")))
            continue;
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "kind", refund ? "refund" : "pay");
        add_span(r, "trade_no", f[col[C_OUT_TRADE]]);
        if (refund) add_span(r, "refund_no", f[col[C_OUT_REFUND]]);
        cJSON_AddNumberToObject(r, "amount", (double)amount);
        cJSON_AddStringToObject(r, "status", "SUCCESS");
        add_span(r, "mch_id", f[col[C_MCH]]);
        add_span(r, "channel_trade_no", f[col[C_TXN]]);
        add_span(r, "time", f[col[C_TIME]]);
        if (!cJSON_GetObjectItemCaseSensitive(r, "trade_no") ||
            (refund && !cJSON_GetObjectItemCaseSensitive(r, "refund_no"))) {
            cJSON_Delete(r);
            snprintf(err, errlen, "line %d: no 商户订单号%s", lineno, refund ? " / 商户退款单号" : "");
            goto bad;
        }
        cJSON_AddItemToArray(rows, r);
    }
    if (state != 3) {
        snprintf(err, errlen, state == 0 ? "empty bill" : "no summary at the end: truncated file");
        goto bad;
    }
    *rows_out = rows;
    return GW_OK;
bad:
    cJSON_Delete(rows);
    return GW_EPARSE;
}

/* The count of a summary line ("`12"); 0 when malformed. */
static int span_count(span_t s, int64_t *out)
{
    char *cs = span_dup(s);
    char *endp = NULL;
    errno = 0;
    long long v = cs && cs[0] ? strtoll(cs, &endp, 10) : -1;
    int ok = cs && endp && *endp == '\0' && errno == 0 && v >= 0;
    free(cs);
    if (ok) *out = v;
    return ok;
}

/* The summary's fee total (yuan, signed, any number of decimals up to six)
 * against the lines' sum in micro-yuan, rounded half away from zero to the
 * summary's own number of decimals (the lines may carry more). */
static int fee_total_matches(span_t total, int64_t sum_micro)
{
    int64_t t;
    span_t s = span_trim(total);
    if (!decimal_parse(s.p, s.n, 6, 1, &t)) return 0;
    const char *dot = memchr(s.p, '.', s.n);
    int decimals = dot ? (int)(s.p + s.n - dot - 1) : 0;
    int64_t unit = 1;
    for (int i = decimals; i < 6; i++) unit *= 10;
    int64_t mag = sum_micro < 0 ? -sum_micro : sum_micro;
    int64_t rounded = (mag + unit / 2) / unit * unit;
    return t == (sum_micro < 0 ? -rounded : rounded);
}

/*
 * WeChat Pay (微信支付) trade bill, as GET /v3/bill/tradebill (bill_type=ALL)
 * lets one download it (and test/sim/wechatpay.js GET /_sim/bill produces
 * it): UTF-8 text,
 *   line 1   column titles (交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,
 *            商户订单号,…,应结订单金额,…,商户退款单号,退款金额,…,退款状态,…,订单金额,
 *            申请退款金额,费率备注);
 *   then     one line per payment (交易状态 SUCCESS, or REVOKED) or refund
 *            (交易状态 REFUND), every value prefixed with "`";
 *   then     the summary titles (总交易单数,应结订单总金额,退款总金额,充值券退款总金额,
 *            手续费总金额,订单总金额,申请退款总金额) and one line of values.
 * Columns are found by title.  A payment is matched by 订单金额 (the order's
 * total, as we booked it), a refund by 申请退款金额 (the amount we asked for);
 * only SUCCESS payments and refunds whose 退款状态 is SUCCESS are matched.  The
 * summary's count and its 应结订单总金额, 退款总金额, 订单总金额, 申请退款总金额 and
 * 充值券退款总金额 must equal the sums over the lines, and 手续费总金额 the sum of
 * 手续费 (signed, up to six decimals, rounded to the summary's decimals), or
 * the file is refused.
 */
static gw_err_t bill_wechatpay(const char *text, size_t len, cJSON **rows_out, char *err, size_t errlen)
{
    enum { C_TIME, C_MCH, C_TXN, C_OUT_TRADE, C_STATE, C_SETTLE, C_OUT_REFUND, C_REFUND, C_REFUND_STATE,
           C_TOTAL, C_ASK, C_VOUCHER, C_FEE, C_N };
    static const char *const titles[C_N] = { "交易时间", "商户号", "微信订单号", "商户订单号", "交易状态",
                                             "应结订单金额", "商户退款单号", "退款金额", "退款状态",
                                             "订单金额", "申请退款金额", "充值券退款金额", "手续费" };
    /* the summary: the count, then the sums of the money columns above; the
     * fee (S_FEE, signed, maybe more than two decimals) is summed apart */
    enum { S_COUNT, S_SETTLE, S_REFUND, S_TOTAL, S_ASK, S_VOUCHER, S_FEE, S_N };
    static const char *const sum_titles[S_N] = { "总交易单数", "应结订单总金额", "退款总金额", "订单总金额",
                                                 "申请退款总金额", "充值券退款总金额", "手续费总金额" };
    static const int sum_of[S_N] = { -1, C_SETTLE, C_REFUND, C_TOTAL, C_ASK, C_VOUCHER, C_FEE };
    int col[C_N], scol[S_N];
    int64_t sums[S_N] = { 0 }; /* S_FEE in micro-yuan */
    int ncols = 0;
    span_t f[BILL_MAX_COLS];
    cJSON *rows = cJSON_CreateArray();
    int state = 0; /* 0 header, 1 lines, 2 summary titles seen, 3 summary values seen */
    int lineno = 0;
    if (rows == NULL) {
        snprintf(err, errlen, "out of memory");
        return GW_ENOMEM;
    }
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) text += 3, len -= 3;
    const char *p = text, *end = text + len;
    const char *line;
    size_t ll;
    while (next_line(&p, end, &line, &ll)) {
        lineno++;
        if (ll == 0) continue;
        int n = split_fields(line, ll, f, BILL_MAX_COLS);
        if (n < 0) {
            snprintf(err, errlen, "line %d: more than %d columns", lineno, BILL_MAX_COLS);
            goto bad;
        }
        if (state == 0) {
            ncols = n;
            find_columns(f, n, titles, C_N, col);
            for (int c = 0; c < C_N; c++)
                if (col[c] < 0) {
                    snprintf(err, errlen, "line %d: no column \"%s\" (not a WeChat Pay trade bill?)", lineno,
                             titles[c]);
                    goto bad;
                }
            state = 1;
            continue;
        }
        if (line[0] != '`') { /* the summary titles */
            if (state != 1) {
                snprintf(err, errlen, "line %d: unexpected text after the summary", lineno);
                goto bad;
            }
            find_columns(f, n, sum_titles, S_N, scol);
            for (int s = 0; s < S_N; s++)
                if (scol[s] < 0) {
                    snprintf(err, errlen, "line %d: the summary has no \"%s\"", lineno, sum_titles[s]);
                    goto bad;
                }
            state = 2;
            continue;
        }
        if (state == 2) { /* the summary values */
            int64_t v[S_N];
            int ok = n > scol[S_COUNT] && span_count(f[scol[S_COUNT]], &v[S_COUNT]);
            for (int s = 1; ok && s < S_FEE; s++)
                ok = n > scol[s] && yuan_to_fen(f[scol[s]].p, f[scol[s]].n, &v[s]);
            if (!ok || n <= scol[S_FEE]) {
                snprintf(err, errlen, "line %d: malformed summary values", lineno);
                goto bad;
            }
            if (!fee_total_matches(f[scol[S_FEE]], sums[S_FEE])) {
                snprintf(err, errlen, "the summary's 手续费总金额 does not match the lines' 手续费: truncated or altered file");
                goto bad;
            }
            for (int s = 0; s < S_FEE; s++)
                if (v[s] != sums[s]) {
                    snprintf(err, errlen,
                             "the summary's %s (%lld%s) does not match the lines (%lld): truncated or "
                             "altered file",
                             sum_titles[s], (long long)v[s], s ? " fen" : "", (long long)sums[s]);
                    goto bad;
                }
            state = 3;
            continue;
        }
        if (state == 3) {
            snprintf(err, errlen, "line %d: unexpected text after the summary", lineno);
            goto bad;
        }
        if (n != ncols) {
            snprintf(err, errlen, "line %d: %d columns, the title line has %d", lineno, n, ncols);
            goto bad;
        }
        sums[S_COUNT]++;
        int64_t money[S_N] = { 0 };
        for (int s = 1; s < S_N; s++) {
            span_t a = f[col[sum_of[s]]];
            if (s == S_FEE ? !decimal_parse(a.p, a.n, 6, 1, &money[s]) : !yuan_to_fen(a.p, a.n, &money[s])) {
                snprintf(err, errlen, "line %d: malformed %s \"%.*s\"", lineno, titles[sum_of[s]],
                         (int)(a.n > 32 ? 32 : a.n), a.p);
                goto bad;
            }
            sums[s] += money[s];
        }
        int refund = span_eq(f[col[C_STATE]], "REFUND");
        /* matched: paid trades and successful refunds; others (a revoked
         * trade) count in the summary check only */
        if (!(refund ? span_eq(f[col[C_REFUND_STATE]], "SUCCESS") : span_eq(f[col[C_STATE]], "SUCCESS")))
            continue;
        cJSON *r = cJSON_CreateObject();
        if (r == NULL) {
            snprintf(err, errlen, "out of memory");
            goto bad;
        }
        cJSON_AddStringToObject(r, "kind", refund ? "refund" : "pay");
        add_span(r, "trade_no", f[col[C_OUT_TRADE]]);
        if (refund) add_span(r, "refund_no", f[col[C_OUT_REFUND]]);
        cJSON_AddNumberToObject(r, "amount", (double)(refund ? money[S_ASK] : money[S_TOTAL]));
        cJSON_AddStringToObject(r, "status", "SUCCESS");
        add_span(r, "mch_id", f[col[C_MCH]]);
        add_span(r, "channel_trade_no", f[col[C_TXN]]);
        add_span(r, "time", f[col[C_TIME]]);
        cJSON_AddItemToArray(rows, r);
        if (!cJSON_GetObjectItemCaseSensitive(r, "trade_no") ||
            (refund && !cJSON_GetObjectItemCaseSensitive(r, "refund_no"))) {
            snprintf(err, errlen, "line %d: no 商户订单号%s", lineno, refund ? " / 商户退款单号" : "");
            goto bad;
        }
    }
    if (state != 3) {
        snprintf(err, errlen, state == 0 ? "empty bill" : "no summary at the end: truncated file");
        goto bad;
    }
    *rows_out = rows;
    return GW_OK;
bad:
    cJSON_Delete(rows);
    return GW_EPARSE;
}

/* Splits a plain CSV line (RFC 4180 quoting: a comma inside "…" does not
 * split; the span of a quoted field excludes the quotes, a doubled quote
 * inside stays doubled).  -1 when there are more than max fields. */
static int split_csv(const char *line, size_t len, span_t *f, int max)
{
    int n = 0;
    const char *p = line, *end = line + len;
    for (;;) {
        const char *q = p;
        span_t v;
        while (q < end && (*q == ' ' || *q == '\t')) q++;
        if (q < end && *q == '"') {
            const char *s = ++q;
            while (q < end && !(*q == '"' && !(q + 1 < end && q[1] == '"'))) q += (*q == '"') ? 2 : 1;
            v = (span_t){ s, (size_t)(q - s) };
            while (q < end && *q != ',') q++;
        } else {
            q = p;
            while (q < end && *q != ',') q++;
            v = (span_t){ p, (size_t)(q - p) };
        }
        if (n >= max) return -1;
        f[n++] = v;
        if (q >= end) break;
        p = q + 1;
    }
    return n;
}

/* The first match of the NUL-terminated lit in [p, p + n); NULL when none. */
static const char *find_in(const char *p, size_t n, const char *lit)
{
    return memmem(p, n, lit, strlen(lit));
}

/* Whole digits [p, end) → *out (at most 15 digits, no sign); 0 when malformed. */
static int span_uint(span_t s, int64_t *out)
{
    s = span_trim(s);
    if (s.n == 0 || s.n > 15 || (s.n > 1 && s.p[0] == '0')) return 0;
    int64_t v = 0;
    for (size_t i = 0; i < s.n; i++) {
        if (s.p[i] < '0' || s.p[i] > '9') return 0;
        v = v * 10 + (s.p[i] - '0');
    }
    *out = v;
    return 1;
}

/* ------------------------------------------------------------------ */
/* zip archives (Alipay's bill) — read with zlib: the end-of-central-
 * directory record, the central directory, each entry's local header, raw
 * inflate.  Every size is checked against the archive and a hard cap before
 * anything is allocated or inflated: a truncated archive, an oversized entry
 * or one that inflates beyond its declared size (a zip bomb) is refused. */

#define ZIP_MAX_ENTRIES 64
#define ZIP_MAX_ENTRY_BYTES (64u << 20) /* uncompressed, per entry */

typedef struct {
    char name[256]; /* UTF-8 (GBK names converted) */
    unsigned flags, method;
    uint32_t crc, csize, usize, local;
} zip_entry_t;

static uint32_t rd16(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t rd32(const unsigned char *p) { return rd16(p) | rd16(p + 2) << 16; }

/* The end-of-central-directory record: the last "PK\5\6" whose comment
 * ends the archive.  Gives the central directory's offset and entry count. */
static gw_err_t zip_eocd(const unsigned char *z, size_t len, uint32_t *cd_off, uint32_t *count, char *err,
                         size_t errlen)
{
    size_t lowest = len > 22 + 65535 ? len - 22 - 65535 : 0;
    for (size_t i = len >= 22 ? len - 22 + 1 : 0; i-- > lowest;) {
        if (memcmp(z + i, "PK\5\6", 4) != 0 || i + 22 + rd16(z + i + 20) != len) continue;
        uint32_t size = rd32(z + i + 12), off = rd32(z + i + 16);
        *count = rd16(z + i + 10);
        if (rd16(z + i + 4) != 0 || rd16(z + i + 6) != 0 || *count != rd16(z + i + 8)) {
            snprintf(err, errlen, "a multi-part zip archive is not supported");
            return GW_EPARSE;
        }
        if (*count == 0xFFFF || off == 0xFFFFFFFFu || size == 0xFFFFFFFFu) {
            snprintf(err, errlen, "a ZIP64 archive is not supported");
            return GW_EPARSE;
        }
        if ((uint64_t)off + size > i) {
            snprintf(err, errlen, "the zip's central directory lies outside the archive: truncated or corrupt");
            return GW_EPARSE;
        }
        *cd_off = off;
        return GW_OK;
    }
    snprintf(err, errlen, "no zip end-of-central-directory record: a truncated or corrupt archive");
    return GW_EPARSE;
}

static gw_err_t gbk_to_utf8(const char *in, size_t n, char **out, size_t *outlen, char *err, size_t errlen);

/* The central-directory entry at *pos (advanced past it). */
static gw_err_t zip_entry(const unsigned char *z, size_t len, size_t *pos, zip_entry_t *e, char *err,
                          size_t errlen)
{
    size_t p = *pos;
    if (p + 46 > len || memcmp(z + p, "PK\1\2", 4) != 0) {
        snprintf(err, errlen, "a corrupt zip central directory (entry at %zu)", p);
        return GW_EPARSE;
    }
    size_t nlen = rd16(z + p + 28), xlen = rd16(z + p + 30), clen = rd16(z + p + 32);
    if (p + 46 + nlen + xlen + clen > len) {
        snprintf(err, errlen, "a corrupt zip central directory (entry at %zu)", p);
        return GW_EPARSE;
    }
    e->flags = rd16(z + p + 8);
    e->method = rd16(z + p + 10);
    e->crc = rd32(z + p + 16);
    e->csize = rd32(z + p + 20);
    e->usize = rd32(z + p + 24);
    e->local = rd32(z + p + 42);
    e->name[0] = '\0';
    const char *raw = (const char *)z + p + 46;
    char *u = NULL;
    size_t ulen = 0;
    char ignored[64];
    if (e->flags & 0x800) { /* the UTF-8 flag: the name is UTF-8 already */
        snprintf(e->name, sizeof(e->name), "%.*s", (int)nlen, raw);
    } else if (gbk_to_utf8(raw, nlen, &u, &ulen, ignored, sizeof(ignored)) == GW_OK) {
        snprintf(e->name, sizeof(e->name), "%.*s", (int)ulen, u); /* Alipay: GBK, no flag */
    }
    free(u);
    *pos = p + 46 + nlen + xlen + clen;
    return GW_OK;
}

static int str_ends(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

/* The one entry whose name holds `want` and ends in ".csv", but not `unless`. */
static gw_err_t zip_find(const unsigned char *z, size_t len, const char *want, const char *unless,
                         zip_entry_t *found, char *err, size_t errlen)
{
    uint32_t cd, count;
    gw_err_t rc = zip_eocd(z, len, &cd, &count, err, errlen);
    if (rc != GW_OK) return rc;
    if (count > ZIP_MAX_ENTRIES) {
        snprintf(err, errlen, "the zip has %u entries (at most %d)", count, ZIP_MAX_ENTRIES);
        return GW_EPARSE;
    }
    int hits = 0;
    size_t pos = cd;
    for (uint32_t i = 0; i < count; i++) {
        zip_entry_t e;
        if ((rc = zip_entry(z, len, &pos, &e, err, errlen)) != GW_OK) return rc;
        if (!str_ends(e.name, ".csv") || !strstr(e.name, want) || strstr(e.name, unless)) continue;
        *found = e;
        hits++;
    }
    if (hits != 1) {
        snprintf(err, errlen, "the zip holds %s CSV file named …%s.csv (it must hold exactly one)",
                 hits ? "more than one" : "no", want);
        return GW_EPARSE;
    }
    return GW_OK;
}

/* The bytes of entry e, inflated and CRC-checked (*out is malloc'ed). */
static gw_err_t zip_read(const unsigned char *z, size_t len, const zip_entry_t *e, char **out, size_t *outlen,
                         char *err, size_t errlen)
{
    if (e->flags & 1) {
        snprintf(err, errlen, "zip entry %s is encrypted", e->name);
        return GW_EPARSE;
    }
    if (e->method != 0 && e->method != 8) {
        snprintf(err, errlen, "zip entry %s uses compression method %u (only stored and deflate)", e->name,
                 e->method);
        return GW_EPARSE;
    }
    if (e->usize > ZIP_MAX_ENTRY_BYTES || (e->method == 0 && e->csize != e->usize)) {
        snprintf(err, errlen, "zip entry %s declares %u bytes uncompressed (at most %u): refused", e->name,
                 e->usize, ZIP_MAX_ENTRY_BYTES);
        return GW_EPARSE;
    }
    size_t p = e->local;
    if (p + 30 > len || memcmp(z + p, "PK\3\4", 4) != 0) {
        snprintf(err, errlen, "zip entry %s: no local header where the directory says", e->name);
        return GW_EPARSE;
    }
    size_t data = p + 30 + rd16(z + p + 26) + rd16(z + p + 28);
    if (data > len || e->csize > len - data) {
        snprintf(err, errlen, "zip entry %s: its data runs past the end of the archive (truncated)", e->name);
        return GW_EPARSE;
    }
    char *buf = malloc((size_t)e->usize + 1);
    if (buf == NULL) {
        snprintf(err, errlen, "out of memory");
        return GW_ENOMEM;
    }
    size_t got = e->csize;
    int ok = 1;
    if (e->method == 0) {
        memcpy(buf, z + data, e->csize);
    } else {
        z_stream s;
        memset(&s, 0, sizeof(s));
        s.next_in = (Bytef *)(uintptr_t)(z + data);
        s.avail_in = e->csize;
        s.next_out = (Bytef *)buf;
        s.avail_out = e->usize + 1; /* one byte more than declared: catches an overrun */
        ok = inflateInit2(&s, -MAX_WBITS) == Z_OK;
        int zr = ok ? inflate(&s, Z_FINISH) : Z_MEM_ERROR;
        const char *zmsg = s.msg; /* a static string of zlib's */
        got = s.total_out;
        if (ok) inflateEnd(&s);
        if (got > e->usize) {
            snprintf(err, errlen, "zip entry %s inflates beyond its declared %u bytes: refused", e->name, e->usize);
            ok = 0;
        } else if (zr != Z_STREAM_END) {
            snprintf(err, errlen, "zip entry %s: corrupt or truncated deflate data (%s)", e->name,
                     zmsg ? zmsg : "incomplete");
            ok = 0;
        }
    }
    if (ok && (got != e->usize || crc32(0L, (const Bytef *)buf, (uInt)got) != e->crc)) {
        snprintf(err, errlen, "zip entry %s: size or CRC-32 does not match the directory: corrupt", e->name);
        ok = 0;
    }
    if (!ok) {
        free(buf);
        return GW_EPARSE;
    }
    *out = buf;
    *outlen = got;
    return GW_OK;
}

/* GBK bytes → UTF-8 (iconv; *out is malloc'ed and NUL-terminated).  Read as
 * GB18030, GBK's superset: every GBK text reads the same, and a rare
 * character beyond GBK (a four-byte sequence, say in a buyer's name) does
 * not make the whole bill unreadable. */
static gw_err_t gbk_to_utf8(const char *in, size_t n, char **out, size_t *outlen, char *err, size_t errlen)
{
    iconv_t cd = iconv_open("UTF-8", "GB18030");
    if (cd == (iconv_t)-1) {
        snprintf(err, errlen, "iconv cannot convert GBK: %s", strerror(errno));
        return GW_EIO;
    }
    size_t cap = 2 * n + 1; /* 1, 2 or 4 bytes of GB18030 are at most 1, 3 or 4 of UTF-8 */
    char *buf = malloc(cap);
    gw_err_t rc = GW_OK;
    if (buf == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = GW_ENOMEM;
    } else {
        char *ip = (char *)(uintptr_t)in, *op = buf;
        size_t il = n, ol = cap - 1;
        if (iconv(cd, &ip, &il, &op, &ol) == (size_t)-1) {
            snprintf(err, errlen, "not GBK text (byte %zu): %s", (size_t)(ip - in), strerror(errno));
            rc = GW_EPARSE;
        }
        *op = '\0';
        *outlen = (size_t)(op - buf);
    }
    iconv_close(cd);
    if (rc != GW_OK) {
        free(buf);
        return rc;
    }
    *out = buf;
    return GW_OK;
}

/*
 * Alipay (支付宝) trade bill: the zip that alipay.data.dataservice.bill.
 * downloadurl.query (bill_type trade) points to, holding GBK CSV files
 * "<pid>_<date>_业务明细.csv" (read here) and "…_业务明细(汇总).csv" (not
 * read).  The details file (see docs/channels/alipay.md "Bill" for sources):
 *   #支付宝业务明细查询 / #账号：[<pid>0156] / #起始日期：… comment lines;
 *   #-----…业务明细列表-----…
 *   the column titles (支付宝交易号,商户订单号,业务类型,…,订单金额（元）,
 *   商家实收（元）,…,商家优惠（元）,…,退款批次号/请求号,服务费（元）,…,备注);
 *   one line per trade (业务类型 交易) or refund (业务类型 退款, its amounts
 *   negative), values often followed by a tab;
 *   #-----…业务明细列表结束-----…
 *   #交易合计：N笔，商家实收共X元，商家优惠共Y元
 *   #退款合计：N笔，商家实收退款共X元，商家优惠退款共Y元
 *   #导出时间：[…]
 * A trade is matched by 商户订单号 (our trade_no) and 订单金额; a refund by
 * 退款批次号/请求号 (the out_request_no the module sends: our refund_no) and
 * −订单金额.  Both totals lines must agree with the lines (count, 商家实收
 * and 商家优惠 sums), and the end marker must be there: a truncated or altered
 * file is refused.
 */
enum { AP_TXN, AP_OTN, AP_TYPE, AP_DONE, AP_AMOUNT, AP_RECEIVED, AP_DISCOUNT, AP_REQ, AP_N };

typedef struct {
    int col[AP_N];
    int ncols;
    int state;       /* 0 before the title line, 1 lines, 2 after the end marker */
    char pid[17];    /* from #账号：[…] */
    int64_t n[2], received[2], discount[2];    /* over the lines: [0] 交易, [1] 退款 */
    int64_t tn[2], treceived[2], tdiscount[2]; /* as the totals lines state them */
    int has_discount[2], seen[2];
} ap_bill_t;

/* "#交易合计：6笔，商家实收共0.06元，商家优惠共0.00元" (k 0) or "#退款合计：…" (k 1). */
static gw_err_t ap_totals(ap_bill_t *b, int k, const char *line, size_t len, int lineno, char *err,
                          size_t errlen)
{
    const char *end = line + len, *p = find_in(line, len, "合计") + strlen("合计");
    if (b->state != 2 || b->seen[k]) {
        snprintf(err, errlen, "line %d: a totals line out of place", lineno);
        return GW_EPARSE;
    }
    if ((size_t)(end - p) >= 3 && memcmp(p, "：", 3) == 0) p += 3;
    else if (p < end && *p == ':') p++;
    const char *q = p;
    while (q < end && *q >= '0' && *q <= '9') q++;
    const char *unit = find_in(q, (size_t)(end - q), "元");
    const char *gong = find_in(q, (size_t)(end - q), "共");
    int ok = span_uint((span_t){ p, (size_t)(q - p) }, &b->tn[k]) && (size_t)(end - q) >= 3 &&
             memcmp(q, "笔", 3) == 0 && gong && unit && gong < unit &&
             signed_yuan_to_fen(gong + 3, (size_t)(unit - gong - 3), &b->treceived[k]);
    if (ok && (gong = find_in(unit, (size_t)(end - unit), "共")) != NULL) { /* 商家优惠共Y元 */
        unit = find_in(gong, (size_t)(end - gong), "元");
        ok = unit && signed_yuan_to_fen(gong + 3, (size_t)(unit - gong - 3), &b->tdiscount[k]);
        b->has_discount[k] = 1;
    }
    if (!ok) {
        snprintf(err, errlen, "line %d: malformed totals line (N笔，…共X元，…共Y元 expected)", lineno);
        return GW_EPARSE;
    }
    b->seen[k] = 1;
    return GW_OK;
}

/* A comment line: the account, the end marker, the totals; others are ignored. */
static gw_err_t ap_comment(ap_bill_t *b, const char *line, size_t len, int lineno, char *err, size_t errlen)
{
    if (find_in(line, len, "业务明细列表结束")) {
        if (b->state != 1) {
            snprintf(err, errlen, "line %d: the end marker before any column titles", lineno);
            return GW_EPARSE;
        }
        b->state = 2;
        return GW_OK;
    }
    if (find_in(line, len, "交易合计")) return ap_totals(b, 0, line, len, lineno, err, errlen);
    if (find_in(line, len, "退款合计")) return ap_totals(b, 1, line, len, lineno, err, errlen);
    const char *a = find_in(line, len, "账号");
    const char *open = a ? memchr(a, '[', (size_t)(line + len - a)) : NULL;
    if (open && line + len - open > 16) { /* [<16-digit pid><4 digits>] */
        memcpy(b->pid, open + 1, 16);
        b->pid[16] = '\0';
        for (int i = 0; i < 16; i++)
            if (b->pid[i] < '0' || b->pid[i] > '9') b->pid[0] = '\0';
    }
    return GW_OK;
}

/* The column titles: the literal, or with ASCII parentheses ("订单金额(元)"). */
static gw_err_t ap_title(ap_bill_t *b, const span_t *f, int n, int lineno, char *err, size_t errlen)
{
    static const char *const titles[AP_N] = { "支付宝交易号", "商户订单号", "业务类型", "完成时间",
                                             "订单金额（元）", "商家实收（元）", "商家优惠（元）",
                                             "退款批次号/请求号" };
    static const char *const ascii[AP_N] = { "支付宝交易号", "商户订单号", "业务类型", "完成时间",
                                            "订单金额(元)", "商家实收(元)", "商家优惠(元)", "退款批次号/请求号" };
    int alt[AP_N];
    find_columns(f, n, titles, AP_N, b->col);
    find_columns(f, n, ascii, AP_N, alt);
    for (int c = 0; c < AP_N; c++) {
        if (b->col[c] < 0) b->col[c] = alt[c];
        if (b->col[c] < 0) {
            snprintf(err, errlen, "line %d: no column \"%s\" (not an Alipay 业务明细 file?)", lineno, titles[c]);
            return GW_EPARSE;
        }
    }
    b->ncols = n;
    b->state = 1;
    return GW_OK;
}

/* One trade or refund line → a row. */
static gw_err_t ap_line(ap_bill_t *b, cJSON *rows, const span_t *f, int n, int lineno, char *err, size_t errlen)
{
    if (n != b->ncols) {
        snprintf(err, errlen, "line %d: %d columns, the title line has %d", lineno, n, b->ncols);
        return GW_EPARSE;
    }
    span_t type = f[b->col[AP_TYPE]];
    int k = span_eq(type, "交易") ? 0 : span_eq(type, "退款") ? 1 : -1;
    int64_t amount, received, discount;
    if (k < 0) {
        type = span_trim(type); /* quoted whole or not at all: no UTF-8 sequence cut in two */
        snprintf(err, errlen, "line %d: unknown 业务类型 \"%.*s\" (交易 or 退款)", lineno, (int)(type.n > 32 ? 0 : type.n),
                 type.p);
        return GW_EPARSE;
    }
    if (!signed_yuan_to_fen(f[b->col[AP_AMOUNT]].p, f[b->col[AP_AMOUNT]].n, &amount) ||
        !signed_yuan_to_fen(f[b->col[AP_RECEIVED]].p, f[b->col[AP_RECEIVED]].n, &received) ||
        !signed_yuan_to_fen(f[b->col[AP_DISCOUNT]].p, f[b->col[AP_DISCOUNT]].n, &discount) ||
        (k == 0 ? amount < 0 : amount > 0)) {
        snprintf(err, errlen, "line %d: malformed amounts (订单金额 of a %s is %s)", lineno, k ? "退款" : "交易",
                 k ? "negative" : "not negative");
        return GW_EPARSE;
    }
    b->n[k]++;
    b->received[k] += received;
    b->discount[k] += discount;
    cJSON *r = cJSON_CreateObject();
    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return GW_ENOMEM;
    }
    cJSON_AddItemToArray(rows, r);
    cJSON_AddStringToObject(r, "kind", k ? "refund" : "pay");
    add_span(r, "trade_no", f[b->col[AP_OTN]]);
    if (k) add_span(r, "refund_no", f[b->col[AP_REQ]]); /* absent: a refund that is not ours */
    cJSON_AddNumberToObject(r, "amount", (double)(k ? -amount : amount));
    cJSON_AddStringToObject(r, "status", "SUCCESS");
    if (b->pid[0]) cJSON_AddStringToObject(r, "mch_id", b->pid);
    add_span(r, "channel_trade_no", f[b->col[AP_TXN]]);
    add_span(r, "time", f[b->col[AP_DONE]]);
    if (!cJSON_GetObjectItemCaseSensitive(r, "trade_no")) {
        snprintf(err, errlen, "line %d: no 商户订单号", lineno);
        return GW_EPARSE;
    }
    return GW_OK;
}

/* The totals lines against the lines. */
static gw_err_t ap_check(const ap_bill_t *b, char *err, size_t errlen)
{
    static const char *const what[2] = { "#交易合计", "#退款合计" };
    if (b->state != 2) {
        snprintf(err, errlen, b->state ? "no end marker (…业务明细列表结束…): truncated file"
                                       : "no column titles: not an Alipay 业务明细 file");
        return GW_EPARSE;
    }
    for (int k = 0; k < 2; k++) {
        if (!b->seen[k]) {
            snprintf(err, errlen, "no %s line: truncated file", what[k]);
            return GW_EPARSE;
        }
        if (b->tn[k] != b->n[k] || b->treceived[k] != b->received[k] ||
            (b->has_discount[k] && b->tdiscount[k] != b->discount[k])) {
            snprintf(err, errlen,
                     "%s (%lld lines, 商家实收 %lld fen, 商家优惠 %lld fen) does not match the lines (%lld, %lld, %lld): "
                     "truncated or altered file",
                     what[k], (long long)b->tn[k], (long long)b->treceived[k], (long long)b->tdiscount[k],
                     (long long)b->n[k], (long long)b->received[k], (long long)b->discount[k]);
            return GW_EPARSE;
        }
    }
    return GW_OK;
}

/* The 业务明细 text (UTF-8) → rows. */
static gw_err_t ap_parse(const char *text, size_t len, cJSON *rows, char *err, size_t errlen)
{
    ap_bill_t b;
    memset(&b, 0, sizeof(b));
    span_t f[BILL_MAX_COLS];
    const char *p = text, *end = text + len, *line;
    size_t ll;
    int lineno = 0;
    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3;
    while (next_line(&p, end, &line, &ll)) {
        lineno++;
        gw_err_t rc = GW_OK;
        span_t whole = span_trim((span_t){ line, ll });
        if (whole.n == 0) continue;
        if (whole.p[0] == '#') {
            rc = ap_comment(&b, whole.p, whole.n, lineno, err, errlen);
        } else if (b.state == 2) {
            snprintf(err, errlen, "line %d: text after the end marker", lineno);
            rc = GW_EPARSE;
        } else {
            int n = split_csv(line, ll, f, BILL_MAX_COLS);
            if (n < 0) {
                snprintf(err, errlen, "line %d: more than %d columns", lineno, BILL_MAX_COLS);
                rc = GW_EPARSE;
            } else {
                rc = b.state == 0 ? ap_title(&b, f, n, lineno, err, errlen)
                                  : ap_line(&b, rows, f, n, lineno, err, errlen);
            }
        }
        if (rc != GW_OK) return rc;
    }
    return ap_check(&b, err, errlen);
}

static gw_err_t bill_alipay(const char *data, size_t len, cJSON **rows_out, char *err, size_t errlen)
{
    const unsigned char *z = (const unsigned char *)data;
    zip_entry_t e;
    char *raw = NULL, *text = NULL;
    size_t rawlen = 0, textlen = 0;
    if (len < 4 || memcmp(z, "PK\3\4", 4) != 0) {
        snprintf(err, errlen, "not a zip archive: Alipay's bill is the zip its bill_download_url serves");
        return GW_EPARSE;
    }
    gw_err_t rc = zip_find(z, len, "业务明细", "汇总", &e, err, errlen);
    if (rc == GW_OK) rc = zip_read(z, len, &e, &raw, &rawlen, err, errlen);
    if (rc == GW_OK) rc = gbk_to_utf8(raw, rawlen, &text, &textlen, err, errlen);
    free(raw);
    cJSON *rows = rc == GW_OK ? cJSON_CreateArray() : NULL;
    if (rc == GW_OK && rows == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = GW_ENOMEM;
    }
    if (rc == GW_OK) rc = ap_parse(text, textlen, rows, err, errlen);
    free(text);
    if (rc != GW_OK) {
        cJSON_Delete(rows);
        return rc == GW_ENOMEM || rc == GW_EIO ? rc : GW_EPARSE;
    }
    *rows_out = rows;
    return GW_OK;
}

/*
 * MyBank (网商银行) bill.  No public source states the format of MyBank's
 * reconciliation file (docs/channels/mybank.md "Bill"), so paygate defines
 * a plain one in the terms of MyBank's trade API (test/sim/mybank.js GET
 * /_sim/bill produces it): UTF-8 CSV,
 *   the titles TradeTime,MerchantId,OutTradeNo,OrderNo,TradeType,
 *              OutRefundNo,RefundOrderNo,Amount,Currency,TradeStatus;
 *   one line per payment (TradeType PAY) or refund (REFUND), Amount in
 *   integer fen as the API's TotalAmount / RefundAmount, TradeStatus as the
 *   API's (succ, …);
 *   the summary titles TotalCount,PayCount,PayAmount,RefundCount,RefundAmount
 *   and one line of values: all lines; the succ payments; the succ refunds.
 * Columns are found by title.  Only succ lines are matched: a payment by
 * OutTradeNo (our trade_no) and Amount, a refund by OutRefundNo (our
 * refund_no) and Amount.
 */
enum { MB_TIME, MB_MCH, MB_OTN, MB_ORDER, MB_TYPE, MB_ORN, MB_AMOUNT, MB_STATUS, MB_N };
enum { MS_TOTAL, MS_PAYN, MS_PAY, MS_REFN, MS_REF, MS_N };
static const char *const mb_stitles[MS_N] = { "TotalCount", "PayCount", "PayAmount", "RefundCount",
                                              "RefundAmount" };

typedef struct {
    int col[MB_N], scol[MS_N];
    int ncols;
    int state; /* 0 titles, 1 lines, 2 summary titles seen, 3 summary values seen */
    int64_t sums[MS_N];
} mb_bill_t;

static gw_err_t mb_titles(mb_bill_t *b, const span_t *f, int n, int lineno, char *err, size_t errlen)
{
    static const char *const titles[MB_N] = { "TradeTime", "MerchantId", "OutTradeNo", "OrderNo",
                                             "TradeType", "OutRefundNo", "Amount", "TradeStatus" };
    int summary = b->state == 1;
    int *col = summary ? b->scol : b->col;
    find_columns(f, n, summary ? mb_stitles : titles, summary ? MS_N : MB_N, col);
    for (int c = 0; c < (summary ? MS_N : MB_N); c++)
        if (col[c] < 0) {
            snprintf(err, errlen, "line %d: no column \"%s\" (not a MyBank bill?)", lineno,
                     summary ? mb_stitles[c] : titles[c]);
            return GW_EPARSE;
        }
    if (!summary) b->ncols = n;
    b->state++;
    return GW_OK;
}

static gw_err_t mb_summary(mb_bill_t *b, const span_t *f, int n, int lineno, char *err, size_t errlen)
{
    for (int s = 0; s < MS_N; s++) {
        int64_t v;
        if (n <= b->scol[s] || !span_uint(f[b->scol[s]], &v)) {
            snprintf(err, errlen, "line %d: malformed summary value %s", lineno, mb_stitles[s]);
            return GW_EPARSE;
        }
        if (v != b->sums[s]) {
            snprintf(err, errlen, "the summary's %s (%lld) does not match the lines (%lld): truncated or altered file",
                     mb_stitles[s], (long long)v, (long long)b->sums[s]);
            return GW_EPARSE;
        }
    }
    b->state = 3;
    return GW_OK;
}

static gw_err_t mb_line(mb_bill_t *b, cJSON *rows, const span_t *f, int n, int lineno, char *err, size_t errlen)
{
    int64_t amount;
    if (n != b->ncols) {
        snprintf(err, errlen, "line %d: %d columns, the title line has %d", lineno, n, b->ncols);
        return GW_EPARSE;
    }
    span_t type = f[b->col[MB_TYPE]];
    int k = span_eq(type, "PAY") ? 0 : span_eq(type, "REFUND") ? 1 : -1;
    if (k < 0 || !span_uint(f[b->col[MB_AMOUNT]], &amount)) {
        snprintf(err, errlen, "line %d: %s", lineno,
                 k < 0 ? "TradeType is neither PAY nor REFUND" : "Amount is not whole fen");
        return GW_EPARSE;
    }
    b->sums[MS_TOTAL]++;
    if (!span_eq(f[b->col[MB_STATUS]], "succ")) return GW_OK; /* counted, not matched */
    b->sums[k ? MS_REFN : MS_PAYN]++;
    b->sums[k ? MS_REF : MS_PAY] += amount;
    cJSON *r = cJSON_CreateObject();
    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return GW_ENOMEM;
    }
    cJSON_AddItemToArray(rows, r);
    cJSON_AddStringToObject(r, "kind", k ? "refund" : "pay");
    add_span(r, "trade_no", f[b->col[MB_OTN]]);
    if (k) add_span(r, "refund_no", f[b->col[MB_ORN]]);
    cJSON_AddNumberToObject(r, "amount", (double)amount);
    cJSON_AddStringToObject(r, "status", "SUCCESS");
    add_span(r, "mch_id", f[b->col[MB_MCH]]);
    add_span(r, "channel_trade_no", f[b->col[MB_ORDER]]);
    add_span(r, "time", f[b->col[MB_TIME]]);
    if (!cJSON_GetObjectItemCaseSensitive(r, "trade_no") || (k && !cJSON_GetObjectItemCaseSensitive(r, "refund_no"))) {
        snprintf(err, errlen, "line %d: no OutTradeNo%s", lineno, k ? " / OutRefundNo" : "");
        return GW_EPARSE;
    }
    return GW_OK;
}

static gw_err_t bill_mybank(const char *text, size_t len, cJSON **rows_out, char *err, size_t errlen)
{
    mb_bill_t b;
    memset(&b, 0, sizeof(b));
    span_t f[BILL_MAX_COLS];
    cJSON *rows = cJSON_CreateArray();
    const char *p = text, *end = text + len, *line;
    size_t ll;
    int lineno = 0;
    gw_err_t rc = rows ? GW_OK : GW_ENOMEM;
    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3;
    while (rc == GW_OK && next_line(&p, end, &line, &ll)) {
        lineno++;
        if (span_trim((span_t){ line, ll }).n == 0) continue;
        int n = split_csv(line, ll, f, BILL_MAX_COLS);
        if (n < 0 || b.state == 3) {
            snprintf(err, errlen, "line %d: %s", lineno, n < 0 ? "too many columns" : "text after the summary");
            rc = GW_EPARSE;
        } else if (b.state == 0 || (b.state == 1 && span_eq(f[0], "TotalCount"))) {
            rc = mb_titles(&b, f, n, lineno, err, errlen);
        } else {
            rc = b.state == 1 ? mb_line(&b, rows, f, n, lineno, err, errlen)
                              : mb_summary(&b, f, n, lineno, err, errlen);
        }
    }
    if (rc == GW_OK && b.state != 3) {
        snprintf(err, errlen, b.state == 0 ? "empty bill" : "no summary at the end: truncated file");
        rc = GW_EPARSE;
    }
    if (rc != GW_OK) {
        if (rc == GW_ENOMEM) snprintf(err, errlen, "out of memory");
        cJSON_Delete(rows);
        return rc == GW_ENOMEM ? rc : GW_EPARSE;
    }
    *rows_out = rows;
    return GW_OK;
}

gw_err_t gw_bill_parse(const char *channel, const char *text, size_t len, cJSON **rows, char *err,
                       size_t errlen)
{
    *rows = NULL;
    err[0] = '\0';
    if (strcmp(channel, "swiftpass") == 0) return bill_swiftpass(text, len, rows, err, errlen);
    if (strcmp(channel, "wechatpay") == 0) return bill_wechatpay(text, len, rows, err, errlen);
    if (strcmp(channel, "alipay") == 0) return bill_alipay(text, len, rows, err, errlen);
    if (strcmp(channel, "mybank") == 0) return bill_mybank(text, len, rows, err, errlen);
    snprintf(err, errlen,
             "the bill format of channel \"%s\" is not supported (swiftpass, wechatpay, alipay and mybank are)",
             channel);
    return GW_ENOTSUP;
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
