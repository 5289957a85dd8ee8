"""Losses against hand-computed values (paper Eqs. 4–9 and the entropy score)."""

from __future__ import annotations

import math

import pytest
import torch

from bigl.losses import (
    adversarial_loss,
    distillation_loss,
    entropy,
    lsgan_loss,
    output_consistency,
    segmentation_loss,
    soft_dice_loss,
)

LN3 = math.log(3.0)


def _tiny_case() -> tuple[torch.Tensor, torch.Tensor]:
    """2 classes on a 2x2 slice; softmax rows are (0.5, 0.5), (0.25, 0.75), (0.75, 0.25), (0.25, 0.75)."""
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[0.0, LN3], [-LN3, LN3]])  # class-1 minus class-0 logit per pixel
    target = torch.tensor([[[0, 1], [1, 1]]])
    return logits, target


def _onehot_logits(target: torch.Tensor, k: int, scale: float = 50.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(target, k).permute(0, 3, 1, 2).float() * scale


def test_dice_tiny_case_by_hand() -> None:
    logits, target = _tiny_case()
    # foreground class 1: I = 0.75 + 0.25 + 0.75 = 1.75, U = Σp (0.5 + 0.75 + 0.25 + 0.75 = 2.25) + 3 = 5.25
    # Dice = 3.5 / 5.25 = 2/3 -> loss 1/3 (the background class is left out)
    assert soft_dice_loss(logits, target, smooth=0.0).item() == pytest.approx(1 / 3, abs=1e-6)


def test_ce_plus_dice_tiny_case_by_hand() -> None:
    logits, target = _tiny_case()
    # CE per pixel: -ln 0.5, -ln 0.75, -ln 0.25, -ln 0.75
    ce = (math.log(2) + 2 * math.log(4 / 3) + math.log(4)) / 4
    assert segmentation_loss(logits, target).item() == pytest.approx(ce + 1 / 3, abs=1e-4)


def test_dice_perfect_and_wrong() -> None:
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:5, 3:6] = 1
    target[0, 6, 6] = 2
    target[1, 1, 1] = 3
    assert soft_dice_loss(_onehot_logits(target, 4), target).item() == pytest.approx(0.0, abs=1e-4)
    wrong = (target + 1) % 4  # every pixel predicted as another class
    assert soft_dice_loss(_onehot_logits(wrong, 4), target).item() == pytest.approx(1.0, abs=1e-4)
    assert segmentation_loss(_onehot_logits(target, 4), target).item() == pytest.approx(0.0, abs=1e-4)


def test_dice_mean_over_classes_weighs_a_small_class_like_a_large_one() -> None:
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, :8] = 1                    # 128 pixels
    target[0, 15, 15] = 2                # 1 pixel
    good = _onehot_logits(target, 3)
    miss_small = good.clone()
    miss_small[0, 2, 15, 15], miss_small[0, 0, 15, 15] = 0.0, 50.0      # the one-pixel class missed
    assert soft_dice_loss(miss_small, target).item() == pytest.approx(0.5, abs=1e-3)


def test_region_dice_scores_the_nested_regions() -> None:
    # 4 pixels: necrosis (1), edema (2), enhancing (3), background; predicted edema everywhere in the tumour
    target = torch.tensor([[[1, 2, 3, 0]]])
    pred = torch.tensor([[[2, 2, 2, 0]]])
    logits = _onehot_logits(pred, 4)
    # classes: necrosis 0, edema 2·1/(3+1) = 0.5, enhancing 0 -> loss 1 - 0.5/3
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - 0.5 / 3, abs=1e-3)
    # regions: WT perfect (1), TC 0 (predicted none of it), ET 0 -> loss 1 - 1/3
    assert soft_dice_loss(logits, target, dice="regions").item() == pytest.approx(1 - 1 / 3, abs=1e-3)
    assert soft_dice_loss(_onehot_logits(target, 4), target, dice="regions").item() == pytest.approx(0.0, abs=1e-4)
    # unlabelled pixels (-1) stay out of the region sums too
    masked = torch.tensor([[[1, 2, 3, -1]]])
    wrong_there = _onehot_logits(torch.tensor([[[1, 2, 3, 3]]]), 4)
    assert soft_dice_loss(wrong_there, masked, dice="regions").item() == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="dice must be one of"):
        soft_dice_loss(logits, target, dice="voxels")


def test_dice_absent_class_finite() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1  # classes 2 and 3 absent
    logits = torch.randn(1, 4, 4, 4, requires_grad=True)
    loss = soft_dice_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad[:, 1].abs().sum() > 0


def test_seg_loss_ignores_unlabelled_pixels() -> None:
    """Self-training's -1 pixels count in neither term: the loss equals the loss on the labelled pixels alone."""
    logits, target = _tiny_case()            # 1 x 2 x 2 x 2, the hand-checked case above
    wide = torch.cat([logits, torch.randn(1, 2, 2, 3) * 5], dim=3)          # 3 more columns of anything
    wide_target = torch.cat([target, torch.full((1, 2, 3), -1, dtype=torch.long)], dim=2)
    assert segmentation_loss(wide, wide_target).item() == pytest.approx(segmentation_loss(logits, target).item(),
                                                                        abs=1e-5)
    none = torch.full_like(target, -1)
    x = logits.clone().requires_grad_(True)
    loss = segmentation_loss(x, none)
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()


def test_seg_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        segmentation_loss(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError):
        soft_dice_loss(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4))


def test_output_consistency_values() -> None:
    a = torch.randn(2, 4, 3, 3)
    assert output_consistency(a, a.clone()).item() == 0.0
    la = torch.zeros(1, 2, 1, 2)  # both pixels (0.5, 0.5)
    lb = torch.zeros(1, 2, 1, 2)
    lb[0, 1, 0, 0] = LN3  # pixel 0 -> (0.25, 0.75): squared distance 2 * 0.25² = 0.125
    assert output_consistency(la, lb).item() == pytest.approx(0.0625)
    mask = torch.tensor([[[True, False]]])
    assert output_consistency(la, lb, mask).item() == pytest.approx(0.125)
    assert output_consistency(la, lb, mask.unsqueeze(1).float()).item() == pytest.approx(0.125)
    assert output_consistency(la, lb, torch.zeros_like(mask)).item() == 0.0


def test_distillation_loss_values() -> None:
    la = torch.zeros(1, 2, 1, 2)              # student: (0.5, 0.5) at both pixels
    q = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 1, 2)
    assert distillation_loss(la, q).item() == pytest.approx(math.log(2))
    lb = torch.zeros(1, 2, 1, 2)
    lb[0, 1, 0, 0] = LN3                      # pixel 0 -> (0.25, 0.75)
    q2 = torch.softmax(lb, 1)
    mask = torch.tensor([[[True, False]]])
    # equal to the teacher: the teacher's entropy, here -(0.25 ln 0.25 + 0.75 ln 0.75)
    assert distillation_loss(lb, q2, mask).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert distillation_loss(la, q2, torch.zeros_like(mask)).item() == 0.0
    student = torch.zeros(1, 2, 1, 2, requires_grad=True)
    teacher = torch.tensor([0.9, 0.1]).view(1, 2, 1, 1).expand(1, 2, 1, 2).clone().requires_grad_(True)
    distillation_loss(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(ValueError, match="same shape|one shape"):
        distillation_loss(la, torch.zeros(1, 3, 1, 2))


def test_adversarial_loss_values() -> None:
    zero = torch.zeros(3, 1)
    assert adversarial_loss(zero, True).item() == pytest.approx(math.log(2))
    assert adversarial_loss(zero, False).item() == pytest.approx(math.log(2))
    x = torch.full((2, 1, 2, 2), LN3)  # sigmoid = 0.75
    assert adversarial_loss(x, True).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert adversarial_loss(x, False).item() == pytest.approx(-math.log(0.25), abs=1e-6)


def test_lsgan_loss_values() -> None:
    pred = torch.tensor([0.5, 2.0])
    assert lsgan_loss(pred, True).item() == pytest.approx((0.25 + 1.0) / 2)
    assert lsgan_loss(pred, False).item() == pytest.approx((0.25 + 4.0) / 2)


def test_entropy_values() -> None:
    assert entropy(torch.zeros(2, 4, 3, 3)).item() == pytest.approx(1.0)
    confident = torch.zeros(2, 4, 3, 3)
    confident[:, 1] = 50.0
    assert entropy(confident).item() == pytest.approx(0.0, abs=1e-6)
    two = torch.zeros(1, 2, 1, 2)
    two[0, 1, 0, 0] = LN3  # (0.25, 0.75)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    assert entropy(two, torch.tensor([[[1, 0]]])).item() == pytest.approx(h, abs=1e-6)
    assert entropy(two).item() == pytest.approx((h + 1.0) / 2, abs=1e-6)
