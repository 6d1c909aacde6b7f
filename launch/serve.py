"""Serve a trained DPR checkpoint: the HTTP API and the web demo on one port.

    python -m launch.serve --checkpoint runs/ml-1m/steer --data-dir data/ml-1m-minilm-smollm2-feeling --port 8000
    # then open http://127.0.0.1:8000/  (API description: /openapi.json)

Binds 127.0.0.1 unless told otherwise: the demo has no authentication.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="dpr serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. runs/<name>/steer)")
    ap.add_argument("--data-dir", help="prepared data directory (default: the checkpoint's data_dir)")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    ap.add_argument("--cache-size", type=int, default=1024, help="prompt embeddings kept in the LRU cache")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per request")
    ap.add_argument("--quiet", action="store_true", help="no access log")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    from dpr_dist.serving import Recommender
    from dpr_dist.serving.http import make_server

    torch.set_num_threads(max(1, args.threads))
    recommender = Recommender.load(args.checkpoint, args.data_dir, cache_size=args.cache_size)
    if not recommender.info.get("data_matches_checkpoint", True):
        print("[serve] warning: the data manifest differs from the one the checkpoint was trained on", file=sys.stderr)
    server = make_server(recommender, args.host, args.port, quiet=args.quiet)
    print(f"[serve] {recommender.catalogue.num_items} items, {len(recommender.users)} users; "
          f"demo at {server.url}/  (API: {server.url}/openapi.json)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
