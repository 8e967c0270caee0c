"""Calibrate the planner's cost model on NVIDIA GPUs: measured vs predicted, with % error.

Run on an H100/H200 machine (1..8 GPUs); everything is self-contained and takes
well under 4 minutes:

    python bench/gpu_calibrate.py --capture-topo tests/data/topo/h200_x8_nvidia_smi_topo.txt \
        --out calibration.json

1. bf16 matmul throughput at several sizes (square and transformer-shaped GEMMs)
   vs ``costmodel.gemm_seconds`` for the matching device;
2. NCCL all-reduce / all-gather / reduce-scatter / all-to-all at several sizes
   on 2, 4, ... GPUs (torch.distributed, one process per GPU via mp.spawn) vs
   ``costmodel.collective_seconds`` on the matching ``h100-xN`` / ``h200-xN``;
3. if ``alphaexa.model`` is importable: forward+backward of a small transformer
   (presets 125m, 1b and 1b-moe) on one GPU vs the cost model's per-micro-batch
   compute (3x the forward of ``costmodel.structures``);
4. ``--capture-topo PATH`` writes ``nvidia-smi topo -m`` to PATH (add it to
   tests/data/topo/ so the discovery parser is tested on a real capture).

``--smoke`` runs tiny sizes on the CPU with gloo so the script itself can be
checked on a machine without GPUs (its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alphaexa.calibrate import (
    COLLECTIVE_BYTES,
    GEMM_SHAPES,
    SMOKE_COLLECTIVE_BYTES,
    SMOKE_GEMM_SHAPES,
    group_sizes,
    measure_collectives,
    measure_gemms,
    timed,
)
from topology import costmodel as cm
from topology.hardware import load_system

MODEL_CASES = [("125m", 8, 2048), ("1b", 4, 2048), ("1b-moe", 4, 2048)]


def pct(measured: float, predicted: float) -> float:
    return 100.0 * (predicted - measured) / measured


def system_for(n_gpus: int, smoke: bool):
    if smoke:
        return load_system("cpu")
    name = torch.cuda.get_device_name(0).upper()
    family = "h200" if "H200" in name else "h100"
    if "H100" not in name and "H200" not in name:
        print(f"note: {name} is neither H100 nor H200; comparing with the {family} presets")
    return load_system(f"{family}-x{n_gpus}")


# ------------------------------------------------------------------ GEMMs
def bench_gemms(device: torch.device, smoke: bool) -> list[dict]:
    system = system_for(1, smoke)
    print(f"\n== bf16 matmul on {device} vs cost model ({system.node.device.name}) ==")
    print(f"{'M':>6} {'N':>6} {'K':>6} {'measured TF/s':>14} {'predicted TF/s':>15} {'time err':>9}")
    rows = []
    for r in measure_gemms(device, SMOKE_GEMM_SHAPES if smoke else GEMM_SHAPES, 0.05 if smoke else 0.3):
        m, n, k, t = r["m"], r["n"], r["k"], r["measured_s"]
        pred = cm.gemm_seconds(system.node.device, m, n, k)
        flops = 2.0 * m * n * k
        rows.append({**r, "predicted_s": pred, "error_pct": pct(t, pred)})
        print(f"{m:6d} {n:6d} {k:6d} {flops / t / 1e12:14.1f} {flops / pred / 1e12:15.1f} {pct(t, pred):+8.1f}%")
    return rows


# ------------------------------------------------------------ collectives
def bench_collectives(n_gpus: int, smoke: bool, tmp: Path) -> list[dict]:
    rows = []
    sizes = SMOKE_COLLECTIVE_BYTES if smoke else COLLECTIVE_BYTES
    for world in group_sizes(n_gpus):
        system = system_for(world, smoke)
        path = cm.comm_path(system, world, 1)
        print(f"\n== {world} ranks, {'gloo' if smoke else 'NCCL'} vs cost model ({system.name}, "
              f"{path.link_class}) ==")
        print(f"{'op':>15} {'MiB':>8} {'measured ms':>12} {'predicted ms':>13} {'busbw GB/s':>11} {'err':>8}")
        for r in measure_collectives(world, sizes, smoke, tmp):
            pred = cm.collective_seconds(r["op"], r["bytes"], path)
            factor = {"all_reduce": 2 * (world - 1) / world}.get(r["op"], (world - 1) / world)
            busbw = r["bytes"] * factor / r["seconds"] / 1e9
            rows.append({**r, "predicted_s": pred, "error_pct": pct(r["seconds"], pred)})
            print(f"{r['op']:>15} {r['bytes'] / 2**20:8.1f} {1e3 * r['seconds']:12.3f} {1e3 * pred:13.3f} "
                  f"{busbw:11.1f} {pct(r['seconds'], pred):+7.1f}%")
    return rows


# ------------------------------------------------------------ the model
def bench_model(device: torch.device, smoke: bool) -> list[dict]:
    try:
        from alphaexa.model import build_model
    except ImportError as e:
        print(f"\n(skipping the transformer step: alphaexa.model is not importable: {e})")
        return []
    from topology.presets import get_preset

    system = system_for(1, smoke)
    cases = [("debug", 2, 64)] if smoke else MODEL_CASES
    print(f"\n== transformer forward+backward on one {device.type} device vs cost model ({system.name}) ==")
    print(f"{'model':>8} {'mbs':>4} {'seq':>5} {'measured s':>11} {'predicted s':>12} {'err':>8}")
    rows = []
    for preset, mbs, seq in cases:
        cfg = get_preset(preset)
        model = build_model(cfg, device=device, dtype=torch.bfloat16)
        tokens = torch.randint(0, cfg.vocab_size, (mbs, seq + 1), device=device)

        def step(model=model, tokens=tokens, cfg=cfg):
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, cfg.vocab_size),
                                                     tokens[:, 1:].reshape(-1))
            loss.backward()
            model.zero_grad(set_to_none=True)

        t = timed(step, device, 0.1 if smoke else 2.0, warmup=2)
        req = cm.Request(cfg, system, 1, mbs, seq)
        st = cm.structures(req, 1, 1, 1, mbs, 1, 1, "1f1b", ("none",))["none"].stages[0]
        pred = st.t_f + st.t_b
        rows.append({"model": preset, "mbs": mbs, "seq": seq, "measured_s": t, "predicted_s": pred,
                     "error_pct": pct(t, pred)})
        print(f"{preset:>8} {mbs:4d} {seq:5d} {t:11.4f} {pred:12.4f} {pct(t, pred):+7.1f}%")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def capture_topology(path: str) -> None:
    try:
        res = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"could not capture nvidia-smi topo -m: {e}")
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(res.stdout)
    print(f"wrote nvidia-smi topo -m to {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=0, help="GPUs for the collectives (default: all visible)")
    ap.add_argument("--capture-topo", default=None, metavar="PATH", help="write `nvidia-smi topo -m` here")
    ap.add_argument("--out", default=None, help="write every measurement as JSON here")
    ap.add_argument("--skip", nargs="*", default=[], choices=["gemm", "collectives", "model"])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU/gloo: checks the script, not the model")
    args = ap.parse_args()
    if args.capture_topo:
        capture_topology(args.capture_topo)
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run on an H100/H200 machine (or --smoke to check the script on CPU)")
        return 2
    device = torch.device("cpu") if args.smoke else torch.device("cuda", 0)
    n_gpus = args.gpus or (2 if args.smoke else torch.cuda.device_count())
    started = time.perf_counter()
    report: dict = {"device": "cpu" if args.smoke else torch.cuda.get_device_name(0), "gpus": n_gpus}
    if "gemm" not in args.skip:
        report["gemm"] = bench_gemms(device, args.smoke)
    if "collectives" not in args.skip and n_gpus >= 2:
        with tempfile.TemporaryDirectory() as tmp:
            report["collectives"] = bench_collectives(n_gpus, args.smoke, Path(tmp))
    if "model" not in args.skip:
        report["model"] = bench_model(device, args.smoke)
    errors = [abs(r["error_pct"]) for part in ("gemm", "collectives", "model") for r in report.get(part, [])]
    if errors:
        print(f"\n|error|: median {statistics.median(errors):.1f}%, max {max(errors):.1f}% over {len(errors)} "
              f"measurements; {time.perf_counter() - started:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
