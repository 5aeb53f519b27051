"""The documentation against the code.

- every setting `cyan config` prints is documented in docs/operations.md
  (its name inside a code span there);
- docs/index.md names every page of docs/;
- every relative link in README.md, examples/README.md and docs/*.md
  points at a file that exists.

The API's routes are checked against docs/api.md's table of scopes by the
unit test test_api_routes (it walks the route table itself).
"""
import os
import re
import subprocess

from conftest import CYAN_BIN, child_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DOCS = os.path.join(ROOT, "docs")


def read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def settings():
    cp = subprocess.run([CYAN_BIN, "config"], capture_output=True, text=True, timeout=20,
                        env=child_env(), stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, cp.stderr
    names = re.findall(r"^([a-z][a-z0-9_]*) = ", cp.stdout, re.M)
    assert len(names) > 50, cp.stdout[:500]
    return names


def test_every_setting_is_in_operations_md():
    ops = read("docs", "operations.md")
    fences = re.findall(r"^```.*?^```", ops, re.M | re.S)  # code blocks count whole
    prose = re.sub(r"^```.*?^```", "", ops, flags=re.M | re.S)
    spans = fences + re.findall(r"`([^`]+)`", prose)
    words = set()
    for s in spans:
        words.update(re.findall(r"[a-z][a-z0-9_]*", s))
    missing = [n for n in settings() if n not in words]
    assert not missing, "settings not documented in docs/operations.md: %s" % ", ".join(missing)


def test_index_names_every_page():
    index = read("docs", "index.md")
    pages = sorted(f for f in os.listdir(DOCS) if f.endswith(".md") and f != "index.md")
    missing = [p for p in pages if "(%s)" % p not in index]
    assert not missing, "docs/index.md does not link: %s" % ", ".join(missing)


def test_relative_links_resolve():
    files = ["README.md", os.path.join("examples", "README.md")]
    files += [os.path.join("docs", f) for f in sorted(os.listdir(DOCS)) if f.endswith(".md")]
    broken = []
    for f in files:
        base = os.path.dirname(os.path.join(ROOT, f))
        for target in re.findall(r"\]\(([^)\s]+)\)", read(f)):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            if not os.path.exists(os.path.join(base, path)):
                broken.append("%s -> %s" % (f, target))
    assert not broken, "broken links:\n" + "\n".join(broken)
