"""The patch mechanism shared by every library: match modules, bind a fused ``forward`` to each
instance (Liger-Kernel's way), report what was replaced and what was left alone, and revert.

Binding ``forward`` on the instance changes nothing else: the module keeps its class, its
parameters (the very same ``Parameter`` objects, so optimizers already built keep stepping
them), its state-dict keys and its hooks. ``revert`` deletes the instance attribute, so the
class's own ``forward`` is back.
"""
from __future__ import annotations

import dataclasses
import types
import warnings
from collections.abc import Callable, Iterable

from torch import nn

PATCH_ATTRIBUTE = "_fastint_patch"     # set on a patched module: its PatchState


@dataclasses.dataclass(frozen=True)
class Patcher:
    """How to fuse one kind of module.

    ``matches(module)`` says whether ``module`` is of this kind; ``unsupported(module)`` names
    why its configuration cannot be fused (``None``: it can); ``forward(module, *args)`` is the
    fused forward, reading its options from ``module._fastint_patch`` (``None``: a module that is
    recognised in order to be reported, never fused; ``unsupported`` always gives the reason
    then); ``attention_attribute`` is
    the attention side effect the original forward leaves on the module (kept only with
    ``keep_attention``).
    """
    library: str
    layer: str
    op: str
    matches: Callable[[nn.Module], bool]
    unsupported: Callable[[nn.Module], str | None]
    forward: Callable | None
    attention_attribute: str | None = None

    @property
    def name(self) -> str:
        return f"{self.library} {self.layer}"


@dataclasses.dataclass(frozen=True)
class PatchState:
    """What ``apply`` left on a patched module."""
    patcher: Patcher
    keep_attention: bool


@dataclasses.dataclass(frozen=True)
class Replaced:
    path: str           # the module's name in the model ("" for the model itself)
    layer: str          # e.g. "DeepCTR-Torch InteractingLayer"
    op: str             # the fused op now running it


@dataclasses.dataclass(frozen=True)
class Skipped:
    path: str
    layer: str
    reason: str


@dataclasses.dataclass
class PatchReport:
    """What ``fastint.patch.apply`` did: the modules now running a fused op, and those it
    recognised but left alone (with the reason). ``str(report)`` is a readable summary."""
    replaced: list[Replaced] = dataclasses.field(default_factory=list)
    skipped: list[Skipped] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"fastint.patch: {len(self.replaced)} replaced, {len(self.skipped)} left alone"]
        lines += [f"  replaced {r.path or '<model>'}: {r.layer} -> fastint.ops.{r.op}" for r in self.replaced]
        lines += [f"  left alone {s.path or '<model>'}: {s.layer} ({s.reason})" for s in self.skipped]
        return "\n".join(lines)


def state_of(module: nn.Module) -> PatchState:
    """The ``PatchState`` of a patched module (read by the fused forwards)."""
    return module.__dict__[PATCH_ATTRIBUTE]


def patch_modules(model: nn.Module, patchers: Iterable[Patcher], *, keep_attention: bool,
                  report: PatchReport) -> PatchReport:
    """Bind the fused forward of the first matching patcher to every module of ``model``
    (the model itself included); unsupported configurations are reported and warned about."""
    patchers = tuple(patchers)
    for path, module in model.named_modules():
        patcher = next((p for p in patchers if p.matches(module)), None)
        if patcher is None:
            continue
        if PATCH_ATTRIBUTE in module.__dict__:
            report.skipped.append(Skipped(path, patcher.name, "already patched"))
            continue
        reason = patcher.unsupported(module)
        if reason is None and patcher.forward is None:
            reason = "not fused"
        if reason is not None:
            warnings.warn(f"fastint.patch: {patcher.name} at {path or '<model>'} left unpatched: {reason}",
                          stacklevel=3)
            report.skipped.append(Skipped(path, patcher.name, reason))
            continue
        if not keep_attention and patcher.attention_attribute:
            module.__dict__.pop(patcher.attention_attribute, None)   # no stale scores to read
        module.__dict__[PATCH_ATTRIBUTE] = PatchState(patcher, keep_attention)
        module.forward = types.MethodType(patcher.forward, module)
        report.replaced.append(Replaced(path, patcher.name, patcher.op))
    return report


def revert(model: nn.Module) -> int:
    """Undo ``fastint.patch.apply`` on ``model`` in place; returns how many modules it restored.

    Parameters are untouched (they were never replaced), so training can go on either way."""
    restored = 0
    for module in model.modules():
        if module.__dict__.pop(PATCH_ATTRIBUTE, None) is not None:
            del module.forward
            restored += 1
    return restored
