"""The DFC reference against hand-worked cases (SPEC §2), values and gradients written out by hand."""

import pytest
import torch

from mfdr_kernels import dynamic_frame_conv
from mfdr_kernels.dfc.reference import dfc_reference, num_frames

F64 = torch.float64


@pytest.mark.parametrize("L, frame, hop, N", [(5, 3, 2, 2), (50, 3, 2, 24), (24, 3, 3, 8), (3, 3, 1, 1),
                                              (4, 3, 2, 1), (11, 2, 4, 3), (7, 1, 1, 7)])
def test_num_frames_is_eq7(L, frame, hop, N):
    assert num_frames(L, frame, hop) == N


def test_hand_worked_shared_kernel():
    # x = 1..5 (one channel), frames of 3 rows with hop 2: rows {0,1,2} and {2,3,4} (row 2 in both)
    x = torch.tensor([1.0, 2, 3, 4, 5], dtype=F64).view(1, 5, 1).requires_grad_()
    kernel = torch.tensor([[1.0, 0, -1], [0.5, 0.5, 0.5]], dtype=F64).view(2, 3, 1).requires_grad_()
    bias = torch.tensor([10.0], dtype=F64, requires_grad=True)
    y = dynamic_frame_conv(x, kernel, frame=3, hop=2, bias=bias, backend="reference")
    # frame 0: 1*1 + 0*2 - 1*3 = -2; frame 1: 0.5 * (3 + 4 + 5) = 6; + bias 10
    assert y.flatten().tolist() == [8.0, 16.0]
    gy = torch.tensor([1.0, 2.0], dtype=F64).view(1, 2, 1)
    dx, dk, db = torch.autograd.grad(y, (x, kernel, bias), gy)
    # dx[l] = Σ over the frames holding row l of gy[n] * kernel[n, j];
    # row 2 is element j=2 of frame 0 and element j=0 of frame 1
    assert dx.flatten().tolist() == [1.0, 0.0, -1.0 + 2 * 0.5, 2 * 0.5, 2 * 0.5]
    # dkernel[n, j] = gy[n] * x[n*hop + j]
    assert dk.flatten().tolist() == [1.0, 2.0, 3.0, 6.0, 8.0, 10.0]
    assert db.tolist() == [3.0]


def test_hand_worked_per_sample_kernel_and_frame_bias():
    # two samples, two channels, hop 3 > frame 2: rows 2 and 5 belong to no frame
    x = torch.arange(2 * 7 * 2, dtype=F64).view(2, 7, 2)
    kernel = torch.zeros(2, 2, 2, 2, dtype=F64)  # (B, N, frame, C)
    kernel[0, :, 0, :] = 1.0  # sample 0: first row of each frame
    kernel[1, :, 1, :] = -1.0  # sample 1: minus the second row
    bias = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=F64)  # (N, C)
    y = dfc_reference(x, kernel, bias, frame=2, hop=3)
    # sample 0: frames start at rows 0 and 3 -> x[0, 0], x[0, 3]
    assert y[0].tolist() == [[0.0, 2.0], [8.0, 10.0]]
    # sample 1 (x[1, l, c] = 14 + 2l + c): minus rows 1 and 4 -> -(16, 17), -(22, 23)
    assert y[1].tolist() == [[-16.0, -16.0], [-20.0, -20.0]]


def test_shared_kernel_is_the_broadcast_per_sample_kernel():
    x = torch.randn(3, 10, 4, dtype=F64)
    kernel = torch.randn(4, 3, 4, dtype=F64)
    shared = dfc_reference(x, kernel, frame=3, hop=2)
    per_sample = dfc_reference(x, kernel.expand(3, -1, -1, -1), frame=3, hop=2)
    assert torch.equal(shared, per_sample)


def test_average_kernel_is_average_pooling():
    # Φ = 1/frame everywhere is avg-pooling: the "model-agnostic" baseline of the paper's Table 3
    x = torch.randn(2, 11, 5, dtype=F64)
    kernel = torch.full((5, 3, 5), 1 / 3, dtype=F64)  # N = (11 - 3) // 2 + 1 = 5
    y = dfc_reference(x, kernel, frame=3, hop=2)
    expected = torch.nn.functional.avg_pool1d(x.transpose(1, 2), 3, 2).transpose(1, 2)
    torch.testing.assert_close(y, expected)
