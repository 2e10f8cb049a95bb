"""Search-space extraction, encoding, repair, constraints and centaur.toml overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from centaur.config import ConfigError
from centaur.space import Constraint, ConstraintError, ScriptError, SpaceError, find_assignments, load_space
from centaur.space.build import build_space, reference_space

FIXTURE = Path(__file__).parent / "fixtures" / "autoresearch" / "train.py"

REFERENCE = {
    # name: (kind, low, high, log, default)
    "DEPTH": ("int", 4, 24, False, 8),
    "ASPECT_RATIO": ("int", 32, 128, False, 64),
    "HEAD_DIM": ("pow2", 64, 256, False, 128),
    "DEVICE_BATCH_SIZE": ("pow2", 32, 256, False, 128),
    "TOTAL_BATCH_SIZE": ("pow2", 2**16, 2**21, False, 2**19),
    "EMBEDDING_LR": ("float", 0.01, 2.0, True, 0.6),
    "UNEMBEDDING_LR": ("float", 5e-4, 0.05, True, 0.004),
    "MATRIX_LR": ("float", 0.005, 0.2, True, 0.04),
    "SCALAR_LR": ("float", 0.05, 2.0, True, 0.5),
    "WEIGHT_DECAY": ("float", 0.0, 0.5, False, 0.2),
    "WARMUP_RATIO": ("float", 0.0, 0.3, False, 0.0),
    "WARMDOWN_RATIO": ("float", 0.1, 0.8, False, 0.5),
    "FINAL_LR_FRAC": ("float", 0.0, 0.2, False, 0.0),
}


def write(tmp_path: Path, script: str, toml: str | None = None) -> Path:
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(script))
    if toml is not None:
        (tmp_path / "centaur.toml").write_text(textwrap.dedent(toml))
    return path


@pytest.fixture(scope="module")
def space():
    return load_space(FIXTURE)


# -- extraction of the autoresearch fixture -------------------------------------------------------
def test_autoresearch_space_has_the_14_reference_params(space):
    assert sorted(space.names) == sorted([*REFERENCE, "WINDOW_PATTERN"])
    assert len(space) == 14
    for name, (kind, low, high, log, default) in REFERENCE.items():
        p = space[name]
        assert (p.kind, p.low, p.high, p.log) == (kind, low, high, log), name
        assert p.default == default and type(p.default) is type(default), name
    wp = space["WINDOW_PATTERN"]
    assert wp.kind == "categorical" and len(wp.choices) == 6 and wp.default == "SSSL" and "SSSL" in wp.choices


def test_autoresearch_skips_tuples_and_task_constants(space):
    assert "ADAM_BETAS" not in space
    assert "H100_BF16_PEAK_FLOPS" not in space
    assert space.constants["H100_BF16_PEAK_FLOPS"] == 989.5e12
    assert space.constants["MAX_SEQ_LEN"] == 2048  # from prepare.py
    assert space.constants["TIME_BUDGET"] == 300
    assert "ADAM_BETAS" not in space.constants  # a tuple is not a constant at all


def test_defaults_are_valid_and_match_reference_space(space):
    assert space.violations(space.defaults()) == []
    ref = reference_space()
    assert ref.names == list(REFERENCE) + ["WINDOW_PATTERN"]
    assert ref.defaults() == space.defaults()


def test_expressions_are_evaluated():
    src = "A_B = 2**19\nC_D = 4 * 1024\nE_F = -3\nG_H = 1 / 4\nI_J = 2**100000\nlower = 5\n"
    found = {a.name: a.value for a in find_assignments(src)}
    assert found == {"A_B": 524288, "C_D": 4096, "E_F": -3, "G_H": 0.25}


def test_nested_assignments_are_found(tmp_path):
    script = write(tmp_path, """\
        def main():
            HIDDEN_SIZE = 4 * 1024
            for _ in range(1):
                DROPOUT_RATE = 0.1
            return HIDDEN_SIZE

        class Cfg:
            NUM_HEADS = 12
        """)
    space = load_space(script)
    assert space.names == ["DROPOUT_RATE"] and space["DROPOUT_RATE"].default == 0.1
    assert (space["DROPOUT_RATE"].low, space["DROPOUT_RATE"].high) == (0.0, 0.5)  # a dropout's range, by name
    # Found, nested too, but not tuned by default: the width must stay divisible by the head count.
    assert space.constants["HIDDEN_SIZE"] == 4096 and "divisible" in space.skipped["HIDDEN_SIZE"]
    assert space.constants["NUM_HEADS"] == 12 and "head count" in space.skipped["NUM_HEADS"]


def test_first_assignment_wins_and_names_must_be_all_caps():
    found = find_assignments("LR = 0.1\nLR = 0.2\nMixed_Case = 1\nX = 3\nANNOTATED: int = 7\n")
    assert [(a.name, a.value) for a in found] == [("LR", 0.1), ("ANNOTATED", 7)]


# -- encoding -----------------------------------------------------------------------------------
def test_pow2_encode_decode_round_trip(space):
    defaults = space.defaults()
    encoded = space.encode(defaults)
    assert encoded["log2(TOTAL_BATCH_SIZE)"] == 19
    assert encoded["log2(HEAD_DIM)"] == 7
    assert encoded["log2(DEVICE_BATCH_SIZE)"] == 7
    assert "TOTAL_BATCH_SIZE" not in encoded
    assert encoded["DEPTH"] == 8 and encoded["WINDOW_PATTERN"] == "SSSL"
    assert space.decode(encoded) == defaults
    dist = space.distributions()["log2(TOTAL_BATCH_SIZE)"]
    assert (dist.low, dist.high) == (16, 21)
    assert space["HEAD_DIM"].values == [64, 128, 256]


def test_suggest_gives_valid_values(space):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        config = space.suggest(trial)
        for p in space:
            assert p.contains(config[p.name]), (p.name, config[p.name])
        assert set(trial.params) == set(space.distributions())


# -- repair -------------------------------------------------------------------------------------
def test_repair_rounds_ints_never_truncates(space):
    config, notes = space.repair({**space.defaults(), "DEPTH": 7.6})
    assert config["DEPTH"] == 8 and type(config["DEPTH"]) is int
    assert any("DEPTH" in n for n in notes)
    assert space["DEPTH"].repair(7.4)[0] == 7
    assert space["DEPTH"].repair("9")[0] == 9


def test_repair_pow2_nearest_power(space):
    p = space["DEVICE_BATCH_SIZE"]
    assert p.repair(100)[0] == 128  # log2(100)=6.64 -> 2**7
    assert p.repair(90)[0] == 64  # log2(90)=6.49 -> 2**6
    assert p.repair(128) == (128, None)
    assert p.repair(10_000)[0] == 256  # clipped
    assert space["TOTAL_BATCH_SIZE"].repair(500_000)[0] == 2**19


def test_repair_clips_and_categoricals(space):
    assert space["WEIGHT_DECAY"].repair(3.0)[0] == 0.5
    assert space["WEIGHT_DECAY"].repair(-1)[0] == 0.0
    assert space["DEPTH"].repair(100)[0] == 24
    assert space["WINDOW_PATTERN"].repair("sssl")[0] == "SSSL"
    with pytest.raises(SpaceError):
        space["WINDOW_PATTERN"].repair("XXXX")
    with pytest.raises(SpaceError):
        space.repair({"WINDOW_PATTERN": "nope"})
    with pytest.raises(SpaceError):
        space["DEPTH"].repair("deep")
    with pytest.raises(SpaceError):
        space["DEPTH"].repair(float("nan"))


def test_repair_fills_missing_and_drops_unknown(space):
    config, notes = space.repair({"DEPTH": 12, "BOGUS": 1})
    assert config["DEPTH"] == 12
    assert {k: v for k, v in config.items() if k != "DEPTH"} == {
        k: v for k, v in space.defaults().items() if k != "DEPTH"}
    assert any("BOGUS" in n for n in notes)
    assert any("MATRIX_LR missing" in n for n in notes)
    filled, _ = space.repair({}, fill_from={**space.defaults(), "DEPTH": 5}, fill_source="best")
    assert filled["DEPTH"] == 5


# -- validity -----------------------------------------------------------------------------------
def test_batch_constraint_violation_reported(space):
    # 2**16 tokens cannot hold one micro-batch of 128 x 2048 tokens.
    bad = {**space.defaults(), "TOTAL_BATCH_SIZE": 2**16}
    problems = space.violations(bad)
    assert len(problems) == 1 and "TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * MAX_SEQ_LEN)" in problems[0]
    assert space.violations({**space.defaults(), "TOTAL_BATCH_SIZE": 2**16, "DEVICE_BATCH_SIZE": 32}) == []


def test_violations_out_of_range_and_missing(space):
    config = space.defaults()
    del config["DEPTH"]
    assert any("missing value for DEPTH" in p for p in space.violations(config))
    assert any("HEAD_DIM" in p for p in space.violations({**space.defaults(), "HEAD_DIM": 96}))
    assert any("DEPTH" in p for p in space.violations({**space.defaults(), "DEPTH": 8.5}))
    assert space.violations({**space.defaults(), "WINDOW_PATTERN": "ZZZZ"})


def test_constraint_rejects_function_calls():
    with pytest.raises(ConstraintError):
        Constraint("__import__('os').system('true') == 0")
    with pytest.raises(ConstraintError):
        Constraint("A.__class__ > 0")
    with pytest.raises(ConstraintError, match="unknown name 'A.real'"):
        Constraint("A.real > 0").holds({"A": 1})  # a dotted name (a config key), never an attribute
    with pytest.raises(ConstraintError):
        Constraint("A >")
    c = Constraint("A % (B * 2) == 0 and not C")
    assert c.names == {"A", "B", "C"}
    assert c.holds({"A": 8, "B": 2, "C": False})
    assert not c.holds({"A": 6, "B": 2, "C": False})
    assert not Constraint("A % B == 0").holds({"A": 1, "B": 0})  # division by zero: does not hold


# -- centaur.toml overrides ---------------------------------------------------------------------
SCRIPT = """\
    LEARNING_RATE = 0.001
    NUM_LAYERS = 6
    HIDDEN = 256
    OPTIMIZER = "adam"
    SEED_VALUE = 3
    BATCH_SIZE = 64
    USE_BIAS = True
    """


def test_toml_overrides_applied(tmp_path):
    script = write(tmp_path, SCRIPT, """\
        [space]
        exclude = ["SEED_VALUE"]
        constraints = ["HIDDEN % NUM_LAYERS == 0 or NUM_LAYERS > 0"]

        [space.params.LEARNING_RATE]
        low = 1e-5
        high = 0.1
        log = true

        [space.params.NUM_LAYERS]
        type = "int"
        low = 2
        high = 12

        [space.params.HIDDEN]
        type = "float"
        low = 64
        high = 1024

        [space.params.OPTIMIZER]
        type = "categorical"
        choices = ["adam", "sgd", "lion"]

        [space.params.BATCH_SIZE]
        fixed = 32
        """)
    space = load_space(script)
    assert space.names == ["LEARNING_RATE", "NUM_LAYERS", "HIDDEN", "OPTIMIZER"]
    lr = space["LEARNING_RATE"]
    assert (lr.kind, lr.low, lr.high, lr.log, lr.source) == ("float", 1e-5, 0.1, True, "config")
    assert (space["NUM_LAYERS"].kind, space["NUM_LAYERS"].low, space["NUM_LAYERS"].high) == ("int", 2, 12)
    assert space["HIDDEN"].kind == "float"
    assert space["OPTIMIZER"].choices == ("adam", "sgd", "lion") and space["OPTIMIZER"].default == "adam"
    assert space.skipped["USE_BIAS"] == "a switch"  # tuned only when centaur.toml names it
    assert space.fixed == {"BATCH_SIZE": 32}
    assert space.constants["SEED_VALUE"] == 3
    assert [c.expression for c in space.constraints] == ["HIDDEN % NUM_LAYERS == 0 or NUM_LAYERS > 0"]
    assert space.skipped["SEED_VALUE"] == "excluded in centaur.toml"


def test_toml_exclude_per_param_and_constants(tmp_path):
    script = write(tmp_path, SCRIPT, """\
        [constants]
        SEQ = 128

        [space]
        constraints = ["BATCH_SIZE * SEQ <= 2**14"]

        [space.params.OPTIMIZER]
        exclude = true
        """)
    space = load_space(script)
    assert "OPTIMIZER" not in space and space.constants["OPTIMIZER"] == "adam"
    assert space.constants["SEQ"] == 128
    assert space.violations({**space.defaults(), "BATCH_SIZE": 256})
    assert space.violations(space.defaults()) == []


def test_no_toml_heuristics(tmp_path):
    space = load_space(write(tmp_path, SCRIPT))
    assert "OPTIMIZER" not in space  # a lone string has no choices
    assert space["BATCH_SIZE"].kind == "pow2" and (space["BATCH_SIZE"].low, space["BATCH_SIZE"].high) == (16, 256)
    assert space["LEARNING_RATE"].log
    assert space.constraints == ()


@pytest.mark.parametrize(
    "toml, fragment",
    [
        ("[space\n", "not valid TOML"),
        ("[bogus]\nx = 1\n", "unknown section"),
        ("[space]\nwhatever = 1\n", "unknown key"),
        ("[runner]\nspeed = 1\n", "unknown key"),
        ("[space.params.NUM_LAYERS]\ntype = \"int\"\nlow = 1\nhigh = 8\nstep = 2\n", "unknown key"),
        ("[space.params.NOT_THERE]\ntype = \"int\"\nlow = 1\nhigh = 8\n", "NOT_THERE"),
        ("[space.params.NUM_LAYERS]\ntype = \"integer\"\nlow = 1\nhigh = 8\n", "type must be one of"),
        ("[space.params.NUM_LAYERS]\ntype = \"int\"\nlow = 1\n", "missing 'high'"),
        ("[space.params.NUM_LAYERS]\ntype = \"int\"\nlow = \"1\"\nhigh = 8\n", "must be a number"),
        ("[space.params.NUM_LAYERS]\ntype = \"int\"\nlow = 9\nhigh = 8\n", "must not exceed"),
        ("[space.params.HIDDEN]\ntype = \"pow2\"\nlow = 100\nhigh = 512\n", "powers of two"),
        ("[space.params.OPTIMIZER]\ntype = \"categorical\"\n", "choices"),
        ("[space]\nconstraints = [\"len(HIDDEN) > 0\"]\n", "not allowed"),
        ("[space]\nexclude = \"HIDDEN\"\n", "list of strings"),
        ("[runner]\ntrial_timeout = \"soon\"\n", "not a duration"),
        ("space = 3\n", "must be a table"),
    ],
)
def test_malformed_toml_raises_config_error_naming_the_file(tmp_path, toml, fragment):
    script = write(tmp_path, SCRIPT, toml)
    with pytest.raises(ConfigError) as info:
        load_space(script)
    assert "centaur.toml" in str(info.value)
    assert fragment in str(info.value)


def test_default_outside_configured_range(tmp_path):
    script = write(tmp_path, SCRIPT, "[space.params.NUM_LAYERS]\ntype = \"int\"\nlow = 8\nhigh = 16\n")
    with pytest.raises(SpaceError, match="NUM_LAYERS"):
        load_space(script)


def test_constraint_with_unknown_name(tmp_path):
    script = write(tmp_path, SCRIPT, "[space]\nconstraints = [\"HIDDEN < UNDEFINED_THING\"]\n")
    with pytest.raises(SpaceError, match="UNDEFINED_THING"):
        load_space(script)


# -- script errors ------------------------------------------------------------------------------
def test_missing_script_raises_script_error(tmp_path):
    with pytest.raises(ScriptError, match="not found"):
        load_space(tmp_path / "nope.py")
    with pytest.raises(ScriptError, match="not a file"):
        build_space(tmp_path)


def test_syntax_error_raises_script_error_with_line(tmp_path):
    script = write(tmp_path, "LR = 0.1\ndef broken(:\n    pass\n")
    with pytest.raises(ScriptError) as info:
        load_space(script)
    assert "train.py:2" in str(info.value) and "syntax error" in str(info.value)


def test_no_tunable_parameter_gives_space_error(tmp_path):
    # A lowercase global such as `lr = 0.1` is tunable now (the `globals` source); a tuple is not.
    script = write(tmp_path, "print(1)\nNAMES = ('a', 'b')\n")
    with pytest.raises(SpaceError, match="no tunable parameters"):
        load_space(script)


def test_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError) and issubclass(ScriptError, ValueError)
    assert issubclass(SpaceError, ValueError)
