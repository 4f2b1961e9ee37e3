"""The named errors: every error ditreduce raises on purpose derives from DitreduceError.

Each also derives from the builtin a caller would catch before the family existed (ValueError for bad
input, RuntimeError for a model or a run that cannot go on, TypeError for a call that does not fit), so
`except ValueError` keeps working. A message names the field or model, what is allowed and the way out.
"""
from __future__ import annotations


class DitreduceError(Exception):
    """Base of every named ditreduce error."""


class ScheduleError(DitreduceError, ValueError):
    """A schedule that does not validate, or a run it cannot serve. The message names the field path."""


class MethodParamError(DitreduceError, ValueError):
    """A method parameter the method does not take, or of the wrong type / value."""


class LayoutError(DitreduceError, ValueError):
    """A layout override or lattice hint that does not fit the model's shapes."""


class UnsupportedModelError(DitreduceError, RuntimeError):
    """The model cannot be captured or rewritten; the message says which model and why."""


class ModelCallError(DitreduceError, TypeError):
    """The call does not fit the model: arguments its forward does not take, or the model's own error on them."""


class NotAModelError(DitreduceError, TypeError):
    """compile_with_reduction / apply got something that is not what they wrap (a pipeline where the transformer
    goes, a reduced model again, not a module); the message names what to pass instead."""


class StateError(DitreduceError, RuntimeError):
    """Method state across steps (DiTo's previous outputs / correspondences) missing or of the wrong shape."""


class BackendError(DitreduceError, ValueError):
    """A backend name, an exported artefact or a call that a backend cannot run; the message says the way out."""


class BenchError(DitreduceError, ValueError):
    """A bench request that cannot run as asked; the message says which field and what is allowed."""


class BenchModelError(DitreduceError, ValueError):
    """A model spec that cannot be built; the message names the spec and the accepted spellings."""


__all__ = ["BackendError", "BenchError", "BenchModelError", "DitreduceError", "LayoutError", "MethodParamError",
           "ModelCallError", "NotAModelError", "ScheduleError", "StateError", "UnsupportedModelError"]
