"""Choosing one instance per call (pickers) and taking failing instances out (outlier detection)."""

from __future__ import annotations

from .outlier import MAX_EJECTION_TIME, OutlierDetector
from .pickers import (
    NO_PICK_INFO,
    POLICIES,
    LeastRequestPicker,
    LoadStats,
    Picker,
    PickInfo,
    RingHashPicker,
    RoundRobinPicker,
    WeightedRandomPicker,
    make_picker,
)

__all__ = [
    "PickInfo",
    "NO_PICK_INFO",
    "LoadStats",
    "Picker",
    "WeightedRandomPicker",
    "RoundRobinPicker",
    "LeastRequestPicker",
    "RingHashPicker",
    "POLICIES",
    "make_picker",
    "OutlierDetector",
    "MAX_EJECTION_TIME",
]
