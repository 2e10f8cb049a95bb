"""The README's commands and CI's run of them stay in step: CI runs what a new user reads."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import click
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from readme_commands import readme_commands  # noqa: E402


def _parse(command: str) -> click.Context:
    """Parse a `centaur ...` line with the real CLI, without running it."""
    from centaur.cli import app

    words = shlex.split(command)
    assert words[0] == "centaur", command
    group = typer.main.get_command(app)
    sub = group.get_command(click.Context(group), words[1])
    assert sub is not None, f"no command {words[1]!r}: {command}"
    return sub.make_context(words[1], words[2:])


def test_the_readme_marks_its_setup_main_job_tests_and_surrogate_commands() -> None:
    blocks = readme_commands()
    assert set(blocks) >= {"setup", "main-job", "tests", "surrogate"}
    assert blocks["setup"] == ["scripts/setup && . .venv/bin/activate"]
    (main_job,) = blocks["main-job"]
    ctx = _parse(main_job)
    assert ctx.params["script"] == "gpt" and ctx.params["budget"]
    assert _parse(main_job + " --budget 2m").params["budget"] == "2m"  # CI's shorter budget wins
    for line in blocks["surrogate"]:
        _parse(line)
    assert blocks["tests"][0] == "python -m pytest -q"


def test_ci_runs_the_readme_job_and_the_readme_test_command() -> None:
    run = (REPO / ".ci" / "run").read_text()
    job = (REPO / ".ci" / "readme_job").read_text()
    assert ".ci/readme_job" in run
    assert re.search(r'readme_commands\.py"? main-job', job) and re.search(r'readme_commands\.py"? surrogate', job)
    assert "centaur status" in job and "n_ok >= 1" in job
    test_cmd = readme_commands()["tests"][0]
    assert test_cmd in run  # CI's test command is the README's, with extra flags at most
    # CI sets up as the README does, plus the local LLM, so that the real-LLM tests run instead of skipping
    setup = readme_commands()["setup"][0].split(" && ")[0]
    assert re.search(rf"^{re.escape(setup)} --llm \.ci-venv$", run, re.MULTILINE)


def test_setup_takes_the_llm_option_and_refuses_unknown_ones() -> None:
    import subprocess

    usage = subprocess.run([str(REPO / "scripts" / "setup"), "--help"], capture_output=True, text=True, check=False)
    assert usage.returncode == 0 and "scripts/setup [--llm] [VENV]" in usage.stdout
    bad = subprocess.run([str(REPO / "scripts" / "setup"), "--lm"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "unknown option --lm" in bad.stderr
