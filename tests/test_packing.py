"""Padding-free (packed) RM batches give the padded batches' rewards, loss and gradients (fp32)."""

import pytest
import torch
import torch.nn.functional as F
from test_reward_training import assert_same_training, fit_args, last_weights, read_metrics
from torch.testing import assert_close

from varirm.chat import load_tokenizer
from varirm.cli import cli_main
from varirm.errors import ConfigError
from varirm.loaders import collate_pairs
from varirm.objectives import bradley_terry_loss
from varirm.packing import VARLEN, collate_packed_pairs, varlen_sdpa_attention
from varirm.preference_data import PreferenceDataModule
from varirm.reward_model import load_reward_model

LENGTHS = [(7, 3), (2, 9), (5, 5), (1, 12)]  # (chosen, rejected) tokens: padding on both sides of a pair


def _pairs(g: torch.Generator) -> list[dict]:
    return [{"chosen_ids": torch.randint(5, 100, (c,), generator=g).tolist(),
             "rejected_ids": torch.randint(5, 100, (r,), generator=g).tolist(), "margin": float(i % 2)}
            for i, (c, r) in enumerate(LENGTHS)]


@pytest.mark.parametrize("lora_r", [0, 4])
def test_packed_rewards_loss_and_gradients_equal_the_padded_batch(tiny_model_dir, lora_r, monkeypatch):
    """The tiny model has grouped-query attention (4 heads, 2 key/value heads), like SmolLM2."""
    tok = load_tokenizer(tiny_model_dir)
    rm = load_reward_model(tiny_model_dir, tok, lora_r=lora_r).eval()
    examples = _pairs(torch.Generator().manual_seed(0))
    padded, packed = collate_pairs(examples, tok.pad_token_id), collate_packed_pairs(examples)
    assert packed["input_ids"].shape == (1, sum(c + r for c, r in LENGTHS))  # no pad token at all

    def loss_and_grads(rewards):
        chosen, rejected = rewards.chunk(2)
        loss = bradley_terry_loss(chosen, rejected, padded["margin"]).mean()
        rm.zero_grad()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in rm.named_parameters() if p.requires_grad}

    padded_rewards = rm(padded["input_ids"], padded["attention_mask"])
    seen = []  # query lengths of every SDPA call: the packed forward attends per sequence, never over T
    sdpa = F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append(q.shape[2])
        return sdpa(q, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(F, "scaled_dot_product_attention", spy)
        packed_rewards = rm(packed["input_ids"], seq_lens=packed["seq_lens"])
    layers = rm.base_model.config.num_hidden_layers
    assert sorted(seen) == sorted(packed["seq_lens"].tolist() * layers)
    assert rm.base_model.config._attn_implementation == VARLEN  # attention inside each sequence, not T x T
    assert_close(packed_rewards, padded_rewards, atol=1e-5, rtol=1e-5)
    loss_a, grads_a = loss_and_grads(rm(padded["input_ids"], padded["attention_mask"]))  # padded after the switch
    loss_b, grads_b = loss_and_grads(rm(packed["input_ids"], seq_lens=packed["seq_lens"]))
    assert_close(loss_b, loss_a, atol=1e-6, rtol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        assert_close(grads_b[name], grads_a[name], atol=1e-6, rtol=1e-4, msg=name)
    # the sequences really are kept apart: one sequence's reward does not move when another changes
    other = [dict(e) for e in examples]
    other[1]["chosen_ids"] = [9] * 4
    moved = rm(collate_packed_pairs(other)["input_ids"], seq_lens=collate_packed_pairs(other)["seq_lens"])
    assert_close(moved[[0, 2, 3, 4, 5, 6, 7]], packed_rewards[[0, 2, 3, 4, 5, 6, 7]].detach())
    assert not torch.isclose(moved[1], packed_rewards[1])


def test_packing_trains_as_the_padded_batches_do(tmp_path, tiny_model_dir, synthetic_dir):
    """`varirm fit` with data.init_args.packing: the same batches (same sampler), the same weights."""
    extra = ["--trainer.max_steps", "6", "--trainer.limit_val_batches", "2", "--data.init_args.batch_size", "8",
             "--trainer.log_every_n_steps", "1"]
    cli_main(fit_args(tmp_path / "padded", tiny_model_dir, synthetic_dir, *extra))
    cli_main(fit_args(tmp_path / "packed", tiny_model_dir, synthetic_dir, *extra, "--data.init_args.packing", "true"))
    assert_same_training(last_weights(tmp_path / "packed"), last_weights(tmp_path / "padded"), "packed vs padded")
    pad = {run: [float(r["train/pad_fraction"]) for r in read_metrics(tmp_path / run) if r.get("train/pad_fraction")]
           for run in ("packed", "padded")}
    assert pad["packed"] and max(pad["packed"]) == 0.0 and max(pad["padded"]) > 0.0  # packing took effect


def test_varlen_attention_is_causal_attention_within_each_sequence_with_grouped_queries():
    g = torch.Generator().manual_seed(0)
    lens = [3, 1, 5]
    q, k, v = torch.randn(1, 4, 9, 8, generator=g), torch.randn(1, 2, 9, 8, generator=g), torch.randn(1, 2, 9, 8,
                                                                                                         generator=g)
    cu = torch.tensor([0, 3, 4, 9], dtype=torch.int32)
    out, _ = varlen_sdpa_attention(torch.nn.Module(), q, k, v, None, cu_seq_lens_q=cu)  # (1, T, h, d)
    seq = torch.repeat_interleave(torch.arange(3), torch.tensor(lens))
    allowed = (seq[:, None] == seq[None, :]) & torch.ones(9, 9, dtype=torch.bool).tril()  # block-diagonal causal
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                              attn_mask=allowed)
    assert_close(out, expected.transpose(1, 2))
    with pytest.raises(NotImplementedError, match="sliding window"):
        varlen_sdpa_attention(torch.nn.Module(), q, k, v, None, cu_seq_lens_q=cu, sliding_window=4)


def test_a_malformed_packed_row_is_refused(tiny_model_dir):
    rm = load_reward_model(tiny_model_dir, load_tokenizer(tiny_model_dir))
    with pytest.raises(ValueError, match="non-empty sequences"):
        rm(torch.ones(1, 5, dtype=torch.long), seq_lens=torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="non-empty sequences"):
        rm(torch.ones(1, 3, dtype=torch.long), seq_lens=torch.tensor([3, 0]))


def test_packing_refuses_variance_groups(tiny_model_dir):
    with pytest.raises(ConfigError, match="packing packs preference pairs only"):
        PreferenceDataModule(tiny_model_dir, train="t.jsonl", packing=True, policy_samples="s.jsonl")
