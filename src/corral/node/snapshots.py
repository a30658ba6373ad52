"""A running sandbox's filesystem kept as an image: ``snapshot_filesystem``.

What the sandbox changed in its image (its overlay's upper layer) becomes one more layer on
top of that image's, exactly as an image build's step does (:mod:`.builder`): the agent
flushes the sandbox's files (``sync(2)``), the sandbox is frozen for the copy and thawed
after it, and the copy is neutralised before it is kept (:mod:`.layers`). The new image
starts with the image's defaults (env, working directory, user, command), not with the
sandbox's own create-time env, which may hold secrets.

Not in it, under gVisor: ``/tmp``, ``/dev/shm`` and ``/dev``, which are the Sentry's memory,
not the overlay. Processes, memory and open files are not in a filesystem snapshot.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from typing import TYPE_CHECKING

from corral.api.errors import InternalError, SandboxNotRunningError
from corral.runtime.agent_bundle import agent_command
from corral.runtime.host import copy_changes

from .builder import building, drop_start_files
from .layers import Manifest, is_image_id
from .lifecycle import SandboxState

if TYPE_CHECKING:
    from .node import Node
    from .sandbox import NodeSandbox

#: Longest the sandbox's flush may take, in seconds.
SYNC_TIMEOUT = 300.0


async def snapshot_filesystem(node: Node, sandbox: NodeSandbox) -> Manifest:
    """Keep ``sandbox``'s filesystem as a new image; returns its saved manifest."""
    if sandbox.state is not SandboxState.RUNNING:
        raise SandboxNotRunningError(f"sandbox {sandbox.id} is {sandbox.state.value}; only "
                                     "a running sandbox's filesystem can be kept")
    store = node.images.built
    if is_image_id(sandbox.image):
        parent = store.manifest(sandbox.image)
    else:
        image = node.images.get(sandbox.image)
        parent = Manifest(base=image.name, base_key=image.key, layers=(), env=image.env,
                          workdir=image.workdir, user=image.user)
    key = hashlib.sha256(f"corral-snapshot\0{sandbox.id}\0{time.time_ns()}\0"
                         f"{secrets.token_hex(16)}".encode()).hexdigest()
    spec = sandbox.handle.spec
    async with building(store.root):
        flushed = await sandbox.commands.run([*agent_command(), "--sync"], user=0,
                                             timeout=SYNC_TIMEOUT)
        if flushed.exit_code != 0:
            raise InternalError(f"sandbox {sandbox.id}: flushing its files failed: "
                                f"{flushed.stderr[-500:]}")
        # The host uid of the sandbox's root: its directory's owner, which it cannot change.
        uid_base = spec.directory.stat().st_uid
        meta = {"step": f"SNAPSHOT {sandbox.id}", "parent": parent.layers[-1]
                if parent.layers else None}
        with store.new_layer(key, meta, uid_base) as where:
            await asyncio.to_thread(copy_changes, spec, where(), True)
            await asyncio.to_thread(drop_start_files, where(), sandbox.network.policy.enabled)
        return store.save(Manifest(
            base=parent.base, base_key=parent.base_key, layers=(*parent.layers, key),
            env=parent.env, workdir=parent.workdir, user=parent.user,
            entrypoint=parent.entrypoint, cmd=parent.cmd, labels=parent.labels,
            steps=(*parent.steps, f"SNAPSHOT of sandbox {sandbox.id}")))
