"""The agent bundle: the agent's static binary and the kernel bridge, mounted read-only at
``/.corral``.

Images may have no Python, or one of any version, and any libc or none, so the agent is a
static binary of its own (``agent/``, Rust with the standard library only; built once per
source hash by :func:`agent_binary`). The kernel bridge (:mod:`corral.bridge`) is Python run
by the image's own ``python3`` and travels in the bundle as source. Built once per content
hash, atomically.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from corral.api.errors import RuntimeUnavailableError

MOUNT_POINT = "/.corral"
#: Where a sandbox sees its host directory ``<sandbox dir>/run`` (read-only): a restarted
#: node binds the socket its agents reconnect to there.
CHANNEL_MOUNT_POINT = "/.corral-run"
CHANNEL_SOCKET_NAME = "node.sock"
#: How long an agent whose node went away waits for the next one before ending the sandbox.
ORPHAN_GRACE = 600.0
BUNDLE_FORMAT = 2
AGENT_NAME = "corral-agent"
#: The agent's sources: a Cargo project beside the ``src/`` folder of this package.
AGENT_SOURCES = Path(__file__).resolve().parents[3] / "agent"
#: How long building the agent may take (a first, cold build is ~30 s on 2 cores).
BUILD_TIMEOUT = 600.0


def _bridge_sources() -> list[tuple[str, Path]]:
    """(path inside the bundle, source file) for the kernel bridge and the frame format it
    imports (run by the image's own python3: see corral.bridge)."""
    root = Path(__file__).resolve().parent.parent
    files = [(f"py/corral/bridge/{path.name}", path)
             for path in sorted((root / "bridge").glob("*.py"))]
    files.append(("py/corral/api/bridge_protocol.py", root / "api" / "bridge_protocol.py"))
    return files


def _agent_source_files(sources: Path) -> list[Path]:
    files = [sources / "Cargo.toml", sources / "Cargo.lock", sources / ".cargo" / "config.toml"]
    files += sorted((sources / "src").rglob("*.rs"))
    return [f for f in files if f.is_file()]


def agent_source_key(sources: Path = AGENT_SOURCES) -> str:
    """A hash of the agent's sources: its binary is built once per key."""
    digest = hashlib.sha256()
    for path in _agent_source_files(sources):
        digest.update(str(path.relative_to(sources)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _cargo() -> str | None:
    found = shutil.which("cargo")
    if found:
        return found
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin" / "cargo"
    return str(home) if home.is_file() else None


def agent_binary(sources: Path = AGENT_SOURCES) -> Path:
    """The agent's static binary for the current sources, built with cargo if it is not yet.

    Built binaries are kept under ``agent/target/built/<source hash>/``: whoever runs
    Corral later (another user, a test without cargo) finds them there.
    """
    if not (sources / "Cargo.toml").is_file():
        raise RuntimeUnavailableError(
            f"the agent's sources are not at {sources}; reinstall Corral from its repository "
            "(scripts/install)")
    key = agent_source_key(sources)
    final = sources / "target" / "built" / key / AGENT_NAME
    if final.is_file():
        return final
    cargo = _cargo()
    if cargo is None:
        raise RuntimeUnavailableError(
            "the sandbox agent is not built and cargo (Rust) is not installed; run "
            "scripts/install, which builds it")
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_file():
            return final
        target = sources / "target"
        try:
            subprocess.run([cargo, "build", "--release", "--offline", "--locked", "--quiet",
                            "--manifest-path", str(sources / "Cargo.toml"),
                            "--target-dir", str(target)],
                           cwd=sources,  # cargo reads .cargo/config.toml (static) from here
                           check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        except subprocess.CalledProcessError as exc:
            raise RuntimeUnavailableError(
                f"building the sandbox agent failed: {exc.stderr.strip()[-2000:]}") from None
        except subprocess.TimeoutExpired:
            raise RuntimeUnavailableError(
                f"building the sandbox agent took more than {BUILD_TIMEOUT:g} s") from None
        tmp = final.with_name(f".{AGENT_NAME}.{os.getpid()}")
        shutil.copy2(target / "release" / AGENT_NAME, tmp)
        os.chmod(tmp, 0o755)
        os.rename(tmp, final)
    return final


def bundle_key() -> str:
    digest = hashlib.sha256(f"format={BUNDLE_FORMAT}".encode())
    digest.update(agent_binary().read_bytes())
    for inside, source in _bridge_sources():
        digest.update(inside.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def ensure_bundle(root: Path) -> Path:
    """Return the bundle directory under ``root``, building it if needed."""
    key = bundle_key()
    final = root / key
    if (final / "ok").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "ok").exists():
            return final
        tmp = root / f".build-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _build(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
    return final


def _build(dest: Path) -> None:
    (dest / "bin").mkdir(parents=True)
    shutil.copy2(agent_binary(), dest / "bin" / AGENT_NAME)
    os.chmod(dest / "bin" / AGENT_NAME, 0o755)
    for inside, source in _bridge_sources():
        target = dest / inside
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (dest / "ok").write_text("")


def agent_command() -> list[str]:
    """argv that starts the agent inside a sandbox whose /.corral is the bundle."""
    return [f"{MOUNT_POINT}/bin/{AGENT_NAME}"]


def agent_env(orphan_grace: float = ORPHAN_GRACE) -> dict[str, str]:
    """The agent's environment; with an ``orphan_grace`` (seconds) above zero, an agent
    whose node went away waits that long for a restarted one before ending the sandbox."""
    env = {"LANG": "C.UTF-8",
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    if orphan_grace > 0:
        env["CORRAL_AGENT_SOCKET"] = f"{CHANNEL_MOUNT_POINT}/{CHANNEL_SOCKET_NAME}"
        env["CORRAL_AGENT_ORPHAN_GRACE"] = f"{orphan_grace:g}"
    return env
