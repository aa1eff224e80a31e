"""Divergence watch: stop a run whose loss blows up instead of training on and tabulating garbage.

The trainer checks every logged value for NaN/inf (bioplaus.train.check_finite). This adds two checks on a
finite but exploding loss, both against the reference `ref` = |loss of the first update| (the loss at
initialisation, floored at FLOOR so a near-zero start cannot make the test hair-trigger):

    growth   any update's loss, or an epoch's mean loss, above `factor` x ref
    chance   from the `chance_after`-th finished epoch on, test accuracy at chance (<= 1/C + CHANCE_MARGIN for C
             classes; classification only) while the epoch's mean loss is above `chance_factor` x ref

Either raises DivergedError (status `diverged` in sweeps, exit 2, one line with the lr / grad_clip advice).
Settings: `trainer.divergence: {factor: 1000, chance_after: 2, chance_factor: 10}`; any field null switches
that check off, `trainer.divergence: null` both. Rules keep their own checks (EP's relaxation residual).
The reference is part of the checkpoint (`state()` / `load_state()`), so a resumed run checks the same numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from bioplaus.errors import ConfigError, DivergedError

FLOOR = 1e-2
CHANCE_MARGIN = 0.05
DEFAULTS = {"factor": 1000.0, "chance_after": 2, "chance_factor": 10.0}
ADVICE = "lower the learning rate (trainer.optimizer.lr) or set trainer.grad_clip"


def _opt(d: dict, key: str, kind, low: float):
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and float(v) != int(v)):
        raise ConfigError(f"trainer.divergence.{key} must be a number (or null for off), got {v!r}")
    if not v >= low:
        raise ConfigError(f"trainer.divergence.{key} must be >= {low:g} (or null for off), got {v}")
    return kind(v)


@dataclass
class Divergence:
    """The two checks' settings and the reference loss (None until the first update logged a finite loss)."""

    factor: float | None = 1000.0
    chance_after: int | None = 2
    chance_factor: float | None = 10.0
    ref: float | None = None

    @classmethod
    def from_config(cls, d) -> Divergence:
        """From `trainer.divergence` (a mapping, or None = off); unknown keys and bad values are ConfigErrors."""
        if d is None or d is False:
            return cls(None, None, None)
        if not isinstance(d, dict):
            raise ConfigError(f"trainer.divergence must be a mapping {{factor, chance_after, chance_factor}} "
                              f"or null, got {d!r}")
        unknown = set(d) - set(DEFAULTS)
        if unknown:
            raise ConfigError(f"unknown trainer.divergence key(s) {', '.join(sorted(unknown))}: "
                              "use factor, chance_after, chance_factor")
        d = {**DEFAULTS, **d}
        return cls(_opt(d, "factor", float, 1.0), _opt(d, "chance_after", int, 1), _opt(d, "chance_factor", float, 1.0))

    def state(self) -> dict:
        return {"ref": self.ref}

    def load_state(self, state: dict | None) -> None:
        if state:
            self.ref = state.get("ref")

    def _limit(self, factor: float | None) -> float:
        return math.inf if factor is None or self.ref is None else factor * max(self.ref, FLOOR)

    def update(self, logs: dict, epoch: int, step: int) -> None:
        """After one update's logs: set the reference on the first finite loss, then the growth check."""
        loss = logs.get("loss")
        if not isinstance(loss, float) or not math.isfinite(loss):
            return
        if self.ref is None:
            self.ref = abs(loss)
        elif abs(loss) > self._limit(self.factor):
            raise DivergedError(f"training diverged at epoch {epoch} step {step}: loss {loss:.3g} is over "
                                f"{self.factor:g}x the first update's {self.ref:.3g} (trainer.divergence.factor); "
                                + ADVICE)

    def epoch_end(self, row: dict, epochs_done: int, n_classes: int, task: str) -> None:
        """After an epoch's row (loss = the epoch's mean, test_acc): growth of the mean, then the chance check."""
        loss, acc = row.get("loss"), row.get("test_acc")
        if not isinstance(loss, float) or not math.isfinite(loss):
            return
        epoch = row.get("epoch", epochs_done - 1)
        if abs(loss) > self._limit(self.factor):
            raise DivergedError(f"training diverged in epoch {epoch}: mean loss {loss:.3g} is over {self.factor:g}x "
                                f"the first update's {self.ref:.3g} (trainer.divergence.factor); " + ADVICE)
        if self.chance_after is None or epochs_done < self.chance_after or task != "classify" or acc is None:
            return
        chance = 1.0 / max(n_classes, 1)
        if acc <= chance + CHANCE_MARGIN and abs(loss) > self._limit(self.chance_factor):
            raise DivergedError(f"training diverged: after {epochs_done} epochs test accuracy {acc:.3f} is at "
                                f"chance ({chance:.3f}) and the mean loss {loss:.3g} is over {self.chance_factor:g}x "
                                f"the first update's {self.ref:.3g} (trainer.divergence.chance_factor); " + ADVICE)
