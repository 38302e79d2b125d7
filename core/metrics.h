/*
 * metrics.h — a process-wide registry rendered in Prometheus text format.
 * Series are identified by name + label text (e.g. route="/healthz",status="200").
 * Loop thread only.
 */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include "gw.h"

/* Declares a metric family (HELP and TYPE lines).  type: "counter",
 * "gauge" or "histogram".  Idempotent. */
void gw_metric_declare(const char *name, const char *type, const char *help);
void gw_metric_add(const char *name, const char *labels, double v);   /* counter */
void gw_metric_set(const char *name, const char *labels, double v);   /* gauge */
/* Histogram in seconds with the default buckets 1 ms … 10 s. */
void gw_metric_observe(const char *name, const char *labels, double seconds);
/* A callback that refreshes gauges just before rendering. */
void gw_metrics_on_render(void (*fn)(void *), void *udata);
gw_err_t gw_metrics_render(gw_buf_t *out);
void gw_metrics_free(void);

#endif
