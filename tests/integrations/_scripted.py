"""Chat services that stand in for a model: each turn returns the next scripted reply,
either real function calls (which the framework then invokes, as it would a model's) or a
final text. A step is a function of the conversation so far, so an answer can quote what
a tool returned."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from agent_framework import (
    BaseChatClient,
    ChatResponse,
    Content,
    FunctionInvocationLayer,
    Message,
)
from semantic_kernel.connectors.ai.chat_completion_client_base import ChatCompletionClientBase
from semantic_kernel.connectors.ai.prompt_execution_settings import PromptExecutionSettings
from semantic_kernel.contents import ChatHistory, ChatMessageContent, FunctionCallContent
from semantic_kernel.contents.function_result_content import FunctionResultContent
from semantic_kernel.contents.utils.author_role import AuthorRole

#: A call: (function name, arguments); a step: calls, or the final text.
Call = tuple[str, dict[str, Any]]
Step = Callable[[list[str]], list[Call] | str]


def calls(*made: Call) -> Step:
    return lambda results: list(made)


def answer(make: Callable[[list[str]], str]) -> Step:
    """The final text, made from the tool results seen so far."""
    return make  # type: ignore[return-value]


class ScriptedChatCompletion(ChatCompletionClientBase):
    """A Semantic Kernel chat completion service following a script."""

    SUPPORTS_FUNCTION_CALLING: ClassVar[bool] = True
    script: list[Any] = []
    offered: list[str] = []  # the functions the kernel offered, as the model would see them

    def __init__(self, script: Sequence[Step]) -> None:
        super().__init__(ai_model_id="scripted", service_id="scripted")
        self.script = list(script)
        self.offered = []

    def _update_function_choice_settings_callback(self) -> Callable[..., None]:
        def record(configuration: Any, settings: Any, choice_type: Any) -> None:
            self.offered = [f.fully_qualified_name for f in configuration.available_functions]
        return record

    async def _inner_get_chat_message_contents(self, chat_history: ChatHistory,
                                               settings: PromptExecutionSettings
                                               ) -> list[ChatMessageContent]:
        results = [str(item.result) for message in chat_history.messages
                   for item in message.items if isinstance(item, FunctionResultContent)]
        step = self.script.pop(0)(results)
        if isinstance(step, str):
            return [ChatMessageContent(role=AuthorRole.ASSISTANT, content=step)]
        items = [FunctionCallContent(id=f"call-{len(results)}-{i}", name=name.replace(".", "-"),
                                     arguments=json.dumps(args))
                 for i, (name, args) in enumerate(step)]
        return [ChatMessageContent(role=AuthorRole.ASSISTANT, items=items)]  # type: ignore[arg-type]

    async def _inner_get_streaming_chat_message_contents(self, *args: Any, **kwargs: Any
                                                         ) -> Any:
        raise NotImplementedError
        yield  # pragma: no cover


class ScriptedChatClient(FunctionInvocationLayer[Any], BaseChatClient[Any]):
    """An Agent Framework chat client following a script (function invocation included)."""

    def __init__(self, script: Sequence[Step]) -> None:
        super().__init__()
        self.script = list(script)
        self.offered: list[str] = []

    async def _inner_get_response(self, *, messages: Sequence[Message], stream: bool,
                                  options: Any, **kwargs: Any) -> Any:
        tools = (options or {}).get("tools") or []
        self.offered = [getattr(t, "name", str(t)) for t in tools]
        results = [str(c.result) for m in messages for c in m.contents
                   if c.type == "function_result"]
        step = self.script.pop(0)(results)
        if isinstance(step, str):
            contents = [Content.from_text(step)]
        else:
            contents = [Content.from_function_call(f"call-{len(results)}-{i}", name,
                                                   arguments=json.dumps(args))
                        for i, (name, args) in enumerate(step)]
        return ChatResponse(messages=[Message(role="assistant", contents=contents)])
