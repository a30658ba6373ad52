/**
 * `Volume`: named storage that outlives sandboxes, shared by several at once. Mounted at
 * create (`Sandbox.create({ volumes: { "/data": "my-vol" } })`); its files are also
 * reachable with no sandbox running, through `volume.files`.
 *
 * ```ts
 * const vol = await Volume.create("datasets", { size: "10G" });
 * await vol.files.write("/raw/a.csv", "x,y\n1,2\n");
 * const sb = await Sandbox.create({ volumes: { "/data": vol } });
 * ```
 */

import { InvalidArgumentError, NotFoundError } from "./errors.js";
import { Files, type WatchHandle } from "./files.js";
import { ApiClient, type Abortable, type ConnectionOptions, segment } from "./http.js";
import type { Schemas } from "./types.js";

export type VolumeInfo = Schemas["VolumeInfo"];
export type VolumeCallOptions = ConnectionOptions & Abortable;

/** A volume's files, with no sandbox: a sandbox's files' calls, paths from the volume's
 * root; no rename, watch or signed URLs (mount it in a sandbox for those). */
export class VolumeFiles extends Files {
  override async exists(path: string, options: Abortable = {}): Promise<boolean> {
    try {
      await this.stat(path, options);
      return true;
    } catch (error) {
      if (error instanceof NotFoundError) return false;
      throw error;
    }
  }

  override rename(): Promise<void> {
    return Promise.reject(new InvalidArgumentError("a volume's files cannot be renamed " +
      "without a sandbox; mount it and use mv, or write and remove"));
  }

  override watch(): Promise<WatchHandle> {
    return Promise.reject(new InvalidArgumentError("a volume's files are watched from a " +
      "sandbox that mounts it: watch the mount point there"));
  }

  override downloadUrl(): Promise<string> {
    return Promise.reject(new InvalidArgumentError("signed URLs are for a sandbox's files"));
  }

  override uploadUrl(): Promise<string> {
    return this.downloadUrl();
  }
}

export class Volume {
  /** Its description when last fetched ({@link refresh}). */
  info: VolumeInfo;
  readonly files: VolumeFiles;
  readonly #api: ApiClient;

  /** @internal */
  constructor(info: VolumeInfo, api: ApiClient) {
    this.info = info;
    this.#api = api;
    this.files = new VolumeFiles(api, `/v1/volumes/${segment(info.name)}/files`);
  }

  get name(): string {
    return this.info.name;
  }

  /** A new empty volume of `size` (MiB, or `"10G"`; default 1 GiB): its quota. */
  static async create(name: string, options: { size?: number | string } & VolumeCallOptions = {}): Promise<Volume> {
    const api = new ApiClient(options);
    const body: Schemas["VolumeCreate"] = { name, size: options.size ?? "1G" };
    return new Volume(await api.json<VolumeInfo>("POST", "/v1/volumes",
      { json: body, signal: options.signal }), api);
  }

  /** Your volume `name`; NotFoundError if there is none, unless `createIfMissing`. */
  static async fromName(name: string,
    options: { createIfMissing?: boolean; size?: number | string } & VolumeCallOptions = {}): Promise<Volume> {
    const api = new ApiClient(options);
    try {
      return new Volume(await api.json<VolumeInfo>("GET",
        `/v1/volumes/${segment(name)}`, { signal: options.signal }), api);
    } catch (error) {
      if (!(error instanceof NotFoundError) || !options.createIfMissing) throw error;
      return Volume.create(name, options);
    }
  }

  /** Your volumes. */
  static async list(options: VolumeCallOptions = {}): Promise<VolumeInfo[]> {
    return (await new ApiClient(options).json<Schemas["VolumeList"]>("GET", "/v1/volumes",
      { signal: options.signal })).volumes;
  }

  /** Fetch its current description (used bytes, which sandboxes mount it). */
  async refresh(options: Abortable = {}): Promise<VolumeInfo> {
    this.info = await this.#api.json<VolumeInfo>("GET",
      `/v1/volumes/${segment(this.name)}`, options);
    return this.info;
  }

  /** Delete it and its files; refused while a sandbox mounts it. */
  delete(options: Abortable = {}): Promise<void> {
    return this.#api.send("DELETE", `/v1/volumes/${segment(this.name)}`, options);
  }
}
