"""The calibrated constants of the engine (``calibration.json``, written by ``lineage bench``).

``auto``: its components and their noise σ, the linearisation cut-off, the decision threshold and
scale. ``taylor_alpha``: the scale α of each Taylor similarity's correction. ``open_set``: each
single method's "no parent" margin threshold (used by the benchmark's open-set table).
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def _read() -> dict:
    return json.loads(resources.files("app.engine").joinpath("calibration.json").read_text())


def load_calibration() -> dict:
    """A copy of the calibrated constants (callers may change theirs freely)."""
    return copy.deepcopy(_read())


# The reference code's scale of the Taylor correction, used until the benchmark calibrates one.
REFERENCE_TAYLOR_ALPHA = 0.01


def taylor_alpha(similarity: str, calibration: dict | None = None) -> float:
    """The calibrated scale α of the Taylor correction for ``similarity`` (in ``calibration``,
    default the shipped constants)."""
    source = _read() if calibration is None else calibration
    return float(source.get("taylor_alpha", {}).get(similarity, REFERENCE_TAYLOR_ALPHA))
