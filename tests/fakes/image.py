"""A tiny fake of a built image, laid out the way :class:`corral.node.images.ImageStore`
loads one: ``<image dir>/<name>-<recipe key>/image.json`` and ``rootfs/``.

Its root holds only what the agent and the node read: ``/etc/passwd`` and ``/etc/group``,
the workdir and a home. ``root`` and ``user`` both map to the tests' own uid, so commands
run as the test user whichever of them a test names (the agent cannot switch users when
not root). Building it needs no root and takes milliseconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from corral.node.images import BUILTIN_IMAGES, ImageRecipe


def make_image(image_dir: Path, name: str = "python",
               recipe: ImageRecipe | None = None) -> Path:
    """Write a fake build of ``recipe`` (default: the built-in recipe ``name``) under
    ``image_dir``; returns its root filesystem."""
    recipe = recipe or BUILTIN_IMAGES[name]
    directory = image_dir / f"{recipe.name}-{recipe.cache_key()}"
    rootfs = directory / "rootfs"
    uid, gid = os.getuid(), os.getgid()
    for folder in ("etc", "tmp", "home/user", recipe.workdir.lstrip("/")):
        (rootfs / folder).mkdir(parents=True, exist_ok=True)
    (rootfs / "etc" / "passwd").write_text(
        f"root:x:{uid}:{gid}:root:/root:/bin/sh\n"
        f"user:x:{uid}:{gid}:sandbox user:/home/user:/bin/sh\n")
    (rootfs / "etc" / "group").write_text(f"root:x:{gid}:\nuser:x:{gid}:\n")
    (rootfs / "etc" / "hostname").write_text("sandbox\n")
    (directory / "image.json").write_text(json.dumps(
        {"name": recipe.name, "key": recipe.cache_key(), "fake": True, "size_bytes": 4096}))
    return rootfs
