"""The Max 1550 tile's GEMM rate at the shapes of the Aurora rows (group unseen8).

docs/planner.md section 10, "Session 8: the Max 1550's GEMM rate by shape": no published by-shape
measurement puts these shapes materially below the large-GEMM figure, so the cost model gives every one
of them the device's full rate (wave utilisation 1, or 0.99).  These tests pin that statement, so the docs go
stale loudly if the wave model, the tile's compute units or its GEMM figure change.  Since session 9 (branch
auroracal11) the figure a training step gets is ALCF's times PVC_TRAINING_RATE_SCALE, fitted on the cooldown run.
"""
from __future__ import annotations

import pytest

from topology import costmodel as cm
from topology.hardware import PVC_GEMM_TFLOPS, PVC_TILE, PVC_TRAINING_RATE_SCALE

TRAINING_GEMM_TFLOPS = PVC_GEMM_TFLOPS * PVC_TRAINING_RATE_SCALE

# (m, n, k) of each projection, forward layout: tokens x out x in.
SWEEP_LLAMA3 = [(8192, 5120, 3072), (8192, 3072, 3072), (8192, 16384, 3072), (8192, 3072, 8192),
                (8192, 256000, 3072)]  # QKV, attention out, gate+up, down, LM head (seq 8192, MBS 1)
SWEEP_SMOLLM3 = [(8192, 3072, 2048), (8192, 2048, 2048), (8192, 22016, 2048), (8192, 2048, 11008),
                 (8192, 256000, 2048)]
LLAMA2_70B_TP2 = [(4096, 5120, 8192), (4096, 8192, 4096), (4096, 28672, 8192), (4096, 8192, 14336),
                  (4096, 16000, 8192)]  # TP 2 shards of each projection, seq 4096, MBS 1


def _rate_tflops(m: int, n: int, k: int) -> float:
    seconds = cm.gemm_seconds(PVC_TILE, m, n, k) - PVC_TILE.launch_us * 1e-6
    return 2.0 * m * n * k / seconds / 1e12


@pytest.mark.parametrize("shape", SWEEP_LLAMA3 + SWEEP_SMOLLM3 + LLAMA2_70B_TP2)
def test_unseen8_gemms_run_at_the_tiles_large_gemm_figure(shape):
    # Each of these GEMMs fills its waves of 128x128 tiles over the tile's 64 Xe cores (all but the 70B
    # rows' LM head shard exactly; that one 4000 of 4032 slots) and each is compute-bound: the model gives
    # it bf16 peak x gemm_efficiency, ALCF's full-node 8192^3 figure (times the training rate scale), to within 1%.
    assert _rate_tflops(*shape) == pytest.approx(TRAINING_GEMM_TFLOPS, rel=0.01)


def test_the_tiles_gemm_curve_is_only_wave_quantisation():
    # No per-device shape curve for the Max 1550: a GEMM that leaves a wave part-empty is slower per FLOP
    # by exactly its utilisation (8320 x 1024: 65 x 8 = 520 tiles in 9 waves of 64, 520 of 576 slots).
    full = _rate_tflops(8192, 1024, 8192)
    part = _rate_tflops(8320, 1024, 8192)
    assert full == pytest.approx(TRAINING_GEMM_TFLOPS, rel=0.005)
    assert part == pytest.approx(TRAINING_GEMM_TFLOPS * 520 / 576, rel=0.005)
