"""The real Prometheus scrapes a running worker and evaluates the repository's recording rules.

A `prometheus` process (Debian package `prometheus`) listens on a loopback port
with a generated config: one job `funnel-worker` scraping the test worker every
second, and deploy/prometheus/rules/recording.yml evaluated every second. Known
traffic goes through the pipeline; Prometheus' HTTP API must then report the
exact stage entries and the exact recorded period conversion per step.

Why the recorded ratio can be asserted exactly although increase() extrapolates
(promql/functions.go, extrapolatedRate, Prometheus 2.x): for one series

    increase = (last - first) * (sampled + to_start + to_end) / sampled

with ``sampled = t_last - t_first``; ``to_end`` is the distance from the last
sample to the end of the range; ``to_start`` is the distance to the start of
the range, but for a counter never more than ``sampled * first / (last -
first)`` (where the counter would have been zero), and either is replaced by
half a scrape interval if longer than 1.1 scrape intervals. The ratio of two
series' increases is therefore exactly the ratio of their raw increases only
if the factor is the same for both, that is if both series

* were first scraped in the same scrape and last scraped in the same scrape
  (one target, one scrape loop: same timestamps, same sample count), and
* have the same ``first / (last - first)``.

The worker exports every bounded label set at 0 from its start, but the
channel series that the traffic moves must still share one factor. A warm-up
counted *before* Prometheus starts puts every stage at exactly 1/5 of the
traffic that follows (40 visits,
10 signups, ... then 200 visits, 50 signups, ...), all on one channel, so that
each stage is one series: every stage then has ``first / (last - first) =
0.2`` (the same double), the same timestamps and hence the same factor, and
every recorded ratio equals the traffic's ratio up to one rounding.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streams.tools.netutil import free_port

from .harness import Worker, bootstrap_of, event, produce, wait_until

pytestmark = pytest.mark.integration

PROMETHEUS = "/usr/bin/prometheus"
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules" / "recording.yml"

STAGES = ["visit", "signup", "webinar", "consultation", "purchase"]
TRAFFIC = [200, 50, 20, 10, 5]
WARMUP = [n // 5 for n in TRAFFIC]  # 40, 10, 4, 2, 1: the same proportions (see the docstring)
TOTAL = dict(zip(STAGES, (w + t for w, t in zip(WARMUP, TRAFFIC, strict=True)), strict=True))
CHANNEL = "seo"  # one channel: one series per stage
GAP = 60_000  # event time between stages (ms)
#: The steps recording.yml monitors for funnel "default" (adjacent stages and first -> last, from the
#: stage pairs the worker exports) and their period conversion.
STEPS = {
    ("visit", "signup"): 50 / 200,
    ("signup", "webinar"): 20 / 50,
    ("webinar", "consultation"): 10 / 20,
    ("consultation", "purchase"): 5 / 10,
    ("visit", "purchase"): 5 / 200,
}


@dataclass
class Prometheus:
    """A `prometheus` subprocess and its HTTP API."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as resp:
            return bytes(resp.read())

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query at "now": the result vector (metric labels and [time, value])."""
        answer = json.loads(self.get("/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        assert answer["status"] == "success", answer
        assert answer["data"]["resultType"] == "vector", answer
        return list(answer["data"]["result"])

    def values(self, promql: str, *labels: str) -> dict[tuple[str, ...], float]:
        """The result of ``promql`` as {label values: value}."""
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
        return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1])
                for r in self.query(promql)}

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_prometheus(tmp: Path, target: str, rule_files: list[Path], timeout: float = 30.0) -> Prometheus:
    """Start the real `prometheus` scraping ``target`` (host:port) every second, wait until ready."""
    if not Path(PROMETHEUS).exists() and not shutil.which("prometheus"):
        pytest.fail(f"{PROMETHEUS} not found: the Prometheus scrape test needs the real server "
                    "(apt-get install -y prometheus)")
    binary = PROMETHEUS if Path(PROMETHEUS).exists() else str(shutil.which("prometheus"))
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "prometheus.yml"
    # JSON is YAML: no quoting questions for paths and label values.
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{
            "job_name": "funnel-worker",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [target]}],
        }],
    }, indent=2))
    port = free_port()
    log_path = tmp / "prometheus.log"
    out = open(log_path, "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    out.close()
    prom = Prometheus(proc, f"http://127.0.0.1:{port}", log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}:\n{prom.log_tail()}")
        return b"Ready" in prom.get("/-/ready", timeout=2)

    try:
        wait_until(ready, timeout, "prometheus to be ready")
    except BaseException:
        prom.stop()
        raise
    return prom


def _stage_by_stage(worker: Worker, counts: list[int], user_prefix: str, t0: int,
                    expected_before: dict[str, int]) -> None:
    """Send ``counts`` users through the stages, one stage at a time, each a minute after the last.

    Each stage is produced once the worker has counted the previous one, so every
    user's events are applied in order and every transition is counted exactly once.
    """
    prefix = worker.env["FUNNEL_TOPIC_PREFIX"]
    for index, (stage, count) in enumerate(zip(STAGES, counts, strict=True)):
        messages = []
        for i in range(count):
            user = f"{user_prefix}{i}"
            fields: dict[str, Any] = {"channel": CHANNEL}
            if stage == "purchase":
                fields.update(amount="10.00", currency="EUR", order_id=f"{user}-o")
            _, _, body = event(stage, user, t0 + index * GAP + i, **fields)
            messages.append((f"{prefix}{stage}", user.encode(), body))
        assert produce(bootstrap_of(worker.env), messages) == count
        want = expected_before.get(stage, 0) + count

        def counted(stage: str = stage, want: int = want) -> bool:
            return worker.metric_sum("funnel_stage_entries_total", funnel="default", stage=stage) == want

        wait_until(counted, 60, f"{want} {stage} entries counted by the worker")


def test_prometheus_scrapes_worker_and_records_conversion(worker: Worker, tmp_path: Path) -> None:
    assert RULES.is_file(), RULES
    now = int(time.time())
    t0 = (now - 1200 - now % 60) * 1000  # twenty minutes ago, on a minute: nothing is late

    # Warm-up, counted before Prometheus starts, so that its first scrape already has
    # every stage's series at 1/5 of the traffic below (see the module docstring).
    _stage_by_stage(worker, WARMUP, "w", t0, {})
    warmup = dict(zip(STAGES, WARMUP, strict=True))

    target = worker.web.removeprefix("http://")
    prom = start_prometheus(tmp_path / "prometheus", target, [RULES])
    try:
        entries = 'sum by (stage) (funnel_stage_entries_total{job="funnel-worker", funnel="default"})'

        def stage_entries() -> dict[str, float]:
            return {k[0]: v for k, v in prom.values(entries, "stage").items()}

        # The rules file loaded (a broken file fails the start, an unused one shows no groups).
        groups = {g["name"] for g in json.loads(prom.get("/api/v1/rules"))["data"]["groups"]}
        assert {"funnel_steps", "funnel_traffic", "funnel_pipeline"} <= groups, groups

        wait_until(lambda: prom.values('up{job="funnel-worker"}', "instance") == {(target,): 1.0},
                   20, f"prometheus to scrape {target} successfully")
        wait_until(lambda: stage_entries() == warmup, 20, f"the warm-up {warmup} in prometheus")

        # The traffic, strictly after the first scrape (event time after the warm-up's).
        _stage_by_stage(worker, TRAFFIC, "u", t0 + 5 * GAP, warmup)

        # --- raw series: exact counts, target up --------------------------------------------
        # wait_until fails unless the sums become exactly TOTAL (within 20 s).
        wait_until(lambda: stage_entries() == TOTAL, 20, f"the totals {TOTAL} in prometheus")
        # From now on the final scrape is committed: a rule evaluation that starts later sees it.
        # (One timestamped after the scrape may still have started before the scrape's samples
        # were appended, and read the last stage's increase as 0: seen once in make test.)
        visible_at = time.time()
        # Every bounded label set is exported from the start (at 0): only seo moved.
        assert prom.values(entries.replace("(stage)", "(stage, channel)") + " > 0", "stage", "channel") == {
            (stage, CHANNEL): n for stage, n in TOTAL.items()}
        assert prom.values('up{job="funnel-worker"}', "instance") == {(target,): 1.0}
        transitions = prom.values(
            'sum by (from_stage, to_stage) (funnel_transitions_total{funnel="default"}) > 0',
            "from_stage", "to_stage")
        assert transitions == {
            (a, b): float(TOTAL[b]) for a, b in itertools.pairwise(STAGES)}

        # --- recorded series: wait for an evaluation after the scrape with the totals -----------
        ratio5m = 'funnel_step:funnel_period_conversion:ratio5m{funnel="default"}'
        wait_until(lambda: min(prom.values(f"timestamp({ratio5m})", "from_stage", "to_stage").values(),
                               default=0) > visible_at,
                   20, "a rule evaluation after the final scrape was visible")

        # Every step is recorded, with the exact traffic ratio (one rounding apart at most).
        for rule in (ratio5m, ratio5m.replace("ratio5m", "ratio1h")):
            got = prom.values(rule, "from_stage", "to_stage")
            assert got == pytest.approx(STEPS, rel=1e-9, abs=0), rule
        # The recorded steps are the only ones (no stray label combination).
        assert set(prom.values(ratio5m, "from_stage", "to_stage")) == set(STEPS)
        # Numerator and denominator are recorded per step too: both in the same proportion.
        from_5m = prom.values('funnel_step:funnel_from_stage_persons:increase5m{funnel="default"}',
                              "from_stage", "to_stage")
        to_5m = prom.values('funnel_step:funnel_to_stage_persons:increase5m{funnel="default"}',
                            "from_stage", "to_stage")
        assert set(from_5m) == set(to_5m) == set(STEPS)
        for (a, b), ratio in STEPS.items():
            assert to_5m[a, b] / from_5m[a, b] == pytest.approx(ratio, rel=1e-9, abs=0)
            # Extrapolated, but never below what really happened in the window.
            assert from_5m[a, b] >= TOTAL[a] - warmup[a]
    except BaseException:
        print(f"prometheus log:\n{prom.log_tail()}")
        raise
    finally:
        prom.stop()
