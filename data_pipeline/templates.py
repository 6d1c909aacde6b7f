"""Prompt phrasings over tags, and the prompt table (prompts.parquet) built from them.

Training phrasings are used by the train/steer and train/align stages; held-out phrasings only
appear in evaluation cases, and share no word with any training phrasing (positive or negative)
apart from the tag, so they measure generalisation to new wording.

A combined prompt is two clauses joined by :data:`CLAUSE_SEPARATOR` (", but "): the model's clause
parser splits on exactly that string, so no phrasing may contain it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

TAG_SLOT = "{tag}"
CLAUSE_SEPARATOR = ", but "
POSITIVE = 1
NEGATIVE = -1


@dataclass(frozen=True)
class Phrasings:
    """The phrasing templates of one data set: the data config's ``phrasings`` section (a group left
    out keeps the default below). A pick is one bounded draw whatever the group's size, so adding
    training phrasings leaves every evaluation case's user, position, tags and held-out phrasing as
    they were (tests/test_cases.py)."""

    train_positive: tuple[str, ...] = (
        "more {tag} please",
        "i want to watch {tag}",
        "show me some {tag} movies",
        "in the mood for {tag}",
        "recommend {tag} films",
        "something {tag} tonight",
        "give me {tag}",
        "looking for a good {tag} movie",
        "i feel like {tag}",
        "let's see {tag} titles",
    )
    train_negative: tuple[str, ...] = (
        "no {tag} please",
        "i don't want {tag}",
        "nothing {tag} tonight",
        "skip {tag} movies",
        "avoid {tag}",
        "not in the mood for {tag}",
        "no more {tag} films",
        "exclude {tag}",
        "stay away from {tag}",
        "anything but {tag}",
    )
    heldout_positive: tuple[str, ...] = (
        "craving {tag} stuff",
        "bring on {tag}",
        "queue up {tag} flicks",
        "{tag} sounds great right now",
        "fancy {tag} cinema",
    )
    heldout_negative: tuple[str, ...] = (
        "without {tag}",
        "ban {tag} entirely",
        "keep {tag} off my screen",
        "sick of {tag}",
        "zero {tag} content",
    )


DEFAULT_PHRASINGS = Phrasings()

PROMPT_COLUMNS = ("prompt_id", "text", "polarity", "tag", "template", "held_out")


def tag_display(tag: str) -> str:
    """How a tag reads inside a prompt: its name lowercased ("Sci-Fi" -> "sci-fi")."""
    return tag.lower()


def fill(template: str, tag: str) -> str:
    return template.replace(TAG_SLOT, tag_display(tag))


def combined_text(pos_text: str, neg_text: str) -> str:
    """Display text of a combined prompt: "<positive clause>, but <negative clause>"."""
    return f"{pos_text}{CLAUSE_SEPARATOR}{neg_text}"


def words(template: str) -> set[str]:
    """Words of a phrasing without its tag slot. Splitting at every non-letter ("don't" -> "don",
    "t") is the strict reading: it finds more shared words than splitting at spaces would."""
    return set(re.findall(r"[a-z0-9]+", template.replace(TAG_SLOT, " ").lower()))


def shared_heldout_words(phrasings: Phrasings) -> dict[str, set[str]]:
    """Held-out phrasing -> the words it shares with any training phrasing (should be empty)."""
    training = phrasings.train_positive + phrasings.train_negative
    train_words = set().union(*(words(t) for t in training))
    shared = {}
    for template in phrasings.heldout_positive + phrasings.heldout_negative:
        common = words(template) & train_words
        if common:
            shared[template] = common
    return shared


def check_phrasings(phrasings: Phrasings) -> None:
    """Reject phrasings that would break the tag slot, the clause parser or the held-out rule."""
    for name in ("train_positive", "train_negative", "heldout_positive", "heldout_negative"):
        group = getattr(phrasings, name)
        if not group:
            raise ValueError(f"phrasings.{name} is empty")
        for template in group:
            if template.count(TAG_SLOT) != 1:
                raise ValueError(
                    f"phrasings.{name}: {template!r} must contain {TAG_SLOT} exactly once"
                )
            if CLAUSE_SEPARATOR in template:
                raise ValueError(
                    f"phrasings.{name}: {template!r} would be split by the clause parser"
                )
    shared = shared_heldout_words(phrasings)
    if shared:
        detail = "; ".join(f"{t!r} shares {sorted(w)}" for t, w in shared.items())
        raise ValueError(f"held-out phrasings share words with training phrasings: {detail}")


def build_prompts(tags: list[str], phrasings: Phrasings = DEFAULT_PHRASINGS) -> pd.DataFrame:
    """One row per (phrasing, tag), positives first, then negatives; within a polarity the training
    phrasings (in their listed order) precede the held-out ones, and tags follow ``tags``' order.
    Rows whose text repeats an earlier row's are dropped; prompt_id is then 0..P-1."""
    check_phrasings(phrasings)
    _check_tag_names(tags)
    rows = []
    for polarity, train, heldout in (
        (POSITIVE, phrasings.train_positive, phrasings.heldout_positive),
        (NEGATIVE, phrasings.train_negative, phrasings.heldout_negative),
    ):
        for held_out, group in ((False, train), (True, heldout)):
            for template in group:
                for tag in tags:
                    rows.append((fill(template, tag), polarity, tag, template, held_out))
    frame = pd.DataFrame(rows, columns=list(PROMPT_COLUMNS[1:]))
    frame = frame.drop_duplicates(subset="text", keep="first", ignore_index=True)
    frame.insert(0, "prompt_id", range(len(frame)))
    return frame.astype({"prompt_id": "int64", "polarity": "int64", "held_out": "bool"})


def _check_tag_names(tags: list[str]) -> None:
    seen: dict[str, str] = {}
    for tag in tags:
        shown = tag_display(tag)
        if not shown.strip():
            raise ValueError(f"tag {tag!r} has an empty display text")
        if CLAUSE_SEPARATOR in shown:
            raise ValueError(f"tag {tag!r} contains the clause separator {CLAUSE_SEPARATOR!r}")
        if shown in seen:
            raise ValueError(
                f"tags {seen[shown]!r} and {tag!r} read the same in a prompt ({shown!r})"
            )
        seen[shown] = tag
