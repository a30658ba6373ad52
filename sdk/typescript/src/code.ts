/**
 * `sandbox.runCode` and `sandbox.code`: stateful contexts on Jupyter kernels (Python and
 * the image's other languages) and persistent shells (Bash).
 *
 * ```ts
 * const ex = await sb.runCode("import pandas as pd; pd.DataFrame({'a': [1, 2]})");
 * ex.results[0].html;                        // the DataFrame as HTML
 * (await sb.runCode("1/0")).error?.name;     // "ZeroDivisionError"
 * const ctx = await sb.code.createContext({ cwd: "/tmp" });
 * await sb.runCode("x = 1", { context: ctx });
 * ```
 *
 * A cell's exception is `execution.error`, not thrown; so is a timeout (`TimeoutError`),
 * a kernel that died (`KernelDied`) and a Bash cell that failed (`ExitStatus`).
 */

import { AgentError, errorFromCode } from "./errors.js";
import { type Abortable, type ApiClient, segment } from "./http.js";
import { lines } from "./ndjson.js";
import type { CodeContext, CodeEvent, Execution, ExecutionError, Result, Schemas } from "./types.js";

/** Seconds a cell may run unless told (the server's default). */
export const DEFAULT_CODE_TIMEOUT = 60;

export interface RunCodeOptions extends Abortable {
  /** `"python"` (default), `"bash"`, or another language the image has a kernel for. */
  language?: string;
  /** A context (or its id); default the sandbox's default context for `language`. */
  context?: CodeContext | string;
  /** Seconds before the cell is interrupted (the context keeps its state). */
  timeout?: number;
  /** Environment variables for this cell alone. */
  env?: Record<string, string>;
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  onResult?: (result: Result) => void;
  onError?: (error: ExecutionError) => void;
}

function contextId(context: CodeContext | string | undefined): string | undefined {
  return typeof context === "object" ? context.id : context;
}

function execution(wire: Schemas["Execution"]): Execution {
  const results = wire.results ?? [];
  return {
    ...wire,
    results,
    logs: { stdout: wire.logs?.stdout ?? [], stderr: wire.logs?.stderr ?? [] },
    text: results.find((r) => r.is_main_result)?.text ?? null,
  };
}

/** `sandbox.code` of a {@link Sandbox}. */
export class CodeInterpreter {
  readonly #api: ApiClient;
  readonly #base: string;

  /** @internal */
  constructor(api: ApiClient, sandboxId: string) {
    this.#api = api;
    this.#base = `/v1/sandboxes/${segment(sandboxId)}/code`;
  }

  /** Run a cell; callbacks get output while it runs. Aborting `signal` interrupts it. */
  async run(code: string, options: RunCodeOptions = {}): Promise<Execution> {
    const timeout = options.timeout ?? DEFAULT_CODE_TIMEOUT;
    const stream = Boolean(options.onStdout || options.onStderr || options.onResult ||
      options.onError || options.signal);
    const request: Schemas["RunCodeRequest"] = {
      code, language: options.language, context: contextId(options.context), timeout,
      env: options.env ?? {}, stream,
    };
    if (!stream) {
      return execution(await this.#api.json<Schemas["Execution"]>("POST", this.#base,
        { json: request, timeoutMs: (timeout + 60) * 1000 }));
    }
    const response = await this.#api.call("POST", this.#base,
      { json: request, signal: options.signal, timeoutMs: null });
    return collect(lines<CodeEvent>(response.body, options.signal), options);
  }

  /** Start a new context: a kernel (or shell) of its own. */
  createContext(options: { language?: string; cwd?: string; env?: Record<string, string> } & Abortable = {}): Promise<CodeContext> {
    const body: Schemas["ContextCreate"] = {
      language: options.language ?? "python", cwd: options.cwd, env: options.env ?? {},
    };
    return this.#api.json<CodeContext>("POST", `${this.#base}/contexts`,
      { json: body, signal: options.signal, timeoutMs: 180_000 });
  }

  async listContexts(options: Abortable = {}): Promise<CodeContext[]> {
    return (await this.#api.json<Schemas["ContextList"]>("GET", `${this.#base}/contexts`,
      options)).contexts;
  }

  /** A fresh kernel for the context: its state is lost, its id kept. */
  async restartContext(context: CodeContext | string, options: Abortable = {}): Promise<CodeContext> {
    return this.#api.json<CodeContext>("POST",
      `${this.#base}/contexts/${segment(contextId(context)!)}/restart`,
      { signal: options.signal, timeoutMs: 180_000 });
  }

  /** Interrupt the cell the context runs (it ends with `KeyboardInterrupt`). */
  async interrupt(context: CodeContext | string = "default", options: Abortable = {}): Promise<void> {
    return this.#api.send("POST",
      `${this.#base}/contexts/${segment(contextId(context)!)}/interrupt`, options);
  }

  /** Stop the context's kernel and forget it. */
  async deleteContext(context: CodeContext | string, options: Abortable = {}): Promise<void> {
    return this.#api.send("DELETE",
      `${this.#base}/contexts/${segment(contextId(context)!)}`, options);
  }
}

/** Gather a cell's events into an {@link Execution}, calling the callbacks as they come
 * (the TypeScript twin of `corral.api.code_events.collect`). */
async function collect(events: AsyncGenerator<CodeEvent>, options: RunCodeOptions): Promise<Execution> {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const results: Result[] = [];
  let error: ExecutionError | null = null;
  for await (const event of events) {
    switch (event.type) {
      case "stdout":
        stdout.push(event.text);
        options.onStdout?.(event.text);
        break;
      case "stderr":
        stderr.push(event.text);
        options.onStderr?.(event.text);
        break;
      case "result":
        results.push(event.result);
        options.onResult?.(event.result);
        break;
      case "execution_error":
        error = event.error;
        options.onError?.(event.error);
        break;
      case "end":
        return execution({
          results, logs: { stdout, stderr }, error, execution_count: event.execution_count,
          context: event.context, truncated: event.truncated, duration: event.duration,
        });
      case "error":
        throw errorFromCode(event.error.code, event.error.message);
    }
  }
  throw new AgentError("the cell's events ended without its end");
}
