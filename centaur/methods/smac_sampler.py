"""`smac`: SMAC3's hyperparameter-optimization facade (random forest, log expected improvement,
Sobol initial design, 20% random interleaving) driven through ask/tell from inside an Optuna sampler.

The study is the source of truth. Each worker keeps one SMAC instance; before every suggestion it
tells SMAC every finished trial it has not told yet (its own, other workers', the enqueued baseline,
and, after a resume, everything that ran before), so a resumed or joined run continues: the initial
design skips configurations already in the run history and the forest trains on all old trials.

What differs from the reference study's use of SMAC (reference-study.md §2.3, §8.1):
- One evaluation per configuration (`deterministic=True`, intensifier `max_config_calls=1`). A trial
  here is one noisy training run out of a fixed compute budget; SMAC's default racing re-ran
  incumbents on new seeds, and 72% of the reference's SMAC trials were such repeats. The forest
  already averages noise over nearby points, and the final "best" is a single draw either way.
- `n_trials` is not SMAC's business: the study loop stops on the compute budget, so the scenario's
  trial limit is set out of reach and the initial design is sized explicitly: Sobol points fill the
  study up to `n_init` finished trials (default min(10 per parameter, 25), and at most a quarter of
  `n_trials` when the caller knows its trial budget, as SMAC's facades cap it: an Optuna or Ray Tune
  study of 30 trials gets 7 Sobol points, not 25); the baseline and trials that ran before SMAC joined
  count, so SMAC does not spend its design on a study that has data.
- The model is retrained before every suggestion (`retrain_after=1`): trials are minutes long, so
  fitting ten trees on a few hundred points costs nothing next to using the newest result.
- Failures are told with the study's penalty and their class: oom -> MEMORYOUT, timeout -> TIMEOUT,
  crash/diverged/invalid -> CRASHED (the forest learns from all three with the penalty as cost).
- A pruned trial (Optuna PRUNED, stopped by the study's pruner) is told as a failure, CRASHED, with its
  last reported intermediate value as its cost, not the penalty: the pruner stopped it for being worse
  than the others at that step, and an early value is higher than the final one it would have reached,
  so the forest learns the region is bad without the penalty's distortion. Its time is its real cost.
- pow2 parameters are modelled as their integer exponent (the Optuna parameter `log2(NAME)`), so
  what SMAC models is exactly what ran.

Direction: the study's direction is read; a maximised study's values are negated into SMAC's cost
(`centaur tune` always minimises, negating a maximised metric itself). A trial is told with the values
it ran with: when they differ from SMAC's proposal (an enqueued point, a value Optuna sampled
independently because it lay outside the distribution the program asked for), SMAC is told the
configuration that ran, never the one it proposed. A trial without every parameter of the space
(a conditional parameter it did not suggest) is not told. One lock per sampler serialises ask and tell,
so `study.optimize(n_jobs=k)` threads share one SMAC safely. SMAC's files go to `output_dir`, or to a
temporary folder that is removed by `close()` or when the sampler is garbage-collected.

Parallel workers: each worker's SMAC asks for new configurations; a configuration that another
trial of the study is running, waiting to run, or has finished is skipped (asked again), so no
configuration is proposed twice. A skipped configuration is left to the trial that runs it.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import tempfile
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from centaur.methods.base import (
    STATUS_ATTR,
    MethodContext,
    MethodError,
    fresh_seed,
    minimising_sign,
    register,
    reject_unknown_options,
    require_single_objective,
    seeded_random_value,
)
from centaur.space import Param, SearchSpace
from centaur.study import optuna_private as op

if TYPE_CHECKING:
    from ConfigSpace import Configuration, ConfigurationSpace

log = logging.getLogger(__name__)

ORIGIN_ATTR = "smac:origin"  # trial system attribute: SMAC's origin of the configuration
PROPOSAL_ATTR = "smac:proposal"  # trial system attribute: the claim written before parameters are set
_TOLD = (TrialState.COMPLETE, TrialState.PRUNED)  # the finished trials SMAC learns from (lost ones never ran)
UNREACHABLE_TRIALS = 10**9  # the study loop, not SMAC, decides when to stop
MAX_DUPLICATE_ASKS = 50
OPTIONS = {"n_init", "random_ratio", "n_trees", "n_trials"}


def configspace_of(space: SearchSpace, seed: int = 0) -> ConfigurationSpace:
    """The ConfigSpace of `space`, with one hyperparameter per Optuna parameter (same names, same values)."""
    from ConfigSpace import ConfigurationSpace

    cs = ConfigurationSpace(seed=seed)
    cs.add([_hyperparameter(p) for p in space])
    return cs


def configuration_of(cs: ConfigurationSpace, space: SearchSpace, params: dict[str, Any]) -> Configuration | None:
    """The SMAC configuration of a trial's Optuna parameters; None if they lie outside `cs`.

    ConfigSpace rounds float values to 13 decimals for display and equality; the vector that the
    forest models is computed from the exact values that ran.
    """
    from ConfigSpace import Configuration

    try:
        values = {p.key: params[p.key] for p in space}
        checked = Configuration(cs, values=values)  # raises for a value outside the space
    except (KeyError, ValueError, TypeError):
        return None
    vector = checked.get_array().copy()
    for key, value in values.items():
        vector[cs.index_of[key]] = cs[key].to_vector(value)
    return Configuration(cs, vector=vector)


def _hyperparameter(p: Param) -> Any:
    from ConfigSpace import Categorical, Constant, Float, Integer

    if p.kind == "categorical":
        if len(p.choices) == 1:
            return Constant(p.key, p.choices[0])
        default = p.default if p.default in p.choices else None
        return Categorical(p.key, list(p.choices), default=default)
    if p.kind == "pow2":
        lo, hi = int(math.log2(p.low)), int(math.log2(p.high))
        default = p.encode(p.default) if p.contains(p.default) else None
    elif p.kind == "int":
        lo, hi = int(p.low), int(p.high)
        default = int(p.default) if p.contains(p.default) else None
    else:
        lo, hi = float(p.low), float(p.high)
        default = float(p.default) if p.contains(p.default) else None
    if lo == hi:
        return Constant(p.key, lo)
    if p.kind == "float":
        return Float(p.key, (lo, hi), default=default, log=p.log)
    return Integer(p.key, (lo, hi), default=default, log=p.log and p.kind == "int")


def _forest(scenario: Any, n_trees: int) -> Any:
    """The facade's random forest with two speed fixes that leave the model the same: one thread (with
    ten trees on a few hundred points, joblib's thread pool only adds waiting), and no leaf cap
    instead of a cap of 2**20 leaves (which makes scikit-learn's best-first builder spend ~0.2 s per
    tree preparing for a million leaves; trees this small never reach it)."""
    from smac.model.random_forest import RandomForest

    return RandomForest(
        scenario.configspace,
        log_y=True,
        n_trees=n_trees,
        ratio_features=1.0,
        min_samples_split=2,
        min_samples_leaf=1,
        max_depth=2**20,
        max_leaf_nodes=None,
        bootstrapping=True,
        seed=scenario.seed,
        n_jobs=1,
    )


def _smac_status(status: str) -> Any:
    from smac.runhistory import StatusType

    return {"ok": StatusType.SUCCESS, "oom": StatusType.MEMORYOUT, "timeout": StatusType.TIMEOUT}.get(
        status, StatusType.CRASHED
    )


def _not_called(config: Any, seed: int = 0) -> float:
    raise RuntimeError("the smac sampler runs trials through the study loop, not through SMAC")


class SmacSampler(BaseSampler):
    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        *,
        penalty: float = 100.0,
        n_init: int | None = None,
        random_ratio: float = 0.2,
        n_trees: int = 10,
        n_trials: int | None = None,
        output_dir: Path | None = None,
    ) -> None:
        if len(space) == 0:
            raise MethodError("smac needs at least one parameter to tune")
        if n_init is not None and n_init < 0:
            raise MethodError(f"smac option n_init must be >= 0, got {n_init}")
        if not 0.0 <= random_ratio <= 1.0:
            raise MethodError(f"smac option random_ratio must be in [0, 1], got {random_ratio}")
        if n_trees < 1:
            raise MethodError(f"smac option n_trees must be >= 1, got {n_trees}")
        if n_trials is not None and n_trials < 1:
            raise MethodError(f"smac option n_trials must be >= 1, got {n_trials}")
        self.space, self.seed, self.penalty = space, seed, float(penalty)
        # How many finished trials (the baseline included) before the forest takes over. SMAC's own rule
        # is 10 per parameter, capped at a quarter of its trial budget; a compute budget has no trial
        # count, so cap at 25, the Sobol points the reference's 100-trial scenario gave it, and at a
        # quarter of `n_trials` when the caller gives one.
        self.n_init = min(10 * len(space), 25) if n_init is None else int(n_init)
        if n_init is None and n_trials is not None:
            self.n_init = min(self.n_init, max(1, n_trials // 4))
        self.random_ratio, self.n_trees = float(random_ratio), int(n_trees)
        self.name = "smac"
        self._output_root = output_dir
        self._tmp_root: str | None = None
        self._cleanup: weakref.finalize | None = None
        self._lock = threading.RLock()  # SMAC's ask is a generator: one caller at a time
        self._study_key: tuple[str, int] | None = None
        self._smac: Any = None
        self._cs: ConfigurationSpace | None = None
        self._told: set[int] = set()  # trial numbers SMAC has been told (or that had nothing to tell)
        self._asked: dict[int, Any] = {}  # trial number -> SMAC TrialInfo, for trials this worker asked
        self._seed_key: int | None = None  # the one seed SMAC's deterministic intensifier uses
        self._reseeded = False  # reseed_rng() was called: SMAC's design points no longer continue one sequence

    def __repr__(self) -> str:
        return f"smac(seed={self.seed})"

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without SMAC's instance, lock and temporary folder: a copy rebuilds SMAC from the study."""
        state = self.__dict__.copy()
        state.update(_lock=None, _smac=None, _study_key=None, _tmp_root=None, _cleanup=None)
        state.update(_told=set(), _asked={}, _seed_key=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- SMAC instance -----------------------------------------------------------------------------
    def _facade(self, study: optuna.Study) -> Any:
        key = (study.study_name, op.study_id(study))
        if self._smac is not None and self._study_key == key:
            return self._smac
        from ConfigSpace import Constant
        from smac import HyperparameterOptimizationFacade as HPO
        from smac import Scenario

        for name in ("smac", "ConfigSpace"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self._cs = configspace_of(self.space, self.seed)
        # The initial design fills the study up to n_init finished trials: the baseline counts, and so
        # do trials another method ran before SMAC joined; SMAC's own design points do not (a resumed
        # run continues the same Sobol sequence, skipping the points that already ran). After a reseed
        # the sequence is another one, so its earlier points count like any other trial.
        finished = study.get_trials(deepcopy=False, states=_TOLD)
        prior = sum(1 for t in finished if self._reseeded or not _is_design_point(t))
        tunable = any(not isinstance(hp, Constant) for hp in self._cs.values())
        n_design = max(0, self.n_init - prior) if tunable else 0  # Sobol needs one free dimension
        scenario = Scenario(
            self._cs,
            name=f"{study.study_name}-{socket.gethostname()}-{os.getpid()}",
            output_directory=self._output_dir(),
            deterministic=True,
            n_trials=UNREACHABLE_TRIALS,
            use_default_config=False,  # the script's defaults run as trial 0 (the baseline) and are told
            seed=self.seed,
        )
        self._smac = HPO(
            scenario,
            _not_called,
            model=_forest(scenario, self.n_trees),
            initial_design=HPO.get_initial_design(scenario, n_configs=n_design),
            random_design=HPO.get_random_design(scenario, probability=self.random_ratio),
            intensifier=HPO.get_intensifier(scenario, max_config_calls=1),
            config_selector=HPO.get_config_selector(scenario, retrain_after=1),
            logging_level=False,
            overwrite=True,  # never prompt; the study, not SMAC's files, holds the state
        )
        self._study_key = key
        self._told.clear()
        self._asked.clear()
        self._seed_key = None
        return self._smac

    def _output_dir(self) -> Path:
        if self._output_root is not None:
            return Path(self._output_root)
        if self._tmp_root is None:
            self._tmp_root = tempfile.mkdtemp(prefix="centaur-smac-")
            # Removed when the sampler is collected or the interpreter exits, if close() was not called.
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._tmp_root, ignore_errors=True)
        return Path(self._tmp_root)

    def close(self) -> None:
        """Remove SMAC's output when it went to a temporary directory."""
        with self._lock:
            if self._cleanup is not None:
                self._cleanup()
                self._cleanup = None
            self._tmp_root = None
            self._smac = None
            self._study_key = None

    # -- study -> SMAC -----------------------------------------------------------------------------
    def _config(self, params: dict[str, Any]) -> Configuration | None:
        assert self._cs is not None
        return configuration_of(self._cs, self.space, params)

    def _sync(self, study: optuna.Study, current: int) -> None:
        """Tell SMAC every finished trial it has not been told, in trial order."""
        from smac.runhistory import TrialInfo, TrialValue

        smac = self._smac
        sign = minimising_sign(study)
        told_any = False
        for t in sorted(study.get_trials(deepcopy=False, states=_TOLD), key=lambda t: t.number):
            if t.number in self._told or t.number == current:
                continue  # running or waiting trials are told when finished; lost ones (FAIL) never ran
            self._told.add(t.number)
            info = self._asked.pop(t.number, None)
            if info is not None and any(_python(info.config[p.key]) != t.params.get(p.key) for p in self.space):
                info = None  # it did not run SMAC's proposal: tell SMAC what ran
            if info is None:
                config = self._config(t.params)
                if config is None:
                    log.debug("trial %d lies outside the smac space; not told", t.number)
                    continue
                seed = self._seed_key if self._seed_key is not None else 0
                info = TrialInfo(config=config, seed=seed)
            status = str(t.user_attrs.get(STATUS_ATTR, "ok"))
            ok = t.state == TrialState.COMPLETE and status == "ok" and t.value is not None and math.isfinite(t.value)
            cost = sign * float(t.value) if ok else self.penalty  # type: ignore[arg-type]
            if t.state == TrialState.PRUNED:  # its last reported value (Optuna's value of a pruned trial)
                status = "pruned"
                last = t.user_attrs.get("pruned_value", t.value)
                cost = sign * float(last) if isinstance(last, (int, float)) and math.isfinite(last) else self.penalty
            spent = float(t.user_attrs.get("cost_s", 0.0))
            smac.tell(info, TrialValue(cost=cost, time=spent, status=_smac_status("ok" if ok else status)), save=False)
            told_any = True
        if told_any:
            smac.optimizer.save()

    def _taken(self, study: optuna.Study, trial: FrozenTrial, params: dict[str, Any]) -> bool:
        """Whether another trial of the study has these parameters, counting proposals not yet started.

        Optuna's storages have no atomic claim, so this worker first writes its proposal, then reads
        the study: a claim by a lower-numbered trial, or by a trial that already ran, runs or waits
        with its parameters set, wins; a higher-numbered trial still sampling sees our claim and
        yields. Two workers could still pick the same point within the few milliseconds between
        another's read and its parameter writes.
        """
        states = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED)
        for t in study.get_trials(deepcopy=False, states=states):
            if t.number == trial.number:
                continue
            other = t.params or t.system_attrs.get("fixed_params") or t.system_attrs.get(PROPOSAL_ATTR)
            if not other or any(other.get(key) != value for key, value in params.items()):
                continue
            if t.number < trial.number or t.state != TrialState.RUNNING or t.params:
                return True
        return False

    # -- Optuna sampler interface ------------------------------------------------------------------
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        require_single_objective(study, self.name)
        return self.space.distributions()

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        require_single_objective(study, self.name)
        if trial.system_attrs.get("fixed_params") or not search_space:
            return {}  # an enqueued point (the baseline, a retry): it runs as given and is told when done
        with self._lock:
            params = self._sample(study, trial)
        return {k: v for k, v in params.items() if k in search_space}

    def _sample(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        from smac.main.exceptions import ConfigurationSpaceExhaustedException

        smac = self._facade(study)
        self._sync(study, trial.number)
        storage = op.storage_of(study)
        for _ in range(MAX_DUPLICATE_ASKS):
            try:
                info = smac.ask()
            except (StopIteration, ConfigurationSpaceExhaustedException):  # e.g. a small discrete space, all run
                log.warning("smac proposed nothing new for trial %d; sampling it at random", trial.number)
                self._smac = None  # its generator is spent: rebuild from the study next time
                return {}
            if self._seed_key is None:
                self._seed_key = info.seed
            params = {p.key: _python(info.config[p.key]) for p in self.space}
            storage.set_trial_system_attr(op.trial_id(trial), PROPOSAL_ATTR, params)
            if not self._taken(study, trial, params):
                break
            # Another trial has this configuration: its result will be told when it finishes.
        else:
            log.warning(
                "smac kept proposing configurations other trials hold; trial %d samples at random", trial.number
            )
            return {}
        self._asked[trial.number] = info
        storage.set_trial_system_attr(op.trial_id(trial), ORIGIN_ATTR, str(info.config.origin))
        return params

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        require_single_objective(study, self.name)
        return seeded_random_value(study, trial, self.seed, param_name, param_distribution)

    def reseed_rng(self) -> None:
        # SMAC draws from its own generators, seeded once when it is built: it is rebuilt from the study
        # with the new seed at the next proposal (as a resumed run rebuilds it).
        with self._lock:
            self.seed = fresh_seed(self.seed)
            self._smac, self._study_key, self._reseeded = None, None, True


def _is_design_point(t: FrozenTrial) -> bool:
    return str(t.system_attrs.get(ORIGIN_ATTR, "")).startswith("Initial Design")


def _python(value: Any) -> Any:
    """numpy scalars from ConfigSpace -> plain Python values for Optuna's storage."""
    return value.item() if hasattr(value, "item") else value


@register("smac", "SMAC3 HPO facade (random forest, log-EI), one evaluation per configuration; state from the study")
def smac_sampler(ctx: MethodContext) -> BaseSampler:
    reject_unknown_options(ctx.options, OPTIONS, "smac")
    try:
        import smac  # noqa: F401
    except ImportError as e:
        raise MethodError(f"the smac method needs SMAC3: pip install 'centaur-hpo[smac]' ({e})") from None
    opts = {
        name: _option(ctx.options, name, kind)
        for name, kind in (("n_init", int), ("random_ratio", float), ("n_trees", int), ("n_trials", int))
    }
    return SmacSampler(
        ctx.space,
        ctx.seed,
        penalty=ctx.penalty,
        n_init=opts["n_init"],
        random_ratio=0.2 if opts["random_ratio"] is None else opts["random_ratio"],
        n_trees=10 if opts["n_trees"] is None else opts["n_trees"],
        n_trials=opts["n_trials"],
        output_dir=Path(ctx.run_dir) / "smac" if ctx.run_dir is not None else None,
    )


def _option(options: dict[str, Any], name: str, kind: type) -> Any:
    if options.get(name) is None:
        return None
    try:
        return kind(options[name])
    except (TypeError, ValueError):
        raise MethodError(f"smac option {name} must be a {kind.__name__}, got {options[name]!r}") from None
