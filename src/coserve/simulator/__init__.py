"""The discrete-event simulator: the engine's policies on a virtual clock and a plan's
costs. `simulate(model, requests, config, costs)` returns the same EngineStats as a real
run, in seconds and without tensors."""

from coserve.simulator.labels import LabelSource, RecordedLabels, SampledLabels
from coserve.simulator.simulator import Simulator, simulate

__all__ = ["LabelSource", "RecordedLabels", "SampledLabels", "Simulator", "simulate"]
