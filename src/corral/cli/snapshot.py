"""``corral snapshot``: your snapshots of sandboxes on a Corral server.

A snapshot keeps a running sandbox as it is (it runs on): with memory (gVisor only) its
processes, variables and files, so that ``corral sandbox create --snapshot ID`` goes on
where it was; with ``--files-only`` its files alone (any runtime). The server and key come
from ``--url``/``--api-key`` or ``CORRAL_URL``/``CORRAL_API_KEY``.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from corral.api.models import SnapshotInfo
from corral.sdk import Snapshot

from ._common import human_size, reporting_errors, say
from .sandbox import JsonOption, KeyOption, UrlOption, _connected

app = typer.Typer(
    help="Snapshots: a sandbox kept as it is, to start sandboxes from (CORRAL_URL, "
         "CORRAL_API_KEY).\n\n"
         "Example: `snap=$(corral snapshot create $id)`, then "
         "`corral sandbox create --snapshot $snap`, `corral snapshot ls`, "
         "`corral snapshot rm $snap`.",
    no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})

SnapshotArg = Annotated[str, typer.Argument(metavar="SNAPSHOT_ID",
                                            help="The snapshot's id (snap-...).")]


@app.command()
def create(
    sandbox_id: Annotated[str, typer.Argument(metavar="SANDBOX_ID", help="Sandbox id.")],
    name: Annotated[str | None, typer.Option(
        "--name", "-n", help="A label of yours (letters, digits, ._-; not unique).")] = None,
    files_only: Annotated[bool, typer.Option(
        "--files-only", help="Keep its files alone (any runtime), not its memory and "
                             "processes (gVisor only).")] = False,
    ttl: Annotated[float | None, typer.Option(
        metavar="SECONDS", show_default="the server's, 7 days",
        help="Seconds it is kept, 60 to 7776000 (90 days).")] = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Snapshot a running sandbox (it runs on) and print the snapshot's id.

    By default its memory, processes (a code context's variables too) and files are kept:
    gVisor only (--files-only works on any runtime). A memory snapshot holds whatever
    the sandbox's memory held, secrets included.

    Examples:

        corral snapshot create sbx-0123abcd4567 --name after-setup

        corral snapshot create sbx-0123abcd4567 --files-only --ttl 3600

        corral sandbox create --snapshot $(corral snapshot create sbx-0123abcd4567)
    """
    with reporting_errors():
        with _connected(sandbox_id, url, api_key) as sb:
            info = sb.snapshot(name, memory=not files_only, ttl=ttl)
    typer.echo(info.model_dump_json(indent=2) if as_json else info.id)


@app.command("ls")
def ls(as_json: JsonOption = False, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """List your snapshots, oldest first.

    Example:

        corral snapshot ls --json
    """
    with reporting_errors():
        found = Snapshot.list(url=url, api_key=api_key)
    if as_json:
        typer.echo(json.dumps([json.loads(s.model_dump_json()) for s in found], indent=2))
        return
    table = Table("id", "name", "kind", "sandbox", "runtime", "size", "created", "expires")
    table.columns[0].no_wrap = True
    for info in found:
        table.add_row(*_row(info))
    Console().print(table)


@app.command()
def get(snapshot_id: SnapshotArg, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Print a snapshot's description as JSON.

    Example:

        corral snapshot get snap-0123456789abcdef
    """
    with reporting_errors():
        info = Snapshot.get(snapshot_id, url=url, api_key=api_key)
    typer.echo(info.model_dump_json(indent=2))


@app.command("rm")
def remove(
    snapshot_ids: Annotated[list[str], typer.Argument(
        metavar="SNAPSHOT_ID...", help="Snapshot ids (snap-...).")],
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Delete snapshots and free their disk; sandboxes started from them run on.

    Example:

        corral snapshot rm snap-0123456789abcdef
    """
    with reporting_errors():
        for snapshot_id in snapshot_ids:
            Snapshot.delete(snapshot_id, url=url, api_key=api_key)
            say(f"deleted {snapshot_id}")


def _row(info: SnapshotInfo) -> tuple[str, ...]:
    return (info.id, info.name or "", "memory" if info.memory else "files",
            info.sandbox_id, info.runtime, human_size(info.size_bytes),
            f"{info.created_at:%Y-%m-%d %H:%M:%S}", f"{info.expires_at:%Y-%m-%d %H:%M:%S}")
