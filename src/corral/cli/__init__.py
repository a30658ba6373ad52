"""The ``corral`` command line: one thin module per command group.

    corral run -- python3 -c 'print(2 + 2)'    # a command in a throwaway sandbox
    corral doctor                               # what works on this host
    corral image build python                   # build an image
    corral bench --quick                        # measure start-up against bare runsc/bwrap
    corral serve                                # the HTTP API (see corral keys create)
    corral sandbox create | list | exec | kill  # sandboxes on that server
    corral snapshot create | ls | rm            # sandboxes kept as they are, to start from
    corral audit                                # who did what to which sandbox
    corral mcp                                  # sandbox tools for MCP clients (stdio)
    corral node join | ls | cordon | drain      # the nodes of a cluster on Ray
"""

from __future__ import annotations

import logging

import typer

from corral import __version__

from . import (audit, bench, doctor, image, keys, mcp, node, run, sandbox, serve, snapshot,
               volume)

__all__ = ["app", "main"]

app = typer.Typer(
    name="corral",
    help="Corral runs untrusted code in sandboxes on this host (gVisor or Linux namespaces).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
app.command(context_settings={"allow_interspersed_args": False})(run.run)
app.command()(doctor.doctor)
app.command()(bench.bench)
app.add_typer(image.app, name="image")
app.command()(serve.serve)
app.add_typer(keys.app, name="keys")
app.command()(audit.audit)
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(volume.app, name="volume")
app.add_typer(snapshot.app, name="snapshot")
app.command()(mcp.mcp)
app.add_typer(node.app, name="node")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"corral {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Corral runs untrusted code in sandboxes on this host (gVisor or Linux namespaces).

    Start with `corral doctor`, then `corral run -- CMD`.
    """


def main() -> None:
    """Entry point of the ``corral`` console script."""
    # The library logs and never adds handlers; the command line is where they belong.
    logging.basicConfig(level=logging.WARNING, format="corral: %(levelname)s: %(message)s")
    app()
