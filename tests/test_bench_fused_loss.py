"""bench/fused_loss_passes.py (the fused loss against its session-15 formulation, both compiled) runs on CPU at a
tiny shape, and the two formulations give the same loss and, to bf16 rounding, the same gradients."""
import re

from bench_module import load_bench

bench = load_bench("fused_loss_passes")


def test_both_formulations_run_compiled_and_agree(capsys):
    assert bench.main(["--tokens", "96", "--vocab", "120", "--dim", "16", "--chunk", "40", "--iters", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"session 15: +[0-9.]+ ms forward \+ backward", out)
    assert re.search(r"now: +[0-9.]+ ms forward \+ backward", out)
    loss_diff, loss = (float(x) for x in re.search(r"loss \|diff\| (\S+) of (\S+);", out).groups())
    assert loss > 0 and loss_diff <= 1e-6 * loss
    found = re.search(r"gradients' max \|diff\| / max: (.+)$", out, re.MULTILINE)
    grads = [float(x) for x in found.group(1).split(", ")]
    assert len(grads) == 2 and all(g < 2 ** -6 for g in grads)  # bf16 logit gradients: an ulp or two apart
