import torch
from torch.testing import assert_close

from varirm.metrics import StdMetric, pairwise_metrics, update_pairwise


def test_std_metric_accumulates_population_std():
    m = StdMetric()
    m.update(torch.tensor([1.0, 2.0]))
    m.update(torch.tensor([3.0, 4.0]))
    assert_close(m.compute(), torch.tensor(1.118034))  # sqrt(mean([2.25, .25, .25, 2.25]))


def test_pairwise_metrics_by_hand_ties_count_as_wrong():
    metrics = pairwise_metrics("val/")
    update_pairwise(metrics, torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0]))
    update_pairwise(metrics, torch.tensor([5.0]), torch.tensor([1.0]))
    out = metrics.compute()
    assert_close(out["val/acc"], torch.tensor(0.5))  # 1, tie, wrong, 1
    assert_close(out["val/margin"], torch.tensor(1.0))  # (1 + 0 - 1 + 4) / 4
    values = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 5.0, 1.0])
    assert_close(out["val/reward_mean"], values.mean())
    assert_close(out["val/reward_std"], values.std(unbiased=False))
