"""--log_weight_drift: how far each kind of parameter has moved from its initial value, logged at every
validation (weight decay in closed form and these diagnostics: thesis notes in our sources)."""

import math

import torch
from torch import Tensor


def initial_weights(kinds: dict[str, list[Tensor]], device) -> dict[str, list[Tensor]]:
    """A copy of the weights to measure from (the run's start, or a checkpoint's saved copy)."""
    return {k: [p.detach().to(device, copy=True) for p in ps] for k, ps in kinds.items()}


@torch.no_grad()
def weight_drift(kinds: dict[str, list[Tensor]], initial: dict[str, list[Tensor]]) -> dict:
    """Per kind of parameter: ||w - w0||, ||w - w0|| / ||w0|| and cos(w, w0) over all its tensors (None
    where w0 or w is zero, as the zero-initialized head is at the start). Weight decay in closed form
    and these diagnostics: thesis notes in our sources."""
    out = {}
    for name, params in kinds.items():
        sums = torch.zeros(4, dtype=torch.float64, device=params[0].device)  # |w-w0|², |w0|², |w|², <w, w0>
        for p, p0 in zip(params, initial[name]):
            w, w0 = p.detach().double(), p0.double()
            sums += torch.stack([(w - w0).square().sum(), w0.square().sum(), w.square().sum(), (w * w0).sum()])
        d2, n0, n, dot = sums.tolist()
        out[name] = dict(
            distance=math.sqrt(d2),
            relative_distance=math.sqrt(d2 / n0) if n0 > 0 else None,
            cosine=dot / math.sqrt(n * n0) if n > 0 and n0 > 0 else None,
        )
    return out


def log_drift(log, step: int, drift: dict) -> None:
    """One log line, and the drift added to that step's validation in the JSON."""

    def num(x: float | None, spec: str) -> str:
        return "n/a" if x is None else format(x, spec)

    parts = [
        f"{name} rel {num(d['relative_distance'], '.4g')} cos {num(d['cosine'], '.6f')}" for name, d in drift.items()
    ]
    log.write(f"weight drift at step {step}: " + ", ".join(parts))
    log.summary["val_losses"][-1]["weight_drift"] = drift
    log.save()
