"""``dvla``: the command line of D-VLA. Each module holds one group of commands; :mod:`.main` joins
them, owns the global options and turns SDK errors into the documented exit codes (:mod:`.exits`)."""

from dvla.cli.main import main

__all__ = ["main"]
