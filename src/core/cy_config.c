/* cy_config: the settings table and its parsers; see cy_config.h.
 * To add a setting: a field in cy_config, a row here, nothing else. */
#include "core/cy_config.h"

#include "core/cy_alloc.h"
#include "core/cy_buf.h"
#include "core/cy_err.h"
#include "core/cy_limit.h"
#include "core/cy_log.h"
#include "core/cy_str.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum { T_STR, T_BOOL, T_U32 } kind;

typedef struct setting {
    const char *name;
    kind type;
    size_t offset;
    size_t size; /* T_STR: array size */
    const char *def;
    uint32_t min, max; /* T_U32 bounds */
    const char *doc;
} setting;

#define STR(f, d, doc) {#f, T_STR, offsetof(cy_config, f), sizeof(((cy_config *)0)->f), d, 0, 0, doc}
#define BOOL(f, d, doc) {#f, T_BOOL, offsetof(cy_config, f), 0, d, 0, 1, doc}
#define U32(f, d, lo, hi, doc) {#f, T_U32, offsetof(cy_config, f), 0, d, lo, hi, doc}

static const setting table[] = {
    STR(mqtt_listen, "127.0.0.1:1883",
        "address:port of the MQTT listener (plain TCP); the default takes connections from this "
        "machine only: devices elsewhere use mqtts_listen, or set 0.0.0.0:1883"),
    STR(data_dir, "data", "folder for registry.db (devices) and shard-N.db (sessions, queues, retained)"),
    BOOL(allow_anonymous, "false", "accept MQTT connections without device credentials (development only)"),
    STR(log_level, "info", "least level logged: debug, info, warn or error"),
    U32(max_packet_size, "1048576", 64, 268435460u,
        "largest MQTT packet accepted, bytes; larger ones disconnect the client (MQTT 5: 0x95)"),
    U32(max_topic_length, "512", 1, 65535, "longest topic name or filter accepted, bytes"),
    U32(max_inflight, "32", 1, 65535,
        "QoS 1/2 messages in flight per client, each way (MQTT 5 Receive Maximum)"),
    U32(max_queued, "1000", 1, 10000000,
        "messages queued per session while offline or beyond max_inflight; more are dropped"),
    U32(max_subscriptions, "100", 1, 1000000, "subscriptions per session"),
    U32(max_retained, "100000", 0, 0xFFFFFFFFu,
        "retained messages on the node (every shard holds a copy of each); 0 = no limit"),
    U32(max_retained_bytes, "67108864", 0, 0xFFFFFFFFu,
        "bytes of retained messages (topic + payload + properties) on the node, held in memory "
        "and on disk by every shard; 0 = no limit"),
    U32(max_retained_per_client, "100", 0, 0xFFFFFFFFu,
        "retained messages one client (device) may have set; 0 = no limit"),
    U32(max_retained_bytes_per_client, "4194304", 0, 0xFFFFFFFFu,
        "bytes of retained messages one client (device) may have set; 0 = no limit"),
    U32(max_connections, "16384", 1, 10000000, "simultaneous client connections"),
    U32(connect_timeout, "10", 1, 3600, "seconds a new socket has to send CONNECT"),
    U32(max_connect_size, "8192", 64, 268435460u,
        "largest CONNECT accepted, bytes (credentials, will, properties); a socket that has "
        "not logged in may send no more"),
    U32(preauth_memory, "16777216", 65536, 0xFFFFFFFFu,
        "bytes each shard holds, all together, for sockets that have sent part of a CONNECT; "
        "beyond it such sockets are closed"),
    U32(max_output, "4194304", 4096, 0xFFFFFFFFu,
        "bytes of acknowledgements and messages waiting to be written to one client; past it "
        "cyan stops reading that client until half of it is written"),
    U32(max_output_stall, "60", 1, 86400,
        "seconds a client may stay over max_output (not reading what it is sent) before it "
        "is disconnected"),
    U32(max_outbox_bytes, "67108864", 1024, 0xFFFFFFFFu,
        "bytes of acknowledged QoS 1/2 messages and retained updates each shard keeps for one "
        "peer shard that has not confirmed them (hung or restarting); past it, publishes that "
        "need that shard are refused (MQTT 5 0x97, 3.1.1 disconnect), never dropped after the "
        "acknowledgement"),
    U32(max_keepalive, "3600", 1, 65535,
        "largest keep-alive granted, seconds; MQTT 5 clients asking more (or 0) get this"),
    U32(max_session_expiry, "0", 0, 0xFFFFFFFFu,
        "cap on a persistent session's expiry interval, seconds; 0 = no cap"),
    U32(topic_alias_max, "32", 0, 65535, "topic aliases a MQTT 5 client may define"),
    U32(sys_interval, "10", 0, 86400,
        "seconds between updates of the retained $SYS/cyan/<counter> topics; 0 = off"),
    STR(store_sync, "normal",
        "normal: a commit survives the process being killed; full: also power loss (fsync)"),
    U32(shards, "4", 1, 64,
        "shard processes; a device belongs to one, so a failed shard touches 1/shards of them"),
    U32(watchdog_timeout, "2000", 100, 600000,
        "milliseconds a shard may go without a heartbeat, or with work queued and no progress, "
        "before the supervisor kills and replaces it"),
    BOOL(isolate_devices, "true",
         "devices may use only their own topics (devices/<id>/...) and the shared events/...; "
         "false makes cyan a plain MQTT broker"),
    STR(http_listen, "127.0.0.1:8080",
        "address:port of the HTTP API (plain HTTP; the default: this machine only); empty = no "
        "API"),
    U32(http_max_body, "65536", 256, 16777216, "largest HTTP request body, bytes (413 beyond)"),
    U32(http_max_connections, "1024", 1, 1000000, "simultaneous HTTP connections per shard"),
    U32(http_idle_timeout, "60", 1, 3600, "seconds an idle HTTP connection is kept open"),
    U32(http_request_timeout, "10", 1, 3600,
        "seconds from the first line of an HTTP request to the end of its body; slower "
        "requests are cut off"),
    U32(http_max_per_address, "256", 0, 1000000,
        "HTTP connections one client address may hold open on each shard (closed at accept "
        "beyond); 0 = no limit"),
    U32(sse_heartbeat, "15", 1, 3600, "seconds between heartbeat comments on event streams"),
    U32(event_buffer, "1000", 1, 1000000,
        "events each shard keeps so that a stream can resume (Last-Event-ID)"),
    U32(sse_max_per_token, "100", 1, 1000000,
        "event streams one API token may hold open on each shard (429 beyond)"),
    U32(sse_max_per_address, "100", 1, 1000000,
        "event streams one client address may hold open on each shard (429 beyond)"),
    STR(cors_origins, "",
        "origins (scheme://host[:port], comma-separated) whose web pages may call the HTTP API "
        "from a browser (CORS), or * for any; empty = no CORS headers"),
    BOOL(monitor, "true",
         "run the monitor process: /metrics, alerts, canaries and the status page, served on "
         "ops_listen by a process no shard's hang can block"),
    STR(ops_listen, "127.0.0.1:8081",
        "address:port of the operations listener (/metrics, /status, /api/v2/*.json, "
        "/v1/alerts, /v1/incidents); empty = none (the monitor still alerts and runs canaries)"),
    BOOL(ops_public, "true",
         "/metrics, /status and /api/v2/*.json readable without an API token; false requires "
         "one (alerts and incidents always do)"),
    U32(canary_interval, "1000", 100, 60000,
        "milliseconds between rounds of each shard's canary (a QoS 1 event to itself and a "
        "function call through the API)"),
    U32(canary_timeout, "3000", 0, 600000,
        "milliseconds a canary step may take; a shard whose canary has not succeeded for this "
        "long is alerted on and replaced; 0 = no canaries"),
    STR(alert_rules, "",
        "file of alert rules replacing or adding to the built-in ones (docs/operations.md); "
        "empty = the built-in rules"),
    STR(alert_webhooks, "",
        "comma-separated URLs that receive alert notifications as Alertmanager webhook JSON "
        "(version 4); empty = alerts go to the log, /v1/alerts and the status page only"),
    U32(event_retention, "3600", 0, 31536000,
        "seconds an event stays in its shard's event log once every webhook has passed it, "
        "unless event_log_keep newer events are there (how far back an event stream can "
        "resume with Last-Event-ID, across restarts too)"),
    U32(event_log_keep, "100000", 1, 0xFFFFFFFFu,
        "events each shard's log keeps at most once every webhook has passed them"),
    U32(webhook_timeout, "20", 1, 600, "seconds a webhook request may take before it is retried"),
    U32(webhook_max_age, "86400", 1, 2592000,
        "seconds an event is retried for a webhook before it goes to the dead-letter list"),
    U32(webhook_retry_base, "5000", 10, 3600000,
        "milliseconds before a failed webhook request is first retried; the next waits grow "
        "from it (x60, x360, x1440, x3600, then x7200: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h)"),
    U32(webhook_concurrency, "16", 1, 1024,
        "webhook requests in flight at once for one webhook, on each shard"),
    U32(webhook_max, "100", 0, 100000, "webhooks a node may have"),
    BOOL(webhook_allow_private, "false",
         "webhooks may call loopback, private (RFC 1918, fc00::/7) and link-local addresses; "
         "false refuses them (a webhook URL is a way into your network)"),
    STR(coap_listen, "127.0.0.1:5683",
        "address:port of plain CoAP over UDP (development: see coap_insecure); empty = off"),
    STR(coaps_listen, "0.0.0.0:5684",
        "address:port of CoAP over DTLS 1.2 (pre-shared key per device); empty = off"),
    BOOL(coap_insecure, "false",
         "take plain CoAP requests, whose device is named (?id=) and not authenticated "
         "(development only; allow_anonymous does too); false answers them 4.01"),
    U32(coap_idle_timeout, "180", 5, 86400,
        "seconds a CoAP device stays online without a datagram from it (its address is "
        "fresh: the cloud sends it calls and messages); cellular NAT bindings last 30-180 s"),
    U32(coap_session_expiry, "86400", 0, 0xFFFFFFFFu,
        "seconds a CoAP device's session (subscriptions, queued QoS 1 messages) is kept "
        "after it goes offline; 0 = ended at once"),
    U32(coap_max_message, "1280", 64, 65000,
        "largest CoAP message taken or sent, bytes; a larger request gets 4.13"),
    U32(coaps_max_peers, "10000", 1, 10000000,
        "DTLS sessions, handshakes included, each shard holds at most (about 35 KB each)"),
    U32(coaps_handshake_rate, "1000", 1, 1000000,
        "new DTLS handshakes each shard starts per second at most (after the cookie "
        "exchange); more are dropped and the device retries"),
    BOOL(http_tls, "true", "with tls_cert set, the HTTP API on http_listen speaks HTTPS"),
    BOOL(ops_tls, "true",
         "with tls_cert set, the operations listener on ops_listen speaks HTTPS"),
    STR(acl_file, "",
        "file of access rules in Mosquitto's acl_file format (topic/user/pattern lines), "
        "applied on top of isolate_devices to what clients publish, subscribe and receive; "
        "once set, what it does not grant is refused; empty = no ACL, everything allowed; "
        "re-read on SIGHUP (docs/operations.md, \"Access control\")"),
    /* Limits against abuse (docs/operations.md), counted for the whole node. */
    U32(auth_fail_burst, "10", 0, 1000000,
        "failed logins (MQTT, API token, DTLS key) from one address, or for one device, within "
        "auth_fail_window before further attempts are answered only after auth_fail_delay; "
        "0 = never"),
    U32(auth_fail_window, "60", 1, 86400,
        "seconds over which failed logins are counted, from the first of them"),
    U32(auth_fail_lockout_after, "20", 0, 1000000,
        "failed logins within auth_fail_window after which an address (or a device, for the "
        "addresses that failed) is refused outright, even with the right secret, for "
        "auth_lockout; 0 = never"),
    U32(auth_lockout, "1800", 1, 604800, "seconds a lockout lasts"),
    U32(auth_fail_delay, "2000", 0, 60000,
        "milliseconds a login attempt is held before it is checked once its address or device "
        "has failed auth_fail_burst times; 0 = not held"),
    U32(max_connect_rate_per_address, "100", 0, 1000000,
        "new MQTT and HTTP connections per second from one address (the node's accepts "
        "together); more are closed at accept; 0 = no limit"),
    U32(connect_burst_per_address, "200", 1, 1000000,
        "connections one address may open at once within max_connect_rate_per_address"),
    STR(limits_exempt, "127.0.0.0/8, ::1",
        "addresses (address/prefix, comma-separated) that no per-address limit applies to: "
        "not max_connect_rate_per_address, not the lockout of an address; empty = none"),
    U32(max_publish_rate, "0", 0, 10000000,
        "publishes per second one connection (a CoAP device) may make, bursts of one second's "
        "worth; over it MQTT 5 QoS 1/2 get 0x97, QoS 0 is dropped, 3.1.1 is slowed (not "
        "read), CoAP gets 4.29; 0 = no limit"),
    U32(max_publish_bytes_rate, "0", 0, 0xFFFFFFFFu,
        "bytes (topic and payload) per second one connection (a CoAP device) may publish, as "
        "max_publish_rate; 0 = no limit"),
    STR(mqtts_listen, "0.0.0.0:8883",
        "address:port of MQTT over TLS, served when tls_cert and tls_key are set; empty = off"),
    STR(tls_cert, "",
        "PEM file: the server's certificate chain, leaf first, for mqtts_listen and for HTTPS "
        "on http_listen and ops_listen (http_tls, ops_tls); empty = no TLS"),
    STR(tls_key, "", "PEM file: the private key of tls_cert (unencrypted; keep it mode 0600)"),
    STR(tls_ca, "",
        "PEM file: CAs that sign device certificates; set, a device may log in with a "
        "certificate naming its id instead of its secret; empty = no client certificates"),
    STR(tls_ciphers, "",
        "OpenSSL cipher list for TLS 1.2; empty = ECDHE with AES-GCM or ChaCha20-Poly1305 "
        "(TLS 1.3 suites are OpenSSL's, all AEAD)"),
    STR(tls_min_version, "1.2", "oldest TLS version taken: 1.2 or 1.3"),
    /* Logs (docs/operations.md, "Logs"). */
    STR(log_format, "text",
        "text: one line per event (time, level, process, client, message); json: one JSON "
        "object per line (time, level, process, shard, source, client, message) for log "
        "shippers"),
    U32(log_summary_interval, "60", 0, 86400,
        "seconds between each shard's info line summing up the MQTT connections opened, closed "
        "and refused, by protocol (written only when there were some; each connection's own "
        "lines are at debug); 0 = no summary"),

    /* Presence: online/offline events, last heard across restarts (docs/operations.md). */
    U32(presence_event_rate, "500", 0, 1000000,
        "status events (cyan/status: a device online or offline) each shard logs per second at "
        "most; past it they wait in a queue, each with the time of its change; 0 = no status "
        "events"),
    U32(presence_flap_interval, "10", 0, 86400,
        "seconds between one device's status events once it has made 4 in a row quickly; the "
        "changes meanwhile are folded into one event with its latest state (\"coalesced\"); "
        "0 = no limit per device"),
    U32(presence_flush_interval, "30", 1, 3600,
        "seconds between writes of devices' last heard and last round trip to their shard's "
        "file (a crash loses at most this much of them; a clean stop writes them all)"),

    /* The loop (docs/operations.md, "Latency and busy polling"). */
    U32(busy_poll_us, "0", 0, 10000,
        "microseconds a shard keeps polling its sockets, without sleeping, after a loop pass "
        "that did work: input arriving meanwhile is read without a wake-up from idle (lower "
        "latency at moderate rates, most on virtual machines) at the cost of the CPU spent "
        "spinning, up to a whole core while traffic flows; give each shard a core of its own; "
        "0 = off"),
};

#define NSETTINGS (sizeof(table) / sizeof(table[0]))

static int fail(cy_config_error *err, const char *fmt, const char *a, const char *b)
{
    if (err) snprintf(err->msg, sizeof(err->msg), fmt, a, b);
    return CY_ECONFIG;
}

static int apply(cy_config *c, const setting *s, const char *value, cy_config_error *err)
{
    char *field = (char *)c + s->offset;
    switch (s->type) {
    case T_STR:
        if (strlen(value) >= s->size) return fail(err, "%s: value too long: %s", s->name, value);
        strcpy(field, value);
        break;
    case T_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "yes") || !strcmp(value, "1"))
            *(bool *)field = true;
        else if (!strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "0"))
            *(bool *)field = false;
        else
            return fail(err, "%s: expected true or false, got '%s'", s->name, value);
        break;
    case T_U32: {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(value, &end, 10);
        if (errno || end == value || *end || value[0] == '-' || v < s->min || v > s->max) {
            char range[64];
            snprintf(range, sizeof(range), "%s (allowed %u..%u)", value, s->min, s->max);
            return fail(err, "%s: bad number %s", s->name, range);
        }
        *(uint32_t *)field = (uint32_t)v;
        break;
    }
    }
    return 0;
}

void cy_config_defaults(cy_config *c)
{
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < NSETTINGS; i++) apply(c, &table[i], table[i].def, NULL);
}

/* One origin as a browser sends it: http or https, "://", a host (letters,
 * digits, '-', '.', or an IPv6 literal in brackets), an optional ":port",
 * and nothing after: a trailing '/' or a path would never match. */
static bool origin_valid(const char *s, size_t n)
{
    size_t i;
    if (n > 8 && !strncasecmp(s, "https://", 8))
        i = 8;
    else if (n > 7 && !strncasecmp(s, "http://", 7))
        i = 7;
    else
        return false;
    size_t host = i;
    if (s[i] == '[') {
        while (i < n && s[i] != ']') {
            if (!isxdigit((unsigned char)s[i]) && s[i] != ':' && s[i] != '[' && s[i] != '.')
                return false;
            i++;
        }
        if (i == n) return false;
        i++;
    } else {
        while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '-' || s[i] == '.')) i++;
    }
    if (i == host) return false;
    if (i < n && s[i] == ':') {
        size_t d = ++i;
        while (i < n && isdigit((unsigned char)s[i])) i++;
        if (i == d || i - d > 5) return false;
    }
    return i == n;
}

/* cors_origins: empty, "*" alone, or origins separated by commas. */
static bool origins_valid(const char *v)
{
    const char *p = v;
    while (*p == ' ' || *p == '\t') p++;
    if (!*p) return true;
    if (p[0] == '*') {
        p++;
        while (*p == ' ' || *p == '\t') p++;
        return !*p;
    }
    const char *start;
    size_t len;
    while ((start = cy_list_next(&p, &len)))
        if (!origin_valid(start, len)) return false;
    return true;
}

int cy_config_set(cy_config *c, const char *name, const char *value, cy_config_error *err)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if (!strcmp(table[i].name, name)) {
            /* Checked before it is applied: a refused value changes nothing. */
            if (!strcmp(name, "cors_origins") && !origins_valid(value))
                return fail(err,
                            "%s: expected *, or origins like https://app.example.com[:port] "
                            "separated by commas (no path), got '%s'",
                            name, value);
            int rc = apply(c, &table[i], value, err);
            if (rc) return rc;
            if (!strcmp(name, "store_sync") && strcmp(value, "normal") && strcmp(value, "full"))
                return fail(err, "%s: expected normal or full, got '%s'", name, value);
            char bad[128];
            if (!strcmp(name, "limits_exempt") && cy_limit_exempt_check(value, bad, sizeof(bad)))
                return fail(err, "%s: not an address or address/prefix: %s", name, bad);
            if (!strcmp(name, "tls_min_version") && strcmp(value, "1.2") && strcmp(value, "1.3"))
                return fail(err, "%s: expected 1.2 or 1.3, got '%s'", name, value);
            if (!strcmp(name, "log_format") && strcmp(value, "text") && strcmp(value, "json"))
                return fail(err, "%s: expected text or json, got '%s'", name, value);
            return 0;
        }
    return fail(err, "unknown setting '%s'%s", name, "");
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    return s;
}

/* One line (NUL-terminated, without its '\n'): a comment, a blank, or
 * "name = value". */
static int load_line(cy_config *c, char *line, size_t len, cy_config_error *e)
{
    if (memchr(line, '\0', len)) {
        snprintf(e->msg, sizeof(e->msg), "a NUL byte in the line");
        return CY_ECONFIG;
    }
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char *s = trim(line);
    if (!*s) return 0;
    char *eq = strchr(s, '=');
    if (!eq) {
        snprintf(e->msg, sizeof(e->msg), "expected name = value");
        return CY_ECONFIG;
    }
    *eq = '\0';
    return cy_config_set(c, trim(s), trim(eq + 1), e);
}

int cy_config_load_buf(cy_config *c, const char *text, size_t len, const char *name,
                       cy_config_error *err)
{
    if (!name) name = "(config)";
    if (len > CY_CONFIG_FILE_MAX) {
        if (err)
            snprintf(err->msg, sizeof(err->msg), "%.80s: larger than %u bytes", name,
                     CY_CONFIG_FILE_MAX);
        return CY_ECONFIG;
    }
    /* A copy, NUL-terminated, cut into lines in place: a line is whole
     * however long it is (a value too long for its setting is refused by
     * cy_config_set, a long comment is a comment to its end). */
    char *copy = cy_malloc(len + 1);
    if (!copy) {
        if (err) snprintf(err->msg, sizeof(err->msg), "%.80s: out of memory", name);
        return CY_ENOMEM;
    }
    if (len) memcpy(copy, text, len);
    copy[len] = '\0';
    int lineno = 0, rc = 0;
    /* A UTF-8 byte order mark (some editors write one) is no part of the
     * first setting's name: skipped, as an invisible "unknown setting". */
    size_t bom = len >= 3 && !memcmp(copy, "\xEF\xBB\xBF", 3) ? 3 : 0;
    for (char *p = copy + bom, *end = copy + len; !rc && p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *eol = nl ? nl : end;
        *eol = '\0';
        lineno++;
        cy_config_error e;
        rc = load_line(c, p, (size_t)(eol - p), &e);
        if (rc && err)
            snprintf(err->msg, sizeof(err->msg), "%.80s:%d: %.160s", name, lineno, e.msg);
        p = nl ? nl + 1 : end;
    }
    cy_free(copy);
    return rc;
}

int cy_config_load(cy_config *c, const char *path, cy_config_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        if (err) snprintf(err->msg, sizeof(err->msg), "%s: %s", path, strerror(errno));
        return CY_EIO;
    }
    /* The whole file (one byte past the limit says it is too large). */
    cy_buf b;
    cy_buf_init(&b);
    int rc = 0;
    while (cy_buf_size(&b) <= CY_CONFIG_FILE_MAX && !(rc = cy_buf_reserve(&b, 4096))) {
        size_t n = fread(b.data + b.len, 1, b.cap - b.len, f);
        b.len += n;
        if (n == 0) break;
    }
    if (rc) {
        if (err) snprintf(err->msg, sizeof(err->msg), "%s: out of memory", path);
    } else if (ferror(f)) {
        if (err) snprintf(err->msg, sizeof(err->msg), "%s: %s", path, strerror(errno));
        rc = CY_EIO;
    }
    fclose(f);
    if (!rc) rc = cy_config_load_buf(c, (const char *)cy_buf_head(&b), cy_buf_size(&b), path, err);
    cy_buf_fini(&b);
    return rc;
}

void cy_config_print(const cy_config *c, FILE *out)
{
    fprintf(out, "# cyan configuration. Every setting, its default and its meaning.\n"
                 "# Any of them can be given on the command line as --name=value.\n");
    for (size_t i = 0; i < NSETTINGS; i++) {
        const setting *s = &table[i];
        const char *field = (const char *)c + s->offset;
        fprintf(out, "\n# %s (default: %s", s->doc, s->def);
        if (s->type == T_U32) fprintf(out, "; %u..%u", s->min, s->max);
        fprintf(out, ")\n%s = ", s->name);
        switch (s->type) {
        case T_STR: fprintf(out, "%s\n", field); break;
        case T_BOOL: fprintf(out, "%s\n", *(const bool *)field ? "true" : "false"); break;
        case T_U32: fprintf(out, "%u\n", *(const uint32_t *)field); break;
        }
    }
}

/* Read at each use, promised to no connected client, sizing nothing that
 * is allocated: safe to change under a running shard. Not here, and why:
 * max_packet_size, max_inflight and topic_alias_max are announced to MQTT 5
 * clients in CONNACK (lowering them would break what a client was told, and
 * alias tables are sized by topic_alias_max); event_buffer sizes a ring;
 * the http_* limits are copied into the HTTP server at start;
 * isolate_devices was checked against subscriptions already made;
 * watchdog_timeout, listeners, data_dir, shards and store_sync shape the
 * run itself. acl_file is here because the file it names is read again by
 * each shard at every reload (a file that does not parse keeps the rules
 * in use), and checked by the supervisor before it sends the reload. */
static const char *const reloadable[] = {
    "log_level",          "max_topic_length",  "max_queued",
    "max_subscriptions",  "max_retained",      "max_retained_bytes",
    "max_retained_per_client", "max_retained_bytes_per_client",
    "max_connections",    "connect_timeout",   "max_connect_size",
    "preauth_memory",     "max_keepalive",     "max_session_expiry",
    "sys_interval",       "allow_anonymous",   "sse_heartbeat",
    "sse_max_per_token",  "sse_max_per_address",
    "cors_origins",
    "acl_file",
    "auth_fail_burst",    "auth_fail_window",  "auth_fail_lockout_after",
    "auth_lockout",       "auth_fail_delay",   "max_connect_rate_per_address",
    "connect_burst_per_address", "max_publish_rate", "max_publish_bytes_rate",
    "presence_event_rate", "presence_flap_interval", "presence_flush_interval",
    "busy_poll_us",
    /* read again by each shard at the reload itself (a new SSL_CTX for new
     * connections; established ones keep theirs) */
    "tls_cert",           "tls_key",           "tls_ca",
    "tls_ciphers",        "tls_min_version",
    /* read by each shard's sweep at each summary */
    "log_summary_interval",
};

size_t cy_config_count(void)
{
    return NSETTINGS;
}

const char *cy_config_name(size_t i)
{
    return i < NSETTINGS ? table[i].name : NULL;
}

bool cy_config_reloadable(size_t i)
{
    for (size_t k = 0; i < NSETTINGS && k < sizeof(reloadable) / sizeof(reloadable[0]); k++)
        if (!strcmp(reloadable[k], table[i].name)) return true;
    return false;
}

const char *cy_config_doc(size_t i)
{
    return i < NSETTINGS ? table[i].doc : NULL;
}

const char *cy_config_default(size_t i)
{
    return i < NSETTINGS ? table[i].def : NULL;
}

const char *cy_config_kind(size_t i, uint32_t *min, uint32_t *max)
{
    if (i >= NSETTINGS) return NULL;
    if (min) *min = table[i].min;
    if (max) *max = table[i].max;
    switch (table[i].type) {
    case T_BOOL:
        return "bool";
    case T_U32:
        return "number";
    default:
        return "string";
    }
}

void cy_config_value(const cy_config *c, size_t i, char *buf, size_t len)
{
    if (!len) return;
    buf[0] = '\0';
    if (i >= NSETTINGS) return;
    const setting *s = &table[i];
    const char *field = (const char *)c + s->offset;
    switch (s->type) {
    case T_STR: snprintf(buf, len, "%s", field); break;
    case T_BOOL: snprintf(buf, len, "%s", *(const bool *)field ? "true" : "false"); break;
    case T_U32: snprintf(buf, len, "%u", *(const uint32_t *)field); break;
    }
}

int cy_config_load_args(cy_config *c, char *const *args, cy_config_error *err)
{
    cy_config n;
    cy_config_defaults(&n);
    const char *file = NULL;
    for (size_t i = 0; args && args[i]; i++)
        if (!strcmp(args[i], "-c") || !strcmp(args[i], "--config")) {
            if (!args[i + 1]) return fail(err, "%s needs a file%s", args[i], "");
            file = args[++i];
        }
    int rc = file ? cy_config_load(&n, file, err) : 0;
    for (size_t i = 0; !rc && args && args[i]; i++) {
        if (!strcmp(args[i], "-c") || !strcmp(args[i], "--config")) {
            i++;
            continue;
        }
        const char *eq = strchr(args[i], '=');
        if (strncmp(args[i], "--", 2) || !eq) continue;
        char name[64];
        size_t len = (size_t)(eq - args[i] - 2);
        if (len >= sizeof(name)) len = sizeof(name) - 1;
        memcpy(name, args[i] + 2, len);
        name[len] = '\0';
        rc = cy_config_set(&n, name, eq + 1, err);
    }
    cy_log_level lvl;
    if (!rc && cy_log_parse_level(n.log_level, &lvl))
        rc = fail(err, "log_level: expected debug, info, warn or error, got '%s'%s", n.log_level,
                  "");
    if (!rc) *c = n;
    return rc;
}
