/* cy_config: every setting of cyan, in one table.
 *
 * The table in cy_config.c is the single source of truth: it gives each
 * setting its name, type, default, bounds and meaning. The defaults, the
 * config-file parser, the --name=value command line overrides, `cyan config`
 * and etc/cyan.conf are all derived from it.
 *
 * File format: one "name = value" per line; '#' starts a comment; blank
 * lines are ignored; unknown names and out-of-range values are errors that
 * name the file and line.
 *
 * Ownership: cy_config is a plain value; strings are fixed arrays inside it.
 * Errors: CY_ECONFIG (with a message written to err), CY_EIO, CY_ENOMEM.
 * Thread: any; no shared state.
 */
#ifndef CY_CONFIG_H
#define CY_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef struct cy_config {
    char mqtt_listen[128];      /* host:port */
    char data_dir[512];         /* folder for registry.db and shard-N.db */
    bool allow_anonymous;       /* accept CONNECT without credentials */
    char log_level[16];         /* debug, info, warn, error */
    uint32_t max_packet_size;   /* bytes, both directions' server side */
    uint32_t max_topic_length;  /* bytes */
    uint32_t max_inflight;      /* receive maximum, both directions */
    uint32_t max_queued;        /* messages per session */
    uint32_t max_subscriptions; /* per session */
    uint32_t max_retained;      /* retained messages on the node; 0 = no limit */
    uint32_t max_retained_bytes; /* bytes of them (topic + payload + props); 0 = no limit */
    uint32_t max_retained_per_client; /* set by one client id; 0 = no limit */
    uint32_t max_retained_bytes_per_client; /* bytes set by one client id; 0 = no limit */
    uint32_t max_connections;   /* per process */
    uint32_t connect_timeout;   /* s from accept to CONNECT */
    uint32_t max_connect_size;  /* bytes: the largest CONNECT (before login) */
    uint32_t preauth_memory;    /* bytes per shard for all sockets before CONNECT together */
    uint32_t max_output;        /* bytes waiting to be written to one client before reading it stops */
    uint32_t max_output_stall;  /* s a client may stay over max_output before it is closed */
    uint32_t max_outbox_bytes;  /* bytes of acknowledged frames kept for one peer shard */
    uint32_t max_keepalive;     /* s; larger (or 0) client keepalives are lowered to it */
    uint32_t max_session_expiry; /* s; 0 = no cap */
    uint32_t topic_alias_max;   /* aliases a client may set */
    uint32_t sys_interval;      /* s between $SYS/cyan updates; 0 = off */
    uint32_t busy_poll_us;      /* µs a shard polls without sleeping after work; 0 = off */
    char store_sync[16];        /* normal or full */
    uint32_t shards;            /* shard processes */
    uint32_t watchdog_timeout;  /* ms without heartbeat or progress before a shard is replaced */
    bool isolate_devices;       /* devices keep to devices/<id>/... and events/... */
    char http_listen[128];      /* host:port of the HTTP API; "" = off */
    uint32_t http_max_body;     /* bytes */
    uint32_t http_max_connections; /* per shard */
    uint32_t http_idle_timeout; /* s */
    uint32_t http_request_timeout; /* s, first line of a request to the end of its body */
    uint32_t http_max_per_address; /* per shard; 0 = no limit */
    uint32_t sse_heartbeat;     /* s between heartbeat comments on event streams */
    uint32_t event_buffer;      /* events each shard keeps for resuming streams */
    uint32_t sse_max_per_token;   /* open event streams per API token, per shard */
    uint32_t sse_max_per_address; /* open event streams per client address, per shard */
    char cors_origins[512];     /* "", "*" or comma-separated origins whose pages may call the API */
    bool monitor;               /* run the monitor process */
    char ops_listen[128];       /* host:port of the operations listener; "" = off */
    bool ops_public;            /* /metrics and /status without a token */
    uint32_t canary_interval;   /* ms between canary rounds */
    uint32_t canary_timeout;    /* ms; 0 = no canaries */
    char alert_rules[512];      /* path of a rules file; "" = built-in rules */
    char alert_webhooks[512];   /* comma-separated receiver URLs */
    uint32_t event_log_keep;    /* events kept in the log beyond what webhooks need */
    uint32_t event_retention;   /* s an event stays in the log after every webhook has passed it */
    uint32_t webhook_timeout;   /* s per webhook request */
    uint32_t webhook_max_age;   /* s an event is retried before it is dead-lettered */
    uint32_t webhook_retry_base; /* ms: first retry wait; later ones grow from it */
    uint32_t webhook_concurrency; /* requests in flight per webhook, per shard */
    uint32_t webhook_max;       /* webhooks per node */
    bool webhook_allow_private; /* webhooks may target loopback, private, link-local addresses */
    char coap_listen[128];      /* host:port of plain CoAP (UDP); "" = off */
    char coaps_listen[128];     /* host:port of CoAP over DTLS; "" = off */
    bool coap_insecure;         /* take plain CoAP requests (device named, not authenticated) */
    uint32_t coap_idle_timeout; /* s a CoAP device stays online (its address fresh) unheard */
    uint32_t coap_session_expiry; /* s a CoAP device's session outlives its last datagram */
    uint32_t coap_max_message;  /* bytes of the largest CoAP message taken or sent */
    uint32_t coaps_max_peers;   /* DTLS sessions (and handshakes) per shard */
    uint32_t coaps_handshake_rate; /* new DTLS handshakes per second per shard */
    bool http_tls;              /* HTTPS on http_listen when tls_cert is set */
    bool ops_tls;               /* HTTPS on ops_listen when tls_cert is set */
    char acl_file[512];         /* the operator's ACL (Mosquitto's acl_file format); "" = none */
    /* limits against abuse (core/cy_limit.h), node-wide */
    uint32_t auth_fail_burst;     /* failed logins in a window before attempts are delayed; 0 = never */
    uint32_t auth_fail_window;    /* s */
    uint32_t auth_fail_lockout_after; /* failed logins in a window before a lockout; 0 = never */
    uint32_t auth_lockout;        /* s */
    uint32_t auth_fail_delay;     /* ms an attempt is held once its address or device is slow */
    uint32_t max_connect_rate_per_address; /* new connections per s per address; 0 = no limit */
    uint32_t connect_burst_per_address;    /* connections at once within that rate */
    char limits_exempt[256];      /* addresses (with /prefix) no per-address limit applies to */
    uint32_t max_publish_rate;    /* messages per s per connection (CoAP: per device); 0 = no limit */
    uint32_t max_publish_bytes_rate; /* payload and topic bytes per s per connection; 0 = no limit */
    char mqtts_listen[128];        /* host:port of MQTT over TLS (with tls_cert); "" = off */
    char tls_cert[512];            /* PEM certificate chain; "" = no TLS */
    char tls_key[512];             /* PEM private key of tls_cert */
    char tls_ca[512];              /* PEM CAs of device certificates; "" = none */
    char tls_ciphers[256];         /* TLS 1.2 cipher list; "" = cyan's */
    char tls_min_version[8];       /* "1.2" or "1.3" */
    /* logs */
    char log_format[8];            /* "text" or "json" */
    uint32_t log_summary_interval; /* s between connection summaries per shard; 0 = none */
    /* presence (device/presence.c) */
    uint32_t presence_event_rate;     /* status events per s per shard; 0 = none */
    uint32_t presence_flap_interval;  /* s between one device's status events past its burst; 0 = no limit */
    uint32_t presence_flush_interval; /* s between writes of last heard and last round trip */
} cy_config;

typedef struct cy_config_error {
    char msg[256];
} cy_config_error;

void cy_config_defaults(cy_config *c);
/* Set one setting from its text form. */
int cy_config_set(cy_config *c, const char *name, const char *value, cy_config_error *err);
/* Read a config file over c (settings absent from the file keep their
 * value): the file's bytes go to cy_config_load_buf, named by path. On an
 * error the settings before the bad line are applied already. */
int cy_config_load(cy_config *c, const char *path, cy_config_error *err);
/* The largest config text taken, bytes (a real file is a few KiB). */
#define CY_CONFIG_FILE_MAX (1u << 20)
/* Read config text over c: len bytes of text (borrowed, need not be
 * NUL-terminated), lines ending at '\n' (a '\r' before it is space), a
 * line whole however long. name (NULL: "(config)") only names the text in
 * messages: "name:line: what". A NUL byte in a line, or text over
 * CY_CONFIG_FILE_MAX, is CY_ECONFIG; CY_ENOMEM when the line copy cannot
 * be made. */
int cy_config_load_buf(cy_config *c, const char *text, size_t len, const char *name,
                       cy_config_error *err);
/* Print every setting as a commented config file (defaults when c is the default). */
void cy_config_print(const cy_config *c, FILE *out);

/* The settings as cyan's command line makes them: defaults, then the file
 * after "-c" or "--config" (if any), then every "--name=value", each over
 * the one before; other words are skipped. log_level is checked too. The
 * supervisor calls it again on SIGHUP with the arguments it was started
 * with. args: NULL-terminated, borrowed. On an error c is left as it was
 * and err names the file and line or the argument. */
int cy_config_load_args(cy_config *c, char *const *args, cy_config_error *err);

/* The table, by index 0..cy_config_count()-1: each setting's name, its
 * value as text (as a config file or --name=value takes it) and whether a
 * running node applies a new value on SIGHUP (docs/operations.md, "Reload"):
 * only limits read at each use, that no connected client was promised and
 * that size nothing already allocated. */
size_t cy_config_count(void);
const char *cy_config_name(size_t i);
void cy_config_value(const cy_config *c, size_t i, char *buf, size_t len);
bool cy_config_reloadable(size_t i);
/* What `cyan man` prints of each setting: its one-line meaning, its
 * default as text, and its kind, "string", "bool" or "number" (then
 * *min..*max are its bounds; either pointer may be NULL). Static strings;
 * NULL past the end. */
const char *cy_config_doc(size_t i);
const char *cy_config_default(size_t i);
const char *cy_config_kind(size_t i, uint32_t *min, uint32_t *max);

#endif
