"""A server of the tests' own with tight limits, served as ``corral serve`` serves (the
guarded h11 protocol, its timeouts and connection cap), for the hostile and rate-limit tests.

Clients bind distinct loopback source addresses (127.0.0.N), so failed authentications
counted against one test's address never lock another test out; each test makes its own
keys, so one test's token buckets never drain another's.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from corral.node import NodeSettings
from corral.server import ServerSettings, create_app
from corral.server.http import uvicorn_options
from corral.server.settings import RequestLimits
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url
from tests.conftest import IMAGE_DIR, sandbox_data_dir

from ._serving import serving
from ._spec import SpecCheck

LIMITS = RequestLimits(
    rate=20, burst=40, in_flight_per_key=8, in_flight=48, auth_failure_rate=0.5,
    auth_failure_burst=10, json_depth=64, body_timeout=6, body_idle_timeout=2,
    header_timeout=2, keep_alive=2, max_connections=300, shutdown_grace=5)
_ADDRESSES = itertools.count(2)


@dataclass(frozen=True)
class Guarded:
    url: str
    keys: KeyStore
    spec_check: SpecCheck
    limits: RequestLimits

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def key(self, tenant: str = "alpha") -> str:
        """A fresh key: a bucket of its own."""
        return self.keys.create(tenant).key

    def address(self) -> str:
        """A loopback source address no other test used (127.0.0.2, .3, ...)."""
        return f"127.0.0.{next(_ADDRESSES)}"

    def http(self, key: str | None = None, address: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        transport = httpx.HTTPTransport(local_address=address or self.address())
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0,
                            transport=transport)

    def connect(self, address: str | None = None) -> socket.socket:
        """A raw TCP connection to the server, from ``address``."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((address or self.address(), 0))
        sock.settimeout(30)
        sock.connect(("127.0.0.1", self.port))
        return sock


@contextmanager
def guarded_server(python_image: str, limits: RequestLimits = LIMITS) -> Iterator[Guarded]:
    """Serve a fresh app with ``limits`` on a data dir of its own; fail on any response
    that strays from the OpenAPI document."""
    with sandbox_data_dir("corral-guarded-test-") as data_dir:
        settings = ServerSettings(node=NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR),
                                  port=0, limits=limits)
        keys = KeyStore(open_engine(database_url(data_dir, None)))
        spec_check = SpecCheck(create_app(settings))
        with serving(spec_check, **uvicorn_options(settings)) as url:
            yield Guarded(url=url, keys=keys, spec_check=spec_check, limits=limits)
        spec_check.fail_if_off_spec()
