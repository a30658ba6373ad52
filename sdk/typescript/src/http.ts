/**
 * The HTTP client under every call: one server, one key, `fetch` only (so it runs on
 * Node 20+, Deno, Bun, browsers behind a proxy, and edge runtimes).
 *
 * - Every error answer becomes the {@link CorralError} subclass of its code.
 * - A `429` or `503` that says nothing was done (`rate_limited`, `unavailable`, or any such
 *   answer carrying `Retry-After`, or one from a proxy without Corral's body) is retried:
 *   after `Retry-After` seconds when the server sent it, else after an exponential back-off
 *   with jitter; at most `retries` times, never waiting past `maxRetryDelay`. A request
 *   whose body is a stream cannot be sent twice and is not retried.
 * - Each call takes an `AbortSignal`; aborting it ends the call (and a wait between tries)
 *   with the signal's reason.
 */

import {
  AuthenticationError,
  ConnectionError,
  InvalidArgumentError,
  CorralError,
  codeForStatus,
  errorFromCode,
} from "./errors.js";

export const DEFAULT_URL = "http://127.0.0.1:8470";
/** Milliseconds an ordinary call may take; command, file and create calls set their own. */
export const DEFAULT_TIMEOUT_MS = 60_000;
/** Milliseconds a create, pause, resume or snapshot may take. */
export const CREATE_TIMEOUT_MS = 180_000;
/** Most retries of one call, and longest wait before one (`retries`, `maxRetryDelay`). */
export const MAX_RETRIES = 10;
export const MAX_RETRY_DELAY_MS = 300_000;

/** A WebSocket constructor: the global one (Node 22+, Deno, Bun) or the `ws` package's. */
export type WebSocketConstructor = new (
  url: string,
  options?: { headers?: Record<string, string> },
) => WebSocket;

/** How to reach the server; each field falls back to `CORRAL_URL` / `CORRAL_API_KEY` where
 * the runtime has an environment (`process.env`, `Deno.env`). */
export interface ConnectionOptions {
  /** The server, default `CORRAL_URL` or `http://127.0.0.1:8470`. */
  url?: string;
  /** The API key (`corral keys create` makes one), default `CORRAL_API_KEY`. */
  apiKey?: string;
  /** The `fetch` to use (a proxy's, a test's); default the global one. */
  fetch?: typeof fetch;
  /** The WebSocket to open terminals with; default the global one. */
  WebSocket?: WebSocketConstructor;
  /** Retries of a call the server refused for load (429/503); default 3, 0 turns them off. */
  retries?: number;
  /** Longest wait before a retry, in ms (a longer `Retry-After` is not waited for); default 30000. */
  maxRetryDelay?: number;
}

/** `value` as one segment of a path: encoded, and never `.`, `..` or empty, which a URL
 * would resolve into another route (`contexts/../..` is the sandbox itself). */
export function segment(value: string): string {
  if (typeof value !== "string" || value === "" || value === "." || value === "..") {
    throw new InvalidArgumentError(`${JSON.stringify(String(value)).slice(0, 80)} is not an id or name`);
  }
  return encodeURIComponent(value);
}

export type Query = Record<string, string | number | boolean | undefined>;

export interface CallOptions {
  query?: Query;
  /** A JSON body. */
  json?: unknown;
  /** A raw body (sent as is). */
  body?: BodyInit;
  /** Milliseconds before the call is given up; `null`: none (streams). */
  timeoutMs?: number | null;
  signal?: AbortSignal;
  headers?: Record<string, string>;
}

/** The per-call options every public method takes. */
export interface Abortable {
  /** Aborting it ends the call with the signal's reason. */
  signal?: AbortSignal;
}

function environment(name: string): string | undefined {
  const g = globalThis as {
    process?: { env?: Record<string, string | undefined> };
    Deno?: { env?: { get(name: string): string | undefined } };
  };
  try {
    return g.process?.env?.[name] ?? g.Deno?.env?.get(name) ?? undefined;
  } catch {
    return undefined; // Deno without --allow-env
  }
}

/** Seconds a `Retry-After` asks for: seconds (what the server sends) or an HTTP date (a
 * proxy's), if under a day; else undefined. */
export function retryAfterSeconds(value: string | null, now = Date.now()): number | undefined {
  if (value === null || value.trim() === "") return undefined;
  let seconds = Number(value);
  if (Number.isNaN(seconds)) {
    const at = Date.parse(value);
    seconds = Number.isNaN(at) ? Number.NaN : Math.max(0, (at - now) / 1000);
  }
  return Number.isFinite(seconds) && seconds >= 0 && seconds < 86_400 ? seconds : undefined;
}

/** The error a failed response stands for (its body read here). */
export async function errorOf(response: Response): Promise<CorralError> {
  let text = "";
  try {
    text = await response.text();
  } catch {
    /* a broken body still has a status */
  }
  let error: CorralError;
  try {
    const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } };
    const { code, message } = body.error ?? {};
    if (typeof code !== "string" || typeof message !== "string") throw new Error("not ours");
    error = errorFromCode(code, message);
  } catch {
    const shown = text.slice(0, 300).trim() || response.statusText;
    error = errorFromCode(codeForStatus(response.status),
      `HTTP ${response.status} from ${response.url}: ${shown}`);
  }
  error.status = response.status;
  error.retryAfter = retryAfterSeconds(response.headers.get("retry-after"));
  return error;
}

/** Whether a refused call may be sent again: nothing was done, or a proxy said so. */
function retryable(error: CorralError): boolean {
  if (error.status !== 429 && error.status !== 503) return false;
  return error.code === "rate_limited" || error.code === "unavailable" ||
    error.retryAfter !== undefined;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** One signal that aborts when any of `signals` does. */
export function anySignal(signals: (AbortSignal | undefined)[]): AbortSignal | undefined {
  const present = signals.filter((s): s is AbortSignal => s !== undefined);
  if (present.length <= 1) return present[0];
  return AbortSignal.any(present);
}

function isReplayable(body: BodyInit | undefined): boolean {
  return !(body instanceof ReadableStream);
}

export class ApiClient {
  readonly url: string;
  readonly #key: string;
  readonly #fetch: typeof fetch;
  readonly retries: number;
  readonly maxRetryDelay: number;
  readonly WebSocket?: WebSocketConstructor;
  readonly #options: ConnectionOptions;

  constructor(options: ConnectionOptions = {}) {
    this.url = (options.url ?? environment("CORRAL_URL") ?? DEFAULT_URL).replace(/\/+$/, "");
    if (!/^https?:\/\/[^/?#]+(\/[^?#]*)?$/.test(this.url) || !URL.canParse(this.url)) {
      throw new InvalidArgumentError(`the server's URL is http:// or https://, host, optional ` +
        `path, not ${JSON.stringify(this.url.slice(0, 100))}`);
    }
    const key = options.apiKey ?? environment("CORRAL_API_KEY");
    if (!key) {
      throw new AuthenticationError(
        "no API key: pass apiKey or set CORRAL_API_KEY (`corral keys create` makes one)");
    }
    this.#key = key;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.retries = options.retries ?? 3;
    if (!Number.isInteger(this.retries) || this.retries < 0 || this.retries > MAX_RETRIES) {
      throw new InvalidArgumentError(`retries is a whole number from 0 to ${MAX_RETRIES}`);
    }
    this.maxRetryDelay = options.maxRetryDelay ?? 30_000;
    if (!Number.isFinite(this.maxRetryDelay) || this.maxRetryDelay < 0 ||
        this.maxRetryDelay > MAX_RETRY_DELAY_MS) {
      throw new InvalidArgumentError(`maxRetryDelay is 0 to ${MAX_RETRY_DELAY_MS} ms`);
    }
    this.WebSocket = options.WebSocket ??
      (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.#options = { ...options, url: this.url, apiKey: key };
  }

  /** Another client to the same server with the same key and options (a fork's). */
  clone(): ApiClient {
    return new ApiClient(this.#options);
  }

  /** The headers that authenticate a request (for a WebSocket's handshake too). */
  authHeaders(): Record<string, string> {
    return { Authorization: `Bearer ${this.#key}` };
  }

  toJSON(): { url: string } { // never the key
    return { url: this.url };
  }

  /** Send a request and return its successful response (its body not yet read). */
  async call(method: string, path: string, options: CallOptions = {}): Promise<Response> {
    const url = new URL(this.url + path);
    for (const [name, value] of Object.entries(options.query ?? {})) {
      if (value !== undefined) url.searchParams.set(name, String(value));
    }
    const headers: Record<string, string> = { ...this.authHeaders(), ...options.headers };
    let body = options.body;
    if (options.json !== undefined) {
      body = JSON.stringify(options.json);
      headers["Content-Type"] = "application/json";
    }
    const timeout = options.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : options.timeoutMs;
    for (let attempt = 0; ; attempt++) {
      const signal = anySignal([options.signal,
        timeout === null ? undefined : AbortSignal.timeout(timeout)]);
      let response: Response;
      try {
        const init: RequestInit & { duplex?: "half" } = { method, headers, body, signal };
        if (body instanceof ReadableStream) init.duplex = "half";
        response = await this.#fetch(url, init);
      } catch (error) {
        if (options.signal?.aborted) throw options.signal.reason;
        if (signal?.aborted) {
          throw new ConnectionError(`${method} ${path}: no answer from ${this.url} within ` +
            `${timeout} ms`, error);
        }
        const cause = (error as { cause?: { code?: unknown; message?: unknown } }).cause;
        const detail = cause ? ` (${String(cause.code ?? cause.message)})` : "";
        throw new ConnectionError(`talking to the Corral server at ${this.url} failed: ` +
          `${String(error)}${detail}`, error);
      }
      if (response.ok) return response;
      const error = await errorOf(response);
      if (attempt >= this.retries || !retryable(error) || !isReplayable(body)) throw error;
      const wait = error.retryAfter !== undefined
        ? error.retryAfter * 1000
        : Math.min(this.maxRetryDelay, 250 * 2 ** attempt) * (0.5 + Math.random() / 2);
      if (wait > this.maxRetryDelay) throw error;
      await sleep(wait, options.signal);
    }
  }

  /** A call whose answer is JSON, read in full. */
  async json<T>(method: string, path: string, options: CallOptions = {}): Promise<T> {
    const response = await this.call(method, path, options);
    try {
      return (await response.json()) as T;
    } catch (error) {
      if (options.signal?.aborted) throw options.signal.reason;
      throw new ConnectionError(`${method} ${path}: reading the answer from ${this.url} ` +
        `failed: ${String(error)}`, error);
    }
  }

  /** A call whose answer has no body to read (204s). */
  async send(method: string, path: string, options: CallOptions = {}): Promise<void> {
    const response = await this.call(method, path, options);
    await response.body?.cancel();
  }
}
