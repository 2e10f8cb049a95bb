"""`python -m centaur`: the command line."""

from centaur.cli import main

if __name__ == "__main__":
    main()
