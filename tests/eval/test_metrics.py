import numpy as np
import pytest

from nnslim.eval import metrics


def test_accuracy_known():
    logits = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float32)
    assert metrics.accuracy(logits, np.array([0, 1, 1, 1])) == 0.75
    with pytest.raises(ValueError, match="rows"):
        metrics.accuracy(logits, np.array([0, 1]))


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200).astype(float)
    b = a + rng.normal(0, 1, 200)
    assert metrics.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert metrics.spearman(a, -a) == pytest.approx(-1.0)


def test_embedding_fidelity_identity_and_known_rotation():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(30, 8))
    m = metrics.embedding_fidelity(ref, ref.copy())
    assert m == {"cos_mean": pytest.approx(1.0), "cos_min": pytest.approx(1.0),
                 "spearman": pytest.approx(1.0), "top10_overlap": 1.0}
    # An orthogonal rotation keeps every pairwise similarity: spearman/top-k stay 1, cosine drops.
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    m = metrics.embedding_fidelity(ref, ref @ q)
    assert m["spearman"] == pytest.approx(1.0) and m["top10_overlap"] == 1.0 and m["cos_mean"] < 0.9
    # cosine of a known pair
    m = metrics.embedding_fidelity(np.array([[1.0, 0], [0, 1], [1, 1]]), np.array([[1.0, 1], [0, 1], [1, 1]]))
    assert m["cos_min"] == pytest.approx(np.sqrt(0.5))


def test_topk_overlap_known():
    ref = np.array([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
    assert metrics.topk_overlap(ref, ref, k=1) == 1.0
    swapped = ref[:, ::-1].copy()  # mirroring keeps neighbours
    assert metrics.topk_overlap(ref, swapped, k=1) == 1.0
    scrambled = np.array([[1.0, 0], [0, 1], [0.9, 0.1], [0.1, 0.9]])
    assert metrics.topk_overlap(ref, scrambled, k=1) == 0.0


def test_perplexity_of_uniform_logits_is_vocab_size():
    ids = np.array([[1, 2, 3, 4, 5]])
    nll, n = metrics.token_nll(np.zeros((1, 5, 50)), ids)
    assert n == 4 and metrics.perplexity(nll, n) == pytest.approx(50.0)
    logits = np.full((1, 5, 50), -30.0)
    for t in range(4):
        logits[0, t, ids[0, t + 1]] = 30.0
    nll, n = metrics.token_nll(logits, ids)
    assert metrics.perplexity(nll, n) == pytest.approx(1.0, abs=1e-6)


def test_sequence_agreement_and_output_fidelity():
    assert metrics.sequence_agreement([[1, 2, 3, 4]], [[1, 2, 9, 4]]) == 0.75
    out = metrics.output_fidelity(np.ones((2, 3)), np.ones((2, 3)) * 2)
    assert out["output_cos_min"] == pytest.approx(1.0) and out["max_abs_err"] == 1.0


def test_token_nll_in_float32_matches_the_float64_computation():
    """Perplexity's per-token log-softmax runs in float32 (torch's logsumexp) and is summed in float64: it
    matches the float64 computation over a 30k-word vocabulary to 1e-6 relative."""
    import numpy as np

    from nnslim.eval.metrics import token_nll

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((2, 64, 30522)) * 4).astype(np.float32)
    ids = rng.integers(0, 30522, (2, 64))
    got, count = token_nll(logits, ids)
    ref = logits.astype(np.float64)[:, :-1]
    m = ref.max(-1, keepdims=True)
    logz = (m + np.log(np.exp(ref - m).sum(-1, keepdims=True)))[..., 0]
    want = float((logz - np.take_along_axis(ref, ids[:, 1:, None], -1)[..., 0]).sum())
    assert count == 2 * 63 and abs(got - want) <= 1e-6 * abs(want)


def test_cosine_of_all_zero_rows():
    """Two all-zero rows are the same output (a random-init classifier with zero logits reported cos 0 for every
    compressed model that reproduced them exactly); an all-zero row against a non-zero one is 0."""
    from nnslim.eval.metrics import _rowwise_cosine

    a = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    b = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    np.testing.assert_allclose(_rowwise_cosine(a, b), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(_rowwise_cosine(a[1:2] * 1e-9, b[1:2] * 1e-9), [1.0])  # tiny, not zero
