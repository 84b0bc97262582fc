"""The imagegen Python SDK.

from imagegen import ImageGen
client = ImageGen()  # IMAGEGEN_API_KEY, IMAGEGEN_BASE_URL
g = client.generations.create_and_wait(prompt="a large red circle on the left, blue background", steps=4)
print(g.images[0].url)
"""

from . import types, webhooks
from ._client import AsyncImageGen, ImageGen
from ._core import RequestOptions, __version__
from ._retry import is_retryable_status, retry_delay
from .errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    GenerationFailedError,
    ImageGenError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
    WebhookVerificationError,
)
from .resources.addons import UploadResult

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncImageGen",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "GenerationFailedError",
    "ImageGen",
    "ImageGenError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestOptions",
    "UnprocessableEntityError",
    "UploadResult",
    "WebhookVerificationError",
    "__version__",
    "is_retryable_status",
    "retry_delay",
    "types",
    "webhooks",
]
