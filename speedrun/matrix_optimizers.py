"""The other optimizers of the hidden matrices (--matrix_optimizer=adam|shampoo|soap; Muon, the record, is in
train_gpt.py): each on fp32 master weights, spread over the ranks as Muon is. A fifth optimizer is one entry
of REGISTRY, with its builder here."""

import importlib.metadata

import torch
from torch import Tensor

import train_gpt as tg


class MasterWeightMatrices(tg.MatrixOptimizer):
    """The hidden matrices trained by any torch optimizer (Adam, Shampoo, SOAP) on fp32 master weights,
    so that no small update is lost to bf16 rounding: the master is Muon's (the bf16 parameter plus a
    uint16 mantissa), rebuilt into an fp32 buffer before each step and split back after it, so that
    Snoo's changes to the parameter are seen exactly as Muon sees them. A batch of matrices (the
    (4, d, d) attention tensor) is optimized as separate matrices, as Muon orthogonalizes it.
    make_inner(tensors, lr) builds the optimizer of one parameter's matrices; the scheduled values (lr, and
    eps for Adam) are this optimizer's groups' and are copied to it before every step."""

    def __init__(self, params, make_inner, rank: int = 0, world_size: int = 1, **scheduled):
        super().__init__(params, scheduled, rank, world_size)
        self.scheduled = tuple(scheduled)  # group values (lr, eps) that the schedules set, copied to the inner ones
        self.make_inner = make_inner
        self.inner: dict[Tensor, torch.optim.Optimizer] = {}
        self.masters: dict[Tensor, tuple[Tensor, list[Tensor]]] = {}

    @staticmethod
    def _pieces(t: Tensor) -> list[Tensor]:
        return list(t.unbind(0)) if t.ndim == 3 else [t]

    def _inner_for(self, p: Tensor, group: dict) -> torch.optim.Optimizer:
        if p not in self.inner:
            bf16 = p.dtype == torch.bfloat16
            if bf16 and "mantissa" not in self.state[p]:
                self.state[p]["mantissa"] = torch.zeros_like(p, dtype=torch.uint16)
            master = torch.empty_like(p, dtype=torch.float32) if bf16 else p
            self.masters[p] = (master, self._pieces(master))  # the views the inner optimizer holds
            self.inner[p] = self.make_inner(self.masters[p][1], group["lr"])
        return self.inner[p]

    def _update(self, p: Tensor, group: dict) -> None:
        inner = self._inner_for(p, group)
        mantissa = self.state[p].get("mantissa")
        master, pieces = self.masters[p]
        if mantissa is not None:
            master.copy_(tg.master_weight(p, mantissa))
        for piece, grad in zip(pieces, self._pieces(p.grad.float())):
            piece.grad = grad
        for inner_group in inner.param_groups:
            inner_group.update((key, group[key]) for key in self.scheduled)
        inner.step()
        for piece in pieces:
            piece.grad = None
        if mantissa is not None:
            tg.store_master_weight(master, p, mantissa)

    def state_dict(self) -> dict:
        saved = super().state_dict()
        params = [p for group in self.param_groups for p in group["params"]]
        saved["inner"] = {i: self.inner[p].state_dict() for i, p in enumerate(params) if p in self.inner}
        return saved

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "inner"})
        self.inner, self.masters = {}, {}
        params = [(p, group) for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict.get("inner", {}).items():
            p, group = params[index]
            self._inner_for(p, group).load_state_dict(saved)


class Shampoo(torch.optim.Optimizer):
    """Shampoo with Adam grafting (Gupta et al. 2018; the settings of Meta's DistributedShampoo in the
    optimizer comparison of our sources), written from the algorithm for matrices. Per matrix G:
      m = b1 m + (1 - b1) G, bias-corrected: the filtered gradient M;
      L = b2 L + (1 - b2) G Gᵀ and R = b2 R + (1 - b2) Gᵀ G (Kronecker factors), every step;
      every precondition_frequency steps, L^(-1/4) and R^(-1/4) by eigendecomposition in fp32, with
      epsilon added to the eigenvalues;
      Adam grafting: v = g2 v + (1 - g2) G², bias-corrected; A = M / (sqrt(v) + graft_eps);
      before the first roots the step is A; afterwards S = L^(-1/4) M R^(-1/4) scaled to A's norm;
      w <- w (1 - lr wd) - lr * step (decoupled weight decay).
    Dimensions above max_preconditioner_dim are split into blocks, each preconditioned and grafted
    on its own."""

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float],
        epsilon: float,
        weight_decay: float,
        precondition_frequency: int,
        max_preconditioner_dim: int,
        graft_beta2: float,
        graft_eps: float,
    ):
        defaults = dict(
            lr=lr,
            betas=betas,
            epsilon=epsilon,
            weight_decay=weight_decay,
            precondition_frequency=precondition_frequency,
            max_preconditioner_dim=max_preconditioner_dim,
            graft_beta2=graft_beta2,
            graft_eps=graft_eps,
        )
        super().__init__(params, defaults)

    @staticmethod
    def _blocks(t: Tensor, size: int) -> list[Tensor]:
        return [block for rows in t.split(size, 0) for block in rows.split(size, 1)]

    @staticmethod
    def _inverse_fourth_root(factor: Tensor, epsilon: float) -> Tensor:
        eigenvalues, eigenvectors = torch.linalg.eigh(factor.float())
        return eigenvectors @ torch.diag((eigenvalues.clamp_min(0) + epsilon) ** -0.25) @ eigenvectors.mT

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            (b1, b2), size, freq = group["betas"], group["max_preconditioner_dim"], group["precondition_frequency"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.ndim != 2:
                    raise ValueError("Shampoo here takes matrices; split batches of matrices first")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["graft_exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                    state["blocks"] = [
                        dict(
                            L=g.new_zeros(g.size(0), g.size(0)),
                            R=g.new_zeros(g.size(1), g.size(1)),
                            L_root=None,
                            R_root=None,
                        )
                        for g in self._blocks(torch.empty_like(p, dtype=torch.float32), size)
                    ]
                state["step"] += 1
                t = state["step"]
                g = p.grad.float()
                state["exp_avg"].lerp_(g, 1 - b1)
                state["graft_exp_avg_sq"].lerp_(g.square(), 1 - group["graft_beta2"])
                M = state["exp_avg"] / (1 - b1**t)
                A = M / ((state["graft_exp_avg_sq"] / (1 - group["graft_beta2"] ** t)).sqrt() + group["graft_eps"])
                direction = torch.empty_like(M)
                for block, g_b, m_b, a_b, out in zip(
                    state["blocks"],
                    self._blocks(g, size),
                    self._blocks(M, size),
                    self._blocks(A, size),
                    self._blocks(direction, size),
                ):
                    block["L"].lerp_(g_b @ g_b.mT, 1 - b2)
                    block["R"].lerp_(g_b.mT @ g_b, 1 - b2)
                    if t % freq == 0:
                        block["L_root"] = self._inverse_fourth_root(block["L"], group["epsilon"])
                        block["R_root"] = self._inverse_fourth_root(block["R"], group["epsilon"])
                    if block["L_root"] is None:
                        out.copy_(a_b)
                    else:
                        s_b = block["L_root"] @ m_b @ block["R_root"]
                        out.copy_(s_b * (a_b.norm() / s_b.norm().clamp_min(1e-30)))
                p.mul_(1 - group["lr"] * group["weight_decay"]).add_(direction.to(p.dtype), alpha=-group["lr"])


def make_adam(tensors, lr: float, s: dict, on_cuda: bool) -> torch.optim.Optimizer:
    if s.get("variant") is None:
        return torch.optim.Adam(
            tensors, lr=lr, betas=s["betas"], eps=s["eps"], weight_decay=s["weight_decay"],
            decoupled_weight_decay=True, fused=on_cuda or None,
        )  # fmt: skip
    from speedrun.adam_variants import AdamVariant

    return AdamVariant(tensors, lr=lr, betas=s["betas"], eps=s["eps"], weight_decay=s["weight_decay"], **s["variant"])


def make_shampoo(tensors, lr: float, s: dict, on_cuda: bool) -> torch.optim.Optimizer:
    return Shampoo(
        tensors, lr=lr, betas=s["betas"], epsilon=s["eps"], weight_decay=s["weight_decay"],
        precondition_frequency=s["precondition_frequency"], max_preconditioner_dim=s["max_preconditioner_dim"],
        graft_beta2=s["graft_beta2"], graft_eps=s["graft_eps"],
    )  # fmt: skip


def make_soap(tensors, lr: float, s: dict, on_cuda: bool) -> torch.optim.Optimizer:
    try:
        from pytorch_optimizer import SOAP
    except ImportError as e:
        raise tg.UserError(
            f"--matrix_optimizer=soap uses the SOAP of the pytorch-optimizer package, which does not "
            f"import ({tg.describe_error(e)}): pip install 'pytorch-optimizer>=4.1,<5'."
        ) from None
    # pytorch-optimizer's default weight decay is 0.01; the published setting is 0 (passed explicitly)
    return SOAP(
        tensors, lr=lr, betas=s["betas"], eps=s["eps"], weight_decay=s["weight_decay"],
        precondition_frequency=s["precondition_frequency"],
    )  # fmt: skip


# name -> the settings published in the optimizer comparison of our sources (optimizers.md, section 1), a
# builder make(tensors, lr, settings, on_cuda) of a torch optimizer for one parameter's matrices (run on fp32
# master weights by MasterWeightMatrices), and the PyPI package it comes from. A new optimizer is one entry.
REGISTRY = {
    "adam": dict(settings=dict(lr=0.0018, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0), make=make_adam, library=None),
    # Meta's DistributedShampoo settings: max preconditioner dim 8192, Adam grafting (beta2 0.95, eps 1e-8)
    "shampoo": dict(
        settings=dict(
            lr=0.0018,
            betas=(0.95, 0.95),
            eps=1e-12,
            weight_decay=0.0,
            precondition_frequency=10,
            max_preconditioner_dim=8192,
            graft_beta2=0.95,
            graft_eps=1e-8,
        ),
        make=make_shampoo,
        library=None,
    ),
    "soap": dict(
        settings=dict(lr=0.0018, betas=(0.95, 0.95), eps=1e-8, weight_decay=0.0, precondition_frequency=10),
        make=make_soap,
        library="pytorch-optimizer",
    ),
}
OVERRIDES = ("lr", "betas", "eps", "weight_decay", "precondition_frequency")  # the --matrix_* options


def validate(args) -> None:
    """The --matrix_* options, before anything runs."""
    choices = ("muon", *REGISTRY)
    if args.matrix_optimizer not in choices:
        raise tg.UserError(
            f"option --matrix_optimizer={args.matrix_optimizer!r}: expected one of {', '.join(choices)}."
        )
    for name in OVERRIDES:
        value = getattr(args, f"matrix_{name}")
        if value is None:
            continue
        if args.matrix_optimizer == "muon":
            raise tg.UserError(
                f"option --matrix_{name} applies to --matrix_optimizer={', '.join(REGISTRY)}; Muon (the default) has "
                f"its own options (--muon_lr, --muon_weight_decay, --muon_momentum)."
            )
        if name not in REGISTRY[args.matrix_optimizer]["settings"]:
            raise tg.UserError(
                f"option --matrix_{name}: --matrix_optimizer={args.matrix_optimizer} has no such setting."
            )
        if name == "betas":
            ok, expected = all(0 <= b < 1 for b in value), "each in [0, 1)"
        elif name == "precondition_frequency":
            ok, expected = value >= 1, "at least 1"
        else:
            ok, expected = value >= 0, "0 or more"
        if not ok:
            raise tg.UserError(f"option --matrix_{name}={tg.format_value(value)}: must be {expected}.")


def info(args) -> dict:
    """The optimizer with every resolved setting and the library (and version) it comes from."""
    spec = REGISTRY[args.matrix_optimizer]
    settings = dict(spec["settings"])
    for name in OVERRIDES:
        if getattr(args, f"matrix_{name}") is not None:
            settings[name] = getattr(args, f"matrix_{name}")
    if args.matrix_optimizer == "adam" and "adam_variants" in tg.extensions_needed(args):
        settings["variant"] = tg.extension("adam_variants", tg.EXTENSIONS["adam_variants"]).variant(args)
    library = None
    if spec["library"]:
        try:
            library = f"{spec['library']} {importlib.metadata.version(spec['library'])}"
        except importlib.metadata.PackageNotFoundError:
            library = f"{spec['library']} (not installed)"
    return dict(name=args.matrix_optimizer, settings=settings, library=library)


def build(matrices: list[Tensor], args, rank: int, world_size: int, on_cuda: bool) -> MasterWeightMatrices:
    spec, settings = REGISTRY[args.matrix_optimizer], info(args)["settings"]
    spec["make"]([torch.zeros(2, 2, device=matrices[0].device)], settings["lr"], settings, on_cuda)  # fails now
    scheduled = dict(lr=settings["lr"], **({"eps": settings["eps"]} if args.matrix_optimizer == "adam" else {}))
    make = lambda tensors, lr: spec["make"](tensors, lr, settings, on_cuda)  # noqa: E731
    return MasterWeightMatrices(matrices, make, rank=rank, world_size=world_size, **scheduled)
