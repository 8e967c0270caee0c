"""``alphaexa describe``: JSON keys and values, stated-size warnings, ``--all``, one-line errors."""
import json

from alphaexa.cli import main
from topology.presets import preset_names


def _json(capsys, *argv):
    assert main(["describe", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_keys_and_values(capsys):
    report = _json(capsys, "--model", "debug", "--seq-len", "64")
    assert {"params_total", "params_active", "flops_per_token", "params", "warnings", "seq_len"} <= set(report)
    assert report["params_total"] == 180800 and report["params_active"] == 131648
    assert report["params"]["experts"] == {"total": 4 * 3 * 64 * 128, "active": 2 * 3 * 64 * 128}
    assert report["params"]["router"]["total"] == 64 * 4
    # 6 x (active parameters without the embedding lookup and norms) + 6 x layers x q_dim x seq
    matmul = 131648 - 256 * 64 - 5 * 64
    assert report["flops_per_token"] == 6 * matmul + 6 * 2 * 64 * 64
    assert report["seq_len"] == 64 and report["warnings"] == []


def test_spec_preset_warns_with_the_real_size(capsys):
    report = _json(capsys, "--model", "alphaexa-250b-spec")
    assert report["params_total"] == 1_726_193_352_704
    stated = [w for w in report["warnings"] if w.startswith("stated")]
    assert len(stated) == 1 and "1.73T" in stated[0] and "+590%" in stated[0]
    consistent = _json(capsys, "--model", "alphaexa-250b")
    assert not any(w.startswith("stated") for w in consistent["warnings"])
    assert abs(consistent["params_total"] / 250e9 - 1) < 0.05


def test_text_report(capsys):
    assert main(["describe", "--model", "xenarc-600b-dense"]) == 0
    out = capsys.readouterr().out
    assert "TOTAL" in out and "86.98B" in out and "warning: stated 600.00B" in out and "-86%" in out


def test_inconsistency_warnings(tmp_path, capsys):
    path = tmp_path / "m.toml"
    path.write_text('[model]\npreset = "debug"\nvocab_size = 1000\nsliding_window = 500\n'
                    'pos_encoding = "learned"\nrope_scaling = "yarn"\nrope_scaling_factor = 2.0\n'
                    'capacity_factor = 0.5\n')
    warnings = _json(capsys, "--model", str(path))["warnings"]
    text = "\n".join(warnings)
    for expected in ("744 of the vocab_size=1000", "not a multiple of 128", "is ignored with pos_encoding='learned'",
                     "sliding_window=500 >= max_seq_len=128", "capacity_factor=0.5 < 1"):
        assert expected in text
    assert len(warnings) == 5


def test_all_presets(capsys):
    reports = _json(capsys, "--all")
    assert [r["name"] for r in reports] == preset_names()
    assert main(["describe", "--all"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in preset_names())


def test_unknown_preset_is_one_line_error(capsys):
    assert main(["describe", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alphaexa describe: error:") and "no-such-model" in err[0]
