/*
 * notify.c — POST /notify/{channel}: channel → paygate notifications.
 *
 *   1. the module parses the notification (untrusted): merchant number, order;
 *   2. that sub-merchant's credentials are loaded;
 *   3. the module verifies the signature (thread pool: RSA; on the loop when
 *      the module says the merchant's scheme is light, e.g. MD5);
 *   4. one statement appends it to notify_inbox and, when it is verified and
 *      matches the order (channel, merchant number, amount), applies it;
 *   5. only then the channel gets its acknowledgement.
 * A forged or unparseable notification is recorded as rejected and answered
 * with the channel's failure acknowledgement; nothing else changes.  When the
 * database is down the channel gets a failure answer and will retry.
 */
#include "api.h"
#include "channel.h"
#include "chanop.h"
#include "json.h"
#include "host.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct notif {
    uv_work_t work;
    gw_app_t *app;
    gw_http_req_t *req;
    gw_chan_module_t *mod;
    const gw_channel_t *vt;
    char channel[32];
    gw_buf_t raw_headers;
    gw_chan_notify_in_t in;
    gw_chan_notify_t out;
    gw_chan_merchant_t cm;
    cJSON *sub;
    gw_err_t verify_err;
} notif_t;

static void notif_free(notif_t *n)
{
    const gw_host_api_t *h = gw_host_api();
    if (n->mod) gw_chan_release(n->mod);
    gw_buf_free(&n->raw_headers);
    h->buf_free(&n->out.sign_string);
    h->buf_free(&n->out.ack_ok_body);
    h->buf_free(&n->out.ack_fail_body);
    cJSON_Delete(n->sub);
    free(n);
}

static void answer(notif_t *n, int ok)
{
    gw_chan_notify_t *o = &n->out;
    int status = ok ? o->ack_ok_status : o->ack_fail_status;
    const char *type = ok ? o->ack_ok_type : o->ack_fail_type;
    gw_buf_t *body = ok ? &o->ack_ok_body : &o->ack_fail_body;
    if (status == 0) {
        /* the module gave no acknowledgement for this case */
        if (ok) gw_http_respond(n->req, 200, "text/plain", "success", 7);
        else gw_http_respond_error(n->req, 400, "notify_rejected", "notification rejected");
    } else {
        gw_http_respond(n->req, status, type[0] ? type : "text/plain", body->data ? body->data : "",
                        body->len);
    }
    notif_free(n);
}

static void ingest_cb(void *udata, gw_err_t err, cJSON *j)
{
    notif_t *n = udata;
    if (err != GW_OK) {
        gw_log_req(GW_LOG_WARN, n->req->id, "notify %s: not recorded (%s); the channel will retry",
                   n->channel, gw_strerror(err));
        answer(n, 0);
        return;
    }
    const char *outcome = cJSON_GetStringValue(gw_json_get(j, "outcome"));
    int verified = n->verify_err == GW_OK;
    gw_log_req(verified && outcome && strncmp(outcome, "rejected", 8) != 0 &&
                       strncmp(outcome, "conflict", 8) != 0 ? GW_LOG_INFO : GW_LOG_WARN,
               n->req->id, "notify %s: order %s mch %s: %s", n->channel, n->out.out_trade_no,
               n->out.mch_id, outcome ? outcome : "?");
    /* A verified notification is acknowledged once it is recorded, even when
     * it does not match the order (the operator sees it in notify_inbox);
     * retries would not change it. */
    answer(n, verified);
}

/* reason != NULL: the notification is not trusted (n->verify_err says why) */
static void ingest(notif_t *n, const char *reason)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "channel", n->channel);
    cJSON_AddStringToObject(p, "headers", n->raw_headers.data ? n->raw_headers.data : "");
    cJSON_AddStringToObject(p, "body", n->req->body.data ? n->req->body.data : "");
    cJSON_AddBoolToObject(p, "verified", reason == NULL);
    if (reason) cJSON_AddStringToObject(p, "reason", reason);
    cJSON_AddStringToObject(p, "mch_id", n->out.mch_id);
    cJSON_AddStringToObject(p, "out_trade_no", n->out.out_trade_no);
    if (n->out.kind == GW_NOTIFY_REFUND) cJSON_AddStringToObject(p, "out_refund_no", n->out.out_refund_no);
    cJSON_AddStringToObject(p, "kind", n->out.kind == GW_NOTIFY_REFUND ? "refund" : "pay");
    cJSON_AddStringToObject(p, "status", n->out.kind == GW_NOTIFY_REFUND
                                             ? gw_chan_refund_status_name(n->out.status)
                                             : gw_chan_pay_status_name(n->out.status));
    if (n->out.amount >= 0) cJSON_AddNumberToObject(p, "amount", (double)n->out.amount);
    cJSON_AddStringToObject(p, "channel_trade_no", n->out.channel_trade_no);
    cJSON_AddStringToObject(p, "raw_code", n->out.raw_code);
    cJSON_AddStringToObject(p, "raw_msg", n->out.raw_msg);
    char *text = gw_json_print(p);
    cJSON_Delete(p);
    if (text == NULL) {
        answer(n, 0);
        return;
    }
    const char *v[] = { text };
    gw_err_t rc = gw_pg_json(n->app, "notify_ingest", 1, v, ingest_cb, n);
    free(text);
    if (rc != GW_OK) ingest_cb(n, rc, NULL);
}

static void verify_work(uv_work_t *w)
{
    notif_t *n = w->data;
    gw_chan_call_t call = {
        .ctx = n->mod->ctx,
        .host = gw_host_api(),
        .merchant = &n->cm,
    };
    n->verify_err = n->vt->notify_verify(&call, &n->in, &n->out);
}

static void verify_done(uv_work_t *w, int status)
{
    notif_t *n = w->data;
    if (status != 0) n->verify_err = GW_ECANCELED;
    if (n->verify_err != GW_OK) {
        char why[96];
        snprintf(why, sizeof(why), "%s", n->verify_err == GW_ESIGN ? "bad signature"
                                                                    : gw_strerror(n->verify_err));
        ingest(n, why);
        return;
    }
    ingest(n, NULL);
}

static gw_str_t js(const cJSON *o, const char *k)
{
    const char *s = cJSON_GetStringValue(gw_json_get(o, k));
    return (gw_str_t){ s ? s : "", s ? strlen(s) : 0 };
}

static void sub_cb(void *udata, gw_err_t err, cJSON *j)
{
    notif_t *n = udata;
    if (err == GW_ENOENT) {
        n->verify_err = GW_ENOENT;
        ingest(n, "unknown merchant number");
        return;
    }
    if (err != GW_OK) {
        answer(n, 0);
        return;
    }
    n->sub = cJSON_Duplicate(j, 1);
    n->cm.mch_id = js(n->sub, "mch_id");
    n->cm.app_id = js(n->sub, "app_id");
    n->cm.key = js(n->sub, "key");
    n->cm.private_key = js(n->sub, "private_key");
    n->cm.public_key = js(n->sub, "public_key");
    n->cm.extra = js(n->sub, "extra");
    n->work.data = n;
    gw_chan_call_t call = { .ctx = n->mod->ctx, .host = gw_host_api(), .merchant = &n->cm };
    if (gw_chan_light(n->vt, &call)) { /* e.g. an MD5 check: on the loop */
        verify_work(&n->work);
        verify_done(&n->work, 0);
        return;
    }
    if (uv_queue_work(n->app->loop, &n->work, verify_work, verify_done) != 0) answer(n, 0);
}

/* The row from PostgreSQL: cached for the next notifications of this
 * merchant number, then used. */
static void sub_loaded(void *udata, gw_err_t err, cJSON *j)
{
    notif_t *n = udata;
    if (err == GW_OK) gw_subcache_put(n->app, j);
    sub_cb(n, err, j);
}

void gw_notify_handle(gw_app_t *app, gw_http_req_t *req, gw_str_t channel);
void gw_notify_handle(gw_app_t *app, gw_http_req_t *req, gw_str_t channel)
{
    if (channel.len == 0 || channel.len >= 32) {
        gw_http_respond_error(req, 404, "unknown_channel", "no such channel");
        return;
    }
    notif_t *n = calloc(1, sizeof(*n));
    if (n == NULL) {
        gw_http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    n->app = app;
    n->req = req;
    memcpy(n->channel, channel.ptr, channel.len);
    n->mod = gw_chan_acquire(app->channels, n->channel);
    if (n->mod == NULL) {
        free(n);
        gw_http_respond_error(req, 404, "unknown_channel", "no such channel");
        return;
    }
    n->vt = n->mod->vt;
    const gw_host_api_t *h = gw_host_api();
    gw_buf_init(&n->raw_headers, 64 * 1024);
    for (int i = 0; i < req->nheaders; i++) {
        gw_buf_append(&n->raw_headers, req->headers[i].name.ptr, req->headers[i].name.len);
        gw_buf_append(&n->raw_headers, ": ", 2);
        gw_buf_append(&n->raw_headers, req->headers[i].value.ptr, req->headers[i].value.len);
        gw_buf_append(&n->raw_headers, "\r\n", 2);
    }
    n->in.method = gw_str(req->method_name);
    n->in.path = req->path;
    n->in.query = req->query;
    n->in.headers = (gw_str_t){ n->raw_headers.data ? n->raw_headers.data : "", n->raw_headers.len };
    n->in.body = (gw_str_t){ req->body.data, req->body.len };
    h->buf_init(&n->out.sign_string, 256 * 1024);
    h->buf_init(&n->out.ack_ok_body, 64 * 1024);
    h->buf_init(&n->out.ack_fail_body, 64 * 1024);
    n->out.amount = -1;
    gw_err_t rc = n->vt->notify_parse(n->mod->ctx, h, &n->in, &n->out);
    if (rc != GW_OK || n->out.mch_id[0] == '\0') {
        n->verify_err = rc != GW_OK ? rc : GW_EPARSE;
        ingest(n, rc == GW_OK ? "no merchant number" : gw_strerror(rc));
        return;
    }
    char chan[32];
    snprintf(chan, sizeof(chan), "%s", n->channel);
    const cJSON *cached = gw_subcache_get_by_mch(app, chan, n->out.mch_id);
    if (cached) {
        sub_cb(n, GW_OK, (cJSON *)cached);
        return;
    }
    const char *v[] = { chan, n->out.mch_id };
    rc = gw_pg_json(app, "sub_get_by_mch", 2, v, sub_loaded, n);
    if (rc != GW_OK) answer(n, 0);
}
