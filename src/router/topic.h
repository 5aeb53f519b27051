/* topic: MQTT topic names, topic filters, and the trees that match them.
 *
 * Rules (MQTT 5 4.7, the same in 3.1.1):
 *   - levels are separated by '/'; empty levels are allowed ("a//b", "/a").
 *   - '+' matches exactly one level and must fill its whole level:
 *     "a/+/c" matches "a/b/c" and "a//c", not "a/b/x/c". "a/b+" is invalid.
 *   - '#' matches the parent level and any number of levels below it, and
 *     must be the last character, alone in its level: "a/#" matches "a",
 *     "a/b" and "a/b/c"; "a#" and "a/#/b" are invalid.
 *   - a topic name (what PUBLISH carries) has no wildcards.
 *   - a filter that starts with a wildcard does not match a topic that
 *     starts with '$': "#" and "+/x" do not match "$SYS/x"; "$SYS/#" does.
 *   - "$share/{group}/{filter}" is a shared subscription: the group name is
 *     non-empty and holds no '/', '+' or '#'; the filter after it is any
 *     valid filter. Each message goes to one member of each group.
 *   - names and filters are 1 to 65535 bytes of UTF-8 (the codec checks the
 *     UTF-8; these functions check the structure).
 *
 * Two trees, both tries keyed by topic level:
 *   cy_topic_tree holds subscriptions (owner, options, subscription id) and
 *   answers "who is subscribed to this topic".
 *   cy_retain holds one value per topic name and answers "which retained
 *   values match this filter"; it also keeps what its values cost, in all
 *   and per owner, so a caller can hold them to limits (cy_retain_admit).
 * Owners and values are opaque void pointers the caller manages; the trees
 * never dereference them.
 *
 * Errors: CY_ENOMEM, CY_EINVAL (an invalid filter or name), CY_ENOENT,
 * CY_EQUOTA (a retained limit).
 * Thread: a tree belongs to one loop thread.
 */
#ifndef CY_TOPIC_H
#define CY_TOPIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

bool cy_topic_valid_name(const char *name, size_t len);

/* Event names starting with this are the server's own (status events):
 * nothing but cyan itself may publish one (device.h, cy_device_admit). */
#define CY_TOPIC_RESERVED_EVENT "cyan/"
/* Whether t[0..len) is an event whose name starts with
 * CY_TOPIC_RESERVED_EVENT: events/cyan/... or devices/<any id>/events/cyan/... */
bool cy_topic_reserved_event(const char *t, size_t len);
/* Valid filter, including "$share/group/filter". */
bool cy_topic_valid_filter(const char *filter, size_t len);
/* If filter is "$share/group/f", set group and group_len, f and f_len to
 * the parts and return true; otherwise return false. Does not validate. */
bool cy_topic_split_shared(const char *filter, size_t len, const char **group, size_t *group_len,
                           const char **f, size_t *f_len);
/* Does the (non-shared, valid) filter match the (valid) topic name? */
bool cy_topic_matches(const char *filter, size_t flen, const char *name, size_t nlen);

/* ---- subscription tree ---- */

typedef struct cy_topic_tree cy_topic_tree;

/* Subscription options, packed as in the SUBSCRIBE options byte: bits 0-1
 * QoS, bit 2 no-local, bit 3 retain-as-published, bits 4-5 retain handling. */
#define CY_SUBOPT_QOS(o) ((o)&3u)
#define CY_SUBOPT_NO_LOCAL 0x04u
#define CY_SUBOPT_RAP 0x08u
#define CY_SUBOPT_RH(o) (((o) >> 4) & 3u)
/* cyan's own bit (MQTT 5 reserves bits 6-7 and the codec refuses them, so
 * no client sets it): the subscriber's session is kept in the store, and a
 * message for it must be too. A match has it when any of the subscriber's
 * matching subscriptions does (cy_match.durable). */
#define CY_SUBOPT_DURABLE 0x40u

/* Called once per matching subscription. For a shared group it is called
 * once per group, with the member chosen for this message; `shared` is
 * true then. */
typedef void (*cy_topic_match_fn)(void *ctx, void *owner, uint8_t opts, uint32_t sub_id,
                                  bool shared);
/* Asked while choosing a shared-group member: may this owner take the
 * message now (e.g. is it online)? Members are tried round robin from the
 * one after the last chosen; if none accepts, the next in turn is chosen
 * anyway. May be NULL (every member accepts). */
typedef bool (*cy_topic_accept_fn)(void *ctx, void *owner);

/* The general form of matching, for routing across shards. */
typedef struct cy_topic_matcher {
    /* Every matching plain subscription. */
    void (*on_sub)(void *ctx, void *owner, uint8_t opts, uint32_t sub_id);
    /* The member chosen for one matching shared group; filter is the group's
     * whole "$share/group/filter" (borrowed for the call). */
    void (*on_shared)(void *ctx, void *owner, uint8_t opts, uint32_t sub_id, const char *filter,
                      size_t len);
    /* Grade a shared-group member: 2 take it, 1 only if no member grades 2,
     * 0 never. Members are tried round robin from the one after the last
     * chosen; a group whose members all grade 0 is skipped. NULL: all 2. */
    int (*grade)(void *ctx, void *owner);
    /* Consider this shared group at all? NULL: every group. */
    bool (*want_group)(void *ctx, const char *filter, size_t len);
    void *ctx;
} cy_topic_matcher;

int cy_topic_tree_new(cy_topic_tree **out);
/* Frees the tree; owners are not touched. Safe on NULL. */
void cy_topic_tree_free(cy_topic_tree *t);
/* Add owner's subscription to filter (shared filters included), or replace
 * its options and id if owner already has it; *existed (may be NULL) says
 * which. The filter bytes are copied. Errors: CY_EINVAL, CY_ENOMEM. */
int cy_topic_tree_add(cy_topic_tree *t, const char *filter, size_t len, void *owner, uint8_t opts,
                      uint32_t sub_id, bool *existed);
/* owner's options for filter (>= 0), or CY_ENOENT (none), CY_EINVAL. */
int cy_topic_tree_opts(const cy_topic_tree *t, const char *filter, size_t len, void *owner);
/* Remove owner's subscription to filter. Errors: CY_ENOENT. Empty nodes are
 * pruned. */
int cy_topic_tree_remove(cy_topic_tree *t, const char *filter, size_t len, void *owner);
/* Call fn for every subscription matching topic name. The callback must not
 * modify the tree. */
void cy_topic_tree_match(cy_topic_tree *t, const char *name, size_t len, cy_topic_match_fn fn,
                         cy_topic_accept_fn accept, void *ctx);
/* Match with a cy_topic_matcher (borrowed). Callbacks must not modify the tree. */
void cy_topic_tree_match_with(cy_topic_tree *t, const char *name, size_t len,
                              const cy_topic_matcher *m);
/* Number of subscriptions held (each shared member counts once). */
size_t cy_topic_tree_count(const cy_topic_tree *t);

/* ---- retained values ---- */

typedef struct cy_retain cy_retain;

int cy_retain_new(cy_retain **out);
/* Frees the tree, calling release(value) for each value held (release may
 * be NULL). Safe on NULL. */
void cy_retain_free(cy_retain *r, void (*release)(void *value));
/* Set the value of topic name (copied); value NULL deletes it. The value it
 * replaces (or NULL) is returned in *old for the caller to release.
 * Errors: CY_EINVAL (not a valid name), CY_ENOMEM (then nothing changed). */
int cy_retain_set(cy_retain *r, const char *name, size_t len, void *value, void **old);
void *cy_retain_get(cy_retain *r, const char *name, size_t len);
/* Call fn for each value whose topic matches the (non-shared) filter, with
 * the '$' rule applied. The callback must not modify the tree. */
void cy_retain_match(cy_retain *r, const char *filter, size_t len,
                     void (*fn)(void *ctx, const char *name, size_t len, void *value), void *ctx);
/* Values held, charged or not. */
size_t cy_retain_count(const cy_retain *r);

/* ---- retained values: accounting and limits ----
 *
 * A value may be charged: it costs `bytes` (> 0; what the caller counts,
 * e.g. topic + payload + properties) and may belong to an owner (the client
 * id that set it, copied into the tree; empty = nobody known, e.g. a copy
 * replicated from another shard). The tree keeps the totals of charged
 * values and, per owner, that owner's. A value set with bytes 0 (or with
 * cy_retain_set) is held but not charged ($SYS topics).
 *
 * cy_retain_admit answers "may this owner set this topic to a value of this
 * many bytes?" against limits: a new topic adds one value and its bytes; a
 * replacement adds only the difference in bytes (and one value to the new
 * owner when the topic was someone else's); a limit is only enforced on
 * what grows, so a replacement that shrinks, and clearing (bytes 0), are
 * always admitted, even above a limit that was lowered. */
typedef struct cy_retain_usage {
    uint64_t count; /* charged values */
    uint64_t bytes; /* their bytes */
} cy_retain_usage;

typedef struct cy_retain_limits {
    uint64_t count, bytes;             /* the whole tree; 0 = no limit */
    uint64_t owner_count, owner_bytes; /* each owner; 0 = no limit */
} cy_retain_limits;

/* Which limit cy_retain_admit found in the way. */
enum {
    CY_RETAIN_OVER_COUNT = 1,
    CY_RETAIN_OVER_BYTES,
    CY_RETAIN_OVER_OWNER_COUNT,
    CY_RETAIN_OVER_OWNER_BYTES,
};

/* cy_retain_set, charging value `bytes` to owner[0..owner_len) (copied;
 * owner may be NULL when owner_len is 0). The value replaced (or deleted)
 * is uncharged from its own owner. Limits are not checked here (see
 * cy_retain_admit): a replica must take what its origin admitted.
 * Errors: CY_EINVAL, CY_ENOMEM (then nothing changed). */
int cy_retain_set_charged(cy_retain *r, const char *name, size_t len, void *value, uint64_t bytes,
                          const char *owner, size_t owner_len, void **old);
/* 0 if setting name to a value of `bytes` charged to owner stays within
 * limits (borrowed; NULL = none), else CY_EQUOTA with *which (may be NULL)
 * set to a CY_RETAIN_OVER_* value. bytes 0 (clearing) is always 0. */
int cy_retain_admit(const cy_retain *r, const cy_retain_limits *limits, const char *name,
                    size_t len, uint64_t bytes, const char *owner, size_t owner_len, int *which);
/* Totals of the charged values, and of one owner's (zero if it has none). */
cy_retain_usage cy_retain_usage_total(const cy_retain *r);
cy_retain_usage cy_retain_usage_of(const cy_retain *r, const char *owner, size_t owner_len);

#endif
