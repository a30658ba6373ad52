"""``corral serve --tls``: the real app over HTTPS with a certificate from the server's own
CA; the SDK trusts it through ``CORRAL_CA_FILE`` or ``ca_file=`` (which wins), a client
without it is refused, the key files are private, and a later start keeps the CA (renewing
only the server certificate)."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from cryptography import x509

from corral import AsyncSandbox, InvalidArgumentError, Sandbox, SandboxError
from corral.node import NodeSettings
from corral.server import ServerSettings, create_app
from corral.server import tls as tls_module
from corral.server.store import KeyStore, open_engine
from corral.server.store.schema import database_url
from corral.server.tls import TlsFiles, ensure_tls, fingerprint
from tests.conftest import IMAGE_DIR, sandbox_data_dir

from ._serving import serving


@dataclass(frozen=True)
class TlsServer:
    url: str
    key: str
    files: TlsFiles


@pytest.fixture(scope="module")
def tls_data_dir() -> Iterator[Path]:
    with sandbox_data_dir("corral-tls-test-") as path:
        yield path


@pytest.fixture(scope="module")
def tls_server(tls_data_dir: Path, python_image: str) -> Iterator[TlsServer]:
    """What ``corral serve --tls`` starts: certificates first, then uvicorn with them."""
    settings = ServerSettings(node=NodeSettings(data_dir=tls_data_dir, image_dir=IMAGE_DIR),
                              port=0, tls=True)
    files = ensure_tls(settings.tls_dir, settings.tls_names)
    key = KeyStore(open_engine(database_url(tls_data_dir, None))).create("alpha").key
    with serving(create_app(settings), scheme="https", ssl_keyfile=str(files.key),
                 ssl_certfile=str(files.cert)) as url:
        yield TlsServer(url=url, key=key, files=files)


@pytest.fixture
def no_trust_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CA given through the environment: only what a test passes counts."""
    for name in ("CORRAL_CA_FILE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)


def test_sdk_runs_a_command_over_https(tls_server: TlsServer, no_trust_env: None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_CA_FILE", str(tls_server.files.ca_cert))
    with Sandbox.create("python", timeout=120, url=tls_server.url,
                        api_key=tls_server.key) as sb:
        sb.files.write("/work/hello.txt", b"over tls\n")
        result = sb.commands.run("cat /work/hello.txt; echo done")
        assert result.exit_code == 0
        assert result.stdout == "over tls\ndone\n"


def test_sdk_takes_the_ca_file_as_an_argument(tls_server: TlsServer, no_trust_env: None
                                             ) -> None:
    ca = tls_server.files.ca_cert
    server = {"url": tls_server.url, "api_key": tls_server.key}
    with Sandbox.create("python", timeout=120, metadata={"suite": "tls-ca-arg"},
                        ca_file=str(ca), **server) as sb:
        assert sb.commands.run("echo made").stdout == "made\n"
        again = Sandbox.connect(sb.id, ca_file=ca, **server)  # a Path does as well
        try:
            assert again.commands.run("echo connected").stdout == "connected\n"
        finally:
            again.close()
        listed = Sandbox.list(metadata={"suite": "tls-ca-arg"}, ca_file=ca, **server)
        assert [info.id for info in listed] == [sb.id]

        async def through_the_async_face() -> list[str]:
            found = await AsyncSandbox.list(metadata={"suite": "tls-ca-arg"}, ca_file=ca,
                                            **server)
            async_sb = await AsyncSandbox.connect(sb.id, ca_file=ca, **server)
            try:
                ran = await async_sb.commands.run("echo async")
            finally:
                await async_sb.close()
            return [*(info.id for info in found), ran.stdout]

        assert anyio.run(through_the_async_face) == [sb.id, "async\n"]


def test_the_ca_file_argument_wins_over_the_environment(
        tls_server: TlsServer, no_trust_env: None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    other_ca = ensure_tls(tmp_path / "other").ca_cert  # a CA that signed nothing here
    server = {"url": tls_server.url, "api_key": tls_server.key}

    monkeypatch.setenv("CORRAL_CA_FILE", str(other_ca))
    with pytest.raises(SandboxError) as refused:
        Sandbox.list(**server)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    assert isinstance(Sandbox.list(ca_file=tls_server.files.ca_cert, **server), list)

    monkeypatch.setenv("CORRAL_CA_FILE", str(tls_server.files.ca_cert))
    assert isinstance(Sandbox.list(**server), list)
    with pytest.raises(SandboxError) as refused:
        Sandbox.list(ca_file=other_ca, **server)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


def test_an_unreadable_ca_file_is_an_invalid_argument(tls_server: TlsServer,
                                                      no_trust_env: None,
                                                      tmp_path: Path) -> None:
    server = {"url": tls_server.url, "api_key": tls_server.key}
    with pytest.raises(InvalidArgumentError) as missing:
        Sandbox.create("python", ca_file=tmp_path / "nope.pem", **server)
    assert "nope.pem" in str(missing.value)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(InvalidArgumentError) as bad:
        Sandbox.connect("sbx-000000000000", ca_file=garbage, **server)
    assert "garbage.pem" in str(bad.value)


def test_a_client_without_the_ca_is_refused(tls_server: TlsServer, no_trust_env: None) -> None:
    # With the CA the same request goes through: what fails below is trust, nothing else.
    trusted = ssl.create_default_context(cafile=str(tls_server.files.ca_cert))
    with httpx.Client(verify=trusted) as client:
        assert client.get(f"{tls_server.url}/openapi.json").status_code == 200

    with httpx.Client() as client, pytest.raises(httpx.ConnectError) as raw:
        client.get(f"{tls_server.url}/openapi.json")
    assert "CERTIFICATE_VERIFY_FAILED" in str(raw.value)

    with pytest.raises(SandboxError) as sdk:
        Sandbox.list(url=tls_server.url, api_key=tls_server.key)
    assert isinstance(sdk.value.__cause__, httpx.ConnectError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(sdk.value)


def test_the_certificate_names_loopback_only(tls_server: TlsServer, no_trust_env: None) -> None:
    trusted = ssl.create_default_context(cafile=str(tls_server.files.ca_cert))
    port = tls_server.url.rsplit(":", 1)[1]
    with httpx.Client(verify=trusted) as client:
        assert client.get(f"https://localhost:{port}/openapi.json").status_code == 200
    cert = x509.load_pem_x509_certificate(tls_server.files.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(map(str, sans.get_values_for_type(x509.IPAddress))) == ["127.0.0.1", "::1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]


def test_files_have_private_keys_and_a_public_ca(tls_server: TlsServer) -> None:
    files = tls_server.files
    modes = {p.name: stat.S_IMODE(p.stat().st_mode)
             for p in (files.ca_key, files.key, files.ca_cert, files.cert)}
    assert modes == {"ca-key.pem": 0o600, "server-key.pem": 0o600,
                     "ca.pem": 0o644, "server.pem": 0o644}
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert lifetime > dt.timedelta(days=3649)


def test_a_later_start_reuses_the_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ensure_tls(tmp_path / "tls")
    ca, server = fingerprint(first.ca_cert), fingerprint(first.cert)

    again = ensure_tls(tmp_path / "tls")
    assert (fingerprint(again.ca_cert), fingerprint(again.cert)) == (ca, server)

    # Another name asked for: same CA, a new server certificate naming it.
    named = ensure_tls(tmp_path / "tls", ["corral.internal", "10.0.0.7"])
    assert fingerprint(named.ca_cert) == ca and fingerprint(named.cert) != server
    cert = x509.load_pem_x509_certificate(named.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "corral.internal" in sans.get_values_for_type(x509.DNSName)
    renamed = fingerprint(named.cert)

    # Two years on the server certificate has expired; the ten-year CA has not.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=730)
    monkeypatch.setattr(tls_module, "_now", lambda: later)
    renewed = ensure_tls(tmp_path / "tls", ["corral.internal", "10.0.0.7"])
    assert fingerprint(renewed.ca_cert) == ca and fingerprint(renewed.cert) != renamed
    cert = x509.load_pem_x509_certificate(renewed.cert.read_bytes())
    assert cert.not_valid_after_utc > later


def test_settings_read_tls_from_the_environment(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_TLS", "1")
    monkeypatch.setenv("CORRAL_TLS_NAMES", "a.example, 192.0.2.1")
    settings = ServerSettings.from_env(data_dir=tmp_path, port=8470)
    assert settings.url == "https://127.0.0.1:8470"
    assert settings.tls_names == ("a.example", "192.0.2.1")
    assert settings.tls_dir == tmp_path / "tls"
    flag = ServerSettings.from_env(data_dir=tmp_path, port=8470, tls=False, tls_names=["b"])
    assert flag.url == "http://127.0.0.1:8470" and flag.tls_names == ("b",)


def test_the_console_cookie_is_secure_over_tls(tls_server: TlsServer) -> None:
    with httpx.Client(base_url=tls_server.url, verify=str(tls_server.files.ca_cert),
                      timeout=60.0) as client:
        answer = client.post("/ui/api/login", json={"key": tls_server.key})
        assert answer.status_code == 200, answer.text
        attributes = [a.strip().lower() for a in answer.headers["set-cookie"].split(";")]
        assert "secure" in attributes and "httponly" in attributes
        csrf = {"X-Corral-CSRF": answer.json()["csrf"]}
        assert client.get("/v1/sandboxes", headers=csrf).status_code == 200
        out = client.post("/ui/api/logout", headers=csrf)
        assert out.status_code == 204 and "secure" in out.headers["set-cookie"].lower()
