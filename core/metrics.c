/*
 * metrics.c — Prometheus text exposition of counters, gauges, histograms.
 */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>

static const double gw__buckets[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1,   0.25,   0.5,   1,    2.5,   5, 10 };
#define NBUCKETS (sizeof(gw__buckets) / sizeof(gw__buckets[0]))

typedef struct series {
    struct series *next;
    char *labels;
    double value;                  /* counter / gauge / histogram sum */
    uint64_t count;                /* histogram */
    uint64_t buckets[NBUCKETS];    /* histogram, non-cumulative */
} series_t;

typedef struct family {
    struct family *next;
    char *name, *type, *help;
    series_t *series;
} family_t;

static family_t *families, **families_tail = &families;
static void (*render_cb)(void *);
static void *render_udata;

static family_t *family_get(const char *name)
{
    for (family_t *f = families; f; f = f->next)
        if (strcmp(f->name, name) == 0) return f;
    return NULL;
}

void gw_metric_declare(const char *name, const char *type, const char *help)
{
    if (family_get(name)) return;
    family_t *f = gw_xcalloc(1, sizeof(*f));
    f->name = gw_xstrdup(name);
    f->type = gw_xstrdup(type);
    f->help = gw_xstrdup(help);
    *families_tail = f;
    families_tail = &f->next;
}

static series_t *series_get(const char *name, const char *labels)
{
    family_t *f = family_get(name);
    if (f == NULL) {
        gw_metric_declare(name, "untyped", name);
        f = family_get(name);
    }
    if (labels == NULL) labels = "";
    series_t **pp = &f->series;
    for (; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->labels, labels) == 0) return *pp;
    series_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return NULL;
    s->labels = strdup(labels);
    if (s->labels == NULL) {
        free(s);
        return NULL;
    }
    *pp = s;
    return s;
}

void gw_metric_add(const char *name, const char *labels, double v)
{
    series_t *s = series_get(name, labels);
    if (s) s->value += v;
}

void gw_metric_set(const char *name, const char *labels, double v)
{
    series_t *s = series_get(name, labels);
    if (s) s->value = v;
}

void gw_metric_observe(const char *name, const char *labels, double seconds)
{
    series_t *s = series_get(name, labels);
    if (s == NULL) return;
    s->value += seconds;
    s->count++;
    for (size_t i = 0; i < NBUCKETS; i++) {
        if (seconds <= gw__buckets[i]) {
            s->buckets[i]++;
            break;
        }
    }
}

void gw_metrics_on_render(void (*fn)(void *), void *udata)
{
    render_cb = fn;
    render_udata = udata;
}

static gw_err_t render_hist(gw_buf_t *out, const family_t *f, const series_t *s)
{
    const char *sep = s->labels[0] ? "," : "";
    uint64_t cum = 0;
    gw_err_t rc = GW_OK;
    for (size_t i = 0; i < NBUCKETS && rc == GW_OK; i++) {
        cum += s->buckets[i];
        rc = gw_buf_appendf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", f->name, s->labels, sep,
                            gw__buckets[i], (unsigned long long)cum);
    }
    if (rc == GW_OK)
        rc = gw_buf_appendf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n%s_sum{%s} %.6f\n%s_count{%s} %llu\n",
                            f->name, s->labels, sep, (unsigned long long)s->count, f->name,
                            s->labels, s->value, f->name, s->labels,
                            (unsigned long long)s->count);
    return rc;
}

gw_err_t gw_metrics_render(gw_buf_t *out)
{
    if (render_cb) render_cb(render_udata);
    gw_err_t rc = GW_OK;
    for (family_t *f = families; f && rc == GW_OK; f = f->next) {
        rc = gw_buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, f->type);
        for (series_t *s = f->series; s && rc == GW_OK; s = s->next) {
            if (strcmp(f->type, "histogram") == 0) rc = render_hist(out, f, s);
            else if (s->labels[0])
                rc = gw_buf_appendf(out, "%s{%s} %.17g\n", f->name, s->labels, s->value);
            else rc = gw_buf_appendf(out, "%s %.17g\n", f->name, s->value);
        }
    }
    return rc;
}

void gw_metrics_free(void)
{
    for (family_t *f = families, *fn; f; f = fn) {
        fn = f->next;
        for (series_t *s = f->series, *sn; s; s = sn) {
            sn = s->next;
            free(s->labels);
            free(s);
        }
        free(f->name);
        free(f->type);
        free(f->help);
        free(f);
    }
    families = NULL;
    families_tail = &families;
}
