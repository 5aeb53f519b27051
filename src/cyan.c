/* cyan: the command line. The only file that sees every module.
 *
 *   cyan [-c FILE] [--name=value ...]            run the device cloud
 *   cyan device add NAME [-c FILE] [--data_dir=DIR]
 *   cyan device list | device remove ID_OR_NAME
 *   cyan config [-c FILE] [--name=value ...]     print every setting
 *
 * Settings: defaults, then the config file (-c), then --name=value, each
 * overriding the one before. Exit status: 0 on a clean stop (SIGTERM or
 * SIGINT), 1 on a startup error, 2 on a usage error.
 */
#include "broker/broker.h"
#include "core/cy_config.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "store/store.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <uv.h>

#define CYAN_VERSION "0.1.0"

static void usage(FILE *out)
{
    fprintf(out, "usage: cyan [-c FILE] [--name=value ...]        run the device cloud\n"
                 "       cyan device add NAME [-c FILE] [--data_dir=DIR]\n"
                 "       cyan device list [...]\n"
                 "       cyan device remove ID_OR_NAME [...]\n"
                 "       cyan config [-c FILE] [--name=value ...]  print every setting\n"
                 "       cyan --version\n");
}

/* Parse -c FILE and --name=value into cfg; other words go to args. */
static int parse_args(int argc, char **argv, cy_config *cfg, char **args, int *nargs)
{
    cy_config_error err;
    const char *file = NULL;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) {
            if (++i >= argc) {
                fprintf(stderr, "cyan: -c needs a file\n");
                return 2;
            }
            file = argv[i];
        }
    if (file && cy_config_load(cfg, file, &err)) {
        fprintf(stderr, "cyan: %s\n", err.msg);
        return 1;
    }
    *nargs = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) {
            i++;
        } else if (!strncmp(argv[i], "--", 2) && strchr(argv[i], '=')) {
            char name[64];
            const char *eq = strchr(argv[i], '=');
            size_t n = (size_t)(eq - argv[i] - 2);
            if (n >= sizeof(name)) n = sizeof(name) - 1;
            memcpy(name, argv[i] + 2, n);
            name[n] = '\0';
            if (cy_config_set(cfg, name, eq + 1, &err)) {
                fprintf(stderr, "cyan: %s\n", err.msg);
                return 2;
            }
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "cyan: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        } else {
            args[(*nargs)++] = argv[i];
        }
    }
    return 0;
}

static int make_dir(const char *path)
{
    char tmp[512];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0750) && errno != EEXIST) return -errno;
            *p = '/';
        }
    if (mkdir(tmp, 0750) && errno != EEXIST) return -errno;
    return 0;
}

static int open_registry(const cy_config *cfg, cy_registry **r)
{
    char path[600];
    int rc = make_dir(cfg->data_dir);
    if (rc) {
        fprintf(stderr, "cyan: data_dir %s: %s\n", cfg->data_dir, cy_strerror(rc));
        return rc;
    }
    snprintf(path, sizeof(path), "%s/registry.db", cfg->data_dir);
    rc = cy_registry_open(path, r);
    if (rc) fprintf(stderr, "cyan: cannot open %s: %s\n", path, cy_strerror(rc));
    return rc;
}

static int print_device(void *ctx, const cy_device *d)
{
    (void)ctx;
    printf("%s  %s\n", d->id, d->name);
    return 0;
}

static int cmd_device(cy_config *cfg, char **args, int nargs)
{
    if (nargs < 2) {
        usage(stderr);
        return 2;
    }
    cy_registry *r = NULL;
    if (open_registry(cfg, &r)) return 1;
    int rc = 0, status = 0;
    if (!strcmp(args[1], "add") && nargs == 3) {
        char id[CY_DEVICE_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1];
        rc = cy_registry_device_add(r, args[2], id, secret);
        if (rc == 0) {
            printf("id: %s\nsecret: %s\n", id, secret);
            fprintf(stderr, "cyan: device '%s' added. The secret is shown only now: the device\n"
                            "connects with MQTT username = id and password = secret.\n",
                    args[2]);
        } else if (rc == CY_EEXIST) {
            fprintf(stderr, "cyan: a device named '%s' exists already\n", args[2]);
        } else if (rc == CY_EINVAL) {
            fprintf(stderr, "cyan: bad device name '%s': use 1 to %d letters, digits, '-', '_' "
                            "or '.'\n",
                    args[2], CY_DEVICE_NAME_MAX);
        }
    } else if (!strcmp(args[1], "list") && nargs == 2) {
        rc = cy_registry_device_list(r, print_device, NULL);
    } else if (!strcmp(args[1], "remove") && nargs == 3) {
        rc = cy_registry_device_remove(r, args[2]);
        if (rc == CY_ENOENT) fprintf(stderr, "cyan: no device '%s'\n", args[2]);
        if (rc == 0) fprintf(stderr, "cyan: device '%s' removed\n", args[2]);
    } else {
        usage(stderr);
        status = 2;
    }
    if (rc && !status) {
        if (rc != CY_EEXIST && rc != CY_EINVAL && rc != CY_ENOENT)
            fprintf(stderr, "cyan: %s\n", cy_strerror(rc));
        status = 1;
    }
    cy_registry_close(r);
    return status;
}

typedef struct app {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint;
    cy_broker *broker;
} app;

static void on_signal(uv_signal_t *h, int signum)
{
    app *a = h->data;
    cy_info(NULL, "received %s, shutting down", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    cy_broker_stop(a->broker);
    uv_close((uv_handle_t *)&a->sigterm, NULL);
    uv_close((uv_handle_t *)&a->sigint, NULL);
}

static int count_device(void *ctx, const cy_device *d)
{
    (void)d;
    (*(int *)ctx)++;
    return 0;
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int cmd_serve(const cy_config *cfg)
{
    cy_registry *reg = NULL;
    cy_store *store = NULL;
    app a;
    memset(&a, 0, sizeof(a));
    int status = 1;
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    if (open_registry(cfg, &reg)) return 1;
    char path[600];
    snprintf(path, sizeof(path), "%s/broker.db", cfg->data_dir);
    int rc = cy_store_open(path, !strcmp(cfg->store_sync, "full"), &store);
    if (rc) {
        fprintf(stderr, "cyan: cannot open %s: %s\n", path, cy_strerror(rc));
        goto out;
    }
    uv_loop_init(&a.loop);
    rc = cy_broker_new(&a.loop, cfg, store, reg, &a.broker);
    if (rc) {
        cy_error(NULL, "cannot load broker state: %s", cy_strerror(rc));
        goto out_loop;
    }
    if (cy_broker_start(a.broker)) {
        cy_broker_stop(a.broker);
        uv_run(&a.loop, UV_RUN_DEFAULT);
        goto out_loop;
    }
    int ndev = 0;
    cy_registry_device_list(reg, count_device, &ndev);
    cy_info(NULL, "cyan %s: data in %s, %d devices registered%s", CYAN_VERSION, cfg->data_dir,
            ndev, cfg->allow_anonymous ? ", ANONYMOUS CLIENTS ALLOWED" : "");
    if (ndev == 0 && !cfg->allow_anonymous)
        cy_info(NULL, "no devices yet: add one with `cyan device add NAME --data_dir=%s`",
                cfg->data_dir);
    uv_signal_init(&a.loop, &a.sigterm);
    uv_signal_init(&a.loop, &a.sigint);
    a.sigterm.data = a.sigint.data = &a;
    uv_signal_start(&a.sigterm, on_signal, SIGTERM);
    uv_signal_start(&a.sigint, on_signal, SIGINT);
    uv_run(&a.loop, UV_RUN_DEFAULT);
    status = 0;
out_loop:
    cy_broker_free(a.broker);
    uv_run(&a.loop, UV_RUN_NOWAIT);
    if (uv_loop_close(&a.loop)) cy_warn(NULL, "event loop closed with handles still open");
out:
    cy_store_close(store);
    cy_registry_close(reg);
    if (status == 0) cy_info(NULL, "stopped");
    return status;
}

int main(int argc, char **argv)
{
    cy_config cfg;
    cy_config_defaults(&cfg);
    char **args = calloc((size_t)argc + 1, sizeof(char *));
    int nargs = 0;
    if (!args) return 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            free(args);
            return 0;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("cyan %s\n", CYAN_VERSION);
            free(args);
            return 0;
        }
    }
    int rc = parse_args(argc, argv, &cfg, args, &nargs);
    if (rc) {
        free(args);
        return rc;
    }
    cy_log_level lvl;
    if (cy_log_parse_level(cfg.log_level, &lvl)) {
        fprintf(stderr, "cyan: log_level: expected debug, info, warn or error\n");
        free(args);
        return 2;
    }
    cy_log_set_level(lvl);
    if (nargs == 0 || !strcmp(args[0], "serve"))
        rc = cmd_serve(&cfg);
    else if (!strcmp(args[0], "device"))
        rc = cmd_device(&cfg, args, nargs);
    else if (!strcmp(args[0], "config") && nargs == 1) {
        cy_config_print(&cfg, stdout);
        rc = 0;
    } else {
        usage(stderr);
        rc = 2;
    }
    free(args);
    return rc;
}
