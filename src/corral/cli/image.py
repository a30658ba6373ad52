"""``corral image``: build, list and remove images."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from corral.api import models
from corral.api.errors import InvalidArgumentError
from corral.node.images import BUILTIN_IMAGES, ImageStore
from corral.node.layers import is_image_id
from corral.sdk import Image
from corral.sdk.images import import_archive
from corral.sdk._http import ApiClient
from corral.sdk._portal import portal

from ._common import (DataDirOption, build_image, fail, human_size, node_settings,
                      reporting_errors, say)
from .sandbox import KeyOption, UrlOption

app = typer.Typer(
    help="Build, list and remove sandbox images: public ones built here (Debian root "
         "filesystems), and yours, built on the server from a Dockerfile or the SDK's Image.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="markdown",
)

_KNOWN = ", ".join(BUILTIN_IMAGES)


def _store(data_dir: DataDirOption) -> ImageStore:
    return ImageStore(node_settings(data_dir).image_dir)


@app.command()
def build(
    target: Annotated[str | None, typer.Argument(
        metavar="NAME|CONTEXT",
        help=f"Without -f: the public image to build here ({_KNOWN}). With -f: the build "
             "context COPY takes files from (default: the current folder).")] = None,
    file: Annotated[Path | None, typer.Option(
        "--file", "-f", help="A Dockerfile (the subset docs/images.md lists) or a "
                             "corral.toml (*.toml): build it on the server (CORRAL_URL), "
                             "each step in a sandbox.")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", "-t", help="What to call the image, such as my-env:1.")] = None,
    build_arg: Annotated[list[str] | None, typer.Option(
        "--build-arg", metavar="KEY=VALUE", help="A Dockerfile ARG's value (repeatable).")
    ] = None,
    url: UrlOption = None, api_key: KeyOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Build an image: a public one here with mmdebstrap (needs root and network), or one
    of yours from a Dockerfile on the server.

    Building a public image that is already built does nothing. A Dockerfile's steps that
    were built before (by anyone on the server) are not run again: the output says
    `(cached)`.

    Examples:

        corral image build python

        corral image build -f Dockerfile --name my-env:1 .
    """
    if file is None:
        if target is None:
            fail(f"name the image to build ({_KNOWN}), or give a Dockerfile with -f")
        with reporting_errors():
            build_image(_store(data_dir), target)
        return
    args = {}
    for pair in build_arg or []:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"--build-arg {pair!r}: write KEY=VALUE")
        args[key] = value
    with reporting_errors():
        if file.suffix == ".toml":
            if args:
                fail("--build-arg is for Dockerfiles; a corral.toml has no ARG")
            image = Image.from_toml(file, context=target or ".")
        else:
            image = Image.from_dockerfile(file, context=target or ".", build_args=args)
        console = Console(stderr=True)
        started = time.monotonic()
        steps: list[list[object]] = []  # [line, cached, began, ended]

        def show(line: str) -> None:
            now = time.monotonic()
            if line.startswith("["):
                if steps:
                    steps[-1][3] = now
                cached = line.endswith("(cached)")
                steps.append([line.removesuffix(" (cached)"), cached, now, now])
                style = "dim" if cached else "bold"
                console.print(f"[{style}]{escape(line)}[/] [dim]+{now - started:.1f}s[/]",
                              highlight=False)
            else:
                console.print(f"  {escape(line)}", highlight=False, markup=False)

        with console.status("building...", spinner="dots"):
            info = image.build(name, on_log=show, url=url, api_key=api_key)
    if steps:
        steps[-1][3] = time.monotonic()
    summary = Table(title="steps", show_edge=False)
    for column in ("step", "time", "cache"):
        summary.add_column(column, justify="right" if column == "time" else "left")
    for line, cached, began, ended in steps:
        summary.add_row(escape(str(line))[:90], f"{float(ended) - float(began):.1f}s",  # type: ignore[arg-type]
                        "hit" if cached else "built")
    console.print(summary)
    hits = sum(1 for step in steps if step[1])
    console.print(f"[green]built[/] {info.name or ''} {info.id} "
                  f"({human_size(info.size_bytes)}, {info.layers} layers) in "
                  f"{time.monotonic() - started:.1f} s, {hits}/{len(steps)} steps cached",
                  highlight=False)
    print(info.name or info.id)


@app.command("import")
def import_(
    archive: Annotated[Path, typer.Argument(
        metavar="ARCHIVE", help="A `docker save` tarball or an OCI image layout as a tar "
                                "(gzip allowed).")],
    name: Annotated[str | None, typer.Option(
        "--name", "-t", help="What to call the image, such as base:1.")] = None,
    tag: Annotated[str | None, typer.Option(
        "--tag", help="Which image of the archive, when it holds several.")] = None,
    url: UrlOption = None, api_key: KeyOption = None,
) -> None:
    """Import an image from an OCI archive into the server, to start sandboxes from or to
    build on (`FROM base:1`).

    Example:

        docker save debian:bookworm-slim -o slim.tar   # on a machine with Docker
        corral image import slim.tar --name slim:1
    """
    if not archive.is_file():
        fail(f"{archive}: no such file")

    async def upload() -> models.ImageInfo:
        api = ApiClient(url, api_key)
        try:
            return await import_archive(api, archive, tag=tag, name=name)
        finally:
            await api.aclose()

    with reporting_errors():
        info = portal().call(upload)
    Console(stderr=True).print(f"[green]imported[/] {info.name or ''} {info.id} "
                               f"({human_size(info.size_bytes)}, {info.layers} layers)",
                               highlight=False)
    print(info.name or info.id)


@app.command("ls")
def ls(url: UrlOption = None, api_key: KeyOption = None,
       json_: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False
       ) -> None:
    """List the images you can start sandboxes from on the server (yours and public ones).

    Example:

        corral image ls
    """
    with reporting_errors():
        found = _api(url, api_key, "GET", "/v1/images")
    listing = models.ImageList.model_validate(found)
    if json_:
        print(listing.model_dump_json(indent=2))
        return
    table = Table(title=f"Images ({human_size(listing.used_bytes)} of "
                        f"{human_size(listing.quota_bytes)} used)")
    for column in ("name", "id", "size", "layers", "created"):
        table.add_column(column)
    for info in listing.images:
        table.add_row(info.name or "-", info.id[:19], human_size(info.size_bytes),
                      str(info.layers), info.created_at.isoformat(timespec="seconds")
                      if info.created_at else ("public" if info.public else "-"))
    Console().print(table)


@app.command()
def inspect(
    ref: Annotated[str, typer.Argument(metavar="IMAGE", help="A name or sha256: id.")],
    url: UrlOption = None, api_key: KeyOption = None,
) -> None:
    """Show one image: its steps, environment, working directory, user and command.

    Example:

        corral image inspect my-env:1
    """
    with reporting_errors():
        found = _api(url, api_key, "GET", f"/v1/images/{quote(ref, safe=':')}")
    print(models.ImageInfo.model_validate(found).model_dump_json(indent=2))


@app.command()
def prune(url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Delete built images nobody names any more, and the layers only they used.

    Example:

        corral image prune
    """
    with reporting_errors():
        found = models.PruneInfo.model_validate(_api(url, api_key, "POST", "/v1/images/prune"))
    say(f"removed {found.images} images and {found.layers} layers, "
        f"{human_size(found.bytes_freed)} freed")


def _api(url: str | None, api_key: str | None, method: str, path: str) -> object:
    async def call() -> object:
        api = ApiClient(url, api_key)
        try:
            if method == "DELETE":
                await api.call(method, path)
                return None
            return await api.json(method, path)
        finally:
            await api.aclose()

    return portal().call(call)


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
    url: UrlOption = None, api_key: KeyOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Remove an image: one of yours on the server (its name, or its id and every name of
    it; `corral image prune` then frees the disk), or every local build of a public one
    (do not remove one that running sandboxes use).

    Examples:

        corral image rm my-env:1

        corral image rm minimal
    """
    with reporting_errors():
        if name in BUILTIN_IMAGES:
            _store(data_dir).remove(name)
        elif not (re.fullmatch(models.IMAGE_NAME_PATTERN, name) or is_image_id(name)):
            raise InvalidArgumentError(f"invalid image name {name!r}: use NAME or NAME:TAG "
                                       "(a-z 0-9 . _ -), or a sha256: id")
        else:
            _api(url, api_key, "DELETE", f"/v1/images/{quote(name, safe=':')}")
    say(f"removed image {name}")
