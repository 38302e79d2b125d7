/*
 * bill.c — the channels' bill files (Swiftpass, WeChat Pay, Alipay, MyBank),
 * each parsed per its format into neutral rows ({"kind", "trade_no",
 * "refund_no", "amount" in fen, …}) that gw_reconcile matches against our
 * orders and refunds (settle.c: the admin API and the CLI).
 *
 * Every parser checks the bill's own summary or totals against its lines,
 * so that a truncated or altered file is refused rather than reconciled.
 *
 * Money is integer fen throughout: bill amounts ("12.34" yuan) are parsed
 * digit by digit, never through a floating-point number.
 */
#include "bill.h"
#include "zip.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#define BILL_MAX_COLS 64

/* ------------------------------------------------------------------ */
/* amounts */

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

/* ------------------------------------------------------------------ */
/* lines and fields */

typedef struct {
    const char *p;
    size_t n;
} span_t;

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

/* The text past a UTF-8 byte order mark, if it starts with one. */
static const char *after_bom(const char *text, size_t len)
{
    return len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0 ? text + 3 : text;
}

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

/* A whole number as strtoll reads it, a sign allowed, blanks around
 * allowed; 0 when malformed. */
static int span_int(span_t s, int64_t *out)
{
    char *cs = span_dup(s);
    char *endp = NULL;
    errno = 0;
    long long v = cs && cs[0] ? strtoll(cs, &endp, 10) : -1;
    int ok = cs && endp && *endp == '\0' && errno == 0;
    free(cs);
    if (ok) *out = v;
    return ok;
}

/* The count of a summary line ("`12"); 0 when malformed or negative. */
static int span_count(span_t s, int64_t *out)
{
    int64_t v;
    if (!span_int(s, &v) || v < 0) return 0;
    *out = v;
    return 1;
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

/* The first match of the NUL-terminated lit in [p, p + n); NULL when none. */
static const char *find_in(const char *p, size_t n, const char *lit)
{
    return memmem(p, n, lit, strlen(lit));
}

/* ------------------------------------------------------------------ */
/* columns and summaries */

/* col[c] = index of the field titled titles[c] in the header fields f
 * (first match), -1 when absent. */
static void find_columns(const span_t *f, int n, const char *const *titles, int ntitles, int *col)
{
    for (int c = 0; c < ntitles; c++) col[c] = -1;
    for (int i = 0; i < n; i++)
        for (int c = 0; c < ntitles; c++)
            if (col[c] < 0 && span_eq(f[i], titles[c])) col[c] = i;
}

/* find_columns, then the index of the first title not found; -1 when all are. */
static int missing_column(const span_t *f, int n, const char *const *titles, int ntitles, int *col)
{
    find_columns(f, n, titles, ntitles, col);
    for (int c = 0; c < ntitles; c++)
        if (col[c] < 0) return c;
    return -1;
}

/* A line of trades has as many values as the title line has titles. */
static gw_err_t check_ncols(int n, int ncols, int lineno, char *err, size_t errlen)
{
    if (n == ncols) return GW_OK;
    snprintf(err, errlen, "line %d: %d columns, the title line has %d", lineno, n, ncols);
    return GW_EPARSE;
}

/* The end of a bill that closes with a summary: state 3 once the summary's
 * values were read, 0 when not even the titles were there. */
static gw_err_t summary_end(int state, char *err, size_t errlen)
{
    if (state == 3) return GW_OK;
    snprintf(err, errlen, state == 0 ? "empty bill" : "no summary at the end: truncated file");
    return GW_EPARSE;
}

/* ------------------------------------------------------------------ */
/* rows */

/* A matched bill line: a paid trade or a successful refund. */
typedef struct {
    int refund;
    int64_t amount; /* fen */
    span_t trade_no, refund_no, mch_id, channel_trade_no, time;
} bill_line_t;

static void add_span(cJSON *o, const char *key, span_t s)
{
    char *v = span_dup(s);
    if (v && v[0]) cJSON_AddStringToObject(o, key, v);
    free(v);
}

/* Appends l to rows as {"kind", "trade_no", "refund_no" (a refund only),
 * "amount", "status": "SUCCESS", "mch_id", "channel_trade_no", "time"}, a
 * value blank in the bill left out.  A row that does not name its trade
 * (column trade_title) or, when refund_title is given, a refund that does
 * not name its refund cannot be matched: GW_EPARSE naming the column(s).
 * GW_ENOMEM when out of memory. */
static gw_err_t bill_add(cJSON *rows, const bill_line_t *l, const char *trade_title, const char *refund_title,
                         int lineno, char *err, size_t errlen)
{
    int need_refund_no = l->refund && refund_title != NULL;
    cJSON *r = cJSON_CreateObject();
    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return GW_ENOMEM;
    }
    cJSON_AddItemToArray(rows, r);
    cJSON_AddStringToObject(r, "kind", l->refund ? "refund" : "pay");
    add_span(r, "trade_no", l->trade_no);
    if (l->refund) add_span(r, "refund_no", l->refund_no);
    cJSON_AddNumberToObject(r, "amount", (double)l->amount);
    cJSON_AddStringToObject(r, "status", "SUCCESS");
    add_span(r, "mch_id", l->mch_id);
    add_span(r, "channel_trade_no", l->channel_trade_no);
    add_span(r, "time", l->time);
    if (!cJSON_GetObjectItemCaseSensitive(r, "trade_no") ||
        (need_refund_no && !cJSON_GetObjectItemCaseSensitive(r, "refund_no"))) {
        snprintf(err, errlen, "line %d: no %s%s%s", lineno, trade_title, need_refund_no ? " / " : "",
                 need_refund_no ? refund_title : "");
        return GW_EPARSE;
    }
    return GW_OK;
}

/* ------------------------------------------------------------------ */
/* the layout of WeChat Pay's bills, which Swiftpass copies */

/*
 * Line by line: the column titles; one line per trade or refund, every value
 * prefixed with "`"; the summary titles (a line without "`") and one line of
 * their values, "`"-prefixed.  Blank lines are skipped, a UTF-8 BOM is
 * allowed, every trade line must have as many values as there are titles
 * and nothing may follow the summary.  A channel reads each part with a hook
 * (b its state, f the n fields); a hook that refuses the part sets err.
 */
typedef gw_err_t (*bill_part_fn)(void *b, cJSON *rows, const span_t *f, int n, int lineno, char *err,
                                 size_t errlen);

typedef struct {
    bill_part_fn titles, summary_titles, summary, line;
} tick_ops_t;

static gw_err_t tick_parse(const char *text, size_t len, const tick_ops_t *ops, void *b, cJSON *rows, char *err,
                           size_t errlen)
{
    span_t f[BILL_MAX_COLS];
    const char *p = after_bom(text, len), *end = text + len, *line;
    size_t ll;
    int ncols = 0, lineno = 0;
    int state = 0; /* 0 header, 1 lines, 2 summary titles seen, 3 summary values seen */
    while (next_line(&p, end, &line, &ll)) {
        lineno++;
        if (ll == 0) continue;
        int n = split_fields(line, ll, f, BILL_MAX_COLS);
        gw_err_t rc;
        if (n < 0) {
            snprintf(err, errlen, "line %d: more than %d columns", lineno, BILL_MAX_COLS);
            return GW_EPARSE;
        }
        if (state == 0) {
            ncols = n;
            rc = ops->titles(b, rows, f, n, lineno, err, errlen);
            state = 1;
        } else if (line[0] != '`' && state == 1) {
            rc = ops->summary_titles(b, rows, f, n, lineno, err, errlen);
            state = 2;
        } else if (line[0] == '`' && state == 2) {
            rc = ops->summary(b, rows, f, n, lineno, err, errlen);
            state = 3;
        } else if (line[0] != '`' || state == 3) {
            snprintf(err, errlen, "line %d: unexpected text after the summary", lineno);
            rc = GW_EPARSE;
        } else {
            rc = check_ncols(n, ncols, lineno, err, errlen);
            if (rc == GW_OK) rc = ops->line(b, rows, f, n, lineno, err, errlen);
        }
        if (rc != GW_OK) return rc;
    }
    return summary_end(state, err, errlen);
}

/* tick_parse into a new array: GW_ENOMEM when there is no memory for it,
 * GW_EPARSE when the bill is refused. */
static gw_err_t tick_bill(const char *text, size_t len, const tick_ops_t *ops, void *b, cJSON **rows_out,
                          char *err, size_t errlen)
{
    cJSON *rows = cJSON_CreateArray();
    if (rows == NULL) {
        snprintf(err, errlen, "out of memory");
        return GW_ENOMEM;
    }
    if (tick_parse(text, len, ops, b, rows, err, errlen) != GW_OK) {
        cJSON_Delete(rows);
        return GW_EPARSE;
    }
    *rows_out = rows;
    return GW_OK;
}

/* ------------------------------------------------------------------ */
/* Swiftpass */

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
enum { SP_TIME, SP_MCH, SP_TXN, SP_OUT_TRADE, SP_STATE, SP_TOTAL, SP_OUT_REFUND, SP_REFUND_FEE, SP_REFUND_STATE,
       SP_N };
static const char *const sp_titles[SP_N] = { "交易时间", "商户号", "平台订单号", "商户订单号", "交易状态",
                                             "总金额", "商户退款单号", "退款金额", "退款状态" };
enum { SPS_COUNT, SPS_PAID, SPS_REFUNDED, SPS_N };
static const char *const sp_stitles[SPS_N] = { "总交易单数", "总交易额", "总退款金额" };

typedef struct {
    int col[SP_N], scol[SPS_N];
    int64_t nlines, paid, refunded; /* over the lines; fen */
} sp_bill_t;

static gw_err_t sp_titles_line(void *ctx, cJSON *rows, const span_t *f, int n, int lineno, char *err,
                               size_t errlen)
{
    sp_bill_t *b = ctx;
    int c = missing_column(f, n, sp_titles, SP_N, b->col);
    if (c >= 0) {
        snprintf(err, errlen, "line 1: no column \"%s\" (not a Swiftpass bill?)", sp_titles[c]);
        return GW_EPARSE;
    }
    return GW_OK;
}

static gw_err_t sp_summary_titles(void *ctx, cJSON *rows, const span_t *f, int n, int lineno, char *err,
                                  size_t errlen)
{
    sp_bill_t *b = ctx;
    if (missing_column(f, n, sp_stitles, SPS_N, b->scol) >= 0) {
        snprintf(err, errlen, "line %d: the summary needs 总交易单数, 总交易额 and 总退款金额", lineno);
        return GW_EPARSE;
    }
    return GW_OK;
}

static gw_err_t sp_summary(void *ctx, cJSON *rows, const span_t *f, int n, int lineno, char *err, size_t errlen)
{
    sp_bill_t *b = ctx;
    const int *s = b->scol;
    int64_t cnt, paid, refunded;
    if (n <= s[SPS_COUNT] || !span_int(f[s[SPS_COUNT]], &cnt) || n <= s[SPS_PAID] || n <= s[SPS_REFUNDED] ||
        !yuan_to_fen(f[s[SPS_PAID]].p, f[s[SPS_PAID]].n, &paid) ||
        !yuan_to_fen(f[s[SPS_REFUNDED]].p, f[s[SPS_REFUNDED]].n, &refunded)) {
        snprintf(err, errlen, "line %d: malformed summary values", lineno);
        return GW_EPARSE;
    }
    if (cnt != b->nlines || paid != b->paid || refunded != b->refunded) {
        snprintf(err, errlen,
                 "the summary (%lld lines, paid %lld, refunded %lld fen) does not match the "
                 "lines (%lld, %lld, %lld): truncated or altered file",
                 (long long)cnt, (long long)paid, (long long)refunded, (long long)b->nlines, (long long)b->paid,
                 (long long)b->refunded);
        return GW_EPARSE;
    }
    return GW_OK;
}

static gw_err_t sp_line(void *ctx, cJSON *rows, const span_t *f, int n, int lineno, char *err, size_t errlen)
{
    sp_bill_t *b = ctx;
    const int *col = b->col;
    b->nlines++;
    int refund = span_eq(f[col[SP_STATE]], "REFUND");
    int64_t amount;
    span_t a = refund ? f[col[SP_REFUND_FEE]] : f[col[SP_TOTAL]];
    if (!yuan_to_fen(a.p, a.n, &amount)) {
        snprintf(err, errlen, "line %d: malformed amount \"%.*s\"", lineno, (int)(a.n > 32 ? 32 : a.n), a.p);
        return GW_EPARSE;
    }
    if (refund) b->refunded += amount;
    else if (span_eq(f[col[SP_STATE]], "SUCCESS")) b->paid += amount;
    /* matched: paid trades and successful refunds; other states (a
     * revoked trade, a refund still being processed) are counted in the
     * summary check only */
    if (!(refund ? span_eq(f[col[SP_REFUND_STATE]], "SUCCESS") : span_eq(f[col[SP_STATE]], "SUCCESS")))
        return GW_OK;
    bill_line_t l = { .refund = refund, .amount = amount, .trade_no = f[col[SP_OUT_TRADE]],
                      .refund_no = f[col[SP_OUT_REFUND]], .mch_id = f[col[SP_MCH]],
                      .channel_trade_no = f[col[SP_TXN]], .time = f[col[SP_TIME]] };
    return bill_add(rows, &l, "商户订单号", "商户退款单号", lineno, err, errlen);
}

static gw_err_t bill_swiftpass(const char *text, size_t len, cJSON **rows_out, char *err, size_t errlen)
{
    static const tick_ops_t ops = { sp_titles_line, sp_summary_titles, sp_summary, sp_line };
    sp_bill_t b;
    memset(&b, 0, sizeof(b));
    return tick_bill(text, len, &ops, &b, rows_out, err, errlen);
}

/* ------------------------------------------------------------------ */
/* WeChat Pay */

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
enum { WX_TIME, WX_MCH, WX_TXN, WX_OUT_TRADE, WX_STATE, WX_SETTLE, WX_OUT_REFUND, WX_REFUND, WX_REFUND_STATE,
       WX_TOTAL, WX_ASK, WX_VOUCHER, WX_FEE, WX_N };
static const char *const wx_titles[WX_N] = { "交易时间", "商户号", "微信订单号", "商户订单号", "交易状态",
                                             "应结订单金额", "商户退款单号", "退款金额", "退款状态",
                                             "订单金额", "申请退款金额", "充值券退款金额", "手续费" };
/* the summary: the count, then the sums of the money columns above; the
 * fee (WXS_FEE, signed, maybe more than two decimals) is summed apart */
enum { WXS_COUNT, WXS_SETTLE, WXS_REFUND, WXS_TOTAL, WXS_ASK, WXS_VOUCHER, WXS_FEE, WXS_N };
static const char *const wx_stitles[WXS_N] = { "总交易单数", "应结订单总金额", "退款总金额", "订单总金额",
                                               "申请退款总金额", "充值券退款总金额", "手续费总金额" };
static const int wx_sum_of[WXS_N] = { -1, WX_SETTLE, WX_REFUND, WX_TOTAL, WX_ASK, WX_VOUCHER, WX_FEE };

typedef struct {
    int col[WX_N], scol[WXS_N];
    int64_t sums[WXS_N]; /* over the lines; WXS_FEE in micro-yuan */
} wx_bill_t;

static gw_err_t wx_titles_line(void *ctx, cJSON *rows, const span_t *f, int n, int lineno, char *err,
                               size_t errlen)
{
    wx_bill_t *b = ctx;
    int c = missing_column(f, n, wx_titles, WX_N, b->col);
    if (c >= 0) {
        snprintf(err, errlen, "line %d: no column \"%s\" (not a WeChat Pay trade bill?)", lineno, wx_titles[c]);
        return GW_EPARSE;
    }
    return GW_OK;
}

static gw_err_t wx_summary_titles(void *ctx, cJSON *rows, const span_t *f, int n, int lineno, char *err,
                                  size_t errlen)
{
    wx_bill_t *b = ctx;
    int s = missing_column(f, n, wx_stitles, WXS_N, b->scol);
    if (s >= 0) {
        snprintf(err, errlen, "line %d: the summary has no \"%s\"", lineno, wx_stitles[s]);
        return GW_EPARSE;
    }
    return GW_OK;
}

static gw_err_t wx_summary(void *ctx, cJSON *rows, const span_t *f, int n, int lineno, char *err, size_t errlen)
{
    wx_bill_t *b = ctx;
    const int *scol = b->scol;
    int64_t v[WXS_N];
    int ok = n > scol[WXS_COUNT] && span_count(f[scol[WXS_COUNT]], &v[WXS_COUNT]);
    for (int s = 1; ok && s < WXS_FEE; s++)
        ok = n > scol[s] && yuan_to_fen(f[scol[s]].p, f[scol[s]].n, &v[s]);
    if (!ok || n <= scol[WXS_FEE]) {
        snprintf(err, errlen, "line %d: malformed summary values", lineno);
        return GW_EPARSE;
    }
    if (!fee_total_matches(f[scol[WXS_FEE]], b->sums[WXS_FEE])) {
        snprintf(err, errlen, "the summary's 手续费总金额 does not match the lines' 手续费: truncated or altered file");
        return GW_EPARSE;
    }
    for (int s = 0; s < WXS_FEE; s++)
        if (v[s] != b->sums[s]) {
            snprintf(err, errlen,
                     "the summary's %s (%lld%s) does not match the lines (%lld): truncated or "
                     "altered file",
                     wx_stitles[s], (long long)v[s], s ? " fen" : "", (long long)b->sums[s]);
            return GW_EPARSE;
        }
    return GW_OK;
}

static gw_err_t wx_line(void *ctx, cJSON *rows, const span_t *f, int n, int lineno, char *err, size_t errlen)
{
    wx_bill_t *b = ctx;
    const int *col = b->col;
    b->sums[WXS_COUNT]++;
    int64_t money[WXS_N] = { 0 };
    for (int s = 1; s < WXS_N; s++) {
        span_t a = f[col[wx_sum_of[s]]];
        if (s == WXS_FEE ? !decimal_parse(a.p, a.n, 6, 1, &money[s]) : !yuan_to_fen(a.p, a.n, &money[s])) {
            snprintf(err, errlen, "line %d: malformed %s \"%.*s\"", lineno, wx_titles[wx_sum_of[s]],
                     (int)(a.n > 32 ? 32 : a.n), a.p);
            return GW_EPARSE;
        }
        b->sums[s] += money[s];
    }
    int refund = span_eq(f[col[WX_STATE]], "REFUND");
    /* matched: paid trades and successful refunds; others (a revoked
     * trade) count in the summary check only */
    if (!(refund ? span_eq(f[col[WX_REFUND_STATE]], "SUCCESS") : span_eq(f[col[WX_STATE]], "SUCCESS")))
        return GW_OK;
    bill_line_t l = { .refund = refund, .amount = refund ? money[WXS_ASK] : money[WXS_TOTAL],
                      .trade_no = f[col[WX_OUT_TRADE]], .refund_no = f[col[WX_OUT_REFUND]],
                      .mch_id = f[col[WX_MCH]], .channel_trade_no = f[col[WX_TXN]], .time = f[col[WX_TIME]] };
    return bill_add(rows, &l, "商户订单号", "商户退款单号", lineno, err, errlen);
}

static gw_err_t bill_wechatpay(const char *text, size_t len, cJSON **rows_out, char *err, size_t errlen)
{
    static const tick_ops_t ops = { wx_titles_line, wx_summary_titles, wx_summary, wx_line };
    wx_bill_t b;
    memset(&b, 0, sizeof(b));
    return tick_bill(text, len, &ops, &b, rows_out, err, errlen);
}

/* ------------------------------------------------------------------ */
/* Alipay */

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
    if (check_ncols(n, b->ncols, lineno, err, errlen) != GW_OK) return GW_EPARSE;
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
    /* a refund without 退款批次号/请求号 is one that is not ours: a row without refund_no */
    bill_line_t l = { .refund = k, .amount = k ? -amount : amount, .trade_no = f[b->col[AP_OTN]],
                      .refund_no = f[b->col[AP_REQ]], .mch_id = { b->pid, strlen(b->pid) },
                      .channel_trade_no = f[b->col[AP_TXN]], .time = f[b->col[AP_DONE]] };
    return bill_add(rows, &l, "商户订单号", NULL, lineno, err, errlen);
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
    const char *p = after_bom(text, len), *end = text + len, *line;
    size_t ll;
    int lineno = 0;
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
    gw__zip_entry_t e;
    char *raw = NULL, *text = NULL;
    size_t rawlen = 0, textlen = 0;
    if (len < 4 || memcmp(z, "PK\3\4", 4) != 0) {
        snprintf(err, errlen, "not a zip archive: Alipay's bill is the zip its bill_download_url serves");
        return GW_EPARSE;
    }
    gw_err_t rc = gw__zip_find(z, len, "业务明细", "汇总", &e, err, errlen);
    if (rc == GW_OK) rc = gw__zip_read(z, len, &e, &raw, &rawlen, err, errlen);
    if (rc == GW_OK) rc = gw__gbk_to_utf8(raw, rawlen, &text, &textlen, err, errlen);
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

/* ------------------------------------------------------------------ */
/* MyBank */

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
    int c = summary ? missing_column(f, n, mb_stitles, MS_N, b->scol) : missing_column(f, n, titles, MB_N, b->col);
    if (c >= 0) {
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
    if (check_ncols(n, b->ncols, lineno, err, errlen) != GW_OK) return GW_EPARSE;
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
    bill_line_t l = { .refund = k, .amount = amount, .trade_no = f[b->col[MB_OTN]], .refund_no = f[b->col[MB_ORN]],
                      .mch_id = f[b->col[MB_MCH]], .channel_trade_no = f[b->col[MB_ORDER]],
                      .time = f[b->col[MB_TIME]] };
    return bill_add(rows, &l, "OutTradeNo", "OutRefundNo", lineno, err, errlen);
}

static gw_err_t bill_mybank(const char *text, size_t len, cJSON **rows_out, char *err, size_t errlen)
{
    mb_bill_t b;
    memset(&b, 0, sizeof(b));
    span_t f[BILL_MAX_COLS];
    cJSON *rows = cJSON_CreateArray();
    const char *p = after_bom(text, len), *end = text + len, *line;
    size_t ll;
    int lineno = 0;
    gw_err_t rc = rows ? GW_OK : GW_ENOMEM;
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
    if (rc == GW_OK) rc = summary_end(b.state, err, errlen);
    if (rc != GW_OK) {
        if (rc == GW_ENOMEM) snprintf(err, errlen, "out of memory");
        cJSON_Delete(rows);
        return rc == GW_ENOMEM ? rc : GW_EPARSE;
    }
    *rows_out = rows;
    return GW_OK;
}

/* ------------------------------------------------------------------ */

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
