"""record_attention on timm and torchvision models: maps equal the models' own softmax, outputs
are unchanged, the fused kernel still runs outside the block, and every patch is undone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from swinkit import tiny_timm_swin
from visattn import record_attention

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


def _timm_vit(name: str, **options: object) -> torch.nn.Module:
    return timm.create_model(
        name, pretrained=False, num_classes=5, img_size=(32, 48), depth=2, **options
    ).eval()


def _inputs(module: torch.nn.Module, kind: type) -> dict[str, torch.Tensor]:
    """A forward hook on every ``kind`` module: qualified name -> its first input."""
    seen: dict[str, torch.Tensor] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, kind):
            sub.register_forward_hook(
                lambda m, args, out, name=name: seen.__setitem__(name, args[0].detach())
            )
    return seen


def _softmax64(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1)


@pytest.mark.parametrize(
    ("name", "options", "prefix"),
    [
        ("vit_tiny_patch16_224", {}, 1),
        ("deit_tiny_patch16_224", {}, 1),
        ("vit_tiny_patch16_224", {"reg_tokens": 4}, 5),  # class + register tokens
    ],
)
def test_timm_vit_maps_equal_explicit_softmax(name, options, prefix, sdpa_calls):
    model = _timm_vit(name, **options)
    x = torch.randn(2, 3, 32, 48)
    inputs = _inputs(model, timm.layers.Attention)
    plain = model(x)
    assert len(sdpa_calls) == 2  # outside the block the fused kernel runs, once per block
    with record_attention(model) as maps:
        recorded = model(x)
    assert len(sdpa_calls) == 2  # and inside it does not
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=0)
    assert list(maps) == ["blocks.0.attn", "blocks.1.attn"]
    for key, attn in maps.items():
        module = model.get_submodule(key)
        qkv = F.linear(inputs[key].double(), module.qkv.weight.double(), module.qkv.bias.double())
        q, k, _ = qkv.view(2, -1, 3, 3, 64).permute(2, 0, 3, 1, 4)  # (B, heads, N, d)
        assert maps.kind(key) == "softmax" and maps.grid(key) == (2, 3) and maps.prefix_tokens(key) == prefix
        assert attn.shape == (2, 3, prefix + 6, prefix + 6) and not attn.requires_grad
        torch.testing.assert_close(attn.double(), _softmax64(q, k), atol=1e-6, rtol=0)
    assert all("forward" not in m.__dict__ for m in model.modules())


@pytest.fixture
def sdpa_positional(monkeypatch: pytest.MonkeyPatch) -> list[torch.Size]:
    """Query shapes of every fused-attention call, positional arguments included (PyTorch's
    own ``multi_head_attention_forward`` passes its mask and dropout positionally)."""
    calls: list[torch.Size] = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        calls.append(q.shape)
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


def test_torchvision_vit_maps_equal_explicit_softmax(sdpa_positional):
    sdpa_calls = sdpa_positional
    model = torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    inputs = _inputs(model, torch.nn.MultiheadAttention)
    plain = model(x)  # grad enabled: PyTorch's Python path, which calls the fused kernel
    assert len(sdpa_calls) == 12
    with record_attention(model) as maps:
        recorded = model(x)
    assert len(sdpa_calls) == 12
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=0)
    assert len(maps) == 12
    for key, attn in maps.items():
        module = model.get_submodule(key)
        qkv = F.linear(inputs[key].double(), module.in_proj_weight.double(), module.in_proj_bias.double())
        q, k, _ = qkv.view(2, 5, 3, 12, 64).permute(2, 0, 3, 1, 4)  # (B, heads, N, d)
        assert maps.grid(key) == (2, 2) and maps.prefix_tokens(key) == 1
        torch.testing.assert_close(attn.double(), _softmax64(q, k), atol=1e-6, rtol=0)


def _windows_of_positions(
    height: int, width: int, window: tuple[int, int], shift: tuple[int, int], *, pad_first: bool
):
    """Flat position behind each window slot ``(nW, K)``, -1 for padding, in the library's order."""
    (wh, ww), (sh, sw) = window, shift
    pos = torch.arange(height * width).view(height, width)
    pad = (0, (ww - width % ww) % ww, 0, (wh - height % wh) % wh)
    if pad_first:
        pos = torch.roll(F.pad(pos, pad, value=-1), (-sh, -sw), (0, 1))
    else:
        pos = F.pad(torch.roll(pos, (-sh, -sw), (0, 1)), pad, value=-1)
    hp, wp = pos.shape
    return pos.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)


def _check_window_map(attn, keys, reference, slots, atol=1e-6):
    """The recorded rows of every position equal its row in the model's own window softmax."""
    nw, k = slots.shape
    reference = reference.view(-1, nw, *reference.shape[1:])  # (B, nW, heads, K, K)
    for p in range(attn.shape[2]):
        w, s = divmod(int((slots.flatten() == p).nonzero()), k)
        assert torch.equal(keys[p], slots[w])
        torch.testing.assert_close(attn[:, :, p], reference[:, w, :, s], atol=atol, rtol=0)


def test_timm_swin_window_maps_equal_its_softmax():
    # 40x56 with 3x3 windows: padded (10x14 tokens) and shifted windows in the first stages.
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=5,
        img_size=(40, 56),
        window_size=3,
        depths=(2, 2, 2, 2),
    ).eval()
    x = torch.randn(2, 3, 40, 56)
    own: dict[str, torch.Tensor] = {}
    for name, block in model.named_modules():
        if isinstance(block, timm.models.swin_transformer.SwinTransformerBlock):
            hook = lambda m, a, out, name=f"{name}.attn": own.__setitem__(name, out)  # noqa: E731
            block.attn.softmax.register_forward_hook(hook)
    with torch.no_grad():
        plain = model(x)
        with record_attention(model) as maps:
            recorded = model(x)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=0)
    assert list(maps) == list(own) and len(maps) == 8
    for key, attn in maps.items():
        block = model.get_submodule(key.rsplit(".", 1)[0])
        h, w = maps.grid(key)
        slots = _windows_of_positions(h, w, block.window_size, block.shift_size, pad_first=False)
        assert maps.kind(key) == "window" and attn.shape[2] == h * w
        _check_window_map(attn, maps.keys_index(key), own[key], slots)
    assert any(any(b.shift_size) for b in model.modules() if hasattr(b, "shift_size"))


def test_torchvision_swin_window_maps_equal_its_softmax(monkeypatch):
    model = torchvision.models.swin_t(weights=None, num_classes=5).eval()
    x = torch.randn(1, 3, 64, 96)  # 16x24 tokens: padded to 21x28, shifted
    own: list[torch.Tensor] = []
    softmax = F.softmax

    def spy(*args, **kwargs):
        out = softmax(*args, **kwargs)
        own.append(out)
        return out

    with torch.no_grad():
        monkeypatch.setattr(F, "softmax", spy)
        plain = model(x)
        monkeypatch.setattr(F, "softmax", softmax)
        with record_attention(model) as maps:
            recorded = model(x)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=0)
    assert len(maps) == len(own) == 12
    for (key, attn), reference in zip(maps.items(), own, strict=True):
        module = model.get_submodule(key)
        h, w = maps.grid(key)
        hp, wp = -(-h // 7) * 7, -(-w // 7) * 7
        shift = [0 if hp <= 7 else module.shift_size[0], 0 if wp <= 7 else module.shift_size[1]]
        slots = _windows_of_positions(h, w, (7, 7), tuple(shift), pad_first=True)
        _check_window_map(attn, maps.keys_index(key), reference, slots)


def test_patches_undone_after_errors_and_nesting_and_grad():
    model = _timm_vit("vit_tiny_patch16_224")
    attn = model.blocks[0].attn
    with pytest.raises(RuntimeError, match="stop"), record_attention(model):
        assert "forward" in attn.__dict__
        model(torch.randn(1, 3, 32, 48))
        raise RuntimeError("stop")
    assert "forward" not in attn.__dict__
    with record_attention(model) as outer:
        with record_attention(model.blocks[0]) as inner:
            model(torch.randn(1, 3, 32, 48))
        model(torch.randn(1, 3, 32, 48))
    assert list(inner) == ["attn"] and list(outer) == ["blocks.1.attn", "blocks.0.attn", "blocks.1.attn#1"]
    assert all("forward" not in m.__dict__ for m in model.modules())
    x = torch.randn(1, 3, 32, 48)
    with record_attention(model, grad=True) as maps:
        score = model(x)[0, 1]
    grads = torch.autograd.grad(score, list(maps.values()))
    assert all(g.shape == m.shape and g.abs().sum() > 0 for g, m in zip(grads, maps.values(), strict=True))


def test_timm_swin_window_map_gradients_are_the_models():
    model = tiny_timm_swin(3, (2, 2, 1, 1))
    x = torch.randn(2, 3, 40, 56)
    own: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        own.append(out)

    hooks = [b.attn.softmax.register_forward_hook(keep) for b in model.layers[0].blocks]
    # Scaled so that the gradients are of order 1 and an absolute tolerance means something.
    (1e3 * model(x)[:, 2].sum()).backward()  # timm's own window softmax and its gradient
    for h in hooks:
        h.remove()
    with record_attention(model, grad=True) as maps:
        score = 1e3 * model(x)[:, 2].sum()
    names = ["layers.0.blocks.0.attn", "layers.0.blocks.1.attn"]
    grads = torch.autograd.grad(score, [maps[n] for n in names])
    for name, grad, reference in zip(names, grads, own, strict=True):
        block = model.get_submodule(name.rsplit(".", 1)[0])
        h, w = maps.grid(name)
        slots = _windows_of_positions(h, w, block.window_size, block.shift_size, pad_first=False)
        assert float(grad.abs().max()) > 0.1
        _check_window_map(grad, maps.keys_index(name), reference.grad, slots, atol=1e-5)


def test_layers_inside_a_visattn_module_are_not_recorded_twice():
    from visattn.attention.base import AttentionModule

    class Wrapper(AttentionModule):
        family = "global"
        layout = "token"

        def __init__(self, channels: int) -> None:
            super().__init__(channels)
            self.inner = torch.nn.MultiheadAttention(channels, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, weights = self.inner(x, x, x, need_weights=True, average_attn_weights=False)
            self.keep_map(weights, kind="softmax")
            return out

    model = torch.nn.Sequential(Wrapper(8))
    with record_attention(model) as maps:
        model(torch.randn(1, 3, 8))
    assert list(maps) == ["0"]
