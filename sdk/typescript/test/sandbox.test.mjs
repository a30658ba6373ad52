import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import {
  ApiClient, AuthenticationError, CorralError, InvalidArgumentError, NotFoundError, Sandbox,
  RuntimeUnavailableError, SandboxNotRunningError, Snapshot,
} from "../dist/index.js";
import { apiKey, sandbox, url } from "./_server.mjs";

const tag = `t${Date.now()}`;
let sb;
before(async () => { sb = await sandbox({ metadata: { suite: "sdk-ts", tag } }); });
after(async () => { await sb?.kill(); });

test("create, list by metadata, connect by id", async () => {
  assert.match(sb.id, /^sbx-/);
  assert.equal(sb.info.state, "running");
  const found = await Sandbox.list({ metadata: { tag } });
  assert.deepEqual(found.map((info) => info.id), [sb.id]);
  const again = await Sandbox.connect(sb.id);
  assert.equal((await again.commands.run("echo $((6*7))")).stdout, "42\n");
});

test("the key shows nowhere: not in JSON, not when inspected", async () => {
  const { inspect } = await import("node:util");
  assert.ok(!JSON.stringify(sb).includes(apiKey));
  assert.ok(!inspect(sb, { depth: 10, showHidden: true }).includes(apiKey));
  assert.ok(!inspect(sb.commands, { depth: 10, showHidden: true }).includes(apiKey));
});

test("errors are typed under one root", async () => {
  await assert.rejects(Sandbox.connect(sb.id, { apiKey: "crl_not-a-key" }), (error) => {
    assert.ok(error instanceof AuthenticationError && error instanceof CorralError);
    assert.equal(error.status, 401);
    return true;
  });
  await assert.rejects(Sandbox.connect(sb.id, { apiKey: process.env.CORRAL_OTHER_KEY }),
    NotFoundError);
  await assert.rejects(Sandbox.create({ timeout: -1 }), (error) => {
    assert.ok(error instanceof InvalidArgumentError);
    assert.equal(error.code, "invalid_argument");
    assert.match(error.message, /timeout/);
    return true;
  });
  const gone = await sandbox();
  await gone.kill();
  await assert.rejects(gone.commands.run("true"), SandboxNotRunningError);
});

test("an aborted create rejects with the signal's reason", async () => {
  await assert.rejects(
    Sandbox.create({ metadata: { tag: `${tag}-aborted` }, signal: AbortSignal.abort(new Error("stop")) }),
    /stop/);
});

test("pause and resume keep memory; a memory snapshot starts a copy", async () => {
  await sb.runCode("kept = 'still here'");
  assert.equal((await sb.pause()).state, "paused");
  assert.equal((await sb.resume()).state, "running");
  assert.equal((await sb.runCode("kept")).text, "'still here'");
  if (sb.info.runtime !== "gvisor") { // memory snapshots are gVisor's
    await assert.rejects(sb.snapshot(), RuntimeUnavailableError);
    return;
  }
  const snap = await sb.snapshot({ name: "sdk-ts", ttl: 600 });
  assert.ok((await Snapshot.list()).some((s) => s.id === snap.id));
  assert.equal((await Snapshot.get(snap.id)).memory, true);
  const copy = await Sandbox.create({ snapshot: snap });
  try {
    assert.equal((await copy.runCode("kept")).text, "'still here'");
  } finally {
    await copy.kill();
    await Snapshot.delete(snap.id);
  }
  await assert.rejects(Snapshot.get(snap.id), NotFoundError);
});

test("fork copies a running sandbox, memory and all (gVisor)", async () => {
  if (sb.info.runtime !== "gvisor") {
    await assert.rejects(sb.fork(), RuntimeUnavailableError);
    return;
  }
  await sb.runCode("forked = [1, 2, 3]");
  const [copy] = await sb.fork({ count: 1, timeout: 120 });
  try {
    assert.notEqual(copy.id, sb.id);
    assert.equal((await copy.runCode("sum(forked)")).text, "6");
  } finally {
    await copy.kill();
  }
});

test("a files-only snapshot is an image a new sandbox starts from", async () => {
  await sb.files.write("/work/baked.txt", "baked in");
  const name = `sdk-ts-${tag}:1`;
  const image = await sb.snapshotFilesystem(name);
  try {
    const child = await Sandbox.create({ image: name, timeout: 120 });
    try {
      assert.equal(await child.files.readText("/work/baked.txt"), "baked in");
    } finally {
      await child.kill();
    }
  } finally {
    const gone = await fetch(`${url}/v1/images/${encodeURIComponent(image.id)}`,
      { method: "DELETE", headers: { Authorization: `Bearer ${apiKey}` } });
    assert.equal(gone.status, 204);
  }
});

test("metrics: the server's samples of the sandbox", async () => {
  const deadline = Date.now() + 30_000;
  let samples = [];
  while (samples.length === 0 && Date.now() < deadline) {
    samples = await sb.getMetrics({ start: new Date(Date.now() - 3600_000) });
    if (samples.length === 0) await new Promise((r) => setTimeout(r, 200));
  }
  assert.ok(samples.length > 0, "no sample in 30 s");
  assert.ok(samples[0].memory_used > 0);
  assert.ok(samples.every((s) => Date.parse(s.time) > 0));
});

test("setTimeout moves the expiry", async () => {
  const before = Date.parse(sb.info.expires_at);
  const info = await sb.setTimeout(3000);
  assert.ok(Date.parse(info.expires_at) > before);
});

test("network policy: read and replaced", async () => {
  const net = await sandbox({ network: { allow: [] } });
  try {
    assert.deepEqual(await net.network.get(), { allow: [], deny: [] });
    const info = await net.network.update({ allow: ["203.0.113.0/24:443"] });
    assert.deepEqual(info.network.allow, ["203.0.113.0/24:443"]);
    assert.deepEqual((await net.network.get()).allow, ["203.0.113.0/24:443"]);
    await assert.rejects(net.network.update({ allow: ["not a host!"] }), InvalidArgumentError);
  } finally {
    await net.kill();
  }
});

test("ports: an app in the sandbox answers through the server with the token", async () => {
  await sb.files.write("/work/site/index.html", "hello from the sandbox");
  await sb.commands.runBackground("python3 -m http.server 8000 --bind 127.0.0.1", { cwd: "/work/site" });
  const target = sb.ports.url(8000);
  assert.equal(target, `${url}/v1/sandboxes/${sb.id}/ports/8000/`);
  const { port } = new URL(url);
  assert.equal(sb.ports.url(8000, { hostBased: true }),
    `http://8000-${sb.id}.${sb.info.ports.domain}:${port}/`);
  assert.throws(() => sb.ports.url(70000), InvalidArgumentError);
  let response;
  const deadline = Date.now() + 30_000;
  for (;;) {
    response = await fetch(target, { headers: { "X-Corral-Port-Token": sb.ports.token } });
    if (response.status === 200 || Date.now() > deadline) break;
    await response.body?.cancel();
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(await response.text(), "hello from the sandbox");
  const refused = await fetch(target);
  assert.equal(refused.status, 401);
  await refused.body?.cancel();
  const signed = await sb.ports.signedUrl(8000, { expiresIn: 60 });
  assert.ok(signed.startsWith(`${target}?corral_expires=`), signed);
  const visit = await fetch(signed, { redirect: "manual" }); // a GET trades it for a cookie
  assert.equal(visit.status, 303);
  const cookie = visit.headers.getSetCookie().map((c) => c.split(";")[0]).join("; ");
  const viaSigned = await fetch(new URL(visit.headers.get("location"), signed), { headers: { cookie } });
  assert.equal(await viaSigned.text(), "hello from the sandbox");
  assert.deepEqual((await sb.ports.setPublic([8000])).public, [8000]);
  assert.deepEqual(sb.ports.public, [8000]);
  const open = await fetch(target);
  assert.equal(await open.text(), "hello from the sandbox");
  await sb.ports.setPublic([]);
});

test("a terminal over a WebSocket (the ws package where the runtime has no global one)", async () => {
  const other = await Sandbox.connect(sb.id, { WebSocket: globalThis.WebSocket ?? WebSocket });
  const chunks = [];
  const term = await other.pty.connect({ cols: 90, rows: 20, onData: (data) => chunks.push(data) });
  assert.ok(term.pid > 0);
  term.sendInput("stty size; exit 4\n");
  const exit = await term.wait();
  assert.equal(exit.exit_code, 4);
  assert.match(new TextDecoder().decode(Buffer.concat(chunks)), /20 90/);
  const refused = await Sandbox.connect(sb.id, { WebSocket: globalThis.WebSocket ?? WebSocket });
  const bad = new Sandbox(refused.info, new ApiClient({ apiKey: "crl_not-a-key", WebSocket: globalThis.WebSocket ?? WebSocket }));
  await assert.rejects(bad.pty.connect(), CorralError);
  await assert.rejects(other.pty.connect({ signal: AbortSignal.abort(new Error("no")) }), /no/);
});

test("no key anywhere is AuthenticationError before any request", async () => {
  const saved = process.env.CORRAL_API_KEY;
  delete process.env.CORRAL_API_KEY;
  try {
    await assert.rejects(Sandbox.list(), AuthenticationError);
  } finally {
    process.env.CORRAL_API_KEY = saved;
  }
  assert.ok(apiKey);
});
