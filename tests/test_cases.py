"""Task construction: templates, leave-one-out split, steering rules, phrasings, determinism."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from data_pipeline.cases import build_align_cases, build_cases, choose_tags
from data_pipeline.config import DataConfig
from data_pipeline.normalise import Catalog
from data_pipeline.templates import (
    DEFAULT_PHRASINGS, Phrasings, build_prompts, check_phrasings, combined_text,
)
from dpr_dist.common.schema import CASE_FIELDS, SHARD_SETS, decode_case, encode_case

TAGS = ["Action", "Comedy", "Drama", "Horror"]
# Item -> tags. 6 lists its tags out of name order on purpose; 7 has none; 8 has all.
ITEM_TAGS = {1: ["Action"], 2: ["Comedy"], 3: ["Drama"], 4: ["Horror"], 5: ["Action", "Comedy"],
             6: ["Drama", "Comedy"], 7: [], 8: ["Horror", "Drama", "Comedy", "Action"]}


def make_catalog(sequences: list[list[int]], item_tags=ITEM_TAGS, tags=TAGS) -> Catalog:
    num_items = max(item_tags)
    items = pd.DataFrame({
        "item_id": np.arange(1, num_items + 1),
        "original_id": [str(i) for i in range(1, num_items + 1)],
        "title": [f"t{i}" for i in range(1, num_items + 1)],
        "tags": [list(item_tags[i]) for i in range(1, num_items + 1)],
        "text": ["" for _ in range(num_items)],
    })
    matrix = np.zeros((num_items + 1, len(tags)), dtype=bool)
    for item, names in item_tags.items():
        matrix[item, [tags.index(t) for t in names]] = True
    users = pd.DataFrame({"user_id": np.arange(1, len(sequences) + 1),
                          "original_id": [str(u) for u in range(1, len(sequences) + 1)]})
    seqs = [np.zeros(0, np.int32)] + [np.asarray(s, dtype=np.int32) for s in sequences]
    return Catalog(items, list(tags), matrix, users, seqs, {})


def random_catalog(num_users: int, seed: int = 7) -> Catalog:
    """Items 1..30 with 0-3 random tags, users with 3..40 events (re-consumption allowed)."""
    rng = np.random.default_rng(seed)
    item_tags = {i: sorted(rng.choice(TAGS, size=rng.integers(0, 4), replace=False).tolist())
                 for i in range(1, 31)}
    seqs = [rng.integers(1, 31, size=rng.integers(3, 41)).tolist() for _ in range(num_users)]
    return make_catalog(seqs, item_tags)


def cfg(**overrides) -> DataConfig:
    return dataclasses.replace(DataConfig(), **overrides)


PROMPTS = build_prompts(TAGS)


def tags_for(history: list[int], target: int, window: int, item_tags=ITEM_TAGS):
    """choose_tags for one target, with tag names: (pos, shift, neg)."""
    seq = np.asarray(history + [target], dtype=np.int32)
    catalog = make_catalog([history + [target]], item_tags)
    pos, shift, neg = choose_tags(seq, np.array([len(history)]), catalog.item_tag_matrix, window)
    name = lambda k: None if k == -1 else TAGS[k]  # noqa: E731
    return name(int(pos[0])), int(shift[0]), name(int(neg[0]))


# --------------------------------------------------------------------------- rules, hand-built

def test_positive_takes_the_least_frequent_target_tag_in_the_window_not_the_history():
    # Whole history: Drama 3, Comedy 1 -> Comedy would win; window [1, 1, 2]: Drama 0, Comedy 1.
    assert tags_for([3, 3, 3, 1, 1, 2], 6, window=3) == ("Drama", 1, "Action")


def test_positive_ties_go_to_the_first_tag_name():
    assert tags_for([1, 2, 3], 6, window=3) == ("Comedy", 0, "Action")  # Comedy 1, Drama 1
    assert tags_for([4, 4], 6, window=3) == ("Comedy", 1, "Horror")     # both 0


def test_shift_is_zero_when_the_chosen_tag_is_in_the_window():
    assert tags_for([2, 5, 7], 5, window=3) == ("Action", 0, None)  # Action 1 < Comedy 2


def test_negative_takes_the_most_frequent_lacked_tag_in_the_window_ties_by_name():
    assert tags_for([1, 4, 4], 2, window=3) == ("Comedy", 1, "Horror")
    assert tags_for([4, 1], 2, window=3) == ("Comedy", 1, "Action")


def test_negative_falls_back_to_the_whole_history():
    # The window [2, 2, 2] holds only the target's own tag.
    assert tags_for([1, 4, 4, 2, 2, 2], 2, window=3) == ("Comedy", 0, "Horror")
    assert tags_for([4, 1, 2, 2, 2], 2, window=3) == ("Comedy", 0, "Action")


def test_no_negative_when_the_target_carries_every_tag_of_the_history():
    assert tags_for([1, 2, 5, 7], 5, window=2) == ("Action", 0, None)  # window [5, 7]: a tie
    assert tags_for([1, 2, 3, 4], 8, window=20) == ("Action", 0, None)
    assert tags_for([7, 7], 2, window=20) == ("Comedy", 1, None)  # untagged history


def test_untagged_target_has_no_positive():
    assert tags_for([1, 4, 4], 7, window=3) == (None, 0, "Horror")


def reference_tags(history: list[int], target: int, window: int, item_tags) -> tuple:
    """The rules of DPR_SPEC written out with Counters, as an independent check."""
    recent = Counter(t for item in history[-window:] for t in item_tags[item])
    whole = Counter(t for item in history for t in item_tags[item])
    own = set(item_tags[target])
    pos = min(own, key=lambda t: (recent[t], t)) if own else None
    shift = int(pos is not None and recent[pos] == 0)
    neg = None
    for counts in (recent, whole):
        lacked = [t for t, c in counts.items() if t not in own and c > 0]
        if lacked:
            neg = min(lacked, key=lambda t: (-counts[t], t))
            break
    return pos, shift, neg


@pytest.mark.parametrize("window", [1, 3, 20])
def test_choose_tags_agrees_with_a_counter_reference_at_every_position(window):
    catalog = random_catalog(40, seed=window)
    item_tags = dict(zip(catalog.items["item_id"], catalog.items["tags"]))
    checked = 0
    for seq in catalog.sequences[1:]:
        targets = np.arange(1, len(seq))
        pos, shift, neg = choose_tags(seq, targets, catalog.item_tag_matrix, window)
        for i, p in enumerate(targets):
            expected = reference_tags(seq[:p].tolist(), int(seq[p]), window, item_tags)
            got = (None if pos[i] < 0 else TAGS[pos[i]], int(shift[i]),
                   None if neg[i] < 0 else TAGS[neg[i]])
            assert got == expected, (seq.tolist(), int(p))
            checked += 1
    assert checked > 500


# --------------------------------------------------------------------------- split and cases

def case_map(out) -> dict[str, tuple[str, str, np.ndarray, dict]]:
    """key -> (split, kind, hist, fields); also asserts keys are unique across everything."""
    found = {}
    for (split, kind), cases in out.items():
        for key, hist, fields in cases:
            assert key not in found, key
            found[key] = (split, kind, hist, fields)
    return found


def test_leave_one_out_split_keys_and_fields_for_one_user():
    seq = [3, 3, 3, 1, 1, 2, 5, 7, 4, 6]
    out = build_cases(make_catalog([seq]), PROMPTS, cfg(recent_window=3, heldout_fraction=0.0,
                                                        steer_cases_per_user=3), [1])
    assert set(out) == {pair for pair in SHARD_SETS if pair != ("train", "align")}
    cases = case_map(out)
    key, hist, fields = out[("test", "standard")][0]
    assert key == "test-standard-u000000001-00009"
    assert hist.tolist() == seq[:9] and fields["target"] == 6
    assert fields == dict(user=1, target=6, pos_prompt=-1, neg_prompt=-1, pos_tag=-1,
                          neg_tag=-1, held_out=0, shift=0)
    key, hist, fields = out[("valid", "standard")][0]
    assert key == "valid-standard-u000000001-00008"
    assert hist.tolist() == seq[:8] and fields["target"] == 4
    key, hist, fields = out[("train", "warmup")][0]
    assert key == "train-warmup-u000000001-00000"
    assert hist.tolist() == seq[:8] and fields["target"] == -1

    # Test target 6 (Comedy, Drama), window [5, 7, 4]: Comedy 1, Drama 0 -> Drama, shift;
    # lacked window tags: Action 1, Horror 1 -> Action.
    _, hist, pos = out[("test", "positive")][0]
    assert (pos["pos_tag"], pos["shift"], pos["neg_tag"], pos["neg_prompt"]) == (2, 1, -1, -1)
    prompt = PROMPTS.set_index("prompt_id").loc[pos["pos_prompt"]]
    assert (prompt["tag"], prompt["polarity"], bool(prompt["held_out"])) == ("Drama", 1, False)
    neg = out[("test", "negative")][0][2]
    assert (neg["neg_tag"], neg["pos_tag"], neg["shift"], neg["pos_prompt"]) == (0, -1, 0, -1)
    prompt = PROMPTS.set_index("prompt_id").loc[neg["neg_prompt"]]
    assert (prompt["tag"], prompt["polarity"]) == ("Action", -1)
    comb = out[("test", "combined")][0][2]
    assert (comb["pos_tag"], comb["neg_tag"], comb["shift"]) == (2, 0, 1)
    assert PROMPTS.loc[comb["pos_prompt"], "tag"] == "Drama"
    assert PROMPTS.loc[comb["neg_prompt"], "tag"] == "Action"

    steer = out[("train", "steer")]
    positions = sorted({int(k[-5:]) for k, _, _ in steer})
    assert len(positions) == 3 and all(1 <= p <= 7 for p in positions)
    for key, hist, fields in steer:
        p = int(key[-5:])
        task = key.split("-")[1].removeprefix("steer_")
        assert key == f"train-steer_{task}-u000000001-{p:05d}"
        assert hist.tolist() == seq[:p] and fields["target"] == seq[p]
        assert fields["held_out"] == 0
    assert len(cases) == 1 + 4 * 2 + len(steer)  # warm-up, every task at valid and test, steer


def test_short_users_have_no_warmup_or_steer_samples():
    out = build_cases(make_catalog([[1, 2, 3], [1, 2, 3, 4]]), PROMPTS, cfg(), [1, 2])
    assert [k for k, _, _ in out[("train", "warmup")]] == ["train-warmup-u000000002-00000"]
    assert {int(k[-5:]) for k, _, _ in out[("train", "steer")]} == {1}
    assert all("u000000002" in k for k, _, _ in out[("train", "steer")])
    assert len(out[("test", "standard")]) == 2 and len(out[("valid", "standard")]) == 2


def test_no_training_sample_reaches_the_validation_or_test_positions():
    catalog = random_catalog(60)
    out = build_cases(catalog, PROMPTS, cfg(steer_cases_per_user=50), range(1, 61))
    for key, (split, kind, hist, fields) in case_map(out).items():
        seq = catalog.sequences[fields["user"]]
        n, p = len(seq), int(key[-5:])
        if kind == "warmup":
            assert hist.tolist() == seq[: n - 2].tolist() and fields["target"] == -1
            continue
        expected_p = {"train": p, "valid": n - 2, "test": n - 1}[split]
        assert p == expected_p
        if split == "train":
            assert 1 <= p < n - 2  # positional: items may repeat, so compare positions
        assert hist.tolist() == seq[:p].tolist() and fields["target"] == seq[p]
    steer_users = Counter(f["user"] for _, _, f in out[("train", "steer")] if f["pos_prompt"] == -1
                          and f["neg_prompt"] == -1)
    for user, count in steer_users.items():  # every training position used, each once
        assert count == len(catalog.sequences[user]) - 3


def test_prompted_cases_match_the_rules_and_the_chosen_prompts():
    catalog = random_catalog(50)
    out = build_cases(catalog, PROMPTS, cfg(recent_window=5), range(1, 51))
    by_id = PROMPTS.set_index("prompt_id")
    for (split, kind), cases in out.items():
        for key, hist, f in cases:
            if kind == "warmup":
                continue
            seq = catalog.sequences[f["user"]]
            pos, shift, neg = choose_tags(seq, np.array([len(hist)]), catalog.item_tag_matrix, 5)
            task = kind if split != "train" else key.split("-")[1].removeprefix("steer_")
            want_pos = task in ("positive", "combined")
            want_neg = task in ("negative", "combined")
            assert f["pos_tag"] == (pos[0] if want_pos else -1)
            assert f["neg_tag"] == (neg[0] if want_neg else -1)
            assert f["shift"] == (shift[0] if want_pos else 0)
            for column, polarity in (("pos_prompt", 1), ("neg_prompt", -1)):
                if f[column] == -1:
                    continue
                row = by_id.loc[f[column]]
                tag = f["pos_tag"] if polarity == 1 else f["neg_tag"]
                assert (row["tag"], row["polarity"]) == (TAGS[tag], polarity)
                assert bool(row["held_out"]) == bool(f["held_out"])
                if split == "train":
                    assert not row["held_out"]
    # Every case the rules allow exists: one per user and split for each task that is defined.
    for split, position in (("valid", -2), ("test", -1)):
        for user in range(1, 51):
            seq = catalog.sequences[user]
            pos, _, neg = choose_tags(seq, np.array([len(seq) + position]),
                                      catalog.item_tag_matrix, 5)
            users = {t: {f["user"] for _, _, f in out[(split, t)]} for t in
                     ("positive", "negative", "combined")}
            assert (user in users["positive"]) == (pos[0] >= 0)
            assert (user in users["negative"]) == (neg[0] >= 0)
            assert (user in users["combined"]) == (pos[0] >= 0 and neg[0] >= 0)


def serialise(out) -> dict[tuple[str, str], list[tuple[str, dict[str, bytes]]]]:
    return {pair: [(k, encode_case(h, **f)) for k, h, f in cases] for pair, cases in out.items()}


def test_cases_do_not_depend_on_partitioning_or_user_order():
    catalog = random_catalog(40)
    config = cfg(heldout_fraction=0.5)
    whole = serialise(build_cases(catalog, PROMPTS, config, range(1, 41)))
    odd = serialise(build_cases(catalog, PROMPTS, config, range(39, 0, -2)))
    even = serialise(build_cases(catalog, PROMPTS, config, [10, 2, 40] + list(range(4, 39, 2))))
    assert whole == serialise(build_cases(catalog, PROMPTS, config, range(1, 41)))
    for pair in whole:
        # Stable sort by user only: a user's own cases keep the order they were built in.
        merged = sorted(odd[pair] + even[pair], key=lambda case: case[0].split("-u")[1][:9])
        assert merged == whole[pair]
    other_seed = serialise(build_cases(catalog, PROMPTS, cfg(heldout_fraction=0.5, seed=1),
                                       range(1, 41)))
    assert other_seed[("test", "positive")] != whole[("test", "positive")]


def test_evaluation_phrasings_do_not_change_with_training_options():
    catalog = random_catalog(20)
    a = serialise(build_cases(catalog, PROMPTS, cfg(steer_cases_per_user=2), range(1, 21)))
    b = serialise(build_cases(catalog, PROMPTS, cfg(steer_cases_per_user=9), range(1, 21)))
    assert a[("train", "steer")] != b[("train", "steer")]
    assert all(a[pair] == b[pair] for pair in a if pair != ("train", "steer"))


def test_more_training_phrasings_leave_evaluation_cases_and_heldout_wording_unchanged():
    catalog = random_catalog(60)
    more = dataclasses.replace(
        DEFAULT_PHRASINGS,
        train_positive=DEFAULT_PHRASINGS.train_positive + ("i'd love a {tag} film", "pick {tag} for me"),
        train_negative=DEFAULT_PHRASINGS.train_negative + ("please no {tag}", "leave out {tag}"),
    )
    more_prompts = build_prompts(TAGS, more)
    added = {t for t in more_prompts["template"]} - set(PROMPTS["template"])
    assert len(added) == 4 and len(more_prompts) == len(PROMPTS) + 4 * len(TAGS)

    def readable(prompts: pd.DataFrame, out) -> dict:
        """Cases with prompt ids replaced by (text, template, held_out): ids shift when rows are added."""
        row = prompts.set_index("prompt_id")
        def phrasing(pid):
            return None if pid < 0 else (row.at[pid, "template"], row.at[pid, "tag"], bool(row.at[pid, "held_out"]))
        return {pair: [(key, hist.tolist(), {**f, "pos_prompt": phrasing(f["pos_prompt"]),
                                             "neg_prompt": phrasing(f["neg_prompt"])})
                       for key, hist, f in cases] for pair, cases in out.items()}

    config = cfg(heldout_fraction=0.5)
    a = readable(PROMPTS, build_cases(catalog, PROMPTS, config, range(1, 61)))
    b = readable(more_prompts, build_cases(catalog, more_prompts, config, range(1, 61)))
    assert a.keys() == b.keys()
    new_picks = heldout = 0
    for pair in a:
        assert len(a[pair]) == len(b[pair])
        for (ka, ha, fa), (kb, hb, fb) in zip(a[pair], b[pair]):
            assert (ka, ha) == (kb, hb)
            # Same user, position, target, tags, shift and held-out flag; only seen wording may differ.
            assert {k: v for k, v in fa.items() if not k.endswith("_prompt")} == \
                   {k: v for k, v in fb.items() if not k.endswith("_prompt")}
            for slot in ("pos_prompt", "neg_prompt"):
                if fa[slot] is None:
                    assert fb[slot] is None
                    continue
                assert fa[slot][1:] == fb[slot][1:]  # tag and held-out flag
                if fa["held_out"]:
                    assert fa[slot] == fb[slot]
                    heldout += 1
                new_picks += fb[slot][0] in added
    assert heldout > 50 and new_picks > 50


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_heldout_fraction_is_honoured(fraction):
    catalog = random_catalog(300, seed=3)
    out = build_cases(catalog, PROMPTS, cfg(heldout_fraction=fraction), range(1, 301))
    flags = [f["held_out"] for (split, kind), cases in out.items()
             if split != "train" and kind != "standard" for _, _, f in cases]
    assert len(flags) > 1000
    share = float(np.mean(flags))
    assert abs(share - fraction) < 0.05, share  # ~4 standard deviations at this size
    assert all(f["held_out"] == 0 for _, _, f in out[("train", "steer")])


def test_cases_encode_and_decode():
    out = build_cases(random_catalog(5), PROMPTS, cfg(), range(1, 6))
    key, hist, fields = out[("test", "combined")][0]
    decoded_hist, case = decode_case(encode_case(hist, **fields))
    assert decoded_hist.tolist() == hist.tolist()
    assert case.tolist() == [fields[name] for name in CASE_FIELDS]
    with pytest.raises(ValueError):  # histories are read-only views of the catalogue
        hist[0] = 0


def test_bad_arguments_are_rejected():
    catalog = make_catalog([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"^user id 2 is outside 1\.\.1$"):
        build_cases(catalog, PROMPTS, cfg(), [2])
    with pytest.raises(ValueError, match=r"^heldout_fraction: 1.5 must be within \[0, 1\]$"):
        build_cases(catalog, PROMPTS, cfg(heldout_fraction=1.5), [1])
    with pytest.raises(ValueError, match=r"^recent_window: 0 must be >= 1$"):
        build_cases(catalog, PROMPTS, cfg(recent_window=0), [1])
    with pytest.raises(ValueError, match=r"not in the catalogue's tags"):
        build_cases(catalog, build_prompts(TAGS + ["War"]), cfg(), [1])
    short = make_catalog([[1, 2]])
    with pytest.raises(ValueError, match=r"^user 1 has 2 events; leave-one-out needs at least 3$"):
        build_cases(short, PROMPTS, cfg(), [1])


def test_align_cases_cover_positive_training_phrasings_only():
    cases = build_align_cases(PROMPTS, TAGS)
    expected = PROMPTS[(PROMPTS["polarity"] == 1) & ~PROMPTS["held_out"]]
    assert len(cases) == len(DEFAULT_PHRASINGS.train_positive) * len(TAGS) == len(expected)
    assert [f["pos_prompt"] for _, _, f in cases] == expected["prompt_id"].tolist()
    for key, hist, f in cases:
        assert key == f"train-align-p{f['pos_prompt']:09d}"
        assert hist.size == 0
        assert TAGS[f["pos_tag"]] == PROMPTS.loc[f["pos_prompt"], "tag"]
        others = (f["user"], f["target"], f["neg_prompt"], f["neg_tag"], f["held_out"], f["shift"])
        assert others == (-1, -1, -1, -1, 0, 0)


# --------------------------------------------------------------------------- templates

def plain_words(template: str) -> set[str]:
    """Independent tokenisation for the test: apostrophes and hyphens split words too."""
    return set(re.sub(r"[^a-z]", " ", template.replace("{tag}", " ").lower()).split())


def test_phrasing_counts_and_heldout_words_are_disjoint_from_training_words():
    p = DEFAULT_PHRASINGS
    assert len(set(p.train_positive)) >= 10 and len(set(p.train_negative)) >= 10
    assert len(set(p.heldout_positive)) >= 4 and len(set(p.heldout_negative)) >= 4
    training = set().union(*map(plain_words, p.train_positive + p.train_negative))
    for template in p.heldout_positive + p.heldout_negative:
        assert not plain_words(template) & training, template
        # No plural/singular twin of a training word either ("movie" / "movies").
        stems = {w.rstrip("s") for w in training}
        assert not {w.rstrip("s") for w in plain_words(template)} & stems, template
    assert all(", but " not in t for t in p.train_positive + p.train_negative
               + p.heldout_positive + p.heldout_negative)


def test_check_phrasings_rejects_shared_words_and_bad_slots():
    shared = dataclasses.replace(DEFAULT_PHRASINGS,
                                 heldout_negative=("without {tag}", "skip all {tag}"))
    with pytest.raises(ValueError, match=r"'skip all \{tag\}' shares \['skip'\]"):
        check_phrasings(shared)
    apostrophe = dataclasses.replace(DEFAULT_PHRASINGS, heldout_positive=("let {tag} roll",))
    with pytest.raises(ValueError, match=r"'let \{tag\} roll' shares \['let'\]"):  # from "let's"
        check_phrasings(apostrophe)
    no_slot = dataclasses.replace(DEFAULT_PHRASINGS, train_positive=("more please",))
    with pytest.raises(ValueError, match=r"must contain \{tag\} exactly once"):
        check_phrasings(no_slot)
    splits = dataclasses.replace(DEFAULT_PHRASINGS, heldout_positive=("{tag}, but quietly",))
    with pytest.raises(ValueError, match=r"would be split by the clause parser"):
        check_phrasings(splits)


def test_build_prompts_rows_order_and_display_text():
    tags = ["Sci-Fi", "Children's", "Action"]
    prompts = build_prompts(tags)
    p = DEFAULT_PHRASINGS
    per_tag = len(p.train_positive + p.train_negative + p.heldout_positive + p.heldout_negative)
    assert len(prompts) == per_tag * len(tags)
    assert prompts["prompt_id"].tolist() == list(range(len(prompts)))
    assert list(prompts.columns) == ["prompt_id", "text", "polarity", "tag", "template", "held_out"]
    assert prompts["text"].is_unique
    assert prompts.loc[0:2, "text"].tolist() == [
        "more sci-fi please", "more children's please", "more action please"]
    expected_rows = [(pol, held, t, g) for pol, groups in
                     ((1, ((False, p.train_positive), (True, p.heldout_positive))),
                      (-1, ((False, p.train_negative), (True, p.heldout_negative))))
                     for held, group in groups for t in group for g in tags]
    got = list(zip(prompts["polarity"], prompts["held_out"], prompts["template"], prompts["tag"]))
    assert got == expected_rows
    for text, template, tag in zip(prompts["text"], prompts["template"], prompts["tag"]):
        assert text == template.replace("{tag}", tag.lower())
    pd.testing.assert_frame_equal(prompts, build_prompts(tags))


def test_build_prompts_drops_repeated_texts_keeping_the_first():
    phrasings = Phrasings(train_positive=("{tag} now", "more {tag}"), train_negative=("no {tag}",),
                          heldout_positive=("bring {tag}",), heldout_negative=("ban {tag}",))
    prompts = build_prompts(["more x", "x now"], phrasings)
    # "{tag} now" x "more x" and "more {tag}" x "x now" both read "more x now".
    assert prompts["text"].tolist()[:3] == ["more x now", "x now now", "more more x"]
    assert prompts["text"].tolist().count("more x now") == 1
    assert prompts.loc[0, "template"] == "{tag} now"
    assert len(prompts) == 2 * 5 - 1
    assert prompts["prompt_id"].tolist() == list(range(9))


def test_tags_that_read_the_same_are_rejected():
    with pytest.raises(ValueError, match=r"^tags 'Drama' and 'drama' read the same in a prompt"):
        build_prompts(["Drama", "drama"])


def test_combined_text_uses_the_clause_separator():
    assert combined_text("more comedy please", "no horror please") == (
        "more comedy please, but no horror please")
