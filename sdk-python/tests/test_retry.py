from email.utils import formatdate
from time import time

from imagegen._retry import MAX_RETRY_AFTER_S, is_retryable_status, retry_after_seconds, retry_delay


def test_retryable_statuses_match_the_typescript_policy():
    assert [s for s in (400, 401, 404, 408, 409, 422, 429, 500, 502, 503) if is_retryable_status(s)] == [
        408,
        429,
        500,
        502,
        503,
    ]


def test_retry_after_in_seconds_or_as_a_date_capped():
    assert retry_after_seconds({"retry-after": "3"}) == 3
    assert retry_after_seconds({"retry-after": "3600"}) == MAX_RETRY_AFTER_S
    assert 8 <= retry_after_seconds({"retry-after": formatdate(time() + 10, usegmt=True)}) <= 10
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_backoff_grows_and_is_capped():
    assert 0.375 <= retry_delay(0) < 0.625
    assert 1.5 <= retry_delay(2) < 2.5
    assert 6 <= retry_delay(10) < 10
    assert retry_delay(5, {"retry-after": "1"}) == 1
