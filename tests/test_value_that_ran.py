"""The value recorded is the value that ran (#26): every trial's process records what the script really
used, and a trial whose values did not run is `overridden`, never a result of its recorded values.

Each test writes a small script in one style and runs real trials (real subprocesses): it shows either
verified values (checked against what the script printed it ran) or the refusal."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import centaur
from centaur.config import ConfigError
from centaur.space import load_space
from centaur.study.loop import HopelessStudy


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return folder / "train.py"


def _trials(result_or_study) -> list:
    study = getattr(result_or_study, "study", result_or_study)
    return [t for t in study.get_trials() if t.user_attrs.get("status") is not None]


# A nanoGPT-style configurator: `--key=value` words set globals, other words are config files it execs.
CONFIGURATOR = """
import sys
from ast import literal_eval
for arg in sys.argv[1:]:
    if "=" not in arg:
        exec(open(arg).read())
    else:
        key, val = arg[2:].split("=", 1)
        assert key in globals(), key
        try:
            attempt = literal_eval(val)
        except (SyntaxError, ValueError):
            attempt = val
        assert type(attempt) == type(globals()[key]), (key, attempt)
        globals()[key] = attempt
"""

NANO = """
n_layer = 4
learning_rate = 6e-4
batch_size = 12
exec(open("configurator.py").read())
# what really ran: a model whose size follows n_layer
n_params = n_layer * 1000 + 7
print(f"ran n_layer={n_layer} learning_rate={learning_rate!r} batch_size={batch_size} n_params={n_params}")
print(f"val_bpb: {1.0 + abs(n_layer - 6) / 10 + learning_rate}")
"""


def _ran(trial) -> dict[str, str]:
    log = Path(trial.user_attrs["log"]).read_text()
    line = next(line for line in log.splitlines() if line.startswith("ran "))
    return dict(word.split("=", 1) for word in line.split()[1:])


def test_configurator_with_config_file_in_command_runs_the_trial_values(tmp_path):
    """nanoGPT as its README runs it: a config file in the command that sets the tuned names. The trial's
    values are passed last, so they win; every recorded value equals the value that ran."""
    script = _write(tmp_path / "nano", {
        "train.py": NANO, "configurator.py": CONFIGURATOR,
        "config/small.py": "n_layer = 2\nlearning_rate = 1e-3\nbatch_size = 8\n",
        "centaur.toml": """
            [runner]
            command = "{python} {script} config/small.py {args}"
            [space.params.n_layer]
            low = 1
            high = 12
        """,
    })  # fmt: skip
    space = load_space(script)
    assert space.configurator == "configurator.py"
    assert "config/small.py" in space.override_note and "last" in space.override_note
    # The baseline is what the command runs: the config file's values, not the script's own.
    assert space.defaults() == {"n_layer": 2, "learning_rate": 1e-3, "batch_size": 8}
    result = centaur.tune(script, method="random", n_trials=4, seed=3, run_dir=tmp_path / "runs")
    trials = _trials(result)
    assert len(trials) == 4 and all(t.user_attrs["status"] == "ok" for t in trials)
    assert _ran(trials[0]) == {"n_layer": "2", "learning_rate": "0.001", "batch_size": "8", "n_params": "2007"}
    sizes = set()
    for t in trials:
        ran = _ran(t)
        assert t.user_attrs["verified"] == "verified", t.user_attrs.get("verify_note")
        recorded = t.user_attrs["config"]  # in the script's units (batch_size 8 is a power of two)
        assert int(ran["n_layer"]) == recorded["n_layer"]
        assert float(ran["learning_rate"]) == recorded["learning_rate"]
        assert int(ran["batch_size"]) == recorded["batch_size"]
        sizes.add((recorded["n_layer"], int(ran["n_params"])))
    assert len({n for n, _ in sizes}) == len({p for _, p in sizes}) > 1  # distinct n_layer, distinct models


def test_config_file_after_args_is_refused_before_trial_0(tmp_path):
    script = _write(tmp_path / "nano", {
        "train.py": NANO, "configurator.py": CONFIGURATOR,
        "config/small.py": "n_layer = 2\n",
        "centaur.toml": '[runner]\ncommand = "{python} {script} {args} config/small.py"\n',
    })  # fmt: skip
    with pytest.raises(ConfigError, match=r"config/small.py.*sets n_layer.*move 'config/small.py' before \{args\}"):
        load_space(script)
    with pytest.raises(ConfigError, match="n_layer"):
        centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("trial.log"))


@pytest.mark.parametrize(("command", "culprit", "fix"), [
    ("{python} {script} config/small.py", "config/small.py", r"add \{args\}"),
    ("{python} {script} config/small.py {args} --n_layer=6", "--n_layer=6", "move"),
])  # fmt: skip
def test_command_that_sets_a_tuned_name_where_it_wins_is_refused(tmp_path, command, culprit, fix):
    script = _write(tmp_path / "nano", {
        "train.py": NANO, "configurator.py": CONFIGURATOR, "config/small.py": "n_layer = 2\n",
        "centaur.toml": f'[runner]\ncommand = "{command}"\n',
    })  # fmt: skip
    with pytest.raises(ConfigError, match=f"'{culprit}' sets n_layer.*Fix: {fix}"):
        load_space(script)


def test_debug_reassignment_is_overridden_and_stops_the_study(tmp_path):
    script = _write(tmp_path / "dbg", {"train.py": """
        DEPTH = 4
        LEARNING_RATE = 0.01
        DEBUG = True
        if DEBUG:
            DEPTH = 2
        print(f"val_bpb: {1.0 + DEPTH / 100 + LEARNING_RATE}")
    """})  # fmt: skip
    with pytest.raises(HopelessStudy) as e:
        centaur.tune(script, method="random", n_trials=3, run_dir=tmp_path / "runs", study_name="dbg")
    message = str(e.value)
    assert "DEPTH: wrote 4, ran 2 (set by line 5 of the script)" in message
    assert "trial 0 did not run the values the study records" in message
    import optuna

    from centaur.study.storage import default_storage_url

    study = optuna.load_study(study_name="dbg", storage=default_storage_url(tmp_path / "runs"))
    [trial] = study.trials  # stopped at the first such trial, recorded as a failure of its own class
    assert trial.user_attrs["status"] == "overridden" and trial.user_attrs["verified"] == "overridden"
    assert trial.value is None and trial.user_attrs["penalty"] == 100.0  # a failure, never a result


def test_argparse_namespace_rewritten_from_yaml_after_parse_args(tmp_path):
    script = _write(tmp_path / "yml", {
        "train.py": """
            import argparse
            import json
            p = argparse.ArgumentParser()
            p.add_argument("--lr", type=float, default=0.01)
            p.add_argument("--batch-size", type=int, default=32)
            args = p.parse_args()
            for key, value in json.load(open("defaults.json")).items():  # a settings file merged over argparse
                setattr(args, key, value)
            print(f"val_bpb: {1.0 + args.lr}")
        """,
        "defaults.json": '{"lr": 0.5}',
    })  # fmt: skip
    with pytest.raises(HopelessStudy, match=r"lr: passed 0.01, changed to 0.5 after parse_args"):
        centaur.tune(script, method="random", n_trials=2, run_dir=tmp_path / "runs")


def test_argparse_value_given_again_on_the_command_is_refused(tmp_path):
    script = _write(tmp_path / "ap", {
        "train.py": """
            import argparse
            p = argparse.ArgumentParser()
            p.add_argument("--lr", type=float, default=0.01)
            args = p.parse_args()
            print(f"val_bpb: {1.0 + args.lr}")
        """,
        "centaur.toml": '[runner]\ncommand = "{python} {script} {args} --lr=0.3"\n',
    })  # fmt: skip
    with pytest.raises(ConfigError, match="'--lr=0.3' sets lr"):
        load_space(script)


def test_argparse_values_are_verified(tmp_path):
    script = _write(tmp_path / "ap", {"train.py": """
        import argparse
        p = argparse.ArgumentParser()
        p.add_argument("--lr", type=float, default=0.01)
        p.add_argument("--batch-size", type=int, default=32)
        args = p.parse_args()
        print(f"val_bpb: {1.0 + args.lr + args.batch_size / 1000}")
    """})  # fmt: skip
    result = centaur.tune(script, method="random", n_trials=3, run_dir=tmp_path / "runs")
    assert [t.user_attrs["verified"] for t in _trials(result)] == ["verified"] * 3
    from centaur.report.collect import runs_from_storage
    from centaur.report.render import verification_md

    section = "\n".join(verification_md(runs_from_storage(tmp_path / "runs")))
    assert "## The values that ran" in section and "| 3 | 0 | 0 | 3 |" in section


def test_mutated_parse_args_result_is_overridden(tmp_path):
    script = _write(tmp_path / "mut", {"train.py": """
        import argparse
        p = argparse.ArgumentParser()
        p.add_argument("--lr", type=float, default=0.01)
        args = p.parse_args()
        args.lr = args.lr * 2  # a script that scales what it was given
        print(f"val_bpb: {1.0 + args.lr}")
    """})  # fmt: skip
    with pytest.raises(HopelessStudy, match=r"lr: passed 0.01, changed to 0.02 after parse_args"):
        centaur.tune(script, method="random", n_trials=2, run_dir=tmp_path / "runs")


def test_constant_inside_a_function_is_unverified_with_the_reason(tmp_path):
    script = _write(tmp_path / "fn", {"train.py": """
        LEARNING_RATE = 0.01
        def main():
            DROPOUT = 0.1
            print(f"val_bpb: {1.0 + LEARNING_RATE + DROPOUT}")
        main()
    """})  # fmt: skip
    result = centaur.tune(script, method="random", n_trials=2, run_dir=tmp_path / "runs")
    for t in _trials(result):
        assert t.user_attrs["status"] == "ok" and t.user_attrs["verified"] == "unverified"
        assert "DROPOUT: assigned inside a function or class" in t.user_attrs["verify_note"]


def test_script_that_exits_after_training_at_module_level_is_verified(tmp_path):
    script = _write(tmp_path / "ex", {"train.py": """
        import sys
        LEARNING_RATE = 0.01
        print(f"val_bpb: {1.0 + LEARNING_RATE}")
        sys.exit(0)
    """})  # fmt: skip
    result = centaur.tune(script, method="random", n_trials=2, run_dir=tmp_path / "runs")
    assert [t.user_attrs["verified"] for t in _trials(result)] == ["verified"] * 2


def test_config_copy_verified_and_original_read_is_overridden(tmp_path):
    files = {
        "conf/train.yaml": "optim:\n  lr: 0.01\n",
        "centaur.toml": '[space]\nconfig = "conf/train.yaml"\n[space.params."optim.lr"]\nlow = 0.001\nhigh = 0.1\n',
        "train.py": """
            import yaml
            cfg = yaml.safe_load(open("conf/train.yaml"))
            print(f"val_bpb: {1.0 + cfg['optim']['lr']}")
        """,
    }
    script = _write(tmp_path / "copy", files)
    result = centaur.tune(script, method="random", n_trials=2, run_dir=tmp_path / "runs")
    assert [t.user_attrs["verified"] for t in _trials(result)] == ["verified"] * 2
    # A script that builds its file's path (centaur points only the literal "conf/train.yaml" at the
    # copy) reads the original.
    files["train.py"] = """
        import os
        import yaml
        cfg = yaml.safe_load(open(os.path.join("conf", "train.yaml")))
        print(f"val_bpb: {1.0 + cfg['optim']['lr']}")
    """
    script = _write(tmp_path / "orig", files)
    with pytest.raises(HopelessStudy, match="opened the original"):
        centaur.tune(script, method="random", n_trials=2, run_dir=tmp_path / "runs2")


# -- settings classes --------------------------------------------------------------------------------
HYPERPARAMETERS = """
import sys
from dataclasses import dataclass

BOS_ID = 50256
VOCAB_SIZE = 50257
NUM_ITERATIONS = 1393

@dataclass
class Hyperparameters:
    train_files: str = "data/train_*.bin"
    val_tokens: int = 10485760
    train_seq_len: int = 1024
    num_iterations: int = 1393
    cooldown_frac: float = 0.4
    learning_rate: float = 0.02
    batch_size: int = 8
    weight_decay: float = 0.0
    seed: int = 0

args = Hyperparameters()
print(f"val_bpb: {1.0 + args.learning_rate + args.cooldown_frac / 10 + args.batch_size / 1000}")
"""


def test_dataclass_settings_are_tuned_by_field_and_verified(tmp_path):
    script = _write(tmp_path / "dc", {"train.py": HYPERPARAMETERS})
    space = load_space(script)
    assert space.source == "dataclass"
    assert set(space.names) == {"cooldown_frac", "learning_rate", "batch_size", "weight_decay"}
    for never in ("val_tokens", "train_seq_len", "num_iterations", "seed", "train_files"):
        assert never in space.skipped
    assert not {"BOS_ID", "VOCAB_SIZE", "NUM_ITERATIONS"} & set(space.names)
    result = centaur.tune(script, method="random", n_trials=3, run_dir=tmp_path / "runs")
    trials = _trials(result)
    assert [t.user_attrs["verified"] for t in trials] == ["verified"] * 3
    work_copy = (Path(trials[-1].user_attrs["log"]).parent / "train.py").read_text()
    assert f"learning_rate: float = {trials[-1].params['learning_rate']!r}" in work_copy


def test_dataclass_made_in_main_and_changed_after_is_overridden(tmp_path):
    script = _write(tmp_path / "dc", {"train.py": """
        from dataclasses import dataclass, replace

        @dataclass(frozen=True)
        class TrainConfig:
            learning_rate: float = 0.02
            dropout: float = 0.1

        def main():
            cfg = TrainConfig()
            cfg = replace(cfg, learning_rate=0.5)  # a later override the defaults cannot see
            print(f"val_bpb: {1.0 + cfg.learning_rate + cfg.dropout}")

        main()
    """})  # fmt: skip
    with pytest.raises(HopelessStudy, match=r"learning_rate: wrote 0.02, ran 0.5"):
        centaur.tune(script, method="random", n_trials=2, run_dir=tmp_path / "runs")


def test_field_passed_explicitly_is_not_a_candidate(tmp_path):
    script = _write(tmp_path / "dc", {"train.py": """
        from dataclasses import dataclass

        DEPTH = 4

        @dataclass
        class GPTConfig:
            n_layer: int = 12
            dropout: float = 0.1

        config = GPTConfig(n_layer=DEPTH)
        print(f"val_bpb: {1.0 + config.n_layer / 100 + config.dropout}")
    """})  # fmt: skip
    space = load_space(script)
    assert space.source == "constants" and space.names == ["DEPTH"]  # the knob that runs
    from centaur.space.settings_classes import find_settings_fields

    fields = {f.assignment.name: f for f in find_settings_fields(script.read_text())}
    assert fields["n_layer"].explicit and not fields["dropout"].explicit


# -- knobs by meaning ----------------------------------------------------------------------------------
def test_lowercase_autoresearch_knobs_get_the_curated_ranges_and_constraint(tmp_path):
    script = _write(tmp_path / "ap", {"train.py": """
        import argparse
        p = argparse.ArgumentParser()
        p.add_argument("--depth", type=int, default=8)
        p.add_argument("--aspect-ratio", type=int, default=64)
        p.add_argument("--head-dim", type=int, default=128)
        p.add_argument("--window-pattern", type=str, default="SSSL")
        p.add_argument("--device-batch-size", type=int, default=128)
        p.add_argument("--total-batch-size", type=int, default=2**19)
        p.add_argument("--embedding-lr", type=float, default=0.6)
        p.add_argument("--unembedding-lr", type=float, default=0.004)
        p.add_argument("--matrix-lr", type=float, default=0.04)
        p.add_argument("--scalar-lr", type=float, default=0.5)
        p.add_argument("--weight-decay", type=float, default=0.2)
        p.add_argument("--warmup-ratio", type=float, default=0.0)
        p.add_argument("--warmdown-ratio", type=float, default=0.5)
        p.add_argument("--max-seq-len", type=int, default=2048)
        p.add_argument("--num-iterations", type=int, default=-1)
        p.add_argument("--device-type", type=str, default="")
        args = p.parse_args()
    """})  # fmt: skip
    space = load_space(script)
    assert space.source == "argparse"
    assert len(space.names) == 13 and "device_batch_size" in space.names and "window_pattern" in space.names
    device = space["device_batch_size"]
    assert device.kind == "pow2" and (device.low, device.high) == (32, 256)
    assert space["aspect_ratio"].source == "curated" and space["matrix_lr"].log
    assert space["window_pattern"].kind == "categorical"
    assert [c.expression for c in space.constraints] == ["total_batch_size % (device_batch_size * max_seq_len) == 0"]
    assert {"max_seq_len", "num_iterations", "device_type"} <= set(space.skipped)


def test_a_script_with_no_hyperparameter_gets_a_clear_message(tmp_path):
    from centaur.space.params import SpaceError

    script = _write(tmp_path / "none", {"train.py": "BOS_ID = 50256\nVOCAB_SIZE = 50257\nDATA_PATH = 'x'\n"})
    with pytest.raises(SpaceError, match=r"no tunable parameters found.*BOS_ID.*VOCAB_SIZE"):
        load_space(script)


def test_a_script_line_after_the_configurator_is_named_not_the_config_file(tmp_path):
    script = _write(tmp_path / "nano", {
        "train.py": NANO.replace('exec(open("configurator.py").read())\n',
                                 'exec(open("configurator.py").read())\nif batch_size > 0:\n    n_layer = 1\n'),
        "configurator.py": CONFIGURATOR,
        "config/small.py": "n_layer = 2\n",
        "centaur.toml": '[runner]\ncommand = "{python} {script} config/small.py {args}"\n',
    })  # fmt: skip
    with pytest.raises(HopelessStudy, match=r"n_layer: wrote 2, ran 1 \(set by line 6 of the script\)"):
        centaur.tune(script, method="random", n_trials=2, run_dir=tmp_path / "runs")
