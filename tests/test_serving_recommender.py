"""The inference library: LRU bound, prompt cache, title lookup, exact chunked top-K with the hard
filter, and agreement with the evaluation harness on the same cases."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from data_pipeline.encode import HashEncoder
from dpr_dist.common import schema
from dpr_dist.data.batching import left_pad
from dpr_dist.data.prepared import load_prepared
from dpr_dist.eval import metrics
from dpr_dist.eval.harness import EvalInputs, read_cases, score_batch
from dpr_dist.serving import Recommender, RequestError
from dpr_dist.serving.catalogue import Catalogue
from dpr_dist.serving.lru import LRUCache
from dpr_dist.serving.prompt_cache import PromptEmbeddings
from tests.browser.serving_model import trained_checkpoint


# --- pieces that need no model ----------------------------------------------------------------

def test_lru_evicts_least_recently_used_and_counts():
    cache = LRUCache(3)
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get("a") == "A"          # a is now the most recent
    cache.put("d", "D")                   # evicts b, the least recently used
    assert "b" not in cache and len(cache) == 3
    assert cache.get("b") is None
    assert cache.stats() == {"size": 3, "max_size": 3, "hits": 1, "misses": 1}
    with pytest.raises(ValueError, match="max_size must be >= 1"):
        LRUCache(0)


class CountingEncoder(HashEncoder):
    def __init__(self, dim):
        super().__init__(dim)
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return super().encode(texts)


def test_prompt_cache_is_bounded_seeded_and_encodes_misses_once():
    encoder = CountingEncoder(16)
    seeds = [f"seed {i}" for i in range(10)]
    stored = np.arange(160, dtype=np.float32).reshape(10, 16)  # not what the encoder would give
    cache = PromptEmbeddings(encoder, 4, seeds, stored)
    assert len(cache.cache) == 4                         # only the last 4 seeds fit
    emb, cached = cache.embed(["seed 9"])
    assert cached == [True] and torch.equal(emb[0], torch.from_numpy(stored[9]))  # the stored vector, bit for bit
    emb, cached = cache.embed(["new a", "new b", "new a"])
    assert cached == [False, False, False] and encoder.calls == [["new a", "new b"]]
    assert torch.equal(emb[0], emb[2])
    np.testing.assert_array_equal(emb[1].numpy(), HashEncoder(16).encode(["new b"])[0])
    for i in range(20):
        cache.embed([f"other {i}"])
        assert len(cache.cache) <= 4
    assert cache.embed(["other 19"])[1] == [True] and cache.embed(["new a"])[1] == [False]


def _catalogue(titles: list[str]) -> Catalogue:
    items = pd.DataFrame({
        "item_id": range(1, len(titles) + 1), "original_id": [str(100 + i) for i in range(len(titles))],
        "title": titles, "tags": [["Drama"]] * len(titles), "text": titles,
    })
    return Catalogue(items, ["Drama", "Sci-Fi"], torch.zeros(len(titles) + 1, 2, dtype=torch.bool))


def test_title_lookup_exact_then_without_year_and_ambiguity_names_candidates():
    cat = _catalogue(["Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)", "Heat (2003)", "Heat"])
    assert cat.id_of_title("toy story", "history_titles[0]") == 1
    assert cat.id_of_title("TOY STORY 2 (1999)", "history_titles[0]") == 2
    assert cat.id_of_title("heat", "history_titles[0]") == 5          # the exact title wins
    remakes = _catalogue(["Heat (1995)", "Heat (2003)"])
    with pytest.raises(RequestError, match=r"^history_titles\[1\]: title 'heat' is ambiguous: "
                                           r"'Heat \(1995\)' \(id 100\), 'Heat \(2003\)' \(id 101\)") as exc:
        remakes.id_of_title("heat", "history_titles[1]")
    assert exc.value.status == 400
    with pytest.raises(RequestError, match="no item titled 'Alien'") as exc:
        cat.id_of_title("Alien", "history_titles[2]")
    assert exc.value.status == 404 and exc.value.field == "history_titles[2]"


def test_search_is_case_insensitive_prefix_first_and_bounded():
    cat = _catalogue(["The Heat", "Heat (1995)", "Heatwave", "Cold"])
    assert [v.title for v in cat.search("HEAT")] == ["Heat (1995)", "Heatwave", "The Heat"]
    assert [v.title for v in cat.search("heat", limit=2)] == ["Heat (1995)", "Heatwave"]
    assert cat.search("   ") == [] and cat.search("zzz") == []


def test_tags_named_as_whole_words_only():
    cat = _catalogue(["x"])
    assert cat.tags_named_in("no sci-fi, more DRAMA please") == ["Drama", "Sci-Fi"]
    assert cat.tags_named_in("melodramatic") == []


# --- with a trained checkpoint ------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_prepared):
    ckpt = trained_checkpoint(tmp_path_factory, tiny_prepared)
    return Recommender.load(ckpt, tiny_prepared, cache_size=512, chunk_size=37), load_prepared(tiny_prepared)


def test_known_user_history_is_the_whole_sequence(served):
    rec, prepared = served
    for hist, case in read_cases(prepared, "test", schema.TASK_STANDARD, max_cases=5):
        user, target = int(case[schema.FIELD_INDEX["user"]]), int(case[schema.FIELD_INDEX["target"]])
        assert rec.resolve_history(user=user) == [*hist.tolist(), target]
    with pytest.raises(RequestError, match="user: unknown user 9999") as exc:
        rec.recommend(user=9999)
    assert exc.value.status == 404


def _brute_top_k(scores: torch.Tensor, excluded: set[int], k: int) -> list[int]:
    """Independent reference: python sort by (-score, id) over every allowed item."""
    allowed = [(-float(s), i) for i, s in enumerate(scores.tolist()) if i != 0 and i not in excluded]
    return [i for _, i in sorted(allowed)[:k]]


def test_chunked_top_k_with_filter_matches_brute_force(served):
    rec, _ = served
    out = rec.recommend(user=7, prompt={"less": ["tag0"], "more": ["tag3"]}, k=25, filter=True)
    assert out.filtered_tags == ["tag0"]
    seq = rec.resolve_history(user=7)
    # Recompute u and h with the model directly (hard routing for labelled clauses).
    hist = left_pad([np.asarray(seq)], rec.model.cfg.max_len)
    history = rec.model.encode_history(hist)
    emb, _ = rec.prompts.embed(["tag3", "tag0"])
    u = rec._labelled_model.steer(history, emb.unsqueeze(0), torch.tensor([[1, -1]])).u
    weight = rec.model.item_table.weight.detach()
    tagged = set(torch.nonzero(rec.catalogue.item_tag[:, rec.catalogue.tag_names.index("tag0")]).flatten().tolist())
    want_dpr = _brute_top_k((u @ weight.T)[0], set(seq) | tagged, 25)
    want_base = _brute_top_k((history.h @ weight.T)[0], set(seq), 25)
    got_dpr = [rec.catalogue.id_of(s.item.id, "x") for s in out.dpr]
    got_base = [rec.catalogue.id_of(s.item.id, "x") for s in out.backbone]
    assert got_dpr == want_dpr and got_base == want_base
    assert not any("tag0" in s.item.tags for s in out.dpr)
    assert any("tag0" in s.item.tags for s in out.backbone)   # the filter touches the DPR list only


def test_no_prompt_gives_the_backbone_list(served):
    rec, _ = served
    out = rec.recommend(user=3, k=10)
    assert out.clauses == [] and out.entered == [] and out.left == []
    assert [(s.item.id, s.score) for s in out.dpr] == [(s.item.id, s.score) for s in out.backbone]


def test_free_text_is_routed_by_the_router_structured_by_its_labels(served):
    rec, _ = served
    free = rec.recommend(user=3, prompt="more tag3 please; no tag0 please")
    assert [(c.text, c.given, c.polarity) for c in free.clauses] == [
        ("more tag3 please", None, 1), ("no tag0 please", None, -1)]
    assert free.clauses[0].p_more > 0.5 > free.clauses[1].p_more
    structured = rec.recommend(user=3, prompt={"more": ["tag3"], "less": ["tag0"]})
    assert [(c.text, c.given, c.polarity, c.tags) for c in structured.clauses] == [
        ("tag3", 1, 1, ["tag3"]), ("tag0", -1, -1, ["tag0"])]


def test_bad_values_raise_request_errors_naming_the_field(served):
    rec, _ = served
    cases = [
        (dict(user=1, k=0), "k", "must be an integer in [1, 100]"),
        (dict(user=1, k=101), "k", "got 101"),
        (dict(user=1, prompt=""), "prompt", "empty prompt"),
        (dict(user=1, prompt="x" * 513), "prompt", "513 characters long; the limit is 512"),
        (dict(user=1, prompt={"more": ["a"], "sometimes": ["b"]}), "prompt", "unknown key(s) ['sometimes']"),
        (dict(user=1, history=["1"]), "user", "exactly one of user, history, history_titles (got user, history)"),
        (dict(), "user", "exactly one of"),
        (dict(history=[]), "history", "empty"),
        (dict(history=["1", "999999"]), "history[1]", "unknown item id '999999'"),
        (dict(history_titles=["Item 1", "No Such Thing"]), "history_titles[1]", "no item titled"),
    ]
    for kwargs, field, text in cases:
        with pytest.raises(RequestError) as exc:
            rec.recommend(**kwargs)
        assert exc.value.field == field and text in str(exc.value), (kwargs, str(exc.value))


def test_agrees_with_the_evaluation_harness_on_test_cases(served):
    """Same history + same prompt -> the harness's DPR scores and top-10, per case: free text vs
    the trained (learned) routing, structured vs the harness's hard routing."""
    rec, prepared = served
    inputs = EvalInputs(prompt_emb=prepared.prompt_embeddings, item_tag=prepared.item_tag,
                        popularity=np.zeros(prepared.num_items + 1, np.int64))
    texts = prepared.prompts["text"].tolist()
    cases = read_cases(prepared, "test", schema.TASK_POSITIVE, max_cases=6)
    for hist, case in cases:
        fields = {name: torch.tensor([int(case[i])]) for name, i in schema.FIELD_INDEX.items()}
        batch = {**fields, "hist": left_pad([hist], rec.model.cfg.max_len)}
        exclude = metrics.exclusion_mask(left_pad([hist], len(hist)), prepared.num_items + 1)
        scores = score_batch(rec.model, batch, exclude, inputs, ["backbone", "dpr", "dpr_hard", "dpr+filter"])
        # DPR + filter on a positive case: DPR's scores on the items carrying the requested tag,
        # nothing rankable elsewhere.
        tagged = prepared.item_tag[:, int(case[schema.FIELD_INDEX["pos_tag"]])].clone()
        assert tagged.any() and not tagged.all()
        assert torch.equal(scores["dpr+filter"][0, tagged], scores["dpr"][0, tagged])
        assert torch.isneginf(scores["dpr+filter"][0, ~tagged]).all()
        text = texts[int(case[schema.FIELD_INDEX["pos_prompt"]])]
        history = [rec.catalogue.view(int(i)).id for i in hist]
        for method, prompt in (("dpr", text), ("dpr_hard", {"more": [text]})):
            out = rec.recommend(history=history, prompt=prompt, k=10)
            top_ids, _ = metrics.top_k_items(scores[method], exclude, 10)
            assert [rec.catalogue.id_of(s.item.id, "x") for s in out.dpr] == top_ids[0].tolist()
            np.testing.assert_allclose([s.score for s in out.dpr], scores[method][0, top_ids[0]].numpy(), rtol=1e-5, atol=1e-5)
        base_ids, _ = metrics.top_k_items(scores["backbone"], exclude, 10)
        assert [rec.catalogue.id_of(s.item.id, "x") for s in out.backbone] == base_ids[0].tolist()


def test_cli_prints_both_lists_and_json_equal_to_the_library(served, capsys):
    from launch import recommend

    rec, prepared = served
    argv = ["--model", rec.info["checkpoint"], "--data-dir", str(prepared.root), "-k", "5"]
    assert recommend.main([*argv, "--user", "4", "--prompt", "more tag3 please", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = rec.recommend(user=4, prompt="more tag3 please", k=5).to_json(rec.catalogue)
    for key in ("dpr", "backbone", "entered", "left", "history_length"):
        assert printed[key] == expected[key]
    assert recommend.main([*argv, "--history-titles", "Item 1;item 7", "--less", "tag0", "--filter"]) == 0
    table = capsys.readouterr().out
    assert "clause 'tag0': less (given less); tags ['tag0']" in table
    assert "hard filter drops tags: ['tag0']" in table and "DPR" in table and "backbone" in table
    assert len([line for line in table.splitlines() if " | " in line]) == 6   # header + 5 rows
    assert recommend.main([*argv, "--history", "1,nope"]) == 2
    assert "history[1]: unknown item id 'nope'" in capsys.readouterr().err
