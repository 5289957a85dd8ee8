"""The DANet dual-attention block of the segmenter's bottleneck (paper Sec. 3.3, Eq. 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DualAttention", "decay_groups"]


class DualAttention(nn.Module):
    """DANet dual attention (Fu et al. 2019), paper Eq. 3.

    With ξ_B of shape (B, C, h, w) and N = h*w:

    * position attention: Q = W_q ξ_B, K = W_k ξ_B (1x1 convs to C' = max(C // r, 1)),
      V = W_v ξ_B (1x1 conv to C); A_pos = softmax_keys(Qᵀ K) (B, N, N);
      pos = V A_posᵀ, i.e. pos[:, :, i] = Σ_j A_pos[i, j] V[:, :, j].
    * channel attention: E = ξ_B ξ_Bᵀ / N (B, C, C); A_cha = softmax(rowmax(E) - E);
      cha = A_cha ξ_B.
    * output: ξ = ξ_B + γ_p · pos + γ_c · cha, with γ_p, γ_c learnable scalars
      initialised to 0 (the paper's α).

    Choices where DANet/the paper leave room:

    * Sum of the two branches. DANet sums two residual outputs
      (ξ_B + γ_p·pos) + (ξ_B + γ_c·cha), which doubles ξ_B. We keep one
      residual so that with γ = 0 the block is exactly the identity and a
      plain U-Net's feature scale is unchanged at initialisation.
    * Channel energy. ``rowmax(E) - E`` is DANet's form; since softmax is
      shift-invariant it equals softmax(-E): a channel attends to the channels
      it is *least* correlated with, which keeps A_cha from collapsing onto its
      own (largest) diagonal Gram entry. We divide the Gram matrix by N (mean
      over positions rather than DANet's sum) so A_cha does not sharpen with
      slice size — our slices vary in size, DANet's crops did not — and the
      softmax does not saturate to one-hot, which would starve the attention
      discriminators (Eqs. 6–7) of gradient.
    * Position energy is DANet's unscaled Qᵀ K; the 1x1 convs learn its scale.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        inner = max(channels // reduction, 1)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma_pos = nn.Parameter(torch.zeros(1))  # γ_p
        self.gamma_cha = nn.Parameter(torch.zeros(1))  # γ_c

    def forward(self, xi_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """ξ_B (B, C, h, w) -> (ξ (B, C, h, w), A_pos (B, N, N), A_cha (B, C, C))."""
        b, c, h, w = xi_b.shape
        n = h * w
        flat = xi_b.reshape(b, c, n)  # (B, C, N)

        q = self.query(xi_b).reshape(b, -1, n)  # (B, C', N)
        k = self.key(xi_b).reshape(b, -1, n)  # (B, C', N)
        v = self.value(xi_b).reshape(b, c, n)  # (B, C, N)
        a_pos = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # (B, N, N), softmax over keys
        pos = torch.bmm(v, a_pos.transpose(1, 2))  # (B, C, N)

        energy = torch.bmm(flat, flat.transpose(1, 2)) / n  # (B, C, C)
        energy = energy.amax(dim=-1, keepdim=True) - energy
        a_cha = torch.softmax(energy, dim=-1)  # (B, C, C)
        cha = torch.bmm(a_cha, flat)  # (B, C, N)

        xi = flat + self.gamma_pos * pos + self.gamma_cha * cha  # (B, C, N)
        return xi.reshape(b, c, h, w), a_pos, a_cha


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimiser parameter groups: ``weight_decay`` for every parameter but those of the attention blocks.

    With γ_p = 0 at the start, W_q, W_k and W_v get no gradient from the loss, and Adam's L2
    weight decay then *is* their whole gradient: Adam normalises it, so each step moves them by
    about the learning rate towards 0 and they are gone within a few hundred steps (the position
    attention turns uniform for good; measured: tests/bigl/test_models.py). Weight decay of that
    kind does not belong on a gated branch; the rest of the network keeps it.
    """
    gated = {id(p) for m in model.modules() if isinstance(m, DualAttention) for p in m.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in gated], "weight_decay": weight_decay},
              {"params": [p for p in model.parameters() if id(p) in gated], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
