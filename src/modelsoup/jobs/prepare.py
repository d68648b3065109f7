"""What a soup is made of, before any recipe sees its inputs: the vocabulary of
ingredients whose tokenizers differ, and the per-tensor choices (tensors kept whole from
one source, tensors merged, weights per tensor). `prepare` applies a `Preparation` to the
opened inputs, so that what a recipe evaluates is what it writes; every command applies
its options through it, and a Python caller can do the same::

    prep = prepare_inputs(ingredients, base, Preparation(vocab="union", keep=[("lm_head", "base")]))
    soup = uniform_soup(prep.ingredients)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.tokens import same_vocabulary
from ..checkpoints.vocab import VocabularyPlan, align_vocabulary
from ..errors import SoupError, option, render
from ..ops.checks import check_same_names
from ..ops.select import choose, substitute, weights_for


@dataclass(frozen=True)
class Preparation:
    """The changes to make to the inputs (the commands' ``--vocab``, ``--vocab-multiple``,
    ``--keep``, ``--only``, ``--weights-for`` and ``--adapter-rank``'s output).

    ``vocab``: None (ingredients whose vocabularies differ are refused), 'base', 'first'
    or 'union' (mergekit's tokenizer_source); ``vocab_multiple`` pads its rows to a
    multiple. ``keep``: (REGEX, SOURCE) rules, SOURCE 'base', 'first', a 1-based number
    or an ingredient's path; ``only``: a REGEX of the tensors merged, the rest taken from
    the base (else the first ingredient); ``weights_for``: (REGEX, weights) rules.
    ``adapter_output``: where the soup will be written as a LoRA adapter, if it will."""

    vocab: str | None = None
    vocab_multiple: int | None = None
    keep: Sequence[tuple[str, str]] = ()
    only: str | None = None
    weights_for: Sequence[tuple[str, Sequence[float]]] = ()
    adapter_output: str | Path | None = None


@dataclass
class Prepared:
    """The inputs as the recipe sees them, and what was done to them."""

    ingredients: list[Ingredient]
    base: Ingredient | None
    vocab: VocabularyPlan | None = None
    rules: list[dict[str, Any]] = field(default_factory=list)
    tensor_weights: dict[str, list[float]] = field(default_factory=dict)
    given_base: Ingredient | None = None  # the base as read, before any change (what an
    # adapter of the soup is written on)

    def summary(self) -> dict[str, Any]:
        """For the provenance of the soup."""
        out: dict[str, Any] = {}
        if self.vocab is not None:
            sources = [i.source for i in self.vocab.inputs]
            out["vocab"] = self.vocab.vocab.summary(sources)
        if self.rules:
            out["tensor_rules"] = [{k: v for k, v in r.items() if k != "merged"}
                                   for r in self.rules]  # fmt: skip
        return out

    def lines(self, limit: int = 8) -> list[str]:
        """What the preparation did, in words: the soup's vocabulary and each rule's
        tensors."""
        out = []
        if self.vocab is not None:
            v = self.vocab.vocab
            added = f"; added {', '.join(v.added[:10])}" if v.added else ""
            out.append(f"vocabulary ({v.mode}): {v.real} tokens, {v.rows} rows{added}")
        return out + rule_lines(self.rules, limit)


def rule_lines(rules: Sequence[dict[str, Any]], limit: int = 8) -> list[str]:
    """Lines saying which tensors each rule matched."""
    lines = []
    for r in rules:
        names = r["tensors"]
        shown = ", ".join(names[:limit]) + (
            f", ... ({len(names)} in all)" if len(names) > limit else ""
        )
        where = f" from {r['source']}" if "source" in r else f" weighted {r['weights']}"
        if "merged" in r:
            lines.append(f"{r['rule']}: merges {len(r['merged'])} tensor(s): "
                         + ", ".join(r["merged"][:limit]))  # fmt: skip
            lines.append(f"  and takes the other {len(names)}{where}")
        else:
            lines.append(f"{r['rule']}: {len(names)} tensor(s){where}: {shown or '-'}")
    return lines


def prepare_inputs(
    ingredients: Sequence[Ingredient],
    base: Ingredient | None,
    how: Preparation = Preparation(),
    *,
    say: Callable[[str], None] | None = None,
) -> Prepared:
    """Apply ``how`` to the opened inputs; refuse ingredients whose vocabularies differ
    when ``how.vocab`` is None. ``say`` hears what the vocabulary alignment did."""
    given_base = base
    ingredients, base, plan = _vocabulary(ingredients, base, how, say)
    chosen = choose(ingredients, base, how.keep, how.only)
    ingredients, base = substitute(ingredients, base, chosen)
    out = Prepared(list(ingredients), base, plan, chosen.report, given_base=given_base)
    if how.adapter_output is not None:
        check_adapter_request(how.adapter_output, ingredients, given_base)
        if given_base is not None:
            _check_adapter_shapes(out.ingredients[0], given_base)
    if how.weights_for:
        out.tensor_weights, report = weights_for(
            ingredients[0].layout, how.weights_for, len(ingredients)
        )
        out.rules += report
    return out


def _vocabulary(
    ingredients: Sequence[Ingredient],
    base: Ingredient | None,
    how: Preparation,
    say: Callable[[str], None] | None,
) -> tuple[list[Ingredient], Ingredient | None, VocabularyPlan | None]:
    inputs = [*ingredients, *([base] if base is not None else [])]
    if how.vocab is None:
        if how.vocab_multiple:
            raise SoupError(
                f"{option('vocab_multiple')} pads the vocabulary {option('vocab')} builds; "
                f"add {option('vocab', 'union')} (or base, first)"
            )
        check_same_names(inputs)  # another architecture is told as such, not as a vocabulary
        if not same_vocabulary(inputs):
            named = ", ".join(i.source for i in inputs[:3]) + (", ..." if len(inputs) > 3 else "")
            raise SoupError(
                f"the tokenizers of {named} differ (tokens added in some runs), so one token "
                f"id means different tokens; choose the soup's vocabulary with "
                f"{option('vocab', 'union')} (every token), base or first"
            )
        return list(ingredients), base, None
    aligned, base, plan = align_vocabulary(ingredients, base, how.vocab, how.vocab_multiple)
    if say is not None:
        named = render(option("vocab", how.vocab))
        if plan is None:
            say(f"{named}: the vocabularies agree; nothing to align")
        elif plan.vocab.dropped:
            dropped = plan.vocab.dropped
            say(
                f"{named}: {len(dropped)} token(s) some ingredient has are not in the soup's "
                f"vocabulary and are dropped: {', '.join(dropped[:10])}"
            )
    return aligned, base, plan


def check_adapter_request(
    output: str | Path, inputs: Sequence[Ingredient], base: Ingredient | None
) -> None:
    """A soup written as a LoRA adapter needs an output folder, and adapters to re-rank
    or a base."""
    adapters = any(i.origin.base_source for i in inputs)
    if Path(output).suffix or (not adapters and base is None):
        raise SoupError(
            f"{option('adapter_rank')} writes a PEFT adapter folder: give an output folder "
            "name without a suffix, and LoRA adapter folders as ingredients or "
            f"{option('base', 'THETA0')} (the model the full fine-tunes started from)"
        )


def _check_adapter_shapes(first: Ingredient, base: Ingredient) -> None:
    """Before any work: a soup written as an adapter of ``base`` has its tensors."""
    mine, theirs = first.layout, base.layout
    for name in mine.specs:
        shape = theirs.spec(name).shape if name in theirs.names else None
        if shape != mine.spec(name).shape:
            raise SoupError(
                f"{option('adapter_rank')}: the soup's {name} is {list(mine.spec(name).shape)} "
                f"but the base {base.source} has {list(shape) if shape else 'no such tensor'}, "
                f"so the soup is no adapter of it (with {option('vocab')}, choose "
                f"{option('vocab', 'base')})"
            )
