"""What the agent-framework integrations share: one sandbox per tool set, the operations
the model may call, their descriptions, and the developer-only host transfers.

Everything a model sends is a string that goes to the sandbox as data: code to the
sandbox's Jupyter kernel, a command to the sandbox's shell, paths to the sandbox's file
API (resolved inside the sandbox's own root). Nothing is evaluated, parsed as code or
interpolated into a command on the host (the lesson of CVE-2026-26030). Host paths never
come from the model: :meth:`SandboxTools.upload` and :meth:`SandboxTools.download` are for
the developer's code, and confine their host side to allow-listed directories
(:class:`~corral.integrations.HostDirectories`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any, Final

from corral.api.errors import SandboxError
from corral.sdk import AsyncSandbox, Execution

from ._host_files import HostDirectories

#: Characters of output a tool hands back to the model (the rest is cut, and says so).
MAX_OUTPUT: Final = 20_000

DESCRIPTIONS: Final = {
    "run_python": (
        "Run Python code in a secure, isolated sandbox, like a Jupyter notebook cell: "
        "variables, imports and files persist between calls. pandas, numpy, matplotlib and "
        "scipy are installed; there is no network access. Returns stdout, stderr, the value "
        "of the last expression, and the error with its traceback if the code raised. Use "
        "print() to show intermediate values. Files you create live in the sandbox only."),
    "run_shell": (
        "Run a shell command (sh -c) in the same isolated sandbox and return its exit code, "
        "stdout and stderr. Use it for file inspection (ls, head, wc) or tools the sandbox "
        "has; there is no network access. Long-running commands time out."),
    "list_files": (
        "List the files and directories under a directory of the sandbox (default: the "
        "working directory /work), with their sizes."),
    "read_file": (
        "Read a text file from the sandbox (a path inside the sandbox, e.g. /work/data.csv) "
        "and return its content, cut after 20,000 characters."),
    "write_file": (
        "Write text to a file in the sandbox (a path inside the sandbox, e.g. "
        "/work/script.py), replacing it if it exists; parent directories are created."),
}
PARAMETERS: Final = {
    "code": "The Python code to run (one or more lines, as in a notebook cell).",
    "command": "The shell command line to run inside the sandbox.",
    "path": "A path inside the sandbox; relative paths start at /work.",
    "content": "The text to write.",
}


class SandboxTools:
    """A sandbox for one agent (started on first use) and the tools that act on it.

    Args:
        sandbox: an existing sandbox to use; default: one is created on first use with
            ``image``, ``timeout`` and ``idle_timeout``, and killed by :meth:`aclose`.
        upload_dirs, download_dirs: host directories :meth:`upload` may read from and
            :meth:`download` may write to; default: none (both refuse every path).
        connect: ``url``, ``api_key``, ``ca_file`` for the server (default: the
            ``CORRAL_*`` environment variables).
    """

    def __init__(self, sandbox: AsyncSandbox | None = None, *, image: str = "python",
                 timeout: float = 3600.0, idle_timeout: float | None = 600.0,
                 upload_dirs: HostDirectories | None = None,
                 download_dirs: HostDirectories | None = None,
                 command_timeout: float = 120.0, code_timeout: float = 120.0,
                 connect: Mapping[str, Any] | None = None) -> None:
        self._sandbox = sandbox
        self._owned = sandbox is None
        self._create = {"image": image, "timeout": timeout, "idle_timeout": idle_timeout,
                        **dict(connect or {})}
        self._lock = asyncio.Lock()
        self.upload_dirs = upload_dirs or HostDirectories()
        self.download_dirs = download_dirs or HostDirectories()
        self.command_timeout = command_timeout
        self.code_timeout = code_timeout

    async def sandbox(self) -> AsyncSandbox:
        """The sandbox, created on first use."""
        async with self._lock:
            if self._sandbox is None:
                self._sandbox = await AsyncSandbox.create(**self._create)
            return self._sandbox

    async def aclose(self) -> None:
        """Kill the sandbox if these tools created it."""
        if self._sandbox is not None:
            try:
                if self._owned:
                    await self._sandbox.kill()
            finally:
                await self._sandbox.close()
                self._sandbox = None

    # -- model-facing --------------------------------------------------------------------

    async def run_python(self, code: str) -> str:
        sandbox = await self.sandbox()
        try:
            return format_execution(await sandbox.run_code(code, timeout=self.code_timeout))
        except SandboxError as exc:
            return f"error: {exc}"

    async def run_shell(self, command: str) -> str:
        sandbox = await self.sandbox()
        try:
            result = await sandbox.commands.run(command, timeout=self.command_timeout)
        except SandboxError as exc:
            return f"error: {exc}"
        return _cut(f"exit code: {result.exit_code}\nstdout:\n{result.stdout}"
                    f"\nstderr:\n{result.stderr}")

    async def list_files(self, path: str = "/work") -> str:
        sandbox = await self.sandbox()
        try:
            entries = await sandbox.files.list(path or "/work", depth=2)
        except SandboxError as exc:
            return f"error: {exc}"
        lines = [f"{e.path}{'/' if e.type == 'dir' else ''}\t{e.size}" for e in entries]
        return _cut("\n".join(lines) or "(empty)")

    async def read_file(self, path: str) -> str:
        sandbox = await self.sandbox()
        try:
            data = await sandbox.files.read(path)
        except SandboxError as exc:
            return f"error: {exc}"
        return _cut(data.decode("utf-8", "replace"))

    async def write_file(self, path: str, content: str) -> str:
        sandbox = await self.sandbox()
        try:
            size = await sandbox.files.write(path, content)
        except SandboxError as exc:
            return f"error: {exc}"
        return f"wrote {size} bytes to {path}"

    # -- developer-facing: never give these to a model -------------------------------------

    async def upload(self, local_path: str | os.PathLike[str], sandbox_path: str) -> int:
        """Copy a host file, inside :attr:`upload_dirs`, into the sandbox."""
        data = self.upload_dirs.read_bytes(local_path)
        return await (await self.sandbox()).files.write(sandbox_path, data)

    async def download(self, sandbox_path: str, local_path: str | os.PathLike[str]) -> str:
        """Copy a sandbox file to the host, inside :attr:`download_dirs`; the host path is
        checked before anything is fetched or written. Returns where it went."""
        self.download_dirs.locate(local_path)
        data = await (await self.sandbox()).files.read(sandbox_path)
        return str(self.download_dirs.write_bytes(local_path, data))


def format_execution(execution: Execution) -> str:
    """A cell's outcome as text for a model."""
    parts = []
    stdout = "".join(execution.logs.stdout)
    stderr = "".join(execution.logs.stderr)
    if stdout:
        parts.append(f"stdout:\n{stdout}")
    if stderr:
        parts.append(f"stderr:\n{stderr}")
    for result in execution.results:
        if result.is_main_result and result.text is not None:
            parts.append(f"result:\n{result.text}")
        elif result.png is not None:
            parts.append("(a PNG image was displayed)")
    if execution.error is not None:
        error = execution.error
        parts.append(f"error: {error.name}: {error.value}\n{error.traceback}".rstrip())
    return _cut("\n".join(parts) or "(no output)")


def _cut(text: str) -> str:
    if len(text) <= MAX_OUTPUT:
        return text
    return text[:MAX_OUTPUT] + f"\n[... {len(text) - MAX_OUTPUT} more characters cut]"
