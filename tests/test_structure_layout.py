"""SPEC §1 (markers), §3 (pieces) and §6 (positions) as pure functions."""

import pytest
import torch

from lm_eval_parallel import parallel_prompt, plain_prompt, split_prompt
from lm_eval_parallel.layout import (
    Layout,
    TokenKind,
    group_items,
    layout_positions,
    may_attend,
    piece_positions,
)


def test_roundtrip_and_plain_prompt():
    items = ["Doc A.\n\n", "Doc B.\n\n", "Doc C.\n\n"]
    text = parallel_prompt(items, "Question?", sink="Sink:\n")
    assert split_prompt(text) == (items, "Question?", "Sink:\n")
    assert plain_prompt(text) == "".join(items) + "Question?"
    assert split_prompt("no markers here") is None
    assert plain_prompt("no markers here") == "no markers here"


def test_preamble_is_kept_in_plain_prompt():
    text = "<|user|>\n" + parallel_prompt(["a ", "b "], "q")
    parts = split_prompt(text)
    assert parts == (["a ", "b "], "q", None)
    assert parts.preamble == "<|user|>\n"
    assert plain_prompt(text) == "<|user|>\na b q"


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("\ue002a\ue002b", "exactly one query"),
        ("\ue002a\ue003q\ue003r", "exactly one query"),
        ("\ue000sink\ue002a\ue003q", "never closed"),
        ("\ue002a\ue003q\ue002b", "query must come last"),
        ("\ue002a\ue000s\ue001\ue003q", "sink must come first"),
        ("\ue000s\ue001junk\ue002a\ue003q", "between the sink"),
        ("\ue000s\ue001\ue003q", "first item marker"),
    ],
)
def test_malformed_markers_raise(bad, reason):
    with pytest.raises(ValueError, match=reason):
        split_prompt(bad)


def test_parallel_prompt_rejects_bad_input():
    with pytest.raises(ValueError, match="items is empty"):
        parallel_prompt([], "q")
    with pytest.raises(ValueError, match="already contains a structure marker"):
        parallel_prompt(["a\ue002"], "q")
    with pytest.raises(TypeError, match="list of str"):
        parallel_prompt("abc", "q")


def test_group_items_follows_prepare_inst():
    assert group_items(list("abcdefg"), 3) == [list("abc"), list("de"), list("fg")]
    assert group_items(list("ab"), 5) == [["a"], ["b"]]  # P > n: one item per piece
    assert group_items(list("abcd"), 1) == [list("abcd")]


def test_positions_follow_spec():
    s, lengths = 2, [4, 2]
    even, q = piece_positions(s, lengths, "even", "none")
    assert even == [[2, 3, 4, 5], [2, 4]] and q == 6  # s + j*M/L_i, query at s + M
    left, _ = piece_positions(s, lengths, "left", "none")
    assert left == [[2, 3, 4, 5], [2, 3]]
    right, _ = piece_positions(s, lengths, "right", "none")
    assert right == [[2, 3, 4, 5], [4, 5]]
    harmonic, q = piece_positions(s, lengths, "harmonic", "none")
    h = 2 / (1 / 4 + 1 / 2)
    assert harmonic[1] == pytest.approx([2, 2 + h / 2]) and q == pytest.approx(2 + h)
    serial, q = piece_positions(s, lengths, "serial", "none")
    assert serial == [[2, 3, 4, 5], [6, 7]] and q == 8
    floored, _ = piece_positions(0, [4, 3], "even", "floor")
    assert floored == [[0, 1, 2, 3], [0, 1, 2]]  # 4/3 steps floored: 0, 1.33, 2.67
    unrounded, _ = piece_positions(0, [4, 3], "even", "none")
    assert unrounded[1] == pytest.approx([0, 4 / 3, 8 / 3])


def test_layout_positions_and_mask_predicate():
    layout = Layout((7, 8), ((1, 2, 3), (4,)))
    flat, q0 = layout_positions(layout, "even", "none")
    assert flat == [0, 1, 2, 3, 4, 2] and q0 == 5
    groups = layout.token_groups(n_query=1)
    assert groups.kind.tolist() == [TokenKind.PREFIX] * 2 + [TokenKind.PIECE] * 4 + [TokenKind.QUERY]
    assert groups.piece[2:6].tolist() == [0, 0, 0, 1]
    mask = may_attend(groups)
    assert mask(0, 0, torch.tensor(5), torch.tensor(0))  # piece -> prefix
    assert not mask(0, 0, torch.tensor(5), torch.tensor(3))  # piece 1 never sees piece 0
    assert mask(0, 0, torch.tensor(6), torch.tensor(3))  # query sees every piece
    assert not mask(0, 0, torch.tensor(2), torch.tensor(3))  # causal inside a piece
