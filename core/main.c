/*
 * main.c — paygated: command line, start-up, signals, orderly shutdown.
 *
 *   paygated -c FILE                 run the daemon
 *   paygated --check-config FILE     validate FILE: exit 0, or 2 naming the field
 *   paygated migrate -c FILE         apply schema migrations and exit
 */
#include "api.h"
#include "app.h"
#include "channel.h"
#include "json.h"
#include "client.h"
#include "health.h"
#include "host.h"
#include "metrics.h"
#include "tasks.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define GW_VERSION "0.1.0"

#include "ctl.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: paygated -c FILE             run the gateway\n"
            "       paygated --check-config FILE validate a configuration file\n"
            "       paygated migrate -c FILE     apply database migrations and exit\n"
            "       paygated channel ...         operator tools for channel modules\n"
            "                                    (paygated channel help)\n"
            "       paygated --version\n");
}

static int load_config(const char *path, gw_config_t *cfg)
{
    char err[512];
    if (gw_config_load(path, cfg, err, sizeof(err)) != GW_OK) {
        fprintf(stderr, "paygated: configuration error: %s\n", err);
        return 2;
    }
    return 0;
}

/* Start-up migration; waits for PostgreSQL for up to 30 s (before the loop). */
static int migrate(const gw_config_t *cfg, int wait)
{
    char err[512];
    int applied = 0;
    uint64_t deadline = gw_mono_us() + (wait ? 30000000u : 0);
    unsigned backoff_ms = 100;
    for (;;) {
        gw_err_t rc = gw_pg_migrate_sync(cfg->pg.conninfo, &applied, err, sizeof(err));
        if (rc == GW_OK) break;
        if (gw_mono_us() >= deadline) {
            gw_log(GW_LOG_CRIT, "migrations failed: %s", err);
            return 1;
        }
        gw_log(GW_LOG_WARN, "migrations: %s; retrying in %u ms", err, backoff_ms);
        usleep(backoff_ms * 1000);
        if (backoff_ms < 2000) backoff_ms *= 2;
    }
    gw_log(GW_LOG_NOTICE, "migrations: %d applied, schema up to date", applied);
    return 0;
}

/* ---- shutdown ---- */

static void on_closed_handle(uv_handle_t *h) { (void)h; }

static void on_component_closed(void *udata)
{
    gw_app_t *app = udata;
    if (--app->pending_stops > 0) return;
    uv_close((uv_handle_t *)&app->sig_term, on_closed_handle);
    uv_close((uv_handle_t *)&app->sig_int, on_closed_handle);
    uv_close((uv_handle_t *)&app->sig_hup, on_closed_handle);
}

static void on_tasks_stopped(void *udata)
{
    gw_app_t *app = udata;
    app->tasks = NULL;
    /* no request and no task is in flight any more: storage can go */
    gw_log(GW_LOG_NOTICE, "listeners and tasks drained; closing storage");
    app->pending_stops = 3;
    gw_pg_close(app->pg, on_component_closed, app);
    gw_redis_close(app->redis, on_component_closed, app);
    gw_client_close(app->client, on_component_closed, app);
    app->pg = NULL;
    app->redis = NULL;
    app->client = NULL;
}

static void on_listener_stopped(void *udata)
{
    gw_app_t *app = udata;
    if (--app->pending_stops > 0) return;
    app->http = app->admin = NULL;
    gw_tasks_stop(app->tasks, on_tasks_stopped, app);
}

static void app_stop(gw_app_t *app, const char *why)
{
    if (app->stopping) return;
    app->stopping = 1;
    gw_log(GW_LOG_NOTICE, "%s: shutting down (deadline %d ms)", why, app->cfg.http.shutdown_timeout_ms);
    app->pending_stops = 2;
    gw_http_shutdown(app->http, app->cfg.http.shutdown_timeout_ms, on_listener_stopped, app);
    gw_http_shutdown(app->admin, app->cfg.http.shutdown_timeout_ms, on_listener_stopped, app);
}

static void on_signal(uv_signal_t *h, int signum)
{
    gw_app_t *app = h->data;
    if (signum == SIGHUP) {
        gw_log(GW_LOG_NOTICE, "SIGHUP: reloading channel modules from %s", app->cfg.channels.dir);
        if (!app->stopping && app->channels) gw_chan_reload(app->channels);
        return;
    }
    app_stop(app, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static int write_pid_file(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        gw_log(GW_LOG_ERR, "pid file %s: %s", path, strerror(errno));
        return -1;
    }
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    return 0;
}

static int run(gw_app_t *app)
{
    gw_config_t *cfg = &app->cfg;
    gw_log_level = cfg->log_level;
    if (migrate(cfg, 1) != 0) return 1;

    app->loop = uv_default_loop();
    app->started_ms = gw_now_ms();
    gw_app_metrics_init(app);

    gw_pg_opts_t po = { .conninfo = cfg->pg.conninfo,
                        .pool_size = cfg->pg.pool_size,
                        .max_pipeline = cfg->pg.max_pipeline,
                        .query_timeout_ms = cfg->pg.query_timeout_ms,
                        .batch_inflight = cfg->pg.batch_inflight };
    app->pg = gw_pg_new(app->loop, &po);
    gw_api_init(app);
    app->tasks = gw_tasks_new(app);
    gw_pg_start(app->pg);

    /* at least the per-channel in-flight cap, or calls queue inside libcurl
     * where no deadline of ours sees them (docs/performance.md) */
    gw_client_opts_t co = { .max_host_connections = cfg->channels.max_inflight,
                            .max_total_connections = cfg->channels.max_inflight * 8 };
    app->client = gw_client_new(app->loop, &co);
    app->channels = gw_chan_registry_new(app->loop, cfg->channels.dir, cfg->channels.settings,
                                         cfg->channels.drain_timeout_ms);
    if (app->channels == NULL) return 1;
    gw_chan_reload(app->channels);

    gw_redis_opts_t ro = { .host = cfg->redis.host,
                           .port = cfg->redis.port,
                           .password = cfg->redis.password,
                           .db = cfg->redis.db,
                           .command_timeout_ms = cfg->redis.command_timeout_ms,
                           .sentinels = cfg->redis.sentinels,
                           .master_name = cfg->redis.master_name };
    app->redis = gw_redis_new(app->loop, &ro);
    gw_redis_start(app->redis);

    gw_http_limits_t lim = { .max_connections = cfg->http.max_connections,
                             .max_header_bytes = cfg->http.max_header_bytes,
                             .max_body_bytes = cfg->http.max_body_bytes,
                             .header_timeout_ms = cfg->http.header_timeout_ms,
                             .body_timeout_ms = cfg->http.body_timeout_ms,
                             .idle_timeout_ms = cfg->http.idle_timeout_ms };
    app->http = gw_http_server_new(app->loop, "http", &lim, gw_app_public_handler, app);
    gw_http_set_observer(app->http, gw_app_observe, app);
    app->admin = gw_http_server_new(app->loop, "admin", &lim, gw_app_admin_handler, app);
    gw_http_set_observer(app->admin, gw_app_observe, app);
    if (gw_http_listen(app->http, cfg->listen_host, cfg->listen_port) != GW_OK ||
        gw_http_listen(app->admin, cfg->admin_host, cfg->admin_port) != GW_OK)
        return 1;

    uv_signal_init(app->loop, &app->sig_term);
    uv_signal_init(app->loop, &app->sig_int);
    uv_signal_init(app->loop, &app->sig_hup);
    app->sig_term.data = app->sig_int.data = app->sig_hup.data = app;
    uv_signal_start(&app->sig_term, on_signal, SIGTERM);
    uv_signal_start(&app->sig_int, on_signal, SIGINT);
    uv_signal_start(&app->sig_hup, on_signal, SIGHUP);

    if (cfg->pid_file && write_pid_file(cfg->pid_file) != 0) return 1;
    gw_tasks_start(app->tasks);
    gw_log(GW_LOG_NOTICE, "paygated %s started (pid %d)", GW_VERSION, (int)getpid());

    uv_run(app->loop, UV_RUN_DEFAULT);

    gw_chan_registry_free(app->channels);
    app->channels = NULL;
    /* the registry's drain timer may still need a loop turn to close */
    uv_run(app->loop, UV_RUN_DEFAULT);
    gw_api_free(app);
    gw_health_free(app);
    gw_host_shutdown();
    int rc = uv_loop_close(app->loop);
    if (rc != 0) gw_log(GW_LOG_WARN, "loop closed with handles open: %s", uv_strerror(rc));
    if (cfg->pid_file) unlink(cfg->pid_file);
    gw_metrics_free();
    gw_log(GW_LOG_NOTICE, "stopped");
    return 0;
}

int main(int argc, char **argv)
{
    const char *cfg_path = NULL;
    int check_only = 0, do_migrate = 0;

    gw_json_alloc_init(); /* before anything allocates through cJSON */
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 2 && strcmp(argv[1], "channel") == 0) return gw_ctl_main(argc - 1, argv + 1);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) cfg_path = argv[++i];
        else if (strcmp(argv[i], "--check-config") == 0 && i + 1 < argc) {
            cfg_path = argv[++i];
            check_only = 1;
        } else if (strcmp(argv[i], "migrate") == 0) do_migrate = 1;
        else if (strcmp(argv[i], "--version") == 0) {
            printf("paygated %s\n", GW_VERSION);
            return 0;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "paygated: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (cfg_path == NULL) {
        usage(stderr);
        return 2;
    }

    static gw_app_t app;
    int rc = load_config(cfg_path, &app.cfg);
    if (rc != 0) return rc;
    if (check_only) {
        printf("paygated: %s: configuration ok\n", cfg_path);
        gw_config_free(&app.cfg);
        return 0;
    }
    gw_log_level = app.cfg.log_level;
    if (do_migrate) rc = migrate(&app.cfg, 0);
    else rc = run(&app);
    gw_config_free(&app.cfg);
    return rc;
}
