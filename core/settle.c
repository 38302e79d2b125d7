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
#include <libpq-fe.h>
#include <stdlib.h>

#define RECONCILE_SQL "SELECT gw_reconcile($1, $2::date, $3, $4, $5::jsonb)"

static const struct {
    const char *name;
    const char *sql;
} settle_stmts[] = {
    { "settle_statement", "SELECT gw_statement($1, $2, $3::date, $4)" },
    { "settle_redrive", "SELECT gw_settle_redrive($1::bigint)" },
    { "settle_reconcile", RECONCILE_SQL },
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
/* bills */

/* "12.34" / "12.3" / "12" (yuan) → fen; 0 when malformed. */
static int yuan_to_fen(const char *s, size_t n, int64_t *out)
{
    while (n && (*s == ' ' || *s == '\t')) s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    int64_t v = 0;
    size_t i = 0, int_digits = 0;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++, int_digits++) {
        if (int_digits >= 13) return 0;
        v = v * 10 + (s[i] - '0');
    }
    if (int_digits == 0) return 0;
    int frac = 0, frac_digits = 0;
    if (i < n && s[i] == '.') {
        for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
            if (++frac_digits > 2) return 0;
            frac = frac * 10 + (s[i] - '0');
        }
        if (frac_digits == 0) return 0;
    }
    if (i != n) return 0;
    if (frac_digits == 1) frac *= 10;
    *out = v * 100 + frac;
    return 1;
}

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

static int span_eq(span_t s, const char *lit)
{
    while (s.n && (s.p[0] == ' ' || s.p[0] == '`')) s.p++, s.n--;
    while (s.n && s.p[s.n - 1] == ' ') s.n--;
    return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0;
}

static char *span_dup(span_t s)
{
    while (s.n && s.p[0] == ' ') s.p++, s.n--;
    while (s.n && s.p[s.n - 1] == ' ') s.n--;
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
 * summary's count and its 应结订单总金额, 退款总金额, 订单总金额 and 申请退款总金额
 * must equal the sums over the lines, or the file is refused.
 */
static gw_err_t bill_wechatpay(const char *text, size_t len, cJSON **rows_out, char *err, size_t errlen)
{
    enum { C_TIME, C_MCH, C_TXN, C_OUT_TRADE, C_STATE, C_SETTLE, C_OUT_REFUND, C_REFUND, C_REFUND_STATE,
           C_TOTAL, C_ASK, C_N };
    static const char *const titles[C_N] = { "交易时间", "商户号", "微信订单号", "商户订单号", "交易状态",
                                             "应结订单金额", "商户退款单号", "退款金额", "退款状态",
                                             "订单金额", "申请退款金额" };
    /* the summary: the count, then the sums of the money columns above */
    enum { S_COUNT, S_SETTLE, S_REFUND, S_TOTAL, S_ASK, S_N };
    static const char *const sum_titles[S_N] = { "总交易单数", "应结订单总金额", "退款总金额", "订单总金额",
                                                 "申请退款总金额" };
    static const int sum_of[S_N] = { -1, C_SETTLE, C_REFUND, C_TOTAL, C_ASK };
    int col[C_N], scol[S_N];
    int64_t sums[S_N] = { 0 };
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
            for (int s = 1; ok && s < S_N; s++)
                ok = n > scol[s] && yuan_to_fen(f[scol[s]].p, f[scol[s]].n, &v[s]);
            if (!ok) {
                snprintf(err, errlen, "line %d: malformed summary values", lineno);
                goto bad;
            }
            for (int s = 0; s < S_N; s++)
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
            if (!yuan_to_fen(a.p, a.n, &money[s])) {
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

gw_err_t gw_bill_parse(const char *channel, const char *text, size_t len, cJSON **rows, char *err,
                       size_t errlen)
{
    *rows = NULL;
    err[0] = '\0';
    if (strcmp(channel, "swiftpass") == 0) return bill_swiftpass(text, len, rows, err, errlen);
    if (strcmp(channel, "wechatpay") == 0) return bill_wechatpay(text, len, rows, err, errlen);
    snprintf(err, errlen, "the bill format of channel \"%s\" is not supported yet (swiftpass and wechatpay are)",
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
