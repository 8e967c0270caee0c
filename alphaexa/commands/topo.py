"""``alphaexa topo``: describe the node this runs on (torch-free; the code lives in topology.cli)."""
from topology.cli import add_topo_arguments, run_topo

NAME = "topo"
HELP = "describe this node: CPUs, NUMA, GPUs and links, NICs, job node list"


def add_arguments(parser):
    add_topo_arguments(parser)


def run(args) -> int:
    return run_topo(args)
