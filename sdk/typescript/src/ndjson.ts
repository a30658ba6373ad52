/** Reading NDJSON answers (streamed commands, cells, watches) and bytes as base64, with the
 * platform's `TextDecoder`, `atob` and `btoa` only. */

import { ConnectionError } from "./errors.js";

/** Each non-empty line of an NDJSON body, parsed; a broken connection is a ConnectionError
 * (an aborted read throws the signal's reason). */
export async function* lines<T>(body: ReadableStream<Uint8Array> | null,
  signal?: AbortSignal): AsyncGenerator<T> {
  if (body === null) return;
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  try {
    for (;;) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (signal?.aborted) throw signal.reason;
        throw new ConnectionError(`the server's stream broke: ${String(error)}`, error);
      }
      if (chunk.done) break;
      pending += decoder.decode(chunk.value, { stream: true });
      let end: number;
      while ((end = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, end).trim();
        pending = pending.slice(end + 1);
        if (line) yield JSON.parse(line) as T;
      }
    }
    const last = (pending + decoder.decode()).trim();
    if (last) yield JSON.parse(last) as T;
  } finally {
    reader.releaseLock();
    await body.cancel().catch(() => undefined);
  }
}

export function fromBase64(text: string): Uint8Array {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

const encoder = new TextEncoder();

export function utf8(data: string | Uint8Array): Uint8Array {
  return typeof data === "string" ? encoder.encode(data) : data;
}
