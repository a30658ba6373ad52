import assert from "node:assert/strict";
import { test } from "node:test";
import { AlreadyExistsError, InvalidArgumentError, NotFoundError, Volume } from "../dist/index.js";
import { sandbox } from "./_server.mjs";

test("a volume: files with no sandbox, mounted in one, outliving it", async () => {
  const name = `sdkts-${Date.now()}`;
  const vol = await Volume.create(name, { size: 64 });
  try {
    assert.equal(vol.info.size_mib, 64);
    await assert.rejects(Volume.create(name, { size: 64 }), AlreadyExistsError);
    await vol.files.write("/raw/a.csv", "x,y\n1,2\n");
    assert.deepEqual((await vol.files.list("/raw")).map((e) => e.name), ["a.csv"]);
    assert.equal(await vol.files.exists("/raw/missing"), false);
    await assert.rejects(vol.files.rename("/raw/a.csv", "/raw/b.csv"), InvalidArgumentError);
    const sb = await sandbox({ volumes: { "/data": vol } });
    try {
      assert.equal((await sb.commands.run("wc -l < /data/raw/a.csv")).stdout.trim(), "2");
      await sb.files.write("/data/from-sandbox.txt", "written inside");
      assert.deepEqual((await vol.refresh()).in_use_by, [sb.id]);
    } finally {
      await sb.kill();
    }
    assert.equal(await vol.files.readText("/from-sandbox.txt"), "written inside");
    assert.ok((await Volume.list()).some((v) => v.name === name));
    assert.equal((await Volume.fromName(name)).info.id, vol.info.id);
  } finally {
    await vol.delete();
  }
  await assert.rejects(Volume.fromName(name), NotFoundError);
  const made = await Volume.fromName(name, { createIfMissing: true, size: 16 });
  assert.equal(made.info.size_mib, 16);
  await made.delete();
});
