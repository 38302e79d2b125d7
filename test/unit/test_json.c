/*
 * test_json.c — core/json.c: gw_json_write gives, byte for byte, the text
 * cJSON_PrintUnformatted gives for the same tree.  The trees are generated
 * from a fixed seed (a failure is reproducible): every value type, numbers
 * that are integers of every size, fractions, huge and tiny, negative zero,
 * NaN and infinities; strings and keys with every byte from 1 to 255
 * (control characters, quotes, backslashes, UTF-8), empty ones, raw items,
 * nesting.  A few fixed cases pin what the differential cannot show alone.
 * Everything runs with the allocation hooks paygated installs
 * (gw_json_alloc_init), which have their own tests at the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw.h"
#include "json.h"
#include "rows.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static void random_text(char *s, size_t cap)
{
    size_t n = next() % 4 == 0 ? 0 : next() % (cap - 1);
    for (size_t i = 0; i < n; i++) {
        uint32_t k = next() % 8;
        if (k == 0) s[i] = (char)(1 + next() % 31);          /* control */
        else if (k == 1) s[i] = "\"\\/\b\f\n\r\t"[next() % 8];
        else if (k == 2) s[i] = (char)(128 + next() % 128);  /* high bytes */
        else s[i] = (char)(32 + next() % 95);
    }
    s[n] = '\0';
}

static double random_number(void)
{
    switch (next() % 12) {
    case 0: return (double)(int32_t)next();
    case 1: return (double)(int64_t)(((uint64_t)next() << 32 | next()) >> (next() % 64));
    case 2: return -(double)(next() % 1000);
    case 3: return (double)next() / (double)(1 + next() % 1000);
    case 4: return ((double)next() - 2e9) * 1e-9;
    case 5: return pow(10, (double)(next() % 40)) * (next() % 2 ? 1 : -1);
    case 6: return 999999999999999.0 + (double)(next() % 4);   /* around 1e15 */
    case 7: return -0.0;
    case 8: return (double)((uint64_t)1 << (next() % 64));
    case 9: return next() % 2 ? 1e308 * 10 : -1e308 * 10;    /* infinities */
    case 10: return next() % 3 ? 0.1 * (double)(next() % 100) : nan("");
    default: return (double)(next() % 100000000) / 100.0;
    }
}

static cJSON *random_tree(int depth)
{
    char text[40];
    uint32_t k = next() % (depth > 4 ? 6 : 9);
    switch (k) {
    case 0: return cJSON_CreateNull();
    case 1: return cJSON_CreateBool(next() % 2);
    case 2: case 3: return cJSON_CreateNumber(random_number());
    case 4: random_text(text, sizeof(text)); return cJSON_CreateString(text);
    case 5: return cJSON_CreateRaw(next() % 2 ? "{\"raw\":[1,2]}" : "123");
    case 6: case 7: {
        cJSON *a = cJSON_CreateArray();
        for (uint32_t i = next() % 5; i > 0; i--) cJSON_AddItemToArray(a, random_tree(depth + 1));
        return a;
    }
    default: {
        cJSON *o = cJSON_CreateObject();
        for (uint32_t i = next() % 6; i > 0; i--) {
            random_text(text, 12);
            cJSON_AddItemToObject(o, text, random_tree(depth + 1));
        }
        return o;
    }
    }
}

static void same_as_cjson(const cJSON *j)
{
    char *want = cJSON_PrintUnformatted(j);
    char *got = gw_json_print(j);
    assert_non_null(want);
    assert_non_null(got);
    if (strcmp(want, got) != 0) fail_msg("cJSON: %s\ngw:    %s", want, got);
    gw_buf_t b;
    gw_buf_init(&b, 1u << 20);
    gw_buf_appends(&b, "prefix:");
    assert_int_equal(gw_json_write(&b, j), GW_OK);
    assert_string_equal(b.data + 7, want);
    gw_buf_free(&b);
    free(got);
    cJSON_free(want);
}

static void test_generated_trees(void **state)
{
    (void)state;
    for (int i = 0; i < 20000; i++) {
        cJSON *j = random_tree(0);
        same_as_cjson(j);
        cJSON_Delete(j);
    }
}

static void test_fixed_cases(void **state)
{
    (void)state;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "amount", 100);
    cJSON_AddNumberToObject(o, "neg", -42);
    cJSON_AddNumberToObject(o, "ms", 1764300000123.0);
    cJSON_AddNumberToObject(o, "big", 1e15);
    cJSON_AddNumberToObject(o, "third", 1.0 / 3.0);
    cJSON_AddStringToObject(o, "s", "a\"b\\c\n\x01\x7f\xe4\xb8\xad");
    cJSON_AddItemToObject(o, "e", cJSON_CreateArray());
    cJSON_AddItemToObject(o, "o", cJSON_CreateObject());
    char *t = gw_json_print(o);
    assert_string_equal(t, "{\"amount\":100,\"neg\":-42,\"ms\":1764300000123,\"big\":1e+15,"
                           "\"third\":0.33333333333333331,\"s\":\"a\\\"b\\\\c\\n\\u0001\x7f\xe4\xb8\xad\","
                           "\"e\":[],\"o\":{}}");
    free(t);
    same_as_cjson(o);
    cJSON_Delete(o);
    /* a raw item without text cannot be printed: neither prints it */
    cJSON *r = cJSON_CreateArray();
    cJSON *raw = cJSON_CreateRaw("1");
    cJSON_free(raw->valuestring);
    raw->valuestring = NULL;
    cJSON_AddItemToArray(r, raw);
    assert_null(cJSON_PrintUnformatted(r));
    assert_null(gw_json_print(r));
    cJSON_Delete(r);
    assert_null(gw_json_print(NULL));
}

/* gw_json_write_view against the object built the way order_view builds it
 * (a copy of each named, non-null member) and printed by cJSON: objects of
 * distinct keys, lists of names in random order, some absent, repeated or
 * naming null members. */
static void test_view(void **state)
{
    (void)state;
    static const char *const names[] = { "a", "b", "trade_no", "amount", "status", "pay_data",
                                         "x\"y", "", "paid_at", "z" };
    enum { NN = sizeof(names) / sizeof(names[0]) };
    for (int round = 0; round < 5000; round++) {
        cJSON *o = cJSON_CreateObject();
        for (int i = 0; i < NN; i++) {
            if (next() % 3 == 0) continue;
            cJSON *v = next() % 4 == 0 ? cJSON_CreateNull() : random_tree(2);
            cJSON_AddItemToObject(o, names[(i + round) % NN], v);
        }
        const char *keys[NN + 3];
        int nk = 0;
        for (int i = 0; i < NN + 2; i++)
            if (next() % 4) keys[nk++] = names[next() % NN];
        keys[nk] = NULL;
        cJSON *want = cJSON_CreateObject();
        for (int i = 0; i < nk; i++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, keys[i]);
            if (v && !cJSON_IsNull(v)) cJSON_AddItemToObject(want, keys[i], cJSON_Duplicate(v, 1));
        }
        char *w = cJSON_PrintUnformatted(want);
        gw_buf_t b;
        gw_buf_init(&b, 1u << 20);
        assert_int_equal(gw_json_write_view(&b, o, keys), GW_OK);
        if (strcmp(w, b.data) != 0) fail_msg("round %d\ncJSON: %s\ngw:    %s", round, w, b.data);
        gw_buf_free(&b);
        cJSON_free(w);
        cJSON_Delete(want);
        cJSON_Delete(o);
    }
    gw_buf_t b;
    gw_buf_init(&b, 64);
    const char *none[] = { NULL };
    cJSON *arr = cJSON_CreateArray();
    assert_int_equal(gw_json_write_view(&b, arr, none), GW_EINVAL);
    assert_int_equal(gw_json_write_view(&b, NULL, none), GW_EINVAL);
    cJSON_Delete(arr);
    gw_buf_free(&b);
}

/* A bounded buffer: the write fails with GW_ETOOBIG, not a cut text. */
static void test_bounded(void **state)
{
    (void)state;
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < 100; i++) cJSON_AddItemToArray(a, cJSON_CreateString("0123456789"));
    gw_buf_t b;
    gw_buf_init(&b, 100);
    assert_int_equal(gw_json_write(&b, a), GW_ETOOBIG);
    gw_buf_free(&b);
    cJSON_Delete(a);
}

/* Freed small blocks come back for the next allocation of their size
 * class, whole (the caller may use every byte it asked for); large ones are
 * not kept; a thread keeps at most GW_JSON_CACHE_KEEP per class. */
static void test_alloc_cache(void **state)
{
    (void)state;
    gw_json_alloc_trim();
    assert_int_equal(gw_json_alloc_cached(), 0);
    for (size_t n = 0; n <= 300; n++) {
        unsigned char *p = cJSON_malloc(n);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, 0xA5, n);
        cJSON_free(p);
        unsigned char *q = cJSON_malloc(n);
        if (n <= 256) assert_ptr_equal(q, p);   /* the same block, from the cache */
        memset(q, 0x5A, n);
        cJSON_free(q);
    }
    assert_int_equal(gw_json_alloc_cached(), 16);  /* one per class 16 … 256 */
    /* sizes of one class share blocks: 17 and 32 bytes are both 32 */
    void *a = cJSON_malloc(17);
    cJSON_free(a);
    assert_ptr_equal(cJSON_malloc(32), a);
    cJSON_free(a);

    enum { N = GW_JSON_CACHE_KEEP + 100 };
    static void *blocks[N];
    for (int i = 0; i < N; i++) assert_non_null(blocks[i] = cJSON_malloc(40));
    for (int i = 0; i < N; i++) cJSON_free(blocks[i]);
    assert_int_equal(gw_json_alloc_cached(), 15 + GW_JSON_CACHE_KEEP);
    gw_json_alloc_trim();
    assert_int_equal(gw_json_alloc_cached(), 0);
    cJSON_free(NULL);
}

static void *other_thread(void *arg)
{
    cJSON **trees = arg;
    /* frees what the main thread parsed, parses its own for the main thread */
    cJSON_Delete(trees[0]);
    trees[2] = (cJSON *)(uintptr_t)gw_json_alloc_cached();
    trees[1] = cJSON_Parse("{\"a\":[1,2,{\"b\":\"x\"}],\"c\":\"\u00e9\"}");
    return NULL;
}

/* Blocks cross threads both ways: the other thread frees to malloc, this
 * one keeps what it frees, whoever allocated it. */
static void test_alloc_threads(void **state)
{
    (void)state;
    cJSON *trees[3] = { cJSON_Parse("[\"one\",{\"two\":2},[3.5]]"), NULL, NULL };
    assert_non_null(trees[0]);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, other_thread, trees), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal((uintptr_t)trees[2], 0);  /* only the hooks' own thread keeps blocks */
    assert_non_null(trees[1]);
    char *text = gw_json_print(trees[1]);
    assert_string_equal(text, "{\"a\":[1,2,{\"b\":\"x\"}],\"c\":\"\xc3\xa9\"}");
    free(text);
    size_t before = gw_json_alloc_cached();
    cJSON_Delete(trees[1]);
    assert_true(gw_json_alloc_cached() >= before + 6);
}

/* gw_json_get finds what cJSON_GetObjectItemCaseSensitive finds, for names
 * that share their first bytes, one-byte and empty names, and misses. */
static void test_get(void **state)
{
    (void)state;
    static const char *const names[] = { "channel", "channel_trade_no", "channel_code", "c", "",
                                          "ch", "cha", "currency", "created_at", "x", NULL };
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; names[i]; i++) cJSON_AddNumberToObject(o, names[i], i);
    static const char *const probes[] = { "channel", "channel_trade_no", "channel_code", "c", "",
        "ch", "cha", "chan", "currency", "created_at", "created", "x", "xy", "y", "channel_",
        "CHANNEL", NULL };
    for (int i = 0; probes[i]; i++) {
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(o, probes[i]);
        const cJSON *got = gw_json_get(o, probes[i]);
        assert_ptr_equal(got, want);
        if (want) assert_string_equal(got->string, probes[i]);
    }
    assert_null(gw_json_get(NULL, "c"));
    cJSON *arr = cJSON_CreateArray();
    cJSON_AddItemToArray(arr, cJSON_CreateNumber(1));
    assert_null(gw_json_get(arr, "c"));
    assert_int_equal(gw_json_key_eq("ab", "ab"), 1);
    assert_int_equal(gw_json_key_eq("ab", "abc"), 0);
    assert_int_equal(gw_json_key_eq("a", "ab"), 0);
    assert_int_equal(gw_json_key_eq("", ""), 1);
    assert_int_equal(gw_json_key_eq("", "a"), 0);
    cJSON_Delete(arr);
    cJSON_Delete(o);
}

/* PostgreSQL's JSON timestamps, read directly; the expected values are
 * `date -u -d … +%s`.  Other spellings still go through strptime. */
static void test_parse_ts(void **state)
{
    (void)state;
    assert_int_equal(gw_parse_ts_ms("2026-11-27T21:48:49+00:00"), 1795816129000LL);
    assert_int_equal(gw_parse_ts_ms("2026-11-27T21:48:49.123456+00:00"), 1795816129123LL);
    assert_int_equal(gw_parse_ts_ms("2026-11-27T21:48:49.9+00:00"), 1795816129900LL);
    assert_int_equal(gw_parse_ts_ms("2026-11-28T05:48:49.5+08:00"), 1795816129500LL);
    assert_int_equal(gw_parse_ts_ms("2026-11-27T16:18:49-05:30"), 1795816129000LL);
    assert_int_equal(gw_parse_ts_ms("2026-11-27T21:48:49"), 1795816129000LL);
    assert_int_equal(gw_parse_ts_ms("2024-02-29T23:59:59+00"), 1709251199000LL);
    assert_int_equal(gw_parse_ts_ms("1999-12-31T16:00:00Z"), 946656000000LL);
    assert_int_equal(gw_parse_ts_ms("2000-03-01T00:00:00+00:00"), 951868800000LL);
    assert_int_equal(gw_parse_ts_ms("2100-02-28T12:00:00+00:00"), 4107499200000LL);
    /* not the fast path's form: strptime's reading (one-digit fields) */
    assert_int_equal(gw_parse_ts_ms("2026-11-27T21:48:9+00:00"), 1795816089000LL);
    assert_int_equal(gw_parse_ts_ms("garbage"), 0);
    assert_int_equal(gw_parse_ts_ms(NULL), 0);
    assert_int_equal(gw_parse_ts_ms(""), 0);
}

/* ---- parsing: gw_json_parse gives cJSON's tree ---- */

static void same_tree(const cJSON *a, const cJSON *b)
{
    if (a == NULL || b == NULL) {
        assert_ptr_equal(a, b);
        return;
    }
    assert_int_equal(a->type, b->type);
    if (a->string || b->string) {
        assert_non_null(a->string);
        assert_non_null(b->string);
        assert_string_equal(a->string, b->string);
    }
    if (a->valuestring || b->valuestring) {
        assert_non_null(a->valuestring);
        assert_non_null(b->valuestring);
        assert_string_equal(a->valuestring, b->valuestring);
    }
    assert_int_equal(a->valueint, b->valueint);
    assert_memory_equal(&a->valuedouble, &b->valuedouble, sizeof(double));
    const cJSON *x = a->child, *y = b->child, *lx = NULL, *ly = NULL;
    for (; x && y; lx = x, ly = y, x = x->next, y = y->next) {
        if (lx) assert_ptr_equal(x->prev, lx);
        if (ly) assert_ptr_equal(y->prev, ly);
        same_tree(x, y);
    }
    assert_null(x);
    assert_null(y);
    if (a->child) assert_ptr_equal(a->child->prev, lx);
    if (b->child) assert_ptr_equal(b->child->prev, ly);
}

static int fast_taken;

static void parse_same(const char *text, size_t len)
{
    cJSON *want = cJSON_ParseWithLength(text, len);
    cJSON *fast = gw__json_parse_fast(text, len);
    cJSON *got = gw_json_parse(text, len);
    if (fast) {
        fast_taken++;
        same_tree(fast, want);
    }
    same_tree(got, want);
    cJSON_Delete(fast);
    cJSON_Delete(got);
    cJSON_Delete(want);
}

static void test_parse_generated(void **state)
{
    (void)state;
    int n = 0;
    fast_taken = 0;
    for (int i = 0; i < 20000; i++) {
        cJSON *j = random_tree(0);
        char *texts[2] = { cJSON_PrintUnformatted(j), cJSON_Print(j) };
        for (int t = 0; t < 2; t++) {
            char *s = texts[t];
            if (s == NULL) continue;
            size_t len = strlen(s);
            parse_same(s, len);
            n++;
            /* a prefix, a changed byte, something after the value */
            if (len > 1) parse_same(s, next() % len);
            char *m = malloc(len + 3);
            memcpy(m, s, len);
            if (len) m[next() % len] = "{}[]\",:\\ 0-.eE9an\x01"[next() % 19];
            parse_same(m, len);
            memcpy(m, s, len);
            memcpy(m + len, next() % 2 ? " x" : "  ", 2);
            parse_same(m, len + 2);
            free(m);
            cJSON_free(s);
        }
        cJSON_Delete(j);
    }
    /* the one pass took a fair share: the comparison means something */
    assert_true(fast_taken > n / 4);
}

static void test_parse_cases(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "{\"created\":true,\"order\":{\"id\":1795816129001,\"amount\":1,\"subject\":\"a\\\"b\\\\c\\/d\\n\","
        "\"pay_data\":{\"code_url\":\"weixin://x\"},\"paid_at\":null,\"x\":false,\"arr\":[1,-2,[],{}]}}",
        "\"\\u00e9\"", "\"\\ud83d\\ude00\"", "1.5", "1e3", "-0", "0", "007", "-", "-a", "--1",
        "123456789012345", "1234567890123456", "-999999999999999", "2147483647", "2147483648",
        "-2147483649", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "  {}  ", "\xEF\xBB\xBF{}", "{}x",
        "nul", "null", "true", "false", "truex", "[true,false,null]", "\"a\x01b\"", "\"\\x\"",
        "\"unterminated", "{\"a\":\"\xe4\xb8\xad\xe6\x96\x87\"}", "[1 2]", "{\"a\":1 \"b\":2}", "[",
        "]", "{", "\"\\", "[-]", "[1e]", "[.5]", "{\"k\":\"v\",\"k\":\"w\"}", "\t\r\n[\n1\t]\r", "",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) parse_same(cases[i], strlen(cases[i]));
    /* nesting: 60 levels in one pass, 200 through cJSON */
    char deep[512];
    for (int d = 60; d <= 200; d += 140) {
        memset(deep, '[', (size_t)d);
        memset(deep + d, ']', (size_t)d);
        parse_same(deep, (size_t)d * 2);
    }
    parse_same(NULL, 0);
    /* an order row is taken by the one pass */
    const char *row = cases[0];
    cJSON *fast = gw__json_parse_fast(row, strlen(row));
    assert_non_null(fast);
    assert_string_equal(gw_json_get(gw_json_get(fast, "order"), "subject")->valuestring, "a\"b\\c/d\n");
    cJSON_Delete(fast);
}

/* gw_strjoin / gw_i64toa / gw_hex_u64 write what snprintf would, truncation
 * included */
static void test_format(void **state)
{
    (void)state;
    char a[64], b[64];
    const int64_t vals[] = { 0, 1, -1, 9, 10, -10, 99, 100, 123456789, -987654321, INT64_MAX, INT64_MIN,
                             INT64_MAX - 1, INT64_MIN + 1, 1000000000000LL, -1000000000000LL };
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        size_t n = gw_i64toa(vals[i], a);
        snprintf(b, sizeof(b), "%lld", (long long)vals[i]);
        assert_string_equal(a, b);
        assert_int_equal(n, strlen(b));
    }
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < 200; i++, x = x * 6364136223846793005ull + 1442695040888963407ull) {
        gw_hex_u64(x >> (i % 64), 8, a);
        snprintf(b, sizeof(b), "%08x", (unsigned)((x >> (i % 64)) & 0xffffffffu));
        assert_string_equal(a, b);
        gw_hex_u64(x, 16, a);
        snprintf(b, sizeof(b), "%016llx", (unsigned long long)x);
        assert_string_equal(a, b);
    }
    const char *parts[] = { "channel=\"", "swiftpass", "\",op=\"", "pay", "\"" };
    char full[64];
    snprintf(full, sizeof(full), "channel=\"%s\",op=\"%s\"", "swiftpass", "pay");
    for (size_t n = 0; n <= strlen(full) + 2; n++) {
        memset(a, 'Z', sizeof(a));
        memset(b, 'Z', sizeof(b));
        size_t got = gw_strjoin(a, n, parts[0], parts[1], parts[2], parts[3], parts[4], NULL);
        snprintf(b, n, "%s", full);
        assert_memory_equal(a, b, sizeof(a)); /* nothing written past the end either */
        assert_int_equal(got, n == 0 ? 0 : (n - 1 < strlen(full) ? n - 1 : strlen(full)));
    }
    assert_int_equal(gw_strjoin(a, sizeof(a), NULL), 0);
    assert_string_equal(a, "");
}

int main(void)
{
    gw_json_alloc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generated_trees),
        cmocka_unit_test(test_fixed_cases),
        cmocka_unit_test(test_bounded),
        cmocka_unit_test(test_view),
        cmocka_unit_test(test_get),
        cmocka_unit_test(test_parse_generated),
        cmocka_unit_test(test_parse_cases),
        cmocka_unit_test(test_parse_ts),
        cmocka_unit_test(test_alloc_cache),
        cmocka_unit_test(test_alloc_threads),
        cmocka_unit_test(test_format),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    gw_json_alloc_trim();
    return failed;
}
