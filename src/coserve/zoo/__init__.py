"""Generated CoE model repositories (the model zoo) for tests, demos and benchmarks."""
