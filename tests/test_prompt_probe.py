"""benchmarks/prompt_probe.py: the polarity probe and the neighbour shares, on hand-made embeddings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dpr_dist.common.schema import DATA_CONFIG_NAME

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import prompt_probe  # noqa: E402

TAGS = ["Horror", "Comedy", "Drama"]


def prompt_table(templates_per_group: int = 3) -> pd.DataFrame:
    rows = []
    for held_out in (False, True):
        for polarity in (1, -1):
            for k in range(templates_per_group):
                template = f"{'held' if held_out else 'train'}{'+' if polarity > 0 else '-'}{k} {{tag}}"
                for tag in TAGS:
                    rows.append(dict(text=template.format(tag=tag), polarity=polarity, tag=tag,
                                     template=template, held_out=held_out))
    return pd.DataFrame(rows).reset_index().rename(columns={"index": "prompt_id"})


def embeddings(prompts: pd.DataFrame, polarity_scale: float, seed: int = 0) -> np.ndarray:
    """Tag one-hot (x3) + polarity on its own axis (x polarity_scale) + small noise."""
    rng = np.random.default_rng(seed)
    tag = np.eye(len(TAGS))[prompts["tag"].map(TAGS.index)] * 3.0
    polarity = prompts["polarity"].to_numpy()[:, None] * polarity_scale
    return np.concatenate([tag, polarity, rng.normal(0, 0.1, (len(prompts), 5))], axis=1)


def test_a_polarity_axis_is_found_and_neighbours_follow_the_dominant_direction():
    prompts = prompt_table()
    result = prompt_probe.probe(prompts, embeddings(prompts, polarity_scale=1.0))
    assert result["held_out_probe_accuracy"] == 1.0 and result["training_probe_accuracy"] == 1.0
    # Tag (norm 3) dominates the cosine, polarity (1) orders within a tag: of the 18 training prompts,
    # the 10 nearest are the 6 of the same tag (the 3 of the same polarity first) and then 4 of the
    # same polarity in other tags: 6/10 share the tag, 3 + 4 = 7/10 the polarity.
    assert result["held_out_neighbour_tag"] == pytest.approx(6 / 10)
    assert result["held_out_neighbour_polarity"] == pytest.approx(7 / 10)
    assert set(result["per_template"]) == set(prompts.loc[prompts["held_out"], "template"])


def test_leave_one_training_template_out_tells_a_shared_polarity_axis_from_per_wording_ones():
    """A polarity axis shared by every wording carries over to a left-out training template; polarity
    written on one axis per wording fits the training rows perfectly and carries over to none."""
    prompts = prompt_table()
    shared = prompt_probe.probe(prompts, embeddings(prompts, polarity_scale=1.0))
    train_templates = set(prompts.loc[~prompts["held_out"], "template"])
    assert set(shared["training_loto_per_template"]) == train_templates
    assert shared["training_loto_accuracy"] == 1.0

    wording = pd.get_dummies(prompts["template"]).to_numpy(float) * prompts["polarity"].to_numpy()[:, None]
    own_axes = np.concatenate([embeddings(prompts, polarity_scale=0.0), wording], axis=1)
    per_wording = prompt_probe.probe(prompts, own_axes)
    assert per_wording["training_probe_accuracy"] == 1.0
    assert per_wording["training_loto_accuracy"] <= 0.5


def test_neighbour_agreement_against_a_brute_force_count():
    rng = np.random.default_rng(1)
    emb, labels = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    query, pool = np.arange(0, 8), np.arange(8, 30)
    got = prompt_probe.neighbour_agreement(emb, labels, query, pool)
    for row, q in enumerate(query):
        cos = [float(emb[q] @ emb[p] / np.linalg.norm(emb[q]) / np.linalg.norm(emb[p])) for p in pool]
        nearest = [pool[i] for i in sorted(range(len(pool)), key=lambda i: -cos[i])[:10]]
        assert got[row] == pytest.approx(np.mean([labels[p] == labels[q] for p in nearest]))


def test_main_reads_a_prepared_table_and_refuses_a_mismatched_one(tmp_path):
    prompts = prompt_table()
    prompts.to_parquet(tmp_path / "prompts.parquet")
    np.save(tmp_path / "prompt_embeddings.npy", embeddings(prompts, polarity_scale=1.0).astype(np.float32))
    assert prompt_probe.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "probe.json")]) == 0
    assert json.loads((tmp_path / "probe.json").read_text())["prepared"]["held_out_probe_accuracy"] == 1.0
    with pytest.raises(ValueError, match=r"embeddings: \(5, 3\) rows for 36 prompts"):
        prompt_probe.probe(prompts, np.zeros((5, 3)))


def test_smollm2_readings_are_batched_as_the_data_set_was_prepared(tmp_path):
    (tmp_path / DATA_CONFIG_NAME).write_text("name: probe\nencoder:\n  kind: smollm2\n  batch_size: 7\n")
    assert prompt_probe.pipeline_batch_size(tmp_path) == 7
