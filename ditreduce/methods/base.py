from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..regions import Selection

METHODS: dict[str, type["Method"]] = {}


def register_method(cls: type["Method"]) -> type["Method"]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type["Method"]:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; allowed: {sorted(METHODS)}") from None


class Method:
    """Contract every reduction method follows.

    name         the schedule's `method:` value
    reduces_q    True: q and k/v are reduced and outputs reconstructed; False: only k/v (ToDo-style)
    static       True: the selection depends only on (lattice, k); it is computed once at rewrite time
                 and baked into the graph as constants. False: `select` runs inside the graph on a
                 token tensor, and may carry `state` across denoising steps as explicit tensors.
    """

    name: ClassVar[str]
    reduces_q: ClassVar[bool] = True
    static: ClassVar[bool] = True

    def __init__(self, **params: Any):
        if params:
            raise TypeError(f"method {self.name!r} takes no parameters, got {sorted(params)}")

    def select(self, x: torch.Tensor | None, lattice: tuple[int, ...], k: int, state=None) -> tuple[Selection, Any]:
        raise NotImplementedError
