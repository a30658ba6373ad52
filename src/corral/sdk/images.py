"""``Image``: images built from code on the server, each step in a sandbox.

An :class:`Image` is a value: every method returns a new one, so a base can be shared.
Nothing runs until :meth:`Image.build` (or :meth:`Image.build_async`), or until a sandbox is
created from it (``Sandbox.create(image=img)``), which builds it first; steps built before,
by anyone on the server, are not run again (their layers are cached, keyed by their
content).

Example::

    from corral import Image, Sandbox

    img = (Image.base("python")
           .apt_install("jq")
           .pip_install("httpx==0.28.1")
           .env({"APP_MODE": "prod"})
           .add_local_dir("./app", "/app", ignore=["*.pyc", "__pycache__"])
           .workdir("/app"))
    info = img.build(name="my-env:1", on_log=print)
    with Sandbox.create(image="my-env:1") as sb:
        print(sb.commands.run("python3 main.py").stdout)
"""

from __future__ import annotations

import asyncio
import json
import os
import tarfile
import tempfile
import tomllib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pydantic import BaseModel

from corral.api import models
from corral.api.errors import InvalidArgumentError, error_from_code
from corral.api.image_spec import (MAX_DOCKERFILE, CopyStep, EnvStep, ImageSpec,
                                   PackagesStep, RunStep, UserStep, WorkdirStep, checked,
                                   context_relative, parse_dockerfile)

from ._http import ApiClient
from ._portal import portal

#: What ``on_log`` is given: each line a step prints, and a line per step as it begins.
LogCallback = Callable[[str], None]
CaFile = str | os.PathLike[str]
#: The base of an image from an archive until the archive is imported (then its id).
_ARCHIVE_BASE = "sha256:" + "0" * 64


@dataclass(frozen=True)
class _Source:
    """A local file or folder a copy step takes, and its name in the uploaded context."""

    local: Path
    name: str
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class Image:
    """An image definition: a base and steps. Build it with :meth:`build`."""

    _base: str
    _steps: tuple[BaseModel, ...] = ()
    _sources: tuple[_Source, ...] = ()
    _entrypoint: tuple[str, ...] | None = None
    _cmd: tuple[str, ...] | None = None
    _labels: tuple[tuple[str, str], ...] = field(default=())
    #: An OCI archive to import first, and which image of it: the base once imported.
    _archive: tuple[Path, str | None] | None = None

    # -- bases -----------------------------------------------------------------------------

    @classmethod
    def base(cls, name: str = "python") -> Image:
        """Start from an image the server has: a public one (``python``) or one of yours
        (``my-env:1``, or its ``sha256:`` id)."""
        if not name.startswith("sha256:"):
            checked(ImageSpec, "Image.base", base=name)
        return cls(name)

    @classmethod
    def debian_slim(cls, python_version: str | None = None) -> Image:
        """Debian bookworm with its Python (3.11) and pip: the server's ``python`` image."""
        if python_version not in (None, "3.11"):
            raise InvalidArgumentError(f"python_version {python_version!r}: the Debian image "
                                       "has Python 3.11; install another with run_commands")
        return cls("python")

    @classmethod
    def from_oci_archive(cls, path: str | os.PathLike[str], tag: str | None = None) -> Image:
        """Start from the image in an OCI archive: a ``docker save`` tarball or an OCI
        image layout as a tar (gzip allowed). It is uploaded and imported when the image
        is built; ``tag`` picks one image when the archive holds several."""
        archive = Path(path)
        if not archive.is_file():
            raise InvalidArgumentError(f"{path}: no such file")
        return cls(_ARCHIVE_BASE, _archive=(archive, tag))

    @classmethod
    def from_dockerfile(cls, path: str | os.PathLike[str], context: str | os.PathLike[str]
                        = ".", build_args: Mapping[str, str] | None = None) -> Image:
        """An image from a Dockerfile (the subset ``corral image build`` documents); its
        COPY/ADD sources are taken from ``context``."""
        text = Path(path).read_text(encoding="utf-8")
        return cls._of_spec(parse_dockerfile(text, build_args), Path(context))

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], context: str | os.PathLike[str] = "."
                  ) -> Image:
        """An image from a ``corral.toml``: the image spec as TOML (``base``, then
        ``[[steps]]`` tables with a ``kind`` each, as the REST API takes them, and
        optionally ``labels``, ``entrypoint``, ``cmd``); copy sources are in ``context``.

        Example ``corral.toml``::

            base = "python"

            [[steps]]
            kind = "pip"
            packages = ["httpx==0.28.1"]

            [[steps]]
            kind = "copy"
            sources = ["app"]
            destination = "/app"
        """
        raw = Path(path).read_bytes()
        if len(raw) > MAX_DOCKERFILE:
            raise InvalidArgumentError(f"{path} is larger than {MAX_DOCKERFILE >> 20} MiB")
        try:
            document = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"{path}: not TOML: {exc}") from None
        spec = checked(ImageSpec, str(path), **document)
        assert isinstance(spec, ImageSpec)
        return cls._of_spec(spec, Path(context))

    @classmethod
    def _of_spec(cls, spec: ImageSpec, root: Path) -> Image:
        sources = []
        for step in spec.steps:
            if isinstance(step, CopyStep):
                # The server applies each step's ignore patterns; sources of one context
                # may overlap, so they are uploaded whole (once each, see _upload_context).
                for source in step.sources:
                    sources.append(_Source(root / source, context_relative(source)))
        return cls(spec.base, tuple(spec.steps), tuple(sources),
                   tuple(spec.entrypoint) if spec.entrypoint is not None else None,
                   tuple(spec.cmd) if spec.cmd is not None else None,
                   tuple(spec.labels.items()))

    # -- steps -----------------------------------------------------------------------------

    def apt_install(self, *packages: str) -> Image:
        """``apt-get install`` Debian packages (as root, from the operator's mirror)."""
        return self._step(PackagesStep, "apt_install", kind="apt", packages=list(packages))

    def pip_install(self, *packages: str, index_url: str | None = None) -> Image:
        """``pip install`` packages (``name``, ``name==1.2``, ``name[extra]>=1``)."""
        return self._step(PackagesStep, "pip_install", kind="pip", packages=list(packages),
                          index_url=index_url)

    def pip_install_from_requirements(self, path: str | os.PathLike[str],
                                      index_url: str | None = None) -> Image:
        """``pip install`` what a requirements file names (one requirement a line;
        comments and blank lines skipped; options such as ``-r`` are refused)."""
        packages = []
        for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("-"):
                raise InvalidArgumentError(f"{path}:{number}: {line[:40]!r}: options are not "
                                           "supported; list requirements only")
            packages.append(line.replace(" ", ""))
        return self.pip_install(*packages, index_url=index_url)

    def npm_install(self, *packages: str) -> Image:
        """``npm install --global`` packages (the image must have npm)."""
        return self._step(PackagesStep, "npm_install", kind="npm", packages=list(packages))

    def run_commands(self, *commands: str | Sequence[str]) -> Image:
        """Run each command (a shell string, or an argv list) as the image's user."""
        image = self
        for command in commands:
            value: Any = command if isinstance(command, str) else list(command)
            image = image._step(RunStep, "run_commands", command=value)
        return image

    def env(self, variables: Mapping[str, str]) -> Image:
        """Set environment variables for later steps and the image's sandboxes."""
        return self._step(EnvStep, "env", env=dict(variables))

    def workdir(self, path: str) -> Image:
        """The working directory of later steps and of commands (made if missing)."""
        return self._step(WorkdirStep, "workdir", path=path)

    def user(self, name: str) -> Image:
        """The user later ``run_commands`` steps run as."""
        return self._step(UserStep, "user", user=name)

    def add_local_file(self, local: str | os.PathLike[str], remote: str,
                       chown: str | None = None) -> Image:
        """Copy a local file to ``remote`` in the image (into it if it ends with ``/``)."""
        path = Path(local)
        if not path.is_file():
            raise InvalidArgumentError(f"{local}: no such file")
        name = f"f{len(self._sources)}/{path.name}"
        image = self._step(CopyStep, "add_local_file", sources=[name], destination=remote,
                           chown=chown)
        return replace(image, _sources=(*self._sources, _Source(path, name)))

    def add_local_dir(self, local: str | os.PathLike[str], remote: str,
                      ignore: Iterable[str] = (), chown: str | None = None) -> Image:
        """Copy a local folder's contents to ``remote``, leaving out the glob patterns of
        ``ignore`` (``*.pyc``, ``.git``)."""
        path = Path(local)
        if not path.is_dir():
            raise InvalidArgumentError(f"{local}: no such folder")
        name = f"d{len(self._sources)}"
        patterns = list(ignore)
        image = self._step(CopyStep, "add_local_dir", sources=[name], destination=remote,
                           ignore=patterns, chown=chown)
        return replace(image, _sources=(*self._sources, _Source(path, name, tuple(patterns))))

    def _step(self, model: type[BaseModel], where: str, **fields: Any) -> Image:
        step = checked(model, where, **fields)
        return replace(self, _steps=(*self._steps, step))

    # -- building --------------------------------------------------------------------------

    @property
    def spec(self) -> ImageSpec:
        """The definition as the server takes it."""
        spec = checked(ImageSpec, "Image", base=self._base, steps=list(self._steps),
                       labels=dict(self._labels),
                       entrypoint=list(self._entrypoint) if self._entrypoint else None,
                       cmd=list(self._cmd) if self._cmd else None)
        assert isinstance(spec, ImageSpec)
        return spec

    def build(self, name: str | None = None, *, on_log: LogCallback | None = None,
              runtime: str | None = None, url: str | None = None, api_key: str | None = None,
              ca_file: CaFile | None = None,
              max_retries: int | None = None) -> models.ImageInfo:
        """Build it on the server and return the image (``name``: what to call it, such
        as ``my-env:1``; unnamed, use its ``id``). ``on_log`` gets the build's lines as
        they come (it runs on the SDK's thread). Raises ``BuildFailedError`` naming the
        step that failed, with its output."""
        return portal().call(lambda: self.build_async(
            name, on_log=on_log, runtime=runtime, url=url, api_key=api_key, ca_file=ca_file,
            max_retries=max_retries))

    async def build_async(self, name: str | None = None, *, on_log: LogCallback | None = None,
                          runtime: str | None = None, url: str | None = None,
                          api_key: str | None = None, ca_file: CaFile | None = None,
                          max_retries: int | None = None
                          ) -> models.ImageInfo:
        """:meth:`build`, awaited."""
        api = ApiClient(url, api_key, ca_file, max_retries=max_retries)
        try:
            return await build_with(api, self, name, on_log=on_log, runtime=runtime)
        finally:
            await api.aclose()


async def build_with(api: ApiClient, image: Image, name: str | None = None, *,
                     on_log: LogCallback | None = None, runtime: str | None = None
                     ) -> models.ImageInfo:
    """Build ``image`` through ``api``: upload its context (if it copies files), then
    follow the build's events to its end."""
    spec = image.spec
    if image._archive is not None:
        imported = await import_archive(api, *image._archive)
        spec = spec.model_copy(update={"base": imported.id})
    context = await _upload_context(api, image._sources) if image._sources else None
    request = checked(models.ImageBuildRequest, "build", name=name, spec=spec,
                      context=context, runtime=runtime)
    emit = on_log or (lambda line: None)
    async with api.stream("POST", "/v1/images", body=request) as response:
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            event = json.loads(line)
            kind = event.get("type")
            if kind == "step":
                cached = " (cached)" if event.get("cached") else ""
                emit(f"[{event['step']}/{event['total']}] {event['text']}{cached}")
            elif kind == "log":
                emit(event["text"])
            elif kind == "done":
                return models.ImageInfo.model_validate(event["image"])
            elif kind == "error":
                error = event.get("error", {})
                raise error_from_code(str(error.get("code")), str(error.get("message")))
    raise error_from_code("internal", "the build's stream ended before it did")


async def import_archive(api: ApiClient, path: Path, tag: str | None = None,
                         name: str | None = None) -> models.ImageInfo:
    """Upload an OCI archive through ``api`` and return the image the server made of it."""
    params = {k: v for k, v in (("tag", tag), ("name", name)) if v is not None}

    async def body() -> AsyncIterator[bytes]:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                yield block

    reply = await api.json("POST", "/v1/images/archives", content=body(), params=params,
                           read_timeout=3600)
    return models.ImageInfo.model_validate(reply)


async def _upload_context(api: ApiClient, sources: Sequence[_Source]) -> str:
    """Tar the copy sources (in a thread: it reads the disk) into a temporary file and
    stream it to the server, a MiB at a time: never the whole context in memory."""
    with tempfile.TemporaryFile() as archive:
        await asyncio.to_thread(_write_context, archive, sources)
        archive.seek(0)

        async def body() -> AsyncIterator[bytes]:
            while block := await asyncio.to_thread(archive.read, 1 << 20):
                yield block

        reply = await api.json("POST", "/v1/images/contexts", content=body(),
                               read_timeout=600)
    return str(models.ImageContextInfo.model_validate(reply).id)


def _write_context(archive: IO[bytes], sources: Sequence[_Source]) -> None:
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for source in _outermost(sources):
            if not source.local.exists():
                raise InvalidArgumentError(f"{source.local}: not found (a copy source)")
            tar.add(str(source.local), arcname=source.name, recursive=True,
                    filter=_ignoring(source.name, source.ignore))


def _outermost(sources: Sequence[_Source]) -> list[_Source]:
    """Each source once, and none inside another (the context holds it already)."""
    kept: list[_Source] = []
    for source in sorted(sources, key=lambda s: (s.name.count("/"), s.name)):
        name = context_relative(source.name)
        if not any(name == k.name or k.name == "." or name.startswith(k.name + "/")
                   for k in kept):
            kept.append(source)
    return kept


def _ignoring(root: str, patterns: Sequence[str]
              ) -> Callable[[tarfile.TarInfo], tarfile.TarInfo | None]:
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if info.name != root and any(PurePosixPath(info.name).match(p) for p in patterns):
            return None
        if not (info.isfile() or info.isdir() or info.issym()):
            return None  # devices, fifos: never part of an image's files
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    return keep


__all__ = ["Image", "LogCallback", "build_with", "import_archive"]
