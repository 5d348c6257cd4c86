"""`funnel demo` as a user runs it: on a terminal (read through a terminal emulator) and without one.

Each run starts everything (embedded broker, chDB, generator, worker), reads
what the user sees after the first refreshes, and stops with Ctrl-C.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pyte
import pytest

from schemas import DEFAULT_FUNNEL
from streams.tools.netutil import free_port

from .harness import wait_until

pytestmark = pytest.mark.integration

STAGES = DEFAULT_FUNNEL.names
#: A log line: Faust's "[2026-12-03 09:37:16,713] [8061] [WARNING] ..." or a level name.
LOG_LINE = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,]+\]|\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")
ESCAPE = re.compile(r"\x1b")
PERCENT = re.compile(r"\d+\.\d%")


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")},
        "FUNNEL_DATA_DIR": str(tmp_path / "data"),
        "FUNNEL_WEB_PORT": str(free_port()),
        "FUNNEL_KAFKA_SESSION_TIMEOUT_SECONDS": "6",
        "TERM": "xterm-256color",
    }


def _demo(env: dict[str, str], **io: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streams.tools.cli", "demo", "--rate", "400", "--refresh", "1"],
        env=env, start_new_session=True, **io,  # type: ignore[call-overload]
    )


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C in a terminal signals the whole foreground group: do the same."""
    os.killpg(proc.pid, signal.SIGINT)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the demo starts the broker and the generator in their own sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture
def stop_all() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Demos still running at the end (a failed test) are killed with everything they started."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            for pid in _descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Terminal:
    """A pseudo-terminal of 80 x 24 whose screen is kept by pyte, a VT100 emulator."""

    def __init__(self, columns: int = 80, lines: int = 24) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        self.screen = pyte.Screen(columns, lines)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""

    def pump(self, seconds: float) -> None:
        """Read what the program wrote for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # the program closed the terminal
                    return
                self.raw += data
                self.stream.feed(data)

    @property
    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)


def test_on_a_terminal_one_view_is_redrawn_in_place(tmp_path: Path, stop_all: list) -> None:
    env = _env(tmp_path)
    term = Terminal()
    proc = _demo(env, stdin=term.slave, stdout=term.slave, stderr=term.slave)
    stop_all.append(proc)
    os.close(term.slave)

    def visits_on_screen() -> bool:
        assert proc.poll() is None, term.text
        term.pump(0.5)
        found = re.search(r"^\s+visit\s+([\d ]+?)\s+-", term.text, re.M)
        return bool(found and int(found.group(1).replace(" ", "")) > 0)

    wait_until(visits_on_screen, 120, "the view to show visits")

    def redrawn() -> bool:  # a few more refreshes, drawn over the first ones
        term.pump(0.5)
        return term.raw.count(b"rows waiting in sinks") > 3

    wait_until(redrawn, 60, "the view to be redrawn")
    screen = term.text
    assert not LOG_LINE.search(screen), screen
    for stage in STAGES:
        assert re.search(rf"^\s+{stage}\s", screen, re.M), (stage, screen)
    assert PERCENT.search(screen), screen
    web = f"http://127.0.0.1:{env['FUNNEL_WEB_PORT']}"
    assert f"page    {web}/" in screen and f"metrics {web}/metrics" in screen, screen
    assert "consumer lag" in screen and "dead-lettered" in screen and "rows waiting in sinks" in screen
    assert "top channels by visit -> purchase" in screen
    # In place: many refreshes were drawn, the view is on the screen once.
    assert screen.count("rows waiting in sinks") == 1
    _interrupt(proc)

    def stopped() -> bool:
        term.pump(0.5)
        return proc.poll() is not None

    wait_until(stopped, 60, "the demo to stop")
    term.pump(0.5)
    assert proc.returncode == 0, term.text
    wrapped = "".join(term.screen.display)  # a long line goes on at the start of the next one
    assert "funnel demo stopped" in wrapped and str(tmp_path / "data" / "logs") in wrapped, term.text
    logs = tmp_path / "data" / "logs"
    assert {"worker.log", "broker.log", "generator.log"} <= {p.name for p in logs.iterdir()}
    assert LOG_LINE.search((logs / "worker.log").read_text())  # the worker's log went there


def test_without_a_terminal_plain_blocks_and_a_second_run_continues(tmp_path: Path, stop_all: list) -> None:
    env = _env(tmp_path)
    out_path = tmp_path / "demo.out"

    def run(until: str) -> str:
        with open(out_path, "wb") as out:
            proc = _demo(env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        stop_all.append(proc)

        def shown() -> bool:
            assert proc.poll() is None, out_path.read_text()
            return bool(re.search(until, out_path.read_text(), re.M))

        wait_until(shown, 120, f"the demo to print {until!r}")
        _interrupt(proc)
        assert proc.wait(60) == 0, out_path.read_text()[-3000:]
        return out_path.read_text()

    text = run(r"^\s+visit\s+[1-9][\d ]*\s+-")
    assert not ESCAPE.search(text), repr(text[:500])
    assert not LOG_LINE.search(text), text[-3000:]
    for stage in STAGES:
        assert re.search(rf"^\s+{stage}\s", text, re.M), stage
    assert PERCENT.search(text) and "metrics http://127.0.0.1:" in text, text[-3000:]
    assert "funnel demo stopped" in text

    # The data stays queryable after the demo stopped (nobody owns the engine now).
    sql = subprocess.run(
        [sys.executable, "-m", "streams.tools.cli", "sql",
         "SELECT count() AS visits FROM funnel.stage_entries FINAL WHERE stage = 'visit'"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert sql.returncode == 0, sql.stderr
    visits = int(sql.stdout.split("\n")[2])
    shown = [int(n.replace(" ", "")) for n in re.findall(r"^\s+visit\s+([\d ]+?)\s+-", text, re.M)]
    assert 0 < shown[-1] <= visits

    # A second run on the same data says what it continues from.
    again = run(r"^continuing with [\d ]+ events from an earlier run; `make clean` starts afresh$")
    found = re.search(r"continuing with ([\d ]+) events", again)
    assert found and int(found.group(1).replace(" ", "")) >= visits
