"""The planner: executors per processor and each device's memory split between expert
weights and activations, by a decay-window search evaluated with the simulator."""

from coserve.planner.planner import (
           Candidate,
           MemoryPlan,
           Planner,
           confirm,
           default_executor_options,
)
from coserve.planner.search import SearchResult, decay_window_search

__all__ = ["Candidate", "MemoryPlan", "Planner", "SearchResult", "confirm",
           "decay_window_search", "default_executor_options"]
