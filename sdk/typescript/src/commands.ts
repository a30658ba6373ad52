/**
 * `sandbox.commands`: run a command to its end, or start one and hold a handle.
 *
 * ```ts
 * const r = await sb.commands.run("python3 -c 'print(2+2)'");      // {exitCode: 0, ...}
 * await sb.commands.run("for i in 1 2 3; do echo $i; done", { onStdout: (t) => log(t) });
 * const h = await sb.commands.start(["cat"], { stdin: true });
 * await h.sendStdin("hello", { eof: true });
 * (await h.wait()).stdout;                                          // "hello"
 * ```
 */

import { CommandTimeoutError, CorralError, InvalidArgumentError, errorFromCode } from "./errors.js";
import { anySignal, type Abortable, type ApiClient, segment } from "./http.js";
import { fromBase64, lines, toBase64, utf8 } from "./ndjson.js";
import type {
  Cmd, CommandEvent, CommandRecord, CommandRequest, CommandResult, CommandStarted,
  ProcessInfo, PtySize, User,
} from "./types.js";

/** Seconds a command may run unless told (the server's default). */
export const DEFAULT_COMMAND_TIMEOUT = 60;
/** Inline stdin of one request (`corral.api.limits`); more goes through `sendStdin`. */
export const MAX_INLINE_STDIN = 512 * 1024;
/** Bytes of stdin sent per request (the server takes bodies up to 1 MiB). */
export const STDIN_CHUNK = 512 * 1024;
/** Bytes of each stream a result keeps (then `truncated`), as the server's. */
export const MAX_CAPTURE = 16 * 1024 * 1024;

export type OutputCallback = (text: string) => void;
/** A chunk of a running command's output, as bytes. */
export interface Output {
  stream: "stdout" | "stderr";
  data: Uint8Array;
}

export interface CommandOptions extends Abortable {
  env?: Record<string, string>;
  cwd?: string;
  user?: User;
  /** Seconds before it is killed. */
  timeout?: number;
}

export interface RunOptions extends CommandOptions {
  /** Its whole stdin; streamed in pieces when large. */
  stdin?: string | Uint8Array;
  /** Gets stdout as text while it runs (decoded incrementally). */
  onStdout?: OutputCallback;
  onStderr?: OutputCallback;
}

export interface StartOptions extends CommandOptions {
  /** Keep its stdin open for {@link CommandHandle.sendStdin}. */
  stdin?: boolean;
  /** Run it on a pseudo-terminal of this size. */
  pty?: PtySize;
  onStdout?: OutputCallback;
  onStderr?: OutputCallback;
  /** Gets every chunk of output as bytes, as it comes. */
  onOutput?: (output: Output) => void;
}

/** What following a running command again takes: where its output goes. */
export type ConnectOptions = Pick<StartOptions, "onStdout" | "onStderr" | "onOutput" | "signal">;

/** One command's output: decoded for callbacks as it comes, kept up to {@link MAX_CAPTURE}
 * (the TypeScript twin of `corral.api.command_events.OutputCapture`). */
class OutputCapture {
  readonly #decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
  readonly #kept = { stdout: [] as Uint8Array[], stderr: [] as Uint8Array[] };
  readonly #size = { stdout: 0, stderr: 0 };
  truncated = false;

  constructor(readonly callbacks: { stdout?: OutputCallback; stderr?: OutputCallback }) {}

  feed(output: Output): void {
    const callback = this.callbacks[output.stream];
    if (callback) {
      const text = this.#decoders[output.stream].decode(output.data, { stream: true });
      if (text) callback(text);
    }
    const room = MAX_CAPTURE - this.#size[output.stream];
    if (output.data.length > room) this.truncated = true;
    const kept = output.data.subarray(0, Math.max(room, 0));
    this.#kept[output.stream].push(kept);
    this.#size[output.stream] += kept.length;
  }

  result(end: Extract<CommandEvent, { type: "exit" }>): CommandResult {
    const text = (name: "stdout" | "stderr") => {
      const tail = this.#decoders[name].decode();
      if (tail) this.callbacks[name]?.(tail);
      const all = new Uint8Array(this.#size[name]);
      let at = 0;
      for (const piece of this.#kept[name]) { all.set(piece, at); at += piece.length; }
      return new TextDecoder().decode(all);
    };
    return {
      exit_code: end.exit_code, stdout: text("stdout"), stderr: text("stderr"),
      signal: end.signal, reason: end.reason, duration: end.duration, truncated: this.truncated,
    };
  }
}

/**
 * A running command. Its output is read from the start and handed to the callbacks given
 * to `start`; {@link wait} resolves with its result. {@link close} (or aborting the
 * `signal` given to `start`) stops reading, which kills a command started here (one
 * followed with `commands.connect` runs on).
 */
export class CommandHandle {
  readonly id: number;
  readonly pid: number;
  readonly #commands: Commands;
  readonly #abort: AbortController;
  readonly #done: Promise<CommandResult>;

  /** @internal */
  constructor(commands: Commands, started: CommandStarted, events: AsyncGenerator<CommandEvent>,
    abort: AbortController, options: StartOptions) {
    this.#commands = commands;
    this.id = started.id;
    this.pid = started.pid;
    this.#abort = abort;
    this.#done = this.#pump(events, options);
    this.#done.catch(() => undefined); // handled by whoever waits
  }

  async #pump(events: AsyncGenerator<CommandEvent>, options: StartOptions): Promise<CommandResult> {
    const capture = new OutputCapture({ stdout: options.onStdout, stderr: options.onStderr });
    for await (const event of events) {
      if (event.type === "stdout" || event.type === "stderr") {
        const output = { stream: event.type, data: fromBase64(event.data) };
        options.onOutput?.(output);
        capture.feed(output);
      } else if (event.type === "exit") {
        return capture.result(event);
      } else if (event.type === "error") {
        throw errorFromCode(event.error.code, event.error.message);
      }
    }
    throw new CorralError(`the server ended command ${this.id}'s output early`);
  }

  /** Its result once it ends. A timeout is a result here (`reason: "timeout"`). */
  wait(): Promise<CommandResult> {
    return this.#done;
  }

  /** Write to its stdin (started with `stdin: true`, or on a terminal). */
  sendStdin(data: string | Uint8Array, options: { eof?: boolean } & Abortable = {}): Promise<void> {
    return this.#commands.sendStdin(this.id, data, options);
  }

  closeStdin(options: Abortable = {}): Promise<void> {
    return this.sendStdin(new Uint8Array(), { ...options, eof: true });
  }

  /** Send a signal (a number: 2 SIGINT, 15 SIGTERM, 9 SIGKILL) to its process group. */
  signal(signum: number, options: Abortable = {}): Promise<void> {
    return this.#commands.signal(this.id, signum, options);
  }

  /** SIGKILL it and every process it started. */
  kill(options: Abortable = {}): Promise<void> {
    return this.signal(9, options);
  }

  /** Set its terminal's size (started with `pty`); it gets SIGWINCH. */
  resize(cols: number, rows: number, options: Abortable = {}): Promise<void> {
    return this.#commands.resize(this.id, cols, rows, options);
  }

  /** Stop reading its output; a command started (not connected to) is killed by the server. */
  close(): void {
    this.#abort.abort(new CorralError(`command ${this.id}'s handle was closed`));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }
}

/** `sandbox.commands` of a {@link Sandbox}. */
export class Commands {
  readonly #api: ApiClient;
  readonly #base: string;

  /** @internal */
  constructor(api: ApiClient, sandboxId: string) {
    this.#api = api;
    this.#base = `/v1/sandboxes/${segment(sandboxId)}/commands`;
  }

  /**
   * Run a command to its end. A non-zero exit is not an error; a timeout throws
   * {@link CommandTimeoutError} carrying `.result`. With `onStdout`/`onStderr` the output
   * streams to them while it runs. Aborting `signal` kills it.
   */
  async run(cmd: Cmd, options: RunOptions = {}): Promise<CommandResult> {
    const timeout = options.timeout ?? DEFAULT_COMMAND_TIMEOUT;
    const data = options.stdin === undefined ? undefined : utf8(options.stdin);
    let result: CommandResult;
    if (options.onStdout || options.onStderr || options.signal ||
        (data !== undefined && data.length > MAX_INLINE_STDIN)) {
      const handle = await this.start(cmd, { ...options, timeout, stdin: data !== undefined });
      try {
        if (data !== undefined) await handle.sendStdin(data, { eof: true, signal: options.signal });
        result = await handle.wait();
      } finally {
        handle.close();
      }
    } else {
      const request = this.#request(cmd, options, timeout, {
        stdin_base64: data === undefined ? undefined : toBase64(data),
      });
      result = await this.#api.json<CommandResult>("POST", this.#base,
        { json: request, timeoutMs: (timeout + 30) * 1000 });
    }
    if (result.reason === "timeout") {
      throw new CommandTimeoutError(`command timed out after ${timeout} s and was killed`, result);
    }
    return result;
  }

  /** Start a command; resolves once it runs (`handle.pid` set). */
  async start(cmd: Cmd, options: StartOptions = {}): Promise<CommandHandle> {
    const request = this.#request(cmd, options, options.timeout, {
      stream: true, stdin_open: options.stdin ?? false, pty: options.pty,
    });
    return this.#follow("POST", this.#base, request, options);
  }

  /**
   * Follow a running command again by its id (one started with {@link runBackground}, or
   * whose stream ended at a pause): its output from now on, its exit, stdin and signals.
   * Closing this handle only stops following it.
   */
  async connect(commandId: number, options: ConnectOptions = {}): Promise<CommandHandle> {
    return this.#follow("POST", this.#command(commandId, "connect"), undefined, options);
  }

  /** The path of one command's `action`; its id checked (a whole number, never a path). */
  #command(commandId: number, action: string): string {
    if (!Number.isSafeInteger(commandId) || commandId < 0) {
      throw new InvalidArgumentError("a command id is a whole number (see commands.list())");
    }
    return `${this.#base}/${commandId}/${action}`;
  }

  async #follow(method: string, path: string, json: unknown, options: StartOptions): Promise<CommandHandle> {
    const abort = new AbortController();
    const signal = anySignal([abort.signal, options.signal])!;
    const response = await this.#api.call(method, path, { json, signal, timeoutMs: null });
    const events = lines<CommandEvent>(response.body, signal);
    const first = await events.next();
    if (!first.done && first.value.type === "started") {
      return new CommandHandle(this, first.value, events, abort, options);
    }
    await events.return(undefined); // closes the response
    if (!first.done && first.value.type === "error") {
      throw errorFromCode(first.value.error.code, first.value.error.message);
    }
    throw new CorralError("the server did not report the command's start");
  }

  /** Start a command that runs on its own (its output discarded); its id and pid. */
  runBackground(cmd: Cmd, options: CommandOptions = {}): Promise<CommandStarted> {
    const request = this.#request(cmd, options, options.timeout, { background: true });
    return this.#api.json<CommandStarted>("POST", this.#base,
      { json: request, signal: options.signal });
  }

  async sendStdin(commandId: number, data: string | Uint8Array,
    options: { eof?: boolean } & Abortable = {}): Promise<void> {
    const bytes = utf8(data);
    for (let at = 0; at < Math.max(bytes.length, 1); at += STDIN_CHUNK) {
      const last = at + STDIN_CHUNK >= bytes.length;
      await this.#api.send("POST", this.#command(commandId, "stdin"), {
        query: { eof: Boolean(options.eof && last) }, signal: options.signal,
        body: bytes.slice(at, at + STDIN_CHUNK),
        headers: { "Content-Type": "application/octet-stream" },
      });
    }
  }

  async signal(commandId: number, signum: number, options: Abortable = {}): Promise<void> {
    return this.#api.send("POST", this.#command(commandId, "signal"),
      { json: { signal: signum }, signal: options.signal });
  }

  kill(commandId: number, options: Abortable = {}): Promise<void> {
    return this.signal(commandId, 9, options);
  }

  async resize(commandId: number, cols: number, rows: number, options: Abortable = {}): Promise<void> {
    return this.#api.send("POST", this.#command(commandId, "resize"),
      { json: { cols, rows } satisfies PtySize, signal: options.signal });
  }

  /** Commands started through the API that still run. */
  async list(options: Abortable = {}): Promise<ProcessInfo[]> {
    return (await this.#api.json<{ processes: ProcessInfo[] }>("GET", this.#base, options)).processes;
  }

  /** The last 100 commands started in this sandbox, newest first. */
  async history(options: Abortable = {}): Promise<CommandRecord[]> {
    return (await this.#api.json<{ commands: CommandRecord[] }>("GET", `${this.#base}/history`,
      options)).commands;
  }

  #request(cmd: Cmd, options: CommandOptions, timeout: number | undefined,
    extra: Partial<CommandRequest>): Partial<CommandRequest> {
    return {
      cmd, env: options.env ?? {}, cwd: options.cwd, user: options.user,
      timeout, ...extra,
    };
  }
}
