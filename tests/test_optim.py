"""Muon, Snoo and the schedules against independent computations written from the record spec."""
import copy
import math

import pytest
import torch

import train_gpt as tg


def ns_reference(G):
    """Newton-Schulz as the spec words it, written here independently of train_gpt. bf16 rounding
    makes the result depend on the order of operations, so it follows the record's: c * A @ A is
    (c * A) @ A, and the Frobenius norm is taken of the bf16 matrix."""
    X = G.bfloat16()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for a, b, c in [(4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
                    (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)]:
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.mT if tall else X


def test_master_weight_split_is_exact():
    x = torch.cat([torch.randn(10_000) * 10.0 ** torch.randint(-20, 20, (10_000,)),
                   torch.tensor([0.0, -0.0, 1.0, -1.0, 3.4e38, -3.4e38, 1e-40, -1e-40])])
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


def spec_window_blocks(step, n=5590):
    x = step / n
    v = 3456 * (4 * x**3 - 6 * x**2 + 3 * x)
    tokens = next(i for i in range(128, int(v) + 256, 128) if i >= v)
    return tokens // 128


def test_schedules_match_the_spec():
    args = tg.Hyperparameters()
    for step in range(0, 5591):
        assert tg.window_blocks(step, args) == spec_window_blocks(step), step
        x = step / 5590
        lr = 1.0 if x < 0.3 else (1 - x) / 0.7 * 0.99 + 0.01
        assert tg.lr_multiplier(step, args) == pytest.approx(lr, abs=1e-12), step
        mu = 0.85 + min(step / 300, 1) * 0.10
        assert tg.muon_momentum(step, args) == pytest.approx(mu, abs=1e-12), step
    assert tg.window_blocks(0, args) == 1 and tg.window_blocks(5590, args) == 27
    assert tg.window_blocks(2795, args) == 14  # f(0.5) = 0.5: 1728 tokens -> 1792
    assert tg.lr_multiplier(1676, args) == 1.0 and tg.lr_multiplier(5590, args) == pytest.approx(0.01)
    assert tg.muon_momentum(0, args) == 0.85 and tg.muon_momentum(150, args) == pytest.approx(0.90)
    assert tg.muon_momentum(300, args) == tg.muon_momentum(4000, args) == 0.95


def test_optimizer_groups_are_the_record():
    args = tg.Hyperparameters()
    with torch.device("meta"):
        model = tg.build_model(args, "flex")
        adam, muon, snoo = tg.build_optimizers(model, args)
    head, embeds, scalars = adam.param_groups
    assert head["params"] == [model.lm_head_w] and head["lr"] == 1 / 320
    assert len(embeds["params"]) == 7 and embeds["lr"] == 0.3
    assert scalars["params"] == [model.scalars] and scalars["lr"] == 0.015
    d = adam.defaults
    assert d["betas"] == (0.8, 0.95) and d["eps"] == 1e-10 and d["weight_decay"] == 0
    muon_params = [p for g in muon.param_groups for p in g["params"]]
    assert len(muon_params) == 47 and all(p.ndim >= 2 for p in muon_params)
    # groups by shape, largest first
    assert [tuple(g["params"][0].shape) for g in muon.param_groups] == [(4096, 1024), (1024, 4096), (4, 1024, 1024)]
    for g in muon.param_groups:
        assert (g["lr"], g["weight_decay"], g["momentum"], g["update_smoothing"]) == (0.03, 0.01, 0.95, 0.2)
    assert snoo.k == 28 and len(snoo.params) == len(list(model.parameters()))
    sgd = snoo.sgd.param_groups[0]
    assert (sgd["lr"], sgd["momentum"], sgd["nesterov"]) == (0.68, 0.37, True)
    args.snoo_k = 0
    with torch.device("meta"):
        assert tg.build_optimizers(model, args)[2] is None
    tg.set_schedules(4000, tg.Hyperparameters(), [adam, muon])
    mult = tg.lr_multiplier(4000, tg.Hyperparameters())
    assert head["lr"] == pytest.approx(mult / 320) and muon.param_groups[0]["lr"] == pytest.approx(0.03 * mult)
    assert muon.param_groups[0]["momentum"] == 0.95


def test_warmup_state_is_restored_exactly():
    torch.manual_seed(0)
    args = tg.parse_args(["--preset=tiny", "--seed=0"])
    model = tg.build_model(args, "dense")
    adam, muon, snoo = tg.build_optimizers(model, args)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    saved = tg.snapshot(model, [adam, muon], snoo)
    rt = tg.Runtime(0, 1, torch.device("cpu"))
    batch = [(torch.randint(0, 1000, (512,), dtype=torch.int32), torch.randint(0, 1000, (512,)))] * 2
    for _ in range(2):
        tg.train_step(model, batch, torch.tensor(1, dtype=torch.int32), rt, [adam, muon], snoo)
    assert not torch.equal(model.lm_head_w, initial["lm_head_w"]) and len(muon.state) > 0
    tg.restore(saved, model, [adam, muon], snoo)
    for k, v in model.state_dict().items():
        assert torch.equal(v, initial[k]), k
    assert len(adam.state) == len(muon.state) == len(snoo.sgd.state) == 0
    assert snoo.counter == 0
    assert all(torch.equal(c, p) for c, p in zip(snoo.copy, model.parameters()))


def test_compiled_update_is_one_graph_per_shape_and_equals_eager():
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
        opt = tg.Muon(params, lr=0.03, weight_decay=0.01, momentum=0.85, update_smoothing=0.2, compiled=compiled)
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
