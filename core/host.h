/*
 * host.h — the host-API table the core hands to channel modules
 * (gw_host_api_t, declared in channels/gw_channel.h, version 1.0).
 *
 * Every member is reentrant and may be called from libuv's thread pool.
 * Members that wrap another core file (buffers: util.c; hashing, RSA,
 * AES-GCM, encodings: crypto.c) are wired straight to it; host.c implements
 * the rest: tagged logging, the process-wide RSA key cache, key/value lists
 * (flat XML, forms, signing strings), JSON helpers and header lookup.
 *
 * Limits (all inputs come from the network or from storage):
 *   - kv_parse_xml: documents up to GW_KV_XML_MAX bytes, no DOCTYPE, no
 *     entities beyond the five predefined ones, no network, one level only;
 *   - a kv list holds at most GW_KV_MAX_ITEMS pairs, keys are unique;
 *   - json_parse: texts up to GW_JSON_MAX bytes;
 *   - the RSA key cache holds at most GW_RSA_CACHE_MAX keys.
 */
#ifndef GW_HOST_H
#define GW_HOST_H

#include "gw.h"

#define GW_KV_XML_MAX (1u << 20)
#define GW_KV_MAX_ITEMS 4096u
#define GW_JSON_MAX (8u << 20)
#define GW_RSA_CACHE_MAX 1024u

/* The table (static, valid for the life of the process). */
const gw_host_api_t *gw_host_api(void);

/* host->log(ctx, …) tags its line with the name registered for ctx (the
 * module's ctx_size block); an unregistered ctx is tagged "channel".  The
 * loader registers a module's ctx before init and unregisters it after fini.
 * name is copied (at most 31 characters). */
gw_err_t gw_host_register_ctx(const void *ctx, const char *name);
void gw_host_unregister_ctx(const void *ctx);

/* kv_parse_xml reads the common flat documents itself and hands the rest
 * to libxml2; this is the libxml2 reading alone, for the unit test that
 * compares the two. */
gw_err_t gw__kv_parse_xml_libxml(gw_kv_t *kv, const char *xml, size_t len);

/* Frees every cached RSA key.  Only at process exit, when no module call can
 * be running any more (the pointers handed out become invalid). */
void gw_host_shutdown(void);

/* Number of keys in the RSA cache (tests, metrics). */
size_t gw_host_rsa_cache_size(void);

#endif /* GW_HOST_H */
