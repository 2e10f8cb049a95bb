"""A surrogate of the reference study's task (Karpathy's autoresearch GPT on an H200, 300 s per trial),
fitted on the study's real trials: objective, feasibility (OOM), cost and observation noise."""

from centaur.surrogate.data import DEFAULT_CONFIG, HP_NAMES, TrialsFormatError, file_sha256, load_trials
from centaur.surrogate.features import FEATURE_NAMES, FEATURE_VERSION, physical, snap_config

_MODEL_NAMES = (
    "FitOptions", "NoiseModel", "SurrogateModel", "SurrogateOutcome", "SurrogateVersionError", "fit_surrogate",
)

__all__ = [
    "DEFAULT_CONFIG", "FEATURE_NAMES", "FEATURE_VERSION", "FitOptions", "HP_NAMES", "NoiseModel",
    "SurrogateModel", "SurrogateOutcome", "SurrogateTask", "SurrogateVersionError", "TrialsFormatError",
    "code_trials_analysis", "file_sha256", "fit_surrogate", "format_report", "load_trials", "physical",
    "snap_config", "validate_surrogate",
]


def __getattr__(name: str):  # keep `import centaur.surrogate` free of lightgbm, the task/space and rich imports
    if name in _MODEL_NAMES:
        from centaur.surrogate import model

        return getattr(model, name)
    if name == "SurrogateTask":
        from centaur.surrogate.task import SurrogateTask

        return SurrogateTask
    if name in ("validate_surrogate", "format_report", "code_trials_analysis"):
        from centaur.surrogate import validate

        return getattr(validate, name)
    raise AttributeError(name)
