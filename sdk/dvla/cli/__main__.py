"""``python -m dvla.cli``: the same as the ``dvla`` script (for environments without its entry point)."""

from dvla.cli.main import main

main()
