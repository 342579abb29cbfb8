"""The SoftTopk temperature schedule of the MaxScore paper: ``t = max(4 - 3 * step / 30000, 1)``, linear in the
optimizer step (40000 steps for the paper's iterative variant), ``t = 1`` at evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moeroute.core.errors import MoeRouteError


@dataclass
class SoftTopkSchedule:
    """Linear from ``start`` to ``end`` over ``steps`` optimizer steps, then ``end``; ``eval_temperature`` in eval
    mode. Call :meth:`step` once per optimizer step; the step count survives checkpoints via
    :meth:`state_dict` (and :class:`moeroute.nn.MaxScoreRouter` keeps it in a buffer of its own ``state_dict``)."""

    start: float = 4.0
    end: float = 1.0
    steps: int = 30000
    eval_temperature: float = 1.0
    step_count: int = 0
    training: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise MoeRouteError(f"schedule steps must be >= 1, got {self.steps}")
        for name in ("start", "end", "eval_temperature"):
            if not getattr(self, name) > 0:
                raise MoeRouteError(f"schedule {name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def paper(cls, stage2: str = "sinkhorn") -> "SoftTopkSchedule":
        """The paper's schedule: 4 -> 1 over 30000 steps, 40000 for the iterative variant."""
        return cls(steps=40000 if stage2 == "iterative" else 30000)

    def temperature_at(self, step: int) -> float:
        """The training temperature after ``step`` optimizer steps."""
        frac = min(max(step, 0) / self.steps, 1.0)
        return self.start + (self.end - self.start) * frac

    @property
    def temperature(self) -> float:
        """The current ``t``: scheduled in training mode, ``eval_temperature`` in eval mode."""
        return self.temperature_at(self.step_count) if self.training else self.eval_temperature

    def step(self, n: int = 1) -> float:
        """Advance ``n`` optimizer steps; returns the new training temperature."""
        self.step_count += int(n)
        return self.temperature_at(self.step_count)

    def train(self, mode: bool = True) -> "SoftTopkSchedule":
        self.training = bool(mode)
        return self

    def eval(self) -> "SoftTopkSchedule":
        return self.train(False)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count, "start": self.start, "end": self.end, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step"])
        self.start = float(state.get("start", self.start))
        self.end = float(state.get("end", self.end))
        self.steps = int(state.get("steps", self.steps))
