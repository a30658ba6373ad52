"""The dynamic-sessions façade at its edges: hostile identifiers, tenants sharing an
identifier, file names that try to leave /mnt/data, the .NET client's 2024-10-02-preview
shapes, and a session whose sandbox stopped."""

from __future__ import annotations

import uuid

import httpx
import pytest

from corral import Sandbox

from .conftest import Corral
from .test_aca_sessions import tool

pytestmark = pytest.mark.anyio
IDENTIFIERS = ["a&b=c&api-version=x", "frag#ment", "../../etc/passwd", "/slash/ed/",
               "ünïcødé-会话-🦀", "x" * 10_000, "%2e%2e%2fpercent", "sp ace+plus"]


def _list(http: httpx.Client, identifier: str) -> httpx.Response:
    # Sent as the Semantic Kernel clients send it: unescaped, api-version last.
    return http.get(f"/aca/default/files?identifier={identifier}&api-version=2024-02-02-preview")


@pytest.mark.parametrize("identifier", IDENTIFIERS, ids=lambda i: i[:20])
async def test_identifiers_are_sessions_of_their_own(corral: Corral, identifier: str) -> None:
    session = tool(corral, identifier)
    try:
        out = await session.execute_code(f"open('mine.txt', 'w').write({identifier[:50]!r})")
        assert "Status:\nSuccess" in out
        names = [f.filename for f in await session.list_files()]
        assert names == ["mine.txt"]
    finally:
        await session.http_client.aclose()


async def test_an_ampersand_is_part_of_the_identifier(corral: Corral) -> None:
    with corral.http() as http:
        base = f"amp-{uuid.uuid4()}"
        write = http.post(f"/aca/default/code/execute?identifier={base}&x"
                          "&api-version=2024-02-02-preview",
                          json={"properties": {"code": "open('f', 'w').write('1')"}})
        assert write.status_code == 200, write.text
        assert [e["properties"]["filename"] for e in _list(http, f"{base}&x").json()["value"]] \
            == ["f"]
        assert _list(http, base).json()["value"] == []


async def test_tenants_never_share_a_session(corral: Corral) -> None:
    identifier = f"shared-{uuid.uuid4()}"
    alpha, beta = tool(corral, identifier), tool(corral, identifier, key=corral.other_key)
    try:
        await alpha.execute_code("secret = 'alpha'; open('secret.txt', 'w').write(secret)")
        out = await beta.execute_code("import os; print(sorted(os.listdir('.'))); secret")
        assert "Status:\nFailure" in out and "NameError" in out and "Stdout:\n[]" in out
        assert [f.filename for f in await beta.list_files()] == []
        with corral.http(corral.other_key) as http:
            stolen = http.get(f"/aca/default/files/content/secret.txt?identifier={identifier}")
        assert stolen.status_code == 404
    finally:
        await alpha.http_client.aclose()
        await beta.http_client.aclose()


def test_file_names_stay_in_mnt_data(corral: Corral) -> None:
    identifier = f"paths-{uuid.uuid4()}"
    query = f"identifier={identifier}&api-version=2024-02-02-preview"
    with corral.http() as http:
        for name in ("../../etc/cron.d/x", "/etc/passwd", "/mnt/data/../../root/.bashrc",
                     "..\\..\\evil", "/mnt/database/x", "a/\x01/b"):
            up = http.post(f"/aca/default/files/upload?{query}",
                           files={"file": (name, b"payload", "application/octet-stream")})
            assert up.status_code == 400, (name, up.text)
            assert up.json()["error"]["code"] == "invalid_argument"
        for path in ("files/content//etc/passwd", "files/content/%2e%2e/%2e%2e/etc/passwd",
                     "files/content/sub/%2e%2e/%2e%2e/%2e%2e/etc/passwd"):
            down = http.get(f"/aca/default/{path}?{query}")
            assert down.status_code == 400, (path, down.text)
        check = http.post(f"/aca/default/code/execute?{query}", json={"properties": {
            "code": "import os; [p for p in ('/etc/cron.d/x', '/root/.bashrc', '/evil') "
                    "if os.path.isfile(p) and 'payload' in open(p).read()]"}})
        assert check.json()["properties"]["result"] == "[]"
        unknown = http.get(f"/aca/nope/files?{query}")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_the_dotnet_clients_api_version(corral: Corral) -> None:
    """2024-10-02-preview as the .NET SessionsPythonPlugin speaks it."""
    query = f"identifier=dotnet-{uuid.uuid4()}&api-version=2024-10-02-preview"
    with corral.http(headers={"User-Agent": "Semantic-Kernel (Language=dotnet)"}) as http:
        run = http.post(f"/aca/default/executions?{query}", json={
            "codeInputType": "Inline", "executionType": "Synchronous",
            "timeoutInSeconds": 100, "code": "print('hi')\n6 * 7"})
        body = run.json()
        assert body["status"] == "Succeeded" and body["result"]["stdout"] == "hi\n"
        assert body["result"]["executionResult"] == "42"
        up = http.post(f"/aca/default/files?{query}",
                       files={"file": ("dir/data.csv", b"a,b\n1,2\n", "text/csv")})
        assert up.status_code == 200, up.text
        assert up.json()["name"] == "dir/data.csv" and up.json()["type"] == "File"
        listed = http.get(f"/aca/default/files?{query}").json()["value"]
        assert [(e["name"], e["type"]) for e in listed] == [("dir", "Directory")]
        down = http.get(f"/aca/default/files/dir%2Fdata.csv/content?{query}")
        assert down.content == b"a,b\n1,2\n"
        meta = http.get(f"/aca/default/files/dir%2Fdata.csv?{query}").json()
        assert meta["sizeInBytes"] == 8 and "lastModifiedAt" in meta


async def test_a_stopped_session_starts_afresh(corral: Corral) -> None:
    identifier = f"cool-{uuid.uuid4()}"
    session = tool(corral, identifier)
    try:
        await session.execute_code("x = 1")
        found = Sandbox.list(metadata={"aca.pool": "default"}, state="running", **corral.sdk())
        mine = [s for s in found if s.idle_timeout is not None]
        assert mine and all(s.idle_timeout == 120.0 for s in mine)  # the pool's cooldown
        for info in mine:  # what the reaper does once the cooldown has passed
            Sandbox.connect(info.id, **corral.sdk()).kill()
        out = await session.execute_code("'x' in globals()")
        assert "Result:\nFalse" in out
    finally:
        await session.http_client.aclose()
