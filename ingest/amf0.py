"""AMF0 (Action Message Format 0), the encoding of RTMP's commands.

Only what RTMP command messages carry: numbers, booleans, strings, objects,
null and undefined, ECMA and strict arrays, dates (read as numbers). Input is
bounded by the message it came in; a malformed value raises
:class:`AmfError`.
"""

from __future__ import annotations

import struct
from typing import Any

NUMBER, BOOLEAN, STRING, OBJECT, NULL, UNDEFINED = 0x00, 0x01, 0x02, 0x03, 0x05, 0x06
ECMA_ARRAY, OBJECT_END, STRICT_ARRAY, DATE, LONG_STRING = 0x08, 0x09, 0x0A, 0x0B, 0x0C
MAX_DEPTH = 8

_double = struct.Struct("!d")


class AmfError(ValueError):
    """A value that is not valid AMF0, or one we do not read."""


def decode_all(data: bytes) -> list[Any]:
    """Every value in ``data``, in order."""
    values = []
    pos = 0
    while pos < len(data):
        value, pos = _decode(data, pos, 0)
        values.append(value)
    return values


def _need(data: bytes, pos: int, n: int) -> None:
    if pos + n > len(data):
        raise AmfError("truncated AMF0 value")


def _string(data: bytes, pos: int, size_bytes: int) -> tuple[str, int]:
    _need(data, pos, size_bytes)
    size = int.from_bytes(data[pos : pos + size_bytes], "big")
    pos += size_bytes
    _need(data, pos, size)
    return data[pos : pos + size].decode("utf-8", errors="replace"), pos + size


def _properties(data: bytes, pos: int, depth: int) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {}
    while True:
        key, pos = _string(data, pos, 2)
        _need(data, pos, 1)
        if key == "" and data[pos] == OBJECT_END:
            return result, pos + 1
        result[key], pos = _decode(data, pos, depth + 1)


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise AmfError("AMF0 value nested too deeply")
    _need(data, pos, 1)
    marker = data[pos]
    pos += 1
    if marker == NUMBER:
        _need(data, pos, 8)
        return _double.unpack_from(data, pos)[0], pos + 8
    if marker == BOOLEAN:
        _need(data, pos, 1)
        return data[pos] != 0, pos + 1
    if marker == STRING:
        return _string(data, pos, 2)
    if marker == LONG_STRING:
        return _string(data, pos, 4)
    if marker == OBJECT:
        return _properties(data, pos, depth)
    if marker == ECMA_ARRAY:
        _need(data, pos, 4)
        return _properties(data, pos + 4, depth)
    if marker == STRICT_ARRAY:
        _need(data, pos, 4)
        count = int.from_bytes(data[pos : pos + 4], "big")
        pos += 4
        if count > len(data) - pos:
            raise AmfError("AMF0 array longer than its message")
        items = []
        for _ in range(count):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if marker == DATE:
        _need(data, pos, 10)
        return _double.unpack_from(data, pos)[0], pos + 10
    if marker in (NULL, UNDEFINED):
        return None, pos
    raise AmfError(f"AMF0 type {marker:#x} is not read")


def encode(*values: Any) -> bytes:
    return b"".join(_encode(v) for v in values)


def _encode_key(key: str) -> bytes:
    raw = key.encode()
    return len(raw).to_bytes(2, "big") + raw


def _encode(value: Any) -> bytes:
    if value is None:
        return bytes([NULL])
    if isinstance(value, bool):
        return bytes([BOOLEAN, 1 if value else 0])
    if isinstance(value, int | float):
        return bytes([NUMBER]) + _double.pack(float(value))
    if isinstance(value, str):
        raw = value.encode()
        if len(raw) > 0xFFFF:
            return bytes([LONG_STRING]) + len(raw).to_bytes(4, "big") + raw
        return bytes([STRING]) + len(raw).to_bytes(2, "big") + raw
    if isinstance(value, dict):
        body = b"".join(_encode_key(k) + _encode(v) for k, v in value.items())
        return bytes([OBJECT]) + body + b"\x00\x00" + bytes([OBJECT_END])
    if isinstance(value, list | tuple):
        return bytes([STRICT_ARRAY]) + len(value).to_bytes(4, "big") + b"".join(map(_encode, value))
    raise AmfError(f"cannot encode {type(value).__name__} as AMF0")


__all__ = ["AmfError", "decode_all", "encode"]
