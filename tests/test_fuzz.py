"""Fuzzing the readers with hypothesis: random bytes and mutated valid files for
safetensors, PyTorch files and index JSON. Opening and reading them must either work or
raise the project's own error (`SoupError`), never anything else, and never hang.

CI runs a few seconds (``MODELSOUP_FUZZ_EXAMPLES``, default 40 per test); a release check
runs more, e.g. ``MODELSOUP_FUZZ_EXAMPLES=3000 pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

import modelsoup as ms
from modelsoup.checkpoints.layout import SAFETENSORS_DTYPES
from modelsoup.checkpoints.stream import materialize

EXAMPLES = int(os.environ.get("MODELSOUP_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the alarm below bounds each example instead (first torch calls are slow)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("MODELSOUP_FUZZ_RANDOM") is None,  # CI: the same examples
)
SECONDS = 10  # an example taking longer is a hang


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"reading took over {SECONDS} s")


def _sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(3, 5, generator=g),
        "a.bias": torch.randn(5, generator=g).half(),
        "steps": torch.tensor(7),
    }


VALID_SAFETENSORS = save(_sd(), metadata={"format": "pt"})
_buf = io.BytesIO()
torch.save(_sd(), _buf)
VALID_PT = _buf.getvalue()


def _read(path: Path) -> None:
    """Everything a soup does with an ingredient: open it, read every tensor in chunks,
    average it with itself into a file, and read that file back."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS)
    try:
        ing = ms.open_ingredient(path)
        state = materialize(ing)
        for name in ing.layout.names:
            ing.read(name, 0, min(1, ing.layout.spec(name).numel))
        soup = ms.uniform_soup([ing, ms.StateDictIngredient(state)], integers="first")
        out = path.with_name("soup.safetensors")
        ms.save(soup, out)
        again = materialize(ms.open_ingredient(out))
        assert set(again) == set(state)  # what is written exit-0 reads back
    except ms.SoupError:
        pass  # the one acceptable failure: the project's error, with a message
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _check(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x{suffix}"
        path.write_bytes(data)
        _read(path)
        assert path.read_bytes() == data  # never modified


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "cut", "insert", "delete"]),
        st.integers(min_value=0, max_value=10**6),
        st.binary(min_size=1, max_size=16),
    ),
    min_size=1,
    max_size=6,
)


def _mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op, pos, payload in ops:
        if not b:
            b = bytearray(payload)
            continue
        i = pos % len(b)
        if op == "flip":
            b[i] ^= payload[0] or 1
        elif op == "set":
            b[i : i + len(payload)] = payload
        elif op == "cut":
            del b[i:]
        elif op == "insert":
            b[i:i] = payload
        else:
            del b[i : i + len(payload)]
    return bytes(b)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_as_safetensors(data):
    _check(data, ".safetensors")


@FUZZ
@given(st.integers(min_value=0, max_value=2**64 - 1), st.binary(max_size=512))
def test_random_header_lengths(n, rest):
    _check(n.to_bytes(8, "little") + rest, ".safetensors")


@FUZZ
@given(mutations)
def test_mutated_safetensors(ops):
    _check(_mutate(VALID_SAFETENSORS, ops), ".safetensors")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
header_entries = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "F64", "U8", "X"])
        | json_values,
        "shape": st.lists(st.integers(-3, 2**40), max_size=4) | json_values,
        "data_offsets": st.lists(st.integers(-5, 2**40), max_size=3) | json_values,
    },
)


@FUZZ
@given(st.dictionaries(st.text(max_size=10), header_entries | json_values, max_size=4))
def test_structured_safetensors_headers(header):
    text = json.dumps(header).encode()
    _check(len(text).to_bytes(8, "little") + text + bytes(64), ".safetensors")


# The arithmetic of headers: every dtype, shapes with zero, huge (past int64) and many
# dimensions, offsets that match the shape's size or miss it by a byte.
ITEMSIZE = {
    code: torch.empty(0, dtype=dt).element_size() for code, dt in SAFETENSORS_DTYPES.items()
}
dims = st.sampled_from([0, 1, 2, 3, 7]) | st.sampled_from(
    [2**31, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 + 1]
)
tensor_entries = st.tuples(
    st.sampled_from(sorted(SAFETENSORS_DTYPES)),
    st.lists(dims, max_size=6) | st.lists(st.just(1), min_size=60, max_size=70),
    st.sampled_from([0, 0, 0, -1, 1, -(2**63)]),  # bytes off the size the shape needs
)


def _header_file(entries, slack: int) -> bytes:
    header, offset = {}, 0
    for i, (code, shape, delta) in enumerate(entries):
        n = ITEMSIZE[code] * math.prod(shape) + delta
        n = min(max(n, 0), 1 << 16)  # offsets as a writer would, capped to a small file
        header[f"t{i}"] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + b"\x01" * (offset + slack)


@FUZZ
@given(st.lists(tensor_entries, min_size=1, max_size=3), st.sampled_from([0, 0, 1]))
def test_header_shapes_dtypes_and_offsets(entries, slack):
    _check(_header_file(entries, slack), ".safetensors")


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_as_pt(data):
    _check(data, ".pt")


@FUZZ
@given(mutations)
def test_mutated_pt(ops):
    _check(_mutate(VALID_PT, ops), ".pt")


@FUZZ
@given(json_values | st.fixed_dictionaries({"weight_map": json_values}))
def test_index_json(index):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "model-00001-of-00001.safetensors").write_bytes(VALID_SAFETENSORS)
        path = folder / "model.safetensors.index.json"
        path.write_text(json.dumps(index))
        _read(path)
        _read(folder)


@FUZZ
@given(st.dictionaries(st.sampled_from(list(_sd())), st.text(max_size=40), min_size=1))
def test_index_pointing_anywhere(weight_map):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "model-00001-of-00001.safetensors").write_bytes(VALID_SAFETENSORS)
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        _read(folder)


def test_the_valid_seeds_read():
    """The unmutated files read fine: the fuzzers start from real checkpoints."""
    with tempfile.TemporaryDirectory() as d:
        for data, suffix in ((VALID_SAFETENSORS, ".safetensors"), (VALID_PT, ".pt")):
            p = Path(d) / f"ok{suffix}"
            p.write_bytes(data)
            got = materialize(ms.open_ingredient(p))
            for k, v in _sd().items():
                assert torch.equal(got[k], v)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_reader_failure_is_reported_not_swallowed(tmp_path, suffix):
    """_read lets only SoupError through silently: a different exception fails the test."""
    p = tmp_path / f"x{suffix}"
    p.write_bytes(b"garbage")
    with pytest.raises(ms.SoupError):
        materialize(ms.open_ingredient(p))
