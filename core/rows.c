/*
 * rows.c — channel call inputs from storage rows (see rows.h).
 */
#include "rows.h"
#include "json.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <time.h>

const char *gw_jstr(const cJSON *o, const char *key)
{
    const cJSON *v = gw_json_get(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int64_t gw_jint(const cJSON *o, const char *key)
{
    const cJSON *v = gw_json_get(o, key);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : -1;
}

gw_str_t gw_sstr(const char *s) { return (gw_str_t){ s ? s : "", s ? strlen(s) : 0 }; }

gw_err_t gw_rows_merchant(const cJSON *s, gw_chan_merchant_t *cm)
{
    cm->mch_id = gw_sstr(gw_jstr(s, "mch_id"));
    cm->app_id = gw_sstr(gw_jstr(s, "app_id"));
    cm->key = gw_sstr(gw_jstr(s, "key"));
    cm->private_key = gw_sstr(gw_jstr(s, "private_key"));
    cm->public_key = gw_sstr(gw_jstr(s, "public_key"));
    cm->extra = gw_sstr(gw_jstr(s, "extra"));
    return cm->mch_id.len ? GW_OK : GW_EINVAL;
}

uint32_t gw_method_bit(const char *m)
{
    if (m == NULL) return 0;
    if (strcmp(m, "wechat_qr") == 0) return GW_METHOD_WECHAT_QR;
    if (strcmp(m, "wechat_jsapi") == 0) return GW_METHOD_WECHAT_JSAPI;
    if (strcmp(m, "alipay_qr") == 0) return GW_METHOD_ALIPAY_QR;
    if (strcmp(m, "alipay_jsapi") == 0) return GW_METHOD_ALIPAY_JSAPI;
    if (strcmp(m, "barcode") == 0) return GW_METHOD_BARCODE;
    return 0;
}

/* Any other spelling strptime takes (the fast path's fallback). */
static int64_t parse_ts_ms_libc(const char *s)
{
    if (s == NULL) return 0;
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    int frac = 0;
    char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (end == NULL) return 0;
    if (*end == '.') {
        end++;
        int digits = 0;
        while (isdigit((unsigned char)*end)) {
            if (digits < 3) frac = frac * 10 + (*end - '0');
            digits++;
            end++;
        }
        while (digits < 3) frac *= 10, digits++;
    }
    int64_t t = (int64_t)timegm(&tm);
    int hh = 0, mm = 0;
    if (*end == '+' || *end == '-') {
        int sign = *end == '-' ? -1 : 1;
        if (sscanf(end + 1, "%d:%d", &hh, &mm) >= 1) t -= sign * (hh * 3600 + mm * 60);
    }
    return t * 1000 + frac;
}

static int ts_digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
 * (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int64_t gw_parse_ts_ms(const char *s)
{
    /* PostgreSQL's JSON timestamps: 2026-11-27T21:48:49.123456+00:00, read
     * directly: strptime, timegm and sscanf were 1 % of paygated's
     * instructions per c-to-b order.  Anything else goes to strptime. */
    if (s == NULL) return 0;
    int y, mo, d, h, mi, sec;
    if (!(ts_digits(s, 4, &y) && s[4] == '-' && ts_digits(s + 5, 2, &mo) && s[7] == '-' &&
          ts_digits(s + 8, 2, &d) && s[10] == 'T' && ts_digits(s + 11, 2, &h) && s[13] == ':' &&
          ts_digits(s + 14, 2, &mi) && s[16] == ':' && ts_digits(s + 17, 2, &sec)) ||
        mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return parse_ts_ms_libc(s);
    const char *end = s + 19;
    int frac = 0;
    if (*end == '.') {
        int digits = 0;
        for (end++; *end >= '0' && *end <= '9'; end++, digits++)
            if (digits < 3) frac = frac * 10 + (*end - '0');
        if (digits == 0) return parse_ts_ms_libc(s);
        for (; digits < 3; digits++) frac *= 10;
    }
    int64_t t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
    if (*end == '+' || *end == '-') {
        int oh, om = 0;
        int sign = *end == '-' ? -1 : 1;
        if (!ts_digits(end + 1, 2, &oh)) return parse_ts_ms_libc(s);
        if (end[3] == ':' && !ts_digits(end + 4, 2, &om)) return parse_ts_ms_libc(s);
        t -= sign * (oh * 3600 + om * 60);
    } else if (*end != '\0' && *end != 'Z') {
        return parse_ts_ms_libc(s);
    }
    return t * 1000 + frac;
}

void gw_rows_order(const gw_app_t *app, const cJSON *o, gw_chan_order_t *co, char *notify_url,
                   size_t notify_len)
{
    co->out_trade_no = gw_sstr(gw_jstr(o, "trade_no"));
    co->amount = gw_jint(o, "amount");
    co->currency = gw_sstr(gw_jstr(o, "currency"));
    co->subject = gw_sstr(gw_jstr(o, "subject"));
    co->method = gw_method_bit(gw_jstr(o, "method"));
    co->payer_id = gw_sstr(gw_jstr(o, "payer_id"));
    co->client_ip = gw_sstr(gw_jstr(o, "client_ip") ? gw_jstr(o, "client_ip") : "127.0.0.1");
    co->channel_trade_no = gw_sstr(gw_jstr(o, "channel_trade_no"));
    co->attach = gw_sstr(NULL);
    co->created_ms = gw_parse_ts_ms(gw_jstr(o, "created_at"));
    co->expire_ms = gw_parse_ts_ms(gw_jstr(o, "expire_at"));
    const char *base = app->cfg.channels.notify_base_url;
    const char *chan = gw_jstr(o, "channel");
    if (base) gw_strjoin(notify_url, notify_len, base, "/notify/", chan ? chan : "", NULL);
    else snprintf(notify_url, notify_len, "http://%s:%d/notify/%s", app->cfg.listen_host,
                  app->cfg.listen_port, chan ? chan : "");
    co->notify_url = gw_sstr(notify_url);
}

void gw_rows_refund(const cJSON *r, const cJSON *o, gw_chan_refund_t *cr)
{
    cr->out_refund_no = gw_sstr(gw_jstr(r, "refund_no"));
    cr->amount = gw_jint(r, "amount");
    cr->total_amount = gw_jint(o, "amount");
    cr->reason = gw_sstr(gw_jstr(r, "reason"));
    cr->channel_refund_no = gw_sstr(gw_jstr(r, "channel_refund_no"));
}
