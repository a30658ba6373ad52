"""``Volume``: named storage that outlives sandboxes, shared by several at once.

A volume is yours alone, has a size (its quota), and is mounted at create:
``Sandbox.create(volumes={"/data": "my-vol"})`` (``{"/data": {"volume": "my-vol",
"read_only": True}}`` for read-only). Its files are also reachable with no sandbox running,
through :attr:`AsyncVolume.files` (the same calls as a sandbox's files).

Example::

    from corral import Sandbox, Volume

    vol = Volume.create("datasets", size="10G")      # or Volume.from_name("datasets")
    vol.files.write("/raw/a.csv", b"x,y\\n1,2\\n")
    with Sandbox.create(volumes={"/data": vol}) as sb:
        print(sb.commands.run("wc -l /data/raw/a.csv").stdout)
    print(vol.files.list("/raw"))
"""

from __future__ import annotations

import os

from corral.api import models
from corral.api.errors import InvalidArgumentError, NotFoundError

from ._http import ApiClient, checked, segment
from .files import AsyncFiles

CaFile = str | os.PathLike[str]


class AsyncVolumeFiles(AsyncFiles):
    """A volume's files, with no sandbox (``volume.files``): as a sandbox's files, but
    paths start at the volume's root, and there is no rename."""

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except NotFoundError:
            return False
        return True

    async def rename(self, src: str, dst: str, overwrite: bool = False) -> None:
        raise InvalidArgumentError("a volume's files cannot be renamed without a sandbox; "
                                   "mount it and use mv, or write and remove")


class AsyncVolume:
    """One of your volumes. Get one with :meth:`create` or :meth:`from_name`.

    Attributes:
        info: its description when last fetched (:meth:`refresh`).
        files: its files, with no sandbox (:class:`AsyncVolumeFiles`).
    """

    def __init__(self, info: models.VolumeInfo, api: ApiClient) -> None:
        self.info = info
        self._api = api
        self.files = AsyncVolumeFiles._at(
            api, f"/v1/volumes/{segment(info.name, 'volume name')}/files")

    @property
    def name(self) -> str:
        return self.info.name

    def __repr__(self) -> str:
        return f"AsyncVolume(name={self.name!r}, size_mib={self.info.size_mib})"

    @classmethod
    async def create(cls, name: str, *, size: int | str = "1G", url: str | None = None,
                     api_key: str | None = None, ca_file: CaFile | None = None,
                     max_retries: int | None = None
                     ) -> AsyncVolume:
        """A new empty volume of ``size`` (MiB, or ``"10G"``): its quota. ``url``,
        ``api_key`` and ``ca_file`` as in :meth:`corral.AsyncSandbox.create`."""
        api = ApiClient(url, api_key, ca_file, max_retries=max_retries)
        try:
            request = checked(models.VolumeCreate, name=name, size=size)
            reply = await api.json("POST", "/v1/volumes", body=request)
        except BaseException:
            await api.aclose()
            raise
        return cls(models.VolumeInfo.model_validate(reply), api)

    @classmethod
    async def from_name(cls, name: str, *, create_if_missing: bool = False,
                        size: int | str = "1G", url: str | None = None,
                        api_key: str | None = None, ca_file: CaFile | None = None,
                        max_retries: int | None = None
                        ) -> AsyncVolume:
        """Your volume ``name``; NotFoundError if there is none, unless
        ``create_if_missing`` (then of ``size``)."""
        api = ApiClient(url, api_key, ca_file, max_retries=max_retries)
        try:
            reply = await api.json("GET", f"/v1/volumes/{segment(name, 'volume name')}")
        except NotFoundError:
            await api.aclose()
            if not create_if_missing:
                raise
            return await cls.create(name, size=size, url=url, api_key=api_key,
                                    ca_file=ca_file, max_retries=max_retries)
        except BaseException:
            await api.aclose()
            raise
        return cls(models.VolumeInfo.model_validate(reply), api)

    @staticmethod
    async def list(*, url: str | None = None, api_key: str | None = None,
                   ca_file: CaFile | None = None,
                   max_retries: int | None = None) -> list[models.VolumeInfo]:
        """Your volumes."""
        api = ApiClient(url, api_key, ca_file, max_retries=max_retries)
        try:
            reply = await api.json("GET", "/v1/volumes")
        finally:
            await api.aclose()
        return models.VolumeList.model_validate(reply).volumes

    async def refresh(self) -> models.VolumeInfo:
        """Fetch its current description (used bytes, which sandboxes mount it)."""
        self.info = models.VolumeInfo.model_validate(
            await self._api.json("GET", f"/v1/volumes/{segment(self.name, 'volume name')}"))
        return self.info

    async def delete(self) -> None:
        """Delete it and its files; refused while a sandbox mounts it."""
        await self._api.call("DELETE", f"/v1/volumes/{segment(self.name, 'volume name')}")

    async def close(self) -> None:
        """Close the connection (the volume stays)."""
        await self._api.aclose()

    async def __aenter__(self) -> AsyncVolume:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def volume_map(volumes: object) -> dict[str, object]:
    """A create's ``volumes`` as the API takes them: names for volume objects."""
    if not isinstance(volumes, dict):
        raise InvalidArgumentError('volumes must map mount points to volumes, e.g. '
                                   '{"/data": "my-vol"}')
    found: dict[str, object] = {}
    for path, value in volumes.items():
        inner = getattr(value, "_inner", value)  # a blocking Volume
        if isinstance(inner, AsyncVolume):
            found[path] = inner.name
        else:
            found[path] = value
    return found
