"""`make install` and `make uninstall` (docs/operations.md, "Install"), the
systemd unit (etc/cyan.service) and the manual page (etc/cyan.1, generated
by `cyan man` from the settings table as etc/cyan.conf is by `cyan config`).

Installs go into temporary folders: DESTDIR stages a tree as a package
would; PREFIX and SYSCONFDIR are written into the unit. The binary
installed is CYAN_BIN's (BUILD= its folder). When systemd-analyze is on the
machine, the unit installed under a PREFIX in a temporary folder (so its
ExecStart exists) must pass `systemd-analyze verify` without a word, its
Documentation= man page found in the same install.
"""

import os
import re
import shutil
import stat
import subprocess

import pytest

from conftest import CYAN_BIN, REPO, child_env

pytestmark = pytest.mark.cyan_only

BUILD = os.path.dirname(os.path.abspath(CYAN_BIN))


def make(*args, check=True):
    cp = subprocess.run(["make", "--no-print-directory", "-C", REPO, "BUILD=%s" % BUILD,
                         "SYSUSERS=no"] + list(args), capture_output=True, text=True,
                        timeout=120)
    if check:
        assert cp.returncode == 0, "make %s: %d\n%s\n%s" % (args, cp.returncode, cp.stdout,
                                                              cp.stderr)
    return cp


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def read(path, binary=False):
    with open(path, "rb" if binary else "r") as f:
        return f.read()


def cyan(*args):
    cp = subprocess.run([CYAN_BIN] + list(args), capture_output=True, text=True, timeout=20,
                        env=child_env())
    assert cp.returncode == 0, cp.stderr
    return cp.stdout


def test_man_page_in_sync():
    """etc/cyan.1 is what the binary generates: regenerate it with
    `cyan man > etc/cyan.1` (or `make man`) when a setting changes."""
    page = cyan("man")
    assert page == read(os.path.join(REPO, "etc", "cyan.1")), \
        "etc/cyan.1 is stale: run `%s man > etc/cyan.1`" % CYAN_BIN
    # Every setting is in it, with its default, and whether a reload applies it.
    names = re.findall(r"^([a-z_0-9]+) = ", cyan("config"), re.M)
    assert len(names) > 50
    for name in names:
        assert "\n.B %s\n" % name in page, name
    assert "\n.B log_format\n" in page and "Default: \\fBtext\\fR; read at start." in page
    assert ".SH COMMANDS" in page and "cyan device add" in page
    # The settings given on the command line change nothing in the page.
    assert cyan("man", "--max_inflight=7") == page


@pytest.mark.skipif(not shutil.which("groff"), reason="no groff on this machine")
def test_man_page_renders_cleanly():
    cp = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z",
                         os.path.join(REPO, "etc", "cyan.1")],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0 and cp.stderr == "", cp.stderr
    cp = subprocess.run(["groff", "-man", "-Tutf8", os.path.join(REPO, "etc", "cyan.1")],
                        capture_output=True, text=True, timeout=30)
    text = re.sub(r".\x08", "", cp.stdout)
    assert "max_connections" in text and "WATCHDOG_USEC" in text


def test_install_into_destdir(tmp_path):
    dest = str(tmp_path / "stage")
    make("install", "DESTDIR=%s" % dest)
    files = {
        "usr/local/bin/cyan": 0o755,
        "usr/local/share/man/man1/cyan.1": 0o644,
        "usr/local/lib/systemd/system/cyan.service": 0o644,
        "usr/local/lib/sysusers.d/cyan.conf": 0o644,
        "etc/cyan/cyan.conf": 0o644,
    }
    found = set()
    for root, _, names in os.walk(dest):
        for n in names:
            found.add(os.path.relpath(os.path.join(root, n), dest))
    assert found == set(files), found
    for rel, want in files.items():
        assert mode(os.path.join(dest, rel)) == want, (rel, oct(mode(os.path.join(dest, rel))))
    assert read(os.path.join(dest, "usr/local/bin/cyan"), True) == read(CYAN_BIN, True)
    assert read(os.path.join(dest, "etc/cyan/cyan.conf")) == read(
        os.path.join(REPO, "etc", "cyan.conf"))
    assert read(os.path.join(dest, "usr/local/share/man/man1/cyan.1")) == read(
        os.path.join(REPO, "etc", "cyan.1"))
    unit = read(os.path.join(dest, "usr/local/lib/systemd/system/cyan.service"))
    assert "\nExecStart=/usr/local/bin/cyan -c /etc/cyan/cyan.conf --data_dir=/var/lib/cyan\n" \
        in unit, unit
    users = read(os.path.join(dest, "usr/local/lib/sysusers.d/cyan.conf"))
    assert re.search(r"^u cyan - .* /var/lib/cyan$", users, re.M), users

    # Again over an edited configuration: it is kept, the new one beside it.
    conf = os.path.join(dest, "etc/cyan/cyan.conf")
    with open(conf, "a") as f:
        f.write("\nmax_inflight = 7\n")
    mine = read(conf)
    cp = make("install", "DESTDIR=%s" % dest)
    assert read(conf) == mine
    assert "kept" in cp.stdout
    assert read(conf + ".new") == read(os.path.join(REPO, "etc", "cyan.conf"))

    # uninstall: what install put there, but not the configuration.
    make("uninstall", "DESTDIR=%s" % dest)
    left = set()
    for root, _, names in os.walk(dest):
        for n in names:
            left.add(os.path.relpath(os.path.join(root, n), dest))
    assert left == {"etc/cyan/cyan.conf"}, left


def test_install_prefix_paths(tmp_path):
    dest = str(tmp_path / "stage")
    make("install", "DESTDIR=%s" % dest, "PREFIX=/opt/cyan", "SYSCONFDIR=/opt/cyan/etc")
    unit = read(os.path.join(dest, "opt/cyan/lib/systemd/system/cyan.service"))
    assert "\nExecStart=/opt/cyan/bin/cyan -c /opt/cyan/etc/cyan/cyan.conf " in unit, unit
    assert os.access(os.path.join(dest, "opt/cyan/bin/cyan"), os.X_OK)
    assert os.path.exists(os.path.join(dest, "opt/cyan/etc/cyan/cyan.conf"))
    assert os.path.exists(os.path.join(dest, "opt/cyan/share/man/man1/cyan.1"))


def test_install_needs_a_build(tmp_path):
    cp = subprocess.run(["make", "--no-print-directory", "-C", REPO, "BUILD=%s" % (tmp_path / "x"),
                         "install", "DESTDIR=%s" % (tmp_path / "stage")],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode != 0
    assert "is not built: run make first" in cp.stdout + cp.stderr
    assert not os.path.exists(str(tmp_path / "stage"))


def test_unit_hardening():
    """The unit's choices, as the docs describe them (a line lost in an
    edit fails here, not on a production host)."""
    unit = read(os.path.join(REPO, "etc", "cyan.service"))
    keys = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k, []).append(v)
    want = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "10",
        "ExecReload": "/bin/kill -HUP $MAINPID", "User": "cyan", "Group": "cyan",
        "StateDirectory": "cyan", "StateDirectoryMode": "0700",
        "ProtectSystem": "strict", "ReadWritePaths": "/var/lib/cyan",
        "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes",
        "KillMode": "mixed", "LimitNOFILE": "65536", "CapabilityBoundingSet": "",
    }
    for k, v in want.items():
        assert keys.get(k) == [v], (k, keys.get(k))
    assert "AmbientCapabilities" not in keys  # no low port by default
    assert "DynamicUser" not in keys
    # TimeoutStopSec above the supervisor's own 10 s grace for its shards.
    assert int(keys["TimeoutStopSec"][0]) > 10


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze here")
def test_unit_verifies(tmp_path):
    prefix = str(tmp_path / "usr")
    make("install", "PREFIX=%s" % prefix, "SYSCONFDIR=%s" % (tmp_path / "etc"))
    unit = os.path.join(prefix, "lib/systemd/system/cyan.service")
    assert "ExecStart=%s/bin/cyan " % prefix in read(unit)
    env = dict(os.environ, MANPATH=os.path.join(prefix, "share/man"))
    argv = ["systemd-analyze", "verify"]
    if not shutil.which("man"):
        argv.append("--man=no")
    cp = subprocess.run(argv + [unit], capture_output=True, text=True, timeout=120, env=env)
    # Unknown keys and other mistakes are only warnings: the output must be empty.
    assert cp.returncode == 0 and cp.stdout.strip() == "" and cp.stderr.strip() == "", \
        (cp.returncode, cp.stdout, cp.stderr)
