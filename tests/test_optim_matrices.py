"""--matrix_optimizer: Muon (the record), Adam, Shampoo and SOAP on the hidden matrices. Shampoo against a
direct computation of its algorithm; for every choice: fp32 master weights, state round trips, the
(4, d, d) attention tensor as four matrices, and 2 processes computing what 1 does."""

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import train_gpt as tg
from speedrun import matrix_optimizers as mo

CHOICES = ["muon", *mo.REGISTRY]
# shapes like the record's: MLP fc and proj, and a (4, d, d) attention stack (two of one shape, for the ranks)
SHAPES = [(48, 16), (16, 48), (16, 48), (4, 16, 16)]


def build(name: str, params, rank: int = 0, world_size: int = 1, **overrides):
    """The hidden-matrix optimizer build_optimizers makes for --matrix_optimizer=name (Muon eager)."""
    argv = ["--preset=tiny", f"--matrix_optimizer={name}", "--compile=false"]
    argv += [f"--matrix_{k}={tg.format_value(v)}" for k, v in overrides.items()]
    args = tg.parse_args(argv)
    if name == "muon":
        return tg.Muon(
            params,
            lr=args.muon_lr,
            weight_decay=args.muon_weight_decay,
            momentum=args.muon_momentum,
            update_smoothing=args.update_smoothing,
            rank=rank,
            world_size=world_size,
        )
    spec, settings = mo.REGISTRY[name], tg.matrix_optimizer_info(args)["settings"]
    return mo.MasterWeightMatrices(
        params,
        lambda tensors, lr: spec["make"](tensors, lr, settings, False),
        rank=rank,
        world_size=world_size,
        lr=settings["lr"],
    )


def make_params(dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(s, generator=g) * 0.1).to(dtype)) for s in SHAPES]


def grads_for(step: int):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(s, generator=g).bfloat16() for s in SHAPES]


def run_steps(opt, params, steps):
    for step in steps:
        for p, g in zip(params, grads_for(step)):
            p.grad = g.to(p.dtype)
        opt.step()
    return [p.detach().clone() for p in params]


# -----------------------------------------------------------------------------------------------------
# Shampoo against its algorithm, computed directly


def shampoo_reference(w0, grads, lr, b1, b2, eps, wd, freq, block, g2, geps):
    """The algorithm of the Shampoo docstring, step by step in float64, one block at a time."""
    w = w0.double().clone()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    rows = list(range(0, w.size(0), block))
    cols = list(range(0, w.size(1), block))
    L = {
        (i, j): torch.zeros(min(block, w.size(0) - i), min(block, w.size(0) - i), dtype=torch.float64)
        for i in rows
        for j in cols
    }
    R = {
        (i, j): torch.zeros(min(block, w.size(1) - j), min(block, w.size(1) - j), dtype=torch.float64)
        for i in rows
        for j in cols
    }
    roots = {}

    def inv4(A):
        lam, Q = torch.linalg.eigh(A)
        return Q @ torch.diag((lam.clamp_min(0) + eps) ** -0.25) @ Q.T

    for t, g in enumerate(grads, start=1):
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = g2 * v + (1 - g2) * g * g
        M = m / (1 - b1**t)
        A = M / (torch.sqrt(v / (1 - g2**t)) + geps)
        step = torch.zeros_like(w)
        for i, j in L:
            sl = (slice(i, i + block), slice(j, j + block))
            gb = g[sl]
            L[i, j] = b2 * L[i, j] + (1 - b2) * gb @ gb.T
            R[i, j] = b2 * R[i, j] + (1 - b2) * gb.T @ gb
            if t % freq == 0:
                roots[i, j] = (inv4(L[i, j]), inv4(R[i, j]))
            if (i, j) in roots:
                S = roots[i, j][0] @ M[sl] @ roots[i, j][1]
                step[sl] = S * A[sl].norm() / S.norm()
            else:
                step[sl] = A[sl]
        w = w * (1 - lr * wd) - lr * step
    return w


def test_shampoo_is_its_algorithm():
    torch.manual_seed(0)
    w0 = torch.randn(6, 10)
    grads = [torch.randn(6, 10) for _ in range(7)]
    settings = dict(lr=0.01, b1=0.9, b2=0.95, eps=1e-6, wd=0.1, freq=2, block=4, g2=0.95, geps=1e-8)
    p = torch.nn.Parameter(w0.clone())
    opt = mo.Shampoo(
        [p],
        lr=0.01,
        betas=(0.9, 0.95),
        epsilon=1e-6,
        weight_decay=0.1,
        precondition_frequency=2,
        max_preconditioner_dim=4,
        graft_beta2=0.95,
        graft_eps=1e-8,
    )
    assert len(opt.state[p] or []) == 0
    for g in grads:
        p.grad = g.clone()
        opt.step()
    assert len(opt.state[p]["blocks"]) == 2 * 3  # rows 4 + 2, columns 4 + 4 + 2
    want = shampoo_reference(w0, grads, **settings)
    torch.testing.assert_close(p.detach().double(), want, rtol=0, atol=1e-5)
    # preconditioning changed the steps: plain grafting (Adam) alone is far from it
    adam_like = shampoo_reference(w0, grads, **{**settings, "freq": 10**6})
    assert (adam_like - want).abs().max() > 1e-3


def test_published_settings_are_optimizers_md():
    """optimizers.md, section 1 (an optimizer comparison, not the record: weight decay 0 everywhere)."""
    s = {name: spec["settings"] for name, spec in mo.REGISTRY.items()}
    assert s["adam"] == dict(lr=0.0018, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    assert s["shampoo"] == dict(
        lr=0.0018,
        betas=(0.95, 0.95),
        eps=1e-12,
        weight_decay=0.0,
        precondition_frequency=10,
        max_preconditioner_dim=8192,
        graft_beta2=0.95,
        graft_eps=1e-8,
    )
    assert s["soap"] == dict(lr=0.0018, betas=(0.95, 0.95), eps=1e-8, weight_decay=0.0, precondition_frequency=10)
    assert mo.REGISTRY["soap"]["library"] == "pytorch-optimizer"


def test_overrides_resolve_and_wrong_ones_are_named():
    args = tg.parse_args(
        [
            "--preset=tiny",
            "--matrix_optimizer=shampoo",
            "--matrix_lr=0.003",
            "--matrix_betas=0.9,0.99",
            "--matrix_precondition_frequency=3",
        ]
    )
    info = tg.matrix_optimizer_info(args)
    assert info["settings"]["lr"] == 0.003 and info["settings"]["betas"] == (0.9, 0.99)
    assert info["settings"]["precondition_frequency"] == 3 and info["settings"]["eps"] == 1e-12
    line = tg.matrix_optimizer_line(info)
    assert line.startswith("matrix optimizer: shampoo (lr=0.003, betas=0.9,0.99, eps=1e-12,")
    for argv, message in [
        (["--matrix_lr=0.1"], f"applies to --matrix_optimizer={', '.join(mo.REGISTRY)};"),
        (["--matrix_optimizer=adam", "--matrix_precondition_frequency=3"], "adam has no such setting"),
        (["--matrix_optimizer=lion"], "expected one of muon, adam, shampoo, soap"),
        (["--matrix_optimizer=adam", "--matrix_lr=-1"], "must be 0 or more"),
        (["--matrix_optimizer=adam", "--matrix_betas=0.9,1.0"], r"each in \[0, 1\)"),
        (["--matrix_optimizer=shampoo", "--matrix_precondition_frequency=0"], "must be at least 1"),
        (["--matrix_optimizer=soap", "--matrix_betas=0.9"], "expected 2 comma-separated values"),
    ]:
        with pytest.raises(tg.UserError, match=message):
            tg.parse_args(argv)


def test_soap_without_its_library_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pytorch_optimizer(name, *args, **kwargs):
        if name.startswith("pytorch_optimizer"):
            raise ImportError("No module named 'pytorch_optimizer'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pytorch_optimizer)
    args = tg.parse_args(["--preset=tiny", "--matrix_optimizer=soap"])
    with torch.device("meta"):
        model = tg.build_model(args, "dense")
    with pytest.raises(tg.UserError, match=r"pip install 'pytorch-optimizer>=4.1,<5'"):
        tg.build_optimizers(model, args)


# -----------------------------------------------------------------------------------------------------
# every choice


@pytest.mark.parametrize("name", CHOICES)
def test_small_updates_accumulate_as_in_fp32(name):
    """bf16 matrices with fp32 master weights: 200 updates of about lr each, each far below half a bf16
    ulp (2^-8 at 0.1), add up as they do on fp32 parameters instead of rounding away."""
    lr = 2e-5
    bf16, fp32 = make_params(torch.bfloat16), make_params(torch.float32)
    fp32 = [torch.nn.Parameter(p.detach().float()) for p in bf16]  # the same start
    overrides = {} if name == "muon" else dict(lr=lr)
    opt16, opt32 = build(name, bf16, **overrides), build(name, fp32, **overrides)
    if name == "muon":
        for opt in (opt16, opt32):
            opt.param_groups[0]["lr"] = lr
            for g in opt.param_groups:
                g.update(lr=lr, weight_decay=0.0, update_smoothing=0.0)
    g = torch.Generator().manual_seed(3)
    fixed = [torch.randn(s, generator=g).bfloat16() for s in SHAPES]  # one direction: steps add up
    for _ in range(200):
        for ps in (bf16, fp32):
            for p, grad in zip(ps, fixed):
                p.grad = grad.to(p.dtype)
        opt16.step()
        opt32.step()
    for p16, p32, p0 in zip(bf16, fp32, make_params(torch.bfloat16)):
        p0 = p0.detach().float()
        moved = (p32.detach() - p0).abs().max().item()
        assert moved > 50 * lr  # the fp32 run moved by many updates
        master = tg.master_weight(p16.detach(), opt16.state[p16]["mantissa"])
        torch.testing.assert_close(master, p32.detach(), rtol=0, atol=1e-3 * moved)
        # and the bf16 parameter is the truncation of that master (one bf16 ulp from fp32 at most)
        assert (p16.detach().float() - p32.detach()).abs().max() <= 2**-7 * p32.detach().abs().max() + 1e-6


@pytest.mark.parametrize("name", CHOICES)
def test_state_round_trip_continues_identically(name):
    params = make_params()
    opt = build(name, params)
    run_steps(opt, params, range(3))
    saved = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())
    first = run_steps(opt, params, range(3, 6))
    fresh = build(name, params)  # a new optimizer, as after a restart
    with torch.no_grad():
        for p, s in zip(params, saved[0]):
            p.copy_(s)
    fresh.load_state_dict(saved[1])
    second = run_steps(fresh, params, range(3, 6))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    # the state kept its fp32 dtypes through the round trip
    for state in fresh.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim:
                assert v.dtype in (torch.float32, torch.bfloat16)


@pytest.mark.parametrize("name", CHOICES)
def test_warmup_snapshot_restores_every_choice(name):
    args = tg.parse_args(
        [
            "--preset=tiny",
            f"--matrix_optimizer={name}",
            "--compile=false",
            "--model_dim=64",
            "--num_heads=1",
            "--head_dim=64",
            "--train_seq_len=256",
        ]
    )
    torch.manual_seed(0)
    model = tg.build_model(args, "dense")
    adam, hidden, snoo = tg.build_optimizers(model, args)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    saved = tg.snapshot(model, [adam, hidden], snoo)
    rt = tg.Runtime(0, 1, torch.device("cpu"))
    batch = [(torch.randint(0, 1000, (256,), dtype=torch.int32), torch.randint(0, 1000, (256,)))] * 2
    for _ in range(2):
        tg.train_step(model, batch, torch.tensor(1, dtype=torch.int32), rt, [adam, hidden], snoo)
    moved = [k for k, v in model.state_dict().items() if k.startswith("blocks.") and not torch.equal(v, initial[k])]
    assert len(hidden.state) > 0 and moved  # (the zero-initialized projections move from the second step)
    tg.restore(saved, model, [adam, hidden], snoo)
    for k, v in model.state_dict().items():
        assert torch.equal(v, initial[k]), k
    assert len(hidden.state) == 0 and not getattr(hidden, "inner", {})


@pytest.mark.parametrize("name", ["shampoo", "soap"])
def test_attention_stack_is_preconditioned_as_four_matrices(name):
    """The (4, d, d) tensor gives the same steps as its four matrices optimized one by one."""
    g = torch.Generator().manual_seed(5)
    stack = torch.nn.Parameter(torch.randn(4, 8, 8, generator=g))
    alone = [torch.nn.Parameter(stack.detach()[i].clone()) for i in range(4)]
    opt_stack, opt_alone = build(name, [stack]), build(name, alone)
    for step in range(12):
        grad = torch.randn(4, 8, 8, generator=g)
        stack.grad = grad.clone()
        for i, p in enumerate(alone):
            p.grad = grad[i].clone()
        opt_stack.step()
        opt_alone.step()
    assert len(opt_stack.inner[stack].param_groups[0]["params"]) == 4
    for i, p in enumerate(alone):
        torch.testing.assert_close(stack.detach()[i], p.detach(), rtol=0, atol=1e-6)


def _rank_main(rank, world_size, init_file, name, out):
    os.environ.pop("OMP_NUM_THREADS", None)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        params = make_params()
        opt = build(name, params, rank=rank, world_size=world_size)
        weights = run_steps(opt, params, range(4))
        if rank == 0:
            torch.save(weights, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", CHOICES)
def test_two_processes_update_what_one_does(tmp_path, name):
    """Each matrix is updated by one rank and all-gathered: the same arithmetic as one process, exactly."""
    params = make_params()
    one = run_steps(build(name, params), params, range(4))
    mp.start_processes(
        _rank_main, args=(2, tmp_path / "init", name, tmp_path / "two.pt"), nprocs=2, start_method="fork"
    )
    two = torch.load(tmp_path / "two.pt")
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    assert not torch.equal(one[0], make_params()[0])
