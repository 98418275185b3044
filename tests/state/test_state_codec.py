"""Tests for state.codec: round-trips, layout size, corruption and version handling."""

import struct
import zlib

import numpy as np
import pytest

from state.codec import (
    CODEC_VERSION,
    MAGIC,
    decode_state,
    encode_state,
    encoded_size,
    encoded_size_of,
    peek_model_version,
)
from state.errors import StateDecodeError, StateVersionError

MODEL_VERSION = "hup-v1"
DTYPES = ["bool", "int8", "uint8", "int16", "int32", "int64", "float32", "float64"]


def _sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


def _roundtrip(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return decode_state(encode_state(arrays, MODEL_VERSION), MODEL_VERSION)


def _assert_same(decoded: dict[str, np.ndarray], original: dict[str, np.ndarray]) -> None:
    assert list(decoded) == list(original)
    for name, array in original.items():
        assert decoded[name].dtype == array.dtype, name
        assert decoded[name].shape == array.shape, name
        np.testing.assert_array_equal(decoded[name], array)


def _reseal(body: bytes) -> bytes:
    """Append a valid checksum so the structural checks behind the CRC are reached."""
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 4), (2, 0, 5), (2, 3, 4, 5)])
def test_roundtrip_every_dtype_and_rank(dtype: str, shape: tuple[int, ...]) -> None:
    original = {"x": _sample(dtype, shape)}
    _assert_same(_roundtrip(original), original)


def test_roundtrip_model_state_with_growing_window(make_state) -> None:
    for n_events in range(50):
        original = make_state(n_events)
        _assert_same(_roundtrip(original), original)


def test_roundtrip_empty_state() -> None:
    assert _roundtrip({}) == {}


def test_names_keep_insertion_order_including_unicode() -> None:
    names = ["zeta", "alpha", "überzug", "m", "a"]
    original = {name: np.arange(i, dtype=np.int32) for i, name in enumerate(names)}
    assert list(_roundtrip(original)) == names


def test_non_contiguous_and_big_endian_inputs_are_normalised() -> None:
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    original = {
        "transposed": base.T,
        "strided": base[::2, ::3],
        "big_endian": np.arange(5, dtype=">i4"),
    }
    decoded = _roundtrip(original)
    for name, array in original.items():
        np.testing.assert_array_equal(decoded[name], array)
    assert decoded["big_endian"].dtype == np.dtype("<i4")


def test_decoded_arrays_are_writable_owned_copies(make_state) -> None:
    data = encode_state(make_state(5), MODEL_VERSION)
    decoded = decode_state(data)
    for array in decoded.values():
        assert array.flags.writeable and array.flags.owndata
        assert array.flags.aligned and array.flags.c_contiguous
    decoded["window"][:] = 0.0
    assert decode_state(data)["window"].any()


def test_encoding_overhead_is_small(make_state) -> None:
    arrays = make_state(10)
    data = encode_state(arrays, MODEL_VERSION)
    overhead = len(data) - sum(array.nbytes for array in arrays.values())
    assert overhead < 64 + 20 * len(arrays)
    # Exactly the documented layout: 12 + M per state, 3 + L + 4 * ndim per array.
    per_array = sum(3 + len(name) + 4 * array.ndim for name, array in arrays.items())
    assert overhead == 12 + len(MODEL_VERSION) + per_array


@pytest.mark.parametrize("version", ["", MODEL_VERSION, "hup-ünïcode"])
def test_encoded_size_is_the_length_of_the_encoding(make_state, version: str) -> None:
    samples = [
        {},
        make_state(0),
        make_state(30),
        {"überzug": _sample("float64", (2, 3, 4)), "s": _sample("bool", ())},
        {"transposed": np.arange(24, dtype=">f8").reshape(4, 6).T},
    ]
    for arrays in samples:
        assert encoded_size(arrays, version) == len(encode_state(arrays, version))


def test_header_layout_is_stable() -> None:
    data = encode_state({"a": np.array([1], dtype=np.uint8)}, "v")
    assert data[:4] == MAGIC
    assert data[4] == CODEC_VERSION
    assert data[5:7] == b"\x01v"
    assert data[7:9] == b"\x01\x00"  # one array, u16 little-endian
    assert data[9:15] == b"\x01a\x03\x01\x01\x00"  # name, dtype code 3 (uint8), ndim 1
    assert data[15:-4] == b"\x00\x00\x01"  # dim (u32 = 1), then one data byte


def test_peek_model_version_reads_only_the_header() -> None:
    data = encode_state({"a": np.zeros(3)}, "hup-2024.05")
    assert peek_model_version(data) == "hup-2024.05"
    assert peek_model_version(data[:20]) == "hup-2024.05"  # arrays and checksum not needed


def test_model_version_mismatch_raises_version_error() -> None:
    data = encode_state({"a": np.zeros(3)}, "hup-v1")
    assert "a" in decode_state(data)  # no expectation: any model version is accepted
    with pytest.raises(StateVersionError, match=r"model version 'hup-v1', expected 'hup-v2'"):
        decode_state(data, expected_model_version="hup-v2")


def test_unknown_codec_version_raises_version_error() -> None:
    data = bytearray(encode_state({"a": np.zeros(3)}, MODEL_VERSION))
    data[4] = CODEC_VERSION + 1
    with pytest.raises(StateVersionError, match="unknown state codec version 2"):
        decode_state(bytes(data))
    with pytest.raises(StateVersionError, match="codec version"):
        peek_model_version(bytes(data))


def test_version_error_is_a_decode_error() -> None:
    # The stream catches StateDecodeError once and resets both kinds of bad state.
    assert issubclass(StateVersionError, StateDecodeError)


def test_every_flipped_byte_is_detected(make_state) -> None:
    data = encode_state(make_state(2), MODEL_VERSION)
    for position in range(len(data)):
        corrupt = bytearray(data)
        corrupt[position] ^= 0xFF
        with pytest.raises(StateDecodeError):
            decode_state(bytes(corrupt))


def test_every_truncation_is_detected(make_state) -> None:
    data = encode_state(make_state(2), MODEL_VERSION)
    for length in range(len(data)):
        with pytest.raises(StateDecodeError, match="truncated|checksum"):
            decode_state(data[:length])


def test_flipped_data_byte_is_reported_as_checksum_mismatch() -> None:
    data = bytearray(encode_state({"a": np.arange(8, dtype=np.int64)}, MODEL_VERSION))
    data[-10] ^= 0x01
    with pytest.raises(StateDecodeError, match="checksum mismatch"):
        decode_state(bytes(data))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated state: 0 bytes"),
        (b"HUP", "truncated state: 3 bytes"),
        (b"PNG\x89" + bytes(40), "bad magic"),
        (b"\x00" * 64, "bad magic"),
        (bytes(np.random.default_rng(1).integers(0, 256, 200, dtype=np.uint8)), "bad magic"),
        (b"HUPS\x01\xff" + bytes(10), "model version needs bytes up to 261"),
        (b"HUPS\x01\x02\xff\xfe" + bytes(10), "model version is not valid UTF-8"),
    ],
)
def test_garbage_raises_decode_error_naming_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(StateDecodeError, match=message):
        decode_state(data)


def test_appended_bytes_are_detected() -> None:
    data = encode_state({"a": np.zeros(2)}, MODEL_VERSION)
    with pytest.raises(StateDecodeError, match="checksum mismatch"):
        decode_state(data + b"\x00")


# The cases below carry a valid checksum, so they exercise the structural checks
# that guard against a buggy encoder rather than against bit rot.
def _header(n_arrays: int) -> bytes:
    return (
        MAGIC
        + bytes([CODEC_VERSION, len(MODEL_VERSION)])
        + MODEL_VERSION.encode()
        + (struct.pack("<H", n_arrays))
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_header(1) + b"\x01a\x09\x00", "unknown dtype code 9"),
        (_header(1) + b"\x01a\x07\x01\x05\x00\x00\x00" + bytes(4), "data of shape \\(5,\\)"),
        (_header(1) + b"\x01a\x07\x02\x05\x00", "dims needs bytes"),
        (_header(2) + b"\x01a\x03\x00\x01", "array #1 name length"),
        (_header(1) + b"\x09ab", "array #0 name, dtype and ndim"),
        (_header(1) + b"\x01a\x03\x00\x01" + b"junk", "4 trailing bytes after the last of 1"),
        (_header(2) + b"\x01a\x03\x00\x01" * 2, "array #1 repeats the name 'a'"),
        (_header(1) + b"\x01\xff\x03\x00\x01", "array #0 name is not valid UTF-8"),
        (_header(0)[:-1], "header and checksum need"),
    ],
)
def test_structural_errors_behind_a_valid_checksum(body: bytes, message: str) -> None:
    with pytest.raises(StateDecodeError, match=message):
        decode_state(_reseal(body))


def test_decode_errors_keep_their_cause() -> None:
    body = _header(1) + b"\x01\xff\x03\x00\x01"
    with pytest.raises(StateDecodeError) as info:
        decode_state(_reseal(body))
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


@pytest.mark.parametrize("dtype", ["float16", "complex64", "uint16", "object", "<U3"])
def test_unsupported_dtype_is_refused_on_encode(dtype: str) -> None:
    with pytest.raises(TypeError, match=f"array 'bad' has dtype {np.dtype(dtype)}"):
        encode_state({"bad": np.zeros(2, dtype=dtype)}, MODEL_VERSION)


@pytest.mark.parametrize(
    ("arrays", "model_version"),
    [
        ({"n" * 256: np.zeros(1)}, MODEL_VERSION),
        ({"a": np.zeros(1)}, "v" * 256),
    ],
)
def test_oversized_fields_are_refused_on_encode(
    arrays: dict[str, np.ndarray], model_version: str
) -> None:
    with pytest.raises(ValueError, match="does not fit the state layout"):
        encode_state(arrays, model_version)


def test_decode_without_copy_gives_read_only_views_of_the_same_values() -> None:
    arrays = {"w": _sample("float32", (3, 5)), "i": _sample("int64", (4,)), "t": np.array(2.5)}
    data = encode_state(arrays, MODEL_VERSION)
    views = decode_state(data, MODEL_VERSION, copy=False)
    for name, value in arrays.items():
        np.testing.assert_array_equal(views[name], value)
        assert not views[name].flags.writeable
    assert decode_state(data, MODEL_VERSION)["w"].flags.writeable


def test_encoded_size_of_sizes_alone_is_the_encoded_length() -> None:
    arrays = {"hidden": _sample("float32", (4, 5, 7)), "s": np.frombuffer("ü".encode(), np.uint8)}
    sizes = [(name, a.ndim, a.nbytes) for name, a in arrays.items()]
    assert encoded_size_of(sizes, MODEL_VERSION) == len(encode_state(arrays, MODEL_VERSION))
