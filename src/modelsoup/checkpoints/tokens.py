"""The vocabulary of a soup whose ingredients' tokenizers differ (a run that added a
``<pad>``, another a chat token), built as mergekit 0.1.5 builds it
(``mergekit/tokenizer/build.py``):

- ``base``: the base model's tokenizer (the first ingredient's when no base is given);
- ``first``: the first ingredient's;
- ``union``: the base's (or the first's) tokenizer, then every other token of the others,
  in the order of the inputs: their ordinary tokens (as plain added tokens; mergekit
  takes them in the tokenizer's hash order, modelsoup in id order), then their added
  tokens with their settings (special or not), the first setting seen of each kept.

Each input's tokens are the ids below its embedding rows (``vocab_size`` of its
config.json); ``permutation`` maps the soup's ids to an input's rows (-1 where it lacks
the token). Special-token roles the soup's tokenizer leaves unset (``pad_token``, ...)
are taken from the first input that sets one to a token of the soup, and the chat
template from the first ingredient that has one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, SoupError, option
from .folders import hf_load_files
from .ingredients import Ingredient
from .inputs import read_json

VOCAB_MODES = ("base", "first", "union")
# What a tokenizer is saved as (transformers' save_pretrained), never copied from an input
# beside a soup's own tokenizer.
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
        "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json",
    }
)  # fmt: skip
ROLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def hf_folder(ing: Ingredient, why: str) -> Path:
    """The Hugging Face folder (with config.json) an ingredient is read from."""
    folder = ing.origin.folder
    if folder is None or not (Path(folder) / "config.json").is_file():
        raise SoupError(
            f"{ing.source}: {why} needs Hugging Face model folders with their config.json "
            "and tokenizer (save_pretrained folders)"
        )
    return Path(folder)


def declared_rows(folder: Path) -> int | None:
    """The embedding rows a folder's config.json declares (``vocab_size``), if any."""
    config = read_json(folder / "config.json", folder)
    rows = config.get("vocab_size") if isinstance(config, dict) else None
    ok = isinstance(rows, int) and not isinstance(rows, bool) and rows > 0
    return rows if ok else None


def config_rows(folder: Path) -> int:
    """The embedding rows a folder's config.json declares (``vocab_size``)."""
    rows = declared_rows(folder)
    if rows is None:
        raise CheckpointError(
            f"{folder / 'config.json'}: no positive vocab_size; vocabularies are aligned by "
            "the rows each model's config declares"
        )
    return rows


def load_tokenizer(folder: Path) -> Any:
    try:
        import transformers
    except ImportError as e:
        raise SoupError(f"{option('vocab')} reads tokenizers with transformers: pip install "
                        "'modelsoup[hf]'") from e  # fmt: skip
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"{folder}: no tokenizer to read ({e}); save it beside the weights with "
            "tokenizer.save_pretrained(folder)"
        ) from e


def tokens_of(tokenizer: Any, rows: int) -> dict[str, int]:
    """A tokenizer's tokens whose id has a row (below ``rows``)."""
    return {t: i for t, i in tokenizer.get_vocab().items() if i < rows}


def union_tokenizer(
    ref: Any, have: set[str], others: Sequence[tuple[Any, dict[str, int], int]], scratch: Path
) -> Any:
    """mergekit's union: a copy of ``ref`` (whose tokens are ``have``), then the others'
    ordinary tokens it lacks, then every input's added tokens (``others`` are (tokenizer,
    its tokens with a row, rows), ``ref`` first)."""
    import transformers

    ref.save_pretrained(scratch)
    out = transformers.AutoTokenizer.from_pretrained(scratch, local_files_only=True)
    added: dict[str, Any] = {}
    plain: list[str] = []
    for tok, vocab, rows in others:
        decoder = {i: a for i, a in tok.added_tokens_decoder.items() if i < rows}
        names = {a.content for a in decoder.values()}
        for t, _ in sorted(vocab.items(), key=lambda x: x[1]):
            if t not in names and t not in have and t not in plain:
                plain.append(t)
        for _, info in sorted(decoder.items()):
            added.setdefault(info.content, info)
    for t in plain:
        if t not in added:
            out.add_tokens(t)
    for info in added.values():
        out.add_tokens(info)
    return out


def set_roles(out: Any, tokenizers: Sequence[Any], chat_template: str | None) -> None:
    """Special-token roles ``out`` leaves unset, from the first input that sets them to a
    token ``out`` has; and the chat template."""
    vocab = out.get_vocab()
    for role in ROLES:
        if getattr(out, role, None) is not None:
            continue
        for tok in tokenizers:
            value = getattr(tok, role, None)
            if value is not None and str(value) in vocab:
                setattr(out, role, str(value))
                break
    if chat_template is not None:
        out.chat_template = chat_template


class SoupVocabulary:
    """The soup's tokenizer and how each input's rows map onto it.

    ``inputs`` are the ingredients then the base (``base`` True when the last one is a
    base); ``mode`` one of `VOCAB_MODES`; ``multiple`` pads the rows to a multiple
    (mergekit's ``pad_to_multiple_of``). ``folder`` is a scratch folder (removed with the
    object) holding the soup's config.json (``vocab_size`` set to ``rows``) and
    tokenizer, with the first ingredient's other load files: what a written soup folder
    and an evaluator read.
    """

    def __init__(
        self, inputs: Sequence[Ingredient], base: bool, mode: str, multiple: int | None = None
    ):
        if mode not in VOCAB_MODES:
            raise SoupError(
                f"{option('vocab')} must be one of {', '.join(VOCAB_MODES)}, got {mode!r}"
            )
        self.mode = mode
        folders = [hf_folder(i, option("vocab")) for i in inputs]
        self.input_rows = [config_rows(f) for f in folders]
        tokenizers = [load_tokenizer(f) for f in folders]
        full = [t.get_vocab() for t in tokenizers]  # get_vocab costs 0.16 s at 128k tokens
        vocabs = [{t: i for t, i in v.items() if i < r} for v, r in zip(full, self.input_rows)]
        ref = len(inputs) - 1 if base else 0  # mergekit: the base, else the first model
        self.scratch = Path(tempfile.mkdtemp(prefix="modelsoup-vocab-"))
        weakref.finalize(self, shutil.rmtree, self.scratch, True)
        order = [ref, *(i for i in range(len(inputs)) if i != ref)]
        if mode == "union":
            out = union_tokenizer(
                tokenizers[ref],
                set(full[ref]),
                [(tokenizers[i], vocabs[i], self.input_rows[i]) for i in order],
                self.scratch / "ref",
            )
        else:
            src = ref if mode == "base" else 0
            tokenizers[src].save_pretrained(self.scratch / "src")
            out = load_tokenizer(self.scratch / "src")
        chat = next((t.chat_template for t in tokenizers if getattr(t, "chat_template", None)),
                    None)  # fmt: skip
        set_roles(out, [tokenizers[i] for i in order], chat)
        self.tokenizer = out
        self.tokens = out.get_vocab()  # mergekit: the soup's rows are its whole vocab
        real = len(self.tokens)
        self.rows = real if not multiple else -(-real // multiple) * multiple
        self.real = real
        by_id = sorted(self.tokens.items(), key=lambda x: x[1])
        if [i for _, i in by_id] != list(range(real)):
            raise CheckpointError(
                f"{folders[ref]}: the tokenizer's ids are not 0..{real - 1} without gaps; "
                "its vocabulary cannot be the rows of an embedding"
            )
        self.permutations = []
        for have in vocabs:
            self.permutations.append(torch.tensor([have.get(t, -1) for t, _ in by_id]))
        known = set(self.tokens)
        self.dropped = sorted({t for v in vocabs for t in v if t not in known})
        self.added = [t for t, _ in by_id if t not in vocabs[0]]
        self.folder = self._write_folder(folders[ref])  # mergekit: the base's config
        # what the rows depend on: the mode, the tokens and their order, the rows, whether
        # the last input is a base (it fills rows), each input's map
        digest = hashlib.sha256(json.dumps([mode, self.rows, base, by_id]).encode())
        for p in self.permutations:
            digest.update(p.numpy().tobytes())
        self.digest = digest.hexdigest()[:16]

    def _write_folder(self, template: Path) -> Path:
        """config.json with the soup's rows, the soup's tokenizer, and the template's
        other load files (generation_config.json, ...)."""
        folder = self.scratch / "soup"
        folder.mkdir()
        config = read_json(template / "config.json", template)
        config["vocab_size"] = self.rows
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for f in hf_load_files(template):
            if f.name not in TOKENIZER_FILES and f.name != "config.json":
                shutil.copy2(f, folder / f.name)
        self.tokenizer.save_pretrained(folder)
        return folder

    @property
    def load_files(self) -> list[Path]:
        return sorted(f for f in self.folder.iterdir() if f.is_file())

    def summary(self, sources: Sequence[str]) -> dict[str, Any]:
        """What the soup's vocabulary is, for reports and provenance (the first 100 tokens
        added or dropped, and their counts)."""
        return {
            "mode": self.mode,
            "tokens": self.real,
            "rows": self.rows,
            "added": self.added[:100],
            "added_count": len(self.added),
            "dropped": self.dropped[:100],
            "dropped_count": len(self.dropped),
            "inputs": [
                {"source": s, "rows": r, "missing": int((p < 0).sum())}
                for s, r, p in zip(sources, self.input_rows, self.permutations)
            ],
        }


def same_vocabulary(inputs: Sequence[Ingredient], load: bool = True) -> bool:
    """Whether the inputs' tokenizers give every token the same id (below each one's
    rows) and declare the same rows; True where some input has no Hugging Face folder
    (a plain file carries no tokenizer to compare). Without ``load``, only the files are
    compared (False where they differ, the tokens unread)."""
    folders = [i.origin.folder for i in inputs]
    if any(f is None or not (Path(f) / "config.json").is_file() for f in folders):
        return True
    folders = [Path(f) for f in folders]
    declared = [declared_rows(f) for f in folders]
    if None in declared:
        return True  # no vocabulary declared: nothing to compare
    rows = [int(r) for r in declared if r is not None]
    if len(set(rows)) > 1:
        return False

    def files(f: Path) -> list[bytes]:
        return [(f / n).read_bytes() if (f / n).is_file() else b"" for n in sorted(TOKENIZER_FILES)]

    first = files(folders[0])
    if all(files(f) == first for f in folders[1:]):
        return True
    if not all(any((f / n).is_file() for n in TOKENIZER_FILES) for f in folders):
        return True  # a folder without a tokenizer: nothing to compare
    if not load:
        return False
    vocabs = [tokens_of(load_tokenizer(f), r) for f, r in zip(folders, rows)]
    return all(v == vocabs[0] for v in vocabs[1:])
