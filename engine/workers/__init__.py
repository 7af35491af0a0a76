"""Worker processes: spawning, the frame protocol, batching, and the worker entry point."""
