"""The operator's apt sources (:mod:`corral.node.apt_sources`, ``Registries.apt_sources``):
which lines pass, which are refused, and the script and network policy an ``apt`` step gets.
No root, no network: the step itself runs in tests/integration/test_image_build.py.
"""

from __future__ import annotations

import shlex

import pytest

from corral.api.errors import InvalidArgumentError
from corral.api.image_spec import PackagesStep
from corral.node.apt_sources import (SOURCES_FILE, install_script, parse_source,
                                     parse_sources, split_sources)
from corral.node.builder import Registries, _command, _State

GOOD = {
    "deb http://deb.debian.org/debian bookworm main":
        ("http://deb.debian.org/debian", None, "bookworm", ("main",), "deb.debian.org"),
    "deb https://deb.debian.org/debian-security bookworm-security main contrib non-free":
        ("https://deb.debian.org/debian-security", None, "bookworm-security",
         ("main", "contrib", "non-free"), "deb.debian.org"),
    "deb [trusted=yes] http://apt.test:8000/apt/ ./":
        ("http://apt.test:8000/apt/", "[trusted=yes]", "./", (), "apt.test:8000"),
    "deb\t[signed-by=/usr/share/keyrings/mirror.gpg]   http://10.0.0.5:3142/debian  bookworm main":
        ("http://10.0.0.5:3142/debian", "[signed-by=/usr/share/keyrings/mirror.gpg]",
         "bookworm", ("main",), "10.0.0.5:3142"),
    "deb http://Mirror.Example/ stable/updates main":
        ("http://Mirror.Example/", None, "stable/updates", ("main",), "mirror.example"),
    "deb http://mirror.example/flat/ pool/":
        ("http://mirror.example/flat/", None, "pool/", (), "mirror.example"),
}

BAD = [
    "",
    "deb",
    "deb-src http://deb.debian.org/debian bookworm main",
    "rpm http://deb.debian.org/debian bookworm main",
    # a missing suite, or a suite without a component, or a flat one with one
    "deb http://deb.debian.org/debian",
    "deb [trusted=yes] http://apt.test:8000/apt/",
    "deb http://deb.debian.org/debian bookworm",
    "deb [trusted=yes] http://apt.test/apt/ ./ main",
    # other schemes
    "deb ftp://deb.debian.org/debian bookworm main",
    "deb file:/srv/mirror bookworm main",
    "deb cdrom:[Debian]/ bookworm main",
    "deb mirror+http://deb.debian.org/debian bookworm main",
    "deb tor+http://deb.debian.org/debian bookworm main",
    # URLs with a user, a query, a fragment, no host, a bad port, an IPv6 literal, ..
    "deb http://user:pw@deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian?x=1 bookworm main",
    "deb http://deb.debian.org/debian#x bookworm main",
    "deb http:///debian bookworm main",
    "deb http://deb.debian.org:0/debian bookworm main",
    "deb http://deb.debian.org:70000/debian bookworm main",
    "deb http://[2001:db8::1]/debian bookworm main",
    "deb http://deb.debian.org/debian/../x bookworm main",
    "deb http://deb.debian.org/debian ../ main",
    # options other than one [trusted=yes] or [signed-by=/path]
    "deb [trusted=no] http://apt.test/apt/ ./",
    "deb [arch=amd64] http://deb.debian.org/debian bookworm main",
    "deb [trusted=yes arch=amd64] http://deb.debian.org/debian bookworm main",
    "deb [trusted=yes] [trusted=yes] http://deb.debian.org/debian bookworm main",
    "deb [ trusted=yes ] http://deb.debian.org/debian bookworm main",
    "deb [signed-by=keys.gpg] http://deb.debian.org/debian bookworm main",
    "deb [allow-insecure=yes] http://deb.debian.org/debian bookworm main",
    # shell metacharacters and control characters, wherever they are
    "deb http://deb.debian.org/debian bookworm main; rm -rf /",
    "deb http://deb.debian.org/debian bookworm main && touch /x",
    "deb http://deb.debian.org/debian bookworm main | sh",
    "deb http://deb.debian.org/debian bookworm $(touch /x)",
    "deb http://deb.debian.org/debian bookworm `id`",
    "deb http://deb.debian.org/debian bookworm 'main'",
    'deb http://deb.debian.org/debian bookworm "main"',
    "deb http://deb.debian.org/debian$IFS bookworm main",
    "deb http://deb.debian.org/debian bookworm main > /etc/passwd",
    "deb [signed-by=/k;id] http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm main\nrm -rf /",
    "deb http://deb.debian.org/debian bookworm main\r",
    "deb http://deb.debian.org/debian bookworm main\x00",
    "deb http://deb.debian.org/debian bookworm ma\u00efn",
    "deb http://deb.debian.org/debian bookworm main # a comment",
    "deb http://deb.debian.org/" + "d" * 1100 + " bookworm main",
]


@pytest.mark.parametrize("line", list(GOOD))
def test_good_lines_pass(line: str) -> None:
    source = parse_source(line)
    url, option, suite, components, host = GOOD[line]
    assert (source.url, source.option, source.suite, source.components) == (
        url, option, suite, components)
    assert source.host == host
    assert source.line == " ".join(line.split())  # single-spaced, as apt reads it
    assert parse_source(source.line) == source


@pytest.mark.parametrize("line", BAD)
def test_bad_lines_are_refused(line: str) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_source(line)
    with pytest.raises(InvalidArgumentError):
        Registries(apt_sources=(line,))


def test_too_many_sources() -> None:
    line = "deb http://deb.debian.org/debian bookworm main"
    assert len(parse_sources([line] * 32)) == 32
    with pytest.raises(InvalidArgumentError):
        parse_sources([line] * 33)


def test_the_environment_splits_on_semicolons_and_newlines(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_BUILD_APT_SOURCES",
                       " deb http://a.example/debian bookworm main ;\n"
                       "deb [trusted=yes] http://b.example:8080/apt/ ./\n\n;")
    registries = Registries.from_env()
    assert registries.apt_sources == ("deb http://a.example/debian bookworm main",
                                      "deb [trusted=yes] http://b.example:8080/apt/ ./")
    monkeypatch.setenv("CORRAL_BUILD_APT_SOURCES", "deb http://a.example/debian bookworm")
    with pytest.raises(InvalidArgumentError):
        Registries.from_env()  # checked at start
    monkeypatch.delenv("CORRAL_BUILD_APT_SOURCES")
    assert Registries.from_env().apt_sources == ()
    assert split_sources("") == ()


def test_the_sources_hosts_join_the_apt_entries() -> None:
    registries = Registries(apt=("cache.example:3142",), pip=("pypi.test",), npm=(),
                            apt_sources=("deb [trusted=yes] http://apt.test:8000/apt/ ./",
                                         "deb https://mirror.example/debian bookworm main"))
    allowed = {str(rule) for rule in registries.policy(("apt",)).allow}
    assert allowed == {"cache.example:3142", "apt.test:8000", "mirror.example"}
    allowed = {str(rule) for rule in registries.policy(("pip",)).allow}
    assert allowed == {"pypi.test"}
    argv, user, policy, env = _command(PackagesStep(kind="apt", packages=["jq"]),
                                       _State([], {}, "/", "user"), registries)
    assert user == "root" and env == {"DEBIAN_FRONTEND": "noninteractive"}
    assert {str(rule) for rule in policy.allow} == {"cache.example:3142", "apt.test:8000",
                                                    "mirror.example"}
    assert argv[:2] == ["/bin/sh", "-c"]
    assert SOURCES_FILE in argv[2]


def test_the_install_script() -> None:
    plain = install_script(["jq", "curl=7.88.1-10"], ())
    assert plain == ("apt-get update && apt-get install -y --no-install-recommends "
                     "jq curl=7.88.1-10 && apt-get clean && rm -rf /var/lib/apt/lists/*")
    sources = parse_sources(["deb [trusted=yes] http://apt.test:8000/apt/ ./",
                             "deb http://mirror.example/debian bookworm main contrib"])
    script = install_script(["corral-demo-tool"], sources)
    options = (f"-o Dir::Etc::SourceList={SOURCES_FILE} -o Dir::Etc::SourceParts=-")
    assert f"apt-get {options} update && apt-get {options} install -y" in script
    assert script.count("Dir::Etc::SourceList") == 2  # update and install alike
    # The lines reach the shell quoted, one printf argument each.
    written = f"printf '%s\\n' {shlex.join(source.line for source in sources)} > {SOURCES_FILE}"
    assert written in script
    assert script.startswith(f"rm -f {SOURCES_FILE} && ")  # a planted link is not followed
    assert script.endswith(f"; status=$?; rm -f {SOURCES_FILE}; exit $status")
