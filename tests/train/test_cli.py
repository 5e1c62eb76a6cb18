"""The ``fastint`` CLI end to end (train -> evaluate -> explain), config files, bench report, and
error paths (one line on stderr, exit status 2, no traceback)."""
import json
import os
import subprocess
import sys

import pytest

import fastint.train.cli as cli
from fastint.train.bench_report import to_markdown

TINY = ["--rows", "3000", "--epochs", "1", "--batch-size", "256", "--no-progress", "--device", "cpu",
        "--param", "embed_dim=8"]


def test_train_evaluate_explain(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert cli.main(["train", *TINY, "--out", run]) == 0
    out = capsys.readouterr().out
    for text in ("valid: auc=", "test:  auc=", "Bayes-optimal AUC of the synthetic data", "throughput:", ".png"):
        assert text in out
    for name in ("config.json", "metrics.json", "attention.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert os.path.isfile(os.path.join(run, name)), name
    assert any(f.endswith(".png") for f in os.listdir(run))
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert metrics["bayes_auc"]["test"] > 0.8 and metrics["test"]["auc"] > 0.5

    assert cli.main(["evaluate", run, "--split", "all", "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert f"test: auc={metrics['test']['auc']:.4f}" in out and "Bayes-optimal AUC" in out
    assert json.load(open(tmp_path / "m.json"))["test"] == metrics["test"]

    assert cli.main(["explain", run, "--samples", "300", "--out", str(tmp_path / "x")]) == 0
    files = os.listdir(tmp_path / "x")
    assert any(f.endswith(".png") for f in files) and "attention.json" in files
    att = json.load(open(tmp_path / "x" / "attention.json"))
    m = len(att["fields"])
    assert att["samples"] == 300 and m == 14
    layer0 = att["attention/layer0"]  # [H, M, M], rows are distributions over key fields
    assert len(layer0[0]) == m and len(layer0[0][0]) == m
    assert abs(sum(layer0[0][0]) - 1) < 1e-5


def test_defaults_and_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = cli.make_parser().parse_args(["train"])
    cfg = cli.resolve_run_config(args)
    assert (cfg["model"], cfg["dataset"], cfg["out"]) == ("autoint", "synthetic", os.path.join("runs", "autoint-synthetic"))
    (tmp_path / "c.yaml").write_text("model: afm\nmodel_params: {embed_dim: 4}\ntrain: {epochs: 7, lr: 0.01}\n")
    args = cli.make_parser().parse_args(["train", "--config", "c.yaml", "--epochs", "2", "--param", "attention_dim=3"])
    cfg = cli.resolve_run_config(args)
    assert cfg["model"] == "afm" and cfg["model_params"] == {"embed_dim": 4, "attention_dim": 3}
    assert cfg["train"] == {"epochs": 2, "lr": 0.01}
    (tmp_path / "c.json").write_text(json.dumps({"dataset": "synthetic", "train": {"batch_size": 64}}))
    cfg = cli.resolve_run_config(cli.make_parser().parse_args(["train", "--config", "c.json"]))
    assert cfg["train"] == {"batch_size": 64}


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "criteo"], "needs --data-path"),
    (["train", "--dataset", "criteo", "--data-path", "/no/such/file"], "data path not found"),
    (["train", "--dataset", "imagenet"], "unknown dataset"),
    (["train", "--epochs", "x"], "invalid int value"),
    (["train", "--config", "/no/such.yaml"], "config file not found"),
    (["train", "--config", "BAD_YAML"], "cannot parse config"),
    (["train", "--config", "UNKNOWN_KEY"], "unknown key"),
    (["train", "--epochs", "0", "--rows", "100"], "invalid training option epochs=0"),
    (["train", "--param", "oops"], "expects KEY=VALUE"),
    (["evaluate", "/"], "not a run directory"),
    (["explain"], "the following arguments are required"),
    (["frobnicate"], "invalid choice"),
])
def test_error_paths_print_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    (tmp_path / "unknown.yaml").write_text("modle: afm\n")
    argv = [str(tmp_path / "bad.yaml") if a == "BAD_YAML" else str(tmp_path / "unknown.yaml")
            if a == "UNKNOWN_KEY" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastint: error: ") and message in err and err.count("\n") == 1, err


def test_console_error_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "fastint.train.cli", "train", "--dataset", "libfm",
                           "--data-path", "/no/such.libfm"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "fastint: error: data path not found: /no/such.libfm"


@pytest.mark.parametrize("command", ["train", "evaluate", "explain", "bench"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0 and "usage: fastint" in capsys.readouterr().out


def test_bench_runs_pytest_and_prints_markdown(tmp_path, capsys):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "test_bench_tiny.py").write_text(
        "def test_sum(benchmark):\n    benchmark.extra_info['device'] = 'cpu'\n    benchmark(sum, range(10))\n")
    assert cli.main(["bench", "--bench-dir", str(bench), "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "| group | name | params | mean ms |" in out and "| test_sum |" in out and "| cpu |" in out


def test_bench_report_table():
    report = {"machine_info": {"node": "n", "cpu": {"brand_raw": "c"}, "python_version": "3.11"},
              "datetime": "d", "benchmarks": [{
                  "group": "g", "name": "test_x[afm-eager]", "params": {"name": "afm", "provider": "eager"},
                  "stats": {"mean": 0.002, "median": 0.0015, "min": 0.001, "rounds": 5},
                  "extra_info": {"peak_memory_bytes": 2 * 2**20, "device": "H100"}}]}
    lines = to_markdown(report).splitlines()
    assert lines[2] == "| group | name | params | mean ms | median ms | min ms | rounds | peak MiB | device |"
    assert lines[4] == "| g | test_x | name=afm, provider=eager | 2 | 1.5 | 1 | 5 | 2 | H100 |"
