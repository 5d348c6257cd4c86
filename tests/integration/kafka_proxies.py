"""Proxies in front of the embedded broker, which speaks plaintext without authentication only.

:class:`TlsProxy` terminates TLS. :class:`SaslProxy` authenticates clients
with SASL (PLAIN, SCRAM) itself (the embedded broker's own SCRAM does not work with
aiokafka), then pipes the connection through; with a TLS context it is a
SASL_SSL listener. Each runs its own event loop in a thread, on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import struct
import threading
from typing import Any

from scramp import ScramException, ScramMechanism

#: Kafka's API keys and error codes the SASL proxy answers itself.
SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SASL_AUTHENTICATION_FAILED, UNSUPPORTED_SASL_MECHANISM = 58, 33
SCRAM_ITERATIONS = 4096


class _Proxy:
    """A listener on ``port`` whose connections ``_serve`` handles, on a loop in its own thread."""

    def __init__(self, port: int, upstream: tuple[str, int], context: ssl.SSLContext | None = None) -> None:
        self.port, self.upstream, self.context = port, upstream, context
        self.loop = asyncio.new_event_loop()
        self.connections = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        assert self._ready.wait(10), f"{type(self).__name__} did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port, ssl=self.context))
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            broker_r, broker_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        try:
            if await self._serve(client_r, client_w, broker_r, broker_w):
                await asyncio.gather(_pipe(client_r, broker_w), _pipe(broker_r, client_w))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (client_w, broker_w):
                with contextlib.suppress(OSError):
                    writer.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                     broker_r: asyncio.StreamReader, broker_w: asyncio.StreamWriter) -> bool:
        """Whatever comes before piping; False: close the connection."""
        return True


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


class TlsProxy(_Proxy):
    """Terminates TLS on ``port`` and pipes each connection to the broker's plaintext port."""


async def _frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def _send(writer: asyncio.StreamWriter, correlation_id: int, body: bytes) -> None:
    payload = struct.pack(">i", correlation_id) + body
    writer.write(struct.pack(">i", len(payload)) + payload)


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


class _Login:
    """The server side of one SASL login: PLAIN, or SCRAM through scramp (RFC 5802, 7677)."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self.mechanism, self.users = mechanism, users
        self.scram: Any = None
        if mechanism.startswith("SCRAM-"):
            scram = ScramMechanism(mechanism)

            def auth_info(user: str) -> Any:
                # An unknown user still gets a challenge: the proof fails, as for a wrong password.
                return scram.make_auth_info(users.get(user) or os.urandom(8).hex(), SCRAM_ITERATIONS)

            self.scram = scram.make_server(auth_info)

    def step(self, message: bytes) -> tuple[bytes, bool | None]:
        """The answer to a client message, and whether the client is authenticated (None: not yet)."""
        if self.mechanism == "PLAIN":  # authzid NUL user NUL password
            _, user, password = message.decode().split("\0")
            return b"", self.users.get(user) == password
        if self.scram.stage is None:
            self.scram.set_client_first(message.decode())
            return self.scram.get_server_first().encode(), None
        try:
            self.scram.set_client_final(message.decode())
        except ScramException:
            return b"", False
        return self.scram.get_server_final().encode(), True


class SaslProxy(_Proxy):
    """Authenticates clients with SASL (PLAIN, SCRAM-SHA-256/512) against ``users``, then pipes to the broker.

    Before authentication it answers SaslHandshake and SaslAuthenticate itself
    and passes only ApiVersions on; a refused client gets Kafka's
    SASL_AUTHENTICATION_FAILED and the connection is closed, as a broker does.
    """

    def __init__(self, port: int, upstream: tuple[str, int], users: dict[str, str],
                 context: ssl.SSLContext | None = None) -> None:
        super().__init__(port, upstream, context)
        self.users = users
        self.refused = 0

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                     broker_r: asyncio.StreamReader, broker_w: asyncio.StreamWriter) -> bool:
        login: _Login | None = None
        while True:
            frame = await _frame(client_r)
            api_key, version, correlation_id, client_id_len = struct.unpack(">hhih", frame[:10])
            body = frame[10 + max(client_id_len, 0):]
            if api_key == SASL_HANDSHAKE:
                (size,) = struct.unpack(">h", body[:2])
                mechanism = body[2:2 + size].decode()
                ok = mechanism in MECHANISMS
                login = _Login(mechanism, self.users) if ok else None
                _send(client_w, correlation_id, struct.pack(">h", 0 if ok else UNSUPPORTED_SASL_MECHANISM)
                      + struct.pack(">i", len(MECHANISMS)) + b"".join(_string(m) for m in MECHANISMS))
                await client_w.drain()
                if not ok:
                    return False
            elif api_key == SASL_AUTHENTICATE and login is not None:
                (size,) = struct.unpack(">i", body[:4])
                answer, done = login.step(body[4:4 + size])
                lifetime = struct.pack(">q", 0) if version >= 1 else b""
                if done is False:
                    self.refused += 1
                    _send(client_w, correlation_id, struct.pack(">h", SASL_AUTHENTICATION_FAILED)
                          + _string("Authentication failed: invalid username or password")
                          + struct.pack(">i", 0) + lifetime)
                    await client_w.drain()
                    return False
                _send(client_w, correlation_id, struct.pack(">h", 0) + _string(None)
                      + struct.pack(">i", len(answer)) + answer + lifetime)
                await client_w.drain()
                if done:
                    return True
            elif api_key == 18:  # ApiVersions, before authentication: the broker answers it
                broker_w.write(struct.pack(">i", len(frame)) + frame)
                await broker_w.drain()
                reply = await _frame(broker_r)
                client_w.write(struct.pack(">i", len(reply)) + reply)
                await client_w.drain()
            else:  # anything else needs an authenticated client
                return False
