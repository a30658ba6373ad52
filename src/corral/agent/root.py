"""Where the sandbox's ``/`` lies for the agent: at ``/`` itself, in every real sandbox.

The runtimes start the agent inside the sandbox's own root, so a sandbox path is the path
the agent opens and :class:`Root` changes nothing. Only the test suite's fake runtime
(``tests/fakes/runtime.py``), which runs the agent as a plain host process with no
isolation, starts it with ``--root DIR`` on its command line: sandbox paths then resolve
under ``DIR`` (the file API's paths, a command's working directory, ``/etc/passwd``).
The command line is the runtime's alone; nothing inside a sandbox can set it.

This is not a wall: a symlink or a command's own absolute paths still reach the host. It
only keeps the tests' files inside their temporary directory.
"""

from __future__ import annotations

import os


class Root:
    """Maps sandbox paths (absolute, as requests name them) to the paths the agent opens."""

    def __init__(self, directory: str = "/") -> None:
        if not os.path.isabs(directory):
            raise ValueError(f"the sandbox root must be an absolute path, not {directory!r}")
        # Resolved: paths are checked against their realpath (agent/files.py), so a root
        # under a linked directory must be compared resolved too.
        directory = os.path.realpath(directory)
        self._prefix = "" if directory == "/" else directory

    def host(self, path: str) -> str:
        """The path the agent opens for sandbox path ``path``."""
        if not self._prefix:
            return path
        return self._prefix + os.path.normpath("/" + path.lstrip("/"))

    def inside(self, path: str) -> str | None:
        """The sandbox path of ``path`` (one the agent opens); None if it lies outside."""
        if not self._prefix:
            return path
        if path == self._prefix:
            return "/"
        if path.startswith(self._prefix + "/"):
            return path[len(self._prefix):]
        return None


def from_argv(argv: list[str]) -> Root:
    """The root named on the agent's command line: none (``/``), or ``--root DIR``."""
    if not argv:
        return Root()
    if len(argv) == 2 and argv[0] == "--root":
        return Root(argv[1])
    raise ValueError(f"unexpected arguments {argv!r}; the agent takes none (or --root DIR)")
