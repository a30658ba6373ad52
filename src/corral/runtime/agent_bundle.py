"""The agent bundle: an interpreter and the agent's code, mounted read-only at ``/.corral``.

Images may have no Python, or one of any version, so the agent brings its own: the
host's Debian ``python3`` with the shared libraries it links (its dynamic loader included)
and the parts of the standard library the agent uses. The sandbox runs it through that
loader, so nothing of the image's libc is involved. Built once per content hash, atomically.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


MOUNT_POINT = "/.corral"
#: Where a sandbox sees its host directory ``<sandbox dir>/run`` (read-only): a restarted
#: node binds the socket its agents reconnect to there.
CHANNEL_MOUNT_POINT = "/.corral-run"
CHANNEL_SOCKET_NAME = "node.sock"
#: How long an agent whose node went away waits for the next one before ending the sandbox.
ORPHAN_GRACE = 600.0
HOST_PYTHON = Path("/usr/bin/python3")
BUNDLE_FORMAT = 1
# Standard-library parts the agent never imports; left out to keep the bundle small.
_STDLIB_SKIP = {
    "test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data",
    "site-packages", "dist-packages", "distutils", "unittest", "venv", "sqlite3",
    "xmlrpc", "curses", "dbm", "wsgiref", "__phello__",
}
_LIB_LINE = re.compile(r"=>\s*(/\S+)|^\s*(/\S+)\s*\(")


def _agent_sources() -> list[tuple[str, Path]]:
    """(path inside the bundle, source file) for the agent and the api it imports, and
    the kernel bridge (run by the image's own python3: see corral.bridge)."""
    root = Path(__file__).resolve().parent.parent
    files = []
    for package in ("agent", "api", "bridge"):
        for path in sorted((root / package).glob("*.py")):
            files.append((f"py/corral/{package}/{path.name}", path))
    return files


def _shared_libs(binaries: list[Path]) -> set[Path]:
    libs: set[Path] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            match = _LIB_LINE.search(line)
            if match:
                libs.add(Path(match.group(1) or match.group(2)))
    return libs


def bundle_key() -> str:
    digest = hashlib.sha256(f"format={BUNDLE_FORMAT}".encode())
    python = HOST_PYTHON.resolve()
    st = python.stat()
    digest.update(f"{python}:{st.st_size}:{st.st_mtime_ns}".encode())
    for inside, source in _agent_sources():
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
    python = HOST_PYTHON.resolve()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = Path(f"/usr/lib/{version}")
    probe = subprocess.run([str(python), "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    if not stdlib.is_dir() or probe != str(tuple(sys.version_info[:2])):
        raise RuntimeError(f"{python} is not Python {sys.version_info.major}."
                           f"{sys.version_info.minor} with its standard library in {stdlib}")
    (dest / "bin").mkdir(parents=True)
    (dest / "lib").mkdir()
    shutil.copy2(python, dest / "bin" / "python3")
    shutil.copytree(
        stdlib, dest / "lib" / version,
        ignore=lambda folder, names: [n for n in names if n in _STDLIB_SKIP
                                      or n.startswith("config-")],
    )
    dynload = sorted((dest / "lib" / version / "lib-dynload").glob("*.so"))
    for lib in _shared_libs([python, *dynload]):
        shutil.copy2(lib.resolve(), dest / "lib" / lib.name)
    for inside, source in _agent_sources():
        target = dest / inside
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (dest / "py" / "corral" / "__init__.py").write_text('"""Corral agent runtime."""\n')
    subprocess.run([str(python), "-m", "compileall", "-q", str(dest / "py")], check=True,
                   capture_output=True)
    (dest / "ok").write_text("")


def agent_command() -> list[str]:
    """argv that starts the agent inside a sandbox whose /.corral is the bundle."""
    loader = "ld-linux-x86-64.so.2" if os.uname().machine == "x86_64" else "ld-linux-aarch64.so.1"
    return [f"{MOUNT_POINT}/lib/{loader}", "--library-path", f"{MOUNT_POINT}/lib",
            f"{MOUNT_POINT}/bin/python3", "-S", "-s", "-B", "-m", "corral.agent"]


def agent_env(orphan_grace: float = ORPHAN_GRACE) -> dict[str, str]:
    """The agent's environment; with an ``orphan_grace`` (seconds) above zero, an agent
    whose node went away waits that long for a restarted one before ending the sandbox."""
    env = {"PYTHONHOME": MOUNT_POINT, "PYTHONPATH": f"{MOUNT_POINT}/py",
           "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8",
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    if orphan_grace > 0:
        env["CORRAL_AGENT_SOCKET"] = f"{CHANNEL_MOUNT_POINT}/{CHANNEL_SOCKET_NAME}"
        env["CORRAL_AGENT_ORPHAN_GRACE"] = f"{orphan_grace:g}"
    return env
