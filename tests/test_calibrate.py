"""alphaexa calibrate: the fits recover known constants; plan --profile uses them."""
import dataclasses
import json

import pytest

from alphaexa.cli import main as alphaexa_main
from topology import costmodel as cm
from topology.hardware import load_system
from topology.planner import plan
from topology.profile import apply_profile, fit_profile, load_profile

TRUE = {"gemm_efficiency": 0.52, "attention_efficiency": 0.31, "collective_call_us": 40.0}


def synthetic_measurements(system):
    """What a machine with the TRUE constants (and NVLink at 0.6 efficiency) would time."""
    dev = dataclasses.replace(system.node.device, **TRUE)
    link = dataclasses.replace(system.node.link_levels[0].link, efficiency=0.6)
    node = dataclasses.replace(system.node, device=dev, link_levels=(dataclasses.replace(
        system.node.link_levels[0], link=link),))
    truth = dataclasses.replace(system, node=node)
    sync = dev.host_sync_us * 1e-6
    gemm = [{"m": m, "n": n, "k": k, "measured_s": cm.gemm_seconds(dev, m, n, k) + sync}
            for m, n, k in [(4096, 4096, 4096), (8192, 8192, 8192), (8192, 4096, 11008)]]
    attention = [{"batch": 2, "heads": 32, "seq": 4096, "head_dim": 128,
                  "measured_s": (1 + cm.ATTN_BWD_FACTOR) * cm.attention_seconds(dev, 2, 4096, 4096, 4096) + sync}]
    collectives = [{"op": op, "bytes": b, "world": 4,
                    "seconds": cm.collective_seconds(op, b, cm.comm_path(truth, 4, 1)) + sync}
                   for op in ("all_reduce", "all_gather") for b in (1 << 20, 1 << 30)]
    return {"gemm": gemm, "attention": attention, "collectives": collectives}


def test_fit_recovers_the_constants_that_made_the_timings():
    system = load_system("h200-x4")
    profile = fit_profile(system, synthetic_measurements(system))
    assert profile["device"]["gemm_efficiency"] == pytest.approx(TRUE["gemm_efficiency"], rel=0.01)
    assert profile["device"]["attention_efficiency"] == pytest.approx(TRUE["attention_efficiency"], rel=0.01)
    assert profile["device"]["collective_call_us"] == pytest.approx(TRUE["collective_call_us"], rel=0.2)
    assert profile["links"]["NVLink4"]["efficiency"] == pytest.approx(0.6, rel=0.05)


def test_plan_with_a_profile_uses_its_constants(tmp_path):
    system = load_system("h200-x4")
    path = tmp_path / "site.json"
    path.write_text(json.dumps(fit_profile(system, synthetic_measurements(system))))
    profiled = apply_profile(system, load_profile(path))
    assert profiled.node.device.gemm_efficiency == pytest.approx(0.52, rel=0.01)
    assert profiled.node.link_levels[0].link.efficiency == pytest.approx(0.6, rel=0.05)
    pins = {"tp": 1, "pp": 1, "dp": 4, "mbs": 4, "recompute": "none", "sharding": "zero3"}
    slow = plan("1b", profiled, 1, 32, 2048, pins=pins).best.estimate.step_time_s
    fast = plan("1b", system, 1, 32, 2048, pins=pins).best.estimate.step_time_s
    assert slow > 1.15 * fast  # GEMMs at 0.52 instead of 0.665 of peak


def test_calibrate_command_writes_a_profile_plan_reads(tmp_path, capsys):
    out = tmp_path / "cpu.json"
    assert alphaexa_main(["calibrate", "--smoke", "--skip", "collectives", "--out", str(out)]) == 0
    profile = json.loads(out.read_text())
    assert profile["system"] == "cpu" and {"gemm", "attention"} <= set(profile["measured"])
    assert 0 < profile["device"]["gemm_efficiency"]
    assert alphaexa_main(["plan", "--model", "debug", "--system", "cpu", "--global-batch", "4", "--seq-len", "64",
                          "--profile", str(out), "--json"]) == 0


def test_a_file_that_is_not_a_profile_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"device": {}}')
    assert alphaexa_main(["plan", "--model", "debug", "--system", "cpu", "--global-batch", "4", "--seq-len", "64",
                          "--profile", str(bad)]) == 2
    assert "not an alphaexa calibration profile" in capsys.readouterr().err
