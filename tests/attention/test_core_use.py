"""Every mechanism leaves softmax attention to the core, and honours eval mode's "no dropout"."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
import torch

from visattn.attention import ATTENTION

PACKAGE = Path(importlib.import_module("visattn.attention").__file__).parent

#: Softmax that is the mechanism's own maths rather than attention weights over keys, with
#: the number of such calls in the file: a new softmax in any file fails the test below.
OWN_MATHS = {
    "gc.py": (1, "softmax pooling of the positions into one context vector (GCNet eq. 2)"),
    "lambda_layer.py": (1, "keys normalised over the positions (the lambda layer's content lambda)"),
    "sk.py": (1, "softmax across the kernel branches, per channel (selective kernel)"),
    "polarized.py": (1, "softmax over channels of a pooled query (the spatial-only branch)"),
    "separable.py": (1, "context scores over the positions pooled into one vector (MobileViT v2)"),
    "external.py": (1, "double normalisation over the positions, then the memory units"),
}

SOFTMAX_NAMES = {"softmax", "log_softmax", "_softmax"}


def softmax_calls(path: Path) -> int:
    tree = ast.parse(path.read_text())
    calls = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            calls += name in SOFTMAX_NAMES
    return calls


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_softmax_attention_outside_the_core(path):
    allowed, _why = OWN_MATHS.get(path.name, (0, ""))
    found = softmax_calls(path)
    assert found == allowed, (
        f"{path.name} calls softmax {found} time(s); attention weights come from "
        "visattn.functional.attention (or attention_weights for structured key sets)"
    )


def test_the_source_check_sees_a_softmax(tmp_path):
    """The check itself must catch the usual spellings."""
    sample = tmp_path / "sample.py"
    sample.write_text("import torch\nw = x.softmax(-1)\nv = torch.softmax(x, 1)\nu = F.log_softmax(x, -1)\n")
    assert softmax_calls(sample) == 3


def dropout_options(cls) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [n for n in params if "drop" in n]


DROPPING = [n for n in ATTENTION.names() if dropout_options(ATTENTION.get(n))]


def test_dropout_mechanisms_are_found():
    assert {"mhsa", "swin", "halo", "sra"} <= set(DROPPING)


@pytest.mark.parametrize("name", DROPPING)
def test_dropout_is_off_in_eval_mode(name):
    """With every dropout option at 0.5, eval mode gives the output of the same weights with
    no dropout, call after call; training mode does drop something."""
    cls = ATTENTION.get(name)
    options = {n: 0.5 for n in dropout_options(cls)}
    dropping, plain = cls(16, **options), cls(16)
    with torch.no_grad():
        for p in dropping.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        plain.load_state_dict(dropping.state_dict())
    x = torch.randn(2, 16, 9, 7)
    dropping.eval(), plain.eval()
    with torch.no_grad():
        first, second, clean = dropping(x), dropping(x), plain(x)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    torch.testing.assert_close(first, clean, atol=1e-6, rtol=1e-6)
    dropping.train()
    with torch.no_grad():
        assert not torch.allclose(dropping(x), clean, atol=1e-4)
