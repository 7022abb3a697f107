"""The package's commands (``[project.scripts]`` in pyproject.toml).

A command's module is imported before anything it runs can say what is missing, so each one
here imports its implementation late: without the ``web`` extra, ``ef-traffic`` says which
extra to install instead of a traceback from starlette's import.
"""

from __future__ import annotations

import sys

__all__ = ["traffic"]


def traffic(argv: list[str] | None = None) -> int:
    """``ef-traffic``: simulated visitors for a running site (:mod:`ef_middleware.web.traffic`)."""
    try:
        from .web.traffic import main
    except ImportError as exc:
        print(f"ef-traffic needs the web extra: pip install 'ef-middleware[web]' ({exc})",
              file=sys.stderr)
        return 2
    return main(argv)
