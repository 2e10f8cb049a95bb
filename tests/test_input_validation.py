"""centaur.toml and unit strings are refused with one-line messages that name the file, section, parameter and key."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

import centaur
from centaur.config import ConfigError, load_config
from centaur.space import SpaceError, load_space
from centaur.units import parse_duration, parse_size

SCRIPT = """\
    DEPTH = 8
    NUM_LAYERS = 6
    LEARNING_RATE = 0.001
    DROPOUT = 0.0
    HIDDEN = 256
    OPTIMIZER = "adam"
    USE_BIAS = True
    print("val_bpb:", LEARNING_RATE)
    """


def write(tmp_path: Path, toml: str) -> Path:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    (tmp_path / "centaur.toml").write_text(textwrap.dedent(toml))
    return script


def assert_well_formed(message: str) -> None:
    """One line, the file named, no blank section `[]` (an empty list `= []` is fine) and no blank field `: :`."""
    assert "\n" not in message, message
    assert "centaur.toml" in message, message
    assert not re.search(r"(?<!= )\[\]", message), message
    assert ": :" not in message and not message.rstrip().endswith(":"), message


# (toml, error type, section, the key as written, a fragment of what is expected instead)
P = "[space.params.{}]"
CASES = {
    # fixed values of the wrong type
    "fixed-str-on-curated-int": (
        '[space.params.DEPTH]\nfixed = "abc"\n', ConfigError, P.format("DEPTH"), 'fixed = "abc"',
        "DEPTH is an int; give an integer such as 8",
    ),
    "fixed-str-on-int": (
        '[space.params.NUM_LAYERS]\nfixed = "abc"\n', ConfigError, P.format("NUM_LAYERS"), 'fixed = "abc"',
        "integer such as 6",
    ),
    "fixed-fraction-on-int": (
        "[space.params.DEPTH]\nfixed = 2.5\n", ConfigError, P.format("DEPTH"), "fixed = 2.5", 'type = "float"',
    ),
    "fixed-bool-on-int": (
        "[space.params.DEPTH]\nfixed = true\n", ConfigError, P.format("DEPTH"), "fixed = true", "integer",
    ),
    "fixed-str-on-float": (
        '[space.params.LEARNING_RATE]\nfixed = "fast"\n', ConfigError, P.format("LEARNING_RATE"),
        'fixed = "fast"', "give a number such as 0.001",
    ),
    "fixed-nan-on-float": (
        "[space.params.LEARNING_RATE]\nfixed = nan\n", ConfigError, P.format("LEARNING_RATE"), "fixed = nan",
        "finite",
    ),
    "fixed-str-on-bool": (
        '[space.params.USE_BIAS]\nfixed = "yes"\n', ConfigError, P.format("USE_BIAS"), 'fixed = "yes"',
        "true or false",
    ),
    "fixed-number-on-str": (
        "[space.params.OPTIMIZER]\nfixed = 3\n", ConfigError, P.format("OPTIMIZER"), "fixed = 3", '"adam"',
    ),
    "fixed-list": (
        "[space.params.DEPTH]\nfixed = [1, 2]\n", ConfigError, P.format("DEPTH"), "fixed = [1, 2]", "single value",
    ),
    "fixed-outside-own-range": (
        '[space.params.NUM_LAYERS]\ntype = "int"\nlow = 1\nhigh = 8\nfixed = 50\n', ConfigError,
        P.format("NUM_LAYERS"), "fixed = 50", "high = 8",
    ),
    "fixed-not-a-pow2": (
        '[space.params.HIDDEN]\ntype = "pow2"\nfixed = 100\n', ConfigError, P.format("HIDDEN"), "fixed = 100",
        "64 or 128",
    ),
    # bounds
    "float-low-on-int": (
        '[space.params.NUM_LAYERS]\ntype = "int"\nlow = 0.5\nhigh = 8\n', ConfigError, P.format("NUM_LAYERS"),
        "low = 0.5", "integer such as low = 1",
    ),
    "float-high-on-curated-int": (
        "[space.params.DEPTH]\nhigh = 2.5\n", ConfigError, P.format("DEPTH"), "high = 2.5",
        "integer such as high = 2",
    ),
    "string-bound": (
        '[space.params.NUM_LAYERS]\ntype = "int"\nlow = "1"\nhigh = 8\n', ConfigError, P.format("NUM_LAYERS"),
        'low = "1"', "must be a number",
    ),
    "nan-bound": (
        '[space.params.LEARNING_RATE]\ntype = "float"\nlow = nan\nhigh = 0.1\n', ConfigError,
        P.format("LEARNING_RATE"), "low = nan", "finite",
    ),
    "missing-high": (
        '[space.params.NUM_LAYERS]\ntype = "int"\nlow = 1\n', ConfigError, P.format("NUM_LAYERS"), "missing 'high'",
        "high = 24",
    ),
    "low-above-high": (
        '[space.params.NUM_LAYERS]\ntype = "int"\nlow = 9\nhigh = 8\n', ConfigError, P.format("NUM_LAYERS"),
        "low = 9, high = 8", "low must not exceed high",
    ),
    "low-equals-high": (
        '[space.params.NUM_LAYERS]\ntype = "int"\nlow = 8\nhigh = 8\n', ConfigError, P.format("NUM_LAYERS"),
        "low = 8, high = 8", "fixed = 8",
    ),
    "high-below-built-in-low": (
        "[space.params.DEPTH]\nhigh = 3\n", ConfigError, P.format("DEPTH"), "low = 4 (built-in), high = 3",
        "must not exceed",
    ),
    "log-with-zero-low": (
        '[space.params.LEARNING_RATE]\ntype = "float"\nlow = 0\nhigh = 0.1\nlog = true\n', ConfigError,
        P.format("LEARNING_RATE"), "log = true, low = 0", "low > 0",
    ),
    "log-with-built-in-zero-low": (
        "[space.params.DROPOUT]\nlog = true\n", ConfigError, P.format("DROPOUT"), "low = 0.0 (built-in)", "log = false",
    ),
    "log-not-bool": (
        '[space.params.LEARNING_RATE]\nlog = "yes"\n', ConfigError, P.format("LEARNING_RATE"), 'log = "yes"',
        "true or false",
    ),
    "pow2-bound-not-power": (
        '[space.params.HIDDEN]\ntype = "pow2"\nlow = 100\nhigh = 512\n', ConfigError, P.format("HIDDEN"),
        "low = 100", "powers of two, e.g. low = 64 or low = 128",
    ),
    "pow2-bound-not-power-heuristic": (
        "[space.params.HIDDEN]\nlow = 48\n", ConfigError, P.format("HIDDEN"), "low = 48", 'type = "int"',
    ),
    "range-on-a-string": (
        "[space.params.OPTIMIZER]\nlow = 1\nhigh = 3\n", ConfigError, P.format("OPTIMIZER"), "low = 1",
        'type = "categorical"',
    ),
    # types and choices
    "unknown-type": (
        '[space.params.NUM_LAYERS]\ntype = "integer"\nlow = 1\nhigh = 8\n', ConfigError, P.format("NUM_LAYERS"),
        'type = "integer"', 'did you mean "int"',
    ),
    "type-not-a-string": (
        "[space.params.NUM_LAYERS]\ntype = 3\nlow = 1\nhigh = 8\n", ConfigError, P.format("NUM_LAYERS"), "type = 3",
        '"categorical"',
    ),
    "choices-on-int": (
        '[space.params.NUM_LAYERS]\ntype = "int"\nchoices = [2, 4, 8]\n', ConfigError, P.format("NUM_LAYERS"),
        "choices = [2, 4, 8]", 'type = "categorical"',
    ),
    "empty-choices": (
        '[space.params.OPTIMIZER]\ntype = "categorical"\nchoices = []\n', ConfigError, P.format("OPTIMIZER"),
        "choices = []", "non-empty",
    ),
    "choices-not-a-list": (
        '[space.params.OPTIMIZER]\ntype = "categorical"\nchoices = "adam"\n', ConfigError, P.format("OPTIMIZER"),
        'choices = "adam"', "non-empty list",
    ),
    "nested-choice": (
        '[space.params.OPTIMIZER]\ntype = "categorical"\nchoices = ["adam", ["sgd"]]\n', ConfigError,
        P.format("OPTIMIZER"), 'choices = ["adam", ["sgd"]]', "single value",
    ),
    "duplicate-choice": (
        '[space.params.OPTIMIZER]\nchoices = ["adam", "sgd", "adam"]\n', ConfigError, P.format("OPTIMIZER"),
        'choices = ["adam", "sgd", "adam"]', "twice",
    ),
    "categorical-without-choices": (
        '[space.params.OPTIMIZER]\ntype = "categorical"\n', ConfigError, P.format("OPTIMIZER"),
        'type = "categorical"', 'choices = ["adam", ...]',
    ),
    "categorical-with-low": (
        '[space.params.OPTIMIZER]\ntype = "categorical"\nchoices = ["adam", "sgd"]\nlow = 1\n', ConfigError,
        P.format("OPTIMIZER"), "low = 1", "no low",
    ),
    # defaults
    "default-outside-range": (
        '[space.params.NUM_LAYERS]\ntype = "int"\nlow = 1\nhigh = 8\ndefault = 50\n', ConfigError,
        P.format("NUM_LAYERS"), "default = 50", "[1, 8]",
    ),
    "default-wrong-type": (
        '[space.params.NUM_LAYERS]\ntype = "int"\nlow = 1\nhigh = 8\ndefault = "abc"\n', ConfigError,
        P.format("NUM_LAYERS"), 'default = "abc"', "integer such as 6",
    ),
    "default-not-a-choice": (
        '[space.params.OPTIMIZER]\nchoices = ["adam", "sgd"]\ndefault = "lion"\n', ConfigError,
        P.format("OPTIMIZER"), 'default = "lion"', 'choices = ["adam", "sgd"]',
    ),
    "script-value-outside-range": (
        '[space.params.NUM_LAYERS]\ntype = "int"\nlow = 8\nhigh = 16\n', SpaceError, P.format("NUM_LAYERS"),
        "NUM_LAYERS = 6", "widen the range",
    ),
    # exclude, unknown keys and names, [space] lists
    "exclude-not-bool": (
        '[space.params.HIDDEN]\nexclude = "yes"\n', ConfigError, P.format("HIDDEN"), 'exclude = "yes"',
        "true or false",
    ),
    "space-exclude-a-string": (
        '[space]\nexclude = "HIDDEN"\n', ConfigError, "[space]", 'exclude = "HIDDEN"', "list of strings",
    ),
    "space-exclude-numbers": (
        "[space]\nexclude = [1, 2]\n", ConfigError, "[space]", "exclude = [1, 2]", 'exclude = ["SEED"]',
    ),
    "space-constraints-a-string": (
        '[space]\nconstraints = "HIDDEN > 1"\n', ConfigError, "[space]", 'constraints = "HIDDEN > 1"',
        "list of strings",
    ),
    "bad-constraint": (
        '[space]\nconstraints = ["len(HIDDEN) > 0"]\n', ConfigError, "[space]", "constraints", "not allowed",
    ),
    "unknown-space-key": ("[space]\nwhatever = 1\n", ConfigError, "[space]", "whatever", "unknown key"),
    "unknown-param-key": (
        '[space.params.NUM_LAYERS]\ntype = "int"\nlow = 1\nhigh = 8\nstep = 2\n', ConfigError,
        P.format("NUM_LAYERS"), "step", "unknown key",
    ),
    "misspelt-name": (
        '[space.params.NUM_LAYER]\ntype = "int"\nlow = 1\nhigh = 8\n', ConfigError, P.format("NUM_LAYER"),
        "NUM_LAYER = ...", "did you mean NUM_LAYERS",
    ),
    "param-not-a-table": ("[space.params]\nDEPTH = 4\n", ConfigError, P.format("DEPTH"), "4", "must be a table"),
    "space-not-a-table": ("space = 3\n", ConfigError, "space = 3", "[space]", "must be a table"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_centaur_toml_names_the_culprit(tmp_path: Path, case: str) -> None:
    toml, error, section, key, expected = CASES[case]
    script = write(tmp_path, toml)
    with pytest.raises(error) as info:
        load_space(script)
    message = str(info.value)
    assert_well_formed(message)
    assert f"centaur.toml: {section}" in message, message
    assert key in message, message
    assert expected in message, message


@pytest.mark.parametrize(
    "toml, name, key",
    [
        ('[runner]\ntrial_timeout = "0"\n', "[runner]", '"0"'),
        ('[runner]\ntrial_timeout = "-5m"\n', "[runner]", '"-5m"'),
        ('[runner]\nmemory_cap = "0"\n', "[runner]", '"0"'),
    ],
)
def test_bad_runner_units_are_refused(tmp_path: Path, toml: str, name: str, key: str) -> None:
    write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "centaur.toml")
    message = str(info.value)
    assert_well_formed(message)
    assert name in message and key.strip('"') in message, message


# -- valid configurations keep working --------------------------------------------------------------
def test_choices_without_type_make_a_categorical(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, "[space.params.DEPTH]\nchoices = [4, 8, 12]\n"))
    depth = space["DEPTH"]
    assert (depth.kind, depth.choices, depth.default, depth.source) == ("categorical", (4, 8, 12), 8, "config")


def test_integral_float_bounds_and_fixed_values_are_integers(tmp_path: Path) -> None:
    toml = '[space.params.NUM_LAYERS]\ntype = "int"\nlow = 2.0\nhigh = 12.0\n\n[space.params.DEPTH]\nfixed = 6.0\n'
    space = load_space(write(tmp_path, toml))
    p = space["NUM_LAYERS"]
    assert (p.low, p.high) == (2, 12) and type(p.low) is int and type(p.high) is int
    assert space.fixed == {"DEPTH": 6} and type(space.fixed["DEPTH"]) is int


def test_good_fixed_and_default_values(tmp_path: Path) -> None:
    toml = """\
        [space.params.DEPTH]
        fixed = 12

        [space.params.LEARNING_RATE]
        fixed = 1

        [space.params.USE_BIAS]
        fixed = false

        [space.params.OPTIMIZER]
        choices = ["adam", "sgd"]
        default = "sgd"

        [space.params.NUM_LAYERS]
        type = "int"
        low = 1
        high = 8
        default = 4

        [space.params.DROPOUT]
        low = 0.0
        high = 0.5
        """
    space = load_space(write(tmp_path, toml))
    assert space.fixed == {"DEPTH": 12, "LEARNING_RATE": 1, "USE_BIAS": False}
    assert space["OPTIMIZER"].default == "sgd" and space["NUM_LAYERS"].default == 4
    assert (space["DROPOUT"].low, space["DROPOUT"].high) == (0.0, 0.5)


# -- a bad centaur.toml stops before any study exists ---------------------------------------------------
def test_bad_toml_creates_no_study(tmp_path: Path) -> None:
    script = write(tmp_path, '[space.params.DEPTH]\nfixed = "abc"\n')
    run_dir = tmp_path / "runs"
    with pytest.raises(ConfigError, match=r"\[space\.params\.DEPTH\] fixed = \"abc\""):
        centaur.tune(script, method="random", budget="1h", n_trials=1, run_dir=run_dir)
    assert not run_dir.exists() or not any(run_dir.rglob("study.db"))


def test_cli_prints_the_section_name(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from centaur.cli import app

    script = write(tmp_path, '[space.params.NUM_LAYERS]\ntype = "int"\nlow = 1\n')
    res = CliRunner().invoke(app, ["space", str(script)])
    output = " ".join(res.output.split())
    assert res.exit_code == 2, output
    assert "[space.params.NUM_LAYERS] type = \"int\": missing 'high'" in output, output


# -- durations and sizes ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text", ["0", "0s", "abc", "-5m", "nan", "inf", "", "5 parsecs", 0, -1, float("nan"), float("inf")]
)
def test_bad_durations_name_the_text_and_show_examples(text: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)  # type: ignore[arg-type]
    message = str(info.value)
    assert repr(text) in message and "24h, 90m, 600s" in message and "\n" not in message, message


@pytest.mark.parametrize("text", ["0", "abc", "-1GiB", "nan", "0.1", 0, -5])
def test_bad_sizes_name_the_text_and_show_examples(text: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)  # type: ignore[arg-type]
    message = str(info.value)
    assert repr(text) in message and "8GiB" in message and "\n" not in message, message


def test_good_durations_and_sizes_unchanged() -> None:
    assert parse_duration("24h") == 86400 and parse_duration("90m") == 5400 and parse_duration("600s") == 600
    assert parse_duration("1.5h") == 5400 and parse_duration(30) == 30.0 and parse_duration("250ms") == 0.25
    assert parse_size("3GiB") == 3 * 2**30 and parse_size("512MB") == 512 * 2**20 and parse_size(4096) == 4096
