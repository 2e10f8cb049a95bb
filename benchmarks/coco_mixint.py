"""The optimizer cores on COCO's mixed-integer suite `bbob-mixint` (issue #20 item 6): an instrument that
does not depend on our surrogate.

Each problem of the suite is run once per solver at a fixed budget of evaluations (`--budget` x dimension),
with a fixed seed. A problem's integer variables (COCO puts them first, `number_of_integer_variables` of
them) become integer parameters with the problem's bounds, the others floats with its bounds. Results are
reported the way COCO reports them: the runtime ECDF, i.e. the share of (function, instance, target) triples
whose target f - f_opt <= 10^k (k in 2, 1.8, ..., -8: COCO's 51 bbob targets) was reached within a number
of evaluations. f_opt is the value at the optimum cocoex gives for the problem, checked against the
problem's final target (f_opt + 1e-8: `final_target_hit` must be set by evaluating there).

Usage: nice -n 10 python benchmarks/coco_mixint.py [--dimensions 5,10] [--instances 1-3] [--functions 1-24]
       [--instances-by-dim '10:1'] [--budget 100] [--solvers cmaes,cmaes-optuna,...] [--out runs/coco_mixint]
The run of docs/coco.md: --dimensions 5,10 --instances 1-3 --instances-by-dim '10:1' (about 22 CPU minutes).
Writes results.json and ecdf.png under --out; prints the share table, a bootstrap interval (over the
function/instance pairs) of our cmaes's share minus each other solver's, and its own timing. Needs
`coco-experiment`, `nevergrad` (for ngopt) and `matplotlib` (for the figure).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from centaur.samplers import create

SUITE = "bbob-mixint"
TARGETS = 10.0 ** np.linspace(2, -8, 51)  # COCO's bbob targets for f - f_opt: 5 per decade, 1e2 .. 1e-8
FINAL_DELTA = 1e-8  # COCO's final target is f_opt + 1e-8
TABLE_FACTORS = (10, 30, 100)  # budgets of the table, in evaluations per dimension
SOLVERS: dict[str, str] = {
    "cmaes": "centaur.samplers.create('cmaes'): our CatCMA with margin (defaults: centre start, sigma0 1/6 range)",
    "cmaes-optuna": "optuna.samplers.CmaEsSampler (defaults: ints rounded from a continuous CMA, no margin)",
    "cmaes-optuna-margin": "optuna.samplers.CmaEsSampler(with_margin=True): Optuna's CMA-ES with margin",
    "tpe": "optuna.samplers.TPESampler (defaults of Optuna 5: multivariate, 10 random startup trials)",
    "ngopt": "nevergrad.optimizers.NGOpt (its own choice of algorithm for the space and budget)",
    "random": "optuna.samplers.RandomSampler: uniform in the box, the floor",
}
DEFAULT_SOLVERS = tuple(SOLVERS)
REFERENCE = "cmaes"  # the solver the bootstrap intervals compare against the others


@dataclass(frozen=True)
class Problem:
    """One problem of the suite, as the solvers see it."""

    id: str
    function: int
    instance: int
    dimension: int
    n_integer: int
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    f_opt: float

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna parameters x00, x01, ... in variable order (zero-padded so sorted names keep the order)."""
        out: dict[str, BaseDistribution] = {}
        for i, (lo, hi) in enumerate(zip(self.lower, self.upper, strict=True)):
            if i < self.n_integer:
                out[f"x{i:02d}"] = IntDistribution(int(round(lo)), int(round(hi)))
            else:
                out[f"x{i:02d}"] = FloatDistribution(float(lo), float(hi))
        return out


@dataclass
class Run:
    """One solver on one problem: the f-value of each evaluation, in order."""

    problem: str
    function: int
    instance: int
    dimension: int
    solver: str
    seed: int
    budget: int
    fvalues: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    note: str = ""

    def runtimes(self, f_opt: float, targets: np.ndarray = TARGETS) -> np.ndarray:
        """For each target, the number of evaluations until best-so-far f - f_opt <= target (inf: never)."""
        return runtimes(self.fvalues, f_opt, targets)


class Objective:
    """The problem as a solver calls it: records each f-value in `run`; `done` once the budget is spent or
    the final target is reached (the rest of a run could not change its ECDF: every target is reached)."""

    def __init__(self, coco: Any, run: Run, final_target: float) -> None:
        self.coco, self.run, self.final_target = coco, run, final_target
        self.done = False

    def __call__(self, x: np.ndarray) -> float:
        if self.done:
            raise RuntimeError(f"{self.run.solver} evaluated past the end of its run")
        value = float(self.coco(x))
        self.run.fvalues.append(value)
        self.done = len(self.run.fvalues) >= self.run.budget or value <= self.final_target
        return value


Solver = Callable[[Problem, Objective, int, int], None]  # (problem, objective, budget, seed): runs until done


def runtimes(fvalues: Sequence[float], f_opt: float, targets: np.ndarray = TARGETS) -> np.ndarray:
    """The first evaluation (1-based) at which the best f - f_opt so far reaches each target; inf if none."""
    out = np.full(len(targets), np.inf)
    if not len(fvalues):
        return out
    best = np.minimum.accumulate(np.asarray(fvalues, dtype=float) - f_opt)
    for j, target in enumerate(targets):
        hit = np.flatnonzero(best <= target)
        if hit.size:
            out[j] = hit[0] + 1
    return out


def ecdf(runtime_rows: np.ndarray, budgets: Iterable[float]) -> np.ndarray:
    """Share of (run, target) pairs reached within each budget: runtime_rows is (runs, targets)."""
    rows, budgets = np.asarray(runtime_rows, dtype=float), list(budgets)
    if rows.size == 0:
        return np.zeros(len(budgets))
    return np.array([float(np.mean(rows <= b)) for b in budgets])


# -- the suite ---------------------------------------------------------------------------------------------
def suite_options(dimensions: Sequence[int], instances: Sequence[int], functions: Sequence[int]) -> str:
    join = ",".join
    return (f"dimensions: {join(map(str, dimensions))} instance_indices: {join(map(str, instances))} "
            f"function_indices: {join(map(str, functions))}")  # fmt: skip


def optimum(problem: Any) -> float:
    """f_opt of a cocoex problem (which is evaluated, so pass a copy that is not benchmarked).

    cocoex documents the final target as f_opt + 1e-8 (`final_target_fvalue1`), but 2.8's compiled Problem
    does not expose it; then f_opt is the value at the optimum cocoex prints (`_best_parameter`), and that
    value is checked against the final target: evaluating there must set `final_target_hit`."""
    with contextlib.suppress(AttributeError):
        return float(problem.final_target_fvalue1) - FINAL_DELTA
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        problem._best_parameter("print")  # writes the optimum into the working directory
        (written,) = Path(tmp).iterdir()
        x_opt = np.atleast_1d(np.loadtxt(written))
    f_opt = float(problem(x_opt))
    if not problem.final_target_hit:
        raise RuntimeError(f"{problem.id}: f at cocoex's optimum ({f_opt}) does not reach the final target")
    return f_opt


def load_problems(dimensions: Sequence[int], instances: Sequence[int], functions: Sequence[int]) -> list[Problem]:
    """The suite's problems with f_opt, in suite order (dimension, function, instance)."""
    import cocoex

    options = suite_options(dimensions, instances, functions)
    suite, reference = cocoex.Suite(SUITE, "", options), cocoex.Suite(SUITE, "", options)
    out = []
    for p in suite:
        ref = reference.get_problem(p.id)
        f_opt = optimum(ref)
        ref.free()
        out.append(Problem(p.id, int(p.id_function), int(p.id_instance), int(p.dimension),
                           int(p.number_of_integer_variables), tuple(map(float, p.lower_bounds)),
                           tuple(map(float, p.upper_bounds)), f_opt))  # fmt: skip
    return out


def cocoex_problem(problem: Problem) -> Any:
    """A fresh, unevaluated cocoex problem for `problem`."""
    import cocoex

    suite = cocoex.Suite(SUITE, "", suite_options([problem.dimension], [problem.instance], [problem.function]))
    return suite.get_problem(problem.id)


# -- solvers -----------------------------------------------------------------------------------------------
def optuna_solver(make: Callable[[int], optuna.samplers.BaseSampler]) -> Solver:
    """A solver that runs an Optuna study with the sampler `make(seed)`, one trial per evaluation."""

    def solve(problem: Problem, objective: Objective, budget: int, seed: int) -> None:
        sampler = make(seed)
        distributions = problem.distributions()

        def trial_value(trial: optuna.Trial) -> float:
            x = [trial.suggest_int(name, d.low, d.high) if isinstance(d, IntDistribution)
                 else trial.suggest_float(name, d.low, d.high) for name, d in distributions.items()]  # fmt: skip
            return objective(np.asarray(x, dtype=float))

        def stop_when_done(study: optuna.Study, _trial: Any) -> None:
            if objective.done:
                study.stop()

        study = optuna.create_study(sampler=sampler)
        try:
            study.optimize(trial_value, n_trials=budget, callbacks=[stop_when_done], catch=())
        finally:
            close = getattr(sampler, "close", None)
            if callable(close):  # our samplers: remove temporary files
                close()

    return solve


def _ours(seed: int) -> optuna.samplers.BaseSampler:
    return create("cmaes", seed=seed)


def ngopt_solver(problem: Problem, objective: Objective, budget: int, seed: int) -> None:
    """Nevergrad's NGOpt with ask/tell, one worker; integers as integer-cast bounded scalars."""
    import nevergrad as ng

    scalars = []
    for i, (lo, hi) in enumerate(zip(problem.lower, problem.upper, strict=True)):
        scalar = ng.p.Scalar(lower=lo, upper=hi)
        scalars.append(scalar.set_integer_casting() if i < problem.n_integer else scalar)
    space = ng.p.Tuple(*scalars)
    space.random_state = np.random.RandomState(seed)
    opt = ng.optimizers.NGOpt(parametrization=space, budget=budget, num_workers=1)
    while not objective.done:
        candidate = opt.ask()
        opt.tell(candidate, objective(np.asarray(candidate.value, dtype=float)))
    objective.run.note = str(getattr(opt.optim, "name", type(opt.optim).__name__))  # the algorithm NGOpt chose


def solver_registry() -> dict[str, Solver]:
    return {
        "cmaes": optuna_solver(_ours),
        "cmaes-optuna": optuna_solver(lambda s: optuna.samplers.CmaEsSampler(seed=s, warn_independent_sampling=False)),
        "cmaes-optuna-margin": optuna_solver(
            lambda s: optuna.samplers.CmaEsSampler(seed=s, with_margin=True, warn_independent_sampling=False)
        ),
        "tpe": optuna_solver(lambda s: optuna.samplers.TPESampler(seed=s)),
        "ngopt": ngopt_solver,
        "random": optuna_solver(lambda s: optuna.samplers.RandomSampler(seed=s)),
    }


def run_seed(base_seed: int, problem: Problem) -> int:
    """One seed per problem, the same for every solver, fixed by the base seed and the problem id."""
    return zlib.crc32(f"{base_seed}:{problem.id}".encode()) % (2**31 - 1)


def run_one(problem: Problem, solver_name: str, solver: Solver, budget: int, seed: int) -> Run:
    """`solver` on a fresh copy of `problem` for `budget` evaluations (fewer once the final target is hit)."""
    coco = cocoex_problem(problem)
    run = Run(problem.id, problem.function, problem.instance, problem.dimension, solver_name, seed, budget)
    start = time.process_time()
    solver(problem, Objective(coco, run, problem.f_opt + FINAL_DELTA), budget, seed)
    run.cpu_s = time.process_time() - start
    coco.free()
    return run


def run_benchmark(
    problems: Sequence[Problem],
    solvers: dict[str, Solver],
    budget_factor: float,
    base_seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[Run]:
    """Every solver on every problem, budget_factor x dimension evaluations each."""
    runs = []
    for problem in problems:
        budget = int(round(budget_factor * problem.dimension))
        seed = run_seed(base_seed, problem)
        for name, solver in solvers.items():
            run = run_one(problem, name, solver, budget, seed)
            runs.append(run)
            if log is not None:
                best = min(run.fvalues) - problem.f_opt if run.fvalues else math.inf
                log(f"{problem.id} {name:20} evals {len(run.fvalues):5d}  best f-fopt {best:10.3e}  "
                    f"cpu {run.cpu_s:6.2f}s")  # fmt: skip
    return runs


# -- analysis ----------------------------------------------------------------------------------------------
def runtime_table(runs: Sequence[Run], problems: Sequence[Problem]) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    """(solver, dimension) -> {problem id: runtimes per target}."""
    f_opt = {p.id: p.f_opt for p in problems}
    out: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for run in runs:
        out.setdefault((run.solver, run.dimension), {})[run.problem] = run.runtimes(f_opt[run.problem])
    return out


def shares(table: dict[tuple[str, int], dict[str, np.ndarray]], factors: Sequence[float]) -> dict[str, dict]:
    """solver -> dimension -> {factor: ECDF share at factor x dimension evaluations}."""
    out: dict[str, dict] = {}
    for (solver, dim), per_problem in table.items():
        rows = np.array([per_problem[k] for k in sorted(per_problem)])
        out.setdefault(solver, {})[dim] = dict(zip(factors, ecdf(rows, [f * dim for f in factors]), strict=True))
    return out


def bootstrap_difference(
    ours: dict[str, np.ndarray], other: dict[str, np.ndarray], budget: float, n: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Our share minus the other's at `budget`, with a 95% percentile interval from resampling the
    (function, instance) pairs both solvers ran."""
    keys = sorted(set(ours) & set(other))
    diff = np.array([np.mean(ours[k] <= budget) - np.mean(other[k] <= budget) for k in keys])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def plot(table: dict[tuple[str, int], dict[str, np.ndarray]], budget_factor: float, path: Path) -> None:
    """COCO-style runtime ECDF: share of (function, instance, target) reached against log10(evals / dim)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({d for _, d in table})
    solvers = list(dict.fromkeys(s for s, _ in table))
    fig, axes = plt.subplots(1, len(dims), figsize=(5.2 * len(dims), 4), squeeze=False, sharey=True)
    for ax, dim in zip(axes[0], dims, strict=True):
        budgets = np.arange(1, int(round(budget_factor * dim)) + 1)  # every evaluation count: exact steps
        for solver in solvers:
            per_problem = table.get((solver, dim), {})
            rows = np.array([per_problem[k] for k in sorted(per_problem)])
            ax.step(np.log10(budgets / dim), ecdf(rows, budgets), where="post", label=solver,
                    lw=2.2 if solver == REFERENCE else 1.4)  # fmt: skip
        n_pairs = len(table.get((solvers[0], dim), {}))
        ax.set_title(f"{SUITE}, d={dim}: {n_pairs} function/instance pairs x {len(TARGETS)} targets", fontsize=9)
        ax.set_xlabel("log10(evaluations / dimension)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of (function, instance, target) reached")
    axes[0][-1].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("coco-experiment", "optuna", "cmaes", "nevergrad", "numpy", "centaur-hpo"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _indices(text: str) -> list[int]:
    """'1-3,7' -> [1, 2, 3, 7]."""
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dimensions", default="5,10")
    parser.add_argument("--instances", default="1-3", help="instances per dimension, e.g. 1-3")
    parser.add_argument("--instances-by-dim", default="", help="per dimension, e.g. '10:1;20:1-2'")
    parser.add_argument("--functions", default="1-24")
    parser.add_argument("--budget", type=float, default=100, help="evaluations per dimension")
    parser.add_argument("--solvers", default=",".join(DEFAULT_SOLVERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/coco_mixint"))
    parser.add_argument("--quiet", action="store_true", help="no line per run")
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    registry = solver_registry()
    names = args.solvers.split(",")
    unknown = [n for n in names if n not in registry]
    if unknown:
        parser.error(f"unknown solver(s) {unknown}; choose from {sorted(registry)}")
    solvers = {n: registry[n] for n in names}
    dims, functions = _indices(args.dimensions), _indices(args.functions)
    by_dim = {int(k): _indices(v) for k, v in (item.split(":") for item in args.instances_by_dim.split(";") if item)}
    problems: list[Problem] = []
    for dim in dims:
        problems += load_problems([dim], by_dim.get(dim, _indices(args.instances)), functions)
    print(
        f"{SUITE}: {len(problems)} problems, dimensions {dims}, solvers {names}, budget {args.budget:g} x d", flush=True
    )

    runs = run_benchmark(problems, solvers, args.budget, args.seed,
                         log=None if args.quiet else (lambda line: print(line, flush=True)))  # fmt: skip
    table = runtime_table(runs, problems)
    factors = [f for f in TABLE_FACTORS if f <= args.budget] or [args.budget]
    share = shares(table, factors)

    print(f"\nECDF share of (function, instance, target) reached, {len(TARGETS)} targets 1e2..1e-8 on f - f_opt")
    header = f"{'solver':20} {'d':>3} " + " ".join(f"{f'{f:g}*d':>8}" for f in factors)
    print(header)
    for solver in names:
        for dim in dims:
            cells = " ".join(f"{share[solver][dim][f]:8.3f}" for f in factors)
            print(f"{solver:20} {dim:3d} {cells}")

    comparisons: list[dict[str, Any]] = []
    if REFERENCE in names:
        print(f"\n{REFERENCE} minus each solver: share difference [95% bootstrap interval over pairs]")
        for other in names:
            if other == REFERENCE:
                continue
            for dim in dims:
                cells = []
                for f in factors:
                    mean, low, high = bootstrap_difference(table[(REFERENCE, dim)], table[(other, dim)], f * dim)
                    tie = low <= 0 <= high
                    comparisons.append({"other": other, "dimension": dim, "factor": f, "difference": mean,
                                        "low": low, "high": high, "tie": tie})  # fmt: skip
                    cells.append(f"{mean:+.3f} [{low:+.3f},{high:+.3f}]{' tie' if tie else '    '}")
                print(
                    f"  vs {other:20} d={dim:<3d} "
                    + "  ".join(f"{f:g}*d: {c}" for f, c in zip(factors, cells, strict=True))
                )

    cpu_by_solver = {n: round(sum(r.cpu_s for r in runs if r.solver == n), 2) for n in names}
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"\nCPU seconds per solver: {cpu_by_solver}")
    print(f"total: {wall:.0f} s wall, {cpu:.0f} s CPU")

    args.out.mkdir(parents=True, exist_ok=True)
    f_opt = {p.id: p.f_opt for p in problems}
    result = {
        "suite": SUITE,
        "settings": {
            "dimensions": dims,
            "functions": functions,
            "instances": {d: by_dim.get(d, _indices(args.instances)) for d in dims},
            "budget_per_dimension": args.budget,
            "seed": args.seed,
            "targets": TARGETS.tolist(),
            "solvers": {n: SOLVERS.get(n, n) for n in names},
        },  # fmt: skip
        "versions": _versions(),
        "shares": {
            s: {str(d): {f"{f:g}": v for f, v in by_f.items()} for d, by_f in v.items()} for s, v in share.items()
        },  # fmt: skip
        "comparisons": comparisons,
        "timing": {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "cpu_s_by_solver": cpu_by_solver},
        "problems": [asdict(p) for p in problems],
        "runs": [
            {
                "problem": r.problem,
                "solver": r.solver,
                "seed": r.seed,
                "budget": r.budget,
                "evaluations": len(r.fvalues),
                "best_minus_fopt": min(r.fvalues) - f_opt[r.problem],
                "cpu_s": round(r.cpu_s, 3),
                "note": r.note,
                "runtimes": [None if math.isinf(t) else int(t) for t in r.runtimes(f_opt[r.problem])],
            }
            for r in runs
        ],  # fmt: skip
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    try:
        plot(table, args.budget, args.out / "ecdf.png")
        print(f"wrote {args.out / 'results.json'} and {args.out / 'ecdf.png'}")
    except ImportError as e:  # matplotlib is an extra (centaur-hpo[report])
        print(f"wrote {args.out / 'results.json'}; no figure ({e})")


if __name__ == "__main__":
    main()
