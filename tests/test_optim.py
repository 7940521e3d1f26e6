"""Muon, Snoo and the schedules against independent computations written from the spec's rules.

The record's settings (lr 0.03, momentum 0.85 -> 0.95 over 300 steps, window 27 at the end, ...) are
pinned in test_record.py; here the expected values are the spec's formulas evaluated with the numbers of
the script (Hyperparameters, tg.NS_COEFFS). The check_* helpers take the script module as `script`, so
test_record.py can run them on a changed copy.
"""

import copy
import itertools
import math

import pytest
import torch

import train_gpt as tg
from speedrun import adam_variants as av
from speedrun import matrix_optimizers as mo
from speedrun import weight_drift as wd


def ns_reference(G):
    """Newton-Schulz as the spec words it, written here independently of train_gpt (only the
    coefficients and the epsilon are the script's). bf16 rounding makes the result depend on the
    order of operations, so it follows the record's: c * A @ A is (c * A) @ A, and the Frobenius
    norm is taken of the bf16 matrix."""
    X = G.bfloat16()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + tg.NS_EPS)
    for a, b, c in tg.NS_COEFFS:
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.mT if tall else X


def test_master_weight_split_is_exact():
    x = torch.cat(
        [
            torch.randn(10_000) * 10.0 ** torch.randint(-20, 20, (10_000,)),
            torch.tensor([0.0, -0.0, 1.0, -1.0, 3.4e38, -3.4e38, 1e-40, -1e-40]),
        ]
    )
    p = torch.empty_like(x, dtype=torch.bfloat16)
    mantissa = torch.empty_like(x, dtype=torch.uint16)
    tg.store_master_weight(x.clone(), p, mantissa)
    assert torch.equal(tg.master_weight(p, mantissa).view(torch.int32), x.view(torch.int32))
    # the parameter is the truncation (toward zero) of the master value
    truncated = (x.view(torch.int32) & -65536).view(torch.float32)
    assert torch.equal(p.float().view(torch.int32), truncated.view(torch.int32))


def run_muon(shape, grads, momenta, lrs, smoothing, wd=0.01, wd_mul=1.0, dtype=torch.bfloat16):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(shape).to(dtype))
    p.wd_mul = wd_mul
    opt = tg.Muon([p], lr=lrs[0], weight_decay=wd, momentum=momenta[0], update_smoothing=smoothing)
    p0 = p.detach().clone()
    for g, mu, lr in zip(grads, momenta, lrs):
        opt.param_groups[0].update(momentum=mu, lr=lr)
        p.grad = g.to(dtype)
        opt.step()
    return p0, p, opt


def reference_muon(p0, grads, momenta, lrs, smoothing, wd=0.01, wd_mul=1.0):
    master = p0.float()
    m = torch.zeros_like(master)
    s = torch.zeros_like(master, dtype=torch.bfloat16)
    scale = math.sqrt(max(1, p0.size(-2) / p0.size(-1)))
    for g, mu, lr in zip(grads, momenta, lrs):
        g = g.to(p0.dtype).float()
        # Muon takes its momentum as a float64 0-dim tensor, as the record does, and bf16 Newton-Schulz
        # turns a one-ulp difference in its input into visible ones: the same scalar here.
        mu = torch.tensor(mu, dtype=torch.float64)
        m = mu * m + (1 - mu) * g
        u = ns_reference(mu * m + (1 - mu) * g)
        s = (smoothing * s.float() + (1 - smoothing) * u.float()).bfloat16()
        master = master * (1 - lr * wd * wd_mul) - lr * scale * s.float()
    return master


@pytest.mark.parametrize("shape, wd_mul", [((128, 32), 2.0), ((32, 128), 2.0), ((4, 32, 32), 1.0)])
@pytest.mark.parametrize("smoothing", [0.2, 0.0])
def test_muon_matches_the_spec(shape, wd_mul, smoothing):
    torch.manual_seed(1)
    grads = [torch.randn(shape) for _ in range(4)]
    momenta, lrs = [0.85, 0.9, 0.95, 0.95], [0.03, 0.03, 0.02, 0.01]
    p0, p, opt = run_muon(shape, grads, momenta, lrs, smoothing, wd_mul=wd_mul)
    state = opt.state[p]
    assert state["momentum_buffer"].dtype == torch.float32 and state["mantissa"].dtype == torch.uint16
    assert ("smoothed_update" in state) == (smoothing > 0)
    if smoothing:
        assert state["smoothed_update"].dtype == torch.bfloat16
    got = tg.master_weight(p.detach(), state["mantissa"])
    want = reference_muon(p0, grads, momenta, lrs, smoothing, wd_mul=wd_mul)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
    # the update is not trivially small: lr * scale * |s| moved the weights
    assert (got - p0.float()).abs().max() > 1e-3


def test_muon_lr_and_weight_decay_scaling():
    """A tall matrix moves sqrt(rows/cols) times further; wd_mul multiplies the decay."""
    g = [torch.randn(64, 16)]
    p0, p, opt = run_muon((64, 16), g, [0.95], [0.02], 0.0, wd=0.0)
    step_tall = tg.master_weight(p.detach(), opt.state[p]["mantissa"]) - p0.float()
    g0 = g[0].bfloat16().float()
    mu = torch.tensor(0.95, dtype=torch.float64)
    u = ns_reference(mu * ((1 - mu) * g0) + (1 - mu) * g0)  # first step: m = (1 - mu) g, then Nesterov
    torch.testing.assert_close(step_tall, -0.02 * 2 * u.float(), rtol=0, atol=1e-6)  # sqrt(64 / 16) = 2
    zero = [torch.zeros(16, 16)]
    p0, p, opt = run_muon((16, 16), zero, [0.95], [0.1], 0.0, wd=0.5, wd_mul=2.0, dtype=torch.float32)
    torch.testing.assert_close(p.detach(), p0 * (1 - 0.1 * 0.5 * 2.0))


def test_muon_state_dict_round_trip_keeps_dtypes():
    grads = [torch.randn(32, 64) for _ in range(6)]
    _, p, opt = run_muon((32, 64), grads[:3], [0.9] * 3, [0.03] * 3, 0.2)
    saved_p, saved = p.detach().clone(), copy.deepcopy(opt.state_dict())
    for g in grads[3:]:
        p.grad = g.bfloat16()
        opt.step()
    first = p.detach().clone()
    with torch.no_grad():
        p.copy_(saved_p)
    opt.load_state_dict(saved)
    state = opt.state[p]
    assert state["momentum_buffer"].dtype == torch.float32 and state["mantissa"].dtype == torch.uint16
    for g in grads[3:]:
        p.grad = g.bfloat16()
        opt.step()
    assert torch.equal(p.detach(), first)


def constant_gradient_run(snoo_k, steps, lr=0.1, snoo_lr=0.68, mom=0.37):
    """Inner SGD (lr) on a linear loss with a fixed gradient c, wrapped by Snoo."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    c = torch.randn(5)
    inner = torch.optim.SGD([p], lr=lr)
    snoo = tg.Snoo([p], lr=snoo_lr, momentum=mom, k=snoo_k)
    traj = [p.detach().clone()]
    for _ in range(steps):
        p.grad = c.clone()
        inner.step()
        snoo.step()
        traj.append(p.detach().clone())
    return traj, c, snoo


def test_snoo_steps_every_k_with_nesterov_sgd():
    k, lr, slr, mom = 3, 0.1, 0.68, 0.37
    traj, c, snoo = constant_gradient_run(k, 10, lr, slr, mom)
    # reference: the spec's words
    p, copy_, buf = traj[0].clone(), traj[0].clone(), None
    for step in range(10):
        p = p - lr * c
        if step % k == 0:
            d = copy_ - p
            buf = d.clone() if buf is None else mom * buf + d
            p = copy_ - slr * (d + mom * buf)
            copy_ = p.clone()
        torch.testing.assert_close(traj[step + 1], p, rtol=1e-6, atol=1e-6)
    assert snoo.counter == 10
    # between outer steps Snoo leaves the inner optimizer alone
    torch.testing.assert_close(traj[3] - traj[2], -lr * c)
    assert not torch.allclose(traj[1] - traj[0], -lr * c)  # counter 0: an outer step right after step 1


def test_snoo_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(8, 8))
    inner = torch.optim.AdamW([p], lr=0.01)
    snoo = tg.Snoo([p], lr=0.68, momentum=0.37, k=4)
    grads = [torch.randn(8, 8) for _ in range(12)]

    def steps(gs):
        for g in gs:
            p.grad = g.clone()
            inner.step()
            snoo.step()
        return p.detach().clone()

    steps(grads[:6])
    saved = (p.detach().clone(), copy.deepcopy(inner.state_dict()), copy.deepcopy(snoo.state_dict()))
    first = steps(grads[6:])
    with torch.no_grad():
        p.copy_(saved[0])
    inner.load_state_dict(saved[1])
    snoo.load_state_dict(saved[2])
    assert snoo.counter == 6
    assert torch.equal(steps(grads[6:]), first)


def test_snoo_with_k1_is_update_smoothing():
    """The record's equivalence: Snoo (k=1, no Nesterov, momentum beta, lr 1 - beta) around unsmoothed
    Muon takes the same steps as Muon with update smoothing beta (fp32 weights, no weight decay)."""
    beta = 0.2
    torch.manual_seed(0)
    init = torch.randn(24, 48)
    # A fixed gradient sequence: with gradients taken at the parameters, bf16 Newton-Schulz would
    # amplify the rounding differences of the two runs and hide what is compared here.
    grads = [torch.randn(24, 48) for _ in range(12)]

    def train(smoothing, wrap):
        p = torch.nn.Parameter(init.clone())
        muon = tg.Muon([p], lr=0.05, weight_decay=0.0, momentum=0.9, update_smoothing=smoothing)
        snoo = tg.Snoo([p], lr=1 - beta, momentum=beta, k=1, nesterov=False) if wrap else None
        for g in grads:
            p.grad = g.clone()
            muon.step()
            if snoo:
                snoo.step()
        return p.detach()

    smoothed, wrapped, plain = train(beta, False), train(0.0, True), train(0.0, False)
    # Measured: 2.0e-4 apart after 12 steps (the bf16 rounding of the smoothed update), while
    # smoothing moves the weights 6.2e-3 away from plain Muon.
    assert (smoothed - wrapped).abs().max() < 4e-4
    assert (smoothed - plain).abs().max() > 3e-3


def spec_window_blocks(step, args, block):
    """The smallest multiple of the attention block >= max_window_tokens * f(x) and >= one block."""
    x = step / args.num_iterations
    v = args.max_window_tokens * (4 * x**3 - 6 * x**2 + 3 * x)
    tokens = next(i for i in itertools.count(block, block) if i >= v)
    return tokens // block


def spec_lr_multiplier(step, args):
    """1, then linear from 1 at x = 1 - cooldown_frac down to final_lr_frac at the end."""
    x = step / args.num_iterations
    if x < 1 - args.cooldown_frac:
        return 1.0
    return (1 - x) / args.cooldown_frac * (1 - args.final_lr_frac) + args.final_lr_frac


def spec_muon_momentum(step, args):
    warmup = args.muon_momentum_warmup_steps
    frac = min(step / warmup, 1) if warmup else 1
    return args.muon_momentum_start + frac * (args.muon_momentum - args.muon_momentum_start)


def check_schedules(script, args) -> None:
    """Window, lr multiplier and Muon momentum at every step of the run against the spec's formulas."""
    for step in range(args.num_iterations + 1):
        assert script.window_blocks(step, args) == spec_window_blocks(step, args, script.ATTN_BLOCK_SIZE), step
        assert script.lr_multiplier(step, args) == spec_lr_multiplier(step, args), (
            step
        )  # exact: the record's expression
        assert script.momentum_warmup(step, args) == pytest.approx(spec_muon_momentum(step, args), abs=1e-12), step


@pytest.mark.parametrize(
    "args",
    [
        tg.Hyperparameters(),
        tg.parse_args(["--preset=tiny"]),
        tg.Hyperparameters(
            num_iterations=1000,
            cooldown_frac=0.5,
            final_lr_frac=0.1,
            max_window_tokens=1000,
            muon_momentum_start=0.5,
            muon_momentum=0.9,
            muon_momentum_warmup_steps=0,
        ),
    ],
    ids=["defaults", "tiny", "other"],
)
def test_schedules_follow_the_spec(args):
    check_schedules(tg, args)


def check_optimizer_groups(script, args) -> None:
    """The optimizers of args' model (on the meta device): which parameters go where, with which settings."""
    with torch.device("meta"):
        model = script.build_model(args, "flex")
        adam, hidden, snoo = script.build_optimizers(model, args)
    head, embeds, scalars = adam.param_groups
    assert head["params"] == [model.lm_head_w] and head["lr"] == args.adam_head_lr
    assert embeds["params"] == [model.embed1.weight, model.embed2.weight, *(e.weight for e in model.value_embeds)]
    assert len(embeds["params"]) == 2 + script.NUM_VALUE_EMBEDS and embeds["lr"] == args.adam_embed_lr
    assert scalars["params"] == [model.scalars] and scalars["lr"] == args.adam_scalar_lr
    d = adam.defaults
    assert d["betas"] == (args.adam_beta1, args.adam_beta2) and d["eps"] == args.adam_eps
    assert d["weight_decay"] == args.adam_weight_decay
    # the hidden matrices: every block matrix (>= 2 dims), one group per shape, largest shape first
    matrices = [p for b in model.blocks for p in b.parameters() if p.ndim >= 2]
    L, D, H = args.num_layers, args.model_dim, args.num_heads * args.head_dim
    with_attention = sum(i != script.NO_ATTENTION_BLOCK for i in range(L))
    assert len(matrices) == 2 * L + with_attention
    hidden_params = [p for g in hidden.param_groups for p in g["params"]]
    assert sorted(map(id, hidden_params)) == sorted(map(id, matrices))
    shapes = sorted({(args.mlp_ratio * D, D), (D, args.mlp_ratio * D), (4, H, D)}, reverse=True)
    assert [tuple(g["params"][0].shape) for g in hidden.param_groups] == shapes
    assert all(len({p.shape for p in g["params"]}) == 1 for g in hidden.param_groups)
    muon = args.matrix_optimizer == "muon"
    if muon:
        assert isinstance(hidden, script.Muon)
        for g in hidden.param_groups:
            assert (g["lr"], g["weight_decay"], g["momentum"], g["update_smoothing"]) == (
                args.muon_lr,
                args.muon_weight_decay,
                args.muon_momentum,
                args.update_smoothing,
            )
        matrix_lr = args.muon_lr
    else:  # the published lr of --matrix_optimizer, or --matrix_lr
        published = mo.REGISTRY[args.matrix_optimizer]["settings"]["lr"]
        matrix_lr = published if args.matrix_lr is None else args.matrix_lr
        assert all(g["lr"] == matrix_lr for g in hidden.param_groups)
    if args.snoo_k:
        assert snoo.k == args.snoo_k and snoo.params == list(model.parameters())
        sgd = snoo.sgd.param_groups[0]
        assert (sgd["lr"], sgd["momentum"], sgd["nesterov"]) == (args.snoo_lr, args.snoo_momentum, True)
    else:
        assert snoo is None
    # the schedules scale every group's initial lr and set Muon's momentum
    for step in (0, args.num_iterations // 2, args.num_iterations):
        script.set_schedules(step, args, [adam, hidden])
        mult = spec_lr_multiplier(step, args)
        assert head["lr"] == pytest.approx(args.adam_head_lr * mult)
        assert embeds["lr"] == pytest.approx(args.adam_embed_lr * mult)
        assert scalars["lr"] == pytest.approx(args.adam_scalar_lr * mult)
        for g in hidden.param_groups:
            assert g["lr"] == pytest.approx(matrix_lr * mult)
            if muon:
                assert g["momentum"] == pytest.approx(spec_muon_momentum(step, args))


@pytest.mark.parametrize(
    "args",
    [
        tg.Hyperparameters(),
        tg.parse_args(["--preset=tiny"]),
        tg.Hyperparameters(
            adam_head_lr=0.01,
            adam_embed_lr=0.2,
            adam_scalar_lr=0.02,
            adam_beta1=0.9,
            adam_beta2=0.99,
            adam_eps=1e-8,
            adam_weight_decay=0.1,
            muon_lr=0.05,
            muon_weight_decay=0.0,
            muon_momentum=0.9,
            update_smoothing=0.0,
            snoo_k=0,
        ),
        tg.Hyperparameters(matrix_optimizer="adam", matrix_lr=0.01),
        tg.Hyperparameters(matrix_optimizer="shampoo"),
    ],
    ids=["defaults", "tiny", "other", "adam matrices", "shampoo matrices"],
)
def test_optimizer_groups_follow_the_arguments(args):
    check_optimizer_groups(tg, args)


def test_warmup_state_is_restored_exactly():
    torch.manual_seed(0)
    args = tg.parse_args(["--preset=tiny", "--seed=0"])
    model = tg.build_model(args, "dense")
    adam, muon, snoo = tg.build_optimizers(model, args)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    saved = tg.snapshot(model, [adam, muon], snoo)
    rt = tg.Runtime(0, 1, torch.device("cpu"))
    batch = [
        (
            torch.randint(0, 1000, (args.train_seq_len,), dtype=torch.int32),
            torch.randint(0, 1000, (args.train_seq_len,)),
        )
    ] * args.seqs_per_step
    for _ in range(2):
        tg.train_step(model, batch, torch.tensor(1, dtype=torch.int32), rt, [adam, muon], snoo)
    assert not torch.equal(model.lm_head_w, initial["lm_head_w"]) and len(muon.state) > 0
    tg.restore(saved, model, [adam, muon], snoo)
    for k, v in model.state_dict().items():
        assert torch.equal(v, initial[k]), k
    assert len(adam.state) == len(muon.state) == len(snoo.sgd.state) == 0
    assert snoo.counter == 0
    assert all(torch.equal(c, p) for c, p in zip(snoo.copy, model.parameters()))


@pytest.mark.parametrize(
    "smoothing", [0.2, 0.0]
)  # 0: the update goes from Newton-Schulz's a X + B X straight to the weights
def test_compiled_update_is_one_graph_per_shape_and_equals_eager(smoothing):
    """The default update (every device): momentum, Newton-Schulz, smoothing and the master-weight write
    compiled as one function, as the record compiles it. lr, momentum and weight decay change every
    step and enter as 0-dim tensors: one graph per matrix shape, never a recompile."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    shapes = [(64, 16), (16, 64), (2, 16, 16)]
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s).bfloat16()) for s in shapes]
        start = [p.detach().float().clone() for p in params]
        opt = tg.Muon(params, lr=0.03, weight_decay=0.01, momentum=0.85, update_smoothing=smoothing, compiled=compiled)
        for step in range(5):
            for group in opt.param_groups:
                group.update(lr=0.03 * (1 - 0.1 * step), momentum=0.85 + 0.03 * step, weight_decay=0.01 * (step + 1))
            for p in params:
                p.grad = torch.randn(p.shape).bfloat16()
            opt.step()
            if step == 0:
                compiled_after_first_step = counters["frames"]["total"]
        runs[compiled] = [tg.master_weight(p.detach(), opt.state[p]["mantissa"]) - s for p, s in zip(params, start)]
    assert counters["stats"]["unique_graphs"] == len(shapes)
    assert compiled_after_first_step == counters["frames"]["total"] == len(shapes)  # nothing compiled later
    for eager, fused in zip(runs[False], runs[True]):
        # The compiler rounds bf16 Newton-Schulz differently (and keeps the smoothed update in fp32 for
        # the weight write, as the record's compiled code does): the moves agree to bf16 rounding.
        assert ((fused - eager).norm() / eager.norm()).item() < 3e-2
        assert not torch.equal(fused, eager)  # really two code paths


# -----------------------------------------------------------------------------------------------------
# AdamVariant, the eps schedule and the weight-drift diagnostics (thesis notes in our sources)


def adam_pair(**variant):
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 7)), torch.nn.Parameter(torch.randn(3))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    groups = lambda ps: [dict(params=[ps[0]], lr=0.01), dict(params=[ps[1]], lr=0.003)]  # noqa: E731
    ours = av.AdamVariant(groups(a), lr=0.01, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1, **variant)
    return a, b, ours, groups


def test_defaults_are_torch_adamw():
    a, b, ours, groups = adam_pair()
    theirs = torch.optim.AdamW(groups(b), betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1, foreach=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        for pa, pb in zip(a, b):
            pa.grad = torch.randn(pa.shape, generator=g)
            pb.grad = pa.grad.clone()
        ours.step()
        theirs.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "bc, zero_init, m_factor",
    [
        (True, True, lambda b: 1.0),  # ZI + BC: g1
        (False, True, lambda b: 1 - b),  # ZI, no BC: (1 - b1) g1
        (True, False, lambda b: 1 / (1 - b)),  # first-gradient init + BC: g1 / (1 - b1)
        (False, False, lambda b: 1.0),  # first-gradient init, no BC: g1
    ],
)
def test_first_step_of_each_bias_correction_and_init(bc, zero_init, m_factor):
    """optimizers.md: the first step's m_hat (and v_hat with b2) for the four combinations."""
    b1, b2, lr, eps = 0.9, 0.95, 0.01, 1e-8
    p = torch.nn.Parameter(torch.randn(64))
    w0 = p.detach().clone()
    g = torch.randn(64)
    opt = av.AdamVariant([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=0.0, bias_correction=bc, zero_init=zero_init)
    p.grad = g.clone()
    opt.step()
    bc1, bc2 = (1 - b1, 1 - b2) if bc else (1.0, 1.0)
    m_hat, v_hat = opt.state[p]["exp_avg"] / bc1, opt.state[p]["exp_avg_sq"] / bc2
    torch.testing.assert_close(m_hat, m_factor(b1) * g, rtol=1e-6, atol=0)
    torch.testing.assert_close(v_hat, m_factor(b2) * g * g, rtol=1e-6, atol=0)
    want = w0 - lr * m_factor(b1) * g / (math.sqrt(m_factor(b2)) * g.abs() + eps)
    torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-7)  # fp32 rounding of one step


@pytest.mark.parametrize("bc, zero_init", [(True, True), (False, False)])
def test_nested_average_is_its_formula(bc, zero_init):
    b1, b2, lr, eps, wd = 0.9, 0.95, 0.01, 1e-6, 0.05
    torch.manual_seed(2)
    p = torch.nn.Parameter(torch.randn(32))
    w = p.detach().double().clone()
    opt = av.AdamVariant(
        [p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, bias_correction=bc, zero_init=zero_init, nested=True
    )
    m = v = None
    for t in range(1, 9):
        g = torch.randn(32)
        p.grad = g.clone()
        opt.step()
        g = g.double()
        v = (g * g if not zero_init else torch.zeros_like(g)) if v is None else v
        v = b2 * v + (1 - b2) * g * g
        n = g / (torch.sqrt(v / ((1 - b2**t) if bc else 1)) + eps)
        m = (n if not zero_init else torch.zeros_like(g)) if m is None else m
        m = b1 * m + (1 - b1) * n
        w = w * (1 - lr * wd) - lr * m / ((1 - b1**t) if bc else 1)
        torch.testing.assert_close(p.detach().double(), w, rtol=0, atol=1e-6)


def schedule_args(**kw):
    return tg.parse_args(
        [
            "--preset=tiny",
            "--num_iterations=1000",
            "--adam_eps=1e-10",
            "--adam_eps_max=1e-3",
            "--adam_eps_start_frac=0.4",
            "--adam_eps_end_frac=0.8",
            "--adam_eps_growth=0.01",
            *(f"--{k}={v}" for k, v in kw.items()),
        ]
    )


def test_eps_schedule_is_its_closed_form():
    args = schedule_args()
    T, w, E, k, e0, emax = 1000, 0.4, 0.8, 0.01, 1e-10, 1e-3
    A = (emax - e0) / (math.exp(k * T * (E - w)) - 1)
    closed = lambda t: A * math.exp(k * (t - w * T)) + e0 - A  # noqa: E731
    assert av.eps_schedule(0, args) == av.eps_schedule(399, args) == e0
    assert av.eps_schedule(400, args) == pytest.approx(e0, rel=1e-9)  # w T: the curve starts at eps0
    for t in (401, 500, 650, 799):
        assert av.eps_schedule(t, args) == pytest.approx(closed(t), rel=1e-12)
    assert closed(800) == pytest.approx(emax, rel=1e-12)  # E T: it meets eps_max
    assert av.eps_schedule(800, args) == av.eps_schedule(1000, args) == emax
    values = [av.eps_schedule(t, args) for t in range(1001)]
    assert all(a <= b for a, b in zip(values, values[1:]))  # grows monotonically
    assert av.eps_schedule(650, args, eps0=1e-8) > av.eps_schedule(650, args)  # another Adam's own eps0
    assert av.eps_schedule(650, tg.parse_args(["--preset=tiny"])) == tg.parse_args(["--preset=tiny"]).adam_eps


def test_defaults_keep_torch_adamw_and_variants_reach_every_adam():
    def optimizers(*argv):
        args = tg.parse_args(["--preset=tiny", "--compile=false", *argv])
        with torch.device("meta"):
            model = tg.build_model(args, "dense")
        return tg.build_optimizers(model, args), args

    (adam, hidden, _), _ = optimizers()
    assert type(adam) is torch.optim.AdamW and isinstance(hidden, tg.Muon)
    (adam, hidden, _), args = optimizers("--adam_init=grad", "--matrix_optimizer=adam", "--adam_eps_max=1e-4")
    assert type(adam) is av.AdamVariant and not adam.defaults["zero_init"]
    assert [g["lr"] for g in adam.param_groups] == [args.adam_head_lr, args.adam_embed_lr, args.adam_scalar_lr]
    p = hidden.param_groups[0]["params"][0]
    inner = hidden._inner_for(p, hidden.param_groups[0])
    assert type(inner) is av.AdamVariant and inner.defaults["zero_init"] is False
    # the eps schedule moves every Adam's eps, each from its own start
    tg.set_schedules(args.num_iterations, args, [adam, hidden])
    assert {g["eps"] for g in adam.param_groups} == {hidden.param_groups[0]["eps"]} == {1e-4}
    tg.set_schedules(0, args, [adam, hidden])
    assert adam.param_groups[0]["eps"] == args.adam_eps and hidden.param_groups[0]["eps"] == 1e-8


def test_weight_drift_is_its_formula():
    torch.manual_seed(3)
    w0 = [torch.randn(4, 5), torch.randn(3)]
    w = [x + 0.1 * torch.randn_like(x) for x in w0]
    zero = [torch.zeros(6)]
    got = wd.weight_drift(dict(a=w, head=[torch.ones(6)]), dict(a=w0, head=zero))
    flat, flat0 = torch.cat([x.flatten() for x in w]).double(), torch.cat([x.flatten() for x in w0]).double()
    assert got["a"]["distance"] == pytest.approx((flat - flat0).norm().item(), rel=1e-12)
    assert got["a"]["relative_distance"] == pytest.approx(((flat - flat0).norm() / flat0.norm()).item(), rel=1e-12)
    assert got["a"]["cosine"] == pytest.approx(
        torch.nn.functional.cosine_similarity(flat, flat0, dim=0).item(), rel=1e-9
    )
    assert got["head"] == dict(distance=pytest.approx(math.sqrt(6)), relative_distance=None, cosine=None)
