/* acl: the operator's access control list, a file in Mosquitto's acl_file
 * format (setting acl_file; docs/operations.md, "Access control").
 *
 *   # a comment (a line whose first non-blank is '#'); blank lines are skipped
 *   topic [read|write|readwrite|deny] <topic>     before any user line:
 *                                                 for anonymous clients
 *   user <username>                               the topic lines after it,
 *   topic [read|write|readwrite|deny] <topic>     up to the next user line,
 *                                                 are that user's
 *   pattern [read|write|readwrite|deny] <topic>   for every client, wherever
 *                                                 it stands; a topic level
 *                                                 that is exactly %c is the
 *                                                 client id, %u the username
 *
 * The access word may be left out (readwrite), unless the topic holds a
 * space. <topic> is a topic filter (+ and # as in a subscription). Which
 * rules apply to a client: an anonymous one (no username) gets the lines
 * before the first user line; one with a username gets the lines of its
 * user blocks (blocks of the same name add up); every client gets the
 * pattern lines, except that a pattern with %u never matches an anonymous
 * client, and a pattern with %c or %u never matches a client whose id or
 * username is empty. A client id or username holding '+' or '#' gets no
 * grant from any pattern (a "+" client id must not turn devices/%c/# into
 * devices/+/#), as in Mosquitto.
 *
 * A decision, for one client, one topic and one access:
 *   1. a deny rule that applies and matches: refused, whatever else says
 *      (deny overrides every grant, of a user block or of a pattern);
 *   2. a rule that grants the access and matches: allowed;
 *   3. otherwise refused (default deny, as Mosquitto).
 * Matching is MQTT's: + is one level, # the rest (and the parent level:
 * a/# matches a); a filter whose first level is a wildcard matches no topic
 * that starts with '$', so a rule must name a $ topic's first level itself
 * ("$SYS/#"). For CY_ACL_SUBSCRIBE the topic is a filter, which must be
 * covered by a read rule: every topic the filter can match, the rule
 * matches too (a/# covers a/+/b; + covers no '#'; only # covers #), and a
 * deny rule refuses it when it covers the filter too. A deny rule that
 * covers only part of a filter (deny a/secret, filter a/#) leaves the
 * subscription granted: the messages it would carry are checked one by one
 * at delivery (CY_ACL_READ), as Mosquitto checks every message.
 *
 * The file is parsed once into a compiled list (a copy of the text, each
 * rule's levels as offsets into it, rules grouped per owner, denies first):
 * a check allocates nothing and reads each rule's levels against the topic
 * until the first that differs. Bounded: CY_ACL_MAX_FILE bytes,
 * CY_ACL_MAX_LINE bytes per line, CY_ACL_MAX_RULES rules.
 *
 * Ownership: cy_acl_load and cy_acl_parse return a new ACL, which the caller
 * frees with cy_acl_free; it holds no pointer into the caller's memory.
 * Every argument of cy_acl_check is borrowed for the call.
 * Errors: NULL, with "FILE:LINE: what" (or "FILE: what" for the file as a
 * whole: cannot read it, too large, out of memory) written to err.
 * Thread: any; an ACL is immutable once made, so threads may share one.
 * In cyan a shard's device layer owns its ACL, on the shard's loop thread.
 */
#ifndef CY_ACL_H
#define CY_ACL_H

#include <stdbool.h>
#include <stddef.h>

#define CY_ACL_MAX_FILE (1024 * 1024) /* bytes of an ACL file */
#define CY_ACL_MAX_LINE 4096          /* bytes of one line, its end of line excluded */
#define CY_ACL_MAX_RULES 65536        /* topic and pattern lines */

/* Accesses to check. */
enum {
    CY_ACL_READ = 1,      /* a message on a topic may be delivered to the client */
    CY_ACL_WRITE = 2,     /* the client may publish on a topic */
    CY_ACL_SUBSCRIBE = 4, /* the client may subscribe to a filter */
};

typedef struct cy_acl cy_acl;

/* Read and compile the ACL file at path. */
cy_acl *cy_acl_load(const char *path, char *err, size_t errlen);
/* Compile len bytes of ACL text (need not be NUL-terminated; a NUL byte is
 * an error); name is the file name its errors give. */
cy_acl *cy_acl_parse(const char *name, const char *text, size_t len, char *err, size_t errlen);
/* Safe on NULL. */
void cy_acl_free(cy_acl *a);

/* May the client (client_id, and username, NULL for an anonymous client)
 * have access (one CY_ACL_*) to topic_or_filter (a valid topic name, or a
 * valid filter for CY_ACL_SUBSCRIBE; a shared subscription's filter
 * without its $share/<group>/)? An ACL of NULL allows everything (no
 * acl_file). No allocation; cost: the rules of the client's user block and
 * the patterns, each compared until its first differing level. */
bool cy_acl_check(const cy_acl *a, const char *client_id, size_t client_id_len,
                  const char *username, size_t username_len, const char *topic_or_filter,
                  size_t len, int access);

/* Whether any deny rule exists: then a subscription granted may still carry
 * a message the client may not read, and deliveries are checked one by one. */
bool cy_acl_has_deny(const cy_acl *a);
/* How many rules (topic and pattern lines) and user blocks it holds. */
size_t cy_acl_rule_count(const cy_acl *a);
size_t cy_acl_user_count(const cy_acl *a);

#endif
