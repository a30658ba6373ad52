"""``corral keys create | list | revoke``: API keys, straight on the data dir's database.

They work whether or not the server runs; a revoked key fails on the server's next request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from corral.server.settings import ServerSettings
from corral.server.store import KeyStore, open_engine

from ._common import DataDirOption, reporting_errors, say

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


def _keys(data_dir: Path | None) -> KeyStore:
    return KeyStore(open_engine(ServerSettings.from_env(data_dir=data_dir).database_url))


@app.command()
def create(
    tenant: Annotated[str, typer.Option("--tenant", help="Whose key (made if new).")]
    = "default",
    e2b: Annotated[bool, typer.Option(
        "--e2b", help="In the form the e2b SDK accepts (e2b_ and hex; releases 2.25 to 2.45 "
        "refuse any other); it works everywhere a Corral key does.")] = False,
    operator: Annotated[bool, typer.Option(
        "--operator", help="It may also read every tenant's audit records and the node's "
        "pools (GET /v1/audit?all_tenants=true, GET /v1/pools, the console's operator "
        "pages).")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Make a key for a tenant and print it, once: only its hash is kept.

    Example::

        corral keys create --tenant team-a
        corral keys create --tenant team-a --e2b
        corral keys create --tenant ops --operator
    """
    with reporting_errors():
        key = _keys(data_dir).create(tenant, e2b=e2b, operator=operator)
    role = " (operator)" if key.operator else ""
    say(f"created {key.id} for tenant {key.tenant}{role}; it is shown only now:")
    typer.echo(key.key)


@app.command("list")
def list_(data_dir: DataDirOption = None) -> None:
    """List keys (id, tenant, last 4 characters, operator, created, revoked)."""
    with reporting_errors():
        keys = _keys(data_dir).list()
    table = Table("id", "tenant", "key", "operator", "created", "revoked")
    for k in keys:
        table.add_row(k.id, k.tenant, f"…{k.last4}", "yes" if k.operator else "",
                      f"{k.created_at:%Y-%m-%d %H:%M}",
                      f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
    Console().print(table)


@app.command()
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id, e.g. key-0123abcd4567.")],
           data_dir: DataDirOption = None) -> None:
    """Revoke a key; requests with it fail from now on."""
    with reporting_errors():
        _keys(data_dir).revoke(key_id)
    say(f"revoked {key_id}")
