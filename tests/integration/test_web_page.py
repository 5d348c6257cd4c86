"""The live page, `funnel report` and `funnel emit` against a running worker.

One worker (embedded broker, chDB) for the module, fed known traffic: five
cohorts of users at known ages and channels, each moving one stage a minute.
Headless Chromium opens the page and reads the numbers it shows; the same
numbers come out of `funnel report` in every format. The screenshot goes to
FUNNEL_SCREENSHOT_DIR when set (the README's picture), else the test's tmp dir.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.tools.broker import EmbeddedBroker
from tests.named_stages import B2B_STAGES, FUNNELS_YAML

from .harness import Worker, event, produce, start_worker, wait_until

pytestmark = pytest.mark.integration

STAGES = ["visit", "signup", "webinar", "consultation", "purchase"]
# (user prefix, channel, minutes ago of the visit, users per stage); stages a minute apart.
COHORTS = [
    ("a", "seo", 6, [40, 20, 10, 5, 2]),
    ("b", "ads", 6, [20, 4, 2, 1, 1]),
    ("c", "social", 30, [30, 6, 3, 0, 0]),
    ("d", "partner", 180, [50, 10, 0, 0, 0]),
    ("e", "email", 3 * 1440, [25, 5, 5, 5, 0]),
]
# Users per stage shown for (range, channel): sums of the cohorts inside the period.
EXPECTED = {
    ("24h", "all"): [140, 40, 15, 6, 3],
    ("15m", "all"): [60, 24, 12, 6, 3],
    ("15m", "ads"): [20, 4, 2, 1, 1],
    ("1h", "all"): [90, 30, 15, 6, 3],
    ("7d", "all"): [165, 45, 20, 11, 3],
}
# Stalled (furthest stage, nothing new for longer than the threshold), visit..consultation.
STALLED = {"7d": [0, 0, 0, 0], "1h": [60, 10, 0, 5], "1d": [20, 0, 0, 5]}
# A second funnel, named on its events: 10 visits, 4 webinars, 1 purchase, 8 minutes ago.
# A third, b2b (tests/named_stages.py), whose stage names are not event types: pricing is a
# visit of /pricing, lead a signup, mql a signup with a lead score of 50 or more, won a paid
# purchase in EUR or USD; a refunded purchase excludes the person.
FUNNELS = FUNNELS_YAML + """  - name: webinar
    stages: [visit, webinar, purchase]
"""
# b2b, 9 minutes ago, a minute between steps: q0..q9 visit the home page, q0..q5 then the
# pricing page, q0..q3 sign up (q0, q1 with lead score 80, q2, q3 with 20), q0 buys and q1
# buys and is refunded (so q1 counts nowhere).
B2B_USERS = [9, 5, 3, 1, 1]  # persons per stage, q1 left out
B2B_ROWS = (10 + 6 + 4 + 2 + 2, 4 + 4 + 2 * 2 + 2 * 1)  # entries and transitions, q1's included
INVALID = [b"{not json", b'{"user_id": 42}']
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1500"]


def _traffic(prefix: str, now_ms: int) -> list[tuple[str, bytes | None, bytes]]:
    messages = []

    def add(stage: str, user: str, ts: int, **fields: Any) -> None:
        if stage == "purchase":
            fields.update(amount="49.90", currency="EUR")
        messages.append((f"{prefix}{stage}", user.encode(), event(stage, user, ts, **fields)[2]))

    for name, channel, minutes, counts in COHORTS:
        for index, (stage, count) in enumerate(zip(STAGES, counts, strict=True)):
            for i in range(count):
                add(stage, f"{name}{i}", now_ms - minutes * 60_000 + index * 60_000,
                    channel=channel, funnel="default")
    for stage, count, offset in (("visit", 10, 0), ("webinar", 4, 1), ("purchase", 1, 2)):
        for i in range(count):
            add(stage, f"w{i}", now_ms - (8 - offset) * 60_000, channel="ads", funnel="webinar")
    b2b = now_ms - 9 * 60_000
    for i in range(10):
        add("visit", f"q{i}", b2b, channel="seo", funnel="b2b", properties={"page": "/"})
    for i in range(6):
        add("visit", f"q{i}", b2b + 60_000, channel="seo", funnel="b2b", properties={"page": "/pricing"})
    for i in range(4):
        add("signup", f"q{i}", b2b + 2 * 60_000, channel="seo", funnel="b2b",
            properties={"lead_score": 80 if i < 2 else 20})
    add("purchase", "q0", b2b + 3 * 60_000, channel="seo", funnel="b2b")
    add("purchase", "q1", b2b + 3 * 60_000, channel="seo", funnel="b2b", properties={"refunded": True})
    messages += [(f"{prefix}visit", None, raw) for raw in INVALID]
    return messages


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker with two funnels and the known traffic in ClickHouse."""
    tmp = tmp_path_factory.mktemp("web")
    (tmp / "funnels.yml").write_text(FUNNELS)
    run = uuid.uuid4().hex[:8]
    env = dict(
        FUNNEL_KAFKA_URL=broker.url, FUNNEL_CLICKHOUSE_URL=f"chdb://{tmp / 'chdb'}",
        FUNNEL_DATA_DIR=str(tmp / "data"), FUNNEL_TOPIC_PREFIX=f"w{run}.", FUNNEL_APP_ID=f"funnel-web-{run}",
        FUNNEL_FUNNELS_FILE=str(tmp / "funnels.yml"), FUNNEL_KAFKA_SESSION_TIMEOUT_SECONDS="6",
        FUNNEL_BATCH_MAX_SECONDS="0.3", FUNNEL_STATUS_INTERVAL_SECONDS="2",
    )
    worker = start_worker(env, tmp / "worker.log")
    try:
        messages = _traffic(env["FUNNEL_TOPIC_PREFIX"], int(time.time() * 1000))
        produce(broker.url.removeprefix("kafka://"), messages)
        entries = sum(sum(c) for *_, c in COHORTS) + 15 + B2B_ROWS[0]
        transitions = sum(sum(c[1:]) for *_, c in COHORTS) + 5 + B2B_ROWS[1]
        wait_until(lambda: worker.scalar("SELECT count() FROM funnel.stage_entries FINAL") == entries
                   and worker.scalar("SELECT count() FROM funnel.transitions FINAL") == transitions
                   and worker.metric_sum("funnel_invalid_events_total") == len(INVALID),
                   60, f"{entries} entries and {transitions} transitions in ClickHouse")
        yield worker
    finally:
        code = worker.stop()
        assert code == 0, f"worker exited with {code}:\n{worker.log_tail()}"


def _artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("FUNNEL_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _cli(worker: Worker, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.tools.cli", *args], env=worker.env, input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


# -- the page ----------------------------------------------------------------------------------
def _chromium(tmp_path: Path) -> Any:
    missing = [b for b in ("chromium", "chromedriver") if not shutil.which(b)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: apt-get install -y chromium chromium-driver "
                    "(.ci/run installs them)")
    try:
        from selenium import webdriver
    except ImportError:
        pytest.fail("selenium is not installed: .venv/bin/pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for arg in [*CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=str(shutil.which("chromedriver")),
                                      log_output=str(tmp_path / "chromedriver.log"))
    return webdriver.Chrome(options=options, service=service)


_READ_CARD = """
const card = document.querySelector(`[data-funnel="${arguments[0]}"]`);
const all = (sel) => Array.from(card.querySelectorAll(sel));
return {
  shown: [document.body.dataset.range, document.body.dataset.channel, document.body.dataset.stall],
  users: all('.stages .stage').map((r) => [r.dataset.stage, r.querySelector('.users').textContent]),
  overall: all('.stages .stage .overall').map((e) => e.textContent),
  steps: all('.stages .step .conv').map((e) => e.textContent),
  summary: card.querySelector('.overall-conversion').textContent,
  ttc: all('.ttc tbody tr').map((r) => Array.from(r.cells).map((c) => c.textContent)),
  stalled: all('.stalled tbody tr').map((r) => [r.dataset.stage, r.querySelector('.users').textContent]),
  clipped: all('.stages .stage .name').filter((e) => e.scrollWidth > e.clientWidth).map((e) => e.textContent),
  trend: card.querySelector('.trend-note').textContent,
  error: document.getElementById('error').hidden ? '' : document.getElementById('error').textContent,
};
"""


def _card(driver: Any, funnel: str = "default") -> dict[str, Any]:
    return dict(driver.execute_script(_READ_CARD, funnel))


def _shows(driver: Any, range_: str, channel: str, stall: str = "7d", funnel: str = "default",
           users: list[int] | None = None) -> dict[str, Any]:
    """Wait until the page shows this selection with these users per stage; return what it shows."""
    want = users if users is not None else EXPECTED[(range_, channel)]
    stages = {"default": STAGES, "b2b": list(B2B_STAGES)}.get(funnel, ["visit", "webinar", "purchase"])
    expected = [[s, f"{n:,}"] for s, n in zip(stages, want, strict=True)]

    def check() -> dict[str, Any] | None:
        card = _card(driver, funnel)
        assert not card["error"], card["error"]
        return card if card["shown"] == [range_, channel, stall] and card["users"] == expected else None

    try:
        return dict(wait_until(check, 20, f"{funnel} {range_}/{channel}: {want}"))
    except AssertionError:
        assert _card(driver, funnel)["users"] == expected  # shows the difference
        raise


def _choose(driver: Any, control: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, control)).select_by_value(value)


def test_page_shows_the_known_funnel_and_follows_the_controls(stack: Worker, tmp_path: Path) -> None:
    driver = _chromium(tmp_path)
    try:
        driver.get(stack.web + "/")
        # Default: last 24 h, all channels, stalled after 7 days.
        card = _shows(driver, "24h", "all")
        assert card["overall"] == ["100.0%", "28.6%", "10.7%", "4.3%", "2.1%"]
        assert card["steps"] == ["28.6%", "37.5%", "40.0%", "50.0%"]
        assert card["summary"] == "2.1%"
        assert card["stalled"] == [[s, "0"] for s in STAGES[:-1]]
        assert [t[:2] for t in card["ttc"]] == [
            ["visit → signup", "40"], ["signup → webinar", "15"], ["webinar → consultation", "6"],
            ["consultation → purchase", "3"]]
        assert {t[2] for t in card["ttc"]} == {"1m"}  # every move took exactly a minute
        assert _shows(driver, "24h", "all", funnel="webinar", users=[10, 4, 1])["steps"] == ["40.0%", "25.0%"]
        # b2b: its stage names, in its order, whole; the refunded person left out.
        card = _shows(driver, "24h", "all", funnel="b2b", users=B2B_USERS)
        assert card["steps"] == ["55.6%", "60.0%", "33.3%", "100.0%"] and card["summary"] == "11.1%"
        assert [t[:3] for t in card["ttc"]] == [["visit → pricing", "5", "1m"], ["pricing → lead", "3", "1m"],
                                                ["lead → mql", "1", "0s"], ["mql → won", "1", "1m"]]
        assert card["stalled"] == [[s, "0"] for s in B2B_STAGES[:-1]]
        assert card["trend"] == "visit → won" and not card["clipped"]

        _choose(driver, "range", "15m")
        card = _shows(driver, "15m", "all")
        assert card["steps"] == ["40.0%", "50.0%", "50.0%", "50.0%"] and card["summary"] == "5.0%"
        assert card["ttc"][0] == ["visit → signup", "24", "1m", "1m", "1m"]
        _choose(driver, "channel", "ads")
        assert _shows(driver, "15m", "ads")["summary"] == "5.0%"
        _shows(driver, "15m", "ads", funnel="webinar", users=[10, 4, 1])
        _choose(driver, "range", "1h")
        _choose(driver, "channel", "all")
        _shows(driver, "1h", "all")
        _choose(driver, "range", "7d")
        _shows(driver, "7d", "all")
        for after, counts in STALLED.items():
            _choose(driver, "stall", after)
            card = _shows(driver, "7d", "all", stall=after)
            assert card["stalled"] == [[s, str(n)] for s, n in zip(STAGES, counts, strict=False)], after

        health = driver.execute_script(
            "return Object.fromEntries(Array.from(document.querySelectorAll('[data-health]'))"
            ".map((t) => [t.dataset.health, t.querySelector('.v').textContent]))")
        assert health["dead_letter_total"] == "2"
        assert health["ready"] == "consuming" and health["consumer_lag"] == "0"
        assert re.fullmatch(r"\d{1,2}:\d{2}:\d{2}( [AP]M)?", health["last_event_time"])

        # Live: an event sent now shows up without reloading the page.
        driver.execute_script("window.__notReloaded = true;")
        _choose(driver, "stall", "7d")
        _shows(driver, "7d", "all", funnel="webinar", users=[10, 4, 1])
        sent = _cli(stack, "emit", "visit", "--user", "live-1", "--channel", "ads", "--funnel", "webinar")
        assert sent.returncode == 0, sent.stderr
        _shows(driver, "7d", "all", funnel="webinar", users=[11, 4, 1])
        assert driver.execute_script("return window.__notReloaded === true;")
        assert driver.current_url.endswith("?range=7d&channel=all&stall=7d")

        _choose(driver, "range", "24h")
        _shows(driver, "24h", "all")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, int(height) + 160)  # the window's own frame takes some
        shot = _artifacts(tmp_path) / "page.png"
        assert driver.save_screenshot(str(shot)), "no screenshot"
        assert shot.stat().st_size > 20_000
    finally:
        driver.quit()


def test_api_rejects_what_is_not_on_the_allow_lists(stack: Worker) -> None:
    import urllib.error

    for query, message in (("range=2d", "range '2d' is not one of"),
                           ("channel=tiktok", "channel 'tiktok' is not one of"),
                           ("funnel=x%27%20OR%201%3D1", "funnel \"x' OR 1=1\" is not one of")):
        with pytest.raises(urllib.error.HTTPError) as err:
            stack.get(f"/api/funnel?{query}")
        with err.value:
            assert err.value.code == 400
            assert message in json.loads(err.value.read())["error"]
    with pytest.raises(urllib.error.HTTPError) as err:
        stack.get("/api/stalled?after=2h")
    with err.value:
        assert err.value.code == 400


# -- funnel report ---------------------------------------------------------------------------
def test_report_in_the_terminal_and_as_files(stack: Worker, tmp_path: Path) -> None:
    done = _cli(stack, "report", "--range", "15m")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:7] == [
        'funnel "default", last 15 min, all channels',
        "  stage            users     step  overall   cohort",
        "  visit               60        -   100.0%   100.0%  " + "#" * 30,
        "  signup              24    40.0%    40.0%    40.0%  " + "#" * 12,
        "  webinar             12    50.0%    20.0%    20.0%  " + "#" * 6,
        "  consultation         6    50.0%    10.0%    10.0%  " + "#" * 3,
        "  purchase             3    50.0%     5.0%     5.0%  " + "#" * 2,
    ]
    assert lines[7] == ("overall conversion 5.0% (period ratio); cohort 5.0% of the 60 who entered "
                        "visit in the period")
    assert lines[8:] == [
        "",
        "time to convert",
        "  from          to            users  median  p90  average",
        "  ------------  ------------  -----  ------  ---  -------",
        "  visit         signup           24  1m      1m   1m",
        "  signup        webinar          12  1m      1m   1m",
        "  webinar       consultation      6  1m      1m   1m",
        "  consultation  purchase          3  1m      1m   1m",
    ]

    out = _artifacts(tmp_path)
    for fmt in ("json", "csv", "html", "png"):
        done = _cli(stack, "report", "--range", "15m", "--channel", "ads", "--format", fmt,
                    "--out", str(out / f"report.{fmt}"))
        assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert [s["users"] for s in report["stages"]] == EXPECTED[("15m", "ads")]
    assert (report["funnel"], report["range"], report["channel"]) == ("default", "15m", "ads")
    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    assert [(r["stage"], r["users"], r["step_conversion"]) for r in rows] == [
        ("visit", "20", ""), ("signup", "4", "0.2"), ("webinar", "2", "0.5"),
        ("consultation", "1", "0.5"), ("purchase", "1", "1.0")]
    assert rows[1]["p50_seconds_from_previous"] == "60.0"
    page = (out / "report.html").read_text()
    assert '<tr data-stage="signup"><td>signup</td><td class="n">4</td>' in page
    assert "http://" not in page and "https://" not in page
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(out / "report.png") as image:
        assert image.width == 1500 and image.height > 600

    done = _cli(stack, "report", "--funnel", "b2b", "--range", "15m")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:8] == [
        'funnel "b2b", last 15 min, all channels',
        "  stage            users     step  overall   cohort",
        "  visit                9        -   100.0%   100.0%  " + "#" * 30,
        "  pricing              5    55.6%    55.6%    55.6%  " + "#" * 17,
        "  lead                 3    60.0%    33.3%    33.3%  " + "#" * 10,
        "  mql                  1    33.3%    11.1%    11.1%  " + "#" * 3,
        "  won                  1   100.0%    11.1%    11.1%  " + "#" * 3,
        "overall conversion 11.1% (period ratio); cohort 11.1% of the 9 who entered visit in the period",
    ]
    # What the dashboards and rules count as persons per stage (entries - merged - excluded)
    # is what the page and the report show.
    persons = [stack.metric_sum("funnel_stage_entries_total", funnel="b2b", stage=s)
               - stack.metric_sum("funnel_stage_entries_merged_total", funnel="b2b", stage=s)
               - stack.metric_sum("funnel_stage_entries_excluded_total", funnel="b2b", stage=s)
               for s in B2B_STAGES]
    assert persons == B2B_USERS

    refused = _cli(stack, "report", "--channel", "tiktok")
    assert refused.returncode == 2
    assert "channel 'tiktok' is not one of: all, seo" in refused.stderr


# -- funnel emit ------------------------------------------------------------------------------
def test_emit_sends_valid_events_and_explains_invalid_ones(stack: Worker) -> None:
    # Long ago, so the page's periods and stalled leads do not change.
    flags = _cli(stack, "emit", "purchase", "--user", "emit-1", "--amount", "49.90", "--currency", "eur",
                 "--funnel", "default", "--ts", "2020-01-01T00:00:00Z", "--property", "coupon=BF")
    assert flags.returncode == 0, flags.stderr
    assert flags.stdout.startswith("emit: sent purchase ") and " for emit-1 to " in flags.stdout
    piped = _cli(stack, "emit", "-", stdin=json.dumps({
        "event_type": "purchase", "user_id": "emit-2", "ts": "2020-01-01T00:00:00Z", "funnel": "default",
        "amount": "10", "currency": "USD"}))
    assert piped.returncode == 0, piped.stderr
    wait_until(lambda: stack.sql(
        "SELECT user_id, toString(amount), currency, properties['coupon'] FROM funnel.events FINAL "
        "WHERE user_id LIKE 'emit-%' ORDER BY user_id") == [["emit-1", "49.9", "EUR", "BF"],
                                                            ["emit-2", "10", "USD", ""]],
        30, "the emitted purchases in ClickHouse")

    bad = _cli(stack, "emit", "purchase", "--user", "emit-3", "--amount", "5", "--currency", "XYZ")
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("emit: invalid purchase event: currency: 'XYZ' is not an ISO 4217 "
                                  "currency code (reason: unknown_currency)")
