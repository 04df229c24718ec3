"""The fusion classifier: StyleGRU + style attention + transformer encoder + two FC layers.

Plain PyTorch (no Ray, no MLflow). Inputs are the cached per-video features of the
extraction job (see :mod:`raydf.schema`)::

    content (B, K, 2048)   one 3D ResNet-50 vector per 16-frame clip, K = T // 16
    style   (B, T, 512)    one pSp level-9 style code per sampled frame
    valid   (B, T) bool    whether MTCNN found a face in that frame

Architecture (report, "Style Attention Module" and "Classification"):

1. **StyleGRU** runs over the style sequence. With ``style_flow`` it runs over the first
   differences of consecutive style codes instead (StyleFlow, Choi et al., CVPR 2024).
2. **Style attention** (single head, as in the report): content clips are the queries,
   GRU hidden states the keys and values, through three separate linear projections to
   ``d_model``; weights are ``softmax(q k^T / sqrt(d_model))`` over frames.
3. **Fusion tokens**: one token per clip, ``LayerNorm(q_k + attended_k)`` -- the query
   (projected content) plus the style it attended to, the residual form of
   cross-attention. We add rather than concatenate so the sequence stays K tokens long
   and a video whose faces were all missed degrades to content-only tokens instead of
   K tokens of zeros. No clip position embedding: the model is trained at K=2 and
   evaluated at K=4, and a learned position table would meet positions it never saw
   (each clip's 3D ResNet feature already encodes its own 16 frames of motion).
4. A learned **class token** is prepended and a ``nn.TransformerEncoder`` (pre-LN,
   batch_first) runs over ``K + 1`` tokens; the class token's output is the fused video
   embedding (:meth:`FusionClassifier.embed`).
5. Two fully connected layers reduce it to one logit; ``sigmoid(logit)`` is P(fake).
   Training uses ``BCEWithLogitsLoss`` on the logits.

Masking frames without a face (``valid=False``):

* GRU: the valid frames of each video are gathered to the front, in order, and run as a
  packed sequence of length ``n_valid``, then the hidden states are scattered back to their
  frame positions. The GRU therefore skips missing frames as if they were never sampled
  (zeroing them instead would feed it fake "all-zero face" steps and, under StyleFlow, two
  spurious jumps per gap). With ``style_flow`` the differences are taken between
  consecutive *valid* frames; the first valid frame gets a zero difference.
* Attention: masked frames get ``-inf`` scores before the softmax. A video with no valid
  frame at all gets all-zero attention weights (no NaN), so its tokens are content only.
  :func:`valid_enough` lets the data loader drop such videos beforehand.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from raydf.config import FusionConfig

log = logging.getLogger(__name__)

__all__ = ["FusionClassifier", "StyleGRU", "StyleAttention", "valid_enough", "count_parameters"]


def valid_enough(valid: np.ndarray | Tensor, min_fraction: float) -> np.ndarray | Tensor:
    """Which videos have at least ``min_fraction`` of their frames with a valid face.

    Args:
        valid: (N, T) bool per-frame face validity (numpy or torch).
        min_fraction: in [0, 1]; ``FusionConfig.min_valid_fraction`` by default in training.

    Returns:
        (N,) bool mask of the same kind as ``valid`` (numpy in, numpy out). With
        ``min_fraction == 0`` every video is kept, even one with no face at all.
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    if valid.ndim != 2:
        raise ValueError(f"valid must be (N, T), got shape {tuple(valid.shape)}")
    if isinstance(valid, Tensor):
        return valid.bool().float().mean(dim=1) >= min_fraction  # (N, T) -> (N,)
    return np.asarray(valid, dtype=bool).mean(axis=1) >= min_fraction  # (N, T) -> (N,)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class StyleGRU(nn.Module):
    """GRU over the valid frames of a style sequence; hidden states back at frame positions."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.flow = cfg.style_flow
        self.gru = nn.GRU(
            input_size=cfg.style_dim,
            hidden_size=cfg.gru_hidden,
            num_layers=cfg.gru_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.gru_layers > 1 else 0.0,  # nn.GRU warns on dropout with 1 layer
        )

    def forward(self, style: Tensor, valid: Tensor) -> Tensor:
        """(B, T, D) style codes, (B, T) bool -> (B, T, H) hidden states (zeros at invalid frames)."""
        b, t, d = style.shape
        # Stable sort puts valid frames first, keeping their temporal order.
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # (B, T)
        inverse = torch.argsort(order, dim=1)  # (B, T): frame position -> packed position
        lengths = valid.sum(dim=1)  # (B,)
        packed_valid = torch.arange(t, device=style.device)[None, :] < lengths[:, None]  # (B, T)
        x = style.gather(1, order[:, :, None].expand(b, t, d))  # (B, T, D) valid frames first
        keep = packed_valid[:, :, None]  # (B, T, 1)
        x = torch.where(keep, x, torch.zeros_like(x))  # (B, T, D) no value (not even NaN) of an invalid frame gets through
        if self.flow:
            diff = x[:, 1:] - x[:, :-1]  # (B, T-1, D) s_t - s_{t-1} between consecutive valid frames
            x = torch.cat([torch.zeros_like(x[:, :1]), diff], dim=1)  # (B, T, D) zero step at the first frame
            x = torch.where(keep, x, torch.zeros_like(x))  # (B, T, D) drop the jump from the last valid frame into padding
        # pack_padded_sequence needs length >= 1; an all-invalid video runs one zero step whose
        # output the attention masks anyway.
        lengths_cpu = lengths.clamp(min=1).cpu()  # (B,)
        packed = pack_padded_sequence(x, lengths_cpu, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=t)  # (B, T, H) zeros past n_valid
        h = torch.where(keep, h, torch.zeros_like(h))  # (B, T, H) the clamped step of an all-invalid video -> 0
        return h.gather(1, inverse[:, :, None].expand(b, t, h.shape[-1]))  # (B, T, H) back to frame order


class StyleAttention(nn.Module):
    """Single-head cross-attention: content clips query the StyleGRU states of the frames."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.query = nn.Linear(cfg.content_dim, cfg.d_model)
        self.key = nn.Linear(cfg.gru_hidden, cfg.d_model)
        self.value = nn.Linear(cfg.gru_hidden, cfg.d_model)
        self.scale = 1.0 / math.sqrt(cfg.d_model)  # report: "normalizing by the dimensionality"
        self.last_weights: Tensor | None = None  # (B, K, T), detached, from the latest forward

    def forward(self, content: Tensor, hidden: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(q, attended)``, both (B, K, d_model), and keeps the weights in ``last_weights``."""
        q = self.query(content)  # (B, K, 2048) -> (B, K, d)
        k = self.key(hidden)  # (B, T, H) -> (B, T, d)
        v = self.value(hidden)  # (B, T, H) -> (B, T, d)
        scores = torch.einsum("bkd,btd->bkt", q, k) * self.scale  # (B, K, T)
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))  # (B, K, T) no face -> no weight
        any_valid = valid.any(dim=1)[:, None, None]  # (B, 1, 1)
        # An all-masked row would be softmax(-inf, ..., -inf) = NaN; give it finite scores, then zero weights.
        scores = torch.where(any_valid, scores, torch.zeros_like(scores))  # (B, K, T)
        weights = torch.softmax(scores, dim=-1) * any_valid  # (B, K, T) rows sum to 1, or 0 with no face
        self.last_weights = weights.detach()
        attended = torch.einsum("bkt,btd->bkd", weights, v)  # (B, K, d)
        return q, attended


class FusionClassifier(nn.Module):
    """StyleGRU + style attention + transformer with a class token + two FC layers -> one logit.

    Example::

        model = FusionClassifier(FusionConfig())
        logits = model(content, style, valid)        # (B,); P(fake) = logits.sigmoid()
        emb = model.embed(content, style, valid)     # (B, d_model) for the decision-boundary plot
        model.attention_weights                      # (B, K, T) of the latest call
    """

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Per-dimension standardisation of the inputs, fitted on the training split
        # (:meth:`set_feature_stats`): extractor outputs (pretrained or random) live on very
        # different scales, e.g. a random-init pSp varies by ~1e-4 between faces.
        self.register_buffer("content_mean", torch.zeros(cfg.content_dim))
        self.register_buffer("content_std", torch.ones(cfg.content_dim))
        self.register_buffer("style_mean", torch.zeros(cfg.style_dim))
        self.register_buffer("style_std", torch.ones(cfg.style_dim))
        self.style_gru = StyleGRU(cfg)
        self.style_attention = StyleAttention(cfg)
        self.token_norm = nn.LayerNorm(cfg.d_model)
        self.token_dropout = nn.Dropout(cfg.dropout)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        nn.init.trunc_normal_(self.cls_token, std=0.02)  # ViT's class-token init
        layer = nn.TransformerEncoderLayer(
            d_model=cfg.d_model,
            nhead=cfg.transformer_heads,
            dim_feedforward=cfg.ff_dim,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,  # pre-LN trains stably without warm-up
        )
        self.encoder = nn.TransformerEncoder(
            layer,
            num_layers=cfg.transformer_layers,
            norm=nn.LayerNorm(cfg.d_model),  # pre-LN leaves the last output un-normalised
            enable_nested_tensor=False,  # no padding mask here, and it warns with norm_first
        )
        self.head = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.fc_hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.fc_hidden, 1),
        )

    @torch.no_grad()
    def set_feature_stats(self, content_mean: Tensor, content_std: Tensor, style_mean: Tensor, style_std: Tensor) -> None:
        """Fix the input standardisation: ``(x - mean) / std`` per feature dimension."""
        for name, value in (("content_mean", content_mean), ("content_std", content_std), ("style_mean", style_mean), ("style_std", style_std)):
            buf = getattr(self, name)
            buf.copy_(torch.as_tensor(value, dtype=buf.dtype).reshape(buf.shape))

    @property
    def attention_weights(self) -> Tensor | None:
        """(B, K, T) style-attention weights of the latest forward (detached); 0 at masked frames."""
        return self.style_attention.last_weights

    def embed(self, content: Tensor, style: Tensor, valid: Tensor | None = None) -> Tensor:
        """The fused class-token embedding, (B, d_model).

        Args:
            content: (B, K, content_dim) clip features, any K >= 1.
            style: (B, T, style_dim) per-frame style codes, any T >= 1.
            valid: (B, T) face validity (anything castable to bool); None = all frames valid.
        """
        self._check(content, style, valid)
        b, t, _ = style.shape
        valid = torch.ones(b, t, dtype=torch.bool, device=style.device) if valid is None else valid.to(style.device).bool()
        content = (content - self.content_mean) / self.content_std  # (B, K, 2048) standardised
        style = (style - self.style_mean) / self.style_std  # (B, T, 512) standardised
        hidden = self.style_gru(style, valid)  # (B, T, 512) -> (B, T, H)
        q, attended = self.style_attention(content, hidden, valid)  # (B, K, d), (B, K, d)
        tokens = self.token_dropout(self.token_norm(q + attended))  # (B, K, d)
        cls = self.cls_token.expand(b, -1, -1)  # (B, 1, d)
        x = self.encoder(torch.cat([cls, tokens], dim=1))  # (B, K+1, d) -> (B, K+1, d)
        return x[:, 0]  # (B, d) class token

    def forward(self, content: Tensor, style: Tensor, valid: Tensor | None = None) -> Tensor:
        """Logits (B,) -- apply ``sigmoid`` for P(fake). Arguments as in :meth:`embed`."""
        return self.head(self.embed(content, style, valid)).squeeze(-1)  # (B, d) -> (B, 1) -> (B,)

    def _check(self, content: Tensor, style: Tensor, valid: Tensor | None) -> None:
        c, s = self.cfg.content_dim, self.cfg.style_dim
        if content.ndim != 3 or content.shape[-1] != c:
            raise ValueError(f"content must be (B, K, {c}), got {tuple(content.shape)}")
        if style.ndim != 3 or style.shape[-1] != s:
            raise ValueError(f"style must be (B, T, {s}), got {tuple(style.shape)}")
        if content.shape[0] != style.shape[0] or content.shape[1] < 1 or style.shape[1] < 1:
            raise ValueError(f"content {tuple(content.shape)} and style {tuple(style.shape)} disagree")
        if valid is not None and tuple(valid.shape) != tuple(style.shape[:2]):
            raise ValueError(f"valid must be {tuple(style.shape[:2])}, got {tuple(valid.shape)}")
