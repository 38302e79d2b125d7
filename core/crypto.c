/*
 * crypto.c — hashing, RSA PKCS#1 v1.5 signatures, AES-256-GCM and the
 * hex/Base64/URL encodings, on mbedTLS 2.28.
 *
 * Thread safety.  The only mutable state outside the caller's objects is the
 * per-thread CTR_DRBG used for RSA blinding (lazily seeded from getrandom,
 * wiped at thread exit through a pthread key destructor, re-seeded after
 * fork) and a one-time set-up under a mutex (crypto_thread_init).  A
 * gw_rsa_key_t is never modified by this file after loading; mbedTLS
 * serialises operations on one RSA context with the context's own mutex
 * (MBEDTLS_THREADING_C), because each private-key operation updates the
 * context's blinding values.  Many threads may therefore share one key; they
 * take turns on it.
 *
 * Buffers.  A function that appends to a gw_buf_t appends its whole result
 * or, when it fails, leaves out->len (and the NUL after it) as it was; only
 * the capacity may have grown.  Bytes appended and then rolled back that may
 * be secret (plaintext) are wiped.
 *
 * Secrets.  Temporary copies of key text, DER and hash state are wiped with
 * mbedtls_platform_zeroize before they are freed.  Failures are logged at
 * debug level with mbedTLS's error text only, never with any input.
 */
#include "crypto.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

#include <mbedtls/aes.h>
#include <mbedtls/asn1.h>
#include <mbedtls/bignum.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/error.h>
#include <mbedtls/gcm.h>
#include <mbedtls/md5.h>
#include <mbedtls/pem.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/rsa.h>
#include <mbedtls/sha1.h>
#include <mbedtls/sha256.h>
#include <mbedtls/x509.h>
#include <mbedtls/x509_crt.h>

#define GCM_TAG_LEN 16
/* Smaller RSA keys are refused at load time (Alipay's legacy "RSA" keys are
 * 1024-bit; everything current is 2048). */
#define RSA_MIN_BITS 1024

/* ---- small helpers ---- */

static void secret_free(void *p, size_t n)
{
    if (p == NULL) return;
    mbedtls_platform_zeroize(p, n);
    free(p);
}

/* Room for n more bytes under b->max? */
static int buf_room(const gw_buf_t *b, size_t n)
{
    return b->len <= b->max && n <= b->max - b->len;
}

static void buf_rollback(gw_buf_t *b, size_t len)
{
    b->len = len;
    if (b->data != NULL) b->data[len] = '\0';
}

static void buf_rollback_wipe(gw_buf_t *b, size_t len)
{
    if (b->data != NULL && b->len > len) mbedtls_platform_zeroize(b->data + len, b->len - len);
    buf_rollback(b, len);
}

/* mbedTLS error -> gw_err_t: allocation failures are GW_ENOMEM, anything else
 * is dflt.  mbedTLS 2.x adds a high-level code (0x1000..0x7F80) and a
 * low-level one (0x0001..0x007F). */
static gw_err_t mbed_err(int ret, gw_err_t dflt)
{
    int e = ret < 0 ? -ret : ret;
    int low = e & 0x7F, high = e & 0xFF80;

    if (ret == 0) return GW_OK;
    if (low == -MBEDTLS_ERR_MPI_ALLOC_FAILED || low == -MBEDTLS_ERR_ASN1_ALLOC_FAILED ||
        high == -MBEDTLS_ERR_PK_ALLOC_FAILED || high == -MBEDTLS_ERR_X509_ALLOC_FAILED ||
        high == -MBEDTLS_ERR_PEM_ALLOC_FAILED)
        return GW_ENOMEM;
    return dflt;
}

/* Debug log of an mbedTLS failure: the library's message, never the input. */
static void log_mbed(const char *what, int ret)
{
    char msg[160];

    if (GW_LOG_DEBUG > gw_log_level) return;
    mbedtls_strerror(ret, msg, sizeof(msg));
    gw_log(GW_LOG_DEBUG, "crypto: %s: %s (-0x%04x)", what, msg, (unsigned)-ret);
}

/* ---- hex and hashes ---- */

void gw_hex_encode(const uint8_t *in, size_t n, char *out, int upper)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0x0F];
    }
    out[2 * n] = '\0';
}

/* The software hash implementations cannot fail; their int results exist
 * for hardware-accelerated ports, which this build does not use. */
void gw_md5(const void *data, size_t len, uint8_t out[16])
{
    (void)mbedtls_md5_ret(data, len, out);
}

void gw_sha1(const void *data, size_t len, uint8_t out[20])
{
    (void)mbedtls_sha1_ret(data, len, out);
}

void gw_sha256(const void *data, size_t len, uint8_t out[32])
{
    (void)mbedtls_sha256_ret(data, len, out, 0);
}

/* RFC 2104 on the SHA-256 context directly: unlike mbedtls_md_hmac it does
 * not allocate, so it cannot fail.
 *
 * The contexts after the key's inner and outer pad blocks are kept, per
 * thread, for the last HMAC_KEYS keys of at most one block: a merchant's
 * requests all use its one secret, and the two pad blocks were two of the
 * ten SHA-256 compressions a signed request costs (callgrind). */
#define HMAC_KEYS 8
typedef struct {
    size_t klen; /* 0: empty slot */
    uint8_t k[64];
    mbedtls_sha256_context in, out;
} hmac_key_t;
static _Thread_local hmac_key_t hmac_keys[HMAC_KEYS];
static _Thread_local unsigned hmac_next;

static void hmac_pads(const uint8_t k[64], mbedtls_sha256_context *in, mbedtls_sha256_context *out)
{
    uint8_t pad[64];
    for (size_t i = 0; i < sizeof(pad); i++) pad[i] = k[i] ^ 0x36;
    mbedtls_sha256_init(in);
    (void)mbedtls_sha256_starts_ret(in, 0);
    (void)mbedtls_sha256_update_ret(in, pad, sizeof(pad));
    for (size_t i = 0; i < sizeof(pad); i++) pad[i] = k[i] ^ 0x5C;
    mbedtls_sha256_init(out);
    (void)mbedtls_sha256_starts_ret(out, 0);
    (void)mbedtls_sha256_update_ret(out, pad, sizeof(pad));
    mbedtls_platform_zeroize(pad, sizeof(pad));
}

void gw_hmac_sha256_v(const void *key, size_t keylen, const gw_str_t *parts, size_t nparts,
                      uint8_t out[32])
{
    uint8_t k[64] = { 0 }, inner[32];
    mbedtls_sha256_context in, outer;
    const hmac_key_t *hit = NULL;

    if (keylen > 0 && keylen <= sizeof(k)) {
        for (size_t i = 0; i < HMAC_KEYS && hit == NULL; i++)
            if (hmac_keys[i].klen == keylen && memcmp(hmac_keys[i].k, key, keylen) == 0)
                hit = &hmac_keys[i];
    }
    if (hit) {
        mbedtls_sha256_init(&in);
        mbedtls_sha256_init(&outer);
        mbedtls_sha256_clone(&in, &hit->in);
        mbedtls_sha256_clone(&outer, &hit->out);
    } else {
        if (keylen > sizeof(k))
            gw_sha256(key, keylen, k);
        else if (keylen > 0)
            memcpy(k, key, keylen);
        hmac_pads(k, &in, &outer);
        if (keylen > 0 && keylen <= sizeof(k)) {
            hmac_key_t *slot = &hmac_keys[hmac_next++ % HMAC_KEYS];
            slot->klen = keylen;
            memcpy(slot->k, k, sizeof(k));
            mbedtls_sha256_clone(&slot->in, &in);
            mbedtls_sha256_clone(&slot->out, &outer);
        }
        mbedtls_platform_zeroize(k, sizeof(k));
    }
    for (size_t i = 0; i < nparts; i++)
        if (parts[i].len) (void)mbedtls_sha256_update_ret(&in, (const unsigned char *)parts[i].ptr, parts[i].len);
    (void)mbedtls_sha256_finish_ret(&in, inner);
    (void)mbedtls_sha256_update_ret(&outer, inner, sizeof(inner));
    (void)mbedtls_sha256_finish_ret(&outer, out);
    mbedtls_sha256_free(&in);
    mbedtls_sha256_free(&outer);
    mbedtls_platform_zeroize(inner, sizeof(inner));
}

void gw_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len, uint8_t out[32])
{
    gw_str_t part = { data, len };
    gw_hmac_sha256_v(key, keylen, &part, 1, out);
}

/* ---- Base64 (RFC 4648 section 4) ---- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

static int is_ascii_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Encodes n bytes into out, which must hold 4 * ceil(n / 3) characters. */
static size_t b64_encode_raw(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0, i = 0;

    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = '=';
    }
    return o;
}

/*
 * Strict decoder: ASCII whitespace anywhere is skipped; otherwise the input
 * must be whole 4-character quanta of the standard alphabet, '=' only as the
 * last one or two characters of the last quantum, and the unused bits before
 * the padding zero (the canonical encoding, RFC 4648 section 3.5).
 * GW_EPARSE on bad input, GW_ETOOBIG when the result would exceed cap.
 */
static gw_err_t b64_decode_raw(const char *in, size_t n, uint8_t *out, size_t cap,
                               size_t *outlen)
{
    uint32_t acc = 0;
    size_t o = 0;
    int q = 0, pad = 0; /* pad is never reset: after a padded quantum only
                         * whitespace may follow */

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        int v;

        if (is_ascii_space(c)) continue;
        if (c == '=') {
            if (q < 2) return GW_EPARSE; /* also "=" after a padded quantum */
            pad++;
            v = 0;
        } else {
            if (pad) return GW_EPARSE; /* data after "=" */
            v = b64_value(c);
            if (v < 0) return GW_EPARSE;
        }
        acc = acc << 6 | (uint32_t)v;
        if (++q < 4) continue;

        size_t nb = 3 - (size_t)pad;
        if ((pad == 1 && (acc & 0xFF) != 0) || (pad == 2 && (acc & 0xFFFF) != 0))
            return GW_EPARSE;
        if (nb > cap - o) return GW_ETOOBIG;
        out[o++] = (uint8_t)(acc >> 16);
        if (nb > 1) out[o++] = (uint8_t)(acc >> 8);
        if (nb > 2) out[o++] = (uint8_t)acc;
        acc = 0;
        q = 0;
    }
    if (q != 0) return GW_EPARSE;
    *outlen = o;
    return GW_OK;
}

gw_err_t gw_base64_encode(const uint8_t *in, size_t n, gw_buf_t *out)
{
    char chunk[1024]; /* 4/3 of 768 input bytes */
    size_t start = out->len;
    gw_err_t rc;

    if (in == NULL && n > 0) return GW_EINVAL;
    if (n / 3 >= SIZE_MAX / 4 - 1 || !buf_room(out, (n + 2) / 3 * 4)) return GW_ETOOBIG;
    rc = gw_buf_append(out, "", 0); /* out->data is a string even when n == 0 */
    if (rc != GW_OK) return rc;
    while (n > 0) {
        size_t take = n < 768 ? n : 768;
        rc = gw_buf_append(out, chunk, b64_encode_raw(in, take, chunk));
        if (rc != GW_OK) goto fail;
        in += take;
        n -= take;
    }
    return GW_OK;
fail:
    buf_rollback(out, start);
    return rc;
}

gw_err_t gw_base64_decode(const char *in, size_t n, gw_buf_t *out)
{
    uint8_t small[768], *tmp = small;
    size_t cap = n / 4 * 3, olen = 0;
    gw_err_t rc;

    if (in == NULL && n > 0) return GW_EINVAL;
    if (cap > sizeof(small)) {
        tmp = malloc(cap);
        if (tmp == NULL) return GW_ENOMEM;
    }
    rc = b64_decode_raw(in, n, tmp, cap, &olen);
    if (rc == GW_OK) rc = gw_buf_append(out, tmp, olen);
    /* the decoded bytes may be a key */
    mbedtls_platform_zeroize(tmp, cap);
    if (tmp != small) free(tmp);
    return rc;
}

/* ---- URL encoding (RFC 3986) ---- */

static int is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

gw_err_t gw_url_encode(const char *in, size_t n, gw_buf_t *out)
{
    static const char hex[] = "0123456789ABCDEF";
    char chunk[256];
    size_t w = 0, start = out->len;
    gw_err_t rc;

    if (in == NULL && n > 0) return GW_EINVAL;
    rc = gw_buf_append(out, "", 0);
    if (rc != GW_OK) return rc;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (w > sizeof(chunk) - 3) {
            rc = gw_buf_append(out, chunk, w);
            if (rc != GW_OK) goto fail;
            w = 0;
        }
        if (is_unreserved(c)) {
            chunk[w++] = (char)c;
        } else {
            chunk[w++] = '%';
            chunk[w++] = hex[c >> 4];
            chunk[w++] = hex[c & 0x0F];
        }
    }
    rc = gw_buf_append(out, chunk, w);
    if (rc != GW_OK) goto fail;
    return GW_OK;
fail:
    buf_rollback(out, start);
    return rc;
}

gw_err_t gw_url_decode(const char *in, size_t n, int plus_is_space, gw_buf_t *out)
{
    char chunk[256];
    size_t w = 0, start = out->len;
    gw_err_t rc;

    if (in == NULL && n > 0) return GW_EINVAL;
    rc = gw_buf_append(out, "", 0);
    if (rc != GW_OK) return rc;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (w == sizeof(chunk)) {
            rc = gw_buf_append(out, chunk, w);
            if (rc != GW_OK) goto fail;
            w = 0;
        }
        if (c == '%') {
            int hi, lo;
            if (n - i < 3) {
                rc = GW_EPARSE;
                goto fail;
            }
            hi = hex_value((unsigned char)in[i + 1]);
            lo = hex_value((unsigned char)in[i + 2]);
            if (hi < 0 || lo < 0) {
                rc = GW_EPARSE;
                goto fail;
            }
            chunk[w++] = (char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            chunk[w++] = ' ';
        } else {
            chunk[w++] = (char)c;
        }
    }
    rc = gw_buf_append(out, chunk, w);
    if (rc != GW_OK) goto fail;
    return GW_OK;
fail:
    buf_rollback(out, start);
    return rc;
}

/* ---- one-time set-up and the per-thread DRBG for RSA blinding ---- */

struct thread_rng {
    int seeded;
    pid_t pid; /* a forked child must not replay its parent's stream */
    mbedtls_ctr_drbg_context drbg;
};

static __thread struct thread_rng tls_rng;
static __thread int tls_ready; /* this thread has been through crypto_thread_init */
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static int init_done;           /* under init_lock */
static pthread_key_t rng_key;   /* written once under init_lock, read after it */
static int rng_key_ok;

/* Runs at thread exit (the value set is &tls_rng, still valid then). */
static void rng_thread_exit(void *p)
{
    struct thread_rng *r = p;

    mbedtls_ctr_drbg_free(&r->drbg); /* also wipes the state */
    r->seeded = 0;
}

/*
 * Process-wide set-up, entered once per thread (one uncontended lock per
 * thread lifetime; a plain mutex rather than pthread_once so that helgrind
 * and TSan can follow it):
 *   - the pthread key whose destructor wipes a thread's DRBG;
 *   - mbedTLS 2.28 builds its AES tables and caches its AES-NI CPUID probe
 *     lazily, in unsynchronised statics, on the first AES key schedule of
 *     the process; doing one here, under the lock, means that the worker
 *     threads (CTR_DRBG and GCM are AES) only ever read them.
 */
static void crypto_thread_init(void)
{
    if (tls_ready) return;
    pthread_mutex_lock(&init_lock);
    if (!init_done) {
        static const unsigned char zero_key[32];
        mbedtls_aes_context aes;

        rng_key_ok = pthread_key_create(&rng_key, rng_thread_exit) == 0;
        mbedtls_aes_init(&aes);
        (void)mbedtls_aes_setkey_enc(&aes, zero_key, 256);
        mbedtls_aes_free(&aes);
        init_done = 1;
    }
    pthread_mutex_unlock(&init_lock);
    tls_ready = 1;
}

static int rng_entropy(void *unused, unsigned char *out, size_t n)
{
    (void)unused;
    return gw_random(out, n) == GW_OK ? 0 : MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
}

static gw_err_t rng_get(mbedtls_ctr_drbg_context **out)
{
    static const unsigned char pers[] = "paygate rsa blinding";
    struct thread_rng *r = &tls_rng;
    pid_t pid = getpid();
    int ret;

    if (r->seeded && r->pid != pid) {
        mbedtls_ctr_drbg_free(&r->drbg);
        r->seeded = 0;
    }
    if (!r->seeded) {
        crypto_thread_init();
        mbedtls_ctr_drbg_init(&r->drbg);
        ret = mbedtls_ctr_drbg_seed(&r->drbg, rng_entropy, NULL, pers, sizeof(pers) - 1);
        if (ret != 0) {
            mbedtls_ctr_drbg_free(&r->drbg);
            log_mbed("seeding the blinding DRBG", ret);
            return ret == MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED ? GW_EIO : GW_ECRYPTO;
        }
        r->pid = pid;
        r->seeded = 1;
        if (rng_key_ok) (void)pthread_setspecific(rng_key, r);
    }
    *out = &r->drbg;
    return GW_OK;
}

/* ---- key and certificate text ---- */

struct gw_rsa_key {
    mbedtls_pk_context pk; /* always an RSA key, PKCS#1 v1.5 padding */
    int has_private;
};

/* What mbedTLS parses: for PEM a NUL-terminated copy whose length counts the
 * NUL (mbedTLS's PEM convention), otherwise the DER decoded from bare Base64.
 * The buffer is wiped when freed. */
struct key_input {
    unsigned char *buf;
    size_t len;
    int pem;
};

static int has_pem_header(const char *text, size_t len, const char *label)
{
    return memmem(text, len, label, strlen(label)) != NULL;
}

/* GW_EPARSE when the text is neither PEM nor Base64. */
static gw_err_t key_input_get(const char *text, size_t len, struct key_input *ki)
{
    ki->buf = NULL;
    ki->len = 0;
    ki->pem = has_pem_header(text, len, "-----BEGIN ");
    if (ki->pem) {
        if (len == SIZE_MAX) return GW_ETOOBIG;
        ki->buf = malloc(len + 1);
        if (ki->buf == NULL) return GW_ENOMEM;
        memcpy(ki->buf, text, len);
        ki->buf[len] = '\0';
        ki->len = len + 1;
        return GW_OK;
    }

    size_t cap = len / 4 * 3;
    gw_err_t rc;
    ki->buf = malloc(cap ? cap : 1);
    if (ki->buf == NULL) return GW_ENOMEM;
    rc = b64_decode_raw(text, len, ki->buf, cap, &ki->len);
    if (rc != GW_OK) {
        secret_free(ki->buf, cap);
        ki->buf = NULL;
        ki->len = 0;
        return GW_EPARSE;
    }
    return GW_OK;
}

static void key_input_free(struct key_input *ki)
{
    secret_free(ki->buf, ki->len);
    ki->buf = NULL;
    ki->len = 0;
}

/* The loaded key must be RSA, big enough and consistent. */
static gw_err_t rsa_check(mbedtls_pk_context *pk, int private)
{
    mbedtls_rsa_context *rsa;
    int ret;

    if (mbedtls_pk_get_type(pk) != MBEDTLS_PK_RSA) {
        gw_log(GW_LOG_DEBUG, "crypto: key rejected: not an RSA key");
        return GW_EKEY;
    }
    if (mbedtls_pk_get_bitlen(pk) < RSA_MIN_BITS) {
        gw_log(GW_LOG_DEBUG, "crypto: key rejected: RSA key shorter than %d bits", RSA_MIN_BITS);
        return GW_EKEY;
    }
    rsa = mbedtls_pk_rsa(*pk);
    ret = private ? mbedtls_rsa_check_privkey(rsa) : mbedtls_rsa_check_pubkey(rsa);
    if (ret != 0) {
        log_mbed("key rejected", ret);
        return mbed_err(ret, GW_EKEY);
    }
    mbedtls_rsa_set_padding(rsa, MBEDTLS_RSA_PKCS_V15, MBEDTLS_MD_NONE);
    return GW_OK;
}

gw_err_t gw_rsa_load_private(const char *text, size_t len, gw_rsa_key_t **out)
{
    struct key_input ki = { NULL, 0, 0 };
    gw_rsa_key_t *key = NULL;
    gw_err_t rc;
    int ret;

    if (out == NULL || (text == NULL && len > 0)) return GW_EINVAL;
    *out = NULL;
    rc = key_input_get(text ? text : "", len, &ki);
    if (rc != GW_OK) {
        if (rc == GW_EPARSE) rc = GW_EKEY;
        goto out;
    }
    key = calloc(1, sizeof(*key));
    if (key == NULL) {
        rc = GW_ENOMEM;
        goto out;
    }
    mbedtls_pk_init(&key->pk);
    /* No password: an encrypted key is refused (MBEDTLS_ERR_PK_PASSWORD_REQUIRED). */
    ret = mbedtls_pk_parse_key(&key->pk, ki.buf, ki.len, NULL, 0);
    if (ret != 0) {
        log_mbed("private key rejected", ret);
        rc = mbed_err(ret, GW_EKEY);
        goto out;
    }
    rc = rsa_check(&key->pk, 1);
    if (rc != GW_OK) goto out;
    key->has_private = 1;
    *out = key;
    key = NULL;
out:
    key_input_free(&ki);
    gw_rsa_free(key);
    return rc;
}

/* Copies the RSA key of the first certificate in buf into pk. */
static gw_err_t pk_from_cert(mbedtls_pk_context *pk, const unsigned char *buf, size_t len, int pem)
{
    mbedtls_x509_crt crt;
    gw_err_t rc = GW_OK;
    int ret;

    mbedtls_x509_crt_init(&crt);
    ret = pem ? mbedtls_x509_crt_parse(&crt, buf, len) : mbedtls_x509_crt_parse_der(&crt, buf, len);
    if (ret != 0) {
        /* > 0: some certificates of a PEM bundle did not parse */
        if (ret < 0) log_mbed("certificate rejected", ret);
        rc = ret < 0 ? mbed_err(ret, GW_EKEY) : GW_EKEY;
        goto out;
    }
    if (mbedtls_pk_get_type(&crt.pk) != MBEDTLS_PK_RSA) {
        gw_log(GW_LOG_DEBUG, "crypto: certificate rejected: not an RSA key");
        rc = GW_EKEY;
        goto out;
    }
    ret = mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA));
    if (ret == 0) ret = mbedtls_rsa_copy(mbedtls_pk_rsa(*pk), mbedtls_pk_rsa(crt.pk));
    if (ret != 0) rc = mbed_err(ret, GW_EKEY);
out:
    mbedtls_x509_crt_free(&crt);
    return rc;
}

gw_err_t gw_rsa_load_public(const char *text, size_t len, gw_rsa_key_t **out)
{
    struct key_input ki = { NULL, 0, 0 };
    gw_rsa_key_t *key = NULL;
    gw_err_t rc;
    int ret;

    if (out == NULL || (text == NULL && len > 0)) return GW_EINVAL;
    *out = NULL;
    rc = key_input_get(text ? text : "", len, &ki);
    if (rc != GW_OK) {
        if (rc == GW_EPARSE) rc = GW_EKEY;
        goto out;
    }
    key = calloc(1, sizeof(*key));
    if (key == NULL) {
        rc = GW_ENOMEM;
        goto out;
    }
    mbedtls_pk_init(&key->pk);
    if (ki.pem && has_pem_header((const char *)ki.buf, ki.len, "-----BEGIN CERTIFICATE-----")) {
        rc = pk_from_cert(&key->pk, ki.buf, ki.len, 1);
    } else {
        /* PEM "PUBLIC KEY" / "RSA PUBLIC KEY", or DER SPKI / RSAPublicKey */
        ret = mbedtls_pk_parse_public_key(&key->pk, ki.buf, ki.len);
        if (ret != 0) log_mbed("public key rejected", ret);
        if (ret != 0 && !ki.pem) {
            /* bare Base64 of a DER certificate */
            mbedtls_pk_free(&key->pk);
            mbedtls_pk_init(&key->pk);
            rc = pk_from_cert(&key->pk, ki.buf, ki.len, 0);
        } else if (ret != 0) {
            rc = mbed_err(ret, GW_EKEY);
        }
    }
    if (rc != GW_OK) goto out;
    rc = rsa_check(&key->pk, 0);
    if (rc != GW_OK) goto out;
    *out = key;
    key = NULL;
out:
    key_input_free(&ki);
    gw_rsa_free(key);
    return rc;
}

void gw_rsa_free(gw_rsa_key_t *key)
{
    if (key == NULL) return;
    mbedtls_pk_free(&key->pk); /* wipes the key */
    free(key);
}

/* ---- RSA signatures ---- */

static gw_err_t digest(enum gw_hash hash, const void *data, size_t len, uint8_t out[32],
                       size_t *outlen, mbedtls_md_type_t *md)
{
    switch (hash) {
    case GW_HASH_SHA1:
        gw_sha1(data, len, out);
        *outlen = 20;
        *md = MBEDTLS_MD_SHA1;
        return GW_OK;
    case GW_HASH_SHA256:
        gw_sha256(data, len, out);
        *outlen = 32;
        *md = MBEDTLS_MD_SHA256;
        return GW_OK;
    default:
        return GW_EINVAL;
    }
}

static int hash_ok(enum gw_hash hash)
{
    return hash == GW_HASH_SHA1 || hash == GW_HASH_SHA256;
}

/* sig must hold MBEDTLS_PK_SIGNATURE_MAX_SIZE bytes. */
static gw_err_t rsa_sign_bin(gw_rsa_key_t *key, enum gw_hash hash, const void *data, size_t len,
                             unsigned char *sig, size_t *siglen)
{
    mbedtls_ctr_drbg_context *drbg;
    mbedtls_md_type_t md;
    uint8_t h[32];
    size_t hlen;
    gw_err_t rc;
    int ret;

    if (key == NULL || (data == NULL && len > 0) || !hash_ok(hash)) return GW_EINVAL;
    if (!key->has_private) return GW_EKEY;
    rc = digest(hash, data, len, h, &hlen, &md);
    if (rc != GW_OK) return rc;
    rc = rng_get(&drbg);
    if (rc != GW_OK) return rc;
    /* PKCS#1 v1.5 (deterministic); mbedTLS verifies the result before
     * returning it, as a fault-attack countermeasure. */
    ret = mbedtls_pk_sign(&key->pk, md, h, hlen, sig, siglen, mbedtls_ctr_drbg_random, drbg);
    if (ret != 0) {
        log_mbed("RSA signing failed", ret);
        return mbed_err(ret, GW_ECRYPTO);
    }
    return GW_OK;
}

gw_err_t gw_rsa_sign(gw_rsa_key_t *key, enum gw_hash hash, const void *data, size_t len,
                     gw_buf_t *sig_b64)
{
    unsigned char sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
    size_t siglen = 0;
    gw_err_t rc;

    if (sig_b64 == NULL) return GW_EINVAL;
    rc = rsa_sign_bin(key, hash, data, len, sig, &siglen);
    if (rc != GW_OK) return rc;
    return gw_base64_encode(sig, siglen, sig_b64);
}

gw_err_t gw_rsa_sign_raw(gw_rsa_key_t *key, enum gw_hash hash, const void *data, size_t len,
                         gw_buf_t *sig)
{
    unsigned char bin[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
    size_t binlen = 0;
    gw_err_t rc;

    if (sig == NULL) return GW_EINVAL;
    rc = rsa_sign_bin(key, hash, data, len, bin, &binlen);
    if (rc != GW_OK) return rc;
    return gw_buf_append(sig, bin, binlen);
}

gw_err_t gw_rsa_verify_raw(gw_rsa_key_t *key, enum gw_hash hash, const void *data, size_t len,
                           const uint8_t *sig, size_t siglen)
{
    mbedtls_md_type_t md;
    uint8_t h[32];
    size_t hlen;
    gw_err_t rc;
    int ret;

    if (key == NULL || (data == NULL && len > 0) || (sig == NULL && siglen > 0) || !hash_ok(hash))
        return GW_EINVAL;
    /* exactly the modulus length: no short or padded-out signatures */
    if (siglen != mbedtls_pk_get_len(&key->pk)) return GW_ESIGN;
    rc = digest(hash, data, len, h, &hlen, &md);
    if (rc != GW_OK) return rc;
    ret = mbedtls_pk_verify(&key->pk, md, h, hlen, sig, siglen);
    return ret == 0 ? GW_OK : mbed_err(ret, GW_ESIGN);
}

gw_err_t gw_rsa_verify(gw_rsa_key_t *key, enum gw_hash hash, const void *data, size_t len,
                       const char *sig_b64, size_t siglen)
{
    unsigned char sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
    size_t n = 0;

    if (key == NULL || (data == NULL && len > 0) || (sig_b64 == NULL && siglen > 0) ||
        !hash_ok(hash))
        return GW_EINVAL;
    if (b64_decode_raw(sig_b64 ? sig_b64 : "", siglen, sig, sizeof(sig), &n) != GW_OK)
        return GW_ESIGN;
    return gw_rsa_verify_raw(key, hash, data, len, sig, n);
}

/* ---- certificates ---- */

gw_err_t gw_x509_serial(const char *pem, size_t len, char *out, size_t outlen)
{
    struct key_input ki = { NULL, 0, 0 };
    mbedtls_x509_crt crt;
    const unsigned char *p;
    size_t n;
    gw_err_t rc;
    int ret;

    if (out == NULL || outlen == 0 || (pem == NULL && len > 0)) return GW_EINVAL;
    out[0] = '\0';
    mbedtls_x509_crt_init(&crt);
    rc = key_input_get(pem ? pem : "", len, &ki);
    if (rc != GW_OK) goto out;
    ret = ki.pem ? mbedtls_x509_crt_parse(&crt, ki.buf, ki.len)
                 : mbedtls_x509_crt_parse_der(&crt, ki.buf, ki.len);
    if (ret != 0) {
        if (ret < 0) log_mbed("certificate rejected", ret);
        rc = ret < 0 ? mbed_err(ret, GW_EPARSE) : GW_EPARSE;
        goto out;
    }
    /* The DER INTEGER's content: drop the 00 that keeps a serial with the
     * high bit set positive (and any other leading zero, as OpenSSL does). */
    p = crt.serial.p;
    n = crt.serial.len;
    while (n > 1 && p[0] == 0) {
        p++;
        n--;
    }
    if (n == 0) {
        rc = GW_EPARSE;
        goto out;
    }
    if (n > (outlen - 1) / 2) {
        rc = GW_ETOOBIG;
        goto out;
    }
    gw_hex_encode(p, n, out, 1);
out:
    mbedtls_x509_crt_free(&crt);
    key_input_free(&ki);
    return rc;
}

/* ---- AES-256-GCM ---- */

gw_err_t gw_aes256gcm_encrypt(const uint8_t key[32], const uint8_t *iv, size_t ivlen,
                              const uint8_t *aad, size_t aadlen, const uint8_t *plain,
                              size_t len, gw_buf_t *ct_and_tag)
{
    static const uint8_t zero_tag[GCM_TAG_LEN];
    gw_buf_t *out = ct_and_tag;
    mbedtls_gcm_context gcm;
    size_t start;
    uint8_t *dst;
    gw_err_t rc;
    int ret;

    if (key == NULL || iv == NULL || ivlen == 0 || (aad == NULL && aadlen > 0) ||
        (plain == NULL && len > 0) || out == NULL)
        return GW_EINVAL;
    if (len > SIZE_MAX - GCM_TAG_LEN || !buf_room(out, len + GCM_TAG_LEN)) return GW_ETOOBIG;

    crypto_thread_init();
    start = out->len;
    mbedtls_gcm_init(&gcm);
    /* Copy the plaintext and a tag placeholder in, then encrypt in place. */
    rc = gw_buf_append(out, plain, len);
    if (rc == GW_OK) rc = gw_buf_append(out, zero_tag, GCM_TAG_LEN);
    if (rc != GW_OK) goto out;
    dst = (uint8_t *)out->data + start;

    ret = mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, 256);
    if (ret == 0)
        ret = mbedtls_gcm_crypt_and_tag(&gcm, MBEDTLS_GCM_ENCRYPT, len, iv, ivlen, aad, aadlen,
                                        dst, dst, GCM_TAG_LEN, dst + len);
    if (ret != 0) {
        log_mbed("AES-GCM encryption failed", ret);
        rc = ret == MBEDTLS_ERR_GCM_BAD_INPUT ? GW_EINVAL : mbed_err(ret, GW_ECRYPTO);
    }
out:
    mbedtls_gcm_free(&gcm);
    if (rc != GW_OK) buf_rollback_wipe(out, start);
    return rc;
}

gw_err_t gw_aes256gcm_decrypt(const uint8_t key[32], const uint8_t *iv, size_t ivlen,
                              const uint8_t *aad, size_t aadlen, const uint8_t *ct_and_tag,
                              size_t len, gw_buf_t *plain)
{
    gw_buf_t *out = plain;
    mbedtls_gcm_context gcm;
    size_t start, clen;
    uint8_t *dst;
    gw_err_t rc;
    int ret;

    if (key == NULL || iv == NULL || ivlen == 0 || (aad == NULL && aadlen > 0) ||
        (ct_and_tag == NULL && len > 0) || out == NULL)
        return GW_EINVAL;
    if (len < GCM_TAG_LEN) return GW_ESIGN; /* no tag: cannot be authentic */
    clen = len - GCM_TAG_LEN;
    if (!buf_room(out, clen)) return GW_ETOOBIG;

    crypto_thread_init();
    start = out->len;
    mbedtls_gcm_init(&gcm);
    /* Copy the ciphertext in and decrypt in place; mbedTLS wipes the output
     * when the tag does not match, and the rollback below drops it. */
    rc = gw_buf_append(out, ct_and_tag, clen);
    if (rc != GW_OK) goto out;
    dst = (uint8_t *)out->data + start;

    ret = mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, 256);
    if (ret == 0)
        ret = mbedtls_gcm_auth_decrypt(&gcm, clen, iv, ivlen, aad, aadlen, ct_and_tag + clen,
                                       GCM_TAG_LEN, dst, dst);
    if (ret == MBEDTLS_ERR_GCM_AUTH_FAILED) {
        rc = GW_ESIGN;
    } else if (ret != 0) {
        log_mbed("AES-GCM decryption failed", ret);
        rc = ret == MBEDTLS_ERR_GCM_BAD_INPUT ? GW_EINVAL : mbed_err(ret, GW_ECRYPTO);
    }
out:
    mbedtls_gcm_free(&gcm);
    if (rc != GW_OK) buf_rollback_wipe(out, start);
    return rc;
}
