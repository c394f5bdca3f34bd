import pytest
import torch

from varirm.diagnostics import render_markdown, world_diagnostics

FRACTIONS = {"on0": 0.0, "on50": 0.5, "on100": 1.0}


def _runs(var0=(0.30, 0.34), var1=(0.90, 0.86), mid=(0.6, 0.6), off0=(0.9, 0.92), off1=(0.8, 0.81)):
    rows = []
    for name, var, off in (("on0", var0, off0), ("on50", mid, (0.85, 0.85)), ("on100", var1, off1)):
        rows += [{"name": name, "seed": s, "whitened_variance_mean": var[s], "on_policy_acc": 0.7,
                  "off_policy_acc": off[s]} for s in (0, 1)]
    return rows + [{"name": "gold", "seed": s, "gold_gain": g} for s, g in ((0, 0.50), (1, 0.52))]


def _gold(between: float) -> torch.Tensor:
    """64 prompts x 4 samples: within-prompt spread 1 around prompt levels spread ``between``."""
    torch.manual_seed(0)
    return between * torch.randn(64, 1) + torch.randn(64, 4)


def test_diagnostics_by_hand():
    diag = world_diagnostics(_runs(), FRACTIONS, _gold(1.0))
    assert diag["variance_ratio"]["estimate"] == pytest.approx(0.32 / 0.88)  # the module docstring's example
    # paired t interval over 2 seeds (delta method): residuals 0.30 - r 0.90, 0.34 - r 0.86 (r = 0.32 / 0.88),
    # half-width t_{0.975, 1} x sd / (sqrt(2) x 0.88)
    r = 0.32 / 0.88
    sd = abs((0.30 - r * 0.90) - (0.34 - r * 0.86)) / 2 ** 0.5
    half = 12.706 * sd / 2 ** 0.5 / 0.88
    ratio = diag["variance_ratio"]
    assert (ratio["lower"], ratio["upper"]) == pytest.approx((r - half, r + half))
    assert diag["off_policy_acc_difference"]["estimate"] == pytest.approx(0.105)
    verdicts = [c["verdict"] for c in diag["checks"]]
    # gold: half of the variance between prompts -> whitened within-prompt variance about 0.5
    assert 0.3 < diag["gold_whitened_variance"]["estimate"] < 0.7
    # two seeds: the ratio's t interval (up to 0.76) cannot exclude the 0.6 target; the rest pass
    assert verdicts[1:] == ["INCONCLUSIVE", "PASS", "PASS", "PASS"]
    text = render_markdown(diag)
    assert "| `on0` | 0% |" in text and "PASS: RLOO against gold raises the gold reward" in text


def test_diagnostics_miss_when_the_world_has_no_trade_off():
    # equal variances (ratio 1), the 100% RM more accurate off-policy, a mix outside the ends,
    # and gold with no between-prompt structure (whitened variance about 1)
    diag = world_diagnostics(_runs(var0=(0.9, 0.92), var1=(0.9, 0.9), mid=(0.2, 0.2), off0=(0.7, 0.71)),
                             FRACTIONS, _gold(0.0))
    assert [c["verdict"] for c in diag["checks"]] == ["MISS", "MISS", "MISS", "MISS", "PASS"]


def test_diagnostics_need_both_ends():
    with pytest.raises(ValueError, match="0% and a 100%"):
        world_diagnostics(_runs(), {"on0": 0.0, "on50": 0.5}, _gold(1.0))
