"""An e2b release that knows only ``E2B_DOMAIN`` (2.4.3: no ``E2B_SANDBOX_URL``) against
``corral serve --tls --ports-domain corral.test --tls-name '*.corral.test'``: the
control plane at ``api.<domain>`` and envd at ``49983-<id>.<domain>``, over HTTPS with the
server's own CA, as an operator with a wildcard DNS record would serve it.

Names resolve through a hosts file of the test's own, bind-mounted over ``/etc/hosts`` in
a private mount namespace that only the SDK's process sees (``unshare``); every address in
it is loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from corral.node import NodeSettings
from corral.server import ServerSettings, create_app
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url
from corral.server.tls import ensure_tls
from tests.conftest import IMAGE_DIR, sandbox_data_dir

from ._serving import serving
from .test_e2b_sdk import sdk_python

DOMAIN = "corral.test"
DRIVER = Path(__file__).with_name("e2b_host_drive.py")
#: In a private mount namespace: the test's hosts file over /etc/hosts, then the SDK.
_WITH_HOSTS = 'mount --bind "$CORRAL_TEST_HOSTS" /etc/hosts && exec "$@"'


def test_an_sdk_with_only_e2b_domain_reaches_corral_by_host_names(python_image: str,
                                                                 tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a hosts file of its own")
    python = sdk_python("2.4.3")
    with sandbox_data_dir("corral-e2b-hosts-") as data_dir:
        settings = ServerSettings(node=NodeSettings(data_dir=data_dir, image_dir=IMAGE_DIR),
                                  port=0, tls=True, tls_names=(f"*.{DOMAIN}",),
                                  ports_domain=DOMAIN)
        files = ensure_tls(settings.tls_dir, settings.tls_names)
        key = KeyStore(open_engine(database_url(data_dir, None))).create(
            "alpha", e2b=True).key
        with serving(create_app(settings), scheme="https", ssl_keyfile=str(files.key),
                     ssl_certfile=str(files.cert)) as url:
            port = url.rsplit(":", 1)[1]
            hosts = tmp_path / "hosts"
            hosts.write_text(f"127.0.0.1 localhost api.{DOMAIN}\n")
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                   "HOME": os.environ.get("HOME", "/root"),
                   "E2B_DOMAIN": f"{DOMAIN}:{port}", "E2B_API_KEY": key,
                   "SSL_CERT_FILE": str(files.ca_cert), "CORRAL_TEST_HOSTS": str(hosts)}
            ran = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", _WITH_HOSTS,
                 "sh", str(python), str(DRIVER)],
                env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-4000:]
    seen = json.loads(ran.stdout.strip().splitlines()[-1])
    assert seen["host"] == f"49983-{seen['id']}.{DOMAIN}:{port}"
    assert seen["info"] == "running"
    assert seen["run"] == "hi\nuser\n"
    assert seen["exit"] == 4
    assert seen["running"] is True and seen["killed"] is True
