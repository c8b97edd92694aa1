"""Machine translation with an attentional encoder-decoder (tasks/seq2seq.py), scored by sacrebleu.

Sources:
- real, `options.dataset="multi30k"`: Multi30k task 1 (Elliott et al. 2016; 29,000 / 1,014 / 1,000
  pairs, test = test2016 Flickr) from the WMT16 multimodal files, sha256-checked (the published checksums);
  De->En by default, En->De with `options.src_lang="en" options.tgt_lang="de"`.
- real, `options.dataset="parallel"`: any pair, as `{train,valid,test}.{src_lang,tgt_lang}` plain-text
  files, one sentence per line, in `options.parallel_dir` (IWSLT or WMT plug in here).
- synthetic: tasks/synthetic_translation.py, an SVO -> SOV pair with case and agreement.

Tokens: a BPE model (`tokenizers`, Metaspace pre-tokenizer, so decoding restores the text exactly) trained
on the training split, joint or one per side, cached under the data dir keyed by its settings and the data
checksum. Metrics: sacrebleu BLEU and chrF on the detokenized output against the raw references (the
signatures go into the record), and the teacher-forced loss (mean NLL per target token) and perplexity.
The unit is a target token (EOS counted).

Published anchors, Multi30k De->En, greedy, non-pretrained (their tokenizations differ from ours, which is
sacrebleu's): BiGRU encoder + Bahdanau attention about 28 BLEU, GRU without attention about 21, LSTM
seq2seq without attention about 14.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sacrebleu
import torch
import torch.nn.functional as F
from torch import nn

from suite.archives import extract
from suite.config import Checked, bounded, seed_field
from suite.decoding import decode
from suite.errors import DataError, UserError
from suite.fetch import RemoteFile, fetch
from suite.registry import register_task
from tasks.attention import ATTENTIONS
from tasks.base import BackboneFactory, Task
from tasks.batching import bucket_order
from tasks.seq2seq import build_seq2seq
from tasks.subwords import BOS, EOS, PAD, train_or_load_bpe
from tasks.synthetic_translation import ParallelSource
from tasks.translation_report import no_attention_reference, save_heatmaps, save_hypotheses

SPLITS = ("train", "valid", "test")
MULTI30K_ORIGIN = "http://www.quest.dcs.shef.ac.uk/wmt16_files_mmt"
# split -> (archive, file prefix inside it); sha256 as published with torchtext's Multi30k for these files.
# The often-used copy at raw.githubusercontent.com/neychev/small_DL_repo/master/datasets/Multi30k has the
# same training and validation archives but a different test archive (sha256 6d1ca1db...), which fails
# the check here: point SUITE_DATA_MIRROR only at a copy of the original files.
MULTI30K = {
    "train": (RemoteFile("training.tar.gz", "20140d013d05dd9a72dfde46478663ba05737ce983f478f960c1123c6671be5e"),
              "train"),
    "valid": (RemoteFile("validation.tar.gz", "a7aa20e9ebd5ba5adce7909498b94410996040857154dab029851af3a866da8c"),
              "val"),
    "test": (RemoteFile("mmt16_task1_test.tar.gz", "0681be16a532912288a91ddd573594fbdd57c0fbb81486eff7c55247e35326c2"),
             "test"),
}

# paper: BiGRU encoder (--model brnn --set backbone.cell='gru'), 1 layer, 512 units per direction,
# 256-d embeddings, additive attention, dropout 0.5, Adam 1e-3, batch 128, clip 1, 10 epochs, greedy:
# the configuration of the ~28 BLEU anchor above.
_PAPER = {"backbone.hidden_size": 512, "backbone.num_layers": 1, "options.emb_size": 256,
          "options.dropout": 0.5, "options.attention": "additive", "options.vocab_size": 8000,
          "train.batch_size": 128, "train.eval_batch_size": 128, "train.optimizer": "adam", "train.lr": 1e-3,
          "train.clip": 1.0, "budget.max_epochs": 10}


@dataclass(frozen=True)
class TranslationOptions(Checked):
    emb_size: int = bounded(128, low=1)
    attention: str = "additive"
    """additive (Bahdanau), multiplicative (Luong general) or none (the no-attention reference)."""
    dropout: float = bounded(0.0, low=0, high=1, high_open=True)
    """Dropout on embeddings and on the attentional state."""
    dataset: str = "multi30k"
    """Real source: multi30k, or parallel (files in parallel_dir)."""
    parallel_dir: str = ""
    """Folder of {train,valid,test}.{src_lang,tgt_lang} for dataset=parallel."""
    src_lang: str = "de"
    tgt_lang: str = "en"
    vocab_size: int = bounded(8000, low=8)
    """BPE vocabulary per tokenizer, special tokens included."""
    joint_bpe: bool = True
    """One BPE model over both sides (True) or one per side."""
    max_train_tokens: int = bounded(100, low=1)
    """Training pairs with more BPE tokens on either side are left out (evaluation keeps every pair)."""
    beam: int = bounded(1, low=1)
    """Beam size at evaluation; 1 is greedy."""
    length_penalty: float = bounded(0.0, low=0)
    """GNMT length penalty alpha for ranking beam hypotheses (0 = none; larger favours longer ones)."""
    max_len_a: float = bounded(1.5, low=0)
    max_len_b: int = bounded(10, low=1)
    """A hypothesis may have at most max_len_a * source tokens + max_len_b tokens."""
    bucket_batches: int = bounded(20, low=1)
    heatmaps: int = bounded(4, low=0)
    """Validation sentences whose attention is saved as PNG next to the record."""
    reference_units: int | None = bounded(None, low=1)
    """Target tokens the no-attention twin trains for; None: the run's own budget (a fair line, twice the cost)."""
    synthetic_pairs: int = bounded(20_000, low=1)
    """Training pairs of the synthetic source."""
    synthetic_eval_pairs: int = bounded(500, low=1)
    """Validation and test pairs of the synthetic source, each."""
    synthetic_seed: int = seed_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention not in ATTENTIONS:
            raise UserError(f"options.attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        if self.dataset not in ("multi30k", "parallel"):
            raise UserError(f"options.dataset must be multi30k or parallel, got {self.dataset!r}")
        if self.src_lang == self.tgt_lang:
            raise UserError(f"options.src_lang and options.tgt_lang must differ, both are {self.src_lang!r}")


@dataclass
class Split:
    """Raw sentences and their token ids; targets end in EOS."""

    src_text: list[str]
    tgt_text: list[str]
    src: list[np.ndarray] = dataclasses.field(default_factory=list)
    tgt: list[np.ndarray] = dataclasses.field(default_factory=list)

    @property
    def src_lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.src])


def read_parallel(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    """Aligned lines of two files; misaligned files are refused with both counts."""
    for path in (src_path, tgt_path):
        if not path.is_file():
            raise DataError(f"{path} is missing: put the aligned file there, or use --source synthetic")
    src, tgt = (_lines(p) for p in (src_path, tgt_path))
    if len(src) != len(tgt):
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: parallel files must be "
                        f"aligned line by line; fix or replace them")
    return src, tgt


def _lines(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason}): replace it with the original file") from None
    while lines and not lines[-1].strip():  # the files end with a newline, some with a blank line too
        lines.pop()
    return [line.strip() for line in lines]


def collate(split: Split, index: np.ndarray, device: torch.device) -> tuple:
    """(src (B, S), src lengths (B,), target input BOS+y (B, T), target output y+EOS (B, T)), PAD-padded."""
    src = _pad([split.src[i] for i in index])
    tgt = [split.tgt[i] for i in index]
    tgt_in = _pad([np.concatenate([[BOS], t[:-1]]) for t in tgt])
    tgt_out = _pad(tgt)
    lengths = torch.tensor([len(split.src[i]) for i in index])
    return src.to(device), lengths, tgt_in.to(device), tgt_out.to(device)


def _pad(rows: list[np.ndarray]) -> torch.Tensor:
    out = np.full((len(rows), max(len(r) for r in rows)), PAD, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return torch.from_numpy(out)


@register_task("translation")
class Translation(Task):
    version = 1
    shards = True
    causal = False  # the encoder reads the whole source; the decoder is causal by construction
    unit = "tokens"
    metrics = {"bleu": True, "chrf": True, "ppl": False, "loss": False}
    primary_metric = "bleu"
    reference_name = "no-attention"
    Options = TranslationOptions
    presets = {
        # One GRU-sized model that learns the synthetic pair's reordering inside 20 s on two cores.
        "smoke": {"backbone.hidden_size": 64, "backbone.num_layers": 1, "options.emb_size": 32,
                  "options.vocab_size": 400, "train.batch_size": 32, "train.eval_batch_size": 250,
                  "train.optimizer": "adam", "train.lr": 5e-3, "train.clip": 1.0, "budget.eval_every_units": 60_000,
                  "options.reference_units": 400_000},
        "small": {"backbone.hidden_size": 256, "options.emb_size": 256, "options.dropout": 0.3,
                  "train.batch_size": 64, "train.eval_batch_size": 128, "train.optimizer": "adam",
                  "train.lr": 1e-3, "train.clip": 1.0},
        "standard": {**_PAPER, "backbone.hidden_size": 256},
        "paper": _PAPER,
    }

    def prepare(self) -> None:
        opts: TranslationOptions = self.cfg.options
        texts = self._synthetic(opts) if self.cfg.source == "synthetic" else self._real(opts)
        self.splits = {s: Split(*texts[s]) for s in SPLITS}
        train = self.splits["train"]
        self.checksum = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()
        self.src_tok, self.tgt_tok = train_or_load_bpe(train.src_text, train.tgt_text, opts.vocab_size,
                                                       opts.joint_bpe, self.checksum)
        for split in self.splits.values():
            # An empty source line still gets one token (EOS), since a packed sequence cannot be empty.
            split.src = [np.array(e.ids or [EOS], dtype=np.int64) for e in self.src_tok.encode_batch(split.src_text)]
            split.tgt = [np.array([*e.ids, EOS], dtype=np.int64) for e in self.tgt_tok.encode_batch(split.tgt_text)]
        keep = [i for i, (s, t) in enumerate(zip(train.src, train.tgt)) if train.src_text[i] and train.tgt_text[i]
                and len(s) <= opts.max_train_tokens and len(t) <= opts.max_train_tokens + 1]
        self.dropped = len(train.src) - len(keep)
        train.src, train.tgt = [train.src[i] for i in keep], [train.tgt[i] for i in keep]
        if not keep or any(not s.src for s in self.splits.values()):
            raise DataError("a translation split is empty after tokenization: check the data files")
        self.hypotheses: dict[str, list[str]] = {}
        self._reference: dict[str, Any] | None = None

    def _real(self, opts: TranslationOptions) -> dict[str, tuple[list[str], list[str]]]:
        if opts.dataset == "parallel":
            if not opts.parallel_dir:
                raise UserError("options.dataset=parallel needs --set options.parallel_dir='/path' holding "
                                f"{{train,valid,test}}.{{{opts.src_lang},{opts.tgt_lang}}}")
            root = Path(opts.parallel_dir).expanduser()
            self._info = {"dataset": "parallel", "dir": str(root)}
            return {s: read_parallel(root / f"{s}.{opts.src_lang}", root / f"{s}.{opts.tgt_lang}") for s in SPLITS}
        if {opts.src_lang, opts.tgt_lang} != {"de", "en"}:
            raise UserError("Multi30k task 1 here is German-English: set options.src_lang and options.tgt_lang "
                            "to de and en (either direction), or use options.dataset=parallel")
        texts = {}
        for split, (remote, prefix) in MULTI30K.items():
            archive = fetch(MULTI30K_ORIGIN, remote, "multi30k")
            root = extract(archive, archive.parent / remote.relpath.removesuffix(".tar.gz"))
            paths = [root / f"{prefix}.{lang}" for lang in (opts.src_lang, opts.tgt_lang)]
            for path in paths:
                if not path.is_file():
                    raise DataError(f"{path} is not in {archive.name} as extracted in {root}: delete that folder "
                                    f"to extract again, or replace {archive} with the official file")
            texts[split] = read_parallel(*paths)
        self._info = {"dataset": "multi30k", "files": {r.relpath: r.checksum for r, _ in MULTI30K.values()}}
        return texts

    def _synthetic(self, opts: TranslationOptions) -> dict[str, tuple[list[str], list[str]]]:
        source = ParallelSource(seed=opts.synthetic_seed)
        self._info = {"dataset": "synthetic", "generator": {"name": "ParallelSource", **dataclasses.asdict(source)}}
        sizes = {"train": opts.synthetic_pairs, "valid": opts.synthetic_eval_pairs, "test": opts.synthetic_eval_pairs}
        return {s: tuple([_detokenize(x) for x in side] for side in source.sample(n, i)) for i, (s, n) in
                enumerate(sizes.items())}

    def data_info(self) -> dict[str, Any]:
        opts: TranslationOptions = self.cfg.options
        return {"source": self.cfg.source, **self._info, "direction": f"{opts.src_lang}-{opts.tgt_lang}",
                "pairs": {s: len(sp.src) for s, sp in self.splits.items()},
                "train_pairs_dropped": {"count": self.dropped, "max_train_tokens": opts.max_train_tokens},
                "tokens": {s: int(sum(len(t) for t in sp.tgt)) for s, sp in self.splits.items()},
                "text_sha256": self.checksum,
                "bpe": {"joint": opts.joint_bpe, "src_vocab": self.src_tok.get_vocab_size(),
                        "tgt_vocab": self.tgt_tok.get_vocab_size()},
                "sacrebleu": signatures()}

    def build(self, make_backbone: BackboneFactory) -> nn.Module:
        opts: TranslationOptions = self.cfg.options
        return build_seq2seq(self.src_tok.get_vocab_size(), self.tgt_tok.get_vocab_size(), opts.emb_size,
                             opts.attention, opts.dropout, self.cfg.backbone, make_backbone)

    def units_per_epoch(self) -> int:
        return int(sum(len(t) for t in self.splits["train"].tgt))

    def train_batches(self, epoch: int) -> Iterator[tuple]:
        rng = np.random.default_rng([self.cfg.seed, epoch])  # deterministic in (seed, epoch) for resume
        train = self.splits["train"]
        order = bucket_order(train.src_lengths, self.cfg.train.batch_size, self.cfg.options.bucket_batches, rng)
        return (collate(train, self.shard(index), self.device) for index in order)

    def eval_batches(self, split: str) -> Iterator[tuple[np.ndarray, tuple]]:
        """(indices, batch) in source-length order: the least padding there can be."""
        data, size = self.splits[split], self.cfg.train.eval_batch_size
        order = np.argsort(data.src_lengths, kind="stable")
        for i in range(0, len(order), size):
            yield order[i:i + size], collate(data, order[i:i + size], self.device)

    def loss(self, model: nn.Module, batch: Any, carry: Any) -> tuple[torch.Tensor, int, Any]:
        src, lengths, tgt_in, tgt_out = batch
        logits = model(src, lengths, tgt_in)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=PAD)
        return loss, int((tgt_out != PAD).sum()), None

    @torch.no_grad()
    def translate(self, model: nn.Module, split: str) -> tuple[list[str], float]:
        """(detokenized hypotheses in corpus order, summed teacher-forced target NLL)."""
        opts: TranslationOptions = self.cfg.options
        hyps: list[str] = [""] * len(self.splits[split].src)
        nll = 0.0
        for index, (src, lengths, tgt_in, tgt_out) in self.eval_batches(split):
            logits = model(src, lengths, tgt_in)
            nll += float(F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=PAD,
                                         reduction="sum"))
            limit = (lengths.float() * opts.max_len_a).long() + opts.max_len_b
            found = decode(model.step, model.init_state(src, lengths), BOS, EOS, limit.to(src.device),
                           opts.beam, opts.length_penalty)
            for i, tokens in zip(index, found.tokens):
                hyps[i] = self.tgt_tok.decode(tokens)
        return hyps, nll

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        hyps, nll = self.translate(model, split)
        self.hypotheses[split] = hyps
        refs = self.splits[split].tgt_text
        loss = nll / self.eval_units(split)
        return {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
                "ppl": math.exp(loss) if loss < 700 else math.inf, "loss": loss}  # exp overflows past ~709

    def eval_units(self, split: str) -> int:
        return int(sum(len(t) for t in self.splits[split].tgt))

    def reference(self) -> dict[str, Any]:
        if self._reference is None:
            self._reference = no_attention_reference(self)
        return self._reference

    def flops_per_unit(self, model: nn.Module) -> int:
        """Encoder work per target token (source/target length ratio), decoder step, attention, output."""
        train = self.splits["train"]
        ratio = float(train.src_lengths.sum()) / self.units_per_epoch()
        return int(model.backbone.flops_per_step() * ratio) + model.decoder_flops(float(train.src_lengths.mean()))

    def sample_input(self, batch_size: int, length: int) -> tuple:
        gen = torch.Generator().manual_seed(0)
        src = torch.randint(4, self.src_tok.get_vocab_size(), (batch_size, length), generator=gen)
        tgt = torch.randint(4, self.tgt_tok.get_vocab_size(), (batch_size, length), generator=gen)
        return src.to(self.device), torch.full((batch_size,), length), tgt.to(self.device)

    def write_artifacts(self, model: nn.Module, out_dir: Path) -> dict[str, str]:
        return {**save_hypotheses(self, out_dir), **save_heatmaps(self, model, out_dir)}


def _detokenize(sentence: str) -> str:
    """The generator's "... word ." as written text, "... word.", which is what sacrebleu expects."""
    return sentence[:-2] + "." if sentence.endswith(" .") else sentence


def signatures() -> dict[str, str]:
    """sacrebleu's signatures for one reference per sentence and default settings (what evaluate uses)."""
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    bleu.corpus_score(["a"], [["a"]])  # a signature is only known once the reference count is
    chrf.corpus_score(["a"], [["a"]])
    return {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}

