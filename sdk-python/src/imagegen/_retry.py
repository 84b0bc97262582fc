"""The retry policy, the same as the TypeScript SDK's (sdk/src/retry.ts): which answers are worth another attempt
and how long to wait before it, so a server asking its clients to slow down is obeyed by every client alike."""

import email.utils
import random
import time
from collections.abc import Mapping

BASE_DELAY_S = 0.5
MAX_DELAY_S = 8.0
# A server's Retry-After is obeyed up to this long; past it the client would rather fail than hang.
MAX_RETRY_AFTER_S = 60.0


def is_retryable_status(status: int) -> bool:
    """408, 429 and 5xx may differ on another attempt; other 4xx (409 included) are the server's answer."""
    return status == 408 or status == 429 or status >= 500


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The wait a `Retry-After` header asks for (seconds or an HTTP date), capped; None when there is none."""
    after = headers.get("retry-after") if headers is not None else None
    if not after:
        return None
    try:
        seconds = float(after)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(after).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(MAX_RETRY_AFTER_S, seconds))


def retry_delay(attempt: int, headers: Mapping[str, str] | None = None) -> float:
    """Seconds before retry `attempt` (0-based): Retry-After when given, else exponential backoff with jitter."""
    after = retry_after_seconds(headers)
    if after is not None:
        return after
    return min(MAX_DELAY_S, BASE_DELAY_S * 2**attempt) * (0.75 + random.random() / 2)
