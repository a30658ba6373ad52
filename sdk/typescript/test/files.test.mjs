import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { InvalidArgumentError, NotFoundError } from "../dist/index.js";
import { sandbox } from "./_server.mjs";

let sb;
before(async () => { sb = await sandbox(); });
after(async () => { await sb?.kill(); });

test("write and read text and bytes", async () => {
  assert.equal(await sb.files.write("/work/a.txt", "héllo\n"), 7);
  assert.equal(await sb.files.readText("/work/a.txt"), "héllo\n");
  const bytes = new Uint8Array(256).map((_, i) => i);
  await sb.files.write("/work/b.bin", bytes);
  assert.deepEqual(await sb.files.read("/work/b.bin"), bytes);
  await sb.files.write("rel.txt", new Blob(["from a blob"]));
  assert.equal(await sb.files.readText("/work/rel.txt"), "from a blob");
});

test("uploads and downloads stream: ReadableStream and AsyncIterable in, ReadableStream out", async () => {
  const piece = new Uint8Array(1 << 20).fill(7);
  let sent = 0;
  const stream = new ReadableStream({
    pull(controller) {
      if (sent === 8) return controller.close();
      sent += 1;
      controller.enqueue(piece);
    },
  });
  assert.equal(await sb.files.write("/work/big.bin", stream), 8 << 20);
  async function* pieces() { yield "one,"; yield new TextEncoder().encode("two"); }
  assert.equal(await sb.files.write("/work/iter.txt", pieces()), 7);
  assert.equal(await sb.files.readText("/work/iter.txt"), "one,two");
  let total = 0;
  let chunks = 0;
  for await (const chunk of await sb.files.readStream("/work/big.bin")) {
    assert.ok(chunk.every((b) => b === 7));
    total += chunk.length;
    chunks += 1;
  }
  assert.equal(total, 8 << 20);
  assert.ok(chunks > 1);
});

test("list, stat, exists, mkdir, rename, remove", async () => {
  assert.equal(await sb.files.mkdir("/work/d/e"), true);
  assert.equal(await sb.files.mkdir("/work/d/e"), false);
  await sb.files.write("/work/d/e/f.txt", "f");
  const names = (await sb.files.list("/work/d", { depth: 2 })).map((e) => e.path).sort();
  assert.deepEqual(names, ["/work/d/e", "/work/d/e/f.txt"]);
  const stat = await sb.files.stat("/work/d/e/f.txt");
  assert.equal(stat.type, "file");
  assert.equal(stat.size, 1);
  await sb.files.rename("/work/d/e/f.txt", "/work/d/g.txt");
  assert.equal(await sb.files.exists("/work/d/e/f.txt"), false);
  assert.equal(await sb.files.exists("/work/d/g.txt"), true);
  await sb.files.remove("/work/d", { recursive: true });
  assert.equal(await sb.files.exists("/work/d"), false);
  await assert.rejects(sb.files.read("/work/nothing-here"), NotFoundError);
  await assert.rejects(sb.files.write("/work/\0x", "x"), InvalidArgumentError);
});

test("a watch reports files made, and stops", async () => {
  await sb.files.mkdir("/work/w");
  const watch = await sb.files.watch("/work/w", { timeout: 60 }); // the stream ends by then
  await sb.files.write("/work/w/new.txt", "x");
  let seen = false;
  for await (const event of watch) {
    if (event.type === "create" && event.name === "new.txt") {
      seen = true;
      break;
    }
  }
  assert.ok(seen, "no create event for new.txt");
  watch.stop();
});

test("a signed URL reads a file with no key", async () => {
  await sb.files.write("/work/shared.txt", "shared");
  const url = await sb.files.downloadUrl("/work/shared.txt", { expiresIn: 60 });
  const response = await fetch(url);
  assert.equal(await response.text(), "shared");
});

test("an aborted read rejects with the signal's reason", async () => {
  const abort = new AbortController();
  abort.abort(new Error("not now"));
  await assert.rejects(sb.files.read("/work/a.txt", { signal: abort.signal }), /not now/);
});
