"""The validation record a plan shows for its device (issue 15): computed from the published rows, not copied."""
from __future__ import annotations

import json
import statistics

from topology import validation
from topology.cli import main
from topology.hardware import PRESETS, system_from_dict
from topology.planner import plan
from topology.profile import apply_profile

MAX1550 = PRESETS["aurora"].node.device.name


def small_plan(system, explain=False):
    return plan("debug", system, 1, 24, 128, top=1, explain=explain)


def errors_by_split(device: str) -> dict[str, list[float]]:
    """Each split's errors of the validation table's rows on ``device`` (its own code path: every row)."""
    out: dict[str, list[float]] = {}
    for row in validation.evaluate():
        if validation.system_of(row.run).node.device.name == device:
            out.setdefault(row.run.split, []).append(row.error_pct)
    return out


def test_an_aurora_plan_shows_the_max1550_rows_record_under_its_table():
    by_split = errors_by_split(MAX1550)
    errors = by_split["heldout"]
    total = sum(len(e) for e in by_split.values())  # since session 9 (auroracal11) one fit row: the cooldown run
    mean = statistics.fmean(errors)
    assert mean < 0  # the published Aurora runs are all slower than predicted today
    result = small_plan("aurora", explain=True)
    lines = result.table().splitlines()
    record = lines[-2:]
    assert record[0].startswith(f"Validation on {MAX1550},")
    assert f"{total} published runs on aurora: {len(errors)} held out, mean {mean:+.1f}%" in record[0]
    assert f"range {min(errors):+.1f}%..{max(errors):+.1f}%" in record[0]
    lo, hi = 1 / (1 + max(errors) / 100), 1 / (1 + min(errors) / 100)
    assert f"took {lo:.2f}-{hi:.2f}x the predicted step" in record[1]
    assert ("expect longer steps" in record[1]) == (max(errors) < 0)
    assert "docs/planner.md section 10" in record[1]
    assert result.explain().splitlines()[-2:] == record

    d = json.loads(result.to_json())["validation"]
    assert d["device"] == MAX1550 and d["runs"] == total and d["systems"] == ["aurora"]
    assert d["heldout"]["n"] == len(errors) and (("fit" in d) == ("fit" in by_split))
    assert d["heldout"]["mean_error_pct"] == round(mean, 2)
    assert (d["heldout"]["min_error_pct"], d["heldout"]["max_error_pct"]) == (round(min(errors), 2),
                                                                              round(max(errors), 2))
    assert d["heldout"]["measured_over_predicted"]["min"] == round(lo, 3)
    assert d["text"] == record and d["calibrated"] is False and d["catalogue_constants"] is True


def test_the_record_names_both_splits_where_the_device_has_fit_rows():
    h100 = PRESETS["dgx-h100"].node.device.name
    errors = errors_by_split(h100)
    text = small_plan("h100-x1").validation()["text"][0]
    held, fit = errors["heldout"], errors["fit"]
    assert f"{len(held)} held out, mean {statistics.fmean(held):+.1f}%" in text
    assert f"{len(fit)} fit (in-sample), mean {statistics.fmean(fit):+.1f}%" in text


def test_the_record_follows_the_data_file_rows(tmp_path, monkeypatch):
    data = json.loads(validation.DATA.read_text())
    cols = data["columns"]
    aurora = [r for r in data["runs"] if r[cols.index("system")] == "aurora"]
    assert len(aurora) > 2
    kept = [list(aurora[0]), list(aurora[1])]
    kept[1][cols.index("split")] = "fit"
    data["runs"] = [r for r in data["runs"] if r[cols.index("system")] != "aurora"] + kept
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(data))
    full = {row.run.id: row.error_pct for row in validation.evaluate()}  # the real file's predictions
    monkeypatch.setattr(validation, "DATA", path)

    d = small_plan("aurora").validation()
    held, fit = full[kept[0][0]], full[kept[1][0]]
    assert d["runs"] == 2 and d["heldout"]["n"] == 1 and d["fit"]["n"] == 1
    assert d["heldout"]["mean_error_pct"] == round(held, 2) and d["fit"]["mean_error_pct"] == round(fit, 2)
    assert f"2 published runs on aurora: 1 held out, mean {held:+.1f}%" in d["text"][0]
    assert f"1 fit (in-sample), mean {fit:+.1f}%" in d["text"][0]
    assert d["text"][1].startswith(f"Held-out runs on {MAX1550} took {1 / (1 + held / 100):.2f}x the predicted step")


def test_a_device_without_published_rows_is_unvalidated():
    for system in ("h200-x1", "cpu"):
        result = small_plan(system)
        d = json.loads(result.to_json())["validation"]
        device = PRESETS[system].node.device.name
        assert d["runs"] == 0 and "heldout" not in d and "fit" not in d
        assert d["text"][0] == (f"Validation: no published run on this device ({device}) in the validation set: "
                                "the prediction is unvalidated (docs/planner.md section 10).")
        assert d["text"][0] in result.table().splitlines()
        assert ("trainer's own" in " ".join(d["text"])) == (system == "h200-x1")
    renamed = system_from_dict({"preset": "aurora", "node": {"device": {"name": "my-tile"}}})
    assert "unvalidated" in small_plan(renamed).validation()["text"][0]


def test_a_profile_or_edited_figures_say_the_record_is_for_the_catalogue_figures():
    calibrated = apply_profile(PRESETS["aurora"], {"device": {"gemm_efficiency": 0.5}})
    d = small_plan(calibrated).validation()
    assert d["calibrated"] is True and d["runs"] > 0
    assert "uncalibrated catalogue figures" in d["text"][-1]
    edited = system_from_dict({"preset": "aurora", "node": {"device": {"gemm_efficiency": 0.6}}})
    d = small_plan(edited).validation()
    assert d["calibrated"] is False and d["catalogue_constants"] is False
    assert "differ from the catalogue's" in d["text"][-1]
    bigger = system_from_dict({"preset": "aurora", "name": "aurora-big", "max_nodes": 20000})  # same device
    assert small_plan(bigger).validation()["catalogue_constants"] is True


def test_the_cli_prints_the_record_once(capsys, tmp_path):
    args = ["plan", "--model", "debug", "--system", "aurora", "--global-batch", "24", "--seq-len", "128",
            "--top", "1"]
    for extra in ([], ["--explain"]):
        assert main(args + extra) == 0
        out = capsys.readouterr().out
        assert out.count(f"Validation on {MAX1550},") == 1
        assert out.rstrip().splitlines()[-1].endswith("See docs/planner.md section 10.")
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"profile_version": 1, "device": {"gemm_efficiency": 0.5}}))
    assert main(args + ["--profile", str(profile), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["validation"]["calibrated"] is True
