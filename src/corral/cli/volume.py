"""``corral volume``: your volumes on a Corral server, and their files without a sandbox.

The server and key come from ``--url``/``--api-key`` or ``CORRAL_URL``/``CORRAL_API_KEY``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from corral.sdk import Volume

from ._common import human_size, reporting_errors, say
from .sandbox import KeyOption, UrlOption

app = typer.Typer(
    help="Volumes: named storage that outlives sandboxes (CORRAL_URL, CORRAL_API_KEY).\n\n"
         "Example: `corral volume create data --size 10G`, `corral volume put data ./a.csv "
         "/raw/a.csv`, then `corral sandbox create --volume /data=data`.",
    no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})

NameArg = Annotated[str, typer.Argument(metavar="VOLUME", help="The volume's name.")]


@app.command()
def create(name: NameArg,
           size: Annotated[str, typer.Option("--size", "-s", help="Its quota: 512M, 10G, "
                                             "or MiB as a number.")] = "1G",
           url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Create an empty volume.

    Example:

        corral volume create data --size 10G
    """
    with reporting_errors():
        volume = Volume.create(name, size=size, url=url, api_key=api_key)
        volume.close()
    say(f"volume {name} created ({volume.info.size_mib} MiB)")


@app.command("ls")
def ls(url: UrlOption = None, api_key: KeyOption = None,
       json_: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False
       ) -> None:
    """List your volumes, their use and the sandboxes mounting them."""
    with reporting_errors():
        volumes = Volume.list(url=url, api_key=api_key)
    if json_:
        print("[" + ",".join(v.model_dump_json() for v in volumes) + "]")
        return
    table = Table(title="Volumes")
    for column in ("name", "size", "used", "mounted by", "created"):
        table.add_column(column)
    for info in volumes:
        table.add_row(info.name, human_size(info.size_mib * 1024 * 1024),
                      human_size(info.used_bytes), ", ".join(info.in_use_by) or "-",
                      info.created_at.isoformat(timespec="seconds"))
    Console().print(table)


@app.command("rm")
def remove(name: NameArg, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Delete a volume and its files (refused while a sandbox mounts it)."""
    with reporting_errors():
        with Volume.from_name(name, url=url, api_key=api_key) as volume:
            volume.delete()
    say(f"volume {name} deleted")


@app.command()
def put(name: NameArg,
        local: Annotated[Path, typer.Argument(help="A local file, or - for stdin.")],
        remote: Annotated[str, typer.Argument(help="Its path in the volume.")],
        url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Copy a local file into a volume (no sandbox needed).

    Example:

        corral volume put data ./a.csv /raw/a.csv
    """
    with reporting_errors():
        with Volume.from_name(name, url=url, api_key=api_key) as volume:
            if str(local) == "-":
                size = volume.files.write(remote, iter(lambda: sys.stdin.buffer.read(1 << 20),
                                                       b""))
            else:
                with open(local, "rb") as source:
                    size = volume.files.write(remote, iter(lambda: source.read(1 << 20), b""))
    say(f"wrote {human_size(size)} to {name}:{remote}")


@app.command()
def get(name: NameArg,
        remote: Annotated[str, typer.Argument(help="A file's path in the volume.")],
        local: Annotated[Path | None, typer.Argument(help="Where to write it (default: "
                                                          "stdout).")] = None,
        url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Copy a file out of a volume (no sandbox needed).

    Example:

        corral volume get data /raw/a.csv ./a.csv
    """
    with reporting_errors():
        with Volume.from_name(name, url=url, api_key=api_key) as volume:
            if local is None:
                for chunk in volume.files.read_stream(remote):
                    sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                return
            with open(local, "wb") as target:
                for chunk in volume.files.read_stream(remote):
                    target.write(chunk)


@app.command()
def files(name: NameArg,
          path: Annotated[str, typer.Argument(help="A folder in the volume.")] = "/",
          depth: Annotated[int, typer.Option("--depth", "-d", min=1, max=16)] = 1,
          url: UrlOption = None, api_key: KeyOption = None) -> None:
    """List a folder of a volume (no sandbox needed)."""
    with reporting_errors():
        with Volume.from_name(name, url=url, api_key=api_key) as volume:
            entries = volume.files.list(path, depth)
    for entry in entries:
        kind = "/" if entry.type == "dir" else ("@" if entry.type == "symlink" else "")
        print(f"{entry.size:>12}  {entry.path}{kind}")
