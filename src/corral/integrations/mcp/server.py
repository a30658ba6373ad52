"""The MCP tools, over any :class:`Backend`: the SDK (stdio) or the server's own services
(streamable HTTP on ``corral serve``).

Every tool argument is data for the sandbox (code for its kernel, a command for its shell,
paths for its file API) or a name matched exactly; nothing is evaluated on the host, and no
tool touches the host's files.

A model may ask for network access (``create_sandbox``'s ``network``), but only within the
ceiling whoever runs the MCP server set (``CORRAL_MCP_NETWORK``, ``corral mcp --net``;
default none): each entry it names must be one the ceiling allows, or narrower, and the
ceiling's deny list always applies. The model is not trusted with more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any, Protocol

from mcp.server.fastmcp import Context, FastMCP
from pydantic import Field

from corral.api import contract
from corral.api.errors import SandboxError
from corral.api.network import MAX_ENTRY, NetworkPolicy
from corral.sdk import AsyncSandbox

from .._tools import DESCRIPTIONS, PARAMETERS, _cut, format_execution

#: Metadata key under which a named sandbox is found again.
NAME_KEY = "mcp.name"
SandboxId = Annotated[str, Field(description="The sandbox's id, from create_sandbox.",
                                 max_length=64)]
INSTRUCTIONS = (
    "Corral runs code in secure, isolated sandboxes (no network unless asked for, within "
    "what the operator allows). Call "
    "create_sandbox first (give it a name to find the same sandbox again later), then run "
    "Python with run_code (state persists between calls, like a notebook) or shell commands "
    "with run_command, and move data with write_file / read_file / list_files.")


class Backend(Protocol):
    """Where sandboxes come from; ``ctx`` identifies the caller."""

    async def create(self, ctx: Context[Any, Any, Any], name: str | None, image: str,
                     timeout: float, network: NetworkPolicy, gpu: int = 0) -> str: ...

    def open(self, ctx: Context[Any, Any, Any], sandbox_id: str
             ) -> AbstractAsyncContextManager[contract.SandboxContract]: ...

    async def kill(self, ctx: Context[Any, Any, Any], sandbox_id: str) -> None: ...


class SdkBackend:
    """Sandboxes on a Corral server, through the SDK (``connect``: ``url``, ``api_key``,
    ``ca_file``; default: the ``CORRAL_*`` environment variables)."""

    def __init__(self, connect: Mapping[str, Any] | None = None) -> None:
        self._connect = dict(connect or {})

    async def create(self, ctx: Context[Any, Any, Any], name: str | None, image: str,
                     timeout: float, network: NetworkPolicy, gpu: int = 0) -> str:
        if name:
            found = await AsyncSandbox.list(metadata={NAME_KEY: name}, state="running",
                                            **self._connect)
            if found:
                return found[0].id
        sandbox = await AsyncSandbox.create(image, timeout=timeout,
                                            metadata={NAME_KEY: name} if name else None,
                                            network=network.to_wire(), gpu=gpu or None,
                                            **self._connect)
        await sandbox.close()
        return sandbox.id

    @asynccontextmanager
    async def _open(self, sandbox_id: str) -> AsyncIterator[AsyncSandbox]:
        sandbox = await AsyncSandbox.connect(sandbox_id, **self._connect)
        try:
            yield sandbox
        finally:
            await sandbox.close()

    def open(self, ctx: Context[Any, Any, Any], sandbox_id: str
             ) -> AbstractAsyncContextManager[contract.SandboxContract]:
        return self._open(sandbox_id)

    async def kill(self, ctx: Context[Any, Any, Any], sandbox_id: str) -> None:
        async with self._open(sandbox_id) as sandbox:
            await sandbox.kill()


def build_server(backend: Backend, network: NetworkPolicy | None = None,
                 **settings: Any) -> FastMCP:
    """A FastMCP server whose tools act through ``backend``; ``network``: the most a model
    may ask a sandbox to reach (default none)."""
    ceiling = network or NetworkPolicy()
    mcp = FastMCP("corral", instructions=INSTRUCTIONS, **settings)

    @mcp.tool(description="Create a sandbox, or with `name` reuse your running sandbox of "
                          "that name, and return its id. Sandboxes are stopped after "
                          f"`timeout` seconds. {_network_help(ceiling)}")
    async def create_sandbox(
            ctx: Context[Any, Any, Any],
            name: Annotated[str | None, Field(description="A name to find it again by.",
                                              max_length=1024)] = None,
            image: Annotated[str, Field(description="The image (default: python, with "
                                                    "pandas, numpy, matplotlib).",
                                        max_length=128)] = "python",
            timeout: Annotated[float, Field(ge=1, le=86400)] = 3600.0,
            network: Annotated[list[Annotated[str, Field(max_length=MAX_ENTRY)]] | None,
                               Field(max_length=64, description=(
                                   "Hosts it may connect to: domains (pypi.org, "
                                   "*.example.org), IPs or CIDRs, each optionally with "
                                   ":port. Default: none."))] = None,
            gpu: Annotated[int, Field(ge=0, le=8, description=(
                "NVIDIA GPUs it needs (default 0). Refused with the reason where the "
                "server has none free or none at all."))] = 0) -> str:
        try:
            return await backend.create(ctx, name, image, timeout,
                                        ceiling.narrowed(network or ()), gpu=gpu)
        except SandboxError as exc:
            return f"error: {exc}"

    @mcp.tool(description=DESCRIPTIONS["run_python"])
    async def run_code(ctx: Context[Any, Any, Any], sandbox_id: SandboxId,
                       code: Annotated[str, Field(description=PARAMETERS["code"])]) -> str:
        try:
            async with backend.open(ctx, sandbox_id) as sandbox:
                return format_execution(await sandbox.code.run(code, timeout=120.0))
        except SandboxError as exc:
            return f"error: {exc}"

    @mcp.tool(description=DESCRIPTIONS["run_shell"])
    async def run_command(ctx: Context[Any, Any, Any], sandbox_id: SandboxId,
                          command: Annotated[str, Field(description=PARAMETERS["command"])]
                          ) -> str:
        try:
            async with backend.open(ctx, sandbox_id) as sandbox:
                result = await sandbox.commands.run(command, timeout=120.0)
        except SandboxError as exc:
            return f"error: {exc}"
        return _cut(f"exit code: {result.exit_code}\nstdout:\n{result.stdout}"
                    f"\nstderr:\n{result.stderr}")

    @mcp.tool(description=DESCRIPTIONS["list_files"])
    async def list_files(ctx: Context[Any, Any, Any], sandbox_id: SandboxId,
                         path: Annotated[str, Field(description=PARAMETERS["path"])] = "/work"
                         ) -> str:
        try:
            async with backend.open(ctx, sandbox_id) as sandbox:
                entries = await sandbox.files.list(path, depth=2)
        except SandboxError as exc:
            return f"error: {exc}"
        return _cut("\n".join(f"{e.path}{'/' if e.type == 'dir' else ''}\t{e.size}"
                              for e in entries) or "(empty)")

    @mcp.tool(description=DESCRIPTIONS["read_file"])
    async def read_file(ctx: Context[Any, Any, Any], sandbox_id: SandboxId,
                        path: Annotated[str, Field(description=PARAMETERS["path"])]) -> str:
        try:
            async with backend.open(ctx, sandbox_id) as sandbox:
                data = await sandbox.files.read(path)
        except SandboxError as exc:
            return f"error: {exc}"
        return _cut(data.decode("utf-8", "replace"))

    @mcp.tool(description=DESCRIPTIONS["write_file"])
    async def write_file(ctx: Context[Any, Any, Any], sandbox_id: SandboxId,
                         path: Annotated[str, Field(description=PARAMETERS["path"])],
                         content: Annotated[str, Field(description=PARAMETERS["content"])]
                         ) -> str:
        try:
            async with backend.open(ctx, sandbox_id) as sandbox:
                size = await sandbox.files.write(path, content)
        except SandboxError as exc:
            return f"error: {exc}"
        return f"wrote {size} bytes to {path}"

    @mcp.tool(description="Stop a sandbox and discard its files.")
    async def kill_sandbox(ctx: Context[Any, Any, Any], sandbox_id: SandboxId) -> str:
        try:
            await backend.kill(ctx, sandbox_id)
        except SandboxError as exc:
            return f"error: {exc}"
        return f"sandbox {sandbox_id} stopped"

    return mcp


def _network_help(ceiling: NetworkPolicy) -> str:
    if ceiling.mode == "none":
        return "They have no network access."
    if ceiling.mode == "all":
        return "`network` lists the hosts it may reach (default: none)."
    allowed = ", ".join(map(str, ceiling.allow)) or "nothing"
    return (f"`network` lists the hosts it may reach (default: none), each within: "
            f"{allowed:.1000}.")
