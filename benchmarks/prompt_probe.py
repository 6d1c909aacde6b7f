"""How well a frozen prompt encoder separates polarity on wording it was not trained on.

The steer stage sees only the training phrasings; a held-out phrasing must land on the right side of
whatever the model learned from them. Two readings of one prepared prompt table, no recommender:

- a linear polarity probe (L2-regularised logistic regression on standardised embeddings) fitted on
  the training phrasings' prompts and scored on the held-out ones, overall and per template: can a
  simple readout trained on the training wording tell "no X" from "more X" in new wording?
- for each held-out prompt, its 10 nearest training prompts (cosine): the share with the same
  polarity and with the same tag (what nearest-neighbour-like generalisation would inherit);
- the same probe, leave one *training* template out: fitted on the other training phrasings, scored
  on the one left out. This is the number to choose an encoder on: it never sees a held-out
  phrasing, so the held-out figures stay a test of the choice.

    python benchmarks/prompt_probe.py --data-dir data/ml-1m
    python benchmarks/prompt_probe.py --data-dir data/ml-1m --encoder smollm2:eol-last

``--encoder smollm2:<prompt>-<pool>`` re-encodes the table's texts with SmolLM2-135M-Instruct
(``data_pipeline.encode.SmolLM2Encoder``): last-layer states, ``mean`` or ``last`` token pooled,
the text ``plain``, wrapped in the one-word-summary prompt ``eol`` (``SMOLLM2_PROMPT``) or in the
viewer's-feeling prompt ``feeling`` (``SMOLLM2_FEELING_PROMPT``), the usual ways of reading a
sentence vector off a decoder; ``eol-last`` is what ``encoder.kind: smollm2`` writes,
``feeling-last`` what ``smollm2-feeling`` writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_pipeline.config import DataConfig  # noqa: E402
from data_pipeline.encode import SMOLLM2_FEELING_PROMPT, SMOLLM2_PROMPT, SmolLM2Encoder  # noqa: E402
from dpr_dist.common.atomic import write_json_atomic  # noqa: E402
from dpr_dist.common.configio import load_yaml  # noqa: E402
from dpr_dist.common.schema import DATA_CONFIG_NAME, PROMPT_EMB_NAME, PROMPTS_NAME  # noqa: E402

NEIGHBOURS = 10


def polarity_probe(emb: np.ndarray, positive: np.ndarray, train: np.ndarray, l2: float = 1e-2) -> np.ndarray:
    """Predicted polarity (True = positive) of every row, from a logistic regression fitted on ``train`` rows."""
    x = torch.tensor(emb, dtype=torch.float64)
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    y = torch.tensor(positive, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")
    rows = torch.tensor(train)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x[rows] @ w + b, y[rows]) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (x @ w + b > 0).numpy()


def neighbour_agreement(emb: np.ndarray, labels: np.ndarray, query: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Per query row: share of its NEIGHBOURS nearest pool rows (cosine) with the same label."""
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sims = unit[query] @ unit[pool].T
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :NEIGHBOURS]
    return (labels[pool][nearest] == labels[query][:, None]).mean(axis=1)


def probe(prompts: pd.DataFrame, emb: np.ndarray) -> dict:
    if len(emb) != len(prompts) or not np.isfinite(emb).all():
        raise ValueError(f"embeddings: {emb.shape} rows for {len(prompts)} prompts, or non-finite values")
    held = prompts["held_out"].to_numpy(bool)
    if held.all() or not held.any():
        raise ValueError("the prompt table needs both training and held-out phrasings")
    positive = prompts["polarity"].to_numpy() > 0
    tags = pd.factorize(prompts["tag"])[0]
    correct = polarity_probe(emb, positive, ~held) == positive
    query, pool = np.flatnonzero(held), np.flatnonzero(~held)
    polarity_nn = neighbour_agreement(emb, positive, query, pool)
    tag_nn = neighbour_agreement(emb, tags, query, pool)
    loto = leave_one_template_out(emb, positive, prompts["template"].to_numpy(), ~held)
    frame = prompts[held].assign(correct=correct[held], polarity_nn=polarity_nn, tag_nn=tag_nn)
    per_template = frame.groupby("template", sort=False)[["correct", "polarity_nn", "tag_nn"]].mean()
    return {
        "held_out_probe_accuracy": float(correct[held].mean()),
        "training_probe_accuracy": float(correct[~held].mean()),
        "training_loto_accuracy": float(np.mean(list(loto.values()))),
        "training_loto_per_template": loto,
        "held_out_neighbour_polarity": float(polarity_nn.mean()),
        "held_out_neighbour_tag": float(tag_nn.mean()),
        "per_template": {t: {k: float(v) for k, v in row.items()} for t, row in per_template.iterrows()},
    }


def leave_one_template_out(emb: np.ndarray, positive: np.ndarray, templates: np.ndarray, train: np.ndarray) -> dict[str, float]:
    """Per training template, the accuracy of a probe fitted on the other training templates: how
    well polarity carries over to unseen wording, measured without the held-out phrasings (so an
    encoder can be chosen on it without looking at what the test reports)."""
    accuracy = {}
    for template in pd.unique(templates[train]):
        fit, scored = train & (templates != template), templates == template
        accuracy[str(template)] = float((polarity_probe(emb, positive, fit) == positive)[scored].mean())
    return accuracy


def pipeline_batch_size(data_dir: Path) -> int:
    """The encoder batch size the set was prepared with: padding depends on the batch, so re-encoding
    in the same batches gives the same vectors (eol-last reproduces the pipeline's smollm2 rows)."""
    return load_yaml(DataConfig, data_dir / DATA_CONFIG_NAME).encoder.batch_size


WRAPS = {"plain": "{}", "eol": SMOLLM2_PROMPT, "feeling": SMOLLM2_FEELING_PROMPT}
ENCODER_HELP = f"'prepared' (the data set's own embeddings, default) or smollm2:<{'|'.join(WRAPS)}>-<mean|last>"


def smollm2_embeddings(texts: list[str], variant: str, batch_size: int) -> np.ndarray:
    wrap, _, pool = variant.partition("-")
    if wrap not in WRAPS or pool not in ("mean", "last"):
        raise SystemExit(f"--encoder smollm2:{variant}: expected {ENCODER_HELP}")
    encoder = SmolLM2Encoder(template=WRAPS[wrap], pooling=pool)
    return np.concatenate([encoder.encode(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])


def markdown(name: str, result: dict) -> str:
    lines = [f"### {name}",
             f"held-out probe accuracy {result['held_out_probe_accuracy']:.3f} (training "
             f"{result['training_probe_accuracy']:.3f}); held-out prompts' {NEIGHBOURS} nearest training prompts: "
             f"{result['held_out_neighbour_polarity']:.3f} same polarity, {result['held_out_neighbour_tag']:.3f} same tag; "
             f"leave-one-training-template-out probe accuracy {result['training_loto_accuracy']:.3f} "
             "(the selection criterion: no held-out phrasing involved)",
             "", "| held-out template | probe accuracy | neighbours' polarity | neighbours' tag |", "|---|---|---|---|"]
    lines += [f"| {t} | {r['correct']:.2f} | {r['polarity_nn']:.2f} | {r['tag_nn']:.2f} |"
              for t, r in result["per_template"].items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="a prepared data set (prompts.parquet, prompt_embeddings.npy)")
    ap.add_argument("--encoder", action="append", default=[],
                    help=f"{ENCODER_HELP}; repeatable")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    prompts = pd.read_parquet(args.data_dir / PROMPTS_NAME)
    results = {}
    for encoder in args.encoder or ["prepared"]:
        if encoder == "prepared":
            emb = np.load(args.data_dir / PROMPT_EMB_NAME, allow_pickle=False)
        elif encoder.startswith("smollm2:"):
            emb = smollm2_embeddings(prompts["text"].tolist(), encoder.split(":", 1)[1], pipeline_batch_size(args.data_dir))
        else:
            raise SystemExit(f"--encoder {encoder!r}: expected {ENCODER_HELP}")
        results[encoder] = probe(prompts, emb)
        print(markdown(encoder, results[encoder]), flush=True)
    if args.out:
        write_json_atomic(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
