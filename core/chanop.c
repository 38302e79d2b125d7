/*
 * chanop.c — run one channel operation (see chanop.h).
 */
#include "chanop.h"
#include "json.h"
#include "app.h"
#include "channel.h"
#include "client.h"
#include "health.h"
#include "host.h"
#include "metrics.h"
#include "api.h"

#include <cjson/cJSON.h>

#include <stdio.h>
#include <stdlib.h>

typedef struct op {
    uv_work_t work;
    gw_app_t *app;
    gw_chan_module_t *mod;
    const gw_channel_t *vt;
    enum gw_chanop_kind kind;
    gw_chan_call_t call;
    gw_chan_request_t req;
    gw_chan_response_t resp;
    gw_buf_t resp_headers, resp_body;
    gw_chanop_out_t out;
    gw_err_t stage_err;
    uint64_t start_us;
    gw_chanop_cb cb;
    void *udata;
    char channel[32];
    int reached;   /* the HTTP stage ran: the outcome says something about the channel */
    int light;     /* build and parse run on the loop (gw_channel_t.light, ABI 1.3) */
} op_t;

static const char *const op_names[] = { "?", "pay", "query", "refund", "close" };

void gw_chanop_metrics_init(void)
{
    gw_metric_declare("paygate_channel_calls_total", "counter",
                      "Channel calls by channel, operation and outcome");
    gw_metric_declare("paygate_channel_call_duration_seconds", "histogram",
                      "Channel call latency (request sent to response parsed)");
}

static void op_free(op_t *o)
{
    const gw_host_api_t *h = gw_host_api();
    h->buf_free(&o->req.url);
    h->buf_free(&o->req.headers);
    h->buf_free(&o->req.body);
    h->buf_free(&o->req.sign_string);
    h->buf_free(&o->resp_headers);
    h->buf_free(&o->resp_body);
    h->buf_free(&o->out.res.pay_data);
    free(o);
}

static void op_finish(op_t *o)
{
    const char *outcome;
    if (o->out.err != GW_OK) outcome = "error";
    else if (o->kind == GW_OP_REFUND || (o->kind == GW_OP_QUERY && (o->call.flags & GW_CALL_REFUND_QUERY)))
        outcome = gw_chan_refund_status_name(o->out.res.status);
    else outcome = gw_chan_pay_status_name(o->out.res.status);
    char labels[128];
    gw_strjoin(labels, sizeof(labels), "channel=\"", o->channel, "\",op=\"", op_names[o->kind],
               "\",result=\"", outcome, "\"", NULL);
    gw_metric_add("paygate_channel_calls_total", labels, 1);
    gw_strjoin(labels, sizeof(labels), "channel=\"", o->channel, "\",op=\"", op_names[o->kind], "\"", NULL);
    gw_metric_observe("paygate_channel_call_duration_seconds", labels,
                      (double)(gw_mono_us() - o->start_us) / 1e6);
    if (o->mod) {
        gw_chan_release(o->mod);
        o->mod = NULL;
    }
    int failed = o->reached && (o->out.http_status == 0 || o->out.http_status >= 500 ||
                                o->out.res.status == 0 /* UNKNOWN */);
    gw_health_release(o->app, o->channel, failed);
    o->cb(o->udata, &o->out);
    op_free(o);
}

/* ---- stage 3: parse (thread pool) ---- */

static void parse_work(uv_work_t *w)
{
    op_t *o = w->data;
    gw_chan_result_t *res = &o->out.res;
    switch (o->kind) {
    case GW_OP_PAY: o->stage_err = o->vt->pay_parse(&o->call, &o->resp, res); break;
    case GW_OP_QUERY: o->stage_err = o->vt->query_parse(&o->call, &o->resp, res); break;
    case GW_OP_REFUND: o->stage_err = o->vt->refund_parse(&o->call, &o->resp, res); break;
    case GW_OP_CLOSE: o->stage_err = o->vt->close_parse(&o->call, &o->resp, res); break;
    }
}

/* The core's own check of a verdict, whatever the module did: an answer
 * about another merchant number or another amount than ours is not about
 * this order (docs/channels.md). */
static void check_echo(op_t *o)
{
    gw_chan_result_t *res = &o->out.res;
    const char *why = NULL;
    const gw_chan_merchant_t *m = o->call.merchant;
    size_t n = strlen(res->mch_id);
    if (n && m && (n != m->mch_id.len || memcmp(res->mch_id, m->mch_id.ptr, n) != 0))
        why = "answer names another merchant number";
    int refund = o->kind == GW_OP_REFUND || (o->kind == GW_OP_QUERY && (o->call.flags & GW_CALL_REFUND_QUERY));
    int64_t want = refund ? (o->call.refund ? o->call.refund->amount : -1)
                          : (o->call.order ? o->call.order->amount : -1);
    int success = refund ? res->status == GW_REFUND_SUCCESS
                         : (res->status == GW_PAY_SUCCESS || res->status == GW_PAY_REFUNDED);
    if (!why && success && res->amount >= 0 && want >= 0 && res->amount != want)
        why = "answer states another amount";
    if (why) {
        gw_log(GW_LOG_WARN, "channel %s %s: %s; outcome treated as unknown", o->channel,
               op_names[o->kind], why);
        res->status = 0; /* UNKNOWN: re-queried, never trusted */
        snprintf(res->raw_msg, sizeof(res->raw_msg), "paygate: %s", why);
    }
}

static void parse_done(uv_work_t *w, int status)
{
    op_t *o = w->data;
    if (status != 0 || o->stage_err != GW_OK) {
        /* a module that cannot parse its answer gives no verdict */
        o->out.res.status = 0; /* UNKNOWN */
        snprintf(o->out.res.raw_msg, sizeof(o->out.res.raw_msg), "response not understood: %s",
                 gw_strerror(o->stage_err));
    } else {
        check_echo(o);
    }
    op_finish(o);
}

/* ---- stage 2: HTTP ---- */

static void on_response(void *udata, gw_client_response_t *r)
{
    op_t *o = udata;
    o->reached = 1;
    o->out.sent = r->sent;
    o->out.http_status = r->status;
    if (r->err != GW_OK) {
        /* timeout, reset, refused: the outcome is unknown */
        o->out.res.status = 0;
        snprintf(o->out.res.raw_code, sizeof(o->out.res.raw_code), "%s", gw_err_name(r->err));
        snprintf(o->out.res.raw_msg, sizeof(o->out.res.raw_msg), "%s", r->errmsg);
        gw_log(GW_LOG_WARN, "channel %s %s: %s (%s)%s", o->channel, op_names[o->kind],
               gw_strerror(r->err), r->errmsg, r->sent ? "" : ", not sent");
        op_finish(o);
        return;
    }
    /* keep the bytes: the client frees its buffers after this callback */
    const gw_host_api_t *h = gw_host_api();
    if (h->buf_append(&o->resp_headers, r->headers.data ? r->headers.data : "", r->headers.len) != GW_OK ||
        h->buf_append(&o->resp_body, r->body.data ? r->body.data : "", r->body.len) != GW_OK) {
        o->out.res.status = 0;
        op_finish(o);
        return;
    }
    o->resp.status = r->status;
    o->resp.headers = (gw_str_t){ o->resp_headers.data, o->resp_headers.len };
    o->resp.body = (gw_str_t){ o->resp_body.data, o->resp_body.len };
    o->work.data = o;
    if (o->light) {
        parse_work(&o->work);
        parse_done(&o->work, 0);
        return;
    }
    if (uv_queue_work(o->app->loop, &o->work, parse_work, parse_done) != 0) {
        o->out.res.status = 0;
        op_finish(o);
    }
}

/* ---- stage 1: build (thread pool) ---- */

static void build_work(uv_work_t *w)
{
    op_t *o = w->data;
    switch (o->kind) {
    case GW_OP_PAY: o->stage_err = o->vt->pay(&o->call, &o->req); break;
    case GW_OP_QUERY: o->stage_err = o->vt->query(&o->call, &o->req); break;
    case GW_OP_REFUND: o->stage_err = o->vt->refund(&o->call, &o->req); break;
    case GW_OP_CLOSE: o->stage_err = o->vt->close(&o->call, &o->req); break;
    }
}

/* GW_OK when the module built a request. */
static gw_err_t build_result(op_t *o, int status)
{
    if (status == 0 && o->stage_err == GW_OK && o->req.url.len > 0) return GW_OK;
    gw_err_t err = o->stage_err != GW_OK ? o->stage_err : GW_EINVAL;
    gw_log(GW_LOG_ERR, "channel %s %s: building the request failed: %s", o->channel,
           op_names[o->kind], gw_strerror(err));
    return err;
}

static gw_err_t op_send(op_t *o)
{
    gw_client_request_t creq = {
        .method = o->req.method ? o->req.method : "POST",
        .url = o->req.url.data,
        .headers = o->req.headers.data,
        .body = o->req.body.data,
        .body_len = o->req.body.len,
        .timeout_ms = o->req.timeout_ms > 0 ? o->req.timeout_ms : o->app->cfg.channels.call_timeout_ms,
        .pool = o->channel, /* each channel's connections apart */
    };
    return gw_client_send(o->app->client, &creq, on_response, o);
}

static void build_done(uv_work_t *w, int status)
{
    op_t *o = w->data;
    if (o->out.err == GW_OK) { /* else a light call that failed on the loop */
        o->out.err = build_result(o, status);
        if (o->out.err == GW_OK) o->out.err = op_send(o);
        if (o->out.err == GW_OK) return;
    }
    op_finish(o);
}

static void nothing_work(uv_work_t *w)
{
    (void)w;
}

/* A light call: built on the loop and sent at once.  A failure is still
 * reported through the thread pool's completion, never from inside
 * gw_chanop_run. */
static int build_light(op_t *o)
{
    build_work(&o->work);
    o->out.err = build_result(o, 0);
    if (o->out.err == GW_OK) o->out.err = op_send(o);
    if (o->out.err == GW_OK) return 0;
    return uv_queue_work(o->app->loop, &o->work, nothing_work, build_done);
}

/* ---- the built-in stored-value channel "balance" ----
 * No module and no HTTP: each operation is one statement that moves the
 * ledger and settles the order or refund in the same transaction
 * (storage/migrations/0004_balance.sql).  Idempotent, so the follow-up tasks
 * finish what a crash interrupted by simply asking again. */

typedef struct bal {
    enum gw_chanop_kind kind;
    uint32_t flags;
    gw_chanop_cb cb;
    void *udata;
    gw_chanop_out_t out;
} bal_t;

static void balance_done(void *udata, gw_err_t err, cJSON *j)
{
    bal_t *b = udata;
    gw_chanop_out_t *out = &b->out;
    int refund = b->kind == GW_OP_REFUND || (b->flags & GW_CALL_REFUND_QUERY);
    const char *st = cJSON_GetStringValue(gw_json_get(j, "status"));
    const char *code = cJSON_GetStringValue(gw_json_get(j, "code"));
    out->err = GW_OK;
    out->sent = err != GW_EUNAVAIL;
    out->http_status = err == GW_OK ? 200 : 0;
    out->res.status = 0; /* UNKNOWN unless the ledger says otherwise */
    if (err != GW_OK) {
        snprintf(out->res.raw_code, sizeof(out->res.raw_code), "%s", gw_err_name(err));
    } else if (st && strcmp(st, "SUCCESS") == 0) {
        out->res.status = refund ? GW_REFUND_SUCCESS : GW_PAY_SUCCESS;
    } else if (st && strcmp(st, "FAILED") == 0) {
        out->res.status = refund ? GW_REFUND_FAILED : GW_PAY_FAILED;
    } else if (st && strcmp(st, "CLOSED") == 0 && !refund) {
        out->res.status = GW_PAY_CLOSED;
    }
    if (err == GW_OK) snprintf(out->res.raw_code, sizeof(out->res.raw_code), "%s", code ? code : st ? st : "");
    if (code && strcmp(code, "INSUFFICIENT_BALANCE") == 0)
        snprintf(out->res.raw_msg, sizeof(out->res.raw_msg), "the balance does not cover the amount");
    snprintf(out->channel_version, sizeof(out->channel_version), "built-in");
    b->cb(b->udata, out);
    gw_host_api()->buf_free(&out->res.pay_data);
    free(b);
}

static gw_err_t balance_run(gw_app_t *app, enum gw_chanop_kind kind, uint32_t flags,
                            const gw_chan_order_t *order, const gw_chan_refund_t *refund,
                            gw_chanop_cb cb, void *udata)
{
    const char *stmt;
    gw_str_t arg;
    if (kind == GW_OP_REFUND || (kind == GW_OP_QUERY && (flags & GW_CALL_REFUND_QUERY))) {
        if (refund == NULL) return GW_EINVAL;
        stmt = "balance_refund";
        arg = refund->out_refund_no;
    } else if (kind == GW_OP_PAY || kind == GW_OP_QUERY) {
        stmt = "balance_pay";
        arg = order->out_trade_no;
    } else {
        return GW_ENOTSUP; /* a balance payment is settled at once: nothing to close */
    }
    bal_t *b = calloc(1, sizeof(*b));
    if (b == NULL) return GW_ENOMEM;
    b->kind = kind;
    b->flags = flags;
    b->cb = cb;
    b->udata = udata;
    gw_host_api()->buf_init(&b->out.res.pay_data, 16);
    b->out.res.amount = -1;
    char key[80];
    snprintf(key, sizeof(key), "%.*s", (int)(arg.len < 72 ? arg.len : 72), arg.ptr);
    const char *v[] = { key };
    gw_err_t rc = gw_pg_json(app, stmt, 1, v, balance_done, b);
    if (rc != GW_OK) free(b);
    return rc;
}

gw_err_t gw_chanop_run(gw_app_t *app, const char *channel, enum gw_chanop_kind kind,
                       uint32_t flags, const gw_chan_merchant_t *merchant,
                       const gw_chan_order_t *order, const gw_chan_refund_t *refund,
                       gw_chanop_cb cb, void *udata)
{
    if (strcmp(channel, GW_CHANNEL_BALANCE) == 0)
        return balance_run(app, kind, flags, order, refund, cb, udata);
    gw_chan_module_t *mod = gw_chan_acquire(app->channels, channel);
    if (mod == NULL) return GW_ENOENT;
    gw_err_t hrc = gw_health_acquire(app, channel);
    if (hrc != GW_OK) {
        gw_chan_release(mod);
        return hrc; /* bulkhead full or breaker open: nothing was sent */
    }
    op_t *o = calloc(1, sizeof(*o));
    if (o == NULL) {
        gw_chan_release(mod);
        gw_health_release(app, channel, 0);
        return GW_ENOMEM;
    }
    const gw_host_api_t *h = gw_host_api();
    o->app = app;
    o->mod = mod;
    o->vt = mod->vt;
    o->kind = kind;
    o->cb = cb;
    o->udata = udata;
    o->start_us = gw_mono_us();
    gw_strjoin(o->channel, sizeof(o->channel), channel, NULL);
    gw_strjoin(o->out.channel_version, sizeof(o->out.channel_version), o->vt->version, NULL);
    o->call.ctx = mod->ctx;
    o->call.host = h;
    o->call.merchant = merchant;
    o->call.order = order;
    o->call.refund = refund;
    o->call.flags = flags;
    o->req.method = "POST";
    h->buf_init(&o->req.url, 4096);
    h->buf_init(&o->req.headers, 16384);
    h->buf_init(&o->req.body, 256 * 1024);
    h->buf_init(&o->req.sign_string, 256 * 1024);
    h->buf_init(&o->resp_headers, 64 * 1024);
    h->buf_init(&o->resp_body, 1 << 20);
    h->buf_init(&o->out.res.pay_data, 64 * 1024);
    o->out.res.amount = -1;
    o->work.data = o;
    o->light = gw_chan_light(o->vt, &o->call);
    if (o->light ? build_light(o) != 0 : uv_queue_work(app->loop, &o->work, build_work, build_done) != 0) {
        gw_chan_release(mod);
        gw_health_release(app, channel, 0);
        o->mod = NULL;
        op_free(o);
        return GW_EIO;
    }
    return GW_OK;
}
