"""The TypeScript SDK (``sdk/typescript``): its types against the server's OpenAPI document,
its build, its own suite (Node's test runner) and the AI SDK example against a real
``corral serve``, and what ``npm pack`` would publish.

The dev dependencies are installed once per lockfile under the test cache (``npm ci``, see
``tests/_npm.py``); the package is built with ``tsc`` in a copy beside them. The tests skip
where Node 20 is missing."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from corral.api.errors import HTTP_STATUS, ErrorCode
from tests import _npm

from .conftest import Server
from .test_tls import TlsServer, tls_data_dir, tls_server  # noqa: F401 (its fixtures)

PACKAGE = Path(__file__).resolve().parents[2] / "sdk" / "typescript"
#: What the package is built and tested from (``node_modules`` is linked in beside them).
SOURCES = ("package.json", "package-lock.json", "tsconfig.json", "README.md", "src", "test",
           "examples")
#: What ``npm pack`` may ship besides ``dist/``'s JavaScript and declarations.
PACKED = {"package.json", "README.md"}


def modules() -> Path:
    """A folder holding ``node_modules`` as ``npm ci`` installs it from the lockfile."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (scripts/install --test installs it)")
    shown = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    if tuple(int(part) for part in re.findall(r"\d+", shown)[:1]) < (20,):
        pytest.skip(f"the TypeScript SDK needs Node 20 or newer, not {shown}")
    files = {name: (PACKAGE / name).read_bytes() for name in ("package.json", "package-lock.json")}
    return _npm.installed("sdk-ts", files, ["ci", "--ignore-scripts"],
                          "the TypeScript SDK's dev dependencies")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package, built with ``npm run build`` (``tsc``)."""
    installed = modules()
    work = tmp_path_factory.mktemp("sdk-ts") / "typescript"
    work.mkdir()
    for name in SOURCES:
        source = PACKAGE / name
        if source.is_dir():
            shutil.copytree(source, work / name)
        else:
            shutil.copy(source, work / name)
    (work / "node_modules").symlink_to(installed / "node_modules")
    done = subprocess.run(["npm", "run", "build"], cwd=work, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return work


def test_the_built_declarations_type_a_consumer(built: Path) -> None:
    """``test/types/consumer.ts`` against ``dist/``: the declarations stand alone, and a
    wrong field or argument fails (its ``@ts-expect-error`` lines)."""
    done = subprocess.run(["node", "node_modules/typescript/bin/tsc", "-p",
                           "test/types/tsconfig.json"], cwd=built, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def schema_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sdk_ts_schema",
                                                  PACKAGE / "scripts" / "schema.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_types_are_the_servers_openapi_document() -> None:
    generated = schema_script().generate(modules())
    committed = (PACKAGE / "src" / "schema.d.ts").read_text()
    assert generated == committed, (
        "sdk/typescript/src/schema.d.ts is not what the server's OpenAPI document gives: "
        "regenerate it (cd sdk/typescript && npm ci && PYTHONPATH=../../src python3 "
        "scripts/schema.py), then fix what `npm run build` reports in the SDK")


def test_the_error_classes_are_the_servers_codes() -> None:
    source = (PACKAGE / "src" / "errors.ts").read_text()
    union = source.split("export type ErrorCode =", 1)[1].split(";", 1)[0]
    assert set(re.findall(r'"([a-z_]+)"', union)) == {code.value for code in ErrorCode}
    table = source.split("export const HTTP_STATUS", 1)[1].split("};", 1)[0]
    statuses = {code: int(status) for code, status in re.findall(r"(\w+): (\d+)", table)}
    assert statuses == {code.value: status for code, status in HTTP_STATUS.items()}


def test_the_core_uses_no_node_only_api() -> None:
    for path in (PACKAGE / "src").glob("*.ts"):
        text = path.read_text()
        assert not re.search(r"""from\s+["']node:|require\(|\bBuffer\b""", text), path.name
    config = json.loads((PACKAGE / "tsconfig.json").read_text())["compilerOptions"]
    assert config["types"] == []  # so a Node-only name fails tsc


def node_env(server: Server) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "CORRAL_URL": server.url, "CORRAL_API_KEY": server.key,
            "CORRAL_OTHER_KEY": server.other_key, "CORRAL_TEST_TAG": uuid.uuid4().hex[:12],
            "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}


def test_the_sdk_passes_its_suite(server: Server, built: Path) -> None:
    files = sorted(p.name for p in (built / "test").glob("*.test.mjs"))
    ran = subprocess.run(["node", "--test", "--test-reporter=spec", "--test-concurrency=2",
                          "--test-timeout=180000",
                          *(f"test/{name}" for name in files)],
                         cwd=built, env=node_env(server), capture_output=True, text=True,
                         timeout=600)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-8000:]
    declared = sum(p.read_text().count("\ntest(") for p in (built / "test").glob("*.test.mjs"))
    summary = dict(re.findall(r"^ℹ (tests|pass|fail|skipped|cancelled) (\d+)$", ran.stdout,
                              re.MULTILINE))
    assert summary == {"tests": str(declared), "pass": str(declared), "fail": "0",
                       "skipped": "0", "cancelled": "0"}, ran.stdout[-3000:]


def test_the_ai_sdk_example_runs_code_in_a_sandbox(server: Server, built: Path) -> None:
    ran = subprocess.run(["node", "examples/ai-tool.mjs"], cwd=built, env=node_env(server),
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-4000:]
    assert ran.stdout.strip() == "The sum is 409114."  # 0! + 1! + ... + 9!


def test_the_sdk_runs_on_deno(server: Server, built: Path) -> None:
    """The core needs only what every runtime has: the same calls on Deno (the npm
    package's binary), allowed the network and two variables alone."""
    deno = built / "node_modules" / ".bin" / "deno"
    ran = subprocess.run([str(deno), "run", "--no-prompt", "--no-config",
                          "--allow-net=127.0.0.1", "--allow-env=CORRAL_URL,CORRAL_API_KEY",
                          "test/runtimes/smoke.mjs"],
                         cwd=built, env={**node_env(server), "DENO_DIR": str(built / ".deno"),
                                         "DENO_NO_UPDATE_CHECK": "1"},
                         capture_output=True, text=True, timeout=300)
    assert (ran.returncode, ran.stdout.strip()) == (0, "ok"), (ran.stdout + ran.stderr)[-4000:]


def test_the_sdk_trusts_a_tls_server_as_its_runtime_does(
        tls_server: TlsServer, built: Path) -> None:  # noqa: F811 (the fixture imported)
    """``corral serve --tls``: Node trusts its CA through ``NODE_EXTRA_CA_CERTS``; without
    it the call fails (verification is never off), as a ConnectionError."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
           "CORRAL_URL": tls_server.url, "CORRAL_API_KEY": tls_server.key}
    trusted = subprocess.run(["node", "test/runtimes/smoke.mjs"], cwd=built,
                             env={**env, "NODE_EXTRA_CA_CERTS": str(tls_server.files.ca_cert)},
                             capture_output=True, text=True, timeout=300)
    assert (trusted.returncode, trusted.stdout.strip()) == (0, "ok"), trusted.stderr[-3000:]
    untrusted = subprocess.run(["node", "test/runtimes/smoke.mjs"], cwd=built, env=env,
                               capture_output=True, text=True, timeout=300)
    assert untrusted.returncode != 0
    assert "ConnectionError" in untrusted.stderr, untrusted.stderr[-3000:]


def test_the_readme_typescript_example_runs(server: Server, built: Path) -> None:
    readme = (PACKAGE.parents[1] / "README.md").read_text()
    found = re.search(r"^```ts\n(.*?)^```$", readme[readme.index("## TypeScript"):],
                      re.MULTILINE | re.DOTALL)
    assert found is not None, "no ts block under the README's TypeScript section"
    (built / "readme-example.mjs").write_text(found.group(1))  # plain JavaScript too
    ran = subprocess.run(["node", "readme-example.mjs"], cwd=built, env=node_env(server),
                         capture_output=True, text=True, timeout=300)
    assert (ran.returncode, ran.stdout) == (0, "hi\n\n"), (ran.stdout + ran.stderr)[-3000:]


def test_npm_pack_ships_the_built_package_alone(built: Path) -> None:
    done = subprocess.run(["npm", "pack", "--dry-run", "--json", "--ignore-scripts"], cwd=built,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    packed = {entry["path"] for entry in json.loads(done.stdout)[0]["files"]}
    assert {"dist/index.js", "dist/index.d.ts", "dist/schema.d.ts"} <= packed
    others = {path for path in packed if not re.fullmatch(r"dist/[a-z]+\.(js|d\.ts)", path)}
    assert others == PACKED, others
    for name in (p.name for p in (built / "src").glob("*.ts") if not p.name.endswith(".d.ts")):
        stem = name.removesuffix(".ts")
        assert {f"dist/{stem}.js", f"dist/{stem}.d.ts"} <= packed, name
