"""The clause parser of dpr_dist/prompts.py."""

from __future__ import annotations

import pytest

from dpr_dist.prompts import MAX_PROMPT_CHARS, Clause, parse_prompt


def texts(prompt) -> list[str]:
    return [c.text for c in parse_prompt(prompt)]


@pytest.mark.parametrize(
    "prompt,expected",
    [
        ("comedy, but nothing scary", ["comedy", "nothing scary"]),
        ("Comedy BUT not horror", ["Comedy", "not horror"]),
        ("action; something light", ["action", "something light"]),
        ("action except horror", ["action", "except horror"]),
        ("action movies, except horror", ["action movies", "except horror"]),
        ("a thriller without gore!", ["a thriller", "without gore"]),
        ("drama, but without tears; no musicals.", ["drama", "without tears", "no musicals"]),
        ("romance and comedy", ["romance and comedy"]),       # " and " is not a separator
        ("butterflies but attributes", ["butterflies", "attributes"]),  # whole words only
        ("without gore", ["without gore"]),                   # a leading negation is not a split
    ],
)
def test_free_text_is_split_at_the_documented_separators(prompt, expected):
    assert texts(prompt) == expected
    assert all(c.polarity is None for c in parse_prompt(prompt))


def test_evaluation_combined_template_gives_two_clauses():
    assert texts("more Comedy, but no Horror") == ["more Comedy", "no Horror"]


def test_structured_prompt_gives_explicit_polarities():
    clauses = parse_prompt({"more": ["comedy", " romance "], "less": "horror"})
    assert clauses == [Clause("comedy", 1), Clause("romance", 1), Clause("horror", -1)]


@pytest.mark.parametrize("empty", [None, "", "   ", " ; , ", {}, {"more": [], "less": []}, {"more": [" "]}])
def test_empty_prompt_gives_no_clause(empty):
    assert parse_prompt(empty) == []


def test_overlong_prompt_names_the_limit():
    with pytest.raises(ValueError, match=f"prompt is {MAX_PROMPT_CHARS + 1} characters long; the limit is {MAX_PROMPT_CHARS}"):
        parse_prompt("x" * (MAX_PROMPT_CHARS + 1))
    with pytest.raises(ValueError, match=r"less\[1\] is 11 characters long; the limit is 10"):
        parse_prompt({"less": ["gore", "a" * 11]}, max_chars=10)
    with pytest.raises(ValueError, match="structured prompt has 12 characters in all; the limit is 10"):
        parse_prompt({"more": ["abcdef"], "less": ["ghijkl"]}, max_chars=10)
    with pytest.raises(ValueError, match="prompt has 3 clauses; the limit is 2"):
        parse_prompt("a; b; c", max_clauses=2)


def test_malformed_structured_prompt_is_rejected_by_name():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['fewer'\]; allowed: \['less', 'more'\]"):
        parse_prompt({"more": ["comedy"], "fewer": ["horror"]})
    with pytest.raises(ValueError, match=r"more\[0\] must be a string, got int"):
        parse_prompt({"more": [3]})
    with pytest.raises(TypeError, match="prompt must be a str or a mapping"):
        parse_prompt(["comedy"])
