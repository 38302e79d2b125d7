/*
 * bad_common.h — a minimal, valid channel that the deliberately broken test
 * modules (test/channels/bad_*) include after defining the one thing they
 * break.  Not a module itself (it is not in a directory of its own).
 *
 *   BAD_ABI_VERSION   abi_version          (default GW_CHANNEL_ABI_VERSION)
 *   BAD_STRUCT_SIZE   struct_size          (default sizeof(gw_channel_t))
 *   BAD_BUILD_SIG     build_sig            (default GW_CHANNEL_BUILD_SIG)
 *   BAD_PAY_PARSE     the pay_parse member (default bad_parse)
 *   BAD_INIT_FAILS    init fails with a message
 *   BAD_NO_ENTRY      export no gw_channel_entry()
 */
#include "gw_channel.h"

#include <stddef.h>

#ifndef BAD_ABI_VERSION
#define BAD_ABI_VERSION GW_CHANNEL_ABI_VERSION
#endif
#ifndef BAD_STRUCT_SIZE
#define BAD_STRUCT_SIZE sizeof(gw_channel_t)
#endif
#ifndef BAD_BUILD_SIG
#define BAD_BUILD_SIG GW_CHANNEL_BUILD_SIG
#endif
#ifndef BAD_PAY_PARSE
#define BAD_PAY_PARSE bad_parse
#endif

static gw_err_t bad_init(void *ctx, const gw_host_api_t *host, const char *settings,
                         size_t settings_len, gw_buf_t *err)
{
#ifdef BAD_INIT_FAILS
    host->buf_appendf(err, "refusing to start: %s", "missing settings.secret (on purpose)");
    return GW_EINVAL;
#else
    return GW_OK;
#endif
}

static void bad_fini(void *ctx)
{
}

static gw_err_t bad_build(const gw_chan_call_t *call, gw_chan_request_t *req)
{
    return GW_ENOTSUP;
}

static gw_err_t bad_parse(const gw_chan_call_t *call, const gw_chan_response_t *resp,
                          gw_chan_result_t *res)
{
    res->status = 0;
    return GW_OK;
}

static gw_err_t bad_notify_parse(void *ctx, const gw_host_api_t *host, const gw_chan_notify_in_t *in,
                                 gw_chan_notify_t *out)
{
    return GW_EPARSE;
}

static gw_err_t bad_notify_verify(const gw_chan_call_t *call, const gw_chan_notify_in_t *in,
                                  gw_chan_notify_t *out)
{
    return GW_ESIGN;
}

static const gw_channel_t bad_channel = {
    .abi_version = BAD_ABI_VERSION,
    .struct_size = BAD_STRUCT_SIZE,
    .ctx_size = 8,
    .methods = GW_METHOD_WECHAT_QR,
    .name = GW_CHANNEL_NAME,
    .version = "0.0.1",
    .build_sig = BAD_BUILD_SIG,
    .init = bad_init,
    .fini = bad_fini,
    .pay = bad_build,
    .pay_parse = BAD_PAY_PARSE,
    .query = bad_build,
    .query_parse = bad_parse,
    .refund = bad_build,
    .refund_parse = bad_parse,
    .close = bad_build,
    .close_parse = bad_parse,
    .notify_parse = bad_notify_parse,
    .notify_verify = bad_notify_verify,
};

#ifdef BAD_NO_ENTRY
/* exports something, but not the entry point */
GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry_v0(void);
GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry_v0(void)
#else
GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry(void);
GW_CHANNEL_EXPORT const gw_channel_t *gw_channel_entry(void)
#endif
{
    return &bad_channel;
}
