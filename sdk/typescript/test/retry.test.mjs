// The client's own retry logic, against a local HTTP server that answers what each test
// scripts (429 or 503 with or without Retry-After, then 200): no Corral server needed.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, test } from "node:test";
import {
  ConnectionError, CorralError, InvalidArgumentError, RateLimitedError, ResourceExhaustedError, Sandbox, UnavailableError,
} from "../dist/index.js";

let server;
let base;
let script = [];
const seen = [];

before(async () => {
  server = createServer((request, response) => {
    let body = "";
    request.on("data", (chunk) => { body += chunk; });
    request.on("end", () => {
      seen.push({ method: request.method, url: request.url, body, at: Date.now() });
      const [status, headers, payload] = script.shift() ?? [500, {}, { error: { code: "internal", message: "unscripted" } }];
      response.writeHead(status, { "Content-Type": "application/json", ...headers });
      response.end(typeof payload === "string" ? payload : JSON.stringify(payload));
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${server.address().port}`;
});
after(() => server.close());

const info = { id: "sbx-0000000000000000", state: "running" };
const limited = (code, message) => ({ error: { code, message } });

test("a 429 with Retry-After is retried after that long, then succeeds", async () => {
  seen.length = 0;
  script = [[429, { "Retry-After": "1" }, limited("rate_limited", "slow down")], [201, {}, info]];
  const sb = await Sandbox.create({ url: base, apiKey: "crl_test" });
  assert.equal(sb.id, info.id);
  assert.equal(seen.length, 2);
  assert.equal(seen[0].body, seen[1].body);
  assert.ok(seen[1].at - seen[0].at >= 1000, "the retry came before Retry-After said");
});

test("a 503 unavailable without Retry-After backs off and retries", async () => {
  seen.length = 0;
  script = [[503, {}, limited("unavailable", "busy")], [503, {}, limited("unavailable", "busy")],
    [200, {}, { sandboxes: [] }]];
  assert.deepEqual(await Sandbox.list({ url: base, apiKey: "crl_test" }), []);
  assert.equal(seen.length, 3);
});

test("retries give up after `retries`, with the error and its retryAfter", async () => {
  seen.length = 0;
  script = Array(3).fill([429, { "Retry-After": "0" }, limited("rate_limited", "slow down")]);
  await assert.rejects(Sandbox.list({ url: base, apiKey: "crl_test", retries: 2 }), (error) => {
    assert.ok(error instanceof RateLimitedError && error instanceof ResourceExhaustedError);
    assert.equal(error.retryAfter, 0);
    return true;
  });
  assert.equal(seen.length, 3);
});

test("a Retry-After longer than maxRetryDelay is not waited for", async () => {
  seen.length = 0;
  script = [[503, { "Retry-After": "120" }, limited("unavailable", "busy")]];
  await assert.rejects(Sandbox.list({ url: base, apiKey: "crl_test", maxRetryDelay: 5000 }),
    UnavailableError);
  assert.equal(seen.length, 1);
});

test("a limit without Retry-After (nothing transient) is not retried", async () => {
  seen.length = 0;
  script = [[429, {}, limited("resource_exhausted", "too many sandboxes")]];
  await assert.rejects(Sandbox.list({ url: base, apiKey: "crl_test" }), ResourceExhaustedError);
  assert.equal(seen.length, 1);
});

test("a body-less 503 from a proxy is retried", async () => {
  seen.length = 0;
  script = [[503, { "Content-Type": "text/plain", "Retry-After": "0" }, "upstream busy"], [200, {}, { sandboxes: [] }]];
  assert.deepEqual(await Sandbox.list({ url: base, apiKey: "crl_test" }), []);
  assert.equal(seen.length, 2);
});

test("aborting during the wait before a retry rejects at once with the reason", async () => {
  seen.length = 0;
  script = [[429, { "Retry-After": "20" }, limited("rate_limited", "slow down")]];
  const abort = new AbortController();
  const listing = Sandbox.list({ url: base, apiKey: "crl_test", signal: abort.signal });
  const deadline = Date.now() + 10_000;
  while (seen.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  abort.abort(new Error("gave up"));
  await assert.rejects(listing, /gave up/);
  assert.equal(seen.length, 1);
});

test("a server that cannot be reached is a ConnectionError naming it", async () => {
  const closed = createServer();
  await new Promise((resolve) => closed.listen(0, "127.0.0.1", resolve));
  const port = closed.address().port;
  await new Promise((resolve) => closed.close(resolve));
  await assert.rejects(Sandbox.list({ url: `http://127.0.0.1:${port}`, apiKey: "crl_test" }),
    (error) => {
      assert.ok(error instanceof ConnectionError && error instanceof CorralError);
      assert.match(error.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
      return true;
    });
});

test("a Retry-After given as an HTTP date is honoured", async () => {
  seen.length = 0;
  const soon = new Date(Date.now() + 1500).toUTCString(); // whole seconds: at most 1.5 s
  script = [[503, { "Retry-After": soon }, "busy"], [200, {}, { sandboxes: [] }]];
  assert.deepEqual(await Sandbox.list({ url: base, apiKey: "crl_test" }), []);
  assert.equal(seen.length, 2);
});

test("connection options are checked before any request", async () => {
  for (const options of [{ retries: -1 }, { retries: 1.5 }, { retries: Number.NaN }, { retries: 11 },
    { maxRetryDelay: -5 }, { maxRetryDelay: Number.POSITIVE_INFINITY },
    { url: "ftp://127.0.0.1" }, { url: "http://" }, { url: "127.0.0.1:8470" }]) {
    await assert.rejects(Sandbox.list({ url: base, apiKey: "crl_test", ...options }),
      InvalidArgumentError, JSON.stringify(options));
  }
  seen.length = 0;
  script = [[200, {}, { sandboxes: [] }]];
  await Sandbox.list({ url: `${base}/`, apiKey: "crl_test", retries: 0 }); // a trailing slash is fine
  assert.equal(seen[0].url, "/v1/sandboxes");
});
