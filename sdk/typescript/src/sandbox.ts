/**
 * `Sandbox`: a sandbox on a Corral server.
 *
 * ```ts
 * import { Sandbox } from "@corral/sdk";
 *
 * await using sb = await Sandbox.create({ image: "python", timeout: 600 });
 * await sb.files.write("/work/hello.py", "print('hello')");
 * const r = await sb.commands.run("python3 hello.py");
 * console.log(r.exit_code, r.stdout);
 * ```
 *
 * The server and key come from `url`/`apiKey` or `CORRAL_URL`/`CORRAL_API_KEY`.
 */

import { CodeInterpreter, type RunCodeOptions } from "./code.js";
import { Commands } from "./commands.js";
import { Files } from "./files.js";
import { ApiClient, CREATE_TIMEOUT_MS, type Abortable, type ConnectionOptions, segment } from "./http.js";
import { Network } from "./network.js";
import { Ports } from "./ports.js";
import { Image, buildWith } from "./images.js";
import { Pty } from "./pty.js";
import { Volume } from "./volumes.js";
import type {
  Execution, ImageInfo, MetricSample, NetworkPolicy, ResourcesSpec, SandboxCreateRequest,
  SandboxInfo, SandboxState, Schemas, SnapshotInfo,
} from "./types.js";

/** What `Sandbox.create` takes: the wire's `SandboxCreate` in camelCase, and how to connect. */
export interface CreateOptions extends ConnectionOptions, Abortable {
  /** An image's name (`python`, the default), its `sha256:` id, or an {@link Image},
   * built first (its steps built before are not run again). */
  image?: SandboxCreateRequest["image"] | Image;
  /** Seconds to live (default 300). */
  timeout?: SandboxCreateRequest["timeout"];
  env?: SandboxCreateRequest["env"];
  metadata?: SandboxCreateRequest["metadata"];
  /** Limits, e.g. `{memory: "1G", cpus: 2}`. */
  resources?: ResourcesSpec;
  /** `"gvisor"` or `"namespaces"`; default the server's strongest. */
  runtime?: NonNullable<SandboxCreateRequest["runtime"]>;
  /** Stop (or pause: `onIdle`) it after this many seconds unused. */
  idleTimeout?: NonNullable<SandboxCreateRequest["idle_timeout"]>;
  onIdle?: SandboxCreateRequest["on_idle"];
  onTimeout?: SandboxCreateRequest["on_timeout"];
  /** Seconds it may stay paused before the server kills it. */
  pausedTtl?: NonNullable<SandboxCreateRequest["paused_ttl"]>;
  /** What it may reach: `"none"` (default), `"all"`, or `{allow, deny}` lists. */
  network?: NetworkPolicy;
  /** Ports anyone may reach without a credential. */
  publicPorts?: SandboxCreateRequest["public_ports"];
  /** Your volumes by mount point: `{"/data": "my-vol"}`, `{"/data": volume}`, or
   * `{"/data": {volume: "my-vol", read_only: true}}`. */
  volumes?: Record<string, NonNullable<SandboxCreateRequest["volumes"]>[string] | Volume>;
  /** Start from one of your snapshots (its id or its description). */
  snapshot?: string | SnapshotInfo;
  /** On a cluster, only a node with all these labels may run it (`{zone: "b"}`); a
   * server of its own refuses any. */
  nodeSelector?: SandboxCreateRequest["node_selector"];
}

export interface ListOptions extends ConnectionOptions, Abortable {
  /** Only those whose metadata includes these labels. */
  metadata?: Record<string, string>;
  state?: SandboxState;
}

export class Sandbox {
  /** The description last fetched ({@link refresh} updates it). */
  info: SandboxInfo;
  readonly commands: Commands;
  readonly files: Files;
  readonly code: CodeInterpreter;
  readonly pty: Pty;
  readonly network: Network;
  readonly ports: Ports;
  readonly #api: ApiClient;

  /** @internal */
  constructor(info: SandboxInfo, api: ApiClient) {
    this.info = info;
    this.#api = api;
    this.commands = new Commands(api, info.id);
    this.files = new Files(api, `/v1/sandboxes/${segment(info.id)}/files`);
    this.code = new CodeInterpreter(api, info.id);
    this.pty = new Pty(this.commands, api, info.id);
    this.network = new Network(api, info.id, (options) => this.refresh(options));
    this.ports = new Ports(api, this);
  }

  get id(): string {
    return this.info.id;
  }

  /** Start a sandbox; resolves once it can run commands. */
  static async create(options: CreateOptions = {}): Promise<Sandbox> {
    const api = new ApiClient(options);
    const snapshot = typeof options.snapshot === "object" ? options.snapshot.id : options.snapshot;
    const image = options.image instanceof Image
      ? (await buildWith(api, options.image, { signal: options.signal, runtime: options.runtime })).id
      : options.image;
    const given: Partial<SandboxCreateRequest> = {
      image, timeout: options.timeout, env: options.env,
      metadata: options.metadata, resources: options.resources, runtime: options.runtime,
      idle_timeout: options.idleTimeout, on_idle: options.onIdle, on_timeout: options.onTimeout,
      paused_ttl: options.pausedTtl, network: options.network,
      public_ports: options.publicPorts, snapshot, node_selector: options.nodeSelector,
      volumes: options.volumes && Object.fromEntries(Object.entries(options.volumes).map(
        ([path, volume]) => [path, volume instanceof Volume ? volume.name : volume])),
    };
    // Only what was given: a create from a memory snapshot is refused for naming what the
    // snapshot fixes, even at its default.
    const body = Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined));
    const info = await api.json<SandboxInfo>("POST", "/v1/sandboxes",
      { json: body, signal: options.signal, timeoutMs: CREATE_TIMEOUT_MS });
    return new Sandbox(info, api);
  }

  /** An existing sandbox of yours, by id, resumed if it was paused. */
  static async connect(sandboxId: string, options: ConnectionOptions & Abortable = {}): Promise<Sandbox> {
    const api = new ApiClient(options);
    const path = `/v1/sandboxes/${segment(sandboxId)}`;
    let info = await api.json<SandboxInfo>("GET", path, { signal: options.signal });
    if (info.state === "paused") {
      info = await api.json<SandboxInfo>("POST", `${path}/resume`,
        { signal: options.signal, timeoutMs: CREATE_TIMEOUT_MS });
    }
    return new Sandbox(info, api);
  }

  /** Your sandboxes, newest first, filtered by metadata and state. */
  static async list(options: ListOptions = {}): Promise<SandboxInfo[]> {
    const query: Record<string, string> = {};
    for (const [name, value] of Object.entries(options.metadata ?? {})) query[`metadata.${name}`] = value;
    if (options.state) query.state = options.state;
    const api = new ApiClient(options);
    return (await api.json<Schemas["SandboxList"]>("GET", "/v1/sandboxes",
      { query, signal: options.signal })).sandboxes;
  }

  #path(suffix = ""): string {
    return `/v1/sandboxes/${segment(this.id)}${suffix}`;
  }

  /** Fetch its current description (state, expiry, stop reason). */
  async refresh(options: Abortable = {}): Promise<SandboxInfo> {
    this.info = await this.#api.json<SandboxInfo>("GET", this.#path(), options);
    return this.info;
  }

  /** Run a cell in a stateful context, like a notebook (see {@link CodeInterpreter.run}). */
  runCode(code: string, options: RunCodeOptions = {}): Promise<Execution> {
    return this.code.run(code, options);
  }

  /** Pause it: memory, processes and files kept, its lifetime clock stopped. Any later
   * call resumes it, as does {@link resume} or `Sandbox.connect`. */
  async pause(options: Abortable = {}): Promise<SandboxInfo> {
    this.info = await this.#api.json<SandboxInfo>("POST", this.#path("/pause"),
      { signal: options.signal, timeoutMs: CREATE_TIMEOUT_MS });
    return this.info;
  }

  async resume(options: Abortable = {}): Promise<SandboxInfo> {
    this.info = await this.#api.json<SandboxInfo>("POST", this.#path("/resume"),
      { signal: options.signal, timeoutMs: CREATE_TIMEOUT_MS });
    return this.info;
  }

  /** Let it live `seconds` more from now. */
  async setTimeout(seconds: number, options: Abortable = {}): Promise<SandboxInfo> {
    this.info = await this.#api.json<SandboxInfo>("POST", this.#path("/timeout"),
      { json: { timeout: seconds } satisfies Schemas["TimeoutUpdate"], signal: options.signal });
    return this.info;
  }

  /**
   * Keep it as it is now (it runs on), to start sandboxes from later. `memory` (default
   * true; gVisor only) keeps its memory and processes too; `ttl` seconds it is kept.
   */
  snapshot(options: { name?: string; memory?: boolean; ttl?: number } & Abortable = {}): Promise<SnapshotInfo> {
    const body: Schemas["SnapshotCreate"] = {
      name: options.name, memory: options.memory ?? true, ttl: options.ttl,
    };
    return this.#api.json<SnapshotInfo>("POST", this.#path("/snapshots"),
      { json: body, signal: options.signal, timeoutMs: CREATE_TIMEOUT_MS });
  }

  /** Its files as a new image of yours, `name` (e.g. `after-setup:1`). */
  snapshotFilesystem(name?: string, options: Abortable = {}): Promise<ImageInfo> {
    return this.#api.json<ImageInfo>("POST", this.#path("/snapshot-filesystem"),
      { json: { name } satisfies Schemas["FilesystemSnapshot"], signal: options.signal,
        timeoutMs: CREATE_TIMEOUT_MS });
  }

  /** `count` copies of it as it is now (gVisor only), connected as it is. */
  async fork(options: { count?: number; timeout?: number; metadata?: Record<string, string> } & Abortable = {}): Promise<Sandbox[]> {
    const body: Schemas["ForkRequest"] = {
      count: options.count ?? 1, timeout: options.timeout, metadata: options.metadata,
    };
    const reply = await this.#api.json<Schemas["SandboxList"]>("POST", this.#path("/fork"),
      { json: body, signal: options.signal, timeoutMs: CREATE_TIMEOUT_MS });
    return reply.sandboxes.map((info) => new Sandbox(info, this.#api.clone()));
  }

  /** The samples the server took of it, oldest first (`start`, `end`: Dates or Unix seconds). */
  async getMetrics(options: { start?: Date | number; end?: Date | number } & Abortable = {}): Promise<MetricSample[]> {
    const seconds = (t?: Date | number) => t === undefined ? undefined
      : (t instanceof Date ? t.getTime() / 1000 : t).toFixed(6);
    return (await this.#api.json<Schemas["SandboxMetrics"]>("GET", this.#path("/metrics"), {
      query: { start: seconds(options.start), end: seconds(options.end) }, signal: options.signal,
    })).samples;
  }

  /** Stop it now (killing a stopped one is not an error). */
  kill(options: Abortable = {}): Promise<void> {
    return this.#api.send("DELETE", this.#path(), options);
  }

  /** `await using sb = await Sandbox.create()` kills it at the end of the block. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
  }

  toJSON(): SandboxInfo {
    return this.info;
  }
}
