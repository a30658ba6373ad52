import assert from "node:assert/strict";
import { test } from "node:test";
import { BuildFailedError, Image, Images, NotFoundError, Sandbox } from "../dist/index.js";

test("an image from code: built step by step, cached, started from", async () => {
  const name = `sdk-ts-image-${Date.now()}:1`;
  const image = Image.base("python")
    .runCommands("echo built > /etc/sdk-ts-greeting", ["sh", "-c", "echo argv >> /etc/sdk-ts-greeting"])
    .env({ SDK_TS_MODE: "test" })
    .workdir("/srv/app");
  assert.deepEqual(image.spec.steps.map((s) => s.kind), ["run", "run", "env", "workdir"]);
  const log = [];
  const info = await image.build({ name, onLog: (line) => log.push(line) });
  assert.equal(info.name, name);
  assert.ok(log.some((line) => line.startsWith("[1/4]")), log.join("\n"));
  const again = [];
  await image.build({ onLog: (line) => again.push(line) });
  assert.ok(again.some((line) => line.endsWith("(cached)")), again.join("\n"));
  assert.equal((await Images.get(name)).id, info.id);
  assert.ok((await Images.list()).images.some((i) => i.id === info.id));
  const sb = await Sandbox.create({ image, timeout: 120 }); // built already: all cached
  try {
    const r = await sb.commands.run("cat /etc/sdk-ts-greeting; echo $SDK_TS_MODE; pwd");
    assert.equal(r.stdout, "built\nargv\ntest\n/srv/app\n");
    assert.equal(sb.info.image, info.id);
  } finally {
    await sb.kill();
    await Images.delete(name);
  }
  await assert.rejects(Images.get(name), NotFoundError);
});

test("a failing step is BuildFailedError naming it", async () => {
  await assert.rejects(Image.base("python").runCommands("echo oops; exit 3").build(), (error) => {
    assert.ok(error instanceof BuildFailedError);
    assert.match(error.message, /oops/);
    return true;
  });
});
