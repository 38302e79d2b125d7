/*
 * gw_channel.h — the one header a paygate channel module needs.
 *
 * A channel module is a shared object in the channels directory that exports
 * exactly one function,
 *
 *     const gw_channel_t *gw_channel_entry(void);
 *
 * returning a pointer to a constant vtable.  A module is a protocol codec:
 * for each operation it BUILDS the outbound HTTP request (URL, headers, body,
 * signature) and PARSES and VERIFIES the response.  The core does all I/O
 * (one shared libcurl multi handle), deadlines, retries, metrics and
 * persistence.  Module functions must be reentrant and must not block: the
 * core may call them from libuv's thread pool, several at once.
 *
 * Everything a module needs from the core — logging, clock, nonces, buffers,
 * hashing, RSA, AES-GCM, Base64, URL encoding, key/value and JSON helpers —
 * comes through the gw_host_api_t table handed to init().  A module links no
 * core symbol and keeps no global state: per-channel state lives in the
 * ctx_size bytes the core allocates for it.
 *
 * ABI rules (docs/channels.md):
 *   - gw_channel_t and gw_host_api_t only ever grow at the end.  Appending
 *     bumps GW_CHANNEL_ABI_MINOR; any other change bumps the MAJOR.
 *   - The core rejects a module whose major differs, whose minor is newer
 *     than the core's, whose struct_size is below the 1.0 size, or whose
 *     build_sig differs.  It calls a method added after 1.0 only when the
 *     module's struct_size covers it AND the pointer is not NULL.
 *   - The call/result structs below are part of the major version.
 */
#ifndef GW_CHANNEL_H
#define GW_CHANNEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GW_CHANNEL_ABI_MAJOR 1
#define GW_CHANNEL_ABI_MINOR 3
#define GW_CHANNEL_ABI_VERSION ((GW_CHANNEL_ABI_MAJOR << 16) | GW_CHANNEL_ABI_MINOR)
/* Identifies what the struct layouts depend on (nginx NGX_MODULE_SIGNATURE). */
#define GW_CHANNEL_BUILD_SIG "gw1:lp64:le"

/* ------------------------------------------------------------------ */
/* Errors.  Numbers are frozen: never renumber, never reuse; a retired code
 * stays as GW_EOBSOLETE_n (curl).  0 is success, errors are negative.
 * Payment outcomes (declined, user paying, …) are results, not errors. */
#define GW_ERR_MAP(XX)                                                         \
    XX(EAGAIN, -1, "operation in progress")                                    \
    XX(ENOMEM, -2, "out of memory")                                            \
    XX(EINVAL, -3, "invalid argument")                                         \
    XX(ENOTSUP, -4, "operation not supported")                                 \
    XX(ECANCELED, -5, "operation canceled")                                    \
    XX(ETIMEDOUT, -6, "timed out")                                             \
    XX(EIO, -7, "input/output error")                                          \
    XX(ENOENT, -8, "not found")                                                \
    XX(EEXIST, -9, "already exists")                                           \
    XX(ETOOBIG, -10, "too large")                                              \
    XX(EPARSE, -11, "malformed input")                                         \
    XX(ESIGN, -12, "signature verification failed")                            \
    XX(EUNAVAIL, -13, "service unavailable")                                   \
    XX(ECONFLICT, -14, "conflict")                                             \
    XX(ESTATE, -15, "invalid state")                                           \
    XX(ECRYPTO, -16, "cryptographic failure")                                  \
    XX(EBUSY, -17, "resource busy")                                            \
    XX(EKEY, -18, "invalid key")

typedef int gw_err_t;
#define GW_OK 0
#define GW__ERR_ENUM(name, val, msg) GW_##name = (val),
enum gw_err_e { GW_ERR_MAP(GW__ERR_ENUM) GW__ERR_LAST = -18 };
#undef GW__ERR_ENUM

/* A string that crosses an API: pointer and length (h2o_iovec_t). Not
 * necessarily NUL-terminated. */
typedef struct gw_str {
    const char *ptr;
    size_t len;
} gw_str_t;

/* A bounded growable buffer owned by the core.  Modules append to it only
 * through host->buf_* and read data/len directly.  data is NUL-terminated
 * whenever it is not NULL. */
typedef struct gw_buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max; /* appending past max fails with GW_ETOOBIG */
} gw_buf_t;

/* ------------------------------------------------------------------ */
/* Payment methods (bitmask in gw_channel_t.methods). */
enum gw_method {
    GW_METHOD_WECHAT_QR = 1u << 0,    /* c-to-b: QR code the customer scans */
    GW_METHOD_WECHAT_JSAPI = 1u << 1, /* c-to-b: official account / mini-program */
    GW_METHOD_ALIPAY_QR = 1u << 2,
    GW_METHOD_ALIPAY_JSAPI = 1u << 3,
    GW_METHOD_BARCODE = 1u << 4       /* b-to-c: the cashier scans the pay code */
};

/* Gateway-wide results.  Anything a module cannot vouch for — a response
 * that does not verify, a timeout, a reset, an unparseable body — is
 * GW_PAY_UNKNOWN, never GW_PAY_FAILED: the order is then re-queried. */
typedef enum gw_pay_status {
    GW_PAY_UNKNOWN = 0,
    GW_PAY_PENDING = 1,     /* c-to-b order created, customer not yet paid */
    GW_PAY_SUCCESS = 2,
    GW_PAY_USER_PAYING = 3, /* b-to-c: waiting for the customer's password */
    GW_PAY_NOT_PAID = 4,    /* query: exists, not paid (yet) */
    GW_PAY_CLOSED = 5,
    GW_PAY_REVERSED = 6,    /* b-to-c cancelled/reversed */
    GW_PAY_FAILED = 7,      /* definitely not paid, will not be */
    GW_PAY_REFUNDED = 8     /* query: paid, then refunded (fully or partly) */
} gw_pay_status_t;

typedef enum gw_refund_status {
    GW_REFUND_UNKNOWN = 0,
    GW_REFUND_PROCESSING = 1,
    GW_REFUND_SUCCESS = 2,
    GW_REFUND_FAILED = 3
} gw_refund_status_t;

/* ------------------------------------------------------------------ */
/* Inputs.  All borrowed and const for the duration of the call. */

/* Sub-merchant credentials, from storage; they travel with each call. */
typedef struct gw_chan_merchant {
    gw_str_t mch_id;      /* the channel-side merchant number */
    gw_str_t app_id;      /* app id where the channel has one (may be empty) */
    gw_str_t key;         /* shared secret: MD5/HMAC key, APIv3 key (may be empty) */
    gw_str_t private_key; /* merchant private key, PEM or Base64 DER (may be empty) */
    gw_str_t public_key;  /* channel platform key/certificate for this merchant (may be empty) */
    gw_str_t extra;       /* JSON object text with channel-specific fields, e.g.
                             {"sign_type":"RSA_1_256"} or {"app_auth_token":"…"} */
} gw_chan_merchant_t;

typedef struct gw_chan_order {
    gw_str_t out_trade_no;  /* the gateway's trade number, as sent to the channel */
    int64_t amount;         /* fen */
    gw_str_t currency;      /* "CNY" */
    gw_str_t subject;
    uint32_t method;        /* one GW_METHOD_* */
    gw_str_t auth_code;     /* barcode: the customer's pay code */
    gw_str_t payer_id;      /* JSAPI: openid / Alipay buyer id */
    gw_str_t sub_appid;
    gw_str_t client_ip;
    gw_str_t notify_url;    /* where the channel notifies paygate */
    gw_str_t channel_trade_no; /* when known (queries, refunds) */
    gw_str_t attach;
    int64_t created_ms;     /* epoch ms when the gateway created the order */
    int64_t expire_ms;      /* epoch ms when an unpaid order expires (0: channel default) */
} gw_chan_order_t;

typedef struct gw_chan_refund {
    gw_str_t out_refund_no;
    int64_t amount;         /* fen, this refund */
    int64_t total_amount;   /* fen, the order's paid amount */
    gw_str_t reason;
    gw_str_t channel_refund_no; /* when known */
} gw_chan_refund_t;

/* flags of a call */
#define GW_CALL_REFUND_QUERY 0x1u /* query: ask for the refund, not the order */
#define GW_CALL_REVERSE      0x2u /* close: reverse/cancel a b-to-c payment */

typedef struct gw_host_api gw_host_api_t;

/* One operation's context. */
typedef struct gw_chan_call {
    void *ctx;                        /* the module's ctx_size block */
    const gw_host_api_t *host;
    const gw_chan_merchant_t *merchant;
    const gw_chan_order_t *order;     /* pay, query, refund, close */
    const gw_chan_refund_t *refund;   /* refund; query with GW_CALL_REFUND_QUERY */
    uint32_t flags;
} gw_chan_call_t;

/* The outbound request a module builds.  The core initialises the buffers. */
typedef struct gw_chan_request {
    const char *method;  /* static string: "POST" (default) or "GET" */
    gw_buf_t url;        /* absolute URL */
    gw_buf_t headers;    /* zero or more "Name: value\r\n" lines */
    gw_buf_t body;
    gw_buf_t sign_string;/* diagnostics: the exact string that was signed */
    int timeout_ms;      /* 0: the core's default deadline */
} gw_chan_request_t;

/* The channel's answer, as received. */
typedef struct gw_chan_response {
    int status;          /* HTTP status */
    gw_str_t headers;    /* raw header lines "Name: value\r\n"… */
    gw_str_t body;
} gw_chan_response_t;

/* What a module makes of a response. */
typedef struct gw_chan_result {
    int status;                 /* gw_pay_status_t, or gw_refund_status_t for refunds */
    int64_t amount;             /* amount the channel states, -1 when absent */
    char channel_trade_no[72];  /* the channel's transaction id, when given */
    char channel_refund_no[72];
    char mch_id[72];            /* merchant number the channel echoed ("" if none) */
    char raw_code[72];          /* the channel's own status/error code */
    char raw_msg[256];          /* and its message, for humans */
    int retry;                  /* channel asks to repeat the call (recall=Y, retry_flag=Y) */
    gw_buf_t pay_data;          /* c-to-b: JSON object text, e.g. {"code_url":"…"}
                                   or the JSAPI parameters */
} gw_chan_result_t;

/* An inbound notification (POST /notify/{channel}). */
typedef struct gw_chan_notify_in {
    gw_str_t method;
    gw_str_t path;
    gw_str_t query;
    gw_str_t headers;    /* raw header lines */
    gw_str_t body;
} gw_chan_notify_in_t;

enum gw_notify_kind { GW_NOTIFY_PAY = 1, GW_NOTIFY_REFUND = 2 };

typedef struct gw_chan_notify {
    /* notify_parse fills these (untrusted until notify_verify succeeds) */
    int kind;                   /* gw_notify_kind */
    char mch_id[72];            /* picks the sub-merchant credentials */
    char out_trade_no[72];
    char out_refund_no[72];
    /* notify_verify fills these */
    int status;                 /* gw_pay_status_t / gw_refund_status_t */
    int64_t amount;             /* fen; -1 when absent */
    char channel_trade_no[72];
    char raw_code[72];
    char raw_msg[256];
    gw_buf_t sign_string;       /* diagnostics */
    /* acknowledgements: what to answer when the notification was taken
     * (ok) or refused (fail).  notify_parse fills fail where it can;
     * notify_verify fills both. */
    int ack_ok_status;
    char ack_ok_type[64];
    gw_buf_t ack_ok_body;
    int ack_fail_status;
    char ack_fail_type[64];
    gw_buf_t ack_fail_body;
} gw_chan_notify_t;

/* ------------------------------------------------------------------ */
/* The host API: version 1.2 (1.0 + the XML members of 1.2).  Append only. */

typedef struct gw_rsa_key gw_rsa_key_t; /* opaque, owned by the core */
typedef struct gw_kv gw_kv_t;           /* opaque key/value list */
typedef struct gw_json gw_json_t;       /* opaque JSON value (borrowed or owned as stated) */

enum gw_log_level { GW_LOG_EMERG_ = 0, GW_LOG_ALERT_, GW_LOG_CRIT_, GW_LOG_ERR_,
                    GW_LOG_WARN_, GW_LOG_NOTICE_, GW_LOG_INFO_, GW_LOG_DEBUG_ };
enum gw_hash { GW_HASH_SHA1 = 1, GW_HASH_SHA256 = 2 };

/* kv_sign_string flags */
#define GW_KV_DROP_EMPTY 0x1u  /* leave out keys whose value is empty */
#define GW_KV_SORTED     0x2u  /* byte-wise ascending key order */

struct gw_host_api {
    /* 1.0 */
    uint32_t version;      /* GW_CHANNEL_ABI_VERSION of the core */
    uint32_t struct_size;  /* sizeof(gw_host_api_t) of the core */

    /* logging, tagged with the channel's name; never pass secrets */
    void (*log)(const void *ctx, int level, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
    uint64_t (*now_ms)(void);               /* wall clock, epoch ms */
    gw_err_t (*nonce)(char *out, size_t n); /* n chars [0-9A-Za-z] + NUL */

    /* buffers */
    gw_err_t (*buf_append)(gw_buf_t *b, const void *p, size_t n);
    gw_err_t (*buf_appendf)(gw_buf_t *b, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
    void (*buf_reset)(gw_buf_t *b);
    void (*buf_init)(gw_buf_t *b, size_t max);
    void (*buf_free)(gw_buf_t *b);

    /* hashing and encodings */
    void (*md5)(const void *data, size_t len, uint8_t out[16]);
    void (*sha1)(const void *data, size_t len, uint8_t out[20]);
    void (*sha256)(const void *data, size_t len, uint8_t out[32]);
    void (*hmac_sha256)(const void *key, size_t keylen, const void *data, size_t len,
                        uint8_t out[32]);
    void (*hex_encode)(const uint8_t *in, size_t n, char *out, int upper);
    gw_err_t (*base64_encode)(const uint8_t *in, size_t n, gw_buf_t *out);
    gw_err_t (*base64_decode)(const char *in, size_t n, gw_buf_t *out);
    gw_err_t (*url_encode)(const char *in, size_t n, gw_buf_t *out);
    gw_err_t (*url_decode)(const char *in, size_t n, int plus_is_space, gw_buf_t *out);

    /* RSA PKCS#1 v1.5.  Keys are parsed once and cached by the core for the
     * life of the process: the returned pointer needs no freeing. */
    gw_rsa_key_t *(*rsa_private)(const char *text, size_t len);
    gw_rsa_key_t *(*rsa_public)(const char *text, size_t len);
    gw_err_t (*rsa_sign)(gw_rsa_key_t *key, enum gw_hash hash, const void *data, size_t len,
                         gw_buf_t *sig_b64);
    gw_err_t (*rsa_verify)(gw_rsa_key_t *key, enum gw_hash hash, const void *data,
                           size_t len, const char *sig_b64, size_t siglen);
    gw_err_t (*x509_serial)(const char *pem, size_t len, char *out, size_t outlen);
    gw_err_t (*aes256gcm_encrypt)(const uint8_t key[32], const uint8_t *iv, size_t ivlen,
                                  const uint8_t *aad, size_t aadlen, const uint8_t *plain,
                                  size_t len, gw_buf_t *ct_and_tag);
    gw_err_t (*aes256gcm_decrypt)(const uint8_t key[32], const uint8_t *iv, size_t ivlen,
                                  const uint8_t *aad, size_t aadlen,
                                  const uint8_t *ct_and_tag, size_t len, gw_buf_t *plain);

    /* key/value lists: flat XML (<xml><k>v</k>…</xml>), forms, signing strings */
    gw_kv_t *(*kv_new)(void);
    void (*kv_free)(gw_kv_t *kv);
    gw_err_t (*kv_add)(gw_kv_t *kv, const char *key, size_t klen, const char *val,
                       size_t vlen);
    gw_err_t (*kv_addf)(gw_kv_t *kv, const char *key, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
    /* value of key, or {NULL,0} when absent */
    gw_str_t (*kv_get)(const gw_kv_t *kv, const char *key);
    size_t (*kv_count)(const gw_kv_t *kv);
    gw_str_t (*kv_key_at)(const gw_kv_t *kv, size_t i);
    gw_str_t (*kv_value_at)(const gw_kv_t *kv, size_t i);
    /* flat <xml> document → list; no DTD, no entities, bounded size */
    gw_err_t (*kv_parse_xml)(gw_kv_t *kv, const char *xml, size_t len);
    /* list → <xml><k><![CDATA[v]]></k>…</xml> */
    gw_err_t (*kv_to_xml)(const gw_kv_t *kv, gw_buf_t *out);
    /* application/x-www-form-urlencoded → list (values decoded) */
    gw_err_t (*kv_parse_form)(gw_kv_t *kv, const char *form, size_t len);
    /* list → k=urlenc(v)&… in list order */
    gw_err_t (*kv_to_form)(const gw_kv_t *kv, gw_buf_t *out);
    /* "k1=v1&k2=v2…" with raw values, leaving out the keys in the NULL-
     * terminated exclude list, with GW_KV_* flags */
    gw_err_t (*kv_sign_string)(const gw_kv_t *kv, const char *const *exclude, unsigned flags,
                               gw_buf_t *out);

    /* JSON (cJSON underneath).  A value from json_parse is owned by the
     * caller (json_free); values reached through it are borrowed. */
    gw_json_t *(*json_parse)(const char *text, size_t len);
    void (*json_free)(gw_json_t *j);
    gw_json_t *(*json_get)(const gw_json_t *obj, const char *key); /* NULL if absent */
    /* string value (NULL when not a string) */
    const char *(*json_string)(const gw_json_t *j);
    /* integer value; GW_EINVAL when not an integral number */
    gw_err_t (*json_int)(const gw_json_t *j, int64_t *out);
    /* appends s as a JSON string literal with quotes */
    gw_err_t (*json_quote)(gw_buf_t *out, const char *s, size_t len);

    /* raw header lines → value of header name (case-insensitive) */
    gw_str_t (*header_get)(gw_str_t headers, const char *name);

    /* added in 1.2: structured XML documents and the enveloped XML-DSig
     * profile (PROTOCOLS.md §B.3; docs/channels.md).  A module checks
     * host->struct_size before it uses them.  Every document is parsed by
     * libxml2 the same way: at most 1 MiB of UTF-8, no DOCTYPE (so no
     * entities beyond the predefined ones), no network, no comments and no
     * processing instructions (GW_EPARSE otherwise). */
    /* appends s escaped for XML text and attribute values (& < > " ' and CR
     * as references); GW_EINVAL for invalid UTF-8 or characters XML 1.0
     * cannot carry */
    gw_err_t (*xml_escape)(const char *s, size_t n, gw_buf_t *out);
    /* appends the text of the element at path, '/'-separated local names
     * from the root ("document/request/head/ReqMsgId"); elements in a
     * namespace never match.  GW_ENOENT when absent; GW_EPARSE when a step
     * matches two siblings or the element has element children */
    gw_err_t (*xml_get)(const char *doc, size_t len, const char *path, gw_buf_t *out);
    /* adds every leaf element below the element at path to kv, keyed by its
     * path relative to it ("RespInfo/ResultStatus"); GW_EPARSE on a repeated
     * key, mixed content or a namespaced element (kv is left as it was) */
    gw_err_t (*xml_kv)(const char *doc, size_t len, const char *path, gw_kv_t *kv);
    /* appends the unsigned doc with an enveloped Signature inserted as the
     * root's last child: inclusive C14N 1.0, rsa-sha256, one Reference
     * URI="" with the enveloped-signature transform, SHA-1 digest.  The
     * input must not contain a Signature; GW_EKEY for a public-only key */
    gw_err_t (*xmldsig_sign)(const char *doc, size_t len, gw_rsa_key_t *key, gw_buf_t *signed_doc);
    /* GW_OK when doc carries exactly that profile's Signature (one, the
     * root's last child; no other algorithm, reference or transform) and it
     * verifies with key; GW_ESIGN for anything else.  diag (may be NULL)
     * gets one line: the reason of a rejection or what was verified */
    gw_err_t (*xmldsig_verify)(const char *doc, size_t len, gw_rsa_key_t *key, gw_buf_t *diag);
};

/* added in 1.1: the channel's documented timing rules, which the core's
 * follow-up tasks obey.  A zero field means "use the core's default". */
typedef struct gw_chan_policy {
    uint32_t struct_size;          /* sizeof(gw_chan_policy_t) as the module saw it */
    uint32_t poll_interval_ms;     /* b-to-c: query cadence while the customer pays */
    uint32_t poll_deadline_ms;     /* b-to-c: reverse when still unpaid at this age */
    uint32_t reverse_min_age_ms;   /* never reverse before this age (WeChat: 15 s) */
    uint32_t close_min_age_ms;     /* never close before this age (Swiftpass: 5 min) */
    uint32_t refund_query_delay_ms;/* first refund query this long after the refund */
} gw_chan_policy_t;

/* ------------------------------------------------------------------ */
/* The module vtable: version 1.3 (1.0 + policy in 1.1 + light in 1.3).  Append only. */

typedef struct gw_channel {
    /* 1.0 header: these fields never move */
    uint32_t abi_version;  /* GW_CHANNEL_ABI_VERSION the module was built with */
    uint32_t struct_size;  /* sizeof(gw_channel_t) as the module saw it */
    uint32_t ctx_size;     /* bytes of per-channel state the core allocates */
    uint32_t methods;      /* GW_METHOD_* this channel supports */
    const char *name;      /* "swiftpass": [a-z0-9_]+, the /notify/{name} path */
    const char *version;   /* the module's own version, e.g. "1.2.0" */
    const char *build_sig; /* GW_CHANNEL_BUILD_SIG */

    /* 1.0 life cycle.  settings is the channel's object from the daemon's
     * configuration ("channels.settings.<name>") as JSON text, "{}" when
     * absent.  On failure init writes a reason (no secrets) into err. */
    gw_err_t (*init)(void *ctx, const gw_host_api_t *host, const char *settings,
                     size_t settings_len, gw_buf_t *err);
    /* may be NULL; never called after a failed init (init cleans up itself) */
    void (*fini)(void *ctx);

    /* 1.0 operations: each builds a request, then parses its response.
     * The *_parse functions return GW_OK with a result; status
     * GW_PAY_UNKNOWN (or GW_REFUND_UNKNOWN) whenever the outcome cannot be
     * trusted.  They are mandatory. */
    gw_err_t (*pay)(const gw_chan_call_t *call, gw_chan_request_t *req);
    gw_err_t (*pay_parse)(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                          gw_chan_result_t *res);
    /* order status, or refund status with GW_CALL_REFUND_QUERY */
    gw_err_t (*query)(const gw_chan_call_t *call, gw_chan_request_t *req);
    gw_err_t (*query_parse)(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                            gw_chan_result_t *res);
    gw_err_t (*refund)(const gw_chan_call_t *call, gw_chan_request_t *req);
    gw_err_t (*refund_parse)(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                             gw_chan_result_t *res);
    /* close an unpaid c-to-b order, or reverse a b-to-c one (GW_CALL_REVERSE);
     * result GW_PAY_CLOSED / GW_PAY_REVERSED on success */
    gw_err_t (*close)(const gw_chan_call_t *call, gw_chan_request_t *req);
    gw_err_t (*close_parse)(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                            gw_chan_result_t *res);
    /* notify-verify, in two steps: parse identifies the notification
     * (merchant number, order) without trusting it; the core looks up that
     * sub-merchant's credentials; verify checks the signature and fills the
     * result and both acknowledgements.  GW_ESIGN when it does not verify,
     * GW_EPARSE when it is malformed. */
    gw_err_t (*notify_parse)(void *ctx, const gw_host_api_t *host, const gw_chan_notify_in_t *in,
                             gw_chan_notify_t *out);
    gw_err_t (*notify_verify)(const gw_chan_call_t *call, const gw_chan_notify_in_t *in,
                              gw_chan_notify_t *out);

    /* added in 1.1 */
    const gw_chan_policy_t *policy; /* may be NULL: the core's defaults */

    /* added in 1.3: may be NULL (= never).  Nonzero when building this
     * call's request and parsing its answer (or verifying a notification
     * for call->merchant) is light work: hashes and HMACs only, no RSA or
     * other public-key operation, no blocking.  The core then runs those
     * steps on its event loop instead of handing them to the thread pool
     * and back (two thread hand-offs per call, which cost more than an MD5
     * of a few hundred bytes).  Called on the loop; must itself be cheap. */
    int (*light)(const gw_chan_call_t *call);
} gw_channel_t;

/* The one exported symbol. */
#define GW_CHANNEL_ENTRY_SYMBOL "gw_channel_entry"
typedef const gw_channel_t *(*gw_channel_entry_fn)(void);

#if defined(__GNUC__)
#define GW_CHANNEL_EXPORT __attribute__((visibility("default")))
#else
#define GW_CHANNEL_EXPORT
#endif

/* Every module defines this, and nothing else, with GW_CHANNEL_EXPORT. */
GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* GW_CHANNEL_H */
