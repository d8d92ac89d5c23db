"""Logit distillation: forward KL from the teacher's token distribution to the student's."""

from __future__ import annotations

import torch


def forward_kl_distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """Per-token KL(p_teacher || p_student) = sum_v p_t(v) (log p_t(v) - log p_s(v)), both at temperature T.

    Multiplied by T^2 (Hinton et al. 2015) so gradients keep their scale across temperatures.
    Teacher and student must share the tokenizer (same vocabulary V).

    Args:
        student_logits, teacher_logits: [B, T, V] (the logits predicting each target token).
        response_mask: [B, T].
    Returns:
        per-token loss [B, T] (0 where masked), metrics.
    """
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"student and teacher vocabularies differ ({student_logits.shape[-1]} vs "
            f"{teacher_logits.shape[-1]}): logit distillation needs the same tokenizer"
        )
    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(dim=-1) * temperature**2
    return kl * response_mask, {}
