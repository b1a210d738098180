"""Loading other libraries' state_dicts: an explicit key mapping, checked in full before any
tensor is copied, so that weights of another architecture are refused rather than half
loaded. Shared by the model files and by checkpoint loading."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from torch import Tensor, nn

Rules = Sequence[tuple[str, str | Callable[[re.Match[str]], str]]]


def mismatch_report(
    expected: Mapping[str, Tensor], given: Mapping[str, Tensor], *, ignore: Collection[str] = ()
) -> list[str]:
    """What stops ``given`` from loading as ``expected``: one entry each for missing,
    unexpected and mis-shaped keys (empty when the two fit)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected and k not in ignore]
    shapes = [
        f"{k} {tuple(given[k].shape)} (needs {tuple(v.shape)})"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    return [_listing(label, keys) for label, keys in _groups(missing, unexpected, shapes) if keys]


def _groups(*keys: list[str]) -> Iterable[tuple[str, list[str]]]:
    return zip(("missing", "unexpected", "wrong shape"), keys, strict=True)


def _listing(label: str, keys: list[str]) -> str:
    return f"{label} ({len(keys)}): {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"


def load_mapped(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    rules: Rules,
    *,
    source: str,
    ignore: Collection[str] = (),
) -> None:
    """Load ``state_dict`` (another library's key layout) into ``model``.

    Each of the model's keys is renamed to the other layout by the first of ``rules`` (regex,
    replacement) that matches it, unchanged when none does. Nothing is copied unless every
    renamed key is present with the right shape and ``state_dict`` holds no other key (except
    those in ``ignore``); otherwise ``ValueError`` lists the missing, unexpected and mis-shaped
    keys, so that weights of another architecture are never half-loaded.
    """
    mapping = {}
    for ours in model.state_dict():
        pattern, repl = next(((p, r) for p, r in rules if re.match(p, ours)), ("^", ""))
        mapping[ours] = re.sub(pattern, repl, ours, count=1)
    own = model.state_dict()
    expected = {theirs: own[ours] for ours, theirs in mapping.items()}
    problems = mismatch_report(expected, state_dict, ignore=ignore)
    if problems:
        raise ValueError(
            f"{source} state_dict does not fit this {type(model).__name__}; " + "; ".join(problems)
        )
    model.load_state_dict({ours: state_dict[theirs] for ours, theirs in mapping.items()})


_TIMM_RULES: Rules = [(r"^patch_embed\.", "patch_embed.proj.")]

_LAYER = r"encoder.layers.encoder_layer_\1"
_TORCHVISION_RULES: Rules = [
    (r"^patch_embed\.", "conv_proj."),
    (r"^cls_token$", "class_token"),
    (r"^pos_embed$", "encoder.pos_embedding"),
    (r"^blocks\.(\d+)\.norm1\.", _LAYER + ".ln_1."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", _LAYER + ".self_attention.in_proj_"),
    (r"^blocks\.(\d+)\.attn\.proj\.", _LAYER + ".self_attention.out_proj."),
    (r"^blocks\.(\d+)\.norm2\.", _LAYER + ".ln_2."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", _LAYER + ".mlp.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", _LAYER + ".mlp.3."),
    (r"^norm\.", "encoder.ln."),
    (r"^head\.", "heads.head."),
]


def load_timm_vit(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a timm ``vit_*`` state_dict (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
    ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``).

    The model must be built with the same shape (``embed_dim``, ``depth``, ``patch_size``,
    ``img_size``, ``num_classes``); variants with register tokens, ``fc_norm``, layer scale or
    no class token are refused with a list of the offending keys.

    Example:
        >>> model = create_model("vit_tiny_patch16", num_classes=1000)
        >>> load_timm_vit(model, timm.create_model("vit_tiny_patch16_224").state_dict())
    """
    load_mapped(model, state_dict, _TIMM_RULES, source="timm ViT")


def load_torchvision_vit(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a torchvision ``VisionTransformer`` state_dict (``vit_b_16`` layout: ``class_token``,
    ``conv_proj``, ``encoder.pos_embedding``, ``encoder.layers.encoder_layer_i.{ln_1,
    self_attention.in_proj_*, self_attention.out_proj, ln_2, mlp.0, mlp.3}``, ``encoder.ln``,
    ``heads.head``). A ``heads.pre_logits`` layer is refused.

    Example:
        >>> model = create_model("vit_base_patch16", num_classes=1000)
        >>> load_torchvision_vit(model, torchvision.models.vit_b_16().state_dict())
    """
    load_mapped(model, state_dict, _TORCHVISION_RULES, source="torchvision ViT")
