"""A receiver's check of a webhook request, written from the Standard
Webhooks specification (version 1.0.0, "Verifying webhook authenticity"),
not from cyan's code, so that the tests hold cyan to the spec and not to
itself.

The scheme: the sender has a secret "whsec_<base64 of the key bytes>". Each
request carries
    webhook-id         the message id (the same on every retry)
    webhook-timestamp  integer Unix seconds of this attempt
    webhook-signature  a space-separated list of "<version>,<signature>";
                       symmetric ones are "v1,<base64 of HMAC-SHA256(key,
                       "<id>.<timestamp>.<body>")>" (the body exactly as sent)
Several signatures let a sender rotate its secret without downtime: the
receiver accepts the request when any v1 signature matches its secret, and
ignores entries of other versions (v1a is the asymmetric scheme). The
timestamp must lie within a tolerance of the receiver's clock (replay
protection); signatures are compared in constant time.

    verify("whsec_...", request.headers, request.body)           # raises VerificationError
    verify(secret, headers, body, tolerance=300, now=time.time())

Stricter than the spec's minimum on purpose: an id or timestamp containing
"." is refused (the spec says the sender must not allow it), and a timestamp
must be plain decimal digits.
"""

import base64
import binascii
import hashlib
import hmac
import time

__all__ = ["VerificationError", "verify", "secret_key", "DEFAULT_TOLERANCE"]

DEFAULT_TOLERANCE = 300  # seconds either way; the reference libraries use 5 minutes


class VerificationError(Exception):
    """The request is not authentic (or not fresh)."""


def secret_key(secret):
    """The HMAC key of a "whsec_<base64>" secret. ValueError if malformed."""
    if not isinstance(secret, str) or not secret.startswith("whsec_"):
        raise ValueError("a secret is whsec_<base64>, not %r" % (secret,))
    try:
        key = base64.b64decode(secret[len("whsec_"):], validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError("secret is not whsec_<base64>: %s" % e) from None
    if not key:
        raise ValueError("empty secret")
    return key


def _header(headers, name):
    """headers: a mapping (any case of names) or a list of (name, value)."""
    items = headers.items() if hasattr(headers, "items") else headers
    found = [v for k, v in items if k.lower() == name]
    if len(found) > 1:
        raise VerificationError("%s appears %d times" % (name, len(found)))
    return found[0] if found else None


def verify(secret, headers, body, tolerance=DEFAULT_TOLERANCE, now=None):
    """Check a request; return None if authentic, raise VerificationError if
    not (missing or malformed headers, timestamp outside now +- tolerance
    seconds, no v1 signature matching). body: bytes (str is taken as UTF-8)."""
    key = secret_key(secret)
    if isinstance(body, str):
        body = body.encode()
    msg_id = _header(headers, "webhook-id")
    ts = _header(headers, "webhook-timestamp")
    sigs = _header(headers, "webhook-signature")
    if not msg_id:
        raise VerificationError("missing webhook-id")
    if "." in msg_id:
        raise VerificationError("webhook-id contains '.': %r" % msg_id)
    if not ts:
        raise VerificationError("missing webhook-timestamp")
    if not (ts.isascii() and ts.isdigit()):
        raise VerificationError("webhook-timestamp is not integer seconds: %r" % ts)
    if not sigs:
        raise VerificationError("missing webhook-signature")
    now = time.time() if now is None else now
    if int(ts) < now - tolerance:
        raise VerificationError("webhook-timestamp %s is too old (now %d, tolerance %d s)"
                                % (ts, now, tolerance))
    if int(ts) > now + tolerance:
        raise VerificationError("webhook-timestamp %s is too new (now %d, tolerance %d s)"
                                % (ts, now, tolerance))
    signed = msg_id.encode() + b"." + ts.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    versions = []
    for entry in sigs.split():
        version, sep, sig = entry.partition(",")
        versions.append(version)
        if version != "v1" or not sep:
            continue
        if hmac.compare_digest(expected, sig.encode("ascii", "replace")):
            return None
    if "v1" not in versions:
        raise VerificationError("no v1 signature in webhook-signature: %r" % sigs)
    raise VerificationError("no v1 signature matches (%d given)" % versions.count("v1"))
