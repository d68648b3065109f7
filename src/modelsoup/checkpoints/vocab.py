"""Ingredients whose vocabularies differ, seen on one vocabulary (``--vocab``).

`align_vocabulary` builds the soup's tokenizer (`tokens.SoupVocabulary`, mergekit's
``tokenizer_source``) and replaces every input by a `VocabAligned` view whose input and
output embeddings (``embed_tokens``, ``wte``, ``lm_head``, found as transformers finds
them: ``get_input_embeddings``/``get_output_embeddings`` of the architecture built on
the meta device) have one row per token of the soup, in the soup's order. Every recipe
then merges the aligned inputs like any other tensors. A token some inputs lack gets,
in those inputs, the row mergekit 0.1.5 gives it (``PermutedVocabulary``):

- held by one input only: that input's row (so the soup has that row);
- held by the base and another input: the base's row (a task vector of zero there);
- held by several inputs, not the base: the plain mean of their rows (a uniform soup's
  row is then the mean over the inputs that have the token);
- held by none (``--vocab base`` with a base token no input has): zeros.

Rows added by ``multiple`` (padding) are the mean of the input's rows, as mergekit's.

Memory: the rows filled in (tokens some input lacks × hidden × 4 bytes per embedding
tensor) and one pad row per input; the rest is read chunk by chunk from the inputs.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import CheckpointError, MismatchError, option
from .ingredients import Ingredient, Origin, flat_range
from .layout import Layout, TensorSpec
from .read import describe_format
from .tokens import SoupVocabulary, hf_folder, same_vocabulary


def meta_model(folder: Path, why: str) -> torch.nn.Module:
    """The architecture of ``folder``'s config.json, built on the meta device (no memory,
    no weights): a causal LM where transformers has one, else its base model."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot read config.json ({e})") from e
    with torch.device("meta"):
        for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
            try:
                return auto.from_config(config)
            except (ValueError, KeyError):
                continue
    raise CheckpointError(
        f"{folder}: transformers builds no model from this config.json; {why} needs an "
        "architecture transformers knows"
    )


def vocab_tensors(folder: Path, layout: Layout) -> list[str]:
    """The canonical names of ``layout``'s input and output embeddings, as the
    architecture of ``folder``'s config.json declares them."""
    model = meta_model(folder, option("vocab"))
    embeds = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m]
    ids = {id(m.weight) for m in embeds}
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in ids]
    found = {layout.canonical(n) for n in names if n in layout.names}
    if not found:
        raise CheckpointError(
            f"{folder}: none of the embeddings {names} is in the checkpoint; {option('vocab')} "
            "needs the weights saved under the architecture's names (save_pretrained)"
        )
    return [n for n in layout.specs if n in found]


class VocabularyPlan:
    """Which row of which input fills each row of the soup's vocabulary tensors.

    ``inputs``: the ingredients, then the base when ``base``. Rows an input lacks are
    filled per the module's rules; the filled rows are computed once per tensor and
    shared by every input's `VocabAligned` view (thread-safe).
    """

    def __init__(
        self, inputs: Sequence[Ingredient], base: bool, mode: str, multiple: int | None = None
    ):
        self.inputs = list(inputs)
        self.vocab = SoupVocabulary(inputs, base, mode, multiple)
        first = self.inputs[0]
        self.names = vocab_tensors(hf_folder(first, option("vocab")), first.layout)
        for ing, rows in zip(self.inputs, self.vocab.input_rows):
            for name in self.names:
                shape = ing.layout.spec(name).shape if name in ing.layout.names else None
                if shape is None or shape[0] != rows:
                    raise MismatchError(
                        f"{ing.source}: {name} is {list(shape) if shape else 'missing'}, but "
                        f"its config.json declares {rows} tokens (vocab_size); "
                        f"{option('vocab')} aligns embeddings whose rows are the config's "
                        "vocab_size"
                    )
        perms = torch.stack(self.vocab.permutations)  # [inputs, real]
        present = perms >= 0
        self.perms = perms
        lacking = (~present).any(0).nonzero().flatten().tolist()
        self.fill_index = {t: j for j, t in enumerate(lacking)}
        self.rules: list[tuple[str, list[int]]] = []
        for t in lacking:
            have = present[:, t].nonzero().flatten().tolist()
            if len(have) == 1:
                self.rules.append(("row", have))
            elif not have:
                self.rules.append(("zero", []))
            elif base and present[-1, t]:
                self.rules.append(("row", [len(self.inputs) - 1]))
            else:
                self.rules.append(("mean", have))
        self._fills: dict[str, torch.Tensor] = {}
        self._pads: dict[tuple[int, str], torch.Tensor] = {}
        self._lock = threading.RLock()

    @property
    def rows(self) -> int:
        return self.vocab.rows

    @property
    def identity(self) -> bool:
        """Every input's rows are the soup's, in the same order: nothing to align."""
        ids = torch.arange(self.real)
        return all(r == self.rows for r in self.vocab.input_rows) and all(
            torch.equal(p, ids) for p in self.perms
        )

    @property
    def real(self) -> int:
        return self.vocab.real

    def _row(self, j: int, name: str, row: int, width: int) -> torch.Tensor:
        return self.inputs[j].read(name, row * width, (row + 1) * width).float()

    def fills(self, name: str, width: int) -> torch.Tensor:
        """[tokens some input lacks, width] float32: the row each of them gets there."""
        with self._lock:
            if name not in self._fills:
                out = torch.zeros(len(self.rules), width)
                for (kind, js), (t, i) in zip(self.rules, self.fill_index.items()):
                    rows = [self._row(j, name, int(self.perms[j, t]), width) for j in js]
                    if rows:
                        out[i] = rows[0] if kind == "row" else torch.stack(rows).mean(0)
                self._fills[name] = out
            return self._fills[name]

    def pad_row(self, view: VocabAligned, name: str, width: int) -> torch.Tensor:
        """The mean of ``view``'s token rows: what its padding rows hold."""
        key = (view.index, name)
        with self._lock:
            if key not in self._pads:
                total = torch.zeros(width, dtype=torch.float64)
                for r0 in range(0, self.real, 4096):
                    total += view.rows(name, r0, min(self.real, r0 + 4096)).double().sum(0)
                self._pads[key] = (total / self.real).float()
            return self._pads[key]


class VocabAligned:
    """Input ``index`` of ``plan`` with its vocabulary tensors in the soup's vocabulary.

    An ingredient. ``folder`` and ``load_files`` are the soup's (its config.json and
    tokenizer), so an evaluator built from it and a folder written from it use the
    soup's vocabulary. ``derivation`` covers the plan (tokens, order, rows) for
    fingerprints; ``files`` adds the other inputs' (their rows fill this one's).
    """

    def __init__(self, plan: VocabularyPlan, index: int):
        self.plan = plan
        self.index = index
        self.inner = plan.inputs[index]
        lay = self.inner.layout
        specs = dict(lay.specs)
        for name in plan.names:
            s = lay.spec(name)
            specs[name] = TensorSpec((plan.rows, *s.shape[1:]), s.dtype)
        self._layout = Layout(specs, dict(lay.aliases))

    @property
    def source(self) -> str:
        return self.inner.source

    @property
    def layout(self) -> Layout:
        return self._layout

    @property
    def files(self) -> tuple[Path, ...]:
        others = (f for i in self.plan.inputs for f in i.files)
        return tuple(dict.fromkeys([*self.inner.files, *others]))

    @property
    def origin(self) -> Origin:
        """The inner ingredient's, but for what the realignment changes: the folder and
        load files are the soup vocabulary's (its config.json and tokenizer), and the
        derivation records the alignment."""
        vocab = self.plan.vocab
        return replace(
            self.inner.origin.derived(f"vocab:{vocab.digest}:{self.index}"),
            folder=vocab.folder,
            load_files=tuple(vocab.load_files),
        )

    @property
    def storage_format(self) -> str:
        return f"{describe_format(self.inner)}, vocabulary realigned ({self.plan.vocab.mode})"

    def rows(self, name: str, r0: int, r1: int) -> torch.Tensor:
        """Rows ``r0:r1`` of vocabulary tensor ``name`` as [r1 - r0, width]."""
        spec = self._layout.spec(name)
        width = spec.numel // spec.shape[0] if spec.shape[0] else 0
        out = torch.empty((r1 - r0, width), dtype=spec.dtype)
        plan = self.plan
        perm = plan.perms[self.index, r0 : min(r1, plan.real)].tolist()
        j = 0
        while j < len(perm):
            if perm[j] < 0:
                out[j] = plan.fills(name, width)[plan.fill_index[r0 + j]]
                j += 1
                continue
            k = j + 1
            while k < len(perm) and perm[k] == perm[k - 1] + 1:
                k += 1  # a run of consecutive rows: one read
            src = perm[j] * width
            out[j:k] = self.inner.read(name, src, src + (k - j) * width).view(k - j, width)
            j = k
        if r1 > plan.real:
            out[max(r0, plan.real) - r0 :] = plan.pad_row(self, name, width)
        return out

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        name = self._layout.canonical(name)
        if name not in self.plan.names:
            return self.inner.read(name, start, stop)
        spec = self._layout.spec(name)
        start, stop = flat_range(spec, start, stop)
        width = spec.numel // spec.shape[0]
        if start == stop:
            return torch.empty(0, dtype=spec.dtype)
        r0, r1 = start // width, -(-stop // width)
        flat = self.rows(name, r0, r1).view(-1)
        return flat[start - r0 * width : stop - r0 * width].clone()

    def get(self, name: str) -> torch.Tensor:
        name = self._layout.canonical(name)
        if name not in self.plan.names:
            return self.inner.get(name)
        return self.read(name).view(self._layout.spec(name).shape)

    def __repr__(self) -> str:
        return f"VocabAligned({self.inner!r}, {self.plan.vocab.mode})"


def align_vocabulary(
    ingredients: Sequence[Ingredient],
    base: Ingredient | None,
    mode: str,
    multiple: int | None = None,
) -> tuple[list[Ingredient], Ingredient | None, VocabularyPlan | None]:
    """The inputs seen on the soup's vocabulary (``mode``: base, first or union), and the
    plan; the inputs unchanged (plan None) when their vocabularies already agree and no
    padding is asked."""
    inputs = [*ingredients, *([base] if base is not None else [])]
    for ing in inputs:
        hf_folder(ing, option("vocab", mode))  # a plain file has no tokenizer to align
    if not multiple and same_vocabulary(inputs, load=False):
        return list(ingredients), base, None
    plan = VocabularyPlan(inputs, base is not None, mode, multiple)
    if plan.identity:  # tokenizer files differ, their vocabularies do not
        return list(ingredients), base, None
    views: list[Ingredient] = [VocabAligned(plan, i) for i in range(len(inputs))]
    return views[: len(ingredients)], (views[-1] if base is not None else None), plan
