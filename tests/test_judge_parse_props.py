"""Property-based tests over the judge-reply parser: every shape of score a model writes is read on
its own scale (rescaled to 0-10) or refused, never read silently as if it were out of 10."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vital.llm.parse import InvalidOutput, parse_score

SCALES = [5, 10, 100]
TEMPLATES = [
    "Score: {x}/{d}",
    "**Score:** {x}/{d}",
    "**Score**: {x} / {d}",
    "Rating = {x} out of {d}",
    "I would rate this {x} out of {d}.",
    "{x}/{d}\nThe answer names the lesion but not its side.",
    "Overall this is fine. Score: {x}/{d} because the size is right.",
]


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("**Score:** 8", 8),
        ("I would rate this 7 out of 10", 7),
        ("Score: 7/100", 0.7),
        ("Score: 3/5", 6),
        ("Score: 8. It covers 3/5 points.", 8),  # the first score wins; a later fraction is rationale
    ],
)
def test_markdown_prose_and_other_scales(text, score):
    assert parse_score(text)[0] == pytest.approx(score)


@settings(max_examples=300, deadline=None)
@given(
    template=st.sampled_from(TEMPLATES),
    scale=st.sampled_from(SCALES),
    data=st.data(),
)
def test_a_score_is_read_on_its_own_scale(template, scale, data):
    value = data.draw(st.integers(min_value=0, max_value=scale))
    score, _ = parse_score(template.format(x=value, d=scale))
    assert score == pytest.approx(value * 10 / scale)


@settings(max_examples=200, deadline=None)
@given(template=st.sampled_from(TEMPLATES), scale=st.sampled_from(SCALES), over=st.integers(1, 1000))
def test_a_score_above_its_scale_is_refused(template, scale, over):
    with pytest.raises(InvalidOutput):
        parse_score(template.format(x=scale + over, d=scale))


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_reply_is_a_0_to_10_score_or_refused(text):
    try:
        score, rationale = parse_score(text)
    except InvalidOutput:
        return
    assert 0 <= score <= 10
    assert isinstance(rationale, str)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Nd",))))
def test_a_reply_without_a_digit_is_refused(text):
    with pytest.raises(InvalidOutput):
        parse_score(text)


@pytest.mark.parametrize("text", ['{"score": true}', '{"score": "NaN"}', '{"score": "inf"}'])
def test_a_json_score_that_is_not_a_number_is_refused(text):
    with pytest.raises(InvalidOutput):
        parse_score(text)
