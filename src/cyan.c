/* cyan: the command line. The only file that sees every module.
 *
 *   cyan [-c FILE] [--name=value ...]            run the device cloud
 *   cyan device add NAME [-c FILE] [--data_dir=DIR]
 *   cyan device list | device remove ID_OR_NAME
 *   cyan device psk ID_OR_NAME                   a new DTLS PSK (CoAP), shown once
 *   cyan device add NAME --cert | device cert ID_OR_NAME
 *                                                a client certificate from the
 *                                                development CA (core/cy_x509.h)
 *   cyan token create [NAME] [--scope S,S...|--read-only] [--expires 30d]
 *                                                an API token, shown once
 *   cyan token list | token revoke ID
 *   cyan config [-c FILE] [--name=value ...]     print every setting
 *   cyan config --check [FILE]                   check a configuration file
 *   cyan call|get|publish|subscribe|list, cyan device rename
 *                                                the HTTP API's client (cli/cli.h)
 *   cyan help                                    the usage
 *   cyan status [--json]                         the shards, from the scoreboard
 *   cyan canary [--shard N] [--count K]          walk the canary path now (monitor/canary.h)
 *   cyan shard stop|cont|kill|spin|stall INDEX   drills (see docs/supervision.md)
 *   cyan shard INDEX GENERATION ...              a shard (spawned by the supervisor)
 *   cyan monitor INDEX GENERATION ...            the monitor (spawned by the supervisor)
 *   cyan man                                     the manual page, cyan(1) (core/cy_man.h;
 *                                                not in the usage: etc/cyan.1 is its output)
 *
 * Settings: defaults, then the config file (-c), then --name=value, each
 * overriding the one before; SIGHUP to the running node reads them again
 * the same way and applies what can change at runtime (supervisor.h).
 * Exit status: 0 on a clean stop (SIGTERM or SIGINT), 1 on a startup error
 * (settings a run cannot start with included), 2 on a usage error (an
 * unknown command or option: one line pointing to `cyan help`). A word
 * after "--" is a word, even one that starts with '-'.
 *
 * Every command but serve works on an existing data folder and says so
 * when there is none, rather than make one where it was run by mistake.
 *
 * The first `cyan serve` on a data dir (or on one whose tokens were all
 * revoked) makes an API token with every scope and leaves it in DATA_DIR/admin-token
 * (mode 0600), so a new node is administrable without a console.
 *
 * The data folder holds secrets (that token, the hashes of device secrets
 * and tokens, registry.key which opens the devices' DTLS PSKs, every
 * session's messages): it is its user's alone. Every
 * command runs with umask 077, so whatever cyan creates is 0700/0600, and
 * `cyan serve` makes cyan's existing files private at start, and the folder
 * too if it is cyan's alone (logging each change), or refuses to start if
 * it cannot.
 */
#include "cli/cli.h"
#include "core/cy_version.h"
#include "core/cy_x509.h"
#include "monitor/monitor.h"
#include "shard/shard.h"
#include "core/cy_clock.h"
#include "core/cy_config.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "core/cy_man.h"
#include "http/http.h"
#include "device/acl.h"
#include "health/supervisor.h"
#include "monitor/canary.h"
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>


static void usage(FILE *out)
{
    fprintf(out, "usage: cyan [-c FILE] [--name=value ...]        run the device cloud\n"
                 "       cyan device add NAME [-c FILE] [--data_dir=DIR]\n"
                 "       cyan device list [...]\n"
                 "       cyan device remove ID_OR_NAME [...]\n"
                 "       cyan device psk ID_OR_NAME [...]          a new DTLS PSK (CoAP)\n"
                 "       cyan device add NAME --cert [...]         with a certificate (dev CA)\n"
                 "       cyan device cert ID_OR_NAME [...]         a certificate (dev CA)\n"
                 "       cyan token create [NAME] [--scope S[,S...] | --read-only]\n"
                 "                         [--expires DURATION] [...]\n"
                 "           scopes: devices:read devices:call events:read events:publish\n"
                 "                   webhooks:manage admin (default: all of them);\n"
                 "           --read-only = devices:read,events:read; DURATION: 3600, 90m, 12h, 30d\n"
                 "       cyan token list [...]\n"
                 "       cyan token revoke ID [...]\n"
                 "       cyan config [-c FILE] [--name=value ...]  print every setting\n"
                 "       cyan config --check [FILE]                check a configuration file\n"
                 "       cyan status [--json] [-c FILE]            the shards and their health\n"
                 "       cyan canary [--shard N] [--count K]       is the path working now?\n"
                 "       cyan shard stop|cont|kill|spin|stall INDEX  outage drills\n");
    cy_cli_usage(out);
    fprintf(out, "       cyan help | --help                        this\n"
                 "       cyan --version\n");
}

/* An unknown command or option: one line. */
static int unknown(const char *what, const char *word)
{
    fprintf(stderr, "cyan: unknown %s '%s': see `cyan help`\n", what, word);
    return 2;
}

/* A subcommand's words it could not take: an option it does not know is
 * named in one line; anything else gets the usage. Returns 2. */
static int bad_words(char **args, int nargs)
{
    for (int i = 1; i < nargs; i++)
        if (!strncmp(args[i], "--", 2)) return unknown("option", args[i]);
    usage(stderr);
    return 2;
}

/* Flags of a subcommand (not settings): passed on to it as words. */
static bool token_flag(const char *arg)
{
    return !strcmp(arg, "--read-only") || !strcmp(arg, "--scope") || !strcmp(arg, "--expires") ||
           !strncmp(arg, "--scope=", 8) || !strncmp(arg, "--expires=", 10);
}

static bool command_flag(const char *arg)
{
    return token_flag(arg) || cy_cli_is_flag(arg) || !strcmp(arg, "--json") ||
           !strcmp(arg, "--cert") || !strcmp(arg, "--shard") || !strcmp(arg, "--count") ||
           !strncmp(arg, "--shard=", 8) || !strncmp(arg, "--count=", 8);
}

/* Whether command flag `flag` belongs to subcommand cmd. */
static bool flag_of(const char *cmd, const char *flag)
{
    if (!strcmp(cmd, "token")) return token_flag(flag);
    if (!strcmp(cmd, "status")) return !strcmp(flag, "--json");
    if (!strcmp(cmd, "device")) return !strcmp(flag, "--cert") || cy_cli_flag_of(cmd, flag);
    if (!strcmp(cmd, "canary"))
        return !token_flag(flag) && !cy_cli_is_flag(flag) && strcmp(flag, "--json") != 0 &&
               strcmp(flag, "--cert") != 0;
    return cy_cli_flag_of(cmd, flag);
}

/* "-5", "-0.5", "-.5": an argument (`cyan call dev setTemp -5`), not an
 * option. */
static bool negative_number(const char *arg)
{
    const char *p = arg + 1;
    if (*p == '.') p++;
    return *p >= '0' && *p <= '9';
}

/* Parse -c FILE and --name=value into cfg; other words (and command flags)
 * go to args, and so does "--" and every word after it. A negative number
 * is a word too. */
static int parse_args(int argc, char **argv, cy_config *cfg, char **args, int *nargs)
{
    cy_config_error err;
    const char *file = NULL;
    for (int i = 1; i < argc && strcmp(argv[i], "--"); i++) /* after "--": words */
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
    bool words = false;
    for (int i = 1; i < argc; i++) {
        if (words || !strcmp(argv[i], "--")) {
            words = true;
            args[(*nargs)++] = argv[i];
        } else if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) {
            i++;
        } else if (command_flag(argv[i])) {
            args[(*nargs)++] = argv[i];
        } else if (!strncmp(argv[i], "--", 2) && strchr(argv[i], '=')) {
            char name[64];
            const char *eq = strchr(argv[i], '=');
            size_t n = (size_t)(eq - argv[i] - 2);
            if (n >= sizeof(name)) n = sizeof(name) - 1;
            memcpy(name, argv[i] + 2, n);
            name[n] = '\0';
            if (cy_config_set(cfg, name, eq + 1, &err)) {
                bool unknown_name = !strncmp(err.msg, "unknown setting", 15);
                fprintf(stderr, "cyan: %s%s\n", err.msg,
                        unknown_name ? ": see `cyan help` and `cyan config`" : "");
                return 2;
            }
        } else if (argv[i][0] == '-' && !negative_number(argv[i])) {
            fprintf(stderr,
                    "cyan: unknown option '%s': see `cyan help` (a word that starts with '-' "
                    "goes after --)\n",
                    argv[i]);
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
            if (mkdir(tmp, 0700) && errno != EEXIST) return -errno;
            *p = '/';
        }
    if (mkdir(tmp, 0700) && errno != EEXIST) return -errno;
    return 0;
}

/* The names cyan makes in data_dir (an operator's other files are let be). */
static bool own_name(const char *n)
{
    return !strncmp(n, "registry.db", 11) || !strncmp(n, "registry.key", 12) ||
           !strncmp(n, "shard-", 6) || !strncmp(n, "admin-token", 11) ||
           !strncmp(n, "monitor.db", 10) || !strcmp(n, "shards") || !strcmp(n, "run");
}

/* Take group and other bits off name in dir (a directory, or a file in it);
 * log a change. Opened without following a symlink, changed through the fd,
 * so nothing swapped in between is touched; what is neither a file nor a
 * directory (a socket of a previous run) is let be. 0, or -errno. */
static int make_private(int dirfd, const char *dir, const char *name)
{
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return errno == ENXIO || errno == ELOOP || errno == ENOENT ? 0 : -errno;
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
    } else if ((S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) && (st.st_mode & 077)) {
        mode_t to = st.st_mode & 07700;
        if (fchmod(fd, to) != 0)
            rc = -errno;
        else
            cy_warn(NULL, "data_dir: made %s%s%s private: mode %04o -> %04o", dir,
                    strcmp(name, ".") ? "/" : "", strcmp(name, ".") ? name : "",
                    (unsigned)(st.st_mode & 07777), (unsigned)to);
    }
    close(fd);
    return rc;
}

/* data_dir, cyan's files in it and those in run/: owner only. The folder
 * itself only if it is cyan's alone: a shared one (sticky, like /tmp) or one
 * that holds other files (a home, /) is left as it is, with a warning; what
 * matters, cyan's files, are private either way. */
static int private_data_dir(const char *dir)
{
    int rc = 0, dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return -errno;
    DIR *d = fdopendir(dup(dfd));
    if (!d) rc = -errno;
    struct dirent *e;
    char other[sizeof(e->d_name)] = ""; /* the first name that is not cyan's */
    while (!rc && !other[0] && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && !own_name(e->d_name))
            memcpy(other, e->d_name, sizeof(other));
    struct stat st;
    if (!rc && fstat(dfd, &st) != 0) rc = -errno;
    if (!rc && (st.st_mode & 077) && (other[0] || (st.st_mode & S_ISVTX)))
        cy_warn(NULL,
                "data_dir: %s is open to others (mode %04o) and is not cyan's alone (%s%s): left "
                "as it is; cyan's files in it are private. Give cyan a folder of its own.",
                dir, (unsigned)(st.st_mode & 07777), other[0] ? "it holds " : "sticky", other);
    else if (!rc)
        rc = make_private(dfd, dir, ".");
    if (d) rewinddir(d);
    while (!rc && (e = readdir(d)))
        if (own_name(e->d_name)) rc = make_private(dfd, dir, e->d_name);
    if (d) closedir(d);
    char run[600];
    snprintf(run, sizeof(run), "%s/run", dir);
    int rfd = rc ? -1 : openat(dfd, "run", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *r = rfd >= 0 ? fdopendir(rfd) : NULL;
    if (rfd >= 0 && !r) close(rfd);
    while (r && !rc && (e = readdir(r)))
        if (e->d_name[0] != '.') rc = make_private(dirfd(r), run, e->d_name);
    if (r) closedir(r);
    close(dfd);
    return rc;
}

/* The registry of an existing data folder (serve has made it). */
static int open_registry(const cy_config *cfg, cy_registry **r)
{
    char path[600];
    if (cy_cli_need_data_dir(cfg)) return CY_ENOENT;
    snprintf(path, sizeof(path), "%s/registry.db", cfg->data_dir);
    int rc = cy_registry_open(path, r);
    if (rc) fprintf(stderr, "cyan: cannot open %s: %s\n", path, cy_strerror(rc));
    return rc;
}

static int print_device(void *ctx, const cy_device *d)
{
    (void)ctx;
    printf("%s  %s\n", d->id, d->name);
    return 0;
}

/* A client certificate for device id from the development CA in data_dir
 * (made on first use): data_dir/certs/<id>.crt and .key. 0, or a code
 * already reported. */
static int issue_cert(const cy_config *cfg, const char *id)
{
    char dir[600], cert[700], key[700];
    snprintf(dir, sizeof(dir), "%s/certs", cfg->data_dir);
    int rc = make_dir(dir);
    bool made = false;
    if (!rc) rc = cy_x509_ca_ensure(cfg->data_dir, &made);
    if (rc) {
        fprintf(stderr, "cyan: the development CA in %s: %s\n", cfg->data_dir,
                rc == CY_EINVAL ? "one of dev-ca.crt and dev-ca.key is missing or broken"
                                : cy_strerror(rc));
        return rc;
    }
    if (made)
        fprintf(stderr,
                "cyan: made a development CA: %s/" CY_X509_CA_CERT " (set tls_ca to it so devices "
                "log in with its certificates; use your own CA in production)\n",
                cfg->data_dir);
    snprintf(cert, sizeof(cert), "%s/%s.crt", dir, id);
    snprintf(key, sizeof(key), "%s/%s.key", dir, id);
    rc = cy_x509_issue_device(cfg->data_dir, id, cert, key);
    if (rc == CY_EEXIST)
        fprintf(stderr, "cyan: %s or %s exists already: remove them for a new certificate\n", cert,
                key);
    else if (rc)
        fprintf(stderr, "cyan: cannot issue a certificate: %s\n", cy_strerror(rc));
    else
        printf("cert: %s\nkey: %s\n", cert, key);
    return rc;
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
    bool cert = nargs == 4 && !strcmp(args[3], "--cert");
    if (!strcmp(args[1], "add") && (nargs == 3 || cert)) {
        char id[CY_DEVICE_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1];
        char psk[CY_DEVICE_PSK_LEN + 1];
        rc = cy_registry_device_add(r, args[2], id, secret, psk);
        if (rc == 0) {
            printf("id: %s\nsecret: %s\npsk: %s\n", id, secret, psk);
            if (cert && issue_cert(cfg, id)) status = 1;
            fprintf(stderr,
                    "cyan: device '%s' added. The secret is shown only now: the device\n"
                    "connects with MQTT username = id and password = secret, or with\n"
                    "CoAP over DTLS with PSK identity = id and key = psk.\n",
                    args[2]);
        } else if (rc == CY_EEXIST) {
            fprintf(stderr, "cyan: a device named '%s' exists already\n", args[2]);
        } else if (rc == CY_EINVAL) {
            fprintf(stderr, "cyan: bad device name '%s': use 1 to %d letters, digits, '-', '_' "
                            "or '.'\n",
                    args[2], CY_DEVICE_NAME_MAX);
        }
    } else if (!strcmp(args[1], "cert") && nargs == 3) {
        cy_device d;
        rc = cy_registry_device_get(r, args[2], &d);
        if (rc == CY_ENOENT) fprintf(stderr, "cyan: no device '%s'\n", args[2]);
        if (rc == 0 && issue_cert(cfg, d.id)) status = 1;
    } else if (!strcmp(args[1], "list") && nargs == 2) {
        rc = cy_registry_device_list(r, print_device, NULL);
    } else if (!strcmp(args[1], "psk") && nargs == 3) {
        char psk[CY_DEVICE_PSK_LEN + 1];
        rc = cy_registry_device_psk_new(r, args[2], psk);
        if (rc == 0) {
            printf("psk: %s\n", psk);
            fprintf(stderr,
                    "cyan: device '%s' has a new DTLS PSK; the old one no longer works.\n"
                    "It is shown only now: the device connects with CoAP over DTLS with\n"
                    "PSK identity = its id and key = psk.\n",
                    args[2]);
        }
        if (rc == CY_ENOENT) fprintf(stderr, "cyan: no device '%s'\n", args[2]);
    } else if (!strcmp(args[1], "remove") && nargs == 3) {
        rc = cy_registry_device_remove(r, args[2]);
        if (rc == CY_ENOENT) fprintf(stderr, "cyan: no device '%s'\n", args[2]);
        if (rc == 0) fprintf(stderr, "cyan: device '%s' removed\n", args[2]);
    } else {
        status = bad_words(args, nargs);
    }
    if (rc && !status) {
        if (rc != CY_EEXIST && rc != CY_EINVAL && rc != CY_ENOENT)
            fprintf(stderr, "cyan: %s\n", cy_strerror(rc));
        status = 1;
    }
    cy_registry_close(r);
    return status;
}

/* wall ms as "2026-12-04T13:35:32Z", or "-" for 0 (never). */
static void when(int64_t ms, char out[32])
{
    snprintf(out, 32, "-");
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    if (ms > 0 && gmtime_r(&secs, &tm)) strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* One line per token: id, name, scopes, created, expires, last used (the
 * last two "-" for never; "expired" after an expiry in the past). */
static int print_token(void *ctx, const cy_token *t)
{
    int64_t now = *(const int64_t *)ctx;
    char created[32], expires[32], used[32], scopes[128];
    when(t->created_at, created);
    when(t->expires_at, expires);
    when(t->last_used_at, used);
    cy_scopes_format(t->scopes, scopes, sizeof(scopes));
    printf("%s  %s  %s  %s  %s%s  %s\n", t->id, t->name, scopes, created, expires,
           t->expires_at > 0 && now >= t->expires_at ? " (expired)" : "", used);
    return 0;
}

/* The value of a flag given as "--flag VALUE" or "--flag=VALUE" at
 * args[*i] (moving *i past a separate value), or NULL if it is missing. */
static const char *flag_value(char **args, int nargs, int *i, const char *flag)
{
    size_t n = strlen(flag);
    if (args[*i][n] == '=') return args[*i] + n + 1;
    if (*i + 1 < nargs && args[*i + 1][0] != '-') return args[++*i];
    return NULL;
}

static int cmd_token(cy_config *cfg, char **args, int nargs)
{
    /* The flags may stand anywhere after "token create". */
    bool read_only = false;
    const char *scope_text = NULL, *expires_text = NULL;
    bool flags = false, bad = false;
    int n = 0;
    for (int i = 0; i < nargs; i++) {
        if (!strcmp(args[i], "--read-only")) {
            read_only = flags = true;
        } else if (!strncmp(args[i], "--scope", 7) && token_flag(args[i])) {
            flags = true;
            bad |= scope_text != NULL || !(scope_text = flag_value(args, nargs, &i, "--scope"));
        } else if (!strncmp(args[i], "--expires", 9) && token_flag(args[i])) {
            flags = true;
            bad |=
                expires_text != NULL || !(expires_text = flag_value(args, nargs, &i, "--expires"));
        } else {
            args[n++] = args[i];
        }
    }
    nargs = n;
    const char *verb = nargs >= 2 ? args[1] : "";
    bool create = !strcmp(verb, "create") && nargs <= 3;
    bool list = !strcmp(verb, "list") && nargs == 2;
    bool revoke = !strcmp(verb, "revoke") && nargs == 3;
    if (!(create || list || revoke) || (flags && !create) || bad || (read_only && scope_text))
        return bad_words(args, nargs);
    unsigned scopes = read_only ? CY_SCOPE_READ_ONLY : CY_SCOPE_ALL;
    int64_t lifetime = 0;
    if (scope_text) {
        char unknown[CY_SCOPE_NAME_MAX + 16];
        if (cy_scopes_parse(scope_text, &scopes, unknown, sizeof(unknown))) {
            fprintf(stderr,
                    "cyan: unknown scope '%s': the scopes are devices:read, devices:call, "
                    "events:read, events:publish, webhooks:manage, admin\n",
                    unknown);
            return 1;
        }
    }
    if (expires_text && cy_duration_parse(expires_text, &lifetime)) {
        fprintf(stderr,
                "cyan: bad --expires '%s': a number of seconds, or a number followed by s, m, "
                "h or d (30d), from 1 s to 10 years\n",
                expires_text);
        return 1;
    }
    cy_registry *r = NULL;
    if (open_registry(cfg, &r)) return 1;
    int rc;
    int64_t now = cy_wall_ms();
    if (create) {
        const char *name = nargs == 3 ? args[2] : "token";
        char id[CY_TOKEN_ID_LEN + 1], token[CY_TOKEN_MAX + 1];
        int64_t expires_at = lifetime ? now + lifetime : 0;
        rc = cy_registry_token_create(r, name, scopes, expires_at, id, token);
        if (rc == 0) {
            char names[128], until[32];
            cy_scopes_format(scopes, names, sizeof(names));
            when(expires_at, until);
            printf("id: %s\ntoken: %s\n", id, token);
            fprintf(stderr,
                    "cyan: token '%s' created, scopes %s, %s%s. It is shown only now: keep it\n"
                    "somewhere safe. Revoke it with `cyan token revoke %s`.\n",
                    name, names, expires_at ? "expires " : "never expires", expires_at ? until : "",
                    id);
        } else if (rc == CY_EINVAL) {
            fprintf(stderr,
                    "cyan: bad token name '%s': use 1 to %d letters, digits, '-', '_' "
                    "or '.'\n",
                    name, CY_TOKEN_NAME_MAX);
        }
    } else if (list) {
        rc = cy_registry_token_list(r, print_token, &now);
    } else {
        rc = cy_registry_token_revoke(r, args[2]);
        if (rc == CY_ENOENT)
            fprintf(stderr, "cyan: no token with id '%s' (see `cyan token list`)\n", args[2]);
        if (rc == 0) fprintf(stderr, "cyan: token '%s' revoked\n", args[2]);
    }
    if (rc && rc != CY_EINVAL && rc != CY_ENOENT) fprintf(stderr, "cyan: %s\n", cy_strerror(rc));
    cy_registry_close(r);
    return rc ? 1 : 0;
}

/* cyan canary [--shard N] [--count K]: the logic is cy_canary_probe's. */
static int cmd_canary(const cy_config *cfg, char **args, int nargs)
{
    long shard = -1;
    unsigned long long count = 1;
    for (int i = 1; i < nargs; i++) {
        const char *a = args[i], *v = NULL;
        bool is_shard = !strncmp(a, "--shard", 7), is_count = !strncmp(a, "--count", 7);
        if ((is_shard || is_count) && a[7] == '=')
            v = a + 8;
        else if ((is_shard || is_count) && a[7] == '\0' && i + 1 < nargs)
            v = args[++i];
        char *end;
        errno = 0;
        unsigned long long n = v ? strtoull(v, &end, 10) : 0;
        if (!v || !*v || *end || errno || v[0] == '-' || (is_count && (n < 1 || n > 86400)) ||
            (is_shard && n >= cfg->shards)) {
            fprintf(stderr, "cyan: canary: expected --shard 0..%u and --count 1..86400\n",
                    cfg->shards - 1);
            usage(stderr);
            return 2;
        }
        if (is_shard)
            shard = (long)n;
        else
            count = n;
    }
    return cy_canary_probe(cfg, (int)shard, (unsigned)count, stdout);
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

/* The shard count is part of the data layout: sessions live in the file of
 * the shard their client id hashes to. Refuse to start with another count. */
static int check_layout(const cy_config *cfg)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/shards", cfg->data_dir);
    FILE *f = fopen(path, "r");
    if (f) {
        unsigned n = 0;
        int ok = fscanf(f, "%u", &n) == 1;
        fclose(f);
        if (ok && n != cfg->shards) {
            fprintf(stderr,
                    "cyan: %s holds the state of %u shards, and shards = %u.\n"
                    "Sessions are stored in the shard their client id hashes to, so the count "
                    "cannot change\nunder existing data. Start with --shards=%u, or remove "
                    "%s/shard-*.db to drop\npersistent sessions and retained messages.\n",
                    cfg->data_dir, n, cfg->shards, n, cfg->data_dir);
            return 1;
        }
        if (ok) return 0;
    }
    f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "cyan: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    fprintf(f, "%u\n", cfg->shards);
    fclose(f);
    return 0;
}

/* The TLS certificate and key, when set, load as a pair; 0 or 1 with a
 * message. Shards and the monitor load them again: this only makes a
 * mistake fail the start rather than each listener. */
static int check_tls(const cy_config *cfg)
{
    if (!cfg->tls_cert[0] && !cfg->tls_key[0]) return 0;
    char why[300];
    if (!cfg->tls_cert[0] || !cfg->tls_key[0]) {
        fprintf(stderr, "cyan: tls_cert and tls_key go together: set both or neither\n");
        return 1;
    }
    if (cy_http_tls_check(cfg->tls_cert, cfg->tls_key, why, sizeof(why))) {
        fprintf(stderr, "cyan: TLS: %s\n", why);
        return 1;
    }
    return 0;
}

/* The ACL file the settings name parses (or none is named): at start and
 * at every SIGHUP, so that a broken file stops neither the start nor a
 * running node quietly (docs/operations.md, "Access control"). err: why
 * not, or what the file holds. */
static int check_acl(const cy_config *cfg, char *err, size_t errlen)
{
    if (!cfg->acl_file[0]) return 0;
    char why[200];
    cy_acl *a = cy_acl_load(cfg->acl_file, why, sizeof(why));
    if (!a) {
        snprintf(err, errlen, "acl_file %s", why);
        return 1;
    }
    snprintf(err, errlen, "acl_file %s: %zu rules, %zu user blocks", cfg->acl_file,
             cy_acl_rule_count(a), cy_acl_user_count(a));
    cy_acl_free(a);
    return 0;
}

static int cmd_serve(const cy_config *cfg, char **pass)
{
    /* before anything is created */
    if (cy_supervisor_check(cfg) || cy_monitor_check(cfg) || check_tls(cfg)) return 1;
    char acl_err[256] = "";
    if (check_acl(cfg, acl_err, sizeof(acl_err))) {
        cy_error(NULL, "cannot start: %s", acl_err);
        return 1;
    }
    if (acl_err[0]) cy_info(NULL, "%s", acl_err);
    cy_supervisor_set_reload_check(check_acl);
    if (make_dir(cfg->data_dir)) {
        fprintf(stderr, "cyan: cannot create data_dir %s: %s\n", cfg->data_dir, strerror(errno));
        return 1;
    }
    int prc = private_data_dir(cfg->data_dir);
    if (prc) {
        cy_error(NULL,
                 "data_dir %s: cannot make it and its files private to this user: %s "
                 "(cyan keeps secrets there; chown it to this user, or `chmod -R go= %s`)",
                 cfg->data_dir, cy_strerror(prc), cfg->data_dir);
        return 1;
    }
    if (check_layout(cfg)) return 1;
    cy_registry *reg = NULL;
    if (open_registry(cfg, &reg)) return 1;
    int ndev = 0;
    cy_registry_device_list(reg, count_device, &ndev);
    /* Without a first token nobody could use the API; serving devices does not
     * depend on it, so a failure here is only a warning. */
    char token_path[600];
    snprintf(token_path, sizeof(token_path), "%s/admin-token", cfg->data_dir);
    bool created = false;
    int trc = cy_registry_token_bootstrap(reg, token_path, &created);
    cy_registry_close(reg);
    cy_info(NULL, "cyan %s: %u shards, data in %s, %d devices registered%s", CYAN_VERSION,
            cfg->shards, cfg->data_dir, ndev,
            cfg->allow_anonymous ? ", ANONYMOUS CLIENTS ALLOWED" : "");
    if (ndev == 0 && !cfg->allow_anonymous)
        cy_info(NULL, "no devices yet: add one with `cyan device add NAME --data_dir=%s`",
                cfg->data_dir);
    if (trc)
        cy_warn(NULL, "cannot create the first API token in %s: %s", token_path, cy_strerror(trc));
    else if (created)
        cy_info(NULL,
                "created the first API token (full access); it is in %s; create others with "
                "`cyan token create`",
                token_path);
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) {
        fprintf(stderr, "cyan: cannot find my own binary: %s\n", strerror(errno));
        return 1;
    }
    exe[n] = '\0';
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    return cy_supervisor_run(cfg, exe, pass);
}

/* `cyan man` (not in the usage: a maintainer's command): the manual page,
 * cyan(1), from the settings table and the usage text (core/cy_man.h). */
static int cmd_man(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&text, &len);
    if (!m) return 1;
    usage(m);
    fclose(m);
    cy_man_print(stdout, text);
    free(text);
    return fflush(stdout) || ferror(stdout) ? 1 : 0;
}

static int parse_uint(const char *s, unsigned long long *out)
{
    char *end;
    errno = 0;
    *out = strtoull(s, &end, 10);
    return errno || end == s || *end || s[0] == '-' ? -1 : 0;
}

int main(int argc, char **argv)
{
    /* Before anything is created: see the file comment. */
    umask(077);
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
            printf("cyan %s (commit %s)\n", CYAN_VERSION, cy_commit);
            free(args);
            return 0;
        }
    }
    int rc = parse_args(argc, argv, &cfg, args, &nargs);
    if (rc) {
        free(args);
        return rc;
    }
    /* Command flags belong to their command only (serve would pass them on to
     * the shards). */
    for (int i = 0; i < nargs && strcmp(args[i], "--"); i++)
        if (command_flag(args[i]) && !flag_of(args[0], args[i])) {
            fprintf(stderr, "cyan: %s is not an option of `cyan %s`: see `cyan help`\n", args[i],
                    args[0]);
            free(args);
            return 2;
        }
    cy_log_level lvl = CY_LOG_INFO;
    /* `cyan config --check` reports a bad level itself, with its line. */
    bool checking = false;
    for (int i = 1; nargs > 0 && !strcmp(args[0], "config") && i < nargs; i++)
        checking |= !strcmp(args[i], "--check");
    if (cy_log_parse_level(cfg.log_level, &lvl) && !checking) {
        fprintf(stderr, "cyan: log_level: expected debug, info, warn or error\n");
        free(args);
        return 2;
    }
    if (!checking) cy_log_set_level(lvl);
    cy_log_format fmt = CY_LOG_TEXT;
    cy_log_parse_format(cfg.log_format, &fmt); /* checked by cy_config_set */
    cy_log_set_format(fmt);
    unsigned long long idx, gen;
    if (nargs == 0 || !strcmp(args[0], "serve")) {
        /* Shards get the same -c and --name=value arguments. */
        char **pass = calloc((size_t)argc + 1, sizeof(char *));
        int np = 0;
        cy_log_set_process("supervisor");
        for (int i = 1; pass && i < argc; i++)
            if (strcmp(argv[i], "serve")) pass[np++] = argv[i];
        rc = pass ? cmd_serve(&cfg, pass) : 1;
        free(pass);
    } else if (!strcmp(args[0], "shard") && nargs == 3 && !parse_uint(args[1], &idx) &&
               !parse_uint(args[2], &gen)) {
        rc = cy_shard_run(&cfg, (unsigned)idx, gen);
    } else if (!strcmp(args[0], "monitor") && nargs == 3 && !parse_uint(args[1], &idx) &&
               !parse_uint(args[2], &gen)) {
        rc = cy_monitor_run(&cfg, (unsigned)idx, gen);
    } else if (!strcmp(args[0], "shard") && nargs == 3) {
        rc = cy_cli_need_data_dir(&cfg) ? 1 : cy_shard_drill(&cfg, args[1], args[2]);
    } else if (!strcmp(args[0], "status") && nargs == 1) {
        rc = cy_cli_need_data_dir(&cfg) ? 1 : cy_status_print(&cfg);
    } else if (!strcmp(args[0], "status") && nargs == 2 && !strcmp(args[1], "--json")) {
        rc = cy_cli_need_data_dir(&cfg) ? 1 : cy_status_json(&cfg);
    } else if (!strcmp(args[0], "canary")) {
        rc = cy_cli_need_data_dir(&cfg) ? 1 : cmd_canary(&cfg, args, nargs);
    } else if (cy_cli_is_command(args, nargs)) {
        rc = cy_cli_run(&cfg, args, nargs);
    } else if (!strcmp(args[0], "device"))
        rc = cmd_device(&cfg, args, nargs);
    else if (!strcmp(args[0], "token"))
        rc = cmd_token(&cfg, args, nargs);
    else if (!strcmp(args[0], "config") && nargs == 1) {
        cy_config_print(&cfg, stdout);
        rc = 0;
    } else if (!strcmp(args[0], "man") && nargs == 1) {
        rc = cmd_man();
    } else if (!strcmp(args[0], "config")) {
        const char *file = NULL; /* the -c of the command line, as parse_args took it */
        for (int i = 1; i + 1 < argc && strcmp(argv[i], "--"); i++)
            if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) file = argv[++i];
        rc = cy_cli_config(&cfg, file, args, nargs);
    } else if (!strcmp(args[0], "help")) {
        usage(stdout);
        rc = 0;
    } else if (!strcmp(args[0], "status") || !strcmp(args[0], "shard") ||
               !strcmp(args[0], "monitor")) {
        usage(stderr);
        rc = 2;
    } else {
        rc = unknown("command", args[0]);
    }
    free(args);
    return rc;
}
