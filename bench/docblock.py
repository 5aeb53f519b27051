"""bench/docblock.py: write a bench's table into docs/benchmarks.md, between
its begin and end markers (everything outside them is left as it is).
Shared by the bench table scripts; exits with a message if the markers are
missing."""
import os
import re
import sys


def write_between(root, begin, end, text, who):
    path = os.path.join(root, "docs", "benchmarks.md")
    doc = open(path).read()
    m = re.search(re.escape(begin) + r".*?" + re.escape(end), doc, re.S)
    if not m:
        sys.exit(f"{who}: markers {begin} ... {end} not found in {path}")
    doc = doc[:m.start()] + begin + "\n" + text + "\n" + end + doc[m.end():]
    open(path, "w").write(doc)
    print(f"{who}: table written into {path}", file=sys.stderr)
