"""The code interpreter's other languages on every runtime: R (IRkernel), JavaScript and
TypeScript (tslab) and Java (JJava), the Jupyter kernels of the ``code-interpreter``
image, behind the same kernel bridge as Python.

Each language: state kept between cells, a value, printed output, the cell's error (and a
cell right after a failed one still runs), a timeout that interrupts the cell and keeps
the context; every kernel keeps its state across a pause. A sandbox of the ``python``
image refuses them, naming the image that has them. One sandbox per runtime serves the
module; no test asserts a duration.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral import InvalidArgumentError, Resources
from corral.api import models
from corral.node import SyncNode, SyncNodeSandbox
from tests.conftest import runtime_params


@pytest.fixture(scope="module", params=runtime_params())
def box(request: pytest.FixtureRequest, node: SyncNode,
        code_interpreter_image: str) -> Iterator[SyncNodeSandbox]:
    # Five kernels at once (a JVM, two Nodes, R, Python) need more than the default 512 MiB.
    sb = node.create(code_interpreter_image, runtime=str(request.param), timeout=1200,
                     resources=Resources(memory_mib=2048))
    try:
        yield sb
    finally:
        sb.kill()


def test_r(box: SyncNodeSandbox) -> None:
    code = box.code
    ex = code.run("x <- 41\nx + 1", language="r")
    # IRkernel shows a value as display data, so it is a result but not the main one.
    assert ex.error is None and ex.context == "default-r" and ex.text is None
    [value] = ex.results
    assert value.text == "[1] 42" and not value.is_main_result
    assert value.html is not None and "42" in value.html
    assert code.run('print(paste("x is", x))', language="r").logs.stdout == ['[1] "x is 41"\n']
    ex = code.run('stop("boom")', language="r")
    assert ex.error is not None and "boom" in ex.error.value
    assert code.run("x * 2", language="r").results[0].text == "[1] 82"
    ex = code.run("Sys.sleep(3600)", language="r", timeout=3)
    assert ex.error is not None and ex.error.name == models.TIMEOUT_ERROR
    assert code.run("x", language="r").results[0].text == "[1] 41"
    with pytest.raises(InvalidArgumentError, match="own env is supported in python and bash"):
        code.run("1", language="r", env={"A": "b"})


@pytest.mark.parametrize("language", ["javascript", "typescript"])
def test_javascript_and_typescript(box: SyncNodeSandbox, language: str) -> None:
    code = box.code
    declare = "let x = 41" if language == "javascript" else "let x: number = 41"
    assert code.run(declare, language=language).error is None
    # tslab prints a cell's value (it sends no execute result).
    ex = code.run("x + 1", language=language)
    assert ex.error is None and ex.logs.stdout == ["42\n"] and ex.context == f"default-{language}"
    ex = code.run("console.log('x is', x); console.error('warn')", language=language)
    assert ex.logs.stdout == ["x is 41\n"] and ex.logs.stderr == ["warn\n"]
    # tslab reports errors on stderr alone: the bridge makes them the cell's error.
    ex = code.run("throw new TypeError('boom')", language=language)
    assert ex.error is not None and (ex.error.name, ex.error.value) == ("TypeError", "boom")
    # The cell right after a failed one runs (tslab drops those within 200 ms of it).
    ex = code.run("x = x + 1\nx", language=language)
    assert ex.error is None and ex.logs.stdout == ["42\n"]
    ex = code.run("await new Promise(resolve => setTimeout(resolve, 3600000))",
                  language=language, timeout=3)
    assert ex.error is not None and ex.error.name == models.TIMEOUT_ERROR
    assert code.run("x", language=language).logs.stdout == ["42\n"]
    if language == "typescript":
        ex = code.run("const s: string = 1", language=language)
        assert ex.error is not None and "not assignable to type 'string'" in ex.error.value
        assert code.run("x", language=language).logs.stdout == ["42\n"]


def test_java(box: SyncNodeSandbox) -> None:
    code = box.code
    ex = code.run("int x = 41;\nx + 1", language="java")
    assert (ex.error, ex.text, ex.context) == (None, "42", "default-java")
    ex = code.run('System.out.println("x is " + x);', language="java")
    assert ex.logs.stdout == ["x is 41\n"]
    ex = code.run('throw new IllegalStateException("boom");', language="java")
    # JJava names a thrown exception by its kind; the value names its class.
    assert ex.error is not None and ex.error.name == "RuntimeException"
    assert ex.error.value == "java.lang.IllegalStateException, boom"
    # The JVM ends on SIGINT: JJava is interrupted by a message, and lives on.
    ex = code.run("Thread.sleep(3600000);", language="java", timeout=3)
    assert ex.error is not None and ex.error.name == models.TIMEOUT_ERROR
    assert code.run("x * 2", language="java").text == "82"


def test_contexts_of_each_language_are_their_own(box: SyncNodeSandbox) -> None:
    code = box.code
    ctx = code.create_context("r", cwd="/tmp")
    assert (ctx.language, ctx.cwd) == ("r", "/tmp")
    code.run("y <- 5", context=ctx)
    assert code.run("getwd()", context=ctx).results[0].text == '[1] "/tmp"'
    ex = code.run("y", language="r")  # the default R context has no y
    assert ex.error is not None and "'y' not found" in ex.error.value
    code.restart_context(ctx)
    assert code.run("exists('y')", context=ctx).results[0].text == "[1] FALSE"
    with pytest.raises(InvalidArgumentError, match="runs r, not java"):
        code.run("1", context=ctx, language="java")
    code.delete_context(ctx)


def test_every_kernel_keeps_its_state_across_a_pause(box: SyncNodeSandbox,
                                                    node: SyncNode) -> None:
    declare = {"r": "p <- 7", "javascript": "let p = 7", "typescript": "let p: number = 7",
               "java": "int p = 7;"}
    for language, code in declare.items():
        assert box.code.run(code, language=language).error is None
    node.pause(box.id)  # gVisor: a memory checkpoint, kernels and sockets in it
    node.resume(box.id)
    assert box.code.run("p * 6", language="r").results[0].text == "[1] 42"
    assert box.code.run("p * 6", language="javascript").logs.stdout == ["42\n"]
    assert box.code.run("p * 6", language="typescript").logs.stdout == ["42\n"]
    assert box.code.run("p * 6", language="java").text == "42"


def test_the_python_image_names_the_image_with_the_kernel(sandbox: SyncNodeSandbox) -> None:
    for language in ("r", "javascript", "typescript", "java"):
        with pytest.raises(InvalidArgumentError, match=f"no {language} kernel .* the "
                                                       "code-interpreter image has it"):
            sandbox.code.run("1", language=language)
    assert sandbox.code.run("1 + 1").text == "2"
