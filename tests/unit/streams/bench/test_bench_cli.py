"""streams.bench.cli: the options and sizes, and bad arguments failing before anything starts.

The stages themselves start a broker and workers; `make bench` runs them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.bench import cli
from streams.bench.context import FULL, QUICK
from streams.settings import Settings

NO_DEFAULT = Path(__file__).with_name("no_default_funnel.yml")


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--only", "ceiling,warp"], "unknown stage(s) warp"),
     (["--stores", "redis"], "--stores: choose from memory, rocksdb"),
     (["--worker-env", "PRODUCER_LINGER"], "expected NAME=VALUE"),
     (["--funnels-file", "/nonexistent/funnels.yml"], "cannot read funnel config"),
     (["--funnels-file", str(NO_DEFAULT)], "no funnel `default`")],
)
def test_bad_arguments_fail_before_anything_starts(argv: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 1
    assert message in capsys.readouterr().err


def test_help_names_every_size_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--full", "--events", "--naive-events", "--fresh-rate", "--fresh-seconds",
                 "--memory-users", "--sql-events", "--json", "--only", "--funnels-file",
                 "--stage-properties", "--identity"):
        assert flag in text


def test_sizes_quick_full_and_overrides() -> None:
    parse = cli._parser().parse_args
    assert cli.sizes_from(parse([])) == QUICK
    assert cli.sizes_from(parse(["--full"])) == FULL
    # The pipeline rate is timed between /metrics samples, which move once per agent batch:
    # a backlog of one batch is consumed in one step and cannot be timed (it printed nan).
    batch = Settings.model_fields["batch_max_events"].default
    assert QUICK.events >= 3 * batch and FULL.events >= 3 * batch
    sizes = cli.sizes_from(parse(["--full", "--memory-users", "5", "--fresh-rate", "100"]))
    assert (sizes.memory_users, sizes.fresh_rate, sizes.sql_events) == (5, 100.0, FULL.sql_events)
    # The sizes for the figures it sets targets on.
    assert (FULL.fresh_rate, FULL.fresh_seconds, FULL.memory_users, FULL.sql_events) == (
        10_000, 60, 1_000_000, 10_000_000)


def test_parse_env() -> None:
    assert cli.parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
