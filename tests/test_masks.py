"""SPEC §5: the mask function of layout.py equals the pairwise rule it replaced, on random layouts and on random
token groups in any order, and works as a FlexAttention mask_mod."""

import random

import pytest
import torch

from lm_eval_parallel.layout import Layout, TokenGroups, TokenKind, may_attend

PREFIX_GROUP, QUERY_GROUP = -1, -2  # the group numbers of the pairwise rule; a piece was its id


def pairwise_may_attend(q_group: int, q_index: int, k_group: int, k_index: int) -> bool:
    """The previous definition, kept as the oracle: groups -1 prefix, i >= 0 piece i, -2 query."""
    if k_index > q_index:
        return False
    if q_group == QUERY_GROUP or k_group == PREFIX_GROUP:
        return True
    return q_group == k_group


def _pairwise_groups(groups: TokenGroups) -> list[int]:
    number = {TokenKind.PREFIX: PREFIX_GROUP, TokenKind.QUERY: QUERY_GROUP}
    return [number.get(TokenKind(k), p) for k, p in zip(groups.kind.tolist(), groups.piece.tolist())]


def _oracle(groups: TokenGroups) -> torch.Tensor:
    g = _pairwise_groups(groups)
    n = len(g)
    rows = [[pairwise_may_attend(g[i], i, g[j], j) for j in range(n)] for i in range(n)]
    return torch.tensor(rows, dtype=torch.bool).reshape(n, n)


def _dense(groups: TokenGroups) -> torch.Tensor:
    idx = torch.arange(len(groups.kind))
    return may_attend(groups)(0, 0, idx[:, None], idx[None, :])


def _random_layout(rng: random.Random, with_prefix: bool, max_pieces: int, max_len: int) -> Layout:
    prefix = tuple(range(rng.randint(1, 4))) if with_prefix else ()
    pieces = tuple(tuple(range(rng.randint(0, max_len))) for _ in range(rng.randint(1, max_pieces)))
    return Layout(prefix, pieces)


@pytest.mark.parametrize("with_prefix", (True, False))
@pytest.mark.parametrize("seed", range(6))
def test_mask_equals_pairwise_rule_on_random_layouts(seed, with_prefix):
    rng = random.Random(seed)
    for max_pieces, max_len in ((1, 5), (3, 4), (8, 6), (16, 3)):
        layout = _random_layout(rng, with_prefix, max_pieces, max_len)
        groups = layout.token_groups(n_query=rng.randint(0, 5))
        mask = _dense(groups)
        assert mask.dtype == torch.bool and mask.shape == (len(groups.kind),) * 2
        assert torch.equal(mask, _oracle(groups)), (seed, layout)


@pytest.mark.parametrize("seed", range(4))
def test_mask_equals_pairwise_rule_on_groups_in_any_order(seed):
    """Every (row group, key group) combination, also orders a layout never produces (a piece after the query)."""
    gen = torch.Generator().manual_seed(seed)
    for n in (1, 7, 40):
        kind = torch.randint(0, 3, (n,), generator=gen)
        piece = torch.randint(0, 4, (n,), generator=gen)
        groups = TokenGroups(kind, piece)
        assert torch.equal(_dense(groups), _oracle(groups)), (seed, n)


def test_mask_broadcasts_and_indexes_scalars():
    groups = Layout((5,), ((1, 2), (3,))).token_groups(n_query=2)
    mask = may_attend(groups)
    rows = torch.tensor([3, 5])[:, None]  # a piece-1 row and the last query row
    assert mask(0, 0, rows, torch.arange(6)[None, :]).tolist() == [
        [True, False, False, True, False, False],
        [True, True, True, True, True, True],
    ]
    assert mask(0, 0, torch.tensor(2), torch.tensor(1)).item() is True  # causal inside piece 0
    assert mask(0, 0, torch.tensor(1), torch.tensor(2)).item() is False


def test_mask_is_a_flex_attention_mask_mod():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    layout = _random_layout(random.Random(7), True, 5, 6)
    groups = layout.token_groups(n_query=3)
    n = len(groups.kind)
    dense = flex.create_mask(may_attend(groups), 1, 1, n, n, device="cpu")  # evaluated under vmap
    assert torch.equal(dense[0, 0], _oracle(groups))
