"""The exact bytes of encoded states: the stored format is versioned and recovery reads it.

`encode_state` is checked against a plain, uncached rendering of the layout in the
`state.codec` docstring, and the stream's whole state encoding (`ProfileState.to_arrays`
then `encode_state`) against a golden hash of the bytes of many synthetic states.
"""

import hashlib
import struct
import zlib
from collections.abc import Mapping

import numpy as np
import pytest

from hup.features import FeatureState
from hup.incremental import ProfileState
from hup.repeat import RecentItem
from state.codec import decode_state, encode_state
from state.userstate import UserState

_CODES = {"|b1": 1, "|i1": 2, "|u1": 3, "<i2": 4, "<i4": 5, "<i8": 6, "<f4": 7, "<f8": 8}
DTYPES = ["bool", "int8", "uint8", "int16", "int32", "int64", "float32", "float64"]
# sha256 of the concatenated `UserState.encode` bytes of `_profile_states()`.
GOLDEN_STATES_SHA256 = "e07d3eaf03b10fb393beb2f63dcf84be667776a3df073446132ac40e2ad5e32a"


def _reference_encode(arrays: Mapping[str, np.ndarray], model_version: str) -> bytes:
    """The version-1 layout written field by field, as the codec docstring lists it."""
    version = model_version.encode()
    out = bytearray(b"HUPS" + bytes([1, len(version)]) + version)
    out += struct.pack("<H", len(arrays))
    for name, value in arrays.items():
        array = np.asarray(value, dtype=value.dtype.newbyteorder("<"), order="C")
        name_bytes = name.encode()
        out += bytes([len(name_bytes)]) + name_bytes
        out += bytes([_CODES[array.dtype.str], array.ndim])
        out += b"".join(struct.pack("<I", dim) for dim in array.shape)
        out += array.tobytes()
    return bytes(out + struct.pack("<I", zlib.crc32(out)))


def _values(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    size = int(np.prod(shape))
    ramp = np.arange(seed, seed + size)
    if dtype == "bool":
        return (ramp % 3 == 0).reshape(shape)
    if dtype.startswith(("int", "uint")):
        return (ramp * 7919 - 40_000).astype(dtype).reshape(shape)
    return (ramp * 0.37 - 11.5).astype(dtype).reshape(shape)


def _layouts() -> list[dict[str, np.ndarray]]:
    """Synthetic named arrays: every dtype and rank, empty, 0-d, views and foreign layouts."""
    shapes = [(), (0,), (1,), (7,), (3, 4), (2, 0, 5), (2, 3, 4, 5), (300,)]
    layouts = []
    for seed in range(40):
        arrays: dict[str, np.ndarray] = {}
        for k in range(1 + seed % 6):
            dtype = DTYPES[(seed + 3 * k) % len(DTYPES)]
            shape = shapes[(seed * 5 + k) % len(shapes)]
            arrays[f"a{k}-{'é' * (seed % 3)}{'x' * (seed % 50)}"] = _values(dtype, shape, seed + k)
        layouts.append(arrays)
    grid = _values("float64", (6, 8), 1)
    layouts.append(
        {
            "strided": grid[::2, 1::3],
            "transposed": grid.T,
            "fortran": np.asfortranarray(grid),
            "big_endian": grid.astype(">f8"),
            "big_endian_ints": _values("int32", (5,), 2).astype(">i4"),
            "scalar": np.float64(2.5),
            "read_only": np.frombuffer(b"\x01\x02\x03", dtype=np.uint8),
        }
    )
    return layouts


@pytest.mark.parametrize("arrays", _layouts())
@pytest.mark.parametrize("model_version", ["", "hup-v1", "hup-" + "9" * 200])
def test_encode_state_writes_the_documented_layout(
    arrays: dict[str, np.ndarray], model_version: str
) -> None:
    assert encode_state(arrays, model_version) == _reference_encode(arrays, model_version)


def test_repeated_encodings_of_one_layout_are_identical() -> None:
    arrays = _layouts()[5]
    first = encode_state(arrays, "v")
    assert all(encode_state(arrays, "v") == first for _ in range(3))
    assert encode_state(decode_state(first, copy=False), "v") == first


def _profile_state(seed: int) -> ProfileState:
    """A deterministic synthetic state (no random generator: its stream may change)."""
    n_layers, hidden, window = 1 + seed % 4, 3 + seed % 5, 2 + seed % 4
    levels = 1 + seed % 3
    recent = tuple(
        RecentItem(
            item=f"sku-{seed}-{r}{'ü' * (r % 2)}",
            item_id=r * 13 + seed,
            category_ids=tuple(range(r, r + levels)),
            runs=1 + r,
            micro=2 + 3 * r,
            behaviors=r % 8,
            dwell_closed=r * 1.25,
            last_ts=1_700_000_000.0 + seed + r / 8,
        )
        for r in range(seed % 5)
    )
    features = FeatureState(
        has_open=bool(seed % 2),
        item=f"item-{seed}",
        categories=tuple(f"cat-{seed}-{k}" for k in range(levels)),
        item_id=seed,
        category_ids=tuple(range(seed, seed + levels)),
        last_micro_ts=1_700_000_000.5 + seed,
        last_ts=1_700_000_001.0 + seed,
        last_behavior=seed % 4,
        last_gap=seed % 7,
        run_start_ts=1_699_999_990.0 + seed,
        item_gap=seed % 3,
        visit_start_ts=float("nan") if seed % 4 == 0 else 1_699_999_000.0 + seed,
        run_dwell_closed=seed * 0.5,
        run_dwell=seed * 0.75,
        category_start_ts=tuple(1_699_999_900.0 + k for k in range(levels)),
        category_gap=tuple(k + seed % 2 for k in range(levels)),
        category_dwell_closed=tuple(k * 0.125 for k in range(levels)),
        recent=recent,
    )
    counts = np.array([(seed + 2 * k) % (window + 3) for k in range(n_layers)], dtype=np.int64)
    widths = [(seed + k) % 3 * 4 for k in range(n_layers)]
    return ProfileState(
        features=features,
        hidden=_values("float32", (4, n_layers, hidden), seed),
        open_signal=np.arange(seed, seed + n_layers, dtype=np.int64),
        windows=tuple(
            _values("float32", (window, width), seed + k) for k, width in enumerate(widths)
        ),
        window_count=counts,
        applied=seed * 3,
    )


def test_state_bytes_match_the_golden_hash() -> None:
    digest = hashlib.sha256()
    for seed in range(200):
        stored = UserState(
            _profile_state(seed),
            seq_base=seed % 3 * 1000,
            sources=tuple((p, seed * 10 + p) for p in range(seed % 3)),
            last_input=(seed % 4 - 1, seed * 101 - 1),
        )
        data = stored.encode(f"hup-{seed % 2}")
        assert data == _reference_encode(stored.arrays(), f"hup-{seed % 2}")
        digest.update(data)
    assert digest.hexdigest() == GOLDEN_STATES_SHA256
