"""Tracking (#28): Optuna-style callbacks, and every trial logged to MLflow (a real SQLite store) and to
W&B (offline mode, real package): one run per trial, parameters in the script's units, the metric, the
failure class, cost and the trial log, the study as parent; a tracker that fails never stops the study."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest

import centaur
from centaur.tracking import TrackingSettings

# WIDTH is a power of two: the optimizer models log2(WIDTH), the trackers must show WIDTH itself. The
# second run diverges (a counter beside the script), so one trial fails with its own class.
SCRIPT = """
from pathlib import Path
LEARNING_RATE = 0.01
WIDTH = 64
counter = Path(__file__).resolve().parent.parent / "runs-seen.txt"
seen = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(seen))
if seen == 2:
    print("FAIL: loss diverged")
else:
    print(f"val_bpb: {1.0 + LEARNING_RATE + WIDTH / 10000}")
"""
TOML = """
[space.params.LEARNING_RATE]
low = 0.001
high = 0.1
log = true
[space.params.WIDTH]
type = "pow2"
low = 16
high = 256
"""


def _script(tmp_path: Path) -> Path:
    folder = tmp_path / "task"
    folder.mkdir()
    (folder / "train.py").write_text(textwrap.dedent(SCRIPT))
    (folder / "centaur.toml").write_text(textwrap.dedent(TOML))
    return folder / "train.py"


def test_callbacks_get_every_finished_trial_and_a_failing_one_stops_nothing(tmp_path, caplog):
    seen = []

    def record(study, trial):
        seen.append((study.study_name, trial.number, trial.user_attrs["status"], trial.state.name))

    def broken(study, trial):
        raise RuntimeError("tracker down")

    with caplog.at_level(logging.WARNING, logger="centaur.tracking.callbacks"):
        result = centaur.tune(_script(tmp_path), method="random", n_trials=4, run_dir=tmp_path / "runs",
                              callbacks=[broken, record])  # fmt: skip
    assert [n for _, n, _, _ in seen] == [0, 1, 2, 3]
    assert seen[1][2] == "diverged" and {s for _, _, s, _ in seen} == {"ok", "diverged"}
    assert len(result.study.trials) == 4
    assert sum("tracker broken failed on trial" in r.getMessage() for r in caplog.records) == 4


def test_callbacks_refused_with_several_workers(tmp_path):
    with pytest.raises(ValueError, match="workers > 1 use tracking"):
        centaur.tune(_script(tmp_path), method="random", n_trials=2, run_dir=tmp_path / "runs", workers=2,
                     callbacks=[lambda s, t: None])  # fmt: skip


def test_mlflow_logs_one_run_per_trial_under_the_study(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    script = _script(tmp_path)
    result = centaur.tune(script, method="random", n_trials=3, run_dir=tmp_path / "runs", tracking={"mlflow": uri})
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("centaur")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags),
                      key=lambda r: int(r.data.tags["centaur.trial"]))  # fmt: skip
    assert len(parents) == 1 and parents[0].data.tags["centaur.study"] == result.study.study_name
    assert len(children) == 3 and all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    for run, trial in zip(children, result.study.trials, strict=True):
        config = trial.user_attrs["config"]
        assert run.data.params == {"LEARNING_RATE": repr(config["LEARNING_RATE"]), "WIDTH": str(config["WIDTH"])}
        assert run.data.tags["centaur.status"] == trial.user_attrs["status"]
        assert run.data.tags["centaur.verified"] == trial.user_attrs["verified"]
        assert run.data.metrics["cost_s"] == pytest.approx(trial.user_attrs["cost_s"])
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["trial.log"]
        assert run.info.artifact_uri.startswith((tmp_path / "mlflow-artifacts").as_uri())  # beside the database
    assert children[1].info.status == "FAILED" and children[1].data.tags["centaur.status"] == "diverged"
    assert children[0].data.metrics["val_bpb"] == pytest.approx(result.study.trials[0].value)
    # A resumed study logs under the same parent.
    centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "runs", tracking={"mlflow": uri})
    runs = client.search_runs([experiment.experiment_id])
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1 and len(runs) == 5


def _item(key: str, value: object) -> bytes:
    """A W&B config or summary item as its offline run file stores it (protobuf: key = 1, value_json = 16)."""
    k, v = key.encode(), json.dumps(value).encode()
    return b"\x0a" + bytes([len(k)]) + k + b"\x82\x01" + bytes([len(v)]) + v


def test_wandb_offline_run_per_trial_grouped_by_study(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = centaur.tune(_script(tmp_path), method="random", n_trials=2, run_dir=tmp_path / "runs",
                          tracking={"wandb": "centaur-test"})  # fmt: skip
    offline = [p.read_bytes() for p in (tmp_path / "runs").rglob("offline-run-*/run-*.wandb")]
    assert len(offline) == 2
    for trial in result.study.trials:  # runs started in one second sort in no particular order: match by trial
        [data] = [d for d in offline if _item("trial", trial.number) in d]
        assert _item("WIDTH", trial.user_attrs["config"]["WIDTH"]) in data  # the script's units, not log2
        assert _item("status", trial.user_attrs["status"]) in data
        assert result.study.study_name.encode() in data  # the group
    assert result.study.trials[1].user_attrs["status"] == "diverged"


def test_a_tracker_that_cannot_start_never_stops_the_study(tmp_path, caplog):
    pytest.importorskip("mlflow")
    with caplog.at_level(logging.WARNING, logger="centaur.tracking.callbacks"):
        result = centaur.tune(_script(tmp_path), method="random", n_trials=2, run_dir=tmp_path / "runs",
                              tracking={"mlflow": "nosuchscheme://tracker"})  # fmt: skip
    assert len(result.study.trials) == 2
    assert sum("tracker mlflow failed" in r.getMessage() for r in caplog.records) == 2


def test_tracking_settings_refuse_bad_input_by_name():
    with pytest.raises(ValueError, match="unknown key 'mlflw'"):
        TrackingSettings.parse({"mlflw": "x"})
    with pytest.raises(ValueError, match="wandb_mode must be"):
        TrackingSettings.parse({"wandb": "p", "wandb_mode": "sometimes"})
    with pytest.raises(ValueError, match="mlflow must be a non-empty string"):
        TrackingSettings.parse({"mlflow": ""})


def test_a_missing_tracker_package_is_named_before_the_study_starts(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb" or name.startswith("wandb."):
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ValueError, match=r"--wandb needs Weights & Biases: pip install 'centaur-hpo\[tracking\]'"):
        centaur.tune(_script(tmp_path), method="random", n_trials=1, run_dir=tmp_path / "runs",
                     tracking={"wandb": "p"})  # fmt: skip
    assert not (tmp_path / "runs" / "study.db").exists()
