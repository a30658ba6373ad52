"""Which runsc and which gVisor platform the gvisor runtime takes, and what it says when it
cannot: with stand-in runsc scripts, so no root and no gVisor are needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.api.errors import InvalidArgumentError, RuntimeUnavailableError
from corral.runtime.gvisor import runsc
from corral.runtime.gvisor.runsc import GvisorOptions, RunscError
from corral.runtime.gvisor.runtime import GvisorRuntime

pytestmark = pytest.mark.rootless
INSTALL_SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "gvisor" / "fetch-runsc"


def fake_runsc(tmp_path: Path, version: str = runsc.PINNED_VERSION,
               broken: tuple[str, ...] = (), flags: str = "-platform string\n  -directfs"
               ) -> str:
    """A stand-in runsc: says ``version``, lists ``flags`` (on stderr, as Go does), and
    fails ``do`` on each platform in ``broken``."""
    path = tmp_path / "runsc"
    cases = "".join(f'  *--platform={name}*) echo "unknown platform: {name}" >&2; exit 1;;\n'
                    for name in broken)
    path.write_text("#!/bin/sh\ncase \"$*\" in\n"
                    f'  *--version*) echo "runsc version {version}"; echo "spec: 1.0.2";;\n'
                    f"  flags) printf '  %s\\n' '{flags}' >&2;;\n"
                    f"{cases}  *\" do \"*) exit 0;;\n  *) exit 2;;\nesac\n")
    path.chmod(0o755)
    return str(path)


def test_an_unknown_or_refused_platform_is_an_error_at_once() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown gVisor platform 'fast'"):
        GvisorOptions(platform="fast")
    with pytest.raises(InvalidArgumentError, match="kvm is not offered: runsc hangs"):
        GvisorOptions(platform="kvm")
    assert GvisorOptions(platform="ptrace").platform == "ptrace"


def test_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_GVISOR_PLATFORM", "ptrace")
    monkeypatch.setenv("CORRAL_RUNSC", "/opt/runsc")
    assert GvisorOptions.from_env() == GvisorOptions(runsc="/opt/runsc", platform="ptrace")
    monkeypatch.setenv("CORRAL_GVISOR_PLATFORM", "nope")
    with pytest.raises(InvalidArgumentError, match="choose one of: systrap, ptrace"):
        GvisorOptions.from_env()


def test_systrap_is_preferred_where_its_probe_passes(tmp_path: Path) -> None:
    found = runsc.locate(fake_runsc(tmp_path))
    assert (found.version, found.pinned, found.managed) == (runsc.PINNED_VERSION, True, False)
    chosen = runsc.choose(found, None)
    assert (chosen.name, chosen.why) == ("systrap", "its probe passed")


def test_ptrace_where_systrap_fails_and_the_reason_is_kept(tmp_path: Path) -> None:
    found = runsc.locate(fake_runsc(tmp_path, "0.0~20221219.0", broken=("systrap",)))
    chosen = runsc.choose(found, None)
    assert chosen.name == "ptrace"
    assert chosen.why == "its probe passed; not systrap: unknown platform: systrap"


def test_a_forced_platform_that_fails_its_probe_is_refused(tmp_path: Path) -> None:
    found = runsc.locate(fake_runsc(tmp_path, broken=("systrap",)))
    with pytest.raises(RunscError, match="systrap .* does not work .*: unknown platform") as e:
        runsc.choose(found, "systrap")
    assert "unset CORRAL_GVISOR_PLATFORM" in e.value.fix
    assert runsc.choose(found, "ptrace").why.startswith("forced by CORRAL_GVISOR_PLATFORM")


def test_no_platform_at_all_says_why_for_each(tmp_path: Path) -> None:
    found = runsc.locate(fake_runsc(tmp_path, broken=("systrap", "ptrace")))
    with pytest.raises(RunscError, match="no gVisor platform works .*systrap: .*; ptrace: "):
        runsc.choose(found, None)


def test_a_missing_or_corrupt_runsc_names_the_command_that_installs_it(
        tmp_path: Path) -> None:
    with pytest.raises(RunscError, match=r"is missing or not executable; run scripts/install"):
        runsc.locate(str(tmp_path / "nowhere" / "runsc"))
    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(b"\x7fELF\x02\x01\x01 truncated")
    corrupt.chmod(0o755)
    with pytest.raises(RunscError, match="reinstall it: scripts/install"):
        runsc.locate(str(corrupt))
    foreign = tmp_path / "foreign"
    foreign.write_text("#!/bin/sh\necho hello\n")
    foreign.chmod(0o755)
    with pytest.raises(RunscError, match="not a working runsc .*reinstall it: scripts/install"):
        runsc.locate(str(foreign))


def test_the_runtime_reports_binary_version_and_platform(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    runtime = GvisorRuntime(GvisorOptions(runsc=fake_runsc(old, "0.0~20221219.0",
                                                           broken=("systrap",))))
    found, platform = runtime.chosen()
    assert (found.version, platform.name) == ("0.0~20221219.0", "ptrace")
    forced = GvisorRuntime(GvisorOptions(runsc=found.path, platform="systrap"))
    with pytest.raises(RuntimeUnavailableError, match="to fix: unset CORRAL_GVISOR_PLATFORM"):
        forced.chosen()


def test_a_build_that_cannot_list_its_flags_is_refused_not_weakened(tmp_path: Path) -> None:
    """--directfs=false depends on the listing: no listing, no runtime (fail closed)."""
    silent = runsc.locate(fake_runsc(tmp_path, flags="-nothing"))
    with pytest.raises(RunscError, match="listed no flags it is known to have"):
        runsc.resolve(GvisorOptions(runsc=silent.path))
    listed = tmp_path / "listed"
    listed.mkdir()
    found = runsc.locate(fake_runsc(listed))
    assert found.knows("directfs") and not found.knows("nvproxy")


def test_the_install_script_pins_the_version_the_runtime_expects() -> None:
    script = INSTALL_SCRIPT.read_text()
    pinned = re.search(r'^VERSION="([^"]+)"', script, re.M)
    assert pinned is not None and pinned.group(1) == runsc.PINNED_VERSION
    assert re.search(r'^DEB_SHA256="[0-9a-f]{64}"', script, re.M)
    assert f"DEST={runsc.MANAGED.parent}\n" in script
