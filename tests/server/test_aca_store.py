"""The dynamic-sessions map on each store backend: one sandbox per (tenant, pool,
identifier), compare-and-set claims, and forgetting stopped sandboxes."""

from __future__ import annotations

from corral.server.store import KeyStore, open_engine
from corral.server.store.aca_sessions import AcaSessionStore, identifier_hash


def test_claims_and_forgetting(store_url: str) -> None:
    engine = open_engine(store_url)
    keys = KeyStore(engine)
    keys.create("alpha")
    keys.create("beta")
    store = AcaSessionStore(engine)
    digest = identifier_hash(b"same id")
    assert store.get("alpha", "default", digest) is None
    assert store.claim("alpha", "default", digest, "sbx-a1", None) == "sbx-a1"
    assert store.claim("alpha", "default", digest, "sbx-a2", None) == "sbx-a1"  # lost the race
    assert store.claim("beta", "default", digest, "sbx-b1", None) == "sbx-b1"  # own tenant
    assert store.claim("alpha", "other", digest, "sbx-o1", None) == "sbx-o1"  # own pool
    assert store.claim("alpha", "default", digest, "sbx-a3", "sbx-old") == "sbx-a1"
    assert store.claim("alpha", "default", digest, "sbx-a3", "sbx-a1") == "sbx-a3"
    assert store.get("alpha", "default", digest) == "sbx-a3"
    assert store.get("beta", "default", digest) == "sbx-b1"
    assert store.forget("sbx-a3") == 1 and store.get("alpha", "default", digest) is None
    assert store.forget_all_but({"sbx-b1"}) == 1
    assert store.get("beta", "default", digest) == "sbx-b1"
    assert store.get("alpha", "other", digest) is None
