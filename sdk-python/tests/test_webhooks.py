"""Standard Webhooks verification: the spec's published vector, good, stale, future, wrong, rotated."""

import base64
import json
import time
from datetime import UTC, datetime

import pytest

from imagegen import WebhookVerificationError, webhooks

# The test vector of the Standard Webhooks specification (standard-webhooks/standard-webhooks, libraries' tests).
VECTOR = {
    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
    "timestamp": 1614265330,
    "body": '{"test": 2432232314}',
    "signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
}
NOW = 1_800_000_000
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
BODY = json.dumps({"type": "generation.succeeded", "data": {"id": "gen_1"}}).encode()


def headers(secret=SECRET, timestamp=NOW, msg_id="whd_1", body=BODY):
    return {
        "Webhook-Id": msg_id,
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": webhooks.sign(secret, msg_id, timestamp, body),
    }


def test_the_specs_vector():
    assert webhooks.sign(VECTOR["secret"], VECTOR["id"], VECTOR["timestamp"], VECTOR["body"]) == VECTOR["signature"]
    h = {
        "webhook-id": VECTOR["id"],
        "webhook-timestamp": str(VECTOR["timestamp"]),
        "webhook-signature": VECTOR["signature"],
    }
    assert webhooks.verify(VECTOR["body"], h, VECTOR["secret"], now=VECTOR["timestamp"] + 10) == {"test": 2432232314}


def test_a_good_delivery_returns_its_payload():
    assert webhooks.verify(BODY, headers(), SECRET, now=NOW + 60)["type"] == "generation.succeeded"


def test_a_stale_or_future_timestamp_fails():
    with pytest.raises(WebhookVerificationError, match="too old"):
        webhooks.verify(BODY, headers(timestamp=NOW - 301), SECRET, now=NOW)
    with pytest.raises(WebhookVerificationError, match="future"):
        webhooks.verify(BODY, headers(timestamp=NOW + 301), SECRET, now=NOW)


def test_a_wrong_signature_or_a_changed_body_fails():
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError, match="no signature"):
        webhooks.verify(BODY, headers(secret=other), SECRET, now=NOW)
    with pytest.raises(WebhookVerificationError, match="no signature"):
        webhooks.verify(BODY.replace(b"gen_1", b"gen_2"), headers(), SECRET, now=NOW)
    h = headers()
    h["Webhook-Id"] = "whd_2"  # a signature is bound to its delivery id
    with pytest.raises(WebhookVerificationError):
        webhooks.verify(BODY, h, SECRET, now=NOW)


def test_rotation_several_signatures_and_several_secrets():
    old = "whsec_" + base64.b64encode(b"o" * 32).decode()
    both = headers()
    both["Webhook-Signature"] = headers(secret=old)["Webhook-Signature"] + " " + both["Webhook-Signature"]
    assert webhooks.verify(BODY, both, SECRET, now=NOW)  # the new secret matches the second signature
    assert webhooks.verify(BODY, headers(secret=old), [SECRET, old], now=NOW)  # a receiver still holding both


def test_missing_headers_and_bad_secrets_fail():
    with pytest.raises(WebhookVerificationError, match="webhook-signature"):
        webhooks.verify(BODY, {"webhook-id": "a", "webhook-timestamp": str(NOW)}, SECRET, now=NOW)
    with pytest.raises(WebhookVerificationError, match="base64"):
        webhooks.verify(BODY, headers(), "whsec_!!!", now=NOW)


def test_agrees_with_the_official_package():
    """Against the official `standardwebhooks` package (in .ci/.venv, which .ci/run creates)."""
    import standardwebhooks.webhooks as official  # .ci/run installs it: a check that cannot run fails

    now = int(time.time())
    ours = {k.lower(): v for k, v in headers(timestamp=now).items()}
    assert official.Webhook(SECRET).verify(BODY, ours) == json.loads(BODY)
    theirs = dict(
        ours,
        **{
            "webhook-signature": official.Webhook(SECRET).sign("whd_1", datetime.fromtimestamp(now, UTC), BODY.decode())
        },
    )
    assert webhooks.verify(BODY, theirs, SECRET) == json.loads(BODY)
    with pytest.raises(official.WebhookVerificationError):
        official.Webhook(SECRET).verify(BODY, {**ours, "webhook-timestamp": str(now - 301)})
