"""ditreduce: token reduction for Diffusion Transformers as torch.export / FX compiler passes."""
from .passes.capture import UnsupportedModelError
from .runtime import ReducedModel, StepTracker, compile_with_reduction
from .schedules import Schedule, ScheduleError, load_schedule

__all__ = ["ReducedModel", "Schedule", "ScheduleError", "StepTracker", "UnsupportedModelError",
           "compile_with_reduction", "load_schedule"]
__version__ = "0.1.0"
