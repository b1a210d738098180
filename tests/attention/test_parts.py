"""The shared parts of the mechanisms: the hidden-width rule against timm's make_divisible,
head and width checks with their messages, group counts, and padding to a multiple against
an explicit zero-filled copy. Every registered mechanism with a reduced width is checked to
take the one set of width options."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from timm.layers import make_divisible

from visattn import _checks
from visattn.attention import ATTENTION
from visattn.attention.parts import (
    check_heads,
    head_width,
    hidden_width,
    largest_divisor,
    pad_to_multiple,
    round_up,
)

WIDTH_OPTIONS = ("reduction", "min_hidden", "round_to", "hidden")


@pytest.mark.parametrize("divisor", [2, 4, 8, 16])
@pytest.mark.parametrize("reduction", [1, 2, 4, 8, 16, 32])
def test_hidden_width_equals_make_divisible_for_even_divisors(reduction, divisor):
    for c in range(1, 2049):
        theirs = make_divisible(c / reduction, divisor, round_limit=0.0)
        assert hidden_width(c, reduction=reduction, round_to=divisor) == theirs, c
        # timm's own floor is the divisor; a larger min_hidden acts after the rounding.
        assert hidden_width(c, reduction=reduction, round_to=divisor, min_hidden=divisor) == theirs, c
        assert hidden_width(c, reduction=reduction, round_to=divisor, min_hidden=24) == max(24, theirs), c


@pytest.mark.parametrize("reduction", [2, 8, 16, 32])
def test_without_rounding_the_width_is_the_papers_floor(reduction):
    for c in range(1, 2049):
        width = hidden_width(c, reduction=reduction)
        assert width == max(1, c // reduction) and width * reduction <= max(c, reduction), c
        assert hidden_width(c, reduction=reduction, min_hidden=8) == max(8, c // reduction), c
        if 2 * (c % reduction) < reduction:  # the fraction rounds down: timm's divisor 1 agrees
            assert width == make_divisible(c / reduction, 1, round_limit=0.0), c
    # Where the fraction is a half or more timm rounds up (its CBAM at C = 40: 3 units).
    assert hidden_width(40, reduction=16) == 2 and make_divisible(40 / 16, 1, round_limit=0.0) == 3


def test_explicit_hidden_overrides_the_rule():
    assert hidden_width(40, reduction=16, min_hidden=8, round_to=8, hidden=3) == 3


@pytest.mark.parametrize("option", WIDTH_OPTIONS)
@pytest.mark.parametrize("value", [0, -2, 1.5, True, "8"])
def test_hidden_width_errors_name_the_option(option, value):
    options = {"reduction": 16, option: value}
    with pytest.raises(ValueError, match=rf"^{option} must be an integer >= 1, got {value!r}$"):
        hidden_width(64, **options)


def _width_mechanisms() -> list[str]:
    """Registered mechanisms with a reduced width: an integer ``reduction`` or a ``min_hidden``."""
    names = []
    for name in ATTENTION.names():
        params = inspect.signature(ATTENTION.get(name).__init__).parameters
        reduction = params.get("reduction")
        if "min_hidden" in params or (reduction is not None and isinstance(reduction.default, int)):
            names.append(name)
    return names


@pytest.mark.parametrize("name", _width_mechanisms())
def test_every_reduced_width_mechanism_takes_the_shared_options(name):
    cls = ATTENTION.get(name)
    params = inspect.signature(cls.__init__).parameters
    assert all(params[o].kind is inspect.Parameter.KEYWORD_ONLY for o in WIDTH_OPTIONS)
    assert params["round_to"].default == 1 and params["hidden"].default is None
    defaults = {o: params[o].default for o in ("reduction", "min_hidden")}
    module = cls(64)
    width = module.hidden if hasattr(module, "hidden") else module.inner  # query/key width: inner
    assert width == hidden_width(64, **defaults)
    explicit = cls(64, hidden=5)
    assert (explicit.hidden if hasattr(explicit, "hidden") else explicit.inner) == 5
    with pytest.raises(ValueError, match="round_to must be an integer >= 1, got 0"):
        cls(64, round_to=0)


def test_check_heads_is_the_one_definition():
    assert check_heads is _checks.check_heads
    assert check_heads(48, 6) == 6
    with pytest.raises(ValueError, match=r"^heads must divide channels \(16\), got 3$"):
        check_heads(16, 3)
    with pytest.raises(ValueError, match=r"^heads must be an integer >= 1, got 0$"):
        check_heads(16, 0)


def test_head_width():
    assert head_width(64, 4) == 16 and head_width(64, 3, 32) == 32 and head_width(10, 1) == 10
    message = r"^heads must divide channels \(32\) when head_dim is not given, got 3$"
    with pytest.raises(ValueError, match=message):
        head_width(32, 3)
    with pytest.raises(ValueError, match=r"^head_dim must be an integer >= 1, got 0$"):
        head_width(32, 4, 0)
    with pytest.raises(ValueError, match=r"^heads must be an integer >= 1, got 2.0$"):
        head_width(32, 2.0, 8)


def test_largest_divisor_against_the_divisor_list():
    for value in range(1, 130):
        divisors = {d for i in range(1, math.isqrt(value) + 1) if value % i == 0 for d in (i, value // i)}
        for at_most in (1, 3, 8, 32, 200):
            assert largest_divisor(value, at_most) == max(d for d in divisors if d <= at_most)


def test_round_up():
    for size in range(1, 60):
        for multiple in (1, 2, 7, 8):
            assert round_up(size, multiple) == math.ceil(size / multiple) * multiple


@pytest.mark.parametrize(("hw", "multiple"), [((5, 7), 4), ((8, 3), 4), ((1, 1), 7), ((9, 10), 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pad_to_multiple_against_a_filled_copy(hw, multiple, channels_last):
    H, W = hw
    Hp, Wp = math.ceil(H / multiple) * multiple, math.ceil(W / multiple) * multiple
    shape, padded_shape = ((2, H, W, 3), (2, Hp, Wp, 3)) if channels_last else ((2, 3, H, W), (2, 3, Hp, Wp))
    x = torch.randn(shape)
    for value in (0.0, -1.0):
        expected = torch.full(padded_shape, value)
        if channels_last:
            expected[:, :H, :W] = x
        else:
            expected[..., :H, :W] = x
        padded = pad_to_multiple(x, multiple, channels_last=channels_last, value=value)
        torch.testing.assert_close(padded, expected)


def test_pad_to_multiple_returns_aligned_input_itself_and_keeps_gradients():
    x = torch.randn(1, 2, 8, 12, requires_grad=True)
    assert pad_to_multiple(x, 4) is x
    pad_to_multiple(x[..., :7, :9], 4).sum().backward()
    expected = torch.zeros_like(x)
    expected[..., :7, :9] = 1
    torch.testing.assert_close(x.grad, expected)
