"""Which form a method is told failed trials in: its `failures` option, else what it registered.

The forms, and the view every sampler reads the study through, are in `centaur.methods.failure_view`
(kept apart so that `create_sampler` can put the view around every method without an import circle).
"""

from __future__ import annotations

from centaur.methods.base import MethodContext, MethodError, method_info
from centaur.methods.failure_view import (
    FORMS,
    FailuresTold,
    FailureView,
    as_told,
    is_failure,
    is_success,
    shown,
    told_through_view,
    told_value,
    worst_success,
)

VIEW_FORMS = ("penalty", "constraint", "worst")  # what the `failures` option of a viewed method may say


def failure_form(ctx: MethodContext, method: str, allowed: tuple[str, ...] = VIEW_FORMS) -> str:
    """The form `method` tells failures in: its `failures` option, else what it registered."""
    form = ctx.options.get("failures", method_info(method).failures)
    if form not in allowed:
        raise MethodError(f"{method} option failures must be one of {', '.join(allowed)}, got {form!r}")
    return str(form)


__all__ = [
    "FORMS",
    "VIEW_FORMS",
    "FailureView",
    "FailuresTold",
    "as_told",
    "failure_form",
    "is_failure",
    "is_success",
    "shown",
    "told_through_view",
    "told_value",
    "worst_success",
]
