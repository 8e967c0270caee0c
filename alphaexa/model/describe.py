"""What ``alphaexa describe`` reports: real parameter counts, FLOPs per token, inconsistencies.

The counts come from instantiating the model on the meta device (no memory)
and are checked against the closed form in ``topology.modelcfg.param_counts``
that the planner uses; a disagreement is reported as a bug.
"""
from __future__ import annotations

import torch

from topology.modelcfg import ModelConfig, flops_per_token, human, param_counts

from .transformer import Transformer, count_parameters

COMPONENTS = ("embedding", "positions", "attention", "dense_ffn", "experts", "shared_experts", "router",
              "norms", "lm_head")
STATED_TOLERANCE = 0.05


def describe_model(cfg: ModelConfig, seq_len: int | None = None) -> dict:
    seq_len = seq_len or cfg.max_seq_len
    with torch.device("meta"):
        model = Transformer(cfg)
    counts = count_parameters(model)
    closed_form = param_counts(cfg)
    total = sum(counts.values())
    per_expert = counts["experts"] // (cfg.n_experts * len(cfg.moe_layer_indices())) if cfg.is_moe else 0
    # Per token only top_k of the n_experts routed experts of a MoE block run.
    active_experts = per_expert * cfg.top_k * len(cfg.moe_layer_indices())
    active = {k: (active_experts if k == "experts" else v) for k, v in counts.items()}
    flops = flops_per_token(cfg, seq_len)
    report = {
        "name": cfg.name,
        "seq_len": seq_len,
        "params_total": total,
        "params_active": sum(active.values()),
        "params": {k: {"total": counts[k], "active": active[k]} for k in COMPONENTS},
        "params_per_expert": per_expert,
        "moe_layers": cfg.moe_layer_indices(),
        "stated_params": cfg.stated_params,
        "flops_per_token": flops["total"],
        "flops_per_token_matmul": flops["matmul"],
        "flops_per_token_attention": flops["attention"],
        "weights_bytes_bf16": 2 * total,
        "config": cfg.to_dict(),
    }
    report["warnings"] = consistency_warnings(cfg, report, closed_form.as_dict())
    return report


def consistency_warnings(cfg: ModelConfig, report: dict, closed_form: dict) -> list[str]:
    warnings = []
    total, active = report["params_total"], report["params_active"]
    mismatched = [k for k in COMPONENTS if report["params"][k]["total"] != closed_form[k]]
    if mismatched or active != closed_form["active"]:
        warnings.append(f"BUG: the built module and the closed-form count disagree on {mismatched or ['active']}")
    if cfg.stated_params:
        off = total / cfg.stated_params - 1
        if abs(off) > STATED_TOLERANCE:
            warnings.append(f"stated {human(cfg.stated_params)} parameters, but the shapes give {human(total)} "
                            f"({off:+.0%}); active per token {human(active)}")
    if cfg.tokenizer == "byte" and cfg.vocab_size > 256:
        warnings.append(f"byte tokenizer produces ids 0..255: {cfg.vocab_size - 256} of the vocab_size="
                        f"{cfg.vocab_size} embedding rows are never used")
    if cfg.vocab_size > 256 and cfg.vocab_size % 128:
        padded = -(-cfg.vocab_size // 128) * 128
        warnings.append(f"vocab_size={cfg.vocab_size} is not a multiple of 128: the embedding/LM-head GEMMs "
                        f"run on ragged tiles; {padded} would not")
    if cfg.pos_encoding != "rope" and (cfg.rope_scaling != "none" or cfg.rope_scaling_factor != 1.0):
        warnings.append(f"rope_scaling={cfg.rope_scaling!r} x{cfg.rope_scaling_factor} is ignored with "
                        f"pos_encoding={cfg.pos_encoding!r}")
    elif cfg.rope_scaling == "none" and cfg.rope_scaling_factor != 1.0:
        warnings.append(f"rope_scaling_factor={cfg.rope_scaling_factor} is ignored with rope_scaling='none'")
    elif cfg.rope_scaling != "none" and cfg.rope_scaling_factor == 1.0:
        warnings.append(f"rope_scaling={cfg.rope_scaling!r} with factor 1 changes nothing")
    if not cfg.is_moe and (cfg.n_experts or cfg.capacity_factor or cfg.n_shared_experts):
        warnings.append("n_experts/capacity_factor/n_shared_experts are set but no block is MoE "
                        "(moe_every=0, no moe_layers): they are ignored")
    if cfg.is_moe and 0 < cfg.capacity_factor < 1:
        warnings.append(f"capacity_factor={cfg.capacity_factor} < 1 drops tokens even under perfectly "
                        f"balanced routing")
    if cfg.sliding_window >= cfg.max_seq_len:
        warnings.append(f"sliding_window={cfg.sliding_window} >= max_seq_len={cfg.max_seq_len}: "
                        f"it never limits attention")
    if report["seq_len"] > cfg.max_seq_len:
        warnings.append(f"--seq-len {report['seq_len']} exceeds max_seq_len={cfg.max_seq_len}")
    if report["flops_per_token_attention"] > report["flops_per_token_matmul"]:
        share = report["flops_per_token_attention"] / report["flops_per_token"]
        warnings.append(f"attention is {share:.0%} of the FLOPs at sequence length {report['seq_len']} "
                        f"(full attention, no sliding window)")
    if cfg.q_dim != cfg.d_model:
        warnings.append(f"n_heads x head_dim = {cfg.q_dim} differs from d_model={cfg.d_model} "
                        f"(attention projections are not square)")
    return warnings


def format_report(report: dict) -> str:
    cfg = ModelConfig.from_dict(report["config"])
    lines = [f"model {cfg.name}" + (f"  ({cfg.notes})" if cfg.notes else "")]
    kv = f", {cfg.n_kv_heads} KV heads" if cfg.n_kv_heads != cfg.n_heads else ""
    pos = cfg.pos_encoding + (f" ({cfg.rope_scaling} x{cfg.rope_scaling_factor:g})"
                              if cfg.pos_encoding == "rope" and cfg.rope_scaling != "none" else "")
    lines.append(f"  {cfg.n_layers} blocks, d_model {cfg.d_model}, {cfg.n_heads} heads x {cfg.head_dim}{kv}, "
                 f"FFN {cfg.ffn_type} {cfg.d_ff}, vocab {cfg.vocab_size} ({cfg.tokenizer}), {cfg.norm}, "
                 f"positions {pos}, max_seq_len {cfg.max_seq_len}"
                 + (f", sliding window {cfg.sliding_window}" if cfg.sliding_window else ""))
    if cfg.is_moe:
        placement = f"every {cfg.moe_every}" if cfg.moe_layers is None else f"blocks {cfg.moe_layers}"
        capacity = f"capacity factor {cfg.capacity_factor:g}" if cfg.capacity_factor else "dropless"
        shared = f", {cfg.n_shared_experts} shared" if cfg.n_shared_experts else ""
        lines.append(f"  MoE: {len(report['moe_layers'])} blocks ({placement}), {cfg.n_experts} experts{shared} "
                     f"of width {cfg.moe_d_ff}, top-{cfg.top_k}, {capacity}; "
                     f"{human(report['params_per_expert'])} parameters per expert")
    lines.append("")
    lines.append(f"  {'component':<16}{'total':>12}{'active/token':>14}")
    for name in COMPONENTS:
        entry = report["params"][name]
        if entry["total"]:
            lines.append(f"  {name:<16}{human(entry['total']):>12}{human(entry['active']):>14}")
    lines.append(f"  {'TOTAL':<16}{human(report['params_total']):>12}{human(report['params_active']):>14}"
                 f"   ({report['params_total']:,} / {report['params_active']:,})")
    lines.append("")
    lines.append(f"  training FLOPs/token at seq {report['seq_len']}: {human(report['flops_per_token'])} "
                 f"= matmul {human(report['flops_per_token_matmul'])} "
                 f"+ attention {human(report['flops_per_token_attention'])}")
    lines.append(f"  weights in bf16: {report['weights_bytes_bf16'] / 2**30:,.1f} GiB")
    for warning in report["warnings"]:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)


def format_table(reports: list[dict]) -> str:
    header = (f"{'preset':<20}{'blocks':>7}{'d_model':>8}{'MoE':>7}{'total':>10}{'active':>10}{'stated':>9}"
              f"{'off':>7}{'FLOPs/tok':>11}")
    lines = [header, "-" * len(header)]
    for r in reports:
        cfg = r["config"]
        stated = r["stated_params"]
        off = f"{r['params_total'] / stated - 1:+.0%}" if stated else "-"
        lines.append(f"{r['name']:<20}{cfg['n_layers']:>7}{cfg['d_model']:>8}"
                     f"{len(r['moe_layers']):>4}x{cfg['n_experts'] if r['moe_layers'] else 0:<2}"
                     f"{human(r['params_total']):>10}{human(r['params_active']):>10}"
                     f"{human(stated) if stated else '-':>9}"
                     f"{off:>7}"
                     f"{human(r['flops_per_token']):>11}")
    return "\n".join(lines)
