"""E2B's egress settings and snapshot pages as Corral's (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from corral.api import models as corral
from corral.api.errors import InvalidArgumentError
from corral.server.e2b import mapping
from corral.server.e2b.models import Network


@pytest.mark.parametrize(("internet", "network", "internet_on", "expected"), [
    (None, None, False, "none"),  # E2B's default, "internet on", is the operator's call
    (None, None, True, "all"),
    (True, None, False, "none"),  # 2.45 sends true unasked: the operator still decides
    (False, None, True, "none"),  # no interface at all
    (False, Network(), True, {"allow": [], "deny": []}),  # an interface, nothing open
    (None, Network(denyOut=["0.0.0.0/0"], allowOut=["example.org", "192.0.2.1"]), True,
     {"allow": ["example.org", "192.0.2.1"], "deny": []}),
    (None, Network(denyOut=["0.0.0.0/0", "198.51.100.0/24"], allowOut=["example.org"]), False,
     {"allow": ["example.org"], "deny": ["198.51.100.0/24"]}),
    (None, Network(denyOut=["198.51.100.0/24"]), False,
     {"allow": ["0.0.0.0/0", "::/0"], "deny": ["198.51.100.0/24"]}),
    (None, Network(allowOut=["example.org"]), False, "none"),  # exceptions to nothing
    (None, Network(allowPublicTraffic=True), True, "all"),  # not a network matter
])
def test_egress_settings_become_corral_policies(internet: bool | None, network: Network | None,
                                                internet_on: bool, expected: object) -> None:
    got = mapping.network_of(internet, network, internet_on)
    assert got == expected
    corral.NetworkUpdate.model_validate({"network": got})  # each is a valid Corral policy


@pytest.mark.parametrize(("network", "words"), [
    (Network(denyOut=["192.0.2.0/24"], allowOut=["192.0.2.7"]), "deny always wins"),
    (Network(dnsServers=["192.0.2.53"]), "network.dnsServers is not supported"),
    (Network(rules={"example.org": []}), "network.rules is not supported"),
    (Network(egressProxy={"address": "192.0.2.1:3128"}), "network.egressProxy"),
])
def test_what_has_no_equivalent_is_refused(network: Network, words: str) -> None:
    with pytest.raises(InvalidArgumentError, match=words):
        mapping.network_of(None, network, True)


def test_internet_open_reads_the_policy() -> None:
    assert mapping.internet_open("all") and not mapping.internet_open("none")
    assert mapping.internet_open(corral.NetworkLists(allow=["0.0.0.0/0"]))
    assert not mapping.internet_open(corral.NetworkLists(allow=["example.org"]))


def _snapshot(n: int) -> corral.SnapshotInfo:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n)
    return corral.SnapshotInfo(id=f"snap-{n:016x}", name=None, sandbox_id="sbx-1", memory=True,
                               image="python", runtime="gvisor", size_bytes=1, created_at=at,
                               expires_at=at + timedelta(days=1))


def test_snapshot_pages_follow_their_tokens_to_the_end() -> None:
    items = [_snapshot(n) for n in range(5)]
    pages, token = [], None
    while True:
        shown, token = mapping.snapshot_page(items, 2, token)
        pages.append([s.id[-1] for s in shown])
        if token is None:
            break
    assert pages == [["0", "1"], ["2", "3"], ["4"]]
    assert mapping.snapshot_page(items, 5, None) == (items, None)
    with pytest.raises(InvalidArgumentError, match="nextToken"):
        mapping.snapshot_page(items, 2, "snap-ffffffffffffffff")


def test_templates_name_images() -> None:
    # code-interpreter-v1 gets the image with E2B's other kernels where it is built.
    built = ["python", "minimal", "code-interpreter"]
    assert mapping.image_of("code-interpreter-v1", built) == ("code-interpreter", None)
    assert mapping.image_of("code-interpreter-v1", ["python"]) == ("python", None)
    assert mapping.image_of("code-interpreter-v1") == ("python", None)
    assert mapping.image_of("base", built) == ("python", None)
    assert mapping.image_of("snap-abc", built) == ("python", "snap-abc")
    assert mapping.image_of("my-env:1", built) == ("my-env:1", None)
