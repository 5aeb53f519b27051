/* store: what cyan keeps on disk, in SQLite (WAL mode).
 *
 * Two handles, two files, because they have different owners once cyan
 * runs as shards:
 *   cy_registry  the registry (devices and API tokens, their hashed secrets,
 *                devices' encrypted DTLS PSKs, webhook definitions). One
 *                file for the whole node ("registry.db"), read by every
 *                process, written by the admin command and the API.
 *   cy_store     the state of one shard ("shard-N.db", one file per
 *                shard): persistent sessions, their subscriptions,
 *                the messages queued or in flight for them, the packet ids
 *                of inbound QoS 2 messages not yet released, retained
 *                messages, the event log and webhook state, and its
 *                devices' presence.
 *
 * Durability: group commit. The first write after cy_store_commit opens a
 * transaction; the loop calls cy_store_commit once per pass, *before* it
 * flushes any acknowledgement to a socket. So a PUBACK is never on the wire
 * before the message it acknowledges is in the WAL. With sync "normal" a
 * committed transaction survives the process being killed (the shard-death
 * case); with sync "full" it also survives power loss, at an fsync per
 * commit.
 *
 * Secrets: device secrets are 128-bit random values made by cyan, so a
 * single salted HMAC-SHA256 is as strong as a slow password hash would be
 * and costs microseconds per CONNECT. Only the salt and the hash are stored;
 * comparison is constant time. A device's DTLS pre-shared key (CoAP) is the
 * exception: the server needs the key itself, so it is stored encrypted
 * (AES-256-GCM) under the node's key file, "registry.key" beside the
 * registry (registry.c says how).
 *
 * Ownership: every pointer argument is borrowed (copied into SQLite where
 * kept). Pointers handed to loader callbacks are valid only during the call.
 * Errors: CY_ESTORE (SQLite failed; the message is logged once here),
 * CY_ENOENT, CY_EEXIST, CY_EACCES, CY_ENOMEM, CY_EINVAL.
 * Thread: a handle belongs to the thread that opened it.
 */
#ifndef CY_STORE_H
#define CY_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- device registry ---- */

typedef struct cy_registry cy_registry;

#define CY_DEVICE_ID_LEN 24     /* hex characters */
#define CY_DEVICE_SECRET_LEN 32 /* hex characters (128 bits) */
#define CY_DEVICE_NAME_MAX 64
/* A DTLS PSK: 32 lowercase hex characters (128 random bits). The ASCII text
 * itself is the key's bytes (coap-client -u <id> -k <psk>). */
#define CY_DEVICE_PSK_LEN 32

typedef struct cy_device {
    char id[CY_DEVICE_ID_LEN + 1];
    char name[CY_DEVICE_NAME_MAX + 1];
    int64_t created_at; /* wall ms */
    bool internal;      /* cyan's own (a canary): see "Internal devices and tokens" */
} cy_device;

/* Open (creating if needed) the registry at path. */
int cy_registry_open(const char *path, cy_registry **out);
void cy_registry_close(cy_registry *r); /* safe on NULL */
/* Create a device named name (1..CY_DEVICE_NAME_MAX printable characters,
 * unique: CY_EEXIST otherwise). Writes its new id and its secret (shown
 * once, never stored) as NUL-terminated hex, and its DTLS PSK (stored
 * encrypted, see cy_registry_device_psk) to psk_out unless that is NULL:
 * every device gets a PSK, psk_out only says whether the caller sees it.
 * The outputs are "" on failure.
 * Names are letters, digits, '-', '_' and '.'; a name shaped like an id
 * (24 lowercase hex characters) is refused. Both: CY_EINVAL. CY_EIO if the
 * random generator fails, or the key file cannot be read or made (logged:
 * the first PSK of a node makes it). */
int cy_registry_device_add(cy_registry *r, const char *name, char id_out[CY_DEVICE_ID_LEN + 1],
                           char secret_out[CY_DEVICE_SECRET_LEN + 1],
                           char psk_out[CY_DEVICE_PSK_LEN + 1]);
/* 0 if id exists and secret matches; CY_ENOENT if no such device;
 * CY_EACCES if the secret is wrong. Devices and tokens found once are
 * checked from a cache in the handle; a removal or revocation by another
 * process (or handle) is seen within 200 ms (PRAGMA data_version), one by
 * this handle at once; unknown ids are never cached. */
int cy_registry_device_check(cy_registry *r, const char *id, size_t id_len, const uint8_t *secret,
                             size_t secret_len);
/* How often (ms) a handle asks whether another process changed the file
 * (PRAGMA data_version), dropping its cache if so: the delay after which
 * another process's removal, revocation or new secret is seen. */
#define CY_REGISTRY_RECHECK_MS 200
/* Let checks that miss the cache share one read transaction, begun by
 * the first and ended by cy_registry_end_reads, instead of one transaction
 * each (most of a miss's cost). Between two cy_registry_end_reads calls
 * misses see one snapshot: a device added by another process is seen from
 * the next. An owner that turns it on calls cy_registry_end_reads before its
 * loop waits (a shard: once per loop pass), or the snapshot is kept, and
 * the WAL cannot be checkpointed past it. Off by default; off ends the
 * transaction. The other registry calls end it before they run. */
void cy_registry_share_reads(cy_registry *r, bool on);
/* End the shared read transaction, if one is open. Safe on NULL. */
void cy_registry_end_reads(cy_registry *r);
/* End the shared read transaction, and make the next lookup check the
 * cache (PRAGMA data_version) at once instead of within
 * CY_REGISTRY_RECHECK_MS; with shared reads on, inside the new shared
 * snapshot that the lookups after it read from. So everything committed
 * before this call, by any process, is seen by the lookups after it: a
 * revoked token or a removed device is refused at once, for the price of
 * one read transaction for all the lookups until the next
 * cy_registry_fresh or cy_registry_end_reads. A shard's API calls it
 * before each batch of requests. Safe on NULL. Thread: the handle's owner. */
void cy_registry_fresh(cy_registry *r);
/* How long (ms, at most 5000) a statement waits for a lock another process
 * holds on the file (a CLI's write, a `sqlite3` shell) before it fails
 * with CY_ESTORE. 5000 by default; a handle with shared reads on (a loop)
 * waits CY_REGISTRY_LOOP_BUSY_MS unless this was called. A loop sets a
 * fraction of its watchdog: a statement that met the lock keeps its kind
 * (reads, writes) failing at once for 200 ms, so one pass waits once. */
#define CY_REGISTRY_LOOP_BUSY_MS 500 /* a quarter of the default watchdog */
void cy_registry_set_busy_timeout(cy_registry *r, unsigned ms);
/* The DTLS PSK of device id[0..id_len) (need not be NUL-terminated; a
 * user's or an internal device): its CY_DEVICE_PSK_LEN bytes (the ASCII
 * hex text, no NUL) into key[0..cap), and returns CY_DEVICE_PSK_LEN.
 * For a DTLS server's PSK callback: run on a shard's loop for each
 * handshake, it reads the row in the read transaction shared until
 * cy_registry_end_reads (cy_registry_share_reads), so a new PSK is used
 * from the loop's next pass; nothing is cached.
 * Ownership: id borrowed; key is the caller's (cleanse it after use).
 * Errors: CY_ENOENT (no such device, an id not shaped like one, or a device
 * without a PSK: made before schema version 5 and none issued since),
 * CY_EIO (the key file is missing or unreadable, or the stored record does
 * not decrypt: damaged, tampered with, or sealed under another key file;
 * logged here, at most once a minute per handle), CY_ERANGE (cap <
 * CY_DEVICE_PSK_LEN), CY_EINVAL (NULL r or key, NULL id with id_len),
 * CY_ESTORE. */
int cy_registry_device_psk(cy_registry *r, const char *id, size_t id_len, uint8_t *key, size_t cap);
/* Issue a new DTLS PSK for the user device id_or_name (borrowed): the old
 * one stops working at once on this handle, from the next loop pass on
 * shards (see cy_registry_device_psk). For rotation, or the first PSK of a
 * device made before PSKs. Writes the new PSK NUL-terminated to psk_out
 * ("" on failure). Makes the key file if there is none yet.
 * Errors: CY_ENOENT (no such user device: internal ones are
 * cy_registry_internal_device's), CY_EINVAL (a NULL argument), CY_EIO
 * (random generator, cipher, key file: logged), CY_ESTORE. */
int cy_registry_device_psk_new(cy_registry *r, const char *id_or_name,
                               char psk_out[CY_DEVICE_PSK_LEN + 1]);
/* Look a user device up by id or by name (CY_ENOENT for an internal one).
 * With shared reads on (a shard), from the shared read snapshot and a
 * cache of earlier gets checked against it (cy_registry_fresh); otherwise
 * the file's latest. */
int cy_registry_device_get(cy_registry *r, const char *id_or_name, cy_device *out);
/* Remove a user device by id or by name. CY_ENOENT if absent (or internal). */
int cy_registry_device_remove(cy_registry *r, const char *id_or_name);
/* Rename the user device id_or_name (borrowed) to name (borrowed; the
 * rules of cy_registry_device_add). Its id, secret and PSK stay: devices
 * log in by id, so a connected device notices nothing. *out (may be NULL)
 * gets the device as renamed. Renaming to its own name is a success.
 * Errors: CY_EINVAL (a bad name, a NULL argument), CY_ENOENT (no such user
 * device), CY_EEXIST (another device has the name), CY_ESTORE. */
int cy_registry_device_rename(cy_registry *r, const char *id_or_name, const char *name,
                              cy_device *out);
/* Calls fn for each user device (internal ones are never listed) in
 * creation order; stops early if fn returns non-zero and returns that
 * value. fn may call the other registry functions, not this one. */
int cy_registry_device_list(cy_registry *r, int (*fn)(void *ctx, const cy_device *d), void *ctx);

/* ---- API tokens ----
 *
 * A token is the text "cyt_<id>_<secret>": id is CY_TOKEN_ID_LEN lowercase
 * hex characters, secret 32 (128 random bits). The text is shown once when
 * the token is made; the registry keeps the id, the name, the scopes, the
 * expiry, when it was last used and a salted HMAC-SHA256 of the secret,
 * never the secret. Like devices, tokens are checked in constant time and
 * an unknown id costs the same as a wrong secret. A token is revoked by id;
 * its name is a label for people.
 *
 * Scopes (schema version 6): a token holds a set of them, a bit mask of
 * CY_SCOPE_*; every API route needs exactly one (docs/api.md). A version 5
 * "read-only" token became devices:read + events:read, a "full" one every
 * scope. An internal token (cyan's own, see "Internal devices and tokens")
 * holds CY_SCOPE_INTERNAL alone, which no user token may hold.
 *
 * Expiry: a token may end at a wall time (expires_at, ms; 0 = never); a
 * check after it answers CY_ETIMEDOUT. The row stays (listed, revocable)
 * until it is revoked.
 *
 * Last use: each successful check notes the time in the handle's memory;
 * cy_registry_token_flush writes what changed: a token's first use the
 * handle sees at once, then every token's newer use together, once per
 * CY_TOKEN_USED_WRITE_MS. So a shard costs about one write a minute, not
 * one per request, and a crash (or SIGKILL) of a process loses at most
 * the last CY_TOKEN_USED_WRITE_MS of its uses; cy_registry_close writes
 * the rest.
 *
 * Thread (every function below): any thread that owns the handle r.
 */

#define CY_TOKEN_ID_LEN 12 /* hex */
#define CY_TOKEN_MAX 64    /* characters of the token text */
#define CY_TOKEN_NAME_MAX 64

/* The scopes, one bit each (docs/api.md lists the routes of each). */
#define CY_SCOPE_DEVICES_READ (1u << 0)    /* "devices:read": device list, details, presence */
#define CY_SCOPE_DEVICES_CALL (1u << 1)    /* "devices:call": function calls, variable reads */
#define CY_SCOPE_EVENTS_READ (1u << 2)     /* "events:read": event streams, traces */
#define CY_SCOPE_EVENTS_PUBLISH (1u << 3)  /* "events:publish": POST /v1/events */
#define CY_SCOPE_WEBHOOKS_MANAGE (1u << 4) /* "webhooks:manage": every webhook route */
#define CY_SCOPE_ADMIN (1u << 5)           /* "admin": tokens, device creation, removal, PSKs */
#define CY_SCOPE_ALL 0x3fu                 /* every user scope: what "full" was */
/* What a version 5 read-only token became, and `--read-only` still makes. */
#define CY_SCOPE_READ_ONLY (CY_SCOPE_DEVICES_READ | CY_SCOPE_EVENTS_READ)
/* cyan's own token: calls internal devices' functions, nothing else. */
#define CY_SCOPE_INTERNAL (1u << 6)
#define CY_SCOPE_NAME_MAX 16 /* the longest name, "webhooks:manage", and its NUL */

/* The name of one scope bit ("devices:read", ... "internal"), or NULL if
 * bit is not exactly one known scope. Static storage. Thread: any. */
const char *cy_scope_name(unsigned bit);
/* The scope named name[0..len) (not NUL-terminated), into *bit: 0, or
 * CY_EINVAL for an unknown name ("internal" included: no user token may
 * hold it). Thread: any. */
int cy_scope_parse(const char *name, size_t len, unsigned *bit);
/* A comma-separated list of scope names ("devices:read,events:read";
 * blanks around names are skipped; a name given twice counts once) into
 * *scopes. On CY_EINVAL (an unknown or empty name, or no name at all) the
 * offending name is copied NUL-terminated, cut to bad_cap - 1 bytes, into
 * bad (may be NULL), "" when the list is empty. Thread: any. */
int cy_scopes_parse(const char *text, unsigned *scopes, char *bad, size_t bad_cap);
/* The names of the bits of scopes, comma-separated, in bit order, into
 * buf (cap bytes, NUL-terminated, cut if short). Returns the length it
 * needed (as snprintf). Thread: any. */
size_t cy_scopes_format(unsigned scopes, char *buf, size_t cap);
/* A duration: a whole number followed by s, m, h or d ("90s", "30d"), or
 * a bare number of seconds, 1 s .. CY_TOKEN_MAX_LIFETIME_S, into *ms.
 * CY_EINVAL (not a duration), CY_ERANGE (0 or past the maximum). */
#define CY_TOKEN_MAX_LIFETIME_S (10LL * 366 * 86400) /* ten years */
int cy_duration_parse(const char *text, int64_t *ms);

/* How often (ms) at most a handle writes one token's last use. */
#define CY_TOKEN_USED_WRITE_MS 60000

typedef struct cy_token {
    char id[CY_TOKEN_ID_LEN + 1];
    char name[CY_TOKEN_NAME_MAX + 1];
    unsigned scopes;      /* CY_SCOPE_* bits */
    int64_t created_at;   /* wall ms */
    int64_t expires_at;   /* wall ms; 0 = never */
    int64_t last_used_at; /* wall ms; 0 = never (as far as written and this handle know) */
} cy_token;

/* What a check found: the token's id, scopes and expiry. */
typedef struct cy_token_auth {
    char id[CY_TOKEN_ID_LEN + 1];
    unsigned scopes;    /* CY_SCOPE_* bits; 0 on failure */
    int64_t expires_at; /* wall ms; 0 = never */
} cy_token_auth;

/* Create a token named name with the scopes given (a non-empty subset of
 * CY_SCOPE_ALL; internal tokens: cy_registry_internal_token), ending at
 * expires_at (wall ms; 0 = never).
 * Writes its id and its whole text ("cyt_<id>_<secret>", shown once, never
 * stored) NUL-terminated into id_out and token_out, or empty strings on
 * failure.
 * Names follow the device rules (1..CY_TOKEN_NAME_MAX letters, digits, '-',
 * '_' and '.') but need not be unique, and an id-shaped name is allowed.
 * The registry does not judge expires_at against the clock: the caller
 * refuses a time in the past.
 * Ownership: name borrowed (copied into the registry); the outputs are the
 * caller's buffers.
 * Errors: CY_EINVAL (NULL argument, bad name, no scope, an unknown or
 * internal scope, a negative expiry), CY_EIO (the random generator or HMAC
 * failed), CY_ESTORE. */
int cy_registry_token_create(cy_registry *r, const char *name, unsigned scopes,
                             int64_t expires_at, char id_out[CY_TOKEN_ID_LEN + 1],
                             char token_out[CY_TOKEN_MAX + 1]);

/* Check the token text token[0..len) (need not be NUL-terminated) at wall
 * time now_ms. On success returns 0, fills *out and notes the use (see
 * "Last use" above). An expired token (expires_at <= now_ms) with the right
 * secret answers CY_ETIMEDOUT, with out's id and expires_at filled (scopes
 * 0) so that the caller can say which; on any other failure *out is zeroed.
 * Ownership: token borrowed; out is the caller's.
 * Errors: CY_EINVAL if the text is not a token at all (wrong prefix, length
 * or characters, a NUL inside len, upper-case hex) or out is NULL;
 * CY_EACCES for an unknown id or a wrong secret (one answer for both, in the
 * same time); CY_ETIMEDOUT (expired); CY_EIO (HMAC failed); CY_ESTORE. */
int cy_registry_token_check(cy_registry *r, const char *token, size_t len, int64_t now_ms,
                            cy_token_auth *out);

/* The scopes and expiry of the token with this id (borrowed), for a
 * credential derived from it that was verified otherwise (a stream token,
 * api_stream_token.h): like a successful check without the secret, from
 * the same cache, and noted as a use. 0 and *out filled; CY_ENOENT (no
 * such token: revoked, or never), CY_ETIMEDOUT (expired at now_ms; out
 * filled, scopes 0), CY_EINVAL (NULL argument), CY_ESTORE. */
int cy_registry_token_auth(cy_registry *r, const char *id, int64_t now_ms, cy_token_auth *out);

/* Write the last uses this handle noted and has not written: first uses
 * at once, the others once per CY_TOKEN_USED_WRITE_MS (all of them now
 * when all is true), in one transaction. Looks at most once a second. Cheap when there is nothing to write: a
 * loop calls it from a timer. Returns how many tokens were written, or
 * CY_ESTORE (logged; the uses stay noted and are tried again later). */
int cy_registry_token_flush(cy_registry *r, int64_t now_ms, bool all);

/* Calls fn for each token (internal ones included, scope
 * CY_SCOPE_INTERNAL) in creation order; stops early if fn returns
 * non-zero and returns that value. last_used_at is the later of the file's
 * and what this handle noted. fn may call the other registry functions,
 * not this one. *t is valid only during the call.
 * Errors: CY_EINVAL (fn NULL), CY_ESTORE. */
int cy_registry_token_list(cy_registry *r, int (*fn)(void *ctx, const cy_token *t), void *ctx);

/* Whether the token with this id (borrowed) still exists: 1 yes, 0 no (it
 * was revoked; ids are never reused). A cheap lookup, no secret involved:
 * for re-checking a token that was checked in full before. Expiry is not
 * looked at (it never changes: the caller keeps it).
 * Errors: CY_EINVAL (id NULL), CY_ESTORE. */
int cy_registry_token_exists(cy_registry *r, const char *id);

/* Revoke (delete) the token with this id (borrowed): from the return on,
 * checking it through this handle answers CY_EACCES, through the others
 * within 200 ms.
 * Errors: CY_ENOENT if there is no such token, CY_EINVAL (id NULL),
 * CY_ESTORE. */
int cy_registry_token_revoke(cy_registry *r, const char *id);

/* A key for one purpose (label, borrowed: e.g. "cyan stream tokens v1"),
 * derived from the node's key file (registry.key, see
 * cy_registry_device_psk) as HMAC-SHA256(key file, label): the same in
 * every process of the node, never the key file's bytes themselves. With
 * make, a missing key file is made (as the first PSK does); without, it is
 * only read (a process that finds none answers CY_EIO). 32 bytes into out.
 * Errors: CY_EINVAL (NULL argument), CY_EIO (no key file and not made, or
 * it cannot be read or made: logged), CY_ESTORE. */
#define CY_REGISTRY_SUBKEY_LEN 32
int cy_registry_subkey(cy_registry *r, const char *label, bool make,
                       uint8_t out[CY_REGISTRY_SUBKEY_LEN]);

/* Make the first token of a new node. If the registry holds no token at
 * all (internal ones do not count: they administer nothing), creates a
 * token with every scope (CY_SCOPE_ALL) and no expiry named "admin",
 * writes "<token>\n" to path (borrowed) as a new file of mode 0600 and
 * sets *created = true; otherwise sets *created = false and touches
 * nothing (even if path is missing).
 * The file is written to a fresh temporary file beside path (O_EXCL), synced
 * and renamed over path, so a stale file there is replaced in one step and
 * never seen half-written. The row commits only after the file is in place:
 * on failure no token was added (and the check-and-create holds a write
 * lock, so two processes do not both make one).
 * Errors: -errno of the file system (e.g. -EACCES, -ENOENT for a missing
 * directory, -ENOSPC), CY_EINVAL (NULL or empty path, created NULL), CY_EIO
 * (random generator or HMAC), CY_ENOMEM, CY_ESTORE. */
int cy_registry_token_bootstrap(cy_registry *r, const char *path, bool *created);

/* ---- internal devices and tokens ----
 *
 * cyan's own synthetic devices (the canaries: one per shard, kept by the
 * monitor, plus those of `cyan canary`) and the tokens with which they are
 * called through the API. An internal device connects and publishes like
 * any device, but the user-facing calls above never return it (get, remove,
 * list: so no device list, count or deletion shows it), the API hides it
 * from users' tokens, and its own events (devices/<id>/events/...) never
 * reach users' event streams (the API asks cy_registry_device_internal).
 * An internal token (scope CY_SCOPE_INTERNAL) may only call the functions
 * of internal devices; `cyan token list` shows it with that scope, so an
 * audit of what can reach the API sees it.
 *
 * Secrets: the registry keeps only hashes, and an internal secret is kept
 * nowhere else either: each cy_registry_internal_device or
 * cy_registry_internal_token makes a new one and returns it, and the old
 * one stops working. So the process that needs it (the monitor, at every
 * start) asks for it again instead of reading a secret from a file: there
 * is no file to leak, to keep in step with the registry, or to protect.
 * The price: a shard may hold the old hash of a device in its cache for up
 * to CY_REGISTRY_RECHECK_MS, so a CONNECT right after a rotation may be
 * refused (bad credentials): the canaries wait that long before their
 * first connect.
 * A token is replaced by a new id rather than rekeyed, so it works at once.
 * Two processes rotating the same name take each other's credentials: use
 * one name per user (the monitor's canaries and `cyan canary` have their
 * own names).
 *
 * Names of internal devices and tokens hold a ':' (e.g. "cyan:canary:2"),
 * which user names cannot, so they never take a user's name; otherwise the
 * user name rules (1..CY_DEVICE_NAME_MAX letters, digits, '-', '_', '.').
 * Thread: the handle's owner. */

/* Ids cy_registry_internal_device draws before giving up on id_ok. */
#define CY_REGISTRY_INTERNAL_DRAWS 4096

/* Make sure the internal device named name (borrowed) exists with an id
 * that id_ok takes (NULL: any; the monitor passes "hashes to shard i"),
 * and give it a new secret and a new DTLS PSK. An existing device keeps its
 * id if id_ok takes it; if not (the shard count changed), it is replaced by
 * a new one. In one transaction: on failure nothing changed. Writes the id
 * and the new secret (shown once, never stored) NUL-terminated, and the PSK
 * to psk_out unless that is NULL (a caller without CoAP discards it), or
 * empty strings on failure. Without a key file that can be read or made
 * (see cy_registry_device_psk_new) the device is ensured all the same,
 * without a PSK: psk_out is "" (logged), so cyan's MQTT canaries do not
 * stop over a key only PSKs need. id_ok runs inside the transaction: it
 * must not call the registry.
 * Errors: CY_EINVAL (NULL argument, bad internal name), CY_ERANGE (id_ok
 * took none of CY_REGISTRY_INTERNAL_DRAWS random ids), CY_EEXIST (a user
 * device has the name: impossible through this API), CY_EIO (random
 * generator, HMAC, cipher), CY_ESTORE. */
int cy_registry_internal_device(cy_registry *r, const char *name,
                                bool (*id_ok)(void *ctx, const char *id), void *ctx,
                                char id_out[CY_DEVICE_ID_LEN + 1],
                                char secret_out[CY_DEVICE_SECRET_LEN + 1],
                                char psk_out[CY_DEVICE_PSK_LEN + 1]);
/* Look an internal device up by id (borrowed); CY_ENOENT if there is none
 * (user devices included). Errors: CY_EINVAL, CY_ESTORE. */
int cy_registry_internal_get(cy_registry *r, const char *id, cy_device *out);
/* Whether id[0..id_len) (need not be NUL-terminated) is an internal device:
 * 1 yes, 0 no (a user device, no device, not shaped like an id), or
 * CY_ESTORE. From the cache of rows checks have seen (a device's CONNECT
 * puts it there), so a connected device costs a map lookup; the first
 * lookup of an id reads the file, and so does every lookup of an id that
 * is no device (nothing negative is cached; only with isolate_devices off
 * can a client publish on another id's topics). For the hot path of
 * events. */
int cy_registry_device_internal(cy_registry *r, const char *id, size_t id_len);
/* Replace the internal token named name (borrowed): every internal token
 * of that name is revoked and a new one made (a new id, so no cache anywhere
 * knows it: it works at once on every shard). Outputs as for
 * cy_registry_token_create.
 * Errors: CY_EINVAL (NULL argument, bad internal name), CY_EIO, CY_ESTORE. */
int cy_registry_internal_token(cy_registry *r, const char *name,
                               char id_out[CY_TOKEN_ID_LEN + 1], char token_out[CY_TOKEN_MAX + 1]);

/* ---- broker state ---- */

typedef struct cy_store cy_store;

/* Delivery states of a queued message (what the peer has seen). */
enum {
    CY_MSG_QUEUED = 0,  /* not yet sent */
    CY_MSG_SENT = 1,    /* PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2) */
    CY_MSG_RELEASED = 2 /* PUBREL sent, waiting for PUBCOMP (QoS 2) */
};

/* One message queued for one session. */
typedef struct cy_store_msg {
    int64_t id; /* row id: set by cy_store_msg_put, increasing in enqueue order */
    const char *topic;
    size_t topic_len;
    const uint8_t *payload;
    size_t payload_len;
    const uint8_t *props; /* pass-through MQTT 5 properties, encoded; may be NULL */
    size_t props_len;
    uint8_t qos;
    bool retain;
    int64_t expiry_at; /* wall ms; 0 = never expires */
    uint16_t packet_id; /* 0 until sent */
    uint8_t state;      /* CY_MSG_* */
    const uint32_t *sub_ids; /* subscription identifiers to report */
    uint32_t n_sub_ids;
    int64_t ts; /* retained only: last-writer-wins stamp (see cy_store_retain_put) */
    const char *owner; /* retained only: client id that set it, or NULL (nobody known) */
    size_t owner_len;
} cy_store_msg;

/* A persistent session. */
typedef struct cy_store_session {
    const char *client_id;
    uint8_t version;         /* protocol version of its last connection */
    uint32_t expiry;         /* session expiry interval, s; 0xFFFFFFFF = never */
    int64_t disconnected_at; /* wall ms; 0 while connected */
} cy_store_session;

/* What cy_store_load reports, in this order: every session, then for each
 * session its subscriptions and inbound QoS 2 ids, then every session's
 * queued messages in id order (so each queue in its order; the sessions'
 * rows interleave), then every retained message. Any callback may be NULL. A non-zero return
 * stops the load and is returned. */
typedef struct cy_store_loader {
    int (*session)(void *ctx, const cy_store_session *s);
    int (*sub)(void *ctx, const char *client_id, const char *filter, uint8_t opts, uint32_t sub_id);
    int (*msg)(void *ctx, const char *client_id, const cy_store_msg *m);
    int (*inq2)(void *ctx, const char *client_id, uint16_t packet_id);
    /* For retained messages m->packet_id, state and sub ids are unused. */
    int (*retained)(void *ctx, const cy_store_msg *m);
    /* Then the sequence state of every peer shard, then every outbox frame
     * (per peer in seq order). */
    int (*peer)(void *ctx, unsigned peer, uint64_t last_sent, uint64_t last_applied);
    int (*outbox)(void *ctx, unsigned peer, uint64_t seq, const uint8_t *frame, size_t len);
} cy_store_loader;

/* Open (creating if needed) the store at path. sync_full: fsync every
 * commit (power-loss safe) instead of WAL's "normal". */
int cy_store_open(const char *path, bool sync_full, cy_store **out);
/* Commits anything pending, then closes. Safe on NULL. */
void cy_store_close(cy_store *s);
/* Commit the open transaction, if any. Called once per loop pass.
 * CY_ESTORE: the whole batch since the last commit is gone (rolled back),
 * none of it may be acknowledged; the next write starts a new batch. That
 * is so whenever any write of the batch failed (the write returned
 * CY_ESTORE), even if SQLite kept the others. */
int cy_store_commit(cy_store *s);
/* Number of writes since the last commit, failed ones included (0 =
 * nothing pending: no commit needed). */
size_t cy_store_pending(const cy_store *s);

/* ---- disk space ----
 * Thread: the handle's owner. */

/* Whether a write or the COMMIT of the current batch (or of the last one,
 * if it failed) failed because the file system is full: SQLITE_FULL, or an
 * I/O error with ENOSPC or EDQUOT. Cleared by a successful commit. */
bool cy_store_no_space(const cy_store *s);
/* A rough, growing count of the bytes the writes so far have asked for
 * (variable data plus a fixed cost per row), never reset: the difference
 * between two readings estimates what was written in between, before
 * SQLite's own overhead (WAL copy, pages) which the caller allows for. */
uint64_t cy_store_bytes(const cy_store *s);
/* Free bytes an unprivileged process may use on the file system of the
 * store's file (statvfs f_bavail, in bytes) into *free_bytes. A system
 * call, no SQLite I/O: cheap enough for a timer and a few calls per pass.
 * Errors: CY_EINVAL (NULL argument, an in-memory store), -errno of statvfs. */
int cy_store_space(const cy_store *s, uint64_t *free_bytes);

/* Callbacks may call the write functions and cy_store_commit; not cy_store_load
 * (CY_EBUSY). Only sessions' rows are reported (rows without a session are not). */
int cy_store_load(cy_store *s, const cy_store_loader *l, void *ctx);

/* Insert or update the session row. */
int cy_store_session_put(cy_store *s, const cy_store_session *sess);
/* Delete the session with its subscriptions and inbound ids, in the
 * pending batch. Not its queued messages: the caller deletes each of its
 * rows by id (cy_store_msg_delete) in the same batch; a row it misses is
 * deleted at the next cy_store_load, as a row of no session. */
int cy_store_session_delete(cy_store *s, const char *client_id);

int cy_store_sub_put(cy_store *s, const char *client_id, const char *filter, size_t filter_len,
                     uint8_t opts, uint32_t sub_id);
int cy_store_sub_delete(cy_store *s, const char *client_id, const char *filter, size_t filter_len);

/* Append m to client_id's queue; sets m->id. */
int cy_store_msg_put(cy_store *s, const char *client_id, cy_store_msg *m);
/* Record that message id was sent with packet_id, or moved to state.
 * CY_ENOENT if there is no such message. Deletes of absent rows succeed. */
int cy_store_msg_update(cy_store *s, int64_t id, uint16_t packet_id, uint8_t state);
int cy_store_msg_delete(cy_store *s, int64_t id);

int cy_store_inq2_put(cy_store *s, const char *client_id, uint16_t packet_id);
int cy_store_inq2_delete(cy_store *s, const char *client_id, uint16_t packet_id);

/* Set topic's retained message (m's topic); cy_store_retain_delete clears it.
 * m->ts is stored and loaded back as is: shards replicate retained messages
 * and keep the one with the highest stamp (wall ms << 8 | origin shard), so
 * concurrent updates of one topic on two shards converge everywhere. */
int cy_store_retain_put(cy_store *s, const cy_store_msg *m);
int cy_store_retain_delete(cy_store *s, const char *topic, size_t topic_len);

/* Give up to max_pages free pages of the file back to the file system
 * (incremental vacuum; a page is 4 KiB), between batches only: with a
 * batch open it does nothing. Call it from a timer with a small max_pages
 * so that each call is short (about the cost of writing that many pages).
 * Returns the free pages left in the file (0 when there is nothing to
 * reclaim), or CY_ESTORE. */
int cy_store_reclaim(cy_store *s, unsigned max_pages);

/* ---- cross-shard delivery (see docs/architecture.md, "The bus") ----
 *
 * A frame forwarded to peer shard `peer` that carries acknowledged work (a
 * QoS 1/2 publish, a retained update) is kept in the outbox, in the same
 * transaction as the work that produced it, until the peer acknowledges its
 * sequence number; after a restart of either side it is sent again. Each
 * side also keeps, per peer, the last sequence number it assigned to a frame
 * for that peer and the last one it applied from that peer (so a frame sent
 * twice is applied once). peer is 0..63. */
int cy_store_outbox_put(cy_store *s, unsigned peer, uint64_t seq, const uint8_t *frame,
                        size_t len);
/* Delete peer's outbox frames with seq <= upto. */
int cy_store_outbox_ack(cy_store *s, unsigned peer, uint64_t upto);
/* Upsert the sequence state of peer. */
int cy_store_peer_put(cy_store *s, unsigned peer, uint64_t last_sent, uint64_t last_applied);

/* ---- presence (device/presence.c; docs/architecture.md, "Presence") ----
 *
 * One row per device this shard owns and has heard: its last heard and
 * last round trip (wall ms, 0 = never), the protocol of its last link, and
 * whether the last status event logged for it (cyan/status) said online.
 * The owner writes a row in the batch of each status event it logs, and
 * otherwise every presence_flush_interval for the devices whose times
 * moved (never per packet); a crash loses at most that interval of last
 * heard. At start, a row that says online names a device whose session
 * the restart ended: it gets an offline event (reason shard_restart).
 * Thread: the handle's owner. */

typedef struct cy_store_presence {
    const char *id;       /* device id, NUL-terminated */
    bool online;          /* the last status event logged for it said online */
    const char *protocol; /* of its last link ("mqtt5", "coaps", ...); "" or NULL: none */
    int64_t last_heard;   /* wall ms; 0 = never */
    int64_t last_rtt;     /* wall ms of its last answered call or read; 0 = never */
} cy_store_presence;

/* Insert or update p's row, in the current batch. Errors: CY_EINVAL (NULL
 * argument, a reader), CY_ESTORE. */
int cy_store_presence_put(cy_store *s, const cy_store_presence *p);
/* Delete device id's row (none: not an error), in the current batch. */
int cy_store_presence_delete(cy_store *s, const char *id);
/* fn for every row, by id; a non-zero return stops and is returned. The
 * pointers in *p are valid only during the call, and fn must not write to
 * the store nor load again (CY_EBUSY). Errors: CY_EINVAL, CY_ESTORE. */
int cy_store_presence_load(cy_store *s, int (*fn)(void *ctx, const cy_store_presence *p),
                           void *ctx);

/* ---- the event log (docs/architecture.md, "Events and webhooks") ----
 *
 * Every event that enters the node on this shard (a publish on
 * devices/<id>/events/... or events/...) is appended here in the same batch
 * as the rest of the publish's work, so it is on disk before the PUBACK.
 * Its sequence number seq is max(last + 1, its time in microseconds):
 * unique and increasing per shard even when the wall clock steps back,
 * across restarts too (the newest event is never trimmed, and the open
 * reads it back). Consumers (webhooks, resuming event streams) read the
 * log by seq; it is trimmed once they have all passed (cy_store_events_trim).
 *
 * Pointers in a cy_store_event passed to a callback are valid only during
 * the call. Thread: the handle's owner. */

typedef struct cy_store_event {
    uint64_t seq;
    int64_t at; /* wall ms when it was logged */
    const char *topic;
    size_t topic_len;
    const uint8_t *payload;
    size_t payload_len;
} cy_store_event;

/* Append an event logged at wall ms `at`; *seq_out (may be NULL) gets its
 * number. Errors: CY_EINVAL (NULL topic, a reader), CY_ERANGE (`at` in
 * microseconds, or the number, would reach 2^63: refused before the batch,
 * nothing logged), CY_ESTORE. */
int cy_store_event_append(cy_store *s, int64_t at, const char *topic, size_t topic_len,
                          const uint8_t *payload, size_t payload_len, uint64_t *seq_out);
/* A number for an event that is not logged (a QoS 0 event while the disk
 * is full), from the same sequence, so it is unique among this run's; 0
 * if the sequence is spent. Not kept: after a restart the log's last
 * number is the base again, so an unlogged number may come again if the
 * clock stepped back meanwhile. */
uint64_t cy_store_event_number(cy_store *s, int64_t at);
/* The last number given (0: the log was always empty). */
uint64_t cy_store_event_last(const cy_store *s);
/* fn for each event with seq > after, in order, at most limit (0: 1). */
int cy_store_events_read(cy_store *s, uint64_t after, unsigned limit,
                         int (*fn)(void *ctx, const cy_store_event *e), void *ctx);
/* fn for each of the `limit` newest events, newest first. */
int cy_store_events_tail(cy_store *s, unsigned limit,
                         int (*fn)(void *ctx, const cy_store_event *e), void *ctx);
/* fn for the event seq; CY_ENOENT if the log does not hold it. */
int cy_store_event_get(cy_store *s, uint64_t seq, int (*fn)(void *ctx, const cy_store_event *e),
                       void *ctx);
/* The oldest seq held and how many events (either may be NULL), and how
 * many have seq > after (count_after may be NULL). */
int cy_store_events_span(cy_store *s, uint64_t after, uint64_t *first, uint64_t *count,
                         uint64_t *count_after);
/* Delete up to max_rows of the oldest events with seq < below (what every
 * consumer has passed) that were logged before at_before (wall ms) or are
 * not among the `keep` newest; never the newest. Returns how many went, or
 * CY_ESTORE. */
int cy_store_events_trim(cy_store *s, uint64_t below, int64_t at_before, uint64_t keep,
                         unsigned max_rows);

/* ---- webhook delivery state (webhooks/webhooks.h says what it means) ----
 * Per webhook: hook_state (its cursor in the log and settled counters,
 * plus `shown`, the JSON of its figures for readers in other processes),
 * hook_retry (events waiting to be tried again, each with a copy of the
 * event) and hook_dead (the dead-letter list, the same columns). `trail`
 * is a JSON array of attempts. Thread: the handle's owner. */

typedef struct cy_store_hook_state {
    const char *hook; /* webhook id */
    uint64_t cursor;  /* every event <= cursor is settled for this webhook */
    uint64_t matched, delivered, dead; /* settled counters */
    const char *shown; /* JSON text */
} cy_store_hook_state;

typedef struct cy_store_hook_row {
    const char *hook;
    uint64_t seq;
    int64_t at; /* the event's */
    const char *topic;
    size_t topic_len;
    const uint8_t *payload;
    size_t payload_len;
    unsigned attempts;
    int64_t next_at; /* retry: wall ms of the next attempt; dead: wall ms it died */
    const char *trail; /* JSON array text */
} cy_store_hook_row;

int cy_store_hook_state_put(cy_store *s, const cy_store_hook_state *h);
int cy_store_hook_states(cy_store *s, int (*fn)(void *ctx, const cy_store_hook_state *h),
                         void *ctx);
int cy_store_hook_retry_put(cy_store *s, const cy_store_hook_row *r);
int cy_store_hook_retry_delete(cy_store *s, const char *hook, uint64_t seq);
/* Every retry row, by webhook then seq. */
int cy_store_hook_retries(cy_store *s, int (*fn)(void *ctx, const cy_store_hook_row *r),
                          void *ctx);
int cy_store_hook_dead_put(cy_store *s, const cy_store_hook_row *r);
int cy_store_hook_dead_delete(cy_store *s, const char *hook, uint64_t seq);
/* hook's dead letters with seq > after, in order, at most limit. */
int cy_store_hook_dead_list(cy_store *s, const char *hook, uint64_t after, unsigned limit,
                            int (*fn)(void *ctx, const cy_store_hook_row *r), void *ctx);
/* CY_ENOENT when there is none. */
int cy_store_hook_dead_get(cy_store *s, const char *hook, uint64_t seq,
                           int (*fn)(void *ctx, const cy_store_hook_row *r), void *ctx);
/* CY_ENOENT when there is none. */
int cy_store_hook_retry_get(cy_store *s, const char *hook, uint64_t seq,
                            int (*fn)(void *ctx, const cy_store_hook_row *r), void *ctx);
/* (webhook, seq) of every dead letter with seq > after. */
int cy_store_hook_dead_after(cy_store *s, uint64_t after,
                             int (*fn)(void *ctx, const char *hook, uint64_t seq), void *ctx);
/* Delete a webhook's state, retries and dead letters. */
int cy_store_hook_forget(cy_store *s, const char *hook);

/* Open another shard's file to read its log and webhook state (the API
 * answers for every shard from any shard). Only the read calls work on it.
 * CY_ENOENT: no such file, or one without a log yet (empty, or an older
 * schema); CY_ESTORE: not a database, corrupt, or unreadable. Close with
 * cy_store_close. Each read is its own snapshot. */
int cy_store_open_reader(const char *path, cy_store **out);

#endif
