/** One error class per HTTP failure, built in one place from the status (`makeError`). */
import type { ErrorBody } from "./types.ts";

export class ImageGenError extends Error {
  override readonly name: string = "ImageGenError";
}

export class APIError extends ImageGenError {
  override readonly name: string = "APIError";
  readonly status: number;
  readonly type: string;
  readonly code: string;
  readonly param: string | undefined;
  readonly requestId: string | undefined;
  readonly headers: Headers;

  constructor(status: number, body: ErrorBody | undefined, headers: Headers, url?: string) {
    // An answer without the API's error envelope is most often another server answering: a wrong base URL.
    super(
      body?.error?.message ??
        `HTTP ${status} from ${url ?? "the server"}, which did not answer as the imagegen API (is the base URL right?)`,
    );
    this.status = status;
    this.type = body?.error.type ?? "api_error";
    this.code = body?.error.code ?? "http_error";
    this.param = body?.error.param;
    this.requestId = body?.error.request_id ?? headers.get("x-request-id") ?? undefined;
    this.headers = headers;
  }
}

export class BadRequestError extends APIError {
  override readonly name = "BadRequestError";
}
export class AuthenticationError extends APIError {
  override readonly name = "AuthenticationError";
}
export class PermissionDeniedError extends APIError {
  override readonly name = "PermissionDeniedError";
}
export class NotFoundError extends APIError {
  override readonly name = "NotFoundError";
}
export class ConflictError extends APIError {
  override readonly name = "ConflictError";
}
export class UnprocessableEntityError extends APIError {
  override readonly name = "UnprocessableEntityError";
}
export class RateLimitError extends APIError {
  override readonly name = "RateLimitError";
}
export class InternalServerError extends APIError {
  override readonly name = "InternalServerError";
}

/** The network failed before an answer came (the base URL names no reachable server, a dropped connection). */
export class APIConnectionError extends ImageGenError {
  override readonly name: string = "APIConnectionError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** No answer within the timeout (the client's, or the request's own). A connection error, so it is retried. */
export class APITimeoutError extends APIConnectionError {
  override readonly name = "APITimeoutError";
}

/** The caller aborted the request through its `signal`; never retried. */
export class APIUserAbortError extends ImageGenError {
  override readonly name = "APIUserAbortError";
  constructor(message = "the request was aborted", options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** A webhook whose signature or timestamp does not check out (`webhooks.verify`). */
export class WebhookVerificationError extends ImageGenError {
  override readonly name = "WebhookVerificationError";
}

/** A generation ended without images (failed or canceled) where images were awaited. */
export class GenerationFailedError extends ImageGenError {
  override readonly name = "GenerationFailedError";
  readonly generationId: string;
  readonly code: string;
  constructor(generationId: string, code: string, message: string) {
    super(message);
    this.generationId = generationId;
    this.code = code;
  }
}

export function makeError(status: number, body: ErrorBody | undefined, headers: Headers, url?: string): APIError {
  const Class =
    status === 400 || status === 413 || status === 415
      ? BadRequestError
      : status === 401
        ? AuthenticationError
        : status === 403
          ? PermissionDeniedError
          : status === 404
            ? NotFoundError
            : status === 409
              ? ConflictError
              : status === 422
                ? UnprocessableEntityError
                : status === 429
                  ? RateLimitError
                  : status >= 500
                    ? InternalServerError
                    : APIError;
  return new Class(status, body, headers, url);
}
