"""`python -m centaur.cli_main` runs the CLI (used by tests that need a real process)."""

from centaur.cli import main

if __name__ == "__main__":
    main()
