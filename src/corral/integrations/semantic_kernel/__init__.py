"""A native Semantic Kernel plugin: Python and shell in a Corral sandbox, and its files.

Example::

    from semantic_kernel import Kernel
    from corral.integrations.semantic_kernel import CorralPlugin

    corral = CorralPlugin()                      # CORRAL_URL / CORRAL_API_KEY
    kernel = Kernel()
    kernel.add_plugin(corral, plugin_name="corral")
    ...
    await corral.upload("/srv/inbox/sales.csv", "/work/sales.csv")  # your code, not the model
    await corral.aclose()                        # kills the sandbox

The kernel functions (``run_python``, ``run_shell``, ``list_files``, ``read_file``,
``write_file``) act inside the sandbox only. Moving files between the host and the sandbox
is deliberately not a kernel function: :meth:`CorralPlugin.upload` and
:meth:`CorralPlugin.download` are for the developer's code, and their host side is
confined to the ``upload_dirs`` and ``download_dirs`` given (none by default). See
docs/integrations/semantic-kernel.md.
"""

from __future__ import annotations

from typing import Annotated

from semantic_kernel.functions import kernel_function

from .._tools import DESCRIPTIONS, PARAMETERS, SandboxTools

__all__ = ["CorralPlugin"]


class CorralPlugin(SandboxTools):
    """Semantic Kernel plugin over one Corral sandbox (arguments: :class:`SandboxTools`)."""

    @kernel_function(name="run_python", description=DESCRIPTIONS["run_python"])
    async def run_python(self, code: Annotated[str, PARAMETERS["code"]]) -> str:
        return await super().run_python(code)

    @kernel_function(name="run_shell", description=DESCRIPTIONS["run_shell"])
    async def run_shell(self, command: Annotated[str, PARAMETERS["command"]]) -> str:
        return await super().run_shell(command)

    @kernel_function(name="list_files", description=DESCRIPTIONS["list_files"])
    async def list_files(self, path: Annotated[str, PARAMETERS["path"]] = "/work") -> str:
        return await super().list_files(path)

    @kernel_function(name="read_file", description=DESCRIPTIONS["read_file"])
    async def read_file(self, path: Annotated[str, PARAMETERS["path"]]) -> str:
        return await super().read_file(path)

    @kernel_function(name="write_file", description=DESCRIPTIONS["write_file"])
    async def write_file(self, path: Annotated[str, PARAMETERS["path"]],
                         content: Annotated[str, PARAMETERS["content"]]) -> str:
        return await super().write_file(path, content)
