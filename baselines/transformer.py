"""The Transformer reference backbone, built from `transformers` model classes and trained from scratch
(work in progress: not yet registered as a model).

On a causal task it is a GPT-2 decoder (pre-layer-norm, learned positions, causal self-attention); where the
task allows non-causal models it is a BERT encoder (post-layer-norm, the padding mask from `lengths`). Both
take the backbone's input through a linear projection as `inputs_embeds`, use PyTorch's SDPA attention (flash
attention on a GPU where it applies) under the runner's autocast, and expose the backbone interface
`forward(x (B, T, F), lengths, state) -> (outputs (B, T, D), state)`.

A Transformer carries no recurrent state. The state slot carries the previous call's inputs instead: a caller
that passes the state back (PTB's windows) gets the previous window as context, attended to but not output,
so that each window's tokens are scored with up to one window of history, as a recurrent model's carried
state gives them more. `context_steps` records the longest context used.

Size: by default the width is the LSTM's `hidden_size`, the depth its `num_layers`, and the feed-forward
width is chosen so that the parameters outside embeddings (and outside the task's output layer) match those of
the LSTM of the same BackboneConfig within a few per cent (`matched_params`). GPT-2's Conv1D layers are
replaced by the equivalent nn.Linear, so that the pruning and int8 variants reach them.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from baselines.recurrent import check_options
from suite.config import BackboneConfig
from suite.errors import UserError

MAX_POSITIONS = 2048
"""Learned positions: the longest context + input a call may have."""
NOMINAL_CONTEXT = 64
"""Steps of attention the analytic FLOPs assume (the real figure depends on each call's length)."""


def lstm_params(input_size: int, cfg: BackboneConfig) -> int:
    """Parameters of the stacked LSTM of the same settings: 4 gates x (input + recurrent weights + 2 biases)."""
    h = cfg.hidden_size
    return sum(4 * (size * h + h * h + 2 * h) for size in [input_size] + [h] * (cfg.num_layers - 1))


def heads_for(width: int) -> int:
    """The most attention heads of at least 32 dimensions that divide the width (1 below 64)."""
    return max(h for h in range(1, max(1, width // 32) + 1) if width % h == 0)


def feed_forward_width(input_size: int, cfg: BackboneConfig, cross_attention: bool = False) -> int:
    """The inner width f that brings the layers to the LSTM's parameter count. Per layer: self-attention
    4d^2 + 4d, feed-forward 2df + f + d, two layer norms 4d (and cross-attention 4d^2 + 6d); once: the input
    projection Fd + d and GPT-2's final layer norm 2d."""
    d, layers = cfg.hidden_size, cfg.num_layers
    fixed = input_size * d + d + 2 * d + layers * (4 * d * d + 9 * d + (4 * d * d + 6 * d if cross_attention else 0))
    return max(1, round((lstm_params(input_size, cfg) - fixed) / (layers * (2 * d + 1))))


def _linear_from_conv1d(module: nn.Module) -> None:
    """Swap every transformers Conv1D (x @ W + b, W (in, out)) for the same nn.Linear (weight W^T)."""
    from transformers.pytorch_utils import Conv1D

    for name, child in module.named_children():
        if isinstance(child, Conv1D):
            linear = nn.Linear(*child.weight.shape)
            with torch.no_grad():
                linear.weight.copy_(child.weight.t())
                linear.bias.copy_(child.bias)
            setattr(module, name, linear)
        else:
            _linear_from_conv1d(child)


def gpt2(width: int, layers: int, inner: int, dropout: float, cross_attention: bool = False) -> nn.Module:
    """A GPT-2 stack fed by `inputs_embeds` (its one-word token table is frozen and never read)."""
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(vocab_size=1, n_embd=width, n_layer=layers, n_head=heads_for(width), n_inner=inner,
                        n_positions=MAX_POSITIONS, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                        add_cross_attention=cross_attention, bos_token_id=None, eos_token_id=None)
    net = GPT2Model(config)
    net.wte.requires_grad_(False)
    _linear_from_conv1d(net)
    return net


def bert(width: int, layers: int, inner: int, dropout: float) -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=1, hidden_size=width, num_hidden_layers=layers,
                        num_attention_heads=heads_for(width), intermediate_size=inner,
                        max_position_embeddings=MAX_POSITIONS, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, pad_token_id=0, bos_token_id=None, eos_token_id=None)
    net = BertModel(config, add_pooling_layer=False)
    net.embeddings.word_embeddings.requires_grad_(False)
    return net


def padding_mask(lengths: Tensor | None, batch: int, steps: int, device: torch.device) -> Tensor:
    """(B, T) True at real steps."""
    if lengths is None:
        return torch.ones(batch, steps, dtype=torch.bool, device=device)
    return torch.arange(steps, device=device)[None, :] < lengths.to(device)[:, None]


def embedding_params(net: nn.Module) -> int:
    """Token, position and token-type tables and BERT's embedding layer norm: what the matching leaves out."""
    return sum(p.numel() for name, p in net.named_parameters() if name.startswith(("wte.", "wpe.", "embeddings.")))


class Transformer(nn.Module):
    """Transformer reference: GPT-2 decoder on causal tasks, BERT encoder elsewhere (size matched to the LSTM)."""

    # Not registered yet: it joins MODELS (and so every task's contract tests) once translation and captioning
    # have their cross-attention decoder and its training recipe beats every task's reference line (issue 10).
    name = "transformer"
    causal = True  # it runs on causal tasks, as a decoder
    either_way = True  # told by the task whether to be causal (see baselines.backbone_factory)
    directions = 1

    def __init__(self, input_size: int, cfg: BackboneConfig, causal: bool = True):
        super().__init__()
        check_options(self.name, cfg, takes_cell=False, takes_layer_norm=False)
        self.is_causal, self.input_size, self.output_size = causal, input_size, cfg.hidden_size
        self.num_layers, self.inner = cfg.num_layers, feed_forward_width(input_size, cfg)
        self.proj = nn.Linear(input_size, cfg.hidden_size)
        make = gpt2 if causal else bert
        self.net = make(cfg.hidden_size, cfg.num_layers, self.inner, cfg.dropout)
        # The projection stands in for the token table, so it starts like one (normal, std 0.02): with
        # PyTorch's default init the inputs would dwarf the position table and order would be hard to learn.
        nn.init.normal_(self.proj.weight, std=self.net.config.initializer_range)
        nn.init.zeros_(self.proj.bias)
        self.matched_params = lstm_params(input_size, cfg)
        self.context_steps = 0

    def forward(self, x: Tensor, lengths: Tensor | None = None, state: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """x (B, T, F) -> outputs (B, T, D), zeros past each length; state: the inputs to use as context."""
        batch, steps = x.shape[:2]
        context = 0 if state is None else state.size(1)
        if context and not self.is_causal:
            raise UserError("the bidirectional Transformer encoder takes no carried state")
        inputs = x if state is None else torch.cat([state.to(x.dtype), x], 1)  # (B, C + T, F)
        if inputs.size(1) > MAX_POSITIONS:
            raise UserError(f"a sequence of {inputs.size(1)} steps is longer than the Transformer's "
                            f"{MAX_POSITIONS} positions: shorten the task's windows or inputs")
        mask = padding_mask(lengths, batch, steps, x.device)  # (B, T)
        full = torch.cat([mask.new_ones(batch, context), mask], 1)  # (B, C + T)
        hidden = self.net(inputs_embeds=self.proj(inputs), attention_mask=full.long()).last_hidden_state
        self.context_steps = max(self.context_steps, context)
        out = hidden[:, context:] * mask[..., None]  # (B, T, D)
        return out, (x if self.is_causal else None)

    def backbone_params(self) -> int:
        """Parameters outside the embedding tables: what is matched to the LSTM."""
        return sum(p.numel() for p in self.parameters()) - embedding_params(self.net)

    def describe(self) -> dict[str, Any]:
        """The record's account of the model: kind, sizes and the LSTM count it was matched to."""
        return {"kind": "gpt2-decoder" if self.is_causal else "bert-encoder", "width": self.output_size,
                "layers": self.num_layers, "heads": heads_for(self.output_size), "feed_forward": self.inner,
                "backbone_params": self.backbone_params(), "lstm_params": self.matched_params,
                "context_steps": self.context_steps}

    def flops_per_step(self) -> int:
        """Per step and sequence: 2 FLOPs per weight of the projection and the layers, plus the attention's
        scores and weighted sum (4 x context x width per layer) at NOMINAL_CONTEXT steps."""
        return 2 * self.backbone_params() + 4 * NOMINAL_CONTEXT * self.output_size * self.num_layers


class TransformerDecoder(nn.Module):
    """GPT-2 with cross-attention for the encoder-decoder tasks: previous-token embeddings (B, T, E) and a memory
    (B, S, M) -> hidden states (B, T, D). `init_state` and `step` decode one token at a time with a key-value
    cache held as plain tensors (batch first), so that suite/decoding.py's beam search can repeat and reorder
    it like any other state."""

    def __init__(self, input_size: int, memory_size: int, cfg: BackboneConfig):
        super().__init__()
        self.output_size, self.num_layers = cfg.hidden_size, cfg.num_layers
        self.inner = feed_forward_width(input_size, cfg, cross_attention=True)
        self.proj = nn.Linear(input_size, cfg.hidden_size)
        self.memory_proj = nn.Linear(memory_size, cfg.hidden_size)  # cross-attention reads the model's width
        self.net = gpt2(cfg.hidden_size, cfg.num_layers, self.inner, cfg.dropout, cross_attention=True)
        nn.init.normal_(self.proj.weight, std=self.net.config.initializer_range)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """Teacher forcing: every position at once, each attending to the earlier ones and to the memory."""
        return self.net(inputs_embeds=self.proj(x), encoder_hidden_states=self.memory_proj(memory),
                        encoder_attention_mask=memory_mask.long(), use_cache=False).last_hidden_state  # (B, T, D)

    def init_state(self, memory: Tensor, memory_mask: Tensor) -> dict[str, Any]:
        """Before the first token: the projected memory, its mask, and an empty cache."""
        return {"memory": self.memory_proj(memory), "mask": memory_mask.long(), "cache": ()}

    def step(self, x: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """One token per row: x (N, E) -> hidden (N, D); the cache gains that token's keys and values (and holds
        the memory's, computed once at the first step)."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        for layer, (keys, values, cross_keys, cross_values) in enumerate(state["cache"]):
            cache.self_attention_cache.update(keys, values, layer)
            cache.cross_attention_cache.update(cross_keys, cross_values, layer)
            cache.is_updated[layer] = True
        out = self.net(inputs_embeds=self.proj(x)[:, None], past_key_values=cache, use_cache=True,
                       encoder_hidden_states=state["memory"], encoder_attention_mask=state["mask"])
        own, cross = out.past_key_values.self_attention_cache, out.past_key_values.cross_attention_cache
        layers = tuple((own.layers[i].keys, own.layers[i].values, cross.layers[i].keys, cross.layers[i].values)
                       for i in range(self.num_layers))  # each (N, heads, steps, head width)
        return out.last_hidden_state[:, 0], {**state, "cache": layers}
