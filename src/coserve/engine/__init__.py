"""The engine: config, the request loop, results and statistics."""
