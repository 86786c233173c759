"""Loader for the mpmath Rice reference table ``rice_mpmath.json``.

The table is produced by ``make_rice_reference.py``; see the ``_doc`` entry of the JSON file.
"""

from __future__ import annotations

import json
from pathlib import Path

REFERENCE_PATH = Path(__file__).with_name("rice_mpmath.json")


def load_rice_reference() -> dict[str, list[dict[str, float | str]]]:
    """Return the reference tables with every value converted to a Python float.

    Keys starting with ``_`` (documentation) are returned unchanged.  In each record the field
    ``key`` holds ``float(text)`` (values below the float64 range become ``0.0``) and
    ``key + "_str"`` holds the original decimal string with 25 significant digits.
    """
    raw = json.loads(REFERENCE_PATH.read_text())
    tables: dict[str, list[dict[str, float | str]]] = {}
    for name, value in raw.items():
        if name.startswith("_"):
            tables[name] = value
            continue
        tables[name] = [_convert(record) for record in value]
    return tables


def _convert(record: dict[str, str]) -> dict[str, float | str]:
    converted: dict[str, float | str] = {}
    for key, text in record.items():
        converted[key] = float(text)
        converted[key + "_str"] = text
    return converted
