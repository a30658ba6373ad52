"""``corral audit``: the audit log, straight from the data dir's database (every tenant's;
``GET /v1/audit`` shows a tenant its own). Works whether or not the server runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from corral.server.settings import ServerSettings
from corral.server.store import open_engine
from corral.server.store.audit import MAX_LIST, AuditStore

from ._common import DataDirOption, reporting_errors


def _store(data_dir: Path | None) -> AuditStore:
    return AuditStore(open_engine(ServerSettings.from_env(data_dir=data_dir).database_url))


def audit(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's.")]
    = None,
    sandbox: Annotated[str | None, typer.Option("--sandbox", help="Only this sandbox's.")]
    = None,
    action: Annotated[str | None, typer.Option(
        "--action", help="Only this action (sandbox.create, command.run, file.write, ...).")]
    = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_LIST,
                                       help="How many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Who (tenant, key id) did what to which sandbox, when, and how it ended."""
    with reporting_errors():
        records = _store(data_dir).list(tenant, sandbox_id=sandbox, action=action,
                                        limit=limit)
    if as_json:
        for r in records:
            typer.echo(json.dumps({
                "seq": r.seq, "at": r.at.isoformat() if r.at else None, "tenant": r.tenant,
                "key_id": r.key_id, "action": r.action, "sandbox_id": r.sandbox_id,
                "outcome": r.outcome, "status": r.status, "request_id": r.request_id,
                "client": r.client}))
        return
    table = Table("at", "tenant", "key", "action", "sandbox", "outcome", "request")
    for r in records:
        table.add_row(f"{r.at:%Y-%m-%d %H:%M:%S}" if r.at else "", r.tenant, r.key_id or "",
                      r.action, r.sandbox_id or "", r.outcome, r.request_id or "")
    Console().print(table)
