"""The code interpreter on every runtime: real ipykernel kernels behind the kernel bridge.

State across cells, rich results (HTML DataFrames, matplotlib PNGs), errors, streaming,
timeouts and interrupts that keep the context, kernels that die (memory limit, a killed
bridge) and restart, capped output floods, isolated contexts, and bad requests.

Memory: namespaces OOM-kills the kernel alone (it has ``oom_score_adj`` 1000) and the
context restarts; gVisor OOM-kills the whole sandbox (as for commands), which the node must
report as a stopped sandbox with the memory reason. No test asserts a duration.
"""

from __future__ import annotations

import base64
import struct
import threading
import zlib

import pytest

from corral import (
    InvalidArgumentError,
    NotFoundError,
    Resources,
    SandboxNotRunningError,
)
from corral.api import models
from corral.node import SyncNode, SyncNodeSandbox
from corral.node.interpreter import MAX_OUTPUT

MIB = 1024 * 1024


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and IHDR chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16:16 + length]
    (crc,) = struct.unpack(">I", data[16 + length:20 + length])
    assert zlib.crc32(kind + body) == crc
    width, height = struct.unpack(">II", body[:8])
    return width, height


def test_state_rich_results_and_errors(sandbox: SyncNodeSandbox) -> None:
    code = sandbox.code
    ex = code.run("import os\nx = 41\nx + 1")
    assert (ex.error, ex.text, ex.context) == (None, "42", "default")
    assert [r.is_main_result for r in ex.results] == [True]
    # Variables, imports and files persist from one cell to the next.
    ex = code.run("open('notes.txt', 'w').write('kept'); y = x * 2; os.getcwd()")
    assert ex.text == "'/work'" and ex.error is None
    assert code.run("y, open('notes.txt').read()").text == "(82, 'kept')"
    assert sandbox.files.read_text("/work/notes.txt") == "kept"

    ex = code.run("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    [frame] = ex.results
    assert frame.is_main_result and frame.html is not None and "<table" in frame.html
    assert "<td>x</td>" in frame.html and frame.text is not None and "a  b" in frame.text

    ex = code.run("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\n"
                  "plt.show()")
    assert ex.error is None
    [figure] = ex.results
    assert not figure.is_main_result and figure.png is not None
    width, height = png_size(base64.b64decode(figure.png))
    assert width > 100 and height > 100

    ex = code.run("from IPython.display import display, Markdown, HTML, JSON\n"
                  "display(Markdown('# hi'))\ndisplay(HTML('<b>b</b>'))\n"
                  "print('between')\n{'k': [1, 2]}")
    assert [r.markdown for r in ex.results[:1]] == ["# hi"]
    assert ex.results[1].html == "<b>b</b>" and ex.logs.stdout == ["between\n"]
    assert ex.results[2].is_main_result and ex.results[2].text == "{'k': [1, 2]}"
    # Magics and shell escapes behave as in a notebook.
    assert code.run("%pwd").text == "'/work'"
    assert "hello" in "".join(code.run("!echo hello").logs.stdout)

    ex = code.run("print('before'); import sys; print('warn', file=sys.stderr)\n1 / 0")
    assert ex.logs.stdout == ["before\n"] and ex.logs.stderr == ["warn\n"]
    assert ex.error is not None and ex.error.name == "ZeroDivisionError"
    assert ex.error.value == "division by zero"
    assert "1 / 0" in ex.error.traceback and "\x1b[" not in ex.error.traceback
    assert ex.results == [] and isinstance(ex.execution_count, int)


def test_callbacks_stream_before_the_cell_ends(sandbox: SyncNodeSandbox) -> None:
    seen: list[str] = []
    first = threading.Event()
    outcome: list[models.Execution] = []

    def on_stdout(text: str) -> None:
        seen.append(text)
        if "first" in text:
            first.set()

    # The cell ends only once the test has seen "first": a callback that arrived only at
    # the end would leave the cell waiting until its timeout.
    cell = ("import os, time\nprint('first', flush=True)\n"
            "for _ in range(600):\n    if os.path.exists('/tmp/go'): break\n"
            "    time.sleep(0.05)\nprint('last')\n'done'")
    results: list[models.Result] = []
    worker = threading.Thread(target=lambda: outcome.append(sandbox.code.run(
        cell, timeout=60, on_stdout=on_stdout, on_result=results.append)))
    worker.start()
    assert first.wait(60), "stdout did not arrive while the cell ran"
    assert not outcome
    sandbox.files.write("/tmp/go", b"")
    worker.join(60)
    [ex] = outcome
    assert "".join(seen) == "first\nlast\n" and ex.error is None
    assert [r.text for r in results] == ["'done'"] and ex.text == "'done'"


def test_timeout_and_interrupt_keep_the_context(sandbox: SyncNodeSandbox) -> None:
    code = sandbox.code
    code.run("kept = 'yes'")
    ex = code.run("import time\nprint('started', flush=True)\ntime.sleep(600)", timeout=2)
    assert ex.error is not None and ex.error.name == models.TIMEOUT_ERROR
    assert ex.logs.stdout == ["started\n"]
    assert code.run("kept").text == "'yes'"

    outcome: list[models.Execution] = []
    looping = threading.Event()
    worker = threading.Thread(target=lambda: outcome.append(code.run(
        "n = 0\nprint('looping', flush=True)\nwhile True:\n    n += 1", timeout=120,
        on_stdout=lambda _: looping.set())))
    worker.start()
    assert looping.wait(60)
    code.interrupt("default")
    worker.join(60)
    [ex] = outcome
    assert ex.error is not None and ex.error.name == "KeyboardInterrupt"
    assert code.run("kept, n >= 0").text == "('yes', True)"

    # A cell that ignores the interrupt is killed with its kernel; restarting brings a
    # fresh kernel under the same id.
    ex = code.run("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                  "time.sleep(600)", timeout=1)
    assert ex.error is not None and ex.error.name == models.KERNEL_DIED
    assert "interrupt" in ex.error.value
    again = code.run("kept")
    assert again.error is not None and again.error.name == models.KERNEL_DIED
    assert code.restart_context("default").id == "default"
    assert code.run("'kept' in dir(), 2 + 2").text == "(False, 4)"


def test_memory_limit_kills_the_kernel_not_the_node(node: SyncNode, runtime: str) -> None:
    sb = node.create("python", runtime=runtime, resources=Resources(memory_mib=256),
                     timeout=600)
    try:
        assert sb.code.run("small = 1").error is None
        if runtime == "gvisor":
            # gVisor: the host OOM-kills the whole sandbox; the node says so.
            with pytest.raises(SandboxNotRunningError, match="memory limit 256 MiB"):
                sb.code.run("big = b'x' * (600 << 20)")
            with pytest.raises(SandboxNotRunningError, match="memory limit"):
                sb.code.run("1")
            return
        ex = sb.code.run("big = b'x' * (600 << 20)")
        assert ex.error is not None and ex.error.name == models.KERNEL_DIED
        assert "memory limit 256 MiB" in ex.error.value
        assert sb.commands.run("echo alive").stdout == "alive\n"  # the sandbox lives on
        sb.code.restart_context("default")
        assert sb.code.run("'small' in dir(), 1 + 1").text == "(False, 2)"
    finally:
        sb.kill()


def test_output_flood_is_capped(sandbox: SyncNodeSandbox) -> None:
    ex = sandbox.code.run("import sys\nfor _ in range(40):\n"
                          "    sys.stdout.write('y' * (1 << 20))\n'end'", timeout=120)
    assert ex.truncated and ex.error is None and ex.text == "'end'"
    out = "".join(ex.logs.stdout)
    assert MAX_OUTPUT <= len(out) < MAX_OUTPUT + 1024
    assert out.endswith(f"[output truncated: over {MAX_OUTPUT} bytes in this execution]\n")
    # A flooding context leaves the sandbox and the next cell well.
    assert sandbox.commands.run("echo ok").stdout == "ok\n"
    ex = sandbox.code.run("print('small')")
    assert ex.logs.stdout == ["small\n"] and not ex.truncated


def test_contexts_are_isolated(sandbox: SyncNodeSandbox) -> None:
    code = sandbox.code
    a = code.create_context(cwd="/tmp", env={"WHO": "a"})
    b = code.create_context()
    assert a.id != b.id and (a.cwd, b.cwd, a.language) == ("/tmp", "/work", "python")
    code.run("secret = 1", context=a.id)
    ex = code.run("import os\nprint(os.environ.get('WHO'), os.getcwd())\nsecret", context=b.id)
    assert ex.error is not None and ex.error.name == "NameError"
    assert ex.logs.stdout == ["None /work\n"]
    ex = code.run("import os\nos.environ['WHO'], os.getcwd(), secret", context=a.id)
    assert ex.text == "('a', '/tmp', 1)"
    assert {c.id for c in code.list_contexts()} == {a.id, b.id}
    code.delete_context(a.id)
    assert [c.id for c in code.list_contexts()] == [b.id]
    with pytest.raises(NotFoundError):
        code.run("1", context=a.id)


def test_bad_requests_are_refused(sandbox: SyncNodeSandbox) -> None:
    code = sandbox.code
    with pytest.raises(NotFoundError, match="no code context"):
        code.run("1", context="ctx-0000000000000000")
    with pytest.raises(NotFoundError):
        code.restart_context("nope")
    with pytest.raises(InvalidArgumentError, match="unknown language 'cobol'"):
        code.run("1", language="cobol")
    with pytest.raises(InvalidArgumentError, match="unknown language"):
        code.create_context("cobol")
    with pytest.raises(InvalidArgumentError, match="exceeds the limit"):
        code.run("#" * (models.MAX_CODE + 1))
    with pytest.raises(NotFoundError, match="does not exist"):
        code.create_context(cwd="/no/such/dir")
    with pytest.raises(InvalidArgumentError):
        code.run("1", timeout=0)
    assert code.run("1 + 1").text == "2"


def test_a_killed_bridge_is_reported_and_contexts_restart(sandbox: SyncNodeSandbox) -> None:
    code = sandbox.code
    other = code.create_context()
    code.run("x = 1")
    # Code in the sandbox is root: here it kills the bridge (its kernel's parent).
    ex = code.run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                  "import time; time.sleep(30)", timeout=60)
    assert ex.error is not None and ex.error.name == models.KERNEL_DIED
    assert "bridge" in ex.error.value
    ex = code.run("1", context=other.id)
    assert ex.error is not None and ex.error.name == models.KERNEL_DIED
    code.restart_context(other.id)
    assert code.run("'x' in dir()", context=other.id).text == "False"
    assert code.create_context().id not in (other.id, "default")


# -- Bash contexts: a persistent interactive bash per context -------------------------------

BASH = "default-bash"


def test_bash_state_exit_status_and_syntax_errors(sandbox: SyncNodeSandbox) -> None:
    code = sandbox.code
    ex = code.run("x=5; cd /tmp; greet() { echo \"hi $1\"; }; export E=exported; echo $x",
                  language="bash")
    assert (ex.error, ex.context, ex.logs.stdout, ex.results) == (None, BASH, ["5\n"], [])
    first = ex.execution_count
    # Variables, functions, the working directory and exports persist across cells.
    ex = code.run("echo $x $PWD; greet you; bash -c 'echo child $E'", language="bash")
    assert "".join(ex.logs.stdout) == "5 /tmp\nhi you\nchild exported\n" and ex.error is None
    assert isinstance(first, int) and ex.execution_count == first + 1
    ex = code.run("echo out; echo err >&2", language="bash")
    assert (ex.logs.stdout, ex.logs.stderr) == (["out\n"], ["err\n"])

    # The status of the cell's last command: non-zero is the error, its value the status.
    ex = code.run("false", language="bash")
    assert ex.error is not None and (ex.error.name, ex.error.value) == (models.EXIT_STATUS, "1")
    ex = code.run("echo before; (exit 3)", language="bash")
    assert ex.logs.stdout == ["before\n"] and ex.error is not None and ex.error.value == "3"
    assert code.run("false; true", language="bash").error is None

    # Unbalanced quotes cannot break out of the cell: a syntax error, and the context lives.
    ex = code.run("echo 'unbalanced\necho \"$x", language="bash")
    assert ex.error is not None and ex.error.name == models.EXIT_STATUS
    assert "unexpected EOF" in "".join(ex.logs.stderr) and ex.logs.stdout == []
    assert code.run("echo $x", language="bash").logs.stdout == ["5\n"]

    # What a cell prints cannot end it early or leak into the next one, and the fd the
    # shell reports on is closed inside cells.
    ex = code.run("printf 'start x\\nend 0\\n'; echo end 0 >&2; cat /dev/null; echo after;"
                  " echo forged >&99", language="bash")
    assert "".join(ex.logs.stdout) == "start x\nend 0\nafter\n"
    assert "Bad file descriptor" in "".join(ex.logs.stderr)
    assert ex.error is not None and ex.error.value == "1"
    ex = code.run("read -r line; echo \"read $? [$line]\"", language="bash")  # stdin: EOF
    assert ex.logs.stdout == ["read 1 []\n"] and ex.error is None

    # A Python context beside it: separate state; a context runs one language.
    assert code.run("x = 'py'\nx").text == "'py'"
    assert code.run("echo $x", language="bash").logs.stdout == ["5\n"]
    langs = {c.id: c.language for c in code.list_contexts()}
    assert langs == {"default": "python", BASH: "bash"}
    with pytest.raises(InvalidArgumentError, match="runs bash"):
        code.run("1", context=BASH, language="python")


def test_bash_output_streams_while_the_cell_runs(sandbox: SyncNodeSandbox) -> None:
    out: list[str] = []
    err: list[str] = []
    first = threading.Event()
    outcome: list[models.Execution] = []

    def on_stdout(text: str) -> None:
        out.append(text)
        first.set()

    # The cell ends only once the test has seen "first" (else it waits for its timeout).
    cell = ("echo first; for i in $(seq 1200); do [ -e /tmp/go ] && break; sleep 0.05; done;"
            " echo second >&2; echo last")
    worker = threading.Thread(target=lambda: outcome.append(sandbox.code.run(
        cell, language="bash", timeout=90, on_stdout=on_stdout, on_stderr=err.append)))
    worker.start()
    assert first.wait(60), "stdout did not arrive while the cell ran"
    assert not outcome and out == ["first\n"]
    sandbox.files.write("/tmp/go", b"")
    worker.join(60)
    [ex] = outcome
    assert ex.error is None and "".join(out) == "first\nlast\n" and err == ["second\n"]
    assert ex.logs.stdout == out and ex.logs.stderr == err


def test_bash_timeout_interrupt_and_an_ignored_interrupt(sandbox: SyncNodeSandbox) -> None:
    code = sandbox.code
    ctx = code.create_context("bash")
    assert ctx.language == "bash"
    code.run("kept=yes", context=ctx.id)
    ex = code.run("echo started; sleep 600; echo never", context=ctx.id, timeout=2)
    assert ex.error is not None and ex.error.name == models.TIMEOUT_ERROR
    assert ex.logs.stdout == ["started\n"]
    assert code.run("echo $kept", context=ctx.id).logs.stdout == ["yes\n"]

    # An interrupt stops the whole cell (the loop, not just its current command), like
    # Ctrl-C; the variables survive.
    outcome: list[models.Execution] = []
    looping = threading.Event()
    worker = threading.Thread(target=lambda: outcome.append(code.run(
        "n=0; echo looping; while true; do n=$((n + 1)); sleep 0.01; done; echo never",
        context=ctx.id, timeout=120, on_stdout=lambda _: looping.set())))
    worker.start()
    assert looping.wait(60)
    code.interrupt(ctx.id)
    worker.join(60)
    [ex] = outcome
    assert ex.error is not None and (ex.error.name, ex.error.value) == ("KeyboardInterrupt",
                                                                        "130")
    assert ex.logs.stdout == ["looping\n"]
    ex = code.run("echo $kept $((n > 0))", context=ctx.id)
    assert ex.logs.stdout == ["yes 1\n"] and ex.error is None

    # A cell that ignores SIGINT is killed with its shell; restarting gives a fresh one.
    ex = code.run("trap '' INT; sleep 600", context=ctx.id, timeout=1)
    assert ex.error is not None and ex.error.name == models.KERNEL_DIED
    assert "interrupt" in ex.error.value
    again = code.run("echo $kept", context=ctx.id)
    assert again.error is not None and again.error.name == models.KERNEL_DIED
    assert code.restart_context(ctx.id).id == ctx.id
    assert code.run("echo \"[$kept]\"", context=ctx.id).logs.stdout == ["[]\n"]

    # `exit` ends the shell: the context is dead until restarted.
    ex = code.run("echo bye; exit 3", context=ctx.id)
    assert ex.logs.stdout == ["bye\n"] and ex.error is not None
    assert ex.error.name == models.KERNEL_DIED and "status 3" in ex.error.value
    code.restart_context(ctx.id)
    assert code.run("echo ok", context=ctx.id).logs.stdout == ["ok\n"]


def test_bash_output_flood_is_capped(sandbox: SyncNodeSandbox) -> None:
    ex = sandbox.code.run("head -c 41943040 /dev/zero | tr '\\0' y; echo; echo end",
                          language="bash", timeout=120)
    assert ex.truncated and ex.error is None
    out = "".join(ex.logs.stdout)
    assert MAX_OUTPUT <= len(out) < MAX_OUTPUT + 1024 and set(out[:MAX_OUTPUT]) == {"y"}
    assert out.endswith(f"[output truncated: over {MAX_OUTPUT} bytes in this execution]\n")
    ex = sandbox.code.run("echo small", language="bash")
    assert ex.logs.stdout == ["small\n"] and not ex.truncated


def test_bash_contexts_are_isolated(sandbox: SyncNodeSandbox) -> None:
    code = sandbox.code
    a = code.create_context("bash", cwd="/tmp", env={"WHO": "a"})
    b = code.create_context("bash")
    assert a.id != b.id and (a.cwd, b.cwd) == ("/tmp", "/work")
    code.run("secret=1; f() { echo f; }", context=a.id)
    ex = code.run("echo \"[$secret] ${WHO:-none} $PWD\"; f", context=b.id)
    assert ex.logs.stdout == ["[] none /work\n"]
    assert ex.error is not None and ex.error.value == "127"  # f: command not found
    ex = code.run("echo \"[$secret] $WHO $PWD\"; f", context=a.id)
    assert "".join(ex.logs.stdout) == "[1] a /tmp\nf\n" and ex.error is None
    code.delete_context(a.id)
    assert [c.id for c in code.list_contexts()] == [b.id]
    with pytest.raises(NotFoundError):
        code.run("echo", context=a.id)


def test_a_cells_own_env_is_put_back_after_it(sandbox: SyncNodeSandbox) -> None:
    code = sandbox.code
    ctx = code.create_context(env={"BASE": "ctx"})
    show = ("import os, subprocess\nprint(os.environ.get('ONE'), os.environ.get('BASE'))\n"
            "subprocess.run('echo child $ONE', shell=True)")
    ex = code.run(show, context=ctx.id, env={"ONE": "a b", "BASE": "cell"})
    assert "".join(ex.logs.stdout) == "a b cell\nchild a b\n" and ex.error is None
    assert ex.execution_count == 1  # the variables' own request is not counted
    ex = code.run(show, context=ctx.id)
    assert "".join(ex.logs.stdout) == "None ctx\nchild\n"
    # Put back after a failing cell and after an interrupted one too.
    ex = code.run("import os\nassert os.environ['ONE'] == 'x'\n1 / 0", context=ctx.id,
                  env={"ONE": "x"})
    assert ex.error is not None and ex.error.name == "ZeroDivisionError"
    ex = code.run("import time\ntime.sleep(60)", context=ctx.id, env={"ONE": "y"}, timeout=2)
    assert ex.error is not None and ex.error.name == models.TIMEOUT_ERROR
    assert code.run("os.environ.get('ONE'), os.environ['BASE']", context=ctx.id).text == \
        "(None, 'ctx')"
    with pytest.raises(InvalidArgumentError, match="invalid environment variable name"):
        code.run("1", env={"A=B": "x"})

    bash = code.create_context("bash", env={"BASE": "ctx"})
    ex = code.run("echo \"$ONE $BASE\"; bash -c 'echo child $ONE'", context=bash.id,
                  env={"ONE": "a 'b'", "BASE": "cell"})
    assert "".join(ex.logs.stdout) == "a 'b' cell\nchild a 'b'\n"
    ex = code.run("sleep 60", context=bash.id, env={"ONE": "z"}, timeout=2)
    assert ex.error is not None and ex.error.name == models.TIMEOUT_ERROR
    ex = code.run("echo \"${ONE-unset} $BASE\"", context=bash.id)
    assert ex.logs.stdout == ["unset ctx\n"]
