"""A tenant's images are bounded by its quota: a build that would pass it is refused with
`resource_exhausted` and names nothing; removing images makes room again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral import Image, ResourceExhaustedError
from corral.node import NodeSettings
from corral.server import ServerSettings, create_app
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url
from tests.conftest import IMAGE_DIR, sandbox_data_dir

from ._serving import serving


@pytest.fixture
def quota_dir() -> Iterator[Path]:
    with sandbox_data_dir("corral-quota-") as path:
        yield path


def test_a_build_past_the_quota_is_refused_and_names_nothing(quota_dir: Path,
                                                              python_image: str) -> None:
    settings = ServerSettings(node=NodeSettings(data_dir=quota_dir, image_dir=IMAGE_DIR),
                              port=0, keep_sandboxes=False, image_quota=3 * 1024 * 1024)
    key = KeyStore(open_engine(database_url(quota_dir, None))).create("alpha").key
    sdk = {"api_key": key}
    with serving(create_app(settings)) as url:
        small = Image.base("python").run_commands("head -c 1000000 /dev/urandom > /blob")
        info = small.build(name="small:1", url=url, **sdk)
        assert 1_000_000 <= info.size_bytes < 3 * 1024 * 1024
        big = Image.base("python").run_commands("head -c 2500000 /dev/urandom > /blob")
        with pytest.raises(ResourceExhaustedError, match="MiB of your 3 MiB"):
            big.build(name="big:1", url=url, **sdk)
        # building again what it owns costs nothing more
        assert small.build(name="small:1", url=url, **sdk).id == info.id
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
            names = [i["name"] for i in http.get("/v1/images").json()["images"]]
            assert "big:1" not in names and "small:1" in names
            assert http.delete("/v1/images/small:1").status_code == 204
        assert big.build(name="big:1", url=url, **sdk).size_bytes >= 2_500_000
