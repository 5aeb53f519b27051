"""Device authentication: MQTT username = device id, password = secret.
allow_anonymous is false by default."""

import time

import pytest

import rawmqtt as rm
from helpers import Client, raw, uniq, wait_until

# CONNACK codes by protocol: (3.1.1 return code, 5.0 reason code)
BAD_CREDENTIALS = {4: 4, 5: 0x86}
NOT_AUTHORIZED = {4: 5, 5: 0x87}


@pytest.mark.parametrize("version", [4, 5])
def test_right_credentials_accepted(server, device, version):
    with Client(server, device, version=version) as c:
        sp, rc, _ = c.connect()
        assert (sp, rc) == (0, 0)
        topic = uniq("auth/")
        c.subscribe(topic, 1)
        c.publish(topic, b"hi", qos=1)
        assert c.get().payload == b"hi"


@pytest.mark.cyan_only
@pytest.mark.parametrize("version", [4, 5])
def test_wrong_secret_refused(server, device, version):
    wrong = ("0" if device.secret[0] != "0" else "1") + device.secret[1:]
    with raw(server, version) as c:
        ack = c.connect(uniq("r"), username=device.id, password=wrong)
        assert ack.rc == BAD_CREDENTIALS[version]
        assert ack.session_present == 0
        c.wait_closed(2.0)


@pytest.mark.cyan_only
@pytest.mark.parametrize("version", [4, 5])
def test_no_username_refused_without_anonymous(server, version):
    with raw(server, version) as c:
        ack = c.connect(uniq("r"))
        assert ack.rc == NOT_AUTHORIZED[version]
        c.wait_closed(2.0)


@pytest.mark.cyan_only
@pytest.mark.parametrize("version", [4, 5])
def test_unknown_device_refused(server, device, version):
    unknown = ("f" if device.id[0] != "f" else "e") + device.id[1:]
    with raw(server, version) as c:
        ack = c.connect(uniq("r"), username=unknown, password=device.secret)
        assert ack.rc == BAD_CREDENTIALS[version]
        c.wait_closed(2.0)


@pytest.mark.cyan_only
@pytest.mark.parametrize("version", [4, 5])
def test_username_without_password_refused(server, device, version):
    with raw(server, version) as c:
        ack = c.connect(uniq("r"), username=device.id)
        assert ack.rc == BAD_CREDENTIALS[version]
        c.wait_closed(2.0)


@pytest.mark.parametrize("version", [4, 5])
def test_anonymous_allowed_when_enabled(server_factory, version):
    srv = server_factory(allow_anonymous=True)
    with raw(srv, version) as c:
        ack = c.connect(uniq("anon"))
        assert ack.rc == 0
        c.send(rm.pingreq())
        c.expect(rm.PINGRESP)
        c.disconnect()


@pytest.mark.cyan_only
def test_removed_device_cannot_connect(server, new_device):
    dev = new_device()
    with Client(server, dev) as c:
        c.connect()
        c.disconnect()
    server.cli("device", "remove", dev.id)
    # Each shard rechecks its registry cache every 200 ms: the removal holds
    # within about a second, and from then on.
    def refused(version):
        with raw(server, version) as c:
            ack = c.connect(uniq("r"), username=dev.id, password=dev.secret)
            if ack.rc == 0:
                return False
            assert ack.rc == BAD_CREDENTIALS[version]
            c.wait_closed(2.0)
            return True
    assert wait_until(lambda: refused(5), timeout=1.5, interval=0.1)
    time.sleep(0.5)  # past every shard's next recheck (each client id may land on another)
    for version in (4, 5):
        assert refused(version)
