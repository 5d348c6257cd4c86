"""`funnel demo` as a user runs it: starts everything, prints the funnel, stops on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streams.tools.netutil import free_port

from .harness import wait_until

pytestmark = pytest.mark.integration


def test_demo_runs_prints_funnel_and_stops_cleanly(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")},
        "FUNNEL_DATA_DIR": str(tmp_path / "data"),
        "FUNNEL_WEB_PORT": str(free_port()),
        "FUNNEL_KAFKA_SESSION_TIMEOUT_SECONDS": "6",
    }
    out_path = tmp_path / "demo.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.tools.cli", "demo", "--rate", "400", "--refresh", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        def visits_shown() -> int:
            assert proc.poll() is None, out_path.read_text()
            found = re.findall(r"^\s+visit\s+(\d+)", out_path.read_text(), re.M)
            return int(found[-1]) if found and int(found[-1]) > 0 else 0

        wait_until(visits_shown, 90, "the demo to print a funnel with visits")
        # Ctrl-C in a terminal signals the whole foreground group: do the same.
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0, out_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out_path.read_text()
    assert "metrics    http://127.0.0.1:" in text
    assert 'funnel "default"' in text

    # The data stays queryable after the demo stopped (nobody owns the engine now).
    sql = subprocess.run(
        [sys.executable, "-m", "streams.tools.cli", "sql",
         "SELECT count() AS visits FROM funnel.stage_entries FINAL WHERE stage = 'visit'"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert sql.returncode == 0, sql.stderr
    assert int(sql.stdout.split("\n")[2]) >= visits_shown_last(text)


def visits_shown_last(text: str) -> int:
    return int(re.findall(r"^\s+visit\s+(\d+)", text, re.M)[-1])
