/*
 * ctl.c — `paygated channel check|build|notify-verify`: load one module file
 * through the loader's own checks (gw_chan_open_file) and show what it
 * does, without any network, database or running daemon.
 *
 *   check           validates and inits the module, prints what it is;
 *   build           prints the request the module would send for an
 *                   operation (method, URL, headers, body, string-to-sign);
 *   notify-verify   replays a captured notification (a raw HTTP request)
 *                   through notify_parse + notify_verify with a merchant's
 *                   credentials and prints the verdict, the signed string,
 *                   the parsed fields and the acknowledgement.
 *
 * Secrets: the merchant file holds keys.  They are wiped from memory after
 * use, never printed, and every line this file prints has any occurrence of
 * the merchant key or private key replaced with "<redacted>" (a module that
 * puts "&key=…" into its sign_string is thereby covered too).
 */
#include "ctl.h"
#include "channel.h"
#include "host.h"
#include "settle.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <strings.h>

#define CTL_INPUT_MAX (4u << 20)
#define CTL_OUT_MAX (1u << 20)
#define REDACTED "<redacted>"

typedef struct {
    const char *cmd;
    const char *module;
    const char *settings;
    const char *merchant;
    const char *op;
    const char *order;
    const char *refund;
    const char *request;
} ctl_args_t;

typedef struct {
    FILE *out, *err;
    gw_str_t secrets[2];
} ctl_t;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: paygated channel check --module FILE.so [--settings JSON|@file]\n"
            "       paygated channel build --module FILE.so [--settings JSON|@file]\n"
            "                --merchant JSON|@file --op pay|query|refund|refund-query|close|reverse\n"
            "                --order JSON|@file [--refund JSON|@file]\n"
            "       paygated channel notify-verify --module FILE.so [--settings JSON|@file]\n"
            "                --merchant JSON|@file [REQUEST_FILE|-]\n"
            "       paygated channel reconcile -c CONFIG --channel NAME --date YYYY-MM-DD\n"
            "                [--mch-id MCH] [--json] BILL_FILE|-   (needs the database)\n"
            "merchant: {\"mch_id\",\"app_id\",\"key\",\"private_key\",\"public_key\",\"extra\"};\n"
            "          a value \"@path\" is read from that file (e.g. a PEM key)\n"
            "exit status: 0 ok/verified, 1 rejected, 2 usage or input error\n");
}

/* ------------------------------------------------------------------ */
/* input */

static gw_err_t read_file(const char *path, gw_buf_t *out)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (f == NULL) return errno == ENOENT ? GW_ENOENT : GW_EIO;
    gw_err_t rc = GW_OK;
    char chunk[8192];
    size_t n;
    while (rc == GW_OK && (n = fread(chunk, 1, sizeof(chunk), f)) > 0) rc = gw_buf_append(out, chunk, n);
    if (rc == GW_OK && ferror(f)) rc = GW_EIO;
    if (rc == GW_OK && out->data == NULL) rc = gw_buf_append(out, "", 0);
    if (f != stdin) fclose(f);
    return rc;
}

/* "@path" → the file's contents; anything else → itself. */
static gw_err_t arg_text(ctl_t *c, const char *what, const char *spec, gw_buf_t *out)
{
    gw_err_t rc = spec[0] == '@' ? read_file(spec + 1, out) : gw_buf_appends(out, spec);
    if (rc == GW_OK && out->data == NULL) rc = gw_buf_append(out, "", 0);
    if (rc != GW_OK)
        fprintf(c->err, "paygated channel: %s: cannot read %s: %s\n", what, spec, gw_strerror(rc));
    return rc;
}

static cJSON *arg_json_object(ctl_t *c, const char *what, const char *spec)
{
    gw_buf_t b;
    gw_buf_init(&b, CTL_INPUT_MAX);
    cJSON *j = NULL;
    if (arg_text(c, what, spec, &b) == GW_OK) {
        j = cJSON_ParseWithLength(b.data, b.len);
        if (!cJSON_IsObject(j)) {
            fprintf(c->err, "paygated channel: %s: not a JSON object\n", what);
            cJSON_Delete(j);
            j = NULL;
        }
    }
    gw_buf_free(&b);
    return j;
}

static void secret_free(gw_buf_t *b)
{
    if (b->data) explicit_bzero(b->data, b->cap);
    gw_buf_free(b);
}

/* ---- merchant credentials ---- */

enum { M_MCH_ID, M_APP_ID, M_KEY, M_PRIVATE_KEY, M_PUBLIC_KEY, M_EXTRA, M_N };
static const char *const merchant_keys[M_N] = { "mch_id", "app_id", "key", "private_key",
                                                "public_key", "extra" };

typedef struct {
    gw_buf_t f[M_N];
    gw_chan_merchant_t m;
} merchant_t;

static void merchant_free(merchant_t *mc)
{
    for (int i = 0; i < M_N; i++) secret_free(&mc->f[i]);
}

static gw_err_t merchant_load(ctl_t *c, const char *spec, merchant_t *mc)
{
    for (int i = 0; i < M_N; i++) gw_buf_init(&mc->f[i], CTL_INPUT_MAX);
    gw_buf_t text;
    gw_buf_init(&text, CTL_INPUT_MAX);
    gw_err_t rc = arg_text(c, "--merchant", spec, &text);
    cJSON *j = rc == GW_OK ? cJSON_ParseWithLength(text.data, text.len) : NULL;
    secret_free(&text);
    if (rc != GW_OK) return rc;
    if (!cJSON_IsObject(j)) {
        fprintf(c->err, "paygated channel: --merchant: not a JSON object\n");
        rc = GW_EINVAL;
        goto out;
    }
    for (const cJSON *it = j->child; it; it = it->next) {
        int k = 0;
        while (k < M_N && strcmp(it->string, merchant_keys[k]) != 0) k++;
        if (k == M_N) {
            fprintf(c->err, "paygated channel: --merchant: unknown key \"%s\" (want %s)\n",
                    it->string, "mch_id, app_id, key, private_key, public_key, extra");
            rc = GW_EINVAL;
            goto out;
        }
        if (k == M_EXTRA && cJSON_IsObject(it)) {
            char *s = cJSON_PrintUnformatted(it);
            rc = s ? gw_buf_appends(&mc->f[k], s) : GW_ENOMEM;
            cJSON_free(s);
        } else if (cJSON_IsString(it)) {
            const char *v = it->valuestring;
            rc = v[0] == '@' ? arg_text(c, merchant_keys[k], v, &mc->f[k]) : gw_buf_appends(&mc->f[k], v);
        } else {
            fprintf(c->err, "paygated channel: --merchant: \"%s\" must be a string%s\n", it->string,
                    k == M_EXTRA ? " or an object" : "");
            rc = GW_EINVAL;
        }
        if (rc != GW_OK) goto out;
    }
    gw_str_t *dst[M_N] = { &mc->m.mch_id, &mc->m.app_id, &mc->m.key, &mc->m.private_key,
                           &mc->m.public_key, &mc->m.extra };
    for (int i = 0; i < M_N; i++) *dst[i] = (gw_str_t){ mc->f[i].data ? mc->f[i].data : "", mc->f[i].len };
    c->secrets[0] = mc->m.key;
    c->secrets[1] = mc->m.private_key;
out:
    if (j) {
        /* the parsed tree held the key text too */
        for (cJSON *it = j->child; it; it = it->next)
            if (cJSON_IsString(it)) explicit_bzero(it->valuestring, strlen(it->valuestring));
        cJSON_Delete(j);
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* output with secrets redacted */

static void put_redacted(ctl_t *c, const char *s, size_t n)
{
    size_t i = 0, run = 0;
    while (i < n) {
        size_t hit = 0;
        for (int k = 0; k < 2 && !hit; k++) {
            gw_str_t sec = c->secrets[k];
            if (sec.len >= 4 && n - i >= sec.len && memcmp(s + i, sec.ptr, sec.len) == 0) hit = sec.len;
        }
        if (!hit) {
            i++;
            continue;
        }
        fwrite(s + run, 1, i - run, c->out);
        fputs(REDACTED, c->out);
        i += hit;
        run = i;
    }
    fwrite(s + run, 1, n - run, c->out);
}

static void line(ctl_t *c, const char *label, const char *s, size_t n)
{
    fprintf(c->out, "%-17s ", label);
    put_redacted(c, s ? s : "", s ? n : 0);
    fputc('\n', c->out);
}

static void lines(ctl_t *c, const char *label, const char *s)
{
    line(c, label, s, s ? strlen(s) : 0);
}

/* ------------------------------------------------------------------ */
/* common: load the module */

static gw_chan_module_t *load(ctl_t *c, const ctl_args_t *a, int *status)
{
    gw_buf_t settings;
    gw_buf_init(&settings, CTL_INPUT_MAX);
    gw_chan_module_t *m = NULL;
    char err[1024];
    *status = 2;
    if (a->settings) {
        if (arg_text(c, "--settings", a->settings, &settings) != GW_OK) goto out;
        cJSON *j = cJSON_ParseWithLength(settings.data, settings.len);
        int ok = cJSON_IsObject(j);
        cJSON_Delete(j);
        if (!ok) {
            fprintf(c->err, "paygated channel: --settings: not a JSON object\n");
            goto out;
        }
    }
    gw_err_t rc = gw_chan_open_file(a->module, settings.data, settings.len, &m, err, sizeof(err));
    if (rc != GW_OK) {
        fprintf(c->out, "REJECTED: %s\n", err);
        *status = 1;
        m = NULL;
    }
out:
    gw_buf_free(&settings);
    return m;
}

static void module_line(ctl_t *c, const gw_chan_module_t *m)
{
    fprintf(c->out, "%-17s %s %s (%s, ABI %u.%u)\n", "module:", m->name, m->version, m->file,
            m->vt->abi_version >> 16, m->vt->abi_version & 0xffffu);
}

/* ------------------------------------------------------------------ */
/* check */

static int cmd_check(ctl_t *c, const ctl_args_t *a)
{
    int status;
    gw_chan_module_t *m = load(c, a, &status);
    if (m == NULL) return status;
    char abi[24];
    snprintf(abi, sizeof(abi), "%u.%u", m->vt->abi_version >> 16, m->vt->abi_version & 0xffffu);
    fprintf(c->out, "OK\n");
    lines(c, "name:", m->name);
    lines(c, "version:", m->version);
    lines(c, "file:", m->file);
    lines(c, "abi:", abi);
    fprintf(c->out, "%-17s %u\n", "ctx_size:", m->vt->ctx_size);
    fprintf(c->out, "%-17s", "methods:");
    for (uint32_t bit = 1; bit <= GW_METHOD_BARCODE; bit <<= 1)
        if (m->vt->methods & bit) fprintf(c->out, " %s", gw_chan_method_name(bit));
    fputc('\n', c->out);
    gw_chan_close_file(m);
    return 0;
}

/* ------------------------------------------------------------------ */
/* build */

static int method_from_json(const cJSON *v, uint32_t *out)
{
    if (cJSON_IsNumber(v)) {
        if (!(v->valuedouble >= 1 && v->valuedouble <= GW_METHOD_BARCODE)) return 0;
        *out = (uint32_t)v->valuedouble;
        return gw_chan_method_name(*out) != NULL;
    }
    for (uint32_t bit = 1; cJSON_IsString(v) && bit <= GW_METHOD_BARCODE; bit <<= 1) {
        if (strcmp(v->valuestring, gw_chan_method_name(bit)) == 0) {
            *out = bit;
            return 1;
        }
    }
    return 0;
}

typedef struct {
    const char *key;
    size_t off;   /* of a gw_str_t or int64_t in the struct */
    int is_int;
} field_t;

#define SF(T, f) { #f, offsetof(T, f), 0 }
#define IF(T, f) { #f, offsetof(T, f), 1 }
static const field_t order_fields[] = {
    SF(gw_chan_order_t, out_trade_no), IF(gw_chan_order_t, amount), SF(gw_chan_order_t, currency),
    SF(gw_chan_order_t, subject), SF(gw_chan_order_t, auth_code), SF(gw_chan_order_t, payer_id),
    SF(gw_chan_order_t, sub_appid), SF(gw_chan_order_t, client_ip), SF(gw_chan_order_t, notify_url),
    SF(gw_chan_order_t, channel_trade_no), SF(gw_chan_order_t, attach),
    IF(gw_chan_order_t, created_ms), IF(gw_chan_order_t, expire_ms), { NULL, 0, 0 }
};
static const field_t refund_fields[] = {
    SF(gw_chan_refund_t, out_refund_no), IF(gw_chan_refund_t, amount),
    IF(gw_chan_refund_t, total_amount), SF(gw_chan_refund_t, reason),
    SF(gw_chan_refund_t, channel_refund_no), { NULL, 0, 0 }
};
#undef SF
#undef IF

/* Fills a struct from a JSON object (strings borrowed from it). */
static int fill(ctl_t *c, const char *what, const cJSON *j, const field_t *fields, void *dst,
                uint32_t *method)
{
    for (const cJSON *it = j->child; it; it = it->next) {
        if (method && strcmp(it->string, "method") == 0) {
            if (!method_from_json(it, method)) {
                fprintf(c->err, "paygated channel: %s.method: want one of wechat_qr, wechat_jsapi, "
                        "alipay_qr, alipay_jsapi, barcode\n", what);
                return 0;
            }
            continue;
        }
        const field_t *f = fields;
        while (f->key && strcmp(f->key, it->string) != 0) f++;
        if (f->key == NULL) {
            fprintf(c->err, "paygated channel: %s.%s: unknown key\n", what, it->string);
            return 0;
        }
        char *p = (char *)dst + f->off;
        if (f->is_int && cJSON_IsNumber(it) && it->valuedouble >= -9007199254740992.0 &&
            it->valuedouble <= 9007199254740992.0) {
            int64_t v = (int64_t)it->valuedouble;
            memcpy(p, &v, sizeof(v));
        } else if (!f->is_int && cJSON_IsString(it)) {
            gw_str_t s = gw_str(it->valuestring);
            memcpy(p, &s, sizeof(s));
        } else {
            fprintf(c->err, "paygated channel: %s.%s: must be %s\n", what, it->string,
                    f->is_int ? "an integer" : "a string");
            return 0;
        }
    }
    return 1;
}

static void print_headers(ctl_t *c, const char *h, size_t n)
{
    fprintf(c->out, "headers:\n");
    const char *p = h, *end = h + n;
    while (p && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        size_t len = (size_t)(le - p);
        if (len && p[len - 1] == '\r') len--;
        if (len) {
            fputs("  ", c->out);
            put_redacted(c, p, len);
            fputc('\n', c->out);
        }
        p = nl ? nl + 1 : end;
    }
}

static void block(ctl_t *c, const char *label, const gw_buf_t *b)
{
    fprintf(c->out, "%s (%zu bytes):\n", label, b->len);
    put_redacted(c, b->data ? b->data : "", b->len);
    fputc('\n', c->out);
}

static int cmd_build(ctl_t *c, const ctl_args_t *a)
{
    static const char *const ops[] = { "pay", "query", "refund", "refund-query", "close", "reverse", NULL };
    int op = 0;
    while (ops[op] && strcmp(ops[op], a->op ? a->op : "") != 0) op++;
    if (ops[op] == NULL || a->merchant == NULL || a->order == NULL) {
        fprintf(c->err, "paygated channel build: --merchant, --order and --op "
                        "pay|query|refund|refund-query|close|reverse are required\n");
        return 2;
    }
    int needs_refund = op == 2 || op == 3;
    if (needs_refund && a->refund == NULL) {
        fprintf(c->err, "paygated channel build: --op %s needs --refund\n", ops[op]);
        return 2;
    }
    int status = 2;
    merchant_t mc;
    memset(&mc, 0, sizeof(mc));
    cJSON *oj = NULL, *rj = NULL;
    gw_chan_module_t *m = NULL;
    gw_chan_order_t order;
    gw_chan_refund_t refund;
    memset(&order, 0, sizeof(order));
    memset(&refund, 0, sizeof(refund));
    gw_chan_request_t req;
    memset(&req, 0, sizeof(req));
    gw_buf_init(&req.url, CTL_OUT_MAX);
    gw_buf_init(&req.headers, CTL_OUT_MAX);
    gw_buf_init(&req.body, CTL_OUT_MAX);
    gw_buf_init(&req.sign_string, CTL_OUT_MAX);

    if (merchant_load(c, a->merchant, &mc) != GW_OK) goto out;
    if ((oj = arg_json_object(c, "--order", a->order)) == NULL) goto out;
    if (!fill(c, "order", oj, order_fields, &order, &order.method)) goto out;
    if (a->refund) {
        if ((rj = arg_json_object(c, "--refund", a->refund)) == NULL) goto out;
        if (!fill(c, "refund", rj, refund_fields, &refund, NULL)) goto out;
    }
    if ((m = load(c, a, &status)) == NULL) goto out;

    gw_chan_call_t call;
    gw_chan_call_init(&call, m);
    call.merchant = &mc.m;
    call.order = &order;
    call.refund = a->refund ? &refund : NULL;
    gw_err_t rc;
    switch (op) {
    case 0: rc = m->vt->pay(&call, &req); break;
    case 1: rc = m->vt->query(&call, &req); break;
    case 2: rc = m->vt->refund(&call, &req); break;
    case 3:
        call.flags = GW_CALL_REFUND_QUERY;
        rc = m->vt->query(&call, &req);
        break;
    case 4: rc = m->vt->close(&call, &req); break;
    default:
        call.flags = GW_CALL_REVERSE;
        rc = m->vt->close(&call, &req);
        break;
    }
    module_line(c, m);
    lines(c, "op:", ops[op]);
    if (rc != GW_OK) {
        fprintf(c->out, "REFUSED: %s (%s)\n", gw_strerror(rc), gw_err_name(rc));
        status = 1;
        goto out;
    }
    lines(c, "method:", req.method ? req.method : "POST");
    line(c, "url:", req.url.data, req.url.len);
    fprintf(c->out, "%-17s %d\n", "timeout_ms:", req.timeout_ms);
    print_headers(c, req.headers.data, req.headers.len);
    block(c, "body", &req.body);
    block(c, "sign_string", &req.sign_string);
    status = 0;
out:
    gw_chan_close_file(m);
    cJSON_Delete(oj);
    cJSON_Delete(rj);
    merchant_free(&mc);
    gw_buf_free(&req.url);
    gw_buf_free(&req.headers);
    gw_buf_free(&req.body);
    secret_free(&req.sign_string);
    return status;
}

/* ------------------------------------------------------------------ */
/* notify-verify */

typedef struct {
    gw_buf_t raw;
    gw_buf_t headers; /* normalised to "Name: value\r\n" */
    gw_chan_notify_in_t in;
} http_in_t;

/* A captured request: request line, header lines, blank line, body; CRLF or
 * LF line ends.  A Content-Length shorter than what follows wins. */
static gw_err_t parse_request(ctl_t *c, http_in_t *h)
{
    const char *p = h->raw.data, *end = p + h->raw.len;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl : end;
    size_t l = (size_t)(le - p);
    if (l && p[l - 1] == '\r') l--;
    const char *sp1 = memchr(p, ' ', l);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(p + l - sp1 - 1)) : NULL;
    if (sp1 == NULL || sp2 == NULL || sp1 == p || sp2 == sp1 + 1 || (size_t)(p + l - sp2 - 1) < 5 ||
        memcmp(sp2 + 1, "HTTP/", 5) != 0) {
        fprintf(c->err, "paygated channel: the request does not start with \"METHOD /path HTTP/1.1\"\n");
        return GW_EPARSE;
    }
    h->in.method = (gw_str_t){ p, (size_t)(sp1 - p) };
    const char *target = sp1 + 1;
    const char *q = memchr(target, '?', (size_t)(sp2 - target));
    h->in.path = (gw_str_t){ target, (size_t)((q ? q : sp2) - target) };
    h->in.query = q ? (gw_str_t){ q + 1, (size_t)(sp2 - q - 1) } : (gw_str_t){ "", 0 };
    p = nl ? nl + 1 : end;
    while (p < end) {
        const char *line = p;
        nl = memchr(p, '\n', (size_t)(end - p));
        le = nl ? nl : end;
        l = (size_t)(le - p);
        if (l && p[l - 1] == '\r') l--;
        p = nl ? nl + 1 : end;
        if (l == 0) break; /* the blank line */
        if (memchr(line, ':', l) == NULL) {
            fprintf(c->err, "paygated channel: malformed header line \"%.*s\"\n", (int)l, line);
            return GW_EPARSE;
        }
        gw_err_t rc = gw_buf_append(&h->headers, line, l);
        if (rc == GW_OK) rc = gw_buf_append(&h->headers, "\r\n", 2);
        if (rc != GW_OK) return rc;
    }
    if (h->headers.data == NULL && gw_buf_append(&h->headers, "", 0) != GW_OK) return GW_ENOMEM;
    h->in.headers = (gw_str_t){ h->headers.data, h->headers.len };
    size_t body_len = (size_t)(end - p);
    gw_str_t cl = gw_host_api()->header_get(h->in.headers, "Content-Length");
    if (cl.ptr) {
        char tmp[24];
        char *e = NULL;
        snprintf(tmp, sizeof(tmp), "%.*s", (int)(cl.len < 23 ? cl.len : 23), cl.ptr);
        errno = 0;
        unsigned long long v = strtoull(tmp, &e, 10);
        if (errno || e == tmp || *e) {
            fprintf(c->err, "paygated channel: bad Content-Length \"%s\"\n", tmp);
            return GW_EPARSE;
        }
        if (v < body_len) body_len = (size_t)v;
        else if (v > body_len)
            fprintf(c->err, "paygated channel: warning: Content-Length %llu but only %zu body bytes\n",
                    v, body_len);
    }
    h->in.body = (gw_str_t){ p, body_len };
    return GW_OK;
}

static void notify_result(ctl_t *c, const gw_chan_notify_t *n, int verified)
{
    static const char *const kinds[] = { "-", "pay", "refund" };
    line(c, "sign_string:", n->sign_string.data, n->sign_string.len);
    lines(c, "kind:", n->kind >= 1 && n->kind <= 2 ? kinds[n->kind] : "-");
    lines(c, "mch_id:", n->mch_id);
    lines(c, "out_trade_no:", n->out_trade_no);
    lines(c, "out_refund_no:", n->out_refund_no);
    if (verified) {
        lines(c, "status:", n->kind == GW_NOTIFY_REFUND ? gw_chan_refund_status_name(n->status)
                                                        : gw_chan_pay_status_name(n->status));
        fprintf(c->out, "%-17s %lld\n", "amount:", (long long)n->amount);
        lines(c, "channel_trade_no:", n->channel_trade_no);
        lines(c, "raw_code:", n->raw_code);
        lines(c, "raw_msg:", n->raw_msg);
    }
    int st = verified ? n->ack_ok_status : n->ack_fail_status;
    const char *type = verified ? n->ack_ok_type : n->ack_fail_type;
    const gw_buf_t *body = verified ? &n->ack_ok_body : &n->ack_fail_body;
    fprintf(c->out, "%-17s %d %s\n", "ack:", st, type[0] ? type : "-");
    line(c, "ack_body:", body->data, body->len);
}

static int cmd_notify_verify(ctl_t *c, const ctl_args_t *a)
{
    if (a->merchant == NULL) {
        fprintf(c->err, "paygated channel notify-verify: --merchant is required\n");
        return 2;
    }
    int status = 2;
    merchant_t mc;
    memset(&mc, 0, sizeof(mc));
    http_in_t h;
    memset(&h, 0, sizeof(h));
    gw_buf_init(&h.raw, CTL_INPUT_MAX);
    gw_buf_init(&h.headers, CTL_INPUT_MAX);
    gw_chan_notify_t n;
    memset(&n, 0, sizeof(n));
    gw_buf_init(&n.sign_string, CTL_OUT_MAX);
    gw_buf_init(&n.ack_ok_body, CTL_OUT_MAX);
    gw_buf_init(&n.ack_fail_body, CTL_OUT_MAX);
    gw_chan_module_t *m = NULL;
    const char *src = a->request ? a->request : "-";
    gw_err_t rc = read_file(src, &h.raw);
    if (rc != GW_OK) {
        fprintf(c->err, "paygated channel: cannot read %s: %s\n", src, gw_strerror(rc));
        goto out;
    }
    if (parse_request(c, &h) != GW_OK) goto out;
    if (merchant_load(c, a->merchant, &mc) != GW_OK) goto out;
    if ((m = load(c, a, &status)) == NULL) goto out;

    module_line(c, m);
    rc = m->vt->notify_parse(m->ctx, m->host, &h.in, &n);
    if (rc != GW_OK) {
        fprintf(c->out, "%-17s REJECTED: notify_parse: %s (%s)\n", "verdict:", gw_strerror(rc),
                gw_err_name(rc));
        notify_result(c, &n, 0);
        status = 1;
        goto out;
    }
    gw_chan_call_t call;
    gw_chan_call_init(&call, m);
    call.merchant = &mc.m;
    rc = m->vt->notify_verify(&call, &h.in, &n);
    if (rc == GW_OK) fprintf(c->out, "%-17s VERIFIED\n", "verdict:");
    else
        fprintf(c->out, "%-17s REJECTED: %s (%s)\n", "verdict:", gw_strerror(rc), gw_err_name(rc));
    notify_result(c, &n, rc == GW_OK);
    if (mc.m.mch_id.len && !gw_str_eq(mc.m.mch_id, n.mch_id))
        fprintf(c->out, "%-17s the notification names mch_id \"%s\", the credentials are for \"%.*s\"\n",
                "note:", n.mch_id, (int)mc.m.mch_id.len, mc.m.mch_id.ptr);
    status = rc == GW_OK ? 0 : 1;
out:
    gw_chan_close_file(m);
    merchant_free(&mc);
    gw_buf_free(&h.raw);
    gw_buf_free(&h.headers);
    secret_free(&n.sign_string);
    gw_buf_free(&n.ack_ok_body);
    gw_buf_free(&n.ack_fail_body);
    return status;
}

/* ------------------------------------------------------------------ */
/* arguments */

static int parse_args(ctl_t *c, int argc, char **argv, ctl_args_t *a)
{
    memset(a, 0, sizeof(*a));
    if (argc < 2) return 0;
    a->cmd = argv[1];
    struct {
        const char *name;
        const char **dst;
    } opts[] = { { "--module", &a->module }, { "--settings", &a->settings },
                 { "--merchant", &a->merchant }, { "--op", &a->op },
                 { "--order", &a->order }, { "--refund", &a->refund } };
    for (int i = 2; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0 || strcmp(arg, "-") == 0) {
            if (a->request != NULL) {
                fprintf(c->err, "paygated channel: unexpected argument \"%s\"\n", arg);
                return 0;
            }
            a->request = arg;
            continue;
        }
        size_t k = 0, nopts = sizeof(opts) / sizeof(opts[0]);
        const char *eq = strchr(arg, '=');
        size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
        while (k < nopts && !(strlen(opts[k].name) == nlen && strncmp(opts[k].name, arg, nlen) == 0)) k++;
        if (k == nopts) {
            fprintf(c->err, "paygated channel: unknown option \"%.*s\"\n", (int)nlen, arg);
            return 0;
        }
        if (eq) *opts[k].dst = eq + 1;
        else if (i + 1 < argc) *opts[k].dst = argv[++i];
        else {
            fprintf(c->err, "paygated channel: %s needs a value\n", opts[k].name);
            return 0;
        }
    }
    if (a->module == NULL) {
        fprintf(c->err, "paygated channel %s: --module FILE.so is required\n", a->cmd);
        return 0;
    }
    return 1;
}

int gw_ctl_run(int argc, char **argv, FILE *out, FILE *err)
{
    ctl_t c;
    memset(&c, 0, sizeof(c));
    c.out = out;
    c.err = err;
    ctl_args_t a;
    if (argc >= 2 && strcmp(argv[1], "reconcile") == 0) return gw_settle_reconcile_cli(argc - 1, argv + 1, out, err);
    if (argc >= 2 && (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "-h") == 0 ||
                      strcmp(argv[1], "--help") == 0)) {
        usage(out);
        return 0;
    }
    if (!parse_args(&c, argc, argv, &a)) {
        usage(err);
        return 2;
    }
    int status;
    if (strcmp(a.cmd, "check") == 0 && !a.merchant && !a.op && !a.order && !a.refund && !a.request)
        status = cmd_check(&c, &a);
    else if (strcmp(a.cmd, "build") == 0 && !a.request)
        status = cmd_build(&c, &a);
    else if (strcmp(a.cmd, "notify-verify") == 0 && !a.op && !a.order && !a.refund)
        status = cmd_notify_verify(&c, &a);
    else {
        fprintf(err, "paygated channel: unknown command or options for \"%s\"\n", a.cmd);
        usage(err);
        status = 2;
    }
    fflush(out);
    return status;
}

int gw_ctl_main(int argc, char **argv)
{
    return gw_ctl_run(argc, argv, stdout, stderr);
}
