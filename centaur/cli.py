"""The `centaur` command line: a thin layer over the library."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import optuna
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from centaur.api import BUNDLED_TASK, DEFAULT_METHOD, DEFAULT_RUN_ROOT, resolve_task, tune
from centaur.entry import quiet_optuna
from centaur.errors import USER_ERRORS
from centaur.methods.base import MethodError, available_methods
from centaur.paths import absolute_storage_url
from centaur.runner.inject import argv_for, inject
from centaur.study.pruning import PrunerSettings
from centaur.study.records import StudySummary, summarize
from centaur.study.storage import default_storage_url, open_storage
from centaur.units import format_duration, parse_duration

app = typer.Typer(help="Tune the hyperparameters of training scripts under a compute budget.", no_args_is_help=True)
# Markup off: messages carry user text such as "[space.params.lr]" or "[runner]", which Rich would eat.
console = Console(markup=False)
err = Console(stderr=True, markup=False)


@app.callback()
def _command_line() -> None:
    quiet_optuna()  # for this process only: the library itself leaves Optuna's logging alone


def _fail(e: Exception) -> None:
    err.print(Text.assemble(("error:", "bold red"), " ", str(e)), highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _aborted() -> None:
    err.print(Text.assemble(
        "\n", ("aborted", "bold yellow"), " by a second Ctrl-C: the running trial was killed and recorded as lost; "
        "its cost counts, and its configuration runs again when you resume with the same command"
    ))  # fmt: skip
    raise typer.Exit(130)


def _positive_duration(option: str, text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise ValueError(f"{option}: {e}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{option} must be a positive duration such as 15m or 600s, got {text!r}")
    return seconds


def _register_surrogate() -> None:
    try:
        from centaur.surrogate.cli import app as surrogate_app
    except ImportError:
        return
    app.add_typer(surrogate_app, name="surrogate", help="Fit and validate the surrogate of the reference study.")


def _register_bench() -> None:
    from centaur.bench.cli import bench
    from centaur.report.cli import report

    app.command("bench")(bench)
    app.command("report")(report)


@app.command()
def space(
    script: Annotated[Path, typer.Argument(help="training script (default: the bundled GPT task)")] = BUNDLED_TASK,
    write: Annotated[bool, typer.Option("--write", help="write a commented centaur.toml beside the script")] = False,
) -> None:
    """Show the search space extracted from SCRIPT."""
    from centaur.space import load_space
    from centaur.space.toml_writer import write_config

    try:
        sp = load_space(script)
    except USER_ERRORS as e:
        _fail(e)
    table = Table(title=f"search space of {script}")
    for col in ("name", "type", "range / choices", "log", "default", "source"):
        table.add_column(col)
    for p in sp:
        rng = str(p.values if p.kind in ("pow2", "categorical") else f"[{p.low:g}, {p.high:g}]")
        table.add_row(p.name, p.kind, rng, "yes" if p.log else "", repr(p.default), p.source)
    console.print(table)
    console.print(f"source: {getattr(sp, 'source', 'constants')} ({getattr(sp, 'source_reason', '')})",
                  markup=False, highlight=False)
    for name, why in getattr(sp, "skipped", {}).items():
        console.print(f"  not tuned: {name} ({why})")
    for c in sp.constraints:
        console.print(f"  constraint: {c.expression}  (a violating configuration is recorded as invalid, not run)")
    if getattr(sp, "override_note", ""):
        console.print(f"  values passed last: {sp.override_note}")
    if getattr(sp, "source", "") in ("constants", "globals"):
        from centaur.runner.verify import plan_for_script

        hidden = plan_for_script(script.read_text(encoding="utf-8"), str(script), sp.defaults()).unverifiable
        for name, why in hidden.items():
            console.print(f"  cannot be verified at run time: {name} ({why})")
    if write:
        path = write_config(script, sp)
        console.print(f"wrote {path}")


@app.command("tune")
def tune_cmd(
    script: Annotated[
        str | None, typer.Argument(help="script path, 'gpt' (bundled, default) or 'surrogate[:TRIALS]'")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option("--method", "-m", help=f"optimization method (see `centaur methods`; default: a resumed study's "
                     f"own, else {DEFAULT_METHOD})"),
    ] = None,
    budget: Annotated[
        str | None, typer.Option(help="compute budget, e.g. 24h, 90m, 600s (new study: 24h; resume: the study's)")
    ] = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", help="stop after this many trials in this run")] = None,
    trial_timeout: Annotated[
        str | None, typer.Option(help="kill a trial after this long (overrides centaur.toml)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the method")] = 0,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default: SQLite in the run dir)")] = None,
    study_name: Annotated[str | None, typer.Option(help="study name (default: TASK-METHOD-seedN)")] = None,
    run_dir: Annotated[Path, typer.Option(help="where studies, trial copies and logs go")] = DEFAULT_RUN_ROOT,
    penalty: Annotated[
        float | None, typer.Option(help="objective value failed trials are told with (new study: 100)")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="method option KEY=VALUE (repeatable)")
    ] = None,
    workers: Annotated[int, typer.Option(help="worker processes on this machine, sharing the study and budget")] = 1,
    gpus: Annotated[
        str | None, typer.Option(help="GPUs for the workers, one each, e.g. 0,1,2,3 (sets CUDA_VISIBLE_DEVICES)")
    ] = None,
    llm_ratio: Annotated[float | None, typer.Option(help="centaur: share of trials proposed by the LLM (0.3)")] = None,
    llm_warmup: Annotated[int | None, typer.Option(help="centaur: trials before the first LLM turn (10)")] = None,
    no_cma_state: Annotated[
        bool, typer.Option("--no-cma-state", help="centaur: the LLM sees the history only, not CMA-ES's state")
    ] = False,
    cma_backend: Annotated[
        str | None, typer.Option(help="centaur: CMA-ES backend, 'cmaes' (ours) or 'cmaes-optuna'")
    ] = None,
    keep_going: Annotated[
        bool, typer.Option("--keep-going", help="run on when the baseline fails or trials keep failing the same way")
    ] = False,
    trust_script_metric: Annotated[
        bool, typer.Option("--trust-script-metric", help="agent-code: accept the metric the edited script prints")
    ] = False,
    unsafe_agent_code: Annotated[
        bool, typer.Option("--unsafe-agent-code", help="agent-code: run edited scripts without the bubblewrap sandbox")
    ] = False,
    pruner: Annotated[
        str, typer.Option(help="stop bad trials early: none, median, percentile, successive-halving, hyperband, "
                          "wilcoxon (needs \\[task] progress; docs/pruning.md)")
    ] = "none",
    pruner_warmup: Annotated[
        str | None, typer.Option(help="median/percentile/wilcoxon: no pruning before this step, e.g. 10s (0)")
    ] = None,
    pruner_startup_trials: Annotated[
        int | None, typer.Option(help="median/percentile: finished trials before any pruning (5)")
    ] = None,
    pruner_interval: Annotated[
        str | None, typer.Option(help="median/percentile: check every this many steps (1)")
    ] = None,
    pruner_percentile: Annotated[
        float | None, typer.Option(help="percentile: prune below this percentile of the other trials (25)")
    ] = None,
    pruner_min_resource: Annotated[
        str | None, typer.Option(help="successive-halving/hyperband: the first rung, e.g. 5s (auto / 1)")
    ] = None,
    pruner_max_resource: Annotated[
        str | None, typer.Option(help="hyperband: the last rung (auto: the longest finished trial)")
    ] = None,
    pruner_reduction_factor: Annotated[
        int | None, typer.Option(help="successive-halving/hyperband: keep 1 in this many per rung (4 / 3)")
    ] = None,
    pruner_p_threshold: Annotated[
        float | None, typer.Option(help="wilcoxon: prune when p is below this (0.1)")
    ] = None,
    pruner_fidelity: Annotated[
        str | None,
        typer.Option(help="run complete short schedules of this script parameter first, e.g. TIME_BUDGET "
                     "(default: \\[task] fidelity)"),
    ] = None,
    mlflow: Annotated[
        str | None, typer.Option(help="log every trial to MLflow at this tracking URI, e.g. sqlite:///mlflow.db")
    ] = None,
    wandb: Annotated[
        str | None, typer.Option(help="log every trial to this W&B project (offline; \\[tracking] wandb_mode)")
    ] = None,
) -> None:
    """Tune SCRIPT. Running the same command again resumes the study."""
    from centaur.progress import RichProgress
    from centaur.study.workers import parse_gpus

    try:
        options = _parse_options(option or [])
        options.update(_centaur_options(method or DEFAULT_METHOD, llm_ratio, llm_warmup, no_cma_state, cma_backend))
        options.update(_agent_code_options(method or DEFAULT_METHOD, trust_script_metric, unsafe_agent_code))
        pruning = PrunerSettings.parse(
            pruner, warmup=pruner_warmup, startup_trials=pruner_startup_trials, interval=pruner_interval,
            percentile=pruner_percentile, min_resource=pruner_min_resource, max_resource=pruner_max_resource,
            reduction_factor=pruner_reduction_factor, p_threshold=pruner_p_threshold, fidelity=pruner_fidelity,
        )  # fmt: skip
        task = resolve_task(script)
        if trial_timeout is not None and hasattr(task, "config"):
            task.config.runner.trial_timeout_s = _positive_duration("--trial-timeout", trial_timeout)
        result = tune(
            task,
            method=method,
            budget=budget,
            n_trials=n_trials,
            seed=seed,
            storage=storage,
            study_name=study_name,
            run_dir=run_dir,
            penalty=penalty,
            method_options=options,
            progress=RichProgress(console),
            workers=workers,
            gpus=parse_gpus(gpus),
            keep_going=keep_going,
            pruner=pruning,
            tracking={**({"mlflow": absolute_storage_url(mlflow)} if mlflow else {}),
                      **({"wandb": wandb} if wandb else {})},  # fmt: skip
        )
    except USER_ERRORS as e:
        _fail(e)
    except KeyboardInterrupt:
        _aborted()
    s = result.summary
    console.print(Text.assemble(
        (s.name, "bold"), f": {result.stop_reason}; {s.n_finished} trials, best "
        + (f"{s.best_metric:.6f} (trial {s.best_trial})" if s.best_metric is not None else "- (no ok trial yet)")
    ))  # fmt: skip
    if s.best_config:
        console.print_json(json.dumps(s.best_config))


@app.command()
def worker(
    storage: Annotated[str, typer.Option(help="the study's storage URL, e.g. postgresql://user@host/db")],
    study: Annotated[str, typer.Option("--study", help="name of the study to join (started by `centaur tune`)")],
    script: Annotated[
        str | None, typer.Option(help="the training script on this machine (default: the path the study recorded)")
    ] = None,
    run_dir: Annotated[Path, typer.Option(help="where this worker's trial copies and logs go")] = DEFAULT_RUN_ROOT,
    n_trials: Annotated[int | None, typer.Option("--n-trials", help="stop after this many trials")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="one line per trial instead of a live display")] = False,
) -> None:
    """Join an existing study as one more worker (another GPU, another machine, a SLURM array task)."""
    from centaur.progress import RichProgress
    from centaur.study.workers import LineProgress, join_study

    try:
        result = join_study(
            storage, study, run_root=run_dir, script=script, n_trials=n_trials,
            progress=LineProgress() if quiet else RichProgress(console),
        )  # fmt: skip
    except USER_ERRORS as e:
        _fail(e)
    except KeyboardInterrupt:
        _aborted()
    s = result.summary
    console.print(Text.assemble((s.name, "bold"), f": {result.stop_reason}; {s.n_finished} trials in the study, best "
                                f"{s.best_metric}"))  # fmt: skip


@app.command()
def methods() -> None:
    """List the available methods."""
    grid = Table.grid(padding=(0, 1))  # a summary wraps under itself, not under the names
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for name, summary in available_methods().items():
        grid.add_row(name, summary)
    console.print(grid)


def _load(storage: str | None, run_dir: Path, study_name: str | None) -> list[optuna.Study]:
    url = storage or default_storage_url(run_dir)
    if storage is None and not (run_dir / "study.db").exists():
        raise FileNotFoundError(f"no studies in {run_dir} (run `centaur tune` first, or pass --storage)")
    st = open_storage(url)
    names = [study_name] if study_name else [s.study_name for s in optuna.get_all_study_summaries(st)]
    try:
        return [optuna.load_study(study_name=n, storage=st) for n in names]
    except KeyError:
        raise FileNotFoundError(f"no study named {study_name!r} in {url}") from None


@app.command()
def status(
    study_name: Annotated[str | None, typer.Option(help="one study (default: all)")] = None,
    storage: Annotated[str | None, typer.Option()] = None,
    run_dir: Annotated[Path, typer.Option()] = DEFAULT_RUN_ROOT,
) -> None:
    """Progress of studies: trials, best, failures by class, budget used, LLM use."""
    try:
        studies = _load(storage, run_dir, study_name)
    except USER_ERRORS as e:
        _fail(e)
    rows = [_status_row(summarize(st)) for st in studies]
    if console.width >= 120:  # one row per study
        table = Table()
        for col in _STATUS_COLUMNS:
            table.add_column(col, no_wrap=col == "study")
        for row in rows:
            table.add_row(*row.values())
        console.print(table)
        return
    for row in rows:  # narrow terminal: one block per study, a field per line
        block = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
        block.add_column(style="bold", no_wrap=True)
        block.add_column(overflow="fold")
        for col, value in row.items():
            if col != "study":
                block.add_row(col, value)
        console.print(Text(row["study"], style="bold"), highlight=False)
        console.print(block)


_STATUS_COLUMNS = (
    "study", "method", "trials", "running", "best", "failures", "verified", "budget used", "optimizer s", "LLM s",
    "fallbacks",
)


def _verified_text(s: StudySummary) -> str:
    """How many successful trials ran the values the study records (centaur.runner.verify), and how many
    trials did not; "-" where the task has no process to check (the surrogate)."""
    if not sum(s.verified.values()):
        return "-"
    ok = s.verified["verified"] + s.verified["unverified"]
    text = f"{s.verified['verified']} of {ok} ok"
    if s.verified["unverified"]:
        text += f" ({s.verified['unverified']} unverified)"
    if s.verified["overridden"]:
        text += f"; overridden {s.verified['overridden']}"
    return text


def _status_row(s: StudySummary) -> dict[str, str]:
    budget = f"{format_duration(s.used_s)} / {format_duration(s.budget_s)}" if s.budget_s else format_duration(s.used_s)
    if s.budget_s:
        budget += f" ({100 * s.used_s / s.budget_s:.0f}%)"
    best = f"{s.best_metric:.6f}" if s.best_metric is not None else "-"
    if s.best_value is not None and s.best_trial is not None:
        best += f" (trial {s.best_trial})"
    values = (
        s.name,
        f"{s.method} (seed {s.seed})" if s.seed is not None else str(s.method),
        str(s.n_finished),
        str(s.n_running),
        best,
        ", ".join(f"{k} {v}" for k, v in sorted(s.failures.items())) or "0",
        _verified_text(s),
        budget,
        f"{s.sampler_s:.1f}",
        f"{s.llm_s:.1f}",
        str(s.fallbacks),
    )
    return dict(zip(_STATUS_COLUMNS, values, strict=True))


@app.command()
def best(
    study_name: Annotated[str, typer.Option(help="study name")],
    storage: Annotated[str | None, typer.Option()] = None,
    run_dir: Annotated[Path, typer.Option()] = DEFAULT_RUN_ROOT,
    script: Annotated[Path | None, typer.Option(help="write a copy of this script with the best config")] = None,
    output: Annotated[Path | None, typer.Option("-o", help="where to write the copy")] = None,
) -> None:
    """Best configuration of a study, and optionally a copy of the script with it applied."""
    try:
        (st,) = _load(storage, run_dir, study_name)
        s = summarize(st)
        if s.best_config is None:
            raise ValueError(f"study {study_name!r} has no successful trial yet")
        console.print(f"best {s.best_metric:.6f} at trial {s.best_trial}")
        console.print_json(json.dumps(s.best_config))
        attrs = st.trials[s.best_trial].user_attrs if s.best_trial is not None else {}
        if attrs.get("verified", "verified") != "verified":
            err.print(f"note: trial {s.best_trial}'s values are {attrs['verified']}: {attrs.get('verify_note', '')}",
                      soft_wrap=True)  # fmt: skip
        if script is not None:
            _write_best(script, s.best_config, output, st.user_attrs.get("agent_code:best_source"))
    except USER_ERRORS as e:
        _fail(e)


def _write_best(script: Path, config: dict, output: Path | None, edited: str | None) -> None:
    """The best configuration applied where the script's source keeps its values: a copy of the script
    (constants, globals; agent-code: its edited code), of its `[space] config` file, or the command line
    of its argparse options."""
    from centaur.space import load_space

    space = None if edited else load_space(script)
    config_file = getattr(space, "config_file", None)
    if config_file is not None:
        values = {k: v for k, v in {**config, **space.fixed}.items() if k in config_file.leaves}
        path = config_file.path
        out = output or path.with_name(f"{path.stem}_best{path.suffix}")
        out.write_text(config_file.render(values), encoding="utf-8")
        console.print(f"wrote {out} (the script reads {config_file.shown}: point it there, or copy it over)")
        return
    if space is not None and getattr(space, "source", "") == "argparse":
        words = argv_for(space.arguments, {**config, **space.fixed})
        console.print("run it with: python " + shlex.join([str(script), *words]))
        return
    out = output or script.with_name(f"{script.stem}_best{script.suffix}")
    kind = getattr(space, "source", None)
    out.write_text(edited or inject(script.read_text(encoding="utf-8"), config, str(script), kind), encoding="utf-8")
    console.print(f"wrote {out}")
    if space is not None and getattr(space, "configurator", None):
        # Its command's config files would set these names again: the values go last, as in the trials.
        from centaur.config import config_path_for, load_config
        from centaur.runner.command import parse_command
        from centaur.space.overrides import configurator_args

        command = load_config(config_path_for(script)).runner.command
        words = parse_command(command) if command else []
        before = [w for w in (words[: words.index("{args}")] if "{args}" in words else words) if "{" not in w]
        console.print("run it with the values last, as the trials did: python "
                      + shlex.join([str(out), *before, *configurator_args({**config, **space.fixed})]))  # fmt: skip


def _centaur_options(method: str, ratio: float | None, warmup: int | None, no_state: bool,
                     backend: str | None) -> dict:
    """The ablation switches of `centaur` as method options; an error for any other method."""
    given = {"llm_ratio": ratio, "llm_warmup": warmup, "cma_state": False if no_state else None, "backend": backend}
    given = {k: v for k, v in given.items() if v is not None}
    if given and method not in ("centaur", "centaur-null"):
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise MethodError(f"{flags}: only for --method centaur, not {method!r}")
    return given


def _agent_code_options(method: str, trust_metric: bool, unsafe: bool) -> dict:
    given = {k: True for k, v in (("trust_script_metric", trust_metric), ("unsafe", unsafe)) if v}
    if given and method != "agent-code":
        flags = ", ".join({"trust_script_metric": "--trust-script-metric", "unsafe": "--unsafe-agent-code"}[k]
                          for k in given)
        raise MethodError(f"{flags}: only for --method agent-code, not {method!r}")
    return given


def _parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--option takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


_register_surrogate()
_register_bench()


def main() -> None:  # pragma: no cover
    sys.exit(app())
