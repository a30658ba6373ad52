// What every test file shares: the server and key (from the environment the pytest test
// sets), and a sandbox made once per file.
import { Sandbox } from "../dist/index.js";

export const url = process.env.CORRAL_URL;
export const apiKey = process.env.CORRAL_API_KEY;
if (!url || !apiKey) throw new Error("CORRAL_URL and CORRAL_API_KEY must be set");

/** A sandbox for a test file, killed by `after`. */
export async function sandbox(options = {}) {
  return Sandbox.create({ image: "python", timeout: 600, metadata: { suite: "sdk-ts" }, ...options });
}
