"""The server's own TLS: a local CA and a server certificate it signs, kept under
``<data dir>/tls/`` and reused from one start to the next.

The CA (EC P-256, ten years, ``CA:TRUE``, ``keyCertSign``) is made once; clients trust it
through its certificate, ``ca.pem``. The server certificate (one year) names ``localhost``,
``127.0.0.1``, ``::1`` and any extra names asked for, and is made again when it is missing,
expired or about to be, names other hosts than those asked for, or was not signed by the
CA on disk. Private keys are mode 0600; certificates 0644.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.api.errors import InternalError, InvalidArgumentError

CA_DAYS = 3650
SERVER_DAYS = 365
#: A server certificate this close to expiry is replaced at start.
RENEW_BEFORE = dt.timedelta(days=7)
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")

SanName = x509.DNSName | x509.IPAddress


@dataclass(frozen=True)
class TlsFiles:
    """Where the server's TLS material lives.

    Attributes:
        ca_cert: the CA certificate clients trust (``SSL_CERT_FILE``, ``CORRAL_CA_FILE``).
        cert, key: the server's certificate and private key (uvicorn's ``ssl_certfile``,
            ``ssl_keyfile``).
    """

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key(self) -> Path:
        return self.directory / "server-key.pem"


def ensure_tls(directory: Path, names: Iterable[str] = ()) -> TlsFiles:
    """The CA and a valid server certificate for ``names`` (besides the loopback names),
    made or renewed as needed."""
    files = TlsFiles(directory)
    wanted = san_names([*DEFAULT_NAMES, *names])
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        ca_key, ca_cert = _load_ca(files)
        if ca_key is None or ca_cert is None:
            ca_key, ca_cert = _new_ca()
            _write(files.ca_key, _key_pem(ca_key), 0o600)
            _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
            _remove(files.cert)  # signed by a CA that is gone
        if not _server_cert_fits(files, ca_cert, wanted):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _new_server_cert(key, ca_key, ca_cert, wanted)
            _write(files.key, _key_pem(key), 0o600)
            _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise InternalError(f"preparing TLS certificates in {directory}: {exc}") from exc
    return files


def san_names(names: Iterable[str]) -> list[SanName]:
    """Subject alternative names: IP addresses as such, anything else as a DNS name."""
    result: list[SanName] = []
    for raw in names:
        name = raw.strip().strip("[]")
        if not name:
            continue
        entry: SanName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            if any(c.isspace() or c in "/:@" for c in name):
                raise InvalidArgumentError(f"not a host name or IP address: {raw!r}") from None
            entry = x509.DNSName(name.lower())
        if entry not in result:
            result.append(entry)
    return result


def fingerprint(cert_path: Path) -> str:
    """SHA-256 fingerprint of a PEM certificate, hex."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


def _load_ca(files: TlsFiles) -> tuple[ec.EllipticCurvePrivateKey | None,
                                       x509.Certificate | None]:
    """The CA on disk, or ``(None, None)`` when it is missing, broken or expired."""
    if not (files.ca_key.is_file() and files.ca_cert.is_file()):
        return None, None
    try:
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    except ValueError:
        return None, None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None, None
    if key.public_key() != cert.public_key() or cert.not_valid_after_utc <= _now():
        return None, None
    return key, cert


def _server_cert_fits(files: TlsFiles, ca_cert: x509.Certificate,
                      wanted: list[SanName]) -> bool:
    if not (files.cert.is_file() and files.key.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca_cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return (key.public_key() == cert.public_key()
            and cert.not_valid_after_utc - RENEW_BEFORE > _now()
            and set(sans) == set(wanted))


def _new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corral"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "Corral local CA")])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _new_server_cert(key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey,
                     ca_cert: x509.Certificate, names: list[SanName]) -> x509.Certificate:
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Corral server")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with ``mode`` from the first byte (a key is never readable by
    others, whatever the umask)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with _removing_on_error(tmp):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


@contextlib.contextmanager
def _removing_on_error(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        _remove(path)
        raise


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
