"""Adam variants of the thesis notes in our sources, for every Adam of a run (the record's AdamW and
--matrix_optimizer=adam): bias correction off, moments started at the first gradient, the nested average
(LaProp), and an eps schedule toward SGD-like steps. At the defaults a run uses torch's fused AdamW and
never imports this module."""

import math

import torch

import train_gpt as tg

EPS_SCHEDULE_MAX_EXPONENT = 700  # exp() of more overflows a double


class AdamVariant(torch.optim.Optimizer):
    """Adam(W) with the switches of the thesis notes in our sources: bias correction on or off, moments
    started at zero or at the first gradient (m = g1, v = g1²; the first update then uses g1 again),
    and the nested average (normalise first, then average: the idea published as LaProp). With the
    defaults it is torch's AdamW, step for step:
      m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g²;  w <- w (1 - lr wd) - lr m̂ / (sqrt(v̂) + eps)
    nested: v as above, n = g / (sqrt(v̂) + eps), m <- b1 m + (1 - b1) n, w <- w (1 - lr wd) - lr m̂.
    The hat is the division by 1 - b^t (bias correction) or nothing."""

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        bias_correction: bool = True,
        zero_init: bool = True,
        nested: bool = False,
    ):
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            zero_init=zero_init,
            nested=nested,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                first = not state
                if first:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if not group["zero_init"]:
                        state["exp_avg_sq"].copy_(g * g)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                bc1 = 1 - b1**t if group["bias_correction"] else 1.0
                bc2 = 1 - b2**t if group["bias_correction"] else 1.0
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / math.sqrt(bc2)).add_(group["eps"])
                if group["nested"]:
                    n = g / denom
                    if first and not group["zero_init"]:
                        m.copy_(n)
                    m.mul_(b1).add_(n, alpha=1 - b1)
                    p.mul_(1 - group["lr"] * group["weight_decay"]).add_(m, alpha=-group["lr"] / bc1)
                else:
                    if first and not group["zero_init"]:
                        m.copy_(g)
                    m.lerp_(g, 1 - b1)
                    p.mul_(1 - group["lr"] * group["weight_decay"]).addcdiv_(m, denom, value=-group["lr"] / bc1)


def variant(args) -> dict | None:
    """AdamVariant's switches when any Adam option differs from its default, else None (torch's AdamW)."""
    switches = dict(
        bias_correction=args.adam_bias_correction, zero_init=args.adam_init == "zero", nested=args.adam_nested
    )
    if switches == dict(bias_correction=True, zero_init=True, nested=False) and args.adam_eps_max is None:
        return None
    return switches


def eps_schedule(step: int, args, eps0: float | None = None) -> float:
    """Adam's eps at a step, from eps0 (default --adam_eps) toward --adam_eps_max, to move Adam smoothly
    toward SGD-like steps late in training (thesis notes in our sources): eps0 before w T; then
    A exp(k (t - w T)) + B, with A = (eps_max - eps0) / (exp(k T (E - w)) - 1) and B = eps0 - A, which
    meets eps0 at w T and eps_max at E T; eps_max from E T on."""
    eps0 = args.adam_eps if eps0 is None else eps0
    if args.adam_eps_max is None:
        return eps0
    T, w, E, k = args.num_iterations, args.adam_eps_start_frac, args.adam_eps_end_frac, args.adam_eps_growth
    if step < w * T:
        return eps0
    if step >= E * T:
        return args.adam_eps_max
    A = (args.adam_eps_max - eps0) / math.expm1(k * T * (E - w))
    return A * math.exp(k * (step - w * T)) + (eps0 - A)


def set_eps(step: int, args, optimizers) -> None:
    """The eps schedule, set with the other schedules before every step."""
    if args.adam_eps_max is None:
        return
    for opt in optimizers:
        for group in opt.param_groups:
            if "initial_eps" in group:
                group["eps"] = eps_schedule(step, args, group["initial_eps"])


def validate(args) -> None:
    if args.adam_init not in ("zero", "grad"):
        raise tg.UserError(f"option --adam_init={args.adam_init!r}: expected zero or grad.")
    if args.adam_eps_max is None:
        return
    if not args.adam_eps_max > 0:
        raise tg.UserError(f"option --adam_eps_max={args.adam_eps_max}: must be positive.")
    if not 0 <= args.adam_eps_start_frac < args.adam_eps_end_frac <= 1:
        raise tg.UserError(
            f"options --adam_eps_start_frac={args.adam_eps_start_frac} and --adam_eps_end_frac="
            f"{args.adam_eps_end_frac}: need 0 <= start < end <= 1."
        )
    if not args.adam_eps_growth > 0:
        raise tg.UserError(f"option --adam_eps_growth={args.adam_eps_growth}: must be positive.")
    exponent = args.adam_eps_growth * args.num_iterations * (args.adam_eps_end_frac - args.adam_eps_start_frac)
    if not exponent < EPS_SCHEDULE_MAX_EXPONENT:
        raise tg.UserError(
            f"option --adam_eps_growth={args.adam_eps_growth}: the schedule's exp(growth x steps of growth) = "
            f"exp({exponent:.4g}) overflows; use a rate below "
            f"{EPS_SCHEDULE_MAX_EXPONENT * args.adam_eps_growth / exponent:.3g}."
        )


def summary(args) -> dict:
    """What the log and the JSON say of the variant."""
    schedule = None
    if args.adam_eps_max is not None:
        schedule = dict(
            eps_max=args.adam_eps_max, start_frac=args.adam_eps_start_frac, end_frac=args.adam_eps_end_frac,
            growth=args.adam_eps_growth,
        )  # fmt: skip
    return dict(**variant(args), eps_schedule=schedule)


def describe(args) -> str:
    settings = ", ".join(f"{k}={tg.format_value(v)}" for k, v in summary(args).items())
    return f"adam: AdamVariant for every Adam ({settings})"
