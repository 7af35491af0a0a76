"""gRPC client stubs generated at test time, with grpcio-tools, from the project's own
.proto files (engine/frontend/grpc/protos): the way a TorchServe user generates them from
TorchServe's files. Nothing generated is committed."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "engine" / "frontend" / "grpc" / "protos"


def generate(out_dir: Path) -> SimpleNamespace:
    """Compile inference.proto and management.proto into ``out_dir``; the modules."""
    import google.rpc
    import grpc_tools
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    includes = [PROTO_DIR, Path(grpc_tools.__file__).parent / "_proto",
                Path(google.rpc.__path__[0]).parent.parent]
    args = ["protoc", *(f"-I{p}" for p in includes), f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}", "inference.proto", "management.proto"]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    sys.path.insert(0, str(out_dir))
    try:
        names = ("inference_pb2", "inference_pb2_grpc", "management_pb2", "management_pb2_grpc")
        return SimpleNamespace(**{n: importlib.import_module(n) for n in names})
    finally:
        sys.path.remove(str(out_dir))
