"""deploy/kubernetes against the Kubernetes JSON schemas, offline.

kubernetes-validate ships the schemas of each Kubernetes release inside its wheel, so this
needs no network. Strict mode: a field the schema does not know (a typo) is an error too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import kubernetes_validate
except ImportError:
    if os.environ.get("CI"):  # CI installs the `test` extra: missing there is a failure
        raise
    pytest.skip("kubernetes-validate is in the `test` extra: scripts/install --test",
                allow_module_level=True)

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
#: The Kubernetes release the manifests are checked against.
KUBERNETES_VERSION = "1.33.0"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _errors(path: Path) -> list[str]:
    errors = []
    for doc in _documents(path):
        name = f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{name}: {error.message} at "
                          f"{'/'.join(map(str, error.absolute_path))}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{name}: no schema ({error.message})")
    return errors


def _manifests() -> list[Path]:
    return sorted(MANIFESTS.glob("*.yaml"))


def test_there_are_manifests_for_every_part() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"])
             for path in _manifests() for doc in _documents(path)}
    for expected in [("Namespace", "corral"), ("StatefulSet", "corral-postgres"),
                     ("Service", "corral-postgres"), ("Secret", "corral-postgres"),
                     ("Deployment", "corral-api"), ("Service", "corral-api"),
                     ("DaemonSet", "corral-node"), ("Deployment", "corral-ray-head"),
                     ("Secret", "corral-cluster-secret"), ("NetworkPolicy", "corral-ray")]:
        assert expected in kinds


@pytest.mark.parametrize("path", _manifests(), ids=lambda path: path.name)
def test_manifest_matches_the_kubernetes_schema(path: Path) -> None:
    assert _documents(path), f"{path.name} holds no document"
    assert _errors(path) == []


def test_every_object_is_in_the_corral_namespace() -> None:
    for path in _manifests():
        for doc in _documents(path):
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == "corral", (path.name, doc["kind"])


def test_secrets_hold_placeholders_only() -> None:
    for path in _manifests():
        for doc in _documents(path):
            if doc["kind"] == "Secret":
                assert "data" not in doc  # no base64 blob that could hide a real value
                assert all("REPLACE-ME" in value for value in doc["stringData"].values())


def test_an_invalid_manifest_is_caught(tmp_path: Path) -> None:
    """The check can fail: a copy of the DaemonSet with a wrong type and a misspelt field."""
    node = _documents(MANIFESTS / "node.yaml")
    broken = tmp_path / "node.yaml"
    node[0]["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    node[0]["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    broken.write_text(yaml.safe_dump_all(node))
    errors = _errors(broken)  # jsonschema reports a document's first error
    assert len(errors) == 1 and "DaemonSet/corral-node" in errors[0]
    del node[0]["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"]
    broken.write_text(yaml.safe_dump_all(node))
    assert "hostNetwork" in _errors(broken)[0]
    node[0]["spec"]["template"]["spec"]["hostNetwork"] = True
    broken.write_text(yaml.safe_dump_all(node))
    assert _errors(broken) == []
    missing = tmp_path / "missing.yaml"
    missing.write_text("apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\n")
    assert "no schema" in _errors(missing)[0]
