/*
 * tasks.c — background work that makes every outcome known and heard.
 *
 * Three kinds of due rows, each claimed in batches with
 * SELECT … FOR UPDATE SKIP LOCKED and a lease (storage/migrations/0002), so
 * several paygated processes on one database never run the same job twice
 * and a crashed process's jobs are taken over when its lease expires:
 *
 *   orders   not final: b-to-c polling while the customer pays, reverse at
 *            the channel's deadline; re-query of PENDING orders past a grace
 *            period and of UNKNOWN / stale CREATED ones with backoff; close of
 *            expired unpaid c-to-b orders once the channel's minimum age is
 *            reached;
 *   refunds  PROCESSING: sent again when the channel never acknowledged them
 *            (channels treat a repeated refund number as the same refund),
 *            queried otherwise, with backoff;
 *   notifications to merchants: POSTed, signed with the merchant's secret,
 *            until the merchant answers 200 "success", on the configured
 *            schedule; then FAILED and listed for the operator;
 *   settlement: one step of the settlement consumer (gw_settle_run,
 *            storage/migrations/0007): order events of finished
 *            transactions → settlement entries, a batch of transactions at a
 *            time; again at once while there is a backlog.  No lease: one
 *            cursor row taken with FOR UPDATE SKIP LOCKED.
 *
 * Every delay of a schedule is multiplied by tasks.time_scale (tests run
 * them compressed).
 */
#include "tasks.h"
#include "api.h"
#include "channel.h"
#include "json.h"
#include "chanop.h"
#include "client.h"
#include "crypto.h"
#include "metrics.h"
#include "rows.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

enum { K_ORDERS, K_REFUNDS, K_NOTIFY, K_SETTLE, K_N };
static const char *const kind_names[K_N] = { "orders", "refunds", "notifications", "settlement" };
static const char *const claim_stmts[K_N] = { "claim_orders", "claim_refunds", "claim_notifications",
                                              "settle_run" };

struct gw_tasks {
    gw_app_t *app;
    uv_timer_t timer;
    char owner[96];
    int claiming[K_N];
    int inflight[K_N];
    int stopping;
    void (*done)(void *);
    void *done_udata;
    /* notifications in flight per merchant (tiny open list) */
    struct mbusy { char id[40]; int n; } busy[256];
};

typedef struct job {
    gw_tasks_t *t;
    int kind;
    cJSON *row;        /* claimed row (owned) */
    cJSON *order, *sub, *refund; /* borrowed from row */
    gw_chan_merchant_t cm;
    gw_chan_order_t co;
    gw_chan_refund_t cr;
    char notify_url[512];
    gw_chan_policy_t pol;
    int64_t age_ms;
    int expired;
    int attempts;
    char merchant[40];
} job_t;

static uint32_t scaled(const gw_tasks_t *t, double ms)
{
    double v = ms * t->app->cfg.tasks.time_scale;
    if (v < 1) v = 1;
    if (v > 86400000.0 * 30) v = 86400000.0 * 30;
    return (uint32_t)v;
}

static void policy_for(const gw_chan_module_t *m, gw_chan_policy_t *p)
{
    /* core defaults: Swiftpass-like (PROTOCOLS.md) */
    p->poll_interval_ms = 5000;
    p->poll_deadline_ms = 30000;
    p->reverse_min_age_ms = 0;
    p->close_min_age_ms = 0;
    p->refund_query_delay_ms = 5000;
    const gw_chan_policy_t *mp = m ? m->vt->policy : NULL;
    if (mp == NULL) return;
    size_t have = mp->struct_size;
#define TAKE(f)                                                                                \
    if (have >= offsetof(gw_chan_policy_t, f) + sizeof(mp->f) && mp->f) p->f = mp->f
    TAKE(poll_interval_ms);
    TAKE(poll_deadline_ms);
    TAKE(reverse_min_age_ms);
    TAKE(close_min_age_ms);
    TAKE(refund_query_delay_ms);
#undef TAKE
}

/* 5 s, 10 s, 20 s … capped, by attempt number */
static uint32_t backoff_ms(const gw_tasks_t *t, int attempts)
{
    double s = 5.0;
    for (int i = 0; i < attempts && s < t->app->cfg.tasks.backoff_max_s; i++) s *= 2;
    if (s > t->app->cfg.tasks.backoff_max_s) s = t->app->cfg.tasks.backoff_max_s;
    return scaled(t, s * 1000);
}

static void maybe_done(gw_tasks_t *t);

static void job_free(job_t *j)
{
    gw_tasks_t *t = j->t;
    t->inflight[j->kind]--;
    cJSON_Delete(j->row);
    free(j);
    maybe_done(t);
}

uint32_t gw_tasks_reverse_min_age_ms(gw_app_t *app, const char *channel)
{
    gw_tasks_t tmp = { .app = app };
    gw_chan_policy_t pol;
    gw_chan_module_t *m = channel ? gw_chan_acquire(app->channels, channel) : NULL;
    policy_for(m, &pol);
    if (m) gw_chan_release(m);
    return pol.reverse_min_age_ms ? scaled(&tmp, pol.reverse_min_age_ms) : 0;
}

uint32_t gw_tasks_first_check_ms(gw_app_t *app, const char *channel, const char *status)
{
    gw_tasks_t tmp = { .app = app };
    gw_chan_policy_t pol;
    gw_chan_module_t *m = channel ? gw_chan_acquire(app->channels, channel) : NULL;
    policy_for(m, &pol);
    if (m) gw_chan_release(m);
    if (status == NULL || strcmp(status, "CREATED") == 0)
        return scaled(&tmp, app->cfg.tasks.created_grace_s * 1000.0);
    if (strcmp(status, "PENDING") == 0) return scaled(&tmp, app->cfg.tasks.pending_grace_s * 1000.0);
    if (strcmp(status, "USER_PAYING") == 0) return scaled(&tmp, pol.poll_interval_ms);
    if (strcmp(status, "REFUND") == 0) return scaled(&tmp, pol.refund_query_delay_ms);
    return backoff_ms(&tmp, 0); /* UNKNOWN */
}

/* ------------------------------------------------------------------ */
/* orders */

static void order_step(job_t *j);

static void order_saved(void *udata, gw_err_t err, cJSON *res)
{
    job_t *j = udata;
    (void)res;
    if (err != GW_OK)
        gw_log(GW_LOG_WARN, "tasks: order %s: saving the check failed (%s); the lease expires and "
               "another check follows", gw_jstr(j->order, "trade_no"), gw_strerror(err));
    job_free(j);
}

/* to == NULL: stay in the current state, check again after next_ms */
static void order_save(job_t *j, const char *from, const char *to, uint32_t next_ms,
                       const gw_chan_result_t *res, const char *source)
{
    cJSON *p = cJSON_CreateObject();
    if (res) {
        if (res->channel_trade_no[0]) cJSON_AddStringToObject(p, "channel_trade_no", res->channel_trade_no);
        if (res->raw_code[0]) cJSON_AddStringToObject(p, "channel_code", res->raw_code);
        if (res->raw_msg[0]) cJSON_AddStringToObject(p, "channel_msg", res->raw_msg);
    }
    cJSON_AddNumberToObject(p, "next_check_ms", next_ms);
    if (to == NULL) cJSON_AddBoolToObject(p, "attempt", 1);
    char *patch = gw_json_print(p);
    cJSON_Delete(p);
    char id[24];
    snprintf(id, sizeof(id), "%lld", (long long)gw_jint(j->order, "id"));
    const char *st = gw_jstr(j->order, "status");
    char fromb[64];
    snprintf(fromb, sizeof(fromb), "{%s}", from ? from : st);
    const char *v[] = { id, fromb, to ? to : st, patch, source };
    if (to && strcmp(to, st) != 0)
        gw_log(GW_LOG_INFO, "tasks: order %s %s → %s (%s)", gw_jstr(j->order, "trade_no"), st, to,
               res && res->raw_code[0] ? res->raw_code : source);
    gw_err_t rc = gw_pg_json(j->t->app, "order_transition", 5, v, order_saved, j);
    free(patch);
    if (rc != GW_OK) order_saved(j, rc, NULL);
}

static void reversal_recorded(void *udata, gw_err_t err, cJSON *res)
{
    job_t *j = udata;
    if (err != GW_OK)
        gw_log(GW_LOG_ERR, "tasks: order %s: recording the reversal after payment failed (%s)",
               gw_jstr(j->order, "trade_no"), gw_strerror(err));
    else if (cJSON_IsTrue(gw_json_get(res, "recorded")))
        gw_log(GW_LOG_WARN, "tasks: order %s was paid and then reversed at the channel: refund %s of %lld recorded",
               gw_jstr(j->order, "trade_no"), gw_jstr(res, "refund_no"), (long long)gw_jint(res, "amount"));
    job_free(j);
}

/* After a successful reverse: CLOSED — unless the order became SUCCESS
 * meanwhile (a notification raced the reverse): the channel then returned
 * the money, which is recorded as a full refund. */
static void reverse_saved(void *udata, gw_err_t err, cJSON *res)
{
    job_t *j = udata;
    const cJSON *o = gw_json_get(res, "order");
    const char *now = gw_jstr(o, "status");
    if (err == GW_OK && now && strcmp(now, "SUCCESS") == 0) {
        char id[24];
        snprintf(id, sizeof(id), "%lld", (long long)gw_jint(j->order, "id"));
        const char *v[] = { id, "{\"reason\":\"reversed after payment\"}" };
        if (gw_pg_json(j->t->app, "order_reversed_after_payment", 2, v, reversal_recorded, j) == GW_OK) return;
    }
    order_saved(j, err, res);
}

static void order_closed(void *udata, gw_chanop_out_t *out)
{
    job_t *j = udata;
    const char *st = gw_jstr(j->order, "status");
    if (out->err == GW_OK) {
        switch (out->res.status) {
        case GW_PAY_REVERSED: {
            cJSON *p = cJSON_CreateObject();
            if (out->res.raw_code[0]) cJSON_AddStringToObject(p, "channel_code", out->res.raw_code);
            cJSON_AddStringToObject(p, "channel_msg", "reversed");
            char *patch = gw_json_print(p);
            cJSON_Delete(p);
            char id[24], from[64];
            snprintf(id, sizeof(id), "%lld", (long long)gw_jint(j->order, "id"));
            snprintf(from, sizeof(from), "{%s}", st);
            const char *v[] = { id, from, "CLOSED", patch, "task" };
            gw_log(GW_LOG_INFO, "tasks: order %s %s → CLOSED (reversed)", gw_jstr(j->order, "trade_no"), st);
            gw_err_t rc = gw_pg_json(j->t->app, "order_transition", 5, v, reverse_saved, j);
            free(patch);
            if (rc != GW_OK) order_saved(j, rc, NULL);
            return;
        }
        case GW_PAY_CLOSED:
            order_save(j, st, "CLOSED", 0, &out->res, "task");
            return;
        case GW_PAY_SUCCESS:
            order_save(j, st, "SUCCESS", 0, &out->res, "task");
            return;
        default:
            break;
        }
    }
    /* not closed yet (refused, unknown): keep trying, and a waiting b-to-c
     * order whose reverse is unclear becomes UNKNOWN */
    const char *to = strcmp(st, "USER_PAYING") == 0 ? "UNKNOWN" : NULL;
    order_save(j, st, to, backoff_ms(j->t, j->attempts), &out->res, "task");
}

static void order_close(job_t *j, int reverse)
{
    gw_err_t rc = gw_chanop_run(j->t->app, gw_jstr(j->order, "channel"), GW_OP_CLOSE,
                                reverse ? GW_CALL_REVERSE : 0, &j->cm, &j->co, NULL, order_closed, j);
    if (rc != GW_OK) order_save(j, NULL, NULL, backoff_ms(j->t, j->attempts), NULL, "task");
}

static void order_queried(void *udata, gw_chanop_out_t *out)
{
    job_t *j = udata;
    const char *st = gw_jstr(j->order, "status");
    int barcode = j->co.method == GW_METHOD_BARCODE;
    int r = out->err == GW_OK ? out->res.status : GW_PAY_UNKNOWN;
    switch (r) {
    case GW_PAY_SUCCESS:
    case GW_PAY_REFUNDED:
        order_save(j, st, "SUCCESS", 0, &out->res, "query");
        return;
    case GW_PAY_CLOSED:
    case GW_PAY_REVERSED:
        order_save(j, st, "CLOSED", 0, &out->res, "query");
        return;
    case GW_PAY_FAILED:
        order_save(j, st, "FAILED", 0, &out->res, "query");
        return;
    default:
        break;
    }
    /* not paid, still paying, or nothing learned */
    if (barcode) {
        if (j->age_ms >= (int64_t)j->pol.poll_deadline_ms) {
            if (j->age_ms >= (int64_t)j->pol.reverse_min_age_ms) {
                order_close(j, 1);
                return;
            }
            order_save(j, NULL, NULL, (uint32_t)(j->pol.reverse_min_age_ms - j->age_ms) + 1, &out->res, "task");
            return;
        }
        const char *to = r == GW_PAY_USER_PAYING && strcmp(st, "USER_PAYING") != 0 ? "USER_PAYING"
                       : strcmp(st, "CREATED") == 0 ? "UNKNOWN" : NULL;
        order_save(j, st, to, scaled(j->t, j->pol.poll_interval_ms), &out->res, "query");
        return;
    }
    /* c-to-b.  An order that never got its QR code or JSAPI parameters
     * (CREATED: a crash before the channel answered; UNKNOWN: the answer
     * was lost) cannot have been shown to the customer, so once the channel
     * says it is not paid it is closed without waiting for its expiry. */
    const cJSON *pd = gw_json_get(j->order, "pay_data");
    int never_shown = (pd == NULL || cJSON_IsNull(pd)) &&
                      (strcmp(st, "CREATED") == 0 || strcmp(st, "UNKNOWN") == 0);
    if (j->expired || (never_shown && r == GW_PAY_NOT_PAID)) {
        if (j->age_ms >= (int64_t)j->pol.close_min_age_ms) {
            order_close(j, 0);
            return;
        }
        order_save(j, NULL, NULL, (uint32_t)(j->pol.close_min_age_ms - j->age_ms) + 1, &out->res, "task");
        return;
    }
    const char *to = strcmp(st, "CREATED") == 0 ? "UNKNOWN" : NULL;
    order_save(j, st, to, backoff_ms(j->t, j->attempts), &out->res, "query");
}

static void order_step(job_t *j)
{
    gw_tasks_t *t = j->t;
    gw_app_t *app = t->app;
    const char *st = gw_jstr(j->order, "status");
    if (j->sub == NULL || gw_rows_merchant(j->sub, &j->cm) != GW_OK) {
        order_save(j, NULL, NULL, backoff_ms(t, j->attempts), NULL, "task");
        return;
    }
    gw_rows_order(app, j->order, &j->co, j->notify_url, sizeof(j->notify_url));
    gw_chan_module_t *m = gw_chan_acquire(app->channels, gw_jstr(j->order, "channel"));
    policy_for(m, &j->pol);
    if (m) gw_chan_release(m);
    j->pol.poll_interval_ms = j->pol.poll_interval_ms; /* scaled where used */
    j->pol.poll_deadline_ms = scaled(t, j->pol.poll_deadline_ms);
    j->pol.reverse_min_age_ms = scaled(t, j->pol.reverse_min_age_ms);
    j->pol.close_min_age_ms = scaled(t, j->pol.close_min_age_ms);
    /* an expired unpaid c-to-b order old enough: close straight away */
    if (strcmp(st, "PENDING") == 0 && j->expired && j->age_ms >= (int64_t)j->pol.close_min_age_ms) {
        order_close(j, 0);
        return;
    }
    gw_err_t rc = gw_chanop_run(app, gw_jstr(j->order, "channel"), GW_OP_QUERY, 0, &j->cm, &j->co,
                                NULL, order_queried, j);
    if (rc != GW_OK) order_save(j, NULL, NULL, backoff_ms(t, j->attempts), NULL, "task");
}

/* ------------------------------------------------------------------ */
/* refunds */

static void refund_saved(void *udata, gw_err_t err, cJSON *res)
{
    job_t *j = udata;
    (void)res;
    if (err != GW_OK)
        gw_log(GW_LOG_WARN, "tasks: refund %s: saving failed (%s)", gw_jstr(j->refund, "refund_no"),
               gw_strerror(err));
    job_free(j);
}

static void refund_done(void *udata, gw_chanop_out_t *out)
{
    job_t *j = udata;
    const char *to = "PROCESSING";
    int ack = 0;
    if (out->err == GW_OK) {
        if (out->res.status == GW_REFUND_SUCCESS) to = "SUCCESS";
        else if (out->res.status == GW_REFUND_FAILED) to = "FAILED";
        else if (out->res.status == GW_REFUND_PROCESSING) ack = 1;
    }
    cJSON *p = cJSON_CreateObject();
    if (out->res.channel_refund_no[0]) cJSON_AddStringToObject(p, "channel_refund_no", out->res.channel_refund_no);
    if (out->res.raw_code[0]) cJSON_AddStringToObject(p, "channel_code", out->res.raw_code);
    if (out->res.raw_msg[0]) cJSON_AddStringToObject(p, "channel_msg", out->res.raw_msg);
    if (ack) cJSON_AddBoolToObject(p, "channel_ack", 1);
    cJSON_AddNumberToObject(p, "next_check_ms", backoff_ms(j->t, j->attempts));
    cJSON_AddBoolToObject(p, "attempt", 1);
    char *patch = gw_json_print(p);
    cJSON_Delete(p);
    char id[24];
    snprintf(id, sizeof(id), "%lld", (long long)gw_jint(j->refund, "id"));
    const char *v[] = { id, to, patch, "task" };
    if (strcmp(to, "PROCESSING") != 0)
        gw_log(GW_LOG_INFO, "tasks: refund %s → %s", gw_jstr(j->refund, "refund_no"), to);
    gw_err_t rc = gw_pg_json(j->t->app, "refund_transition", 4, v, refund_saved, j);
    free(patch);
    if (rc != GW_OK) refund_saved(j, rc, NULL);
}

static void refund_step(job_t *j)
{
    gw_app_t *app = j->t->app;
    if (j->sub == NULL || gw_rows_merchant(j->sub, &j->cm) != GW_OK) {
        gw_chanop_out_t out;
        memset(&out, 0, sizeof(out));
        out.err = GW_EINVAL;
        refund_done(j, &out);
        return;
    }
    gw_rows_order(app, j->order, &j->co, j->notify_url, sizeof(j->notify_url));
    gw_rows_refund(j->refund, j->order, &j->cr);
    /* never acknowledged by the channel: send it (again — the refund number
     * makes a repeat the same refund); acknowledged: ask how it went */
    int acked = cJSON_IsTrue(gw_json_get(j->refund, "channel_ack"));
    gw_err_t rc = gw_chanop_run(app, gw_jstr(j->order, "channel"), acked ? GW_OP_QUERY : GW_OP_REFUND,
                                acked ? GW_CALL_REFUND_QUERY : 0, &j->cm, &j->co, &j->cr, refund_done, j);
    if (rc != GW_OK) {
        gw_chanop_out_t out;
        memset(&out, 0, sizeof(out));
        out.err = rc;
        refund_done(j, &out);
    }
}

/* ------------------------------------------------------------------ */
/* merchant notifications */

static struct mbusy *busy_slot(gw_tasks_t *t, const char *merchant, int create)
{
    struct mbusy *free_slot = NULL;
    for (size_t i = 0; i < GW_ARRAY_SIZE(t->busy); i++) {
        if (t->busy[i].n > 0 && strcmp(t->busy[i].id, merchant) == 0) return &t->busy[i];
        if (t->busy[i].n == 0 && free_slot == NULL) free_slot = &t->busy[i];
    }
    if (create && free_slot) snprintf(free_slot->id, sizeof(free_slot->id), "%s", merchant);
    return create ? free_slot : NULL;
}

static void notify_saved(void *udata, gw_err_t err, cJSON *res)
{
    job_t *j = udata;
    (void)res;
    if (err != GW_OK && err != GW_ENOENT)
        gw_log(GW_LOG_WARN, "tasks: notification %lld: recording the attempt failed (%s)",
               (long long)gw_jint(j->row, "id"), gw_strerror(err));
    struct mbusy *b = busy_slot(j->t, j->merchant, 0);
    if (b) b->n--;
    job_free(j);
}

static void notify_sent(void *udata, gw_client_response_t *r)
{
    job_t *j = udata;
    gw_tasks_t *t = j->t;
    int delivered = 0;
    if (r->err == GW_OK && r->status == 200 && r->body.data) {
        const char *b = r->body.data;
        size_t n = r->body.len;
        while (n && (b[n - 1] == ' ' || b[n - 1] == '\n' || b[n - 1] == '\r' || b[n - 1] == '\t')) n--;
        while (n && (*b == ' ' || *b == '\n' || *b == '\r' || *b == '\t')) b++, n--;
        delivered = n == 7 && memcmp(b, "success", 7) == 0;
    }
    int attempts = (int)gw_jint(j->row, "attempts") + 1;
    const gw_config_t *cfg = &t->app->cfg;
    char next[24], status[16], id[24], err[160];
    const char *nextp = NULL;
    if (!delivered && attempts < cfg->tasks.notify_schedule_len) {
        snprintf(next, sizeof(next), "%u", scaled(t, cfg->tasks.notify_schedule_s[attempts] * 1000.0));
        nextp = next;
    }
    snprintf(status, sizeof(status), "%d", r->status);
    snprintf(id, sizeof(id), "%lld", (long long)gw_jint(j->row, "id"));
    if (r->err != GW_OK) snprintf(err, sizeof(err), "%s", r->errmsg);
    else if (!delivered) snprintf(err, sizeof(err), "answer was not 200 \"success\"");
    else err[0] = '\0';
    char labels[64];
    snprintf(labels, sizeof(labels), "result=\"%s\"", delivered ? "delivered" : nextp ? "retry" : "failed");
    gw_metric_add("paygate_merchant_notifications_total", labels, 1);
    if (!delivered)
        gw_log(nextp ? GW_LOG_INFO : GW_LOG_WARN, "tasks: notification %s to merchant %s: attempt %d %s%s",
               id, j->merchant, attempts, err, nextp ? "" : "; giving up (listed for the operator)");
    const char *v[] = { id, t->owner, delivered ? "true" : "false", r->err == GW_OK ? status : NULL,
                        err[0] ? err : NULL, nextp };
    gw_err_t rc = gw_pg_json(t->app, "notification_attempt", 6, v, notify_saved, j);
    if (rc != GW_OK) notify_saved(j, rc, NULL);
}

static void notify_step(job_t *j)
{
    gw_tasks_t *t = j->t;
    const cJSON *payload = gw_json_get(j->row, "payload");
    char *body = gw_json_print(payload);
    const char *secret = gw_jstr(j->row, "secret");
    snprintf(j->merchant, sizeof(j->merchant), "%s", gw_jstr(j->row, "merchant_id"));
    struct mbusy *b = busy_slot(t, j->merchant, 1);
    if (b) b->n++;
    char ts[24], nonce[33], sig[65];
    snprintf(ts, sizeof(ts), "%llu", (unsigned long long)(gw_now_ms() / 1000));
    gw_nonce(nonce, 32);
    gw_notification_sign(secret ? secret : "", ts, nonce, body ? body : "", sig);
    gw_buf_t hdr;
    gw_buf_init(&hdr, 4096);
    gw_buf_appendf(&hdr,
                   "Content-Type: application/json\r\nX-Paygate-Event: %s\r\n"
                   "X-Paygate-Timestamp: %s\r\nX-Paygate-Nonce: %s\r\nX-Paygate-Signature: %s\r\n",
                   gw_jstr(j->row, "event"), ts, nonce, sig);
    gw_client_request_t req = {
        .method = "POST",
        .url = gw_jstr(j->row, "url"),
        .headers = hdr.data,
        .body = body,
        .body_len = body ? strlen(body) : 0,
        .timeout_ms = t->app->cfg.tasks.notify_timeout_ms,
    };
    gw_err_t rc = req.url ? gw_client_send(t->app->client, &req, notify_sent, j) : GW_EINVAL;
    gw_buf_free(&hdr);
    free(body);
    if (rc != GW_OK) {
        gw_client_response_t r;
        memset(&r, 0, sizeof(r));
        r.err = rc;
        snprintf(r.errmsg, sizeof(r.errmsg), "not sent: %s", gw_strerror(rc));
        notify_sent(j, &r);
    }
}

/* ------------------------------------------------------------------ */
/* claiming */

typedef struct claim {
    gw_tasks_t *t;
    int kind;
} claim_t;

static void claim(gw_tasks_t *t, int kind);

static void claimed(void *udata, gw_err_t err, cJSON *arr)
{
    claim_t *c = udata;
    gw_tasks_t *t = c->t;
    int kind = c->kind;
    free(c);
    t->claiming[kind] = 0;
    if (t->stopping) {
        /* the rows stay leased and are taken over after the lease */
        maybe_done(t);
        return;
    }
    if (err != GW_OK) {
        if (err != GW_EUNAVAIL)
            gw_log(GW_LOG_WARN, "tasks: claiming %s failed: %s", kind_names[kind], gw_strerror(err));
        return;
    }
    if (kind == K_SETTLE) { /* the step is done in the database */
        if (gw_jint(arr, "entries") > 0)
            gw_log(GW_LOG_DEBUG, "tasks: settlement: %lld events, %lld entries",
                   (long long)gw_jint(arr, "events"), (long long)gw_jint(arr, "entries"));
        if (cJSON_IsTrue(gw_json_get(arr, "more"))) claim(t, K_SETTLE);
        return;
    }
    cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        job_t *j = calloc(1, sizeof(*j));
        if (j == NULL) break;
        j->t = t;
        j->kind = kind;
        j->row = cJSON_Duplicate(it, 1);
        j->order = gw_json_get(j->row, "order");
        j->sub = gw_json_get(j->row, "sub");
        if (cJSON_IsNull(j->sub)) j->sub = NULL;
        j->refund = gw_json_get(j->row, "refund");
        j->age_ms = gw_jint(j->row, "age_ms");
        j->expired = cJSON_IsTrue(gw_json_get(j->row, "expired"));
        t->inflight[kind]++;
        if (kind == K_ORDERS) {
            j->attempts = (int)gw_jint(j->order, "check_attempts");
            order_step(j);
        } else if (kind == K_REFUNDS) {
            j->attempts = (int)gw_jint(j->refund, "check_attempts");
            refund_step(j);
        } else {
            notify_step(j);
        }
    }
}

static void claim(gw_tasks_t *t, int kind)
{
    const gw_config_t *cfg = &t->app->cfg;
    int room = cfg->tasks.batch - t->inflight[kind];
    if (t->claiming[kind] || room <= 0) return;
    claim_t *c = malloc(sizeof(*c));
    if (c == NULL) return;
    c->t = t;
    c->kind = kind;
    char lease[16], lim[16], per[16];
    snprintf(lease, sizeof(lease), "%d", cfg->tasks.lease_ms);
    snprintf(lim, sizeof(lim), "%d", room);
    snprintf(per, sizeof(per), "%d", cfg->tasks.notify_per_merchant);
    const char *v[] = { t->owner, lease, lim, per };
    const char *vs[] = { lim };
    t->claiming[kind] = 1;
    gw_err_t rc = kind == K_SETTLE ? gw_pg_json(t->app, claim_stmts[kind], 1, vs, claimed, c)
                                   : gw_pg_json(t->app, claim_stmts[kind], kind == K_NOTIFY ? 4 : 3, v, claimed, c);
    if (rc != GW_OK) {
        t->claiming[kind] = 0;
        free(c);
    }
}

static void on_tick(uv_timer_t *h)
{
    gw_tasks_t *t = h->data;
    if (t->stopping || gw_pg_up(t->app->pg) == 0) return;
    for (int k = 0; k < K_N; k++) claim(t, k);
}

void gw_notification_sign(const char *secret, const char *ts, const char *nonce, const char *body,
                          char out[65])
{
    gw_buf_t b;
    gw_buf_init(&b, (size_t)-1 / 2);
    gw_buf_appendf(&b, "%s\n%s\n", ts, nonce);
    gw_buf_appends(&b, body);
    uint8_t mac[32];
    gw_hmac_sha256(secret, strlen(secret), b.data ? b.data : "", b.len, mac);
    gw_hex_encode(mac, 32, out, 0);
    gw_buf_free(&b);
}

static const struct {
    const char *name;
    const char *sql;
} task_stmts[] = {
    { "claim_orders", "SELECT gw_claim_orders($1, $2::int, $3::int)" },
    { "claim_refunds", "SELECT gw_claim_refunds($1, $2::int, $3::int)" },
    { "claim_notifications", "SELECT gw_claim_notifications($1, $2::int, $3::int, $4::int)" },
    { "notification_attempt", "SELECT gw_notification_attempt($1::bigint, $2, $3::boolean, $4::int, $5, $6::int)" },
    { "settle_run", "SELECT gw_settle_run($1::int)" },
};

gw_tasks_t *gw_tasks_new(gw_app_t *app)
{
    gw_tasks_t *t = gw_xcalloc(1, sizeof(*t));
    t->app = app;
    if (app->cfg.tasks.node_id) snprintf(t->owner, sizeof(t->owner), "%s", app->cfg.tasks.node_id);
    else {
        char host[64] = "host";
        gethostname(host, sizeof(host) - 1);
        snprintf(t->owner, sizeof(t->owner), "%s:%d", host, (int)getpid());
    }
    for (size_t i = 0; i < GW_ARRAY_SIZE(task_stmts); i++)
        gw_pg_prepare(app->pg, task_stmts[i].name, task_stmts[i].sql);
    gw_metric_declare("paygate_merchant_notifications_total", "counter",
                      "Merchant notification attempts by result");
    uv_timer_init(app->loop, &t->timer);
    t->timer.data = t;
    return t;
}

void gw_tasks_start(gw_tasks_t *t)
{
    if (!t->app->cfg.tasks.enabled) {
        gw_log(GW_LOG_NOTICE, "tasks: disabled on this node");
        return;
    }
    gw_log(GW_LOG_NOTICE, "tasks: running as %s (tick %d ms, time scale %g)", t->owner,
           t->app->cfg.tasks.tick_ms, t->app->cfg.tasks.time_scale);
    uv_timer_start(&t->timer, on_tick, (uint64_t)t->app->cfg.tasks.tick_ms,
                   (uint64_t)t->app->cfg.tasks.tick_ms);
}

const char *gw_tasks_owner(const gw_tasks_t *t) { return t->owner; }

int gw_tasks_busy(const gw_tasks_t *t)
{
    int n = 0;
    for (int k = 0; k < K_N; k++) n += t->inflight[k] + t->claiming[k];
    return n;
}

static void on_timer_closed(uv_handle_t *h)
{
    gw_tasks_t *t = h->data;
    t->timer.data = NULL;
    maybe_done(t);
}

static void maybe_done(gw_tasks_t *t)
{
    if (!t->stopping || t->timer.data != NULL || gw_tasks_busy(t) > 0) return;
    void (*done)(void *) = t->done;
    void *ud = t->done_udata;
    free(t);
    if (done) done(ud);
}

void gw_tasks_stop(gw_tasks_t *t, void (*done)(void *), void *udata)
{
    /* No new work; jobs in flight finish (each has its channel or delivery
     * deadline), then done.  Storage and the HTTP client must stay open
     * until then. */
    t->stopping = 1;
    t->done = done;
    t->done_udata = udata;
    uv_timer_stop(&t->timer);
    if (gw_tasks_busy(t) > 0)
        gw_log(GW_LOG_NOTICE, "tasks: waiting for %d jobs in flight", gw_tasks_busy(t));
    uv_close((uv_handle_t *)&t->timer, on_timer_closed);
}
