"""Read the gzip-compressed TSV data sets (header row, last column ``target``)."""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from benchmarks.paths import data_file


@dataclass(frozen=True)
class Table:
    """Feature names, rows of raw string values and the integer target."""

    columns: list[str]
    rows: list[list[str]]
    target: npt.NDArray[np.int64]


def read_tsv_gz(name: str) -> Table:
    """Load ``name`` from the data folder; the last column must be ``target``."""
    with gzip.open(data_file(name), "rt", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader)
        if header[-1] != "target":
            raise ValueError(f"{name}: last column is {header[-1]!r}, expected 'target'")
        rows: list[list[str]] = []
        target: list[int] = []
        for line in reader:
            if not line:
                continue
            rows.append(line[:-1])
            target.append(int(float(line[-1])))
    return Table(header[:-1], rows, np.asarray(target, dtype=np.int64))
