"""``dvla top``: a live full-screen monitor of one dvlad (GPUs, queue, the selected job's lanes).

Modules, one job each: :mod:`~dvla.top.snapshot` (daemon replies to screen data, pure),
:mod:`~dvla.top.poller` (one poll cycle), :mod:`~dvla.top.render` (rich renderables),
:mod:`~dvla.top.widgets` and :mod:`~dvla.top.screens` (textual), :mod:`~dvla.top.app` (``run_top``).
Imports no torch and no dvlad: it runs on a laptop against a remote daemon.
"""
