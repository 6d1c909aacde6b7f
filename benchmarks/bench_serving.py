"""Serving latency and throughput: top-10 for a user with a prompt, warm and cold prompt cache.

    python -m benchmarks.bench_serving                       # 3,706 and 1,000,000 synthetic items
    python -m benchmarks.bench_serving --items 3706 --encoder hash --requests 20
    python -m benchmarks.bench_serving --items "" --checkpoint runs/ml-1m/steer   # a trained model

Synthetic catalogues get random weights (latency does not depend on what was learnt, only on
the catalogue size, d and max_len); ``--checkpoint`` measures a trained model on its own prepared
data (ML-1M: 3,706 items, max_len 200) with the prompt encoder its manifest names. The synthetic
runs use the real prompt encoder (all-MiniLM-L6-v2) by default, so a cold cache pays for encoding. Latency is measured in-process (one request at a time); throughput over
HTTP on 127.0.0.1 with a bounded number of concurrent clients, each sending its next request when
the previous answer arrived. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from data_pipeline.config import EncoderConfig
from dpr_dist.modules import ModelConfig, build_model
from dpr_dist.serving import Recommender
from dpr_dist.serving.catalogue import Catalogue, UserHistories
from dpr_dist.serving.http import make_server
from dpr_dist.serving.prompt_cache import PromptEmbeddings

NUM_TAGS = 18  # ML-1M's genre count


def synthetic_recommender(num_items: int, encoder: str, seed: int = 0, users: int = 200, hist_len: int = 50) -> Recommender:
    rng = np.random.default_rng(seed)
    tags = [f"genre{t:02d}" for t in range(NUM_TAGS)]
    item_tag = torch.from_numpy(rng.random((num_items + 1, NUM_TAGS)) < 0.1)
    item_tag[0] = False
    tag_lists = [[tags[t] for t in np.flatnonzero(row)] for row in item_tag[1:].numpy()]
    items = pd.DataFrame({"item_id": np.arange(1, num_items + 1), "original_id": np.arange(1, num_items + 1).astype(str),
                          "title": [f"Item {i}" for i in range(1, num_items + 1)], "tags": tag_lists})
    enc_cfg = EncoderConfig(kind=encoder, dim=384)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(hidden=64, max_len=50, prompt_dim=384, dropout=0.0), num_items)
    histories = {u: rng.integers(1, num_items + 1, hist_len) for u in range(1, users + 1)}
    return Recommender(model, Catalogue(items, tags, item_tag), PromptEmbeddings.from_config(enc_cfg, 1024),
                       UserHistories(histories))


def _status_mib(field: str) -> int | None:
    """VmRSS / VmHWM of this process from /proc (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (VmHWM), so the query phase's own peak can be read."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def percentiles(ms: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2), "n": len(ms)}


def _tag(rec: Recommender, i: int) -> str:
    names = rec.catalogue.tag_names
    return names[i % len(names)]


def latency(rec: Recommender, requests: int, cold: bool) -> dict:
    warm_prompt = f"more {_tag(rec, 1)} please"
    rec.recommend(user=1, prompt=warm_prompt, k=10)  # warm-up: first-call allocations
    times = []
    for i in range(requests):
        prompt = f"something like {_tag(rec, i)}, take {i}" if cold else warm_prompt
        start = time.perf_counter()
        rec.recommend(user=1 + i % len(rec.users), prompt=prompt, k=10)
        times.append((time.perf_counter() - start) * 1000)
    return percentiles(times)


def throughput(rec: Recommender, concurrency: int, requests: int) -> dict:
    server = make_server(rec, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    times, errors, lock = [], [], threading.Lock()

    def client(worker: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        for i in range(worker, requests, concurrency):
            body = json.dumps({"user": 1 + i % len(rec.users), "prompt": f"more {_tag(rec, i)} please", "k": 10})
            start = time.perf_counter()
            conn.request("POST", "/recommend", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            with lock:
                times.append((time.perf_counter() - start) * 1000)
                if resp.status != 200:
                    errors.append(resp.status)
        conn.close()

    start = time.perf_counter()
    workers = [threading.Thread(target=client, args=(w,)) for w in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    server.shutdown()
    server.server_close()
    return {"concurrency": concurrency, "requests": requests, "errors": len(errors),
            "requests_per_s": round(requests / elapsed, 1), **percentiles(times)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", default="3706,1000000", help="comma-separated synthetic catalogue sizes (\"\" for none)")
    ap.add_argument("--checkpoint", action="append", default=[], help="a trained stage checkpoint (repeatable)")
    ap.add_argument("--encoder", default="minilm", choices=["minilm", "hash"])
    ap.add_argument("--requests", type=int, default=50, help="per latency measurement")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--load-requests", type=int, default=80)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    out = {"benchmark": "serving", "encoder": args.encoder, "threads": args.threads, "k": 10, "catalogues": {}}
    builds = [(str(n), lambda n=n: synthetic_recommender(n, args.encoder)) for n in (int(x) for x in args.items.split(",") if x)]
    builds += [(ckpt, lambda ckpt=ckpt: Recommender.load(ckpt)) for ckpt in args.checkpoint]
    for name, build in builds:
        start = time.perf_counter()
        rec = build()
        build_s = round(time.perf_counter() - start, 1)
        after_build = _status_mib("VmRSS")
        reset = _reset_peak_rss()
        out["catalogues"][name] = {
            "build_s": build_s, "rss_after_build_mib": after_build,
            "items": rec.catalogue.num_items, "hidden": rec.model.cfg.hidden, "max_len": rec.model.cfg.max_len,
            "warm": latency(rec, args.requests, cold=False),
            "cold": latency(rec, args.requests, cold=True),
            "http": throughput(rec, args.concurrency, args.load_requests),
        }
        # Peak while answering: the chunked top-K's working set on top of the loaded model. (The reset
        # also clears ru_maxrss; without it, only the process's high-water mark is known.)
        if reset:
            out["catalogues"][name]["query_peak_rss_mib"] = _status_mib("VmHWM")
        else:
            out["catalogues"][name]["process_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        del rec
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
