"""Tests of the prompt encoder (guidegen.text.encoder) with the bundled all-MiniLM-L6-v2."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch

from guidegen.errors import InputError
from guidegen.text.encoder import TextEncoder, TextEncoderConfig


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(TextEncoderConfig(max_length=32))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_shapes_and_normalisation(encoder):
    out = encoder.encode(["enlarged spleen", "a small hypodense lesion in the left lobe of the liver"])
    assert out.tokens.shape == (2, 32, 384) and out.tokens.dtype == torch.float32
    assert out.mask.shape == (2, 32) and out.mask.dtype == torch.bool
    assert out.pooled.shape == (2, 384)
    assert encoder.embedding_dim == 384
    torch.testing.assert_close(out.pooled.norm(dim=1), torch.ones(2))
    # [CLS] + word pieces + [SEP] are real tokens, at the front; padding states are zero.
    n = len(encoder._tokenizer("enlarged spleen")["input_ids"])
    assert 4 <= n < 32 and int(out.mask[0].sum()) == n and bool(out.mask[0, :n].all())
    assert torch.all(out.tokens[0, n:] == 0) and torch.all(out.tokens[0, :n].abs().sum(dim=1) > 0)
    assert int(out.mask[1].sum()) > int(out.mask[0].sum())


def test_deterministic_without_cache():
    a = TextEncoder(TextEncoderConfig(max_length=16, memory_cache_size=0))
    first = a.encode(["liver with two metastases"])
    second = a.encode(["liver with two metastases"])
    assert a.stats["computed"] == 2
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.pooled, second.pooled)
    # Batch-independent: the same prompt among others gives the same embedding.
    mixed = a.encode(["kidney cyst", "liver with two metastases"])
    assert torch.equal(mixed.pooled[1], first.pooled[0])


def test_semantics(encoder):
    out = encoder.encode(["enlarged spleen", "splenomegaly", "sigmoid colon cancer"]).pooled
    assert _cos(out[0], out[1]) > _cos(out[0], out[2])


def test_memory_cache_hit_skips_model(encoder, monkeypatch):
    first = encoder.encode(["pancreatic head mass"])

    def fail(prompt):
        raise AssertionError(f"model called again for {prompt!r}")

    monkeypatch.setattr(encoder, "_compute", fail)
    again = encoder.encode(["pancreatic head mass"])
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    again.tokens.zero_()  # results are copies: the cache is unaffected
    assert torch.equal(encoder.encode(["pancreatic head mass"]).tokens, first.tokens)


def test_memory_cache_is_lru():
    enc = TextEncoder(TextEncoderConfig(max_length=8, memory_cache_size=2))
    enc.encode(["a", "b", "a", "c"])  # "b" is the least recently used when "c" arrives
    assert enc.stats == {"memory_hits": 1, "disk_hits": 0, "computed": 3}
    enc.encode(["a", "c", "b"])
    assert enc.stats["computed"] == 4


def test_disk_cache_round_trip(tmp_path, monkeypatch):
    cfg = TextEncoderConfig(max_length=16, cache_dir=tmp_path / "cache")
    first = TextEncoder(cfg).encode(["small bowel obstruction", "normal study"])
    files = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 2
    fresh = TextEncoder(cfg)
    monkeypatch.setattr(fresh, "_compute", lambda prompt: pytest.fail("disk cache missed"))
    again = fresh.encode(["small bowel obstruction", "normal study"])
    assert fresh.stats["disk_hits"] == 2
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    # A damaged file is a miss, recomputed and rewritten.
    target = tmp_path / "cache" / f"{fresh.cache_key('normal study')}.safetensors"
    target.write_bytes(b"not a safetensors file")
    other = TextEncoder(cfg)
    torch.testing.assert_close(other.encode(["normal study"]).pooled, first.pooled[1:])
    assert other.stats["computed"] == 1 and target.stat().st_size > 100


def test_loads_with_network_blocked(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    out = TextEncoder(TextEncoderConfig(max_length=8, memory_cache_size=0)).encode(["renal mass"])
    assert out.pooled.shape == (1, 384)


def test_missing_model_directory(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(InputError) as err:
        TextEncoder(TextEncoderConfig(model_path=missing))
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="config.json"):
        TextEncoder(TextEncoderConfig(model_path=empty))


def test_bad_arguments(encoder):
    with pytest.raises(ValueError, match="max_length"):
        TextEncoderConfig(max_length=0)
    with pytest.raises(ValueError, match="list of strings"):
        encoder.encode("a single string")
    with pytest.raises(ValueError, match="empty"):
        encoder.encode([])
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        encoder.encode(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_position_embeddings"):
        TextEncoder(TextEncoderConfig(max_length=10_000)).encode(["x"])


def test_import_is_lazy():
    code = "import sys, guidegen.text.encoder; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
