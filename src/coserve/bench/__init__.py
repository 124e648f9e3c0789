"""`coserve bench`: several policies (and a real peer) on the same repository, trace,
budget and storage profile in one run, with a table, JSON, a markdown report and plots.

The arrival modes live here, not in the runner, so that the command line's parser can
name them without importing torch."""

# How a bench replays its trace, in the order it runs them.
ARRIVAL_MODES = ("backlog", "trace")
ARRIVAL_MEANINGS = {
    "backlog": "every request submitted at once (the throughput question)",
    "trace": "each request at its arrival offset in the trace (the latency question)",
}
SWEEP_ARRIVALS = "backlog"  # the budget sweep asks how throughput follows the budget
