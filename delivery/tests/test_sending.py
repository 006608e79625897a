"""The webhook POST over real TLS: connected to the checked address, with the name in SNI, in
Host and in the certificate check."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from asgiref.sync import async_to_sync
from standardwebhooks import Webhook

import delivery.sending
from delivery import guard
from delivery.models import Endpoint
from delivery.sending import close_clients, post_webhook


async def post_once(*args: object, **kwargs: object):
    """post_webhook, its event loop's sessions closed after it (the loop ends with the call)."""
    try:
        return await post_webhook(*args, **kwargs)
    finally:
        await close_clients()


def certificate(tmp_path, name: str) -> tuple[str, str]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"),
            *("-addext", f"subjectAltName=DNS:{name}"),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.fixture
def tls_receiver(tmp_path):
    """An https server on 127.0.0.1 whose certificate names hooks.test; it records the SNI
    and the requests it gets."""
    cert, key = certificate(tmp_path, "hooks.test")
    seen: dict[str, list] = {"sni": [], "requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen["requests"].append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: seen["sni"].append(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    # shutdown() waits up to one poll interval (0.5 s by default) for the loop to notice.
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.server_address[1], cert, seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def resolve_to_loopback(monkeypatch, settings):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True  # the test server is on 127.0.0.1

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "hooks.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(guard.socket, "getaddrinfo", getaddrinfo)


def trust(monkeypatch, cafile: str) -> None:
    monkeypatch.setattr(
        delivery.sending, "tls_context", lambda: ssl.create_default_context(cafile=cafile)
    )


def test_https_goes_to_the_checked_address_with_the_name_in_sni_host_and_certificate(
    tls_receiver, resolve_to_loopback, monkeypatch
):
    port, cert, seen = tls_receiver
    trust(monkeypatch, cert)
    secret = Endpoint.generate_secret()

    outcome = async_to_sync(post_once)(
        f"https://hooks.test:{port}/hook", b'{"type":"x"}', secret=secret, webhook_id="7"
    )

    assert outcome.succeeded, outcome.error
    assert outcome.status_code == 204
    assert seen["sni"] == ["hooks.test"]
    [(headers, body)] = seen["requests"]
    assert headers["host"] == f"hooks.test:{port}"
    Webhook(secret).verify(body, headers)


def test_a_certificate_for_another_name_is_refused(
    tls_receiver, resolve_to_loopback, monkeypatch, tmp_path
):
    port, _, seen = tls_receiver
    other, _ = certificate(tmp_path, "other.test")
    trust(monkeypatch, other)  # trusts a CA that did not sign hooks.test's certificate

    outcome = async_to_sync(post_once)(
        f"https://hooks.test:{port}/hook", b"{}", secret=Endpoint.generate_secret(), webhook_id="8"
    )

    assert not outcome.succeeded
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.error
    assert seen["requests"] == []


def test_attempts_to_one_name_reuse_its_connection_and_another_name_gets_its_own(
    monkeypatch, settings
):
    """Keep-alive per host name: a.test's attempts share one connection; b.test, at the same
    address, never rides on it (its SNI and certificate would be a.test's)."""
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True

    def getaddrinfo(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(guard.socket, "getaddrinfo", getaddrinfo)
    connections: list[list[bytes]] = []

    class KeepAlive(asyncio.Protocol):
        """HTTP/1.1: answers 200 to each request, keeps the connection; records Host headers."""

        def connection_made(self, transport) -> None:
            self.transport, self.buffer, self.hosts = transport, b"", []
            connections.append(self.hosts)

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head = self.buffer[:end].split(b"\r\n")
                fields = dict(line.split(b": ", 1) for line in head[1:])
                length = int(fields.get(b"Content-Length", fields.get(b"content-length", 0)))
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length :]
                self.hosts.append(fields.get(b"Host", fields.get(b"host")))
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async def attempts() -> list[bool]:
        server = await asyncio.get_running_loop().create_server(KeepAlive, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        outcomes = []
        for name in ("a.test", "a.test", "b.test", "a.test"):
            outcome = await post_webhook(
                f"http://{name}:{port}/hook",
                b"{}",
                secret=Endpoint.generate_secret(),
                webhook_id="9",
            )
            outcomes.append(outcome.succeeded)
        server.close()
        await close_clients()
        return outcomes

    assert async_to_sync(attempts)() == [True] * 4
    assert [[host.split(b":")[0] for host in hosts] for hosts in connections] == [
        [b"a.test", b"a.test", b"a.test"],
        [b"b.test"],
    ]
