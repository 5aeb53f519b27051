"""Keep-alive: a silent client is dropped after 1.5 x keepalive; a client
that pings stays; a socket that never sends CONNECT is closed within
connect_timeout."""

import time

import pytest

import rawmqtt as rm
from helpers import CYAN, raw, raw_connected

# mosquitto 2.0 checks keep-alive only every few seconds; the bound is cyan's.
UPPER = 3.2 if CYAN else 7.0


@pytest.mark.parametrize("version", [4, 5])
def test_silent_client_dropped_after_one_and_a_half_keepalive(server, device, version):
    c, _ = raw_connected(server, device, version=version, keepalive=1)
    with c:
        t0 = time.monotonic()
        c.wait_closed(UPPER + 0.5)
        elapsed = time.monotonic() - t0
    assert 1.45 <= elapsed <= UPPER, "closed after %.2fs (keepalive 1s)" % elapsed


@pytest.mark.parametrize("version", [4, 5])
def test_pinging_client_stays(server, device, version):
    c, _ = raw_connected(server, device, version=version, keepalive=1)
    with c:
        for _ in range(6):  # 3 s, twice the drop time
            time.sleep(0.5)
            c.send(rm.pingreq())
            c.expect(rm.PINGRESP, timeout=2.0)
        assert c.is_open()
        c.disconnect()


def test_publishing_client_stays(server, device):
    """Any packet counts as activity, not only PINGREQ."""
    c, _ = raw_connected(server, device, keepalive=1)
    with c:
        for i in range(5):
            time.sleep(0.5)
            c.publish("ka/pub", b"x", qos=1, pid=i + 1)
        assert c.is_open()
        c.disconnect()


def test_keepalive_zero_is_not_dropped(server, device):
    c, _ = raw_connected(server, device, keepalive=0)
    with c:
        time.sleep(2.0)
        c.send(rm.pingreq())
        c.expect(rm.PINGRESP)
        c.disconnect()


@pytest.mark.cyan_only
def test_no_connect_closed_within_connect_timeout(server_factory):
    srv = server_factory(connect_timeout=1)
    c = raw(srv)
    with c:
        t0 = time.monotonic()
        c.wait_closed(3.0)
        elapsed = time.monotonic() - t0
    assert 0.8 <= elapsed <= 2.5, "closed after %.2fs (connect_timeout 1s)" % elapsed


@pytest.mark.cyan_only
def test_partial_connect_closed_within_connect_timeout(server_factory):
    """Half a CONNECT is no excuse either (slowloris)."""
    srv = server_factory(connect_timeout=1)
    c = raw(srv)
    with c:
        pkt = rm.connect("slow", username="x", password="y")
        c.send(pkt[:len(pkt) // 2])
        t0 = time.monotonic()
        c.wait_closed(3.0)
        assert time.monotonic() - t0 <= 2.5
