"""A server with a warm pool: creates through the API are served from it (the metrics say
so), bound to the request, and the pool's own sandboxes never show in a listing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral import Sandbox
from corral.node import NodeSettings
from corral.node.pools import PoolSpec
from corral.server import ServerSettings, create_app
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url
from tests.conftest import IMAGE_DIR, sandbox_data_dir

from ._serving import serving


@pytest.fixture
def pool_dir() -> Iterator[Path]:
    with sandbox_data_dir("corral-pool-server-") as path:
        yield path


def pool_samples(url: str, key: str) -> dict[str, float]:
    response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    return {sample.name: sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
            if sample.name.startswith("corral_pool_")
            and sample.labels == {"image": "python", "runtime": "namespaces"}}


def test_creates_are_served_from_the_warm_pool(pool_dir: Path, python_image: str) -> None:
    pool = PoolSpec("python", 1, "namespaces", warm=None)
    settings = ServerSettings(node=NodeSettings(data_dir=pool_dir, image_dir=IMAGE_DIR,
                                                pools=(pool,)), port=0, keep_sandboxes=False)
    key = KeyStore(open_engine(database_url(pool_dir, None))).create("alpha").key
    with serving(create_app(settings)) as url:
        deadline = time.monotonic() + 60
        while pool_samples(url, key).get("corral_pool_ready") != 1:
            assert time.monotonic() < deadline, "the pool never filled"
            time.sleep(0.1)
        assert Sandbox.list(url=url, api_key=key) == []
        with Sandbox.create("python", runtime="namespaces", env={"WHO": "pooled"},
                            metadata={"k": "v"}, timeout=120, url=url, api_key=key) as sb:
            assert sb.commands.run("echo $WHO").stdout == "pooled\n"
            assert [s.id for s in Sandbox.list(metadata={"k": "v"}, url=url,
                                               api_key=key)] == [sb.id]
            samples = pool_samples(url, key)
            assert samples["corral_pool_hits_total"] == 1
            assert samples["corral_pool_misses_total"] == 0
            # An operator's key reads the same figures from the API; no other key may.
            operator = KeyStore(open_engine(database_url(pool_dir, None))).create(
                "ops", operator=True).key
            pools = httpx.get(f"{url}/v1/pools",
                              headers={"Authorization": f"Bearer {operator}"})
            assert pools.status_code == 200, pools.text
            (listed,) = pools.json()["pools"]
            assert listed == {"image": "python", "runtime": "namespaces", "size": 1,
                              "ready": samples["corral_pool_ready"], "hits": 1, "misses": 0}
            refused = httpx.get(f"{url}/v1/pools", headers={"Authorization": f"Bearer {key}"})
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "permission_denied"


def test_a_pool_of_a_tenants_image_fills_after_its_build_and_refills_after_a_rebuild(
        pool_dir: Path, python_image: str) -> None:
    from corral import Image

    pool = PoolSpec.parse("alpha/pooled:1@namespaces=1/")
    assert pool.tenant_image and pool.image == "alpha/pooled:1" and pool.warm is None
    settings = ServerSettings(node=NodeSettings(data_dir=pool_dir, image_dir=IMAGE_DIR,
                                                pools=(pool,)), port=0, keep_sandboxes=False)
    keys = KeyStore(open_engine(database_url(pool_dir, None)))
    key, other = keys.create("alpha").key, keys.create("beta").key

    def ready() -> float:
        response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"})
        return sum(sample.value for family in text_string_to_metric_families(response.text)
                   for sample in family.samples
                   if sample.name == "corral_pool_ready"
                   and sample.labels.get("image") == "alpha/pooled:1")

    def wait_filled() -> None:
        deadline = time.monotonic() + 60
        while ready() != 1:
            assert time.monotonic() < deadline, "the pool never filled"
            time.sleep(0.1)

    with serving(create_app(settings)) as url:
        time.sleep(0.5)
        assert ready() == 0  # no such image yet: nothing to hold
        first = Image.base("python").run_commands("echo one > /etc/version")
        first.build(name="pooled:1", url=url, api_key=key)
        wait_filled()
        with Sandbox.create("pooled:1", runtime="namespaces", url=url, api_key=key) as sb:
            assert sb.commands.run("cat /etc/version").stdout == "one\n"
        wait_filled()
        second = Image.base("python").run_commands("echo two > /etc/version")
        second.build(name="pooled:1", url=url, api_key=key)  # the name moves: refill
        wait_filled()
        with Sandbox.create("pooled:1", runtime="namespaces", url=url, api_key=key) as sb:
            assert sb.commands.run("cat /etc/version").stdout == "two\n"
        hits = [sample.value for family in text_string_to_metric_families(httpx.get(
                    f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}).text)
                for sample in family.samples if sample.name == "corral_pool_hits_total"
                and sample.labels.get("image") == "alpha/pooled:1"]
        assert hits == [2]
        with pytest.raises(Exception, match="no image"):  # another tenant: not theirs
            Sandbox.create("pooled:1", runtime="namespaces", url=url, api_key=other)
