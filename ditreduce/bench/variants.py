"""What the bench times for one configuration: its distinct variants over a run (keys, the variant of each
step) and a caller per variant that runs it as the step it first serves (set_step)."""
from __future__ import annotations

import time

import torch


class StepVariants:
    """Subclasses set reduced (set_step + call), kwargs, steps, keys, per_step, capture_s, then call _warm()."""

    def _warm(self) -> None:
        """Build every variant and run it once (rewrite / compile), timed as compile_s."""
        self.first_step = [self.per_step.index(v) for v in range(len(self.keys))]
        t0 = time.perf_counter()
        with torch.no_grad():
            for v in range(len(self.keys)):
                self.call(v)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        self.compile_s = time.perf_counter() - t0

    def call(self, v: int):
        self.reduced.set_step(self.first_step[v], self.steps)
        try:
            return self.reduced(**self.kwargs)
        finally:
            self.reduced.set_step(None)

    def caller(self, v: int):
        return lambda: self.call(v)

    def call_in_step_order(self, v: int):
        """Variant v's output after every variant that first serves an earlier step, called in step order
        (a stateful method's real chain: dense → prime → match → reduce). `call` alone runs v on whatever state
        the last calls left (the timing loop rotates its order), so two backends are compared on this."""
        out = None
        for u in sorted(range(len(self.keys)), key=self.first_step.__getitem__):
            if self.first_step[u] <= self.first_step[v]:
                out = self.call(u)
        return out
