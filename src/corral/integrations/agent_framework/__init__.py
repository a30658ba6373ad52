"""Microsoft Agent Framework tools: Python and shell in a Corral sandbox, and its files.

Example::

    from agent_framework import Agent
    from corral.integrations.agent_framework import CorralTools

    corral = CorralTools()                                 # CORRAL_URL / CORRAL_API_KEY
    agent = Agent(client=chat_client, tools=corral.tools())
    print(await agent.run("What is the total of the amount column in /work/sales.csv?"))
    await corral.aclose()

Same rules as the Semantic Kernel plugin: the tools act inside the sandbox only; host
transfers (:meth:`CorralTools.upload`, :meth:`CorralTools.download`) are for the
developer's code and confined to allow-listed directories. See
docs/integrations/agent-framework.md.
"""

from __future__ import annotations

from typing import Annotated

from agent_framework import FunctionTool, tool
from pydantic import Field

from .._tools import DESCRIPTIONS, PARAMETERS, SandboxTools

__all__ = ["CorralTools"]


class CorralTools(SandboxTools):
    """Agent Framework tools over one Corral sandbox (arguments: :class:`SandboxTools`)."""

    def tools(self) -> list[FunctionTool]:
        """The model-facing tools, bound to this sandbox."""

        async def run_python(code: Annotated[str, Field(description=PARAMETERS["code"])]
                             ) -> str:
            return await self.run_python(code)

        async def run_shell(command: Annotated[str, Field(description=PARAMETERS["command"])]
                            ) -> str:
            return await self.run_shell(command)

        async def list_files(path: Annotated[str, Field(description=PARAMETERS["path"])]
                             = "/work") -> str:
            return await self.list_files(path)

        async def read_file(path: Annotated[str, Field(description=PARAMETERS["path"])]
                            ) -> str:
            return await self.read_file(path)

        async def write_file(path: Annotated[str, Field(description=PARAMETERS["path"])],
                             content: Annotated[str, Field(description=PARAMETERS["content"])]
                             ) -> str:
            return await self.write_file(path, content)

        return [tool(f, name=f.__name__, description=DESCRIPTIONS[f.__name__])
                for f in (run_python, run_shell, list_files, read_file, write_file)]
