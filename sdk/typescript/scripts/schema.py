"""Write ``src/schema.d.ts``, the TypeScript types of the server's OpenAPI document.

The document is the one ``GET /openapi.json`` serves, built from an app that is never
started (no runtime, no sandbox); ``openapi-typescript`` (a pinned dev dependency, see
``package.json``) turns it into types. ``tests/sdk_ts/test_schema.py`` runs the same
steps and fails when the committed file differs, so the SDK's types cannot drift from
the server's.

Usage (from ``sdk/typescript``, after ``npm ci``)::

    PYTHONPATH=../../src python3 scripts/schema.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[1]
SCHEMA = PACKAGE / "src" / "schema.d.ts"


def document() -> dict[str, Any]:
    """The server's OpenAPI document, from an app built on a throwaway data dir."""
    from corral.node import NodeSettings
    from corral.server import ServerSettings, create_app

    with tempfile.TemporaryDirectory(prefix="corral-openapi-") as folder:
        data = Path(folder)
        app = create_app(ServerSettings(node=NodeSettings(data_dir=data,
                                                          image_dir=data / "images")))
        return app.openapi()


def generate(modules: Path) -> str:
    """The text of ``schema.d.ts``: ``openapi-typescript`` from ``modules/node_modules``
    run on :func:`document`."""
    cli = modules / "node_modules" / "openapi-typescript" / "bin" / "cli.js"
    with tempfile.TemporaryDirectory(prefix="corral-openapi-") as folder:
        spec, out = Path(folder) / "openapi.json", Path(folder) / "schema.d.ts"
        spec.write_text(json.dumps(document(), indent=1, sort_keys=True))
        subprocess.run(["node", str(cli), str(spec), "-o", str(out)], check=True,
                       capture_output=True, text=True, timeout=120)
        return out.read_text()


if __name__ == "__main__":
    SCHEMA.write_text(generate(PACKAGE))
    print(f"wrote {SCHEMA}", file=sys.stderr)
