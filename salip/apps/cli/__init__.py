"""The ``salip`` command line (:func:`main`); see :mod:`salip.apps.cli.app`."""

from salip.apps.cli.app import main

__all__ = ["main"]
