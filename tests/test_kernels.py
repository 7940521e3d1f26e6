"""Kernels: Muon's Newton-Schulz, the torch reference and the Triton path.

The Triton kernels run on CPU under TRITON_INTERPRET=1, in fp32 (the interpreter computes bf16 wrong).
The variable must be set before train_gpt defines the kernels and the rest of the suite imports
train_gpt without it, so one subprocess runs this file as a script: it computes every interpreted
case and prints the errors as JSON (interpreted_results), and the tests below judge them. Under the
interpreter the kernel has one config, 16 x 16 tiles with BLOCK_K 32, so these shapes have several
tiles, mirrored tiles, and masked edges in rows and in K.

The properties of the orthogonalization are checked against the band that tg.NS_COEFFS define
(computed here); the record's coefficients and their band are pinned in test_record.py.
"""

import functools
import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO, cpu_env

import train_gpt as tg  # noqa: E402  (conftest puts the repository on sys.path)


def rel_err(x, ref) -> float:
    """Frobenius-norm relative error, computed in fp64."""
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm()).item()


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def symmetric(*shape, seed: int) -> torch.Tensor:
    S = randn(*shape, seed=seed)
    return (S + S.mT) / 2


# X for X Xᵀ. BLOCK 16, BLOCK_K 32 under the interpreter.
GRAM_CASES = {
    "square 64x64, whole tiles": lambda: randn(64, 64, seed=1),
    "wide 40x150": lambda: randn(40, 150, seed=2),
    "tall 150x40, transposed view": lambda: randn(150, 40, seed=3).mT,
    "batched 3x50x70": lambda: randn(3, 50, 70, seed=4),
    "non-contiguous slice 2x36x67": lambda: randn(2, 90, 200, seed=5)[:, 5:77:2, 1::3],
    "non-multiple 37x53": lambda: randn(37, 53, seed=6),
    "smaller than a tile 9x7": lambda: randn(9, 7, seed=7),
}
# symmetric A for b A + c A A, with the first step's (b, c)
POLY_CASES = {
    "square 64x64, whole tiles": lambda: symmetric(64, 64, seed=11),
    "non-multiple 37x37": lambda: symmetric(37, 37, seed=12),
    "batched 3x50x50": lambda: symmetric(3, 50, 50, seed=13),
    "transposed batch 2x45x45": lambda: symmetric(2, 45, 45, seed=14).mT,
    "strided slice 40x40": lambda: symmetric(80, 80, seed=15)[::2, ::2],
}
# G for the whole orthogonalization
NS_CASES = {
    "wide 48x120": lambda: randn(48, 120, seed=21),
    "tall 120x48": lambda: randn(120, 48, seed=22),
    "square 37x37": lambda: randn(37, 37, seed=23),
    "batched 3x40x40": lambda: randn(3, 40, 40, seed=24),
}


def interpreted_results() -> dict:
    """Errors of the Triton path against torch, each case in fp32; run under TRITON_INTERPRET=1."""
    assert tg.TRITON_INTERPRET and tg.triton is not None
    f32, f64 = torch.float32, torch.float64
    b, c = tg.NS_COEFFS[0][1:]
    out = dict(gram={}, poly={}, ns={})
    for name, make in GRAM_CASES.items():
        X = make()
        out["gram"][name] = rel_err(tg.gram_triton(X), X @ X.mT)
    for name, make in POLY_CASES.items():
        A = make()
        out["poly"][name] = rel_err(tg.sym_poly_triton(A, b, c), b * A + c * (A @ A))
    for name, make in NS_CASES.items():
        G = make()
        exact = tg.newton_schulz_torch(G, f64)
        triton_ns, torch_ns = tg.newton_schulz_triton(G, f32), tg.newton_schulz_torch(G, f32)
        out["ns"][name] = dict(
            vs_torch=rel_err(triton_ns, torch_ns),
            triton_vs_fp64=rel_err(triton_ns, exact),
            torch_vs_fp64=rel_err(torch_ns, exact),
            shape=list(triton_ns.shape),
        )
    out["resolve_triton_on_cpu"] = tg.resolve_ns_impl("triton", on_cuda=False)
    return out


@pytest.fixture(scope="module")
def interpreted():
    if tg.triton is None:
        pytest.skip("triton is not installed")
    proc = subprocess.run(
        [sys.executable, __file__],
        env=cpu_env(TRITON_INTERPRET="1"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.splitlines()[-1])


# -----------------------------------------------------------------------------------------------------
# Triton kernels against torch, interpreted, fp32


@pytest.mark.parametrize("case", GRAM_CASES)
def test_gram_kernel_equals_torch(interpreted, case):
    # measured about 1.5e-7: fp32 rounding, summed in another order
    assert interpreted["gram"][case] < 1e-6


@pytest.mark.parametrize("case", POLY_CASES)
def test_poly_kernel_equals_torch(interpreted, case):
    assert interpreted["poly"][case] < 1e-6


@pytest.mark.parametrize("case", NS_CASES)
def test_newton_schulz_triton_equals_torch(interpreted, case):
    r = interpreted["ns"][case]
    assert r["shape"] == list(NS_CASES[case]().shape)
    # Five steps compound fp32 rounding: each path is ~8e-7 from fp64, and ~9e-7 from the other.
    assert r["vs_torch"] < 2e-6
    assert r["triton_vs_fp64"] < 1.5 * r["torch_vs_fp64"] + 1e-7


def test_triton_is_usable_on_cpu_under_the_interpreter(interpreted):
    assert interpreted["resolve_triton_on_cpu"] == "triton"


H100_SHARED_MEMORY = 232_448  # bytes one block may use on sm_90


@pytest.mark.parametrize("has_c", [False, True], ids=["X Xt", "b A + c A A"])
def test_kernel_compiles_for_h100(has_c):
    """Without a GPU: every H100 config compiles for sm_90 (with the ptxas triton ships) to wgmma fed
    by a cp.async pipeline, fits the shared memory, and stores the tile and its mirror in 16-byte
    vectors. Specialized as a launch on a contiguous bf16 1024 x 4096 X would be."""
    if tg.triton is None:
        pytest.skip("triton is not installed")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = tg._sym_matmul_kernel.fn
    unit_strides = ("sxk", "scn", "son")
    signature = {
        name: "*bf16"
        if name in ("X", "C", "Out")
        else "fp32"
        if name in ("alpha", "beta")
        else "constexpr"
        if name in unit_strides or name.isupper() and name not in "NMK"
        else "i32"
        for name in fn.arg_names
    }
    divisible_by_16 = ("X", "C", "Out", "M", "K", "sxb", "sxm", "scb", "scm", "sob", "som")
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible_by_16}
    for config in tg._SYM_CONFIGS:
        constexprs = dict.fromkeys(unit_strides, 1) | dict(HAS_C=has_c, PRECISION="tf32") | config.kwargs
        source = ASTSource(
            fn=fn,
            signature=signature,
            attrs=attrs,
            constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()},
        )
        kernel = tg.triton.compile(
            source,
            target=GPUTarget("cuda", 90, 32),
            options=dict(num_warps=config.num_warps, num_stages=config.num_stages),
        )
        ptx = kernel.asm["ptx"]
        assert "wgmma.mma_async" in ptx and "cp.async.cg" in ptx, config
        assert kernel.metadata.shared <= H100_SHARED_MEMORY, config
        # the autotuner's prune estimates what a config needs: exactly what sm_90 allocates
        assert tg.sym_config_shared_memory(config, 2) == kernel.metadata.shared, config
        stores = re.findall(r"st\.global[.\w]*", ptx)
        assert stores and all(s == "st.global.v4.b32" for s in stores), (config, set(stores))


# -----------------------------------------------------------------------------------------------------
# the orthogonalization's properties (torch path, the record's bf16)

# f(σ) of the five steps of p(x) = a x + b x³ + c x⁵: every singular value σ of the normalized input
# becomes f(σ). BAND_FROM bounds the σ that count: every singular value of a full-rank Gaussian input
# after the normalization, at the record's shapes too, and the signal of a low-rank one, lie above it.
# For the record's coefficients f stays in [0.9778, 1.0318] there (test_record.py pins it).
BAND_FROM = 0.014
# bf16 moves singular values by up to 0.01 around f(σ) (measured 0.0074 over ten seeds) and by up to
# 0.055 for the tiny σ of the noise of low-rank inputs (measured); the margins are those.
BF16_BAND_MARGIN = 0.012
BF16_F_MARGIN = 0.08


def ns_polynomial(x: torch.Tensor, coeffs=None) -> torch.Tensor:
    for a, b, c in coeffs or tg.NS_COEFFS:
        x = a * x + b * x**3 + c * x**5
    return x


@functools.cache
def coefficient_band(coeffs: tuple) -> tuple[float, float, float]:
    """(min, max) of f on [BAND_FROM, 1] and its max over (0, 1], on fine fp64 grids."""
    y = ns_polynomial(torch.linspace(BAND_FROM, 1, 200_001, dtype=torch.float64), coeffs)
    peak = ns_polynomial(torch.logspace(-8, 0, 200_001, dtype=torch.float64), coeffs).max().item()
    return y.min().item(), y.max().item(), peak


def low_rank_plus_noise(*shape, seed: int, rank: int = 8, noise: float = 1e-2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    *batch, m, n = shape
    S = torch.randn(*batch, m, rank, generator=g) @ torch.randn(*batch, rank, n, generator=g)
    return S + noise * S.std() * torch.randn(*shape, generator=g)


def band_check(G: torch.Tensor) -> tuple:
    """(output's singular values along the input's singular vectors where σ >= BAND_FROM, their
    distance from f(σ) for all σ, the output's largest singular value), in fp64."""
    Gn = (G / G.norm(dim=(-2, -1), keepdim=True)).double()
    U, S, Vh = torch.linalg.svd(Gn, full_matrices=False)
    orth = tg.newton_schulz_torch(G).double()
    d = (U.mT @ orth @ Vh.mT).diagonal(dim1=-2, dim2=-1)
    return d[S >= BAND_FROM], (d - ns_polynomial(S)).abs().max().item(), torch.linalg.svdvals(orth).max().item()


# scaled-down record shapes: MLP (wide and tall) and a batch of 4 attention matrices
PROPERTY_SHAPES = [(128, 512), (512, 128), (4, 128, 128)]


@pytest.mark.parametrize("shape", PROPERTY_SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["gaussian", "low rank + noise"])
@pytest.mark.parametrize("seed", [0, 1])
def test_singular_values_fall_in_the_band(shape, kind, seed):
    G = randn(*shape, seed=seed) if kind == "gaussian" else low_rank_plus_noise(*shape, seed=seed)
    in_band, off_f, top = band_check(G)
    low, high, peak = coefficient_band(tg.NS_COEFFS)
    assert in_band.numel() > 0
    assert low - BF16_BAND_MARGIN <= in_band.min().item()
    assert in_band.max().item() <= high + BF16_BAND_MARGIN
    assert off_f < BF16_F_MARGIN
    assert top <= peak + BF16_BAND_MARGIN


# bf16 rounding of the input alone moves the output by 1.9e-2 (measured: G (1 + 2^-9 noise)); the
# differences below measured up to 2.15e-2
BF16_REL = 3e-2
FP32_REL = 1e-5  # measured 1.5e-6


@pytest.mark.parametrize("shape", [(128, 512), (512, 128)], ids=str)
def test_transpose_of_a_wide_or_tall_matrix_is_exact(shape):
    # a wide G and its transpose give the same X, so the same bf16 arithmetic
    G = randn(*shape, seed=2)
    assert torch.equal(tg.newton_schulz_torch(G.mT), tg.newton_schulz_torch(G).mT)


@pytest.mark.parametrize("shape", [(128, 128), (4, 128, 128)], ids=str)
def test_transpose_of_a_square_matrix(shape):
    # X Xᵀ and Xᵀ X: equal in exact arithmetic, so bf16 and fp32 rounding apart
    G = randn(*shape, seed=3)
    assert rel_err(tg.newton_schulz_torch(G.mT), tg.newton_schulz_torch(G).mT) < BF16_REL
    f32 = torch.float32
    assert rel_err(tg.newton_schulz_torch(G.mT, f32), tg.newton_schulz_torch(G, f32).mT) < FP32_REL


@pytest.mark.parametrize("shape", PROPERTY_SHAPES, ids=str)
def test_scale_invariance(shape):
    G = randn(*shape, seed=4)
    orth = tg.newton_schulz_torch(G)
    for s in (2.0**-10, 2.0**10):  # exact in bf16, and NS_EPS is below the norm's resolution
        assert torch.equal(tg.newton_schulz_torch(s * G), orth)
    orth32 = tg.newton_schulz_torch(G, torch.float32)
    for s in (1e-3, 1e3):
        assert rel_err(tg.newton_schulz_torch(s * G), orth) < BF16_REL
        assert rel_err(tg.newton_schulz_torch(s * G, torch.float32), orth32) < FP32_REL


# -----------------------------------------------------------------------------------------------------
# dispatch and --ns_impl


def test_update_function_dispatches_on_the_implementation():
    assert tg.muon_update_fn("torch", compiled=False) is tg.muon_update
    with pytest.raises(ValueError, match="unknown Newton-Schulz implementation"):
        tg.muon_update_fn("cuda", compiled=False)


@pytest.mark.parametrize(
    "requested, on_cuda, have_triton, expected",
    [
        ("torch", True, True, "torch"),
        ("torch", False, False, "torch"),
        ("auto", True, True, "triton"),
        ("auto", True, False, "torch"),
        ("auto", False, True, "torch"),
        ("triton", True, True, "triton"),
    ],
)
def test_resolve_ns_impl(monkeypatch, requested, on_cuda, have_triton, expected):
    monkeypatch.setattr(tg, "triton", object() if have_triton else None)
    monkeypatch.setattr(tg, "TRITON_INTERPRET", False)
    assert tg.resolve_ns_impl(requested, on_cuda) == expected


@pytest.mark.parametrize(
    "on_cuda, have_triton, message",
    [
        (False, True, "needs a CUDA GPU"),
        (True, False, "triton is not installed"),
        (False, False, "triton is not installed"),
    ],
)
def test_resolve_ns_impl_refuses_triton_it_cannot_run(monkeypatch, on_cuda, have_triton, message):
    monkeypatch.setattr(tg, "triton", object() if have_triton else None)
    monkeypatch.setattr(tg, "TRITON_INTERPRET", False)
    with pytest.raises(tg.UserError, match=message) as e:
        tg.resolve_ns_impl("triton", on_cuda)
    assert "--ns_impl=torch" in str(e.value)


def test_resolve_ns_impl_rejects_unknown_names():
    with pytest.raises(ValueError, match="expected auto, triton or torch"):
        tg.resolve_ns_impl("cuda", on_cuda=True)


def test_import_without_triton():
    # None in sys.modules makes `import triton` raise ImportError, as on a machine without it
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['triton.language'] = None\n"
        "import torch, train_gpt as tg\n"
        "assert tg.triton is None and tg.resolve_ns_impl('auto', on_cuda=True) == 'torch'\n"
        "assert tg.newton_schulz_torch(torch.randn(8, 16)).shape == (8, 16)\n"
        "print('ok')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-4000:]


# -----------------------------------------------------------------------------------------------------
# benchmark script


def test_benchmark_smoke_prints_its_table(tmp_path):
    if tg.triton is None:
        pytest.skip("triton is not installed")
    out = tmp_path / "table.txt"
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_newton_schulz.py", "--smoke", "--warmup=0", "--repeat=1", f"--out={out}"],
        cwd=REPO,
        env=cpu_env(TRITON_INTERPRET="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = out.read_text().splitlines()
    assert proc.stdout.splitlines() == lines
    header = next(i for i, line in enumerate(lines) if line.startswith("workload"))
    assert "speedup" in lines[header] and "TFLOP/s" in lines[header]
    rows = lines[header + 2 : header + 7]
    assert [r.split("  ")[0] for r in rows] == [
        "MLP fc (96, 24), transposed",
        "MLP proj (24, 96)",
        "attention (4, 24, 24)",
        "all 5 matrices",
        "1/8 share (busiest rank): 3",
    ]
    for row in rows:
        assert "n/a" not in row
        assert float(row.split()[-1]) < 2e-6  # rel diff of the two paths, fp32


# -----------------------------------------------------------------------------------------------------
# CUDA, bf16: what the record runs


def matrix_shapes(args) -> list[tuple[int, ...]]:
    """The shapes Muon orthogonalizes: MLP fc, MLP proj, the attention stack."""
    D, hidden, H = args.model_dim, args.mlp_ratio * args.model_dim, args.num_heads * args.head_dim
    return [(hidden, D), (D, hidden), (4, H, D)]


DEFAULT_SHAPES = matrix_shapes(tg.Hyperparameters())


def cuda_randn(*shape, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, device="cuda", dtype=dtype, generator=g)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "X",
    [
        lambda: cuda_randn(*DEFAULT_SHAPES[1], seed=0, dtype=torch.bfloat16),
        lambda: cuda_randn(*DEFAULT_SHAPES[0], seed=1, dtype=torch.bfloat16).mT,
        lambda: cuda_randn(*DEFAULT_SHAPES[2], seed=2, dtype=torch.bfloat16),
        lambda: cuda_randn(1000, 3000, seed=3, dtype=torch.bfloat16),
        lambda: cuda_randn(3, 300, 700, seed=4, dtype=torch.bfloat16)[:, ::2, 1:],
    ],
    ids=["MLP proj", "MLP fc transposed", "attention", "1000x3000", "non-contiguous"],
)
def test_gpu_kernels_as_accurate_as_torch_bf16(X):
    X = X()
    exact = X.double() @ X.double().mT
    # one bf16 rounding of an fp32 sum, like cuBLAS: no less accurate than torch's product
    assert rel_err(tg.gram_triton(X), exact) < 1.2 * rel_err(X @ X.mT, exact) + 1e-4
    A = tg.gram_triton(X)
    b, c = tg.NS_COEFFS[0][1:]
    exact = b * A.double() + c * (A.double() @ A.double())
    assert rel_err(tg.sym_poly_triton(A, b, c), exact) < 1.2 * rel_err(b * A + c * A @ A, exact) + 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("shape", DEFAULT_SHAPES, ids=str)
def test_gpu_newton_schulz_triton_matches_torch_bf16(shape):
    G = cuda_randn(*shape, seed=5)
    exact = tg.newton_schulz_torch(G, torch.float64)
    triton_ns, torch_ns = tg.newton_schulz_triton(G), tg.newton_schulz_torch(G)
    assert triton_ns.dtype == torch.bfloat16 and triton_ns.shape == G.shape
    assert rel_err(triton_ns, torch_ns) < 2 * BF16_REL
    assert rel_err(triton_ns, exact) < 1.2 * rel_err(torch_ns, exact)


@pytest.mark.gpu
def test_gpu_triton_singular_values_fall_in_the_band():
    G = cuda_randn(1024, 4096, seed=6)
    s = torch.linalg.svdvals(tg.newton_schulz_triton(G).double())
    low, high, _ = coefficient_band(tg.NS_COEFFS)
    # σ/‖G‖_F of a 1024 x 4096 Gaussian lie in about [0.0156, 0.0469], inside [BAND_FROM, 1]
    assert low - BF16_BAND_MARGIN <= s.min().item() and s.max().item() <= high + BF16_BAND_MARGIN


def test_startup_check_stops_a_run_whose_kernels_are_wrong(monkeypatch):
    shapes = [(32, 64), (64, 32), (2, 32, 32)]
    monkeypatch.setattr(tg, "newton_schulz_triton", tg.newton_schulz_torch)
    tg.check_newton_schulz_triton(torch.device("cpu"), shapes)  # agreeing paths pass

    def noisy(G):
        return (tg.newton_schulz_torch(G).float() * (1 + 0.01 * torch.randn(G.shape))).bfloat16()

    monkeypatch.setattr(tg, "newton_schulz_triton", noisy)
    tg.check_newton_schulz_triton(torch.device("cpu"), shapes)  # 1% noise: rounding-sized, passes
    monkeypatch.setattr(tg, "newton_schulz_triton", lambda G: tg.newton_schulz_torch(G).flip(-1))
    with pytest.raises(tg.UserError, match=r"disagree with the torch path on this GPU: relative difference"):
        tg.check_newton_schulz_triton(torch.device("cpu"), shapes)


class FakeX:
    """What the prune hook reads of the kernel's X argument."""

    is_cuda, device = True, torch.device("cuda", 0)

    @staticmethod
    def element_size():
        return 2


@pytest.mark.parametrize(
    "limit, expected",
    [
        (232_448, "all"),  # H100: every config fits
        (101_376, "<= 101376"),  # a consumer card (sm_89): the 4-stage 128-tiles do not
        (40_000, "smallest"),  # nothing fits: keep the smallest rather than none
    ],
)
def test_configs_that_do_not_fit_the_gpu_are_pruned(monkeypatch, limit, expected):
    if tg.triton is None:
        pytest.skip("triton is not installed")
    monkeypatch.setattr(tg, "_device_shared_memory", lambda index: limit)
    kept = tg._fitting_configs(tg._SYM_CONFIGS, dict(X=FakeX()))
    sizes = {c: tg.sym_config_shared_memory(c, 2) for c in tg._SYM_CONFIGS}
    if expected == "all":
        assert kept == tg._SYM_CONFIGS
    elif expected == "smallest":
        assert kept == [min(tg._SYM_CONFIGS, key=sizes.get)]
    else:
        assert kept == [c for c in tg._SYM_CONFIGS if sizes[c] <= limit] and 0 < len(kept) < len(tg._SYM_CONFIGS)


def gpu_runtime():
    """A one-process runtime that choose_newton_schulz takes for a GPU's, on the CPU."""
    rt = tg.Runtime(0, 1, torch.device("cpu"))
    rt.device = type("FakeCuda", (), dict(type="cuda"))()
    return rt


@pytest.fixture
def usable_triton(monkeypatch):
    """triton importable, not interpreted, and its startup check passing."""
    monkeypatch.setattr(tg, "triton", object())
    monkeypatch.setattr(tg, "TRITON_INTERPRET", False)
    monkeypatch.setattr(tg, "check_newton_schulz_triton", lambda device, shapes: None)


@pytest.mark.parametrize(
    "times, winner",
    [
        ((2.0, 1.5), "triton"),
        ((1.0, 1.5), "torch"),
        ((1.0, 1.0 * tg.NS_TRITON_MARGIN + 1e-3), "torch"),  # faster, but not clearly: the record's torch path
    ],
)
@pytest.mark.parametrize("compiled", [True, False])
def test_auto_picks_the_faster_path_and_records_both_timings(monkeypatch, usable_triton, times, winner, compiled):
    timed = []
    monkeypatch.setattr(
        tg,
        "measure_newton_schulz",
        lambda device, shapes, compiled: timed.append((shapes, compiled)) or dict(torch=times[0], triton=times[1]),
    )
    info = tg.choose_newton_schulz("auto", gpu_runtime(), [(8, 16), (4, 8, 8)], compiled=compiled)
    assert timed == [([(8, 16), (4, 8, 8)], compiled)]  # on the run's own shapes, compiled as the run compiles
    timed_as = "compiled" if compiled else "eager"
    assert info == dict(
        requested="auto", used=winner, timings_ms=dict(torch=times[0], triton=times[1]), note=None, torch_timed=timed_as
    )
    assert f"{timed_as} torch {times[0]:.3f} ms, triton {times[1]:.3f} ms" in tg.newton_schulz_line(info)
    # forcing one is not timed
    monkeypatch.setattr(tg, "measure_newton_schulz", lambda *a, **k: pytest.fail("forced: nothing to time"))
    assert tg.choose_newton_schulz("triton", gpu_runtime(), [(8, 16)], compiled=True)["used"] == "triton"
    assert tg.choose_newton_schulz("torch", gpu_runtime(), [(8, 16)], compiled=True)["used"] == "torch"


def test_triton_failure_falls_back_under_auto_and_is_an_error_when_forced(monkeypatch, usable_triton):
    def broken(device, shapes):
        raise RuntimeError("out of resources: shared memory, required: 300000\nmore detail")

    monkeypatch.setattr(tg, "check_newton_schulz_triton", broken)
    monkeypatch.setattr(tg, "measure_newton_schulz", lambda *a, **k: pytest.fail("nothing to time after a failure"))
    info = tg.choose_newton_schulz("auto", gpu_runtime(), [(8, 16)], compiled=True)
    assert info["used"] == "torch" and info["timings_ms"] is None
    assert (
        info["note"]
        == "the Triton path failed (RuntimeError: out of resources: shared memory, required: 300000); using torch"
    )
    assert "using torch" in tg.newton_schulz_line(info)
    with pytest.raises(
        tg.UserError, match=r"--ns_impl=triton: the Triton path fails on this GPU \(RuntimeError: out of"
    ):
        tg.choose_newton_schulz("triton", gpu_runtime(), [(8, 16)], compiled=True)
    # a wrong result: the check's own message, under --ns_impl=triton an error, under auto torch
    monkeypatch.setattr(
        tg, "check_newton_schulz_triton", lambda d, s: (_ for _ in ()).throw(tg.UserError("the kernels disagree"))
    )
    with pytest.raises(tg.UserError, match=r"\(UserError: the kernels disagree\)"):
        tg.choose_newton_schulz("triton", gpu_runtime(), [(8, 16)], compiled=True)
    assert tg.choose_newton_schulz("auto", gpu_runtime(), [(8, 16)], compiled=True)["used"] == "torch"
    # a failure while timing (a compile error) falls back the same way
    monkeypatch.setattr(tg, "check_newton_schulz_triton", lambda d, s: None)
    monkeypatch.setattr(tg, "measure_newton_schulz", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("inductor")))
    assert tg.choose_newton_schulz("auto", gpu_runtime(), [(8, 16)], compiled=True)["note"] == (
        "the Triton path failed (RuntimeError: inductor); using torch"
    )


def test_cpu_runs_use_torch_without_timing():
    info = tg.choose_newton_schulz("auto", tg.Runtime(0, 1, torch.device("cpu")), [(8, 16)], compiled=True)
    assert info == dict(requested="auto", used="torch", timings_ms=None, note=None)


def test_time_ms_is_the_median():
    calls = iter([0.0, 5.0, 1.0, 9.0])  # the first call is untimed
    slept = []

    def fn():
        import time

        t = next(calls)
        slept.append(t)
        time.sleep(t / 1000)

    got = tg.time_ms(fn, torch.device("cpu"), repeats=3)
    assert len(slept) == 4 and 5.0 <= got < 9.0


def test_interpreter_is_never_used_on_a_gpu(monkeypatch):
    monkeypatch.setattr(tg, "TRITON_INTERPRET", True)
    assert tg.resolve_ns_impl("auto", on_cuda=True) == "torch"
    with pytest.raises(tg.UserError, match="Unset TRITON_INTERPRET for a GPU run"):
        tg.resolve_ns_impl("triton", on_cuda=True)


if __name__ == "__main__":
    print(json.dumps(interpreted_results()))
