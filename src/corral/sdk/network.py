"""A sandbox's network policy through the API: ``sb.network``.

Example::

    sb = await AsyncSandbox.create(network={"allow": ["pypi.example.org:443"]})
    await sb.network.update({"allow": ["203.0.113.0/24:443"], "deny": ["203.0.113.7"]})
    print((await sb.network.get()).network)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from corral.api import contract, models

from ._http import checked, segment

if TYPE_CHECKING:
    from .sandbox import AsyncSandbox


def network_spec(network: contract.NetworkArg) -> models.NetworkSpec:
    """The wire form of what a caller gave (checked: a bad entry is an
    :class:`~corral.InvalidArgumentError` naming it, before any request)."""
    if isinstance(network, Mapping):
        lists: models.NetworkLists = checked(
            models.NetworkLists, **{k: list(v) for k, v in network.items()})
        return lists
    update: models.NetworkUpdate = checked(models.NetworkUpdate, network=network)
    return update.network


class AsyncNetwork:
    """What a sandbox may reach: ``"none"``, ``"all"`` or allow/deny lists."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    async def get(self) -> models.NetworkInfo:
        """Its policy as the server enforces it now."""
        info = await self._sandbox.refresh()
        return models.NetworkInfo(network=info.network)

    async def update(self, network: contract.NetworkArg) -> models.NetworkInfo:
        """Replace its policy; new connections see it at once, open ones go on.

        The sandbox must have been created with a policy other than ``"none"`` (that gives
        it a network interface); an empty allow list (``{"allow": []}``) starts it closed.
        """
        body = checked(models.NetworkUpdate, network=network_spec(network))
        return models.NetworkInfo.model_validate(await self._sandbox._api.json(
            "PUT", f"/v1/sandboxes/{segment(self._sandbox.id)}/network", body=body))


    async def events(self) -> models.EgressEvents:
        """Its resolver's and proxy's latest verdicts (names looked up and connected to,
        allowed or why not), oldest first."""
        return models.EgressEvents.model_validate(await self._sandbox._api.json(
            "GET", f"/v1/sandboxes/{segment(self._sandbox.id)}/network/events"))


_conforms: type[contract.NetworkContract] = AsyncNetwork
