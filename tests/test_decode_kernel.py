"""decode_kernel (Triton; without a GPU, Triton's interpreter runs it on CPU tensors) against a dense float64
reference, and the engine's decode steps through it against the eager path: same generations and entropies
(fp32: 1e-5; on a GPU the products run in IEEE fp32, not TF32)."""

import pytest
import torch

from lm_eval_parallel import attention, decode_kernel
from lm_eval_parallel.attention import QueryMasks, QueryPlan

pytest.importorskip("triton")


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class _Store:  # what QueryPlan reads of a store here: nothing
    pass


def _masks(visible: torch.Tensor, q_valid: torch.Tensor) -> QueryMasks:
    b, _, n_k = visible.shape
    none = torch.zeros(b, n_k, dtype=torch.long)
    return QueryMasks(
        key_valid=visible[:, 0],
        group_index=none,
        piece_index=torch.full((b, 1, 1), -1),
        n_pieces=torch.zeros(b, dtype=torch.long),
        visible=visible,
        q_valid=q_valid,
        n_valid_rows=q_valid.float().sum(-1),
    )


@pytest.mark.parametrize(
    "b,h,hkv,n_k,d", [(2, 9, 3, 200, 64), (3, 4, 4, 65, 16), (1, 8, 2, 1000, 32), (2, 2, 1, 7, 16)]
)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=("fp32", "bf16"))
def test_decode_kernel_equals_the_dense_softmax(b, h, hkv, n_k, d, dtype, tol):
    """Against float64 on the same (rounded) inputs; bf16: the probabilities are rounded to bf16 before their
    product with the values (as the eager path does), 2e-2."""
    if dtype == torch.bfloat16 and DEVICE == "cpu":
        pytest.skip("Triton's interpreter has no bfloat16 arithmetic")
    gen = torch.Generator().manual_seed(b * 100 + n_k)
    q = torch.randn(b, h, 1, d, generator=gen).to(dtype)
    cap = n_k + 5  # the store's buffers are longer than the keys so far: strided views
    k = torch.randn(b, hkv, cap, d, generator=gen).to(dtype)[:, :, :n_k]
    v = torch.randn(b, hkv, cap, d, generator=gen).to(dtype)[:, :, :n_k]
    visible = torch.rand(b, 1, n_k, generator=gen) > 0.4
    visible[:, :, -1] = True  # the step's own key
    q_valid = torch.ones(b, 1, dtype=torch.bool)
    q_valid[-1] = b == 1  # a row that has finished (when there are several)
    plan = QueryPlan(_Store(), q_valid.to(DEVICE), want_stats=True)
    masks = _masks(visible.to(DEVICE), q_valid.to(DEVICE))
    got = decode_kernel.decode_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), plan, masks, d**-0.5)
    got = got._replace(out=got.out.cpu())
    stats_sum, stats_rows = got.stats.entropy_sum.cpu(), got.stats.rows.cpu()

    g = h // hkv
    kr, vr = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    scores = (q.double() @ kr.transpose(-1, -2)) * d**-0.5  # [B, H, 1, K]
    p = scores.masked_fill(~visible[:, None], float("-inf")).softmax(-1)
    torch.testing.assert_close(got.out.transpose(1, 2).double(), p @ vr, rtol=tol, atol=tol)
    entropy = (-torch.xlogy(p, p).sum(-1)[..., 0] * q_valid.double()).sum(1)  # [B]
    torch.testing.assert_close(stats_sum.double(), entropy, rtol=tol, atol=tol / 10)
    assert torch.equal(stats_rows, q_valid.float().sum(-1) * h)


def test_a_row_that_sees_no_key_gets_zeros():
    q, k = torch.randn(1, 2, 1, 16, device=DEVICE), torch.randn(1, 1, 70, 16, device=DEVICE)
    visible = torch.zeros(1, 1, 70, dtype=torch.bool, device=DEVICE)
    q_valid = torch.ones(1, 1, dtype=torch.bool, device=DEVICE)
    plan = QueryPlan(_Store(), q_valid, want_stats=True)
    got = decode_kernel.decode_attention(q, k, k, plan, _masks(visible, q_valid), 0.25)
    assert torch.equal(got.out.cpu(), torch.zeros(1, 1, 2, 16)) and got.stats.entropy_sum.item() == 0.0


@pytest.mark.parametrize("n_k", [1, 63, 64, 65, 8704, 100_000])
@pytest.mark.parametrize("programs", [1, 192, 5000])
def test_splits_cover_every_key_once(n_k, programs):
    per_split, n_splits = decode_kernel.split_keys(n_k, programs)
    assert per_split % decode_kernel.BLOCK_N == 0
    assert (n_splits - 1) * per_split < n_k <= n_splits * per_split


def test_applies_to_single_rows_of_power_of_two_heads():
    k = torch.zeros(1, 1, 8, 64)
    assert decode_kernel.applies(torch.zeros(1, 2, 1, 64), k)
    assert not decode_kernel.applies(torch.zeros(1, 2, 2, 64), k)  # two rows: a query forward
    assert not decode_kernel.applies(torch.zeros(1, 2, 1, 80), torch.zeros(1, 1, 8, 80))
    assert decode_kernel.applies(torch.zeros(1, 2, 1, 8), k)  # the interpreter takes any power of two
    assert not decode_kernel.applies(torch.zeros(1, 2, 1, 64, dtype=torch.float64), k)


@pytest.mark.parametrize(
    "family,args",
    [
        ("llama", dict(method="naive", P=3)),
        ("llama", dict(method="full", P=1, entropy=False)),
        ("qwen2", dict(method="sink", P=3)),
        ("phi3", dict(method="naive", P=3, entropy_pool="calls")),
    ],
)
@pytest.mark.skipif(DEVICE == "cuda", reason="head size 8: the GPU kernel needs 16 (the engine test below runs)")
def test_decode_steps_through_the_kernel_equal_the_eager_ones(tiny_dirs, family, args, monkeypatch):
    """DECODE_KERNEL_DEVICES, forced on the CPU: static and dynamic decode steps give the eager path's tokens and
    entropies; a selection keeps the eager path."""
    from test_decode import CONTEXTS, KW, assert_same, generate

    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_dirs[family], batch_size=3, **args, **KW)
    eager = {mode: generate(lm, mode, max_gen_toks=6) for mode in ("static", "dynamic")}
    calls = []
    monkeypatch.setattr(attention, "DECODE_KERNEL_DEVICES", frozenset({"cpu"}))
    monkeypatch.setattr(
        decode_kernel, "decode_attention", lambda *a, f=decode_kernel.decode_attention: calls.append(1) or f(*a)
    )
    for mode in ("static", "dynamic"):
        assert_same(generate(lm, mode, max_gen_toks=6), eager[mode])
    assert calls
    calls.clear()
    sel = ParallelHFLM(pretrained=tiny_dirs[family], method="sink+sel", P=4, top_k=1, batch_size=3, **KW)
    generate(sel, "static", max_gen_toks=3)
    assert not calls and len(CONTEXTS) == 3


@pytest.mark.parametrize("mode", ["static", "dynamic", "graph"])
def test_engine_decode_through_the_kernel_equals_eager(mode, monkeypatch):
    """A model with 16-dimensional heads (the GPU's smallest) on this machine's device: the decode steps of
    ``ParallelEngine.generate`` through the kernel give the eager tokens and entropies (CUDA graphs on a GPU)."""
    from tiny_models import pce_model

    from lm_eval_parallel.engine import ParallelEngine
    from lm_eval_parallel.layout import Layout

    if mode == "graph" and DEVICE != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    model = pce_model("llama", 384, seed=3)
    model.config.head_dim = 16
    model = type(model)(model.config).eval()  # re-built with the 16-dimensional heads
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(8.0)
    model.set_attn_implementation("pce")
    model = model.to(DEVICE)
    layouts = [Layout((0, 5), ((7, 8, 9, 10, 11), (12, 13, 14))), Layout((0,), ((30, 31), (32, 33, 34), (35,)))]

    def run():
        engine = ParallelEngine(model, DEVICE, want_stats=True, decode=mode)
        contexts = [engine.encode(layout, reserve=12) for layout in layouts]
        return engine.generate(contexts, [[40, 41], [42]], 8, None, lambda b, t: False, set())

    eager = run()
    monkeypatch.setattr(attention, "DECODE_KERNEL_DEVICES", frozenset({DEVICE}))
    calls = []
    monkeypatch.setattr(
        decode_kernel, "decode_attention", lambda *a, f=decode_kernel.decode_attention: calls.append(1) or f(*a)
    )
    got = run()
    assert calls
    for (tokens, stats), (want_tokens, want_stats) in zip(got, eager):
        assert tokens == want_tokens
        assert stats.entropy_sum == pytest.approx(want_stats.entropy_sum, rel=1e-5)
