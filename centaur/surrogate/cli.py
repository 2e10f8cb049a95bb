"""`centaur surrogate ...`: fit, validate and query the surrogate of the reference study's task."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from centaur.surrogate.data import DEFAULT_CONFIG, HP_NAMES, TrialsFormatError, load_trials

app = typer.Typer(help="Surrogate of the reference study's task, fitted on its real trials.",
                  no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)

TrialsOpt = Annotated[Path, typer.Option("--trials", "-t", help="paper_trials_seeds01.json (format "
                                         "{method: {seed: [trial, ...]}})")]


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Turn the expected failures into one red line and exit code 1 or 2, no traceback."""
    try:
        yield
    except FileNotFoundError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    except (TrialsFormatError, ValueError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    except RuntimeError as e:  # the model module (lightgbm) loads only when a command needs it
        from centaur.surrogate.model import SurrogateVersionError

        if not isinstance(e, SurrogateVersionError):
            raise
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None


@contextmanager
def _spinner() -> Iterator[Callable[[str], None]]:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task("starting")
        yield lambda msg: progress.update(task, description=msg)


@app.command()
def fit(
    trials: TrialsOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the model (pickle)")],
    include_code: Annotated[bool, typer.Option("--include-code/--no-include-code",
                                               help="also fit on the Karpathy Agent (Code) trials")] = False,
    n_models: Annotated[int, typer.Option(help="bagged LightGBM regressors in the ensemble")] = 5,
    seed: Annotated[int, typer.Option(help="seed of the fit")] = 0,
    lr_ridge: Annotated[bool, typer.Option("--lr-ridge/--no-lr-ridge", help="also an ensemble on a shared "
                                           "learning-rate ridge, averaged (FitOptions.lr_ridge)")] = True,
) -> None:
    """Fit the surrogate on a trials file and save it."""
    from centaur.surrogate.model import FitOptions, fit_surrogate

    with _clear_errors():
        with _spinner() as say:
            say(f"loading {trials}")
            df = load_trials(trials)
            say(f"fitting on {len(df)} trials")
            model = fit_surrogate(df, FitOptions(include_code=include_code, n_models=n_models, seed=seed,
                                                 lr_ridge=lr_ridge))
            say(f"saving {output}")
            model.save(output)
    m = model.meta
    t = Table(title=f"surrogate saved to {output}", show_header=False)
    for k, v in [("data sha256", m["data_sha256"][:16] + "…"), ("trials used", m["n_trials"]),
                 ("successful", m["n_success"]), ("failed", m["n_failed"]),
                 ("code trials", "in" if include_code else "out"),
                 ("ensemble", f"{n_models} x LightGBM" + (" x 2 (law, law + LR ridge)" if lr_ridge else "")),
                 ("noise sd (median of repeats)", f"{model.noise.median_sd:.2e} ({model.noise.n_groups} groups)"),
                 ("support threshold", f"{model.support_threshold:.3f}"), ("fit seconds", f"{m['fit_seconds']:.1f}")]:
        t.add_row(k, str(v))
    console.print(t)


SPLITS = ("cross-seed", "method", "run", "seed")


@app.command()
def validate(
    trials: TrialsOpt,
    include_code: Annotated[bool, typer.Option("--include-code/--no-include-code")] = False,
    split: Annotated[str, typer.Option(
        "--split", help="comma-separated: cross-seed (train on one seed, test on the other), method (leave one "
        "method out), run (leave one method-seed run out), seed (leave one seed out: the cross-seed resolution, "
        "also per held-out run); run and seed are scored on novel configurations, pooled over the folds")
    ] = ",".join(SPLITS),
    methods: Annotated[bool, typer.Option("--methods/--no-methods", help="--no-methods drops the method split")
                       ] = True,
    n_models: Annotated[int, typer.Option(help="bagged regressors per fit")] = 5,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the report as JSON")] = None,
    lr_ridge: Annotated[bool, typer.Option("--lr-ridge/--no-lr-ridge", help="also an ensemble on a shared "
                                           "learning-rate ridge, averaged (FitOptions.lr_ridge)")] = True,
) -> None:
    """Fidelity of the surrogate on held-out trials: cross-seed, leave-one-method-out, leave-one-run-out and
    leave-one-seed-out (one fit per distinct training set; about 3 s a fit)."""
    from centaur.surrogate.model import FitOptions
    from centaur.surrogate.validate import report_tables, validate_surrogate

    chosen = [s.strip() for s in split.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SPLITS]
    if unknown or not chosen:
        err.print(f"[red]error:[/red] --split takes a comma-separated subset of {', '.join(SPLITS)}; got {split!r}")
        raise typer.Exit(2)
    with _clear_errors():
        with _spinner() as say:
            report = validate_surrogate(trials, options=FitOptions(n_models=n_models, lr_ridge=lr_ridge),
                                        include_code=include_code,
                                        methods=methods and "method" in chosen, cross_seed="cross-seed" in chosen,
                                        holdout=[s for s in ("run", "seed") if s in chosen],
                                        progress=lambda s: say(f"fitting: {s}"))
    for table in report_tables(report, console.width):
        console.print(table)
    for kind, res in report["holdout"].items():
        console.print(f"{kind}: {len(res['folds'])} folds, {res['fits']} new fits ({res['fit_seconds']:.0f} s), "
                      f"{res['seconds']:.0f} s in all")
    n = report["noise"]
    console.print(f"noise: {n['groups']} groups of exact repeats ({n['trials']} trials): sd median "
                  f"{n['median_sd']:.2e}, mean {n['mean_sd']:.2e}, pooled {n['pooled_sd']:.2e}")
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=1, default=str))
        console.print(f"report written to {json_out}")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", "-m", help="a model written by `fit`")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="NAME=VALUE over the defaults")] = None,
    seed: Annotated[int, typer.Option(help="noise seed")] = 0,
) -> None:
    """Ask the surrogate about one configuration (Karpathy's defaults plus --set overrides)."""
    from centaur.surrogate.model import SurrogateModel

    with _clear_errors():
        sm = SurrogateModel.load(model)
        config: dict[str, Any] = dict(DEFAULT_CONFIG)
        for item in set_ or []:
            name, sep, value = item.partition("=")
            name = name.strip().upper()
            if not sep or name not in HP_NAMES:
                raise ValueError(f"--set expects NAME=VALUE with NAME one of {', '.join(HP_NAMES)}; got {item!r}")
            config[name] = value.strip() if name == "WINDOW_PATTERN" else float(value)
        out = sm.evaluate(config, rng=np.random.default_rng(seed))
    t = Table(show_header=False)
    for k, v in out.as_dict().items():
        t.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    console.print(t)


@app.command()
def instrument(
    trials: TrialsOpt,
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="the model to measure, e.g. BENCH_DIR/surrogate-model.pkl: fitted on TRIALS and saved "
        "there when missing or stale; the record is cached beside it (MODEL.instrument.json). Without it the "
        "model is fitted in memory and nothing is cached")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the record as JSON")] = None,
    restarts: Annotated[int, typer.Option(help="CMA-ES restarts per window pattern")] = 2,
    generations: Annotated[int, typer.Option(help="CMA-ES generations per restart")] = 60,
    population: Annotated[int, typer.Option(help="CMA-ES population")] = 96,
) -> None:
    """The surrogate's resolution as an instrument: cross-seed error (the resolution; pooled and per held-out run)
    and leave-one-run-out error, overall and in the competitive region, the best known in-support noise-free value
    and the baseline (about 2 min, then cached)."""
    from centaur.surrogate.instrument import SearchSettings, instrument_for, instrument_key, load_cached, sidecar_path
    from centaur.surrogate.model import fit_surrogate
    from centaur.surrogate.task import SurrogateTask

    settings = SearchSettings(restarts=restarts, generations=generations, population=population)
    with _clear_errors():
        if restarts < 1 or generations < 1 or population < 2:
            raise ValueError("--restarts and --generations must be >= 1, --population >= 2")
        with _spinner() as say:
            say(f"loading the surrogate for {trials}")
            if model is not None:
                sm = SurrogateTask.from_trials(trials, cache=model).model
            else:
                sm = fit_surrogate(load_trials(trials))
            cache = sidecar_path(model) if model is not None else None
            hit = load_cached(cache, instrument_key(sm, settings)) if cache is not None else None
            rec = hit or instrument_for(sm, trials, cache=cache, settings=settings, progress=say)
    best = rec.best_known
    t = Table(title="surrogate instrument" + (f" ({sidecar_path(model)})" if model is not None else ""),
              show_header=False)
    rows = [("data sha256", str(rec.key.get("data_sha256"))[:16] + "…"),
            ("resolution (marks use it)", f"{_f(rec.comp_rmse)}: {rec.resolution_basis} competitive RMSE")]
    for title, summary in (("cross-seed (fit on one seed, predict the other)", rec.cross_seed),
                           ("leave-one-run-out", rec.loro)):
        if not summary:
            continue
        comp, whole = summary["competitive"], summary["all"]
        rows += [
            (title, f"{summary['folds']} folds, novel configurations"),
            (f"  competitive (< {summary['competitive_below']}): n", str(comp["n"])),
            ("    RMSE / bias pooled", f"{_f(comp['rmse_pooled'])} / {_sf(comp.get('bias_pooled'))}"),
            ("    Spearman pooled / mean of folds", f"{_f(comp['spearman_pooled'], 3)} / "
             f"{_f(comp['spearman_mean'], 3)} ({comp['folds_with_spearman']} folds)"),
            ("  all successful: n", str(whole["n"])),
            ("    RMSE pooled", _f(whole["rmse_pooled"])),
            ("    Spearman pooled / mean of folds", f"{_f(whole['spearman_pooled'], 3)} / "
                                                    f"{_f(whole['spearman_mean'], 3)}"),
            ("    feasibility accuracy", _f(whole.get("feas_acc"))),
        ]
        for r in summary.get("runs", []):
            rows.append((f"  {r['name']}", f"competitive n {r['comp_n']}, Spearman {_f(r['comp_spearman'], 3)}, "
                                           f"RMSE {_f(r['comp_rmse'])}, bias {_sf(r['comp_bias'])}"))
        if summary.get("runs"):
            rows.append((f"  largest |bias| (runs with n >= {comp.get('bias_min_n')})", _f(comp.get("max_abs_bias"))))
    rows += [
        ("best known (in support, noise-free)", _f(best["value"])),
        ("  distance to data / support threshold", f"{_f(best['distance_to_data'], 3)} / "
                                                   f"{_f(rec.extra.get('support_threshold'), 3)}"),
        ("  evaluations", f"{best['evaluations']:,} in {best['seconds']:.0f} s"),
        ("  configuration", ", ".join(f"{k}={_f(v, 4) if isinstance(v, float) else v}"
                                      for k, v in best["config"].items())),
        ("baseline (the space's defaults)", _f(rec.baseline["value"])),
        ("computed", f"{rec.created} in {rec.seconds:.0f} s"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    if hit is not None:
        console.print(f"read from the cache {cache}")
    if json_out is not None:
        json_out.write_text(json.dumps(rec.to_dict(), indent=1))
        console.print(f"record written to {json_out}")


def _f(x: Any, nd: int = 4) -> str:
    return f"{x:.{nd}f}" if isinstance(x, (int, float)) else "-"


def _sf(x: Any) -> str:
    return f"{x:+.4f}" if isinstance(x, (int, float)) else "-"
