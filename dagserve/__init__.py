"""dagserve: serve PyTorch models and DAG workflows of them.

Every import name lives under this package: ``dagserve.engine`` (the server),
``dagserve.archiver`` (.mar/.war), ``dagserve.workflows`` (specs) and ``dagserve.handler``
(what model authors import). In the repository those are the top-level folders ``engine/``,
``archiver/`` and ``workflows/``; the build maps them here (see ``setup.py``).
"""

__version__ = "0.1.0"  # the one version string: --version, /api-description, manifests
