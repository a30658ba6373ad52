"""Where an image build's ``apt`` steps install from when the operator names the sources
(:attr:`corral.node.builder.Registries.apt_sources`): the lines, checked strictly, and the
step's script that uses them and never the image's own ``/etc/apt/sources.list``.

A line is one-line-style sources.list, ``deb [OPTION] URL SUITE [COMPONENT...]``:

* ``OPTION``, at most one: ``[trusted=yes]`` (an unsigned repository) or
  ``[signed-by=/absolute/path]`` (a keyring in the image);
* ``URL``: ``http://`` or ``https://``, a host name or IPv4 address, an optional port and
  path; no user, query or fragment;
* ``SUITE``: a distribution (``bookworm``) with one component or more (``main``), or a
  flat repository's folder, ending in ``/`` (``./``), with none.

Words are separated by spaces or tabs, and each is made of a few safe characters: anything
else (``deb-src``, other options, a missing suite, ``..``, a quote, ``;``, ``$``, a
newline...) is an InvalidArgumentError. The lines still reach the shell only through
:func:`shlex.quote`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from corral.api.errors import InvalidArgumentError

#: Bounds on what an operator may set.
MAX_LINE = 1024
MAX_SOURCES = 32
#: Where a step's sources are written in its sandbox, and removed from before its layer is
#: taken (``/tmp`` is a tmpfs under gVisor, but not under every runtime).
SOURCES_FILE = "/var/tmp/.corral-apt-sources.list"

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_URL = re.compile(rf"^https?://(?P<host>{_LABEL}(\.{_LABEL})*)(:(?P<port>[0-9]{{1,5}}))?"
                  r"(/[A-Za-z0-9._~%+/-]*)?$")
_OPTION = re.compile(r"^\[(trusted=yes|signed-by=/[A-Za-z0-9._+/-]+)\]$")
_WORD = re.compile(r"^[A-Za-z0-9._+/-]+$")


@dataclass(frozen=True)
class AptSource:
    """One checked line."""

    url: str
    option: str | None
    suite: str
    components: tuple[str, ...]

    @property
    def line(self) -> str:
        """The line as apt reads it, single-spaced."""
        option = [self.option] if self.option else []
        return " ".join(["deb", *option, self.url, self.suite, *self.components])

    @property
    def host(self) -> str:
        """The network entry a step needs to reach it: ``host`` or ``host:port``."""
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port}" if parts.port else f"{parts.hostname}"


def parse_source(line: str) -> AptSource:
    """``line`` checked (see the module); InvalidArgumentError says why it is refused."""
    shown = repr(line[:80])
    if len(line) > MAX_LINE or not re.fullmatch(r"[\x20-\x7e\t]*", line):
        raise InvalidArgumentError(f"apt source {shown}: longer than {MAX_LINE} characters "
                                   "or not printable ASCII")
    words = line.split()
    if not words or words[0] != "deb":
        raise InvalidArgumentError(f"apt source {shown} does not start with 'deb'")
    option = None
    if len(words) > 1 and words[1].startswith("["):
        if not _OPTION.match(words[1]):
            raise InvalidArgumentError(f"apt source {shown}: the only options taken are "
                                       "[trusted=yes] and [signed-by=/path], alone")
        option = words[1]
    rest = words[2:] if option else words[1:]
    if len(rest) < 2:
        raise InvalidArgumentError(f"apt source {shown} needs a URL and a suite")
    url, suite, components = rest[0], rest[1], tuple(rest[2:])
    match = _URL.match(url)
    if not match or ".." in url.split("/")[3:] or not 1 <= int(match["port"] or 80) <= 65535:
        raise InvalidArgumentError(f"apt source {shown}: {url[:80]!r} is not an http(s) URL "
                                   "of a host, an optional port (1-65535) and a path")
    for word in (suite, *components):
        if not _WORD.match(word) or ".." in word.split("/"):
            raise InvalidArgumentError(f"apt source {shown}: {word[:80]!r} is not a suite "
                                       "or component name")
    if suite.endswith("/") and components:
        raise InvalidArgumentError(f"apt source {shown}: a flat repository ({suite!r}) "
                                   "takes no component")
    if not suite.endswith("/") and not components:
        raise InvalidArgumentError(f"apt source {shown}: suite {suite!r} needs a component "
                                   "(or a flat repository's folder, ending in '/')")
    return AptSource(url, option, suite, components)


def parse_sources(lines: Sequence[str]) -> tuple[AptSource, ...]:
    if len(lines) > MAX_SOURCES:
        raise InvalidArgumentError(f"more than {MAX_SOURCES} apt sources")
    return tuple(parse_source(line) for line in lines)


def split_sources(raw: str) -> tuple[str, ...]:
    """The lines of ``CORRAL_BUILD_APT_SOURCES``: separated by ``;`` or newlines, blank
    ones dropped (no valid line holds a ``;``)."""
    return tuple(line.strip() for line in re.split(r"[;\n]", raw) if line.strip())


def install_script(packages: Sequence[str], sources: Sequence[AptSource]) -> str:
    """The ``/bin/sh -c`` script of an ``apt`` step: update the lists and install
    ``packages`` (names the image spec checked), then drop the lists and the downloads.

    With ``sources``, apt reads them alone, from :data:`SOURCES_FILE` (anything already
    there is removed first, a link included), and the file is removed whether or not the
    install worked; the image's own sources are never read, nor changed.
    """
    install = f"install -y --no-install-recommends {shlex.join(packages)}"
    clean = "apt-get clean && rm -rf /var/lib/apt/lists/*"
    if not sources:
        return f"apt-get update && apt-get {install} && {clean}"
    where = shlex.quote(SOURCES_FILE)
    options = f"-o Dir::Etc::SourceList={where} -o Dir::Etc::SourceParts=-"
    lines = " ".join(shlex.quote(source.line) for source in sources)
    return (f"rm -f {where} && printf '%s\\n' {lines} > {where}"
            f" && apt-get {options} update && apt-get {options} {install} && {clean};"
            f" status=$?; rm -f {where}; exit $status")
