import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { CommandTimeoutError, CorralError, InvalidArgumentError, NotFoundError } from "../dist/index.js";
import { sandbox } from "./_server.mjs";

let sb;
before(async () => { sb = await sandbox(); });
after(async () => { await sb?.kill(); });

test("run returns exit code, stdout and stderr apart", async () => {
  const r = await sb.commands.run("echo out; echo err >&2; exit 3");
  assert.equal(r.exit_code, 3);
  assert.equal(r.stdout, "out\n");
  assert.equal(r.stderr, "err\n");
  const argv = await sb.commands.run(["python3", "-c", "import sys; print(sys.argv[1])", "a b;c"]);
  assert.equal(argv.stdout, "a b;c\n");
});

test("run streams output to callbacks as it comes, and takes stdin, env and cwd", async () => {
  const seen = [];
  const r = await sb.commands.run("for i in 1 2 3; do echo $i; done; echo x >&2", {
    onStdout: (text) => seen.push(["out", text]), onStderr: (text) => seen.push(["err", text]),
  });
  assert.equal(seen.filter(([s]) => s === "out").map(([, t]) => t).join(""), "1\n2\n3\n");
  assert.deepEqual(seen.filter(([s]) => s === "err"), [["err", "x\n"]]);
  assert.equal(r.stdout, "1\n2\n3\n");
  const piped = await sb.commands.run("cat; echo $GREETING; pwd", {
    stdin: "hi\n", env: { GREETING: "hello" }, cwd: "/tmp",
  });
  assert.equal(piped.stdout, "hi\nhello\n/tmp\n");
});

test("a command runs as the user asked for, by name or uid", async () => {
  assert.equal((await sb.commands.run("id -un", { user: "nobody" })).stdout, "nobody\n");
  assert.equal((await sb.commands.run(["id", "-u"], { user: 65534 })).stdout, "65534\n");
  await sb.files.write("/tmp/owned.txt", "x", { user: "nobody", mode: 0o600 });
  const stat = await sb.files.stat("/tmp/owned.txt");
  assert.equal(stat.uid, 65534);
  assert.equal(stat.mode & 0o777, 0o600);
});

test("a large stdin goes through in pieces", async () => {
  const big = "x".repeat(1_500_000);
  const r = await sb.commands.run("wc -c", { stdin: big });
  assert.equal(r.stdout.trim(), String(big.length));
});

test("a command past its timeout is killed and throws CommandTimeoutError with its output", async () => {
  await assert.rejects(sb.commands.run("echo started; sleep 30", { timeout: 1 }), (error) => {
    assert.ok(error instanceof CommandTimeoutError);
    assert.ok(error instanceof CorralError);
    assert.equal(error.code, "command_timeout");
    assert.equal(error.result.stdout, "started\n");
    return true;
  });
});

test("start gives a handle: stdin, then eof, then its result", async () => {
  const h = await sb.commands.start(["cat"], { stdin: true });
  assert.ok(h.pid > 0);
  await h.sendStdin("hello ");
  await h.sendStdin(new TextEncoder().encode("world"), { eof: true });
  const r = await h.wait();
  assert.equal(r.stdout, "hello world");
  assert.equal(r.exit_code, 0);
});

test("a handle's signal reaches the process, and kill ends it", async () => {
  let ready;
  const readied = new Promise((resolve) => { ready = resolve; });
  const h = await sb.commands.start(
    ["python3", "-c", "import signal,sys,time\nsignal.signal(signal.SIGUSR1, lambda *a: (print('usr1', flush=True), sys.exit(7)))\nprint('ready', flush=True)\ntime.sleep(60)"],
    { onStdout: (text) => text.includes("ready") && ready() });
  await readied;
  await h.signal(10);
  const r = await h.wait();
  assert.equal(r.exit_code, 7);
  assert.match(r.stdout, /usr1/);
  const k = await sb.commands.start("sleep 60");
  await k.kill();
  assert.equal((await k.wait()).signal, 9);
});

test("a background command is listed, followed again with connect, and killed by id", async () => {
  const started = await sb.commands.runBackground(
    "while true; do if [ -f /tmp/bg-go ]; then echo go; exit 0; fi; sleep 0.05; done");
  assert.ok((await sb.commands.list()).some((p) => p.id === started.id));
  const chunks = [];
  const h = await sb.commands.connect(started.id, { onStdout: (text) => chunks.push(text) });
  await sb.files.write("/tmp/bg-go", "");
  const r = await h.wait();
  assert.equal(r.exit_code, 0);
  assert.equal(chunks.join(""), "go\n");
  const other = await sb.commands.runBackground("sleep 60");
  await sb.commands.kill(other.id);
  const history = await sb.commands.history();
  assert.ok(history.some((c) => c.id === other.id));
});

test("aborting a run's signal kills the command and rejects with the reason", async () => {
  const abort = new AbortController();
  const run = sb.commands.run("echo begun; sleep 60", {
    signal: abort.signal, onStdout: () => abort.abort(new Error("enough")),
  });
  await assert.rejects(run, /enough/);
  const deadline = Date.now() + 30_000;
  while ((await sb.commands.list()).some((p) => p.argv.join(" ").includes("sleep 60") && p.argv.join(" ").includes("begun"))) {
    assert.ok(Date.now() < deadline, "the aborted command still runs");
    await new Promise((r) => setTimeout(r, 100));
  }
});

test("an unknown command id is NotFoundError; one that is not a number never leaves", async () => {
  await assert.rejects(sb.commands.signal(999_999, 15), NotFoundError);
  await assert.rejects(sb.commands.signal("1/../../../sandboxes", 15), InvalidArgumentError);
  await assert.rejects(sb.commands.connect(-1), InvalidArgumentError);
});

test("a terminal over HTTP: keys in, bytes out, resize, exit", async () => {
  let text = "";
  let wanted;
  const shown = (pattern) => new Promise((resolve) => { wanted = { pattern, resolve }; check(); });
  const check = () => { if (wanted?.pattern.test(text)) wanted.resolve(); };
  const decoder = new TextDecoder();
  const term = await sb.pty.create({
    cols: 100, rows: 30, onData: (data) => { text += decoder.decode(data, { stream: true }); check(); },
  });
  await term.sendInput("stty size\n");
  await shown(/30 100/);
  await term.resize(120, 40);
  await term.sendInput("stty size; exit 5\n");
  const r = await term.wait();
  assert.equal(r.exit_code, 5);
  assert.match(text, /40 120/);
});
