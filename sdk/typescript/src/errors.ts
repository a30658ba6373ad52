/**
 * One error root, {@link CorralError}, and one class per code the server answers with
 * (`src/corral/api/errors.py` is the source of the codes; a test checks this file lists
 * each). Every error body is `{"error": {"code", "message"}}`; a response without that
 * body (a proxy's 502) maps by its HTTP status, as the Python SDK does.
 */

/** The codes of the wire's error body. */
export type ErrorCode =
  | "invalid_argument"
  | "not_found"
  | "already_exists"
  | "permission_denied"
  | "unauthenticated"
  | "resource_exhausted"
  | "sandbox_timeout"
  | "command_timeout"
  | "sandbox_not_running"
  | "runtime_unavailable"
  | "agent_error"
  | "request_too_large"
  | "rate_limited"
  | "unavailable"
  | "port_unavailable"
  | "build_failed"
  | "internal";

/** Root of every error the SDK throws (an aborted call throws the signal's reason instead). */
export class CorralError extends Error {
  /** The machine-readable code. */
  readonly code: ErrorCode;
  /** The HTTP status, when the error came from a response. */
  status?: number;
  /** Seconds the server asked to wait before trying again (`Retry-After`), when it said. */
  retryAfter?: number;

  constructor(message: string, code: ErrorCode = "internal", options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

export class InvalidArgumentError extends CorralError {
  constructor(message: string) { super(message, "invalid_argument"); }
}
export class NotFoundError extends CorralError {
  constructor(message: string) { super(message, "not_found"); }
}
export class AlreadyExistsError extends CorralError {
  constructor(message: string) { super(message, "already_exists"); }
}
export class PermissionDeniedError extends CorralError {
  constructor(message: string) { super(message, "permission_denied"); }
}
export class AuthenticationError extends CorralError {
  constructor(message: string) { super(message, "unauthenticated"); }
}
export class ResourceExhaustedError extends CorralError {
  constructor(message: string, code: ErrorCode = "resource_exhausted") { super(message, code); }
}
export class RequestTooLargeError extends ResourceExhaustedError {
  constructor(message: string) { super(message, "request_too_large"); }
}
export class RateLimitedError extends ResourceExhaustedError {
  constructor(message: string) { super(message, "rate_limited"); }
}
export class SandboxTimeoutError extends CorralError {
  constructor(message: string) { super(message, "sandbox_timeout"); }
}
/** A command ran past its timeout and was killed; `result` holds what it printed. */
export class CommandTimeoutError extends CorralError {
  result?: unknown;
  constructor(message: string, result?: unknown) {
    super(message, "command_timeout");
    this.result = result;
  }
}
export class SandboxNotRunningError extends CorralError {
  constructor(message: string) { super(message, "sandbox_not_running"); }
}
export class RuntimeUnavailableError extends CorralError {
  constructor(message: string) { super(message, "runtime_unavailable"); }
}
export class AgentError extends CorralError {
  constructor(message: string) { super(message, "agent_error"); }
}
export class UnavailableError extends CorralError {
  constructor(message: string) { super(message, "unavailable"); }
}
export class PortUnavailableError extends CorralError {
  constructor(message: string) { super(message, "port_unavailable"); }
}
export class BuildFailedError extends CorralError {
  constructor(message: string) { super(message, "build_failed"); }
}
export class InternalError extends CorralError {
  constructor(message: string) { super(message, "internal"); }
}
/** The server could not be reached, or the connection broke mid-answer. */
export class ConnectionError extends CorralError {
  constructor(message: string, cause?: unknown) { super(message, "internal", { cause }); }
}

const CLASSES: Record<ErrorCode, new (message: string) => CorralError> = {
  invalid_argument: InvalidArgumentError,
  not_found: NotFoundError,
  already_exists: AlreadyExistsError,
  permission_denied: PermissionDeniedError,
  unauthenticated: AuthenticationError,
  resource_exhausted: ResourceExhaustedError,
  sandbox_timeout: SandboxTimeoutError,
  command_timeout: CommandTimeoutError,
  sandbox_not_running: SandboxNotRunningError,
  runtime_unavailable: RuntimeUnavailableError,
  agent_error: AgentError,
  request_too_large: RequestTooLargeError,
  rate_limited: RateLimitedError,
  unavailable: UnavailableError,
  port_unavailable: PortUnavailableError,
  build_failed: BuildFailedError,
  internal: InternalError,
};

/** The HTTP status of each code: the server's table (`HTTP_STATUS` in errors.py). */
export const HTTP_STATUS: Readonly<Record<ErrorCode, number>> = {
  invalid_argument: 400,
  unauthenticated: 401,
  permission_denied: 403,
  not_found: 404,
  sandbox_timeout: 408,
  already_exists: 409,
  sandbox_not_running: 410,
  request_too_large: 413,
  resource_exhausted: 429,
  rate_limited: 429,
  internal: 500,
  port_unavailable: 502,
  build_failed: 422,
  agent_error: 502,
  runtime_unavailable: 503,
  unavailable: 503,
  command_timeout: 504,
};

/** The error for a wire code; an unknown code is an {@link InternalError}. */
export function errorFromCode(code: string, message: string): CorralError {
  const cls = Object.hasOwn(CLASSES, code) ? CLASSES[code as ErrorCode] : InternalError;
  return new cls(message);
}

/** The code of an error status that came without Corral's body (the later entry of a
 * shared status wins, as in the server's table). */
export function codeForStatus(status: number): ErrorCode {
  let found: ErrorCode | undefined;
  for (const [code, value] of Object.entries(HTTP_STATUS) as [ErrorCode, number][]) {
    if (value === status) found = code;
  }
  return found ?? (status >= 400 && status < 500 ? "invalid_argument" : "internal");
}
