"""Per-tenant caps (CORRAL_TENANT_MAX_SANDBOXES, CORRAL_TENANT_MAX_GPUS): at the edge, what
is refused and what it says, that other tenants are not counted, that a kill (and for
GPUs a pause) makes room, and that a resume past the GPU cap fails and stays paused. On
the fake runtime with a fake driver tree of two GPUs, served in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral import AsyncSandbox, ResourceExhaustedError
from corral.api.errors import InvalidArgumentError
from corral.node import NodeSettings
from corral.sdk.testing import in_process
from corral.server import ServerSettings, create_app
from corral.server.quota import TenantQuota
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url
from tests.fakes.gpu import make_driver_tree
from tests.fakes.runtime import FakeRuntime

pytestmark = [pytest.mark.anyio, pytest.mark.rootless]


class GpuFakeRuntime(FakeRuntime):
    """The fake runtime, able to take GPUs (it binds nothing)."""

    def gpu_problem(self, driver: str) -> str | None:
        return None


@dataclass(frozen=True)
class Served:
    url: str
    alpha: str
    beta: str


@pytest.fixture
def gpu_runtime() -> GpuFakeRuntime:
    return GpuFakeRuntime()


@pytest.fixture
async def served(node_settings: NodeSettings, gpu_runtime: GpuFakeRuntime,
                 tmp_path: Path) -> AsyncIterator[Served]:
    root = tmp_path / "host"
    root.mkdir()
    host = make_driver_tree(root, gpus=2)
    settings = ServerSettings(node=node_settings, port=0, keep_sandboxes=False,
                              quota=TenantQuota(sandboxes=3, gpus=1))
    engine = open_engine(database_url(node_settings.data_dir, None))
    keys = KeyStore(engine)
    alpha, beta = keys.create("alpha"), keys.create("beta")
    app = create_app(settings, runtimes={"fake": gpu_runtime}, gpus=host, gpu_root=root)
    async with in_process(app) as url:
        yield Served(url, alpha.key, beta.key)
    engine.dispose()


async def test_the_sandbox_cap_counts_live_and_paused_sandboxes_of_the_tenant_alone(
        served: Served) -> None:
    alpha = {"url": served.url, "api_key": served.alpha}
    made = [await AsyncSandbox.create(**alpha) for _ in range(3)]  # the cap: all start
    try:
        await made[0].pause()  # paused: still one of its sandboxes
        with pytest.raises(ResourceExhaustedError,
                           match=r"would number 4, past this server's cap of 3 a tenant "
                                 r"\(CORRAL_TENANT_MAX_SANDBOXES\); kill some first"):
            await AsyncSandbox.create(**alpha)
        assert len(await AsyncSandbox.list(**alpha)) == 3  # nothing was started
        other = await AsyncSandbox.create(url=served.url, api_key=served.beta)
        await other.kill()  # another tenant's count is its own
        await made[0].kill()
        made[0] = await AsyncSandbox.create(**alpha)  # a kill makes room
    finally:
        for sb in made:
            await sb.kill()


async def test_the_gpu_cap_counts_gpus_held_and_a_pause_gives_them_back(
        served: Served) -> None:
    alpha = {"url": served.url, "api_key": served.alpha}
    first = await AsyncSandbox.create(gpu=1, **alpha)
    try:
        with pytest.raises(ResourceExhaustedError,
                           match=r"would hold 2 GPUs, past this server's cap of 1 a tenant "
                                 r"\(CORRAL_TENANT_MAX_GPUS\)"):
            await AsyncSandbox.create(gpu=1, **alpha)  # the node has a second one free
        plain = await AsyncSandbox.create(**alpha)  # no GPU: not counted against it
        await plain.kill()
        theirs = await AsyncSandbox.create(gpu=1, url=served.url, api_key=served.beta)
        await theirs.kill()

        await first.pause()  # a paused sandbox holds no GPU
        second = await AsyncSandbox.create(gpu=1, **alpha)
        try:
            with pytest.raises(ResourceExhaustedError, match="CORRAL_TENANT_MAX_GPUS"):
                await first.resume()
            await first.refresh()
            assert first.info.state == "paused"  # refused, and left as it was
        finally:
            await second.kill()
        await first.resume()  # room again
        await first.refresh()
        assert first.info.state == "running"
    finally:
        await first.kill()


@pytest.mark.parametrize(("env", "expected"), [
    ({}, TenantQuota(0, 0)),
    ({"CORRAL_TENANT_MAX_SANDBOXES": "0", "CORRAL_TENANT_MAX_GPUS": " 0 "}, TenantQuota(0, 0)),
    ({"CORRAL_TENANT_MAX_SANDBOXES": "100000", "CORRAL_TENANT_MAX_GPUS": "1024"},
     TenantQuota(100_000, 1024)),
])
def test_the_caps_are_read_from_the_environment(env: dict[str, str],
                                                 expected: TenantQuota) -> None:
    assert TenantQuota.from_env(env) == expected


@pytest.mark.parametrize("env", [
    {"CORRAL_TENANT_MAX_SANDBOXES": "100001"}, {"CORRAL_TENANT_MAX_SANDBOXES": "-1"},
    {"CORRAL_TENANT_MAX_SANDBOXES": "1.5"}, {"CORRAL_TENANT_MAX_GPUS": "1025"},
    {"CORRAL_TENANT_MAX_GPUS": "many"},
])
def test_caps_out_of_bounds_are_refused_naming_the_variable(env: dict[str, str]) -> None:
    (name,) = env
    with pytest.raises(InvalidArgumentError, match=name):
        TenantQuota.from_env(env)
