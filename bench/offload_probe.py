"""Measure the two rates the offload cost model needs, apart from any training step (issue 14).

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site python3 bench/offload_probe.py --out $OUT --nvme-dir /tmp/alphaexa-probe

1. The host optimizer step, as DeepSpeed's ZeRO-3 runs it per sub-group (stage3.py ``step``) on
   ``--params`` fp32 elements: ``grad.mul_`` (unscale_and_clip_grads), DeepSpeedCPUAdam's step (three
   steps: the first allocates m and v with zeros_like, so it also first-touches 8 bytes a parameter), and
   the copy of the fp32 master into a bf16 buffer.  The cost model's costmodel.HOST_STEP_BYTES (42 a
   parameter) over the measured seconds is the host's streaming rate; HOST_STREAM_GBPS_PER_CORE x cores
   and HOST_FIRST_TOUCH_GBPS are what it predicts (both fitted on the cpu-6l run's steps).
2. The disk under DeepSpeed's own aio op at ZeRO's defaults (block 1 MiB, queue depth 8, overlap_events),
   as the parameter swapper uses it: ``--tensors`` bf16 tensors of ``--tensor-numel`` elements (default
   a 7b FFN matrix), one file each, written then read (all issued then one wait, like a sub-group's
   write-back or a read-ahead; and one at a time, issue + wait); then reads and writes at once on two
   handles.  bench/gpu_offload.LENT_DISK_GBPS (1.84, fitted on the nvme-18l run) is what it predicts.

Writes ``OUT/offload_probe.json``.  Never compiles: any DeepSpeed op not prebuilt is one line and exit 2
(bench/gpu_offload.prebuilt_ops).  ``--smoke``: a CPU check of this script with tiny sizes; torch's
AdamW stands in for cpu_adam when the op is not prebuilt (labelled), and the disk part is skipped when
async_io is not.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GIB = 2**30


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {line}", flush=True)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def host_step(n: int, smoke: bool) -> dict:
    import torch

    from topology.costmodel import HOST_FIRST_TOUCH_GBPS, HOST_STEP_BYTES, HOST_STREAM_GBPS_PER_CORE

    cores = len(os.sched_getaffinity(0))
    p = torch.randn(n, dtype=torch.float32) * 0.02
    p.grad = torch.randn(n, dtype=torch.float32) * 1e-3
    low = torch.empty(n, dtype=torch.bfloat16)
    low.copy_(p)  # touch it once: the bf16 partition exists before any step
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        opt, which = DeepSpeedCPUAdam([p], lr=1e-4, weight_decay=0.1, adamw_mode=True), "deepspeed cpu_adam"
    except Exception as e:  # only the smoke may fall back
        if not smoke:
            raise
        opt, which = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.1), f"torch AdamW (smoke: {type(e).__name__})"
    out = {"params": n, "cores": cores, "torch_threads": torch.get_num_threads(), "optimizer": which,
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    steps = []
    for i in range(3):
        clip = timed(lambda: p.grad.mul_(0.999))
        adam = timed(opt.step)
        copy = timed(lambda: low.copy_(p))
        steps.append({"clip_s": clip, "adam_s": adam, "copy_s": copy, "total_s": clip + adam + copy})
        log(f"host step {i + 1}: clip {clip:.3f} s, adam {adam:.3f} s, bf16 copy {copy:.3f} s")
    steady = sum(s["total_s"] for s in steps[1:]) / 2
    out.update(steps=steps, steady_s=steady, params_per_s=n / steady,
               stream_gbps=n * HOST_STEP_BYTES / steady / 1e9,
               stream_gbps_per_core=n * HOST_STEP_BYTES / steady / 1e9 / cores,
               first_touch_gbps=8 * n / max(steps[0]["total_s"] - steady, 1e-9) / 1e9,
               model={"stream_gbps_per_core": HOST_STREAM_GBPS_PER_CORE, "first_touch_gbps": HOST_FIRST_TOUCH_GBPS,
                      "steady_s": n * HOST_STEP_BYTES / (cores * HOST_STREAM_GBPS_PER_CORE * 1e9)})
    log(f"host step steady {steady:.3f} s for {n / 1e9:.2f}B params on {cores} cores: "
        f"{out['stream_gbps_per_core']:.2f} GB/s a core over {HOST_STEP_BYTES} B/param (model "
        f"{HOST_STREAM_GBPS_PER_CORE}); first touch {out['first_touch_gbps']:.1f} GB/s (model {HOST_FIRST_TOUCH_GBPS})")
    return out


def disk(nvme_dir: Path, tensors: int, numel: int) -> dict:
    import torch
    from deepspeed.ops.op_builder import AsyncIOBuilder

    from bench.gpu_offload import LENT_DISK_GBPS

    aio = AsyncIOBuilder().load(verbose=False)

    def handle():  # ZeRO's aio defaults (deepspeed/runtime/swap_tensor/constants.py)
        return aio.aio_handle(block_size=1048576, queue_depth=8, single_submit=False, overlap_events=True,
                              intra_op_parallelism=1)

    h, h2 = handle(), handle()
    example = torch.empty(0, dtype=torch.bfloat16)
    bufs = [h.new_cpu_locked_tensor(numel, example) for _ in range(tensors)]
    for b in bufs:
        b.normal_()
    nvme_dir.mkdir(parents=True, exist_ok=True)
    paths = [str(nvme_dir / f"probe{i}.swp") for i in range(tensors)]
    extra = [str(nvme_dir / f"probe-extra{i}.swp") for i in range(tensors)]
    total = tensors * numel * 2

    def write_all(handle_, names):
        for b, path in zip(bufs, names):
            assert handle_.async_pwrite(b, path, 0) == 0
        assert handle_.wait() == len(names)

    def read_all(handle_, names):
        for b, path in zip(bufs, names):
            assert handle_.async_pread(b, path, 0) == 0
        assert handle_.wait() == len(names)

    def one_at_a_time(op, names):
        for b, path in zip(bufs, names):
            assert getattr(h, op)(b, path, 0) == 0
            assert h.wait() == 1

    out = {"dir": str(nvme_dir), "bytes": total, "tensor_numel": numel, "tensors": tensors, "model_gbps": LENT_DISK_GBPS}
    out["write_gbps"] = total / timed(lambda: write_all(h, paths)) / 1e9
    write_all(h, extra)  # files for the concurrent write below
    out["read_gbps"] = total / timed(lambda: read_all(h, paths)) / 1e9
    out["write_one_at_a_time_gbps"] = total / timed(lambda: one_at_a_time("async_pwrite", paths)) / 1e9
    out["read_one_at_a_time_gbps"] = total / timed(lambda: one_at_a_time("async_pread", paths)) / 1e9
    # reads and writes at once (two handles, like the read and write handles of the parameter swapper);
    # the buffers are shared, the bytes are what counts here
    import threading

    t = time.perf_counter()
    w = threading.Thread(target=write_all, args=(h2, extra))
    w.start()
    read_all(h, paths)
    w.join()
    out["read_and_write_at_once_gbps"] = 2 * total / (time.perf_counter() - t) / 1e9
    for path in paths + extra:
        os.remove(path)
    log("disk (aio, ZeRO defaults): " + ", ".join(f"{k} {v:.2f}" for k, v in out.items() if k.endswith("gbps")))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--nvme-dir", default="/tmp/alphaexa-probe")
    parser.add_argument("--params", type=float, default=1.5e9, help="fp32 elements of the host step (1.5e9: cpu-6l's)")
    parser.add_argument("--tensors", type=int, default=48, help="bf16 tensors written/read (48 x 86 MiB = 4.0 GiB)")
    parser.add_argument("--tensor-numel", type=int, default=4096 * 11008, help="elements each (a 7b FFN matrix)")
    parser.add_argument("--smoke", action="store_true", help="CPU check of this script: tiny sizes, fallbacks allowed")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.params, args.tensors, args.tensor_numel = 2e6, 4, 1 << 20
    else:
        from bench.gpu_offload import libaio, prebuilt_ops

        libaio()
        log("prebuilt ops loaded: " + ", ".join(f"{k} {v:.2f} s" for k, v in prebuilt_ops().items()))
    result = {"host_step": host_step(int(args.params), args.smoke)}
    try:
        result["disk"] = disk(Path(args.nvme_dir), args.tensors, args.tensor_numel)
    except Exception as e:  # only the smoke may go on without the disk part
        if not args.smoke:
            raise
        result["disk"] = f"skipped in the smoke: {type(e).__name__}: {str(e)[:200]}"
        log(result["disk"])
    (out_dir / "offload_probe.json").write_text(json.dumps(result, indent=1))
    log(f"wrote {out_dir / 'offload_probe.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
