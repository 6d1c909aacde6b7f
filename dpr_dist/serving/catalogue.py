"""The item catalogue as people see it: original ids, titles, tags; lookups, title search and the
histories of the users the prepared data knows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from dpr_dist.common import schema

from .errors import RequestError

# "Toy Story (1995)" can be asked for as "Toy Story": a trailing "(year)" is optional in lookups.
_TRAILING_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
MAX_SEARCH_RESULTS = 50


def _bare_title(title: str) -> str:
    return _TRAILING_YEAR.sub("", title).strip().lower()


@dataclass
class ItemView:
    id: str          # the data's original id
    title: str
    tags: list[str]

    def to_json(self) -> dict:
        return {"id": self.id, "title": self.title, "tags": self.tags}


class Catalogue:
    """Dense item ids 1..N (row i-1 of ``items``), as in the prepared data."""

    def __init__(self, items: pd.DataFrame, tag_names: Sequence[str], item_tag: torch.Tensor) -> None:
        self.items = items.reset_index(drop=True)
        self.tag_names = list(tag_names)
        self.item_tag = item_tag.bool()
        self._original = pd.Index(self.items["original_id"].astype(str))
        self._titles = self.items["title"].astype(str)
        self._lower = self._titles.str.lower()
        self._bare: pd.Series | None = None  # built on the first title lookup that needs it
        self._tag_patterns = {
            tag: re.compile(rf"(?<!\w){re.escape(tag)}(?!\w)", re.IGNORECASE) for tag in self.tag_names
        }

    @property
    def num_items(self) -> int:
        return len(self.items)

    def view(self, item_id: int) -> ItemView:
        row = self.items.iloc[int(item_id) - 1]
        return ItemView(str(row["original_id"]), str(row["title"]), [str(t) for t in row["tags"]])

    def id_of(self, original_id: str | int, field: str) -> int:
        pos = self._original.get_indexer([str(original_id)])[0]
        if pos < 0:
            raise RequestError(field, f"unknown item id {original_id!r}", status=404)
        return int(pos) + 1

    def id_of_title(self, title: str, field: str) -> int:
        """Exact title (case-insensitive), else the one title equal to it without a trailing "(year)"."""
        wanted = title.strip().lower()
        if not wanted:
            raise RequestError(field, "empty title")
        exact = np.flatnonzero((self._lower == wanted).to_numpy())
        if len(exact) == 0:
            if self._bare is None:
                self._bare = self._titles.map(_bare_title)
            exact = np.flatnonzero((self._bare == _bare_title(title)).to_numpy())
        if len(exact) == 1:
            return int(exact[0]) + 1
        if len(exact) == 0:
            raise RequestError(field, f"no item titled {title!r} (search with /items/search?q=...)", status=404)
        names = ", ".join(f"{self.view(i + 1).title!r} (id {self.view(i + 1).id})" for i in exact[:5])
        raise RequestError(field, f"title {title!r} is ambiguous: {names}; give the item id instead")

    def search(self, query: str, limit: int = 20) -> list[ItemView]:
        """Case-insensitive substring match on titles: titles starting with the query first, then
        by catalogue order; at most ``limit`` results."""
        needle = query.strip().lower()
        if not needle:
            return []
        hits = np.flatnonzero(self._lower.str.contains(needle, regex=False).to_numpy())
        starts = self._lower.iloc[hits].str.startswith(needle).to_numpy()
        ordered = np.concatenate([hits[starts], hits[~starts]])[: max(0, min(limit, MAX_SEARCH_RESULTS))]
        return [self.view(i + 1) for i in ordered]

    def tags_named_in(self, text: str) -> list[str]:
        """Tags whose name occurs in ``text`` as a whole word (case-insensitive)."""
        return [tag for tag, pattern in self._tag_patterns.items() if pattern.search(text)]

    def items_with_tags(self, tags: Sequence[str], lo: int, hi: int) -> torch.Tensor:
        """Dense ids in [lo, hi) carrying any of ``tags``."""
        columns = [self.tag_names.index(t) for t in tags]
        if not columns:
            return torch.zeros(0, dtype=torch.long)
        rows = self.item_tag[lo:hi, columns].any(dim=1)
        return torch.nonzero(rows).flatten() + lo


class UserHistories:
    """Each known user's whole sequence (dense item ids, oldest first). Serving may use everything
    the user did, so this is the test case's history plus its target."""

    def __init__(self, sequences: dict[int, np.ndarray]) -> None:
        self.sequences = sequences

    @classmethod
    def from_prepared(cls, prepared) -> "UserHistories":
        from dpr_dist.eval.harness import read_cases

        user_col, target_col = schema.FIELD_INDEX["user"], schema.FIELD_INDEX["target"]
        sequences = {}
        for hist, case in read_cases(prepared, "test", schema.TASK_STANDARD):
            sequences[int(case[user_col])] = np.append(hist.astype(np.int64), int(case[target_col]))
        return cls(sequences)

    def __len__(self) -> int:
        return len(self.sequences)

    def ids(self) -> list[int]:
        return sorted(self.sequences)

    def history(self, user: int, field: str = "user") -> np.ndarray:
        if user not in self.sequences:
            raise RequestError(field, f"unknown user {user} (known users: {len(self.sequences)} dense ids, e.g. "
                               f"{', '.join(map(str, self.ids()[:3]))})", status=404)
        return self.sequences[user]
