/* config_check: `cyan config --check [FILE]` (cli.h).
 *
 * Two passes. The file is first read as `cyan serve` reads it
 * (cy_config_load: names, types, ranges, each value's own syntax), which
 * stops at the first bad line and names it. The settings are then checked
 * together, as the node would check them before it starts or as its
 * listeners would fail: the log level, every listener address, two TCP
 * (or two UDP) listeners on one port, the TLS certificate and key (loaded
 * by both TLS libraries cyan uses), the ACL file, the alert rules file and
 * receivers, the data folder's path. Every such problem is found, and the
 * one on the earliest line of the file is reported (one not set in the
 * file comes last), so that fixing the reports in turn walks down the
 * file.
 */
#include "cli/cli_int.h"

#include "alerts/alerts.h"
#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "core/cy_tls.h"
#include "device/acl.h"
#include "health/watchdog.h"
#include "http/http.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

/* The first problem found so far, by line. */
typedef struct checker {
    const char *file; /* NULL: the settings come from no file */
    char *text;       /* the file's text, for the lines of settings */
    size_t len;
    unsigned line; /* of the problem kept; UINT_MAX-ish for "not in the file" */
    bool found;
    char msg[512];
} checker;

#define NOT_IN_FILE 0xffffffffu

static void problem(checker *k, const char *setting, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void problem(checker *k, const char *setting, const char *fmt, ...)
{
    unsigned line = k->text ? cy_cli_config_line(k->text, k->len, setting) : 0;
    if (!line) line = NOT_IN_FILE;
    if (k->found && line >= k->line) return;
    char what[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    k->found = true;
    k->line = line;
    if (line != NOT_IN_FILE)
        snprintf(k->msg, sizeof(k->msg), "%s:%u: %s: %s", k->file, line, setting, what);
    else if (k->file)
        snprintf(k->msg, sizeof(k->msg), "%s: %s (not set in the file): %s", k->file, setting,
                 what);
    else
        snprintf(k->msg, sizeof(k->msg), "%s: %s", setting, what);
}

/* A listener in use: its setting, address, and whether it is UDP. */
typedef struct listener {
    const char *name;
    struct sockaddr_storage addr;
    bool udp;
} listener;

static unsigned port_of(const struct sockaddr_storage *a)
{
    if (a->ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)a)->sin_port);
    if (a->ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
    return 0;
}

static bool any_addr(const struct sockaddr_storage *a)
{
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr == htonl(INADDR_ANY);
    if (a->ss_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &in6addr_any,
                       sizeof(in6addr_any));
    return false;
}

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family) return false;
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                   &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr));
}

/* Two listeners of one kind that cannot both bind: the same port, and the
 * same address or a wildcard on either side (port 0 is any free port). */
static bool clash(const listener *a, const listener *b)
{
    unsigned pa = port_of(&a->addr);
    if (a->udp != b->udp || pa == 0 || pa != port_of(&b->addr)) return false;
    return same_addr(&a->addr, &b->addr) || any_addr(&a->addr) || any_addr(&b->addr);
}

static void check_listeners(checker *k, const cy_config *c)
{
    bool tls = c->tls_cert[0] != '\0';
    const struct {
        const char *name, *value;
        bool used, udp;
    } all[] = {
        {"mqtt_listen", c->mqtt_listen, true, false},
        {"mqtts_listen", c->mqtts_listen, tls, false},
        {"http_listen", c->http_listen, true, false},
        {"ops_listen", c->ops_listen, c->monitor, false},
        {"coap_listen", c->coap_listen, true, true},
        {"coaps_listen", c->coaps_listen, true, true},
    };
    listener in_use[6];
    size_t n = 0;
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (!all[i].value[0]) continue;
        listener l;
        memset(&l, 0, sizeof(l));
        l.name = all[i].name;
        l.udp = all[i].udp;
        if (cy_listen_addr_parse(all[i].value, &l.addr)) {
            problem(k, all[i].name,
                    "'%s' is not an address to listen on: host:port (numbers, or * for any "
                    "IPv4 address) or [IPv6]:port",
                    all[i].value);
            continue;
        }
        if (!all[i].used) continue; /* checked, but opened only with its feature */
        for (size_t j = 0; j < n; j++) {
            if (!clash(&in_use[j], &l)) continue;
            /* Said at the later of the two in the file (one set there, if
             * the other is a default). */
            unsigned lj = k->text ? cy_cli_config_line(k->text, k->len, in_use[j].name) : 0;
            unsigned ll = k->text ? cy_cli_config_line(k->text, k->len, l.name) : 0;
            problem(k, ll >= lj ? l.name : in_use[j].name, "%s and %s are both on port %u (%s)",
                    in_use[j].name, l.name, port_of(&l.addr), l.udp ? "UDP" : "TCP");
        }
        in_use[n++] = l;
    }
}

static void check_tls(checker *k, const cy_config *c)
{
    if (!c->tls_cert[0] && !c->tls_key[0] && !c->tls_ca[0]) return;
    if (!c->tls_cert[0] || !c->tls_key[0]) {
        problem(k,
                c->tls_cert[0]  ? "tls_cert"
                : c->tls_key[0] ? "tls_key"
                                : "tls_ca",
                "tls_cert and tls_key go together: set both (tls_ca needs them too)");
        return;
    }
    char why[300];
    cy_tls_options o;
    cy_tls_options_of(c, &o);
    if (cy_tls_check(&o, why, sizeof(why))) {
        problem(k, "tls_cert", "%s", why);
        return;
    }
    /* The API's and the status page's HTTPS is another library's (GnuTLS,
     * through libmicrohttpd): it must load the pair too. */
    if ((c->http_tls && c->http_listen[0]) || (c->ops_tls && c->monitor && c->ops_listen[0]))
        if (cy_http_tls_check(c->tls_cert, c->tls_key, why, sizeof(why)))
            problem(k, "tls_cert", "HTTPS: %s", why);
}

static void check_files(checker *k, const cy_config *c)
{
    char why[300];
    if (c->acl_file[0]) {
        cy_acl *a = cy_acl_load(c->acl_file, why, sizeof(why));
        if (!a) problem(k, "acl_file", "%s", why);
        cy_acl_free(a);
    }
    if (c->monitor && c->alert_rules[0]) {
        cy_alert_rules *rules = cy_calloc(1, sizeof(*rules));
        if (rules) {
            cy_alert_params p = {c->watchdog_timeout, c->canary_timeout, c->canary_interval};
            cy_alert_rules_defaults(rules, &p);
            if (cy_alert_rules_load(rules, c->alert_rules, why, sizeof(why)))
                problem(k, "alert_rules", "%s", why);
            cy_free(rules);
        }
    }
    /* As the monitor reads it: URLs separated by commas or blanks. */
    char list[sizeof(c->alert_webhooks)];
    snprintf(list, sizeof(list), "%s", c->alert_webhooks);
    for (char *save = NULL, *u = strtok_r(list, ", ", &save); u; u = strtok_r(NULL, ", ", &save))
        if (strncmp(u, "http://", 7) && strncmp(u, "https://", 8))
            problem(k, "alert_webhooks", "'%.200s' is not an http:// or https:// URL", u);
}

static void check_data_dir(checker *k, const cy_config *c)
{
    struct stat st;
    if (!c->data_dir[0]) {
        problem(k, "data_dir", "empty: cyan needs a folder for its data");
        return;
    }
    if (stat(c->data_dir, &st) == 0 && !S_ISDIR(st.st_mode))
        problem(k, "data_dir", "%s is not a folder", c->data_dir);
    /* The bus between shards listens on data_dir/run/shard-N.sock. */
    size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;
    char sock[700];
    int len = snprintf(sock, sizeof(sock), "%s/run/shard-%u.sock", c->data_dir,
                       c->shards ? c->shards - 1 : 0);
    if (c->shards > 1 && (len < 0 || (size_t)len > max))
        problem(k, "data_dir",
                "too long for %u shards: the bus socket %s is %d bytes and a unix socket path "
                "may have at most %zu; use a shorter (or relative) data_dir, or shards = 1",
                c->shards, sock, len, max);
}

/* The whole file at path into *text (NUL-terminated). 0 or -errno. */
static int read_all(const char *path, char **text, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -errno;
    cy_buf b;
    cy_buf_init(&b);
    int rc = 0;
    while (!rc && cy_buf_size(&b) <= CY_CONFIG_FILE_MAX && !(rc = cy_buf_reserve(&b, 4096))) {
        size_t n = fread(b.data + b.len, 1, b.cap - b.len, f);
        b.len += n;
        if (n == 0) break;
    }
    if (!rc && ferror(f)) rc = errno ? -errno : CY_EIO; /* a folder: EISDIR */
    fclose(f);
    if (!rc) rc = cy_buf_put_u8(&b, 0);
    if (rc) {
        cy_buf_fini(&b);
        return rc;
    }
    *len = cy_buf_size(&b) - 1;
    *text = (char *)b.data; /* off is 0: nothing was consumed */
    return 0;
}

int cy_cli_config(const cy_config *cfg, const char *config_file, char **args, int nargs)
{
    bool check = false;
    const char *file = NULL;
    for (int i = 1; i < nargs; i++) {
        if (!strcmp(args[i], "--check")) {
            check = true;
        } else if (args[i][0] == '-') {
            fprintf(stderr, "cyan: unknown option %s of `cyan config` (see `cyan help`)\n",
                    args[i]);
            return 2;
        } else if (file) {
            fprintf(stderr, "cyan: one file at a time: cyan config --check [FILE] (see `cyan "
                            "help`)\n");
            return 2;
        } else {
            file = args[i];
        }
    }
    if (!check) {
        fprintf(stderr, "cyan: usage: cyan config [-c FILE] prints the settings; cyan config "
                        "--check [FILE] checks a file (see `cyan help`)\n");
        return 2;
    }
    checker k;
    memset(&k, 0, sizeof(k));
    cy_config c = *cfg;
    k.file = file ? file : config_file;
    if (k.file) {
        int rc = read_all(k.file, &k.text, &k.len);
        if (rc) {
            fprintf(stderr, "cyan: %s: %s\n", k.file,
                    rc < 0 && rc > -4096 ? strerror(-rc) : cy_strerror(rc));
            return 1;
        }
    }
    if (file) { /* the file alone, over the defaults */
        cy_config_error err;
        cy_config_defaults(&c);
        if (cy_config_load_buf(&c, k.text, k.len, file, &err)) {
            fprintf(stderr, "cyan: %s\n", err.msg);
            cy_free(k.text);
            return 1;
        }
    }
    cy_log_level lvl;
    if (cy_log_parse_level(c.log_level, &lvl))
        problem(&k, "log_level", "expected debug, info, warn or error, got '%s'", c.log_level);
    check_listeners(&k, &c);
    check_tls(&k, &c);
    check_files(&k, &c);
    check_data_dir(&k, &c);
    cy_free(k.text);
    if (k.found) {
        fprintf(stderr, "cyan: %s\n", k.msg);
        return 1;
    }
    printf("ok\n");
    return 0;
}
