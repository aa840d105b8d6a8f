"""Attention rollout against a hand-worked example, its invariants, and on a recorded stack."""

import pytest
import torch

from attnzoo.maps.rollout import attention_rollout
from attnzoo.record import AttentionMap


def test_two_layer_two_token_example_by_hand():
    # Layer 1, two heads over two tokens (rows: queries). Head means, entry by entry:
    h1 = [[1.0, 0.0], [0.5, 0.5]]
    h2 = [[0.0, 1.0], [0.25, 0.75]]
    a1 = [[(h1[i][j] + h2[i][j]) / 2 for j in range(2)] for i in range(2)]  # [[.5, .5], [.375, .625]]
    # Layer 2: token 0 fully masked (a zero row, as attnzoo returns for such rows).
    g1 = [[0.0, 0.0], [1.0, 0.0]]
    g2 = [[0.0, 0.0], [0.5, 0.5]]
    a2 = [[(g1[i][j] + g2[i][j]) / 2 for j in range(2)] for i in range(2)]  # [[0, 0], [.75, .25]]

    def with_residual(a):  # 0.5·A + 0.5·I, then each row divided by its sum
        m = [[0.5 * a[i][j] + (0.5 if i == j else 0.0) for j in range(2)] for i in range(2)]
        return [[m[i][j] / sum(m[i]) for j in range(2)] for i in range(2)]

    r1, r2 = with_residual(a1), with_residual(a2)
    assert r2[0] == [1.0, 0.0]  # the zero row became the identity's row
    want = [[sum(r2[i][k] * r1[k][j] for k in range(2)) for j in range(2)] for i in range(2)]  # r2 · r1

    layers = [torch.tensor([h1, h2], dtype=torch.float64), torch.tensor([g1, g2], dtype=torch.float64)]  # (H, L, L)
    got = attention_rollout(layers)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-15)
    maps = [AttentionMap(f"layer.{i}", "attention", "X", 0, t[None]) for i, t in enumerate(layers)]  # (1, H, L, L)
    torch.testing.assert_close(attention_rollout(maps)[0], got, rtol=0, atol=0)
    averaged = [t.mean(0) for t in layers]
    torch.testing.assert_close(attention_rollout(averaged, average_heads=False), got, rtol=0, atol=0)


def test_invariants_rows_sum_to_one_residual_extremes():
    torch.manual_seed(0)
    layers = [torch.softmax(torch.randn(2, 3, 5, 5, dtype=torch.float64), -1) for _ in range(3)]  # (B, H, L, L)
    r = attention_rollout(layers)
    assert r.shape == (2, 5, 5)
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 5, dtype=torch.float64))
    torch.testing.assert_close(attention_rollout(layers, residual=1.0), torch.eye(5, dtype=torch.float64).expand(2, 5, 5))
    plain = [a.mean(1) for a in layers]
    torch.testing.assert_close(attention_rollout(layers, residual=0.0), plain[2] @ plain[1] @ plain[0])


def test_bad_arguments():
    a = torch.rand(2, 4, 4)
    with pytest.raises(ValueError, match="residual must be a float in \\[0, 1\\], got 1.5"):
        attention_rollout([a], residual=1.5)
    with pytest.raises(TypeError, match="layers must be an AttentionRecorder or a non-empty sequence"):
        attention_rollout(a)
    with pytest.raises(TypeError, match="layers must be an AttentionRecorder or a non-empty sequence"):
        attention_rollout([])
    with pytest.raises(ValueError, match=r"layers\[1\] must have shape \(\*, H, L, L\).*got \(2, 4, 3\)"):
        attention_rollout([a, torch.rand(2, 4, 3)])
    with pytest.raises(TypeError, match=r"layers\[0\] must be a floating-point tensor"):
        attention_rollout([torch.ones(2, 4, 4, dtype=torch.long)])


def test_takes_a_recorder_of_one_forward_pass():
    transformers = pytest.importorskip("transformers")
    import attnzoo as az

    torch.manual_seed(1)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=32, max_position_embeddings=16)
    bert = transformers.BertModel(cfg).eval()
    ids = torch.randint(1, 50, (2, 7))
    with az.AttentionRecorder(bert) as rec:
        bert(ids)
    names = [f"encoder.layer.{i}.attention.self" for i in range(3)]
    assert rec.names == names
    # the float64 formula, written out: head mean, half identity, rows renormalised, later layers on the left
    want = torch.eye(7, dtype=torch.float64)
    for name in names:
        a = rec[name][0].double().mean(1)  # (B, L, L)
        a = 0.5 * a + 0.5 * torch.eye(7, dtype=torch.float64)
        want = (a / a.sum(-1, keepdim=True)) @ want
    got = attention_rollout(rec)
    assert got.shape == (2, 7, 7)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)
    with az.AttentionRecorder(bert, average_heads=True) as avg:
        bert(ids)
    torch.testing.assert_close(attention_rollout(avg, average_heads=False), got, rtol=0, atol=1e-6)
    with az.AttentionRecorder(bert) as twice:
        bert(ids)
        bert(ids)
    with pytest.raises(ValueError, match=r"layers \(a recorder\) must hold one forward pass, one record per module; "
                                         r"'encoder.layer.0.attention.self' was recorded 2 times"):
        attention_rollout(twice)
    torch.testing.assert_close(attention_rollout([m for m in twice.maps if m.call == 1]), got, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"layers \(a recorder\) holds no attention record"):
        attention_rollout(az.AttentionRecorder(bert))
