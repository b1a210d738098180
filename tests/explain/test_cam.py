"""CAMs: the layer and reshape we infer give pytorch-grad-cam's own maps, and on a tiny CNN
the maps equal Grad-CAM, Grad-CAM++ and HiResCAM computed by hand in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from swinkit import tiny_timm_swin
from visattn import create_model
from visattn.explain import explain
from visattn.explain.cam import resolve_cam_layer

grad_cam = pytest.importorskip("pytorch_grad_cam")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


class TinyCNN(nn.Module):
    """conv -> in-place ReLU -> conv -> in-place ReLU -> mean -> linear, at full resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 5, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _scaled(cam: torch.Tensor) -> torch.Tensor:
    cam = cam.clamp(min=0)
    cam = cam - cam.amin(dim=(1, 2), keepdim=True)
    return cam / cam.amax(dim=(1, 2), keepdim=True).clamp(min=1e-300)  # an all-negative map stays 0


def test_cams_equal_hand_computation_on_a_tiny_cnn():
    model = TinyCNN().double().eval()  # pytorch-grad-cam then works in float64 as well
    # Maps of order 1: pytorch-grad-cam's 1e-7 guard in its scaling stays below the tolerance.
    nn.init.normal_(model.head.weight, std=40.0)
    x = torch.randn(3, 2, 6, 7, dtype=torch.float64)
    target = torch.tensor([0, 2, 1])
    # The conv outputs are overwritten by the in-place ReLUs; the stage is the layer to use.
    assert resolve_cam_layer(model, x, None).name == "features"
    with torch.no_grad():
        acts = model.features(x)  # (B, 5, 6, 7)
        # y = w_c . mean(A) + b  =>  dy/dA_k = w_ck / (h w), the same at every position.
        grads = (model.head.weight[target] / 42.0)[:, :, None, None].expand_as(acts)
    gradcam = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1)
    hirescam = (grads * acts).sum(1)
    g2, g3 = grads**2, grads**3
    alpha = g2 / (2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3 + 1e-6)
    alpha = torch.where(grads != 0, alpha, 0.0)
    plus = ((grads.clamp(min=0) * alpha).sum(dim=(2, 3), keepdim=True) * acts).sum(1)
    for method, cam in (("gradcam", gradcam), ("hirescam", hirescam), ("gradcam++", plus)):
        got = explain(model, x, method=method, target=target)
        torch.testing.assert_close(got.double(), _scaled(cam), atol=1e-6, rtol=0, msg=method)


def _library(model, x, layer, reshape, method=grad_cam.GradCAM):
    model.eval()
    with torch.no_grad():
        targets = [ClassifierOutputTarget(int(c)) for c in model(x).argmax(1)]
    with method(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        return torch.from_numpy(cam(input_tensor=x, targets=targets))


def _tokens(prefix: int, grid: tuple[int, int]):
    def reshape(t: torch.Tensor) -> torch.Tensor:  # the reshape pytorch-grad-cam's ViT tutorial writes
        return t[:, prefix:].reshape(t.shape[0], grid[0], grid[1], t.shape[2]).permute(0, 3, 1, 2)

    return reshape


def _tv_vit():
    # torchvision's ViT class (as in vit_b_16), two narrow layers
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=4
    )
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: no gradient at all
    return model


CASES = {
    "timm-vit-registers": (
        lambda: timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=(32, 48), depth=2, reg_tokens=2
        ),
        (32, 48),
        lambda m: (m.blocks[-1].norm1, _tokens(3, (2, 3))),
    ),
    "timm-swin": (
        lambda: tiny_timm_swin(4, (1, 1, 1, 1)),
        (40, 56),
        lambda m: (m.norm, lambda t: t.permute(0, 3, 1, 2)),
    ),
    "torchvision-vit": (_tv_vit, (32, 32), lambda m: (m.encoder.layers[-1].ln_1, _tokens(1, (2, 2)))),
    "torchvision-resnet": (
        lambda: torchvision.models.resnet18(weights=None, num_classes=4),
        (64, 64),  # layer4 at 2x2
        lambda m: (m.layer4, None),
    ),
    "visattn-attention-cnn": (
        lambda: create_model("attention_cnn", num_classes=4, in_channels=3, widths=(8, 8), strides=(2, 1)),
        (12, 16),
        lambda m: (m.stem, None),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_inferred_layer_gives_pytorch_grad_cams_map(case):
    build, size, choose = CASES[case]
    model = build().eval()
    x = torch.randn(2, 3, *size)
    layer, reshape = choose(model)
    expected = _library(model, x, layer, reshape)
    got = explain(model, x, method="gradcam")
    assert float(expected.std()) > 0.01  # a map that says something, not a flat one
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    if case == "timm-swin":
        expected = _library(model, x, layer, reshape, grad_cam.GradCAMPlusPlus)
        torch.testing.assert_close(explain(model, x, method="gradcam++"), expected, atol=1e-6, rtol=0)


def test_cam_layer_choice_and_refusals():
    model = TinyCNN()
    x = torch.randn(1, 2, 5, 5)
    manual = explain(model, x, method="gradcam", layer="features.0")
    assert manual.shape == (1, 5, 5)
    with pytest.raises(
        ValueError, match=r"layer 'head' has no spatial output for a CAM; valid layers: features\.0"
    ):
        explain(model, x, method="gradcam", layer="head")
    model.train()
    with torch.inference_mode():
        heat = explain(model, torch.randn(1, 2, 5, 5), method="hirescam")
    assert heat.shape == (1, 5, 5) and model.training and model.features[0].training
