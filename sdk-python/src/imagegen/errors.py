"""One error class per HTTP failure, built in one place from the status (`make_error`), as in the TypeScript SDK."""

from collections.abc import Mapping
from typing import Any


class ImageGenError(Exception):
    """Every error this SDK raises."""


class APIError(ImageGenError):
    """The server answered with an error status. `code` and `type` come from its error envelope."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str], *, url: str = "", hint: str = ""):
        error = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
        self.status = status
        self.type: str = error.get("type", "api_error")
        self.code: str = error.get("code", "http_error")
        self.param: str | None = error.get("param")
        self.request_id: str | None = error.get("request_id") or headers.get("x-request-id")
        self.headers = headers
        self.url = url
        # An answer without the API's envelope usually means the base URL points at something else.
        message = error.get("message") or f"HTTP {status} from {url or 'the server'} (not an imagegen API answer)"
        super().__init__(f"{message}{hint}")


class BadRequestError(APIError): ...


class AuthenticationError(APIError): ...


class PermissionDeniedError(APIError): ...


class NotFoundError(APIError): ...


class ConflictError(APIError): ...


class UnprocessableEntityError(APIError): ...


class RateLimitError(APIError): ...


class InternalServerError(APIError): ...


class APIConnectionError(ImageGenError):
    """The network failed (or timed out) before an answer came; the message names the URL."""


class GenerationFailedError(ImageGenError):
    """A generation ended without images (failed or canceled) where images were awaited."""

    def __init__(self, generation_id: str, code: str, message: str):
        super().__init__(message)
        self.generation_id = generation_id
        self.code = code


class WebhookVerificationError(ImageGenError):
    """A webhook delivery's signature or timestamp did not verify: the request must be rejected."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    413: BadRequestError,
    415: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def make_error(status: int, body: Any, headers: Mapping[str, str], *, url: str = "", hint: str = "") -> APIError:
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIError)
    return cls(status, body, headers, url=url, hint=hint)
