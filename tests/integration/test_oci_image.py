"""An imported OCI archive runs as a sandbox image (gVisor).

The archive's one layer holds only ``/bin/sh`` (dash) and what it loads, copied from the
``python`` image's root filesystem with the symlinks and folders on their way: no
``/etc/passwd``, no Python, nothing else. The sandbox must still start (the agent is a
static binary, mounted at the imported image's ``/.corral``), run the shell, and give its
commands the image config's env and working directory.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from corral.node import SyncNode
from corral.node.images import ImageStore
from corral.node.oci import import_archive
from tests.conftest import IMAGE_DIR, WORKING
from tests.fakes.oci_archive import docker_archive

pytestmark = pytest.mark.skipif("gvisor" not in WORKING, reason="needs a working runsc")


def closure(rootfs: Path, paths: list[str]) -> list[str]:
    """Image paths (relative) of every folder, symlink and file that resolving ``paths``
    inside ``rootfs`` goes through, symlinks resolved against ``rootfs`` as root."""
    keep: set[str] = set()
    for path in paths:
        todo, hops = [p for p in path.split("/") if p], 0
        done: list[str] = []
        while todo:
            rel = "/".join([*done, todo.pop(0)])
            keep.add(rel)
            if not (rootfs / rel).is_symlink():
                done = rel.split("/")
                continue
            hops += 1
            assert hops < 40, f"symlink loop at {rel}"
            target = os.readlink(rootfs / rel)
            resolved = [] if target.startswith("/") else done[:]
            for part in target.split("/"):
                if part == "..":
                    resolved = resolved[:-1]
                elif part not in ("", "."):
                    resolved.append(part)
            todo, done = [*resolved, *todo], []
    return sorted(keep)


def shell_layer(rootfs: Path) -> bytes:
    """A layer with /bin/sh and the libraries ``ldd`` says it needs."""
    ldd = subprocess.run(["ldd", str(rootfs / "usr/bin/dash")], capture_output=True,
                         text=True, check=True).stdout
    libraries = [word for word in ldd.split() if word.startswith("/")]
    missing = [lib for lib in libraries if not os.path.lexists(rootfs / lib.lstrip("/"))]
    if missing:
        pytest.skip(f"the host's loader names libraries the image lacks: {missing}")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for rel in closure(rootfs, ["/bin/sh", *libraries]):
            tar.add(rootfs / rel, arcname=rel, recursive=False)
    return out.getvalue()


def test_imported_archive_runs_a_shell_with_the_config_env(node: SyncNode,
                                                           tmp_path: Path) -> None:
    layer = shell_layer(ImageStore(IMAGE_DIR).get("python").rootfs)
    archive = docker_archive(tmp_path / "shell.tar", [layer], {
        "Env": ["PATH=/usr/bin:/bin", "GREETING=from-the-image"],
        "WorkingDir": "/srv/app", "Cmd": ["/bin/sh"]})
    started = time.monotonic()
    manifest = import_archive(node.node.images.built, archive)
    imported = time.monotonic() - started

    sb = node.create(manifest.id, runtime="gvisor", timeout=120)
    try:
        assert (sb.info.runtime, sb.info.image) == ("gvisor", manifest.id)
        r = sb.commands.run(["/bin/sh", "-c", "echo ok"])
        assert (r.exit_code, r.stdout, r.stderr) == (0, "ok\n", "")
        r = sb.commands.run('echo "$GREETING $(pwd)"; test -e /usr/bin/python3 || echo bare')
        assert (r.exit_code, r.stdout) == (0, "from-the-image /srv/app\nbare\n"), r.stderr
        r = sb.commands.run("echo made > here && read back < here && echo $back /.corral/*")
        assert r.stdout.startswith("made /.corral/") and "*" not in r.stdout, r.stdout
    finally:
        sb.kill()
    print(f"imported a {len(layer)}-byte layer in {imported:.3f} s")
