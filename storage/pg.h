/*
 * pg.h — PostgreSQL on the event loop: a small pool of libpq connections in
 * non-blocking pipeline mode, driven by uv_poll, with prepared statements and
 * reconnect with backoff.  Nothing here blocks the loop, except
 * gw_pg_migrate_sync(), which is for start-up and `paygated migrate`.
 *
 * Each job is one statement run in its own implicit transaction (a pipeline
 * sync follows every job), so an error in one job never affects another.
 * Multi-step writes are single statements calling SQL functions defined in
 * the migrations (one round trip, atomic).
 */
#ifndef GW_PG_H
#define GW_PG_H

#include <uv.h>
#include <libpq-fe.h>
#include "gw.h"

typedef struct gw_pg gw_pg_t;

typedef struct gw_pg_opts {
    const char *conninfo;    /* libpq connection string */
    int pool_size;           /* connections, default 4 */
    int max_pipeline;        /* jobs in flight per connection, default 32 */
    int max_queue;           /* queued jobs before GW_EBUSY, default 10000 */
    int reconnect_min_ms;    /* backoff start, default 100 */
    int reconnect_max_ms;    /* backoff cap, default 5000 */
    int query_timeout_ms;    /* per job from send; 0 = none. On expiry the
                                connection is reset and its jobs fail GW_EIO */
    int batch_inflight;      /* jobs of one batchable statement (its batches
                                included) in flight at once; more wait in the
                                queue and go out together as the next batch
                                (group commit).  0 = no limit */
} gw_pg_opts_t;

/*
 * Completion.  err is
 *   GW_OK       res is PGRES_TUPLES_OK or PGRES_COMMAND_OK;
 *   GW_EUNAVAIL the job was never sent: no connection is up (res NULL);
 *   GW_EIO      the connection was lost after sending: the outcome is
 *               unknown (res NULL);
 *   GW_ECONFLICT unique violation, SQLSTATE 23505 (res is the error result);
 *   GW_ESTATE   any other SQL error (res is the error result; the error text
 *               was logged at warn level without parameter values);
 *   GW_ECANCELED the pool was closed before the job ran (res NULL);
 *   GW_EBUSY    never delivered here: gw_pg_exec returns it instead.
 * res is borrowed: valid only during the callback.  The callback is called
 * exactly once when gw_pg_exec returned GW_OK, never otherwise (libuv rule).
 */
typedef void (*gw_pg_cb)(void *udata, gw_err_t err, PGresult *res);

gw_pg_t *gw_pg_new(uv_loop_t *loop, const gw_pg_opts_t *opts);
/* Registers a statement prepared on every connection as it connects.
 * Call before gw_pg_start.  The strings are copied. */
gw_err_t gw_pg_prepare(gw_pg_t *pg, const char *name, const char *sql);
void gw_pg_start(gw_pg_t *pg);

/* Runs a prepared statement (name != NULL) with text parameters; values[i]
 * may be NULL for SQL NULL.  Values are copied; the caller may free them on
 * return.  Returns GW_EUNAVAIL at once when no connection is up, GW_EBUSY
 * when the queue is full. */
gw_err_t gw_pg_exec(gw_pg_t *pg, const char *stmt, int nparams, const char *const *values,
                    gw_pg_cb cb, void *udata);
/* For callers that need only the first column of the first row (the JSON
 * functions): cb gets it as text — value NULL when there is no row or it is
 * SQL NULL, and always on an error; borrowed, valid during the callback.  A
 * batch member gets its value straight from the batch's result, without a
 * one-row result built for it (a copy and a 2 kB allocation per job). */
typedef void (*gw_pg_value_cb)(void *udata, gw_err_t err, const char *value, size_t len);
gw_err_t gw_pg_exec_value(gw_pg_t *pg, const char *stmt, int nparams, const char *const *values,
                          gw_pg_value_cb cb, void *udata);
/* The same for a literal SQL text (unnamed statement). */
gw_err_t gw_pg_exec_sql(gw_pg_t *pg, const char *sql, int nparams, const char *const *values,
                        gw_pg_cb cb, void *udata);

/*
 * Batching.  Jobs of stmt queued in the same loop turn are sent as ONE
 * statement batch_stmt (both registered with gw_pg_prepare) with one
 * parameter, a JSON array holding each job's parameters as an array:
 * [[a0, a1, ...], [b0, b1, ...]] — parameter i is embedded as is when bit i
 * of raw_mask is set (it must then be JSON text), otherwise as a JSON string
 * (SQL NULL as null).  batch_stmt returns one row per job, columns (r, i):
 * r what stmt returns for the job, i the job's index in the array.  Each
 * job's callback then gets a one-row result with r in column 0, exactly as
 * from stmt.  A batch is one transaction: when it fails (GW_ESTATE,
 * GW_ECONFLICT), its jobs are run one by one with stmt, as is any job the
 * batch returned no row (or a NULL r) for; when its connection is lost, all
 * its jobs get GW_EIO.  At most max_batch jobs per batch.  Call before
 * gw_pg_start.  storage/migrations/0011_batches.sql has the batch forms.
 */
gw_err_t gw_pg_batchable(gw_pg_t *pg, const char *stmt, const char *batch_stmt, unsigned raw_mask,
                         int max_batch);
/* Batches sent and the jobs they carried, since start. */
void gw_pg_batch_counts(const gw_pg_t *pg, uint64_t *batches, uint64_t *jobs);

/* Connections currently up (0 … pool_size). */
int gw_pg_up(const gw_pg_t *pg);
int gw_pg_size(const gw_pg_t *pg);
/* Jobs queued + in flight. */
int gw_pg_pending(const gw_pg_t *pg);

/* Fails queued jobs with GW_ECANCELED, waits for in-flight ones, closes all
 * connections and handles, frees pg, then calls done (may be NULL). */
void gw_pg_close(gw_pg_t *pg, void (*done)(void *), void *udata);

/* Blocking: applies every migration in gw_migrations[] not yet recorded in
 * schema_migrations, each in its own transaction, under an advisory lock so
 * several nodes may start at once.  Returns GW_OK and the count applied, or
 * an error with a message (no secrets) in errbuf. */
gw_err_t gw_pg_migrate_sync(const char *conninfo, int *applied, char *errbuf, size_t errlen);

#endif /* GW_PG_H */
