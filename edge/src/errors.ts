/**
 * One error envelope everywhere: `{ error: { type, code, message, param?, request_id } }`.
 * Handlers throw `ApiError`; `app.onError` renders it (and anything unexpected as a 500).
 */
import type { ErrorBody, ErrorType } from "@imagegen/contracts/errors";
import type { ContentfulStatusCode } from "hono/utils/http-status";

export class ApiError extends Error {
  constructor(
    readonly status: ContentfulStatusCode,
    readonly type: ErrorType,
    readonly code: string,
    message: string,
    readonly param?: string,
    readonly headers?: Record<string, string>,
  ) {
    super(message);
  }

  static invalid(code: string, message: string, param?: string): ApiError {
    return new ApiError(400, "invalid_request_error", code, message, param);
  }

  /** A resource that does not exist, or that the caller may not know exists: both answer the same 404. */
  static notFound(what: string, id: string, param?: string): ApiError {
    return new ApiError(404, "not_found_error", "resource_not_found", `No ${what} with id '${id}'.`, param);
  }

  static unauthenticated(message: string): ApiError {
    return new ApiError(401, "authentication_error", "invalid_credentials", message);
  }

  static forbidden(code: string, message: string): ApiError {
    return new ApiError(403, "permission_error", code, message);
  }

  static conflict(code: string, message: string): ApiError {
    return new ApiError(409, "conflict_error", code, message);
  }
}

export function errorBody(err: ApiError, requestId: string): ErrorBody {
  return {
    error: {
      type: err.type,
      code: err.code,
      message: err.message,
      ...(err.param ? { param: err.param } : {}),
      request_id: requestId,
    },
  };
}
