/* cli: the client commands' words and flags, and the commands that make
 * one request each (call, get, publish, list, device rename); subscribe
 * is subscribe.c's, config --check config_check.c's. See cli.h.
 *
 * Every command is: take the words apart (a usage error is one line
 * pointing to `cyan help`, exit 2), find the API and the token
 * (cli_target), make the request, then print the answer: with --json the
 * body as it came, else the part a person wants (a call's return value, a
 * table of devices). A status other than 2xx is one line on stderr and
 * exit 1.
 */
#include "cli/cli_int.h"

#include "core/cy_clock.h"
#include "core/cy_err.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REQUEST_TIMEOUT_S 30 /* an answer that involves no device */
#define CALL_DEFAULT_S 10    /* the API's default deadline of a call (docs/api.md) */
#define CALL_MARGIN_S 5      /* past the call's own deadline before we stop waiting */

/* The flags of the client commands: which take a value, and whose they are. */
typedef struct flag_def {
    const char *name;
    bool value;
    const char *cmds; /* " cmd cmd ... ": each between blanks */
} flag_def;

#define CLIENT " call get publish subscribe list device "
static const flag_def flags[] = {
    {"--url", true, CLIENT},           {"--token", true, CLIENT},
    {"--cacert", true, CLIENT},        {"--json", false, CLIENT},
    {"--timeout", true, " call get "}, {"--device", true, " subscribe "},
    {"--check", false, " config "},
};
#define NFLAGS (sizeof(flags) / sizeof(flags[0]))

/* The flag arg is (its name, without "=value"), or NULL. */
static const flag_def *flag_find(const char *arg)
{
    for (size_t i = 0; i < NFLAGS; i++) {
        size_t n = strlen(flags[i].name);
        if (!strncmp(arg, flags[i].name, n) &&
            (arg[n] == '\0' || (arg[n] == '=' && flags[i].value)))
            return &flags[i];
    }
    return NULL;
}

bool cy_cli_is_flag(const char *arg)
{
    return arg && flag_find(arg) != NULL;
}

bool cy_cli_flag_of(const char *cmd, const char *flag)
{
    const flag_def *f = flag ? flag_find(flag) : NULL;
    if (!f || !cmd) return false;
    char key[32];
    int n = snprintf(key, sizeof(key), " %s ", cmd);
    return n > 2 && (size_t)n < sizeof(key) && strstr(f->cmds, key) != NULL;
}

bool cy_cli_is_command(char *const *args, int nargs)
{
    if (nargs < 1) return false;
    const char *c = args[0];
    if (!strcmp(c, "device")) return nargs >= 2 && !strcmp(args[1], "rename");
    return !strcmp(c, "call") || !strcmp(c, "get") || !strcmp(c, "publish") ||
           !strcmp(c, "subscribe") || !strcmp(c, "list");
}

void cy_cli_usage(FILE *out)
{
    fprintf(out,
            "       cyan call DEVICE FUNCTION [ARG] [--timeout S]  call a device's function\n"
            "       cyan get DEVICE VARIABLE [--timeout S]     read a device's variable\n"
            "       cyan publish NAME [DATA]                   publish an event (events/NAME)\n"
            "       cyan subscribe [PREFIX] [--device DEVICE]  the live event stream (Ctrl-C "
            "ends it)\n"
            "       cyan list                                  the devices: name, id, online, "
            "protocol, last heard\n"
            "       cyan device rename DEVICE NEWNAME\n"
            "           DEVICE: an id or a name. These six talk to the HTTP API and take\n"
            "           [--url URL] [--token TOKEN] [--cacert FILE] [--json]; without them\n"
            "           CYAN_URL and CYAN_TOKEN, else this configuration's http_listen and\n"
            "           DATA_DIR/admin-token\n");
}

/* The synopsis of one command, for its usage error. */
static const char *synopsis(const char *cmd)
{
    static const char *const s[][2] = {
        {"call", "cyan call DEVICE FUNCTION [ARG] [--timeout S]"},
        {"get", "cyan get DEVICE VARIABLE [--timeout S]"},
        {"publish", "cyan publish NAME [DATA]"},
        {"subscribe", "cyan subscribe [PREFIX] [--device DEVICE]"},
        {"list", "cyan list"},
        {"device", "cyan device rename DEVICE NEWNAME"},
        {"config", "cyan config --check [FILE]"},
    };
    for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++)
        if (!strcmp(s[i][0], cmd)) return s[i][1];
    return "cyan help";
}

static int usage_error(const char *cmd, const char *what)
{
    fprintf(stderr, "cyan: %s; usage: %s (see `cyan help`)\n", what, synopsis(cmd));
    return 2;
}

/* The words of a command, its flags taken out. */
typedef struct words {
    const char *pos[4];
    int npos;
    const char *url, *token, *cacert, *timeout, *device;
    bool json, check;
} words;

/* args[from..nargs) into w. 0 or 2 (a usage error, said). */
static int take_words(const char *cmd, char **args, int from, int nargs, int max_pos, words *w)
{
    memset(w, 0, sizeof(*w));
    bool dashdash = false;
    for (int i = from; i < nargs; i++) {
        const char *a = args[i];
        const flag_def *f = dashdash ? NULL : flag_find(a);
        if (!dashdash && !strcmp(a, "--")) {
            dashdash = true;
            continue;
        }
        if (!f) {
            if (!dashdash && a[0] == '-' && a[1] == '-') {
                char what[160];
                snprintf(what, sizeof(what), "unknown option %.100s", a);
                return usage_error(cmd, what);
            }
            if (w->npos == max_pos) {
                char what[160];
                snprintf(what, sizeof(what), "one word too many: '%.100s'", a);
                return usage_error(cmd, what);
            }
            w->pos[w->npos++] = a;
            continue;
        }
        if (!cy_cli_flag_of(cmd, f->name)) {
            char what[160];
            snprintf(what, sizeof(what), "%s is not an option of `cyan %s`", f->name, cmd);
            return usage_error(cmd, what);
        }
        const char *v = NULL;
        if (f->value) {
            const char *eq = strchr(a, '=');
            if (eq)
                v = eq + 1;
            else if (i + 1 < nargs)
                v = args[++i];
            if (!v || !*v) {
                char what[160];
                snprintf(what, sizeof(what), "%s needs a value", f->name);
                return usage_error(cmd, what);
            }
        }
        const char **slot = !strcmp(f->name, "--url")       ? &w->url
                            : !strcmp(f->name, "--token")   ? &w->token
                            : !strcmp(f->name, "--cacert")  ? &w->cacert
                            : !strcmp(f->name, "--timeout") ? &w->timeout
                            : !strcmp(f->name, "--device")  ? &w->device
                                                            : NULL;
        if (slot && *slot) {
            char what[160];
            snprintf(what, sizeof(what), "%s given twice", f->name);
            return usage_error(cmd, what);
        }
        if (slot) *slot = v;
        if (!strcmp(f->name, "--json")) w->json = true;
        if (!strcmp(f->name, "--check")) w->check = true;
    }
    return 0;
}

/* "/v1/devices/<dev>" + rest (escaped), into b as a NUL-terminated text. */
static int device_path(cy_buf *b, const char *dev, const char *kind, const char *name)
{
    int rc = cy_buf_append(b, "/v1/devices/", 12);
    if (!rc) rc = cli_escape(b, dev);
    if (!rc && kind) rc = cy_buf_append(b, kind, strlen(kind));
    if (!rc && name) rc = cli_escape(b, name);
    if (!rc) rc = cy_buf_put_u8(b, 0);
    return rc;
}

/* The answer's body to stdout as it came (--json), ending in a newline. */
static void print_raw(const cli_answer *a)
{
    size_t n = cy_buf_size(&a->body);
    fwrite(cy_buf_head(&a->body), 1, n, stdout);
    if (!n || cy_buf_head(&a->body)[n - 1] != '\n') putchar('\n');
}

/* v's text, or def when v is no string. */
static const char *str_or(json_t *v, const char *def)
{
    const char *s = json_string_value(v);
    return s ? s : def;
}

/* A JSON value for a person: a string as it is, anything else as JSON. A
 * device chose it: one holding control characters (which a terminal would
 * obey: a title, a cleared screen) is printed as a JSON string, in ASCII. */
static void print_value(json_t *v)
{
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (s && strlen(s) == n && !cy_cli_has_control(s, n)) {
        fwrite(s, 1, n, stdout);
        putchar('\n');
        return;
    }
    char *t = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    if (t && cy_cli_has_control(t, strlen(t))) { /* a C1 character stays raw in UTF-8 */
        free(t);
        t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_ENSURE_ASCII);
    }
    printf("%s\n", t ? t : "null");
    free(t);
}

/* The body of a 2xx answer as a JSON object (NULL, said, if it is not). */
static json_t *answer_object(const cli_answer *a)
{
    json_error_t e;
    json_t *o = json_loadb((const char *)cy_buf_head(&a->body), cy_buf_size(&a->body), 0, &e);
    if (!json_is_object(o) && !json_is_array(o)) {
        fprintf(stderr, "cyan: HTTP %ld but the answer is not JSON%s%s\n", a->status, o ? "" : ": ",
                o ? "" : e.text);
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Request, then: not 2xx -> the error line, 1; 2xx -> 0 with *a kept. */
static int ask(cli *c, const char *method, const char *path, json_t *body, long timeout_s,
               cli_answer *a)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (body && !text) {
        fprintf(stderr, "cyan: out of memory\n");
        return 1;
    }
    int rc = cli_request(c, method, path, text, timeout_s, a);
    free(text);
    if (rc) return 1;
    if (a->status < 200 || a->status > 299) {
        cli_answer_error(a);
        cy_buf_fini(&a->body);
        return 1;
    }
    return 0;
}

/* A JSON string of a word from the command line, which must be UTF-8. */
static json_t *word_string(const char *what, const char *s)
{
    json_t *v = json_string(s);
    if (!v) fprintf(stderr, "cyan: %s is not UTF-8 text\n", what);
    return v;
}

static long device_timeout(const words *w, int *bad)
{
    if (!w->timeout) return 0;
    char *end;
    long s = strtol(w->timeout, &end, 10);
    if (*end || s < 1 || s > 60) {
        *bad = 1;
        return 0;
    }
    return s;
}

/* What a command prints of a 2xx answer's JSON, for a person. */
typedef void (*show_fn)(json_t *o, const words *w);

/* One request and its answer: with --json the body as it came, else what
 * show makes of it. Takes body (NULL: none). 0, or 1 (said). */
static int exchange(cli *c, const char *method, const char *path, json_t *body, long timeout_s,
                    const words *w, show_fn show)
{
    cli_answer a;
    int status = ask(c, method, path, body, timeout_s, &a);
    json_decref(body);
    if (status) return 1;
    if (c->json) {
        print_raw(&a);
    } else {
        json_t *o = answer_object(&a);
        if (o)
            show(o, w);
        else
            status = 1;
        json_decref(o);
    }
    cy_buf_fini(&a.body);
    return status;
}

static void show_return_value(json_t *o, const words *w)
{
    (void)w;
    print_value(json_object_get(o, "return_value"));
}

static void show_value(json_t *o, const words *w)
{
    (void)w;
    print_value(json_object_get(o, "value"));
}

static void show_published(json_t *o, const words *w)
{
    (void)o;
    printf("published %s\n", w->pos[0]);
}

static void show_renamed(json_t *o, const words *w)
{
    char was[80], now[80], id[40];
    snprintf(was, sizeof(was), "%.64s", str_or(json_object_get(o, "previous_name"), w->pos[0]));
    snprintf(now, sizeof(now), "%.64s", str_or(json_object_get(o, "name"), w->pos[1]));
    snprintf(id, sizeof(id), "%.32s", str_or(json_object_get(o, "id"), "?"));
    cy_cli_clean(was);
    cy_cli_clean(now);
    cy_cli_clean(id);
    printf("renamed %s to %s (%s)\n", was, now, id);
}

/* call and get: the device's answer's "return_value" or "value". */
static int cmd_device_op(cli *c, bool call, const words *w)
{
    int bad = 0;
    long t = device_timeout(w, &bad);
    if (bad) return usage_error(call ? "call" : "get", "--timeout takes 1 to 60 seconds");
    cy_buf path;
    cy_buf_init(&path);
    json_t *body = NULL;
    int status = 1;
    if (device_path(&path, w->pos[0], call ? "/functions/" : "/variables/", w->pos[1])) goto out;
    if (!call && t) {
        char q[32];
        snprintf(q, sizeof(q), "?timeout=%ld", t);
        path.len--; /* over the NUL */
        if (cy_buf_append(&path, q, strlen(q) + 1)) goto out;
    }
    if (call) {
        json_t *arg = w->npos > 2 ? word_string("ARG", w->pos[2]) : NULL;
        if (w->npos > 2 && !arg) goto out;
        body = json_object();
        if (!body) {
            json_decref(arg);
            goto out;
        }
        if (arg) json_object_set_new(body, "arg", arg);
        if (t) json_object_set_new(body, "timeout", json_integer(t));
    }
    status = exchange(c, call ? "POST" : "GET", (const char *)cy_buf_head(&path), body,
                      (t ? t : CALL_DEFAULT_S) + CALL_MARGIN_S, w,
                      call ? show_return_value : show_value);
out:
    cy_buf_fini(&path);
    return status;
}

static int cmd_publish(cli *c, const words *w)
{
    json_t *body = json_object(), *name = word_string("NAME", w->pos[0]);
    json_t *data = w->npos > 1 ? word_string("DATA", w->pos[1]) : NULL;
    if (!body || !name || (w->npos > 1 && !data)) {
        json_decref(name);
        json_decref(data);
        json_decref(body);
        return 1;
    }
    json_object_set_new(body, "name", name);
    if (data) json_object_set_new(body, "data", data);
    return exchange(c, "POST", "/v1/events", body, REQUEST_TIMEOUT_S, w, show_published);
}

static int cmd_rename(cli *c, const words *w)
{
    cy_buf path;
    cy_buf_init(&path);
    json_t *body = json_object(), *name = word_string("NEWNAME", w->pos[1]);
    int status = 1;
    if (!body || !name || device_path(&path, w->pos[0], NULL, NULL)) {
        json_decref(name);
        json_decref(body);
    } else {
        json_object_set_new(body, "name", name);
        status = exchange(c, "PATCH", (const char *)cy_buf_head(&path), body, REQUEST_TIMEOUT_S, w,
                          show_renamed);
    }
    cy_buf_fini(&path);
    return status;
}

/* A cell of the device table: a time as an age, "-" when null. */
static void cell_age(json_t *v, int64_t now, char *out, size_t cap)
{
    int64_t ms;
    if (!json_is_string(v))
        snprintf(out, cap, "-");
    else if (cy_cli_time_ms(json_string_value(v), &ms))
        snprintf(out, cap, "%.40s", json_string_value(v));
    else
        cy_cli_age(now - ms, out, cap);
}

enum { COL_NAME, COL_ID, COL_ONLINE, COL_PROTO, COL_HEARD, COL_TRIP, NCOLS };

static void row_cells(json_t *d, int64_t now, char cells[NCOLS][80])
{
    json_t *on = json_object_get(d, "online");
    snprintf(cells[COL_NAME], 80, "%.64s", str_or(json_object_get(d, "name"), "?"));
    snprintf(cells[COL_ID], 80, "%.64s", str_or(json_object_get(d, "id"), "?"));
    snprintf(cells[COL_ONLINE], 80, "%s",
             json_is_true(on)    ? "yes"
             : json_is_false(on) ? "no"
                                 : "?");
    snprintf(cells[COL_PROTO], 80, "%.20s", str_or(json_object_get(d, "protocol"), "-"));
    cell_age(json_object_get(d, "last_heard"), now, cells[COL_HEARD], 80);
    cell_age(json_object_get(d, "last_round_trip"), now, cells[COL_TRIP], 80);
    /* Names and ids come from the API: nothing in them may steer a terminal. */
    for (int k = 0; k < NCOLS; k++) cy_cli_clean(cells[k]);
}

static int cmd_list(cli *c)
{
    cli_answer a;
    if (ask(c, "GET", "/v1/devices", NULL, REQUEST_TIMEOUT_S, &a)) return 1;
    if (c->json) {
        print_raw(&a);
        cy_buf_fini(&a.body);
        return 0;
    }
    json_t *arr = answer_object(&a);
    cy_buf_fini(&a.body);
    if (!arr) return 1;
    if (!json_is_array(arr)) {
        fprintf(stderr, "cyan: the device list is not a JSON array\n");
        json_decref(arr);
        return 1;
    }
    static const char *const head[NCOLS] = {"NAME",     "ID",         "ONLINE",
                                            "PROTOCOL", "LAST HEARD", "LAST ROUND TRIP"};
    int width[NCOLS];
    for (int k = 0; k < NCOLS; k++)
        width[k] = (int)strlen(head[k]);
    int64_t now = cy_wall_ms();
    size_t i;
    json_t *d;
    char cells[NCOLS][80];
    json_array_foreach(arr, i, d)
    {
        row_cells(d, now, cells);
        for (int k = 0; k < NCOLS; k++)
            if ((int)strlen(cells[k]) > width[k]) width[k] = (int)strlen(cells[k]);
    }
    for (int k = 0; k < NCOLS; k++)
        if (k < NCOLS - 1)
            printf("%-*s  ", width[k], head[k]);
        else
            printf("%s\n", head[k]);
    json_array_foreach(arr, i, d)
    {
        row_cells(d, now, cells);
        for (int k = 0; k < NCOLS; k++)
            if (k < NCOLS - 1)
                printf("%-*s  ", width[k], cells[k]);
            else
                printf("%s\n", cells[k]);
    }
    if (json_array_size(arr) == 0)
        fprintf(stderr, "cyan: no devices yet: add one with `cyan device add NAME`\n");
    json_decref(arr);
    return 0;
}

int cy_cli_run(const cy_config *cfg, char **args, int nargs)
{
    if (!cy_cli_is_command(args, nargs)) return usage_error("help", "not a client command");
    const char *cmd = args[0];
    bool rename = !strcmp(cmd, "device");
    int min = 0, max = 0;
    if (!strcmp(cmd, "call"))
        min = 2, max = 3;
    else if (!strcmp(cmd, "get") || rename)
        min = max = 2;
    else if (!strcmp(cmd, "publish"))
        min = 1, max = 2;
    else if (!strcmp(cmd, "subscribe"))
        max = 1;
    words w;
    int rc = take_words(cmd, args, rename ? 2 : 1, nargs, 4, &w);
    if (rc) return rc;
    if (w.npos < min || w.npos > max)
        return usage_error(cmd, w.npos < min ? "missing words" : "too many words");
    for (int i = 0; i < w.npos; i++)
        if (!w.pos[i][0] && !(i == 2 && !strcmp(cmd, "call")) &&
            !(i == 1 && !strcmp(cmd, "publish")))
            return usage_error(cmd, "an empty word");
    cli c;
    memset(&c, 0, sizeof(c));
    c.json = w.json;
    c.device = w.device;
    if ((rc = cli_target(&c, cfg, w.url, w.token, w.cacert))) return rc;
    if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
        fprintf(stderr, "cyan: cannot start libcurl\n");
        return 1;
    }
    if (!strcmp(cmd, "call") || !strcmp(cmd, "get"))
        rc = cmd_device_op(&c, !strcmp(cmd, "call"), &w);
    else if (!strcmp(cmd, "publish"))
        rc = cmd_publish(&c, &w);
    else if (!strcmp(cmd, "subscribe"))
        rc = cli_subscribe(&c, w.npos ? w.pos[0] : NULL);
    else if (!strcmp(cmd, "list"))
        rc = cmd_list(&c);
    else
        rc = cmd_rename(&c, &w);
    curl_global_cleanup();
    memset(c.token, 0, sizeof(c.token));
    if (fflush(stdout) != 0 && !rc) {
        fprintf(stderr, "cyan: cannot write the output\n");
        rc = 1;
    }
    return rc;
}
