"""Effective rank (uncentred and centred) and the Wilson interval reported for held-out accuracy."""
import pytest
import torch

from jrm_engine.metrics import centred_effective_rank, effective_rank, wilson_interval


def test_centring_removes_the_mean_direction():
    torch.manual_seed(0)
    # A large shared mean plus variation spread evenly over 3 directions: the mean dominates the uncentred rank.
    basis = torch.linalg.qr(torch.randn(16, 16))[0]
    codes = torch.randn(4000, 3)
    features = 50.0 * basis[0] + codes @ basis[1:4]
    assert effective_rank(features) < 1.1
    assert centred_effective_rank(features) == pytest.approx(3.0, abs=0.05)
    assert centred_effective_rank(features - features.mean(0)) == pytest.approx(3.0, abs=0.05)


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), pytest.approx(1.0))
    # 2,048 pairs give about +/- 1.6 points at 85%
    low, high = wilson_interval(1741, 2048)
    assert 0.83 < low < 0.85 < high < 0.87 and high - low == pytest.approx(0.031, abs=0.002)


def test_wilson_interval_refuses_an_empty_sample():
    with pytest.raises(ValueError, match="total > 0"):
        wilson_interval(0, 0)
