"""`coserve bench`: several policies (and a real peer) on the same repository, trace,
budget and storage profile in one run, with a table, JSON, a markdown report and plots."""
