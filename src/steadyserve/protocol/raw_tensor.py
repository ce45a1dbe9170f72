"""The raw tensor codec: :class:`Tensor` ⇄ the flat little-endian bytes of the V2 binary
tensor extension and gRPC's ``raw_input_contents`` / ``raw_output_contents``.

BYTES elements are each a 4-byte little-endian length followed by the bytes; other datatypes are
the flat little-endian array. Every length is checked: a lying size is a 400, never an over-read.
A leaf module (it imports only ``errors`` and ``types``), so that :mod:`.v2`, :mod:`.v2_binary`
and :mod:`.v2_grpc` can all use it without importing each other in a cycle. Pure functions.
"""

from __future__ import annotations

import math
import struct

from steadyserve.errors import InvalidInput
from steadyserve.types import V2_TO_NUMPY, Tensor

_LEN = struct.Struct("<I")


def split_bytes_elements(name: str, raw: bytes, count: int) -> list[bytes]:
    """Parse ``count`` length-prefixed BYTES elements; the buffer must be consumed exactly."""
    out: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    for _ in range(count):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input '{name}': BYTES data is truncated")
        (length,) = _LEN.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input '{name}': BYTES element length {length} exceeds the data")
        out.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(raw):
        raise InvalidInput(f"input '{name}': {len(raw) - offset} unexpected trailing bytes")
    return out


def serialize_bytes_elements(elements: list[bytes]) -> bytes:
    return b"".join(_LEN.pack(len(e)) + e for e in elements)


def tensor_from_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> Tensor:
    count = math.prod(shape)
    if datatype == "BYTES":
        return Tensor(
            name=name, datatype=datatype, shape=shape, data=split_bytes_elements(name, raw, count)
        )
    itemsize = V2_TO_NUMPY[datatype].itemsize
    if len(raw) != count * itemsize:
        raise InvalidInput(
            f"input '{name}': shape {shape} of {datatype} needs {count * itemsize} bytes, "
            f"got {len(raw)}"
        )
    return Tensor(name=name, datatype=datatype, shape=shape, data=bytes(raw))


def tensor_to_raw(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        assert isinstance(tensor.data, list)
        return serialize_bytes_elements(tensor.data)
    assert isinstance(tensor.data, bytes)
    return tensor.data
