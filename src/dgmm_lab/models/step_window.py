"""The training step's scalars over a window of steps, kept on the device.

Logging each step's loss parts (``self.log``) and checking the loss (``torch.isfinite`` in
an ``if``) cost a host synchronisation per step: on a GPU the step then waits for the
device every time.  Here the scalars are stacked on the device and read once per window:
at Lightning's logging steps (every ``trainer.log_every_n_steps``, where it writes on-step
values, so the latest step's are logged as before) and at an epoch's last batch, before the
epoch's checkpoint.  Every step of the window is checked for non-finite values.
"""

from __future__ import annotations

import torch
from torch import Tensor


class StepWindow:
    """The named scalars (0-d tensors, any float dtype) of each step since the last ``flush``."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.rows: list[list[Tensor]] = []
        self.first_step = 0

    def add(self, step: int, values: dict[str, Tensor]) -> None:
        if not self.rows:
            self.first_step, self.names = step, list(values)
        self.rows.append([v.detach() for v in values.values()])

    def flush(self) -> tuple[dict[str, Tensor], tuple[int, dict[str, float]] | None]:
        """(the latest step's scalars, None), or (empty, (the window's first step with a
        non-finite value, that step's values)); empties the window."""
        rows, self.rows = self.rows, []
        finite = torch.stack([torch.stack([torch.isfinite(v) for v in row]).all() for row in rows])
        if not bool(finite.all()):  # the window's one synchronisation
            i = int((~finite).nonzero()[0])
            return {}, (self.first_step + i, {n: float(v) for n, v in zip(self.names, rows[i])})
        return dict(zip(self.names, rows[-1])), None
