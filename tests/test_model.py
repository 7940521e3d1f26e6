"""The model against the record spec: shapes, dtypes, init, masks, and a reference forward."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

import train_gpt as tg

EOT = 50256


def tiny_args(**kw):
    return tg.parse_args(["--preset=tiny", *(f"--{k}={v}" for k, v in kw.items())])


def test_full_model_on_meta_has_the_record_parameters():
    with torch.device("meta"):
        model = tg.build_model(tg.Hyperparameters(), attention="flex")
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == 608_885_856
    for name in ["embed1.weight", "embed2.weight"] + [f"value_embeds.{i}.weight" for i in range(5)]:
        assert params[name].shape == (50257, 1024) and params[name].dtype == torch.bfloat16, name
    assert params["lm_head_w"].shape == (50304, 1024) and params["lm_head_w"].dtype == torch.float32
    assert params["scalars"].shape == (96,) and params["scalars"].dtype == torch.float32
    for i, block in enumerate(model.blocks):
        if i == 7:
            assert block.attn is None
        else:
            assert block.attn.qkvo_w.shape == (4, 1024, 1024) and block.attn.qkvo_w.dtype == torch.bfloat16
        assert block.mlp.fc_w.shape == (4096, 1024) and block.mlp.proj_w.shape == (1024, 4096)
        assert block.mlp.fc_w.dtype == block.mlp.proj_w.dtype == torch.bfloat16
        assert block.mlp.fc_w.wd_mul == block.mlp.proj_w.wd_mul == 2.0
    assert sum(1 for p in model.blocks.parameters() if p.ndim >= 2) == 47
    # rotary tables sized for the longest sequence, never saved
    assert model.rotary.cos.shape == (262_144, 64) and "rotary.cos" not in model.state_dict()


def test_init():
    torch.manual_seed(0)
    args = tiny_args()
    model = tg.build_model(args, "dense")
    dim = args.model_dim
    bound = math.sqrt(3) * 0.5 / math.sqrt(dim)
    for i, block in enumerate(model.blocks):
        mats = [block.mlp.fc_w] + ([block.attn.qkvo_w[:3]] if block.attn else [])
        for w in mats:
            w = w.float()
            assert w.abs().max() <= bound * 1.01
            assert abs(w.std().item() - 0.5 / math.sqrt(dim)) < 0.05 * 0.5 / math.sqrt(dim)
        assert not block.mlp.proj_w.any()
        if block.attn:
            assert not block.attn.qkvo_w[3].any()
    assert not model.lm_head_w.any()
    L = 16
    s = model.scalars.detach()
    assert torch.equal(s[:L], torch.ones(L))
    assert torch.equal(s[L:4 * L].view(L, 3), torch.tensor([[1.0, 0, 0]] * L))
    assert torch.equal(s[4 * L:].view(L, 2), torch.full((L, 2), 0.5))
    e = model.embed1.weight.float()
    assert abs(e.std().item() - 1) < 0.01 and abs(e.mean().item()) < 0.01


def test_value_embedding_layout():
    layout = [tg.value_embed_index(i, 16) for i in range(16)]
    assert layout == [0, 1, 2, 3, 4] + [None] * 6 + [0, 1, 2, 3, 4]


def test_rotary_matches_the_spec():
    rot = tg.Rotary(head_dim=8, max_seq_len=16)
    x = torch.randn(1, 16, 2, 8, dtype=torch.bfloat16)
    t = torch.arange(16.0)[:, None]
    ang = t * torch.tensor([1.0, 1 / 1024, 0.0, 0.0])  # head_dim/4 = 2 frequencies from 1 to 1/1024, 2 zeros
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    x1, x2 = x.float().chunk(2, -1)
    want = torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], -1).bfloat16()
    assert torch.equal(rot(x), want)


def brute_force_mask(ids: torch.Tensor, W: int) -> torch.Tensor:
    """The spec's mask rule, token by token, with Python loops (independent of the code under test)."""
    T, bs = len(ids), 128
    docs = torch.cumsum(ids == EOT, 0).tolist()
    n = T // bs
    lo = [docs[b * bs] for b in range(n)]
    hi = [docs[b * bs + bs - 1] for b in range(n)]
    mask = torch.zeros(T, T, dtype=torch.bool)
    for qb in range(n):
        cands = [kb for kb in range(qb, -1, -1) if lo[qb] <= hi[kb] and lo[kb] <= hi[qb]]  # most recent first
        full = [kb for kb in cands if kb < qb and lo[qb] == hi[kb] == lo[kb] == hi[qb]]
        partial = [kb for kb in cands if kb not in full]
        keep_full = full[:max(W - 1, 0)]
        keep_partial = partial[:max(W - len(full), 1)]
        for kb in keep_full:
            mask[qb * bs:(qb + 1) * bs, kb * bs:(kb + 1) * bs] = True
        for kb in keep_partial:
            for q in range(qb * bs, (qb + 1) * bs):
                for k in range(kb * bs, min((kb + 1) * bs, q + 1)):
                    mask[q, k] = docs[q] == docs[k]
    return mask


def random_docs(T, mean_len, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (T,), generator=g)
    ids[torch.rand(T, generator=g) < 1 / mean_len] = EOT
    ids[0] = EOT
    return ids


@pytest.mark.parametrize("T, mean_len, seed", [(1024, 150, 0), (1024, 600, 1), (768, 2000, 2)])
def test_block_masks_follow_the_spec(T, mean_len, seed):
    ids = random_docs(T, mean_len, seed)
    n = T // 128
    for W in [0, 1, 2, 3, n // 2, n, n + 5]:
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
    T = 1024
    ids = random_docs(T, mean_len, seed)
    docs = (ids == EOT).cumsum(0)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, T, 64, generator=g) for _ in range(3))
    n = T // 128
    windows = [1, 2, 3, n] + [27]  # 27 blocks: the record's largest window
    for sel, W in zip(tg.document_block_masks(ids, windows), windows):
        bm = BlockMask.from_kv_blocks(*sel, BLOCK_SIZE=128, mask_mod=tg.document_causal_mod(docs))
        want = compiled_flex(q, k, v, block_mask=bm, scale=tg.ATTN_SCALE)
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=tg.dense_attention_mask(ids, sel),
                                             scale=tg.ATTN_SCALE)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"window {W}")


def reference_loss(model, ids, targets, W, eval_mode):
    """The spec's forward written out directly, with the brute-force masks."""
    L = 16
    s = model.scalars.float()
    skip_w, lam, alam = s[:L], s[L:4 * L].view(L, 3), s[4 * L:].view(L, 2)
    rms = lambda t: F.rms_norm(t, (t.size(-1),))
    x = x00 = rms(model.embed1(ids)[None])
    x01 = rms(model.embed2(ids)[None])
    ves = [e(ids)[None] for e in model.value_embeds]
    masks = {w: brute_force_mask(ids, w) for w in (W, W // 2)}
    outs = []
    for i, block in enumerate(model.blocks):
        if i in (9, 10, 11):
            j = {9: 6, 10: 4, 11: 2}[i]
            x = x + skip_w[j] * outs[j]
        x = lam[i, 0] * x + lam[i, 1] * x00 + lam[i, 2] * x01
        if i != 7:
            a = block.attn
            w = a.qkvo_w
            H, D = a.num_heads, a.head_dim
            q, k, v = (F.linear(x, w[j]).view(1, len(ids), H, D) for j in range(3))
            q, k, v = model.rotary(rms(q)), model.rotary(rms(k)), rms(v)
            ve_i = i if i < 5 else (i - 11 if i >= 11 else None)
            v = alam[i, 0] * v + alam[i, 1] * ves[ve_i].view_as(v) if ve_i is not None else alam[i, 0] * v
            m = masks[W if i in (0, 4, 11, 15) else W // 2]
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=m, scale=0.12).transpose(1, 2)
            x = x + F.linear(y.reshape(1, len(ids), H * D), w[3])
        h = F.relu(F.linear(rms(x), block.mlp.fc_w)).square()
        x = x + F.linear(h, block.mlp.proj_w)
        outs.append(x)
    x = rms(x)[0]
    chunks = 4 if eval_mode else 1
    loss = 0
    for xc, tc in zip(x.chunk(chunks), targets.chunk(chunks)):
        z = F.linear(xc, model.lm_head_w.bfloat16()).float()
        z = 15 * z / torch.sqrt(z**2 + 225)
        loss = loss + F.cross_entropy(z, tc) / chunks
    return loss


@pytest.fixture(scope="module")
def perturbed_tiny_model():
    """A tiny model with noise on every parameter (the zero-initialised output projections and head
    included) and random scalars, so that every path of the forward counts."""
    torch.manual_seed(0)
    model = tg.build_model(tiny_args(), "dense")
    with torch.no_grad():
        for p in model.parameters():
            if p is model.scalars:
                p.copy_(torch.randn_like(p) * 0.5)
            else:
                p.add_(torch.randn_like(p.float()).to(p.dtype) * 0.02)
    return model


@pytest.mark.parametrize("eval_mode", [False, True])
def test_forward_matches_the_reference(perturbed_tiny_model, eval_mode):
    model = perturbed_tiny_model
    ids = random_docs(512, 200, 7).to(torch.int32)
    targets = random_docs(512, 200, 8)
    model.train(not eval_mode)
    W = torch.tensor(3, dtype=torch.int32)
    with torch.no_grad():
        got = model(ids, targets, W)
        want = reference_loss(model, ids.long(), targets, 3, eval_mode)
    model.train()
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)


def test_initial_loss_is_uniform_and_backward_reaches_every_parameter(perturbed_tiny_model):
    model = tg.build_model(tiny_args(), "dense")
    ids, targets = random_docs(512, 200, 9).to(torch.int32), random_docs(512, 200, 10)
    W = torch.tensor(2, dtype=torch.int32)
    # the lm head starts at zero: every logit is 0, the loss is log(50304)
    assert model(ids, targets, W).item() == pytest.approx(math.log(50304), abs=1e-5)
    perturbed_tiny_model(ids, targets, W).backward()
    for name, p in perturbed_tiny_model.named_parameters():
        assert p.grad is not None and p.grad.dtype == p.dtype and torch.isfinite(p.grad.float()).all(), name
        assert p.grad.any(), name
    perturbed_tiny_model.zero_grad(set_to_none=True)


def twin_models():
    """The perturbed tiny model with dense attention and the same weights with FlexAttention."""
    torch.manual_seed(0)
    dense = tg.build_model(tiny_args(), "dense")
    with torch.no_grad():
        for p in dense.parameters():
            p.copy_(torch.randn_like(p) * 0.5 if p is dense.scalars else p + torch.randn_like(p.float()).to(p.dtype) * 0.02)
    flex = tg.build_model(tiny_args(), "flex")
    flex.load_state_dict(dense.state_dict())
    return dense, flex


def test_flex_model_path_equals_dense_path():
    """The model's FlexAttention path (what runs on the GPU): BlockMask built inside forward, layouts,
    scale. Eager FlexAttention ignores the block selection, so the window here covers every block;
    windows are checked against compiled FlexAttention above, and for the whole model on the GPU."""
    dense, flex = twin_models()
    ids, targets = random_docs(1024, 300, 1).to(torch.int32), random_docs(1024, 300, 2)
    W = torch.tensor(1024 // 128, dtype=torch.int32)
    with torch.no_grad():
        torch.testing.assert_close(flex(ids, targets, W), dense(ids, targets, W), rtol=1e-4, atol=1e-4)


def test_model_compiles_to_one_graph_per_mode_across_every_window():
    """What the GPU compiles: the FlexAttention path traces with fullgraph=True (no graph breaks), and
    stepping through every window size of the record's schedule while switching between training and
    validation builds one graph per mode, never another. dynamo decides graphs and guards before any
    backend runs, so a counting backend sees what inductor would be given, in seconds."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    args = tiny_args(train_seq_len=256, val_seq_len=512, val_tokens=1024)
    # FlexAttention has no backward on CPU: parameters without grad let the training forward run eagerly
    model = tg.build_model(args, "flex").requires_grad_(False)
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=False, fullgraph=True, backend=counting_backend)
    record = tg.Hyperparameters()
    windows = sorted({tg.window_blocks(step, record) for step in range(record.num_iterations + 1)})
    assert len(windows) > 20  # the schedule's sizes, from one block up
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
