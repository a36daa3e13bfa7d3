"""Feature maps of linear attention: phi(q) . phi(k) replaces exp(q . k). The one table of them; the Triton
kernel numbers its own implementations by this table's order (``FEATURE_IDS``)."""

from __future__ import annotations

import torch.nn.functional as F

FEATURE_MAPS = {
    "elu1": lambda x: F.elu(x).add_(1),  # in place: elu saves its input for backward; a new 1 + tensor cost 2x elu
    "relu": F.relu,
    "softplus": F.softplus,
}
#: each feature map's number inside the Triton kernel
FEATURE_IDS = {name: i for i, name in enumerate(FEATURE_MAPS)}
