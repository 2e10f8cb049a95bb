"""Search spaces: extracted from a script, curated, overridable in centaur.toml."""

from centaur.space.constraints import Constraint, ConstraintError
from centaur.space.extract import ScriptError, find_assignments
from centaur.space.params import Param, SearchSpace, SpaceError

__all__ = [
    "Constraint",
    "ConstraintError",
    "Param",
    "ScriptError",
    "SearchSpace",
    "SpaceError",
    "build_space",
    "find_assignments",
    "load_space",
    "reference_space",
]


def __getattr__(name: str):  # build imports config; keep `import centaur.space` light and cycle-free
    if name in ("build_space", "load_space", "reference_space"):
        from centaur.space import build

        return getattr(build, name)
    raise AttributeError(name)
