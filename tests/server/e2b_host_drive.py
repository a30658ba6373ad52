"""Run by test_e2b_hosts.py inside a virtualenv holding an e2b release that knows only
``E2B_DOMAIN`` (no ``E2B_SANDBOX_URL``), never by pytest: the control plane at
``https://api.<domain>``, envd at ``https://49983-<id>.<domain>``, over TLS with Corral's
CA (``SSL_CERT_FILE``). Names resolve through ``/etc/hosts``, which the test made a file of
its own in a private mount namespace; this script adds each sandbox's names to it, as a
wildcard DNS record would. Prints what it saw as one JSON object on the last line.
"""

from __future__ import annotations

import json
import os

from e2b import CommandExitException, Sandbox


def main() -> None:
    domain = os.environ["E2B_DOMAIN"].split(":")[0]
    sb = Sandbox.create(metadata={"suite": "hosts"}, timeout=120)
    with open("/etc/hosts", "a", encoding="utf-8") as hosts:
        hosts.write(f"127.0.0.1 49983-{sb.sandbox_id}.{domain} "
                    f"49999-{sb.sandbox_id}.{domain}\n")
    seen: dict[str, object] = {"id": sb.sandbox_id, "host": sb.get_host(49983)}
    try:
        seen["info"] = sb.get_info().state
        seen["run"] = sb.commands.run("echo hi; whoami").stdout
        try:
            sb.commands.run("exit 4")
        except CommandExitException as exc:
            seen["exit"] = exc.exit_code
        seen["running"] = sb.is_running()
    finally:
        seen["killed"] = sb.kill()
    print(json.dumps(seen), flush=True)
    os._exit(0)  # as e2b_sdk_drive.py: skip finalization in the SDK's HTTP stack


if __name__ == "__main__":
    main()
