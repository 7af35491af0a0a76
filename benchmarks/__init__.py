"""dagserve's benchmark suite: a load generator, the scenarios of the "Benchmark suite" issue,
and the writer of ``benchmarks/RESULTS.md``. Run it with ``python -m benchmarks.run``."""
