"""ditreduce: token reduction for Diffusion Transformers as torch.export / FX compiler passes."""
from .errors import (BackendError, DitreduceError, LayoutError, MethodParamError, ModelCallError, NotAModelError,
                     ScheduleError, StateError, UnsupportedModelError)
from .pipelines import apply, remove
from .run_state import RunLengthWarning, StepClock, StepClockWarning
from .runtime import ReducedModel, compile_with_reduction
from .schedules import Schedule, load_schedule

__all__ = ["BackendError", "DitreduceError", "LayoutError", "MethodParamError", "ModelCallError", "NotAModelError",
           "ReducedModel", "RunLengthWarning", "Schedule", "ScheduleError", "StateError", "StepClock",
           "StepClockWarning", "UnsupportedModelError", "apply", "compile_with_reduction", "load_onnx", "load_schedule",
           "load_tensorrt", "remove"]
__version__ = "0.1.0"


def __getattr__(name):
    """load_onnx / load_tensorrt, imported on first use (onnx and tensorrt are optional extras)."""
    if name in ("load_onnx", "load_tensorrt"):
        from . import backends

        return getattr(backends, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
