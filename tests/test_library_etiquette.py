"""A library leaves the program's logging alone: importing any centaur module changes no setting of
Optuna's logging or of the logging module (an Optuna user's "Trial N finished" lines stay), and only the
`centaur` command quiets Optuna, for its own process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# The bundled task's scripts run as trial subprocesses, not as library modules: importing them starts nothing
# useful (and train.py sets OMP_WAIT_POLICY for its own process before importing torch).
SCRIPTS = ("centaur.tasks.gpt.train", "centaur.tasks.gpt.prepare")

SNAPSHOT = """
import logging, optuna

def snapshot():
    def state(logger):
        return {"level": logger.level, "propagate": logger.propagate, "disabled": logger.disabled,
                "handlers": [f"{type(h).__name__}:{id(h)}:{h.level}" for h in logger.handlers]}
    loggers = {name: state(logger) for name, logger in logging.root.manager.loggerDict.items()
               if isinstance(logger, logging.Logger) and name.split(".")[0] in ("optuna", "centaur")}
    return {"optuna_verbosity": optuna.logging.get_verbosity(), "root": state(logging.root),
            "disable": logging.root.manager.disable, "loggers": loggers}
"""


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(SNAPSHOT) + textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_every_centaur_module_changes_no_logging_state():
    result = _run(f"""
        import importlib, json, pkgutil
        optuna.logging.set_verbosity(optuna.logging.INFO)  # what a program that wants Optuna's lines sets
        before = snapshot()
        import centaur
        imported = []
        for info in pkgutil.walk_packages(centaur.__path__, "centaur."):
            if info.name not in {SCRIPTS!r}:
                importlib.import_module(info.name)
                imported.append(info.name)
        after = snapshot()
        # loggers that imports created: compared with what a fresh logger looks like
        for name in set(after["loggers"]) - set(before["loggers"]):
            before["loggers"][name] = {{"level": 0, "propagate": True, "disabled": False, "handlers": []}}
        print(json.dumps({{"imported": imported, "before": before, "after": after}}))
    """)
    imported = set(result["imported"])
    # the walk reached every layer, the modules that once set Optuna's verbosity among them
    assert {"centaur.samplers", "centaur.study.loop", "centaur.cli", "centaur.api", "centaur.methods.smac_sampler",
            "centaur.llm.local", "centaur.bench.runner", "centaur.study.workers"} <= imported, sorted(imported)
    assert len(imported) > 60
    before, after = result["before"], result["after"]
    assert after["optuna_verbosity"] == before["optuna_verbosity"] == 20  # INFO, as the program set it
    assert after["root"] == before["root"]
    assert after["disable"] == before["disable"]
    assert after["loggers"] == before["loggers"]


def test_an_optuna_program_that_imports_our_samplers_keeps_its_trial_lines():
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import optuna
        from centaur.samplers import create
        study = optuna.create_study(sampler=create("random", seed=0))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    """)], capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("finished with value") == 2, out.stderr[-3000:]


def test_the_command_line_quiets_optuna_for_its_own_process():
    result = _run("""
        import json
        from centaur.cli import app  # what the `centaur` console script runs
        before = optuna.logging.get_verbosity()
        app(["methods"], standalone_mode=False)
        print(json.dumps({**snapshot(), "before": before}))
    """)
    assert (result["before"], result["optuna_verbosity"]) == (20, 30)  # INFO after the import, WARNING after a command
