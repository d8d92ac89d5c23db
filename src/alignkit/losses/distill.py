"""Logit distillation: divergences between the teacher's and the student's next-token distributions.

- ``forward_kl_distill_loss``: KL(p_teacher || p_student) (Hinton et al. 2015), usually on fixed
  (teacher- or data-) sequences: mean-seeking, the student covers every mode of the teacher.
- ``reverse_kl_loss``: KL(p_student || p_teacher), mode-seeking; with sequences sampled from the student
  this is on-policy distillation (Gu et al. 2024, MiniLLM; Agarwal et al. 2024).
- ``generalized_jsd_loss``: GKD's generalized Jensen-Shannon divergence (Agarwal et al. 2024, "On-Policy
  Distillation of Language Models: Learning from Self-Generated Mistakes"), from forward KL (beta = 0)
  to reverse KL (beta = 1).

All are exact sums over the vocabulary, per token; teacher and student share the tokenizer.
"""

from __future__ import annotations

import math

import torch


def _log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"student and teacher vocabularies differ ({student_logits.shape[-1]} vs "
            f"{teacher_logits.shape[-1]}): logit distillation needs the same tokenizer"
        )
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)
    return (torch.log_softmax(student_logits.to(dtype) / temperature, dim=-1),  # fp32 at least (fp64 stays)
            torch.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1))


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
    s, t = _log_probs(student_logits, teacher_logits, temperature)
    kl = (t.exp() * (t - s)).sum(dim=-1) * temperature**2
    return kl * response_mask, {}


def reverse_kl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """Per-token KL(p_student || p_teacher) = sum_v p_s(v) (log p_s(v) - log p_t(v)), both at temperature T.

    Not scaled by T^2 (as GKD; unlike :func:`forward_kl_distill_loss`). Equals
    ``generalized_jsd_loss(..., beta=1)``.

    Args:
        student_logits, teacher_logits: [B, T, V]; response_mask: [B, T].
    Returns:
        per-token loss [B, T] (0 where masked), metrics (empty).
    """
    s, t = _log_probs(student_logits, teacher_logits, temperature)
    return (s.exp() * (s - t)).sum(dim=-1) * response_mask, {}


def generalized_jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """Per-token generalized JSD of GKD, with P = p_teacher, Q = p_student at temperature T:

        M = beta P + (1 - beta) Q
        JSD(beta) = beta KL(P || M) + (1 - beta) KL(Q || M)        for 0 < beta < 1
        beta = 0: KL(P || Q) (forward KL);   beta = 1: KL(Q || P) (reverse KL)

    The endpoints are the limits of JSD(beta) / beta and JSD(beta) / (1 - beta) (JSD(beta) itself goes
    to 0 there), as in GKD's and TRL's implementation; beta = 0.5 is the symmetric JSD. Not scaled by T^2.
    log M is a logsumexp, never log of a sum of probabilities.

    Args:
        student_logits, teacher_logits: [B, T, V]; response_mask: [B, T].
    Returns:
        per-token loss [B, T] (0 where masked), metrics (empty).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"generalized_jsd_loss: beta must be in [0, 1], got {beta}")
    s, t = _log_probs(student_logits, teacher_logits, temperature)
    if beta == 0.0:
        per_token = (t.exp() * (t - s)).sum(dim=-1)
    elif beta == 1.0:
        per_token = (s.exp() * (s - t)).sum(dim=-1)
    else:
        m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1.0 - beta)]), dim=0)
        per_token = beta * (t.exp() * (t - m)).sum(dim=-1) + (1.0 - beta) * (s.exp() * (s - m)).sum(dim=-1)
    return per_token * response_mask, {}
