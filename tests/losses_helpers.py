"""Shared by test_loss_terms.py and test_policy_loss.py: float64 tensors, a tight compare, a mask.

Tensors are float64 so that hand values can be compared tightly.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64
LN2 = math.log(2.0)


def t(values, **kwargs) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, **kwargs)


def close(actual, expected, atol=1e-12) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=F64), t(expected), atol=atol, rtol=0)


# 2 sequences x 3 positions; lengths 2 and 1.
MASK = t([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
