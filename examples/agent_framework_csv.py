"""A Microsoft Agent Framework agent answers a question about a CSV by writing and running
pandas code in a Corral sandbox.

    export CORRAL_URL=http://127.0.0.1:8470 CORRAL_API_KEY=$(corral keys create)
    export OPENAI_API_KEY=...            # or any chat client with function calling
    python examples/agent_framework_csv.py examples/data/sales.csv
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from agent_framework import Agent

from corral.integrations import HostDirectories
from corral.integrations.agent_framework import CorralTools

QUESTION = "Which region has the highest total amount in /work/sales.csv, and what is it?"


async def ask(client: Any, csv: Path, question: str = QUESTION, **connect: object) -> str:
    corral = CorralTools(upload_dirs=HostDirectories(csv.parent), connect=connect)
    try:
        await corral.upload(csv, "/work/sales.csv")           # developer code, not a tool
        agent = Agent(client=client, tools=corral.tools(),
                      instructions="Answer questions about data by running Python in the "
                                   "sandbox with the tools.")
        return (await agent.run(question)).text
    finally:
        await corral.aclose()


if __name__ == "__main__":
    from agent_framework.openai import OpenAIChatClient

    print(asyncio.run(ask(OpenAIChatClient(), Path(sys.argv[1]).resolve())))
