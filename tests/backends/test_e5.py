"""E5Runner on the real multilingual-e5-small: shapes, meaning, limits."""

from __future__ import annotations

import numpy as np
import pytest

from keyhouse.backends.local.e5 import MAX_INPUT_TOKENS, E5Runner, EmbedJob
from keyhouse.errors import InvalidRequest

pytestmark = pytest.mark.model


def vectors(e5: E5Runner, *texts: str, input_type: str = "query") -> np.ndarray:
    result = e5.run(EmbedJob(list(texts), input_type))
    assert len(result) == len(texts)
    return np.frombuffer(result.data, dtype="<f4").reshape(len(texts), result.dim)


def test_384_dimension_unit_vectors(e5: E5Runner) -> None:
    result = e5.run(EmbedJob(["hello", "a longer sentence about something else", "猫"]))
    assert result.dim == 384
    assert len(result.data) == 3 * 384 * 4
    rows = np.frombuffer(result.data, dtype="<f4").reshape(3, 384)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-3)
    assert np.isfinite(rows).all()
    assert np.frombuffer(result.row(1), dtype="<f4").tolist() == rows[1].tolist()


def test_similar_texts_are_closer(e5: E5Runner) -> None:
    cat, kitten, tax = vectors(e5, "a cat sleeping on the sofa", "a kitten napping", "tax law")
    assert cat @ kitten > cat @ tax


def test_across_languages(e5: E5Runner) -> None:
    """Multilingual: the Chinese word for cat is nearer "cat" than "cat" is to "tax law"."""
    mao, cat, tax = vectors(e5, "猫", "cat", "tax law")
    assert mao @ cat > cat @ tax
    assert mao @ cat > mao @ tax


def test_rows_keep_their_order_and_do_not_depend_on_batching(e5: E5Runner) -> None:
    alone = vectors(e5, "tax law")[0]
    batched = vectors(e5, "cat", "tax law", "dog")
    assert np.allclose(batched[1], alone, atol=1e-4)
    assert not np.allclose(batched[0], alone, atol=1e-2)


def test_query_and_passage_prefixes_differ(e5: E5Runner) -> None:
    query = vectors(e5, "how tall is the eiffel tower", input_type="query")[0]
    passage = vectors(e5, "how tall is the eiffel tower", input_type="passage")[0]
    assert not np.allclose(query, passage, atol=1e-4)
    assert query @ passage > 0.8


def test_token_counts(e5: E5Runner) -> None:
    one = e5.run(EmbedJob(["hello world"]))
    two = e5.run(EmbedJob(["hello world", "hello world, again and again"]))
    assert one.prompt_tokens > 0
    assert two.prompt_tokens > 2 * one.prompt_tokens - 1
    assert two.prompt_tokens == one.prompt_tokens + e5.model.token_count(
        "hello world, again and again", True
    )


def test_over_long_input_is_refused(e5: E5Runner) -> None:
    long = "word " * (MAX_INPUT_TOKENS + 10)
    with pytest.raises(InvalidRequest) as refused:
        e5.run(EmbedJob(["fine", long]))
    assert refused.value.code == "context_length_exceeded"
    assert refused.value.param == "input"
    assert "input[1]" in refused.value.message
    assert str(MAX_INPUT_TOKENS) in refused.value.message
