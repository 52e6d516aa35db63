"""The engine's forward on the real teacher (all-MiniLM-L6-v2) against PyTorch/transformers.

The reference fixture was made once by tools/make_teacher_fixture.py; torch is not needed here."""
from pathlib import Path

import numpy as np
import pytest

from minitinybert.engine.teacher import resolve_teacher
from minitinybert.engine.weights import load_model

FIXTURE = Path(__file__).parent / "fixtures" / "teacher_reference.npz"


@pytest.fixture(scope="module")
def teacher():
    return load_model(resolve_teacher(None, log=lambda *a: None))


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURE))


@pytest.mark.parametrize("use_kernels", [True, False])
@pytest.mark.parametrize("name", ["single", "pair"])
def test_hidden_states_match_transformers(teacher, reference, name, use_kernels):
    teacher.ops = __import__("minitinybert.engine.kernels" if use_kernels else "minitinybert.engine.ops", fromlist=["x"])
    try:
        out = teacher.forward(reference[f"{name}_input_ids"], reference[f"{name}_token_type_ids"],
                              reference[f"{name}_attention_mask"])
    finally:
        teacher.ops = __import__("minitinybert.engine.kernels", fromlist=["x"])
    mask = reference[f"{name}_attention_mask"].astype(bool)
    expected = reference[f"{name}_hidden"]
    assert len(out.hidden_states) == expected.shape[0]
    for i, (got, want) in enumerate(zip(out.hidden_states, expected)):
        # padded positions carry no meaning (and differ between implementations); compare real tokens
        np.testing.assert_allclose(got[mask], want[mask], atol=1e-4, rtol=1e-4, err_msg=f"hidden state {i}")
    np.testing.assert_allclose(out.pooled, reference[f"{name}_pooled"], atol=1e-4)
    # the scores we expose are pre-softmax; their softmax must be transformers' attention probabilities
    scores = out.attention_scores[-1].astype(np.float64)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    want = reference[f"{name}_probs_last"]
    for b in range(mask.shape[0]):
        np.testing.assert_allclose(probs[b][:, mask[b]][:, :, mask[b]], want[b][:, mask[b]][:, :, mask[b]],
                                   atol=1e-5)


def test_sentence_embedding_cosine(teacher, reference):
    """sentence-transformers' recipe: mean pooling over real tokens, then L2 normalisation."""
    ids, mask = reference["single_input_ids"][:2], reference["single_attention_mask"][:2]
    out = teacher.forward(ids, None, mask)
    m = mask[..., None].astype(np.float32)
    emb = (out.hidden_states[-1] * m).sum(1) / m.sum(1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cosine = float(emb[0] @ emb[1])
    assert abs(cosine - 0.755) <= 0.01, cosine
