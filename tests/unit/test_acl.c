/* Unit tests of src/device/acl.c, the operator's ACL in Mosquitto's
 * acl_file format: parsing (good files in their odd shapes; every kind of
 * bad line, named by its line number; the limits on line length, rule count
 * and file size; reading files), matching (the anonymous block, user
 * blocks, patterns with %c and %u as whole levels only, deny over every
 * grant, access words, + and # including their edges and $ topics), the
 * subscribe check (a read rule must cover the filter; a deny refuses what
 * it covers and leaves a partial overlap to the per-message read check),
 * client ids and usernames that hold wildcards, and every allocation
 * failure of the parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/cy_alloc.h"
#include "device/acl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char err[512];

static cy_acl *parse(const char *text)
{
    return cy_acl_parse("acl", text, strlen(text), err, sizeof(err));
}

static cy_acl *parse_ok(const char *text)
{
    cy_acl *a = parse(text);
    if (!a) fail_msg("parse failed: %s", err);
    return a;
}

/* The error of a text that must not parse. */
static const char *parse_err(const char *text)
{
    cy_acl *a = parse(text);
    if (a) {
        cy_acl_free(a);
        fail_msg("parsed, but should not: %s", text);
    }
    return err;
}

static void assert_err(const char *text, const char *prefix, const char *part)
{
    const char *e = parse_err(text);
    if (strncmp(e, prefix, strlen(prefix)) || !strstr(e, part))
        fail_msg("error '%s' for %s: want prefix '%s' and '%s'", e, text, prefix, part);
}

/* Check as the client (cid, user: NULL for anonymous). */
static bool can(const cy_acl *a, const char *cid, const char *user, const char *topic, int access)
{
    return cy_acl_check(a, cid, cid ? strlen(cid) : 0, user, user ? strlen(user) : 0, topic,
                        strlen(topic), access);
}

#define R CY_ACL_READ
#define W CY_ACL_WRITE
#define S CY_ACL_SUBSCRIBE

/* ---- parsing ---- */

static void test_parse_good(void **state)
{
    (void)state;
    cy_acl *a = parse_ok("\xEF\xBB\xBF# an ACL\n"
                         "\n"
                         "   # an indented comment\n"
                         "topic read public/#\r\n"
                         "topic\tanon/+\n"
                         "\n"
                         "user alice\n"
                         "topic readwrite alice/#   \n"
                         "topic write a topic with spaces\n"
                         "user bob smith\n"
                         "topic deny secret/#\n"
                         "topic read #\n"
                         "user alice\n"
                         "topic read shared/x\n"
                         "user carol\n"
                         "pattern readwrite devices/%c/#\n"
                         "pattern read users/%u/inbox\n"
                         "topic read carol/x"); /* no final newline */
    assert_int_equal(cy_acl_rule_count(a), 10);
    assert_int_equal(cy_acl_user_count(a), 3);
    assert_true(cy_acl_has_deny(a));

    /* anonymous: the lines before the first user line */
    assert_true(can(a, "c1", NULL, "public/news", R));
    assert_false(can(a, "c1", NULL, "public/news", W));
    assert_true(can(a, "c1", NULL, "anon/x", W));
    assert_false(can(a, "c1", NULL, "alice/x", R));
    /* alice: her two blocks add up; not the anonymous lines */
    assert_true(can(a, "c2", "alice", "alice/a/b", W));
    assert_true(can(a, "c2", "alice", "shared/x", R));
    assert_true(can(a, "c2", "alice", "a topic with spaces", W));
    assert_false(can(a, "c2", "alice", "a topic with spaces", R));
    assert_false(can(a, "c2", "alice", "public/news", R));
    /* a username with a space */
    assert_true(can(a, "c3", "bob smith", "anything", R));
    assert_false(can(a, "c3", "bob smith", "secret/x", R));
    assert_false(can(a, "c3", "bob", "anything", R));
    /* patterns stand for everybody wherever they are written */
    assert_true(can(a, "c4", "carol", "carol/x", R));
    assert_true(can(a, "c4", "carol", "devices/c4/temp", W));
    assert_true(can(a, "c9", NULL, "devices/c9/temp", W));
    assert_true(can(a, "c2", "alice", "users/alice/inbox", R));
    cy_acl_free(a);

    /* nothing at all, or only comments: deny everything */
    a = parse_ok("");
    assert_int_equal(cy_acl_rule_count(a), 0);
    assert_false(can(a, "c", NULL, "a", R));
    assert_false(can(a, "c", "u", "a", W));
    assert_false(can(a, "c", "u", "#", S));
    cy_acl_free(a);
    a = parse_ok("# nothing\n\n  \t \n#topic read #\n");
    assert_false(can(a, "c", NULL, "topic", R));
    assert_false(cy_acl_has_deny(a));
    cy_acl_free(a);

    /* a user line and nothing after it: no rules of its own (no block) */
    a = parse_ok("user lonely\npattern read p/%u\n");
    assert_int_equal(cy_acl_user_count(a), 0);
    assert_true(can(a, "c", "lonely", "p/lonely", R));
    assert_false(can(a, "c", "lonely", "p/other", R));
    cy_acl_free(a);

    /* NULL error buffer, NULL name */
    a = cy_acl_parse(NULL, "topic a", 7, NULL, 0);
    assert_non_null(a);
    cy_acl_free(a);
    assert_null(cy_acl_parse(NULL, "topix a", 7, NULL, 0));
    assert_null(cy_acl_parse("x", NULL, 5, err, sizeof(err)));
    a = cy_acl_parse("x", NULL, 0, err, sizeof(err));
    assert_non_null(a);
    cy_acl_free(a);
    cy_acl_free(NULL);
}

static void test_parse_errors(void **state)
{
    (void)state;
    assert_err("topic read a\n\ntopc read b\n", "acl:3: ", "unknown keyword 'topc'");
    assert_err("TOPIC read a\n", "acl:1: ", "unknown keyword 'TOPIC'");
    assert_err("  # ok\nreadwrite a\n", "acl:2: ", "unknown keyword 'readwrite'");
    assert_err("topic\n", "acl:1: ", "topic: no topic");
    assert_err("pattern   \t\n", "acl:1: ", "pattern: no topic");
    assert_err("topic read\n", "acl:1: ", "'read' with no topic after it");
    assert_err("topic deny   \r\n", "acl:1: ", "'deny' with no topic after it");
    assert_err("topic reed a/b\n", "acl:1: ", "unknown access 'reed'");
    assert_err("topic a b\n", "acl:1: ", "unknown access 'a'");
    assert_err("\n\n\n\ntopic read a/#/b\n", "acl:5: ", "'#' must be the last level");
    assert_err("topic read a/b#\n", "acl:1: ", "whole topic level");
    assert_err("topic read a+/b\n", "acl:1: ", "whole topic level");
    assert_err("pattern read %c/#x\n", "acl:1: ", "whole topic level");
    assert_err("topic read a # a comment here is part of the topic\n", "acl:1: ", "whole topic");
    assert_err("user\n", "acl:1: ", "user: no username");
    assert_err("user \t \n", "acl:1: ", "user: no username");
    assert_err("userx\n", "acl:1: ", "unknown keyword 'userx'");
    /* a control byte in the keyword is shown as '?' */
    assert_err("to\x01pic a\n", "acl:1: ", "unknown keyword 'to?pic'");
    /* a NUL byte anywhere in a line */
    char nul[] = "topic read a\ntopic read b\0c\n";
    assert_null(cy_acl_parse("acl", nul, sizeof(nul) - 1, err, sizeof(err)));
    assert_string_equal(err, "acl:2: a NUL byte");
    /* a long keyword is cut in the message */
    char longkw[200];
    memset(longkw, 'k', sizeof(longkw) - 1);
    longkw[sizeof(longkw) - 1] = '\0';
    const char *e = parse_err(longkw);
    assert_non_null(strstr(e, "kkk...'"));
    assert_true(strlen(e) < 200);
    /* a small error buffer is cut, never overrun */
    char small[12];
    memset(small, 'Z', sizeof(small));
    assert_null(cy_acl_parse("acl", "bad line", 8, small, 8));
    assert_int_equal(strlen(small), 7);
    assert_int_equal(small[8], 'Z');
}

static void test_parse_limits(void **state)
{
    (void)state;
    /* line length: CY_ACL_MAX_LINE bytes taken, one more refused */
    size_t n = CY_ACL_MAX_LINE + 64;
    char *text = malloc(n + 32);
    assert_non_null(text);
    strcpy(text, "topic read\n");
    size_t pre = strlen(text);
    memcpy(text + pre, "topic read ", 11);
    memset(text + pre + 11, 'a', CY_ACL_MAX_LINE - 11);
    text[pre + CY_ACL_MAX_LINE] = '\0';
    /* line 1 is bad; fix it to see line 2 judged on its length */
    memcpy(text, "topic ok  ", 10);
    cy_acl *a = parse_ok(text);
    cy_acl_free(a);
    text[pre + CY_ACL_MAX_LINE] = 'a';
    text[pre + CY_ACL_MAX_LINE + 1] = '\0';
    assert_err(text, "acl:2: ", "line longer than 4096 bytes");
    /* a long line of blanks is still a long line */
    memset(text, ' ', CY_ACL_MAX_LINE + 1);
    text[CY_ACL_MAX_LINE + 1] = '\0';
    assert_err(text, "acl:1: ", "line longer");
    free(text);

    /* rule count */
    size_t cap = (size_t)(CY_ACL_MAX_RULES + 1) * 10 + 16;
    text = malloc(cap);
    assert_non_null(text);
    size_t len = 0;
    for (int i = 0; i < CY_ACL_MAX_RULES; i++)
        len += (size_t)sprintf(text + len, "topic %d\n", i % 10);
    a = cy_acl_parse("acl", text, len, err, sizeof(err));
    assert_non_null(a);
    assert_int_equal(cy_acl_rule_count(a), CY_ACL_MAX_RULES);
    cy_acl_free(a);
    len += (size_t)sprintf(text + len, "# fine\ntopic x\n");
    assert_null(cy_acl_parse("acl", text, len, err, sizeof(err)));
    char want[64];
    snprintf(want, sizeof(want), "acl:%d: more than %d rules", CY_ACL_MAX_RULES + 2,
             CY_ACL_MAX_RULES);
    assert_string_equal(err, want);
    free(text);

    /* file size */
    text = malloc(CY_ACL_MAX_FILE + 1);
    assert_non_null(text);
    memset(text, '\n', CY_ACL_MAX_FILE + 1);
    a = cy_acl_parse("acl", text, CY_ACL_MAX_FILE, err, sizeof(err));
    assert_non_null(a);
    cy_acl_free(a);
    assert_null(cy_acl_parse("acl", text, CY_ACL_MAX_FILE + 1, err, sizeof(err)));
    assert_string_equal(err, "acl: larger than 1048576 bytes");
    free(text);
}

static void test_user_lines_only(void **state)
{
    (void)state;
    /* user lines make no block until a topic line follows: a file of user
     * lines costs no more than its text */
    size_t cap = 80000 * 13, len = 0; /* more users than rules, within CY_ACL_MAX_FILE */
    char *text = malloc(cap);
    assert_non_null(text);
    for (int i = 0; i < 80000; i++)
        len += (size_t)sprintf(text + len, "user u%d\n", i);
    assert_true(len <= CY_ACL_MAX_FILE);
    cy_acl *a = cy_acl_parse("acl", text, len, err, sizeof(err));
    assert_non_null(a);
    assert_int_equal(cy_acl_user_count(a), 0);
    assert_int_equal(cy_acl_rule_count(a), 0);
    cy_acl_free(a);
    /* the last one named before topic lines owns them; a pattern between
     * does not make the block */
    a = parse_ok("user a\nuser b\npattern read p\ntopic read t\nuser c\n");
    assert_int_equal(cy_acl_user_count(a), 1);
    assert_true(can(a, "c", "b", "t", R));
    assert_false(can(a, "c", "a", "t", R));
    assert_false(can(a, "c", NULL, "t", R));
    assert_true(can(a, "c", "a", "p", R));
    cy_acl_free(a);
    free(text);
}

static void test_load(void **state)
{
    (void)state;
    char dir[] = "/tmp/cyan-acl-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/acl", dir);

    assert_null(cy_acl_load(path, err, sizeof(err)));
    assert_non_null(strstr(err, "No such file"));
    assert_int_equal(strncmp(err, path, strlen(path)), 0);
    assert_null(cy_acl_load("", err, sizeof(err)));
    assert_null(cy_acl_load(NULL, err, sizeof(err)));
    assert_null(cy_acl_load(dir, err, sizeof(err)));
    assert_non_null(strstr(err, "not a regular file"));

    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("user u\ntopic read a/#\ntopic wrte b\n", f);
    fclose(f);
    assert_null(cy_acl_load(path, err, sizeof(err)));
    char want[200];
    snprintf(want, sizeof(want), "%s:3: unknown access 'wrte'", path);
    assert_int_equal(strncmp(err, want, strlen(want)), 0);

    /* exactly the limit (grown past the first read buffer), and one byte more */
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("topic read a/#\n", f);
    for (long i = 15; i < CY_ACL_MAX_FILE; i++)
        fputc(i % 80 ? ' ' : '\n', f);
    fclose(f);
    cy_acl *a = cy_acl_load(path, err, sizeof(err));
    if (!a) fail_msg("%s", err);
    assert_true(can(a, "c", NULL, "a/b", R));
    cy_acl_free(a);
    f = fopen(path, "a");
    fputc('\n', f);
    fclose(f);
    assert_null(cy_acl_load(path, err, sizeof(err)));
    assert_non_null(strstr(err, "larger than 1048576 bytes"));

    /* unreadable (unless we are root, who reads anything) */
    f = fopen(path, "w");
    fputs("topic a\n", f);
    fclose(f);
    chmod(path, 0);
    a = cy_acl_load(path, err, sizeof(err));
    if (geteuid() != 0) {
        assert_null(a);
        assert_non_null(strstr(err, "Permission denied"));
    }
    cy_acl_free(a);
    unlink(path);
    rmdir(dir);
}

/* ---- matching ---- */

static void test_anonymous_and_users(void **state)
{
    (void)state;
    cy_acl *a = parse_ok("topic read pub/#\n"
                         "user dev1\n"
                         "topic readwrite devices/dev1/#\n"
                         "user dev2\n"
                         "topic write devices/dev2/+\n");
    /* anonymous: only the lines before any user line */
    assert_true(can(a, "x", NULL, "pub/a", R));
    assert_false(can(a, "x", NULL, "devices/dev1/a", R));
    /* a user: only its block, not the anonymous lines */
    assert_false(can(a, "dev1", "dev1", "pub/a", R));
    assert_true(can(a, "dev1", "dev1", "devices/dev1/a/b", W));
    assert_false(can(a, "dev1", "dev1", "devices/dev2/a", W));
    assert_true(can(a, "dev2", "dev2", "devices/dev2/a", W));
    assert_false(can(a, "dev2", "dev2", "devices/dev2/a", R));
    assert_false(can(a, "dev2", "dev2", "devices/dev2/a/b", W));
    /* a user the file does not name: nothing (no pattern here) */
    assert_false(can(a, "x", "dev3", "pub/a", R));
    /* the client id does not stand for the username */
    assert_false(can(a, "dev1", NULL, "devices/dev1/a", R));
    assert_false(can(a, "dev1", "devx", "devices/dev1/a", R));
    /* usernames are compared as bytes */
    assert_false(can(a, "dev1", "DEV1", "devices/dev1/a", R));
    assert_false(can(a, "dev1", "dev1 ", "devices/dev1/a", R));
    /* an empty username is a username, not anonymous */
    assert_false(can(a, "x", "", "pub/a", R));
    /* an access that is no CY_ACL_* is refused */
    assert_false(can(a, "x", NULL, "pub/a", 0));
    assert_false(can(a, "x", NULL, "pub/a", R | W));
    /* no ACL: everything */
    assert_true(can(NULL, "x", NULL, "anything", W));
    assert_true(cy_acl_check(NULL, NULL, 0, NULL, 0, NULL, 0, R));
    cy_acl_free(a);
}

static void test_patterns(void **state)
{
    (void)state;
    cy_acl *a = parse_ok("pattern readwrite devices/%c/#\n"
                         "pattern read inbox/%u\n"
                         "pattern write both/%c/%u\n"
                         "pattern read lit/a%c/%cx/%%c\n"
                         "topic read top/%c\n");
    assert_true(can(a, "d1", NULL, "devices/d1/t", W));
    assert_true(can(a, "d1", NULL, "devices/d1", R)); /* # takes the parent */
    assert_false(can(a, "d1", NULL, "devices/d2/t", W));
    assert_false(can(a, "d1", NULL, "devices/d1x/t", W));
    assert_false(can(a, "d1", NULL, "devices/d/t", W));
    /* %u: never for an anonymous client */
    assert_true(can(a, "c", "u1", "inbox/u1", R));
    assert_false(can(a, "c", NULL, "inbox/", R));
    assert_false(can(a, "c", NULL, "inbox/%u", R));
    assert_false(can(a, "c", "u1", "inbox/u2", R));
    assert_true(can(a, "c", "u1", "both/c/u1", W));
    assert_false(can(a, "c", "u1", "both/u1/c", W));
    assert_false(can(a, "c", NULL, "both/c/", W));
    /* only a whole level is substituted; elsewhere %c is text */
    assert_false(can(a, "c", NULL, "lit/ac/cx/c", R));
    assert_true(can(a, "c", NULL, "lit/a%c/%cx/%%c", R));
    /* in a topic line (anonymous block here) %c is text */
    assert_true(can(a, "c", NULL, "top/%c", R));
    assert_false(can(a, "c", NULL, "top/c", R));
    /* an empty client id or username matches nothing */
    assert_false(can(a, "", NULL, "devices//t", W));
    assert_false(can(a, "c", "", "inbox/", R));
    /* a client id with a '/' is never one level */
    assert_false(can(a, "a/b", NULL, "devices/a/b/t", W));
    /* the subscribe check substitutes the same way */
    assert_true(can(a, "d1", NULL, "devices/d1/#", S));
    assert_true(can(a, "d1", NULL, "devices/d1/+/x", S));
    assert_false(can(a, "d1", NULL, "devices/+/#", S));
    assert_false(can(a, "d1", NULL, "devices/#", S));
    cy_acl_free(a);
}

static void test_wildcard_ids(void **state)
{
    (void)state;
    /* A client id or username of "+" or "#" must not turn a pattern into a
     * wildcard: no pattern grants such a client anything. */
    cy_acl *a = parse_ok("pattern readwrite devices/%c/#\n"
                         "pattern read inbox/%u/#\n"
                         "user a+b\n"
                         "topic read own/#\n");
    assert_false(can(a, "+", NULL, "devices/+/#", S));
    assert_false(can(a, "+", NULL, "devices/+", W));
    assert_false(can(a, "#", NULL, "devices/#", S));
    assert_false(can(a, "x#", NULL, "devices/x#/a", W));
    assert_false(can(a, "c", "+", "inbox/+/#", S));
    assert_false(can(a, "c", "u#", "inbox/u#", R));
    /* and the client's other patterns go with it, as in Mosquitto */
    assert_false(can(a, "ok", "u+", "devices/ok/a", W));
    /* its own user block still applies */
    assert_true(can(a, "c", "a+b", "own/x", R));
    assert_true(can(a, "c", "a+b", "own/#", S));
    /* an ordinary client is unaffected */
    assert_true(can(a, "ok", "u", "devices/ok/a", W));
    assert_true(can(a, "ok", "u", "inbox/u/#", S));
    cy_acl_free(a);
}

static void test_deny(void **state)
{
    (void)state;
    /* deny first whatever the order of the lines, across user blocks and patterns */
    cy_acl *a = parse_ok("topic readwrite a/#\n"
                         "topic deny a/secret\n"
                         "user u\n"
                         "topic readwrite a/#\n"
                         "topic readwrite p/#\n"
                         "user v\n"
                         "topic deny p/v/private/#\n"
                         "pattern readwrite p/%u/#\n"
                         "pattern deny a/%c/hidden\n");
    assert_true(cy_acl_has_deny(a));
    assert_true(can(a, "c", NULL, "a/ok", R));
    assert_false(can(a, "c", NULL, "a/secret", R));
    assert_false(can(a, "c", NULL, "a/secret", W));
    assert_true(can(a, "c", NULL, "a/secret/deeper", R));
    /* a pattern's deny beats a user block's grant */
    assert_true(can(a, "c", "u", "a/x/hidden", R));
    assert_false(can(a, "x", "u", "a/x/hidden", R));
    assert_false(can(a, "x", NULL, "a/x/hidden", W));
    /* a user block's deny beats a pattern's grant */
    assert_true(can(a, "c", "v", "p/v/public", W));
    assert_false(can(a, "c", "v", "p/v/private", W));
    assert_false(can(a, "c", "v", "p/v/private/x", R));
    /* subscribe: a deny that covers the filter refuses it ... */
    assert_false(can(a, "c", NULL, "a/secret", S));
    assert_false(can(a, "c", "v", "p/v/private/#", S));
    assert_false(can(a, "c", "v", "p/v/private/+/x", S));
    /* ... one that covers only part of it does not (the read check at
     * delivery refuses the part) */
    assert_true(can(a, "c", NULL, "a/#", S));
    assert_true(can(a, "c", NULL, "a/+", S));
    assert_true(can(a, "c", "v", "p/v/#", S));
    assert_false(can(a, "c", "v", "p/+/private", S)); /* p/%u/# covers no + there */
    cy_acl_free(a);

    a = parse_ok("topic deny #\ntopic readwrite #\n");
    assert_false(can(a, "c", NULL, "a", R));
    assert_false(can(a, "c", NULL, "#", S));
    assert_false(can(a, "c", NULL, "a/+", S));
    cy_acl_free(a);
    a = parse_ok("topic readwrite #\ntopic deny +/x\n");
    assert_true(can(a, "c", NULL, "a/y", W));
    assert_false(can(a, "c", NULL, "a/x", W));
    assert_false(can(a, "c", NULL, "+/x", S));
    assert_false(can(a, "c", NULL, "b/x", S));
    assert_true(can(a, "c", NULL, "#", S));
    assert_true(can(a, "c", NULL, "b/#", S));
    cy_acl_free(a);
}

static void test_access_words(void **state)
{
    (void)state;
    cy_acl *a = parse_ok("topic read r/#\ntopic write w/#\ntopic readwrite rw/#\ntopic d/#\n");
    assert_true(can(a, "c", NULL, "r/x", R));
    assert_true(can(a, "c", NULL, "r/x", S));
    assert_false(can(a, "c", NULL, "r/x", W));
    assert_false(can(a, "c", NULL, "w/x", R));
    assert_false(can(a, "c", NULL, "w/#", S));
    assert_true(can(a, "c", NULL, "w/x", W));
    assert_true(can(a, "c", NULL, "rw/x", R));
    assert_true(can(a, "c", NULL, "rw/x", W));
    assert_true(can(a, "c", NULL, "d/x", R)); /* no word: readwrite */
    assert_true(can(a, "c", NULL, "d/x", W));
    assert_false(cy_acl_has_deny(a));
    cy_acl_free(a);
}

static void test_wildcards(void **state)
{
    (void)state;
    cy_acl *a = parse_ok("topic read a/+\n"
                         "topic read b/#\n"
                         "topic read c/+/#\n"
                         "topic read +/mid/+\n"
                         "topic read e//f\n");
    assert_true(can(a, "c", NULL, "a/x", R));
    assert_true(can(a, "c", NULL, "a/", R)); /* an empty level is a level */
    assert_false(can(a, "c", NULL, "a", R));
    assert_false(can(a, "c", NULL, "a/x/y", R));
    assert_true(can(a, "c", NULL, "b", R));
    assert_true(can(a, "c", NULL, "b/", R));
    assert_true(can(a, "c", NULL, "b/x/y/z", R));
    assert_false(can(a, "c", NULL, "bb/x", R));
    assert_true(can(a, "c", NULL, "c/x", R));
    assert_true(can(a, "c", NULL, "c/x/y", R));
    assert_false(can(a, "c", NULL, "c", R));
    assert_true(can(a, "c", NULL, "x/mid/y", R));
    assert_true(can(a, "c", NULL, "/mid/", R));
    assert_false(can(a, "c", NULL, "x/mid", R));
    assert_true(can(a, "c", NULL, "e//f", R));
    assert_false(can(a, "c", NULL, "e/f", R));
    assert_false(can(a, "c", NULL, "e/x/f", R));
    cy_acl_free(a);

    /* # alone: everything but $ topics */
    a = parse_ok("topic readwrite #\ntopic read $SYS/broker/#\n");
    assert_true(can(a, "c", NULL, "x", W));
    assert_true(can(a, "c", NULL, "/", W));
    assert_false(can(a, "c", NULL, "$SYS/x", R));
    assert_false(can(a, "c", NULL, "$cyan/canary/x", W));
    assert_true(can(a, "c", NULL, "$SYS/broker/load", R));
    assert_true(can(a, "c", NULL, "$SYS/broker", R));
    assert_false(can(a, "c", NULL, "$SYS/other", R));
    cy_acl_free(a);
    a = parse_ok("topic read +/x\ntopic read +\npattern read %c/y\n");
    assert_false(can(a, "c", NULL, "$SYS/x", R));
    assert_false(can(a, "c", NULL, "$SYS", R));
    assert_true(can(a, "c", NULL, "a", R));
    assert_false(can(a, "$c", NULL, "$c/y", R)); /* a substitution is no literal $ level */
    assert_true(can(a, "c", NULL, "c/y", R));
    cy_acl_free(a);

    /* a long topic, level by level */
    size_t n = 60001; /* "x/x/.../x" */
    char *t = malloc(n + 1);
    assert_non_null(t);
    for (size_t i = 0; i < n; i++)
        t[i] = i % 2 ? '/' : 'x';
    t[n] = '\0';
    a = parse_ok("topic read x/#\ntopic deny x/+/x/+/y\n");
    assert_true(can(a, "c", NULL, t, R));
    assert_true(can(a, "c", NULL, t, S));
    t[n - 1] = '#';
    assert_true(can(a, "c", NULL, t, S));
    free(t);
    cy_acl_free(a);
}

static void test_subscribe_cover(void **state)
{
    (void)state;
    cy_acl *a = parse_ok("topic read a/#\n");
    const char *yes[] = {"a/#", "a/+/b", "a", "a/b", "a/+", "a/+/#", "a//", "a/b/c/d"};
    const char *no[] = {"#", "+", "+/b", "b/#", "+/#", "ab/#", "$SYS/#"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(*yes); i++)
        if (!can(a, "c", NULL, yes[i], S)) fail_msg("a/# should cover %s", yes[i]);
    for (size_t i = 0; i < sizeof(no) / sizeof(*no); i++)
        if (can(a, "c", NULL, no[i], S)) fail_msg("a/# should not cover %s", no[i]);
    cy_acl_free(a);

    a = parse_ok("topic read a/+\n");
    assert_true(can(a, "c", NULL, "a/b", S));
    assert_true(can(a, "c", NULL, "a/+", S));
    assert_false(can(a, "c", NULL, "a/#", S)); /* + covers no # */
    assert_false(can(a, "c", NULL, "a", S));
    assert_false(can(a, "c", NULL, "a/b/c", S));
    assert_false(can(a, "c", NULL, "a/+/c", S));
    cy_acl_free(a);

    a = parse_ok("topic read a/+/#\n");
    assert_true(can(a, "c", NULL, "a/b", S)); /* the # takes the parent */
    assert_true(can(a, "c", NULL, "a/+/#", S));
    assert_false(can(a, "c", NULL, "a/#", S)); /* a/# matches a, which a/+/# does not */
    assert_false(can(a, "c", NULL, "a", S));
    cy_acl_free(a);

    /* only # covers # */
    a = parse_ok("topic read #\n");
    assert_true(can(a, "c", NULL, "#", S));
    assert_true(can(a, "c", NULL, "+/+", S));
    assert_false(can(a, "c", NULL, "$SYS/#", S));
    assert_false(can(a, "c", NULL, "$SYS/x", S));
    cy_acl_free(a);
    a = parse_ok("topic read +/#\n");
    /* +/# matches every topic # does, but only # covers #, as in Mosquitto */
    assert_false(can(a, "c", NULL, "#", S));
    cy_acl_free(a);

    a = parse_ok("topic read $SYS/#\ntopic read x/y\n");
    assert_true(can(a, "c", NULL, "$SYS/#", S));
    assert_true(can(a, "c", NULL, "$SYS/+/load", S));
    assert_false(can(a, "c", NULL, "#", S));
    assert_false(can(a, "c", NULL, "+/#", S));
    /* a literal rule covers only itself */
    assert_true(can(a, "c", NULL, "x/y", S));
    assert_false(can(a, "c", NULL, "x/+", S));
    assert_false(can(a, "c", NULL, "x/y/#", S));
    assert_false(can(a, "c", NULL, "x", S));
    cy_acl_free(a);

    /* write rules cover nothing for a subscription */
    a = parse_ok("topic write #\n");
    assert_false(can(a, "c", NULL, "#", S));
    assert_false(can(a, "c", NULL, "x", S));
    cy_acl_free(a);
}

/* Every allocation of a parse fails in turn: NULL with "out of memory",
 * nothing leaked (ASan and valgrind judge). */
static void test_alloc_failures(void **state)
{
    (void)state;
    const char *text = "topic read a/#\nuser u1\ntopic deny a/b\nuser u2\ntopic w\n"
                       "user u1\ntopic x/+/y\npattern readwrite d/%c/#\n";
    long n;
    for (n = 0; n < 200; n++) {
        cy_alloc_fail_after(n);
        cy_acl *a = parse(text);
        cy_alloc_fail_after(-1);
        if (a) {
            assert_true(can(a, "c", "u1", "x/z/y", W));
            assert_false(can(a, "c", "u1", "a/b", R));
            cy_acl_free(a);
            break;
        }
        assert_non_null(strstr(err, "out of memory"));
    }
    assert_true(n > 3 && n < 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),     cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_parse_limits),   cmocka_unit_test(test_user_lines_only),
        cmocka_unit_test(test_load),           cmocka_unit_test(test_anonymous_and_users),
        cmocka_unit_test(test_patterns),       cmocka_unit_test(test_wildcard_ids),
        cmocka_unit_test(test_deny),           cmocka_unit_test(test_access_words),
        cmocka_unit_test(test_wildcards),      cmocka_unit_test(test_subscribe_cover),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
