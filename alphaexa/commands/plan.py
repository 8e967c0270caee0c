"""``alphaexa plan``: search parallel layouts (torch-free; the code lives in topology.cli)."""
from topology.cli import add_plan_arguments, run_plan

NAME = "plan"
HELP = "plan tp/pp/dp/ep/cp, micro-batch, recomputation and sharding for a model on a system"


def add_arguments(parser):
    add_plan_arguments(parser)


def run(args) -> int:
    return run_plan(args)
