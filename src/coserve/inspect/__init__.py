"""Durable batch inspection: every image of a directory through the CoE, one result row
per image in SQLite, resumable after a kill, exportable to CSV.

    coserve inspect DIR --repo REPO --db results.sqlite [engine options] [--export-csv OUT.csv]
    coserve inspect export --db results.sqlite --csv OUT.csv

The manifest convention (which component type an image is) is in lot.py; the schema and
the durability argument in store.py; the loop in runner.py.
"""

from coserve.inspect.lot import ImageError, LotItem, discover_lot, read_image
from coserve.inspect.runner import InspectSummary, inspect_lot, repository_identity
from coserve.inspect.store import (
    COLUMNS,
    RETRY_KINDS,
    InspectRow,
    ResultStore,
    Status,
    export_csv,
)

__all__ = [
    "COLUMNS",
    "ImageError",
    "InspectRow",
    "InspectSummary",
    "LotItem",
    "RETRY_KINDS",
    "ResultStore",
    "Status",
    "discover_lot",
    "export_csv",
    "inspect_lot",
    "read_image",
    "repository_identity",
]
