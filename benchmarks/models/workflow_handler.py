"""The benchmark workflows' handler file.

Every node of the benchmark DAGs is a model (an echo or a sleep .mar), so this file defines
no function; the workflow archiver and TorchServe still require one.
"""
