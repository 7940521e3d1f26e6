"""The model against the spec's rules: shapes, dtypes, init, masks, and a reference forward.

The record's numbers (608,885,856 parameters, blocks 0-4 and 11-15 with value embeddings, ...) are
pinned in test_record.py. Here the reference computations are written independently from the spec's
rules and take their numbers from the script: the arguments of the model built, and its layer
structure (tg.UNET_SKIPS, tg.NUM_VALUE_EMBEDS, tg.LONG_WINDOW_BLOCKS, tg.NO_ATTENTION_BLOCK, ...).
The helpers take the script module as `script`, so test_record.py can run them on a changed copy.
"""

import math
import types

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

import train_gpt as tg


def tiny_args(**kw):
    return tg.parse_args(["--preset=tiny", *(f"--{k}={v}" for k, v in kw.items())])


def padded_vocab(script, args) -> int:
    """The lm head's rows: the vocabulary rounded up to a multiple of VOCAB_MULTIPLE."""
    return math.ceil(args.vocab_size / script.VOCAB_MULTIPLE) * script.VOCAB_MULTIPLE


def spec_value_embed_layout(num_layers: int, n: int) -> list:
    """Which value embedding each block uses: the first n blocks use 0..n-1, the last n blocks use
    them again, the blocks between none."""
    return list(range(n)) + [None] * (num_layers - 2 * n) + list(range(n))


def attention_blocks(script, num_layers: int) -> list[int]:
    return [i for i in range(num_layers) if i != script.NO_ATTENTION_BLOCK]


def expected_parameter_count(script, args) -> int:
    """The spec's sum: token and value embeddings, the padded head, attention stacks, MLPs, scalars."""
    D, L, H = args.model_dim, args.num_layers, args.num_heads * args.head_dim
    embeds = (2 + script.NUM_VALUE_EMBEDS) * args.vocab_size * D
    attention = len(attention_blocks(script, L)) * 4 * H * D
    mlp = L * 2 * args.mlp_ratio * D * D
    scalars = L * (1 + script.LAMBDAS_PER_BLOCK + script.ATTN_LAMBDAS_PER_BLOCK)
    return embeds + padded_vocab(script, args) * D + attention + mlp + scalars


def check_model_structure(script, args) -> None:
    """The model of args, built on the meta device: every parameter's name, shape and dtype, the
    count, weight-decay multipliers and the rotary tables."""
    with torch.device("meta"):
        model = script.build_model(args, attention="flex")
    params = dict(model.named_parameters())
    D, L, H = args.model_dim, args.num_layers, args.num_heads * args.head_dim
    hidden = args.mlp_ratio * D
    attn = attention_blocks(script, L)
    embeds = ["embed1.weight", "embed2.weight"] + [f"value_embeds.{i}.weight" for i in range(script.NUM_VALUE_EMBEDS)]
    blocks = [
        f"blocks.{i}.{name}"
        for i in range(L)
        for name in ["mlp.fc_w", "mlp.proj_w"] + (["attn.qkvo_w"] if i in attn else [])
    ]
    assert sorted(params) == sorted(embeds + blocks + ["lm_head_w", "scalars"])
    assert sum(p.numel() for p in params.values()) == expected_parameter_count(script, args)
    for name in embeds:
        assert params[name].shape == (args.vocab_size, D) and params[name].dtype == torch.bfloat16, name
    assert params["lm_head_w"].shape == (padded_vocab(script, args), D) and params["lm_head_w"].dtype == torch.float32
    assert params["scalars"].dtype == torch.float32
    for i, block in enumerate(model.blocks):
        if i in attn:
            assert block.attn.qkvo_w.shape == (4, H, D) and block.attn.qkvo_w.dtype == torch.bfloat16, i
        else:
            assert block.attn is None, i
        assert block.mlp.fc_w.shape == (hidden, D) and block.mlp.proj_w.shape == (D, hidden), i
        assert block.mlp.fc_w.dtype == block.mlp.proj_w.dtype == torch.bfloat16, i
        assert block.mlp.fc_w.wd_mul == block.mlp.proj_w.wd_mul == args.mlp_wd_mul, i
    # rotary tables sized for the longest sequence, never saved
    assert model.rotary.cos.shape == (max(args.train_seq_len, args.val_seq_len), args.head_dim // 2)
    assert "rotary.cos" not in model.state_dict()


@pytest.mark.parametrize(
    "args",
    [
        tg.Hyperparameters(),
        tiny_args(),
        # a vocabulary that is not a multiple, another MLP ratio and head split, no weight-decay multiplier
        tg.Hyperparameters(
            vocab_size=1000,
            model_dim=96,
            num_heads=3,
            head_dim=32,
            mlp_ratio=3,
            mlp_wd_mul=1.0,
            train_seq_len=256,
            val_seq_len=384,
        ),
    ],
    ids=["defaults", "tiny", "odd sizes"],
)
def test_model_structure_follows_the_arguments(args):
    check_model_structure(tg, args)


def test_init():
    torch.manual_seed(0)
    args = tiny_args()
    model = tg.build_model(args, "dense")
    dim = args.model_dim  # the fan-in of every initialised block matrix
    std = tg.INIT_GAIN / math.sqrt(dim)
    for i, block in enumerate(model.blocks):
        mats = [block.mlp.fc_w] + ([block.attn.qkvo_w[:3]] if block.attn else [])
        for w in mats:
            w = w.float()
            assert w.abs().max() <= math.sqrt(3) * std * 1.01  # uniform in +-sqrt(3) std
            assert abs(w.std().item() - std) < 0.05 * std
        assert not block.mlp.proj_w.any()
        if block.attn:
            assert not block.attn.qkvo_w[3].any()
    assert not model.lm_head_w.any()
    L = args.num_layers
    assert model.scalars.shape == (L * (1 + tg.LAMBDAS_PER_BLOCK + tg.ATTN_LAMBDAS_PER_BLOCK),)
    e = model.embed1.weight.float()
    assert abs(e.std().item() - 1) < 0.01 and abs(e.mean().item()) < 0.01


def check_value_embedding_layout(script) -> None:
    n = script.NUM_VALUE_EMBEDS
    for L in sorted({script.RECORD_NUM_LAYERS, 2 * n, 2 * n + 1, 2 * n + 7}):
        assert [script.value_embed_index(i, L) for i in range(L)] == spec_value_embed_layout(L, n), L


def test_value_embedding_layout():
    check_value_embedding_layout(tg)


def test_rotary_matches_the_spec():
    rot = tg.Rotary(head_dim=8, max_seq_len=16)
    x = torch.randn(1, 16, 2, 8, dtype=torch.bfloat16)
    t = torch.arange(16.0)[:, None]
    ang = t * torch.tensor([1.0, tg.ROPE_MIN_FREQ, 0.0, 0.0])  # head_dim/4 = 2 frequencies from 1 down, 2 zeros
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    x1, x2 = x.float().chunk(2, -1)
    want = torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], -1).bfloat16()
    assert torch.equal(rot(x), want)
    # head_dim 16: 4 geometrically spaced frequencies from 1 to ROPE_MIN_FREQ, then 4 zeros
    rot = tg.Rotary(head_dim=16, max_seq_len=2)
    freqs = torch.atan2(rot.sin[1], rot.cos[1]).double()  # the angles at position 1
    want = torch.tensor([tg.ROPE_MIN_FREQ ** (k / 3) for k in range(4)] + [0.0] * 4, dtype=torch.float64)
    torch.testing.assert_close(freqs, want, rtol=0, atol=1e-6)


def brute_force_mask(ids: torch.Tensor, W: int, script=tg) -> torch.Tensor:
    """The spec's mask rule, token by token, with Python loops (independent of the code under test)."""
    T, bs = len(ids), script.ATTN_BLOCK_SIZE
    docs = torch.cumsum(ids == script.EOT_TOKEN, 0).tolist()
    n = T // bs
    lo = [docs[b * bs] for b in range(n)]
    hi = [docs[b * bs + bs - 1] for b in range(n)]
    mask = [[False] * T for _ in range(T)]
    for qb in range(n):
        cands = [kb for kb in range(qb, -1, -1) if lo[qb] <= hi[kb] and lo[kb] <= hi[qb]]  # most recent first
        full = [kb for kb in cands if kb < qb and lo[qb] == hi[kb] == lo[kb] == hi[qb]]
        partial = [kb for kb in cands if kb not in full]
        keep_full = full[: max(W - 1, 0)]
        keep_partial = partial[: max(W - len(full), 1)]
        for q in range(qb * bs, (qb + 1) * bs):
            row = mask[q]
            for kb in keep_full:
                row[kb * bs : (kb + 1) * bs] = [True] * bs
            for kb in keep_partial:
                for k in range(kb * bs, min((kb + 1) * bs, q + 1)):
                    row[k] = docs[q] == docs[k]
    return torch.tensor(mask)


def random_docs(T, mean_len, seed, script=tg):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (T,), generator=g)
    ids[torch.rand(T, generator=g) < 1 / mean_len] = script.EOT_TOKEN
    ids[0] = script.EOT_TOKEN
    return ids


@pytest.mark.parametrize("blocks, mean_len, seed", [(8, 150, 0), (8, 600, 1), (6, 2000, 2)])
def test_block_masks_follow_the_spec(blocks, mean_len, seed):
    ids = random_docs(blocks * tg.ATTN_BLOCK_SIZE, mean_len, seed)
    for W in [0, 1, 2, 3, blocks // 2, blocks, blocks + 5]:
        (sel,) = tg.document_block_masks(ids, [torch.tensor(W, dtype=torch.int32)])
        assert torch.equal(tg.dense_attention_mask(ids, sel), brute_force_mask(ids, W)), W


@pytest.fixture(scope="module")
def compiled_flex():
    # Eager FlexAttention on CPU applies mask_mod to every key and ignores which blocks the BlockMask
    # lists, so it does not implement the sliding window; the compiled kernel (what runs on the GPU)
    # visits only the listed blocks. Compare against that.
    return torch.compile(flex_attention, dynamic=False)


@pytest.mark.parametrize("mean_len, seed", [(150, 3), (400, 4), (5000, 5)])
def test_dense_attention_equals_flex_attention(compiled_flex, mean_len, seed):
    n = 8
    T = n * tg.ATTN_BLOCK_SIZE
    ids = random_docs(T, mean_len, seed)
    docs = (ids == tg.EOT_TOKEN).cumsum(0)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, T, 64, generator=g) for _ in range(3))
    defaults = tg.Hyperparameters()
    windows = [1, 2, 3, n, tg.window_blocks(defaults.num_iterations, defaults)]  # the last: the default's largest
    for sel, W in zip(tg.document_block_masks(ids, windows), windows):
        bm = BlockMask.from_kv_blocks(*sel, BLOCK_SIZE=tg.ATTN_BLOCK_SIZE, mask_mod=tg.document_causal_mod(docs))
        want = compiled_flex(q, k, v, block_mask=bm, scale=tg.ATTN_SCALE)
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=tg.dense_attention_mask(ids, sel), scale=tg.ATTN_SCALE)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"window {W}")


def reference_forward(model, ids, targets, W, eval_mode, script=tg):
    """The spec's wiring written out directly (embeddings, skips, lambdas, value embeddings, windows, with the
    brute-force masks), around the model's own attention, MLP and head: the layer structure and the
    constants are the script's, so that an edit of a block's insides (an activation) is not failed here.
    Returns (the normed final hidden states, the loss or, without
    targets, None)."""
    L = len(model.blocks)
    nl, na = script.LAMBDAS_PER_BLOCK, script.ATTN_LAMBDAS_PER_BLOCK
    s = model.scalars.float()
    skip_w, lam, alam = s[:L], s[L : (1 + nl) * L].view(L, nl), s[(1 + nl) * L :].view(L, na)
    rms = lambda t: F.rms_norm(t, (t.size(-1),))  # noqa: E731
    x = x00 = rms(model.embed1(ids)[None])
    x01 = rms(model.embed2(ids)[None])
    ves = [e(ids)[None] for e in model.value_embeds]
    ve_layout = spec_value_embed_layout(L, script.NUM_VALUE_EMBEDS)
    masks = {w: brute_force_mask(ids, w, script) for w in (W, W // 2)}
    outs = []
    for i, block in enumerate(model.blocks):
        if i in script.UNET_SKIPS:
            j = script.UNET_SKIPS[i]
            x = x + skip_w[j] * outs[j]
        x = lam[i, 0] * x + lam[i, 1] * x00 + lam[i, 2] * x01
        if i != script.NO_ATTENTION_BLOCK:
            # the block's own attention and MLP (their insides are the record's: tests/test_record.py)
            ve_i = ve_layout[i]
            m = masks[W if i in script.LONG_WINDOW_BLOCKS else W // 2]
            x = x + block.attn(x, None if ve_i is None else ves[ve_i], alam[i], model.rotary, m)
        else:
            assert block.attn is None
        x = x + block.mlp(rms(x))
        outs.append(x)
    x = hidden = rms(x)[0]
    if targets is None:
        return hidden, None
    chunks = script.EVAL_LOGIT_CHUNKS if eval_mode else 1
    loss = 0
    for xc, tc in zip(x.chunk(chunks), targets.chunk(chunks)):
        loss = loss + F.cross_entropy(model.head(xc), tc) / chunks
    return hidden, loss


def perturbed_model(script, args, noise=0.1, head_noise=1.0):
    """A model with noise on every parameter (the zero-initialised output projections and head
    included) and random scalars, so that every path of the forward counts. At the default noise
    each block moves the residual stream enough that a wrong skip, window or value embedding changes
    the final hidden states by 1% or more (measured on the tiny preset: 1.1% for a long window in
    block 0 or 1 instead of a short one, 12% for other skip sources, 26% without the last long
    window, 64% with one value embedding fewer), and the head's logits are large enough that the
    softcap bends them."""
    torch.manual_seed(0)
    model = script.build_model(args, "dense")
    with torch.no_grad():
        for p in model.parameters():
            if p is model.scalars:
                p.copy_(torch.randn_like(p) * 0.5)
            else:
                p.add_(torch.randn_like(p.float()).to(p.dtype) * (head_noise if p is model.lm_head_w else noise))
    return model


@pytest.fixture(scope="module")
def perturbed_tiny_model():
    return perturbed_model(tg, tiny_args())


# The model and the reference take the same bf16 steps (equal to the bit on CPU, measured); a wrong
# structure moves the hidden states by 1e-2 or more (see perturbed_model).
HIDDEN_REL_TOLERANCE = 5e-3


def check_forward_matches_the_reference(script, model, eval_mode: bool, W: int = 3) -> None:
    """The model's final hidden states and loss on a sequence of 4 attention blocks equal the
    reference's; W in blocks."""
    T = 4 * script.ATTN_BLOCK_SIZE
    ids = random_docs(T, 200, 7, script).to(torch.int32)
    targets = random_docs(T, 200, 8, script)
    window = torch.tensor(W, dtype=torch.int32)
    model.train(not eval_mode)
    with torch.no_grad():
        got_hidden, got_loss = model.trunk(ids, window).float(), model(ids, targets, window)
        want_hidden, want_loss = reference_forward(model, ids.long(), targets, W, eval_mode, script)
    model.train()
    assert relative_error(got_hidden, want_hidden) < HIDDEN_REL_TOLERANCE
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-4, atol=1e-4)


def relative_error(x, ref) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("eval_mode", [False, True])
def test_forward_matches_the_reference(perturbed_tiny_model, eval_mode):
    check_forward_matches_the_reference(tg, perturbed_tiny_model, eval_mode)


@pytest.mark.parametrize(
    "change",
    [
        dict(UNET_SKIPS={i: (j + 1) % i for i, j in tg.UNET_SKIPS.items()}),  # other sources
        dict(LONG_WINDOW_BLOCKS=tg.LONG_WINDOW_BLOCKS[:-1]),
        dict(NUM_VALUE_EMBEDS=tg.NUM_VALUE_EMBEDS - 1),
    ],
    ids=lambda change: next(iter(change)),
)
def test_the_reference_sees_a_wrong_structure(perturbed_tiny_model, change):
    """The reference with one structural number changed misses the model's hidden states by far more
    than the tolerance: the comparison above checks the structure, not only that the code runs."""
    ((name, value),) = change.items()
    assert value != getattr(tg, name)
    wrong = types.SimpleNamespace(**{**vars(tg), **change})
    T = 4 * tg.ATTN_BLOCK_SIZE
    ids = random_docs(T, 200, 7)
    with torch.no_grad():
        got = perturbed_tiny_model.trunk(ids.to(torch.int32), torch.tensor(3, dtype=torch.int32))
        want, _ = reference_forward(perturbed_tiny_model, ids, None, 3, False, wrong)
    assert relative_error(got, want) > 2 * HIDDEN_REL_TOLERANCE


def test_initial_loss_is_uniform_and_backward_reaches_every_parameter(perturbed_tiny_model):
    args = tiny_args()
    model = tg.build_model(args, "dense")
    ids, targets = random_docs(512, 200, 9).to(torch.int32), random_docs(512, 200, 10)
    W = torch.tensor(2, dtype=torch.int32)
    # the lm head starts at zero: every logit is 0, the loss is log(padded vocabulary)
    assert model(ids, targets, W).item() == pytest.approx(math.log(padded_vocab(tg, args)), abs=1e-5)
    perturbed_tiny_model(ids, targets, W).backward()
    for name, p in perturbed_tiny_model.named_parameters():
        assert p.grad is not None and p.grad.dtype == p.dtype and torch.isfinite(p.grad.float()).all(), name
        assert p.grad.any(), name
    perturbed_tiny_model.zero_grad(set_to_none=True)


def twin_models():
    """A perturbed tiny model (small noise, as the GPU comparison was measured with) with dense
    attention, and the same weights with FlexAttention."""
    dense = perturbed_model(tg, tiny_args(), noise=0.02, head_noise=0.02)
    flex = tg.build_model(tiny_args(), "flex")
    flex.load_state_dict(dense.state_dict())
    return dense, flex


def test_flex_model_path_equals_dense_path():
    """The model's FlexAttention path (what runs on the GPU): BlockMask built inside forward, layouts,
    scale. Eager FlexAttention ignores the block selection, so the window here covers every block;
    windows are checked against compiled FlexAttention above, and for the whole model on the GPU."""
    dense, flex = twin_models()
    T = 8 * tg.ATTN_BLOCK_SIZE
    ids, targets = random_docs(T, 300, 1).to(torch.int32), random_docs(T, 300, 2)
    W = torch.tensor(T // tg.ATTN_BLOCK_SIZE, dtype=torch.int32)
    with torch.no_grad():
        torch.testing.assert_close(flex(ids, targets, W), dense(ids, targets, W), rtol=1e-4, atol=1e-4)


def test_model_compiles_to_one_graph_per_mode_across_every_window():
    """What the GPU compiles: the FlexAttention path traces with fullgraph=True (no graph breaks), and
    stepping through every window size of the default schedule while switching between training and
    validation builds one graph per mode, never another. dynamo decides graphs and guards before any
    backend runs, so a counting backend sees what inductor would be given, in seconds."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    args = tiny_args(train_seq_len=256, val_seq_len=512, val_tokens=1024, model_dim=64, num_heads=1, head_dim=64)
    # FlexAttention has no backward on CPU: parameters without grad let the training forward run eagerly
    model = tg.build_model(args, "flex").requires_grad_(False)
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=False, fullgraph=True, backend=counting_backend)
    defaults = tg.Hyperparameters()
    windows = sorted({tg.window_blocks(step, defaults) for step in range(defaults.num_iterations + 1)})
    assert len(windows) > 1  # several sizes, from one block up
    for w in windows:
        W = torch.tensor(w, dtype=torch.int32)
        model.train()
        compiled(random_docs(args.train_seq_len, 100, w).to(torch.int32), random_docs(args.train_seq_len, 100, 0), W)
        model.eval()
        with torch.no_grad():
            compiled(random_docs(args.val_seq_len, 100, w).to(torch.int32), random_docs(args.val_seq_len, 100, 0), W)
    model.train()
    assert len(graphs) == 2


@pytest.mark.gpu
def test_compiled_flex_model_equals_dense_model_on_gpu():
    dense, flex = (m.cuda() for m in twin_models())
    compiled = torch.compile(flex, dynamic=False, fullgraph=True)
    ids, targets = random_docs(2048, 300, 1).to(torch.int32).cuda(), random_docs(2048, 300, 2).cuda()
    for w in (1, 3, 16):
        W = torch.tensor(w, dtype=torch.int32, device="cuda")
        with torch.no_grad():
            torch.testing.assert_close(compiled(ids, targets, W), dense(ids, targets, W), rtol=1e-3, atol=1e-3)
    loss = compiled(ids, targets, torch.tensor(3, dtype=torch.int32, device="cuda"))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad.float()).all() for p in flex.parameters())
