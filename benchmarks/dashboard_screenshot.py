"""Screenshots of optuna-dashboard on a `centaur tune` study with failed trials, taken by a real headless
browser (the system's Chromium), to look at how failures and parameters show there.

    python benchmarks/dashboard_screenshot.py --out shots/            # a small study made here
    python benchmarks/dashboard_screenshot.py --out shots/ --storage sqlite:///centaur-runs/study.db

Without --storage it tunes a one-second script whose even depths run out of memory (tpe, 24 trials). It
serves the storage with optuna-dashboard's WSGI app on a free local port and writes `history.png` (the
study page: history, importance, timeline), `ok-trial.png` (trial 0) and `failed-trial.png` (the first
failed trial). Needs optuna-dashboard (`centaur-hpo[dev]`) and Chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna

SCRIPT = """
LEARNING_RATE = 0.01
LAYERS = 3
WIDTH = 64
if LAYERS % 2 == 0:  # even depths run out of memory
    raise MemoryError("cannot allocate")
print("---")
print(f"val_bpb: {0.98 + (LAYERS - 5) ** 2 / 100 + abs(LEARNING_RATE - 0.01):.6f}")
print("training_seconds: 1.0")
"""
SPACE = """
[space.params.LAYERS]
type = "int"
low = 1
high = 8

[space.params.WIDTH]
type = "pow2"
low = 16
high = 256
"""
PAGES = {"history.png": "", "ok-trial.png": "/trials?numbers=0", "failed-trial.png": "/trials?numbers={failed}"}


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def make_study(work: Path) -> str:
    import centaur

    (work / "train.py").write_text(SCRIPT)
    (work / "centaur.toml").write_text(SPACE)
    result = centaur.tune(work / "train.py", method="tpe", n_trials=24, seed=0, run_dir=work / "runs",
                          keep_going=True)  # fmt: skip
    print(f"study {result.summary.name}: {result.summary.n_finished} trials, failures {dict(result.summary.failures)}")
    return f"sqlite:///{work / 'runs' / 'study.db'}"


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    sys.exit("no Chromium found: apt-get install chromium")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    ap.add_argument("--storage", help="an Optuna storage URL; default: a small study made here")
    ap.add_argument("--study-name", help="default: the storage's first study")
    args = ap.parse_args()
    import optuna_dashboard

    chrome = browser()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        storage = args.storage or make_study(Path(tmp))
        server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(optuna.storages.get_storage(storage)),
                             handler_class=_Quiet)  # fmt: skip
        threading.Thread(target=server.serve_forever, daemon=True).start()
        root = f"http://127.0.0.1:{server.server_port}"
        with urllib.request.urlopen(f"{root}/api/studies", timeout=30) as answer:  # the dashboard's own ids
            studies = {s["study_name"]: s["study_id"] for s in json.load(answer)["study_summaries"]}
        name = args.study_name or next(iter(studies))
        base = f"{root}/dashboard/studies/{studies[name]}"
        trials = optuna.load_study(study_name=name, storage=storage).trials
        failed = next((t.number for t in trials if t.user_attrs.get("status", "ok") != "ok"), 0)
        for name, page in PAGES.items():
            page = page.format(failed=failed)
            subprocess.run([chrome, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--window-size=1500,1100", "--virtual-time-budget=15000",
                            f"--screenshot={args.out / name}", base + page],
                           check=True, capture_output=True, timeout=180)  # fmt: skip
            print(f"{args.out / name}: {base + page}")
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
