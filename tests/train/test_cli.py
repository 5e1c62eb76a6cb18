"""The ``fastint`` CLI end to end (train -> evaluate -> explain, resume), config files, a model
without explanations, ``fastint bench``, and errors: the user's mistakes print one line on stderr
with exit status 2 (a traceback with ``FASTINT_DEBUG=1``), internal errors propagate."""
import json
import os
import subprocess
import sys

import pytest

import fastint.train.cli as cli
from fastint.models import MODELS, CTRModel
from fastint.nn.embedding import FieldEmbedding

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

    config = json.load(open(os.path.join(run, "config.json")))
    config["model_params"] = {"embed_dim": 4}  # evaluate rebuilds the model from the checkpoint
    json.dump(config, open(os.path.join(run, "config.json"), "w"))
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
    (tmp_path / "c.yaml").write_text("model: AFM\nmodel_params: {embed_dim: 4}\ntrain: {epochs: 7, lr: 1e-2}\n")
    args = cli.make_parser().parse_args(["train", "--config", "c.yaml", "--epochs", "2", "--param", "attention_dim=3",
                                         "--param", "l2_attention=1e-4", "--param", "use_attention=false"])
    cfg = cli.resolve_run_config(args)
    assert cfg["model"] == "afm"
    assert cfg["model_params"] == {"embed_dim": 4, "attention_dim": 3, "l2_attention": 1e-4, "use_attention": False}
    assert cfg["train"] == {"epochs": 2, "lr": 0.01}
    (tmp_path / "c.json").write_text(json.dumps({"dataset": "synthetic", "train": {"batch_size": 64}}))
    cfg = cli.resolve_run_config(cli.make_parser().parse_args(["train", "--config", "c.json"]))
    assert cfg["train"] == {"batch_size": 64}


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "criteo"], "needs --data-path"),
    (["train", "--dataset", "criteo", "--data-path", "/no/such/file"], "data path not found: /no/such/file"),
    (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["train", "--model", "fm2"], "unknown model 'fm2'; choose from autoint, afm, interhat"),
    (["train", "--param", "embed_dim=abc"], "model autoint: hyper-parameter embed_dim must be int, got 'abc' (str)"),
    (["train", "--param", "heads=2"], "model autoint: no hyper-parameter 'heads' (it has embed_dim, "),
    (["train", "--param", "dnn_hidden_units=[64"], "--param 'dnn_hidden_units=[64' is not a YAML value"),
    (["train", "--param", "oops"], "expects KEY=VALUE"),
    (["train", "--rows", "100", "--param", "num_layers=0"], "model autoint: num_layers must be >= 1, got 0"),
    (["train", "--data-option", "rows=abc"], "dataset synthetic: synthetic dataset needs an integer number of rows"),
    (["train", "--data-option", "rowz=9"], "dataset synthetic: unknown synthetic dataset option(s): rowz"),
    (["train", "--epochs", "x"], "invalid int value"),
    (["train", "--epochs", "0", "--rows", "100"], "invalid training option epochs=0"),
    (["train", "--device", "tpu"], "unknown device 'tpu'"),
    (["train", "--rows", "100", "--optimizer", "sparse_adam"], "sparse_adam needs a model built with sparse=True"),
    (["train", "--rows", "100", "--no-progress", "--resume", "/no/last.pt"], "cannot resume from /no/last.pt: "),
    (["train", "--config", "/no/such.yaml"], "config file not found"),
    (["train", "--config", "BAD_YAML"], "cannot parse config"),
    (["train", "--config", "UNKNOWN_KEY"], "unknown key"),
    (["train", "--config", "WRONG_TYPE"], "model must be a string, got 3"),
    (["train", "--config", "TRAIN_TYPE"], "training option epochs must be int, got 'x'"),
    (["evaluate", "/"], "not a run directory"),
    (["explain"], "the following arguments are required"),
    (["frobnicate"], "invalid choice"),
])
def test_user_errors_print_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs that get as far as the run directory write it here
    configs = {"BAD_YAML": "model: [unclosed\n", "UNKNOWN_KEY": "modle: afm\n", "WRONG_TYPE": "model: 3\n",
               "TRAIN_TYPE": "train: {epochs: x}\n"}
    for name, text in configs.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    argv = [str(tmp_path / f"{a}.yaml") if a in configs else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastint: error: ") and message in err and err.count("\n") == 1, err


def test_internal_errors_propagate(tmp_path, monkeypatch):
    """Exceptions that are not the user's keep their type and traceback, even of a type that user
    input also raises."""
    def broken_fit(self, resume=None):
        raise ValueError("a bug inside the trainer")

    monkeypatch.setattr(cli.Trainer, "fit", broken_fit)
    with pytest.raises(ValueError, match="a bug inside the trainer"):
        cli.main(["train", *TINY, "--out", str(tmp_path / "run")])

    def broken_layer(*args, **kwargs):
        raise TypeError("a bug inside a layer")

    monkeypatch.setattr("fastint.models.autoint.InteractingLayer", broken_layer)
    with pytest.raises(TypeError, match="a bug inside a layer"):
        cli.main(["train", *TINY, "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("debug", ["", "1"])
def test_console_user_error(debug):
    """One line without traceback; ``FASTINT_DEBUG=1`` prints the traceback instead."""
    env = {**os.environ, "FASTINT_DEBUG": debug}
    proc = subprocess.run([sys.executable, "-m", "fastint.train.cli", "train", "--dataset", "libfm",
                           "--data-path", "/no/such.libfm"], capture_output=True, text=True, timeout=120, env=env)
    if debug:
        assert proc.returncode == 1 and proc.stderr.startswith("Traceback (most recent call last):")
        assert proc.stderr.strip().endswith("UsageError: data path not found: /no/such.libfm")
    else:
        assert proc.returncode == 2
        assert proc.stderr.strip() == "fastint: error: data path not found: /no/such.libfm"


class Logistic(CTRModel):
    """A first-order model without explanations."""

    name = "logistic"

    def __init__(self, schema, *, task: str = "binary"):
        super().__init__(schema, task)
        self.linear = FieldEmbedding(schema, 1)

    def forward(self, batch):
        return self.linear(batch).sum(dim=(1, 2))


def test_model_without_explanations(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(MODELS, "logistic", Logistic)
    run = str(tmp_path / "run")
    assert cli.main(["train", *TINY[:-2], "--model", "logistic", "--out", run]) == 0
    out = capsys.readouterr().out
    assert "test:  auc=" in out and "model logistic has no explain(): no attention heatmaps" in out
    assert not any(f.endswith((".png", "attention.json")) for f in os.listdir(run))
    assert cli.main(["evaluate", run]) == 0
    assert capsys.readouterr().out.startswith("test: auc=")
    assert cli.main(["explain", run]) == 2
    assert capsys.readouterr().err == (
        "fastint: error: model logistic has no explanation (models with one: autoint, afm, interhat)\n")


def test_resume_a_stopped_run(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert cli.main(["train", *TINY, "--out", run, "--stop-after-steps", "3"]) == 0
    assert "stopped after step 3" in capsys.readouterr().out
    last = os.path.join(run, "checkpoints", "last.pt")
    assert cli.main(["train", *TINY, "--out", run, "--resume", last]) == 0
    assert json.load(open(os.path.join(run, "metrics.json")))["global_step"] == 10  # 2400 rows / 256


@pytest.mark.parametrize("command", ["train", "evaluate", "explain", "bench"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0 and "usage: fastint" in capsys.readouterr().out


def test_bench_runs_pytest_and_prints_markdown(tmp_path, capsys):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "test_bench_tiny.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.parametrize('provider', ['fastint', 'eager'])\n"
        "def test_sum(benchmark, provider):\n"
        "    benchmark.extra_info.update(op='sum', provider=provider, mode='forward', dtype='int64',\n"
        "                                shape='n=10', device='cpu', peak_memory_bytes=None)\n"
        "    benchmark(sum, range(10))\n")
    json_path = tmp_path / "out" / "b.json"
    assert cli.main(["bench", "--bench-dir", str(bench), "--json", str(json_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(json.load(open(json_path))["benchmarks"]) == 2
    table = lines[lines.index("## sum") + 2:]
    assert table[0] == "| shape | dtype | mode | fastint ms | eager ms | x eager |"   # no peaks: no MiB
    cells = table[2].split(" | ")
    assert cells[:3] == ["| n=10", "int64", "forward"] and cells[5].endswith("x |")


def _write_split_csvs(directory, rows=(300, 60, 60)):
    import random
    rng = random.Random(0)
    directory.mkdir()
    for split, n in zip(("train", "valid", "test"), rows):
        lines = ["y,a,b,x"]
        for _ in range(n):
            a, b = rng.randrange(5), rng.randrange(4)
            lines.append(f"{int((a + b) % 2 == 0 and rng.random() < 0.9)},a{a},b{b},{rng.random():.3f}")
        (directory / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return [str(directory / f"{split}.csv") for split in ("train", "valid", "test")]


def test_train_on_presplit_files(tmp_path, capsys):
    """A directory of train/valid/test files, or the three paths: the splits are kept as given."""
    paths = _write_split_csvs(tmp_path / "data")
    options = ["--dataset", "csv", "--data-option", "label=y", "--data-option", "categorical=[a,b]",
               "--data-option", "numeric=[x]", "--data-option", "min_count=1", "--cache-dir", str(tmp_path / "c"),
               "--epochs", "1", "--batch-size", "64", "--no-progress", "--device", "cpu", "--param", "embed_dim=4"]
    assert cli.main(["train", *options, "--data-path", str(tmp_path / "data"), "--out", str(tmp_path / "r1")]) == 0
    assert "420 rows (300 train)" in capsys.readouterr().out
    assert cli.main(["train", *options, "--train-path", paths[0], "--valid-path", paths[1], "--test-path", paths[2],
                     "--out", str(tmp_path / "r2")]) == 0
    assert "420 rows (300 train)" in capsys.readouterr().out
    first, second = (json.load(open(tmp_path / r / "metrics.json")) for r in ("r1", "r2"))
    assert first["test"] == second["test"]
    assert cli.main(["train", *options, "--train-path", str(tmp_path / "nope.csv")]) == 2
    assert "train path not found" in capsys.readouterr().err
