/* request: one CLI client of one API (cli_int.h): where the API is and
 * which token to send, one blocking libcurl request at a time, and the
 * one line that says why a request failed.
 *
 * Blocking is right here: a command makes one or two requests and exits.
 * Every wait is bounded (connect, answer, silence), so a node that is
 * down, a black-holed address or a server that never answers ends in a
 * line on stderr, never a hang. An answer is kept up to
 * CY_CLI_MAX_ANSWER bytes; a larger one (a server that is not cyan, or a
 * huge fleet behind a too small limit) is refused, not read forever.
 */
#include "cli/cli_int.h"

#include "core/cy_err.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define CONNECT_TIMEOUT_S 5
#define ERROR_BODY_SHOWN 200 /* bytes of a body that is not the API's JSON, in an error */

int cy_cli_need_data_dir(const cy_config *cfg)
{
    struct stat st;
    if (stat(cfg->data_dir, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    if (errno == ENOENT || errno == ENOTDIR)
        fprintf(stderr,
                "cyan: data folder '%s' does not exist (data_dir): give the right one with "
                "--data_dir=DIR or -c FILE (`cyan serve` makes a new one)\n",
                cfg->data_dir);
    else if (errno)
        fprintf(stderr, "cyan: data folder '%s': %s\n", cfg->data_dir, strerror(errno));
    else
        fprintf(stderr, "cyan: data folder '%s' is not a folder\n", cfg->data_dir);
    return 1;
}

/* The first line of DATA_DIR/admin-token into out. 0, or 1 (said). */
static int admin_token(const cy_config *cfg, char *out, size_t cap)
{
    if (cy_cli_need_data_dir(cfg)) return 1;
    char path[600];
    snprintf(path, sizeof(path), "%s/admin-token", cfg->data_dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr,
                "cyan: no token: %s: %s (the first `cyan serve` of a data folder writes it): "
                "give --token or set CYAN_TOKEN (`cyan token create` makes one)\n",
                path, strerror(errno));
        return 1;
    }
    char line[600] = "";
    bool ok = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    size_t n = strcspn(line, "\r\n");
    line[n] = '\0';
    if (!ok || n == 0 || n >= cap) {
        fprintf(stderr, "cyan: no token in %s: give --token or set CYAN_TOKEN\n", path);
        return 1;
    }
    memcpy(out, line, n + 1);
    return 0;
}

/* A token goes into a header: printable ASCII without blanks only. */
static bool token_ok(const char *t)
{
    if (!*t) return false;
    for (; *t; t++)
        if (*t <= ' ' || *t > '~') return false;
    return true;
}

int cli_target(cli *c, const cy_config *cfg, const char *url_flag, const char *token_flag,
               const char *cacert_flag)
{
    c->cfg = cfg;
    bool https = cfg->tls_cert[0] && cfg->http_tls;
    char local[sizeof(c->url)] = "";
    int lrc = cy_cli_listen_url(cfg->http_listen, https, local, sizeof(local));
    const char *env_url = getenv("CYAN_URL"), *env_token = getenv("CYAN_TOKEN");
    const char *given = url_flag ? url_flag : env_url && *env_url ? env_url : NULL;
    const char *from = url_flag ? "--url" : "CYAN_URL";
    if (given) {
        const char *why = "too long";
        if (cy_cli_base_url(given, c->url, sizeof(c->url), &why)) {
            /* A URL with a user:password@ is not echoed: terminals and CI logs keep it. */
            if (strchr(given, '@'))
                fprintf(stderr, "cyan: bad %s (not shown: it holds an '@'): %s\n", from, why);
            else
                fprintf(stderr, "cyan: bad %s '%.200s': %s\n", from, given, why);
            return 2;
        }
    } else if (lrc == CY_ENOENT) {
        fprintf(stderr, "cyan: the configuration serves no API (http_listen is empty): give "
                        "--url or set CYAN_URL\n");
        return 1;
    } else if (lrc) {
        fprintf(stderr, "cyan: http_listen '%s' is no address to connect to: give --url\n",
                cfg->http_listen);
        return 1;
    } else {
        snprintf(c->url, sizeof(c->url), "%s", local);
    }
    bool is_local = !lrc && cy_cli_same_node(c->url, local);
    const char *tok = token_flag ? token_flag : env_token && *env_token ? env_token : NULL;
    if (tok) {
        if (strlen(tok) >= sizeof(c->token) || !token_ok(tok)) {
            fprintf(stderr, "cyan: bad %s: a token is printable text without blanks\n",
                    token_flag ? "--token" : "CYAN_TOKEN");
            return 2;
        }
        snprintf(c->token, sizeof(c->token), "%s", tok);
    } else if (!is_local) {
        /* The admin token of this data folder is never sent elsewhere. */
        fprintf(stderr,
                "cyan: no token for %s: give --token or set CYAN_TOKEN (the data folder's "
                "admin token is sent only to its own node, %s)\n",
                c->url, lrc ? "which serves no API" : local);
        return 1;
    } else if (admin_token(cfg, c->token, sizeof(c->token))) {
        return 1;
    }
    if (cacert_flag) {
        if (strlen(cacert_flag) >= sizeof(c->cacert)) {
            fprintf(stderr, "cyan: --cacert: path too long\n");
            return 2;
        }
        snprintf(c->cacert, sizeof(c->cacert), "%s", cacert_flag);
    } else if (is_local && https && !strncasecmp(c->url, "https:", 6)) {
        /* Our own node, reached by address: its certificate is the one to
         * trust (curl takes a certificate of the file as an anchor), while
         * the name in it need not be the address. */
        snprintf(c->cacert, sizeof(c->cacert), "%s", cfg->tls_cert);
        c->skip_host = true;
    }
    return 0;
}

void cli_easy_setup(cli *c, CURL *e, const char *url, struct curl_slist **headers)
{
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->err);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, (long)CONNECT_TIMEOUT_S);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    /* A proxy from the environment, but never for this machine. */
    curl_easy_setopt(e, CURLOPT_NOPROXY, "localhost,127.0.0.1,::1");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "cyan-cli");
    if (c->cacert[0]) curl_easy_setopt(e, CURLOPT_CAINFO, c->cacert);
    if (c->skip_host) curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    char auth[600];
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", c->token);
    *headers = curl_slist_append(*headers, auth);
    *headers = curl_slist_append(*headers, "Expect:");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, *headers);
    c->err[0] = '\0';
}

typedef struct sink {
    cy_buf *b;
    bool over;
} sink;

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    sink *s = ud;
    size_t len = size * n;
    if (cy_buf_size(s->b) + len > CY_CLI_MAX_ANSWER) {
        s->over = true;
        return 0; /* curl ends the transfer: CURLE_WRITE_ERROR */
    }
    return cy_buf_append(s->b, p, len) ? 0 : len;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    cli_answer *a = ud;
    size_t len = size * n;
    if (len > 12 && !strncasecmp(p, "Retry-After:", 12)) {
        const char *v = p + 12;
        while (v < p + len && *v == ' ')
            v++;
        size_t vl = (size_t)(p + len - v);
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        if (vl >= sizeof(a->retry_after)) vl = sizeof(a->retry_after) - 1;
        memcpy(a->retry_after, v, vl);
        a->retry_after[vl] = '\0';
    }
    return len;
}

void cli_transfer_error(const cli *c, const char *url, CURLcode rc, long timeout_s)
{
    const char *what = c->err[0] ? c->err : curl_easy_strerror(rc);
    const char *hint = "";
    bool https = !strncasecmp(url, "https:", 6);
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
        hint = " (is cyan running there? is the address right?)";
        break;
    case CURLE_OPERATION_TIMEDOUT:
        break;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
        if (!https) hint = " (does the API speak HTTPS? try an https:// URL)";
        break;
    case CURLE_SSL_CONNECT_ERROR:
        hint = " (does the API speak plain HTTP? try an http:// URL)";
        break;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
        hint = " (give the CA that signed the API's certificate with --cacert FILE)";
        break;
    default:
        break;
    }
    /* Just the path of the URL in the text: it never holds the token. */
    if (rc == CURLE_OPERATION_TIMEDOUT && timeout_s > 0)
        fprintf(stderr, "cyan: no answer from %s within %ld s: %s\n", url, timeout_s, what);
    else
        fprintf(stderr, "cyan: %s: %s%s\n", url, what, hint);
}

int cli_request(cli *c, const char *method, const char *path, const char *body, long timeout_s,
                cli_answer *a)
{
    memset(a, 0, sizeof(*a));
    cy_buf_init(&a->body);
    char url[2048];
    if (snprintf(url, sizeof(url), "%s%s", c->url, path) >= (int)sizeof(url)) {
        fprintf(stderr, "cyan: the request's URL is too long\n");
        return 1;
    }
    CURL *e = curl_easy_init();
    if (!e) {
        fprintf(stderr, "cyan: cannot start libcurl\n");
        return 1;
    }
    struct curl_slist *h = NULL;
    if (body) h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Accept: application/json");
    cli_easy_setup(c, e, url, &h);
    sink s = {&a->body, false};
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    } else if (!strcmp(method, "GET")) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    }
    curl_easy_setopt(e, CURLOPT_TIMEOUT, timeout_s);
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)CY_CLI_MAX_ANSWER);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, a);
    CURLcode rc = curl_easy_perform(e);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &a->status);
    int status = 0;
    if (s.over || rc == CURLE_FILESIZE_EXCEEDED) {
        fprintf(stderr, "cyan: %s: the answer is larger than %u MiB: not read\n", url,
                CY_CLI_MAX_ANSWER >> 20);
        status = 1;
    } else if (rc != CURLE_OK) {
        cli_transfer_error(c, url, rc, timeout_s);
        status = 1;
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    if (status) cy_buf_fini(&a->body);
    return status;
}

/* Text of the API's for a line on a terminal: control characters become
 * '?', so that an answer cannot move the cursor or hide itself. */
/* The server's text for a terminal: control characters (C1 too) as '?'. */
static void put_clean(FILE *f, const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = cy_cli_control_at(s + i, n - i);
        fputc(k ? '?' : s[i], f);
        i += k ? k : 1;
    }
}

void cli_answer_error(const cli_answer *a)
{
    const char *text = (const char *)cy_buf_head(&a->body);
    size_t n = cy_buf_size(&a->body);
    json_t *o = n ? json_loadb(text, n, 0, NULL) : NULL;
    const char *code = json_string_value(json_object_get(o, "error"));
    const char *msg = json_string_value(json_object_get(o, "message"));
    fprintf(stderr, "cyan: HTTP %ld", a->status);
    if (code) {
        fputc(' ', stderr);
        put_clean(stderr, code, strlen(code));
    }
    if (msg) {
        fputs(": ", stderr);
        put_clean(stderr, msg, strlen(msg));
    } else if (!code && n) {
        fputs(": ", stderr);
        put_clean(stderr, text, n < ERROR_BODY_SHOWN ? n : ERROR_BODY_SHOWN);
        if (n > ERROR_BODY_SHOWN) fputs("...", stderr);
    }
    if (a->retry_after[0]) {
        fputs(" (retry after ", stderr);
        put_clean(stderr, a->retry_after, strlen(a->retry_after));
        fputs(" s)", stderr);
    }
    fputc('\n', stderr);
    json_decref(o);
}

int cli_escape(cy_buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        int rc;
        if (isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~') {
            rc = cy_buf_put_u8(b, ch);
        } else {
            char enc[3] = {'%', hex[ch >> 4], hex[ch & 15]};
            rc = cy_buf_append(b, enc, 3);
        }
        if (rc) return rc;
    }
    return 0;
}
