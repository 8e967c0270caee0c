"""The data file's 'assumed' column (session 11, branch audit16, issue 15): which layout fields of each published
row its source does not state, and the summary group of the held-out rows that have none."""
import dataclasses
import json
import statistics

import pytest

from topology import validation as v
from topology.modelcfg import ConfigError


def test_every_row_says_which_fields_are_assumed_with_known_names_only():
    data = v._data(str(v.DATA))
    assert data["columns"][-1] == "assumed"
    names = data["columns_assumed"]["names"]
    assert {"tp", "pp", "vpp", "ep", "etp", "sharding", "mbs", "global_batch", "seq_len", "recompute",
            "sequence_parallel", "measured"} <= set(names)
    assert all(isinstance(text, str) and text for text in names.values())
    for row in data["runs"]:
        assert len(row) == len(data["columns"]), row[0]
        assumed = row[data["columns"].index("assumed")]
        assert isinstance(assumed, list), row[0]
        assert len(set(assumed)) == len(assumed) and set(assumed) <= set(names), (row[0], assumed)
    runs = v.load_runs()
    assert all(isinstance(r.assumed, tuple) for r in runs)
    # the rows the brief names as guessed are marked (the README's H100 rows give no micro-batch)
    by_id = {r.id: r for r in runs}
    assert "mbs" in by_id["mlm-readme-h100-32b-384"].assumed
    assert v.is_fully_stated(by_id["korthikanti-22b-full"])


def test_a_row_with_an_undescribed_assumed_field_is_refused(tmp_path):
    data = json.loads(v.DATA.read_text())
    data["runs"][0][data["columns"].index("assumed")] = ["a-guess-nobody-described"]
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="columns_assumed"):
        v.load_runs(path)


def test_the_fully_stated_summary_is_the_held_out_rows_without_assumed_fields():
    rows = v.evaluate()
    s = v.summary(rows)
    stated = [r for r in rows if r.run.split == "heldout" and not r.run.assumed]
    assert 0 < s["heldout_stated"]["n"] == len(stated) < s["heldout"]["n"]
    assert s["heldout_stated"]["mean_abs"] == pytest.approx(statistics.fmean(abs(r.error_pct) for r in stated))
    assert s["heldout_stated"]["max_abs"] == pytest.approx(max(abs(r.error_pct) for r in stated))
    assert s["heldout_stated"]["mean"] == pytest.approx(statistics.fmean(r.error_pct for r in stated))
    # behaviour, not a pin: marking a stated held-out row as partly assumed takes it out of the group, and
    # clearing a row's list puts it in; the all-rows figure does not move
    worst = max(stated, key=lambda r: abs(r.error_pct))
    guessed = next(r for r in rows if r.run.split == "heldout" and r.run.assumed)
    moved = [v.Row(dataclasses.replace(r.run, assumed=("mbs",)), r.estimate) if r is worst else
             v.Row(dataclasses.replace(r.run, assumed=()), r.estimate) if r is guessed else r for r in rows]
    t = v.summary(moved)
    assert t["heldout_stated"]["n"] == s["heldout_stated"]["n"]
    assert t["heldout"] == s["heldout"]
    assert t["heldout_stated"]["max_abs"] <= s["heldout_stated"]["max_abs"]
    assert worst.run.id not in {r.run.id for r in moved if r.run.split == "heldout" and not r.run.assumed}


@pytest.mark.parametrize("group", ["heldout_stated", "heldout_steady"])  # fully stated rows; steady figures (s13)
def test_the_validation_report_prints_the_side_group_lines(capsys, group):
    v.main([])
    out = capsys.readouterr().out
    s = v.summary(v.evaluate())[group]
    assert (f"{group} n={s['n']:2d}  mean |error| {s['mean_abs']:.1f}%  max {s['max_abs']:.1f}%  "
            f"mean signed {s['mean']:+.1f}%") in out
