"""visattn: attention mechanisms for computer vision, models built from them, and tools to
train, evaluate and explain them.

Example:
    >>> import torch, visattn
    >>> model = visattn.create_model("attention_cnn", num_classes=10, in_channels=1)
    >>> with visattn.record_attention(model) as maps:
    ...     logits = model(torch.randn(2, 1, 60, 60))
    >>> maps["attn"].shape
    torch.Size([2, 4, 64, 64])
"""

from .attention import (
    MultiHeadSelfAttention2d,
    SelfAttention,
    create_attention,
    list_attention,
)
from .attention.mhsa import MultiHeadAttention

# The function ``attention`` deliberately shadows the ``visattn.attention`` package as an
# attribute of ``visattn`` (the public API names the function); import mechanisms with
# ``from visattn.attention import ...``, which resolves the package.
from .functional import attention
from .maps import AttentionMaps, record_attention
from .models import AttentionCNN, create_model, insert_attention, list_models

__version__ = "0.1.0"

__all__ = [
    "AttentionCNN",
    "AttentionMaps",
    "MultiHeadAttention",
    "MultiHeadSelfAttention2d",
    "SelfAttention",
    "__version__",
    "attention",
    "create_attention",
    "create_model",
    "insert_attention",
    "list_attention",
    "list_models",
    "record_attention",
]
