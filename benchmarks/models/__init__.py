"""Handlers packed into the benchmark archives at run time (see ``benchmarks.artifacts``).

They are plain TorchServe function handlers, so the same .mar files load in dagserve and in
TorchServe."""
