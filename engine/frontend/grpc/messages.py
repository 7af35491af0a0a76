"""The gRPC message and service classes, generated from the .proto files in ``protos/``
when the server first needs them (``grpc.protos_and_services``, from grpcio-tools: the
``grpc`` extra). Nothing generated is kept on disk, so the classes always match the .proto
files and the installed protobuf runtime."""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType

PROTO_DIR = Path(__file__).resolve().parent / "protos"
PROTO_FILES = ("inference.proto", "management.proto", "open_inference.proto")


@lru_cache(maxsize=None)
def load(proto_file: str) -> tuple[ModuleType, ModuleType]:
    """(messages module, services module) of one of :data:`PROTO_FILES`."""
    import grpc  # the grpc extra

    if proto_file not in PROTO_FILES:
        raise ValueError(f"unknown proto file {proto_file!r}")
    # protos_and_services finds .proto files (and their imports) on sys.path
    sys.path.insert(0, str(PROTO_DIR))
    try:
        return grpc.protos_and_services(proto_file)
    finally:
        sys.path.remove(str(PROTO_DIR))
