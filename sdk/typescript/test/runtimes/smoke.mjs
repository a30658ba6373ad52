// The SDK on a runtime other than Node (Deno here: `deno run --allow-net --allow-env`),
// against a real server: what an edge runtime has is all the core needs. Prints "ok".
import { NotFoundError, Sandbox } from "../../dist/index.js";

function check(condition, what) {
  if (!condition) throw new Error(`failed: ${what}`);
}

const sb = await Sandbox.create({ image: "python", timeout: 300, metadata: { suite: "sdk-ts-runtime" } });
try {
  let streamed = "";
  const r = await sb.commands.run("echo one; echo two", { onStdout: (text) => { streamed += text; } });
  check(r.exit_code === 0 && streamed === "one\ntwo\n", "a streamed command");
  const body = new ReadableStream({
    start(controller) {
      controller.enqueue(new TextEncoder().encode("streamed "));
      controller.enqueue(new TextEncoder().encode("upload"));
      controller.close();
    },
  });
  check(await sb.files.write("/work/up.txt", body) === 15, "a streamed upload");
  let text = "";
  const decoder = new TextDecoder();
  for await (const chunk of await sb.files.readStream("/work/up.txt")) text += decoder.decode(chunk, { stream: true });
  check(text === "streamed upload", "a streamed download");
  check((await sb.runCode("6 * 7")).text === "42", "a cell");
  const h = await sb.commands.start(["cat"], { stdin: true });
  await h.sendStdin("in", { eof: true });
  check((await h.wait()).stdout === "in", "stdin");
  let refused = false;
  try {
    await sb.files.read("/work/missing");
  } catch (error) {
    refused = error instanceof NotFoundError;
  }
  check(refused, "a typed error");
} finally {
  await sb.kill();
}
console.log("ok");
