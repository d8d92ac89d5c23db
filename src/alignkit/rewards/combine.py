"""Composite reward: a weighted sum of named components (lecture section 3)."""

from __future__ import annotations

import math


def combine(components: dict[str, float | None], weights: dict[str, float]) -> float:
    """R = sum_k w_k * R_k over the components named in ``weights``.

    Every weighted component must be present and finite; a component without a weight is an error too
    (it would silently not count). A component whose value is None is "not applicable" to this sample (TRL's
    convention): it is left out of the sum, weight and all.

    >>> combine({"accuracy": 1.0, "format": 1.0, "style": 0.5}, {"accuracy": 1, "format": 1, "style": 1})
    2.5
    >>> round(combine({"acc": 1.0, "eleg": 0.8, "eff": 0.9, "expl": 0.7},
    ...               {"acc": 0.4, "eleg": 0.3, "eff": 0.2, "expl": 0.1}), 10)
    0.89
    >>> combine({"accuracy": 1.0, "code": None}, {"accuracy": 1.0, "code": 2.0})
    1.0
    """
    missing = sorted(set(weights) - set(components))
    if missing:
        raise KeyError(f"reward components missing for weights: {', '.join(missing)}")
    unweighted = sorted(set(components) - set(weights))
    if unweighted:
        raise KeyError(f"reward components without a weight: {', '.join(unweighted)} (give them weight 0 to log only)")
    total = 0.0
    for name, w in weights.items():
        if components[name] is None:
            continue
        value = float(components[name])
        if not math.isfinite(value):
            raise ValueError(f"reward component {name!r} is not finite: {value}")
        total += float(w) * value
    return total
