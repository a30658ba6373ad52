"""A Semantic Kernel agent answers a question about a CSV by writing and running pandas
code in a Corral sandbox.

    export CORRAL_URL=http://127.0.0.1:8470 CORRAL_API_KEY=$(corral keys create)
    export OPENAI_API_KEY=...            # or any chat service with function calling
    python examples/semantic_kernel_csv.py examples/data/sales.csv

The CSV goes in through the developer's code (``plugin.upload``) from an allow-listed
directory; the model only ever sees the sandbox's tools.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from semantic_kernel import Kernel
from semantic_kernel.connectors.ai.chat_completion_client_base import ChatCompletionClientBase
from semantic_kernel.connectors.ai.function_choice_behavior import FunctionChoiceBehavior
from semantic_kernel.connectors.ai.prompt_execution_settings import PromptExecutionSettings
from semantic_kernel.contents import ChatHistory

from corral.integrations import HostDirectories
from corral.integrations.semantic_kernel import CorralPlugin

QUESTION = "Which region has the highest total amount in /work/sales.csv, and what is it?"


async def ask(service: ChatCompletionClientBase, csv: Path, question: str = QUESTION,
              **connect: object) -> str:
    plugin = CorralPlugin(upload_dirs=HostDirectories(csv.parent), connect=connect)
    try:
        await plugin.upload(csv, "/work/sales.csv")           # developer code, not a tool
        kernel = Kernel()
        kernel.add_service(service)
        kernel.add_plugin(plugin, plugin_name="corral")
        history = ChatHistory(system_message="Answer questions about data by running Python "
                                             "in the sandbox with the corral tools.")
        history.add_user_message(question)
        settings = PromptExecutionSettings(function_choice_behavior=FunctionChoiceBehavior.Auto())
        reply = await service.get_chat_message_content(history, settings, kernel=kernel)
        return str(reply)
    finally:
        await plugin.aclose()


if __name__ == "__main__":
    from semantic_kernel.connectors.ai.open_ai import OpenAIChatCompletion

    print(asyncio.run(ask(OpenAIChatCompletion(), Path(sys.argv[1]).resolve())))
