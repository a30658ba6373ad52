"""npm packages for tests, installed once per manifest under the test cache
(``CORRAL_TEST_VENVS``): a folder named by the hash of the files npm installs from."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("CORRAL_TEST_VENVS", "/var/cache/corral/test-venvs"))
#: Seconds one install may take.
INSTALL_TIMEOUT = 600


def installed(prefix: str, files: Mapping[str, bytes], args: list[str], what: str) -> Path:
    """The folder where ``npm <args>`` ran on ``files`` (its ``node_modules`` inside), made
    if missing. Skips without node and npm; fails if npm cannot install ``what``, for the
    test command installs from the registry anyway (scripts/install --test)."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.skip("node and npm are not installed (scripts/install --test installs them)")
    digest = hashlib.sha256(b"".join(files[name] for name in sorted(files))).hexdigest()
    folder = CACHE / f"{prefix}-{digest[:12]}"
    if (folder / "node_modules").is_dir():
        return folder
    building = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    for name, content in files.items():
        (building / name).write_bytes(content)
    try:
        done = subprocess.run([npm, *args, "--no-audit", "--no-fund", "--quiet"],
                              cwd=building, capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT)
        failure = done.stderr.strip()[-300:] if done.returncode else ""
    except subprocess.TimeoutExpired:
        failure = f"npm ran for over {INSTALL_TIMEOUT} s"
    if failure:
        shutil.rmtree(building, ignore_errors=True)
        pytest.fail(f"npm could not install {what}: {failure}")
    try:
        building.rename(folder)
    except OSError:  # another run finished first
        shutil.rmtree(building, ignore_errors=True)
    return folder
