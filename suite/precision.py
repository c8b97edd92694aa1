"""Precision policies: fp32, tf32, bf16 and fp16 mixed precision, applied by the runner only.

A task never branches on precision: the runner wraps its forward passes in `policy.autocast()`
and steps the optimizer through `policy.step(...)`, which adds GradScaler for fp16.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from suite.errors import UserError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionPolicy:
    """One run's precision: autocast dtype, tf32 switch and (fp16) loss scaling."""

    def __init__(self, name: str, device: torch.device):
        self.name, self.device = name, device
        if name == "tf32" and device.type != "cuda":
            raise UserError("tf32 is a CUDA matmul mode: on CPU use --precision fp32 or bf16")
        if device.type == "cuda":
            # tf32 is an explicit policy here: leave it off for fp32 so fp32 means fp32.
            torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
            torch.backends.cudnn.allow_tf32 = name == "tf32"
        self.dtype = _DTYPES.get(name)
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def check(self, model: nn.Module) -> None:
        """Refuse combinations the backend cannot run, before any training happens."""
        if self.name == "fp16" and self.device.type == "cpu":
            if any(isinstance(m, nn.LSTM) for m in model.modules()):
                raise UserError("fp16 autocast of LSTM layers is not supported on CPU (oneDNN has no fp16 "
                                "LSTM kernel): use --precision bf16 or fp32, or run on a GPU")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
             clip: float | None) -> None:
        """Backward, unscale (fp16), clip the global gradient norm, step."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        if clip is not None:
            nn.utils.clip_grad_norm_(params, clip)
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
