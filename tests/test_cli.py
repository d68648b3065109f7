"""The command line: thin wrappers that exit non-zero with a clear message on bad input."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import digest, finetunes, write_hf_folder
from safetensors.torch import load_file, save_file

from modelsoup.cli import build_parser, main


@pytest.fixture
def files(tmp_path):
    paths = []
    for i, sd in enumerate(finetunes(3)):
        paths.append(tmp_path / f"ft{i}.safetensors")
        save_file(sd, paths[-1])
    base = tmp_path / "base.safetensors"
    save_file(finetunes(1, scale=0.0)[0], base)
    return paths, base


def test_uniform_writes_the_average(tmp_path, files, capsys):
    paths, _ = files
    out = tmp_path / "soup.safetensors"
    assert main(["uniform", *map(str, paths), "-o", str(out), "-q"]) == 0
    assert "uniform soup of 3 ingredients" in capsys.readouterr().out
    soup = load_file(out)
    sds = [load_file(p) for p in paths]
    torch.testing.assert_close(soup["body.0.weight"], sum(s["body.0.weight"] for s in sds) / 3)


def test_uniform_weights_dtype_and_folder_output(tmp_path):
    folders = [write_hf_folder(tmp_path / f"m{i}", sd) for i, sd in enumerate(finetunes(2))]
    out = tmp_path / "soup"
    assert (
        main(
            [
                "uniform",
                *map(str, folders),
                "-o",
                str(out),
                "--weights",
                "0.25",
                "0.75",
                "--dtype",
                "bfloat16",
                "-q",
            ]
        )
        == 0
    )
    st = load_file(out / "model.safetensors")
    assert st["body.0.weight"].dtype == torch.bfloat16
    a, b = (load_file(f / "model.safetensors") for f in folders)
    ref = (0.25 * a["body.0.weight"] + 0.75 * b["body.0.weight"]).bfloat16()
    torch.testing.assert_close(st["body.0.weight"], ref)
    assert (out / "config.json").read_text() == (folders[0] / "config.json").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "0.5", "0.6", "0.1"], "sum to 1"),
        (["--weights", "1"], "1 weights for 3 ingredients"),
    ],
)
def test_uniform_bad_weights_exit_2(tmp_path, files, capsys, extra, message):
    paths, _ = files
    hashes = [digest(p) for p in paths]
    out = tmp_path / "soup.safetensors"
    assert main(["uniform", *map(str, paths), "-o", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert [digest(p) for p in paths] == hashes


def test_uniform_refuses_input_as_output(files, capsys):
    paths, _ = files
    before = digest(paths[0])
    assert main(["uniform", *map(str, paths), "-o", str(paths[0]), "--force"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert digest(paths[0]) == before


def test_uniform_duplicate_and_mismatch(tmp_path, files, capsys):
    paths, _ = files
    assert main(["uniform", str(paths[0]), str(paths[0]), "-o", str(tmp_path / "x.pt")]) == 2
    assert "listed twice" in capsys.readouterr().err
    sd = finetunes(1)[0]
    sd["body.0.weight"] = torch.zeros(3, 3)
    save_file(sd, tmp_path / "odd.safetensors")
    assert (
        main(
            [
                "uniform",
                str(paths[0]),
                str(tmp_path / "odd.safetensors"),
                "-o",
                str(tmp_path / "x.pt"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "'body.0.weight' has shape [8, 8]" in err and "odd.safetensors" in err


def test_inspect_reports_sizes_cosines_and_angles(files, capsys):
    paths, base = files
    assert main(["inspect", *map(str, paths), "--base", str(base), "-q"]) == 0
    out = capsys.readouterr().out
    assert "safetensors" in out and "cosine similarity" in out and "angles between" in out
    assert main(["inspect", *map(str, paths), "--base", str(base), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["parameters"] for r in report["ingredients"]] == [
        sum(t.numel() for t in load_file(p).values()) for p in paths
    ]
    cos = report["cosine"]
    assert all(abs(cos[i][i] - 1) < 1e-12 for i in range(3))
    ang = report["task_vector_angle_degrees"]
    assert ang[0][1] == pytest.approx(ang[1][0]) and 30 < ang[0][1] < 150


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"{name}: option {action.dest} has no help text"


def test_console_script_runs(tmp_path, files):
    paths, _ = files
    out = tmp_path / "soup.pt"
    r = subprocess.run(
        [sys.executable, "-m", "modelsoup.cli", "uniform", *map(str, paths), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert set(torch.load(out, weights_only=True)) == set(load_file(paths[0]))
    r = subprocess.run(
        [sys.executable, "-m", "modelsoup", "uniform", *map(str, paths), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "exists; pass --force" in r.stderr
    # the console entry leaves with os._exit: exit codes and messages must survive it
    r = subprocess.run([sys.executable, "-m", "modelsoup", "uniform"], capture_output=True)
    assert r.returncode == 2 and b"required: INGREDIENT" in r.stderr
    r = subprocess.run([sys.executable, "-m", "modelsoup", "--help"], capture_output=True)
    assert r.returncode == 0 and b"uniform" in r.stdout


def test_a_large_soup_is_announced_with_its_size_before_it_is_written(
    tmp_path, files, capsys, monkeypatch
):
    from modelsoup.cli import output

    paths, _ = files
    out = tmp_path / "soup.safetensors"
    assert main(["uniform", *map(str, paths), "-o", str(out), "-q"]) == 0
    assert "writing" not in capsys.readouterr().err  # small: nothing said
    nbytes = sum(t.numel() * t.element_size() for t in load_file(out).values())
    monkeypatch.setattr(output, "ANNOUNCE_BYTES", nbytes - 1)
    assert main(["uniform", *map(str, paths), "-o", str(out), "-q", "--force"]) == 0
    assert f"writing {nbytes / 1e9:.1f} GB to {out}" in capsys.readouterr().err
