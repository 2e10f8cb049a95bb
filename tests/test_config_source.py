"""The `config` parameter source (YAML, JSON, TOML files a script reads) and `[runner] command`, each
tuned end to end (the worked examples of docs/your-script.md)."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml
from source_fixtures import SOURCES, copy, ok_trials

import centaur
from centaur.config import ConfigError
from centaur.runner.command import CommandError, command_argv, parse_command
from centaur.runner.inject import retarget_paths
from centaur.space import load_space
from centaur.space.configfile import override_args
from centaur.space.constraints import Constraint
from centaur.space.toml_writer import write_config
from centaur.study.identity import task_fingerprint
from centaur.study.loop import StudyMismatch
from centaur.tasks.script import ScriptTask


def trial_dir(t) -> Path:
    return Path(t.user_attrs["log"]).parent


def no_study(run_dir: Path) -> bool:
    return not run_dir.exists() or not any(run_dir.rglob("study.db"))


# -- discovery -------------------------------------------------------------------------------------
def test_yaml_config_keys_by_dotted_path_and_conservative_defaults():
    space = load_space(SOURCES / "yamlconfig" / "train.py")
    assert space.source == "config" and space.config_file.fmt == "yaml"
    assert space.names == ["data.batch_size", "model.n_layer", "model.dropout", "optimizer.lr",
                           "optimizer.weight_decay"]  # fmt: skip
    assert space["optimizer.lr"].default == 0.001 and space["optimizer.lr"].log  # `1e-3` read as a float
    assert space["model.dropout"].high == 0.5 and space["model.n_layer"].kind == "int"
    for name in ("seed", "data.path", "model.n_head", "model.n_embd", "train.epochs", "optimizer.name"):
        assert name in space.skipped and name not in space
    assert "a string" in space.skipped["optimizer.name"]  # judged as `optimizer`, not as a `name`
    assert "optimizer.betas" not in space.skipped  # a list: never a candidate
    assert "pointed at it" in space.source_reason


def test_config_params_tables_dotted_or_quoted(tmp_path):
    script = copy("yamlconfig", tmp_path)
    toml = script.parent / "centaur.toml"
    base = toml.read_text()
    toml.write_text(base + '\n[space.params."model.n_head"]\nchoices = [2, 4, 8]\n'
                    "\n[space.params.train.epochs]\nfixed = 2\n")  # fmt: skip
    space = load_space(script)
    assert space["model.n_head"].choices == (2, 4, 8) and space.fixed == {"train.epochs": 2}
    constrained = base.replace("config = ", 'constraints = ["model.n_embd % model.n_head == 0"]\nconfig = ')
    toml.write_text(constrained + '\n[space.params."model.n_head"]\nchoices = [3, 4]\n')
    space = load_space(script)
    assert space.violations({**space.defaults(), "model.n_head": 3})
    assert not space.violations({**space.defaults(), "model.n_head": 4})


def test_dotted_names_in_constraints():
    c = Constraint("model.n_embd % model.n_head == 0 and lr < 1")
    assert c.names == {"model.n_embd", "model.n_head", "lr"}
    assert c.holds({"model.n_embd": 128, "model.n_head": 4, "lr": 0.1})
    assert not c.holds({"model.n_embd": 128, "model.n_head": 3, "lr": 0.1})


def test_config_errors_name_the_option(tmp_path):
    script = copy("yamlconfig", tmp_path)
    toml = script.parent / "centaur.toml"
    base = '[task]\nmetric = "val_loss"\n'

    def refused(text: str, match: str) -> None:
        toml.write_text(base + text)
        with pytest.raises(ConfigError, match=match):
            load_space(script)

    refused('[space]\nconfig = "conf/missing.yaml"\n', r'\[space\] config = "conf/missing.yaml": no such file')
    refused('[space]\nconfig = "conf/train.ini"\n', r"\[space\] config = .*unknown format .ini")
    refused('[space]\nsource = "config"\n', r'\[space\] source = "config": name the file')
    refused('[space]\nsource = "globals"\nconfig = "conf/train.yaml"\n', 'only read by source = "config"')
    refused('[space]\nconfig = "conf/train.yaml"\nconfig_inject = "env"\n', r"\[space\] config_inject = \"env\"")
    refused(
        '[space]\nconfig = "conf/train.yaml"\n[space.params."optimizer.lrr"]\n',
        r"\[space.params.optimizer.lrr\]: conf/train.yaml has no key optimizer.lrr \(did you mean optimizer.lr",
    )
    refused('[space]\nconfig = "conf/train.yaml"\n[space.params."optimizer.betas"]\n',
            r"optimizer.betas in conf/train.yaml is a list, not a single value")  # fmt: skip
    (script.parent / "conf" / "train.yaml").write_text("model: [unclosed\n")
    refused('[space]\nconfig = "conf/train.yaml"\n', r"\[space\] config = \"conf/train.yaml\": .* is not valid YAML")
    (script.parent / "conf" / "train.yaml").write_text("- a list at the top\n")
    refused('[space]\nconfig = "conf/train.yaml"\n', "must hold a mapping")


def test_missing_config_file_creates_no_study(tmp_path):
    script = copy("yamlconfig", tmp_path)
    (script.parent / "conf" / "train.yaml").unlink()
    run_dir = tmp_path / "runs"
    with pytest.raises(ConfigError, match=r"\[space\] config .*no such file"):
        centaur.tune(script, method="random", n_trials=1, run_dir=run_dir)
    assert no_study(run_dir)


def test_space_write_keeps_the_config_source(tmp_path):
    script = copy("yamlconfig", tmp_path)
    toml = script.parent / "centaur.toml"
    toml.write_text(toml.read_text() + '\n[runner]\ncommand = "{python} {script}"\n')
    path = write_config(script, load_space(script))
    text = path.read_text()
    data = tomllib.loads(text)
    assert data["runner"]["command"] == "{python} {script}"
    assert data["space"]["source"] == "config" and data["space"]["config"] == "conf/train.yaml"
    assert data["space"]["config_inject"] == "copy"
    assert '[space.params."optimizer.lr"]' in text and "optimizer.lr" in data["space"]["params"]
    assert '# [space.params."model.n_head"]' in text
    assert load_space(script).names == list(data["space"]["params"])  # the written file gives the same space


# -- injection ---------------------------------------------------------------------------------------
def test_yaml_copy_keeps_comments_and_reads_back():
    space = load_space(SOURCES / "yamlconfig" / "train.py")
    text = space.config_file.render({"optimizer.lr": 1e-05, "model.n_layer": 7, "data.batch_size": 64})
    assert "lr: 1.0e-05             # PyYAML alone" in text and "n_layer: 7\n" in text
    data = yaml.safe_load(text)
    assert data["optimizer"]["lr"] == 1e-05 and data["model"]["n_layer"] == 7 and data["optimizer"]["name"] == "adamw"


def test_overrides_and_retargeted_paths():
    assert override_args({"a.lr": 0.5, "m.act": "gelu", "m.bias": True, "m.name": "two words"}) == [
        "a.lr=0.5", "m.act=gelu", "m.bias=true", "m.name='two words'",
    ]  # fmt: skip
    source = 'open("conf/a.yaml")\nx = f"conf/a.yaml"\nopen(\'./conf/a.yaml\')\n'
    out, n = retarget_paths(source, {"conf/a.yaml", "./conf/a.yaml"}, "/t/conf/a.yaml")
    assert n == 2 and out == 'open("/t/conf/a.yaml")\nx = f"conf/a.yaml"\nopen(\'/t/conf/a.yaml\')\n'


# -- end to end: config ---------------------------------------------------------------------------------
def test_tune_yaml_config_with_a_copy_per_trial(tmp_path):
    script = copy("yamlconfig", tmp_path)
    original = (script.parent / "conf" / "train.yaml").read_text()
    result = centaur.tune(script, method="random", n_trials=3, run_dir=tmp_path / "runs")
    trials = ok_trials(result)
    assert len(trials) == 3
    for t in trials:
        config = t.user_attrs["config"]
        copy_path = trial_dir(t) / "conf" / "train.yaml"
        data = yaml.load(copy_path.read_text(), Loader=yaml.SafeLoader)
        assert data["model"]["n_layer"] == config["model.n_layer"]
        assert float(data["optimizer"]["lr"]) == pytest.approx(config["optimizer.lr"])
        assert data["train"]["epochs"] == 3 and "# never tuned: I/O" in copy_path.read_text()
        assert f'open("{copy_path}")' in (trial_dir(t) / "train.py").read_text()
    assert len({t.value for t in trials}) == 3  # each trial read its own values
    assert (script.parent / "conf" / "train.yaml").read_text() == original


def test_tune_json_config_with_overrides(tmp_path):
    script = copy("jsonconfig", tmp_path)
    original = (script.parent / "config.json").read_text()
    result = centaur.tune(script, method="random", n_trials=3, run_dir=tmp_path / "runs")
    trials = ok_trials(result)
    assert len(trials) == 3
    for t in trials:
        config = t.user_attrs["config"]
        args = shlex.split((trial_dir(t) / "args.txt").read_text())
        assert f"model.activation={config['model.activation']}" in args
        assert f"optimizer.lr={config['optimizer.lr']!r}" in args
        assert (trial_dir(t) / "config.json").read_text() == original  # an unchanged copy beside the work copy
        log = Path(t.user_attrs["log"]).read_text()
        assert "overrides: " + " ".join(args) in log
        assert t.value == pytest.approx(-t.user_attrs["metric_value"])  # maximised
    assert (script.parent / "config.json").read_text() == original


def test_tune_toml_config_read_beside_the_file(tmp_path):
    script = copy("tomlconfig", tmp_path)
    assert "warning" in load_space(script).source_reason  # no literal path: read beside __file__
    result = centaur.tune(script, method="random", n_trials=3, run_dir=tmp_path / "runs")
    trials = ok_trials(result)
    assert len(trials) == 3
    for t in trials:
        written = tomllib.loads((trial_dir(t) / "settings.toml").read_text())
        assert written["train"]["warmup_steps"] == t.user_attrs["config"]["train.warmup_steps"]
        assert written["train"]["max_steps"] == 50 and written["paths"]["out_dir"] == "out"
    assert len({t.value for t in trials}) == 3


def test_a_changed_config_file_or_command_is_a_changed_study(tmp_path):
    script = copy("yamlconfig", tmp_path)
    runs = tmp_path / "runs"
    centaur.tune(script, method="random", n_trials=1, run_dir=runs)
    conf = script.parent / "conf" / "train.yaml"
    conf.write_text(conf.read_text().replace("epochs: 3", "epochs: 4"))  # a key that is not tuned
    with pytest.raises(StudyMismatch, match="config file"):
        centaur.tune(script, method="random", n_trials=1, run_dir=runs)
    conf.write_text(conf.read_text().replace("epochs: 4", "epochs: 3"))
    toml = script.parent / "centaur.toml"
    toml.write_text(toml.read_text() + '\n[runner]\ncommand = "{python} {script}"\n')
    with pytest.raises(StudyMismatch, match="command"):
        centaur.tune(script, method="random", n_trials=1, run_dir=runs)
    plain = ScriptTask.from_script(SOURCES / "constants" / "train.py")
    assert task_fingerprint(plain) == hashlib.sha256(plain.script.read_bytes()).hexdigest()[:16]  # unchanged


# -- [runner] command ------------------------------------------------------------------------------
def test_command_placeholders():
    words = parse_command("torchrun --nproc_per_node=4 {script} --tag={{x}} {args}")
    argv = command_argv(words, {"script": "/t/train.py"}, ["--lr=0.1", "--bs=8"])
    assert argv == ["torchrun", "--nproc_per_node=4", "/t/train.py", "--tag={x}", "--lr=0.1", "--bs=8"]
    for bad, match in (("{python} {scrip}", "unknown placeholder {scrip}"), ("run --a={args}", "word of its own"),
                       ("run {script", "unmatched"), ("", "command line"), ("run 'x", "cannot split")):  # fmt: skip
        with pytest.raises(CommandError, match=match):
            parse_command(bad)


def test_command_errors_name_runner_command_and_create_no_study(tmp_path):
    script = copy("argparse", tmp_path)
    toml = script.parent / "centaur.toml"
    base = toml.read_text()
    run_dir = tmp_path / "runs"
    for command, match in (
        ("{python} {script} {argz}", r"\[runner\] command = .*unknown placeholder {argz}"),
        ("{python} {script}", r"\[runner\] command = .*has no {args}"),
        ("{python} {script} --config {config} {args}", r"\[runner\] command = .*{config} .*there is none"),
    ):
        toml.write_text(base + f'\n[runner]\ncommand = "{command}"\n')
        with pytest.raises(ConfigError, match=match):
            centaur.tune(script, method="random", n_trials=1, run_dir=run_dir)
        assert no_study(run_dir)
    constants = copy("constants", tmp_path)
    (constants.parent / "centaur.toml").write_text('[runner]\ncommand = "{python} -m train"\n')
    with pytest.raises(ConfigError, match=r"has no {script}"):
        load_space(constants)


def test_tune_with_a_command_python_script_args(tmp_path):
    script = copy("argparse", tmp_path)
    toml = script.parent / "centaur.toml"
    toml.write_text(toml.read_text() + '\n[runner]\ncommand = "{python} {script} --epochs=2 {args}"\n')
    result = centaur.tune(script, method="random", n_trials=3, run_dir=tmp_path / "runs")
    trials = ok_trials(result)
    assert len(trials) == 3
    for t in trials:
        argv = shlex.split((trial_dir(t) / "command.txt").read_text())
        # {script} is the starter that runs the work copy and records the values it parsed
        assert argv[1:3] == [str(trial_dir(t) / "centaur_launch.py"), "--epochs=2"]
        assert repr(str(trial_dir(t) / "train.py")) in (trial_dir(t) / "centaur_launch.py").read_text()
        assert argv[3:] == shlex.split((trial_dir(t) / "args.txt").read_text())
        assert "epoch=2 " in Path(t.user_attrs["log"]).read_text()
        assert t.user_attrs["verified"] == "verified"


def test_tune_with_a_command_python_m_package(tmp_path):
    shutil.copytree(SOURCES / "modpkg", tmp_path / "modpkg")
    script = tmp_path / "modpkg" / "mypkg" / "train.py"
    result = centaur.tune(script, method="random", n_trials=3, run_dir=tmp_path / "runs")
    trials = ok_trials(result)
    assert len(trials) == 3
    for t in trials:
        log = Path(t.user_attrs["log"]).read_text()
        assert "run as mypkg.train" in log  # the package's module, with its relative import
        argv = shlex.split((trial_dir(t) / "command.txt").read_text())
        assert argv[1:3] == ["-m", "mypkg.train"] and f"--lr={t.user_attrs['config']['lr']!r}" in argv
        assert t.user_attrs["verified"] == "unverified"  # no {script}: the trial's process runs none of ours
        assert "does not run {script}" in t.user_attrs["verify_note"]


def test_command_with_gpu_memory_fraction_runs_a_starter_and_a_config_path(tmp_path):
    script = copy("yamlconfig", tmp_path)
    toml = script.parent / "centaur.toml"
    runner = '\n[runner]\ngpu_memory_fraction = 0.5\ncommand = "{python} {script} {config}"\n'
    toml.write_text(toml.read_text() + runner)
    task = ScriptTask.from_script(script)
    result = task.evaluate(task.space.defaults(), trial_number=0, run_dir=tmp_path / "runs")
    assert result.status.value == "ok", result.error
    folder = tmp_path / "runs" / "trials" / "00000"
    argv = shlex.split((folder / "command.txt").read_text())
    assert argv[1:] == [str(folder / "centaur_launch.py"), str(folder / "conf" / "train.yaml")]
    assert json.dumps(str(folder / "train.py"))[1:-1] in (folder / "centaur_launch.py").read_text()


def test_best_writes_the_config_file_copy_and_the_argparse_command_line(tmp_path):
    from typer.testing import CliRunner

    from centaur.cli import app

    script = copy("yamlconfig", tmp_path)
    result = centaur.tune(script, method="random", n_trials=2, run_dir=tmp_path / "runs")
    best = result.summary.best_config
    out = tmp_path / "best.yaml"
    res = CliRunner().invoke(app, ["best", "--study-name", result.study.study_name, "--run-dir",
                                   str(tmp_path / "runs"), "--script", str(script), "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = yaml.load(out.read_text(), Loader=yaml.SafeLoader)
    assert data["model"]["n_layer"] == best["model.n_layer"]
    assert float(data["optimizer"]["lr"]) == pytest.approx(best["optimizer.lr"])
    assert "# never tuned: I/O" in out.read_text()  # the file's own comments and layout are kept
    assert script.read_text() == (SOURCES / "yamlconfig" / "train.py").read_text()  # the script is untouched


def test_best_of_an_argparse_script_is_its_command_line(tmp_path):
    from typer.testing import CliRunner

    from centaur.cli import app

    script = copy("argparse", tmp_path)
    result = centaur.tune(script, method="random", n_trials=2, run_dir=tmp_path / "runs")
    assert result.summary.best_config is not None
    res = CliRunner().invoke(app, ["best", "--study-name", result.study.study_name, "--run-dir",
                                   str(tmp_path / "runs"), "--script", str(script)], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("run it with: python "))
    words = shlex.split(line.removeprefix("run it with: "))
    assert words[1] == str(script)
    lr = next(float(w.split("=", 1)[1]) for w in words if w.startswith("--lr="))
    assert lr == pytest.approx(result.summary.best_config["lr"])
