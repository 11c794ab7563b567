"""Tools on top of both halves: the benchmarks, the serving stress tests and the built-in demo model."""
