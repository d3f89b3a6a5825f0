from .result import EvalResult, recovery, LOWER_IS_BETTER
from .api import evaluate, EvalOptions
from .runners import TaskOptions
from .efficiency import TimingOptions
from .fidelity import fidelity

__all__ = ["EvalResult", "recovery", "LOWER_IS_BETTER", "evaluate", "EvalOptions", "TaskOptions",
           "TimingOptions", "fidelity"]
