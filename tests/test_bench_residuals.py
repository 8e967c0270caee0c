"""bench/residuals.py (the signed error of the published rows by feature) runs on the data file and prints every
feature's line, the ranking and the micro-batch series (docs/planner.md, "Session 14: what the held-out rows'
optimism follows")."""
import math

import pytest
from bench_module import load_bench

from topology import validation as v

residuals = load_bench("residuals")


@pytest.fixture(scope="module")
def rows():
    return v.evaluate()


def test_report_prints_every_feature_and_the_series(rows):
    out = residuals.report(residuals.select(rows, "heldout"), top=5) + "\n" + residuals.microbatch_series(rows)
    lines = out.splitlines()
    for name in residuals.FEATURES:
        assert any(line.startswith(f"feature {name}") for line in lines), name
    for share in v.SHARES:  # every cost term of the prediction has its share line
        assert f"feature share_{share[:-2]}" in out
    for key in ("pp1", "1f1b", "interleaved"):  # the schedule's values
        assert any(line.strip().startswith(key) for line in lines), key
    assert "top 5 numeric features by |r_within|" in out
    held = [r for r in rows if r.run.split == "heldout"]
    assert lines[0].startswith(f"rows: n={len(held):3d}")
    # the Zero Bubble paper's 1F1B rows differ only in the global batch: one series line per model
    assert sum("qi2024-zerobubble" in line for line in lines if "m [" in line) == 4


def test_within_source_correlation_removes_the_sources_offsets():
    # three sources, each with a perfect within-source trend, offset against it: r_within is 1 whatever the offsets,
    # while r_all and r_across follow the offsets
    def row(source, x, err):
        run = type("R", (), {"source": source})()
        return type("Row", (), {"run": run, "error_pct": err, "x": x})()
    data = [row("a", 1, 10), row("a", 2, 11), row("a", 4, 12), row("b", 8, -12), row("b", 16, -11), row("b", 32, -10),
            row("c", 64, -30), row("c", 128, -29)]
    r_all, r_within, r_across = residuals.correlations(data, lambda r: r.x, True)
    assert r_within == pytest.approx(1.0)
    assert r_all < 0 and r_across < -0.99
    assert math.isnan(residuals.pearson([1, 1, 1], [1, 2, 3]))
