"""normalise(): id remapping, chronological sequences, bad-input policies, catalogue and tags."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from data_pipeline.config import DataConfig
from data_pipeline.normalise import normalise, sort_original_ids
from data_pipeline.records import BadInputError, RawData


def make_raw(events, items, sources=("events.csv",)) -> RawData:
    """events: (user, item, order) tuples, source_row = position in the list."""
    ev = pd.DataFrame(events, columns=["user", "item", "order"])
    ev["order"] = ev["order"].astype("int64")
    ev["source_row"] = np.arange(len(ev), dtype=np.int64)
    it = pd.DataFrame(
        [(i, f"title {i}", tags, f"text {i}") for i, tags in items.items()],
        columns=["item", "title", "tags", "text"],
    )
    return RawData(events=ev, items=it, sources=list(sources))


def cfg(**overrides) -> DataConfig:
    return dataclasses.replace(DataConfig(), **overrides)


def originals(catalog, user_original: str) -> list[str]:
    """A user's sequence in original item ids."""
    users = catalog.users.set_index("original_id")["user_id"]
    by_dense = dict(zip(catalog.items["item_id"], catalog.items["original_id"]))
    return [by_dense[int(i)] for i in catalog.sequences[users[user_original]]]


ITEMS = {"1": ["Comedy"], "2": ["Action", "Comedy"], "9": ["Drama"], "10": [], "100": ["Action"]}


def test_numeric_ids_sort_numerically_and_sequences_follow_order_then_source_row():
    raw = make_raw(
        [("10", "100", 5), ("2", "9", 1), ("10", "9", 3), ("10", "1", 5), ("2", "10", 1),
         ("2", "2", 0), ("10", "2", 1)],
        ITEMS,
    )
    cat = normalise(raw, cfg())
    # "10" < "2" as strings; numerically 2 comes first.
    assert list(cat.users["original_id"]) == ["2", "10"]
    assert list(cat.users["user_id"]) == [1, 2]
    assert list(cat.items["original_id"]) == ["1", "2", "9", "10", "100"]
    assert list(cat.items["item_id"]) == [1, 2, 3, 4, 5]
    # user 10: order 1, 3, then the two order-5 events in file order (rows 0 then 3).
    assert originals(cat, "10") == ["2", "9", "100", "1"]
    assert originals(cat, "2") == ["2", "9", "10"]
    assert cat.sequences[0].size == 0 and all(s.dtype == np.int32 for s in cat.sequences)
    assert cat.tags == ["Action", "Comedy", "Drama"]
    expected = np.array([
        [0, 0, 0],  # padding
        [0, 1, 0],  # "1"
        [1, 1, 0],  # "2"
        [0, 0, 1],  # "9"
        [0, 0, 0],  # "10": no tags
        [1, 0, 0],  # "100"
    ], dtype=bool)
    np.testing.assert_array_equal(cat.item_tag_matrix, expected)
    assert cat.stats == {
        "events_in": 7, "duplicates_dropped": 0, "unknown_item_events": 0, "events_kept": 7,
        "users_dropped_short": 0, "users_dropped_max_users": 0, "users": 2, "items": 5,
        "interactions": 7, "items_without_tags": 1,
    }
    row = cat.items.set_index("original_id").loc["9"]
    assert (row["title"], row["tags"], row["text"]) == ("title 9", ["Drama"], "text 9")


def test_source_row_not_dataframe_position_breaks_ties():
    raw = make_raw([("1", "1", 7), ("1", "2", 7), ("1", "9", 7)], ITEMS)
    shuffled = raw.events.iloc[[2, 0, 1]].reset_index(drop=True)
    cat = normalise(RawData(shuffled, raw.items), cfg())
    assert originals(cat, "1") == ["1", "2", "9"]


def test_integer_id_order_is_the_same_on_the_int64_fast_path_and_off_it():
    """Canonical decimal ids take a vectorised path; ids it cannot take (a leading zero, "+", a
    number beyond int64) take the general one; both must give the (int, str) order."""
    rng = np.random.default_rng(0)
    ids = [str(i) for i in rng.integers(-10**12, 10**12, 500)] + ["0", "5", "5"]
    reference = sorted(set(ids), key=lambda i: (int(i), i))
    assert sort_original_ids(ids) == reference
    for odd in ("007", "+7", str(2**70)):
        assert sort_original_ids(ids + [odd]) == sorted(set(ids + [odd]), key=lambda i: (int(i), i))


def test_string_ids_sort_as_strings_when_any_id_is_not_an_integer():
    assert sort_original_ids(["10", "9", "a", "9"]) == ["10", "9", "a"]
    assert sort_original_ids(["10", "9", "-3", "007", "7"]) == ["-3", "007", "7", "9", "10"]
    raw = make_raw([("b", "9", 0), ("b", "10", 1), ("b", "1", 2), ("a", "1", 0), ("a", "2", 1),
                    ("a", "9", 2)], ITEMS)
    cat = normalise(raw, cfg())
    assert list(cat.users["original_id"]) == ["a", "b"]
    assert list(cat.items["original_id"]) == ["1", "2", "9", "10"]  # item ids: all integers


def test_catalogue_holds_only_items_that_occur_in_kept_events():
    raw = make_raw([("1", "9", 0), ("1", "2", 1), ("1", "9", 2)], ITEMS)
    cat = normalise(raw, cfg())
    assert list(cat.items["original_id"]) == ["2", "9"]
    assert cat.tags == ["Action", "Comedy", "Drama"]  # tags of catalogue items only
    raw = make_raw([("1", "9", 0), ("1", "1", 1), ("1", "9", 2)], ITEMS)
    assert normalise(raw, cfg()).tags == ["Comedy", "Drama"]


DUP_EVENTS = [("1", "1", 5), ("1", "2", 5), ("1", "1", 5), ("1", "9", 6), ("1", "10", 7)]


def test_duplicates_drop_keeps_the_first_copy():
    cat = normalise(make_raw(DUP_EVENTS, ITEMS), cfg(duplicate_events="drop"))
    # Keeping the first copy (row 0) puts "1" before "2"; keeping row 2 would give "2", "1".
    assert originals(cat, "1") == ["1", "2", "9", "10"]
    assert cat.stats["duplicates_dropped"] == 1
    assert cat.stats["events_kept"] == 4 and cat.stats["interactions"] == 4


def test_duplicates_keep():
    cat = normalise(make_raw(DUP_EVENTS, ITEMS), cfg(duplicate_events="keep"))
    assert originals(cat, "1") == ["1", "2", "1", "9", "10"]
    assert cat.stats["duplicates_dropped"] == 0


def test_same_item_at_another_time_is_not_a_duplicate():
    events = [("1", "1", 5), ("1", "2", 6), ("1", "1", 7)]
    cat = normalise(make_raw(events, ITEMS), cfg(duplicate_events="error"))
    assert originals(cat, "1") == ["1", "2", "1"]


UNKNOWN_EVENTS = [("1", "1", 0), ("1", "77", 1), ("1", "9", 2), ("1", "77", 3), ("1", "2", 4)]


def test_unknown_items_keep_adds_them_with_empty_metadata():
    cat = normalise(make_raw(UNKNOWN_EVENTS, ITEMS), cfg(unknown_items="keep"))
    assert originals(cat, "1") == ["1", "77", "9", "77", "2"]
    row = cat.items.set_index("original_id").loc["77"]
    assert (row["title"], list(row["tags"]), row["text"]) == ("", [], "")
    assert not cat.item_tag_matrix[int(row["item_id"])].any()
    assert cat.stats["unknown_item_events"] == 2
    assert cat.stats["items_without_tags"] == 1


def test_unknown_items_drop():
    cat = normalise(make_raw(UNKNOWN_EVENTS, ITEMS), cfg(unknown_items="drop"))
    assert originals(cat, "1") == ["1", "9", "2"]
    assert "77" not in set(cat.items["original_id"])
    assert cat.stats["unknown_item_events"] == 2 and cat.stats["events_kept"] == 3


@pytest.mark.parametrize("events,option,message", [
    ("duplicate", "duplicate_events", "events.csv: source_row 2: duplicate event (user '1', item '1', order 5) "
     "first seen at source_row 0 (duplicate_events: error)"),
    ("unknown", "unknown_items", "events.csv: source_row 1: item '77' is not in the item metadata "
     "(2 such event(s); unknown_items: error)"),
], ids=["duplicate-names-the-first-copy", "unknown-item-names-the-row"])
def test_error_option_names_the_source_row(events, option, message):
    rows = DUP_EVENTS if events == "duplicate" else UNKNOWN_EVENTS
    with pytest.raises(BadInputError) as exc:
        normalise(make_raw(rows, ITEMS), cfg(**{option: "error"}))
    assert str(exc.value) == message


def test_short_users_are_dropped_and_counted():
    events = [("1", "1", 0), ("1", "2", 1), ("1", "9", 2),   # 3 events: kept at min 3
              ("2", "100", 0), ("2", "1", 1),                # 2 events: dropped
              ("3", "1", 0), ("3", "2", 1), ("3", "9", 2), ("3", "10", 3)]
    cat = normalise(make_raw(events, ITEMS), cfg())
    assert list(cat.users["original_id"]) == ["1", "3"]
    assert list(cat.users["user_id"]) == [1, 2]
    assert "100" not in set(cat.items["original_id"])  # only user 2 had it
    assert cat.stats["users_dropped_short"] == 1
    assert cat.stats["interactions"] == 7 and cat.stats["events_kept"] == 9
    cat = normalise(make_raw(events, ITEMS), cfg(min_user_events=4))
    assert list(cat.users["original_id"]) == ["3"]
    assert cat.stats["users_dropped_short"] == 2


def test_min_user_events_below_three_is_rejected():
    with pytest.raises(ValueError, match=r"^min_user_events: 2 < 3; leave-one-out"):
        normalise(make_raw([("1", "1", 0)], ITEMS), cfg(min_user_events=2))


def test_max_users_keeps_first_users_by_dense_id_and_drops_their_items():
    events = [("20", "1", 0), ("20", "2", 1), ("20", "9", 2),
              ("3", "10", 0), ("3", "9", 1), ("3", "10", 2),
              ("100", "100", 0), ("100", "1", 1), ("100", "9", 2)]
    cat = normalise(make_raw(events, ITEMS), cfg(max_users=2))
    assert list(cat.users["original_id"]) == ["3", "20"]
    assert list(cat.items["original_id"]) == ["1", "2", "9", "10"]  # "100" only used by user 100
    assert cat.stats["users_dropped_max_users"] == 1
    assert cat.stats["interactions"] == 6 and cat.stats["users"] == 2
    assert len(cat.sequences) == 3
    assert cat.item_tag_matrix.shape == (5, 3)


@pytest.mark.parametrize("bad", [None, np.nan, "", "  "])
def test_missing_ids_are_errors_naming_the_source_row(bad):
    raw = make_raw([("1", "1", 0), ("1", "2", 1), ("1", "9", 2)], ITEMS)
    raw.events = raw.events.astype({"user": object, "item": object})
    raw.events.loc[2, "item"] = bad
    raw.events.loc[2, "source_row"] = 41
    with pytest.raises(BadInputError) as exc:
        normalise(raw, cfg())
    assert str(exc.value) == "events.csv: source_row 41: missing item id"
    raw.events.loc[1, "user"] = bad
    raw.events.loc[1, "source_row"] = 40
    with pytest.raises(BadInputError, match=r"^events.csv: source_row 40: missing user id$"):
        normalise(raw, cfg())


def test_invalid_policies_are_rejected_naming_the_field():
    raw = make_raw([("1", "1", 0)], ITEMS)
    with pytest.raises(ValueError, match=r"^duplicate_events: 'first'"):
        normalise(raw, cfg(duplicate_events="first"))
    with pytest.raises(ValueError, match=r"^unknown_items: 'skip'"):
        normalise(raw, cfg(unknown_items="skip"))


def test_repeated_item_metadata_is_an_error():
    raw = make_raw([("1", "1", 0)], ITEMS)
    raw.items = pd.concat([raw.items, raw.items.iloc[[1]]], ignore_index=True)
    with pytest.raises(BadInputError, match=r"lists item '2' more than once"):
        normalise(raw, cfg())


def test_repeated_and_empty_tag_names_are_cleaned():
    items = {"1": ["Comedy", "", "Comedy", "Action"], "2": ["Drama"], "9": []}
    cat = normalise(make_raw([("1", "1", 0), ("1", "2", 1), ("1", "9", 2)], items), cfg())
    assert list(cat.items["tags"]) == [["Comedy", "Action"], ["Drama"], []]
    assert cat.tags == ["Action", "Comedy", "Drama"]
    assert cat.item_tag_matrix[1].tolist() == [True, True, False]


def test_catalogue_of_all_items_keeps_never_consumed_items_and_their_tags():
    raw = make_raw([("u", "1", 0), ("u", "2", 1), ("u", "9", 2)], ITEMS)
    used = normalise(raw, cfg())
    everything = normalise(raw, cfg(catalogue="all_items"))
    assert list(used.items["original_id"]) == ["1", "2", "9"]
    assert list(everything.items["original_id"]) == ["1", "2", "9", "10", "100"]
    assert everything.item_tag_matrix[5].tolist() == [True, False, False]  # item "100": Action
    assert originals(everything, "u") == ["1", "2", "9"]
    with pytest.raises(ValueError, match="catalogue 'some'; allowed: interactions, all_items"):
        normalise(raw, cfg(catalogue="some"))
