"""The data folder is its user's alone: it holds the admin token, the hashes of
device secrets and tokens, and every session's messages.

- After a start on a new data folder, the folder is 0700 and nothing in it
  (registry.db, shard-N.db and their -wal/-shm, admin-token, shards, run/ and
  the scoreboard, the lock and the bus sockets) is open to group or others;
  the databases and the token are exactly 0600. Before: 0644 files in a 0750
  folder.
- A data folder and files left open by an older cyan are made private at the
  next start, and the log names each change. A folder that is not cyan's
  alone (it holds other files) keeps its mode, with a warning; cyan's files
  in it are made private all the same.
- The CLI (`cyan device add`) creates a new data folder private too.
"""

import os
import stat

import pytest

from helpers import CYAN, wait_until

pytestmark = [
    pytest.mark.cyan_only,
    pytest.mark.skipif(not CYAN, reason="cyan's data folder"),
]


def modes(root):
    """{path relative to root: permission bits} of root and everything under it."""
    out = {".": stat.S_IMODE(os.lstat(root).st_mode)}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = stat.S_IMODE(os.lstat(p).st_mode)
    return out


def run_log(srv):
    """The log of the current run."""
    log = srv.log()
    return log[log.rfind("==== start #"):]


def wait_running(srv, shards=2):
    """Every shard of the current run has opened its files."""
    line = "supervisor: all %d shards running" % shards
    assert wait_until(lambda: line in run_log(srv), 10.0), srv.log_tail()


def assert_private(root):
    m = modes(root)
    open_to_others = {p: oct(v) for p, v in m.items() if v & 0o077}
    assert not open_to_others, "open to group/others in %s: %r" % (root, open_to_others)
    assert m["."] == 0o700, oct(m["."])
    return m


def test_new_data_dir_is_private(server_factory):
    srv = server_factory(_template=False, shards=2)
    srv.admin_token()  # written by the first start
    wait_running(srv)
    m = assert_private(srv.data_dir)
    for name in ("registry.db", "shard-0.db", "shard-1.db", "admin-token", "shards",
                 "run/scoreboard", "run/lock"):
        assert m.get(name) == 0o600, "%s: %r\n%r" % (name, m.get(name), m)
    assert m["run"] == 0o700
    # The WAL files exist while the node runs, with the mode of their database.
    wal = [p for p in m if p.endswith("-wal") or p.endswith("-shm")]
    assert wal, m
    for p in wal:
        assert m[p] == 0o600, (p, oct(m[p]))


def test_existing_open_data_dir_made_private_at_start(server_factory):
    srv = server_factory(_template=False, shards=2)
    srv.admin_token()
    wait_running(srv)
    srv.stop()
    # As an older cyan (or a careless copy) left it.
    os.chmod(srv.data_dir, 0o755)
    loosened = ["registry.db", "shard-0.db", "admin-token", "shards", "run/scoreboard"]
    for name in loosened:
        os.chmod(os.path.join(srv.data_dir, name), 0o644)
    os.chmod(os.path.join(srv.data_dir, "run"), 0o755)

    srv.start()
    wait_running(srv)
    text = run_log(srv)
    assert "data_dir: made %s private: mode 0755 -> 0700" % srv.data_dir in text, text
    for name in loosened:
        line = "data_dir: made %s/%s private: mode 0644 -> 0600" % (srv.data_dir, name)
        assert line in text, (line, text)
    assert "data_dir: made %s/run private: mode 0755 -> 0700" % srv.data_dir in text
    assert_private(srv.data_dir)


def test_shared_data_dir_left_as_is_but_cyan_files_private(server_factory):
    """A folder that is not cyan's alone (here: an operator's file in it; or
    a home, /tmp, /) keeps its mode and its other files theirs."""
    srv = server_factory(_template=False, shards=2)
    wait_running(srv)
    srv.stop()
    os.chmod(srv.data_dir, 0o755)
    os.chmod(os.path.join(srv.data_dir, "registry.db"), 0o644)
    mine = os.path.join(srv.data_dir, "NOTES.txt")
    with open(mine, "w") as f:
        f.write("backups go to /srv/backup\n")
    os.chmod(mine, 0o644)

    srv.start()
    wait_running(srv)
    text = run_log(srv)
    assert ("data_dir: %s is open to others (mode 0755) and is not cyan's alone (it holds "
            "NOTES.txt): left as it is" % srv.data_dir) in text, text
    assert "data_dir: made %s/registry.db private: mode 0644 -> 0600" % srv.data_dir in text
    assert stat.S_IMODE(os.stat(srv.data_dir).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(mine).st_mode) == 0o644
    m = modes(srv.data_dir)
    del m["."], m["NOTES.txt"]
    assert not {p: oct(v) for p, v in m.items() if v & 0o077}, m


def test_cli_makes_no_data_dir_and_private_files(server_factory):
    """A data folder that does not exist is refused (issue 15: only serve
    makes one); in a new empty one the CLI's files are private."""
    srv = server_factory(_template=False)
    fresh = os.path.join(srv.workdir, "fresh", "data")
    cp = srv.cli("device", "add", "d1", "--data_dir=%s" % fresh, data_dir=False, check=False)
    assert cp.returncode == 1 and "does not exist" in cp.stderr, cp
    assert not os.path.exists(os.path.join(srv.workdir, "fresh"))
    for d in (os.path.dirname(fresh), fresh):
        os.mkdir(d)
        os.chmod(d, 0o700)
    srv.cli("device", "add", "d1", "--data_dir=%s" % fresh, data_dir=False)
    m = assert_private(os.path.join(srv.workdir, "fresh"))
    assert m["data/registry.db"] == 0o600, m


def test_everything_private_whatever_the_umask(server_factory):
    """Issue 14 (5), secrets at rest: cyan and its CLI started with umask
    000 still make every file of the data folder 0600 and every folder
    0700: the registry and its key file (a device made over the API gets a
    PSK), the shards' files (their event logs), the admin token, the
    monitor's files, run/ with the scoreboard and the limits table. No log
    line shows a device's secret or PSK, nor the admin token."""
    old = os.umask(0)
    try:
        srv = server_factory(_template=False, shards=2)
        cli_dev = srv.add_device()  # `cyan device add`, under umask 000 too
    finally:
        os.umask(old)
    from apidevice import api
    token = srv.admin_token()
    wait_running(srv)
    srv.wait_api_healthy()
    r = api(srv, "POST", "/v1/devices", json={"name": "umask-dev"})
    assert r.status == 201, r.text
    made = r.body
    m = assert_private(srv.data_dir)
    for name in ("registry.db", "registry.key", "shard-0.db", "shard-1.db", "admin-token",
                 "shards", "run/scoreboard", "run/lock", "run/limits"):
        assert m.get(name) == 0o600, "%s: %r\n%r" % (name, m.get(name), m)
    assert m["run"] == 0o700
    log = srv.log()
    for secret in (cli_dev.secret, made["secret"], made["psk"], token):
        assert secret not in log, "a secret is in the log"
