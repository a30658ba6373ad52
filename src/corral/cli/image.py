"""``corral image``: build, list and remove images."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from corral.node.images import BUILTIN_IMAGES, ImageStore

from ._common import DataDirOption, build_image, human_size, node_settings, reporting_errors, say

app = typer.Typer(
    help="Build, list and remove sandbox images (Debian root filesystems).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="markdown",
)

_KNOWN = ", ".join(BUILTIN_IMAGES)


def _store(data_dir: DataDirOption) -> ImageStore:
    return ImageStore(node_settings(data_dir).image_dir)


@app.command()
def build(
    name: Annotated[str, typer.Argument(metavar="NAME", help=f"Image to build: {_KNOWN}.")],
    data_dir: DataDirOption = None,
) -> None:
    """Build an image with mmdebstrap (needs root and network; takes minutes).

    Building an image that is already built does nothing. If another process is building
    the same image, this waits for it.

    Example:

        corral image build python
    """
    with reporting_errors():
        build_image(_store(data_dir), name)


@app.command("list")
def list_(data_dir: DataDirOption = None) -> None:
    """List built images with their size and location.

    Example:

        corral image list
    """
    store = _store(data_dir)
    with reporting_errors():
        images = {image.name: image for image in store.list()}
    table = Table(title=f"Images in {store.root}")
    table.add_column("name", style="bold")
    table.add_column("built")
    table.add_column("size", justify="right")
    table.add_column("key")
    table.add_column("packages")
    for name, recipe in store.recipes.items():
        built = images.get(name)
        table.add_row(name, "[green]yes[/]" if built else "[dim]no[/]",
                      human_size(built.size_bytes) if built else "-",
                      recipe.cache_key(), ", ".join(recipe.packages[:6])
                      + (", ..." if len(recipe.packages) > 6 else ""))
    Console().print(table)


@app.command("rm")
def remove(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Image to remove.")],
    data_dir: DataDirOption = None,
) -> None:
    """Remove every build of an image. Do not remove one that running sandboxes use.

    Example:

        corral image rm minimal
    """
    with reporting_errors():
        _store(data_dir).remove(name)
    say(f"removed image {name}")
