/**
 * `Snapshot`: your snapshots, listed, looked up and deleted. A snapshot is taken with
 * `sandbox.snapshot()` (the sandbox runs on) and started from with
 * `Sandbox.create({ snapshot })`.
 */

import { ApiClient, type Abortable, type ConnectionOptions, segment } from "./http.js";
import type { SnapshotInfo } from "./types.js";

export type SnapshotCallOptions = ConnectionOptions & Abortable;

export const Snapshot = {
  /** Your snapshots that have not expired, oldest first. */
  async list(options: SnapshotCallOptions = {}): Promise<SnapshotInfo[]> {
    const api = new ApiClient(options);
    return (await api.json<{ snapshots: SnapshotInfo[] }>("GET", "/v1/snapshots",
      { signal: options.signal })).snapshots;
  },

  /** Your snapshot `snapshotId` (`snap-...`); NotFoundError if you have none of that id. */
  async get(snapshotId: string, options: SnapshotCallOptions = {}): Promise<SnapshotInfo> {
    return new ApiClient(options).json<SnapshotInfo>("GET",
      `/v1/snapshots/${segment(snapshotId)}`, { signal: options.signal });
  },

  /** Delete it and free its disk; sandboxes started from it run on. */
  async delete(snapshotId: string, options: SnapshotCallOptions = {}): Promise<void> {
    return new ApiClient(options).send("DELETE",
      `/v1/snapshots/${segment(snapshotId)}`, { signal: options.signal });
  },
};
