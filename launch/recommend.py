"""``dpr recommend``: DPR's list and the backbone's for one user or history, from the command line.

    dpr recommend --model runs/ml-1m/steer --user 42 --prompt "comedy, but nothing scary" -k 10
    dpr recommend --model runs/ml-1m/steer --history-titles "Toy Story;Heat" --less Horror
    python -m launch.recommend ...   (the same without the console script)

``--data-dir`` defaults to the data_dir recorded in the checkpoint's config.yaml. Exit status 2
on bad input (unknown user or item, empty or overlong prompt), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="dpr recommend", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint directory (e.g. runs/<name>/steer)")
    ap.add_argument("--data-dir", help="prepared data directory (default: the checkpoint's data_dir)")
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, help="dense user id of the prepared data")
    who.add_argument("--history", help='original item ids, oldest first, comma-separated: "1,2,3"')
    who.add_argument("--history-titles", help='titles, oldest first, ";"-separated: "Toy Story;Heat"')
    ap.add_argument("--prompt", help="free-text prompt (omit for plain recommendation)")
    ap.add_argument("--more", action="append", default=[], metavar="TEXT",
                    help="structured clause with polarity +1 (repeatable; replaces --prompt)")
    ap.add_argument("--less", action="append", default=[], metavar="TEXT", help="structured clause with polarity -1")
    ap.add_argument("-k", type=int, default=10, help="list length (1..100)")
    ap.add_argument("--filter", action="store_true", help="hard filter: drop items carrying a tag of a negative clause")
    ap.add_argument("--json", action="store_true", help="print the API's JSON answer instead of a table")
    args = ap.parse_args(argv)
    if args.prompt is not None and (args.more or args.less):
        ap.error("give either --prompt or --more/--less, not both")
    return args


def request_from_args(args: argparse.Namespace) -> dict:
    request: dict = {"k": args.k, "filter": args.filter}
    if args.user is not None:
        request["user"] = args.user
    elif args.history is not None:
        request["history"] = [part.strip() for part in args.history.split(",") if part.strip()]
    else:
        request["history_titles"] = [part.strip() for part in args.history_titles.split(";") if part.strip()]
    if args.more or args.less:
        request["prompt"] = {"more": args.more, "less": args.less}
    elif args.prompt is not None:
        request["prompt"] = args.prompt
    return request


def format_table(answer: dict) -> str:
    """Both lists side by side; '+' marks items the prompt brought in, '-' items it pushed out."""
    lines = []
    for clause in answer["clauses"]:
        how = f"given {clause['given']}" if clause["given"] else f"router: {clause['routed']}, p(more)={clause['p_more']:.2f}"
        lines.append(f"clause {clause['text']!r}: {clause['polarity']} ({how}); tags {clause['tags']}")
    if answer["filter"]:
        lines.append(f"hard filter drops tags: {answer['filtered_tags'] or 'none named'}")
    entered, left = set(answer["entered"]), set(answer["left"])

    def cell(entry, changed, mark):
        if entry is None:
            return ""
        flag = mark if entry["id"] in changed else " "
        return f"{flag}{entry['rank']:>3} {entry['title'][:34]:<34} {entry['score']:8.3f} {','.join(entry['tags'])[:24]}"

    width = 3 + 1 + 34 + 9 + 25 + 1
    lines.append(f"{'DPR':<{width}} | backbone")
    dpr, base = answer["dpr"], answer["backbone"]
    for i in range(max(len(dpr), len(base))):
        left_cell = cell(dpr[i] if i < len(dpr) else None, entered, "+")
        right_cell = cell(base[i] if i < len(base) else None, left, "-")
        lines.append(f"{left_cell:<{width}} | {right_cell}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from dpr_dist.serving import Recommender, RequestError  # heavy imports after argument errors

    recommender = Recommender.load(args.model, args.data_dir)
    try:
        answer = recommender.recommend(**request_from_args(args)).to_json(recommender.catalogue)
    except RequestError as exc:
        print(f"dpr recommend: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2) if args.json else format_table(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
