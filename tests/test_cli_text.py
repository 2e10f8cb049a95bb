"""No command's output loses text to Rich markup: user text with brackets ("[space.params.lr]",
"[runner] command", a study named "lr[0.1]") is printed as written by `centaur space`, `tune`, `status`,
`best` and the errors."""

from __future__ import annotations

import textwrap

from typer.testing import CliRunner

from centaur.cli import app


def _run(*args: str):
    return CliRunner().invoke(app, list(args), terminal_width=80)


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_space_hint_keeps_its_table_name(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("LEARNING_RATE = 0.1\nWARMUP_STEPS = -1\nprint('val_bpb: 1.0')\n")
    result = _run("space", str(script))
    assert result.exit_code == 0, result.output
    assert "add [space.params.WARMUP_STEPS]" in _flat(result.output)


def test_errors_keep_section_names(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("LEARNING_RATE = 0.1\nprint('val_bpb: 1.0')\n")
    (tmp_path / "centaur.toml").write_text('[runner]\ncommand = "python {scrpt}"\n')
    result = _run("space", str(script))
    assert result.exit_code == 2
    assert "[runner] command" in _flat(result.output) and "{scrpt}" in result.output


def test_tune_status_and_best_keep_bracketed_names(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        LEARNING_RATE = 0.1
        def main():
            DROPOUT = 0.1  # unverifiable: the note names it
            print(f"val_bpb: {1.0 + LEARNING_RATE + DROPOUT}")
        main()
    """))
    runs = str(tmp_path / "runs")
    name = "lr[0.1]"
    result = _run("tune", str(script), "-m", "random", "--n-trials", "2", "--run-dir", runs, "--study-name", name)
    assert result.exit_code == 0, result.output
    assert name in result.output
    status = _run("status", "--run-dir", runs)
    assert status.exit_code == 0, status.output
    assert name in status.output and "0 of 2 ok (2 unverified)" in _flat(status.output)
    best = _run("best", "--study-name", name, "--run-dir", runs)
    assert best.exit_code == 0, best.output
    assert "unverified: DROPOUT: assigned inside a function or class" in _flat(best.output)


def test_help_texts_keep_section_names():
    result = _run("tune", "--help")
    text = _flat(result.output.replace("│", " "))  # the help's panel borders
    assert result.exit_code == 0
    assert "needs [task] progress" in text and "[task] fidelity" in text and "[tracking] wandb_mode" in text


def test_methods_list_every_method_with_its_summary_wrapped_under_itself():
    from centaur.methods import available_methods

    result = _run("methods")
    assert result.exit_code == 0, result.output
    lines = result.output.rstrip("\n").splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines)
    starts = [line.split()[0] for line in lines if not line.startswith(" ")]
    assert starts == list(available_methods())  # continuation lines are indented, never flush left
