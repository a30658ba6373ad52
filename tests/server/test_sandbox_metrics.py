"""Sandbox metrics over time: samples appear for running sandboxes on each runtime and say
what the sandbox uses; ranges and the several-sandboxes view; hostile queries are 400;
other tenants see nothing; looking is not activity and never wakes a paused sandbox; a
stopped sandbox's samples stay for the retention, then go.

Every wait is on a condition, bounded by DEADLINE; the session server samples every
METRICS_INTERVAL seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import httpx
import pytest
from typer.testing import CliRunner

from corral import AsyncSandbox, Sandbox
from corral.api.errors import InvalidArgumentError, NotFoundError
from corral.api.models import MetricSample
from corral.cli import app
from corral.node import NodeSettings
from corral.server import ServerSettings, create_app
from corral.server.services import sampler as sampler_module
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url
from tests.conftest import IMAGE_DIR, sandbox_data_dir

from ._serving import serving
from .conftest import METRICS_INTERVAL, Server, assert_error

DEADLINE = 60.0
T = TypeVar("T")
MIB = 1024 * 1024


def wait_for(what: str, probe: Callable[[], T | None], deadline: float = DEADLINE) -> T:
    """``probe()`` once it is truthy; fails after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < end, f"no {what} within {deadline:g} s"
        time.sleep(0.1)


def metrics(http: httpx.Client, sandbox_id: str, **params: Any) -> dict[str, Any]:
    response = http.get(f"/v1/sandboxes/{sandbox_id}/metrics", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def samples_of(http: httpx.Client, sandbox_id: str, at_least: int = 1
               ) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        found = metrics(http, sandbox_id)["samples"]
        return found if len(found) >= at_least else None
    return wait_for(f"{at_least} samples of {sandbox_id}", probe)


def test_samples_describe_a_running_sandbox(server: Server, runtime: str) -> None:
    with Sandbox.create("python", runtime=runtime, timeout=300, **server.sdk()) as sb, \
            server.http(server.key) as http:
        # gVisor's Sentry writes files back to the host a moment later: waited for below.
        sb.commands.run("head -c 3000000 /dev/urandom > /work/disk.bin && sync")
        # A loop that keeps its core busy until killed: some sample sees it.
        sb.commands.run("sh -c 'while :; do :; done' >/dev/null 2>&1 &")
        busy = wait_for("a busy sample", lambda: [s for s in metrics(http, sb.id)["samples"]
                                                   if s["cpu_percent"] >= 10])
        body = metrics(http, sb.id)
        assert body["interval"] == METRICS_INTERVAL
        samples = body["samples"]
        times = [datetime.fromisoformat(s["time"]) for s in samples]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert all(t.utcoffset() is not None and t.utcoffset().total_seconds() == 0
                   for t in times)
        assert samples[-1]["time"].endswith("Z")
        last = samples[-1]
        assert set(last) == {"time", "cpu_percent", "memory_used", "memory_limit",
                             "disk_used", "disk_limit", "pids", "net_rx_bytes",
                             "net_tx_bytes", "gpu_percent", "gpu_memory_used"}
        assert 0 <= busy[-1]["cpu_percent"] <= 100
        assert last["memory_limit"] == 512 * MIB
        assert 0 < last["memory_used"] <= last["memory_limit"]
        assert 0 <= last["disk_used"] <= last["disk_limit"]
        wait_for("the written file in a sample", lambda: [
            s for s in metrics(http, sb.id)["samples"] if s["disk_used"] >= 3_000_000])
        assert last["pids"] >= 2  # the agent and the loop, at least
        assert last["net_rx_bytes"] is None and last["net_tx_bytes"] is None
        assert last["gpu_percent"] is None and last["gpu_memory_used"] is None  # no GPU


def test_a_networked_sandbox_counts_its_bytes(server: Server, runtime: str) -> None:
    with Sandbox.create("python", runtime=runtime, timeout=300,
                        network={"allow": ["203.0.113.0/24:443"]}, **server.sdk()) as sb, \
            server.http(server.key) as http:
        # Its resolver is the host end of its pair: a lookup crosses the veth both ways.
        sb.commands.run("getent hosts nothing.invalid || true")
        sample = wait_for("a sample with traffic", lambda: [
            s for s in metrics(http, sb.id)["samples"]
            if (s["net_rx_bytes"] or 0) > 0 and (s["net_tx_bytes"] or 0) > 0])[-1]
        assert isinstance(sample["net_rx_bytes"], int)
        assert isinstance(sample["net_tx_bytes"], int)


def test_ranges_select_samples(server: Server, default_sandbox: Sandbox) -> None:
    with server.http(server.key) as http:
        samples = samples_of(http, default_sandbox.id, at_least=4)
        middle = samples[len(samples) // 2]["time"]
        since = metrics(http, default_sandbox.id, start=middle)["samples"]
        assert since and since[0]["time"] == middle
        assert [s["time"] for s in since] == [s["time"] for s in samples
                                              if s["time"] >= middle][:len(since)]
        until = metrics(http, default_sandbox.id, end=middle)["samples"]
        assert until[-1]["time"] == middle and until[0]["time"] == samples[0]["time"]
        unix = datetime.fromisoformat(middle).timestamp()
        assert metrics(http, default_sandbox.id, start=f"{unix - 1e-4:.6f}",
                       end=f"{unix + 1e-4:.6f}")["samples"] == [samples[len(samples) // 2]]
        assert metrics(http, default_sandbox.id, start="0", end="1")["samples"] == []
        offset = metrics(http, default_sandbox.id, start="2000-01-01T01:00:00+01:00")
        assert len(offset["samples"]) >= len(samples)


@pytest.mark.parametrize(("params", "says"), [
    ({"start": "yesterday"}, "not a time"),
    ({"start": "2026-12-07T15:30:00"}, "offset"),  # no offset: ambiguous
    ({"end": "2026-13-07T15:30:00Z"}, "not a time"),
    ({"start": "-5"}, "not a time"),
    ({"start": "nan"}, "not a time"),
    ({"start": "1e300"}, "not a time"),
    ({"start": "99999999999999"}, "not a time"),
    ({"start": "253402300800"}, "out of range"),
    ({"start": "2000", "end": "1000"}, "end is before start"),
    ({"start": "x" * 65}, ""),
])
def test_bad_times_are_refused(server: Server, default_sandbox: Sandbox,
                               params: dict[str, str], says: str) -> None:
    with server.http(server.key) as http:
        message = assert_error(http.get(f"/v1/sandboxes/{default_sandbox.id}/metrics",
                                        params=params), 400, "invalid_argument")
        assert says in message


def test_several_sandboxes_at_once(server: Server) -> None:
    with Sandbox.create("python", timeout=300, **server.sdk()) as a, \
            Sandbox.create("python", timeout=300, **server.sdk()) as b, \
            Sandbox.create("python", timeout=300, api_key=server.other_key,
                           url=server.url) as foreign, \
            server.http(server.key) as http:
        samples_of(http, a.id, at_least=3)
        samples_of(http, b.id, at_least=3)
        response = http.get("/v1/metrics/sandboxes", params={
            "ids": f"{a.id},{b.id},{foreign.id},sbx-000000000000,../etc,{a.id}",
            "points": 2})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["interval"] == METRICS_INTERVAL
        assert set(body["sandboxes"]) == {a.id, b.id}
        for sandbox_id in (a.id, b.id):
            shown = body["sandboxes"][sandbox_id]
            assert len(shown) == 2 and shown[0]["time"] < shown[1]["time"]
            newest = metrics(http, sandbox_id)["samples"]
            assert shown[0] in newest
        default = http.get("/v1/metrics/sandboxes", params={"ids": a.id}).json()
        assert 3 <= len(default["sandboxes"][a.id]) <= 30


@pytest.mark.parametrize(("params", "says"), [
    ({"ids": ""}, "ids is empty"),
    ({"ids": " , ,"}, "ids is empty"),
    ({"ids": ",".join(f"sbx-{i:012x}" for i in range(101))}, "at most 100"),
    ({"ids": "sbx-000000000000", "points": "0"}, "points"),
    ({"ids": "sbx-000000000000", "points": "121"}, "points"),
    ({"ids": "sbx-000000000000", "points": "many"}, "points"),
    ({}, "ids"),
])
def test_bad_several_queries_are_refused(server: Server, params: dict[str, str],
                                         says: str) -> None:
    with server.http(server.key) as http:
        message = assert_error(http.get("/v1/metrics/sandboxes", params=params), 400,
                               "invalid_argument")
        assert says in message


def test_other_tenants_and_unknown_ids_are_not_found(server: Server,
                                                     default_sandbox: Sandbox) -> None:
    with server.http(server.key) as http:
        samples_of(http, default_sandbox.id)
    with server.http(server.other_key) as http:
        assert_error(http.get(f"/v1/sandboxes/{default_sandbox.id}/metrics"), 404,
                     "not_found")
        assert http.get("/v1/metrics/sandboxes", params={"ids": default_sandbox.id}
                        ).json()["sandboxes"] == {}
        assert_error(http.get("/v1/sandboxes/sbx-000000000000/metrics"), 404, "not_found")
        assert_error(http.get("/v1/sandboxes/not-an-id/metrics"), 404, "not_found")
    with server.http() as http:
        assert_error(http.get(f"/v1/sandboxes/{default_sandbox.id}/metrics"), 401,
                     "unauthenticated")


def test_looking_is_not_activity_and_stopped_sandboxes_keep_their_samples(
        server: Server) -> None:
    idle = 2
    label = {"metrics": f"idle-{time.monotonic_ns()}"}
    with Sandbox.create("python", timeout=300, idle_timeout=idle, metadata=label,
                        **server.sdk()) as sb, server.http(server.key) as http:
        def stopped() -> bool:
            # Asking for its metrics, again and again, keeps nothing alive.
            metrics(http, sb.id)
            http.get("/v1/metrics/sandboxes", params={"ids": sb.id})
            return [s.state for s in Sandbox.list(metadata=label, **server.sdk())
                    ] == ["stopped"]
        wait_for("idle stop while metrics are read", stopped)
        kept = metrics(http, sb.id)["samples"]
        assert kept, "a stopped sandbox's samples are kept for the retention"
        later = metrics(http, sb.id)["samples"]
        assert later == kept  # nothing new once it stopped
        shown = http.get("/v1/metrics/sandboxes", params={"ids": sb.id, "points": 1}).json()
        assert shown["sandboxes"][sb.id] == kept[-1:]


def test_a_paused_sandbox_is_not_woken(server: Server, runtime: str) -> None:
    with Sandbox.create("python", runtime=runtime, timeout=300, **server.sdk()) as paused, \
            Sandbox.create("python", runtime=runtime, timeout=300, **server.sdk()) as other, \
            server.http(server.key) as http:
        samples_of(http, paused.id)
        assert paused.pause().state == "paused"
        before = metrics(http, paused.id)["samples"]
        # Three more looks at the other sandbox: the sampler passed the paused one by.
        seen = len(samples_of(http, other.id))
        samples_of(http, other.id, at_least=seen + 3)
        assert paused.refresh().state == "paused"
        assert metrics(http, paused.id)["samples"] == before
        assert [s.state for s in Sandbox.list(**server.sdk()) if s.id == paused.id
                ] == ["paused"]


def test_samples_go_once_the_retention_is_over(python_image: str) -> None:
    retention = 2.0
    with sandbox_data_dir("corral-metrics-test-") as data_dir:
        settings = ServerSettings(node=NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR),
                                  port=0, metrics_interval=0.2, metrics_retention=retention)
        keys = KeyStore(open_engine(database_url(data_dir, None)))
        key = keys.create("alpha").key
        with serving(create_app(settings)) as url, \
                httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                             timeout=60) as http:
            sb = Sandbox.create(python_image, timeout=300, url=url, api_key=key)
            samples_of(http, sb.id)
            sb.kill()
            assert metrics(http, sb.id)["samples"]  # kept a while
            wait_for("the samples to go", lambda: metrics(http, sb.id)["samples"] == [])
            # Its record stays: still the tenant's, with nothing kept.
            assert metrics(http, sb.id) == {"interval": 0.2, "samples": []}


def test_the_settings_are_bounded() -> None:
    node = NodeSettings(data_dir=IMAGE_DIR, image_dir=IMAGE_DIR)
    for bad in ({"metrics_interval": 0.05}, {"metrics_interval": 3601.0},
                {"metrics_interval": float("nan")}, {"metrics_retention": -1.0},
                {"metrics_retention": 7 * 24 * 3600.0 + 1}):
        with pytest.raises(InvalidArgumentError, match="CORRAL_METRICS_"):
            ServerSettings(node=node, **bad)  # type: ignore[arg-type]


def test_the_sdk_gets_metrics(server: Server, default_sandbox: Sandbox) -> None:
    sb = default_sandbox
    samples = wait_for("samples through the SDK", lambda: (
        found if len(found := sb.get_metrics()) >= 3 else None))
    assert all(isinstance(s, MetricSample) for s in samples)
    assert [s.time for s in samples] == sorted(s.time for s in samples)
    assert samples[-1].memory_limit == 512 * MIB and samples[-1].net_rx_bytes is None
    middle = samples[1].time
    assert sb.get_metrics(start=middle)[0].time == middle
    assert sb.get_metrics(end=middle)[-1].time == middle
    assert sb.get_metrics(start=middle.timestamp() + 1e-4, end=middle.timestamp() + 2e-4) == []
    with pytest.raises(InvalidArgumentError, match="end is before start"):
        sb.get_metrics(start=2000, end=1000)
    with pytest.raises(InvalidArgumentError, match="datetime or Unix seconds"):
        sb.get_metrics(start="yesterday")  # type: ignore[arg-type]

    async def from_async() -> list[MetricSample]:
        again = await AsyncSandbox.connect(sb.id, **server.sdk())
        try:
            return await again.get_metrics(end=middle)
        finally:
            await again.close()  # leaves it running: the fixture kills it
    assert [s.time for s in asyncio.run(from_async())][-1] == middle
    with pytest.raises(NotFoundError):
        Sandbox.connect(sb.id, url=server.url, api_key=server.other_key)


def test_sandbox_top_prints_the_callers_sandboxes(server: Server) -> None:
    cli = CliRunner(env={"CORRAL_URL": server.url, "CORRAL_API_KEY": server.key,
                         "COLUMNS": "250"})
    label = f"top-{time.monotonic_ns()}"
    with Sandbox.create("python", timeout=300, metadata={"top": label},
                        **server.sdk()) as sb, \
            Sandbox.create("python", timeout=300, metadata={"top": label},
                           url=server.url, api_key=server.other_key) as foreign, \
            server.http(server.key) as http:
        samples_of(http, sb.id)

        def shown() -> str | None:
            done = cli.invoke(app, ["sandbox", "top", "--once", "--meta", f"top={label}"])
            assert done.exit_code == 0, done.output
            row = [line for line in done.stdout.splitlines() if sb.id in line]
            return done.stdout if row and "512.0M" in row[0] else None
        out = wait_for("a row with a sample", shown)
        assert "1 sandboxes" in out and foreign.id not in out
        for column in ("cpu %", "memory", "disk", "pids", "net rx/tx"):
            assert column in out
        helped = cli.invoke(app, ["sandbox", "top", "--help"])
        assert helped.exit_code == 0 and "--once" in helped.stdout
        assert "Watching" in helped.stdout and "--interval" in helped.stdout
        bad = cli.invoke(app, ["sandbox", "top", "--interval", "0"])
        assert bad.exit_code == 2


def test_stopped_sandboxes_kept_are_bounded(server: Server, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    """Past MAX_STOPPED stopped sandboxes, the longest stopped lose their samples first
    (here the bound is 1, within the retention)."""
    monkeypatch.setattr(sampler_module, "MAX_STOPPED", 1)
    with Sandbox.create("python", timeout=300, **server.sdk()) as first, \
            Sandbox.create("python", timeout=300, **server.sdk()) as second, \
            Sandbox.create("python", timeout=300, **server.sdk()) as witness, \
            server.http(server.key) as http:
        for sb in (first, second):
            samples_of(http, sb.id)
        first.kill()
        seen = len(samples_of(http, witness.id))
        samples_of(http, witness.id, at_least=seen + 2)  # the sampler saw it stopped
        second.kill()
        wait_for("the first's samples to go", lambda: not metrics(http, first.id)["samples"])
        assert metrics(http, second.id)["samples"]
