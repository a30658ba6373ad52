import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { InvalidArgumentError, NotFoundError } from "../dist/index.js";
import { sandbox } from "./_server.mjs";

let sb;
before(async () => { sb = await sandbox(); });
after(async () => { await sb?.kill(); });

test("runCode keeps state and gives rich results", async () => {
  await sb.runCode("x = 20");
  const ex = await sb.runCode("x + 22");
  assert.equal(ex.text, "42");
  assert.equal(ex.error, null);
  const shown = [];
  const html = await sb.runCode("from IPython.display import HTML, display\n" +
    "display(HTML('<i>first</i>'))\nHTML('<b>hi</b>')", { onResult: (r) => shown.push(r.html) });
  assert.deepEqual(shown, ["<i>first</i>", "<b>hi</b>"]);
  assert.equal(html.results[1].html, "<b>hi</b>");
  assert.deepEqual(html.results.map((r) => r.is_main_result), [false, true]);
});

test("a cell's exception is its error, not thrown; streaming callbacks see output", async () => {
  const out = [];
  const errors = [];
  const ex = await sb.runCode("print('a'); print('b'); 1/0", {
    onStdout: (text) => out.push(text), onError: (error) => errors.push(error.name),
  });
  assert.equal(out.join(""), "a\nb\n");
  assert.deepEqual(ex.logs.stdout.join(""), "a\nb\n");
  assert.equal(ex.error.name, "ZeroDivisionError");
  assert.deepEqual(errors, ["ZeroDivisionError"]);
});

test("contexts are apart; restart, list, interrupt by timeout, delete", async () => {
  const ctx = await sb.code.createContext({ cwd: "/tmp" });
  await sb.runCode("y = 1", { context: ctx });
  assert.equal((await sb.runCode("import os; os.getcwd()", { context: ctx })).text, "'/tmp'");
  assert.equal((await sb.runCode("'y' in globals()")).text, "False");
  assert.ok((await sb.code.listContexts()).some((c) => c.id === ctx.id));
  const slow = await sb.runCode("import time; time.sleep(30)", { context: ctx, timeout: 1 });
  assert.equal(slow.error.name, "TimeoutError");
  assert.equal((await sb.runCode("y", { context: ctx.id })).text, "1");
  await sb.code.restartContext(ctx);
  assert.equal((await sb.runCode("'y' in globals()", { context: ctx })).text, "False");
  await sb.code.deleteContext(ctx);
  await assert.rejects(sb.runCode("1", { context: ctx }), NotFoundError);
});

test("a context id never becomes another route", async () => {
  await assert.rejects(sb.code.deleteContext(".."), InvalidArgumentError); // not DELETE .../code
  await assert.rejects(sb.code.interrupt("."), InvalidArgumentError);
  await assert.rejects(sb.code.deleteContext("../.."), NotFoundError); // one segment, "..%2F.."
  await assert.rejects(sb.runCode("1", { context: "../../x" }), NotFoundError); // a body field
  assert.equal((await sb.refresh()).state, "running");
});

test("bash contexts keep their shell", async () => {
  await sb.runCode("cd /tmp; n=5", { language: "bash" });
  const ex = await sb.runCode("echo $n $PWD; false", { language: "bash" });
  assert.equal(ex.logs.stdout.join(""), "5 /tmp\n");
  assert.equal(ex.error.name, "ExitStatus");
});

test("aborting a cell interrupts it; its context lives on", async () => {
  const ctx = await sb.code.createContext();
  await sb.runCode("z = 3", { context: ctx });
  const abort = new AbortController();
  const cell = sb.runCode("import time\nprint('begun', flush=True)\ntime.sleep(60)", {
    context: ctx, signal: abort.signal, onStdout: () => abort.abort(new Error("stop the cell")),
  });
  await assert.rejects(cell, /stop the cell/);
  assert.equal((await sb.runCode("z", { context: ctx })).text, "3"); // waits for the interrupt
});
