"""Webhook verification (Standard Webhooks, https://www.standardwebhooks.com): each delivery carries

    webhook-id: <delivery id>   webhook-timestamp: <unix seconds>   webhook-signature: v1,<base64> [v1,<base64> …]

where each signature is HMAC-SHA256 over "<id>.<timestamp>.<raw body>" keyed by the base64 after `whsec_` in the
secret. A delivery verifies when one of its signatures matches one of the secrets given (so both the old and the
new secret work during a rotation) and its timestamp is within the tolerance of now (so a captured delivery
cannot be replayed later).

    payload = imagegen.webhooks.verify(request.body, request.headers, secret)
"""

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import WebhookVerificationError

TOLERANCE_S = 5 * 60
PREFIX = "whsec_"


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(PREFIX)
    padded = raw + "=" * (-len(raw) % 4)
    try:
        # Standard base64; the URL-safe alphabet is read too.
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except binascii.Error as exc:
        raise WebhookVerificationError(f"the webhook secret is not {PREFIX}<base64>") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The `v1,<base64>` signature of one delivery (what the server sends; for tests and local tools)."""
    payload = body.encode() if isinstance(body, str) else body
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + payload, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"the delivery has no {name} header")


def verify(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    tolerance_s: int = TOLERANCE_S,
    now: float | None = None,
) -> Any:
    """Checks a delivery's signature and timestamp and returns its JSON payload; raises WebhookVerificationError.

    `body` must be the raw bytes as received: re-serialised JSON does not verify."""
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise WebhookVerificationError(f"webhook-timestamp {stamp!r} is not unix seconds") from exc
    now = time.time() if now is None else now
    if timestamp < now - tolerance_s:
        raise WebhookVerificationError(f"the delivery's timestamp is too old ({int(now - timestamp)} s)")
    if timestamp > now + tolerance_s:
        raise WebhookVerificationError("the delivery's timestamp is in the future")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    expected = {sign(s, msg_id, timestamp, body).encode() for s in secrets}
    given = [sig.encode() for sig in _header(headers, "webhook-signature").split() if sig.startswith("v1,")]
    if not any(hmac.compare_digest(g, e) for g in given for e in expected):
        raise WebhookVerificationError("no signature of the delivery matches the secret")
    return json.loads(body)
