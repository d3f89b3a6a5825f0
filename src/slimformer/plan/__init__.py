"""The planner: the fastest (or smallest) model within a quality budget, searched across every
family with an Optuna study whose trials are recipe runs (see plan/api.py)."""
from .api import PlanOptions, PlanResult, plan, split_task
from .budget import OBJECTIVES, Budget, parse_time

__all__ = ["plan", "PlanOptions", "PlanResult", "Budget", "parse_time", "OBJECTIVES", "split_task"]
