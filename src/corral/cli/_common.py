"""What every command shares: error printing, exit codes, image build progress, node dirs.

Corral's own messages always go to stderr, so a command's stdout stays clean for pipes.
Exit codes follow ``docker run``: 125 when Corral itself failed, 124 for a command timeout,
2 for a malformed command line (typer's own convention), otherwise the command's status.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from corral.api.errors import NotFoundError, SandboxError
from corral.node import NodeSettings
from corral.node.images import Image, ImageStore

EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_CORRAL_ERROR = 125
EXIT_INTERRUPTED = 130

#: Private node directories of concurrent CLI invocations, under ``<data dir>/cli``.
MAX_CLI_NODES = 256

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", envvar="CORRAL_DATA_DIR", show_default="/var/lib/corral",
        help="Where Corral keeps sandbox state (env CORRAL_DATA_DIR). Images live in "
             "DATA_DIR/images unless CORRAL_IMAGE_DIR says otherwise.",
    ),
]

stderr = Console(stderr=True, highlight=False)
"""Corral's own output. Rich looks ``sys.stderr`` up on every write, so tests can capture it."""


def say(message: str, style: str = "") -> None:
    """Print ``corral: <message>`` on stderr (colour only on a terminal)."""
    stderr.print(Text(f"corral: {message}", style=style), soft_wrap=True)


def fail(message: str, code: int = EXIT_CORRAL_ERROR) -> NoReturn:
    """Print ``corral: error: <message>`` in red and exit with ``code``."""
    say(f"error: {message}", style="bold red")
    raise typer.Exit(code)


@contextlib.contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn a :class:`corral.SandboxError` into ``corral: error: ...`` and exit 125."""
    try:
        yield
    except SandboxError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        say("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def node_settings(data_dir: Path | None) -> NodeSettings:
    """Settings from ``--data-dir`` (or ``CORRAL_DATA_DIR``) and ``CORRAL_IMAGE_DIR``."""
    return NodeSettings.from_env(data_dir)


@contextlib.contextmanager
def private_node(settings: NodeSettings) -> Iterator[NodeSettings]:
    """Settings for a node of this process alone, in ``<data dir>/cli/<n>``.

    A node sweeps, when it starts, every sandbox its data dir holds that it does not know,
    so two nodes must never share one (a second ``corral run`` would kill the first's
    sandbox, and a CLI node on a server's data dir would kill the server's). Each CLI
    invocation therefore takes the lowest free slot directory, held by ``flock`` for its
    lifetime. A slot whose owner died is free again, and the next node to take it sweeps
    what the dead one left. Images stay shared (``image_dir`` is unchanged).
    """
    base = _traversable_dir(_traversable_dir(settings.data_dir) / "cli")
    for slot in range(MAX_CLI_NODES):
        lock = os.open(base / f"{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            continue
        try:
            yield NodeSettings(data_dir=base / str(slot), image_dir=settings.image_dir,
                               max_sandboxes=settings.max_sandboxes)
        finally:
            os.close(lock)
        return
    raise SandboxError(f"{MAX_CLI_NODES} corral commands already run on {settings.data_dir}")


def _traversable_dir(path: Path) -> Path:
    """Make ``path`` (0711 if new) and let sandbox uids traverse it (they must reach rootfs)."""
    path.mkdir(mode=0o711, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o011 != 0o011:
        os.chmod(path, mode | 0o011)
    return path


def ensure_image(store: ImageStore, name: str) -> Image:
    """The built image ``name``; a known but unbuilt one is built first, with progress."""
    try:
        return store.get(name)
    except NotFoundError:
        if name not in store.recipes:
            raise
    say(f"image {name!r} is not built yet; building it (this takes a few minutes)")
    return build_image(store, name)


class _BuildStatus:
    """The spinner's text: elapsed time and the latest build line, redrawn on every tick."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()
        self.line = "starting mmdebstrap"

    def __rich__(self) -> Text:
        elapsed = time.monotonic() - self.started
        text = Text(f"building image {self.name} [{elapsed:5.0f} s] ", style="bold")
        text.append(self.line[:100], style="dim")
        return text


def build_image(store: ImageStore, name: str) -> Image:
    """Build ``name`` (or wait for a concurrent build), showing mmdebstrap's progress.

    On a terminal a spinner shows the elapsed time and the latest mmdebstrap line; otherwise
    every line is printed to stderr, as a build log.
    """
    status = _BuildStatus(name)
    if stderr.is_terminal:
        with stderr.status(status, spinner="dots"):
            image = store.ensure(name, progress=lambda line: setattr(status, "line", line))
    else:
        image = store.ensure(name, progress=lambda line: print(line, file=sys.stderr,
                                                              flush=True))
    elapsed = time.monotonic() - status.started
    say(f"image {name} is ready ({human_size(image.size_bytes)}, built in {elapsed:.0f} s)",
        style="green")
    return image


def human_size(size: int) -> str:
    """``1.5 GiB``, ``180 MiB``, ``12 KiB``."""
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit in ("B", "KiB") else f"{value:.1f} {unit}"
