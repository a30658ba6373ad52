"""Image specs: what an image is built from, as data. Pure functions; no I/O but reading a
build context's files.

The SDK's ``Image`` builder, the Dockerfile subset (:func:`parse_dockerfile`) and the REST
API all produce one :class:`ImageSpec`: a base (a Corral image) and an ordered list of
steps. Each step has a cache key (:func:`step_keys`): the sha256 of its parent's key, the
step's canonical JSON and, for a copy, the digest of the files it copies
(:func:`context_digest`). Changing a step changes its key and every later one, and no
earlier one, so a rebuild after changing the last step redoes that step only.

Every field is checked here, before anything runs: package names against their registry's
rules, paths in the image absolute and normal, copy sources inside the build context (no
``..``, no absolute path, no symlink that leads out of it), and sizes bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Final, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator)

from .errors import InvalidArgumentError
from .limits import MAX_COMMAND, MAX_PATH, normalize_path

#: Most steps one image may have.
MAX_STEPS: Final = 128
#: Most packages one install step names.
MAX_PACKAGES: Final = 512
#: Most files one copy step may take from the build context, and their bytes together.
MAX_CONTEXT_FILES: Final = 100_000
MAX_CONTEXT_BYTES: Final = 4 * 1024 * 1024 * 1024
#: Largest Dockerfile read, in bytes.
MAX_DOCKERFILE: Final = 1024 * 1024

_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}(:[a-z0-9][a-z0-9._-]{0,63})?$")
_APT = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$")
# A requirement as pip takes it on the command line: a name, extras, a version specifier.
_PIP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?"
                  r"([<>=!~]=?[A-Za-z0-9.*+!_-]+(,[<>=!~]=?[A-Za-z0-9.*+!_-]+)*)?$")
_NPM = re.compile(r"^(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*(@[A-Za-z0-9.^~<>=*|+ -]+)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME_OR_ID = r"([a-z_][a-z0-9_-]{0,31}|[0-9]{1,10})"
_USER = re.compile(rf"^{_NAME_OR_ID}(:{_NAME_OR_ID})?$")
_INDEX = re.compile(r"^https?://[^\s\"'<>]{1,2000}$")


def _model_config() -> ConfigDict:
    return ConfigDict(extra="forbid", frozen=True)


def _image_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value[:80]!r} must be an absolute path in the image")
    return normalize_path(value, "/")


ImagePath = Annotated[str, Field(min_length=1, max_length=MAX_PATH)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_COMMAND)]


class RunStep(BaseModel):
    """Run a command in the image being built (a shell string, or an argv list)."""

    model_config = _model_config()
    kind: Literal["run"] = "run"
    command: Text | Annotated[list[Annotated[str, Field(max_length=MAX_COMMAND)]],
                              Field(min_length=1, max_length=4096)]


class PackagesStep(BaseModel):
    """Install packages: ``apt`` (Debian's archive), ``pip`` (PyPI, or ``index_url``) or
    ``npm`` (the npm registry)."""

    model_config = _model_config()
    kind: Literal["apt", "pip", "npm"]
    packages: Annotated[list[Annotated[str, Field(max_length=256)]],
                        Field(min_length=1, max_length=MAX_PACKAGES)]
    index_url: str | None = None

    @field_validator("packages")
    @classmethod
    def _names(cls, packages: list[str], info: ValidationInfo) -> list[str]:
        kind = str(info.data.get("kind"))
        rule = {"apt": _APT, "pip": _PIP, "npm": _NPM}.get(kind, _PIP)
        for package in packages:
            if not rule.match(package):
                raise ValueError(f"{package[:80]!r} is not a {kind} package name")
        return packages

    @field_validator("index_url")
    @classmethod
    def _index(cls, value: str | None) -> str | None:
        if value is not None and not _INDEX.match(value):
            raise ValueError("index_url must be an http(s) URL")
        return value


class EnvStep(BaseModel):
    """Set environment variables for later steps and the image's commands."""

    model_config = _model_config()
    kind: Literal["env"] = "env"
    env: Annotated[dict[Annotated[str, Field(max_length=256)],
                        Annotated[str, Field(max_length=MAX_COMMAND)]],
                   Field(min_length=1, max_length=256)]

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name[:80]!r} is not an environment variable name")
        return env


class WorkdirStep(BaseModel):
    """The working directory of later steps and of the image's commands (made if missing)."""

    model_config = _model_config()
    kind: Literal["workdir"] = "workdir"
    path: ImagePath

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _image_path(value)


class UserStep(BaseModel):
    """The user later steps and the image's commands run as (``name``, ``uid``,
    ``name:group``)."""

    model_config = _model_config()
    kind: Literal["user"] = "user"
    user: Annotated[str, Field(max_length=65)]

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not _USER.match(value):
            raise ValueError(f"{value[:80]!r} is not a user name or uid")
        return value


class CopyStep(BaseModel):
    """Copy files of the build context (``sources``, relative to it) to ``destination``.

    ``digest`` is :func:`context_digest` of the sources: what the cache key depends on.
    """

    model_config = _model_config()
    kind: Literal["copy"] = "copy"
    sources: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_PATH)]],
                       Field(min_length=1, max_length=256)]
    destination: ImagePath
    ignore: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=256)] = []
    chown: Annotated[str, Field(max_length=65)] | None = None
    digest: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None

    @field_validator("sources")
    @classmethod
    def _sources(cls, sources: list[str]) -> list[str]:
        try:
            return [context_relative(s) for s in sources]
        except InvalidArgumentError as exc:
            raise ValueError(exc.message) from None

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str) -> str:
        # A Dockerfile's relative destination is under the working directory: the parser
        # resolves it before it gets here.
        return _image_path(value) + ("/" if value.endswith("/") and value != "/" else "")


Step = Annotated[RunStep | PackagesStep | EnvStep | WorkdirStep | UserStep | CopyStep,
                 Field(discriminator="kind")]


class ImageSpec(BaseModel):
    """A base image and the steps that make a new image of it; what it runs by default."""

    model_config = _model_config()
    base: Annotated[str, Field(max_length=129)]
    steps: Annotated[list[Step], Field(max_length=MAX_STEPS)] = []
    labels: Annotated[dict[Annotated[str, Field(max_length=256)],
                           Annotated[str, Field(max_length=4096)]],
                      Field(max_length=256)] = {}
    entrypoint: list[Annotated[str, Field(max_length=MAX_COMMAND)]] | None = None
    cmd: list[Annotated[str, Field(max_length=MAX_COMMAND)]] | None = None

    @field_validator("base")
    @classmethod
    def _base(cls, value: str) -> str:
        if not _IMAGE.match(value):
            raise ValueError(f"{value[:80]!r} is not an image name (such as python or "
                             "my-env:1)")
        return value


def checked(model: type[BaseModel], where: str, **fields: object) -> BaseModel:
    """``model(**fields)``, a failure an InvalidArgumentError naming ``where``."""
    try:
        return model(**fields)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}"
                           for e in exc.errors()[:3])
        raise InvalidArgumentError(f"{where}: {detail}") from None


def context_relative(path: str) -> str:
    """A build-context path, normal and relative; InvalidArgumentError if it is absolute or
    leaves the context (``..``)."""
    if "\0" in path:
        raise InvalidArgumentError(f"context path {path[:80]!r} holds a NUL byte")
    pure = PurePosixPath(path)
    if pure.is_absolute():
        raise InvalidArgumentError(f"context path {path[:80]!r} is absolute: copy sources "
                                   "are relative to the build context")
    parts = [p for p in pure.parts if p != "."]
    if ".." in parts:
        raise InvalidArgumentError(f"context path {path[:80]!r} leaves the build context")
    return "/".join(parts) or "."


# -- cache keys ----------------------------------------------------------------------------

def step_keys(spec: ImageSpec, base: str | None = None) -> list[str]:
    """Each step's cache key, in order: the sha256 of the previous key (for the first, of
    ``base``: what identifies the base's content, its name by default), the step's
    canonical JSON, and what it reads (a copy's digest is in its JSON). A copy without a
    digest has no key: compute it with :func:`context_digest`."""
    keys = []
    parent = hashlib.sha256(f"corral-image-base\0{base or spec.base}".encode()).hexdigest()
    for number, step in enumerate(spec.steps, 1):
        if isinstance(step, CopyStep) and step.digest is None:
            raise InvalidArgumentError(f"step {number} (copy) has no digest of its files")
        canonical = json.dumps(step.model_dump(mode="json"), sort_keys=True,
                               separators=(",", ":"))
        parent = hashlib.sha256(f"{parent}\0{canonical}".encode()).hexdigest()
        keys.append(parent)
    return keys


def context_digest(context: Path, sources: Sequence[str], ignore: Sequence[str] = ()) -> str:
    """The sha256 of what a copy takes from ``context``: every file's relative path, kind,
    mode and content (a link's target), in a fixed order. InvalidArgumentError if a source
    is missing, or a link leads out of the context, or the files are too many or too big."""
    root = context.resolve()
    digest = hashlib.sha256()
    count = total = 0
    for source in sources:
        relative = context_relative(source)
        for path in walk_context(root, relative, ignore):
            count += 1
            if count > MAX_CONTEXT_FILES:
                raise InvalidArgumentError(f"the copy takes more than {MAX_CONTEXT_FILES} "
                                           "files; add an ignore pattern")
            info = os.lstat(path)
            name = path.relative_to(root).as_posix()
            digest.update(f"{name}\0{stat.S_IFMT(info.st_mode)}\0"
                          f"{stat.S_IMODE(info.st_mode):o}\0".encode())
            if stat.S_ISLNK(info.st_mode):
                digest.update(os.readlink(path).encode("utf-8", "surrogateescape") + b"\0")
            elif stat.S_ISREG(info.st_mode):
                total += info.st_size
                if total > MAX_CONTEXT_BYTES:
                    raise InvalidArgumentError(f"the copy takes more than "
                                               f"{MAX_CONTEXT_BYTES >> 30} GiB")
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
            digest.update(b"\0")
    return digest.hexdigest()


def walk_context(root: Path, relative: str, ignore: Sequence[str]) -> Iterator[Path]:
    """The files under ``root/relative`` (itself if a file), sorted, skipping ``ignore``
    patterns; links are yielded, not followed, and must stay inside ``root``."""
    start = root / relative
    if not os.path.lexists(start):
        raise InvalidArgumentError(f"{relative!r} is not in the build context")
    _inside(root, start)
    pending = [start]
    while pending:
        path = pending.pop()
        name = path.relative_to(root).as_posix()
        if name != "." and any(PurePosixPath(name).match(p) for p in ignore):
            continue
        if path.is_symlink():
            _inside(root, path)
            yield path
        elif path.is_dir():
            yield path
            pending.extend(sorted(path.iterdir(), reverse=True))
        elif path.is_file():
            yield path
        else:
            raise InvalidArgumentError(f"{name!r} in the build context is not a file, a "
                                       "directory or a link")


def _inside(root: Path, path: Path) -> None:
    """InvalidArgumentError unless ``path`` (following links) stays inside ``root``."""
    target = path.resolve()
    if target != root and root not in target.parents:
        raise InvalidArgumentError(f"{path.relative_to(root).as_posix()!r} leads out of the "
                                   "build context (a link to outside it)")


# -- the Dockerfile subset -------------------------------------------------------------------

SUPPORTED: Final = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "LABEL",
                    "ENTRYPOINT", "CMD")
_SUBSTITUTION = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}"
                           r"|([A-Za-z_][A-Za-z0-9_]*))")


def parse_dockerfile(text: str, build_args: Mapping[str, str] | None = None) -> ImageSpec:
    """The :class:`ImageSpec` a Dockerfile describes (the subset in docs: one ``FROM`` of a
    Corral image, ``RUN``, ``COPY``/``ADD`` from the context only, ``ENV``, ``ARG``,
    ``WORKDIR``, ``USER``, ``LABEL``, ``ENTRYPOINT``/``CMD``). Copies carry no digest yet.
    Anything else is an InvalidArgumentError naming the instruction and its line."""
    if len(text.encode("utf-8", "surrogateescape")) > MAX_DOCKERFILE:
        raise InvalidArgumentError(f"the Dockerfile is larger than {MAX_DOCKERFILE >> 20} MiB")
    args: dict[str, str] = {}
    given = dict(build_args or {})
    env: dict[str, str] = {}
    base: str | None = None
    workdir = "/"
    steps: list[BaseModel] = []
    labels: dict[str, str] = {}
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    for number, instruction, rest in _instructions(text):
        where = f"Dockerfile line {number} ({instruction})"
        if instruction not in SUPPORTED:
            raise InvalidArgumentError(f"Dockerfile line {number}: {instruction} is not "
                                       f"supported (supported: {', '.join(SUPPORTED)})")
        if base is None and instruction not in ("FROM", "ARG"):
            raise InvalidArgumentError(f"{where}: the Dockerfile must start with FROM")
        values = {**args, **env}
        if instruction == "ARG":
            name, sep, default = rest.partition("=")
            name = name.strip()
            if not _ENV_NAME.match(name):
                raise InvalidArgumentError(f"{where}: {name[:80]!r} is not an argument name")
            args[name] = given.get(name, _substitute(default, values, where) if sep else "")
            continue
        if instruction == "FROM":
            if base is not None:
                raise InvalidArgumentError(f"{where}: one FROM only (multi-stage builds are "
                                           "not supported)")
            words = _substitute(rest, values, where).split()
            if len(words) == 3 and words[1].upper() == "AS":
                words = words[:1]
            if len(words) != 1 or words[0].startswith("--"):
                raise InvalidArgumentError(f"{where}: expected FROM IMAGE")
            base = words[0]
            checked(ImageSpec, where, base=base)
            continue
        if instruction == "RUN":
            command = _command(rest, where)
            if isinstance(command, str):
                command = _substitute(command, values, where, shell=True)
            steps.append(checked(RunStep, where, command=command))
        elif instruction in ("COPY", "ADD"):
            steps.append(_copy(instruction, rest, values, workdir, where))
        elif instruction == "ENV":
            pairs = _pairs(rest, values, where, legacy=True)
            env.update(pairs)
            steps.append(checked(EnvStep, where, env=pairs))
        elif instruction == "WORKDIR":
            workdir = _path(_substitute(rest.strip(), values, where), workdir, where)
            steps.append(checked(WorkdirStep, where, path=workdir))
        elif instruction == "USER":
            steps.append(checked(UserStep, where, user=_substitute(rest.strip(), values, where)))
        elif instruction == "LABEL":
            labels.update(_pairs(rest, values, where, legacy=False))
        else:  # ENTRYPOINT, CMD
            command = _command(rest, where)
            argv = ["/bin/sh", "-c", command] if isinstance(command, str) else command
            if instruction == "ENTRYPOINT":
                entrypoint = argv
            else:
                cmd = argv
    if base is None:
        raise InvalidArgumentError("the Dockerfile has no FROM")
    spec = checked(ImageSpec, "Dockerfile", base=base, steps=steps, labels=labels,
                   entrypoint=entrypoint, cmd=cmd)
    assert isinstance(spec, ImageSpec)
    return spec


def _instructions(text: str) -> Iterator[tuple[int, str, str]]:
    """(first line number, INSTRUCTION, the rest) of each logical line: comments and blank
    lines skipped, a trailing ``\\`` continues onto the next line."""
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        logical = " ".join(pending).strip()
        pending = []
        instruction, _, rest = logical.partition(" ")
        yield start, instruction.upper(), rest.strip()
    if pending:
        logical = " ".join(pending).strip()
        instruction, _, rest = logical.partition(" ")
        yield start, instruction.upper(), rest.strip()


def _path(path: str, workdir: str, where: str) -> str:
    try:
        return normalize_path(path, workdir)
    except ValueError as exc:
        raise InvalidArgumentError(f"{where}: {exc}") from None


def _command(rest: str, where: str) -> str | list[str]:
    """The exec form (a JSON array of strings) or the shell form (the text as it is)."""
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            raise InvalidArgumentError(f"{where}: the exec form must be a JSON array of "
                                       "strings") from None
        if not isinstance(value, list) or not value or not all(isinstance(v, str)
                                                               for v in value):
            raise InvalidArgumentError(f"{where}: the exec form must be a JSON array of "
                                       "strings")
        return value
    if not rest:
        raise InvalidArgumentError(f"{where}: a command is missing")
    return rest


def _substitute(text: str, values: Mapping[str, str], where: str, shell: bool = False) -> str:
    """``$NAME``, ``${NAME}`` and ``${NAME:-default}`` replaced by ARG and ENV values. In a
    RUN's shell form only names Corral knows are replaced; the shell expands the rest."""
    def replace(found: re.Match[str]) -> str:
        name = found[1] or found[3]
        if name in values:
            return values[name]
        if shell:
            return found[0]
        return found[2] or ""

    return _SUBSTITUTION.sub(replace, text)


def _pairs(rest: str, values: Mapping[str, str], where: str, legacy: bool) -> dict[str, str]:
    """``KEY=VALUE ...`` (values may be quoted), or the legacy ``KEY VALUE`` of ENV."""
    try:
        words = shlex.split(rest, posix=True)
    except ValueError as exc:
        raise InvalidArgumentError(f"{where}: {exc}") from None
    if legacy and words and "=" not in words[0]:
        name, _, value = rest.partition(" ")
        return {name.strip(): _substitute(value.strip(), values, where)}
    pairs = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise InvalidArgumentError(f"{where}: expected KEY=VALUE, not {word[:80]!r}")
        pairs[name] = _substitute(value, values, where)
    if not pairs:
        raise InvalidArgumentError(f"{where}: expected KEY=VALUE")
    return pairs


def _copy(instruction: str, rest: str, values: Mapping[str, str], workdir: str,
          where: str) -> BaseModel:
    words = _command(rest, where) if rest.startswith("[") else shlex.split(rest)
    assert isinstance(words, list)
    chown = None
    while words and words[0].startswith("--"):
        option, _, value = words.pop(0).partition("=")
        if option == "--chown" and value:
            chown = _substitute(value, values, where)
        else:
            raise InvalidArgumentError(f"{where}: option {option[:40]} is not supported "
                                       "(only --chown)")
    words = [_substitute(w, values, where) for w in words]
    if len(words) < 2:
        raise InvalidArgumentError(f"{where}: expected {instruction} SOURCE... DESTINATION")
    *sources, destination = words
    for source in sources:
        if "://" in source or source.startswith("git@"):
            raise InvalidArgumentError(f"{where}: {source[:80]!r}: only files of the build "
                                       "context can be copied (no URLs)")
    absolute = _path(destination, workdir, where) + ("/" if destination.endswith("/")
                                                      and destination != "/" else "")
    if len(sources) > 1 and not absolute.endswith("/"):
        raise InvalidArgumentError(f"{where}: with several sources the destination must be "
                                   "a directory ending in /")
    return checked(CopyStep, where, sources=sources, destination=absolute, chown=chown)
