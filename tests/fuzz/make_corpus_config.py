#!/usr/bin/python3
"""Write the seed corpus of fuzz_config to tests/fuzz/corpus/config/.

etc/cyan.conf as it is (every setting, with its comments), and small files
at the edges of the format: CRLF lines, no newline at the end, comments
after values, spaces around '=', every kind of value at its bounds, and
errors (an unknown name, a line without '=', a number out of range, a
value too long, a NUL byte). Run: /usr/bin/python3 tests/fuzz/make_corpus_config.py
"""
import os

from make_corpus import write_seeds

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "config")
ETC = os.path.join(HERE, "..", "..", "etc", "cyan.conf")

SEEDS = {
    "crlf": b"max_queued = 7\r\nlog_level = debug\r\n",
    "no_final_newline": b"shards = 4",
    "comments": b"# a comment\n\n   \t\nmax_inflight=9   # after a value\n#=\n",
    "bounds": b"max_topic_length = 1\nmax_retained = 4294967295\nmax_packet_size = 64\n"
              b"store_sync = full\nallow_anonymous = yes\nisolate_devices = 0\n",
    "strings": b"data_dir = /var/lib/cyan\nhttp_listen =\nmqtt_listen = [::1]:1883\n"
               b"alert_webhooks = http://a/x,http://b/y\n",
    "long_comment": b"#" + b"x" * 1500 + b" max_queued = 5\n",
    "bad_unknown": b"no_such_setting = 1\n",
    "bad_no_equals": b"max_queued 7\n",
    "bad_range": b"max_topic_length = 0\n",
    "bad_number": b"max_queued = 12abc\n",
    "bad_negative": b"max_queued = -1\n",
    "bad_bool": b"allow_anonymous = maybe\n",
    "bad_store_sync": b"store_sync = sometimes\n",
    "bad_long_value": b"data_dir = " + b"d" * 600 + b"\n",
    "bad_nul": b"max_queued = 8\0\n",
}


def main():
    seeds = dict(SEEDS)
    with open(ETC, "rb") as f:
        seeds["etc_cyan_conf"] = f.read()
    write_seeds(OUT, seeds)


if __name__ == "__main__":
    main()
