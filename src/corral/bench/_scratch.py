"""Scratch data dirs for the nodes the benchmark starts besides its own (a ``corral serve``,
a node with warm pools): made 0711, swept of whatever a crashed node left, then deleted."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from corral.api.errors import InternalError
from corral.node import NodeSettings
from corral.runtime.host import sweep


@contextlib.contextmanager
def scratch_dir(prefix: str, image_dir: Path) -> Iterator[Path]:
    """A fresh data dir under the temporary directory, removed (swept first) on the way out."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        os.chmod(data_dir, 0o711)  # namespaces sandboxes' uids traverse it to their root
        yield data_dir
    finally:
        remove_data_dir(data_dir, image_dir)


def remove_data_dir(data_dir: Path, image_dir: Path) -> None:
    """Sweep what a killed node left (cgroups, mounts), then delete the data dir.

    Never deletes through a mount: with one still below it the directory is left in place.
    """
    settings = NodeSettings(data_dir=data_dir, image_dir=image_dir)
    sweep(settings.data_dir / "sandboxes", settings.node_key, set())
    prefix = str(settings.data_dir) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounted = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
    if mounted:
        raise InternalError(f"mounts are left under {data_dir} ({mounted[0]}, ...); "
                            "it was not deleted")
    shutil.rmtree(data_dir)
