"""Benchmark and study reports: Markdown and HTML with matplotlib figures and paired statistics."""

from centaur.report.collect import ReportInputError, Run, TrialRecord, runs_from_storage, runs_from_trials_file

__all__ = ["ReportInputError", "Run", "TrialRecord", "build_report", "runs_from_storage", "runs_from_trials_file"]


def __getattr__(name: str):  # matplotlib and scipy load only when a report is built (CLI start-up)
    if name == "build_report":
        from centaur.report.render import build_report

        return build_report
    raise AttributeError(name)
