"""Centaur's prompt at trial 300, full against compact: tokens with SmolLM2's own tokenizer, CPU seconds of a
real local SmolLM2 turn on one llama.cpp thread, and the share of usable answers.

The state is realistic: `centaur-null` (Centaur's schedule and records, no LLM) runs 300 trials on the
surrogate of the reference study, then each profile gets a copy of that study and runs a few more trials
with the real `centaur` sampler and the bundled server, an LLM turn every 3rd trial (the default share).
A turn's CPU seconds are the server process's user + system time across the turn's calls (re-asks
included); its prompt tokens are what the server reports.

    python benchmarks/centaur_prompt_bench.py --trials ../shared/data/paper_trials_seeds01.json \
        --turns-full 3 --turns-compact 5 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna

import centaur
from centaur.llm import LLMClient, LLMSettings
from centaur.methods.base import MethodContext, create_sampler
from centaur.methods.llm.common import SYSTEM_PROMPT, read_history
from centaur.study import optuna_private as op
from centaur.study.optuna_private import set_trial_attrs

optuna.logging.set_verbosity(optuna.logging.WARNING)
START = 300


def tokenizer() -> Any:
    from llama_cpp import Llama

    from centaur.llm.local import default_gguf

    model = Llama(str(default_gguf()), vocab_only=True, verbose=False)
    return lambda text: len(model.tokenize(text.encode(), add_bos=False))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build_state(task: Any, storage: str, seed: int, run_dir: Path) -> None:
    t0 = time.perf_counter()
    centaur.tune(task, method="centaur-null", n_trials=START, budget=None, storage=storage, seed=seed,
                 study_name="state", run_dir=run_dir)
    print(f"state: {START} trials of centaur-null on the surrogate in {time.perf_counter() - t0:.0f} s", flush=True)


def sampler_for(profile: str, space: Any, description: str, client: LLMClient, seed: int, turns: list[int]) -> Any:
    options = {"metric": "val_bpb", "prompt": profile, "trust": "fixed", "llm_trials": turns}
    ctx = MethodContext(space=space, seed=seed, options=options, task_description=description, llm=client)
    return create_sampler("centaur", ctx)


def prompt_tokens(count: Any, sampler: Any, study: optuna.Study, show: bool = False) -> tuple[int, int]:
    """(tokens of system + user prompt, characters) of the prompt the sampler would send at the next trial."""
    nxt = SimpleNamespace(number=len(study.trials))  # CMA-ES's draw needs only the trial number
    own, handle = sampler.cma.propose(study, nxt)
    prompt = sampler.prompt(study, read_history(study, sampler.space), own, handle)
    if show:
        print(f"----- {SYSTEM_PROMPT}\n{prompt}\n-----")
    return count(SYSTEM_PROMPT) + count(prompt), len(prompt)


def run_turns(task: Any, study: optuna.Study, sampler: Any, n_trials: int, run_dir: Path) -> list[dict[str, Any]]:
    """Run `n_trials` more trials with `sampler`, recording each LLM turn's server CPU seconds."""
    client: LLMClient = sampler.client
    turns: list[dict[str, Any]] = []
    inner = client.ask_json

    def measured(*args: Any, **kwargs: Any) -> Any:
        client._connect()  # noqa: SLF001  (the server starts on the first call: not part of a turn)
        pid = client._server._proc.pid  # noqa: SLF001
        cpu, wall = cpu_seconds(pid), time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            turns.append({"cpu_s": cpu_seconds(pid) - cpu, "wall_s": time.perf_counter() - wall})

    client.ask_json = measured  # type: ignore[method-assign]
    study.sampler = sampler
    for _ in range(n_trials):
        before = len(turns)
        trial = study.ask()
        config = sampler.space.suggest(trial)
        result = task.evaluate(config, trial_number=trial.number, run_dir=run_dir)
        ok = result.status.value == "ok"
        frozen = study._storage.get_trial(trial._trial_id)  # noqa: SLF001
        set_trial_attrs(op.storage_of(study), op.trial_id(frozen),
                        user_attrs={"status": result.status.value, "config": config, "cost_s": result.cost_s})
        study.tell(trial.number, result.value if ok else 100.0)
        if len(turns) > before:
            t = study._storage.get_trial(trial._trial_id)  # noqa: SLF001
            turns[-1].update(trial=t.number, source=t.user_attrs.get("proposal_source"),
                             prompt_tokens=t.user_attrs.get("llm_prompt_tokens"),
                             completion_tokens=t.user_attrs.get("llm_completion_tokens"),
                             reasked=bool((t.user_attrs.get("llm_detail") or {}).get("reasked")))
            print(f"  turn at trial {t.number}: {turns[-1]['cpu_s']:.1f} CPU-s, {turns[-1]['wall_s']:.1f} s wall, "
                  f"{turns[-1]['prompt_tokens']} prompt tokens, {turns[-1]['source']}", flush=True)
    return turns


def summary(turns: list[dict[str, Any]]) -> dict[str, Any]:
    usable = [t for t in turns if t.get("source") in ("llm", "llm-fallback:predicted-oom")]
    first = [t for t in usable if not t.get("reasked")]
    return {
        "turns": len(turns),
        "median_cpu_s": statistics.median(t["cpu_s"] for t in turns) if turns else None,
        "first_cpu_s": turns[0]["cpu_s"] if turns else None,
        "median_wall_s": statistics.median(t["wall_s"] for t in turns) if turns else None,
        "usable_share": len(usable) / len(turns) if turns else None,
        "first_answer_usable_share": len(first) / len(turns) if turns else None,
        "median_prompt_tokens": statistics.median(t["prompt_tokens"] or 0 for t in turns) if turns else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", default=os.environ.get("CENTAUR_SURROGATE_TRIALS"), help="the reference trials file")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "centaur-surrogate-model.pkl"))
    ap.add_argument("--turns-full", type=int, default=3)
    ap.add_argument("--turns-compact", type=int, default=5)
    ap.add_argument("--every", type=int, default=3, help="an LLM turn every N trials after trial 300")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokens-only", action="store_true", help="count prompt tokens; run no LLM turn")
    ap.add_argument("--state", type=Path, help="keep the 300-trial study in this SQLite file and reuse it")
    ap.add_argument("--show", action="store_true", help="print the prompts at trial 300")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not args.trials:
        ap.error("--trials FILE (or $CENTAUR_SURROGATE_TRIALS) is required")
    from centaur.surrogate.task import SurrogateTask

    task = SurrogateTask.from_trials(args.trials, cache=args.cache)
    description = task.describe()
    work = Path(tempfile.mkdtemp(prefix="centaur-prompt-bench-"))
    base = args.state or work / "state.db"
    if not base.is_file():
        build_state(task, f"sqlite:///{base}", args.seed, work)
    count = tokenizer()
    out: dict[str, Any] = {"trial": START, "profiles": {}}
    for profile, n_turns in (("compact", args.turns_compact), ("full", args.turns_full)):
        db = work / f"{profile}.db"
        shutil.copy(base, db)
        study = optuna.load_study(study_name="state", storage=f"sqlite:///{db}")
        turns_at = [START + args.every * i for i in range(n_turns)]
        settings = LLMSettings(threads=1, context_tokens=8192)  # the bundled server, one thread
        client = LLMClient(settings, log_path=work / f"{profile}_calls.jsonl")
        try:
            sampler = sampler_for(profile, task.space, description, client, args.seed, turns_at)
            tokens, chars = prompt_tokens(count, sampler, study, args.show)
            print(f"{profile}: prompt at trial {START}: {tokens} SmolLM2 tokens ({chars} characters)", flush=True)
            result: dict[str, Any] = {"prompt_tokens_at_300": tokens, "prompt_chars_at_300": chars}
            if not args.tokens_only and n_turns > 0:
                turns = run_turns(task, study, sampler, args.every * (n_turns - 1) + 1, work)
                result.update(summary(turns), turn_records=turns)
                print(f"{profile}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in summary(turns).items()), flush=True)
        finally:
            client.close()
        out["profiles"][profile] = result
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
