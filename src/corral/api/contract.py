"""The sandbox contract: what every face of a sandbox offers, as ``typing.Protocol``\\ s.

Two classes implement it today, and mypy checks both against it (each module ends with a
``_conforms`` assignment): the node's in-process sandbox (:class:`corral.node.NodeSandbox`)
and the SDK's HTTP one (:class:`corral.AsyncSandbox`). Code that holds a sandbox without
caring where it lives (``corral run``, the MCP tools, every later façade) is written
against these protocols, once.

The values crossing it are the wire models of :mod:`corral.api.models` and the chunks of
:mod:`corral.api.command_events`; errors are :class:`corral.api.errors.SandboxError`
subclasses. Members are read-only properties so that an implementation may return a more
specific type.

Example::

    async def line_count(sandbox: contract.SandboxContract, path: str) -> int:
        result = await sandbox.commands.run(["wc", "-l", path])
        return int(result.stdout.split()[0])
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Protocol

from . import models
from .command_events import Output, OutputCallback
from .limits import DEFAULT_CODE_TIMEOUT, DEFAULT_COMMAND_TIMEOUT

#: What a file write takes: bytes, text, or (async) iterables of byte chunks, streamed.
FileData = bytes | str | Iterable[bytes] | AsyncIterable[bytes]
#: A command: a shell string (``/bin/sh -c``) or an argv list (no shell).
Cmd = str | Sequence[str]
#: A code context: its description or its id.
ContextRef = models.CodeContext | str
#: A network policy: "none", "all" or {"allow": [...], "deny": [...]} (see
#: :mod:`corral.api.network`).
NetworkArg = str | Mapping[str, Sequence[str]] | models.NetworkLists


class CommandHandleContract(Protocol):
    """A started command: iterate it for :class:`Output`, or :meth:`wait` for its result."""

    @property
    def id(self) -> int: ...

    @property
    def pid(self) -> int: ...

    def __aiter__(self) -> AsyncIterator[Output]: ...

    async def wait(self, on_stdout: OutputCallback | None = None,
                   on_stderr: OutputCallback | None = None) -> models.CommandResult:
        """The result once the command ends; a timeout is a result, not an error."""
        ...

    async def send_stdin(self, data: bytes | str, eof: bool = False) -> None: ...

    async def close_stdin(self) -> None: ...

    async def signal(self, signum: int) -> None: ...

    async def kill(self) -> None: ...

    async def aclose(self) -> None:
        """Stop following the command; one still running is killed."""
        ...


class CommandsContract(Protocol):
    """``sandbox.commands``."""

    async def run(self, cmd: Cmd, *, env: Mapping[str, str] | None = None,
                  cwd: str | None = None, user: str | int | None = None,
                  timeout: float = DEFAULT_COMMAND_TIMEOUT, stdin: bytes | str | None = None,
                  on_stdout: OutputCallback | None = None,
                  on_stderr: OutputCallback | None = None) -> models.CommandResult:
        """Run to the end; raises ``CommandTimeoutError`` (with ``.result``) at the timeout."""
        ...

    async def start(self, cmd: Cmd, *, env: Mapping[str, str] | None = None,
                    cwd: str | None = None, user: str | int | None = None,
                    timeout: float | None = None, stdin: bool = False) -> CommandHandleContract: ...

    async def run_background(self, cmd: Cmd, *, env: Mapping[str, str] | None = None,
                             cwd: str | None = None, user: str | int | None = None,
                             timeout: float | None = None) -> models.CommandStarted:
        """Start a command whose output is dropped; address it later by its id."""
        ...

    async def signal(self, command_id: int, signum: int) -> None: ...

    async def kill(self, command_id: int) -> None: ...

    async def list(self) -> list[models.ProcessInfo]: ...


class FilesContract(Protocol):
    """``sandbox.files``; relative paths start at the image's working directory."""

    def read_stream(self, path: str) -> AsyncIterator[bytes]: ...

    async def read(self, path: str) -> bytes: ...

    async def read_text(self, path: str) -> str: ...

    async def write(self, path: str, data: FileData, mode: int = 0o644) -> int: ...

    async def list(self, path: str = ".", depth: int = 1) -> list[models.EntryInfo]: ...

    async def stat(self, path: str) -> models.EntryInfo: ...

    async def exists(self, path: str) -> bool: ...

    async def mkdir(self, path: str, parents: bool = True) -> bool: ...

    async def remove(self, path: str, recursive: bool = False) -> None: ...

    async def rename(self, src: str, dst: str, overwrite: bool = False) -> None: ...


class CodeContract(Protocol):
    """``sandbox.code``: stateful contexts (one kernel each) and cells."""

    async def run(self, code: str, *, language: str | None = None,
                  context: ContextRef | None = None, timeout: float = DEFAULT_CODE_TIMEOUT,
                  env: Mapping[str, str] | None = None,
                  on_stdout: Callable[[str], None] | None = None,
                  on_stderr: Callable[[str], None] | None = None,
                  on_result: Callable[[models.Result], None] | None = None,
                  on_error: Callable[[models.ExecutionError], None] | None = None
                  ) -> models.Execution: ...

    async def create_context(self, language: str = "python", *, cwd: str | None = None,
                             env: Mapping[str, str] | None = None) -> models.CodeContext: ...

    async def list_contexts(self) -> list[models.CodeContext]: ...

    async def restart_context(self, context: ContextRef) -> models.CodeContext: ...

    async def interrupt(self, context: ContextRef = "default") -> None: ...

    async def delete_context(self, context: ContextRef) -> None: ...


class NetworkContract(Protocol):
    """A sandbox's network policy: what it may reach."""

    async def get(self) -> models.NetworkInfo:
        """Its policy as enforced now."""
        ...

    async def update(self, network: NetworkArg) -> models.NetworkInfo:
        """Replace its policy; new connections see it at once."""
        ...

    async def events(self) -> models.EgressEvents:
        """Its resolver's and proxy's latest verdicts, oldest first."""
        ...


class SandboxContract(Protocol):
    """One sandbox, wherever it runs."""

    @property
    def id(self) -> str: ...

    @property
    def commands(self) -> CommandsContract: ...

    @property
    def files(self) -> FilesContract: ...

    @property
    def code(self) -> CodeContract: ...

    @property
    def network(self) -> NetworkContract: ...

    async def refresh(self) -> models.SandboxInfo:
        """Its description now: state, expiry, and why it stopped if it did."""
        ...

    async def run_code(self, code: str, *, language: str | None = None,
                       context: ContextRef | None = None,
                       timeout: float = DEFAULT_CODE_TIMEOUT,
                       env: Mapping[str, str] | None = None,
                       on_stdout: Callable[[str], None] | None = None,
                       on_stderr: Callable[[str], None] | None = None,
                       on_result: Callable[[models.Result], None] | None = None,
                       on_error: Callable[[models.ExecutionError], None] | None = None
                       ) -> models.Execution: ...

    async def set_timeout(self, seconds: float) -> None: ...

    async def kill(self) -> None: ...
