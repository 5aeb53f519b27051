"""The admin command line: `cyan device add|list|remove|psk` and `cyan token
create|list|revoke` on the registry in the data dir (also while the server
runs), the first API token a new node writes to DATA_DIR/admin-token, and
`cyan config`."""

import datetime
import hashlib
import hmac
import os
import re
import sqlite3
import stat

import pytest

from helpers import Client, Device

pytestmark = pytest.mark.cyan_only

# Settings of the contract and their defaults (None: default not pinned here).
SETTINGS = {
    "data_dir": None,
    "mqtt_listen": None,
    "log_level": None,
    "sys_interval": None,
    "allow_anonymous": "false",
    "max_inflight": "32",
    "max_packet_size": "1048576",
    "topic_alias_max": "32",
    "max_keepalive": "3600",
    "max_topic_length": "512",
    "max_queued": "1000",
    "max_subscriptions": None,
    "max_connections": None,
    "connect_timeout": None,
}


def test_device_add_prints_id_and_secret(server):
    cp = server.cli("device", "add", "sensor-a")
    lines = cp.stdout.strip().splitlines()
    assert len(lines) == 3, cp.stdout
    assert re.fullmatch(r"id: [0-9a-f]{24}", lines[0]), lines
    assert re.fullmatch(r"secret: [0-9a-f]{32}", lines[1]), lines
    assert re.fullmatch(r"psk: [0-9a-f]{32}", lines[2]), lines
    assert lines[2][5:] != lines[1][8:]
    other = server.cli("device", "add", "sensor-b").stdout.strip().splitlines()
    assert len(other) == 3 and all(a != b for a, b in zip(lines, other)), (lines, other)
    # The PSK is kept sealed: its text is nowhere in the registry; the key
    # file that opens it is the user's alone.
    for suffix in ("", "-wal"):
        path = os.path.join(server.data_dir, "registry.db" + suffix)
        if os.path.exists(path):
            with open(path, "rb") as f:
                assert lines[2][5:].encode() not in f.read(), path
    key = os.stat(os.path.join(server.data_dir, "registry.key"))
    assert stat.S_IMODE(key.st_mode) == 0o600 and key.st_size == 32, key


def stored_psk(server, ref):
    """The sealed PSK bytes the registry keeps for device ref (id or name),
    or None."""
    db = sqlite3.connect(os.path.join(server.data_dir, "registry.db"))
    try:
        rows = db.execute("SELECT psk FROM devices WHERE id = ?1 OR name = ?1",
                          (ref,)).fetchall()
    finally:
        db.close()
    assert len(rows) == 1, rows
    return rows[0][0]


def test_device_psk(server):
    """`cyan device psk NAME_OR_ID` prints a new PSK (the old one is gone);
    an unknown device fails; a missing argument is a usage error."""
    dev = server.add_device("coap-a")
    before = stored_psk(server, dev.id)
    cp = server.cli("device", "psk", "coap-a")
    assert re.fullmatch(r"psk: [0-9a-f]{32}\n", cp.stdout), cp.stdout
    assert "shown only now" in cp.stderr, cp.stderr
    first = cp.stdout[5:].strip()
    mid = stored_psk(server, dev.id)
    assert mid != before and len(mid) == 60, (mid, before)
    cp = server.cli("device", "psk", dev.id)
    second = cp.stdout[5:].strip()
    assert re.fullmatch(r"[0-9a-f]{32}", second) and second != first, cp.stdout
    assert stored_psk(server, dev.id) not in (before, mid)
    # The device's secret is untouched.
    with Client(server, dev) as c:
        sp, rc, _ = c.connect()
        assert rc == 0
    cp = server.cli("device", "psk", "no-such-device", check=False)
    assert cp.returncode == 1 and "no device 'no-such-device'" in cp.stderr, cp
    assert cp.stdout == "", cp.stdout
    cp = server.cli("device", "psk", check=False)
    assert cp.returncode == 2 and "cyan device psk ID_OR_NAME" in cp.stderr, cp


def test_device_add_duplicate_name_fails(server):
    server.cli("device", "add", "twin")
    cp = server.cli("device", "add", "twin", check=False)
    assert cp.returncode != 0


def test_device_list_and_remove(server):
    a = server.add_device("alpha")
    b = server.add_device("beta")
    out = server.cli("device", "list").stdout
    rows = [line.split() for line in out.strip().splitlines()]
    assert [a.id, "alpha"] in [r[:2] for r in rows], out
    assert [b.id, "beta"] in [r[:2] for r in rows], out
    server.cli("device", "remove", "alpha")           # by name
    server.cli("device", "remove", b.id)              # by id
    out = server.cli("device", "list").stdout
    assert a.id not in out and b.id not in out, out
    cp = server.cli("device", "remove", "alpha", check=False)
    assert cp.returncode != 0, "removing an absent device must fail"


def test_config_lists_settings_with_defaults(server):
    cp = server.cli("config", data_dir=False)
    out = cp.stdout
    for name, default in SETTINGS.items():
        lines = [line for line in out.splitlines() if re.search(r"\b%s\b" % name, line)]
        assert lines, "setting %s missing from `cyan config`:\n%s" % (name, out)
        if default is not None:
            assert any(re.search(r"\b%s\b" % re.escape(default), line) for line in lines), \
                "default %s of %s not shown: %r" % (default, name, lines)


# ---- API tokens

TOKEN_RE = r"cyt_([0-9a-f]{12})_[0-9a-f]{32}"
FIRST_TOKEN_LOG = "created the first API token (full access)"


ALL = "devices:read,devices:call,events:read,events:publish,webhooks:manage,admin"
READ = "devices:read,events:read"


def token_rows(server):
    """`cyan token list` as {id: (name, scopes, created, expires, last used)};
    an expired token's expiry is "<time> (expired)"."""
    out = server.cli("token", "list").stdout
    rows = {}
    for line in out.strip().splitlines():
        fields = line.split()
        if len(fields) == 7 and fields[5] == "(expired)":
            fields[4:6] = [fields[4] + " (expired)"]
        assert len(fields) == 6, out
        rows[fields[0]] = tuple(fields[1:])
    return rows


def create_token(server, *args):
    """`cyan token create ARGS` -> (id, token text)."""
    cp = server.cli("token", "create", *args)
    lines = cp.stdout.strip().splitlines()
    assert len(lines) == 2, cp.stdout
    m = re.fullmatch(r"id: ([0-9a-f]{12})", lines[0])
    assert m, lines
    t = re.fullmatch(r"token: (%s)" % TOKEN_RE, lines[1])
    assert t and t.group(2) == m.group(1), lines
    assert "shown only now" in cp.stderr, cp.stderr
    return m.group(1), t.group(1)


def test_token_create_list_revoke(server):
    ci_id, ci = create_token(server, "ci")
    ro_id, ro = create_token(server, "--read-only", "viewer")
    df_id, _ = create_token(server)                     # default name, full access
    dup_id, _ = create_token(server, "ci", "--read-only")  # names need not be unique
    assert len({ci_id, ro_id, df_id, dup_id}) == 4
    rows = token_rows(server)
    assert rows[ci_id][:2] == ("ci", ALL), rows
    assert rows[ro_id][:2] == ("viewer", READ), rows
    assert rows[df_id][:2] == ("token", ALL), rows
    assert rows[dup_id][:2] == ("ci", READ), rows
    now = datetime.datetime.now(datetime.timezone.utc)
    for name, scope, created, expires, used in rows.values():
        assert expires == "-", expires  # no --expires: never
        assert used == "-" or re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", used), used
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created), created
        when = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc)
        assert abs((now - when).total_seconds()) < 120, (created, now)
    # Creation order; the server's own first token comes first.
    ids = list(rows)
    assert ids.index(ci_id) < ids.index(ro_id) < ids.index(df_id) < ids.index(dup_id)
    # The secret is never shown again.
    listing = server.cli("token", "list").stdout
    assert ci[17:] not in listing and ro[17:] not in listing

    cp = server.cli("token", "revoke", ro_id)
    assert ro_id in cp.stderr and "revoked" in cp.stderr, cp.stderr
    rows = token_rows(server)
    assert ro_id not in rows and ci_id in rows, rows
    cp = server.cli("token", "revoke", ro_id, check=False)
    assert cp.returncode == 1, cp
    assert "no token" in cp.stderr and ro_id in cp.stderr, cp.stderr
    cp = server.cli("token", "revoke", "viewer", check=False)   # by id only
    assert cp.returncode == 1 and "no token" in cp.stderr, cp.stderr


def test_token_usage_errors(server):
    for args, code in [(("token",), 2),
                       (("token", "frob"), 2),
                       (("token", "list", "extra"), 2),
                       (("token", "revoke"), 2),
                       (("token", "create", "a", "b"), 2),
                       (("token", "list", "--read-only"), 2),
                       (("device", "list", "--read-only"), 2),
                       (("token", "create", "bad name"), 1),
                       (("token", "create", "x" * 65), 1),
                       (("token", "create", "a", "--scope"), 2),
                       (("token", "create", "a", "--scope", "bogus"), 1),
                       (("token", "create", "a", "--scope=devices:read,nope"), 1),
                       (("token", "create", "a", "--scope", "admin", "--read-only"), 2),
                       (("token", "create", "a", "--expires", "soon"), 1),
                       (("token", "create", "a", "--expires=0"), 1),
                       (("token", "list", "--scope", "admin"), 2),
                       (("token", "revoke", "x", "--expires", "1d"), 2)]:
        cp = server.cli(*args, check=False)
        assert cp.returncode == code, (args, cp.returncode, cp.stderr)
        assert cp.stdout == "", (args, cp.stdout)
        if code == 2 and args == ("device", "list", "--read-only"):
            # another command's flag: one line pointing to `cyan help`
            assert "--read-only is not an option of `cyan device`" in cp.stderr, cp.stderr
            assert "`cyan help`" in cp.stderr and len(cp.stderr.splitlines()) == 1, cp.stderr
        elif code == 2:
            assert "usage:" in cp.stderr, (args, cp.stderr)
    cp = server.cli("token", "create", "bad name", check=False)
    assert "bad token name" in cp.stderr, cp.stderr
    cp = server.cli("token", "create", "a", "--scope", "devices:read,bogus", check=False)
    assert "unknown scope 'bogus'" in cp.stderr, cp.stderr
    assert "--read-only" in server.cli("--help", data_dir=False).stdout


def read_admin_token(server):
    path = os.path.join(server.data_dir, "admin-token")
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    with open(path) as f:
        text = f.read()
    m = re.fullmatch(r"(%s)\n" % TOKEN_RE, text)
    assert m, repr(text)
    return m.group(2), m.group(1)


def test_admin_token_created_on_first_start(server):
    tid, text = read_admin_token(server)
    path = os.path.join(server.data_dir, "admin-token")
    assert server.wait_log("%s; it is in %s; create others with `cyan token create`"
                           % (FIRST_TOKEN_LOG, path))
    rows = token_rows(server)
    assert list(rows) == [tid], rows
    assert rows[tid][:2] == ("admin", ALL), rows
    # A restart makes no other and leaves the file alone.
    server.restart()
    assert read_admin_token(server) == (tid, text)
    assert server.log().count(FIRST_TOKEN_LOG) == 1
    assert list(token_rows(server)) == [tid]


def test_admin_token_not_created_when_tokens_exist(server):
    # Revoke the first token and make one of our own: the next start leaves
    # the registry (and the stale file) alone.
    tid, text = read_admin_token(server)
    mine, _ = create_token(server, "mine")
    server.cli("token", "revoke", tid)
    server.restart()
    assert list(token_rows(server)) == [mine]
    assert read_admin_token(server) == (tid, text)
    assert server.log().count(FIRST_TOKEN_LOG) == 1
    # With every token revoked, the next start makes a new first one and
    # replaces the stale file.
    server.cli("token", "revoke", mine)
    server.restart()
    new_id, new_text = read_admin_token(server)
    assert new_id != tid and new_text != text
    assert list(token_rows(server)) == [new_id]
    assert server.log().count(FIRST_TOKEN_LOG) == 2


# The registry schema before API tokens (version 1), as cyan created it.
REGISTRY_V1 = """
CREATE TABLE IF NOT EXISTS devices(
 id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL UNIQUE, salt BLOB NOT NULL,
 hash BLOB NOT NULL, created_at INTEGER NOT NULL);
PRAGMA user_version = 1;
"""


def test_registry_v1_migrates_on_start(server):
    """A data dir from before tokens: migrated to the current version (5)
    one version at a time, its devices still connect, have no PSK until one
    is issued (`cyan device psk`), and the first start makes the admin
    token."""
    server.stop()
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(os.path.join(server.data_dir, "registry.db" + suffix))
        except FileNotFoundError:
            pass
    os.unlink(os.path.join(server.data_dir, "admin-token"))
    dev = Device("00112233445566778899aabb", "0123456789abcdef0123456789abcdef", "old")
    salt = bytes(range(16))
    db = sqlite3.connect(os.path.join(server.data_dir, "registry.db"))
    db.execute("PRAGMA journal_mode = WAL")
    db.executescript(REGISTRY_V1)
    db.execute("INSERT INTO devices VALUES(?, ?, ?, ?, 1)",
               (dev.id, dev.name, salt,
                hmac.new(salt, dev.secret.encode(), hashlib.sha256).digest()))
    db.commit()
    db.close()
    server.start()
    assert server.wait_log("migrating schema version 1 to 2")
    assert server.wait_log("migrating schema version 2 to 3")
    assert server.wait_log("migrating schema version 3 to 4")
    assert server.wait_log("migrating schema version 4 to 5")
    assert server.wait_log("migrating schema version 5 to 6")
    tid, _ = read_admin_token(server)
    assert list(token_rows(server)) == [tid]
    out = server.cli("device", "list").stdout
    assert "%s  old" % dev.id in out, out
    with Client(server, dev) as c:
        sp, rc, _ = c.connect()
        assert rc == 0
    db = sqlite3.connect(os.path.join(server.data_dir, "registry.db"))
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 6
        # Every device it had is a user's (version 3 marks cyan's own).
        assert db.execute("SELECT internal FROM devices WHERE id = ?", (dev.id,)).fetchall() \
            == [(0,)]
    finally:
        db.close()
    assert stored_psk(server, dev.id) is None
    cp = server.cli("device", "psk", "old")
    assert re.fullmatch(r"psk: [0-9a-f]{32}\n", cp.stdout), cp.stdout
    assert len(stored_psk(server, dev.id)) == 60


def test_etc_cyan_conf_is_cyan_config(server):
    """etc/cyan.conf is generated from the settings table (`cyan config`):
    a setting added without regenerating it would be missing there."""
    cp = server.cli("config", data_dir=False)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(repo, "etc", "cyan.conf")) as f:
        assert f.read() == cp.stdout, "etc/cyan.conf is stale: run `build/cyan config > etc/cyan.conf`"
