"""The app the exposed-port tests run inside a sandbox (standard library only).

``python3 _port_app.py PORT`` serves, over HTTP/1.1 on 0.0.0.0:PORT:

* ``/echo...``: JSON of what arrived: method, path, query, headers;
* ``/bytes?n=N``: N bytes of a repeating pattern, with a Content-Length;
* ``/upload`` (POST): JSON of the body's length and sha256;
* ``/events``: an SSE stream: one event, then a second once ``/tmp/go`` exists, then ends;
* ``/cookies``: three ``Set-Cookie`` headers (a plain one, one with a Domain, one named
  like Corral's);
* ``/ws``: a WebSocket echoing every message (text or binary) until a close;
* ``/ws-headers``: the same, but the first message is answered with the handshake's JSON
  (as ``/echo``'s);
* ``/ws-greet``: the same, after a first message of its own, ``hello``, sent in the same
  write as the handshake's answer;
* ``/set-cookies?c=...``: one ``Set-Cookie`` header per ``c`` parameter, as given;
* ``/seen``: JSON of the request lines' targets received so far (the last 1000).
"""

import base64
import hashlib
import json
import os
import struct
import sys
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SEEN = deque(maxlen=1000)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def parse_request(self):
        parsed = super().parse_request()
        if parsed:
            SEEN.append(self.path)
        return parsed

    def _json(self, value, status=200):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _seen(self):
        url = urlsplit(self.path)
        return {"method": self.command, "path": url.path, "query": url.query,
                "headers": [[k.lower(), v] for k, v in self.headers.items()]}

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path.startswith("/echo"):
            self._json(self._seen())
        elif url.path == "/bytes":
            n = int(parse_qs(url.query)["n"][0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = bytes(range(256)) * 256
            while n > 0:
                piece = block[:n]
                self.wfile.write(piece)
                n -= len(piece)
        elif url.path == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(b"data: first\n\n")
            deadline = time.monotonic() + 60
            while not os.path.exists("/tmp/go") and time.monotonic() < deadline:
                time.sleep(0.02)
            self._chunk(b"data: second\n\n")
            self._chunk(b"")
        elif url.path == "/cookies":
            self.send_response(200)
            self.send_header("Set-Cookie", "plain=1; Path=/inner; HttpOnly")
            self.send_header("Set-Cookie", "wide=1; Domain=localhost; Path=/")
            self.send_header("Set-Cookie", "corral_port=forged; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/ws":
            self._websocket()
        elif url.path == "/ws-headers":
            self._websocket(reply=json.dumps(self._seen()).encode())
        elif url.path == "/ws-greet":
            self._websocket(greeting=b"hello")
        elif url.path == "/set-cookies":
            self.send_response(200)
            for value in parse_qs(url.query).get("c", []):
                self.send_header("Set-Cookie", value)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/seen":
            self._json(list(SEEN))
        else:
            self._json({"error": "no such page"}, 404)

    def do_POST(self):
        if urlsplit(self.path).path == "/upload":
            length = int(self.headers.get("Content-Length", "0"))
            digest = hashlib.sha256()
            left = length
            while left > 0:
                piece = self.rfile.read(min(left, 1 << 16))
                if not piece:
                    break
                digest.update(piece)
                left -= len(piece)
            self._json({"length": length - left, "sha256": digest.hexdigest()})
        else:
            self.do_GET()

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _websocket(self, reply=None, greeting=None):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        if greeting is None:
            self.end_headers()
        else:
            self._headers_buffer.append(b"\r\n" + self._framed(1, greeting))
            self.flush_headers()
        self.wfile.flush()
        while True:
            opcode, payload = self._frame()
            if opcode is None or opcode == 8:
                self._send_frame(8, payload[:2] if payload else b"")
                return
            if opcode in (1, 2):
                self._send_frame(*((1, reply) if reply is not None else (opcode, payload)))
                reply = None
            elif opcode == 9:
                self._send_frame(10, payload)

    def _frame(self):
        head = self.rfile.read(2)
        if len(head) < 2:
            return None, b""
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            length = struct.unpack(">H", self.rfile.read(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self.rfile.read(8))[0]
        mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
        data = bytearray(self.rfile.read(length))
        for i in range(len(data)):
            data[i] ^= mask[i % 4]
        return opcode, bytes(data)

    def _send_frame(self, opcode, payload):
        self.wfile.write(self._framed(opcode, payload))
        self.wfile.flush()

    def _framed(self, opcode, payload):
        head = bytes([0x80 | opcode])
        if len(payload) < 126:
            head += bytes([len(payload)])
        elif len(payload) < 1 << 16:
            head += bytes([126]) + struct.pack(">H", len(payload))
        else:
            head += bytes([127]) + struct.pack(">Q", len(payload))
        return head + payload


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
