"""The one attention factory: every model turns ``attention=`` into modules through it, with
one meaning of each name; no model compares mechanism names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from visattn.attention import ATTENTION, AttentionModule
from visattn.attention.bot import BottleneckSelfAttention
from visattn.attention.mhsa import MultiHeadAttention, MultiHeadSelfAttention2d
from visattn.models import MODELS, create_model, default_attention
from visattn.models.factory import attention_factory, mechanism_class
from visattn.models.vit import VisionTransformer

MODELS_DIR = Path(__file__).resolve().parents[2] / "src" / "visattn" / "models"


def test_no_model_compares_attention_names():
    names = "|".join(map(re.escape, ATTENTION.names()))
    compare = re.compile(rf"""(attention\s*(==|!=|\bis\b|\bin\b)\s*["'(])|((==|!=)\s*["']({names})["'])""")
    offenders = [
        f"{path.name}:{i}: {line.strip()}"
        for path in sorted(MODELS_DIR.glob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if compare.search(line)
    ]
    assert not offenders, offenders


def test_every_model_builds_through_the_factory():
    calls = {path.name for path in MODELS_DIR.glob("*.py") if "attention_factory(" in path.read_text()}
    assert {"attention_cnn.py", "resnet.py", "botnet.py", "swin.py", "vit.py", "surgery.py"} <= calls
    assert not [p.name for p in MODELS_DIR.glob("*.py") if "create_attention(" in p.read_text()]


@pytest.mark.parametrize("name", MODELS.names())
def test_attention_none_means_without_attention_or_a_clear_error(name):
    with torch.device("meta"):
        try:
            model = create_model(name, num_classes=3, attention=None)
        except ValueError as err:  # the architecture has no network without attention
            assert name.startswith("vit_") and "attention=None needs pool='mean'" in str(err)
            model = create_model(name, num_classes=3, attention=None, pool="mean")
    assert not [n for n, m in model.named_modules() if isinstance(m, AttentionModule)]
    assert default_attention(name) in {*ATTENTION.names(), "none"}


def test_one_meaning_of_mhsa_in_every_model():
    with torch.device("meta"):
        cnn = create_model("attention_cnn", num_classes=3, attention="mhsa")
        resnet = create_model("resnet18", num_classes=3, attention="mhsa")
        bot = create_model("botnet26", num_classes=3, attention="mhsa", base_width=16)
        swin = create_model("swin_micro", num_classes=3, attention="mhsa")
        vit = create_model("vit_tiny_patch16", num_classes=3, attention="mhsa", img_size=32)
    for model in (cnn, resnet, bot, swin):  # feature-map sites: the registered module itself
        found = [m for m in model.modules() if isinstance(m, AttentionModule)]
        assert found and all(type(m) is MultiHeadSelfAttention2d for m in found)
    found = [m for m in vit.modules() if isinstance(m, AttentionModule)]
    assert len(found) == 12 and all(type(m) is MultiHeadAttention for m in found)
    assert mechanism_class("mhsa", "token", model="m") is MultiHeadSelfAttention2d.token_form


def test_settings_defaults_and_options():
    make = attention_factory(
        "mhsa", {"pos": "none"}, model="M", sets=("heads", "window_size"), defaults={"residual": False}
    )
    module = make(32, heads=2, window_size=7)  # mhsa has no window_size: not passed
    assert (module.heads, module.pos, module.residual) == (2, "none", False)
    make = attention_factory("mhsa", {"residual": True}, model="M", defaults={"residual": False})
    assert make(16).residual is True  # options override the model's defaults
    make = attention_factory("bot", {"max_distance": 7}, model="M", defaults={"heads": 4, "residual": False})
    module = make(32)
    assert isinstance(module, BottleneckSelfAttention) and (module.heads, module.max_distance) == (4, 7)
    assert make(32).heads == 4 and attention_factory("se", None, model="M", defaults={"heads": 4})(32)
    conv = attention_factory(lambda c: nn.Conv2d(c, c, 1), model="M", sets=("heads",))
    assert isinstance(conv(8, heads=2), nn.Conv2d)  # a callable gets the channel count alone
    assert attention_factory(None, {}, model="M") is None


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("mhsa", {"x": 1}), {}, ValueError, r"attention_options 'x' are not options of 'mhsa'"),
        (("mhsa", {"heads": 2}), {"sets": ("heads",)}, ValueError, r"may not set heads: the model sets"),
        ((None, {"heads": 2}), {}, ValueError, r"attention_options given but attention is None"),
        ((len, {"heads": 2}), {}, ValueError, r"only accepted with a registered attention name"),
        ((3, None), {}, ValueError, r"attention must be a registered name, a callable .* got 3"),
        (("mhsa", [1]), {}, ValueError, r"attention_options must be a mapping"),
        (("mhsx", None), {}, KeyError, r"unknown attention 'mhsx'; valid names: .*mhsa"),
        (("se", None), {"layout": "token"}, ValueError, r"M needs attention on \(B, N, C\) tokens"),
        (("se", None), {"layout": "grid"}, ValueError, r"layout must be one of"),
    ],
)
def test_factory_errors(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        attention_factory(*args, model="M", **kwargs)


def test_a_callable_of_the_wrong_layout_is_refused():
    make = attention_factory(lambda c: MultiHeadSelfAttention2d(c), model="VisionTransformer", layout="token")
    with pytest.raises(ValueError, match=r"returned a MultiHeadSelfAttention2d for \(B, C, H, W\) feature"):
        make(16)


def test_vit_takes_a_token_callable():
    options = {"img_size": 16, "patch_size": 8, "embed_dim": 16, "depth": 2, "heads": 2}
    named = VisionTransformer(5, **options).eval()
    custom = VisionTransformer(5, **options, attention=lambda c: MultiHeadAttention(c, heads=2)).eval()
    custom.load_state_dict(named.state_dict())  # the same keys: blocks.i.attn.{qkv, proj}
    x = torch.randn(2, 3, 24, 16)
    with torch.no_grad():
        torch.testing.assert_close(custom(x), named(x))
