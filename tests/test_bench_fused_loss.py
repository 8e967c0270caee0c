"""bench/fused_loss_passes.py (the fused loss against its session-15 formulation, both compiled) runs on CPU at a
tiny shape; both agree with the unfused loss (full logits, fp32 cross-entropy): the loss to fp32 rounding, the
gradients to bf16 rounding (the logits' gradient is rounded to bf16 before the products, as autocast does)."""
import re

from bench_module import load_bench

bench = load_bench("fused_loss_passes")


def _figures(line: str) -> tuple[float, float, list[float]]:
    found = re.search(r"loss \|diff\| (\S+) of (\S+); gradients' max \|diff\| / max: (.+)$", line)
    assert found, line
    return float(found.group(1)), float(found.group(2)), [float(x) for x in found.group(3).split(", ")]


def test_both_formulations_run_compiled_and_match_the_unfused_loss(capsys):
    assert bench.main(["--tokens", "96", "--vocab", "120", "--dim", "16", "--chunk", "40", "--iters", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("session 15", "now"):
        assert any(re.match(rf" *{name}: +[0-9.]+ ms forward \+ backward", line) for line in lines), name
        against = next(line for line in lines if line.strip().startswith(f"{name} against the unfused loss:"))
        loss_diff, loss, grads = _figures(against)
        assert loss > 0 and loss_diff <= 1e-5 * loss
        assert len(grads) == 2 and all(g < 2 ** -6 for g in grads), against
