/*
 * test_settle.c — the bill parsers of core/bill.c (gw_bill_parse) for
 * Alipay (a zip of GBK CSV files) and MyBank (plain CSV), and WeChat Pay's
 * fee and voucher totals: rows, totals
 * checks, and the refusals of a malformed archive — not a zip, truncated,
 * corrupt (CRC), an entry declaring more than the cap, one inflating beyond
 * what it declares (a zip bomb), encrypted.
 *
 * The archives are built here with zlib's deflate and the text encoded to
 * GBK with iconv (the parser inflates and decodes: the other direction).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <iconv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <cjson/cJSON.h>

#include "bill.h"

/* ---- a growable byte buffer ---- */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} bytes_t;

static void put(bytes_t *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}
static void put16(bytes_t *b, unsigned v)
{
    unsigned char x[2] = { v & 0xff, (v >> 8) & 0xff };
    put(b, x, 2);
}
static void put32(bytes_t *b, uint32_t v)
{
    put16(b, v & 0xffff);
    put16(b, v >> 16);
}

/* UTF-8 → GBK with iconv. */
static bytes_t gbk(const char *utf8)
{
    bytes_t out = { 0 };
    size_t il = strlen(utf8), ol = 2 * il + 16;
    out.p = malloc(ol);
    out.cap = ol;
    char *ip = (char *)(uintptr_t)utf8, *op = (char *)out.p;
    iconv_t cd = iconv_open("GBK", "UTF-8");
    assert_true(cd != (iconv_t)-1);
    assert_true(iconv(cd, &ip, &il, &op, &ol) != (size_t)-1);
    iconv_close(cd);
    out.n = (size_t)(op - (char *)out.p);
    return out;
}

/* One-entry zip; declared_usize 0: the true size.  flags as given. */
typedef struct {
    const char *name_utf8;
    bytes_t data;
    int stored;
    uint32_t declared_usize;
    unsigned flags;
} entry_t;

static bytes_t zip_of(const entry_t *e, int count)
{
    bytes_t z = { 0 }, cd = { 0 };
    for (int i = 0; i < count; i++) {
        bytes_t name = gbk(e[i].name_utf8);
        uLongf clen = compressBound(e[i].data.n) + 64;
        unsigned char *comp = malloc(clen);
        if (e[i].stored) {
            memcpy(comp, e[i].data.p, e[i].data.n);
            clen = e[i].data.n;
        } else {
            z_stream s;
            memset(&s, 0, sizeof(s));
            assert_int_equal(deflateInit2(&s, 9, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
            s.next_in = e[i].data.p;
            s.avail_in = (uInt)e[i].data.n;
            s.next_out = comp;
            s.avail_out = (uInt)clen;
            assert_int_equal(deflate(&s, Z_FINISH), Z_STREAM_END);
            clen = s.total_out;
            deflateEnd(&s);
        }
        uint32_t crc = crc32(0L, e[i].data.p, (uInt)e[i].data.n);
        uint32_t usize = e[i].declared_usize ? e[i].declared_usize : (uint32_t)e[i].data.n;
        uint32_t off = (uint32_t)z.n;
        put32(&z, 0x04034b50);
        put16(&z, 20), put16(&z, e[i].flags), put16(&z, e[i].stored ? 0 : 8), put16(&z, 0), put16(&z, 0);
        put32(&z, crc), put32(&z, (uint32_t)clen), put32(&z, usize);
        put16(&z, (unsigned)name.n), put16(&z, 0);
        put(&z, name.p, name.n);
        put(&z, comp, clen);
        put32(&cd, 0x02014b50);
        put16(&cd, 20), put16(&cd, 20), put16(&cd, e[i].flags), put16(&cd, e[i].stored ? 0 : 8);
        put16(&cd, 0), put16(&cd, 0);
        put32(&cd, crc), put32(&cd, (uint32_t)clen), put32(&cd, usize);
        put16(&cd, (unsigned)name.n), put16(&cd, 0), put16(&cd, 0), put16(&cd, 0), put16(&cd, 0);
        put32(&cd, 0), put32(&cd, off);
        put(&cd, name.p, name.n);
        free(name.p);
        free(comp);
    }
    uint32_t cd_off = (uint32_t)z.n;
    put(&z, cd.p, cd.n);
    put32(&z, 0x06054b50);
    put16(&z, 0), put16(&z, 0), put16(&z, (unsigned)count), put16(&z, (unsigned)count);
    put32(&z, (uint32_t)cd.n), put32(&z, cd_off), put16(&z, 0);
    free(cd.p);
    return z;
}

/* ---- an Alipay 业务明细 file (the layout of the public samples, see docs/channels/alipay.md) ---- */

#define AP_HEAD                                                                                               \
    "#支付宝业务明细查询\r\n#账号：[20881021700000010156]\r\n"                                                  \
    "#起始日期：[2026年01月02日 00:00:00]   终止日期：[2026年01月03日 00:00:00]\r\n"                             \
    "#-----------------------------------------业务明细列表----------------------------------------\r\n"      \
    "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,"    \
    "订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）," \
    "券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注\r\n"
#define AP_PAY                                                                                                \
    "2026010222001400000000000001\t,T0001\t,交易\t,\"Tea, green\",2026-01-02 10:00:00,2026-01-02 10:00:05,"   \
    "\t,\t,\t,\t,abc****1234\t,12.34,12.34,0.00,0.00,0.00,0.00,0.00,,0.00\t,0.00,\t,-0.07,0.00,龙井\r\n"
#define AP_REFUND                                                                                             \
    "2026010222001400000000000001\t,T0001\t,退款\t,龙井,2026-01-02 10:00:00,2026-01-02 11:00:00,"            \
    "\t,\t,\t,\t,abc****1234\t,-2.00,-2.00,0.00,0.00,0.00,0.00,0.00,,0.00\t,0.00,R0001\t,0.01,0.00,\r\n"
#define AP_END "#-----------------------------------------业务明细列表结束------------------------------------\r\n"
#define AP_TOTALS(n, x, rn, rx)                                                                               \
    "#交易合计：" n "笔，商家实收共" x "元，商家优惠共0.00元\r\n#退款合计：" rn "笔，商家实收退款共" rx        \
    "元，商家优惠退款共0.00元\r\n#导出时间：[2026年01月03日 06:27:10]\r\n"
#define DETAIL "2088102170000001_20260102_业务明细.csv"
#define SUMMARY "2088102170000001_20260102_业务明细(汇总).csv"

static gw_err_t parse_zip(bytes_t z, cJSON **rows, char *err, size_t errlen)
{
    return gw_bill_parse("alipay", (const char *)z.p, z.n, rows, err, errlen);
}

static gw_err_t parse_alipay_text(const char *utf8, cJSON **rows, char *err, size_t errlen)
{
    entry_t e[2] = { { SUMMARY, gbk("#支付宝业务汇总查询\r\n"), 0, 0, 0 }, { DETAIL, gbk(utf8), 0, 0, 0 } };
    bytes_t z = zip_of(e, 2);
    gw_err_t rc = parse_zip(z, rows, err, errlen);
    free(z.p), free(e[0].data.p), free(e[1].data.p);
    return rc;
}

static const char *jstr(const cJSON *o, const char *k)
{
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, k));
}
static double jnum(const cJSON *o, const char *k)
{
    return cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, k));
}

static void test_alipay_rows(void **state)
{
    (void)state;
    cJSON *rows = NULL;
    char err[256];
    gw_err_t rc = parse_alipay_text(AP_HEAD AP_PAY AP_REFUND AP_END AP_TOTALS("1", "12.34", "1", "-2.00"), &rows, err,
                                    sizeof(err));
    assert_int_equal(rc, GW_OK);
    assert_int_equal(cJSON_GetArraySize(rows), 2);
    const cJSON *p = cJSON_GetArrayItem(rows, 0), *r = cJSON_GetArrayItem(rows, 1);
    assert_string_equal(jstr(p, "kind"), "pay");
    assert_string_equal(jstr(p, "trade_no"), "T0001"); /* the tab after it trimmed */
    assert_int_equal((int)jnum(p, "amount"), 1234);
    assert_string_equal(jstr(p, "mch_id"), "2088102170000001"); /* #账号 without its 0156 */
    assert_string_equal(jstr(p, "channel_trade_no"), "2026010222001400000000000001");
    assert_string_equal(jstr(p, "time"), "2026-01-02 10:00:05");
    assert_null(cJSON_GetObjectItemCaseSensitive(p, "refund_no"));
    assert_string_equal(jstr(r, "kind"), "refund");
    assert_string_equal(jstr(r, "refund_no"), "R0001");
    assert_int_equal((int)jnum(r, "amount"), 200); /* −订单金额 */
    cJSON_Delete(rows);
}

static void expect_refused(gw_err_t rc, cJSON *rows, const char *err, const char *needle)
{
    assert_int_equal(rc, GW_EPARSE);
    assert_null(rows);
    if (strstr(err, needle) == NULL) fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
}

static void test_alipay_totals_checked(void **state)
{
    (void)state;
    cJSON *rows = NULL;
    char err[256];
    /* the count, then the amount of the trades, then of the refunds disagree */
    gw_err_t rc = parse_alipay_text(AP_HEAD AP_PAY AP_REFUND AP_END AP_TOTALS("2", "12.34", "1", "-2.00"), &rows, err,
                                    sizeof(err));
    expect_refused(rc, rows, err, "#交易合计");
    rc = parse_alipay_text(AP_HEAD AP_PAY AP_REFUND AP_END AP_TOTALS("1", "12.35", "1", "-2.00"), &rows, err,
                           sizeof(err));
    expect_refused(rc, rows, err, "#交易合计");
    rc = parse_alipay_text(AP_HEAD AP_PAY AP_REFUND AP_END AP_TOTALS("1", "12.34", "1", "-2.01"), &rows, err,
                           sizeof(err));
    expect_refused(rc, rows, err, "#退款合计");
    /* truncated: no end marker, or no totals */
    rc = parse_alipay_text(AP_HEAD AP_PAY AP_REFUND, &rows, err, sizeof(err));
    expect_refused(rc, rows, err, "truncated");
    rc = parse_alipay_text(AP_HEAD AP_PAY AP_REFUND AP_END, &rows, err, sizeof(err));
    expect_refused(rc, rows, err, "truncated");
    /* a 业务类型 that is neither, and a refund with a positive 订单金额 */
    rc = parse_alipay_text(AP_HEAD "1\t,T2\t,撤销\t,x,a,b,,,,,,1.00,1.00,0,0,0,0.00,0,,0,0,,0,0,\r\n" AP_END
                                   AP_TOTALS("0", "0.00", "0", "0.00"),
                           &rows, err, sizeof(err));
    expect_refused(rc, rows, err, "业务类型");
    rc = parse_alipay_text(AP_HEAD "1\t,T2\t,退款\t,x,a,b,,,,,,1.00,1.00,0,0,0,0.00,0,,0,0,R\t,0,0,\r\n" AP_END
                                   AP_TOTALS("0", "0.00", "1", "1.00"),
                           &rows, err, sizeof(err));
    expect_refused(rc, rows, err, "negative");
}

static void test_zip_refused(void **state)
{
    (void)state;
    cJSON *rows = NULL;
    char err[256];
    const char *text = AP_HEAD AP_PAY AP_END AP_TOTALS("1", "12.34", "0", "0.00");
    /* not a zip at all */
    expect_refused(gw_bill_parse("alipay", text, strlen(text), &rows, err, sizeof(err)), rows, err, "not a zip");
    /* a good one, then cut short */
    entry_t e = { DETAIL, gbk(text), 0, 0, 0 };
    bytes_t z = zip_of(&e, 1);
    assert_int_equal(parse_zip(z, &rows, err, sizeof(err)), GW_OK);
    cJSON_Delete(rows);
    rows = NULL;
    for (size_t cut = 1; cut < z.n; cut += 37) {
        bytes_t t = { z.p, z.n - cut, 0 };
        assert_int_equal(parse_zip(t, &rows, err, sizeof(err)), GW_EPARSE);
        assert_null(rows);
    }
    free(z.p);
    /* stored data with one byte changed: the CRC tells */
    e.stored = 1;
    z = zip_of(&e, 1);
    z.p[30 + strlen(DETAIL) + 40] ^= 1; /* name bytes: GBK is shorter than UTF-8, still inside the data */
    expect_refused(parse_zip(z, &rows, err, sizeof(err)), rows, err, "CRC");
    free(z.p);
    /* an entry that declares more than the cap is not inflated */
    e.stored = 0;
    e.declared_usize = 0x7fffffff;
    z = zip_of(&e, 1);
    expect_refused(parse_zip(z, &rows, err, sizeof(err)), rows, err, "declares");
    free(z.p);
    /* a bomb: declares 100 bytes, inflates to more */
    e.declared_usize = 100;
    z = zip_of(&e, 1);
    expect_refused(parse_zip(z, &rows, err, sizeof(err)), rows, err, "beyond");
    free(z.p);
    /* encrypted */
    e.declared_usize = 0;
    e.flags = 1;
    z = zip_of(&e, 1);
    expect_refused(parse_zip(z, &rows, err, sizeof(err)), rows, err, "encrypted");
    free(z.p);
    /* no details file: only the summary */
    e.flags = 0;
    e.name_utf8 = SUMMARY;
    z = zip_of(&e, 1);
    expect_refused(parse_zip(z, &rows, err, sizeof(err)), rows, err, "no CSV");
    free(z.p);
    free(e.data.p);
}

/* ---- MyBank ---- */

#define MB_HEAD "TradeTime,MerchantId,OutTradeNo,OrderNo,TradeType,OutRefundNo,RefundOrderNo,Amount,Currency,TradeStatus\r\n"
#define MB_PAY "2026-01-02 10:00:05,226801000000000101,T1,20260102000001,PAY,,,1234,CNY,succ\r\n"
#define MB_FAILED "2026-01-02 10:01:00,226801000000000101,T2,20260102000002,PAY,,,500,CNY,fail\r\n"
#define MB_REFUND "2026-01-02 11:00:00,226801000000000101,T1,20260102000001,REFUND,R1,R20260102,200,CNY,succ\r\n"
#define MB_SUM(t, pn, p, rn, r) "TotalCount,PayCount,PayAmount,RefundCount,RefundAmount\r\n" t "," pn "," p "," rn "," r "\r\n"

static void test_mybank(void **state)
{
    (void)state;
    cJSON *rows = NULL;
    char err[256];
    const char *ok = MB_HEAD MB_PAY MB_FAILED MB_REFUND MB_SUM("3", "1", "1234", "1", "200");
    assert_int_equal(gw_bill_parse("mybank", ok, strlen(ok), &rows, err, sizeof(err)), GW_OK);
    assert_int_equal(cJSON_GetArraySize(rows), 2); /* the failed payment is counted, not matched */
    const cJSON *p = cJSON_GetArrayItem(rows, 0), *r = cJSON_GetArrayItem(rows, 1);
    assert_string_equal(jstr(p, "trade_no"), "T1");
    assert_int_equal((int)jnum(p, "amount"), 1234);
    assert_string_equal(jstr(p, "mch_id"), "226801000000000101");
    assert_string_equal(jstr(r, "kind"), "refund");
    assert_string_equal(jstr(r, "refund_no"), "R1");
    assert_int_equal((int)jnum(r, "amount"), 200);
    cJSON_Delete(rows);
    rows = NULL;
    const char *bad[][2] = {
        { MB_HEAD MB_PAY MB_SUM("1", "1", "1235", "0", "0"), "PayAmount" },
        { MB_HEAD MB_PAY MB_FAILED MB_SUM("1", "1", "1234", "0", "0"), "TotalCount" },
        { MB_HEAD MB_PAY MB_REFUND, "truncated" },
        { MB_HEAD "a,b,T1,c,PAY,,,12.34,CNY,succ\r\n" MB_SUM("1", "1", "1234", "0", "0"), "whole fen" },
        { MB_HEAD "a,b,T1,c,SALE,,,1,CNY,succ\r\n" MB_SUM("1", "1", "1", "0", "0"), "TradeType" },
        { "x,y\r\n", "no column" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        gw_err_t rc = gw_bill_parse("mybank", bad[i][0], strlen(bad[i][0]), &rows, err, sizeof(err));
        expect_refused(rc, rows, err, bad[i][1]);
    }
}

/* ---- WeChat Pay: the fee and voucher-refund totals are checked too ---- */

#define WX_HEAD "交易时间,商户号,微信订单号,商户订单号,交易状态,应结订单金额,商户退款单号,退款金额,退款状态,订单金额,申请退款金额,充值券退款金额,手续费\r\n"
#define WX_PAY(fee) "`2026-01-02 10:00:00,`1900000451,`4200000001,`T1,`SUCCESS,`12.34,`,`0.00,`,`12.34,`0.00,`0.00,`" fee "\r\n"
#define WX_REFUND(voucher, fee) "`2026-01-02 11:00:00,`1900000451,`4200000001,`T1,`REFUND,`0.00,`R1,`2.00,`SUCCESS,`0.00,`2.00,`" voucher ",`" fee "\r\n"
#define WX_SUM(voucher, fee) "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n`2,`12.34,`2.00,`" voucher ",`" fee ",`12.34,`2.00\r\n"

static void test_wechatpay_fee_and_voucher_totals(void **state)
{
    (void)state;
    cJSON *rows = NULL;
    char err[256];
    /* fees with three decimals, the summary rounded to two: 0.074 - 0.012 = 0.062 → 0.06 */
    const char *ok = WX_HEAD WX_PAY("0.074") WX_REFUND("0.00", "-0.012") WX_SUM("0.00", "0.06");
    assert_int_equal(gw_bill_parse("wechatpay", ok, strlen(ok), &rows, err, sizeof(err)), GW_OK);
    assert_int_equal(cJSON_GetArraySize(rows), 2);
    cJSON_Delete(rows);
    rows = NULL;
    const char *exact = WX_HEAD WX_PAY("0.07") WX_REFUND("0.00", "-0.01") WX_SUM("0.00", "0.06");
    assert_int_equal(gw_bill_parse("wechatpay", exact, strlen(exact), &rows, err, sizeof(err)), GW_OK);
    cJSON_Delete(rows);
    rows = NULL;
    const char *bad[][2] = {
        { WX_HEAD WX_PAY("0.074") WX_REFUND("0.00", "-0.012") WX_SUM("0.00", "0.07"), "手续费总金额" },
        { WX_HEAD WX_PAY("0.07") WX_REFUND("0.00", "-0.01") WX_SUM("0.00", "0.08"), "手续费总金额" },
        { WX_HEAD WX_PAY("0.07") WX_REFUND("0.50", "-0.01") WX_SUM("0.00", "0.06"), "充值券退款总金额" },
        { WX_HEAD WX_PAY("0.0700001") WX_REFUND("0.00", "-0.01") WX_SUM("0.00", "0.06"), "malformed" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        gw_err_t rc = gw_bill_parse("wechatpay", bad[i][0], strlen(bad[i][0]), &rows, err, sizeof(err));
        expect_refused(rc, rows, err, bad[i][1]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alipay_rows),
        cmocka_unit_test(test_alipay_totals_checked),
        cmocka_unit_test(test_zip_refused),
        cmocka_unit_test(test_mybank),
        cmocka_unit_test(test_wechatpay_fee_and_voucher_totals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
