"""ditreduce: token reduction for Diffusion Transformers as torch.export / FX compiler passes."""
from .errors import (BackendError, DitreduceError, LayoutError, MethodParamError, ModelCallError, ScheduleError,
                     StateError, UnsupportedModelError)
from .runtime import ReducedModel, StepTracker, compile_with_reduction
from .schedules import Schedule, load_schedule

__all__ = ["BackendError", "DitreduceError", "LayoutError", "MethodParamError", "ModelCallError", "ReducedModel",
           "Schedule", "ScheduleError", "StateError", "StepTracker", "UnsupportedModelError",
           "compile_with_reduction", "load_schedule"]
__version__ = "0.1.0"
