"""STAND-IN, to be replaced by moeroute's own ``SoftTopkSchedule`` when it lands on main (issue 3).

The SoftTopk temperature ``t = max(start - (start - end) * step / steps, end)`` (the paper: 4 -> 1 over 30000
optimizer steps), with the step as state that survives a checkpoint.
"""

from __future__ import annotations

from typing import Any


class SoftTopkSchedule:
    """Linear temperature schedule of SoftTopk; ``temperature`` is the value for the current ``step``."""

    def __init__(self, start: float = 4.0, end: float = 1.0, steps: int = 30000) -> None:
        self.start, self.end, self.steps = float(start), float(end), int(steps)
        self.step = 0

    @property
    def temperature(self) -> float:
        return max(self.start - (self.start - self.end) * self.step / self.steps, self.end)

    def advance(self) -> None:
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "steps": self.steps, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start, self.end, self.steps = float(state["start"]), float(state["end"]), int(state["steps"])
        self.step = int(state["step"])
