"""`analyze --timings` accounts for the whole wall a user waits (issue 20), not only the stages."""

from __future__ import annotations

import time


def whole_wall(stages: dict[str, float], analyze_s: float) -> dict[str, float]:
    """`stages` framed by `start-up` (process start → the first stage: interpreter, imports, settings)
    and `other` (the analysis's own seconds outside any stage: document, heat-map files)."""
    import psutil

    startup = max(0.0, time.time() - analyze_s - psutil.Process().create_time())
    other = max(0.0, analyze_s - sum(stages.values()))
    return {"start-up": round(startup, 3), **stages, "other": round(other, 3)}
