"""A corpus of bad inputs, each run through the command line: every one must exit 2 with
a message naming what is wrong (the file, the tensor) and the fix, leave no output (not
even a temporary file) and leave every input byte-identical."""

from __future__ import annotations

import json
import math
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import digest
from safetensors.torch import save_file

from modelsoup.cli import main

Built = tuple[list[str], list[Path], Path | None]


@dataclass
class Case:
    name: str
    build: Callable[[Path], Built]  # -> argv, the inputs to hash, the output path
    expect: list[str]  # substrings of the error message
    extra_check: Callable[[Path], None] | None = field(default=None)


def _sd(seed: int = 0, **over: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"body.weight": torch.randn(4, 4, generator=g), "head.bias": torch.randn(3, generator=g)}
    sd.update(over)
    return sd


def _pair(tmp: Path, second: dict | None = None, suffix=".safetensors") -> list[Path]:
    a, b = tmp / f"a{suffix}", tmp / f"b{suffix}"
    for p, sd in ((a, _sd(0)), (b, second if second is not None else _sd(1))):
        if suffix == ".safetensors":
            save_file(sd, p)
        else:
            torch.save(sd, p)
    return [a, b]


def uniform(*extra: str) -> Callable[[Path], Built]:
    """`modelsoup uniform a b -o out` with a normal pair of inputs."""

    def build(tmp: Path) -> Built:
        ins = _pair(tmp)
        out = tmp / "soup.safetensors"
        return ["uniform", *map(str, ins), "-o", str(out), *extra], ins, out

    return build


def uniform_with(second: Callable[[], dict]) -> Callable[[Path], Built]:
    def build(tmp: Path) -> Built:
        ins = _pair(tmp, second())
        out = tmp / "soup.safetensors"
        return ["uniform", *map(str, ins), "-o", str(out)], ins, out

    return build


def broken_file(mutate: Callable[[bytes], bytes]) -> Callable[[Path], Built]:
    def build(tmp: Path) -> Built:
        ins = _pair(tmp)
        ins[1].write_bytes(mutate(ins[1].read_bytes()))
        out = tmp / "soup.safetensors"
        return ["uniform", *map(str, ins), "-o", str(out)], ins, out

    return build


def _corrupt_header(raw: bytes) -> bytes:
    n = struct.unpack("<Q", raw[:8])[0]
    return raw[:8] + b"{" + b"x" * (n - 1) + raw[8 + n :]


def _huge_header(raw: bytes) -> bytes:
    return struct.pack("<Q", 10**15) + raw[8:]


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def evil_pickle(tmp: Path) -> Built:
    ins = _pair(tmp, suffix=".pt")
    marker = tmp / "pwned"
    with open(ins[1], "wb") as f:
        pickle.dump({"body.weight": _Payload(str(marker))}, f)
    out = tmp / "soup.safetensors"
    return ["uniform", *map(str, ins), "-o", str(out)], ins, out


def _no_marker(tmp: Path) -> None:
    assert not (tmp / "pwned").exists(), "the pickle's code ran"


def not_a_state_dict(tmp: Path) -> Built:
    ins = _pair(tmp, suffix=".pt")
    torch.save(["just", "strings"], ins[1])
    return ["uniform", *map(str, ins), "-o", str(tmp / "s.safetensors")], ins, tmp / "s.safetensors"


def index(content: str | None, shard: bool = True) -> Callable[[Path], Built]:
    """An HF folder whose index is ``content`` (None: pointing at a missing shard)."""

    def build(tmp: Path) -> Built:
        ins = _pair(tmp)
        folder = tmp / "hf"
        folder.mkdir()
        if shard:
            save_file(_sd(2), folder / "model-00001-of-00002.safetensors")
        text = content or json.dumps(
            {
                "weight_map": {
                    "body.weight": "model-00001-of-00002.safetensors",
                    "head.bias": "model-00002-of-00002.safetensors",
                }
            }
        )
        (folder / "model.safetensors.index.json").write_text(text)
        out = tmp / "soup.safetensors"
        return ["uniform", str(ins[0]), str(folder), "-o", str(out)], [*ins, folder], out

    return build


def same_path_twice(spelling: str) -> Callable[[Path], Built]:
    def build(tmp: Path) -> Built:
        ins = _pair(tmp)
        other = {"same": str(ins[0]), "dotted": str(ins[0].parent / "." / ins[0].name)}[spelling]
        out = tmp / "soup.safetensors"
        return ["uniform", str(ins[0]), other, "-o", str(out)], ins, out

    return build


def output_is_input(tmp: Path) -> Built:
    ins = _pair(tmp)
    return ["uniform", *map(str, ins), "-o", str(ins[1]), "--force"], ins, None


def output_exists(tmp: Path) -> Built:
    ins = _pair(tmp)
    out = tmp / "old.safetensors"
    save_file(_sd(5), out)  # not to be touched without --force
    return ["uniform", *map(str, ins), "-o", str(out)], [*ins, out], None


def read_only_output(tmp: Path) -> Built:
    import os

    ins = _pair(tmp)
    if os.geteuid() == 0:  # root ignores permission bits; sysfs refuses new files
        out = Path("/sys/soup.safetensors")
    else:
        ro = tmp / "ro"
        ro.mkdir(mode=0o500)
        out = ro / "soup.safetensors"
    return ["uniform", *map(str, ins), "-o", str(out)], ins, out


def greedy(*extra: str, evaluator: str | None = None) -> Callable[[Path], Built]:
    def build(tmp: Path) -> Built:
        ins = _pair(tmp)
        (tmp / "ev.py").write_text(
            "def boom(sd):\n    raise ValueError('metric exploded')\n"
            "def nan(sd):\n    return float('nan')\n"
            "def text(sd):\n    return 'high'\n"
        )
        out = tmp / "g.safetensors"
        ev = ["--evaluator", f"{tmp / 'ev.py'}:{evaluator}"] if evaluator else []
        return ["greedy", *map(str, ins), "-o", str(out), "-q", *ev, *extra], ins, out

    return build


def one_ingredient(cmd: str) -> Callable[[Path], Built]:
    def build(tmp: Path) -> Built:
        ins = _pair(tmp)[:1]
        out = tmp / "one.safetensors"
        return [cmd, str(ins[0]), "-o", str(out)], ins, out

    return build


def no_ingredients(tmp: Path) -> Built:
    return ["uniform", "-o", str(tmp / "s.safetensors")], [], tmp / "s.safetensors"


def _hf_pair(tmp: Path) -> list[Path]:
    from helpers import write_hf_folder

    return [write_hf_folder(tmp / name, _sd(i)) for i, name in enumerate(["A", "B"])]


def hf_folder_holding(name: str, make: Callable[[Path, Path], None]) -> Callable[[Path], Built]:
    """`modelsoup uniform A B -o soup/` where A's file ``name`` is made by ``make(path,
    tmp)``: a link out of the folder, a FIFO, JSON nested too deep."""

    def build(tmp: Path) -> Built:
        ins = _hf_pair(tmp)
        target = ins[0] / name
        target.unlink(missing_ok=True)
        make(target, tmp)
        return ["uniform", *map(str, ins), "-o", str(tmp / "soup")], ins, tmp / "soup"

    return build


def _link_outside(path: Path, tmp: Path) -> None:
    (tmp / "secret.txt").write_text("a private file beside the model folder")
    path.symlink_to(tmp / "secret.txt")


def _fifo(path: Path, tmp: Path) -> None:
    import os

    os.mkfifo(path)


def _deep_json(path: Path, tmp: Path) -> None:
    path.write_text("[" * 200_000 + "]" * 200_000)


def deep_index(tmp: Path) -> Built:
    ins = _pair(tmp)
    folder = tmp / "hf"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text("{" + '"a":{' * 100_000 + "}" * 100_001)
    out = tmp / "soup.safetensors"
    return ["uniform", str(ins[0]), str(folder), "-o", str(out)], [*ins, folder], out


def deep_adapter_config(tmp: Path) -> Built:
    ins = _hf_pair(tmp)
    adapter = tmp / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("[" * 200_000 + "]" * 200_000)
    save_file({"x": torch.zeros(1)}, adapter / "adapter_model.safetensors")
    out = tmp / "soup"
    return ["uniform", str(adapter), str(ins[1]), "-o", str(out)], [*ins, adapter], out


def rank_0_adapter(tmp: Path) -> Built:
    """A LoRA adapter of rank 0 on folder A (peft's config says r = 0)."""
    ins = _hf_pair(tmp)
    adapter = tmp / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "r": 0, "lora_alpha": 8, "base_model_name_or_path": str(ins[0])}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    save_file(
        {"base_model.model.body.lora_A.weight": torch.zeros(0, 4),
         "base_model.model.body.lora_B.weight": torch.zeros(4, 0)},
        adapter / "adapter_model.safetensors",
    )  # fmt: skip
    out = tmp / "soup"
    return ["uniform", str(adapter), str(ins[1]), "-o", str(out)], [*ins, adapter], out


def users_folder(cmd: str) -> Callable[[Path], Built]:
    """A run folder that holds the user's own files."""

    def build(tmp: Path) -> Built:
        ins = _pair(tmp)
        folder = tmp / "mydocs"
        folder.mkdir()
        (folder / "results.md").write_text("my notes")
        ev = ["--evaluator", f"{_evaluators(tmp)}:one", "-q"]
        argv = {
            "ensemble": ["ensemble", *map(str, ins), "--run-dir", str(folder), *ev],
            "greedy": ["greedy", *map(str, ins), "-o", str(tmp / "s.safetensors"), "--run-dir",
                       str(folder), *ev],
        }[cmd]  # fmt: skip
        return argv, [*ins, folder], tmp / "s.safetensors"

    return build


def run_dir_in_input(cmd: str) -> Callable[[Path], Built]:
    """A run folder (or analysis folder) inside the input folder A."""

    def build(tmp: Path) -> Built:
        ins = _hf_pair(tmp)
        where = str(ins[0] / "run")
        ev = ["--evaluator", f"{_evaluators(tmp)}:one", "-q"]
        argv = {
            "greedy": ["greedy", *map(str, ins), "-o", str(tmp / "soup"), "--run-dir", where, *ev],
            "uniform": ["uniform", *map(str, ins), "-o", str(tmp / "soup"), "--run-dir", where],
            "ensemble": ["ensemble", *map(str, ins), "--run-dir", where, *ev],
            "analyze": ["analyze", *map(str, ins), "--base", str(_pair(tmp)[0]), "-o", where, *ev],
        }[cmd]
        return argv, ins, ins[0] / "run"

    return build


def _evaluators(tmp: Path) -> Path:
    """ev.py: evaluators, a model of the corpus's architecture, and data functions."""
    path = tmp / "ev.py"
    path.write_text(
        "import torch\n"
        "from torch.utils.data import TensorDataset\n"
        "def boom(sd):\n    raise ValueError('metric exploded')\n"
        "def nan(sd):\n    return float('nan')\n"
        "def text(sd):\n    return 'high'\n"
        "def one(sd):\n    return 1.0\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.body = torch.nn.Linear(4, 4, bias=False)\n"
        "        self.head = torch.nn.Module()\n"
        "        self.head.bias = torch.nn.Parameter(torch.zeros(3))\n"
        "    def forward(self, x):\n"
        "        return (x @ self.body.weight.T)[:, :3] + self.head.bias\n"
        "def net():\n    return Net()\n"
        "def empty():\n"
        "    return {'val': TensorDataset(torch.empty(0, 4), torch.empty(0, dtype=torch.long))}\n"
    )
    return path


def empty_split(cmd: str) -> Callable[[Path], Built]:
    """A held-out split with no examples, for a command that evaluates."""

    def build(tmp: Path) -> Built:
        ins = _pair(tmp)
        ev = _evaluators(tmp)
        out = tmp / "e.safetensors"
        argv = [cmd, *map(str, ins), "--model", f"{ev}:net", "--data", f"{ev}:empty", "-q"]
        argv += ["--run-dir", str(tmp / "e.run")] if cmd == "ensemble" else ["-o", str(out)]
        return argv, ins, out

    return build


def dangling_symlink_output(tmp: Path) -> Built:
    ins = _pair(tmp)
    out = tmp / "soup.safetensors"
    out.symlink_to(tmp / "nowhere.safetensors")
    return ["uniform", *map(str, ins), "-o", str(out)], ins, None


def truncated_embeddings(tmp: Path) -> Built:
    """mergekit #425: a fine-tune whose config.json declares more tokens (17, its
    tokenizer's) than its embedding has rows (16)."""
    import transformers
    import vocab_fixtures

    folders = []
    for name, pad in (("A", False), ("B", True)):
        tok = vocab_fixtures.tokenizer()
        if pad:
            tok.add_special_tokens({"pad_token": "<pad>"})
        config = transformers.LlamaConfig(vocab_size=16, **vocab_fixtures.LLAMA)
        transformers.LlamaForCausalLM(config).save_pretrained(tmp / name)
        tok.save_pretrained(tmp / name)
        folders.append(tmp / name)
    cfg = json.loads((tmp / "B" / "config.json").read_text())
    (tmp / "B" / "config.json").write_text(json.dumps({**cfg, "vocab_size": 17}))
    out = tmp / "soup"
    return ["uniform", *map(str, folders), "--vocab", "union", "-o", str(out)], folders, out


CASES = [
    Case(
        "tensor names differ",
        uniform_with(lambda: {**_sd(1), "extra.weight": torch.zeros(2)}),
        ["extra.weight", "a.safetensors", "b.safetensors"],
    ),
    Case(
        "shapes differ",
        uniform_with(lambda: _sd(1, **{"body.weight": torch.zeros(4, 5)})),
        ["'body.weight'", "[4, 4]", "[4, 5]", "b.safetensors", "same pretrained model"],
    ),
    Case(
        "float dtypes differ",
        uniform_with(lambda: _sd(1, **{"head.bias": torch.zeros(3, dtype=torch.float16)})),
        ["'head.bias'", "float16", "--dtype"],
    ),
    Case(
        "float vs integer",
        uniform_with(lambda: _sd(1, **{"head.bias": torch.zeros(3, dtype=torch.int64)})),
        ["'head.bias'", "int64", "never converted"],
    ),
    Case(
        "NaN",
        uniform_with(lambda: _sd(1, **{"head.bias": torch.tensor([0.0, math.nan, 1.0])})),
        ["NaN", "'head.bias'", "b.safetensors"],
    ),
    Case(
        "Inf",
        uniform_with(lambda: _sd(1, **{"body.weight": torch.full((4, 4), math.inf)})),
        ["Inf", "'body.weight'", "b.safetensors"],
    ),
    Case("truncated safetensors", broken_file(lambda b: b[: len(b) - 20]), ["b.safetensors"]),
    Case("corrupt header", broken_file(_corrupt_header), ["b.safetensors", "header"]),
    Case("header length past the end", broken_file(_huge_header), ["b.safetensors"]),
    Case("empty file", broken_file(lambda b: b""), ["b.safetensors"]),
    Case("random bytes", broken_file(lambda b: bytes(range(256)) * 4), ["b.safetensors"]),
    Case("pickle that runs code", evil_pickle, ["b.pt", "weights_only"], _no_marker),
    Case("pickle of no state dict", not_a_state_dict, ["b.pt"]),
    Case("index names a missing shard", index(None), ["model-00002-of-00002.safetensors"]),
    Case("index is not JSON", index("{not json"), ["model.safetensors.index.json"]),
    Case("index has no weight_map", index('{"metadata": {}}'), ["weight_map"]),
    Case("no ingredients", no_ingredients, ["required: INGREDIENT"]),
    Case("one ingredient (uniform)", one_ingredient("uniform"), ["at least 2", "a.safetensors"]),
    Case("one ingredient (greedy)", one_ingredient("greedy"), ["at least 2"]),
    Case("same path twice", same_path_twice("same"), ["a.safetensors", "twice"]),
    Case("same file, another spelling", same_path_twice("dotted"), ["a.safetensors"]),
    Case("negative weight", uniform("--weights", "-0.5", "1.5"), ["weights", "non-negative"]),
    Case("weights not summing to 1", uniform("--weights", "0.5", "0.6"), ["sum to 1"]),
    Case("weight count", uniform("--weights", "1.0"), ["2 ingredients"]),
    Case("output is an input", output_is_input, ["b.safetensors", "input"]),
    Case("output exists", output_exists, ["old.safetensors", "--force"]),
    Case("read-only output folder", read_only_output, ["cannot write", "soup.safetensors"]),
    Case("no evaluator", greedy(), ["--model", "--data"]),
    Case("evaluator raises", greedy(evaluator="boom"), ["ev.py:boom", "ValueError", "exploded"]),
    Case("evaluator returns NaN", greedy(evaluator="nan"), ["ev.py:nan", "nan", "finite"]),
    Case("evaluator returns text", greedy(evaluator="text"), ["ev.py:text"]),
    Case("evaluator not found", greedy(evaluator="missing"), ["missing"]),
    Case("bad shard size", uniform("--max-shard-size", "lots"), ["lots", "5GB"]),
    # the second pass
    Case(
        "greedy run folder in an input",
        run_dir_in_input("greedy"),
        ["A", "run folder", "inside the input folder"],
    ),
    Case(
        "uniform run folder in an input",
        run_dir_in_input("uniform"),
        ["A", "inside the input folder"],
    ),
    Case(
        "ensemble run folder in an input",
        run_dir_in_input("ensemble"),
        ["A", "inside the input folder"],
    ),
    Case(
        "analyze folder in an input", run_dir_in_input("analyze"), ["A", "inside the input folder"]
    ),
    Case("greedy on an empty split", empty_split("greedy"), ["'val' split has no examples"]),
    Case("ensemble on an empty split", empty_split("ensemble"), ["'val' split has no examples"]),
    Case("learned on an empty split", empty_split("learned"), ["'val' split has no examples"]),
    Case("weights a hair off 1", uniform("--weights", "0.5", "0.500001"), ["sum to 1.000001"]),
    Case(
        "merges.txt links outside the folder",
        hf_folder_holding("merges.txt", _link_outside),
        ["merges.txt", "outside", "copy"],
    ),
    Case(
        "a FIFO as tokenizer_config.json",
        hf_folder_holding("tokenizer_config.json", _fifo),
        ["tokenizer_config.json", "FIFO"],
    ),
    Case(
        "JSON nested 200,000 deep in tokenizer_config.json",
        hf_folder_holding("tokenizer_config.json", _deep_json),
        ["tokenizer_config.json", "nested too deeply"],
    ),
    Case("JSON nested 100,000 deep in an index", deep_index, ["index.json", "nested too deeply"]),
    Case(
        "JSON nested 200,000 deep in adapter_config.json",
        deep_adapter_config,
        ["adapter_config.json", "nested too deeply"],
    ),
    Case("a rank-0 adapter", rank_0_adapter, ["adapter_config.json", "r = 0", "positive"]),
    Case(
        "--vocab on files that carry no tokenizer",
        uniform("--vocab", "union"),
        ["--vocab union", "Hugging Face model folders"],
    ),
    Case("--vocab-multiple without --vocab", uniform("--vocab-multiple", "8"), ["add --vocab"]),
    Case(
        "embeddings truncated below the config's vocab_size",
        truncated_embeddings,
        ["B: lm_head.weight is [16, 16]", "declares 17 tokens"],
    ),
    Case(
        "a --keep rule that matches no tensor",
        uniform("--keep", "nothing=first"),
        ["--keep nothing=first", "matches no tensor", "modelsoup inspect"],
    ),
    Case("--keep from the base without --base", uniform("--keep", "body=base"), ["needs --base"]),
    Case(
        "--adapter-rank on full fine-tunes without --base",
        uniform("--adapter-rank", "4"),
        ["--adapter-rank", "--base THETA0"],
    ),
    Case(
        "greedy into the user's folder", users_folder("greedy"), ["mydocs", "results.md", "--force"]
    ),
    Case(
        "ensemble into the user's folder",
        users_folder("ensemble"),
        ["mydocs", "results.md", "--force"],
    ),
    Case("--adapter-rank 0", uniform("--adapter-rank", "0"), ["--adapter-rank", "at least 1"]),
    Case("infinite weights", uniform("--weights", "inf", "-inf"), ["--weights", "finite", "inf"]),
    Case(
        "dangling symlink output", dangling_symlink_output, ["symbolic link", "nowhere", "--force"]
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_and_loses_nothing(case: Case, tmp_path: Path, capsys):
    argv, inputs, out = case.build(tmp_path)
    before = {p: digest(p) for p in inputs}
    files_before = {p for p in tmp_path.rglob("*") if p.is_file()}
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    for text in case.expect:
        assert text in err, f"{text!r} not in {err!r}"
    assert "Traceback" not in err
    for p, h in before.items():
        assert digest(p) == h, f"{p} was modified"
    if out is not None:
        assert not out.exists()
    new = {p for p in tmp_path.rglob("*") if p.is_file()} - files_before
    # no output and no temporary file; a greedy run may leave its journal to resume from
    assert all(".run" in p.parent.name for p in new), sorted(map(str, new))
    if case.extra_check:
        case.extra_check(tmp_path)


def test_the_corpus_is_large():
    assert len(CASES) >= 30


def test_the_docs_state_the_corpus_size():
    """README and docs/safety.md quote the number of cases this file holds."""
    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text()
    safety = (root / "docs" / "safety.md").read_text()
    assert f"{len(CASES)} hostile inputs" in readme
    assert f"corpus of {len(CASES)} bad inputs" in safety


# --- a full disk, for real: a tiny tmpfs (root only; skipped elsewhere) -------------


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs at tmp_path/disk, and a function that fills it to the last byte."""
    import os
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")

    def fill() -> None:
        try:
            with open(disk / "filler", "ab", buffering=0) as f:
                while True:
                    f.write(bytes(4096))
        except OSError:  # ENOSPC: full
            pass

    try:
        yield disk, fill
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _refused(argv: list[str], inputs: list[Path], capsys, *expect: str) -> str:
    before = {p: digest(p) for p in inputs}
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in expect:
        assert text in err, f"{text!r} not in {err!r}"
    assert all(digest(p) == h for p, h in before.items())
    return err


def test_a_pt_output_on_a_full_disk(full_disk, tmp_path, capsys):
    disk, fill = full_disk
    ins = _pair(tmp_path)
    fill()
    out = disk / "soup.pt"
    argv = ["uniform", *map(str, ins), "-o", str(out), "--run-dir", str(tmp_path / "r"), "-q"]
    _refused(argv, ins, capsys, "cannot write", "soup.pt", "disk full")
    assert {p.name for p in disk.iterdir()} == {"filler"}  # no output, no temporary file


def test_a_run_folder_on_a_disk_that_fills_up(full_disk, tmp_path, capsys):
    """The disk fills while a greedy run scores its ingredients: whichever of the run
    folder's writers comes next (a journal line on a new page, scores.json) fails, and
    the run stops with exit 2 and no soup."""
    disk, _ = full_disk
    ins = _pair(tmp_path)
    (tmp_path / "filling.py").write_text(
        "calls = []\n"
        "def score(sd):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        try:\n"
        f"            with open({str(disk / 'filler')!r}, 'ab', buffering=0) as f:\n"
        "                while True:\n"
        "                    f.write(bytes(4096))\n"
        "        except OSError:\n"
        "            pass\n"
        "    return 0.5\n"
    )
    ev = f"{tmp_path / 'filling.py'}:score"
    out = tmp_path / "g.safetensors"
    argv = ["greedy", *map(str, ins), "-o", str(out), "-q", "--run-dir", str(disk / "run")]
    _refused([*argv, "--evaluator", ev], ins, capsys, "cannot write", "No space left")
    assert not out.exists()


def test_a_journal_line_that_cannot_be_written(tmp_path, monkeypatch):
    """A journal append that fails (ENOSPC on the write or the fsync) is the project's
    error, naming the journal and what to do, not an OSError."""
    import errno
    import os

    from modelsoup.errors import SoupError
    from modelsoup.store.journal import Journal

    journal = Journal(tmp_path / "journal.jsonl", {"recipe": "greedy"})

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(SoupError, match=r"cannot write the journal .*journal.jsonl: No space"):
        journal.append({"event": "decision", "step": 1})


# --- one run at a time in a run folder --------------------------------------------------


def test_a_second_run_on_a_busy_run_folder_stops_at_once(sweep, tmp_path, capsys, monkeypatch):
    import os
    import subprocess
    import sys
    import time

    tests = str(Path(__file__).parent)
    monkeypatch.syspath_prepend(tests)
    env = {**os.environ, "PYTHONPATH": tests, "TINYTASK_SLEEP": "0.4"}
    ev = ["--model", "tinytask:model", "--evaluator", "tinytask:slow_accuracy", "-q"]

    def cmd(run: Path, out: Path) -> list[str]:
        return [sys.executable, "-m", "modelsoup", "greedy", *sweep, "-o", str(out),
                "--run-dir", str(run), *ev]  # fmt: skip

    run = tmp_path / "run"
    first = subprocess.Popen(cmd(run, tmp_path / "a.safetensors"), env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "journal.jsonl").exists():
        time.sleep(0.05)
    assert (run / "journal.jsonl").exists(), first.communicate()[1][-2000:]
    monkeypatch.setenv("TINYTASK_SLEEP", "0.4")
    t0 = time.perf_counter()
    argv = ["greedy", *sweep, "-o", str(tmp_path / "b.safetensors"), "--run-dir", str(run), *ev]
    assert main(argv) == 2
    assert time.perf_counter() - t0 < 1.0  # at once: it evaluated nothing
    err = capsys.readouterr().err
    assert "in use by another modelsoup run" in err and f"process {first.pid}" in err
    assert not (tmp_path / "b.safetensors").exists()
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    # the first run's journal is exactly a lone run's
    lone = tmp_path / "lone"
    r = subprocess.run(cmd(lone, tmp_path / "c.safetensors"), env={**env, "TINYTASK_SLEEP": "0"},
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "journal.jsonl").read_text() == (lone / "journal.jsonl").read_text()
