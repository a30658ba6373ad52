"""The examples' agents, on the real Semantic Kernel and Agent Framework packages, driven by
scripted chat services that emit real function calls: the framework invokes Corral's tools,
which run the model's code in a sandbox, and the answer is built from what they returned."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from examples import agent_framework_csv, semantic_kernel_csv

from ._scripted import ScriptedChatClient, ScriptedChatCompletion, answer, calls
from .conftest import Corral

pytestmark = pytest.mark.anyio
CODE = ("import pandas as pd\n"
        "totals = pd.read_csv('/work/sales.csv').groupby('region').amount.sum()\n"
        "print(totals.idxmax(), totals.max())")
EXAMPLE_CSV = Path(__file__).parents[2] / "examples" / "data" / "sales.csv"


def _script(prefix: str) -> list:  # type: ignore[type-arg]
    return [
        calls((f"{prefix}list_files", {"path": "/work"})),
        calls((f"{prefix}run_python", {"code": CODE}),
              (f"{prefix}run_shell", {"command": "wc -l < /work/sales.csv"})),
        answer(lambda results: "The answer: " + next(
            r for r in results if "north" in r).split("stdout:\n")[1].strip()),
    ]


async def test_semantic_kernel_agent_answers_from_the_csv(corral: Corral) -> None:
    service = ScriptedChatCompletion(_script("corral."))
    reply = await semantic_kernel_csv.ask(service, EXAMPLE_CSV, **corral.sdk())
    assert reply == "The answer: north 8"
    assert not service.script
    # The model was offered the sandbox tools and nothing that takes a host path.
    assert sorted(service.offered) == ["corral-list_files", "corral-read_file",
                                       "corral-run_python", "corral-run_shell",
                                       "corral-write_file"]


async def test_agent_framework_agent_answers_from_the_csv(corral: Corral) -> None:
    client = ScriptedChatClient(_script(""))
    reply = await agent_framework_csv.ask(client, EXAMPLE_CSV, **corral.sdk())
    assert reply == "The answer: north 8"
    assert not client.script
    assert sorted(client.offered) == ["list_files", "read_file", "run_python", "run_shell",
                                      "write_file"]


async def test_model_code_runs_in_the_sandbox_not_on_the_host(corral: Corral,
                                                              tmp_path: Path) -> None:
    """CVE-2026-26030's class: whatever the model sends, the host evaluates none of it."""
    canary = tmp_path / "canary"
    hostile = f"open({str(canary)!r}, 'w').write('pwned'); print('ran')"
    service = ScriptedChatCompletion([
        calls(("corral.run_python", {"code": hostile}),
              ("corral.run_shell", {"command": f"touch {canary}; echo $(hostname)"}),
              ("corral.write_file", {"path": str(canary), "content": "x"})),
        answer(lambda results: "|".join(results)),
    ])
    reply = await semantic_kernel_csv.ask(service, EXAMPLE_CSV, **corral.sdk())
    assert "ran" in reply and re.search(r"wrote 1 bytes", reply)
    assert not canary.exists()  # it exists only inside the (now gone) sandbox
