"""The check both calibrations run after their generations: every step of the plan was observed."""
from __future__ import annotations

from ..errors import ScheduleError


def check_steps_observed(observed: set[int], num_steps: int) -> None:
    """A ScheduleError when the generations ran fewer steps than the plan (--steps): how many each has and
    the two ways out."""
    unseen = [t for t in range(num_steps) if t not in observed]
    if unseen:
        seen = num_steps - len(unseen)
        raise ScheduleError(
            f"calibrate: the plan has {num_steps} steps (--steps {num_steps}) but generate() ran {seen} of them "
            f"(step{'s' if len(unseen) > 1 else ''} {steps_text(unseen)} never observed); pass --steps {seen} "
            f"(the steps your generations run) or make generate(transformer) run {num_steps} steps")


def steps_text(steps: list[int]) -> str:
    """`3..4` for a contiguous run of steps, else `1, 3, 5`."""
    contiguous = steps == list(range(steps[0], steps[-1] + 1))
    return f"{steps[0]}..{steps[-1]}" if contiguous and len(steps) > 1 else ", ".join(map(str, steps))
