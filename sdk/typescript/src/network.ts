/** `sandbox.network`: what a sandbox may reach, read and changed while it runs. */

import { segment, type Abortable, type ApiClient } from "./http.js";
import type { EgressEvents, NetworkInfo, NetworkPolicy, SandboxInfo } from "./types.js";

export class Network {
  readonly #api: ApiClient;
  readonly #path: string;
  readonly #refresh: (options: Abortable) => Promise<SandboxInfo>;

  /** @internal */
  constructor(api: ApiClient, sandboxId: string, refresh: (options: Abortable) => Promise<SandboxInfo>) {
    this.#api = api;
    this.#path = `/v1/sandboxes/${segment(sandboxId)}/network`;
    this.#refresh = refresh;
  }

  /** Its policy as the server enforces it now. */
  async get(options: Abortable = {}): Promise<NetworkPolicy> {
    return (await this.#refresh(options)).network;
  }

  /**
   * Replace its policy; new connections see it at once. The sandbox must have been made
   * with a policy other than `"none"`; `{allow: []}` starts it closed.
   */
  update(network: NetworkPolicy, options: Abortable = {}): Promise<NetworkInfo> {
    return this.#api.json<NetworkInfo>("PUT", this.#path, { json: { network }, signal: options.signal });
  }

  /** Its resolver's and proxy's latest verdicts, oldest first. */
  events(options: Abortable = {}): Promise<EgressEvents> {
    return this.#api.json<EgressEvents>("GET", `${this.#path}/events`, options);
  }
}
