"""Funnel configuration: the built-in default, YAML files, and errors that say what is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schemas import EVENT_TYPES, FunnelConfigError, FunnelDefinition, FunnelsConfig, default_config
from streams.settings import load_funnels

TWO_FUNNELS = """\
funnels:
  - name: default
    stages: [visit, signup, webinar, consultation, purchase]
  - name: b2b
    stages: [visit, consultation, purchase]
    conversion_window_days: 30
    attribution: last_touch
"""


@pytest.fixture
def write_config(tmp_path: Path):
    def write(text: str) -> Path:
        path = tmp_path / "funnels.yaml"
        path.write_text(text)
        return path

    return write


def test_default_config_is_the_five_stage_funnel() -> None:
    config = default_config()
    assert [f.name for f in config.funnels] == ["default"]
    funnel = config.by_name["default"]
    assert funnel.names == EVENT_TYPES == ("visit", "signup", "webinar", "consultation", "purchase")
    assert (funnel.attribution, funnel.conversion_window_days) == ("first_touch", 14.0)


def test_no_file_means_the_default() -> None:
    assert load_funnels(None) == default_config()


def test_yaml_file_with_two_funnels(write_config) -> None:
    config = load_funnels(write_config(TWO_FUNNELS))
    assert list(config.by_name) == ["default", "b2b"]
    b2b = config.by_name["b2b"]
    assert b2b.names == ("visit", "consultation", "purchase")
    assert (b2b.attribution, b2b.conversion_window_days) == ("last_touch", 30.0)
    assert config.by_name["default"] == default_config().by_name["default"]


def test_stage_index() -> None:
    funnel = FunnelDefinition(name="b2b", stages=("visit", "consultation", "purchase"))
    assert [funnel.index(s) for s in EVENT_TYPES] == [0, -1, -1, 1, 2]


def funnel_yaml(name: str, stages: str) -> str:
    return f"  - name: {name}\n    stages: {stages}\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            "funnels:\n" + funnel_yaml("b2b", "[visit, signup, signup]"),
            "funnel 'b2b': stage 'signup' appears twice",
            id="duplicate-stage",
        ),
        pytest.param(
            "funnels:\n" + funnel_yaml("b2b", "[visit, demo]"),
            "funnel 'b2b': stage 'demo': event: Input should be 'visit', 'signup', 'webinar', 'consultation' "
            "or 'purchase'",
            id="unknown-stage",
        ),
        pytest.param(
            "funnels:\n" + funnel_yaml("a", "[visit, signup]") + funnel_yaml("a", "[visit, purchase]"),
            "config: funnel names must be unique, repeated: a",
            id="duplicate-funnel-names",
        ),
        pytest.param(
            "funnels:\n" + funnel_yaml("solo", "[visit]"),
            "funnel 'solo': stages: Tuple should have at least 2 items after validation, not 1",
            id="one-stage",
        ),
        pytest.param(
            "funnels:\n" + funnel_yaml("ok", "[visit, signup]") + funnel_yaml("bad", "[visit, bogus]"),
            "funnel 'bad': stage 'bogus': event: Input should be 'visit', 'signup', 'webinar', "
            "'consultation' or 'purchase'",
            id="second-funnel-named",
        ),
        pytest.param(
            "funnels:\n  - stages: [visit, signup]\n",
            "funnel #1: name: Field required",
            id="unnamed-funnel-by-position",
        ),
        pytest.param(
            "funnels:\n" + funnel_yaml("b2b", "[visit, signup]") + "    attribution: middle\n",
            "funnel 'b2b': attribution: Input should be 'first_touch' or 'last_touch'",
            id="bad-attribution",
        ),
        pytest.param(
            "funnels:\n" + funnel_yaml("slow", "[visit, signup]") + "    conversion_window_days: 1e9\n",
            "funnel 'slow': conversion_window_days: Input should be less than or equal to 36500",
            id="window-beyond-a-century",
        ),
        pytest.param(
            "funnels: []\n",
            "config: funnels: Tuple should have at least 1 item after validation, not 0",
            id="no-funnels",
        ),
        pytest.param("stages: [visit, signup]\n", "expected a mapping with a 'funnels' list",
                     id="missing-funnels-key"),
        pytest.param("", "expected a mapping with a 'funnels' list", id="empty-file"),
    ],
)
def test_config_error_names_file_funnel_and_problem(write_config, text: str, problem: str) -> None:
    path = write_config(text)
    with pytest.raises(FunnelConfigError) as caught:
        load_funnels(path)
    # Exactly one problem: no follow-on noise from the same mistake.
    assert str(caught.value) == f"{path}: {problem}"


def test_invalid_yaml_is_named(write_config) -> None:
    path = write_config("funnels: [\n")
    with pytest.raises(FunnelConfigError, match=rf"^{re.escape(str(path))}: not valid YAML: "):
        load_funnels(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(FunnelConfigError) as caught:
        load_funnels(path)
    assert str(caught.value) == f"{path}: cannot read funnel config: No such file or directory"


def test_from_mapping_names_its_source() -> None:
    with pytest.raises(FunnelConfigError, match=r"^env:FUNNELS: funnel 'x': "):
        FunnelsConfig.from_mapping({"funnels": [{"name": "x", "stages": ["visit"] * 2}]}, "env:FUNNELS")
