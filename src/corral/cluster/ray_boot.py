"""Everything Corral asks of Ray itself: the token, a local head, the driver, the actors.

Ray is imported here and in the node actor only, so that a server of its own never needs
it (``pip install 'corral[cluster]'`` brings it).

Addresses: a cluster on one machine (``--cluster auto``, the tests) uses ``127.0.0.1``
(:data:`DEFAULT_HOST`): Ray's servers then listen on loopback only, and this process tells
Ray it is not a multi-host cluster (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), or Ray would
rewrite ``127.0.0.1`` into the machine's outward address when it connects. A cluster of
several hosts uses their private interface; Ray 2.60's gRPC servers then listen on every
interface of each host (SECURITY.md says what keeps them closed: Ray's token, the hosts'
firewall, and sandboxes' rules, which never reach a host address).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from corral.api.errors import InvalidArgumentError, UnavailableError

DEFAULT_HOST: Final = "127.0.0.1"
HEAD_PORT: Final = 6380
#: Seconds ``ray start`` may take on a loaded host.
START_TIMEOUT: Final = 120


def use_token(secret: str, host: str = DEFAULT_HOST) -> None:
    """Make this process (and the Ray processes it starts) use token authentication; on
    one machine (``host`` 127.0.0.1), keep Ray on loopback. Call before Ray is imported:
    Ray reads both once."""
    if host == "127.0.0.1":
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secret
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def gcs_address(address: str) -> str:
    """``HOST:PORT`` from ``ray://HOST:PORT`` or ``HOST:PORT``."""
    bare = address.removeprefix("ray://")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"the cluster address {address!r:.80} is not HOST:PORT "
                                   "(or ray://HOST:PORT, or auto)")
    return bare


@dataclass
class Head:
    """A Ray head this process started (``ray start --head --block``, a session of its
    own): stopping it stops its raylet, GCS and workers, and no other Ray on the host."""

    address: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """SIGTERM to its process group (not Ray's 30 s drain: the node servers stop on
        their own once their actors are gone, leaving their sandboxes to be adopted), then
        SIGKILL to what is left after 10 s."""
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait)
                break


def _ray() -> str:
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if found is None:
        raise UnavailableError("Ray is not installed: pip install 'corral[cluster]'")
    return found


def start_head(host: str, temp_dir: Path, port: int | None = None) -> Head:
    """Start a Ray head on this machine at ``host`` (``--cluster auto``); returns once its
    GCS accepts connections. Its port: ``port``, else :data:`HEAD_PORT` if it is free,
    else any free one (the address is printed and in the log)."""
    temp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if port is None:
        port = HEAD_PORT if _free(host, HEAD_PORT) else _any_port(host)
    log = open(temp_dir / "head.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [_ray(), "start", "--head", "--block", f"--node-ip-address={host}", f"--port={port}",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
         "--num-cpus=0"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    log.close()
    head = Head(address=f"{host}:{port}", process=process)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise UnavailableError(f"ray start failed ({process.returncode}); see "
                                   f"{temp_dir / 'head.log'}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return head
        if time.monotonic() > deadline:
            head.stop()
            raise UnavailableError(f"the Ray head did not start in {START_TIMEOUT} s; see "
                                   f"{temp_dir / 'head.log'}")
        time.sleep(0.2)


def _free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _any_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


_users = 0


def connect(address: str, host: str) -> None:
    """Connect this process to Ray as a driver (once: API servers in one process share it,
    and :func:`disconnect` lets go when the last is done)."""
    global _users
    # A driver of Ray's installs its own SIGTERM handling: C++ (which aborts the process)
    # and Python (sys.exit). The API server's own (uvicorn's graceful stop) must stay.
    os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"
    import ray
    _users += 1
    if ray.is_initialized():
        return
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=gcs_address(address), namespace="corral", _node_ip_address=host,
                 log_to_driver=False, configure_logging=False, include_dashboard=False)
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)


def disconnect() -> None:
    global _users
    import ray
    _users = max(0, _users - 1)
    if _users == 0 and ray.is_initialized():
        ray.shutdown()


@dataclass(frozen=True)
class RayNode:
    id: str
    name: str
    address: str
    labels: dict[str, str]


def alive_nodes() -> list[RayNode]:
    import ray
    found = []
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if not node.get("Alive"):
            continue
        labels = {k: str(v) for k, v in (node.get("Labels") or {}).items()
                  if not k.startswith("ray.io/")}
        found.append(RayNode(id=node["NodeID"], name=node.get("NodeName") or
                             node["NodeManagerAddress"], address=node["NodeManagerAddress"],
                             labels=labels))
    return found


def node_actor_names() -> list[str]:
    import ray

    from .node_actor import ACTOR_PREFIX, NAMESPACE
    names = ray.util.list_named_actors(all_namespaces=True)
    return sorted(entry["name"].removeprefix(ACTOR_PREFIX) for entry in names
                  if entry.get("namespace") == NAMESPACE
                  and entry["name"].startswith(ACTOR_PREFIX))


def get_actor(name: str) -> Any:
    import ray

    from .node_actor import NAMESPACE
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None
