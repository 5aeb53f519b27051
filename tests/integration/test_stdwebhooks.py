"""The Standard Webhooks verifier (stdwebhooks.py) on its own, without cyan:
the example published with the specification's reference libraries, and
cases signed here with Python's hmac, each broken in one way.

The published example (the reference libraries' sign test): secret
whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, id msg_p5jXN8AQM9LWM0D4loKWxJek,
timestamp 1614265330, body {"test": 2432232314}, signature
v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=.
"""

import base64
import hashlib
import hmac
import os
import time

import pytest

from stdwebhooks import VerificationError, secret_key, verify

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def spec_headers(sig=SPEC_SIG):
    return {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS), "webhook-signature": sig}


def new_secret(n=24):
    return "whsec_" + base64.b64encode(os.urandom(n)).decode()


def sign(secret, msg_id, ts, body):
    key = base64.b64decode(secret[len("whsec_"):])
    mac = hmac.new(key, b"%s.%d.%s" % (msg_id.encode(), ts, body), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed(secret, body=b'{"name":"temp","data":"21.5"}', msg_id="2-1764855332123456", ts=None):
    ts = int(time.time()) if ts is None else ts
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, msg_id, ts, body)}, body


def test_published_example_verifies():
    verify(SPEC_SECRET, spec_headers(), SPEC_BODY, now=SPEC_TS)
    verify(SPEC_SECRET, spec_headers(), SPEC_BODY.decode(), now=SPEC_TS + 299)


def test_published_example_our_hmac_agrees():
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIG


def test_published_example_one_bit_off_fails():
    # the reference tests' invalid signature: last character changed
    with pytest.raises(VerificationError, match="no v1 signature matches"):
        verify(SPEC_SECRET, spec_headers("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="),
               SPEC_BODY, now=SPEC_TS)


def test_published_example_outside_tolerance():
    with pytest.raises(VerificationError, match="too old"):
        verify(SPEC_SECRET, spec_headers(), SPEC_BODY, now=SPEC_TS + 301)
    with pytest.raises(VerificationError, match="too new"):
        verify(SPEC_SECRET, spec_headers(), SPEC_BODY, now=SPEC_TS - 301)
    with pytest.raises(VerificationError, match="too old"):
        verify(SPEC_SECRET, spec_headers(), SPEC_BODY)  # today's clock, 2021's timestamp
    verify(SPEC_SECRET, spec_headers(), SPEC_BODY, tolerance=10, now=SPEC_TS - 10)


def test_hand_made_request_verifies():
    s = new_secret()
    h, body = signed(s)
    verify(s, h, body)


def test_any_matching_signature_is_enough():
    old, new = new_secret(), new_secret(32)
    h, body = signed(new)
    h_old, _ = signed(old, ts=int(h["webhook-timestamp"]))
    both = h["webhook-signature"] + " " + h_old["webhook-signature"]
    # rotation: both signatures in one header, either secret verifies
    verify(new, dict(h, **{"webhook-signature": both}), body)
    verify(old, dict(h, **{"webhook-signature": both}), body)
    # other versions and junk entries are skipped, extra spaces too
    sigs = "v1a,AAAA v2,%s  junk  %s" % (h["webhook-signature"][3:], h["webhook-signature"])
    verify(new, dict(h, **{"webhook-signature": sigs}), body)
    with pytest.raises(VerificationError, match="no v1 signature matches"):
        verify(new_secret(), dict(h, **{"webhook-signature": both}), body)


def test_only_other_versions_fails():
    s = new_secret()
    h, body = signed(s)
    h["webhook-signature"] = "v2," + h["webhook-signature"][3:]
    with pytest.raises(VerificationError, match="no v1 signature"):
        verify(s, h, body)


@pytest.mark.parametrize("change", [
    "body", "id", "timestamp", "secret", "signature_base64url", "signature_no_padding",
    "no_comma", "signature_of_body_only",
])
def test_any_change_fails(change):
    s = new_secret()
    h, body = signed(s)
    ts = int(h["webhook-timestamp"])
    sig = h["webhook-signature"]
    if change == "body":
        body = body + b" "
    elif change == "id":
        h["webhook-id"] = "2-1764855332123457"
    elif change == "timestamp":
        h["webhook-timestamp"] = str(ts + 1)
    elif change == "secret":
        s = new_secret()
    elif change == "signature_base64url":
        h["webhook-signature"] = sig.replace("+", "-").replace("/", "_")
        if h["webhook-signature"] == sig:
            h["webhook-signature"] = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    elif change == "signature_no_padding":
        h["webhook-signature"] = sig.rstrip("=")
    elif change == "no_comma":
        h["webhook-signature"] = "v1" + sig[3:]
    elif change == "signature_of_body_only":
        key = secret_key(s)
        h["webhook-signature"] = "v1," + base64.b64encode(
            hmac.new(key, body, hashlib.sha256).digest()).decode()
    with pytest.raises(VerificationError):
        verify(s, h, body)


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_or_empty_header_fails(name):
    s = new_secret()
    h, body = signed(s)
    del h[name]
    with pytest.raises(VerificationError, match="missing " + name):
        verify(s, h, body)
    h[name] = ""
    with pytest.raises(VerificationError, match="missing " + name):
        verify(s, h, body)


@pytest.mark.parametrize("ts", ["hello", "1.5e9", "-5", " 1764855332", "1764855332.0", "١٧٦٤"])
def test_malformed_timestamp_fails(ts):
    s = new_secret()
    h, body = signed(s)
    h["webhook-timestamp"] = ts
    with pytest.raises(VerificationError, match="not integer seconds"):
        verify(s, h, body)


def test_id_with_dot_fails_even_when_signed():
    s = new_secret()
    h, body = signed(s, msg_id="2.17")
    with pytest.raises(VerificationError, match="contains '.'"):
        verify(s, h, body)


def test_header_names_any_case_and_pairs():
    s = new_secret()
    h, body = signed(s)
    verify(s, {k.upper(): v for k, v in h.items()}, body)
    verify(s, [(k.title(), v) for k, v in h.items()], body)
    with pytest.raises(VerificationError, match="appears 2 times"):
        verify(s, list(h.items()) + [("Webhook-Id", "x")], body)


def test_binary_and_empty_bodies():
    s = new_secret()
    for body in (b"", bytes(range(256)), b"\xff\xfe" * 1000):
        h, _ = signed(s, body=body)
        verify(s, h, body)


@pytest.mark.parametrize("bad", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_!!!!",
                                 "whsec_abc", None, b"whsec_AAAA"])
def test_malformed_secret_is_a_value_error(bad):
    h, body = spec_headers(), SPEC_BODY
    with pytest.raises(ValueError):
        verify(bad, h, body, now=SPEC_TS)
