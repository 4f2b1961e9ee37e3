"""ditreduce: token reduction for Diffusion Transformers as torch.export / FX compiler passes."""
from .errors import (BackendError, DitreduceError, LayoutError, MethodParamError, ModelCallError, ScheduleError,
                     StateError, UnsupportedModelError)
from .run_state import StepClock, StepClockWarning
from .runtime import ReducedModel, compile_with_reduction
from .schedules import Schedule, load_schedule

__all__ = ["BackendError", "DitreduceError", "LayoutError", "MethodParamError", "ModelCallError", "ReducedModel",
           "Schedule", "ScheduleError", "StateError", "StepClock", "StepClockWarning", "UnsupportedModelError",
           "compile_with_reduction", "load_schedule"]
__version__ = "0.1.0"
