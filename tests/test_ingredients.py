"""Every input format yields the same tensors, lazily; bad files are refused clearly."""

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from helpers import finetunes, make_model, write_hf_folder
from safetensors.torch import save_file

from modelsoup import CheckpointError, StateDictIngredient, materialize, open_ingredient
from modelsoup.checkpoints.files import SafetensorsFile, TorchFile
from modelsoup.checkpoints.folders import ShardedCheckpoint


@pytest.fixture
def sd():
    return finetunes(1)[0]


def _roundtrip_equal(ing, sd):
    got = materialize(ing)
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_safetensors_roundtrip(tmp_path, dtype):
    sd = finetunes(1, dtype=dtype)[0]
    save_file(sd, tmp_path / "a.safetensors")
    ing = open_ingredient(tmp_path / "a.safetensors")
    assert isinstance(ing, SafetensorsFile)
    _roundtrip_equal(ing, sd)


def test_torch_file_roundtrip_and_wrappers(tmp_path, sd):
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"epoch": 3, "state_dict": sd, "optimizer": {"lr": 0.1}}, tmp_path / "l.ckpt")
    torch.save({"model": sd, "step": 10}, tmp_path / "m.pth")
    torch.save({"ema": sd, "step": 10}, tmp_path / "ema.pt")
    for name in ["plain.pt", "l.ckpt", "m.pth"]:
        _roundtrip_equal(open_ingredient(tmp_path / name), sd)
    with pytest.raises(CheckpointError, match=r"ema\.pt.*key='KEY'"):
        open_ingredient(tmp_path / "ema.pt")
    _roundtrip_equal(open_ingredient(tmp_path / "ema.pt", key="ema"), sd)
    with pytest.raises(CheckpointError, match="no key 'nope'"):
        open_ingredient(tmp_path / "ema.pt", key="nope")


def test_legacy_torch_format(tmp_path, sd):
    torch.save(sd, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    ing = open_ingredient(tmp_path / "old.pt")
    assert isinstance(ing, TorchFile) and not ing._mapped
    _roundtrip_equal(ing, sd)


def test_wrapper_prefixes_are_removed(tmp_path, sd):
    torch.save({f"module._orig_mod.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pt")
    save_file({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.safetensors")
    _roundtrip_equal(open_ingredient(tmp_path / "ddp.pt"), sd)
    _roundtrip_equal(open_ingredient(tmp_path / "ddp.safetensors"), sd)


def test_prefix_collision_is_an_error(tmp_path):
    t = torch.zeros(2)
    torch.save({"_orig_mod.w": t, "w": t.clone()}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="both become 'w'"):
        open_ingredient(tmp_path / "c.pt")


def test_ties_are_detected_in_torch_files(tmp_path):
    model = make_model(0, tied=True)
    torch.save(model.state_dict(), tmp_path / "tied.pt")
    ing = open_ingredient(tmp_path / "tied.pt")
    assert ing.layout.aliases == {"head.weight": "embed.weight"}
    assert "head.weight" not in ing.layout.specs
    assert torch.equal(ing.get("head.weight"), model.head.weight)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("shards", [1, 3])
def test_hf_folder_roundtrip(tmp_path, sd, fmt, shards):
    folder = write_hf_folder(tmp_path / "m", sd, shards=shards, fmt=fmt)
    ing = open_ingredient(folder)
    assert isinstance(ing, ShardedCheckpoint)
    _roundtrip_equal(ing, sd)
    if shards > 1:  # the index file itself is also accepted
        index = next(folder.glob("*.index.json"))
        _roundtrip_equal(open_ingredient(index), sd)


def test_folder_without_weights_names_what_it_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*config\.json"):
        open_ingredient(tmp_path / "empty")


def test_index_pointing_at_missing_shard(tmp_path, sd):
    folder = write_hf_folder(tmp_path / "m", sd, shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors is missing"):
        open_ingredient(folder)


def test_index_disagreeing_with_shards(tmp_path, sd):
    folder = write_hf_folder(tmp_path / "m", sd, shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = (
        "model-00002-of-00002.safetensors"
        if index["weight_map"][name].startswith("model-00001")
        else "model-00001-of-00002.safetensors"
    )
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"lists tensor '{name}'"):
        open_ingredient(folder)


def test_chunked_reads_are_slices(tmp_path, sd):
    save_file(sd, tmp_path / "a.safetensors")
    torch.save(sd, tmp_path / "a.pt")
    for ing in [
        open_ingredient(tmp_path / "a.safetensors"),
        open_ingredient(tmp_path / "a.pt"),
        StateDictIngredient(sd),
    ]:
        full = sd["embed.weight"].reshape(-1)
        for a, b in [(0, 5), (5, 30), (30, full.numel()), (7, 7)]:
            assert torch.equal(ing.read("embed.weight", a, b), full[a:b])


def test_reading_does_not_modify_or_hold_files(tmp_path, sd):
    save_file(sd, tmp_path / "a.safetensors")
    before = (tmp_path / "a.safetensors").read_bytes()
    ing = open_ingredient(tmp_path / "a.safetensors")
    x = ing.get("embed.weight")
    x.add_(1)  # the caller owns what it gets
    assert torch.equal(ing.get("embed.weight"), sd["embed.weight"])
    assert (tmp_path / "a.safetensors").read_bytes() == before


# --- damaged files -------------------------------------------------------------------


def _valid_bytes(sd) -> bytes:
    from safetensors.torch import save

    return save(sd)


def test_truncated_safetensors(tmp_path, sd):
    raw = _valid_bytes(sd)
    (tmp_path / "t.safetensors").write_bytes(raw[:-10])
    with pytest.raises(CheckpointError, match=r"t\.safetensors.*truncated or corrupt"):
        open_ingredient(tmp_path / "t.safetensors")


def test_corrupt_safetensors_header(tmp_path, sd):
    raw = bytearray(_valid_bytes(sd))
    raw[10:20] = b"\xff" * 10
    (tmp_path / "h.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="header is not JSON"):
        open_ingredient(tmp_path / "h.safetensors")
    (tmp_path / "n.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        open_ingredient(tmp_path / "n.safetensors")


def test_safetensors_offsets_must_match_shapes(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}
    raw = json.dumps(header).encode()
    (tmp_path / "o.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 12)
    with pytest.raises(CheckpointError, match=r"tensor 'w': float32\[4\] needs 16 bytes"):
        open_ingredient(tmp_path / "o.safetensors")


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path, sd):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": sd, "evil": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused to unpickle.*weights_only"):
        open_ingredient(tmp_path / "evil.pt")
    assert not marker.exists()
    # Raw pickle (legacy-style) of the same payload.
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError):
        open_ingredient(tmp_path / "evil.bin")
    assert not marker.exists()


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match=r"x\.pt: cannot be read"):
        open_ingredient(tmp_path / "x.pt")
    (tmp_path / "x.weird").write_bytes(b"hello world")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        open_ingredient(tmp_path / "x.weird")
    with pytest.raises(CheckpointError, match="no such file"):
        open_ingredient(tmp_path / "nope.safetensors")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        open_ingredient(tmp_path / "list.pt")


def test_pt_pages_are_released_after_reading(tmp_path):
    """Reading every tensor of a mapped .pt must not leave the file resident in RSS."""
    psutil = pytest.importorskip("psutil")
    sd = {f"t{i}": torch.randn(256, 1024) for i in range(64)}  # 64 MiB
    torch.save(sd, tmp_path / "big.pt")
    del sd
    ing = open_ingredient(tmp_path / "big.pt")
    proc = psutil.Process()
    before = proc.memory_info().rss
    for name in ing.layout.specs:
        ing.get(name)
    grown = proc.memory_info().rss - before
    assert grown < 24 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB reading a 64 MiB file"


def test_unknown_path_kind(tmp_path):
    p = Path(tmp_path / "dir.safetensors")
    p.mkdir()
    with pytest.raises(CheckpointError):
        open_ingredient(p)


def test_every_ingredient_class_declares_the_whole_contract():
    """Each class of the library that reads tensors by name (``get``, ``read``,
    ``layout``) declares every member of `Ingredient`, ``origin`` included: callers read
    ``ingredient.origin.folder`` and never probe with getattr, and no class forwards
    unknown attributes (``__getattr__``) to the ingredient it wraps."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "src" / "modelsoup"
    members = {"source", "layout", "files", "origin", "get", "read"}
    checked = 0
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) or "Protocol" in ast.unparse(node.bases):
                continue
            names = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            names |= {t.id for n in node.body if isinstance(n, ast.Assign)
                      for t in n.targets if isinstance(t, ast.Name)}  # fmt: skip
            if not {"get", "read", "layout"} <= names:
                continue
            checked += 1
            assert members <= names, f"{path.name}: {node.name} lacks {members - names}"
            assert "__getattr__" not in names, f"{path.name}: {node.name} forwards attributes"
    assert checked >= 12
    src = "\n".join(p.read_text() for p in root.rglob("*.py"))
    for member in ("folder", "load_files", "base_source", "derivation"):
        assert f'"{member}"' not in src, f"a getattr probe for {member!r} is back"
