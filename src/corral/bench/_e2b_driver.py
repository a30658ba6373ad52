"""The E2B side of the benchmark's E2B rows, run by a virtualenv's Python that holds the
``e2b`` package (not Corral: the two pin different ``httpx`` releases).

It reads one JSON request per line on stdin and answers one JSON line on stdout each, so
that the benchmark can interleave its own SDK's calls with these, round by round:

* ``{"op": "create", "template": t, "cmd": c}``: ``Sandbox.create(t)`` then
  ``commands.run(c)`` (which runs ``bash -l -c c``); answers ``{"seconds": s}`` (the
  sandbox is kept for ``exec``);
* ``{"op": "exec"}``: the same command again in that sandbox, ``{"seconds": s}``;
* ``{"op": "kill"}``: kills it, ``{}``.

A failure answers ``{"error": "<type>: <message>"}``; end of input ends the driver.
``E2B_API_URL``, ``E2B_SANDBOX_URL`` and ``E2B_API_KEY`` come from the environment.
Standard library and ``e2b`` only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from e2b import Sandbox


def main() -> None:
    sandbox: Any = None
    command = "true"
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "create":
                command = request["cmd"]
                started = time.perf_counter()
                sandbox = Sandbox.create(request["template"], timeout=600)
                ran = sandbox.commands.run(command)
                answer: dict[str, Any] = {"seconds": time.perf_counter() - started,
                                          "exit_code": ran.exit_code}
            elif request["op"] == "exec":
                started = time.perf_counter()
                ran = sandbox.commands.run(command)
                answer = {"seconds": time.perf_counter() - started, "exit_code": ran.exit_code}
            elif request["op"] == "kill":
                if sandbox is not None:
                    sandbox.kill()
                sandbox, answer = None, {}
            else:
                answer = {"error": f"unknown op {request['op']!r}"}
        except Exception as exc:  # reported to the benchmark, which stops
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
    os._exit(0)  # nothing left to finalize; some e2b releases' HTTP stacks crash doing it
