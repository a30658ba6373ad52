/**
 * The Corral TypeScript SDK: sandboxes for untrusted code on your own Corral server.
 * It uses only `fetch`, streams, `TextDecoder`, `AbortSignal` and `WebSocket`, so it runs
 * on Node 20+, Deno, Bun and edge runtimes.
 */

export { Sandbox, type CreateOptions, type ListOptions } from "./sandbox.js";
export { Snapshot, type SnapshotCallOptions } from "./snapshots.js";
export {
  CommandHandle, Commands, DEFAULT_COMMAND_TIMEOUT, MAX_CAPTURE, MAX_INLINE_STDIN,
  type CommandOptions, type ConnectOptions, type Output, type OutputCallback, type RunOptions, type StartOptions,
} from "./commands.js";
export { Files, WatchHandle, type FileData } from "./files.js";
export { CodeInterpreter, DEFAULT_CODE_TIMEOUT, type RunCodeOptions } from "./code.js";
export { DEFAULT_SHELL, Pty, PtyHandle, TerminalSocket, type PtyOptions } from "./pty.js";
export { Network } from "./network.js";
export {
  Image, Images, type BuildOptions, type ImageCallOptions, type ImageSpec,
} from "./images.js";
export { Volume, VolumeFiles, type VolumeCallOptions, type VolumeInfo } from "./volumes.js";
export { Ports, TOKEN_HEADER } from "./ports.js";
export {
  ApiClient, DEFAULT_URL, type Abortable, type ConnectionOptions, type WebSocketConstructor,
} from "./http.js";
export * from "./errors.js";
export type * from "./types.js";
export type { components, paths, operations } from "./schema.js";
