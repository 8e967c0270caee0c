"""``alphaexa plan``: search parallel layouts (torch-free; the code lives in topology.cli), and with
``--verify`` simulate the best one at full scale (alphaexa.parallel.simulate, needs torch)."""
import json
from functools import partial
from pathlib import Path

from topology.cli import add_plan_arguments, run_plan
from topology.modelcfg import ConfigError

NAME = "plan"
HELP = "plan tp/pp/dp/ep/cp, micro-batch, recomputation and sharding for a model on a system"


def add_arguments(parser):
    add_plan_arguments(parser)
    parser.add_argument("--verify", action="store_true",
                        help="build the best layout's real parallelized model on the meta device under a fake "
                             "process group for sample ranks and compare their shards with the prediction")
    parser.add_argument("--plan-file", default=None, metavar="PLAN.json",
                        help="with --verify: check this plan's best layout (made for the same request) "
                             "instead of the one the search finds")


def run(args) -> int:
    if args.plan_file and not args.verify:
        raise ConfigError("--plan-file is read by --verify only")
    return run_plan(args, check=partial(_verify, plan_file=args.plan_file) if args.verify else None)


def _verify(result, plan_file: str | None):
    from alphaexa.parallel.simulate import TOLERANCE, layout_of_plan_file, verify, verify_table

    layout = result.best.estimate.layout
    if plan_file:
        layout = layout_of_plan_file(_read_plan(plan_file), result.request)
    checked, reports, notes = verify(result.request, layout)
    return checked, "\n".join([*notes, verify_table(reports, checked, layout)]), checked["max_rel_error"] <= TOLERANCE


def _read_plan(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--plan-file {path}: not a readable plan JSON ({e})") from None
