"""Knowledge-distillation losses (Hinton et al. 2015; paper 000 §II-C and §III-C).

A teacher's logits ``t`` softened at temperature T give soft labels ``softmax(t / T)``; the student
``s`` is trained on

    L = w · T² · KL(softmax(t / T) ‖ softmax(s / T)) + (1 − w) · CE(s, y)

The T² keeps the soft term's gradients on the scale of the hard term's as T grows (the gradient of
the KL term shrinks as 1/T²). Paper 000 uses T = 20: T = 5 changed little against hard labels.
The same loss on the validation split, against the teacher's validation logits, is what the
morphism search scores a child by (the "softened validation loss").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(t / T) ‖ softmax(s / T))``, averaged over the batch.

    Args:
        student_logits: ``[N, K]``.
        teacher_logits: ``[N, K]``, no gradient needed.
        temperature: T > 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float, kd_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the soft term (``kd``) and the hard cross-entropy (``ce``).

    Args:
        student_logits: ``[N, K]``.
        teacher_logits: ``[N, K]``.
        targets: ``[N]`` hard labels.
        temperature: T of the soft term.
        kd_weight: w in [0, 1], the soft term's weight; ``1 - w`` goes to the hard term.

    Returns:
        The loss, and its named terms (detached) for logging.
    """
    if not 0.0 <= kd_weight <= 1.0:
        raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
    kd = soft_kd_loss(student_logits, teacher_logits, temperature)
    ce = F.cross_entropy(student_logits, targets)
    loss = kd_weight * kd + (1.0 - kd_weight) * ce
    return loss, {"kd": kd.detach(), "ce": ce.detach()}
