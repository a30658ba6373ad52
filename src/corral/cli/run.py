"""``corral run``: one command in a throwaway sandbox, like ``docker run --rm``.

With ``CORRAL_URL`` set the sandbox is made on that server, through the SDK (key from
``CORRAL_API_KEY``, CA from ``CORRAL_CA_FILE``); otherwise on a node private to this
process. Either is a :class:`corral.api.contract.SandboxContract`: everything after the choice
(streaming, stdin, exit statuses) is one path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, BinaryIO

import typer

from corral.api import agent_protocol as proto
from corral.api import contract, models
from corral.api.errors import InvalidArgumentError, SandboxError, SandboxNotRunningError
from corral.api.network import NetworkPolicy
from corral.api.resources import Resources, check_timeout
from corral.node import Node, NodeSettings
from corral.node.images import ImageStore
from corral.runtime import RUNTIME_NAMES
from corral.sdk import AsyncSandbox

from ._common import (
    EXIT_CORRAL_ERROR,
    EXIT_TIMEOUT,
    DataDirOption,
    ensure_image,
    node_settings,
    private_node,
    reporting_errors,
    say,
)

#: The sandbox outlives the command's timeout by this much, so the command's own timeout,
#: not the sandbox's, is what ends a runaway command.
LIFETIME_SLACK = 30.0
STDIN_CHUNK = 64 * 1024
EXIT_LIMIT_KILLED = 128 + signal.SIGKILL
EXIT_TERMINATED = 128 + signal.SIGTERM
#: How the node words a stop caused by a limit (see ``Runtime.limit_hit``).
LIMIT_REASONS = ("killed:", "pids limit")
#: Metadata of the sandboxes ``corral run`` makes on a server, to tell them apart.
REMOTE_METADATA = {"created-by": "corral-run"}


@dataclass(frozen=True)
class RunRequest:
    argv: list[str]
    image: str
    runtime: str | None
    resources: Resources
    timeout: float
    env: dict[str, str]
    workdir: str | None
    user: str | None
    interactive: bool
    network: NetworkPolicy = NetworkPolicy()


def parse_net(values: list[str] | None) -> NetworkPolicy:
    """``--net`` values -> a policy: ``none``, ``all``, or ``allow:A,B`` and ``deny:C``
    (repeatable, lists add up); a bad one is a usage error naming it."""
    try:
        return NetworkPolicy.parse_flags(values or ())
    except InvalidArgumentError as exc:
        raise typer.BadParameter(exc.message, param_hint="'--net'") from None


def parse_env(values: list[str] | None) -> dict[str, str]:
    """``["A=1", "B=x=y"]`` -> ``{"A": "1", "B": "x=y"}``; anything else is a usage error."""
    env: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="'-e' / '--env'")
        env[key] = value
    return env


def _check_runtime(value: str | None) -> str | None:
    if value is not None and value not in RUNTIME_NAMES:
        raise typer.BadParameter(
            f"unknown runtime {value!r}; choose one of: {', '.join(RUNTIME_NAMES)}")
    return value


def run(
    command: Annotated[list[str], typer.Argument(
        metavar="CMD", show_default=False,
        help="The command and its arguments, run as an argv list (no shell). Put `--` "
             "before it when it has options of its own.")],
    runtime: Annotated[str | None, typer.Option(
        "--runtime", "-r", callback=_check_runtime, show_default="the strongest that works",
        help=f"Isolation backend: {' or '.join(RUNTIME_NAMES)}.")] = None,
    image: Annotated[str, typer.Option(
        "--image", help="Image to run; built first if it is not built yet.")] = "python",
    memory: Annotated[str, typer.Option(help="Memory limit, e.g. 512M or 2G.")] = "512M",
    cpus: Annotated[float, typer.Option(help="CPU time, in cores (0.5 = half a core).")] = 1.0,
    pids: Annotated[int, typer.Option(help="Most processes and threads at once.")] = 512,
    disk: Annotated[str, typer.Option(help="Size of the writable layer, e.g. 1G.")] = "1G",
    timeout: Annotated[float, typer.Option(
        help="Seconds before the command and all its children are killed (exit 124).")] = 30.0,
    env: Annotated[list[str] | None, typer.Option(
        "--env", "-e", metavar="KEY=VALUE", show_default=False,
        help="Set an environment variable (repeatable).")] = None,
    workdir: Annotated[str | None, typer.Option(
        "--workdir", "-w", metavar="DIR", show_default="the image's, /work",
        help="Working directory inside the sandbox.")] = None,
    user: Annotated[str | None, typer.Option(
        "--user", "-u", show_default="root", help="User name or uid inside the sandbox.")] = None,
    interactive: Annotated[bool, typer.Option(
        "--interactive", "-i", help="Forward corral's stdin to the command.")] = False,
    net: Annotated[list[str] | None, typer.Option(
        "--net", metavar="POLICY", show_default="none",
        help="What the sandbox may reach: none (loopback only), all (every public address), "
             "or allow:ENTRY,... and deny:ENTRY,... (repeatable; deny wins) of IPs and "
             "CIDRs, each optionally with :PORT. Private and metadata addresses stay "
             "closed unless the operator opened them (corral serve --net-open).")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run one command in a fresh sandbox, stream its output, then destroy the sandbox.

    Output is streamed as it arrives: the command's stdout to stdout, its stderr to stderr;
    Corral's own messages go to stderr. Exits with the command's status; 124 when
    --timeout killed it, 125 when Corral itself failed (like docker run).

    With CORRAL_URL set, the sandbox is made on that Corral server (key from
    CORRAL_API_KEY, CA from CORRAL_CA_FILE), with the same options, output and exit
    statuses; the image must be built there, and --data-dir is not used. Without it, a
    node private to this command runs the sandbox on this host.

    Examples:

        corral run -- python3 -c 'print(2 + 2)'

        corral run --runtime namespaces --memory 256M -- sh -c 'echo $HOME; exit 3'

        echo hello | corral run -i -- tr a-z A-Z

        corral run --net allow:203.0.113.10:443,198.51.100.0/24 -- python3 fetch.py

        CORRAL_URL=http://127.0.0.1:8470 CORRAL_API_KEY=crl_... corral run -- python3 -V
    """
    request = RunRequest(
        argv=command, image=image, runtime=runtime, resources=_resources(memory, cpus, pids, disk),
        timeout=_timeout(timeout), env=parse_env(env), workdir=workdir, user=user,
        interactive=interactive, network=parse_net(net))
    url = os.environ.get("CORRAL_URL", "").strip()
    with reporting_errors():
        if url:
            code = _until_terminated(_main(_on_server(url, request), request))
        else:
            settings = node_settings(data_dir)
            ensure_image(ImageStore(settings.image_dir), image)
            with private_node(settings) as private:
                code = _until_terminated(_main(_on_node(private, request), request))
    raise typer.Exit(code)


def _resources(memory: str, cpus: float, pids: int, disk: str) -> Resources:
    try:
        return Resources.parse(memory=memory, cpus=cpus, pids=pids, disk=disk)
    except InvalidArgumentError as exc:
        raise typer.BadParameter(exc.message) from None


def _timeout(seconds: float) -> float:
    try:
        return check_timeout(seconds)
    except InvalidArgumentError as exc:
        raise typer.BadParameter(exc.message, param_hint="'--timeout'") from None


def _until_terminated(main: Coroutine[None, None, int]) -> int:
    """Run ``main``; SIGTERM cancels it, so its ``finally`` tears the sandbox down."""
    try:
        return asyncio.run(main)
    except asyncio.CancelledError:  # SIGTERM; the sandbox is already gone
        say("terminated")
        return EXIT_TERMINATED


def _cancel_on_sigterm() -> None:
    task = asyncio.current_task()
    if task is not None:  # SIGTERM tears down like Ctrl-C instead of leaving the sandbox
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


@asynccontextmanager
async def _on_node(settings: NodeSettings, request: RunRequest
                   ) -> AsyncIterator[contract.SandboxContract]:
    """A sandbox on a node of this process; killed, and the node closed, at the end."""
    async with Node(settings) as node:
        sandbox = await node.create(request.image, runtime=request.runtime,
                                    resources=request.resources,
                                    timeout=request.timeout + LIFETIME_SLACK,
                                    network=request.network)
        try:
            yield sandbox
        finally:
            await sandbox.kill()  # returns once its teardown is over


@asynccontextmanager
async def _on_server(url: str, request: RunRequest) -> AsyncIterator[contract.SandboxContract]:
    """A sandbox on the server at ``url``; killed at the end."""
    sandbox = await AsyncSandbox.create(
        request.image, runtime=request.runtime, resources=request.resources,
        timeout=request.timeout + LIFETIME_SLACK, metadata=REMOTE_METADATA, url=url,
        network=models.network_spec(request.network))
    try:
        yield sandbox
    finally:
        try:
            await sandbox.kill()
        finally:
            await sandbox.close()


async def _main(opened: AbstractAsyncContextManager[contract.SandboxContract],
                request: RunRequest) -> int:
    """Create, run, stream, and always destroy the sandbox, whatever ends the run."""
    _cancel_on_sigterm()
    async with opened as sandbox:
        return await _run_in(sandbox, request)


async def _run_in(sandbox: contract.SandboxContract, request: RunRequest) -> int:
    handle = await sandbox.commands.start(
        request.argv, env=request.env, cwd=request.workdir, user=request.user,
        timeout=request.timeout, stdin=request.interactive)
    try:
        try:
            await _stream_with_stdin(handle, request.interactive)
        except SandboxNotRunningError as exc:
            # The whole sandbox died under the command (with gVisor, a memory limit kills
            # the sandbox itself); its description says why.
            reason = None
            with contextlib.suppress(SandboxError):
                reason = (await sandbox.refresh()).stop_reason
            return _sandbox_stopped(reason, exc)
        result = await handle.wait()  # the output was consumed above; this is the exit
    finally:
        await handle.aclose()
    return _exit_code(result, request.timeout)


async def _stream_with_stdin(handle: contract.CommandHandleContract, interactive: bool) -> None:
    """Stream the output to ours, feeding our stdin to the command meanwhile if asked."""
    feeder = (asyncio.get_running_loop().create_task(_forward_stdin(handle))
              if interactive else None)
    try:
        await _stream(handle)
    finally:
        if feeder is not None:
            feeder.cancel()


def _sandbox_stopped(reason: str | None, exc: SandboxNotRunningError) -> int:
    """The exit status of a command whose whole sandbox stopped under it."""
    if reason and reason.startswith(LIMIT_REASONS):
        say(reason)
        return EXIT_LIMIT_KILLED
    raise SandboxNotRunningError(
        f"the sandbox stopped while the command ran: {reason or exc.message}") from exc


async def _stream(handle: contract.CommandHandleContract) -> None:
    """Copy output to our stdout/stderr as it arrives.

    When our stdout is a closed pipe (``corral run ... | head``), the command gets SIGPIPE,
    as it would have when writing to that pipe itself.
    """
    sinks: dict[str, BinaryIO | None] = {"stdout": sys.stdout.buffer,
                                         "stderr": sys.stderr.buffer}
    async for event in handle:
        sink = sinks.get(event.stream)
        if sink is None:
            continue
        try:
            sink.write(event.data)
            sink.flush()
        except BrokenPipeError:
            sinks[event.stream] = None
            _silence(sink)
            with contextlib.suppress(SandboxError):
                await handle.signal(signal.SIGPIPE)


def _silence(sink: BinaryIO) -> None:
    """Point a broken stream at /dev/null so that flushing it at exit raises nothing."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sink.fileno())
        os.close(devnull)


async def _forward_stdin(handle: contract.CommandHandleContract) -> None:
    """Send our stdin to the command in chunks, then close its stdin.

    A daemon thread reads, because a blocking read of a terminal cannot be cancelled and
    must not hold up the exit; the queue bounds what is read ahead of the sandbox.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)

    def read() -> None:
        chunk = b"x"
        while chunk:
            try:
                chunk = os.read(sys.stdin.fileno(), STDIN_CHUNK)
            except (OSError, ValueError, AttributeError):
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
            except (RuntimeError, concurrent.futures.CancelledError):
                return  # the loop has finished: nobody wants the rest

    threading.Thread(target=read, name="corral-stdin", daemon=True).start()
    try:
        while chunk := await queue.get():
            await handle.send_stdin(chunk)
        await handle.close_stdin()
    except SandboxError:
        pass  # the command ended (or closed its stdin) before reading everything


def _exit_code(result: models.CommandResult, timeout: float) -> int:
    if result.reason == proto.REASON_TIMEOUT:
        say(f"command timed out after {timeout:g} s; it and its children were killed")
        return EXIT_TIMEOUT
    if result.reason:
        say(result.reason)
    if not 0 <= result.exit_code <= 255:
        say(f"error: the command's exit status is unknown ({result.exit_code})", "bold red")
        return EXIT_CORRAL_ERROR
    return result.exit_code
