/**
 * `sandbox.ports`: apps listening inside a sandbox, reached through the server. A port
 * needs a credential unless it is public: {@link Ports.token} (header
 * `X-Corral-Port-Token`), a signed URL, or your API key.
 */

import { CorralError, InvalidArgumentError } from "./errors.js";
import type { Abortable, ApiClient } from "./http.js";
import type { PortsInfo, SandboxInfo, Schemas } from "./types.js";

/** The header a port token travels in. */
export const TOKEN_HEADER = "X-Corral-Port-Token";

function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new InvalidArgumentError(`a port is a whole number from 1 to 65535, not ${port}`);
  }
}

/** What the ports need of their sandbox: its id, its description, a way to fetch it anew. */
interface SandboxRef {
  readonly id: string;
  info: SandboxInfo;
  refresh(options?: Abortable): Promise<SandboxInfo>;
}

export class Ports {
  readonly #api: ApiClient;
  readonly #sandbox: SandboxRef;

  /** @internal */
  constructor(api: ApiClient, sandbox: SandboxRef) {
    this.#api = api;
    this.#sandbox = sandbox;
  }

  #info(): PortsInfo {
    const ports = this.#sandbox.info.ports;
    if (!ports) throw new CorralError("the server did not describe this sandbox's ports");
    return ports;
  }

  /** The port token: send it as `X-Corral-Port-Token`. */
  get token(): string {
    return this.#info().token;
  }

  /** Ports anyone may reach without a credential (as last fetched). */
  get public(): number[] {
    return [...(this.#info().public ?? [])];
  }

  /**
   * The URL of `port` through the server: path-based by default
   * (`{server}/v1/sandboxes/{id}/ports/{port}/`), or `hostBased` (`http://{port}-{id}.{domain}/`,
   * an origin of its own, for web apps in a browser).
   */
  url(port: number, options: { hostBased?: boolean } = {}): string {
    checkPort(port);
    if (!options.hostBased) return `${this.#api.url}/v1/sandboxes/${this.#sandbox.id}/ports/${port}/`;
    const base = new URL(this.#api.url);
    const host = `${port}-${this.#sandbox.id}.${this.#info().domain}`;
    return `${base.protocol}//${host}${base.port ? `:${base.port}` : ""}/`;
  }

  /** A URL to `port` (at `path`) that anyone holding it may use for `expiresIn` seconds. */
  async signedUrl(port: number,
    options: { expiresIn?: number; path?: string; hostBased?: boolean } & Abortable = {}): Promise<string> {
    checkPort(port);
    const body: Schemas["SignedUrlRequest"] = {
      port, expires_in: options.expiresIn ?? 60, path: options.path ?? "/",
      host_based: options.hostBased ?? false,
    };
    return (await this.#api.json<Schemas["SignedUrl"]>("POST",
      `/v1/sandboxes/${this.#sandbox.id}/signed-urls`, { json: body, signal: options.signal })).url;
  }

  /** The token and public ports as the server has them now. */
  async get(options: Abortable = {}): Promise<PortsInfo> {
    return (await this.#sandbox.refresh(options)).ports ?? this.#info();
  }

  /** Make exactly `ports` public; `[]` makes every port private again. */
  async setPublic(ports: number[], options: Abortable = {}): Promise<PortsInfo> {
    const info = await this.#api.json<PortsInfo>("PUT", `/v1/sandboxes/${this.#sandbox.id}/ports`,
      { json: { public: ports } satisfies Schemas["PortsUpdate"], signal: options.signal });
    this.#sandbox.info = { ...this.#sandbox.info, ports: info };
    return info;
  }
}
