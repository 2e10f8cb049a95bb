"""Parameter sources (constants, globals, argparse) and metric parsers, each tuned end to end."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from source_fixtures import SOURCES, copy, ok_trials

import centaur
from centaur.config import ConfigError, load_config
from centaur.runner.inject import InjectionError, inject
from centaur.runner.outcome import metric_file_values, metric_values, reduce_values
from centaur.space import load_space
from centaur.space.sources import find_arguments, find_globals
from centaur.space.toml_writer import write_config
from centaur.tasks.script import ScriptTask


# -- discovery -------------------------------------------------------------------------------------
def test_constants_source_is_unchanged():
    space = load_space(SOURCES / "constants" / "train.py")
    assert space.source == "constants" and space.names == ["LEARNING_RATE", "HIDDEN", "DROPOUT"]


def test_globals_source_tunes_conservative_names_only():
    space = load_space(SOURCES / "globals" / "train.py")
    assert space.source == "globals"
    assert "overrides" in space.source_reason
    assert set(space.names) == {"n_layer", "dropout", "learning_rate", "weight_decay", "beta1", "beta2",
                                "batch_size", "warmup_iters"}  # fmt: skip
    for name in ("out_dir", "seed", "device", "eval_interval", "block_size", "max_iters", "n_head", "n_embd",
                 "decay_lr"):  # fmt: skip
        assert name in space.skipped and name not in space
    assert space["n_layer"].kind == "int" and space["dropout"].high == 0.5
    assert space["beta2"].low == 0.9 and space["beta2"].high < 1.0


def test_argparse_source_reads_types_defaults_choices_and_flags():
    args = {a.dest: a for a in find_arguments((SOURCES / "argparse" / "train.py").read_text())}
    assert args["batch_size"].flag == "--batch-size" and args["batch_size"].default == 64
    assert args["optimizer"].choices == ("sgd", "adadelta", "adam")
    assert args["nesterov"].action == "store_true" and args["nesterov"].default is False
    assert args["data"].default == "../data"
    space = load_space(SOURCES / "argparse" / "train.py")
    assert space.source == "argparse"
    assert space.names == ["batch_size", "lr", "gamma", "optimizer", "nesterov"]
    assert {"epochs", "no_cuda", "dry_run", "seed", "log_interval", "save_model", "data"} <= set(space.skipped)
    assert space["optimizer"].kind == "categorical" and space["nesterov"].choices == (True, False)
    task = ScriptTask.from_script(SOURCES / "argparse" / "train.py")
    argv = task.trial_args({"batch_size": 32, "lr": 0.5, "gamma": 0.9, "optimizer": "sgd", "nesterov": True})
    assert argv == ["--batch-size=32", "--lr=0.5", "--gamma=0.9", "--optimizer=sgd", "--nesterov"]
    assert "--nesterov" not in task.trial_args({**space.defaults(), "nesterov": False})


def test_source_override_and_unknown_source(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import argparse\nlearning_rate = 0.01\np = argparse.ArgumentParser()\n"
                      "p.add_argument('--lr', type=float, default=0.1)\nprint('val_bpb: 1')\n")  # fmt: skip
    assert load_space(script).source == "argparse"
    (tmp_path / "centaur.toml").write_text('[space]\nsource = "globals"\n')
    space = load_space(script)
    assert space.source == "globals" and space.names == ["learning_rate"]
    (tmp_path / "centaur.toml").write_text('[space]\nsource = "yaml"\n')
    with pytest.raises(ConfigError, match="source"):
        load_space(script)


def test_untuned_global_is_tuned_when_named_in_toml(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("n_head = 4\nlearning_rate = 0.01\nprint('val_bpb: 1')\n")
    (tmp_path / "centaur.toml").write_text("[space.params.n_head]\n")
    assert load_space(script).names == ["n_head", "learning_rate"]


def test_find_globals_keeps_module_level_literals_only():
    source = "a = 1\n_private = 2\nB = 3\nc = [1]\nif True:\n    d = 0.5\ndef f():\n    e = 1\n"
    assert [g.name for g in find_globals(source)] == ["a", "d"]


def test_inject_writes_globals_and_explains_argparse():
    assert inject("learning_rate = 6e-4  # lr\n", {"learning_rate": 0.001}) == "learning_rate = 0.001  # lr\n"
    source = (SOURCES / "argparse" / "train.py").read_text()
    with pytest.raises(InjectionError, match="--lr=0.5"):
        inject(source, {"lr": 0.5})


def test_space_write_lists_untuned_names_commented_out(tmp_path):
    script = copy("globals", tmp_path)
    path = write_config(script, load_space(script))
    text = path.read_text()
    data = tomllib.loads(text)
    assert data["space"]["source"] == "globals"
    assert data["task"]["metric_regex"].startswith("step")
    assert "# [space.params.n_head]" in text and "n_head" not in data["space"]["params"]
    assert load_space(script).names == list(data["space"]["params"])  # the written file gives the same space
    uncommented = text.replace("# [space.params.n_head]", "[space.params.n_head]")
    path.write_text(uncommented.replace("# type = \"int\"\n# low = 1\n# high = 16", 'type = "int"\nlow = 1\nhigh = 16'))
    assert "n_head" in load_space(script)


# -- metrics ----------------------------------------------------------------------------------------
def test_metric_values_forms():
    text = "val_loss: 2.5\nepoch 3 val_loss=2.0 acc=0.8\n{\"val_loss\": 1.5}\nnot_val_loss: 9\n"
    assert metric_values(text, "val_loss") == [2.5, 2.0, 1.5]
    regex = r"step \d+: train loss [\d.]+, val loss ([\d.]+)"
    assert metric_values("step 0: train loss 3.1, val loss 3.2\nstep 5: train loss 2.1, val loss 2.4\n",
                         "val_loss", regex) == [3.2, 2.4]  # fmt: skip
    assert metric_file_values('{"eval": {"loss": 0.5}}', "eval.loss") == [0.5]
    assert metric_file_values('{"loss": 2}\n{"loss": 1}\n', "loss") == [2.0, 1.0]
    assert reduce_values([3.0, 1.0, 2.0], "last") == 2.0 and reduce_values([3.0, 1.0, 2.0], "min") == 1.0
    assert reduce_values([], "last") is None


def test_metric_settings_are_checked(tmp_path):
    toml = tmp_path / "centaur.toml"
    toml.write_text('[task]\nmetric_regex = "val (\\\\d+) (\\\\d+)"\n')
    with pytest.raises(ConfigError, match="exactly one group"):
        load_config(toml)
    toml.write_text('[task]\ndirection = "up"\n')
    with pytest.raises(ConfigError, match="direction"):
        load_config(toml)
    toml.write_text('[task]\nmetric = "acc"\ndirection = "maximize"\nmetric_reduce = "max"\n')
    m = load_config(toml).metric
    assert (m.name, m.direction, m.reduce) == ("acc", "maximize", "max")


def test_metric_missing_is_a_crash(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("lr = 0.01\nprint('val loss is low')\n")
    (tmp_path / "centaur.toml").write_text('[task]\nmetric = "val_loss"\nmetric_regex = "val loss ([\\\\d.]+)"\n')
    result = ScriptTask.from_script(script).evaluate({"lr": 0.01}, trial_number=0, run_dir=tmp_path / "runs")
    assert result.status.value == "crash" and "metric_regex" in result.error


# -- end to end ---------------------------------------------------------------------------------------
def test_tune_constants_end_to_end(tmp_path):
    script = copy("constants", tmp_path)
    (script.parent / "centaur.toml").write_text('[task]\nmetric = "val_loss"\n')
    result = centaur.tune(script, method="random", n_trials=3, run_dir=tmp_path / "runs")
    assert len(ok_trials(result)) == 3


def test_tune_globals_with_configurator_and_regex_metric(tmp_path):
    script = copy("globals", tmp_path)
    result = centaur.tune(script, method="tpe", n_trials=4, run_dir=tmp_path / "runs")
    trials = ok_trials(result)
    assert len(trials) == 4
    for t in trials:
        work_copy = Path(t.user_attrs["log"]).parent / "train.py"
        lr = t.user_attrs["config"]["learning_rate"]
        assert f"learning_rate = {lr!r}" in work_copy.read_text()
        assert t.value == pytest.approx(t.user_attrs["metrics"]["val_loss"])
    baseline = trials[0]
    lines = Path(baseline.user_attrs["log"]).read_text().splitlines()
    losses = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("step ")]
    assert baseline.value == pytest.approx(min(losses))  # metric_reduce = "min"


def test_tune_argparse_with_flags_choices_and_maximize(tmp_path):
    script = copy("argparse", tmp_path)
    result = centaur.tune(script, method="random", n_trials=4, run_dir=tmp_path / "runs")
    trials = ok_trials(result)
    assert len(trials) == 4
    for t in trials:
        accuracy = t.user_attrs["metrics"]["accuracy"]
        assert t.value == pytest.approx(-accuracy) and t.user_attrs["metric_value"] == accuracy
        assert t.user_attrs["direction"] == "maximize"
        args = (Path(t.user_attrs["log"]).parent / "args.txt").read_text()
        config = t.user_attrs["config"]
        assert f"--optimizer={config['optimizer']}" in args
        assert ("--nesterov" in args) is config["nesterov"]
    assert result.study.best_trial.user_attrs["metrics"]["accuracy"] == max(
        t.user_attrs["metrics"]["accuracy"] for t in trials
    )


def test_tune_metric_file_end_to_end(tmp_path):
    script = copy("metricfile", tmp_path)
    result = centaur.tune(script, method="random", n_trials=3, run_dir=tmp_path / "runs")
    trials = ok_trials(result)
    assert len(trials) == 3
    for t in trials:
        kept = Path(t.user_attrs["log"]).parent / "metrics.json"
        assert json.loads(kept.read_text())["eval"]["loss"] == pytest.approx(t.value)


def test_cli_tune_argparse_script(tmp_path):
    from typer.testing import CliRunner

    from centaur.cli import app

    script = copy("argparse", tmp_path)
    res = CliRunner().invoke(app, ["tune", str(script), "-m", "random", "--n-trials", "2",
                                   "--run-dir", str(tmp_path / "runs")])  # fmt: skip
    assert res.exit_code == 0, res.output
