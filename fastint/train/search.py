"""The AIM / AutoFIS search end to end (``fastint train --model aim``, ``--model autofis``).

Stages (``--param stage=...``; default ``all`` runs them in turn):

1. ``interactions``: order 2 first: all pairs x all interaction functions, gates ``alpha`` (init
   0.6) trained with GRDA, everything else with Adam, for ``search_epochs``; an entry (f, q)
   survives iff its gate is not exactly 0. Then for each order ``p = 3..max_order``: the
   candidates are the top ``top_k`` surviving tuples of order ``p - 1`` (by ``max_f |alpha_fq|``)
   joined with every other field, searched the same way next to the kept lower-order tuples,
   whose gates start from their searched values and train with Adam (fixed at GRDA's shrunk
   values, they would leave the candidates that contain them to make up the difference).
2. ``dimensions`` (AIM only): the selected tuples with fixed gates; the dimension gates
   ``beta [M, d]`` trained with GRDA for ``dimension_epochs``; field ``m`` keeps the positions
   where ``beta_m != 0``. Tuples touching a field with no dimension left are dropped.
3. ``retrain``: the selected tuples, functions and dimensions, gates fixed, plus the MLP, for the
   run's ``--epochs``; this model is the run's model (``checkpoints/``, ``metrics.json``,
   ``fastint evaluate``).

Every stage starts from freshly initialised weights (seeded by ``--seed``). A search stage runs
all its epochs (no early stopping: the epochs are GRDA's schedule) and its result is read from its
last weights (``checkpoints/last.pt``), not from the best validation epoch's, which the trainer
restores (``best.pt``) and reports. A search stage of a full run trains in ``<out>/search/<stage>``;
a one-stage run (``stage=dimensions`` or ``retrain``) reads the previous run's
``selection=path/to/selection.json``. Every run writes ``selection.json``
(the selected ``tuples``, their ``gates`` per function, the kept ``dims`` per field, the final
``beta`` and every ``searched`` candidate with its final gates) and its pictures: the tuple x
function gate heatmap (``aim_gates.png``) and the per-field embedding sizes (``aim_dims.png``),
which ``fastint explain RUN`` draws again.

The search options (``stage``, ``selection``, ``max_order``, ``top_k``, ``search_epochs``,
``dimension_epochs``) are given with ``--param`` like the model's hyper-parameters; the model's
``stage``, ``tuples``, ``gates``, ``search_orders`` and ``dims`` are set by the search.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastint.data.dataset import Dataset
from fastint.models import MODELS, build_model
from fastint.models.aim import AIM, GRDA_INTERACTIONS
from fastint.nn.aim import GATE_INIT
from fastint.reference.multi_function_interactions import INNER, all_tuples
from fastint.train.trainer import TrainConfig, Trainer, seed_everything

SEARCHABLE = ("aim", "autofis")
STAGES = {"aim": ("interactions", "dimensions", "retrain"), "autofis": ("interactions", "retrain")}
SET_BY_SEARCH = ("tuples", "gates", "search_orders", "dims")
SELECTION = "selection.json"
SHOWN = 12  # tuples listed per order in the printed summary


class SearchError(ValueError):
    """A search option, a selection file or a search outcome that cannot go on (e.g. every gate
    pruned): reported to the user as one line."""


@dataclass(frozen=True)
class SearchOptions:
    stage: str = "all"
    selection: str = ""
    max_order: int = 3
    top_k: int = 5
    search_epochs: int = 4
    dimension_epochs: int = 3

    def stages(self, model: str) -> tuple[str, ...]:
        return STAGES[model] if self.stage == "all" else (self.stage,)


def split_params(model: str, params: dict) -> tuple[SearchOptions, dict]:
    """(search options, model hyper-parameters) of a searchable ``model``'s ``--param`` values;
    SearchError for a bad option or a model hyper-parameter that the search sets."""
    names = {f.name for f in dataclasses.fields(SearchOptions)}
    owned = sorted(k for k in params if k in SET_BY_SEARCH)
    if owned:
        raise SearchError(f"{', '.join(owned)} are set by the search (from a selection file: "
                          f"--param selection=path/to/{SELECTION})")
    values = {k: v for k, v in params.items() if k in names}
    defaults = SearchOptions()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if not isinstance(value, expected) or isinstance(value, bool):
            raise SearchError(f"search option {key} must be {expected.__name__}, got {value!r}")
    options = SearchOptions(**values)
    stages = ("all", *STAGES[model])
    if options.stage not in stages:
        raise SearchError(f"stage must be one of {', '.join(stages)} for {model}, got {options.stage!r}")
    limits = {"max_order": (2, 4), "top_k": (1, None), "search_epochs": (1, None), "dimension_epochs": (1, None)}
    for key, (low, high) in limits.items():
        value = getattr(options, key)
        if value < low or (high is not None and value > high):
            raise SearchError(f"search option {key} must be in {low}..{high or 'inf'}, got {value}")
    needs_selection = options.stage in ("dimensions", "retrain")
    if needs_selection != bool(options.selection):
        raise SearchError(f"stage {options.stage} needs --param selection=path/to/{SELECTION}" if needs_selection
                          else f"stage {options.stage} searches from scratch: it takes no selection")
    return options, {k: v for k, v in params.items() if k not in names}


# ----------------------------------------------------------------------------------- selection
def new_selection(model: str, fields: list[str], params: dict) -> dict:
    """An empty selection for ``model`` with hyper-parameters ``params`` on ``fields``."""
    functions = [INNER] if model == "autofis" else list(_hparam(model, params, "functions"))
    return {"model": model, "fields": fields, "functions": functions,
            "embed_dim": _hparam(model, params, "embed_dim"),
            "tuples": [], "gates": [], "dims": None, "beta": None, "searched": []}


def _hparam(model: str, params: dict, key: str):
    """``params[key]``, or the model's default for it."""
    return params[key] if key in params else inspect.signature(MODELS[model]).parameters[key].default


def load_selection(path: str, model: str, fields: list[str], params: dict) -> dict:
    """The selection in ``path``, checked against the run (fields, functions, embedding size)."""
    if not os.path.isfile(path):
        raise SearchError(f"selection file not found: {path}")
    try:
        with open(path) as f:
            sel = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SearchError(f"cannot read selection {path}: {err}") from None
    expected = new_selection(model, fields, params)
    if not isinstance(sel, dict) or not set(expected) <= set(sel):
        raise SearchError(f"selection {path} must be a JSON object with keys {', '.join(expected)}")
    for key in ("fields", "functions", "embed_dim"):
        if sel[key] != expected[key]:
            raise SearchError(f"selection {path} was made with {key}={sel[key]}, this run has {expected[key]}")
    tuples, gates, dims = sel["tuples"], sel["gates"], sel["dims"]
    m, f, d = len(fields), len(expected["functions"]), expected["embed_dim"]
    if (not isinstance(tuples, list) or not tuples or not isinstance(gates, list) or len(gates) != len(tuples)
            or any(not _ints(q, 0, m - 1) or not 2 <= len(q) <= 4 or len(set(q)) != len(q) for q in tuples)
            or any(not isinstance(g, list) or len(g) != f or not all(_number(v) for v in g) for g in gates)):
        raise SearchError(f"selection {path}: tuples must be a non-empty list of 2..4 distinct field indices "
                          f"in 0..{m - 1}, gates one list of {f} numbers per tuple")
    if dims is not None and (not isinstance(dims, list) or len(dims) != m
                             or any(not _ints(k, 0, d - 1) for k in dims)):
        raise SearchError(f"selection {path}: dims must be null or one list of positions in 0..{d - 1} per field")
    return sel


def _ints(values, low: int, high: int) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                            and low <= v <= high for v in values)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _label(q, fields: list[str]) -> str:
    return "(" + ",".join(fields[i] for i in q) + ")"


def higher_order_candidates(tuples: list[list[int]], gates: list[list[float]], order: int,
                            num_fields: int, top_k: int) -> list[list[int]]:
    """Tuples of ``order``: the ``top_k`` kept tuples of ``order - 1`` (by ``max_f |gate|``, ties
    by tuple) joined with every field not in them, sorted, without duplicates."""
    ranked = sorted((q for q in zip(tuples, gates) if len(q[0]) == order - 1),
                    key=lambda qg: (-max(abs(v) for v in qg[1]), qg[0]))[:top_k]
    return sorted({tuple(sorted({*q, m})) for q, _ in ranked for m in range(num_fields) if m not in q})


def describe_selection(sel: dict) -> list[str]:
    """Human-readable lines: the kept tuples with their functions, the kept dimensions."""
    fields, functions = sel["fields"], sel["functions"]
    lines = []
    for order in sorted({len(q) for q in sel["tuples"]}):
        kept = [(q, g) for q, g in zip(sel["tuples"], sel["gates"]) if len(q) == order]
        searched = next((s for s in sel["searched"] if s["order"] == order), None)
        total = f" of {len(searched['tuples'])}" if searched else ""
        shown = [_label(q, fields) + "[" + ",".join(fn for fn, v in zip(functions, g) if v != 0) + "]"
                 for q, g in sorted(kept, key=lambda qg: -max(map(abs, qg[1])))[:SHOWN]]
        more = f", ... ({len(kept) - SHOWN} more)" if len(kept) > SHOWN else ""
        lines.append(f"order {order}: {len(kept)}{total} tuples kept (strongest first): {', '.join(shown)}{more}")
    if sel["dims"] is not None:
        lines.append("dims: " + " ".join(f"{name}={len(k)}" for name, k in zip(fields, sel["dims"])))
    return lines


# ----------------------------------------------------------------------------------- pictures
def draw_selection(sel: dict, out_dir: str) -> list[str]:
    """``aim_gates.png`` (per searched order, the function x tuple matrix of the final gates;
    pruned entries, exactly 0, white) and, when the dimensions were searched, ``aim_dims.png`` (kept embedding size
    per field); returns the written paths."""
    searched = sel["searched"] or [{"order": p, "tuples": [q for q in sel["tuples"] if len(q) == p],
                                    "gates": [g for q, g in zip(sel["tuples"], sel["gates"]) if len(q) == p]}
                                   for p in sorted({len(q) for q in sel["tuples"]})]
    written = [_gate_heatmap(sel, searched, os.path.join(out_dir, "aim_gates.png"))] if searched else []
    if sel["dims"] is not None:
        written.append(_bar_chart(sel["fields"], [len(k) for k in sel["dims"]], sel["embed_dim"],
                                  os.path.join(out_dir, "aim_dims.png")))
    return written


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


LABELLED = 200  # tuples per order up to which every column is labelled


def _gate_heatmap(sel: dict, searched: list[dict], path: str) -> str:
    import numpy as np
    plt = _pyplot()
    widest = max(len(s["tuples"]) for s in searched)
    values = [v for s in searched for g in s["gates"] for v in g if v != 0] or [0.0, 1.0]
    fig, axes = plt.subplots(len(searched), 1, squeeze=False, layout="constrained",
                             figsize=(min(2.5 + 0.13 * widest, 24), 0.4 + 2.2 * len(searched)))
    for ax, s in zip(axes[:, 0], searched):
        mat = np.array(s["gates"], dtype=float).T                       # [F, P]
        image = ax.imshow(np.ma.masked_equal(mat, 0.0), cmap="viridis", vmin=min(values), vmax=max(values),
                          aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(sel["functions"])), sel["functions"], fontsize=7)
        labels = [_label(q, sel["fields"]) for q in s["tuples"]] if len(s["tuples"]) <= LABELLED else []
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=5)
        kept = sum(any(v != 0 for v in g) for g in s["gates"])
        ax.set_title(f"order {s['order']}: {kept} of {len(s['tuples'])} tuples kept", fontsize=8)
    fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.02, pad=0.01, label="gate alpha")
    fig.suptitle(f"{sel['model']}: searched gates per interaction function and tuple (white = pruned)", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bar_chart(fields: list[str], sizes: list[int], embed_dim: int, path: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.5 + 0.4 * len(fields), 3))
    ax.bar(range(len(fields)), sizes)
    ax.axhline(embed_dim, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(fields)), fields, rotation=90, fontsize=7)
    ax.set_ylabel("kept dimensions")
    ax.set_title(f"embedding size per field after the dimension search (of {embed_dim})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------- the driver
@dataclass
class Search:
    """One run of the search: ``run()`` trains its stages and returns the last stage's trainer and
    ``fit()`` result. ``prepare(trainer)`` is called on the last stage's trainer before it trains
    (the CLI resumes a one-stage run there)."""

    model: str
    options: SearchOptions
    params: dict
    train: TrainConfig
    data: Dataset
    out: str
    log: Callable[[str], None] = print
    prepare: Callable[[Trainer], None] = lambda trainer: None

    def __post_init__(self) -> None:
        fields = [f.name for f in self.data.schema.fields]
        if self.options.selection:
            self.selection = load_selection(self.options.selection, self.model, fields, self.params)
        else:
            self.selection = new_selection(self.model, fields, self.params)
        if len(self.options.stages(self.model)) > 1 and self.train.stop_after_steps:
            raise SearchError("stop_after_steps (and resuming) needs a one-stage run (--param stage=...)")

    def run(self) -> tuple[Trainer, dict]:
        stages = self.options.stages(self.model)
        trainer = result = None
        for stage in stages:
            last = stage == stages[-1]
            if stage == "interactions":
                trainer, result = self._interactions(last)
            elif stage == "dimensions":
                trainer, result = self._dimensions(last)
            else:
                dims = self.selection["dims"]
                trainer, result = self._fit("retrain", {"stage": "retrain", **self._selected(),
                                                        **({"dims": dims} if dims is not None else {})},
                                            self.train.epochs, self.out)
            if result["interrupted"]:
                return trainer, result
            self._write(trainer)
        return trainer, result

    def _selected(self) -> dict:
        return {"tuples": self.selection["tuples"], "gates": self.selection["gates"]}

    def _fit(self, name: str, model_params: dict, epochs: int, out: str) -> tuple[Trainer, dict]:
        """Train a fresh model of the stage; a search stage runs all its epochs (GRDA's schedule)."""
        seed_everything(self.train.seed)
        config = dataclasses.replace(self.train, epochs=epochs)
        if model_params["stage"] != "retrain":
            config = dataclasses.replace(config, patience=0)
        try:  # what the model or the trainer reject in the user's hyper-parameters and options
            model = build_model(self.model, self.data.schema, **self.params, **model_params)
            trainer = Trainer(model, self.data, config, out_dir=out, log=self.log)
        except ValueError as err:
            raise SearchError(f"model {self.model} ({name}): {err}") from err
        self.log(f"{self.model} {name}: {sum(p.numel() for p in model.parameters()):,} parameters, {epochs} epochs")
        if out == self.out:
            self.prepare(trainer)
        return trainer, trainer.fit()

    def _stage_dir(self, name: str, last: bool) -> str:
        return self.out if last else os.path.join(self.out, "search", name)

    def _searched(self, trainer: Trainer) -> AIM:
        """The stage's model with its weights at the end of the search (``last.pt``): the searched
        architecture, not that of the best validation epoch, which the trainer restored."""
        ckpt = torch.load(os.path.join(trainer.out_dir, "checkpoints", "last.pt"), map_location="cpu",
                          weights_only=False)
        model = build_model(schema=self.data.schema, **trainer.model.config)
        model.load_state_dict(ckpt["model"])
        return model

    def _interactions(self, last: bool) -> tuple[Trainer, dict]:
        sel, m = self.selection, len(self.selection["fields"])
        functions = len(sel["functions"])
        trainer = result = None
        for order in range(2, self.options.max_order + 1):
            if order == 2:
                candidates = all_tuples(m).tolist()
            else:
                candidates = higher_order_candidates(sel["tuples"], sel["gates"], order, m, self.options.top_k)
            if not candidates:
                self.log(f"order {order}: no candidates (no tuple of order {order - 1} kept)")
                break
            final = last and order == self.options.max_order
            params = {"stage": "interactions", "search_orders": [order],
                      "tuples": sel["tuples"] + [list(q) for q in candidates],
                      "gates": sel["gates"] + [[GATE_INIT] * functions] * len(candidates)}
            trainer, result = self._fit(f"interaction search, order {order} ({len(candidates)} candidates)", params,
                                        self.options.search_epochs, self._stage_dir(f"interactions-{order}", final))
            if result["interrupted"]:
                return trainer, result
            searched = [(list(q), g) for q, g in self._searched(trainer).gate_values() if len(q) == order]
            sel["searched"] = [s for s in sel["searched"] if s["order"] != order] + [
                {"order": order, "tuples": [q for q, _ in searched], "gates": [g for _, g in searched]}]
            kept = [(q, g) for q, g in searched if any(v != 0 for v in g)]
            sel["tuples"] += [q for q, _ in kept]
            sel["gates"] += [g for _, g in kept]
            self.log(describe_selection(sel)[-1] if kept else f"order {order}: every candidate pruned")
            if not sel["tuples"]:
                raise SearchError("the interaction search pruned every gate; lower GRDA's c "
                                  f"(--param interaction_grda=[lr,c,mu], default {list(GRDA_INTERACTIONS)}) "
                                  "or search longer")
        return trainer, result

    def _dimensions(self, last: bool) -> tuple[Trainer, dict]:
        sel = self.selection
        trainer, result = self._fit("dimension search", {"stage": "dimensions", **self._selected()},
                                    self.options.dimension_epochs, self._stage_dir("dimensions", last))
        if result["interrupted"]:
            return trainer, result
        gates = self._searched(trainer).dimension_gates
        sel["dims"] = gates.kept_positions()
        sel["beta"] = gates.beta.detach().cpu().tolist()
        alive = [(q, g) for q, g in zip(sel["tuples"], sel["gates"]) if all(sel["dims"][i] for i in q)]
        if not alive:
            raise SearchError("the dimension search pruned a field of every selected tuple; lower GRDA's c "
                              "(--param dimension_grda=[lr,c,mu]) or search longer")
        sel["tuples"], sel["gates"] = [q for q, _ in alive], [g for _, g in alive]
        self.log(describe_selection(sel)[-1])
        return trainer, result

    def _write(self, trainer: Trainer) -> None:
        if trainer.rank != 0:
            return
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, SELECTION), "w") as f:
            json.dump(self.selection, f, indent=1)
