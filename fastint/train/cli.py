"""The ``fastint`` command line.

    fastint train     [--model autoint] [--dataset synthetic] [--data-path P] [--config F.yaml] ...
    fastint evaluate  RUN_DIR [--split test]
    fastint explain   RUN_DIR [--split test] [--samples 2048] [--out DIR]
    fastint export    RUN_DIR [--out RUN_DIR/model.pt2] [--device auto]
    fastint predict   RUN_DIR --data-path FILE [--out scores.csv] [--batch-size 8192] [--device auto]
    fastint bench     [--bench-dir bench] [-k EXPR] [--json PATH]

``fastint train --model aim`` (or ``autofis``) runs the stages of the interaction search
(``fastint.train.search``: ``--param stage=all|interactions|dimensions|retrain``, ``--param
selection=RUN/selection.json`` for one stage after a previous run) and writes ``selection.json`` and
its pictures next to the retrained model's metrics; ``fastint explain`` redraws them.

``fastint train`` with no arguments trains AutoInt on the built-in synthetic dataset and prints
valid/test AUC and logloss next to the dataset's Bayes-optimal AUC, the throughput, and writes the run
(``config.json``, ``metrics.json``, ``checkpoints/``, attention heatmaps) to ``runs/<model>-<dataset>``.
Models without an ``explain`` method are trained alike, without heatmaps.

Reproducibility: ``--seed`` (default 0) seeds every RNG before the dataset and the model are built,
so the same command gives bit-identical weights and metrics on the same machine (same device and
``--threads``; ``--prefetch`` does not change the batches). ``--checkpoint-every N`` writes
``checkpoints/last.pt`` atomically every N steps; a run killed at any moment (even SIGKILL) and
continued with ``--resume <out>/checkpoints/last.pt`` (same command otherwise) ends with the same
weights as an uninterrupted run.

Settings come from defaults < ``--config`` (YAML or JSON) < command-line flags. A config file holds
``model``, ``model_params`` (dict), ``dataset``, ``data_path`` (or ``train_path``, ``valid_path``,
``test_path``: pre-split files), ``data_options`` (dict), ``cache_dir``,
``out`` and ``train`` (dict of ``TrainConfig`` fields). ``--param`` / ``--data-option`` values are
YAML (``8``, ``0.1``, ``1e-4``, ``[64, 32]``, ``true``, ``tf``).

Errors: the user's mistakes (flags, option values, unknown model/dataset/hyper-parameter, a value of
the wrong type, missing or malformed files and configs) are raised as ``UsageError`` where the input
is parsed or applied, and print one line ``fastint: error: ...`` on stderr with exit status 2
(``FASTINT_DEBUG=1``: the traceback instead). Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import subprocess
import sys
from dataclasses import asdict

import torch
import torch.distributed as dist
import yaml

from fastint.data import DATASETS, Dataset, load_dataset
from fastint.data.loader import BatchLoader
from fastint.metrics import compute_metrics
from fastint.models import EMBEDDINGS, MODELS, CTRModel, build_model, check_hyperparameters
from fastint.train.search import (SEARCHABLE, SELECTION, Search, SearchError, describe_selection, draw_selection,
                                  split_params)
from fastint.train.trainer import (EMBEDDING_OPTIMIZERS, OPTIMIZERS, SHARDINGS, TrainConfig, Trainer, init_distributed,
                                   load_weights, predict, resolve_device, seed_everything)

SPLIT_PATHS = ("train_path", "valid_path", "test_path")
DEFAULTS = {"model": "autoint", "model_params": {}, "dataset": "synthetic", "data_path": None,
            **dict.fromkeys(SPLIT_PATHS),
            "data_options": {}, "cache_dir": None, "out": None, "train": {}}
TRAIN_FLAGS = ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "grad_clip", "amp", "metric",
               "patience", "seed", "device", "prefetch", "checkpoint_every", "stop_after_steps", "threads",
               "sharding", "embedding_optimizer")
# what reading a checkpoint the user points at raises when it is missing, truncated or not one
CHECKPOINT_ERRORS = (OSError, EOFError, KeyError, ValueError, RuntimeError, pickle.UnpicklingError)


class UsageError(Exception):
    """A bad command line, path, option value or configuration: reported as one line, exit status 2."""


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException], context: str = ""):
    """Re-raise the ``kinds`` of exceptions raised in the block, which applies the user's input, as
    a one-line UsageError ``context: message``."""
    try:
        yield
    except kinds as err:
        message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        message = message or type(err).__name__
        raise UsageError(f"{context}: {message}" if context else message) from err


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see --help)")


class YAMLLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads exponent numbers without a dot (``1e-4``) as floats, as
    YAML 1.2 and JSON do (PyYAML follows YAML 1.1, where they are strings)."""


YAMLLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))


def _key_values(items: list[str] | None, flag: str) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        with user_errors(yaml.YAMLError, context=f"{flag} {item!r} is not a YAML value"):
            out[key.replace("-", "_")] = yaml.load(value, Loader=YAMLLoader)
    return out


def load_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise UsageError(f"config file not found: {path}")
    with user_errors(OSError, context=f"cannot read config {path}"), open(path) as f:
        try:
            cfg = json.load(f) if path.endswith(".json") else yaml.load(f, Loader=YAMLLoader)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise UsageError(f"cannot parse config {path}: {str(err).splitlines()[0]}") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise UsageError(f"config {path} must be a mapping, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise UsageError(f"config {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(DEFAULTS)}")
    for key, value in cfg.items():
        expected = dict if isinstance(DEFAULTS[key], dict) else str
        if not isinstance(value, expected) and not (value is None and DEFAULTS[key] is None):
            raise UsageError(f"config {path}: {key} must be a {'mapping' if expected is dict else 'string'}, "
                             f"got {value!r}")
    return cfg


def resolve_run_config(args) -> dict:
    """Defaults < config file < flags; the model, its hyper-parameters, the dataset and the paths are
    checked here, before any data is read."""
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    if args.config:
        for k, v in load_config_file(args.config).items():
            cfg[k] = {**cfg[k], **v} if isinstance(cfg[k], dict) else v
    for key in ("model", "dataset", "data_path", *SPLIT_PATHS, "cache_dir", "out"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["model_params"].update(_key_values(args.param, "--param"))
    cfg["data_options"].update(_key_values(args.data_option, "--data-option"))
    if args.rows is not None:
        cfg["data_options"]["rows"] = args.rows
    cfg["train"].update({k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None})
    if args.embedding is not None:
        cfg["model_params"]["embedding"] = args.embedding
    sharded = cfg["model_params"].get("embedding", "fastint") != "fastint"
    if not sharded and any(cfg["train"].get(k, "auto") != "auto" for k in ("sharding", "embedding_optimizer")):
        raise UsageError("--sharding and --embedding-optimizer need --embedding torchrec")
    if sharded and cfg["model"].lower() in SEARCHABLE:
        raise UsageError(f"the {cfg['model']} search prunes embedding dimensions: it runs on fastint embeddings only")
    if args.no_progress:
        cfg["train"]["progress"] = False
    cfg["model"] = cfg["model"].lower()
    if cfg["model"] not in MODELS:
        raise UsageError(f"unknown model {cfg['model']!r}; choose from {', '.join(MODELS)}")
    with user_errors(ValueError, context=f"model {cfg['model']}"):
        params = cfg["model_params"]
        if cfg["model"] in SEARCHABLE:  # its search options ride along with the hyper-parameters
            params = split_params(cfg["model"], params)[1]
        check_hyperparameters(cfg["model"], params)
    if cfg["dataset"] not in DATASETS:
        raise UsageError(f"unknown dataset {cfg['dataset']!r}; choose from {', '.join(DATASETS)}")
    given = [key for key in ("data_path", *SPLIT_PATHS) if cfg[key]]
    if cfg["dataset"] != "synthetic" and not given:
        raise UsageError(f"dataset {cfg['dataset']} needs --data-path (a file, or a directory of "
                         f"train/valid/test files) or --train-path, --valid-path and --test-path")
    for key in given:
        if not os.path.exists(cfg[key]):
            raise UsageError(f"{key.replace('_', ' ')} not found: {cfg[key]}")
    cfg["out"] = cfg["out"] or os.path.join("runs", f"{cfg['model']}-{cfg['dataset']}")
    return cfg


def open_dataset(cfg: dict, seed: int, progress: bool = True) -> Dataset:
    """The run's dataset; what reading the user's data with the user's options raises is a UsageError."""
    with user_errors(ValueError, TypeError, KeyError, OSError, context=f"dataset {cfg['dataset']}"):
        return load_dataset(cfg["dataset"], cfg["data_path"], cache_dir=cfg["cache_dir"], seed=seed,
                            progress=progress, **{k: cfg.get(k) for k in SPLIT_PATHS}, **cfg["data_options"])


def build_run_model(config: dict, schema) -> CTRModel:
    """``build_model(schema=schema, **config)`` (``config`` = name + hyper-parameters); a value the
    model rejects is a UsageError."""
    with user_errors(ValueError, context=f"model {config['name']}"):
        return build_model(schema=schema, **config)


def output_dir(path: str) -> str:
    with user_errors(OSError, context=f"cannot create directory {path}"):
        os.makedirs(path, exist_ok=True)
    return path


def _fmt(metrics: dict) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def cmd_train(args) -> int:
    cfg = resolve_run_config(args)
    with user_errors(ValueError):
        train_cfg = TrainConfig.from_dict(cfg["train"])
        device = resolve_device(train_cfg.device)
    rank, world, _ = init_distributed(device)
    # before anything draws random numbers: the model's initial weights come from the global RNGs
    seed_everything(train_cfg.seed)
    if world > 1 and rank != 0:
        dist.barrier()  # rank 0 preprocesses (fills the cache) first
    data = open_dataset(cfg, train_cfg.seed, train_cfg.progress and rank == 0)
    if world > 1 and rank == 0:
        dist.barrier()
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"dataset {cfg['dataset']}: {len(data):,} rows ({data.split_size('train'):,} train), "
        f"{data.schema.num_fields} fields, positive rate {data.info.get('positive_rate', float('nan')):.3f}")

    def resume(trainer: Trainer) -> None:
        if args.resume:
            with user_errors(*CHECKPOINT_ERRORS, context=f"cannot resume from {args.resume}"):
                trainer.load_checkpoint(args.resume)

    search = None
    if cfg["model"] in SEARCHABLE:  # the stages of the AIM/AutoFIS search (fastint.train.search)
        with user_errors(SearchError):
            search = Search(cfg["model"], *split_params(cfg["model"], cfg["model_params"]), train_cfg, data,
                            cfg["out"], log=say, prepare=resume)
    else:
        model = build_run_model({"name": cfg["model"], **cfg["model_params"]}, data.schema)
        say(f"model {cfg['model']}: {sum(p.numel() for p in model.parameters()):,} parameters")
    if rank == 0:
        _write_json(os.path.join(output_dir(cfg["out"]), "config.json"), {**cfg, "train": asdict(train_cfg)})
    if search is not None:
        with user_errors(SearchError):
            trainer, result = search.run()
        model = trainer.model
    else:
        with user_errors(ValueError):  # option combinations the trainer rejects (e.g. sparse_adam, dense model)
            trainer = Trainer(model, data, train_cfg, out_dir=cfg["out"])
        resume(trainer)
        result = trainer.fit()
    if dist.is_initialized():  # torchrun's, or the one-process group of torchrec embeddings
        dist.destroy_process_group()
    if result["interrupted"]:
        say(f"stopped after step {result['global_step']}; resume with --resume "
            f"{os.path.join(cfg['out'], 'checkpoints', 'last.pt')}")
        return 0
    if rank != 0:
        return 0
    bayes = data.info.get("bayes_auc") if model.task == "binary" else None
    summary = {**result, "device": str(trainer.device), "bayes_auc": bayes}
    say(f"valid: {_fmt(result['valid'])}")
    say(f"test:  {_fmt(result['test'])}")
    if bayes:
        say(f"Bayes-optimal AUC of the synthetic data: valid {bayes['valid']:.4f}  test {bayes['test']:.4f}")
    say(f"throughput: {result['throughput']:,.0f} training samples/s on {trainer.device} "
        f"({result['epochs']} epochs, best epoch {result['best_epoch']})")
    _write_json(os.path.join(cfg["out"], "metrics.json"), summary)
    if search is not None:
        for line in describe_selection(search.selection):
            say(line)
        say("wrote " + ", ".join([os.path.join(cfg["out"], SELECTION), *draw_selection(search.selection, cfg["out"])]))
    elif trainer.sharded:  # its tables lived on the ranks' shards, gone with the process group
        say("no attention heatmaps for a model on sharded torchrec embeddings")
    elif hasattr(model, "explain"):
        from fastint.train.explain import explain_to_files
        loader = BatchLoader(data, "test", 1024, shuffle=False, device=trainer.device)
        written = explain_to_files(model, loader, cfg["out"])
        say("wrote " + ", ".join(written))
    else:
        say(f"model {cfg['model']} has no explain(): no attention heatmaps")
    return 0


def load_run(run_dir: str, device: str) -> tuple[dict, Dataset, CTRModel, torch.device]:
    """Config, dataset, model (rebuilt from the checkpoint's ``model_config``, best weights) and
    device of a finished run directory."""
    cfg_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise UsageError(f"{run_dir} is not a run directory (no config.json)")
    with user_errors(OSError, ValueError, context=f"cannot read {cfg_path}"), open(cfg_path) as f:
        cfg = json.load(f)
    ckpt_path = next((os.path.join(run_dir, "checkpoints", n) for n in ("best.pt", "last.pt")
                      if os.path.isfile(os.path.join(run_dir, "checkpoints", n))), None)
    if ckpt_path is None:
        raise UsageError(f"{run_dir} has no checkpoint (checkpoints/best.pt or last.pt)")
    with user_errors(ValueError):
        dev = resolve_device(device)
    with user_errors(*CHECKPOINT_ERRORS, context=f"cannot read checkpoint {ckpt_path}"):
        ckpt = torch.load(ckpt_path, map_location=dev, weights_only=False)
        model_config = ckpt["model_config"]
    data = open_dataset(cfg, cfg["train"]["seed"], progress=False)
    model = build_run_model(model_config, data.schema)
    with user_errors(*CHECKPOINT_ERRORS, context=f"cannot read checkpoint {ckpt_path}"):
        load_weights(model, ckpt, ckpt_path)   # a torchrec run: its shards too, into the unsharded model
    return cfg, data, model.to(dev), dev


def cmd_evaluate(args) -> int:
    cfg, data, model, dev = load_run(args.run_dir, args.device)
    splits = ["valid", "test"] if args.split == "all" else [args.split]
    results = {}
    for split in splits:
        labels, scores = predict(model, data, split, device=dev)
        results[split] = compute_metrics(model.task, labels, scores)
        print(f"{split}: {_fmt(results[split])}")
    bayes = data.info.get("bayes_auc") if model.task == "binary" else None
    if bayes:
        print("Bayes-optimal AUC: " + "  ".join(f"{s} {bayes[s]:.4f}" for s in splits))
    if args.json:
        with user_errors(OSError, context=f"cannot write {args.json}"):
            _write_json(args.json, results)
    return 0


def cmd_explain(args) -> int:
    from fastint.train.explain import explain_to_files
    if args.samples < 1:
        raise UsageError(f"--samples must be >= 1, got {args.samples}")
    _, data, model, dev = load_run(args.run_dir, args.device)
    selection = os.path.join(args.run_dir, SELECTION)
    if model.name in SEARCHABLE and os.path.isfile(selection):  # the searched gates and dimensions
        with user_errors(OSError, ValueError, context=f"cannot read {selection}"), open(selection) as f:
            searched = json.load(f)
        for line in describe_selection(searched):
            print(line)
        for path in draw_selection(searched, output_dir(args.out or args.run_dir)):
            print(f"wrote {path}")
        return 0
    if not hasattr(model, "explain"):
        explained = ", ".join(name for name, cls in MODELS.items() if hasattr(cls, "explain"))
        raise UsageError(f"model {model.name} has no explanation (models with one: {explained})")
    loader = BatchLoader(data, args.split, min(1024, args.samples), shuffle=False, device=dev)
    for path in explain_to_files(model, loader, output_dir(args.out or args.run_dir), args.samples):
        print(f"wrote {path}")
    return 0


def cmd_export(args) -> int:
    """The run's best weights as a ``torch.export`` program (``fastint.train.export``), loaded back
    and checked against the model on a test batch before reporting success."""
    from fastint.train.export import KINDS, export_model, load_program, save_program
    _, data, model, dev = load_run(args.run_dir, args.device)
    batch = next(iter(BatchLoader(data, "test", 256, shuffle=False, device=dev)))
    path = args.out or os.path.join(args.run_dir, "model.pt2")
    output_dir(os.path.dirname(os.path.abspath(path)))
    program = export_model(model, batch)
    with user_errors(OSError, context=f"cannot write {path}"):
        save_program(program, path)
    inputs = [getattr(batch, kind) for kind in KINDS]
    with torch.no_grad():
        difference = float((load_program(path)(*inputs) - model.predict(batch)).abs().max())
    if difference > 1e-5:
        raise RuntimeError(f"the exported program's scores differ from the model's by {difference:.2e}")
    print(f"wrote {path}: program(categorical, numeric, multi) -> [B] scores "
          f"(checked on {len(batch.label)} test rows: max |difference| {difference:.1e}); "
          f"serve with torch.export.load(path).module() after import fastint")
    return 0


def cmd_predict(args) -> int:
    """Score a file of new rows (the run's format and reader options, labels optional) with the
    run's best weights and training vocabulary (``fastint.train.scoring``)."""
    from fastint.data import UNLABELED_FORMATS, open_reader, reader_options
    from fastint.train.scoring import score_file
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    cfg, data, model, dev = load_run(args.run_dir, args.device)
    if cfg["dataset"] == "synthetic":
        raise UsageError(f"{args.run_dir} was trained on the synthetic dataset, which has no files to score; "
                         f"'fastint evaluate {args.run_dir}' scores its test split")
    if not os.path.exists(args.data_path):
        raise UsageError(f"data path not found: {args.data_path}")
    options = reader_options(cfg["data_options"])
    if cfg["dataset"] in UNLABELED_FORMATS:
        options["label_optional"] = True
    out = args.out or os.path.join(args.run_dir, "scores.csv")
    output_dir(os.path.dirname(os.path.abspath(out)))
    with user_errors(ValueError, OSError, context=f"cannot score {args.data_path}"):
        reader = open_reader(cfg["dataset"], args.data_path, **options)
        summary = score_file(model, data, reader, out, batch_size=args.batch_size, device=dev,
                             progress=not args.no_progress)
    quality = f"; {_fmt(summary.metrics)}" if summary.metrics else ""
    print(f"wrote {out}: {summary.rows:,} rows scored (sha256 {summary.sha256[:16]}), mean score "
          f"{summary.mean_score:.4f}, {summary.unknown_fraction:.1%} of the categorical values unseen in "
          f"training (OOV){quality}")
    return 0


def default_bench_dir() -> str:
    here = os.path.join(os.getcwd(), "bench")
    if os.path.isdir(here):
        return here
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")


def cmd_bench(args) -> int:
    """``pytest bench/ --benchmark-only --benchmark-json=...`` (the JSON stays for tooling), then the
    markdown tables of ``fastint.bench_report``."""
    from fastint.bench_report import to_markdown
    bench_dir = args.bench_dir or default_bench_dir()
    if not os.path.isdir(bench_dir):
        raise UsageError(f"benchmark directory not found: {bench_dir}")
    json_path = os.path.abspath(args.json or os.path.join("runs", "bench.json"))
    output_dir(os.path.dirname(json_path))
    # benchmarks never run in parallel: no xdist, and no xdist worker's environment (called from a
    # test running under xdist, pytest-benchmark would disable itself)
    cmd = [sys.executable, "-m", "pytest", bench_dir, "--benchmark-only", f"--benchmark-json={json_path}",
           "-q", "-p", "no:cacheprovider", "-p", "no:xdist"] + (["-k", args.k] if args.k else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    code = subprocess.call(cmd, cwd=os.path.dirname(os.path.abspath(bench_dir)), env=env)
    if not os.path.isfile(json_path):
        raise UsageError(f"pytest exited with status {code} and wrote no {json_path}")
    with open(json_path) as f:
        print(to_markdown(json.load(f)))
    return 0 if code in (0, 5) else code


def make_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fastint", description="Train, evaluate, explain and benchmark fastint CTR models.")
    sub = p.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND", required=True)
    t = sub.add_parser("train", help="train a model (default: AutoInt on the synthetic dataset)",
                       description="Train a model; settings: defaults < --config < flags.")
    t.add_argument("--model", help=f"{' | '.join(MODELS)} (default autoint)")
    t.add_argument("--dataset", help=f"{' | '.join(DATASETS)} (default synthetic)")
    t.add_argument("--data-path", help="input file, or a directory of pre-split train/valid/test files "
                                        "(of the .dat files for MovieLens)")
    t.add_argument("--train-path", help="pre-split training file (vocabulary from it alone)")
    t.add_argument("--valid-path", help="pre-split validation file")
    t.add_argument("--test-path", help="pre-split test file")
    t.add_argument("--cache-dir", help="preprocessed dataset cache (default $FASTINT_CACHE or ~/.cache/fastint)")
    t.add_argument("--config", help="YAML or JSON run configuration")
    t.add_argument("--out", help="run directory (default runs/<model>-<dataset>)")
    t.add_argument("--param", action="append", metavar="KEY=VALUE", help="model hyper-parameter (repeatable)")
    t.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="reader/preprocessing option, e.g. min_count=10, numeric=log2 (repeatable)")
    t.add_argument("--rows", type=int, help="rows of the synthetic dataset")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--optimizer", choices=OPTIMIZERS)
    t.add_argument("--embedding", choices=EMBEDDINGS,
                   help="fastint (default) | torchrec: tables sharded by torchrec (one per field; torchrec_grouped: "
                        "per pooling mode); see the README's 'Beyond one GPU'")
    t.add_argument("--sharding", choices=SHARDINGS, help="torchrec tables: auto (the planner's choice) | table_wise | "
                                                         "row_wise | column_wise")
    t.add_argument("--embedding-optimizer", choices=EMBEDDING_OPTIMIZERS,
                   help="torchrec tables, fused into the backward: auto (rowwise_adagrad) | rowwise_adagrad | "
                        "adam (CUDA) | sgd")
    t.add_argument("--grad-clip", type=float, help="max gradient norm (0 = off)")
    t.add_argument("--amp", choices=("auto", "bf16", "off"))
    t.add_argument("--metric", choices=("auto", "auc", "logloss", "rmse"), help="early-stopping metric")
    t.add_argument("--patience", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--prefetch", type=int, help="batches prepared ahead in a background thread")
    t.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps")
    t.add_argument("--stop-after-steps", type=int, help="checkpoint and stop after N steps (resume later)")
    t.add_argument("--threads", type=int, help="torch CPU threads (default: the idle CPUs, from the affinity mask and the load)")
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue from checkpoints/last.pt of a run")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="metrics of a trained run", description="Metrics of a run's best weights.")
    e.add_argument("run_dir")
    e.add_argument("--split", default="test", choices=("valid", "test", "all"))
    e.add_argument("--device", default="auto")
    e.add_argument("--json", help="also write the metrics to this file")
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("explain", help="attention heatmaps (PNG) + numbers (JSON) of a run",
                       description="Average the model's attention over a split; write PNG heatmaps and JSON.")
    x.add_argument("run_dir")
    x.add_argument("--split", default="test", choices=("train", "valid", "test"))
    x.add_argument("--samples", type=int, default=2048, help="samples averaged")
    x.add_argument("--out", help="output directory (default: the run directory)")
    x.add_argument("--device", default="auto")
    x.set_defaults(func=cmd_explain)

    o = sub.add_parser("export", help="the trained model as a torch.export program",
                       description="Export a run's best weights as a torch.export program (.pt2).")
    o.add_argument("run_dir")
    o.add_argument("--out", help="program file (default RUN_DIR/model.pt2)")
    o.add_argument("--device", default="auto", help="trace on this device (serve on the same type)")
    o.set_defaults(func=cmd_export)

    s = sub.add_parser("predict", help="score a file of new rows with a trained run",
                       description="Score every row of a file (the run's dataset format; labels optional) with "
                                   "the run's best weights and vocabulary; one CSV line per row, in order.")
    s.add_argument("run_dir")
    s.add_argument("--data-path", required=True, help="the file to score")
    s.add_argument("--out", help="scores CSV (default RUN_DIR/scores.csv)")
    s.add_argument("--batch-size", type=int, default=8192)
    s.add_argument("--device", default="auto")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_predict)

    b = sub.add_parser("bench", help="run the benchmarks and print a markdown table",
                       description="pytest bench/ --benchmark-only --benchmark-json, then a markdown table.")
    b.add_argument("--bench-dir", help="benchmark directory (default ./bench or the source tree's)")
    b.add_argument("-k", help="pytest -k expression selecting benchmarks")
    b.add_argument("--json", help="where the JSON goes (default runs/bench.json)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = make_parser().parse_args(argv or ["train"])
        return args.func(args)
    except UsageError as err:
        if os.environ.get("FASTINT_DEBUG", "") not in ("", "0"):
            raise
        print(f"fastint: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
