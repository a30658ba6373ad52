/**
 * `sandbox.files`: read, write and manage files inside a sandbox. Uploads and downloads
 * stream, so a file of any size the sandbox's disk allows moves without being held in
 * memory; relative paths start at the image's working directory (`/work`).
 *
 * ```ts
 * await sb.files.write("/work/data.csv", "a,b\n1,2\n");
 * await sb.files.readText("/work/data.csv");
 * await sb.files.write("big.bin", someReadableStream);
 * for await (const chunk of await sb.files.readStream("big.bin")) { ... }
 * ```
 */

import { CorralError, errorFromCode, InvalidArgumentError } from "./errors.js";
import { anySignal, type Abortable, type ApiClient } from "./http.js";
import { lines } from "./ndjson.js";
import type { EntryInfo, User, WatchEvent, WatchStreamEvent } from "./types.js";

/** Milliseconds a whole-file read or write may take. */
export const TRANSFER_TIMEOUT_MS = 300_000;

/** What a file can be written from. */
export type FileData =
  | string
  | Uint8Array
  | ArrayBuffer
  | Blob
  | ReadableStream<Uint8Array>
  | AsyncIterable<Uint8Array | string>;

function streamOf(data: AsyncIterable<Uint8Array | string>): ReadableStream<Uint8Array> {
  const iterator = data[Symbol.asyncIterator]();
  const encoder = new TextEncoder();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const next = await iterator.next();
      if (next.done) return controller.close();
      const piece = next.value;
      if (typeof piece === "string") controller.enqueue(encoder.encode(piece));
      else if (piece instanceof Uint8Array) controller.enqueue(piece);
      else controller.error(new InvalidArgumentError("file content chunks must be bytes or text"));
    },
    async cancel(reason) {
      await iterator.return?.(reason);
    },
  });
}

function bodyOf(data: FileData): BodyInit {
  if (typeof data === "string" || data instanceof Uint8Array || data instanceof ArrayBuffer ||
      data instanceof Blob || data instanceof ReadableStream) {
    return data as BodyInit;
  }
  if (data !== null && typeof data === "object" && Symbol.asyncIterator in data) {
    return streamOf(data);
  }
  throw new InvalidArgumentError(
    "file data is a string, Uint8Array, ArrayBuffer, Blob, ReadableStream or AsyncIterable");
}

/** A directory watch: iterate it for {@link WatchEvent}s; {@link stop} ends it. */
export class WatchHandle implements AsyncIterable<WatchEvent> {
  readonly #events: AsyncGenerator<WatchStreamEvent>;
  readonly #abort: AbortController;
  #stopped = false;

  /** @internal */
  constructor(events: AsyncGenerator<WatchStreamEvent>, abort: AbortController) {
    this.#events = events;
    this.#abort = abort;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<WatchEvent> {
    try {
      for (;;) {
        let next: IteratorResult<WatchStreamEvent>;
        try {
          next = await this.#events.next();
        } catch (error) {
          if (this.#stopped) return;
          throw error;
        }
        if (next.done) return;
        const event = next.value;
        if (event.type === "error") {
          throw errorFromCode(event.error.code, event.error.message);
        }
        yield event;
      }
    } finally {
      this.stop();
    }
  }

  /** Stop watching (idempotent); an iteration under way ends. */
  stop(): void {
    if (!this.#stopped) {
      this.#stopped = true;
      this.#abort.abort(new CorralError("the watch was stopped"));
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.stop();
  }
}

/** `sandbox.files` of a {@link Sandbox} (and, less `rename`, `watch` and signed URLs,
 * `volume.files` of a {@link Volume}). */
export class Files {
  readonly #api: ApiClient;
  readonly #base: string;

  /** @internal `base`: the files resource (a sandbox's, or a volume's). */
  constructor(api: ApiClient, base: string) {
    this.#api = api;
    this.#base = base;
  }

  /** A whole file's content. */
  async read(path: string, options: Abortable = {}): Promise<Uint8Array> {
    const response = await this.#api.call("GET", this.#base,
      { query: { path }, signal: options.signal, timeoutMs: TRANSFER_TIMEOUT_MS });
    return new Uint8Array(await response.arrayBuffer());
  }

  /** A whole file as text (UTF-8, bad bytes replaced). */
  async readText(path: string, options: Abortable = {}): Promise<string> {
    return new TextDecoder().decode(await this.read(path, options));
  }

  /** A file's content as a stream of chunks, as they arrive (no time limit: abort it). */
  async readStream(path: string, options: Abortable = {}): Promise<ReadableStream<Uint8Array>> {
    const response = await this.#api.call("GET", this.#base,
      { query: { path }, signal: options.signal, timeoutMs: null });
    if (response.body === null) return new ReadableStream({ start: (c) => c.close() });
    return response.body;
  }

  /**
   * Write a file atomically (parents created) and return its size. `data` may be text,
   * bytes, a Blob, a ReadableStream or an AsyncIterable of chunks (streamed). `user` (a name
   * or uid of the image's) owns the file and the parents made; default root.
   */
  async write(path: string, data: FileData,
    options: { mode?: number; user?: User } & Abortable = {}): Promise<number> {
    const body = bodyOf(data);
    const reply = await this.#api.json<{ size: number }>("PUT", this.#base, {
      query: { path, mode: options.mode ?? 0o644, user: options.user },
      body, signal: options.signal, timeoutMs: TRANSFER_TIMEOUT_MS,
      headers: { "Content-Type": "application/octet-stream" },
    });
    return reply.size;
  }

  /** Entries under a directory, `depth` levels down (default 1). */
  async list(path = ".", options: { depth?: number } & Abortable = {}): Promise<EntryInfo[]> {
    return (await this.#api.json<{ entries: EntryInfo[] }>("GET", `${this.#base}/list`, {
      query: { path, depth: options.depth ?? 1 }, signal: options.signal,
    })).entries;
  }

  /** One path's description (links are not followed). */
  stat(path: string, options: Abortable = {}): Promise<EntryInfo> {
    return this.#api.json<EntryInfo>("GET", `${this.#base}/stat`,
      { query: { path }, signal: options.signal });
  }

  async exists(path: string, options: Abortable = {}): Promise<boolean> {
    return (await this.#api.json<{ exists: boolean }>("GET", `${this.#base}/exists`,
      { query: { path }, signal: options.signal })).exists;
  }

  /** Make a directory (and its parents unless `parents: false`); false if it existed. */
  async mkdir(path: string, options: { parents?: boolean; user?: User } & Abortable = {}): Promise<boolean> {
    return (await this.#api.json<{ created: boolean }>("POST", `${this.#base}/mkdir`, {
      json: { path, parents: options.parents ?? true, user: options.user }, signal: options.signal,
    })).created;
  }

  /** Remove a file, link or (with `recursive`) a directory tree. */
  remove(path: string, options: { recursive?: boolean } & Abortable = {}): Promise<void> {
    return this.#api.send("DELETE", this.#base, {
      query: { path, recursive: options.recursive ?? false }, signal: options.signal,
    });
  }

  rename(src: string, dst: string, options: { overwrite?: boolean } & Abortable = {}): Promise<void> {
    return this.#api.send("POST", `${this.#base}/rename`, {
      json: { src, dst, overwrite: options.overwrite ?? false }, signal: options.signal,
    });
  }

  /** A URL anyone may GET `path` from, with no key, for `expiresIn` seconds (at most a day). */
  downloadUrl(path: string, options: { expiresIn?: number } & Abortable = {}): Promise<string> {
    return this.#signed(path, "read", options.expiresIn ?? 60, undefined, options.signal);
  }

  /** A URL anyone may PUT `path`'s new content to, with no key, for `expiresIn` seconds. */
  uploadUrl(path: string, options: { expiresIn?: number; user?: User } & Abortable = {}): Promise<string> {
    return this.#signed(path, "write", options.expiresIn ?? 60, options.user, options.signal);
  }

  async #signed(path: string, operation: "read" | "write", expiresIn: number,
    user: User | undefined, signal?: AbortSignal): Promise<string> {
    return (await this.#api.json<{ url: string }>("POST", `${this.#base}/signed-urls`, {
      json: { path, operation, expires_in: expiresIn, user }, signal,
    })).url;
  }

  /**
   * Watch a directory; resolves once it is watched. Iterate the handle for events
   * (`create`, `write`, `remove`, `rename`, `chmod`, `overflow`); it ends after `timeout`
   * seconds (default 600), when the directory goes away, or at {@link WatchHandle.stop}.
   */
  async watch(path: string,
    options: { recursive?: boolean; timeout?: number } & Abortable = {}): Promise<WatchHandle> {
    const abort = new AbortController();
    const signal = anySignal([abort.signal, options.signal])!;
    const response = await this.#api.call("GET", `${this.#base}/watch`, {
      query: { path, recursive: options.recursive ?? false, timeout: options.timeout ?? 600 },
      signal, timeoutMs: null,
    });
    return new WatchHandle(lines<WatchStreamEvent>(response.body, signal), abort);
  }
}
