/*
 * crypto.h — hashing, signatures, AEAD and encodings on mbedTLS, used by the
 * core and handed to channel modules through the host-API table.
 *
 * Every function here is reentrant and may run on libuv's thread pool:
 * a loaded key (gw_rsa_key_t) may be used by several threads at once
 * (mbedTLS is built with MBEDTLS_THREADING_PTHREAD), and random numbers for
 * RSA blinding come from a per-thread DRBG.  Output buffers are appended to,
 * never reset; they carry their own maximum (gw_buf_t.max, GW_ETOOBIG past
 * it).  On any error nothing is appended: out->len is left as it was (only
 * the capacity may have grown).  An input must not point into the buffer
 * being appended to.  Secrets are never logged or copied into error text.
 * A NULL pointer with a non-zero length is GW_EINVAL.
 */
#ifndef GW_CRYPTO_H
#define GW_CRYPTO_H

#include "gw.h"

/* enum gw_hash (GW_HASH_SHA1, GW_HASH_SHA256) is defined in gw_channel.h */

/* Hex: out must hold 2*n+1 bytes; upper != 0 gives A-F. */
void gw_hex_encode(const uint8_t *in, size_t n, char *out, int upper);

void gw_md5(const void *data, size_t len, uint8_t out[16]);
void gw_sha1(const void *data, size_t len, uint8_t out[20]);
void gw_sha256(const void *data, size_t len, uint8_t out[32]);
void gw_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len, uint8_t out[32]);
/* The HMAC of parts' concatenation (no copy). */
void gw_hmac_sha256_v(const void *key, size_t keylen, const gw_str_t *parts, size_t nparts,
                      uint8_t out[32]);

/* Standard alphabet with padding, no line breaks.  Also for n == 0,
 * out->data is a NUL-terminated string afterwards. */
gw_err_t gw_base64_encode(const uint8_t *in, size_t n, gw_buf_t *out);
/* Strict: GW_EPARSE on characters outside the alphabet, a missing or
 * misplaced '=', or non-zero bits before the padding (only the canonical
 * encoding is accepted).  ASCII whitespace (space, \t \n \v \f \r, i.e. line
 * breaks in PEM-like text) is skipped anywhere. */
gw_err_t gw_base64_decode(const char *in, size_t n, gw_buf_t *out);

/* RFC 3986: unreserved characters A-Z a-z 0-9 - . _ ~ kept, all else %XX (upper). */
gw_err_t gw_url_encode(const char *in, size_t n, gw_buf_t *out);
/* %XX decoded, either case (GW_EPARSE on a '%' not followed by two hex
 * digits); '+' becomes ' ' when plus_is_space.  The result may contain NUL
 * bytes (%00): use out->len. */
gw_err_t gw_url_decode(const char *in, size_t n, int plus_is_space, gw_buf_t *out);

/* ---- RSA (PKCS#1 v1.5) ---- */
/* gw_rsa_key_t is declared in gw_channel.h (opaque) */

/* Accepts PEM (PKCS#1 "RSA PRIVATE KEY" or PKCS#8 "PRIVATE KEY") or the bare
 * Base64 of PKCS#8/PKCS#1 DER, as Alipay and MyBank hand out keys.
 * GW_EKEY when it is not an unencrypted RSA private key of at least 1024
 * bits (also for text that does not parse at all); *out is NULL then.  The
 * key may be shared by many threads; free it with gw_rsa_free. */
gw_err_t gw_rsa_load_private(const char *text, size_t len, gw_rsa_key_t **out);
/* Accepts PEM "PUBLIC KEY" (SPKI), PEM "RSA PUBLIC KEY", PEM "CERTIFICATE"
 * (the first certificate's key is used; its dates and issuer are not
 * checked), or the bare Base64 of SPKI, RSAPublicKey or certificate DER.
 * GW_EKEY as for gw_rsa_load_private. */
gw_err_t gw_rsa_load_public(const char *text, size_t len, gw_rsa_key_t **out);
void gw_rsa_free(gw_rsa_key_t *key);

/* Signs hash(data) with the private key; appends the Base64 signature.
 * GW_EKEY when the key has no private half, GW_EINVAL for another hash. */
gw_err_t gw_rsa_sign(gw_rsa_key_t *key, enum gw_hash hash, const void *data, size_t len,
                     gw_buf_t *sig_b64);
/* Raw variant: appends the binary signature. */
gw_err_t gw_rsa_sign_raw(gw_rsa_key_t *key, enum gw_hash hash, const void *data, size_t len,
                         gw_buf_t *sig);
/* GW_OK when sig_b64 (Base64, whitespace ignored) is a valid signature of
 * hash(data); GW_ESIGN when it is not (or is not Base64, or its length is
 * not the modulus length).  Private keys verify with their public half. */
gw_err_t gw_rsa_verify(gw_rsa_key_t *key, enum gw_hash hash, const void *data, size_t len,
                       const char *sig_b64, size_t siglen);
gw_err_t gw_rsa_verify_raw(gw_rsa_key_t *key, enum gw_hash hash, const void *data, size_t len,
                           const uint8_t *sig, size_t siglen);

/* Serial number of a PEM certificate (or bare Base64 DER) as upper-case hex,
 * the form WeChat Pay uses in Wechatpay-Serial and serial_no and that
 * `openssl x509 -serial` prints (a leading 00 sign byte dropped).  out must
 * hold 2 * bytes + 1 (41 for a 20-byte serial, else GW_ETOOBIG); GW_EPARSE
 * when it is not a certificate. */
gw_err_t gw_x509_serial(const char *pem, size_t len, char *out, size_t outlen);

/* ---- AES-256-GCM with a 16-byte tag appended to the ciphertext ----
 * (WeChat Pay v3: key = APIv3 key, iv = nonce, aad = associated_data.)
 * ivlen must be > 0 (12 is standard). */
gw_err_t gw_aes256gcm_encrypt(const uint8_t key[32], const uint8_t *iv, size_t ivlen,
                              const uint8_t *aad, size_t aadlen, const uint8_t *plain,
                              size_t len, gw_buf_t *ct_and_tag);
/* GW_ESIGN when the tag does not authenticate (also when len < 16); nothing
 * is appended then. */
gw_err_t gw_aes256gcm_decrypt(const uint8_t key[32], const uint8_t *iv, size_t ivlen,
                              const uint8_t *aad, size_t aadlen, const uint8_t *ct_and_tag,
                              size_t len, gw_buf_t *plain);

#endif /* GW_CRYPTO_H */
