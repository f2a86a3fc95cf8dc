"""`midalign run`: execute an experiment recipe end to end and write its report."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from midalign.data.origin import describe
from midalign.errors import InputError
from midalign.experiments.recipe import SECTION_OPTIONS, apply_overrides, load_recipe
from midalign.experiments.runner import Runner, RunOptions
from midalign.files import check_run_dir
from midalign.report.markdown import write_report


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run an experiment recipe: train, merge, evaluate, probe, report",
        description="Execute a YAML recipe (recipes/*.yaml): prepare the task data, train every "
        "system with every seed, merge adapters, evaluate on the test languages, probe "
        "retrieval before and after, and write <out>/report/ (report.md with a Table-2-style "
        "table of mean ± 95 % CI over seeds, results.json, scores.png, retrieval.png, "
        "correlation.png). Finished steps are reused (cached by a hash of their settings); "
        "a killed run continues where it stopped, training from its last checkpoint.",
    )
    p.add_argument("recipe", type=Path, help="the recipe YAML file")
    p.add_argument(
        "--out",
        type=Path,
        help="run directory (default: runs/<recipe name>); steps live in <out>/steps/",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list the steps and whether each is already done, without running any, and "
        "what the steps to run read: the model and data sources, each with where it comes "
        "from (this machine, the hub, npm) or that it is not found here",
    )
    p.add_argument(
        "--seeds",
        help="comma-separated subset of the recipe's seeds to run and report, e.g. 1 for a "
        "first look; its steps are the full run's, so a later run without --seeds reuses them",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for section, cls in SECTION_OPTIONS.items():
        group = p.add_argument_group(
            f"{section} settings, laid over the recipe's (a new value is a new step, as in the "
            "YAML)"
        )
        for f in dataclasses.fields(cls):
            default = "" if f.default in (None, dataclasses.MISSING) else f" (default: {f.default})"
            group.add_argument(
                f"--{section}.{f.name}",
                dest=f"{_PREFIX}{section}.{f.name}",
                default=argparse.SUPPRESS,
                metavar=f.name.upper(),
                help=(f.metadata["help"] + default).replace("%", "%%"),
            )


_PREFIX = "recipe:"  # argparse dest prefix of the generated section options


def _seeds(value: str, recipe_seeds: list[int]) -> list[int]:
    try:
        seeds = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--seeds: expected comma-separated integers, got {value!r}") from None
    missing = [s for s in seeds if s not in recipe_seeds]
    if not seeds or missing:
        raise InputError(
            f"--seeds: {value!r} is not a subset of the recipe's seeds "
            f"{', '.join(map(str, recipe_seeds))}"
        )
    return list(dict.fromkeys(seeds))


def run(args: argparse.Namespace) -> int:
    start = time.time()
    recipe = load_recipe(args.recipe)
    overrides = {k[len(_PREFIX) :]: v for k, v in vars(args).items() if k.startswith(_PREFIX)}
    if overrides:
        recipe = apply_overrides(recipe, overrides)
    if args.seeds is not None:
        recipe = dataclasses.replace(recipe, seeds=_seeds(args.seeds, recipe.seeds))
    out = args.out or Path("runs") / recipe.name
    runner = Runner(
        recipe, RunOptions(out=out, progress=not args.no_progress, dry_run=args.dry_run)
    )
    check_run_dir(out, write=not args.dry_run)
    outcome = runner.run()
    if args.dry_run:
        for name in runner.steps.reused:
            print(f"done     {name}")
        for name in runner.steps.ran:
            fields = dict.fromkeys(field for field, _, _ in runner.steps.reads[name])
            print(f"to run   {name}" + (f"   reads {', '.join(fields)}" if fields else ""))
        reads = [read for name in runner.steps.ran for read in runner.steps.reads[name]]
        for line in describe(reads):
            print(line)
        return 0
    summary = write_report(recipe, outcome, runner.groups, out)
    print((out / "report" / "report.md").read_text(encoding="utf-8"))
    print(
        f"{len(runner.steps.ran)} steps run, {len(runner.steps.reused)} reused, "
        f"{time.time() - start:.0f} s; report in {out}/report/"
    )
    return 0 if summary["table"] or summary.get("retrieval") else 1
