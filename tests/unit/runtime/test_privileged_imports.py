"""Privileged code stays in ``runtime/``: no module outside it imports a ``*_unsafe`` module.

Code elsewhere (node, CLI, benchmark, server) reaches the host through
:mod:`corral.runtime.host`. Every import form counts: absolute and relative, of the module
or from it, and ``importlib.import_module`` of a constant name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src"
PACKAGE = SRC / "corral"
RUNTIME = PACKAGE / "runtime"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute name ``from <level dots><module>`` refers to inside ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


def _unsafe(name: str) -> bool:
    return any(part.endswith("_unsafe") for part in name.split("."))


def privileged_imports(source: str, importer: str, is_package: bool = False) -> list[str]:
    """The ``*_unsafe`` modules that ``source`` (module ``importer``) imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _unsafe(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, importer, is_package)
            if _unsafe(base):
                found.append(base)
            else:
                found += [f"{base}.{alias.name}" for alias in node.names
                          if _unsafe(alias.name)]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and _unsafe(node.args[0].value)
              and ast.unparse(node.func) in ("importlib.import_module", "import_module",
                                             "__import__")):
            found.append(node.args[0].value)
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_walk_sees_the_privileged_modules_and_their_callers() -> None:
    """Guards the check below against walking the wrong tree and passing on nothing."""
    names = {module_name(p) for p in _modules()}
    assert {"corral.runtime._cgroups_unsafe", "corral.runtime._mounts_unsafe",
            "corral.runtime.host", "corral.node.node", "corral.cli.doctor"} <= names
    inside = [module_name(p) for p in RUNTIME.rglob("*.py")
              if privileged_imports(p.read_text(), module_name(p), p.name == "__init__.py")]
    assert "corral.runtime.host" in inside


def test_no_module_outside_runtime_imports_an_unsafe_module() -> None:
    offenders = {}
    for path in _modules():
        if path.is_relative_to(RUNTIME):
            continue
        found = privileged_imports(path.read_text(), module_name(path),
                                   path.name == "__init__.py")
        if found:
            offenders[str(path.relative_to(SRC))] = found
    assert not offenders, (
        f"privileged modules imported outside corral/runtime/: {offenders}; "
        "use corral.runtime.host (or add what is missing to it)")


@pytest.mark.parametrize(("source", "importer", "expected"), [
    ("from corral.runtime._cgroups_unsafe import SandboxCgroups", "corral.node.node",
     ["corral.runtime._cgroups_unsafe"]),
    ("from ..runtime._mounts_unsafe import mount_tmpfs", "corral.node.node",
     ["corral.runtime._mounts_unsafe"]),
    ("from .._cgroups_unsafe import remove_node_cgroups", "corral.runtime.gvisor.runtime",
     ["corral.runtime._cgroups_unsafe"]),
    ("import corral.runtime._cgroups_unsafe", "corral.bench.scale",
     ["corral.runtime._cgroups_unsafe"]),
    ("import corral.runtime._mounts_unsafe as mounts", "corral.bench.scale",
     ["corral.runtime._mounts_unsafe"]),
    ("from corral.runtime import _cgroups_unsafe as cgroups", "corral.cli.doctor",
     ["corral.runtime._cgroups_unsafe"]),
    ("from ..runtime import host, _mounts_unsafe", "corral.bench.suite",
     ["corral.runtime._mounts_unsafe"]),
    ("def f():\n    from corral.runtime._cgroups_unsafe import remove_node_cgroups\n",
     "corral.node.node", ["corral.runtime._cgroups_unsafe"]),
    ("import importlib\nimportlib.import_module('corral.runtime._cgroups_unsafe')",
     "corral.cli.doctor", ["corral.runtime._cgroups_unsafe"]),
    ("from corral.runtime.host import sweep, teardown", "corral.node.node", []),
    ("from corral.runtime import _cgroups, _mounts", "corral.node.node", []),
    ("import corral.runtime.unsafe_notes", "corral.node.node", []),
    ("name = 'corral.runtime._cgroups_unsafe'", "corral.node.node", []),
], ids=["from-absolute", "from-relative-up", "from-relative-sibling", "import",
        "import-as", "from-package-import", "from-package-import-among-others",
        "inside-function", "importlib", "host-api", "probe-modules", "other-suffix",
        "plain-string"])
def test_every_import_form_is_caught(source: str, importer: str,
                                     expected: list[str]) -> None:
    assert privileged_imports(source, importer) == expected
