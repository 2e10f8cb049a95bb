"""agent-code's held-out split, attacked from inside both sandboxes (issue #29): the bundled task's corpus
is the Python standard library's source, which every sandbox can read. The attack runs in the training
run and in every batch of the model process, by each route we know: the corpus folder it is given, a
rebuild of the corpus with the task's own prepare.py, a search of every Python installation and data
folder in view, and /proc (environments, command lines, descriptors, mounts). Its control needles, taken
from the training split, must be found (the search works); the held-out ones must not."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pytest
from fake_llm_server import FakeLLMServer

from centaur.agentcode.bwrap import View, build_argv, sandbox_problem
from centaur.agentcode.heldout import build_split, held_out_names, masks, stdlib_dirs
from centaur.agentcode.loop import DECISION_ATTR
from centaur.api import BUNDLED_TASK, tune
from centaur.llm import LLMSettings

optuna.logging.set_verbosity(optuna.logging.WARNING)
needs_sandbox = pytest.mark.skipif(sandbox_problem() is not None, reason=f"no sandbox here: {sandbox_problem()}")

ATTACK = '''
def _centaur_attack(needles, controls, secret_path):
    """Every route to the held-out bytes; prints what it searched and what it found."""
    import glob
    import subprocess
    import sysconfig

    import prepare

    where = "train" if __name__ == "__main__" else "scorer"
    hits, seen, files = set(), set(), 0
    blobs = []
    data = os.environ.get("CENTAUR_DATA_DIR")
    for root in [data or "", "/data", os.path.expanduser("~"), "/tmp"]:
        for path in glob.glob(os.path.join(root, "**", "*"), recursive=True) if root else []:
            if os.path.isfile(path) and os.path.getsize(path) < 2**26:
                files += 1
                blobs.append(open(path, "rb").read())
    try:
        corpus = prepare.build_stdlib_corpus()  # the task's own recipe, on the stdlib this sandbox sees
        blobs.append(corpus)
        blobs += [part.tobytes() for part in prepare.split_blob(corpus)]
    except Exception as e:
        print("ATTACK", where, "rebuild failed", type(e).__name__, flush=True)
    proc = []
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        for name in ("environ", "cmdline", "mountinfo", "maps"):
            try:
                proc.append(open(f"/proc/{pid}/{name}", "rb").read())
            except OSError:
                pass
        for link in glob.glob(f"/proc/{pid}/fd/*") + [f"/proc/{pid}/cwd", f"/proc/{pid}/root"]:
            try:
                proc.append(os.readlink(link).encode())
            except OSError:
                pass
    blobs += proc
    roots = {sysconfig.get_paths()["stdlib"], sys.prefix, sys.base_prefix, os.path.dirname(prepare.__file__)}
    for pattern in ("/usr/lib/python3*", "/usr/local/lib/python3*", "/opt/*/lib/python3*"):
        roots |= set(glob.glob(pattern))
    args = ["grep", "-rlF", "-a"]
    for needle in needles + controls:
        args += ["-e", needle.decode()]
    args += ["--include=*.py", "--include=*.pyi", "--include=*.pyc", "--include=*.txt", "--include=*.bin",
             "--include=*.json"]
    listed = subprocess.run(args + sorted(r for r in roots if os.path.isdir(r)), capture_output=True).stdout
    for path in listed.decode(errors="replace").splitlines():
        blobs.append(open(path, "rb").read())
    for blob in blobs:
        if b"_centaur_" + b"attack" in blob:  # this script (and the task's copy of it) holds the needles itself
            continue
        hits |= {i for i, n in enumerate(needles) if n in blob}
        seen |= {i for i, n in enumerate(controls) if n in blob}
    leaked = any(secret_path.encode() in blob for blob in proc)
    print("ATTACK", where, json.dumps({"files": files, "grep_roots": len(roots), "proc": len(proc),
                                       "found": sorted(hits), "controls": sorted(seen), "run_dir_seen": leaked}),
          flush=True)
'''


def needles_of(data: np.ndarray, k: int, seed: int, avoid: np.ndarray | None = None) -> list[bytes]:
    """k 64-byte printable segments of `data`, each occurring once in it and not in `avoid` (a segment of
    the held-out split that also occurs in the training split is a common idiom, not held-out text)."""
    rng = np.random.default_rng(seed)
    blob, other = data.tobytes(), b"" if avoid is None else avoid.tobytes()
    out: list[bytes] = []
    while len(out) < k:
        start = int(rng.integers(0, len(blob) - 64))
        piece = blob[start:start + 64]
        if (all(32 <= c < 127 for c in piece) and "\\" not in piece.decode() and blob.count(piece) == 1
                and piece not in other):
            out.append(piece)
    return out


def attacked_task(dest: Path, run_dir: Path) -> Path:
    """The bundled task (1 s, small evaluation) whose own script runs the attack on import: the baseline
    runs it in its training run and in every batch of its model process."""
    split = build_split(Path("unused"), "stdlib")
    needles, controls = needles_of(split.held_out, 6, 0, split.train), needles_of(split.train, 2, 1)
    dest.mkdir()
    for name in ("prepare.py", "centaur.toml"):
        shutil.copy(BUNDLED_TASK.parent / name, dest / name)
    source = BUNDLED_TASK.read_text().replace("TIME_BUDGET = 40", "TIME_BUDGET = 2")
    source = source.replace("TOTAL_BATCH_SIZE = 2**12", "TOTAL_BATCH_SIZE = 2**10")
    source = source.replace("DEVICE_BATCH_SIZE = 16 ", "DEVICE_BATCH_SIZE = 4 ").replace("EVAL_BYTES = 2**17",
                                                                                          "EVAL_BYTES = 2**12")
    call = f"\nimport json  # noqa: E402\n{ATTACK}\n_centaur_attack({needles!r}, {controls!r}, {str(run_dir)!r})\n"
    marker = "from prepare import DEFAULT_CORPUS, VOCAB_SIZE, load_split  # noqa: E402\n"
    source = source.replace(marker, marker + call)
    ast.parse(source)
    (dest / "train.py").write_text(source)
    return dest / "train.py"


def test_held_out_packages_are_chosen_and_masked_everywhere():
    split = build_split(Path("unused"), "stdlib")
    names = held_out_names()
    assert split.held_out_names == names and names and len(split.held_out) >= 2**18
    hidden = masks(names)
    for root in stdlib_dirs():  # every installation in view that has one of them has it masked
        for name in names:
            if (root / name).exists():
                assert root / name in hidden
    # None of the held-out text is in the training split.
    for needle in needles_of(split.held_out, 4, 3):
        assert needle not in split.train.tobytes()


@needs_sandbox
@pytest.mark.parametrize("sealed", [False, True], ids=["training view", "model process view"])
def test_the_masks_are_what_hides_the_held_out_packages(sealed):
    """The control: without the masks a search of every standard library in view finds the held-out text
    (so the slow test below can fail); with them it finds nothing, in both kinds of view."""
    split = build_split(Path("unused"), "stdlib")
    needles = needles_of(split.held_out, 3, 5, split.train)
    grep = ["grep", "-rlF", "--include=*.py", "--exclude-dir=site-packages", "--exclude-dir=dist-packages",
            *(a for n in needles for a in ("-e", n.decode())), *map(str, stdlib_dirs())]

    def found(hidden: list[Path]) -> list[str]:
        view = View(hidden=hidden, chdir="/", sealed=sealed, as_pid_1=sealed)
        done = subprocess.run(build_argv(grep, view, env={"PATH": "/usr/bin:/bin"}), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode in (0, 1), done.stderr  # 1: grep ran and matched nothing
        return done.stdout.split()

    assert found([]), "the held-out packages should be readable without the masks"
    assert found(masks(split.held_out_names)) == []


@needs_sandbox
@pytest.mark.slow
def test_held_out_bytes_are_out_of_reach_of_both_sandboxes(tmp_path, monkeypatch):
    monkeypatch.setenv("CENTAUR_THREADS", "1")
    run_dir = tmp_path / "runs"
    script = attacked_task(tmp_path / "gpt", run_dir)
    with FakeLLMServer() as server:
        llm = LLMSettings(base_url=server.base_url, model="fake-model", max_retries=0, timeout_s=10.0)
        # The attack's searches run inside the training run's time: a loaded CI core needs more than the
        # default 30 s grace (and 60 s a batch) for them; a run stopped before its hand-over tests nothing.
        result = tune(script, method="agent-code", n_trials=1, budget=None, run_dir=run_dir, llm=llm,
                      method_options={"grace_s": 600.0, "batch_timeout_s": 600.0})
    baseline = result.study.get_trials()[0]
    assert baseline.user_attrs[DECISION_ATTR] == "baseline", baseline.user_attrs
    trial = run_dir / result.study.study_name / "trials" / "00000"
    assert baseline.state is optuna.trial.TrialState.COMPLETE, (
        baseline.user_attrs, (trial / "trial.log").read_text(errors="replace")[-3000:])
    logs = {"train": (trial / "trial.log").read_text(errors="replace"),
            "scorer": (trial / "evaluation.log").read_text(errors="replace")}
    for where, log in logs.items():
        reports = [json.loads(m) for m in re.findall(rf"^ATTACK {where} (\{{.*\}})$", log, re.MULTILINE)]
        assert reports, f"the attack did not run in the {where} sandbox:\n{log[-3000:]}"
        for report in reports:
            assert report["controls"] == [0, 1], report  # the search finds training text...
            assert report["found"] == [], report  # ...and no held-out text, by any route
            assert report["run_dir_seen"] is False, report  # nor the run directory's path
            assert report["grep_roots"] >= 3 and report["proc"] > 0, report
    assert json.loads(re.findall(r"^ATTACK train (\{.*\})$", logs["train"], re.MULTILINE)[0])["files"] >= 3  # /data
