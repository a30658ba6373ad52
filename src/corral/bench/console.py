"""The console rows: the web console (``/ui``) with many sandboxes listed, in headless
chromium, beside the API calls each view is built on.

The benchmark starts its own ``corral serve`` (:func:`corral.bench.api.api_server`), creates
``sandboxes`` live sandboxes of one tenant on it (``batch`` at a time, on the namespaces
runtime by default: the lightest), waits until the metrics sampler has a sample of each,
logs into ``/ui`` in Debian's chromium (``/usr/bin/chromium``, or ``CORRAL_CHROMIUM``)
through Playwright's Python package, and times what a person waits for:

* the list page shown (a hash navigation to ``#/sandboxes`` until page 1's rows and the
  "N in all" count are in the page), and a whole page load to the same;
* a page turn until the next page's rows are shown, and until their sparklines are;
* a filter typed until the rows match it;
* a row's down arrow until the next row has the focus, and Enter until the sandbox page
  is shown;
* the list page's JS heap (after a garbage collection) and DOM nodes, beside the same page
  of a tenant with no sandbox.

Times are taken inside the page (``performance.now()``): from the input event's own time
stamp (or the navigation's start) to the frame after the page's DOM shows the result, so
the cost of Playwright's own messages is in no figure. Each round then times the bare API
call beside it (``httpx``, on the same server, with the key): the list fetch, or the
sparklines' metrics fetch. Ratios are console / bare.

Every sandbox is killed in ``finally`` blocks (a bounded wait each); the server's stop kills
whatever is left, and its data dir is swept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx

from corral.api.errors import InternalError, InvalidArgumentError

from .api import ApiServer, api_server
from .report import BenchReport, machine_info
from .stats import Row, RuntimeResult, Stat, round_label

Progress = Callable[[str], None]
#: The console's rows a page (``PAGE_SIZE`` in ui/src/pages/sandboxes.js).
PAGE_SIZE: Final = 50
#: Sparkline points the list page asks for (its ``points=30``).
SPARK_POINTS: Final = 30
CHROMIUM_ENV: Final = "CORRAL_CHROMIUM"
#: The tenant with no sandbox whose list page is the heap and DOM rows' baseline.
EMPTY_TENANT: Final = "bench-empty"
#: Longest wait for one condition in the page, one create or kill, or the first samples.
WAIT_S: Final = 120.0
LIFETIME: Final = 3600.0
MIB: Final = 1024 * 1024


@dataclass(frozen=True)
class ConsoleBench:
    """How the console rows are measured.

    Attributes:
        sandboxes: live sandboxes listed.
        iterations: recorded rounds of each measure.
        warmup: unrecorded rounds before them.
        image: the sandboxes' image.
        runtime: the sandboxes' runtime.
        batch: creates (and kills) at once.
        arrows: down-arrow presses a keyboard round makes before Enter.
    """

    sandboxes: int = 500
    iterations: int = 10
    warmup: int = 2
    image: str = "python"
    runtime: str = "namespaces"
    batch: int = 16
    arrows: int = 10


def browser_problem() -> str | None:
    """Why the console rows cannot run here (what to install), or None."""
    chromium = Path(os.environ.get(CHROMIUM_ENV, "/usr/bin/chromium"))
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright Python package (`pip install 'playwright>=1.50,<2'`, "
                       "in Corral's `test` extra; its own browser downloads are not needed)")
    if not chromium.is_file() or shutil.which(str(chromium)) is None:
        missing.append(f"chromium at {chromium} (`apt-get install chromium`, or set "
                       f"{CHROMIUM_ENV} to a chromium binary)")
    if not missing:
        return None
    return ("the console rows need " + " and ".join(missing)
            + "; `scripts/install --test` installs both")


def batches(count: int, size: int) -> list[range]:
    """``range(count)`` cut into consecutive ranges of at most ``size``."""
    if size < 1:
        raise InvalidArgumentError("a batch holds at least one sandbox")
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def pages(count: int) -> int:
    """The list's pages for ``count`` sandboxes (one, even when empty)."""
    return max(1, -(-count // PAGE_SIZE))


def filter_text(round_: int, count: int) -> tuple[str, range]:
    """What a filter round types, and the indices of the sandboxes it leaves: each sandbox's
    metadata says ``console-NNNN`` (its index), and the text is the prefix of a group of ten
    of them (fewer in the last group), another group each round."""
    groups = max(1, -(-count // 10))
    group = round_ * 7 % groups
    return f"console-{group:03d}", range(group * 10, min(group * 10 + 10, count))


def heap_figures(metrics: Iterable[dict[str, Any]]) -> tuple[float, int]:
    """(JS heap used in MiB, DOM nodes) from CDP ``Performance.getMetrics``'s list."""
    found = {m["name"]: m["value"] for m in metrics}
    try:
        return float(found["JSHeapUsedSize"]) / MIB, int(found["Nodes"])
    except KeyError as exc:
        raise InternalError(f"chromium's Performance.getMetrics has no {exc}") from None


# The page side of every timed measure: the first input event of the type given (or, with
# none, a navigation the script starts itself) starts the clock; each condition, checked at
# every change of the DOM, stops its own at the frame after it holds. Bounded by `limit` ms.
_ARM: Final = """
({start, key, hash, until, limit}) => {
  const checks = {
    list: (a) => document.getElementById('sandboxes-title')
      && document.querySelectorAll('tbody tr[data-id]').length === a.rows
      && [...document.querySelectorAll('.page-head .muted')].some((e) => e.textContent === a.count)
      && (a.first === undefined
          || document.querySelector('tbody tr[data-id]').dataset.id === a.first),
    rows: (a) => {
      const ids = [...document.querySelectorAll('tbody tr[data-id]')].map((r) => r.dataset.id);
      return ids.length === a.ids.length && ids.every((id, i) => id === a.ids[i]);
    },
    sparks: (a) => {
      const rows = [...document.querySelectorAll('tbody tr[data-id]')];
      return rows.length === a.ids.length && rows.every((r, i) => r.dataset.id === a.ids[i]
        && r.querySelectorAll('.spark').length === 2);
    },
    focus: (a) => document.activeElement && document.activeElement.dataset
      && document.activeElement.dataset.id === a.id,
    sandbox: (a) => {
      const h = document.getElementById('sandbox-title');
      return h && h.textContent === a.id && document.querySelector('dl.facts');
    },
  };
  let t0 = null;
  const times = {};
  performance.clearResourceTimings();  // its buffer holds 250: keep room for this round's
  const pending = new Set(Object.keys(until));
  const bench = {};
  bench.done = new Promise((resolve, reject) => {
    const observer = new MutationObserver(() => check());
    const timer = setTimeout(() => { observer.disconnect();
      reject(new Error(`not shown within ${limit} ms: ${[...pending].join(', ')}`)); }, limit);
    const check = () => {
      if (t0 === null) return;
      for (const name of [...pending]) {
        const [kind, args] = until[name];
        if (checks[kind](args)) {
          pending.delete(name);
          requestAnimationFrame(() => {
            times[name] = performance.now() - t0;
            if (Object.keys(times).length === Object.keys(until).length) {
              clearTimeout(timer); resolve(times);
            }
          });
        }
      }
      if (pending.size === 0) {
        observer.disconnect();
        window.removeEventListener('focusin', check, true);
      }
    };
    observer.observe(document.body, {subtree: true, childList: true, characterData: true,
                                     attributes: true});
    window.addEventListener('focusin', check, true);  // a focus moved changes no DOM
    if (start) {
      const begin = (event) => {
        if (key && event.key !== key) return;
        window.removeEventListener(start, begin, true);
        t0 = event.timeStamp; check();
      };
      window.addEventListener(start, begin, true);
    } else {
      t0 = performance.now();
      location.hash = hash;
      check();
    }
  });
  bench.done.catch(() => {});
  bench.start = () => t0;
  window.__corralBench = bench;
}
"""
# The first fetch of `path` since the clock started: [ms from the start until it was sent,
# ms it took until its last byte], from Resource Timing; null if there was none.
_FETCH: Final = """
(path) => {
  const t0 = window.__corralBench.start();
  const found = performance.getEntriesByType('resource').find(
    (e) => new URL(e.name).pathname === path && e.startTime >= t0);
  return found ? [found.startTime - t0, found.responseEnd - found.startTime] : null;
}
"""
# Installed in every document of the page-load context: the time from the navigation's
# start to the frame after page 1 of the list is shown.
_ON_LOAD: Final = """
(() => {
  const wanted = %s;
  const shown = () => document.getElementById('sandboxes-title')
    && document.querySelectorAll('tbody tr[data-id]').length === wanted.rows
    && [...document.querySelectorAll('.page-head .muted')]
      .some((e) => e.textContent === wanted.count);
  const watch = () => {
    const observer = new MutationObserver(() => {
      if (!shown()) return;
      observer.disconnect();
      requestAnimationFrame(() => { window.__corralShown = performance.now(); });
    });
    observer.observe(document.body, {subtree: true, childList: true, characterData: true});
  };
  if (document.body) watch(); else document.addEventListener('DOMContentLoaded', watch);
})();
"""


@dataclass
class _Samples:
    corral: list[float]
    bare: list[float]

    def row(self, key: str, label: str, bare_label: str | None) -> Row:
        if not self.corral:
            raise InternalError(f"the {key} row has no samples")
        bare = Stat(tuple(self.bare)) if bare_label and self.bare else None
        return Row(key, label, Stat(tuple(self.corral)), bare_label or "", bare)


def _samples() -> _Samples:
    return _Samples([], [])


class _Bare:
    """The API calls beside the console's, with the key, on the same server."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get(self, path: str, params: dict[str, str] | None = None) -> float:
        started = time.perf_counter()
        response = await self.client.get(path, params=params)
        response.read()
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            raise InternalError(f"GET {path} answered {response.status_code}: "
                                f"{response.text[:300]}")
        return seconds

    async def list(self) -> float:
        return await self.get("/v1/sandboxes")

    async def sparks(self, ids: Sequence[str]) -> float:
        return await self.get("/v1/metrics/sandboxes",
                              {"ids": ",".join(ids), "points": str(SPARK_POINTS)})


async def measure_console(image_dir: Path, config: ConsoleBench, result: RuntimeResult,
                          progress: Progress) -> None:
    """Add the console rows to ``result``, measured on a server of the benchmark's own."""
    problem = browser_problem()
    if problem is not None:
        raise InvalidArgumentError(problem)
    if config.sandboxes < 1 or config.iterations < 1:
        raise InvalidArgumentError("the console rows need at least one sandbox and round")
    progress("console: starting corral serve")
    async with api_server(image_dir, (EMPTY_TENANT,)) as server, httpx.AsyncClient(
            base_url=server.url, timeout=WAIT_S,
            headers={"Authorization": f"Bearer {server.key}"}) as client:
        async with _sandboxes(client, config, progress) as ids:
            await _wait_for_samples(client, ids, progress)
            listed = await client.get("/v1/sandboxes")
            listed.raise_for_status()
            order = [s["id"] for s in listed.json()["sandboxes"]]  # as the page shows them
            if sorted(order) != sorted(ids):
                raise InternalError(f"the list has {len(order)} sandboxes, not the "
                                    f"{len(ids)} made")
            await _measure_in_browser(server, _Bare(client), order, ids, config, result,
                                      progress)


@contextlib.asynccontextmanager
async def _sandboxes(client: httpx.AsyncClient, config: ConsoleBench,
                     progress: Progress) -> AsyncIterator[list[str]]:
    """``config.sandboxes`` live sandboxes, ``batch`` created at once; killed afterwards.
    Yields their ids in index order (metadata ``bench: console-NNNN``)."""
    made: dict[int, str] = {}

    async def create(i: int) -> None:
        response = await client.post("/v1/sandboxes", json={
            "image": config.image, "runtime": config.runtime, "timeout": LIFETIME,
            "metadata": {"bench": f"console-{i:04d}"}})
        if response.status_code != 201:
            raise InternalError(f"creating sandbox {i + 1} of {config.sandboxes} answered "
                                f"{response.status_code}: {response.text[:300]}")
        made[i] = response.json()["id"]

    try:
        started = time.monotonic()
        for part in batches(config.sandboxes, config.batch):
            await asyncio.gather(*(create(i) for i in part))
            rate = len(made) / max(time.monotonic() - started, 1e-9)
            progress(f"console: {len(made)}/{config.sandboxes} {config.runtime} sandboxes "
                     f"live ({rate:.0f}/s)")
        yield [made[i] for i in range(config.sandboxes)]
    finally:
        await _kill_all(client, list(made.values()), config.batch, progress)


async def _kill_all(client: httpx.AsyncClient, ids: list[str], batch: int,
                    progress: Progress) -> None:
    """Kill ``ids``, ``batch`` at once, each within a bounded wait; what is left (a wait
    spent, an error) the server's stop kills."""
    async def kill(sandbox_id: str) -> None:
        with contextlib.suppress(httpx.HTTPError, TimeoutError):
            await asyncio.wait_for(client.delete(f"/v1/sandboxes/{sandbox_id}"), WAIT_S)

    for n, part in enumerate(batches(len(ids), batch)):
        if n % 8 == 0:
            progress(f"console: killing sandboxes, {part.start}/{len(ids)}")
        await asyncio.gather(*(kill(ids[i]) for i in part))


async def _wait_for_samples(client: httpx.AsyncClient, ids: list[str],
                            progress: Progress) -> None:
    """Until the metrics sampler has a sample of every sandbox (so every sparkline has a
    line), within :data:`WAIT_S`."""
    progress("console: waiting for a metrics sample of every sandbox")
    deadline = time.monotonic() + WAIT_S
    missing = list(ids)
    while missing:
        left = []
        for part in batches(len(missing), 100):  # the route's most ids at once
            chunk = [missing[i] for i in part]
            response = await client.get("/v1/metrics/sandboxes",
                                        params={"ids": ",".join(chunk), "points": "1"})
            response.raise_for_status()
            got = response.json()["sandboxes"]
            left += [i for i in chunk if not got.get(i)]
        missing = left
        if missing and time.monotonic() > deadline:
            raise InternalError(f"{len(missing)} sandboxes had no metrics sample after "
                                f"{WAIT_S:g} s")
        if missing:
            await asyncio.sleep(0.5)  # the sampler's next pass; bounded by the deadline


async def _measure_in_browser(server: ApiServer, bare: _Bare, ids: list[str],
                              made: list[str], config: ConsoleBench, result: RuntimeResult,
                              progress: Progress) -> None:
    """``ids``: the sandboxes in the list's order; ``made``: in their index order."""
    from playwright.async_api import async_playwright

    chromium = os.environ.get(CHROMIUM_ENV, "/usr/bin/chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            result.detail = (f"{len(ids)} live {config.runtime} sandboxes of one tenant, "
                             f"chromium {browser.version} headless, 1280×800")
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            page.set_default_timeout(WAIT_S * 1000)
            await _log_in(page, server.url, server.key)
            measured = _Run(page, bare, ids, made, config, progress)
            await measured.list_shown()
            await measured.page_load(browser, server)
            await measured.page_turn(result)
            await measured.filter()
            await measured.keyboard()
            result.rows += measured.rows()
            progress("console: JS heap and DOM nodes")
            result.rows += await _heap_rows(browser, page, server, ids, config)
            await context.close()
        finally:
            await browser.close()


async def _log_in(page: Any, url: str, key: str) -> None:
    await page.goto(f"{url}/ui")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Log in").click()
    await page.get_by_role("button", name="Log out").wait_for()


class _Run:
    """The timed measures on one logged-in page, and their samples."""

    def __init__(self, page: Any, bare: _Bare, ids: list[str], made: list[str],
                 config: ConsoleBench, progress: Progress) -> None:
        self.page = page
        self.bare = bare
        self.ids = ids
        self.made = made
        self.config = config
        self.progress = progress
        self.count = f"{len(ids)} in all"
        self.first = ids[:PAGE_SIZE]
        self.samples: dict[str, _Samples] = {}

    def _keep(self, key: str, i: int, corral: float, bare: float | None = None) -> None:
        if i < self.config.warmup:
            return
        samples = self.samples.setdefault(key, _samples())
        samples.corral.append(corral)
        if bare is not None:
            samples.bare.append(bare)

    def _rounds(self, what: str) -> Iterable[int]:
        rounds = self.config.warmup + self.config.iterations
        for i in range(rounds):
            self.progress(f"console: {what}, {round_label(i, self.config.warmup, rounds)}")
            yield i

    async def _arm(self, until: dict[str, tuple[str, dict[str, Any]]], *, start: str = "",
                   key: str = "", hash_: str = "") -> None:
        await self.page.evaluate(_ARM, {"start": start, "key": key, "hash": hash_,
                                        "until": until, "limit": WAIT_S * 1000})

    async def _done(self) -> dict[str, float]:
        times = await self.page.evaluate("() => window.__corralBench.done")
        return {name: ms / 1000 for name, ms in times.items()}

    def _list(self, first: str | None = None) -> tuple[str, dict[str, Any]]:
        args: dict[str, Any] = {"rows": len(self.first), "count": self.count}
        if first is not None:
            args["first"] = first
        return "list", args

    async def _elsewhere(self) -> None:
        """Untimed: the Images page, shown and its fetches done (the list is unmounted)."""
        await self.page.goto(self.page.url.split("#")[0] + "#/images")
        await self.page.locator("#images-title").wait_for()
        await self.page.wait_for_load_state("networkidle")

    async def _to_list(self) -> None:
        """Untimed: page 1 of the unfiltered list, mounted afresh and shown."""
        await self._elsewhere()
        await self._arm({"list": self._list(self.ids[0])}, hash_="#/sandboxes")
        await self._done()

    async def list_shown(self) -> None:
        """Hash navigation from another page to the list, until page 1 is shown."""
        for i in self._rounds("list page shown"):
            await self._elsewhere()
            await self._arm({"shown": self._list(self.ids[0]),
                             "sparks": ("sparks", {"ids": self.first})}, hash_="#/sandboxes")
            times = await self._done()
            shown = times["shown"]
            fetch = await self.page.evaluate(_FETCH, "/v1/sandboxes")
            if fetch is None:
                raise InternalError("the list page was shown without GET /v1/sandboxes")
            bare = await self.bare.list()
            self._keep("list", i, shown, bare)
            self._keep("list_sent", i, fetch[0] / 1000)
            self._keep("list_fetch", i, fetch[1] / 1000, bare)
            self._keep("list_sparks", i, times["sparks"], await self.bare.sparks(self.first))

    async def page_load(self, browser: Any, server: ApiServer) -> None:
        """A new page (the session's cookie already set) loading ``/ui#/sandboxes``."""
        cookies = await self.page.context.cookies()
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        try:
            await context.add_cookies(cookies)
            wanted = {"rows": len(self.first), "count": self.count}
            await context.add_init_script(_ON_LOAD % _json(wanted))
            for i in self._rounds("page load → list shown"):
                page = await context.new_page()
                try:
                    await page.goto(f"{server.url}/ui#/sandboxes")
                    await page.wait_for_function("() => window.__corralShown !== undefined",
                                                 timeout=WAIT_S * 1000)
                    shown = await page.evaluate("() => window.__corralShown") / 1000
                finally:
                    await page.close()
                self._keep("load", i, shown, await self.bare.list())
        finally:
            await context.close()

    async def page_turn(self, result: RuntimeResult) -> None:
        """Next page: its rows shown, and its sparklines shown."""
        total = pages(len(self.ids))
        if total < 2:
            result.notes.append(f"page turn rows: skipped, {len(self.ids)} sandboxes fill "
                                "one page")
            return
        await self._to_list()
        at = 0
        for i in self._rounds("page turn"):
            if at == total - 1:  # back to page 1, untimed
                await self._to_list()
                at = 0
            shown = self.ids[(at + 1) * PAGE_SIZE:(at + 2) * PAGE_SIZE]
            await self._arm({"rows": ("rows", {"ids": shown}),
                             "sparks": ("sparks", {"ids": shown})}, start="click")
            await self.page.get_by_role("button", name="Next page").click()
            times = await self._done()
            at += 1
            self._keep("turn", i, times["rows"], await self.bare.list())
            self._keep("sparks", i, times["sparks"], await self.bare.sparks(shown))

    async def filter(self) -> None:
        """A filter typed (one input event) until the rows are those it matches."""
        await self._to_list()
        box = self.page.get_by_label("Filter")
        for i in self._rounds("filter"):
            text, indices = filter_text(i, len(self.ids))
            kept = {self.made[j] for j in indices}
            await self._arm({"rows": ("rows", {"ids": [x for x in self.ids if x in kept]})},
                            start="input")
            await box.fill(text)
            self._keep("filter", i, (await self._done())["rows"])
            await box.fill("")
            await self.page.wait_for_function(
                "n => document.querySelectorAll('tbody tr[data-id]').length === n",
                arg=len(self.first))

    async def keyboard(self) -> None:
        """From page 1's first row: down arrows, each until the next row has the focus,
        then Enter until the sandbox page is shown."""
        arrows = min(self.config.arrows, len(self.first) - 1)
        for i in self._rounds(f"keyboard, ↓ ×{arrows} then Enter"):
            await self._to_list()
            await self.page.locator(f'tr[data-id="{self.ids[0]}"]').focus()
            for step in range(arrows):
                await self._arm({"focus": ("focus", {"id": self.ids[step + 1]})},
                                start="keydown", key="ArrowDown")
                await self.page.keyboard.press("ArrowDown")
                self._keep("arrow", i, (await self._done())["focus"])
            target = self.ids[arrows]
            await self._arm({"page": ("sandbox", {"id": target})}, start="keydown", key="Enter")
            await self.page.keyboard.press("Enter")
            self._keep("enter", i, (await self._done())["page"], await self.bare.list())

    def rows(self) -> list[Row]:
        n = len(self.ids)
        listing = f"GET /v1/sandboxes ({n}) via httpx"
        spark = f"GET /v1/metrics/sandboxes ({len(self.first)} ids) via httpx"
        made = [
            ("list", "console_list_shown", f"list page shown, {n} listed", listing),
            ("list_sent", "console_list_sent", "↳ until the page sends its list fetch", None),
            ("list_fetch", "console_list_fetch", "↳ the page's list fetch (Resource Timing)",
             listing),
            ("list_sparks", "console_list_sparklines", "list page → its sparklines shown",
             spark),
            ("load", "console_page_load", "page load → list shown", listing),
            ("turn", "console_page_turn", "next page → its rows shown", listing),
            ("sparks", "console_sparklines", "next page → its sparklines shown", spark),
            ("filter", "console_filter", "filter typed → rows shown", None),
            ("arrow", "console_arrow", "↓ → next row focused", None),
            ("enter", "console_enter", "Enter → sandbox page shown", listing),
        ]
        return [self.samples[name].row(key, label, bare)
                for name, key, label, bare in made if name in self.samples]


async def _heap_rows(browser: Any, page: Any, server: ApiServer, ids: list[str],
                     config: ConsoleBench) -> list[Row]:
    """The list page's JS heap and DOM nodes with ``ids`` listed, beside a tenant's with
    none, each after a garbage collection, ``config.iterations`` times."""
    full = await _page_figures(page, {"rows": min(len(ids), PAGE_SIZE),
                                      "count": f"{len(ids)} in all"}, ids[:PAGE_SIZE],
                               config.iterations)
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        empty_page = await context.new_page()
        await _log_in(empty_page, server.url, server.others[EMPTY_TENANT])
        empty = await _page_figures(empty_page, {"rows": 0, "count": "0 in all"}, [],
                                    config.iterations)
    finally:
        await context.close()
    label = "the same, none listed"
    return [
        Row("console_js_heap", f"JS heap, list page, {len(ids)} listed",
            Stat(tuple(h for h, _ in full)), label, Stat(tuple(h for h, _ in empty)),
            unit="MiB"),
        Row("console_dom_nodes", f"DOM nodes, list page, {len(ids)} listed",
            Stat(tuple(float(n) for _, n in full)), label,
            Stat(tuple(float(n) for _, n in empty)), unit="nodes"),
    ]


async def _page_figures(page: Any, wanted: dict[str, Any], first: list[str], rounds: int
                        ) -> list[tuple[float, int]]:
    """(JS heap MiB, DOM nodes) of the list page, shown fresh each round with page 1's
    rows (``first``) and their sparklines drawn."""
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Performance.enable")
    figures = []
    for _ in range(rounds):
        await page.goto(page.url.split("#")[0] + "#/images")
        await page.locator("#images-title").wait_for()
        await page.evaluate(_ARM, {"start": "", "key": "", "hash": "#/sandboxes",
                                   "until": {"list": ["list", wanted],
                                             "sparks": ["sparks", {"ids": first}]},
                                   "limit": WAIT_S * 1000})
        await page.evaluate("() => window.__corralBench.done")
        await page.wait_for_load_state("networkidle")
        await cdp.send("HeapProfiler.collectGarbage")
        figures.append(heap_figures((await cdp.send("Performance.getMetrics"))["metrics"]))
    await cdp.detach()
    return figures


def _json(value: Any) -> str:
    return json.dumps(value)


async def run_console_benchmark(image_dir: Path, config: ConsoleBench,
                                progress: Progress) -> BenchReport:
    """The console rows alone, as a whole report (its one result is named ``console``)."""
    machine = machine_info()
    started = datetime.now(UTC)
    result = RuntimeResult(runtime="console", detail=f"{config.sandboxes} live "
                           f"{config.runtime} sandboxes of one tenant")
    await measure_console(image_dir, config, result, progress)
    machine["loadavg_end"] = list(os.getloadavg())
    return BenchReport(machine=machine, config=dataclasses.asdict(config), started=started,
                       finished=datetime.now(UTC), results=[result])
