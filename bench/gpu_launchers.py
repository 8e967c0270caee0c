"""Check launchers/local.sh and the per-rank wrapper on a machine with GPUs; prints figures, exits non-zero on failure.

    python bench/gpu_launchers.py                 # all visible GPUs (needs >= 2 for the issue's check)
    python bench/gpu_launchers.py --nproc 2 --config configs/debug.toml

Sections:
  1. launchers/lib/rank_env.sh under mpiexec with the Polaris-style reversed device list
     (local rank r -> GPU N-1-r): each rank must see exactly one GPU, and its UUID must be
     the UUID nvidia-smi reports for GPU N-1-r (so the narrowing really selects the device
     the plan names, not just "some GPU");
  2. launchers/local.sh with LAUNCHER=torchrun and LAUNCHER=mpiexec on N GPUs: the run
     must finish with a checkpoint saved by N ranks; prints wall time, steps/s and the
     last loss of each.

Runs on a CPU-only machine too (section 1 is skipped, section 2 runs N CPU ranks), which is
how its logic was checked before it met a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def gpu_uuids() -> list[str]:
    """GPU UUIDs in CUDA's default (PCI bus) order, as nvidia-smi lists them."""
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"], capture_output=True,
                         text=True, check=False)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def check_rank_env(uuids: list[str], nproc: int) -> bool:
    print(f"== rank_env.sh: {nproc} ranks, local rank r -> GPU {nproc - 1}-r")
    mpiexec = shutil.which("mpiexec", path=base_env()["PATH"])
    if mpiexec is None:
        print("   SKIP: no mpiexec (pip install mpich)")
        return True
    devices = ":".join(str(nproc - 1 - r) for r in range(nproc))
    probe = ("import os, torch; print(next(os.environ[v] for v in ('PALS_LOCAL_RANKID', 'MPI_LOCALRANKID', 'OMPI_COMM_WORLD_LOCAL_RANK') if v in os.environ), torch.cuda.device_count(), "
             "'GPU-' + str(torch.cuda.get_device_properties(0).uuid))")
    proc = subprocess.run([mpiexec, "-n", str(nproc), str(ROOT / "launchers/lib/rank_env.sh"), sys.executable,
                           "-c", probe], capture_output=True, text=True, check=False, timeout=300,
                          env=base_env(ALPHAEXA_VISIBILITY_VAR="CUDA_VISIBLE_DEVICES", ALPHAEXA_DEVICE_LIST=devices))
    if proc.returncode != 0:
        print(f"   FAIL: exit {proc.returncode}\n{proc.stderr[-2000:]}")
        return False
    ok = True
    for line in sorted(proc.stdout.splitlines()):
        local, count, uuid = line.split()
        want = uuids[nproc - 1 - int(local)]
        good = count == "1" and uuid == want
        ok &= good
        print(f"   local {local}: sees {count} GPU, {uuid}  (want {want})  {'ok' if good else 'FAIL'}")
    return ok


def run_local(launcher: str, nproc: int, config: str, steps: int) -> bool:
    print(f"== launchers/local.sh LAUNCHER={launcher} NPROC={nproc} {config} ({steps} steps)")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        proc = subprocess.run([str(ROOT / "launchers/local.sh"), "--config", config, "--run-dir", str(run_dir),
                               "--set", f"train.steps={steps}", "--set", f"checkpoint.every={steps}"],
                              cwd=ROOT, capture_output=True, text=True, check=False, timeout=1800,
                              env=base_env(LAUNCHER=launcher, NPROC=str(nproc)))
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(f"   FAIL: exit {proc.returncode}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
            return False
        latest = (run_dir / "checkpoints" / "latest").read_text().strip()
        manifest = json.loads((run_dir / "checkpoints" / latest / "manifest.json").read_text())
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if "loss" in r]
        ok = manifest["world_size"] == nproc and manifest["step"] == steps
        print(f"   {'ok' if ok else 'FAIL'}: checkpoint {latest} by {manifest['world_size']} ranks, "
              f"wall {wall:.1f} s ({steps / wall:.2f} steps/s incl. start-up), "
              f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=None, help="ranks (default: all visible GPUs, else 2)")
    parser.add_argument("--config", default="configs/debug.toml")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    uuids = gpu_uuids()
    nproc = args.nproc or (len(uuids) if uuids else 2)
    print(f"GPUs: {len(uuids)}; ranks: {nproc}")
    ok = True
    if uuids:
        if nproc > len(uuids):
            print(f"--nproc {nproc} exceeds the {len(uuids)} GPUs")
            return 2
        ok &= check_rank_env(uuids, nproc)
    else:
        print("== rank_env.sh: SKIP (no GPU)")
    for launcher in ("torchrun", "mpiexec"):
        ok &= run_local(launcher, nproc, args.config, args.steps)
    print("ALL OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
