"""The attention-module contract, checked for every registered mechanism.

A mechanism registered in ``ATTENTION`` is covered here the moment it exists: shapes at odd
sizes, dtypes, gradients (and gradcheck in float64), fused path == explicit path, recorded
maps in their documented shapes, batch independence, memory formats, state_dict round trip
through safetensors, torch.export, ONNX through onnxruntime, random shapes, and clear errors.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from visattn import AttentionCNN, record_attention
from visattn.attention import ATTENTION, FAMILIES, AttentionModule
from visattn.explain import maps_heatmap, spatial_map_names
from visattn.maps import MAP_KINDS

NAMES = ATTENTION.names()
C = 32
SIZES = [(1, 1), (7, 5), (16, 16), (33, 17)]


@functools.cache
def built(name: str, channels: int = C) -> AttentionModule:
    torch.manual_seed(0)
    module = ATTENTION.get(name)(channels)
    _perturb(module)
    return module.eval()


def _perturb(module: torch.nn.Module) -> None:
    """Zero-initialised scales (layer scale, gamma) would hide whole branches from the tests:
    give every parameter a small random offset, and norms non-trivial running statistics."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) and m.running_mean is not None:
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def fresh(name: str, channels: int = C) -> AttentionModule:
    return copy.deepcopy(built(name, channels))


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_registry_is_broad():
    assert len(NAMES) >= 1
    assert "mhsa" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_metadata(name):
    cls = ATTENTION.get(name)
    assert issubclass(cls, AttentionModule)
    assert cls.family in FAMILIES and cls.family != "token"
    assert cls.paper and len(cls.paper.splitlines()) == 1
    assert cls.complexity.startswith("O(N"), "declare the cost in the number of positions N"
    source = importlib.import_module(cls.__module__)
    doc = source.__doc__ or ""
    assert "arXiv" in doc or "doi" in doc.lower(), "the file must open with its paper and link"
    params = inspect.signature(cls.__init__).parameters
    (first, *rest) = [p for n, p in params.items() if n != "self"]
    assert first.name == "channels" and first.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest), "options must be keyword-only"
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in rest), "no **kwargs swallowing"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes_at_odd_sizes(name, batch):
    module = built(name)
    for hw in SIZES:
        x = torch.randn(batch, C, *hw)
        with torch.no_grad():
            out = module(x)
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device, (name, hw)
        assert torch.isfinite(out).all(), (name, hw)


@pytest.mark.parametrize("name", NAMES)
def test_float64_and_gradients(name):
    module = fresh(name).train()
    x = torch.randn(2, C, 9, 7, requires_grad=True)
    module(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    missing = [n for n, p in module.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: no finite gradient for {missing}"
    assert any(p.grad.abs().sum() > 0 for p in module.parameters()) or not list(module.parameters())
    double = fresh(name).double()
    assert double(torch.randn(1, C, 5, 6, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name):
    module = fresh(name, 16).double()
    x = torch.randn(1, 16, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


@pytest.mark.parametrize("name", NAMES)
def test_fused_path_equals_explicit_path_and_maps(name):
    module = built(name)
    for hw in [(7, 5), (16, 16)]:
        x = torch.randn(2, C, *hw)
        with torch.no_grad():
            fused = module(x)
            with record_attention(module) as maps:
                explicit = module(x)
        close(fused, explicit)
        assert len(maps) >= 1, f"{name} records no map"
        for key in maps:
            check_map(name, key, maps, x)
        for key in spatial_map_names(maps):  # every map over positions can be drawn
            heat = maps_heatmap(maps, key, (3 * hw[0], 3 * hw[1]))
            assert heat.shape == (2, 3 * hw[0], 3 * hw[1]) and heat.min() >= 0 and heat.max() <= 1, key


def check_map(name: str, key: str, maps, x: torch.Tensor) -> None:
    attn, kind = maps[key], maps.kind(key)
    b, c, h, w = x.shape
    assert kind in MAP_KINDS, (name, key, kind)
    assert not attn.requires_grad and torch.isfinite(attn).all(), (name, key)
    if kind == "channel":
        assert attn.shape == (b, c), (name, key, attn.shape)
    if kind == "spatial":
        assert attn.ndim == 4 and attn.shape[:2] == (b, 1), (name, key, attn.shape)
    if kind in ("channel", "spatial", "gate"):
        assert attn.min() >= 0 and attn.max() <= 1, (name, key)
    if kind == "softmax":
        assert attn.ndim == 4 and attn.shape[0] == b, (name, key, attn.shape)
        close(attn.sum(-1), torch.ones(attn.shape[:-1]), 1e-4)
        grid = maps.grid(key)
        assert grid is None or grid[0] * grid[1] == attn.shape[-1], (name, key, grid)
    if kind == "window":
        assert attn.ndim == 4 and attn.shape[0] == b and attn.shape[2] == h * w, (name, key, attn.shape)
        close(attn.sum(-1), torch.ones(attn.shape[:-1]), 1e-4)
        keys = maps.keys_index(key)
        assert keys.shape == attn.shape[2:] and keys.max() < h * w, (name, key)
        assert torch.all(attn.masked_fill((keys >= 0).expand_as(attn), 0) == 0), "weight on padding"


@pytest.mark.parametrize("name", NAMES)
def test_each_sample_independent_of_the_batch(name):
    module = built(name)
    x = torch.randn(3, C, 8, 6)
    with torch.no_grad():
        together = module(x)
        alone = torch.cat([module(x[i : i + 1]) for i in range(3)])
    close(together, alone)


@pytest.mark.parametrize("name", NAMES)
def test_memory_formats(name):
    module = built(name)
    x = torch.randn(2, C, 10, 12)
    with torch.no_grad():
        ref = module(x)
        close(module(x.to(memory_format=torch.channels_last)), ref)
        strided = torch.randn(2, C, 12, 10).transpose(2, 3)  # (2, C, 10, 12), not contiguous
        close(module(strided), module(strided.contiguous()))


@pytest.mark.parametrize("name", NAMES)
def test_safetensors_round_trip(name, tmp_path):
    module = built(name)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp_path / "m.safetensors"))
    other = ATTENTION.get(name)(C).eval()
    other.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    x = torch.randn(2, C, 6, 7)
    with torch.no_grad():
        close(other(x), module(x), 0)


@pytest.mark.parametrize("name", NAMES)
def test_torch_export(name):
    module = built(name)
    x = torch.randn(2, C, 8, 6)
    program = torch.export.export(module, (x,))
    with torch.no_grad():
        close(program.module()(x), module(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_onnx_runtime_parity(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    module = built(name)
    x = torch.randn(2, C, 8, 6)
    path = tmp_path / f"{name}.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(module, (x,), str(path), dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    for b in (1, 5):
        xb = torch.randn(b, C, 8, 6)
        with torch.no_grad():
            expected = module(xb)
        (got,) = session.run(None, {feed: xb.numpy()})
        assert abs(torch.from_numpy(got) - expected).max() <= 1e-4, name


@pytest.mark.parametrize("name", NAMES)
def test_used_as_attention_cnn_attention(name):
    model = AttentionCNN(10, in_channels=1, attention=name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 36, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_and_options(name):
    module = built(name)
    cls_name = type(module).__name__
    with pytest.raises(
        ValueError, match=rf"{cls_name} expects input of shape \(B, {C}, H, W\), got \(2, 8, 5, 5\)"
    ):
        module(torch.randn(2, 8, 5, 5))
    with pytest.raises(ValueError, match=rf"{cls_name} expects input.*got \(2, {C}, 5\)"):
        module(torch.randn(2, C, 5))
    with pytest.raises(ValueError, match="channels must be an integer >= 1, got 0"):
        ATTENTION.get(name)(0)
    with pytest.raises(TypeError):
        ATTENTION.get(name)(C, no_such_option=1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(NAMES),
    batch=st.integers(1, 3),
    height=st.integers(1, 23),
    width=st.integers(1, 23),
    channels=st.sampled_from([16, 32, 64]),
)
def test_random_shapes(name, batch, height, width, channels):
    module = built(name, channels)
    x = torch.randn(batch, channels, height, width)
    with torch.no_grad():
        out = module(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
