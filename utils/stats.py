"""Statistics of evaluation results: binomial confidence intervals and summaries over seeds."""

import math


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% (default z) Wilson score interval of a success rate k / n; (0, 1) when n = 0.

    24/50 -> (0.348, 0.615), 0/50 -> (0, 0.071), 50/50 -> (0.929, 1).
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f'wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}')
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends (no rounding residue)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high
