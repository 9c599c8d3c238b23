"""The SAWA reference against hand-worked cases (SPEC §1).

Each case uses d = 1, q = 1 and scale = 1, so the key of frame j *is* its score x_j, and
v = identity (dv = T), so the output row *is* the attention row over frames. Expected weights are
written out from the softmax formula with math.exp, independently of the code under test.
"""

import math

import pytest
import torch

from mfdr_kernels import sawa_attention_map, sliding_adaptive_window_attention

W = 4  # window; half = 2


def softmax(scores):
    e = [math.exp(x) for x in scores]
    return [v / sum(e) for v in e]


def run(scores, start, *, levels=2, normalize="segment", q_len=1, k_len=None):
    T = len(scores)
    q = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    k = torch.tensor(scores, dtype=torch.float64).view(1, 1, T, 1)
    v = torch.eye(T, dtype=torch.float64).view(1, 1, T, T)
    out, level = sliding_adaptive_window_attention(
        q, k, v, window=W, levels=levels, normalize=normalize, scale=1.0, window_starts=[[start]],
        q_lens=[q_len], k_lens=[T if k_len is None else k_len], backend="reference", return_level=True)
    return out[0, 0, 0].tolist(), int(level[0, 0, 0])


def expect(T, pieces):
    """A row of T zeros with {frames: weights} filled in."""
    row = [0.0] * T
    for frames, weights in pieces:
        for j, w in zip(frames, weights):
            row[j] = w
    return row


def close(a, b):
    assert a == pytest.approx(b, abs=1e-12)


# Window start 6, T = 16: S0 = [6, 10), S1 = {4, 5, 10, 11}, S2 = {2, 3, 12, 13}.
S0, S1, S2 = [6, 7, 8, 9], [4, 5, 10, 11], [2, 3, 12, 13]


def scores_for(s0, s1, s2, T=16):
    x = [0.0] * T
    for frames, vals in ((S0, s0), (S1, s1), (S2, s2)):
        for j, val in zip(frames, vals):
            x[j] = val
    return x


def test_level0_one_key_point():
    # a0 = softmax([5, 0, 0, 0]): one weight above 1/4 < half = 2 -> no expansion
    row, level = run(scores_for([5, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]), 6)
    assert level == 0
    close(row, expect(16, [(S0, softmax([5, 0, 0, 0]))]))


def test_level1_when_expanded_window_is_peaked():
    # S0: two of four above 1/4 -> level 1; A1 weights: S0 as before, S1 = softmax([3,0,0,0]);
    # mean over A1 = 2/8 and only 2 + 1 = 3 < window = 4 weights above it -> stays at level 1
    row, level = run(scores_for([1, 1, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0]), 6)
    assert level == 1
    close(row, expect(16, [(S0, softmax([1, 1, 0, 0])), (S1, softmax([3, 0, 0, 0]))]))
    assert sum(row) == pytest.approx(2.0)  # one softmax per segment: the row sums to 2


def test_level2_segment():
    # S1 = softmax([1, 0, 1, 0]) puts two more above 2/8: c1 = 4 >= window -> level 2
    row, level = run(scores_for([1, 1, 0, 0], [1, 0, 1, 0], [0.5, 0, 0, 2]), 6)
    assert level == 2
    close(row, expect(16, [(S0, softmax([1, 1, 0, 0])), (S1, softmax([1, 0, 1, 0])),
                           (S2, softmax([0.5, 0, 0, 2]))]))
    assert sum(row) == pytest.approx(3.0)


def test_level2_joint():
    # joint: step 3 on one softmax over A1; e/(4e+4) ~ 0.18 > 1/8 for four frames -> level 2;
    # the output is one softmax over all twelve active frames
    x = scores_for([1, 1, 0, 0], [1, 0, 1, 0], [0.5, 0, 0, 2])
    row, level = run(x, 6, normalize="joint")
    assert level == 2
    frames = S0 + S1 + S2
    close(row, expect(16, [(frames, softmax([x[j] for j in frames]))]))
    assert sum(row) == pytest.approx(1.0)


def test_levels_cap():
    x = scores_for([1, 1, 0, 0], [1, 0, 1, 0], [0.5, 0, 0, 2])
    assert run(x, 6, levels=1)[1] == 1
    row, level = run(x, 6, levels=0)
    assert level == 0
    close(row, expect(16, [(S0, softmax([1, 1, 0, 0]))]))


def test_first_window_clips_left_halves():
    # start 0: S1 = {4, 5} (its left half [-2, 0) does not exist), S2 = {6, 7}
    x = [1, 1, 0, 0, 1, 0, 0.3, 0.1] + [0.0] * 8
    row, level = run(x, 0)
    # A1 = 6 frames, mean 2/6; S0 above it: e/(2e+2) = 0.366 (two), S1 = softmax([1, 0]): 0.73 (one) -> c1 = 3 < 4
    assert level == 1
    close(row, expect(16, [([0, 1, 2, 3], softmax([1, 1, 0, 0])), ([4, 5], softmax([1, 0]))]))


def test_second_window_partial_left_half():
    # start 2: S1 = {0, 1, 6, 7}; S2 = [-2, 0) u [8, 10) = {8, 9}
    x = [1, 0, 1, 1, 0, 0, 1, 0, 0.2, 0.7] + [0.0] * 6
    row, level = run(x, 2)
    assert level == 2
    close(row, expect(16, [([2, 3, 4, 5], softmax([1, 1, 0, 0])), ([0, 1, 6, 7], softmax([1, 0, 1, 0])),
                           ([8, 9], softmax([0.2, 0.7]))]))


def test_last_window_no_level2_when_s2_missing():
    # T = 8, start 2: S1 = {0, 1, 6, 7}, S2 = {} on both sides -> capped at level 1 despite c1 = 4
    x = [1, 0, 1, 1, 0, 0, 1, 0]
    row, level = run(x, 2)
    assert level == 1
    close(row, expect(8, [([2, 3, 4, 5], softmax([1, 1, 0, 0])), ([0, 1, 6, 7], softmax([1, 0, 1, 0]))]))


def test_window_clipped_by_k_len():
    # k_len = 8, start 6: S0 = {6, 7}; frames >= 8 are padding and must be ignored
    x = [0.0] * 6 + [2.0, 0.0] + [50.0] * 8
    row, level = run(x, 6, k_len=8)
    # S0 has 2 frames: at most one weight above 1/2 < half -> level 0
    assert level == 0
    close(row, expect(16, [([6, 7], softmax([2, 0]))]))


def test_window_past_k_len_and_padded_query_give_zero():
    x = [1.0] * 16
    row, level = run(x, 9, k_len=8)
    assert level == 0 and row == [0.0] * 16
    row, level = run(x, 0, q_len=0)
    assert level == 0 and row == [0.0] * 16


def test_attention_map_matches_output_rows():
    torch.manual_seed(1)
    q = torch.randn(2, 2, 7, 4, dtype=torch.float64)
    k = torch.randn(2, 2, 30, 4, dtype=torch.float64)
    v = torch.randn(2, 2, 30, 3, dtype=torch.float64)
    kw = dict(window=4, q_lens=[7, 5], k_lens=[30, 17])
    att, lvl = sawa_attention_map(q, k, return_level=True, **kw)
    out, lvl2 = sliding_adaptive_window_attention(q, k, v, backend="reference", return_level=True, **kw)
    torch.testing.assert_close(att @ v, out)
    assert torch.equal(lvl, lvl2)
    assert (att[1, :, 5:] == 0).all() and (att[1, ..., 17:] == 0).all()
    # each row sums to 1 + level in segment mode
    sums = att.sum(-1)
    valid = torch.tensor([[True] * 7, [True] * 5 + [False] * 2]).unsqueeze(1).expand(2, 2, 7)
    torch.testing.assert_close(sums[valid], (1 + lvl[valid]).double())
