"""Where the benchmark data and results live (never machine-specific absolute paths)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def data_dir() -> Path:
    """``$EF_DATA_DIR`` if set, else ``../shared/data`` next to the repository root."""
    override = os.environ.get("EF_DATA_DIR")
    if override:
        return Path(override).expanduser()
    return REPO_ROOT.parent / "shared" / "data"


def data_file(name: str) -> Path:
    """Path to one data file; a clear error when it is missing."""
    path = data_dir() / name
    if not path.exists():
        raise FileNotFoundError(
            f"benchmark data {name!r} not found at {path}; set EF_DATA_DIR to the folder holding it"
        )
    return path
