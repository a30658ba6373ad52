"""The Corral node of one Ray node: a detached, named Ray actor and the server it runs.

Each host of a cluster runs one :class:`NodeActor` (``corral node join``, or started by the
control plane on every Ray node that has none). The actor starts the host's **node
server**, the single-host Corral server (:func:`corral.server.create_app`) on the host's
cluster address with its own data dir and SQLite records, which owns the host's runtimes,
images, pools and sandboxes. The actor is how the control plane reaches it for control
calls (create, describe, end), over Ray; byte streams (command output, files, terminals)
go from the API server straight to the node server over HTTPS (docs/cluster.md says why).
The node server's certificate is signed by a CA of its own, made in its data dir, which
the control plane learns from :meth:`NodeActor.describe` and trusts for that node only.

Every method takes the node token first and checks it (:func:`.trust.check_token`), so a
Ray client that got hold of the actor's handle but not the token can do nothing. The node
server admits only requests carrying the same token; it is started with Ray's variables
(and its token) out of its environment, and it stops itself, leaving its sandboxes
running for the next one to adopt, when the actor's process is gone
(:func:`watch_supervisor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx

from ..server.tls import ensure_tls
from .trust import (CLUSTER_HEADER, CONTROL_KEY, KEY_HEADER, TENANT_HEADER, check_token,
                    write_secret)

log = logging.getLogger(__name__)

#: The Ray namespace of Corral's actors, and the prefix of a node actor's name.
NAMESPACE: Final = "corral"
ACTOR_PREFIX: Final = "corral-node:"
#: Where a node server learns the pid of the actor that supervises it.
SUPERVISOR_ENV: Final = "CORRAL_CLUSTER_SUPERVISOR_PID"
#: Seconds a node server may take to answer its first request after it is started.
START_TIMEOUT: Final = 120.0
#: Seconds a control call to the node server may take (a cold create included).
CALL_TIMEOUT: Final = 300.0
#: The control plane's own name in a node's records (describe, reconcile).
CONTROL_TENANT: Final = "corral-control"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def server_env(data_dir: Path, token_file: Path, extra: dict[str, str]) -> dict[str, str]:
    """The node server's environment: the actor's, less Ray's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "CORRAL_CLUSTER_"))}
    env.update(extra)
    env.update({"CORRAL_DATA_DIR": str(data_dir), "CORRAL_CLUSTER_TOKEN_FILE": str(token_file),
                SUPERVISOR_ENV: str(os.getpid()), "CORRAL_KEEP_SANDBOXES": "1"})
    return env


class NodeActor:
    """One host's Corral node (decorated with ``ray.remote`` by :func:`actor_class`)."""

    def __init__(self, name: str, token: str, data_dir: str, host: str,
                 labels: dict[str, str], env: dict[str, str]) -> None:
        import ray
        self.name = name
        self._token = token
        self.labels = dict(labels)
        self.host = host
        self.ray_node_id = ray.get_runtime_context().get_node_id()
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o711)  # namespaces sandboxes' uids traverse it to their root
        token_file = self.data_dir / "node-token"
        write_secret(token_file, token)
        # The node server speaks TLS with a certificate of its own CA (made here, kept in
        # its data dir); the control plane trusts that CA for this node alone (describe).
        tls = ensure_tls(self.data_dir / "tls", [host])
        self.ca = tls.ca_cert.read_text()
        self.port = free_port(host)
        self.url = f"https://{'[' + host + ']' if ':' in host else host}:{self.port}"
        log_file = open(self.data_dir / "node-server.log", "ab")  # noqa: SIM115
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from corral.cli import main; main()", "serve",
             "--host", host, "--port", str(self.port)],
            env=server_env(self.data_dir, token_file,
                           {**env, "CORRAL_TLS": "1", "CORRAL_TLS_NAMES": host}),
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
        log_file.close()
        self.started_at = time.time()
        self._client = httpx.AsyncClient(base_url=self.url, timeout=CALL_TIMEOUT,
                                         verify=ssl.create_default_context(cadata=self.ca))

    def _headers(self, tenant: str, key_id: str) -> dict[str, str]:
        return {CLUSTER_HEADER: self._token, TENANT_HEADER: tenant, KEY_HEADER: key_id}

    async def ready(self, token: str) -> dict[str, Any]:
        """Wait for the node server to answer, then :meth:`describe` it."""
        check_token(token, self._token)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"the node server of {self.name} exited with "
                                   f"{self._process.returncode}; see "
                                   f"{self.data_dir / 'node-server.log'}")
            with contextlib.suppress(httpx.TransportError):
                if (await self._client.get("/openapi.json", timeout=2)).status_code == 200:
                    return await self.describe(token)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the node server of {self.name} did not answer in "
                                   f"{START_TIMEOUT:g} s")
            await asyncio.sleep(0.2)

    async def describe(self, token: str) -> dict[str, Any]:
        """The node: its name, labels, address, capacity, images, pools and sandboxes."""
        check_token(token, self._token)
        reply = await self._client.get("/v1/node", headers=self._headers(CONTROL_TENANT,
                                                                          CONTROL_KEY),
                                       timeout=10)
        reply.raise_for_status()
        status: dict[str, Any] = reply.json()
        status.update(name=self.name, url=self.url, labels=self.labels, ca=self.ca,
                      ray_node_id=self.ray_node_id, started_at=self.started_at)
        return status

    async def call(self, token: str, tenant: str, key_id: str, method: str, path: str,
                   body: Any = None, params: dict[str, str] | None = None
                   ) -> tuple[int, Any]:
        """One request to the node server as ``tenant``: (status, JSON body or None)."""
        check_token(token, self._token)
        if not path.startswith("/v1/"):
            raise ValueError("control calls reach the node's /v1 routes only")
        headers = self._headers(tenant, key_id)
        if body is not None:
            headers["content-type"] = "application/json"
        reply = await self._client.request(
            method, path, headers=headers, params=params,
            content=None if body is None else json.dumps(body).encode(),
            timeout=CALL_TIMEOUT)
        try:
            payload = reply.json() if reply.content else None
        except ValueError:
            payload = {"error": {"code": "internal", "message": reply.text[:2000]}}
        return reply.status_code, payload

    async def read_stream(self, token: str, tenant: str, key_id: str, sandbox_id: str,
                          path: str) -> AsyncIterator[bytes]:
        """A file of a sandbox as a Ray streaming generator of chunks: the other way bytes
        could travel, which ``corral bench --cluster`` measures against the API server's
        HTTP hop to the node (docs/cluster.md says which wins and why; the API uses
        HTTP)."""
        check_token(token, self._token)
        async with self._client.stream(
                "GET", f"/v1/sandboxes/{sandbox_id}/files", params={"path": path},
                headers=self._headers(tenant, key_id)) as reply:
            reply.raise_for_status()
            async for chunk in reply.aiter_bytes():
                yield chunk

    async def set_pools(self, token: str, pools: str) -> list[str]:
        """Keep these warm pools (``CORRAL_POOLS`` syntax) on this node; the specs it now
        keeps."""
        check_token(token, self._token)
        status, payload = await self.call(token, CONTROL_TENANT, CONTROL_KEY, "PUT",
                                          "/v1/node/pools", {"pools": pools})
        if status != 200:
            raise RuntimeError(f"the node refused the pools {pools!r:.200}: {payload}")
        kept: list[str] = payload["pools"]
        return kept

    async def end(self, token: str, owned: list[tuple[str, str]]) -> list[str]:
        """Kill these sandboxes ((id, tenant) pairs) the control plane gave up on; the ids
        of those it ended."""
        check_token(token, self._token)
        ended = []
        for sandbox_id, tenant in owned[:10_000]:
            status, _ = await self.call(token, tenant, CONTROL_KEY, "DELETE",
                                        f"/v1/sandboxes/{sandbox_id}")
            if status in (204, 404):
                ended.append(sandbox_id)
        return ended

    async def stop(self, token: str, *, end_sandboxes: bool = False) -> None:
        """Stop the node server, leaving its sandboxes for the next one to adopt (or, with
        ``end_sandboxes``, ending them first)."""
        check_token(token, self._token)
        if end_sandboxes and self._process.poll() is None:
            status = await self.describe(token)
            await self.end(token, [(s["id"], s["tenant"]) for s in status["sandboxes"]])
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(self._process.wait), 60)
            except TimeoutError:
                self._process.kill()
        await self._client.aclose()


def actor_class() -> Any:
    """:class:`NodeActor` as a Ray actor class (Ray is imported only in cluster mode)."""
    import ray
    decorate: Any = ray.remote
    return decorate(num_cpus=0, max_restarts=0, max_concurrency=256)(NodeActor)


def watch_supervisor() -> None:
    """In a node server: stop (SIGTERM to itself, which leaves its sandboxes running) once
    the actor that started it is gone. Does nothing outside a cluster."""
    raw = os.environ.get(SUPERVISOR_ENV, "")
    if not raw.isdigit():
        return
    supervisor = int(raw)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(supervisor, 0)
            except ProcessLookupError:
                break
            if os.getppid() != supervisor:
                break
        log.warning("the node actor (pid %d) is gone: stopping this node server", supervisor)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
