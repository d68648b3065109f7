"""Writers: formats round-trip, outputs appear atomically, inputs are never touched."""

import json

import pytest
import torch
from helpers import digest, finetunes, make_model, write_hf_folder
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import modelsoup.checkpoints.stream as stream
from modelsoup import (
    SoupError,
    StateDictIngredient,
    materialize,
    open_ingredient,
    save,
    uniform_soup,
)
from modelsoup.checkpoints.save import parse_size


@pytest.fixture
def ings(tmp_path):
    paths = []
    for i, sd in enumerate(finetunes(3)):
        paths.append(tmp_path / f"in{i}.safetensors")
        save_file(sd, paths[-1])
    return [open_ingredient(p) for p in paths]


def test_safetensors_output_is_readable_by_safetensors(tmp_path, ings):
    soup = uniform_soup(ings)
    out = save(soup, tmp_path / "out" / "soup.safetensors", metadata={"note": "x"})
    ref = materialize(soup)
    loaded = load_file(out)
    assert set(loaded) == set(ref)
    assert all(torch.equal(loaded[n], ref[n]) for n in ref)
    with safe_open(out, "pt") as f:
        assert f.metadata() == {"format": "pt", "note": "x"}


def test_ties_roundtrip_through_safetensors_and_torch(tmp_path):
    sds = [make_model(s).state_dict() for s in (0, 1)]
    soup = uniform_soup([StateDictIngredient(sd) for sd in sds])
    st = save(soup, tmp_path / "s.safetensors")
    back = open_ingredient(st)
    assert back.layout.aliases == {"head.weight": "embed.weight"}
    assert "head.weight" not in load_file(st)  # stored once
    pt = save(soup, tmp_path / "s.pt")
    loaded = torch.load(pt, weights_only=True)
    assert loaded["head.weight"].data_ptr() == loaded["embed.weight"].data_ptr()
    model = make_model(5)
    model.load_state_dict(loaded)
    assert model.head.weight is model.embed.weight


def test_existing_output_needs_force(tmp_path, ings):
    out = tmp_path / "soup.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(SoupError, match="exists; pass force=True"):
        save(uniform_soup(ings), out)
    assert out.read_bytes() == b"keep me"
    save(uniform_soup(ings), out, force=True)
    assert open_ingredient(out).layout.specs.keys() == ings[0].layout.specs.keys()


def test_output_is_never_an_input(tmp_path, ings):
    with pytest.raises(SoupError, match="would overwrite the input"):
        save(uniform_soup(ings), ings[1].files[0], force=True)


def test_output_inside_or_over_an_input_folder(tmp_path):
    folders = [write_hf_folder(tmp_path / f"m{i}", sd) for i, sd in enumerate(finetunes(2))]
    soup = uniform_soup([open_ingredient(f) for f in folders])
    with pytest.raises(SoupError, match="would overwrite the input"):
        save(soup, folders[0], template=open_ingredient(folders[0]), force=True)
    with pytest.raises(SoupError, match="inside the input folder"):
        save(soup, folders[1] / "soup.safetensors")
    with pytest.raises(SoupError, match="would overwrite the input"):
        save(soup, tmp_path, template=open_ingredient(folders[0]), force=True)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [_Boom, KeyboardInterrupt])
@pytest.mark.parametrize("kind", ["st", "folder"])
def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch, exc, kind):
    monkeypatch.setattr(stream, "CHUNK_BYTES", 64)
    folders = [write_hf_folder(tmp_path / f"m{i}", sd) for i, sd in enumerate(finetunes(2))]
    hashes = [digest(f) for f in folders]
    ings = [open_ingredient(f) for f in folders]
    soup = uniform_soup(ings)
    calls = {"n": 0}
    real_read = type(soup).read

    def failing_read(self, name, start=0, stop=None):
        calls["n"] += 1
        if calls["n"] == 5:
            raise exc("interrupted mid-write")
        return real_read(self, name, start, stop)

    monkeypatch.setattr(type(soup), "read", failing_read)
    out = tmp_path / "out" / ("soup.safetensors" if kind == "st" else "soup")
    with pytest.raises(exc):
        save(soup, out, template=ings[0], max_shard_size=200)
    assert calls["n"] >= 5  # the failure happened mid-stream (reads run ahead)
    assert not out.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary left behind either
    assert [digest(f) for f in folders] == hashes


def test_failed_replace_keeps_old_output(tmp_path, ings, monkeypatch):
    out = tmp_path / "soup.safetensors"
    out.write_bytes(b"old")
    soup = uniform_soup(ings)
    monkeypatch.setattr(type(soup), "read", lambda *a, **k: (_ for _ in ()).throw(_Boom()))
    with pytest.raises(_Boom):
        save(soup, out, force=True)
    assert out.read_bytes() == b"old"


def test_hf_folder_output_is_sharded_with_index_and_config(tmp_path):
    sds = finetunes(2)
    folders = [write_hf_folder(tmp_path / f"m{i}", sd, shards=2) for i, sd in enumerate(sds)]
    ings = [open_ingredient(f) for f in folders]
    soup = uniform_soup(ings)
    out = save(soup, tmp_path / "soup", template=ings[0], max_shard_size=400)
    files = sorted(p.name for p in out.iterdir())
    assert "config.json" in files and "tokenizer.json" in files
    assert "optimizer.pt" not in files  # training state is not copied
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 1 and all(f.startswith("model-0000") for f in shards)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(sds[0])
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == soup.layout.nbytes
    for f in shards:  # no shard over the limit unless it holds one tensor alone
        st = load_file(out / f)
        assert sum(t.nbytes for t in st.values()) <= 400 or len(st) == 1
    back = materialize(open_ingredient(out))
    ref = materialize(soup)
    assert all(torch.equal(back[n], ref[n]) for n in ref)
    one = save(soup, tmp_path / "soup1", template=ings[0])
    assert (one / "model.safetensors").is_file()
    assert not (one / "model.safetensors.index.json").exists()


def test_folder_output_needs_folder_inputs(tmp_path, ings):
    with pytest.raises(SoupError, match="not one; name the output"):
        save(uniform_soup(ings), tmp_path / "soup", template=ings[0])
    with pytest.raises(SoupError, match="unknown suffix"):
        save(uniform_soup(ings), tmp_path / "soup.npz")


def test_read_only_output_folder(tmp_path, ings):
    import os
    from pathlib import Path

    if os.geteuid() == 0:  # root ignores permission bits; sysfs still refuses new files
        ro = Path("/sys")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
    try:
        with pytest.raises(SoupError, match=r"cannot write .*soup\.safetensors"):
            save(uniform_soup(ings), ro / "soup.safetensors")
    finally:
        if ro != Path("/sys"):
            ro.chmod(0o700)
    assert not (ro / "soup.safetensors").exists()


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("5GB", 5 * 10**9),
        ("500MB", 5 * 10**8),
        ("2GiB", 2 * 2**30),
        ("100", 100),
        (7, 7),
        ("1.5kb", 1500),
    ],
)
def test_parse_size(text, n):
    assert parse_size(text) == n


def test_parse_size_rejects_garbage():
    with pytest.raises(SoupError, match="5GB"):
        parse_size("lots")


def test_a_soup_folder_takes_only_what_loading_needs(tmp_path):
    """Another model's metrics and training state stay behind; config, generation config,
    tokenizer, processor and the code its auto_map names come along."""
    sds = finetunes(2)
    folders = [write_hf_folder(tmp_path / f"m{i}", sd) for i, sd in enumerate(sds)]
    first = folders[0]
    config = {"model_type": "tiny", "auto_map": {"AutoModel": "modeling_tiny.TinyModel"}}
    (first / "config.json").write_text(json.dumps(config))
    wanted = [
        "generation_config.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "merges.txt",
        "preprocessor_config.json",
        "modeling_tiny.py",
    ]
    foreign = [
        "eval_results.json",
        "all_results.json",
        "train_results.json",
        "trainer_state.json",
        "training_args.bin",
        "README.md",
        "helper.py",
        "notes.txt",
    ]
    for name in wanted + foreign:
        (first / name).write_text("{}" if name.endswith(".json") else "x")
    out = save(uniform_soup([open_ingredient(f) for f in folders]), tmp_path / "soup",
               template=open_ingredient(first))  # fmt: skip
    files = {p.name for p in out.iterdir()}
    assert files >= {"config.json", "tokenizer.json", *wanted}
    assert not files & {*foreign, "optimizer.pt"}, files & {*foreign, "optimizer.pt"}
