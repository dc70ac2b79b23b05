"""Differential-gated progressive learning (DGPL) gate β(c_r) (spec §2.9, §7 D9).

`β = 0` for `0 <= c_r < δ`, `β = 1 - exp(-γ (c_r - δ))` for `δ <= c_r <= 1`, where c_r is the mean linear CKA of
the shallow encoder layers between the snapshots of two consecutive epochs. Values within 1e-6 outside [0, 1]
(CKA round-off) are clamped into it; anything else (and NaN) raises ValueError, as the code errors there.
"""
import math

ROUND_OFF_TOLERANCE = 1e-6


def dgpl_beta(c_r, gamma=10.0, delta=0.2):
    """Seal-loss gate β_t from the representation similarity c_r.

    Args:
        c_r: float or 0-d tensor in [0, 1] (±1e-6). gamma: ramp steepness γ (10). delta: threshold δ (0.2).
    Returns:
        float β in [0, 1): 0 below δ, `1 - exp(-gamma (c_r - delta))` from δ on.
    """
    value = float(c_r)
    if math.isnan(value) or not -ROUND_OFF_TOLERANCE <= value <= 1.0 + ROUND_OFF_TOLERANCE:
        raise ValueError(f'dgpl_beta: c_r must lie in [0, 1] (a CKA value), got {value!r}')
    value = min(max(value, 0.0), 1.0)
    if value < delta:
        return 0.0
    return 1.0 - math.exp(-gamma * (value - delta))
