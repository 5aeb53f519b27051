"""The admin command line: `cyan device add|list|remove` on the registry in
the data dir (also while the server runs), and `cyan config`."""

import re

import pytest

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
    assert len(lines) == 2, cp.stdout
    assert re.fullmatch(r"id: [0-9a-f]{24}", lines[0]), lines
    assert re.fullmatch(r"secret: [0-9a-f]{32}", lines[1]), lines
    other = server.add_device("sensor-b")
    assert other.id != lines[0][4:] and other.secret != lines[1][8:]


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
