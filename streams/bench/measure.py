"""Pure helpers that turn observations into figures: /metrics sums, latencies, percentiles, rates."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in Prometheus text whose labels include ``labels``.

    A plain line scan (the bench polls /metrics ten times a second); label
    values must not contain ``,`` or ``"`` (ours never do).
    """
    total = 0.0
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest.startswith("{"):
            label_text, _, value = rest[1:].partition("} ")
            if not all(w in label_text.split(",") for w in want):
                continue
        elif rest.startswith(" ") and not want:
            value = rest[1:]
        else:
            continue
        total += float(value.split()[0])
    return total


def visibility_latencies(produced: Sequence[float], samples: Iterable[tuple[float, float]],
                         until: float) -> tuple[list[float], int]:
    """Seconds from production to visibility for counted items, and how many were never seen.

    ``produced[i]`` is when the i-th counted item was produced (production
    order); ``samples`` are (time, count since the start) observations of a
    counter. The k-th item is taken as visible at the first sample whose count
    reaches k (first in, first counted: exact for one partition, close for
    several). Latencies are accurate to the sampling period, late side. An
    item never seen by ``until`` (when observing stopped) counts ``until``
    minus its production time: a lower bound, so percentiles stay honest
    when the pipeline cannot keep up.
    """
    times: list[float] = []
    counts: list[float] = []
    running = 0.0
    for when, count in sorted(samples):
        running = max(running, count)  # counters only grow; guard against a reset probe
        times.append(when)
        counts.append(running)
    latencies: list[float] = []
    for i, born in enumerate(produced):
        j = bisect.bisect_left(counts, i + 1)
        if j == len(counts):
            latencies.extend(max(0.0, until - b) for b in produced[i:])
            return latencies, len(produced) - i
        latencies.append(max(0.0, times[j] - born))
    return latencies, 0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")
