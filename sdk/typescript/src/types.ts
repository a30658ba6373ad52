/**
 * The wire types, all taken from `schema.d.ts` (generated from the server's OpenAPI
 * document; a test regenerates it and fails when it differs), so a change on the server
 * that the SDK does not follow fails `tsc`.
 */

import type { components } from "./schema.js";

export type Schemas = components["schemas"];
export type SandboxInfo = Schemas["SandboxInfo"];
export type SandboxState = SandboxInfo["state"];
export type SandboxCreateRequest = Schemas["SandboxCreate"];
export type ResourcesSpec = Schemas["ResourcesSpec"];
/** `"none"` (loopback only), `"all"`, or `{allow: [...], deny: [...]}`. */
export type NetworkPolicy = Schemas["NetworkUpdate"]["network"];
export type NetworkInfo = Schemas["NetworkInfo"];
export type EgressEvents = Schemas["EgressEvents"];
export type PortsInfo = Schemas["PortsInfo"];
export type CommandRequest = Schemas["CommandRequest"];
export type CommandResult = Schemas["CommandResult"];
export type CommandStarted = Schemas["CommandStarted"];
export type CommandEvent = Schemas["CommandEvent"];
export type CommandRecord = Schemas["CommandRecord"];
export type ProcessInfo = Schemas["ProcessInfo"];
export type PtySize = Schemas["PtySize"];
export type EntryInfo = Schemas["EntryInfo"];
export type WatchEvent = Schemas["WatchEvent"];
export type WatchStreamEvent = Schemas["WatchStreamEvent"];
export type RunCodeRequest = Schemas["RunCodeRequest"];
export type CodeEvent = Schemas["CodeEvent"];
export type CodeContext = Schemas["CodeContext"];
export type Result = Schemas["Result"];
export type ExecutionError = Schemas["ExecutionError"];
export type Logs = Required<Schemas["Logs"]>;
export type SnapshotInfo = Schemas["SnapshotInfo"];
export type ImageInfo = Schemas["ImageInfo"];
export type MetricSample = Schemas["MetricSample"];
export type ErrorDetail = Schemas["ErrorDetail"];

/** A cell's outcome: the wire's `Execution`, and `text`, its main result's text. */
export type Execution = Omit<Schemas["Execution"], "logs" | "results"> & {
  results: Result[];
  logs: Logs;
  /** The cell's value as text (its main result's `text`), or null. */
  text: string | null;
};

/** A command: a shell string, or an argv list (no shell). */
export type Cmd = CommandRequest["cmd"];
/** A user inside the sandbox, by name or uid. */
export type User = NonNullable<CommandRequest["user"]>;
