"""A compact world model in the shape of DINO WM, small enough to train on a CPU.

DINO WM encodes each frame with a frozen DINOv2 ViT into patch tokens,
concatenates an action embedding and a proprio embedding to every token
(``concat_dim=1``), and trains a ViT predictor with a frame-causal mask to
predict the next frame's tokens. This module keeps that shape and shrinks it:

- :class:`FrozenPatchEncoder` stands in for the frozen DINOv2 encoder, which
  cannot be downloaded in the embedded profile (no network, no account). It is
  a patch embedding plus a few transformer blocks with a fixed random
  initialisation drawn from the run's seed and never trained, so, like DINOv2,
  it gives the predictor a fixed target space. Being rebuilt from the seed, it
  is not part of a checkpoint.
- the action and proprio encoders are single linear layers, as in DINO WM.
- :class:`Predictor` is a pre-norm transformer over ``num_hist x patches``
  tokens in which a token sees only tokens of its own and earlier frames.

The loss is the MSE between predicted and target latents of the next frame
(visual and proprio parts; the action part is an input only), with the targets
computed without gradient, as DINO WM does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Pre-norm transformer block; ``mask`` is SDPA's boolean mask (True = may attend)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        out: torch.Tensor = x + self.mlp(self.norm2(x))
        return out


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class FrozenPatchEncoder(nn.Module):
    """Frozen stand-in for DINOv2: images in [0, 1] -> patch tokens (B, P, dim).

    Parameters never require grad and the module stays in eval mode whatever
    ``train()`` is called with.
    """

    def __init__(
        self, *, img_size: int, patch_size: int, dim: int, depth: int, heads: int, seed: int
    ) -> None:
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        with torch.random.fork_rng(devices=[]):
            # The same seed gives the same encoder in every process and on resume.
            torch.manual_seed(seed)
            self.patch = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
            self.pos = nn.Parameter(torch.randn(1, self.num_patches, dim) * 0.02)
            self.blocks = nn.ModuleList(Block(dim, heads, 4.0, 0.0) for _ in range(depth))
            self.norm = nn.LayerNorm(dim)
            self.blocks.apply(_init_weights)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenPatchEncoder:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch((images - 0.5) / 0.5).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = block(x)
        out: torch.Tensor = self.norm(x)
        return out


def frame_causal_mask(frames: int, patches: int) -> torch.Tensor:
    """Boolean (L, L) mask over frame-major tokens: True where key frame <= query frame."""
    frame = torch.arange(frames).repeat_interleave(patches)
    return frame[None, :] <= frame[:, None]


class Predictor(nn.Module):
    """Transformer over ``frames x patches`` tokens predicting each frame's successor."""

    mask: torch.Tensor

    def __init__(
        self,
        *,
        frames: int,
        patches: int,
        dim: int,
        out_dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
    ) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, frames * patches, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        self.register_buffer("mask", frame_causal_mask(frames, patches), persistent=False)
        self.apply(_init_weights)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens + self.pos
        for block in self.blocks:
            x = block(x, self.mask)
        out: torch.Tensor = self.head(self.norm(x))
        return out


class WMLoss(NamedTuple):
    """Total latent MSE and its visual and proprio parts (all scalar tensors)."""

    loss: torch.Tensor
    visual: torch.Tensor
    proprio: torch.Tensor


class WorldModel(nn.Module):
    """DINO-WM-shaped world model; ``forward`` returns the training loss.

    ``state_mean`` ... ``action_std`` are buffers (saved with the model) that
    normalise proprio and actions, computed from the training episodes.
    """

    state_mean: torch.Tensor
    state_std: torch.Tensor
    action_mean: torch.Tensor
    action_std: torch.Tensor

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        num_hist: int,
        frameskip: int,
        emb_dim: int,
        encoder_depth: int,
        encoder_heads: int,
        action_emb_dim: int,
        proprio_emb_dim: int,
        predictor_depth: int,
        predictor_heads: int,
        mlp_ratio: float,
        dropout: float,
        state_dim: int,
        action_dim: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.num_hist = num_hist
        self.frameskip = frameskip
        self.emb_dim = emb_dim
        self.proprio_emb_dim = proprio_emb_dim
        self.encoder = FrozenPatchEncoder(
            img_size=img_size,
            patch_size=patch_size,
            dim=emb_dim,
            depth=encoder_depth,
            heads=encoder_heads,
            seed=seed,
        )
        self.action_encoder = nn.Linear(action_dim * frameskip, action_emb_dim)
        self.proprio_encoder = nn.Linear(state_dim, proprio_emb_dim)
        self.predictor = Predictor(
            frames=num_hist,
            patches=self.encoder.num_patches,
            dim=emb_dim + proprio_emb_dim + action_emb_dim,
            out_dim=emb_dim + proprio_emb_dim,
            depth=predictor_depth,
            heads=predictor_heads,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
        )
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))

    def set_normalisation(self, stats: dict[str, torch.Tensor]) -> None:
        for name, value in stats.items():
            getattr(self, name).copy_(value)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The state dict without the frozen encoder (rebuilt from the seed instead)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("encoder.")]
        if missing or unexpected:
            raise KeyError(f"missing {missing[:3]}, unexpected {list(unexpected)[:3]}")

    def encoder_fingerprint(self) -> float:
        """A number that changes when the frozen encoder's weights do."""
        return math.fsum(float(p.double().sum()) for p in self.encoder.parameters())

    def forward(self, obs: torch.Tensor, proprio: torch.Tensor, actions: torch.Tensor) -> WMLoss:
        """``obs`` (B, H+1, 3, S, S), ``proprio`` (B, H+1, 22), ``actions`` (B, H, 9*fs)."""
        b, frames = obs.shape[:2]
        with torch.no_grad():
            z = self.encoder(obs.flatten(0, 1)).unflatten(0, (b, frames))  # (B, H+1, P, D)
        patches = z.shape[2]
        fs = self.frameskip
        act = (actions - self.action_mean.repeat(fs)) / self.action_std.repeat(fs)
        prop = self.proprio_encoder((proprio - self.state_mean) / self.state_std)  # (B, H+1, Dp)
        act_emb = self.action_encoder(act)  # (B, H, Da)

        src = torch.cat(
            [
                z[:, :-1],
                prop[:, :-1, None].expand(-1, -1, patches, -1),
                act_emb[:, :, None].expand(-1, -1, patches, -1),
            ],
            dim=-1,
        )
        pred = self.predictor(src.flatten(1, 2)).unflatten(1, (frames - 1, patches))
        with torch.no_grad():
            target = torch.cat([z[:, 1:], prop[:, 1:, None].expand(-1, -1, patches, -1)], dim=-1)
        visual = F.mse_loss(pred[..., : self.emb_dim], target[..., : self.emb_dim])
        prop_loss = F.mse_loss(pred[..., self.emb_dim :], target[..., self.emb_dim :])
        return WMLoss(F.mse_loss(pred, target), visual, prop_loss)
