/*
 * test_crypto.c — core/crypto.c against independent results: published
 * vectors (RFC 1321, FIPS 180, RFC 4231, RFC 4648, the GCM specification,
 * WeChat Pay's v2 signing example) and OpenSSL/Node output stored in
 * test/fixtures/keys/ (see its README.md for how each file was made).
 *
 * Run from the repository root: fixtures are read by relative path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <mbedtls/md.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"

#define FIXTURES "test/fixtures/keys/"
#define BUF_MAX (1u << 20)

/* ---- helpers ---- */

typedef struct fixture {
    char *data; /* NUL-terminated */
    size_t len;
} fixture_t;

static fixture_t fixture(const char *name)
{
    char path[256];
    fixture_t fx = { NULL, 0 };
    FILE *f;
    long n = -1;

    snprintf(path, sizeof(path), FIXTURES "%s", name);
    f = fopen(path, "rb");
    if (f == NULL) fail_msg("cannot open %s (run the test from the repository root)", path);
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) fail_msg("cannot size %s", path);
    fx.data = malloc((size_t)n + 1);
    assert_non_null(fx.data);
    if (fread(fx.data, 1, (size_t)n, f) != (size_t)n) fail_msg("short read on %s", path);
    fclose(f);
    fx.data[n] = '\0';
    fx.len = (size_t)n;
    return fx;
}

static void fixture_free(fixture_t *fx)
{
    free(fx->data);
    fx->data = NULL;
}

/* Hex (upper or lower) -> bytes; returns the byte count. */
static size_t unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = strlen(hex) / 2;
    assert_true(n <= cap);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
    return n;
}

static void assert_hex(const uint8_t *bytes, size_t n, const char *expect, int upper)
{
    char hex[2 * 64 + 1];
    assert_true(n <= 64);
    gw_hex_encode(bytes, n, hex, upper);
    assert_string_equal(hex, expect);
}

static gw_rsa_key_t *load_private_fixture(const char *name)
{
    fixture_t fx = fixture(name);
    gw_rsa_key_t *key = NULL;
    assert_int_equal(gw_rsa_load_private(fx.data, fx.len, &key), GW_OK);
    assert_non_null(key);
    fixture_free(&fx);
    return key;
}

static gw_rsa_key_t *load_public_fixture(const char *name)
{
    fixture_t fx = fixture(name);
    gw_rsa_key_t *key = NULL;
    assert_int_equal(gw_rsa_load_public(fx.data, fx.len, &key), GW_OK);
    assert_non_null(key);
    fixture_free(&fx);
    return key;
}

/* The Base64 body of a one-object PEM fixture (armour lines dropped, line
 * breaks kept): the bare-Base64 DER form some channels hand out. */
static char *pem_body(const fixture_t *fx)
{
    const char *b = strstr(fx->data, "-----\n");
    const char *e = strstr(fx->data, "\n-----END");
    char *out;
    assert_non_null(b);
    assert_non_null(e);
    b += 6;
    assert_true(e > b);
    out = malloc((size_t)(e - b) + 1);
    assert_non_null(out);
    memcpy(out, b, (size_t)(e - b));
    out[e - b] = '\0';
    return out;
}

/* ---- hex, hashes, HMAC ---- */

static void test_hex(void **state)
{
    const uint8_t in[] = { 0x00, 0x9f, 0xa0, 0xff };
    char out[9];
    (void)state;
    gw_hex_encode(in, sizeof(in), out, 1);
    assert_string_equal(out, "009FA0FF");
    gw_hex_encode(in, sizeof(in), out, 0);
    assert_string_equal(out, "009fa0ff");
    gw_hex_encode(in, 0, out, 0);
    assert_string_equal(out, "");
}

static void test_hash_vectors(void **state)
{
    uint8_t md5[16], sha1[20], sha256[32];
    (void)state;
    /* RFC 1321 appendix A.5 */
    gw_md5("abc", 3, md5);
    assert_hex(md5, 16, "900150983cd24fb0d6963f7d28e17f72", 0);
    gw_md5("", 0, md5);
    assert_hex(md5, 16, "d41d8cd98f00b204e9800998ecf8427e", 0);
    /* FIPS 180-2 appendix A.1 / B.1 */
    gw_sha1("abc", 3, sha1);
    assert_hex(sha1, 20, "a9993e364706816aba3e25717850c26c9cd0d89d", 0);
    gw_sha256("abc", 3, sha256);
    assert_hex(sha256, 32, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", 0);
    /* FIPS 180-2 B.2, two blocks */
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    gw_sha256(two, strlen(two), sha256);
    assert_hex(sha256, 32, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1", 0);
    gw_sha256(NULL, 0, sha256);
    assert_hex(sha256, 32, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 0);
}

static void test_hmac_rfc4231(void **state)
{
    uint8_t mac[32], key[131];
    (void)state;
    /* test case 2 */
    const char *data2 = "what do ya want for nothing?";
    gw_hmac_sha256("Jefe", 4, data2, strlen(data2), mac);
    assert_hex(mac, 32, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", 0);
    /* test case 6: a key longer than the block is hashed first */
    const char *data6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    memset(key, 0xaa, sizeof(key));
    gw_hmac_sha256(key, sizeof(key), data6, strlen(data6), mac);
    assert_hex(mac, 32, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54", 0);
    /* test case 1: 20 bytes of 0x0b, "Hi There" */
    memset(key, 0x0b, 20);
    gw_hmac_sha256(key, 20, "Hi There", 8, mac);
    assert_hex(mac, 32, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7", 0);
}

/* The cached key pads: many keys in turn (more than the cache holds, so
 * slots are reused), each part split, against mbedtls_md_hmac. */
static void test_hmac_key_cache(void **state)
{
    (void)state;
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    char keys[12][40];
    for (int i = 0; i < 12; i++) snprintf(keys[i], sizeof(keys[i]), "secret-%d-%0*d", i, i + 1, i);
    const char *msg = "POST\n/v1/orders\n1700000000\nabc\n{\"amount\":1}";
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 12; i++) {
            int k = (i * 7 + round) % 12;
            uint8_t want[32], got[32], whole[32];
            assert_int_equal(mbedtls_md_hmac(md, (const unsigned char *)keys[k], strlen(keys[k]),
                                             (const unsigned char *)msg, strlen(msg), want), 0);
            gw_str_t parts[] = { { msg, 5 }, { msg + 5, 0 }, { msg + 5, strlen(msg) - 5 } };
            gw_hmac_sha256_v(keys[k], strlen(keys[k]), parts, 3, got);
            gw_hmac_sha256(keys[k], strlen(keys[k]), msg, strlen(msg), whole);
            assert_memory_equal(got, want, 32);
            assert_memory_equal(whole, want, 32);
        }
    }
}

/* WeChat Pay API v2 "安全规范" signing example: MD5 and HMAC-SHA256 sign types. */
static void test_wechat_v2_example(void **state)
{
    const char *s = "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100"
                    "&nonce_str=ibuaiVcKdpRxkhJA&key=192006250b4c09247ec02edce69f6a2d";
    const char *key = "192006250b4c09247ec02edce69f6a2d";
    uint8_t md5[16], mac[32];
    (void)state;
    gw_md5(s, strlen(s), md5);
    assert_hex(md5, 16, "9A0A8659F005D6984697E2CA0A9CF3B7", 1);
    gw_hmac_sha256(key, strlen(key), s, strlen(s), mac);
    assert_hex(mac, 32, "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6", 1);
}

/* ---- Base64 ---- */

static const struct {
    const char *plain, *b64;
} rfc4648[] = {
    { "", "" },         { "f", "Zg==" },        { "fo", "Zm8=" },       { "foo", "Zm9v" },
    { "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" },
};

static void test_base64_rfc4648(void **state)
{
    gw_buf_t b;
    (void)state;
    for (size_t i = 0; i < GW_ARRAY_SIZE(rfc4648); i++) {
        gw_buf_init(&b, BUF_MAX);
        assert_int_equal(gw_base64_encode((const uint8_t *)rfc4648[i].plain,
                                          strlen(rfc4648[i].plain), &b), GW_OK);
        assert_non_null(b.data);
        assert_string_equal(b.data, rfc4648[i].b64);
        gw_buf_free(&b);

        gw_buf_init(&b, BUF_MAX);
        assert_int_equal(gw_base64_decode(rfc4648[i].b64, strlen(rfc4648[i].b64), &b), GW_OK);
        assert_int_equal(b.len, strlen(rfc4648[i].plain));
        assert_memory_equal(b.data, rfc4648[i].plain, b.len);
        gw_buf_free(&b);
    }
    /* outputs are appended, not replaced */
    gw_buf_init(&b, BUF_MAX);
    assert_int_equal(gw_buf_appends(&b, "x="), GW_OK);
    assert_int_equal(gw_base64_encode((const uint8_t *)"foob", 4, &b), GW_OK);
    assert_int_equal(gw_base64_decode("YmFy", 4, &b), GW_OK);
    assert_string_equal(b.data, "x=Zm9vYg==bar");
    gw_buf_free(&b);
}

static void test_base64_strict(void **state)
{
    static const char *bad[] = {
        "Zm9",      /* incomplete quantum */
        "Zm9vY",    /* incomplete quantum */
        "Zm=v",     /* data after padding */
        "Z===",     /* too much padding */
        "====",     /* padding only */
        "Zm9v=",    /* stray padding */
        "Zg==Zg==", /* data after the padded quantum */
        "Zg===",    /* padding after the padded quantum */
        "Zh==",     /* non-zero bits under the padding (not canonical) */
        "Zm9=",     /* likewise */
        "Zm9v!",    /* outside the alphabet */
        "Zm9-",     /* URL-safe alphabet is not accepted */
        "Zm9_",
        "Zm\x009v", /* NUL is not whitespace */
    };
    static const size_t badlen[] = { 3, 5, 4, 4, 4, 5, 8, 5, 4, 4, 5, 4, 4, 5 };
    gw_buf_t b;
    (void)state;
    for (size_t i = 0; i < GW_ARRAY_SIZE(bad); i++) {
        gw_buf_init(&b, BUF_MAX);
        assert_int_equal(gw_buf_appends(&b, "keep"), GW_OK);
        if (gw_base64_decode(bad[i], badlen[i], &b) != GW_EPARSE)
            fail_msg("bad Base64 #%zu accepted", i);
        assert_int_equal(b.len, 4);
        assert_string_equal(b.data, "keep");
        gw_buf_free(&b);
    }
    /* ASCII whitespace anywhere is skipped (PEM-like line breaks) */
    const char *ws = " Zm9v\r\nYm\tFy\n \v\f";
    gw_buf_init(&b, BUF_MAX);
    assert_int_equal(gw_base64_decode(ws, strlen(ws), &b), GW_OK);
    assert_int_equal(b.len, 6);
    assert_memory_equal(b.data, "foobar", 6);
    gw_buf_free(&b);
    /* "Zg= =" : whitespace inside the padding is whitespace too */
    gw_buf_init(&b, BUF_MAX);
    assert_int_equal(gw_base64_decode("Zg= =\n", 6, &b), GW_OK);
    assert_int_equal(b.len, 1);
    assert_int_equal(b.data[0], 'f');
    gw_buf_free(&b);
}

/* Large vector: OpenSSL's DER and coreutils' base64 of it. */
static void test_base64_der_fixture(void **state)
{
    fixture_t der = fixture("rsa_priv_pkcs8.der");
    fixture_t b64 = fixture("rsa_priv_pkcs8.b64");
    gw_buf_t b;
    (void)state;
    gw_buf_init(&b, BUF_MAX);
    assert_int_equal(gw_base64_encode((const uint8_t *)der.data, der.len, &b), GW_OK);
    assert_int_equal(b.len, b64.len);
    assert_string_equal(b.data, b64.data);
    gw_buf_reset(&b);
    assert_int_equal(gw_base64_decode(b64.data, b64.len, &b), GW_OK);
    assert_int_equal(b.len, der.len);
    assert_memory_equal(b.data, der.data, der.len);
    gw_buf_free(&b);
    fixture_free(&der);
    fixture_free(&b64);
}

static void test_base64_toobig(void **state)
{
    gw_buf_t b;
    (void)state;
    gw_buf_init(&b, 8);
    assert_int_equal(gw_buf_appends(&b, "ab"), GW_OK);
    assert_int_equal(gw_base64_encode((const uint8_t *)"foob", 4, &b), GW_ETOOBIG); /* 2+8 > 8 */
    assert_int_equal(b.len, 2);
    assert_string_equal(b.data, "ab");
    assert_int_equal(gw_base64_encode((const uint8_t *)"foo", 3, &b), GW_OK); /* 2+4 */
    assert_string_equal(b.data, "abZm9v");
    assert_int_equal(gw_base64_decode("Zm9v", 4, &b), GW_ETOOBIG); /* 6+3 > 8 */
    assert_int_equal(b.len, 6);
    assert_string_equal(b.data, "abZm9v");
    gw_buf_free(&b);
}

/* ---- URL encoding ---- */

static void test_url_encode(void **state)
{
    static const struct {
        const char *in, *out;
    } v[] = {
        { "", "" },
        { "AZaz09-._~", "AZaz09-._~" },
        { "Hello World!", "Hello%20World%21" },
        { "a+b=c&d/e?f#g", "a%2Bb%3Dc%26d%2Fe%3Ff%23g" },
        { "*'()", "%2A%27%28%29" },
        { "\xe4\xb8\xad\xe6\x96\x87", "%E4%B8%AD%E6%96%87" }, /* "中文" in UTF-8 */
        { "\x7f\x80\xff", "%7F%80%FF" },
    };
    gw_buf_t b;
    (void)state;
    for (size_t i = 0; i < GW_ARRAY_SIZE(v); i++) {
        gw_buf_init(&b, BUF_MAX);
        assert_int_equal(gw_url_encode(v[i].in, strlen(v[i].in), &b), GW_OK);
        assert_non_null(b.data);
        assert_string_equal(b.data, v[i].out);
        gw_buf_free(&b);
    }
    /* embedded NUL, and a long input across the internal chunking */
    gw_buf_init(&b, BUF_MAX);
    assert_int_equal(gw_url_encode("a\0b", 3, &b), GW_OK);
    assert_string_equal(b.data, "a%00b");
    gw_buf_reset(&b);
    char big[1000];
    memset(big, ' ', sizeof(big));
    assert_int_equal(gw_url_encode(big, sizeof(big), &b), GW_OK);
    assert_int_equal(b.len, 3000);
    for (size_t i = 0; i < b.len; i += 3) assert_memory_equal(b.data + i, "%20", 3);
    gw_buf_free(&b);
    /* the maximum is respected and the buffer left as it was */
    gw_buf_init(&b, 5);
    assert_int_equal(gw_buf_appends(&b, "k"), GW_OK);
    assert_int_equal(gw_url_encode("a b", 3, &b), GW_ETOOBIG); /* 1+5 > 5 */
    assert_string_equal(b.data, "k");
    gw_buf_free(&b);
}

static void test_url_decode(void **state)
{
    gw_buf_t b;
    (void)state;
    gw_buf_init(&b, BUF_MAX);
    const char *s = "%E4%b8%ad%e6%96%87+a%2Bb%20c~";
    assert_int_equal(gw_url_decode(s, strlen(s), 1, &b), GW_OK);
    assert_string_equal(b.data, "\xe4\xb8\xad\xe6\x96\x87 a+b c~");
    gw_buf_reset(&b);
    assert_int_equal(gw_url_decode(s, strlen(s), 0, &b), GW_OK);
    assert_string_equal(b.data, "\xe4\xb8\xad\xe6\x96\x87+a+b c~");
    gw_buf_reset(&b);
    assert_int_equal(gw_url_decode("%00x", 4, 0, &b), GW_OK);
    assert_int_equal(b.len, 2);
    assert_memory_equal(b.data, "\0x", 2);
    gw_buf_reset(&b);
    assert_int_equal(gw_url_decode("", 0, 0, &b), GW_OK);
    assert_non_null(b.data);
    assert_string_equal(b.data, "");
    gw_buf_free(&b);

    static const char *bad[] = { "%", "%4", "ab%4", "%G0", "%0g", "%%41", "a%2", "%-1", "% 1" };
    for (size_t i = 0; i < GW_ARRAY_SIZE(bad); i++) {
        gw_buf_init(&b, BUF_MAX);
        assert_int_equal(gw_buf_appends(&b, "keep"), GW_OK);
        if (gw_url_decode(bad[i], strlen(bad[i]), 1, &b) != GW_EPARSE)
            fail_msg("bad escape \"%s\" accepted", bad[i]);
        assert_int_equal(b.len, 4);
        assert_string_equal(b.data, "keep");
        gw_buf_free(&b);
    }
    /* a bad escape after more than one internal chunk still rolls back */
    char big[700];
    memset(big, 'x', sizeof(big));
    big[sizeof(big) - 1] = '%';
    gw_buf_init(&b, BUF_MAX);
    assert_int_equal(gw_url_decode(big, sizeof(big), 0, &b), GW_EPARSE);
    assert_int_equal(b.len, 0);
    gw_buf_free(&b);
}

/* ---- RSA ---- */

/* Every accepted private-key form must give exactly OpenSSL's signature
 * (PKCS#1 v1.5 is deterministic). */
static void test_rsa_sign_matches_openssl(void **state)
{
    static const char *forms[] = { "rsa_priv_pkcs8.pem", "rsa_priv_pkcs1.pem",
                                   "rsa_priv_pkcs8.b64", "rsa_priv_pkcs1.b64" };
    fixture_t msg = fixture("message.txt");
    fixture_t s256 = fixture("sig_sha256.b64");
    fixture_t s1 = fixture("sig_sha1.b64");
    gw_buf_t b;
    (void)state;
    for (size_t i = 0; i < GW_ARRAY_SIZE(forms); i++) {
        gw_rsa_key_t *key = load_private_fixture(forms[i]);
        gw_buf_init(&b, BUF_MAX);
        assert_int_equal(gw_rsa_sign(key, GW_HASH_SHA256, msg.data, msg.len, &b), GW_OK);
        assert_string_equal(b.data, s256.data);
        gw_buf_reset(&b);
        assert_int_equal(gw_rsa_sign(key, GW_HASH_SHA1, msg.data, msg.len, &b), GW_OK);
        assert_string_equal(b.data, s1.data);
        gw_buf_free(&b);

        /* raw variant: 256 bytes, whose Base64 is OpenSSL's */
        gw_buf_t raw, enc;
        gw_buf_init(&raw, BUF_MAX);
        gw_buf_init(&enc, BUF_MAX);
        assert_int_equal(gw_rsa_sign_raw(key, GW_HASH_SHA256, msg.data, msg.len, &raw), GW_OK);
        assert_int_equal(raw.len, 256);
        assert_int_equal(gw_base64_encode((const uint8_t *)raw.data, raw.len, &enc), GW_OK);
        assert_string_equal(enc.data, s256.data);
        gw_buf_free(&raw);
        gw_buf_free(&enc);
        gw_rsa_free(key);
    }
    fixture_free(&msg);
    fixture_free(&s256);
    fixture_free(&s1);
}

static void test_rsa_verify_openssl(void **state)
{
    static const char *forms[] = { "rsa_pub_spki.pem", "rsa_pub_pkcs1.pem", "rsa_cert.pem",
                                   "rsa_pub_spki.b64" };
    fixture_t msg = fixture("message.txt");
    fixture_t s256 = fixture("sig_sha256.b64");
    fixture_t s1 = fixture("sig_sha1.b64");
    (void)state;
    for (size_t i = 0; i <= GW_ARRAY_SIZE(forms); i++) {
        /* the last round verifies with the private key's public half */
        gw_rsa_key_t *key = i < GW_ARRAY_SIZE(forms) ? load_public_fixture(forms[i])
                                                     : load_private_fixture("rsa_priv_pkcs8.pem");
        assert_int_equal(gw_rsa_verify(key, GW_HASH_SHA256, msg.data, msg.len, s256.data, s256.len),
                         GW_OK);
        assert_int_equal(gw_rsa_verify(key, GW_HASH_SHA1, msg.data, msg.len, s1.data, s1.len),
                         GW_OK);
        /* wrong hash */
        assert_int_equal(gw_rsa_verify(key, GW_HASH_SHA1, msg.data, msg.len, s256.data, s256.len),
                         GW_ESIGN);
        /* tampered message: one byte changed, one byte dropped */
        char *m = malloc(msg.len);
        assert_non_null(m);
        memcpy(m, msg.data, msg.len);
        m[10] ^= 1;
        assert_int_equal(gw_rsa_verify(key, GW_HASH_SHA256, m, msg.len, s256.data, s256.len),
                         GW_ESIGN);
        free(m);
        assert_int_equal(gw_rsa_verify(key, GW_HASH_SHA256, msg.data, msg.len - 1, s256.data,
                                       s256.len), GW_ESIGN);
        /* tampered signature: one Base64 character changed */
        char *s = malloc(s256.len + 1);
        assert_non_null(s);
        memcpy(s, s256.data, s256.len + 1);
        s[20] = s[20] == 'A' ? 'B' : 'A';
        assert_int_equal(gw_rsa_verify(key, GW_HASH_SHA256, msg.data, msg.len, s, s256.len),
                         GW_ESIGN);
        /* not Base64, truncated, empty */
        s[20] = '*';
        assert_int_equal(gw_rsa_verify(key, GW_HASH_SHA256, msg.data, msg.len, s, s256.len),
                         GW_ESIGN);
        free(s);
        assert_int_equal(gw_rsa_verify(key, GW_HASH_SHA256, msg.data, msg.len, s256.data,
                                       s256.len - 4), GW_ESIGN);
        assert_int_equal(gw_rsa_verify(key, GW_HASH_SHA256, msg.data, msg.len, "", 0), GW_ESIGN);
        /* a bad hash selector is a caller bug, not a bad signature */
        assert_int_equal(gw_rsa_verify(key, (enum gw_hash)7, msg.data, msg.len, s256.data,
                                       s256.len), GW_EINVAL);
        gw_rsa_free(key);
    }
    fixture_free(&msg);
    fixture_free(&s256);
    fixture_free(&s1);
}

static void test_rsa_verify_raw_and_whitespace(void **state)
{
    fixture_t msg = fixture("message.txt");
    fixture_t s256 = fixture("sig_sha256.b64");
    gw_rsa_key_t *key = load_public_fixture("rsa_cert.pem");
    gw_buf_t raw, wrapped;
    (void)state;
    gw_buf_init(&raw, BUF_MAX);
    assert_int_equal(gw_base64_decode(s256.data, s256.len, &raw), GW_OK);
    assert_int_equal(raw.len, 256);
    assert_int_equal(gw_rsa_verify_raw(key, GW_HASH_SHA256, msg.data, msg.len,
                                       (const uint8_t *)raw.data, raw.len), GW_OK);
    raw.data[255] ^= 0x01; /* flip one bit of the signature */
    assert_int_equal(gw_rsa_verify_raw(key, GW_HASH_SHA256, msg.data, msg.len,
                                       (const uint8_t *)raw.data, raw.len), GW_ESIGN);
    raw.data[255] ^= 0x01;
    assert_int_equal(gw_rsa_verify_raw(key, GW_HASH_SHA256, msg.data, msg.len,
                                       (const uint8_t *)raw.data, raw.len - 1), GW_ESIGN);
    /* a leading zero byte makes it the wrong length even if the value matches */
    uint8_t longer[257];
    longer[0] = 0;
    memcpy(longer + 1, raw.data, 256);
    assert_int_equal(gw_rsa_verify_raw(key, GW_HASH_SHA256, msg.data, msg.len, longer, 257),
                     GW_ESIGN);
    gw_buf_free(&raw);

    /* the signature wrapped in 64-column lines, as some channels send it */
    gw_buf_init(&wrapped, BUF_MAX);
    for (size_t i = 0; i < s256.len; i += 64) {
        size_t n = s256.len - i < 64 ? s256.len - i : 64;
        assert_int_equal(gw_buf_append(&wrapped, s256.data + i, n), GW_OK);
        assert_int_equal(gw_buf_appends(&wrapped, "\r\n"), GW_OK);
    }
    assert_int_equal(gw_rsa_verify(key, GW_HASH_SHA256, msg.data, msg.len, wrapped.data,
                                   wrapped.len), GW_OK);
    gw_buf_free(&wrapped);
    gw_rsa_free(key);
    fixture_free(&msg);
    fixture_free(&s256);
}

/* The out pointer starts as garbage and must come back NULL. */
static char not_a_key;

/* Bare Base64 of RSAPublicKey DER and of certificate DER (the PEM bodies of
 * OpenSSL's files) load too and verify OpenSSL's signature. */
static void test_rsa_public_der_forms(void **state)
{
    static const char *pems[] = { "rsa_pub_pkcs1.pem", "rsa_cert.pem" };
    fixture_t msg = fixture("message.txt");
    fixture_t s256 = fixture("sig_sha256.b64");
    (void)state;
    for (size_t i = 0; i < GW_ARRAY_SIZE(pems); i++) {
        fixture_t fx = fixture(pems[i]);
        char *body = pem_body(&fx);
        gw_rsa_key_t *key = NULL;
        assert_int_equal(gw_rsa_load_public(body, strlen(body), &key), GW_OK);
        assert_int_equal(gw_rsa_verify(key, GW_HASH_SHA256, msg.data, msg.len, s256.data,
                                       s256.len), GW_OK);
        gw_rsa_free(key);
        free(body);
        fixture_free(&fx);
    }
    fixture_free(&msg);
    fixture_free(&s256);
}

static void expect_private_rejected(const char *text, size_t len, gw_err_t want)
{
    gw_rsa_key_t *key = (gw_rsa_key_t *)&not_a_key;
    assert_int_equal(gw_rsa_load_private(text, len, &key), want);
    assert_null(key);
}

static void expect_public_rejected(const char *text, size_t len, gw_err_t want)
{
    gw_rsa_key_t *key = (gw_rsa_key_t *)&not_a_key;
    assert_int_equal(gw_rsa_load_public(text, len, &key), want);
    assert_null(key);
}

static void test_rsa_rejects_non_rsa_and_garbage(void **state)
{
    static const char *priv_bad[] = { "ec_priv_pkcs8.pem",      "ec_priv_pkcs8.b64",
                                      "rsa_pub_spki.pem",       "rsa_pub_spki.b64",
                                      "rsa_cert.pem",           "rsa_priv_encrypted.pem",
                                      "rsa512_priv.pem" };
    static const char *pub_bad[] = { "ec_pub_spki.pem", "ec_cert.pem", "ec_priv_pkcs8.pem",
                                     "rsa_priv_pkcs8.pem" };
    (void)state;
    for (size_t i = 0; i < GW_ARRAY_SIZE(priv_bad); i++) {
        fixture_t fx = fixture(priv_bad[i]);
        expect_private_rejected(fx.data, fx.len, GW_EKEY);
        fixture_free(&fx);
    }
    for (size_t i = 0; i < GW_ARRAY_SIZE(pub_bad); i++) {
        fixture_t fx = fixture(pub_bad[i]);
        expect_public_rejected(fx.data, fx.len, GW_EKEY);
        fixture_free(&fx);
    }
    expect_private_rejected("", 0, GW_EKEY);
    expect_private_rejected("not a key at all", 16, GW_EKEY);
    expect_private_rejected("Zm9vYmFy", 8, GW_EKEY); /* valid Base64, not DER */
    const char *pem = "-----BEGIN PRIVATE KEY-----\nZm9v\n-----END PRIVATE KEY-----\n";
    expect_private_rejected(pem, strlen(pem), GW_EKEY);
    expect_public_rejected("", 0, GW_EKEY);
    expect_public_rejected("@@@@", 4, GW_EKEY);

    /* a truncated private key (PEM cut in the middle) */
    fixture_t fx = fixture("rsa_priv_pkcs8.pem");
    expect_private_rejected(fx.data, fx.len / 2, GW_EKEY);
    fixture_free(&fx);

    /* signing needs the private half */
    gw_rsa_key_t *pub = load_public_fixture("rsa_pub_spki.pem");
    gw_buf_t b;
    gw_buf_init(&b, BUF_MAX);
    assert_int_equal(gw_rsa_sign(pub, GW_HASH_SHA256, "x", 1, &b), GW_EKEY);
    assert_int_equal(gw_rsa_sign_raw(pub, GW_HASH_SHA256, "x", 1, &b), GW_EKEY);
    assert_int_equal(b.len, 0);
    gw_buf_free(&b);
    gw_rsa_free(pub);
    gw_rsa_free(NULL);
}

static void test_rsa_sign_toobig(void **state)
{
    gw_rsa_key_t *key = load_private_fixture("rsa_priv_pkcs8.pem");
    gw_buf_t b;
    (void)state;
    gw_buf_init(&b, 344 + 2); /* 2 + 344 fits exactly */
    assert_int_equal(gw_buf_appends(&b, "s="), GW_OK);
    assert_int_equal(gw_rsa_sign(key, GW_HASH_SHA256, "x", 1, &b), GW_OK);
    assert_int_equal(b.len, 346);
    assert_int_equal(gw_rsa_sign(key, GW_HASH_SHA256, "x", 1, &b), GW_ETOOBIG);
    assert_int_equal(b.len, 346);
    gw_buf_free(&b);
    gw_buf_init(&b, 255);
    assert_int_equal(gw_rsa_sign_raw(key, GW_HASH_SHA1, "x", 1, &b), GW_ETOOBIG);
    assert_int_equal(b.len, 0);
    gw_buf_free(&b);
    gw_rsa_free(key);
}

static void test_x509_serial(void **state)
{
    fixture_t cert = fixture("rsa_cert.pem");
    fixture_t serial = fixture("rsa_cert.serial");
    fixture_t ec = fixture("ec_cert.pem");
    fixture_t ecserial = fixture("ec_cert.serial");
    char out[80];
    (void)state;
    /* OpenSSL prints 9F1C...CAFE: the DER 00 sign byte is dropped */
    assert_int_equal(gw_x509_serial(cert.data, cert.len, out, sizeof(out)), GW_OK);
    assert_string_equal(out, serial.data);
    assert_int_equal(strlen(out), 40);
    assert_string_equal(out, "9F1C0FFEE0DDF00D5EEDBA5EBA11AD5C0DE0CAFE");
    /* exactly 41 bytes is enough, 40 is not */
    assert_int_equal(gw_x509_serial(cert.data, cert.len, out, 41), GW_OK);
    assert_int_equal(gw_x509_serial(cert.data, cert.len, out, 40), GW_ETOOBIG);
    /* a one-byte serial */
    assert_int_equal(gw_x509_serial(ec.data, ec.len, out, sizeof(out)), GW_OK);
    assert_string_equal(out, ecserial.data);
    assert_string_equal(out, "01");
    /* the bare Base64 of the same certificate's DER */
    char *body = pem_body(&cert);
    assert_int_equal(gw_x509_serial(body, strlen(body), out, sizeof(out)), GW_OK);
    assert_string_equal(out, serial.data);
    free(body);
    /* not a certificate */
    assert_int_equal(gw_x509_serial("hello", 5, out, sizeof(out)), GW_EPARSE);
    assert_string_equal(out, "");
    fixture_t key = fixture("rsa_pub_spki.pem");
    assert_int_equal(gw_x509_serial(key.data, key.len, out, sizeof(out)), GW_EPARSE);
    fixture_free(&key);
    fixture_free(&cert);
    fixture_free(&serial);
    fixture_free(&ec);
    fixture_free(&ecserial);
}

/* ---- AES-256-GCM ---- */

/* The GCM specification (McGrew & Viega), test cases 16 and 13. */
static void test_gcm_spec_vectors(void **state)
{
    uint8_t key[32], iv[12], p[64], a[20], ct[80];
    size_t plen, alen, ctlen;
    gw_buf_t b;
    (void)state;
    unhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", key, sizeof(key));
    unhex("cafebabefacedbaddecaf888", iv, sizeof(iv));
    plen = unhex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
                 "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39", p, sizeof(p));
    alen = unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2", a, sizeof(a));
    ctlen = unhex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
                  "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
                  "76fc6ece0f4e1768cddf8853bb2d551b", ct, sizeof(ct));
    assert_int_equal(ctlen, plen + 16);

    gw_buf_init(&b, BUF_MAX);
    assert_int_equal(gw_aes256gcm_encrypt(key, iv, 12, a, alen, p, plen, &b), GW_OK);
    assert_int_equal(b.len, ctlen);
    assert_memory_equal(b.data, ct, ctlen);
    gw_buf_reset(&b);
    assert_int_equal(gw_aes256gcm_decrypt(key, iv, 12, a, alen, ct, ctlen, &b), GW_OK);
    assert_int_equal(b.len, plen);
    assert_memory_equal(b.data, p, plen);
    gw_buf_free(&b);

    /* test case 13: zero key and IV, no plaintext, no AAD: only the tag */
    memset(key, 0, sizeof(key));
    memset(iv, 0, sizeof(iv));
    unhex("530f8afbc74536b9a963b4f1c4cb738b", ct, sizeof(ct));
    gw_buf_init(&b, BUF_MAX);
    assert_int_equal(gw_aes256gcm_encrypt(key, iv, 12, NULL, 0, NULL, 0, &b), GW_OK);
    assert_int_equal(b.len, 16);
    assert_memory_equal(b.data, ct, 16);
    gw_buf_reset(&b);
    assert_int_equal(gw_aes256gcm_decrypt(key, iv, 12, NULL, 0, ct, 16, &b), GW_OK);
    assert_int_equal(b.len, 0);
    ct[0] ^= 0x80;
    assert_int_equal(gw_aes256gcm_decrypt(key, iv, 12, NULL, 0, ct, 16, &b), GW_ESIGN);
    gw_buf_free(&b);
}

/* A WeChat Pay v3 notify-shaped vector from Node's crypto (README.md):
 * resource.ciphertext is Base64(ciphertext || tag). */
static const char wx_key[] = "paygateTESTONLYapiv3key012345678";
static const char wx_nonce[] = "nonceTEST012";
static const char wx_aad[] = "transaction";
static const char wx_plain[] = "{\"mchid\":\"1900000100\",\"out_trade_no\":\"PG20240101000001\","
                               "\"trade_state\":\"SUCCESS\",\"attach\":\"\xe6\xb5\x8b\xe8\xaf\x95\"}";
static const char wx_ct_b64[] = "jsvuNT7nJIQaFDbSjCKuXBjh3C2pr55mmj+Mdxv1m9gQo7x28Z25XQx8GXqSDJe0"
                                "sNfhymy8nAACa+1xXn4c3+KnxvXI9e6eFiMRXj2ha/ukbkFEzmlV3yBd6CgISJW6"
                                "tilawy1CIAMXqpylu9v5s50d";

static void test_gcm_wechat_node_vector(void **state)
{
    const uint8_t *key = (const uint8_t *)wx_key;
    const uint8_t *iv = (const uint8_t *)wx_nonce;
    const uint8_t *aad = (const uint8_t *)wx_aad;
    gw_buf_t ct, b;
    (void)state;
    assert_int_equal(sizeof(wx_key) - 1, 32);
    gw_buf_init(&ct, BUF_MAX);
    assert_int_equal(gw_base64_decode(wx_ct_b64, strlen(wx_ct_b64), &ct), GW_OK);
    assert_int_equal(ct.len, strlen(wx_plain) + 16);

    gw_buf_init(&b, BUF_MAX);
    assert_int_equal(gw_buf_appends(&b, "P:"), GW_OK); /* appended after what is there */
    assert_int_equal(gw_aes256gcm_decrypt(key, iv, 12, aad, strlen(wx_aad),
                                          (const uint8_t *)ct.data, ct.len, &b), GW_OK);
    assert_int_equal(b.len, 2 + strlen(wx_plain));
    assert_memory_equal(b.data, "P:", 2);
    assert_memory_equal(b.data + 2, wx_plain, strlen(wx_plain));
    assert_int_equal(b.data[b.len], '\0');
    gw_buf_free(&b);

    gw_buf_init(&b, BUF_MAX);
    assert_int_equal(gw_aes256gcm_encrypt(key, iv, 12, aad, strlen(wx_aad),
                                          (const uint8_t *)wx_plain, strlen(wx_plain), &b), GW_OK);
    assert_int_equal(b.len, ct.len);
    assert_memory_equal(b.data, ct.data, ct.len);
    gw_buf_free(&b);

    /* tampering anywhere fails authentication and appends nothing */
    uint8_t *t = malloc(ct.len);
    assert_non_null(t);
    const size_t spots[] = { 0, ct.len / 2, ct.len - 17, ct.len - 16, ct.len - 1 };
    for (size_t i = 0; i < GW_ARRAY_SIZE(spots); i++) {
        memcpy(t, ct.data, ct.len);
        t[spots[i]] ^= 0x01;
        gw_buf_init(&b, BUF_MAX);
        assert_int_equal(gw_buf_appends(&b, "keep"), GW_OK);
        assert_int_equal(gw_aes256gcm_decrypt(key, iv, 12, aad, strlen(wx_aad), t, ct.len, &b),
                         GW_ESIGN);
        assert_int_equal(b.len, 4);
        assert_string_equal(b.data, "keep");
        gw_buf_free(&b);
    }
    free(t);
    const uint8_t *c = (const uint8_t *)ct.data;
    gw_buf_init(&b, BUF_MAX);
    /* wrong AAD, wrong nonce, wrong key, truncated, too short for a tag */
    assert_int_equal(gw_aes256gcm_decrypt(key, iv, 12, (const uint8_t *)"certificate", 11, c,
                                          ct.len, &b), GW_ESIGN);
    assert_int_equal(gw_aes256gcm_decrypt(key, (const uint8_t *)"nonceTEST013", 12, aad,
                                          strlen(wx_aad), c, ct.len, &b), GW_ESIGN);
    uint8_t k2[32];
    memcpy(k2, key, 32);
    k2[31] ^= 1;
    assert_int_equal(gw_aes256gcm_decrypt(k2, iv, 12, aad, strlen(wx_aad), c, ct.len, &b),
                     GW_ESIGN);
    assert_int_equal(gw_aes256gcm_decrypt(key, iv, 12, aad, strlen(wx_aad), c, ct.len - 1, &b),
                     GW_ESIGN);
    assert_int_equal(gw_aes256gcm_decrypt(key, iv, 12, aad, strlen(wx_aad), c, 15, &b), GW_ESIGN);
    assert_int_equal(b.len, 0);
    /* an empty nonce is a caller error */
    assert_int_equal(gw_aes256gcm_decrypt(key, iv, 0, aad, strlen(wx_aad), c, ct.len, &b),
                     GW_EINVAL);
    assert_int_equal(gw_aes256gcm_encrypt(key, iv, 0, NULL, 0, c, 1, &b), GW_EINVAL);
    gw_buf_free(&b);

    /* maxima: plaintext + tag must fit, and nothing is left on failure */
    gw_buf_init(&b, strlen(wx_plain) + 15);
    assert_int_equal(gw_aes256gcm_encrypt(key, iv, 12, aad, strlen(wx_aad),
                                          (const uint8_t *)wx_plain, strlen(wx_plain), &b),
                     GW_ETOOBIG);
    assert_int_equal(b.len, 0);
    gw_buf_free(&b);
    gw_buf_init(&b, strlen(wx_plain) - 1);
    assert_int_equal(gw_aes256gcm_decrypt(key, iv, 12, aad, strlen(wx_aad), c, ct.len, &b),
                     GW_ETOOBIG);
    assert_int_equal(b.len, 0);
    gw_buf_free(&b);
    gw_buf_free(&ct);
}

/* ---- concurrency: one key, many threads ---- */

#define THREADS 4
#define ROUNDS 200

struct shared {
    gw_rsa_key_t *priv, *pub;
    fixture_t msg, s256, s1;
};

struct worker {
    struct shared *sh;
    int id;
    int ok, bad;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct shared *sh = w->sh;
    gw_buf_t b;

    gw_buf_init(&b, 4096);
    for (int i = 0; i < ROUNDS; i++) {
        int sha1 = (i + w->id) & 1;
        enum gw_hash h = sha1 ? GW_HASH_SHA1 : GW_HASH_SHA256;
        const fixture_t *want = sha1 ? &sh->s1 : &sh->s256;
        int good = 1;

        gw_buf_reset(&b);
        good &= gw_rsa_sign(sh->priv, h, sh->msg.data, sh->msg.len, &b) == GW_OK;
        good &= b.len == want->len && memcmp(b.data, want->data, b.len) == 0;
        good &= gw_rsa_verify(sh->pub, h, sh->msg.data, sh->msg.len, want->data, want->len) == GW_OK;
        good &= gw_rsa_verify(sh->priv, h, sh->msg.data, sh->msg.len, b.data, b.len) == GW_OK;
        /* and a wrong message must still fail under contention */
        good &= gw_rsa_verify(sh->pub, h, sh->msg.data, sh->msg.len - 1, want->data,
                              want->len) == GW_ESIGN;
        if (good)
            w->ok++;
        else
            w->bad++;
    }
    gw_buf_free(&b);
    return NULL;
}

static void test_rsa_concurrent(void **state)
{
    struct shared sh;
    struct worker w[THREADS];
    pthread_t tid[THREADS];
    (void)state;
    sh.priv = load_private_fixture("rsa_priv_pkcs8.pem");
    sh.pub = load_public_fixture("rsa_cert.pem");
    sh.msg = fixture("message.txt");
    sh.s256 = fixture("sig_sha256.b64");
    sh.s1 = fixture("sig_sha1.b64");
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){ &sh, i, 0, 0 };
        assert_int_equal(pthread_create(&tid[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) assert_int_equal(pthread_join(tid[i], NULL), 0);
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(w[i].bad, 0);
        assert_int_equal(w[i].ok, ROUNDS);
    }
    gw_rsa_free(sh.priv);
    gw_rsa_free(sh.pub);
    fixture_free(&sh.msg);
    fixture_free(&sh.s256);
    fixture_free(&sh.s1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hex),
        cmocka_unit_test(test_hash_vectors),
        cmocka_unit_test(test_hmac_rfc4231),
        cmocka_unit_test(test_hmac_key_cache),
        cmocka_unit_test(test_wechat_v2_example),
        cmocka_unit_test(test_base64_rfc4648),
        cmocka_unit_test(test_base64_strict),
        cmocka_unit_test(test_base64_der_fixture),
        cmocka_unit_test(test_base64_toobig),
        cmocka_unit_test(test_url_encode),
        cmocka_unit_test(test_url_decode),
        cmocka_unit_test(test_rsa_sign_matches_openssl),
        cmocka_unit_test(test_rsa_verify_openssl),
        cmocka_unit_test(test_rsa_verify_raw_and_whitespace),
        cmocka_unit_test(test_rsa_public_der_forms),
        cmocka_unit_test(test_rsa_rejects_non_rsa_and_garbage),
        cmocka_unit_test(test_rsa_sign_toobig),
        cmocka_unit_test(test_x509_serial),
        cmocka_unit_test(test_gcm_spec_vectors),
        cmocka_unit_test(test_gcm_wechat_node_vector),
        cmocka_unit_test(test_rsa_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
