/**
 * `sandbox.pty`: interactive terminals. {@link Pty.create} runs a command on a
 * pseudo-terminal over plain HTTP (a streamed command with `pty`), as the Python SDK's
 * `sb.pty.create` does; {@link Pty.connect} opens the same over one WebSocket
 * (`/v1/sandboxes/{id}/terminal`), for a browser-facing relay such as xterm.js behind your
 * own server. Output is raw bytes, escape sequences included; `"\x03"` is Ctrl-C.
 *
 * ```ts
 * const term = await sb.pty.create({ cols: 100, rows: 30, onData: (b) => out.push(b) });
 * await term.sendInput("stty size; exit\n");
 * await term.wait();
 * ```
 */

import type { CommandHandle, Commands } from "./commands.js";
import { CorralError, InvalidArgumentError, errorFromCode } from "./errors.js";
import { segment, type Abortable, type ApiClient } from "./http.js";
import type { Cmd, CommandEvent, CommandResult, PtySize, User } from "./types.js";

/** What a terminal runs unless told otherwise: a login shell, bash where the image has it. */
export const DEFAULT_SHELL: Cmd = [
  "/bin/sh", "-c", "command -v bash >/dev/null && exec bash -i -l; exec sh -i -l"];

export interface PtyOptions extends Abortable {
  cols?: number;
  rows?: number;
  /** Gets the terminal's output, raw bytes, as it comes. */
  onData?: (data: Uint8Array) => void;
  /** Default {@link DEFAULT_SHELL}. */
  cmd?: Cmd;
  env?: Record<string, string>;
  cwd?: string;
  user?: User;
  /** Seconds after which it is killed (default: none). */
  timeout?: number;
}

/** A running terminal: type into it, resize it, signal or kill it, wait for its end. */
export class PtyHandle {
  readonly #handle: CommandHandle;

  /** @internal */
  constructor(handle: CommandHandle) {
    this.#handle = handle;
  }

  get id(): number { return this.#handle.id; }
  get pid(): number { return this.#handle.pid; }

  /** Type `data` into it, as keys (`"\n"` ends a line). */
  sendInput(data: string | Uint8Array, options: Abortable = {}): Promise<void> {
    return this.#handle.sendStdin(data, options);
  }

  /** Its size in characters (1 to 1000 each); the program gets SIGWINCH. */
  resize(cols: number, rows: number, options: Abortable = {}): Promise<void> {
    return this.#handle.resize(cols, rows, options);
  }

  signal(signum: number, options: Abortable = {}): Promise<void> {
    return this.#handle.signal(signum, options);
  }

  kill(options: Abortable = {}): Promise<void> {
    return this.#handle.kill(options);
  }

  /** Its end (the output, as text, is in `stdout` up to the capture limit). */
  wait(): Promise<CommandResult> {
    return this.#handle.wait();
  }

  /** Stop reading; a terminal still running is killed. */
  close(): void {
    this.#handle.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }
}

/** A terminal over a WebSocket (see {@link Pty.connect}). */
export class TerminalSocket {
  readonly id: number;
  readonly pid: number;
  readonly #socket: WebSocket;
  readonly #done: Promise<Extract<CommandEvent, { type: "exit" }>>;

  /** @internal */
  constructor(socket: WebSocket, started: { id: number; pid: number },
    done: Promise<Extract<CommandEvent, { type: "exit" }>>) {
    this.#socket = socket;
    this.id = started.id;
    this.pid = started.pid;
    this.#done = done;
  }

  /** Type keys (a binary message, at most 1 MiB). */
  sendInput(data: string | Uint8Array): void {
    this.#socket.send(typeof data === "string" ? new TextEncoder().encode(data) : data);
  }

  resize(cols: number, rows: number): void {
    this.#socket.send(JSON.stringify({ type: "resize", cols, rows }));
  }

  signal(signum: number): void {
    this.#socket.send(JSON.stringify({ type: "signal", signal: signum }));
  }

  /** Its `exit` event: `exit_code`, `signal`, `reason`, `duration`. */
  wait(): Promise<Extract<CommandEvent, { type: "exit" }>> {
    return this.#done;
  }

  /** Leave: the server kills the command. */
  close(): void {
    this.#socket.close(1000);
  }
}

async function bytesOf(data: unknown): Promise<Uint8Array> {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof Blob) return new Uint8Array(await data.arrayBuffer());
  throw new CorralError("the terminal sent a message of an unknown kind");
}

/** `sandbox.pty` of a {@link Sandbox}. */
export class Pty {
  readonly #commands: Commands;
  readonly #api: ApiClient;
  readonly #sandboxId: string;

  /** @internal */
  constructor(commands: Commands, api: ApiClient, sandboxId: string) {
    this.#commands = commands;
    this.#api = api;
    this.#sandboxId = sandboxId;
  }

  /** Start a terminal of `cols` x `rows` (default 80 x 24); resolves once it runs. */
  async create(options: PtyOptions = {}): Promise<PtyHandle> {
    const size: PtySize = { cols: options.cols ?? 80, rows: options.rows ?? 24 };
    const handle = await this.#commands.start(options.cmd ?? DEFAULT_SHELL, {
      pty: size, env: options.env, cwd: options.cwd, user: options.user,
      timeout: options.timeout, signal: options.signal,
      onOutput: options.onData ? (output) => options.onData!(output.data) : undefined,
    });
    return new PtyHandle(handle);
  }

  /**
   * Open a terminal over a WebSocket; resolves once it runs. Needs a WebSocket that can
   * send the key in the handshake's headers: Node 22's global one, or the `ws` package's
   * passed as the `WebSocket` connection option (a browser's cannot: relay through your
   * server). `onData` gets its output.
   */
  connect(options: PtyOptions = {}): Promise<TerminalSocket> {
    const WebSocketClass = this.#api.WebSocket;
    if (WebSocketClass === undefined) {
      return Promise.reject(new InvalidArgumentError("this runtime has no global WebSocket: " +
        "pass one as the WebSocket option (e.g. the ws package's)"));
    }
    if (options.signal?.aborted) return Promise.reject(options.signal.reason);
    const url = new URL(`${this.#api.url}/v1/sandboxes/${segment(this.#sandboxId)}/terminal`);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocketClass(url.toString(), { headers: this.#api.authHeaders() });
    socket.binaryType = "arraybuffer";
    const request = {
      pty: { cols: options.cols ?? 80, rows: options.rows ?? 24 }, cmd: options.cmd,
      env: options.env ?? {}, cwd: options.cwd, user: options.user, timeout: options.timeout,
    };
    return new Promise((resolve, reject) => {
      let settle: { resolve: (e: Extract<CommandEvent, { type: "exit" }>) => void; reject: (e: unknown) => void };
      const done = new Promise<Extract<CommandEvent, { type: "exit" }>>((res, rej) => {
        settle = { resolve: res, reject: rej };
      });
      done.catch(() => undefined);
      let opened: TerminalSocket | undefined;
      let exit: Extract<CommandEvent, { type: "exit" }> | undefined;
      let output = Promise.resolve();
      const fail = (error: unknown) => {
        if (opened === undefined) reject(error);
        settle.reject(error);
      };
      options.signal?.addEventListener("abort", () => {
        socket.close(1000);
        fail(options.signal!.reason);
      }, { once: true });
      socket.addEventListener("open", () => socket.send(JSON.stringify(request)));
      socket.addEventListener("message", (message: MessageEvent) => {
        if (typeof message.data !== "string") {
          output = output.then(async () => options.onData?.(await bytesOf(message.data)))
            .catch((error: unknown) => { // what onData threw ends it, and wait() throws it
              fail(error);
              socket.close(1000);
            });
          return;
        }
        const event = JSON.parse(message.data) as CommandEvent;
        if (event.type === "started") {
          opened = new TerminalSocket(socket, event, done);
          resolve(opened);
        } else if (event.type === "exit") {
          exit = event;
        } else if (event.type === "error") {
          fail(errorFromCode(event.error.code, event.error.message));
        }
      });
      socket.addEventListener("error", () => fail(new CorralError(`the terminal's WebSocket ` +
        `to ${url.host} failed (its handshake is refused for a bad key)`)));
      socket.addEventListener("close", (event: CloseEvent) => {
        const end = exit;
        if (end !== undefined) void output.then(() => settle.resolve(end));
        else fail(new CorralError(`the terminal's WebSocket closed (${event.code}) before its end`));
      });
    });
  }
}
