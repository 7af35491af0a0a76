"""Tensors of the Open Inference Protocol (KServe v2): datatypes, checks, and the binary
layout shared by the REST binary extension and gRPC's raw contents.

A tensor here is a dict ``{"name", "datatype", "shape", "data"}`` with ``data`` a flat
list (JSON numbers, booleans; BYTES elements as ``bytes``). Every check fails with a
:class:`TensorError` that says which tensor and what is wrong (a 400 / INVALID_ARGUMENT).
Binary data is little-endian, row-major; a BYTES element is a 4-byte length, then bytes.
"""

from __future__ import annotations

import json
import math
import struct
from array import array
from typing import Any

# datatype -> (array typecode or struct code, element size, torch dtype name)
DATATYPES: dict[str, tuple[str, int, str]] = {
    "BOOL": ("?", 1, "bool"),
    "UINT8": ("B", 1, "uint8"), "UINT16": ("H", 2, "uint16"),
    "UINT32": ("I", 4, "uint32"), "UINT64": ("Q", 8, "uint64"),
    "INT8": ("b", 1, "int8"), "INT16": ("h", 2, "int16"),
    "INT32": ("i", 4, "int32"), "INT64": ("q", 8, "int64"),
    "FP16": ("e", 2, "float16"), "BF16": ("bf16", 2, "bfloat16"),
    "FP32": ("f", 4, "float32"), "FP64": ("d", 8, "float64"),
    "BYTES": ("bytes", 0, "uint8"),
}
INT_RANGES = {"UINT8": (0, 2**8 - 1), "UINT16": (0, 2**16 - 1), "UINT32": (0, 2**32 - 1),
              "UINT64": (0, 2**64 - 1), "INT8": (-2**7, 2**7 - 1),
              "INT16": (-2**15, 2**15 - 1), "INT32": (-2**31, 2**31 - 1),
              "INT64": (-2**63, 2**63 - 1)}
FLOATS = frozenset({"FP16", "BF16", "FP32", "FP64"})


class TensorError(ValueError):
    """A tensor that does not follow the protocol (the message says how)."""


def element_count(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def check_header(tensor: Any, kind: str = "input") -> tuple[str, str, list[int]]:
    """name, datatype and shape of a tensor description, checked."""
    if not isinstance(tensor, dict):
        raise TensorError(f"each {kind} must be a JSON object, got {type(tensor).__name__}")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise TensorError(f"an {kind} has no name")
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise TensorError(f"{kind} '{name}': unsupported datatype {datatype!r} (one of "
                          f"{', '.join(DATATYPES)})")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise TensorError(f"{kind} '{name}': shape must be a list of non-negative integers, "
                          f"got {shape!r}")
    return name, datatype, shape


def flatten(data: Any) -> list:
    """Nested lists (row-major) -> a flat list; a scalar -> [scalar]."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(x, list) for x in data):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def reshape(flat: list, shape: list[int]) -> Any:
    """A flat list -> nested lists of ``shape`` (row-major); shape [] -> the one element."""
    if not shape:
        return flat[0] if flat else flat
    data = flat
    for dim in reversed(shape[1:]):
        data = [data[i:i + dim] for i in range(0, len(data), dim)] if dim else []
    return data


def check_data(name: str, datatype: str, shape: list[int], data: list) -> list:
    """The flat elements, checked against shape and datatype (BYTES: str -> UTF-8 bytes)."""
    expected = element_count(shape)
    if len(data) != expected:
        raise TensorError(f"input '{name}': shape {shape} needs {expected} elements, "
                          f"got {len(data)}")
    if datatype == "BYTES":
        out = []
        for item in data:
            if isinstance(item, str):
                out.append(item.encode("utf-8"))
            elif isinstance(item, (bytes, bytearray)):
                out.append(bytes(item))
            else:
                raise TensorError(f"input '{name}': BYTES elements must be strings, got "
                                  f"{type(item).__name__}")
        return out
    if datatype == "BOOL":
        if not all(isinstance(x, bool) for x in data):
            raise TensorError(f"input '{name}': BOOL elements must be true or false")
        return data
    if datatype in FLOATS:
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in data):
            raise TensorError(f"input '{name}': {datatype} elements must be numbers")
        return data
    low, high = INT_RANGES[datatype]
    for x in data:
        if not isinstance(x, int) or isinstance(x, bool) or not low <= x <= high:
            raise TensorError(f"input '{name}': {datatype} elements must be integers in "
                              f"[{low}, {high}], got {x!r}")
    return data


def decode_binary(name: str, datatype: str, shape: list[int], raw: bytes) -> list:
    """Binary tensor data -> flat elements."""
    count = element_count(shape)
    code, size, _ = DATATYPES[datatype]
    if datatype == "BYTES":
        out, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise TensorError(f"input '{name}': BYTES data is truncated")
            (n,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + n > len(raw):
                raise TensorError(f"input '{name}': BYTES data is truncated")
            out.append(bytes(raw[pos:pos + n]))
            pos += n
        if len(out) != count:
            raise TensorError(f"input '{name}': shape {shape} needs {count} elements, "
                              f"got {len(out)}")
        return out
    if len(raw) != count * size:
        raise TensorError(f"input '{name}': shape {shape} of {datatype} needs "
                          f"{count * size} bytes, got {len(raw)}")
    if datatype == "BF16":  # the upper half of a float32
        return list(struct.unpack(f"<{count}f", b"".join(
            b"\x00\x00" + raw[i:i + 2] for i in range(0, len(raw), 2))))
    if code in ("?", "e"):
        return list(struct.unpack(f"<{count}{code}", raw))
    values = array(code)
    if values.itemsize != size:  # platforms where 'I' or 'q' differ: use struct
        return list(struct.unpack(f"<{count}{code}", raw))
    values.frombytes(raw)
    if values.itemsize > 1 and struct.pack("=H", 1) != struct.pack("<H", 1):
        values.byteswap()
    return values.tolist()


def encode_binary(datatype: str, data: list) -> bytes:
    """Flat elements -> binary tensor data."""
    if datatype == "BYTES":
        parts = []
        for item in data:
            raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    code, _, _ = DATATYPES[datatype]
    if datatype == "BF16":
        return b"".join(struct.pack("<f", float(x))[2:] for x in data)
    return struct.pack(f"<{len(data)}{code}", *data)


def infer_datatype(data: list) -> str:
    """The v2 datatype of flat Python values (an output a handler made without saying)."""
    kinds = {type(x) for x in data}
    if kinds == {bool}:
        return "BOOL"
    if kinds and kinds <= {int}:
        return "INT64"
    if kinds and kinds <= {int, float}:
        return "FP64"
    return "BYTES" if data else "INT64"


def shape_of(data: Any) -> list[int]:
    """The shape of nested lists (as deep as the first elements go)."""
    shape = []
    while isinstance(data, list):
        shape.append(len(data))
        if not data:
            break
        data = data[0]
    return shape


_TORCH_TO_V2 = {torch_name: v2 for v2, (_, _, torch_name) in DATATYPES.items()
                if v2 != "BYTES"}


def to_tensor(name: str, item: Any) -> dict:
    """A Python value as an output tensor: a torch tensor or numpy array keeps its dtype
    and shape; nested lists get the datatype of their values; text and other values are
    one BYTES element."""
    dtype = getattr(item, "dtype", None)
    if dtype is not None and hasattr(item, "tolist"):
        nested = item.tolist()
        shape = [int(d) for d in getattr(item, "shape", shape_of(nested))]
        datatype = _TORCH_TO_V2.get(str(dtype).removeprefix("torch.")) or \
            infer_datatype(flatten(nested))
        return {"name": name, "datatype": datatype, "shape": shape, "data": flatten(nested)}
    if isinstance(item, (bytes, bytearray)):
        item = bytes(item).decode("utf-8", "replace")
    nested = item if isinstance(item, list) else [item]
    flat = flatten(nested)
    datatype = infer_datatype(flat)
    if datatype == "BYTES":
        flat = [x if isinstance(x, str) else json.dumps(x) for x in flat]
    return {"name": name, "datatype": datatype, "shape": shape_of(nested), "data": flat}
