"""The fidelity study (issue 7): plan, run, summarise and publish many runs of a few experiment grids.

One job per module: :mod:`.plan` (expand and de-duplicate the grids, prepare their data),
:mod:`.runner` (the process pool that runs ``train.py`` per point), :mod:`.summary` (the runs' table),
:mod:`.env` (hardware and versions), :mod:`.publish` (pack the results into a tarball, publish the
committed files from one) and :mod:`.cli` (``smet-fidelity``).
"""

from __future__ import annotations

from smet.errors import SmetConfigError


class FidelityError(SmetConfigError):
    """Bad input: one line (``key: message``), exit code 2."""
