"""Versioned, checksummed byte encoding of one user's state (named numpy arrays).

The stream loads, steps and saves every user's state on every event, so the
encoding is a flat struct layout that numpy can read with ``frombuffer``: no
pickle (unsafe on bytes read back from disk), no per-element work.

Layout, codec version 1. Integers are little-endian and unsigned; there is no
padding, so array data is not aligned inside the bytes::

    size          field
    4             magic b"HUPS"
    1             u8  codec version (= CODEC_VERSION)
    1             u8  M = byte length of the model version
    M             model version, UTF-8
    2             u16 N = number of arrays
    N times:
      1           u8  L = byte length of the array name
      L           array name, UTF-8
      1           u8  dtype code (table below)
      1           u8  ndim (0 for a scalar array)
      4 * ndim    u32 dims, outermost first
      size*item   raw little-endian data in C order (nothing for empty arrays)
    4             u32 CRC-32 (zlib.crc32) of every byte before it

dtype codes: 1 bool, 2 int8, 3 uint8, 4 int16, 5 int32, 6 int64, 7 float32,
8 float64.

Overhead is 12 + M bytes per state plus 3 + L + 4 * ndim bytes per array.
Arrays come back in the order they were written.

Decoding checks magic and codec version *before* the checksum, so that a
future layout (which may move or change the checksum) is reported as
``StateVersionError`` rather than as corruption. Any change to the layout
bumps ``CODEC_VERSION``; old bytes are then refused and the stream resets those
users instead of misreading them.
"""

import functools
import math
import struct
import zlib
from collections.abc import Iterable, Mapping

import numpy as np

from state.errors import StateDecodeError, StateVersionError

__all__ = [
    "CODEC_VERSION",
    "MAGIC",
    "decode_state",
    "encode_state",
    "encoded_size",
    "encoded_size_of",
    "peek_model_version",
]

MAGIC = b"HUPS"
CODEC_VERSION = 1

_PREFIX = struct.Struct("<4sBB")  # magic, codec version, model-version length
_COUNT = struct.Struct("<H")
_CRC = struct.Struct("<I")
# The dims of an array record, by ndim (one byte in the layout).
_DIMS = tuple(struct.Struct(f"<{ndim}I") for ndim in range(256))

_DTYPE_BY_CODE: dict[int, np.dtype] = {
    1: np.dtype("|b1"),
    2: np.dtype("|i1"),
    3: np.dtype("|u1"),
    4: np.dtype("<i2"),
    5: np.dtype("<i4"),
    6: np.dtype("<i8"),
    7: np.dtype("<f4"),
    8: np.dtype("<f8"),
}
# Keyed by dtype: dtypes of another byte order ("<f4" vs ">f4") are not equal, so a
# big-endian array misses and is converted.
_CODE_BY_DTYPE: dict[np.dtype, int] = {dtype: code for code, dtype in _DTYPE_BY_CODE.items()}


def encode_state(arrays: Mapping[str, np.ndarray], model_version: str) -> bytes:
    """Encode one user's named arrays into the version-1 layout.

    The stream encodes every changed user's state in every batch, so the bytes are
    one ``b"".join`` of cached header records and the arrays' own buffers: an array
    that is already a C-contiguous little-endian ndarray (the usual case) is not
    copied before the join, and the header bytes of an (array name, dtype, shape)
    are packed once per process (`_array_head`).

    Args:
        arrays: Arrays by name, in the order they should be decoded. Any rank
            (including 0-d) and any shape, with one of the eight supported
            dtypes. Non-contiguous or big-endian arrays are converted.
        model_version: Version of the model that produced the state; decoding
            with another ``expected_model_version`` raises ``StateVersionError``.

    Returns:
        The encoded bytes, ending with a CRC-32 of everything before it.

    Raises:
        TypeError: An array has an unsupported dtype.
        ValueError: A name, the model version, a rank, a dimension or the
            number of arrays exceeds the layout's field widths.
    """
    parts: list[bytes | np.ndarray] = [_state_head(model_version, len(arrays))]
    for name, value in arrays.items():
        array = value
        if (
            type(array) is not np.ndarray
            or not array.flags.c_contiguous
            or array.dtype not in _CODE_BY_DTYPE
        ):
            # Not ascontiguousarray: it turns 0-d arrays into shape (1,).
            array = np.asarray(value, dtype=value.dtype.newbyteorder("<"), order="C")
            if array.dtype not in _CODE_BY_DTYPE:
                supported = ", ".join(str(dtype) for dtype in _DTYPE_BY_CODE.values())
                raise TypeError(f"array {name!r} has dtype {value.dtype}; supported: {supported}")
        parts += (_array_head(name, array.dtype, array.shape), array)
    # bytes.join takes the arrays as the buffers they are (uncopied); numpy's stubs do not
    # declare ndarray a Buffer.
    body = b"".join(parts)  # type: ignore[arg-type]
    return body + _CRC.pack(zlib.crc32(body))


@functools.lru_cache(maxsize=64)
def _state_head(model_version: str, count: int) -> bytes:
    """Magic, codec version, model version and array count: the bytes before the arrays."""
    version_bytes = model_version.encode()
    try:
        return (
            _PREFIX.pack(MAGIC, CODEC_VERSION, len(version_bytes))
            + version_bytes
            + _COUNT.pack(count)
        )
    except struct.error as exc:
        raise ValueError(
            f"model version {model_version!r} ({len(version_bytes)} bytes, max 255) or "
            f"array count {count} (max 65535) does not fit the state layout"
        ) from exc


# Bounded: the stream's states share a few names and dtypes, but their shapes vary
# with the users' histories.
@functools.lru_cache(maxsize=4096)
def _array_head(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The record bytes before an array's data: name, dtype code, ndim and dims."""
    name_bytes = name.encode()
    try:
        return struct.pack(
            f"<B{len(name_bytes)}sBB{len(shape)}I",
            len(name_bytes),
            name_bytes,
            _CODE_BY_DTYPE[dtype],
            len(shape),
            *shape,
        )
    except struct.error as exc:
        raise ValueError(
            f"array {name!r} (name {len(name_bytes)} bytes, shape {shape}) does not "
            "fit the state layout: names max 255 bytes, dims max 2**32 - 1"
        ) from exc


def encoded_size(arrays: Mapping[str, np.ndarray], model_version: str) -> int:
    """The length of ``encode_state(arrays, model_version)``, without encoding anything."""
    return encoded_size_of(
        ((name, value.ndim, value.nbytes) for name, value in arrays.items()), model_version
    )


def encoded_size_of(arrays: Iterable[tuple[str, int, int]], model_version: str) -> int:
    """The length of the encoding of arrays given as (name, ndim, data bytes) only.

    Lets a caller that knows its arrays' sizes check that a state fits in one Kafka
    record without building the arrays (the stream does, per event).
    """
    size = _PREFIX.size + len(model_version.encode()) + _COUNT.size + _CRC.size
    for name, ndim, nbytes in arrays:
        size += 1 + len(name.encode()) + 2 + 4 * ndim + nbytes
    return size


def peek_model_version(data: bytes) -> str:
    """Read the model version from the header without decoding or checksumming the arrays.

    Args:
        data: Bytes produced by ``encode_state``.

    Returns:
        The model version string stored in the header.

    Raises:
        StateVersionError: The codec version byte is unknown.
        StateDecodeError: The header is truncated, has the wrong magic, or is not UTF-8.
    """
    return _read_header(data)[0]


def decode_state(
    data: bytes, expected_model_version: str | None = None, *, copy: bool = True
) -> dict[str, np.ndarray]:
    """Decode bytes produced by ``encode_state`` after verifying their checksum.

    By default the returned arrays are writable, aligned, C-contiguous copies
    that own their memory: mutating them never touches ``data`` or the store it
    came from. With ``copy=False`` they are read-only views of ``data`` (possibly
    unaligned), for a caller that converts them anyway: the stream's loader
    copies each state once, into the form the model steps.

    Args:
        data: Bytes produced by ``encode_state``.
        expected_model_version: If given, the model version the bytes must
            have been written by; ``None`` accepts any model version.
        copy: Return owned copies (True) or read-only views of ``data``.

    Returns:
        Arrays by name, in the order they were encoded.

    Raises:
        StateVersionError: The codec version is unknown or the model version
            differs from ``expected_model_version``.
        StateDecodeError: The bytes are corrupt or truncated (wrong magic, bad
            checksum, bad lengths, unknown dtype code, trailing bytes, ...).
    """
    model_version, offset = _read_header(data)
    end = len(data) - _CRC.size
    if end < offset + _COUNT.size:
        raise StateDecodeError(
            f"truncated state: {len(data)} bytes, header and checksum need "
            f"{offset + _COUNT.size + _CRC.size}"
        )
    (stored_crc,) = _CRC.unpack_from(data, end)
    actual_crc = zlib.crc32(memoryview(data)[:end])
    if stored_crc != actual_crc:
        raise StateDecodeError(
            f"state checksum mismatch (stored {stored_crc:#010x}, computed {actual_crc:#010x}): "
            "bytes are corrupt or truncated"
        )
    if expected_model_version is not None and model_version != expected_model_version:
        raise StateVersionError(
            f"state written by model version {model_version!r}, expected {expected_model_version!r}"
        )
    return _read_arrays(data, offset, end, copy)


def _read_header(data: bytes) -> tuple[str, int]:
    """Check magic and codec version; return the model version and the offset after it."""
    if len(data) < _PREFIX.size:
        raise StateDecodeError(
            f"truncated state: {len(data)} bytes, the header alone needs {_PREFIX.size}"
        )
    magic, codec_version, version_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise StateDecodeError(f"bad magic {magic!r}, expected {MAGIC!r}: not HUP state bytes")
    if codec_version != CODEC_VERSION:
        raise StateVersionError(
            f"unknown state codec version {codec_version}, this build reads {CODEC_VERSION}"
        )
    end = _PREFIX.size + version_len
    if end > len(data):
        raise StateDecodeError(
            f"truncated state: model version needs bytes up to {end}, got {len(data)}"
        )
    try:
        return data[_PREFIX.size : end].decode(), end
    except UnicodeDecodeError as exc:
        raise StateDecodeError("state model version is not valid UTF-8") from exc


def _read_arrays(data: bytes, offset: int, end: int, copy: bool) -> dict[str, np.ndarray]:
    """Parse the array records between ``offset`` and ``end`` (the checksum's offset)."""
    (count,) = _COUNT.unpack_from(data, offset)
    offset += _COUNT.size
    arrays: dict[str, np.ndarray] = {}
    for index in range(count):
        if offset >= end:
            raise _truncated(f"array #{index} name length", offset + 1, end)
        name_end = offset + 1 + data[offset]
        dims_start = name_end + 2  # dtype code and ndim follow the name
        if dims_start > end:
            raise _truncated(f"array #{index} name, dtype and ndim", dims_start, end)
        try:
            name = data[offset + 1 : name_end].decode()
        except UnicodeDecodeError as exc:
            raise StateDecodeError(f"array #{index} name is not valid UTF-8") from exc
        code, ndim = data[name_end], data[name_end + 1]
        dtype = _DTYPE_BY_CODE.get(code)
        if dtype is None:
            raise StateDecodeError(f"array #{index} {name!r} has unknown dtype code {code}")
        data_start = dims_start + 4 * ndim
        if data_start > end:
            raise _truncated(f"array #{index} {name!r} dims", data_start, end)
        shape = _DIMS[ndim].unpack_from(data, dims_start)
        offset = data_start + math.prod(shape) * dtype.itemsize
        if offset > end:
            raise _truncated(f"array #{index} {name!r} data of shape {shape}", offset, end)
        if name in arrays:
            raise StateDecodeError(f"array #{index} repeats the name {name!r}")
        # One constructor call: a view of ``data`` (read-only for bytes), maybe unaligned.
        array = np.ndarray(shape, dtype, data, data_start)
        arrays[name] = array.copy() if copy else array
    if offset != end:
        raise StateDecodeError(f"{end - offset} trailing bytes after the last of {count} arrays")
    return arrays


def _truncated(what: str, needed_end: int, end: int) -> StateDecodeError:
    """Build the error for a record that runs past the checksum's offset."""
    return StateDecodeError(
        f"truncated state: {what} needs bytes up to {needed_end}, payload ends at {end}"
    )
