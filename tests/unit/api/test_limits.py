"""corral.api.limits: the one path rule at each of its edges, and every layer using it."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from corral import InvalidArgumentError
from corral.api import command_events, limits, models, network, resources
from corral.server.ports import MAX_WS_MESSAGE
from corral.api.limits import MAX_PATH, NAME_MAX, normalize_path
from corral.cli import sandbox as cli_sandbox
from corral.node import commands as node_commands
from corral.node import interpreter as node_interpreter
from corral.node import node as node_node
from corral.node import validation
from corral.node.files import NodeFiles
from corral.sdk import code as sdk_code
from corral.sdk import commands as sdk_commands
from corral.sdk.sandbox import AsyncSandbox
from corral.server.quota import TENANT_MAX_GPUS, TENANT_MAX_SANDBOXES, TenantQuota
from tests.fakes.agent import AgentProcess


def absolute(size: int, name: str = "a") -> str:
    """An absolute path of exactly ``size`` UTF-8 bytes, its components as long as they
    can be and never past NAME_MAX."""
    count = -(-size // (NAME_MAX + 1))
    each, longer = divmod(size - count, count)
    sizes = [each + 1] * longer + [each] * (count - longer)
    width = len(name.encode())
    path = "".join("/" + name * (n // width) + "z" * (n % width) for n in sizes)
    assert len(path.encode()) == size and 0 < min(sizes) and max(sizes) <= NAME_MAX
    return path


def refusal(path: object, workdir: str | None = None) -> str:
    with pytest.raises(ValueError) as caught:
        normalize_path(path, workdir)
    assert type(caught.value) is ValueError  # not a UnicodeError leaking out
    return str(caught.value)


# -- the rule ----------------------------------------------------------------------------

def test_path_length_is_counted_in_bytes_up_to_max_path() -> None:
    assert normalize_path(absolute(MAX_PATH)) == absolute(MAX_PATH)
    assert "longer than 4096 bytes" in refusal(absolute(MAX_PATH + 1))
    two_byte = absolute(MAX_PATH, "é")
    assert normalize_path(two_byte) == two_byte
    assert len(absolute(MAX_PATH + 2, "é")) < MAX_PATH  # characters fit, bytes do not
    assert "longer than" in refusal(absolute(MAX_PATH + 2, "é"))


def test_resolved_length_counts_the_workdir() -> None:
    relative = absolute(MAX_PATH - len("/work"))[1:]  # "/work/" + it is MAX_PATH bytes
    assert len(normalize_path(relative, "/work").encode()) == MAX_PATH
    assert "once resolved" in refusal(relative, "/workX")
    # `..` that climbs out of a long path as given is fine once resolved
    assert normalize_path(absolute(MAX_PATH - 3) + "/..") == absolute(MAX_PATH - 3).rsplit(
        "/", 1)[0]


def test_component_up_to_name_max_bytes() -> None:
    assert normalize_path("/work/" + "x" * NAME_MAX) == "/work/" + "x" * NAME_MAX
    assert "component is longer than 255 bytes" in refusal("/work/" + "x" * (NAME_MAX + 1))
    assert "component" in refusal("x" * (NAME_MAX + 1) + "/y", "/work")
    assert "component" in refusal("/" + "é" * 128)  # 128 characters, 256 bytes
    assert normalize_path("/" + "é" * 127 + "z") == "/" + "é" * 127 + "z"
    # components are judged once normalised: one that `..` removes never reaches a disk
    assert normalize_path("/work/" + "x" * (NAME_MAX + 1) + "/..") == "/work"


@pytest.mark.parametrize("path", ["", "\0", "/work/a\0b", "a\0", None, 7, b"/work",
                                  ["/work"], "/work/\ud800"])
def test_not_a_path(path: object) -> None:
    refusal(path, "/work")


def test_surrogate_escaped_bytes_count_as_one_byte_each() -> None:
    assert normalize_path("/" + "\udcff" * NAME_MAX) == "/" + "\udcff" * NAME_MAX
    assert "component" in refusal("/" + "\udcff" * (NAME_MAX + 1))


@pytest.mark.parametrize(("path", "workdir", "expected"), [
    ("/x//y/.", "/work", "/x/y"),
    ("a/../../b", "/work", "/b"),
    ("a/./b/", "/work", "/work/a/b"),
    (".", "/work", "/work"),
    ("..", "/", "/"),
    ("/..", None, "/"),
    ("/../../etc", None, "/etc"),
    ("//x", None, "/x"),
    ("///x//", None, "/x"),
    ("//", None, "/"),
    ("a", "//work//", "/work/a"),
    ("/a/b/../../..", None, "/"),
    ("/proc/self/fd", None, "/proc/self/fd"),  # the agent's own policy, not the rule's
])
def test_normalisation(path: str, workdir: str | None, expected: str) -> None:
    assert normalize_path(path, workdir) == expected


def test_a_relative_path_needs_a_workdir() -> None:
    assert "not absolute" in refusal("work/a")
    assert "not absolute" in refusal(".")


# -- every layer applies it --------------------------------------------------------------

def test_the_layers_share_the_objects() -> None:
    assert validation.normalize_path is normalize_path
    assert models.normalize_path is normalize_path
    assert models.MAX_PATH is limits.MAX_PATH
    assert models.MAX_CODE is limits.MAX_CODE
    assert models.MAX_INLINE_STDIN is limits.MAX_INLINE_STDIN
    assert resources.TIMEOUT_RANGE is limits.TIMEOUT_RANGE
    assert command_events.MAX_CAPTURE is limits.MAX_CAPTURE  # both sides' one capture
    # The agent's own copies (Rust) are compared in tests/unit/agent/test_native.py.


def test_every_default_timeout_is_the_shared_one() -> None:
    def default(function: Any, name: str = "timeout") -> object:
        return inspect.signature(function).parameters[name].default

    lifetime = [models.SandboxCreate().timeout, default(node_node.Node.create),
                default(AsyncSandbox.create), default(cli_sandbox.create)]
    assert lifetime == [limits.DEFAULT_LIFETIME] * 4
    command = [default(node_commands.NodeCommands.run), default(sdk_commands.AsyncCommands.run),
               default(cli_sandbox.exec_)]
    assert command == [limits.DEFAULT_COMMAND_TIMEOUT] * 3
    code = [default(node_interpreter.NodeCodeInterpreter.run),
            default(sdk_code.AsyncCodeInterpreter.run), default(cli_sandbox.run_code)]
    assert code == [limits.DEFAULT_CODE_TIMEOUT] * 3


CASES = [absolute(MAX_PATH), absolute(MAX_PATH + 1), "/work/" + "x" * NAME_MAX,
         "/work/" + "x" * (NAME_MAX + 1), "/work/a\0b", "//work//a/./b/..", "/" + "é" * 128,
         "/work/" + "x" * (NAME_MAX + 1) + "/..", "/work/\ud800", ""]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    with AgentProcess(tmp_path_factory.mktemp("root")) as process:
        yield process


@pytest.mark.parametrize("path", CASES, ids=range(len(CASES)))
def test_node_agent_and_models_answer_alike(path: str, agent: AgentProcess) -> None:
    try:
        expected: str | None = normalize_path(path)
    except ValueError as exc:
        expected, message = None, str(exc)
    reply, _ = agent.call({"op": "stat", "path": path})
    assert reply["ev"] == "error"
    if expected is None:
        with pytest.raises(InvalidArgumentError) as node:
            validation.resolve_path(path, "/work")
        with pytest.raises(ValidationError) as model:
            models.MakeDir(path=path)
        assert node.value.message == reply["message"] == message
        assert reply["code"] == "invalid_argument"
        # pydantic's own checks (length in characters, valid unicode) may answer first
        if 0 < len(path) <= MAX_PATH and path.encode(errors="replace") == path.encode(
                errors="ignore"):
            assert message in str(model.value)
    else:
        assert validation.resolve_path(path, "/work") == expected
        # The agent took it, normalised the same way: the file is not there (or, under the
        # test's root, a longest path is too long for the host).
        assert reply["message"].startswith(f"stat {expected!r}: "[:1000])  # messages are cut
        assert reply["code"] == ("invalid_argument" if len(expected) == MAX_PATH else "not_found")
        assert models.MakeDir(path=path).path == path  # kept as given; the node resolves


def test_models_refuse_what_the_node_would_for_relative_paths() -> None:
    long_name = "x" * (NAME_MAX + 1)
    for field in ({"cwd": long_name}, {"cwd": "a\0"}):
        with pytest.raises(ValidationError):
            models.CommandRequest(cmd="true", **field)
    with pytest.raises(ValidationError):
        models.Rename(src="/work/a", dst="b/" + long_name)
    relative = absolute(MAX_PATH - 1)[1:]  # fits under "/", longer under any other workdir
    assert models.MakeDir(path=relative).path == relative
    assert models.ContextCreate(cwd="../" + long_name + "/..").cwd == "../" + long_name + "/.."


class _Agent:
    """Records any call: a refused path must not reach it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        async def call(*args: object, **kwargs: object) -> Any:
            self.calls.append(name)
            raise AssertionError(f"{name} reached the agent")
        return call


class _Sandbox:
    workdir = "/work"

    def __init__(self) -> None:
        self.agent = _Agent()

    def channel(self) -> _Agent:
        return self.agent


@pytest.mark.parametrize("path", ["x" * (NAME_MAX + 1), "/work/" + "é" * 128 + "/f",
                                  "a\0b", absolute(MAX_PATH - 2)[1:]])
def test_the_node_refuses_before_the_sandbox(path: str) -> None:
    sandbox = _Sandbox()
    files = NodeFiles(sandbox)  # type: ignore[arg-type]

    async def each() -> None:
        for call in (files.read(path), files.write(path, b"x"), files.list(path),
                     files.stat(path), files.exists(path), files.mkdir(path), files.remove(path),
                     files.rename("/work/a", path), files.rename(path, "/work/a")):
            with pytest.raises(InvalidArgumentError):
                await call

    asyncio.run(each())
    assert sandbox.agent.calls == []


# -- the documents say the same ----------------------------------------------------------

DOCS = Path(__file__).resolve().parents[3]


def test_the_documented_bounds_are_the_values() -> None:
    text = (DOCS / "docs" / "api.md").read_text().split("### Request bounds", 1)[1]
    rows = dict(line.strip("| ").split(" | ") for line in text.split("\n\n")[2].splitlines()[2:])
    kib, mib = 1024, 1024 * 1024
    assert rows == {
        "a path, in UTF-8 bytes, as given and once resolved": f"{MAX_PATH}",
        "a path component (a file or directory name), in UTF-8 bytes": f"{NAME_MAX}",
        "levels a file listing recurses (`depth`)": f"{limits.MAX_LIST_DEPTH}",
        "entries a file listing returns (then `truncated`)": f"{limits.MAX_LIST_ENTRIES}",
        "arguments of a command given as a list": f"{limits.MAX_ARGV}",
        "a command string, or one argument, in characters": f"{limits.MAX_COMMAND // kib} KiB",
        "inline stdin of a command request (stream more with `.../stdin`)":
            f"{limits.MAX_INLINE_STDIN // kib} KiB",
        "output a command's result keeps per stream (then `truncated`)":
            f"{limits.MAX_CAPTURE // mib} MiB",
        "a code cell, in UTF-8 bytes": f"{limits.MAX_CODE // kib} KiB",
        "environment variables; bytes of all names and values":
            f"{limits.MAX_ENV_VARS}; {limits.MAX_ENV_BYTES // kib} KiB",
        "metadata labels; characters of one value":
            f"{limits.MAX_METADATA_KEYS}; {limits.MAX_METADATA_VALUE}",
        "sandbox lifetime, idle timeout, command and cell timeouts, in seconds":
            "{:g} to {:g}".format(*limits.TIMEOUT_RANGE),
        "default sandbox lifetime; default command and cell timeout, in seconds":
            f"{limits.DEFAULT_LIFETIME:g}; {limits.DEFAULT_COMMAND_TIMEOUT:g}",
        "`paused_ttl`, seconds a sandbox may stay paused before it is killed; the server's "
        "own default and most (`CORRAL_PAUSED_TTL`, which a create's may not exceed)":
            "{:.15g} to {:.15g}; ".format(*limits.PAUSED_TTL_RANGE)
            + f"{limits.DEFAULT_PAUSED_TTL:.15g}",
        "network policy entries, allow and deny together (the operator may set fewer); "
        "characters of one entry": f"{network.MAX_ENTRIES}; {network.MAX_ENTRY}",
        "connections to one sandbox's exposed ports at once; its public ports":
            f"{limits.MAX_PORT_CONNECTIONS}; {limits.MAX_PUBLIC_PORTS}",
        "a signed port URL's lifetime, in seconds; an app's silence before a proxied request "
        "fails (502)": f"1 to {limits.MAX_SIGNED_URL_LIFETIME:g}; {limits.PORT_READ_TIMEOUT:g}",
        "a WebSocket message through an exposed port, either way":
            f"{MAX_WS_MESSAGE // mib} MiB",
        "`resources.gpu`: a count; a model name's characters (letters, digits, space, `.`, "
        "`_`, `-`); `\"<model>:<count>\"` (docs/gpu.md)":
            "{} to {}; 1 to ".format(*resources.GPUS_RANGE) + f"{resources.MAX_GPU_MODEL}",
        "a tenant's live sandboxes (paused ones included), all its keys together "
        "(`CORRAL_TENANT_MAX_SANDBOXES`); the GPUs they hold (`CORRAL_TENANT_MAX_GPUS`, a "
        "paused namespaces sandbox holding none); 0: no cap but the node's":
            f"0 to {TENANT_MAX_SANDBOXES}; 0 to {TENANT_MAX_GPUS}; default "
            f"{TenantQuota().sandboxes}",
    }
    assert TenantQuota().gpus == TenantQuota().sandboxes  # one default says both
    assert limits.DEFAULT_CODE_TIMEOUT == limits.DEFAULT_COMMAND_TIMEOUT  # one row says both
    security = " ".join((DOCS / "SECURITY.md").read_text().split())
    assert (f"Paths with NUL bytes, over {MAX_PATH} bytes, or with a component over {NAME_MAX} "
            "bytes are refused before they reach the sandbox") in security
