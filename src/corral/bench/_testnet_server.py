"""The servers of the test internet (:mod:`corral.bench.testnet`), run inside its network
namespace: ``python -m corral.bench._testnet_server CONFIG.json``.

HTTP (and HTTPS) answer ``GET /`` with the server's own address and port, ``/bytes/N``
with N zero bytes, a one-package index (``/simple/corral-demo/`` and its wheel) and a
one-package flat apt repository (``/apt/``: ``Packages``, ``Release``, the ``.deb``; any
other name there is a 404, as apt expects of the files it probes for); a UDP
port logs each datagram; a DNS server answers the test names' A records. Prints ``ready``
once every socket listens, and stops when its stdin closes.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import http.server
import io
import json
import shlex
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

CHUNK = bytes(1024 * 1024)
WHEEL = "corral_demo-1.0-py3-none-any.whl"


def wheel() -> bytes:
    """A one-module wheel: ``import corral_demo; corral_demo.VALUE == 42``."""
    files = {
        "corral_demo/__init__.py": b"VALUE = 42\n",
        "corral_demo-1.0.dist-info/METADATA":
            b"Metadata-Version: 2.1\nName: corral-demo\nVersion: 1.0\n",
        "corral_demo-1.0.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: corral\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("corral_demo-1.0.dist-info/RECORD,,")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("corral_demo-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return buffer.getvalue()


def _control(package: str) -> str:
    return (f"Package: {package}\nVersion: 1.0\nArchitecture: all\n"
            "Maintainer: Corral tests <tests@corral.invalid>\n"
            "Description: prints one line (the test internet's apt repository)\n")


def deb(package: str, line: str) -> tuple[str, bytes]:
    """A Debian package (its file name and bytes), built with ``dpkg-deb``: ``package``
    1.0, installing ``/usr/bin/<package>``, a script that prints ``line``."""
    name = f"{package}_1.0_all.deb"
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch, "tree")
        (root / "DEBIAN").mkdir(parents=True)
        (root / "usr" / "bin").mkdir(parents=True)
        (root / "DEBIAN" / "control").write_text(_control(package))
        tool = root / "usr" / "bin" / package
        tool.write_text(f"#!/bin/sh\nprintf '%s\\n' {shlex.quote(line)}\n")
        for path in (root, root / "DEBIAN", root / "usr", root / "usr" / "bin", tool):
            path.chmod(0o755)  # whatever the umask: dpkg-deb checks DEBIAN's mode
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root),
                        str(Path(scratch, name))], check=True, capture_output=True, timeout=60)
        return name, Path(scratch, name).read_bytes()


def apt_repository(package: str, line: str) -> dict[str, bytes]:
    """A flat apt repository's files by name: one package, its ``Packages`` stanza (size
    and sha256 written here, no tool needed) and an unsigned ``Release`` naming it."""
    name, data = deb(package, line)
    index = (f"{_control(package)}Filename: ./{name}\nSize: {len(data)}\n"
             f"SHA256: {hashlib.sha256(data).hexdigest()}\n").encode()
    release = (f"Origin: corral-test\nLabel: corral-test\n"
               f"Date: {email.utils.formatdate(usegmt=True)}\nSHA256:\n"
               f" {hashlib.sha256(index).hexdigest()} {len(index)} Packages\n").encode()
    return {name: data, "Packages": index, "Release": release}


def serve(config: dict[str, Any]) -> None:
    package = wheel()
    repository = apt_repository(config["apt_package"], config["apt_line"])
    max_bytes = int(config["max_bytes"])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path.startswith("/bytes/") and self.path[7:].isdigit():
                size = min(int(self.path[7:]), max_bytes)
                self._head(size)
                while size > 0:
                    self.wfile.write(CHUNK[:min(size, len(CHUNK))])
                    size -= len(CHUNK)
                return
            kind = "text/plain"
            if self.path.rstrip("/") == "/simple/corral-demo":
                body = f'<a href="/packages/{WHEEL}">{WHEEL}</a>'.encode()
                kind = "text/html"
            elif self.path == f"/packages/{WHEEL}":
                body = package
            elif self.path.startswith("/apt/"):
                name = self.path[5:].removeprefix("./")  # apt asks for /apt/./Release
                if name not in repository:
                    self.send_error(404)
                    return
                body = repository[name]
            else:
                address: Any = self.server.server_address
                body = f"{address[0]}:{address[1]}".encode()
            self._head(len(body), kind)
            self.wfile.write(body)

        def _head(self, size: int, kind: str = "application/octet-stream") -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(size))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(config["cert"], config["key"])
    servers = []
    for spec in config["http"]:
        host, port = spec.rsplit(":", 1)
        servers.append(Server((host, int(port)), Handler))
    for spec in config["https"]:
        host, port = spec.rsplit(":", 1)
        server = Server((host, int(port)), Handler)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        servers.append(server)
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((config["udp_host"], int(config["udp_port"])))

    def log_datagrams() -> None:
        while True:
            data, source = udp.recvfrom(2048)
            with open(config["udp_log"], "a") as log:
                log.write(f"{source[0]} {data[:64].decode(errors='replace')}\n")

    threading.Thread(target=log_datagrams, daemon=True).start()

    names: dict[str, str] = config["names"]
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind((config["resolver"], 53))

    def answer_queries() -> None:
        while True:
            wire, source = resolver.recvfrom(4096)
            try:
                query = dns.message.from_wire(wire)
            except Exception:
                continue
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            with open(config["dns_log"], "a") as log:
                log.write(f"{source[0]} {name}\n")
            if name not in names:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.A:
                response.answer.append(dns.rrset.from_text_list(
                    question.name, 30, "IN", "A", [names[name]]))
            resolver.sendto(response.to_wire(), source)

    threading.Thread(target=answer_queries, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        serve(json.load(f))
