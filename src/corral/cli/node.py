"""``corral node``: the nodes of a cluster on Ray (docs/cluster.md).

``join`` runs on a host that is already a Ray node (``ray start --address ...``) and starts
its Corral node there; ``ls``, ``cordon``, ``uncordon`` and ``drain`` ask an API server of
the cluster, with an operator's key (``CORRAL_URL``, ``CORRAL_API_KEY``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ._common import fail, reporting_errors, say

app = typer.Typer(help="The nodes of a cluster on Ray: join, ls, cordon, uncordon, drain.",
                  no_args_is_help=True)

UrlOption = Annotated[str | None, typer.Option(
    "--url", envvar="CORRAL_URL", show_default=False,
    help="An API server of the cluster (env CORRAL_URL).")]
KeyOption = Annotated[str | None, typer.Option(
    "--api-key", envvar="CORRAL_API_KEY", show_default=False,
    help="An operator's key: `corral keys create --operator` (env CORRAL_API_KEY).")]


def _request(url: str | None, key: str | None, method: str, path: str,
             body: dict[str, Any] | None = None) -> Any:
    import httpx
    if not url or not key:
        fail("set CORRAL_URL and CORRAL_API_KEY (an operator's key) or pass --url/--api-key")
    verify: str | bool = os.environ.get("CORRAL_CA_FILE") or True
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                      verify=verify, timeout=60) as client:
        try:
            reply = client.request(method, path, json=body)
        except httpx.TransportError as error:
            fail(f"cannot reach {url}: {error}")
    if reply.status_code >= 400:
        try:
            message = reply.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = reply.text[:300]
        fail(f"{reply.status_code}: {message}")
    return reply.json()


@app.command("ls")
def ls(url: UrlOption = None, api_key: KeyOption = None,
       as_json: Annotated[bool, typer.Option("--json", help="The API's JSON.")] = False
       ) -> None:
    """Each node: state, labels, CPU and memory held by sandboxes, sandboxes, images."""
    found = _request(url, api_key, "GET", "/v1/nodes")
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    table = Table("name", "state", "labels", "cpus", "memory MiB", "sandboxes", "images")
    for node in found["nodes"]:
        state = node["state"]
        if node["draining"]:
            state += ", draining"
        elif node["cordoned"]:
            state += ", cordoned"
        labels = ",".join(f"{k}={v}" for k, v in sorted(node["labels"].items()))
        cpus = (f"{node['allocated_cpus']:g}/{node['cpus']:g}" if node["cpus"] is not None
                else "-")
        memory = (f"{node['allocated_memory_mib']}/{node['memory_mib']}"
                  if node["memory_mib"] is not None else "-")
        table.add_row(node["name"], state, labels, cpus, memory, str(node["sandboxes"]),
                      ",".join(node["images"]))
    Console().print(table)
    for node in found["nodes"]:
        if node["state"] == "lost":
            say(f"{node['name']}: {node['reason']}", style="yellow")


@app.command()
def cordon(name: str, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Place no new sandbox on NAME; those it runs go on."""
    _request(url, api_key, "POST", f"/v1/nodes/{name}/cordon")
    say(f"{name} cordoned", style="green")


@app.command()
def uncordon(name: str, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Let NAME take new sandboxes again (ends a drain too)."""
    _request(url, api_key, "POST", f"/v1/nodes/{name}/uncordon")
    say(f"{name} takes sandboxes again", style="green")


@app.command()
def drain(name: str, url: UrlOption = None, api_key: KeyOption = None,
          kill: Annotated[bool, typer.Option(
              "--kill", help="End the sandboxes it runs now (each says why), instead of "
                             "letting them run to their end.")] = False) -> None:
    """Place nothing more on NAME, and with --kill end what it runs."""
    result = _request(url, api_key, "POST", f"/v1/nodes/{name}/drain", {"kill": kill})
    say(f"{name} draining" + (f"; {len(result['ended'])} sandboxes ended" if kill else
                              "; its sandboxes run to their end"), style="green")


@app.command()
def join(
    address: Annotated[str, typer.Argument(help="The Ray head's GCS: ray://HOST:PORT.")],
    name: Annotated[str | None, typer.Option(
        "--name", help="The node's name (default: this host's Ray node name).")] = None,
    host: Annotated[str, typer.Option(
        "--host", help="This host's cluster address (its Ray node's address): the node "
                       "server listens there.")] = "127.0.0.1",
    label: Annotated[list[str] | None, typer.Option(
        "--label", metavar="KEY=VALUE", help="A label sandboxes can select "
        "(node_selector); repeat for more.")] = None,
    data_dir: Annotated[Path, typer.Option(
        "--data-dir", help="The node's data (sandboxes, images).")] = Path("/var/lib/corral"),
    image_dir: Annotated[Path | None, typer.Option(
        "--image-dir", envvar="CORRAL_IMAGE_DIR", show_default="DATA_DIR/images",
        help="Where the node's built images are (env CORRAL_IMAGE_DIR).")] = None,
    secret_file: Annotated[Path, typer.Option(
        "--secret-file", help="The cluster secret (mode 0600), copied from the first API "
                              "server's data dir.")] = Path("/var/lib/corral/cluster-secret"),
) -> None:
    """Start this host's Corral node in the cluster (this host must be a Ray node already:
    `ray start --address HOST:PORT` with RAY_AUTH_MODE=token and the cluster secret as
    RAY_AUTH_TOKEN)."""
    from corral.api.models import NODE_LABEL_PATTERN, NODE_LABEL_VALUE_PATTERN
    from corral.cluster import ray_boot
    from corral.cluster.control import NODE_NAME, node_name
    from corral.cluster.node_actor import ACTOR_PREFIX, NAMESPACE, actor_class
    from corral.cluster.trust import load_secret, node_token
    import re
    labels: dict[str, str] = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not re.match(NODE_LABEL_PATTERN, key) or not re.match(
                NODE_LABEL_VALUE_PATTERN, value):
            fail(f"--label {item!r:.80} is not KEY=VALUE (lowercase key, short value)")
        labels[key] = value
    with reporting_errors():
        secret = load_secret(secret_file)
        ray_boot.use_token(secret, host)
        ray_boot.connect(address, host)
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        here = ray.get_runtime_context().get_node_id()
        chosen = node_name(name or next(
            (n.name for n in ray_boot.alive_nodes() if n.id == here), host))
        if not NODE_NAME.match(chosen):
            fail(f"node name {chosen!r:.80} is not valid (lowercase letters, digits, . -)")
        token = node_token(secret)
        handle = actor_class().options(
            name=ACTOR_PREFIX + chosen, namespace=NAMESPACE, lifetime="detached",
            get_if_exists=True,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote(chosen, token, str(data_dir), host, labels,
                 {"CORRAL_IMAGE_DIR": str(image_dir)} if image_dir else {})
        status = ray.get(handle.ready.remote(token))
        ray_boot.disconnect()
    say(f"node {chosen} serving at {status['url']}, "
        f"{len(status.get('sandboxes', []))} sandboxes adopted", style="green")
