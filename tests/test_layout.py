"""to_nchw: the one layout converter, told the layout and never guessing it."""

import pytest
import torch
from timm.layers import Format, nchw_to

from medvit.models import to_nchw


@pytest.mark.parametrize("hw", [(4, 4), (3, 5), (6, 2)])
@pytest.mark.parametrize("fmt", ["NCHW", "NHWC", "NLC", "NCL"])
def test_round_trip_through_timm_nchw_to(fmt: str, hw: tuple[int, int]) -> None:
    x = torch.randn(2, 7, *hw)
    converted = nchw_to(x, Format(fmt))
    assert torch.equal(to_nchw(converted, fmt, hw=hw), x)


def test_nhwc_moves_channels_without_reading_the_shape() -> None:
    # (B, H, W, C) with H == C: a shape-based guess could not tell the layouts apart.
    x = torch.arange(2 * 3 * 5 * 3, dtype=torch.float32).reshape(2, 3, 5, 3)
    out = to_nchw(x, "NHWC")
    assert out.shape == (2, 3, 3, 5)
    assert out[1, 2, 0, 4] == x[1, 0, 4, 2]
    assert torch.equal(to_nchw(x, "NCHW"), x)


def test_nlc_is_row_major_tokens() -> None:
    height, width = 2, 3
    tokens = torch.arange(height * width, dtype=torch.float32).reshape(1, height * width, 1)
    grid = to_nchw(tokens, Format.NLC, hw=(height, width))
    assert grid.shape == (1, 1, height, width)
    assert grid[0, 0].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="hw="):
        to_nchw(torch.zeros(1, 6, 4), "NLC")
    with pytest.raises(ValueError, match="6 tokens|holds 6"):
        to_nchw(torch.zeros(1, 6, 4), "NLC", hw=(2, 2))
    with pytest.raises(ValueError, match="4 dimensions"):
        to_nchw(torch.zeros(1, 6, 4), "NHWC")
    with pytest.raises(ValueError, match="unknown layout"):
        to_nchw(torch.zeros(1, 2, 3, 4), "NWHC")
