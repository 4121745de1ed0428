from __future__ import annotations

import dataclasses

import pytest
import torch

from guidegen.checkpoint import load_checkpoint, save_checkpoint, verify_checkpoint
from guidegen.config import load_config, save_config
from guidegen.errors import InputError, OutputExistsError
from guidegen.training import EMA, step_generators


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    channels: tuple[int, ...] = (4, 8)
    size: tuple[int, int] = (16, 16)
    name: str | None = None
    lr: float = 1e-3


def test_config_round_trip(tmp_path):
    cfg = TinyConfig(channels=(1, 2, 3), name="x")
    save_config(cfg, tmp_path / "c.json")
    assert load_config(TinyConfig, tmp_path / "c.json") == cfg


def test_config_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not a valid JSON"):
        load_config(TinyConfig, tmp_path / "bad.json")
    (tmp_path / "extra.json").write_text('{"channels": [1], "bogus": 3}')
    with pytest.raises(InputError, match="bogus"):
        load_config(TinyConfig, tmp_path / "extra.json")


def test_checkpoint_round_trip_and_corruption(tmp_path):
    weights = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    folder = save_checkpoint(tmp_path / "ckpt", TinyConfig(), weights, training={"step": 7}, raw_weights=weights)
    cfg, loaded, state = load_checkpoint(folder, TinyConfig, training=True)
    assert cfg == TinyConfig() and state["step"] == 7
    torch.testing.assert_close(loaded["w"], weights["w"])
    # Flip one byte of the weights: refused with a clear, one-line error naming the file.
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupted") as info:
        load_checkpoint(folder, TinyConfig)
    assert "model.safetensors" in str(info.value)
    (folder / "checksums.json").unlink()
    with pytest.raises(InputError, match="not a complete checkpoint"):
        verify_checkpoint(folder)


def test_checkpoint_refuses_overwrite_when_asked(tmp_path):
    save_checkpoint(tmp_path / "c", TinyConfig(), {"w": torch.zeros(1)})
    with pytest.raises(OutputExistsError):
        save_checkpoint(tmp_path / "c", TinyConfig(), {"w": torch.zeros(1)}, overwrite=False)


def test_ema_warmup_and_tracking():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.zero_()
    ema = EMA(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # warm-up decay (1+1)/(10+1) = 0.18: mostly the new weights
    torch.testing.assert_close(ema.shadow.weight, torch.full((1, 2), 1 - 2 / 11))
    for _ in range(2000):
        ema.update(model)
    torch.testing.assert_close(ema.shadow.weight, torch.ones(1, 2), atol=1e-3, rtol=0)


def test_step_generators_are_reproducible():
    a_np, a_t = step_generators(3, 10)
    b_np, b_t = step_generators(3, 10)
    assert a_np.random() == b_np.random()
    assert torch.equal(torch.rand(3, generator=a_t), torch.rand(3, generator=b_t))
    c_np, _ = step_generators(3, 11)
    assert c_np.random() != step_generators(3, 10)[0].random()
