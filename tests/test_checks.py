"""Validation happens before any work and names both files, the tensor and the shapes."""

import pytest
import torch
from helpers import finetunes
from safetensors.torch import save_file

from modelsoup import (
    MismatchError,
    SoupError,
    StateDictIngredient,
    check_compatible,
    open_ingredient,
    weighted_average,
)
from modelsoup.ops.checks import check_distinct


def _files(tmp_path, sds):
    paths = []
    for i, sd in enumerate(sds):
        p = tmp_path / f"ing{i}.safetensors"
        save_file(sd, p)
        paths.append(p)
    return [open_ingredient(p) for p in paths]


def test_missing_tensor_names_both_files(tmp_path):
    a, b = finetunes(2)
    del b["body.0.bias"]
    ings = _files(tmp_path, [a, b])
    with pytest.raises(
        MismatchError,
        match=r"ing0\.safetensors are missing from .*ing1"
        r"\.safetensors, first 'body\.0\.bias'",
    ):
        check_compatible(ings)


def test_extra_tensor_in_second(tmp_path):
    a, b = finetunes(2)
    b["extra.weight"] = torch.zeros(3)
    with pytest.raises(MismatchError, match=r"ing1\.safetensors are missing from .*'extra"):
        check_compatible(_files(tmp_path, [a, b]))


def test_shape_mismatch_names_tensor_files_and_shapes(tmp_path):
    a, b = finetunes(2)
    b["body.0.weight"] = torch.zeros(8, 9)
    with pytest.raises(
        MismatchError,
        match=r"'body\.0\.weight' has shape \[8, 8\] in .*ing0"
        r"\.safetensors but \[8, 9\] in .*ing1\.safetensors",
    ):
        check_compatible(_files(tmp_path, [a, b]))


def test_dtype_mismatch(tmp_path):
    (a,) = finetunes(1)
    (b,) = finetunes(1, dtype=torch.float16)
    ings = _files(tmp_path, [a, b])
    with pytest.raises(
        MismatchError,
        match=r"'body\.0\.bias' is float32\[8\] in .*ing0.* but float16\[8\] in .*ing1.*with dtype",
    ):
        check_compatible(ings)
    check_compatible(ings, allow_float_dtype_mix=True)
    soup = weighted_average(ings, dtype=torch.float32)  # the fix works
    assert soup.layout.specs["body.0.weight"].dtype == torch.float32
    c = dict(a)
    c["body.1.num_batches_tracked"] = c["body.1.num_batches_tracked"].to(torch.int32)
    with pytest.raises(MismatchError, match="never converted"):
        check_compatible(
            [StateDictIngredient(a), StateDictIngredient(c)], allow_float_dtype_mix=True
        )


def test_no_ingredients():
    with pytest.raises(SoupError, match="no ingredients"):
        check_compatible([])
    with pytest.raises(SoupError, match="no ingredients"):
        weighted_average([])


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([0.5], "1 weights for 2 ingredients"),
        ([0.5, 0.5, 0.0], "3 weights for 2 ingredients"),
        ([-0.5, 1.5], "non-negative"),
        ([1.0, 1.0], r"sum to 1, they sum to 2; normalized they would be \[0.5, 0.5\]"),
        ([float("nan"), 1.0], "finite"),
    ],
)
def test_bad_weights(weights, message):
    ings = [StateDictIngredient(sd) for sd in finetunes(2)]
    with pytest.raises(SoupError, match=message):
        weighted_average(ings, weights)


def test_duplicate_paths(tmp_path):
    (a,) = finetunes(1)
    save_file(a, tmp_path / "a.safetensors")
    ings = [
        open_ingredient(tmp_path / "a.safetensors"),
        open_ingredient(tmp_path / "." / "a.safetensors"),
    ]
    with pytest.raises(SoupError, match="listed twice"):
        check_distinct(ings)


def test_ties_are_kept_only_when_tied_everywhere():
    shared = torch.randn(4)
    tied = {"a": shared, "b": shared}
    untied = {"a": shared.clone(), "b": shared.clone() + 1}
    assert check_compatible([StateDictIngredient(tied)] * 2).aliases == {"b": "a"}
    lay = check_compatible([StateDictIngredient(tied), StateDictIngredient(untied)])
    assert lay.aliases == {} and set(lay.specs) == {"a", "b"}


def test_a_tie_left_out_by_one_ingredient_is_implied():
    """A name one checkpoint holds only as a tie (head -> embed) may be missing from
    another; a name stored as its own tensor somewhere may not."""
    embed = torch.randn(11, 8)
    tied = StateDictIngredient({"embed": embed, "head": embed, "b": torch.zeros(3)})
    omitted = StateDictIngredient({"embed": torch.randn(11, 8), "b": torch.ones(3)})
    for order in ([tied, omitted], [omitted, tied]):
        layout = check_compatible(order)
        assert set(layout.specs) == {"embed", "b"}
        assert layout.aliases == ({"head": "embed"} if order[0] is tied else {})
    untied = StateDictIngredient({"embed": embed, "head": embed.clone(), "b": torch.zeros(3)})
    with pytest.raises(MismatchError, match="'head'"):
        check_compatible([untied, omitted])
    soup = weighted_average([tied, omitted])
    assert torch.equal(soup.get("head"), soup.get("embed"))


def test_the_library_names_parameters_and_the_command_line_names_flags(tmp_path, capsys):
    """One remedial text, two spellings: a Python caller reads ``gamma`` and
    ``force=True``, the command line ``--gamma`` and ``--force``."""
    from modelsoup.checkpoints.ingredients import StateDictIngredient
    from modelsoup.cli import main
    from modelsoup.errors import SoupError
    from modelsoup.merges.breadcrumbs import breadcrumbs

    a = StateDictIngredient({"w": torch.ones(4)}, "a")
    with pytest.raises(SoupError) as e:
        breadcrumbs([a, a], a, gamma=1.5)
    assert "gamma must be" in str(e.value) and "--gamma" not in str(e.value)
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"x")
    save_file({"w": torch.ones(4)}, tmp_path / "a.safetensors")
    save_file({"w": torch.zeros(4)}, tmp_path / "b.safetensors")
    capsys.readouterr()
    assert main(["uniform", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                 "-o", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "pass --force" in err and "force=True" not in err
