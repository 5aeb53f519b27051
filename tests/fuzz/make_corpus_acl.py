#!/usr/bin/python3
"""Write the seed corpus of fuzz_acl to tests/fuzz/corpus/acl/.

One file per ACL (Mosquitto's acl_file format, docs/operations.md "Access
control"): good files of every shape (anonymous lines, user blocks, patterns,
deny, wildcards, $ topics, comments, CRLF, a byte order mark) and bad ones
(unknown keyword or access word, misplaced wildcards, no topic, no username,
a long line). A seed may end in a probe for the matcher, after a NUL byte:
client id, NUL, username, NUL, topic or filter (fuzz_acl.c).
Run: /usr/bin/python3 tests/fuzz/make_corpus_acl.py
"""
import os

from make_corpus import write_seeds

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "acl")


def probe(cid, user, topic):
    return b"\0" + cid.encode() + b"\0" + (user.encode() + b"\0" if user is not None else b"") \
        + topic.encode()


DEVICES = (b"# devices keep to their own space, read the shared events\n"
           b"pattern readwrite devices/%u/#\n"
           b"pattern read events/#\n"
           b"pattern deny devices/%u/secret\n")

SEEDS = {
    "empty": b"",
    "comments": b"# only a comment\n\n   # indented\n\t\n",
    "anonymous": b"topic read public/#\ntopic write anon/+\ntopic readwrite both\n",
    "users": (b"topic read pub/#\nuser alice\ntopic readwrite alice/#\ntopic deny alice/x\n"
              b"user bob smith\ntopic read #\nuser alice\ntopic read shared/+\n"),
    "patterns": DEVICES + probe("d1", "d1", "devices/d1/#"),
    "patterns_probe_secret": DEVICES + probe("d1", "d1", "devices/d1/secret"),
    "patterns_wild_id": DEVICES + probe("+", "+", "devices/+/#"),
    "deny_everything": b"topic deny #\ntopic readwrite #\n" + probe("c", None, "a/b"),
    "deny_partial": b"topic read a/#\ntopic deny a/+/secret\n" + probe("c", None, "a/+/+"),
    "dollar": b"topic read $SYS/#\ntopic read #\n" + probe("c", None, "$SYS/broker/load"),
    "wildcards": (b"topic read +/+/+\ntopic read a/+/#\ntopic read //\n"
                  + probe("c", None, "a//b")),
    "no_access_word": b"topic a/b\npattern %c/%u\n" + probe("c", "u", "c/u"),
    "spaces": b"user with space\ntopic write a topic with spaces\n",
    "crlf_bom": b"\xef\xbb\xbftopic read a\r\nuser u\r\ntopic b\r\n",
    "tabs": b"topic\tread\ta/#\nuser\tu\n",
    "literal_percent": b"pattern read x/a%c/%cb/%%u\ntopic read %c/%u\n",
    "bad_keyword": b"topic read a\ntopc read b\n",
    "bad_access": b"topic reed a\n",
    "bad_access_only": b"topic deny\n",
    "bad_hash": b"topic read a/#/b\n",
    "bad_plus": b"pattern read a+/b\n",
    "bad_no_topic": b"pattern\n",
    "bad_no_user": b"user   \n",
    "bad_nul": b"topic read a\x00\ntopic b",
    "bad_long_line": b"topic read " + b"a/" * 2100 + b"\n",
}


def main():
    write_seeds(OUT, SEEDS)


if __name__ == "__main__":
    main()
