"""``alphaexa calibrate``: measure this machine and write a profile ``alphaexa plan --profile`` reads."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

NAME = "calibrate"
HELP = "measure GEMMs, attention and collectives here; write a planner profile (alphaexa plan --profile)"


def add_arguments(parser):
    parser.add_argument("--out", required=True, help="profile file to write (JSON)")
    parser.add_argument("--system", default=None,
                        help="catalogue entry or file the profile refines (default: h100-xN / h200-xN for the "
                             "GPUs found, cpu with --smoke)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs for the collectives (default: all visible)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["gemm", "attention", "collectives"])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes on the CPU with gloo: checks the command, the figures mean nothing")


def _default_system(n_gpus: int, smoke: bool) -> str:
    if smoke:
        return "cpu"
    import torch

    name = torch.cuda.get_device_name(0).upper()
    family = "h200" if "H200" in name else "h100"
    return f"{family}-x{n_gpus}"


def run(args) -> int:
    import torch

    from alphaexa.calibrate import measure_machine
    from alphaexa.errors import ConfigError
    from topology.planner import resolve_system
    from topology.profile import fit_profile

    if not args.smoke and not torch.cuda.is_available():
        raise ConfigError("calibrate needs a CUDA GPU (or --smoke to check the command on the CPU)")
    n_devices = args.gpus or (2 if args.smoke else torch.cuda.device_count())
    system = resolve_system(args.system or _default_system(n_devices, args.smoke))
    with tempfile.TemporaryDirectory() as tmp:
        measured = measure_machine(args.smoke, n_devices, Path(tmp), tuple(args.skip))
    profile = fit_profile(system, measured)
    profile["torch"] = torch.__version__
    profile["measured_on"] = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(profile, indent=1) + "\n")
    fitted = {**profile["device"], **{f"{k}.efficiency": v["efficiency"] for k, v in profile["links"].items()}}
    print(f"profile for {system.name} written to {args.out}: "
          + ", ".join(f"{k} {v}" for k, v in fitted.items()))
    return 0
