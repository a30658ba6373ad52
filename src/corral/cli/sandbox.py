"""``corral sandbox create | list (ls) | top | exec | run-code | network | logs | ports | url |
pause | resume | snapshot | fork | kill``: sandboxes on a Corral server.

The server and key come from ``--url``/``--api-key`` or ``CORRAL_URL``/``CORRAL_API_KEY``.
Unlike ``corral run``, a created sandbox outlives the command: it lives until ``kill``, its
``--timeout`` or its ``--idle-timeout`` (which can pause it instead: ``--on-idle pause``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Annotated, BinaryIO

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from corral.api.agent_protocol import REASON_TIMEOUT
from corral.api.limits import DEFAULT_CODE_TIMEOUT, DEFAULT_COMMAND_TIMEOUT, DEFAULT_LIFETIME
from corral.api.models import TIMEOUT_ERROR, LifetimeAction, network_spec
from corral.sdk import Sandbox


from . import _top
from ._common import EXIT_CORRAL_ERROR, EXIT_TIMEOUT, reporting_errors, say
from .run import parse_env, parse_net

app = typer.Typer(
    help="Sandboxes on a Corral server (CORRAL_URL, CORRAL_API_KEY).\n\n"
         "Example: `id=$(corral sandbox create --meta job=demo)`, then "
         "`corral sandbox exec $id -- python3 -V`, `corral sandbox list --meta job=demo`, "
         "`corral sandbox kill $id`.",
    no_args_is_help=True)

UrlOption = Annotated[str | None, typer.Option(
    "--url", envvar="CORRAL_URL", show_default="http://127.0.0.1:8470",
    help="The Corral server (env CORRAL_URL).")]
KeyOption = Annotated[str | None, typer.Option(
    "--api-key", envvar="CORRAL_API_KEY", show_default=False, show_envvar=True,
    help="API key (env CORRAL_API_KEY); `corral keys create` makes one.")]
MetaOption = Annotated[list[str] | None, typer.Option(
    "--meta", "-m", metavar="KEY=VALUE", show_default=False,
    help="Metadata label (repeatable).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead.")]
NetOption = Annotated[list[str] | None, typer.Option(
    "--net", metavar="POLICY", show_default=False,
    help="Network policy: none, all, or allow:ENTRY,... and deny:ENTRY,... (repeatable; "
         "deny wins) of IPs and CIDRs, each optionally with :PORT.")]


@contextlib.contextmanager
def _connected(sandbox_id: str, url: str | None, api_key: str | None) -> Iterator[Sandbox]:
    """An existing sandbox, its connection closed (the sandbox left running) at the end."""
    sb = Sandbox.connect(sandbox_id, url=url, api_key=api_key)
    try:
        yield sb
    finally:
        sb.close()


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    try:
        return parse_env(values)
    except typer.BadParameter as exc:
        raise typer.BadParameter(exc.message, param_hint=option) from None


@app.command()
def create(
    image: Annotated[str | None, typer.Option(
        show_default="python", help="A built image on the server.")] = None,
    timeout: Annotated[float, typer.Option(
        help="Seconds the sandbox lives, unless killed first.")] = DEFAULT_LIFETIME,
    idle_timeout: Annotated[float | None, typer.Option(
        show_default="never",
        help="Stop (or, with --on-idle pause, pause) it after this many seconds in which "
             "nothing used it.")] = None,
    on_idle: Annotated[LifetimeAction, typer.Option(
        help="What --idle-timeout does: kill, or pause (any later call resumes it).")
    ] = "kill",
    on_timeout: Annotated[LifetimeAction, typer.Option(
        help="What the end of --timeout does: kill, or pause (a resume gives it its whole "
             "timeout again).")] = "kill",
    paused_ttl: Annotated[float | None, typer.Option(
        show_default="the server's, CORRAL_PAUSED_TTL",
        help="Seconds it may stay paused before it is killed.")] = None,
    runtime: Annotated[str | None, typer.Option(
        "--runtime", "-r", show_default="the server's strongest",
        help="gvisor or namespaces.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory limit, e.g. 1G.")] = None,
    cpus: Annotated[float | None, typer.Option(help="CPU time, in cores.")] = None,
    gpu: Annotated[str | None, typer.Option(
        "--gpu", metavar="COUNT|MODEL[:COUNT]", show_default=False,
        help="NVIDIA GPUs it has to itself: 1, H200 or H200:2 (docs/gpu.md).")] = None,
    env: Annotated[list[str] | None, typer.Option(
        "--env", "-e", metavar="KEY=VALUE", show_default=False,
        help="Environment variable of every command (repeatable).")] = None,
    meta: MetaOption = None,
    net: NetOption = None,
    public_port: Annotated[list[int] | None, typer.Option(
        "--public-port", metavar="PORT", show_default=False,
        help="A port anyone may reach through the server without a credential "
             "(repeatable; default: every port needs one).")] = None,
    volume: Annotated[list[str] | None, typer.Option(
        "--volume", "-v", metavar="PATH=VOLUME[:ro]", show_default=False,
        help="Mount one of your volumes at PATH, read-only with :ro (repeatable).")] = None,
    snapshot: Annotated[str | None, typer.Option(
        "--snapshot", metavar="SNAPSHOT_ID", show_default=False,
        help="Start from one of your snapshots (`corral snapshot ls`). One with memory goes "
             "on where its sandbox was, with its image, runtime, resources, env, network "
             "and volumes (those options may not be given); a files-only one starts "
             "on its files.")] = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Start a sandbox and print its id (it keeps running after this command).

    Examples:

        corral sandbox create --meta job=demo --timeout 600

        corral sandbox create --image python --memory 1G --json

        corral sandbox create --runtime namespaces --gpu 1

        corral sandbox create --net allow:198.51.100.0/24:443 --net deny:198.51.100.7

        corral sandbox create --volume /data=datasets --volume /models=weights:ro

        corral sandbox create --snapshot snap-0123456789abcdef --timeout 600
        corral sandbox create --idle-timeout 300 --on-idle pause --paused-ttl 86400
    """
    resources = {k: v for k, v in (("memory", memory), ("cpus", cpus)) if v is not None}
    mounts: dict[str, object] = {}
    for path, name in _pairs(volume, "'--volume'").items():
        read_only = name.endswith(":ro")
        mounts[path] = {"volume": name.removesuffix(":ro"), "read_only": read_only}
    # Options left out are not sent: a memory snapshot's sandbox keeps its own.
    policy = network_spec(parse_net(net)) if net else None
    with reporting_errors():
        sb = Sandbox.create(image, timeout=timeout, runtime=runtime, resources=resources,
                            gpu=int(gpu) if gpu is not None and gpu.isdigit() else gpu,
                            idle_timeout=idle_timeout, on_idle=on_idle,
                            on_timeout=on_timeout, paused_ttl=paused_ttl,
                            env=_pairs(env, "'--env'"),
                            metadata=_pairs(meta, "'--meta'") if meta else None,
                            network=policy, public_ports=public_port or (), volumes=mounts,
                            snapshot=snapshot, url=url, api_key=api_key)
        sb.close()  # leaves it running
    typer.echo(sb.info.model_dump_json(indent=2) if as_json else sb.id)


@app.command("list")
@app.command("ls", hidden=True)
def list_(
    meta: MetaOption = None,
    state: Annotated[str | None, typer.Option(
        help="Only sandboxes in this state: starting, running, paused, stopping, stopped.")] = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """List your sandboxes, newest first, with their state and why (``ls`` does the same);
    --meta filters by labels (all must match).

    Examples:

        corral sandbox list --state running

        corral sandbox list --meta job=demo --json
    """
    with reporting_errors():
        found = Sandbox.list(metadata=_pairs(meta, "'--meta'"), state=state, url=url,
                             api_key=api_key)
    if as_json:
        typer.echo(json.dumps([json.loads(sb.model_dump_json()) for sb in found], indent=2))
        return
    table = Table("id", "state", "reason", "image", "runtime", "created", "expires",
                  "metadata")
    table.columns[0].no_wrap = True
    for sb in found:
        table.add_row(sb.id, sb.state, sb.state_reason or "", sb.image, sb.runtime,
                      f"{sb.created_at:%Y-%m-%d %H:%M:%S}", f"{sb.expires_at:%H:%M:%S}",
                      " ".join(f"{k}={v}" for k, v in sorted(sb.metadata.items())))
    Console().print(table)


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_(
    sandbox_id: Annotated[str, typer.Argument(help="The sandbox's id.")],
    command: Annotated[list[str], typer.Argument(
        metavar="CMD", show_default=False,
        help="The command and its arguments, as an argv list; put `--` before it.")],
    timeout: Annotated[float, typer.Option(
        help="Seconds before the command is killed (exit 124).")] = DEFAULT_COMMAND_TIMEOUT,
    env: Annotated[list[str] | None, typer.Option(
        "--env", "-e", metavar="KEY=VALUE", show_default=False,
        help="Environment variable (repeatable).")] = None,
    workdir: Annotated[str | None, typer.Option(
        "--workdir", "-w", metavar="DIR", help="Working directory.")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="User name or uid.")] = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Run a command in a sandbox, streaming its output; exit with its status.

    The command's stdout and stderr go to ours as they arrive. Exits 124 when --timeout
    killed it, 125 when Corral failed.

    Examples:

        corral sandbox exec sbx-0123abcd4567 -- python3 -c 'print(2 + 2)'

        corral sandbox exec $id -- sh -c 'ls /work; exit 3'; echo $?
    """
    if command[:1] == ["--"]:  # after the id, click passes `--` on as an argument
        command = command[1:]
    if not command:
        raise typer.BadParameter("no command after the sandbox id", param_hint="CMD")
    with reporting_errors():
        with _connected(sandbox_id, url, api_key) as sb:
            with sb.commands.start(command, env=_pairs(env, "'--env'"), cwd=workdir,
                                   user=user, timeout=timeout) as handle:
                sinks: dict[str, BinaryIO] = {"stdout": sys.stdout.buffer,
                                              "stderr": sys.stderr.buffer}
                for chunk in handle:
                    sinks[chunk.stream].write(chunk.data)
                    sinks[chunk.stream].flush()
                result = handle.wait()
    if result.reason == REASON_TIMEOUT:
        say(f"command timed out after {timeout:g} s and was killed")
        raise typer.Exit(EXIT_TIMEOUT)
    if result.reason:
        say(result.reason)
    raise typer.Exit(result.exit_code if 0 <= result.exit_code <= 255 else EXIT_CORRAL_ERROR)


@app.command("run-code")
def run_code(
    sandbox_id: Annotated[str, typer.Argument(help="The sandbox's id.")],
    code: Annotated[str, typer.Argument(
        metavar="CODE", help="The cell to run; `-` reads it from stdin.")],
    context: Annotated[str | None, typer.Option(
        "--context", "-c", show_default="default",
        help="A context id (`corral sandbox run-code` uses the sandbox's default one).")] = None,
    language: Annotated[str | None, typer.Option(
        help="Language: python, or bash (its default context is default-bash).")] = None,
    timeout: Annotated[float, typer.Option(
        help="Seconds before the cell is interrupted (exit 124).")] = DEFAULT_CODE_TIMEOUT,
    json_out: JsonOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Run a cell in a stateful context (Jupyter for Python, a shell for Bash), streaming
    its output.

    Prints stdout and stderr as they arrive, then the text of each result (the cell's
    value last) and the error's traceback if it raised. Exits 1 when the cell raised (or,
    in Bash, its last command failed), 124 when it timed out (its context keeps its
    state), 125 when Corral failed.

    Examples:

        corral sandbox run-code $id 'import pandas as pd; df = pd.DataFrame({"a": [1, 2]})'

        corral sandbox run-code $id 'df.a.sum()'          # 3: the context kept df

        echo 'print(2 + 2)' | corral sandbox run-code $id -

        corral sandbox run-code --language bash $id 'cd /tmp && ls | wc -l'
    """
    if code == "-":
        code = sys.stdin.read()
    with reporting_errors():
        with _connected(sandbox_id, url, api_key) as sb:
            def echo(stream: BinaryIO) -> Callable[[str], None]:
                def write(text: str) -> None:
                    stream.write(text.encode())
                    stream.flush()
                return write

            execution = sb.run_code(
                code, context=context, language=language, timeout=timeout,
                on_stdout=None if json_out else echo(sys.stdout.buffer),
                on_stderr=None if json_out else echo(sys.stderr.buffer))
    if json_out:
        typer.echo(execution.model_dump_json(indent=2))
    else:
        for result in execution.results:
            text = result.text if result.text is not None else f"<{', '.join(result.formats())}>"
            typer.echo(text)
        if execution.error is not None:
            say(execution.error.traceback or f"{execution.error.name}: {execution.error.value}")
    error = execution.error
    if error is not None and error.name == TIMEOUT_ERROR:
        raise typer.Exit(EXIT_TIMEOUT)
    raise typer.Exit(1 if error is not None else 0)


@app.command()
def network(
    sandbox_id: Annotated[str, typer.Argument(metavar="ID", help="Sandbox id.")],
    net: NetOption = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Show a running sandbox's network policy, or replace it with --net.

    New connections see a new policy at once; open ones go on. Only a sandbox created with
    a policy other than none has an interface to open.

    Examples:

        corral sandbox network sbx-0123abcd4567

        corral sandbox network sbx-0123abcd4567 --net allow:203.0.113.10:443

        corral sandbox network sbx-0123abcd4567 --net none
    """
    policy = parse_net(net) if net else None
    with reporting_errors():
        with _connected(sandbox_id, url, api_key) as sb:
            info = sb.network.update(network_spec(policy)) if policy else sb.network.get()
    shown = info.network if isinstance(info.network, str) else info.network.model_dump()
    typer.echo(json.dumps(shown))


@app.command()
def logs(
    sandbox_id: Annotated[str, typer.Argument(metavar="ID", help="Sandbox id.")],
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Show a sandbox's egress log: the names it looked up and connected to, oldest first,
    allowed or why not (the last 1000).

    Example:

        corral sandbox logs sbx-0123abcd4567
    """
    with reporting_errors():
        with _connected(sandbox_id, url, api_key) as sb:
            events = sb.network.events().events
    if as_json:
        typer.echo(json.dumps([json.loads(e.model_dump_json()) for e in events], indent=2))
        return
    table = Table("time", "kind", "name", "port", "address", "verdict")
    for event in events:
        table.add_row(f"{event.at:%H:%M:%S}", event.kind, event.name,
                      "" if event.port is None else str(event.port), event.address or "",
                      event.reason)
    Console().print(table)


@app.command()
def ports(
    sandbox_id: Annotated[str, typer.Argument(metavar="ID", help="Sandbox id.")],
    public: Annotated[list[int] | None, typer.Option(
        "--public", metavar="PORT", show_default=False,
        help="Make exactly these ports public (repeatable); see --private.")] = None,
    private: Annotated[bool, typer.Option(
        "--private", help="Make every port private again (a credential for each).")] = False,
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Show how a sandbox's ports are reached (its port token, its public ports), or change
    which are public.

    Examples:

        corral sandbox ports sbx-0123abcd4567

        corral sandbox ports sbx-0123abcd4567 --public 8000

        corral sandbox ports sbx-0123abcd4567 --private
    """
    if public and private:
        say("[red]error:[/] give --public PORT... or --private, not both")
        raise typer.Exit(EXIT_CORRAL_ERROR)
    with reporting_errors():
        with _connected(sandbox_id, url, api_key) as sb:
            info = (sb.ports.set_public(public or []) if public or private
                    else sb.ports.get())
    if as_json:
        typer.echo(info.model_dump_json(indent=2))
        return
    typer.echo(f"token:  {info.token}")
    typer.echo(f"public: {', '.join(map(str, info.public)) or 'none'}")
    typer.echo(f"urls:   corral sandbox url {sandbox_id} PORT [--host] [--signed SECONDS]")


@app.command("url")
def url_(
    sandbox_id: Annotated[str, typer.Argument(metavar="ID", help="Sandbox id.")],
    port: Annotated[int, typer.Argument(metavar="PORT", help="A port the sandbox's app "
                                        "listens on (0.0.0.0 or 127.0.0.1).")],
    host: Annotated[bool, typer.Option(
        "--host", help="A host-based URL, {port}-{id}.{domain}: an origin of its own, for "
                       "web apps in a browser.")] = False,
    signed: Annotated[float | None, typer.Option(
        "--signed", metavar="SECONDS", show_default=False,
        help="A signed URL that works without any other credential for SECONDS "
             "(at most a day).")] = None,
    with_token: Annotated[bool, typer.Option(
        "--token", help="Add ?token= with the port token (a browser's first visit; "
                        "it then holds a cookie).")] = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Print the URL of an app listening in a sandbox, reached through the server.

    Examples:

        corral sandbox url sbx-0123abcd4567 8000

        curl -H "X-Corral-Port-Token: $TOKEN" $(corral sandbox url sbx-0123abcd4567 8000)

        corral sandbox url sbx-0123abcd4567 8000 --host --signed 600
    """
    with reporting_errors():
        with _connected(sandbox_id, url, api_key) as sb:
            if signed is not None:
                link = sb.ports.signed_url(port, expires_in=signed, host_based=host)
            else:
                link = sb.ports.url(port, host_based=host)
                if with_token:
                    link += f"?token={sb.ports.token}"
    typer.echo(link)


@app.command()
def pause(
    sandbox_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Sandbox ids.")],
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Pause sandboxes: memory, processes and files kept, lifetime clock stopped. Any later
    call on one (or `corral sandbox resume`) resumes it.

    Example:

        corral sandbox pause sbx-0123abcd4567
    """
    with reporting_errors():
        for sandbox_id in sandbox_ids:
            sb = Sandbox.connect(sandbox_id, url=url, api_key=api_key)
            try:
                sb.pause()
            finally:
                sb.close()
            say(f"paused {sandbox_id}")


@app.command()
def resume(
    sandbox_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Sandbox ids.")],
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Resume paused sandboxes.

    Example:

        corral sandbox resume sbx-0123abcd4567
    """
    with reporting_errors():
        for sandbox_id in sandbox_ids:
            with _connected(sandbox_id, url, api_key):  # connecting resumes it
                pass
            say(f"resumed {sandbox_id}")


@app.command()
def snapshot(
    sandbox_id: Annotated[str, typer.Argument(metavar="ID", help="Sandbox id.")],
    name: Annotated[str | None, typer.Option(
        "--name", "-t", help="What to call the image, such as after-setup:1.")] = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Keep a running sandbox's files as an image of yours (it runs on); prints the name or
    id to start sandboxes from.

    Example:

        corral sandbox snapshot sbx-0123abcd4567 --name after-setup:1
    """
    with reporting_errors():
        with _connected(sandbox_id, url, api_key) as sb:
            info = sb.snapshot_filesystem(name)
    typer.echo(info.name or info.id)


@app.command()
def fork(
    sandbox_id: Annotated[str, typer.Argument(metavar="SANDBOX_ID", help="Sandbox id.")],
    count: Annotated[int, typer.Option(
        "--count", "-n", min=1, max=16, help="How many copies, 1 to 16.")] = 1,
    timeout: Annotated[float | None, typer.Option(
        show_default="what the sandbox has left",
        help="Seconds each copy lives, unless killed first.")] = None,
    meta: MetaOption = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Copy a running sandbox (it runs on) and print the copies' ids, one a line.

    Each copy has its memory, processes (a code context's variables too) and files as they
    were at that instant, and its own id, port token and files from then on. gVisor only.
    --meta gives the copies these labels instead of the sandbox's.

    Examples:

        corral sandbox fork sbx-0123abcd4567 -n 4

        for copy in $(corral sandbox fork $id -n 3); do corral sandbox exec $copy -- ls; done
    """
    with reporting_errors():
        with _connected(sandbox_id, url, api_key) as sb:
            copies = sb.fork(count, timeout=timeout,
                             metadata=_pairs(meta, "'--meta'") if meta else None)
        for copy in copies:
            copy.close()  # leaves it running
    if as_json:
        typer.echo(json.dumps([json.loads(c.info.model_dump_json()) for c in copies],
                              indent=2))
        return
    for copy in copies:
        typer.echo(copy.id)


@app.command()
def kill(
    sandbox_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Sandbox ids.")],
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Stop sandboxes now (killing a stopped one is not an error).

    Example:

        corral sandbox kill sbx-0123abcd4567
    """
    with reporting_errors():
        for sandbox_id in sandbox_ids:
            with _connected(sandbox_id, url, api_key) as sb:
                sb.kill()
            say(f"killed {sandbox_id}")



@app.command()
def top(
    meta: MetaOption = None,
    interval: Annotated[float, typer.Option(
        min=0.5, max=3600,
        help="Seconds between two refreshes (the server samples every "
             "CORRAL_METRICS_INTERVAL seconds, 5 by default).")] = 5.0,
    once: Annotated[bool, typer.Option(
        "--once", help="Print the table once and exit (for scripts).")] = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """A live table of your running and paused sandboxes: CPU % (of each one's cores),
    memory and disk (used/limit), pids and network bytes (received/sent), from the samples
    the server takes (CORRAL_METRICS_INTERVAL). Ctrl-C leaves. Watching is not activity:
    it keeps no sandbox from its idle timeout, and wakes no paused one.

    Examples:

        corral sandbox top

        corral sandbox top --meta job=demo --once
    """
    labels = _pairs(meta, "'--meta'")

    def frame() -> Table:
        found = [sb for sb in Sandbox.list(metadata=labels, url=url, api_key=api_key)
                 if sb.state in ("running", "paused")]
        latest = Sandbox.list_metrics([sb.id for sb in found], url=url, api_key=api_key)
        return _top.table(found, latest, title=f"{len(found)} sandboxes")

    with reporting_errors():
        if once:
            Console().print(frame())
            return
        with contextlib.suppress(KeyboardInterrupt), \
                Live(frame(), auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame(), refresh=True)
