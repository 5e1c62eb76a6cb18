"""``fastint predict``: scores equal the model's on the same rows, in file order, across reader and
model batches; labels optional; OOV for unseen ids; a checksum of what was written; clear errors and
no partial output."""
import csv
import hashlib
import json

import numpy as np
import pytest

import fastint.train.cli as cli
import fastint.train.scoring as scoring
from fastint.data import BatchLoader

TRAIN = ["--epochs", "1", "--batch-size", "64", "--no-progress", "--device", "cpu", "--param", "embed_dim=4"]


def write_table(path, rows, seed, label=True):
    rng = np.random.default_rng(seed)
    header = (["y"] if label else []) + ["a", "tags", "x"]
    lines = [",".join(header)]
    for _ in range(rows):
        a = int(rng.integers(0, 6))
        tags = "|".join(f"t{t}" for t in rng.choice(8, int(rng.integers(0, 4)), replace=False))
        y = [str(int((a + len(tags)) % 3 == 0))] if label else []
        lines.append(",".join(y + [f"a{a}", tags, f"{rng.normal():.3f}"]))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A CSV run (categorical, multi-valued and numeric fields) trained on pre-split files."""
    root = tmp_path_factory.mktemp("predict")
    (root / "data").mkdir()
    for split, rows, seed in (("train", 400, 0), ("valid", 80, 1), ("test", 90, 2)):
        write_table(root / "data" / f"{split}.csv", rows, seed)
    options = ["--dataset", "csv", "--data-option", "label=y", "--data-option", "categorical=[a]",
               "--data-option", "multi=[tags]", "--data-option", "numeric=[x]", "--data-option", "min_count=2",
               "--cache-dir", str(root / "cache")]
    out = str(root / "run")
    assert cli.main(["train", "--model", "afm", *options, *TRAIN, "--data-path", str(root / "data"), "--out", out]) == 0
    return root, out


def read_scores(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array([[float(v) for v in r] for r in rows[1:]])


def test_scores_equal_the_model_on_the_test_split(run, capsys, monkeypatch):
    root, out = run
    monkeypatch.setattr(scoring, "BATCH_ROWS", 17)              # several reader batches, odd sizes
    capsys.readouterr()
    assert cli.main(["predict", out, "--data-path", str(root / "data" / "test.csv"), "--batch-size", "5",
                     "--no-progress", "--out", str(root / "s.csv")]) == 0
    summary = capsys.readouterr().out
    header, values = read_scores(root / "s.csv")
    assert header == ["score", "label"] and values.shape == (90, 2)
    _, data, model, _ = cli.load_run(out, "cpu")
    batch = next(iter(BatchLoader(data, "test", 1000, shuffle=False)))
    np.testing.assert_allclose(values[:, 0], model.predict(batch).numpy(), rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(values[:, 1], batch.label.numpy())
    digest = hashlib.sha256((root / "s.csv").read_bytes()).hexdigest()
    assert f"90 rows scored (sha256 {digest[:16]})" in summary
    metrics = json.load(open(f"{out}/metrics.json"))["test"]
    assert f"auc={metrics['auc']:.4f}" in summary and f"logloss={metrics['logloss']:.4f}" in summary
    assert f"mean score {values[:, 0].mean():.4f}" in summary


def test_unlabeled_file_and_unseen_ids(run, capsys):
    root, out = run
    labeled = write_table(root / "new.csv", 30, seed=7)
    unlabeled = write_table(root / "new-unlabeled.csv", 30, seed=7, label=False)
    for path, name in ((labeled, "l.csv"), (unlabeled, "u.csv")):
        assert cli.main(["predict", out, "--data-path", path, "--no-progress", "--out", str(root / name)]) == 0
    header, values = read_scores(root / "u.csv")
    assert header == ["score"] and "auc=" not in capsys.readouterr().out.splitlines()[-1]
    np.testing.assert_array_equal(values[:, 0], read_scores(root / "l.csv")[1][:, 0])
    # an id never seen in training scores as the out-of-vocabulary id: any two unseen ids agree
    (root / "oov.csv").write_text("y,a,tags,x\n1,never,t1,0.5\n1,unseen,t1,0.5\n1,a1,t1|zzz,0.5\n1,a1,t1,0.5\n")
    assert cli.main(["predict", out, "--data-path", str(root / "oov.csv"), "--no-progress",
                     "--out", str(root / "o.csv")]) == 0
    scores = read_scores(root / "o.csv")[1][:, 0]
    assert scores[0] == scores[1] and scores[0] != scores[3] and scores[2] == scores[3]  # zzz dropped
    assert "33.3% of the categorical values unseen" in capsys.readouterr().out   # never, unseen, zzz of 9


@pytest.mark.parametrize("content, message", [
    ("y,a,x\n1,a1,0.5\n", "column(s) tags not in the header"),
    ("y,a,tags,x\n1,a1,t1,0.5\n1,a2,t2\n", "bad.csv:3: expected 4 columns"),
    ("y,a,tags,x\n1,a1,t1,zero\n", "bad.csv:2: column x 'zero' is not a number"),
    ("y,a,tags,x\n", "bad.csv: no rows to score"),
])
def test_bad_files_give_one_error_and_no_output(run, capsys, content, message):
    root, out = run
    (root / "bad.csv").write_text(content)
    target = root / "bad-scores.csv"
    assert cli.main(["predict", out, "--data-path", str(root / "bad.csv"), "--no-progress", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastint: error: cannot score") and message in err and err.count("\n") == 1
    assert not target.exists() and not list(root.glob("bad-scores.csv.partial*"))


def test_runs_without_files_and_bad_arguments(run, tmp_path, capsys):
    root, out = run
    synthetic = str(tmp_path / "syn")
    assert cli.main(["train", "--rows", "600", *TRAIN, "--out", synthetic]) == 0
    capsys.readouterr()
    assert cli.main(["predict", synthetic, "--data-path", str(root / "new.csv")]) == 2
    assert "trained on the synthetic dataset" in capsys.readouterr().err
    assert cli.main(["predict", out, "--data-path", str(tmp_path / "missing.csv")]) == 2
    assert "data path not found" in capsys.readouterr().err
    assert cli.main(["predict", out, "--data-path", str(root / "new.csv"), "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
