"""How far the fusion gate opens, per task and tag, on a checkpoint's cases: finds gates that closed.

    python benchmarks/steering_gates.py --checkpoint runs/ml-1m/steer [--split test] [--max-cases 2000] \
        [--by tag|phrasing|template]

For each positive and negative case the single clause's gate g (mean over its dimensions), the
length of the steering delta u - h and, with fixed tag columns (model.tag_features), the delta on
the named tag's own column (> 0 raises every item of the tag, < 0 lowers them). A gate near 0
passes almost no gradient to itself or to the experts behind it (sigmoid'(x) = g (1 - g)): the
steering of that tag is then off for good. Also the router's weight on the negative experts (near
1 for a negative clause, near 0 for a positive one, if the router reads the polarity right).
``--by phrasing`` groups the cases by seen vs held-out phrasing instead of by tag (is a held-out
wording steered as hard as a training one?), ``--by template`` by the phrasing template itself
(which wording is misread?). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dpr_dist.common import schema  # noqa: E402
from dpr_dist.data.clauses import clause_inputs  # noqa: E402
from dpr_dist.data.prepared import load_prepared  # noqa: E402
from dpr_dist.eval.harness import case_batches, read_cases  # noqa: E402
from dpr_dist.eval.report import SINGLE_CLAUSE_PROMPT  # noqa: E402
from dpr_dist.modules import NO_CLAUSE  # noqa: E402
from dpr_dist.modules.routing import NEGATIVE_GROUP  # noqa: E402
from dpr_dist.training.run import load_model  # noqa: E402

CLOSED = 0.01
TASK_TAG = {schema.TASK_POSITIVE: "pos_tag", schema.TASK_NEGATIVE: "neg_tag"}
GROUPINGS = ("tag", "phrasing", "template")


@torch.no_grad()
def gate_stats(model, prepared, split: str, max_cases: int | None, by: str = "tag") -> dict[tuple[str, str], dict]:
    fixed = model.item_table.fixed
    templates = prepared.prompts["template"].tolist()  # row i is prompt id i (load_prepared checks)
    rows: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    for task, tag_field in TASK_TAG.items():
        cases = read_cases(prepared, split, task, max_cases)
        for batch, _ in case_batches(cases, 256, model.cfg.max_len, prepared.num_items + 1):
            clause_emb, polarity = clause_inputs(batch["pos_prompt"], batch["neg_prompt"], prepared.prompt_embeddings)
            out = model(batch["hist"], clause_emb, polarity)
            active = (polarity != NO_CLAUSE).float().argmax(dim=1)  # these tasks hold one clause per case
            case = torch.arange(len(active))
            gate = out.gate[case, active].mean(-1)
            negative_weight = out.group_probs[case, active, NEGATIVE_GROUP]
            delta = out.u - out.h
            tags = batch[tag_field]
            if fixed:
                on_tag = delta.gather(1, (delta.shape[1] - fixed + tags).unsqueeze(1)).squeeze(1)
            else:
                on_tag = torch.full_like(gate, float("nan"))
            prompts = batch[SINGLE_CLAUSE_PROMPT[task]].tolist()
            for i, (tag, held_out) in enumerate(zip(tags.tolist(), batch["held_out"].tolist())):
                if by == "tag":
                    group = prepared.tag_names[tag]
                elif by == "phrasing":
                    group = "held-out" if held_out else "seen"
                else:
                    group = f"{templates[prompts[i]]}{' (held-out)' if held_out else ''}"
                rows.setdefault((task, group), []).append(
                    (float(gate[i]), float(delta[i].norm()), float(on_tag[i]), float(negative_weight[i])))
    stats = {}
    for key, values in rows.items():
        a = np.array(values)
        stats[key] = {"cases": len(a), "gate": float(a[:, 0].mean()), "closed": float((a[:, 0] < CLOSED).mean()),
                      "delta_norm": float(a[:, 1].mean()), "delta_on_tag": float(a[:, 2].mean()),
                      "negative_weight": float(a[:, 3].mean())}
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="a steer-stage checkpoint directory")
    ap.add_argument("--data-dir", type=Path, help="prepared data (default: the checkpoint's data_dir)")
    ap.add_argument("--split", default="valid", choices=["valid", "test"])
    ap.add_argument("--max-cases", type=int, default=2000, help="per task")
    ap.add_argument("--by", default="tag", choices=GROUPINGS,
                    help="group cases by tag, by seen / held-out phrasing or by phrasing template")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, cfg, _ = load_model(args.checkpoint)
    prepared = load_prepared(args.data_dir or cfg.data_dir)
    stats = gate_stats(model, prepared, args.split, args.max_cases, args.by)
    print(f"{args.checkpoint} ({args.split}, up to {args.max_cases} cases per task)\n")
    print(f"| task | {args.by} | cases | gate mean | share gate < {CLOSED} | norm of u - h | delta on the tag's column "
          "| router weight on negative experts |")
    print("|---|---|---|---|---|---|---|---|")
    for (task, tag), s in sorted(stats.items(), key=lambda kv: (kv[0][0], -kv[1]["cases"])):
        print(f"| {task} | {tag} | {s['cases']} | {s['gate']:.3f} | {s['closed']:.0%} | {s['delta_norm']:.2f} | {s['delta_on_tag']:+.2f} | {s['negative_weight']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
