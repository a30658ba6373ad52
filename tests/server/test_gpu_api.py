"""``gpu`` on create, over REST, the SDK and the CLI, against the real server on a host
without a GPU (the tests' hosts have none): refused with a 400 that says why, bad values
refused at the edge, gpu 0 the same as none. The scheduling of GPUs a node has is tested
on a fake driver tree in tests/unit/node/test_gpus.py; a real GPU in scripts/gpu-check."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from corral import Sandbox
from corral.api.errors import InvalidArgumentError
from corral.cli import app

from .conftest import Server, assert_error

NO_GPU = "this node has no GPU a sandbox can be given: no NVIDIA driver is loaded"


@pytest.mark.parametrize("gpu", [9, -1, True, 1.5, "x" * 73, "", "H200/../x", "H200:0",
                                 "H200:100", ":1", [1], {"count": 1}],
                         ids=repr)
def test_bad_gpu_values_are_400(server: Server, gpu: object) -> None:
    with server.http(server.key) as http:
        response = http.post("/v1/sandboxes", json={"resources": {"gpu": gpu}})
        message = assert_error(response, 400, "invalid_argument")
    assert "gpu" in message.lower()


@pytest.mark.parametrize("gpu", [1, "1", "H200", "H200:2", 8])
def test_a_gpu_on_a_host_without_one_is_400_saying_why(server: Server, gpu: object) -> None:
    with server.http(server.key) as http:
        response = http.post("/v1/sandboxes", json={"resources": {"gpu": gpu}})
        message = assert_error(response, 400, "invalid_argument")
    assert NO_GPU in message


def test_the_sdk_and_the_cli_say_the_same(server: Server) -> None:
    with pytest.raises(InvalidArgumentError, match=NO_GPU):
        Sandbox.create(gpu=1, **server.sdk())
    with pytest.raises(InvalidArgumentError, match="gpu 9 is outside 0..8"):
        Sandbox.create(gpu=9, **server.sdk())
    cli = CliRunner(env={"CORRAL_URL": server.url, "CORRAL_API_KEY": server.key,
                         "COLUMNS": "250"})
    made = cli.invoke(app, ["sandbox", "create", "--gpu", "1"])
    assert made.exit_code != 0 and NO_GPU in made.output, made.output


def test_gpu_zero_is_a_plain_sandbox(server: Server) -> None:
    with Sandbox.create(gpu=0, timeout=120, **server.sdk()) as sb:
        assert sb.info.resources.gpu is None
        assert sb.commands.run("echo ok").stdout == "ok\n"
