"""space/explain.py: Grad-CAM on cases with a known answer, and the maps the Space shows for the real model."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brain_resnet.modeling import BrainResNetConfig, BrainResNetForImageClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "space"))
import explain  # noqa: E402

HEIGHT, WIDTH = 64, 96  # not square, so that a transposed map cannot pass


class TwoChannelEvidence(nn.Module):
    """
    Logits of a global-average-pool + linear classifier over a 2-channel, 8x-pooled copy of the input.
    Class 0 counts channel 0's brightness, class 1 channel 1's, class 2 counts against channel 0.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.AvgPool2d(8)
        self.classifier = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))

    def forward(self, pixel_values):
        return self.classifier(self.features(pixel_values).mean(dim=(2, 3)))


def quadrant_masses(cam: np.ndarray) -> dict[str, float]:
    """Share of the map's total in each quadrant."""
    top, left = cam.shape[0] // 2, cam.shape[1] // 2
    quadrants = {
        "top-left": cam[:top, :left],
        "top-right": cam[:top, left:],
        "bottom-left": cam[top:, :left],
        "bottom-right": cam[top:, left:],
    }
    total = cam.sum()
    return {name: float(part.sum() / total) for name, part in quadrants.items()}


@pytest.fixture
def evidence_in_two_quadrants() -> torch.Tensor:
    """Channel 0 bright in the top-right quadrant, channel 1 bright in the bottom-left one, black elsewhere."""
    pixel_values = torch.zeros(1, 2, HEIGHT, WIDTH)
    pixel_values[0, 0, 8:24, 56:88] = 1.0
    pixel_values[0, 1, 40:56, 8:40] = 1.0
    return pixel_values


def test_grad_cam_puts_each_class_where_its_evidence_is(evidence_in_two_quadrants):
    model = TwoChannelEvidence().eval()
    cams = explain.grad_cam(model, evidence_in_two_quadrants, target_layer=model.features)

    assert cams.shape == (1, 3, HEIGHT, WIDTH)
    assert cams.dtype == np.float32 and cams.min() >= 0 and cams.max() == pytest.approx(1.0)
    assert quadrant_masses(cams[0, 0])["top-right"] > 0.95
    assert quadrant_masses(cams[0, 1])["bottom-left"] > 0.95
    # Evidence against a class is no evidence for it: ReLU leaves nothing.
    assert not cams[0, 2].any()


def test_grad_cam_of_one_class_is_that_class_of_all(evidence_in_two_quadrants):
    model = TwoChannelEvidence().eval()
    every_class = explain.grad_cam(model, evidence_in_two_quadrants, target_layer=model.features)
    second = explain.grad_cam(model, evidence_in_two_quadrants, class_index=1, target_layer=model.features)

    assert second.shape == (1, HEIGHT, WIDTH)
    np.testing.assert_array_equal(second, every_class[:, 1])


def test_grad_cam_explains_each_sample_of_a_batch_on_its_own(evidence_in_two_quadrants):
    model = TwoChannelEvidence().eval()
    flipped = evidence_in_two_quadrants.flip(-1)  # channel 0's evidence moves to the top-left
    cams = explain.grad_cam(model, torch.cat([evidence_in_two_quadrants, flipped]), 0, target_layer=model.features)

    assert quadrant_masses(cams[0])["top-right"] > 0.95
    assert quadrant_masses(cams[1])["top-left"] > 0.95


@pytest.fixture(scope="module")
def improved_model() -> BrainResNetForImageClassification:
    torch.manual_seed(0)
    return BrainResNetForImageClassification(BrainResNetConfig()).eval()


@pytest.fixture(scope="module")
def slice_input() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(1, 1, 224, 224)


def test_grad_cam_of_the_real_model_is_its_class_activation_map(improved_model, slice_input):
    # With global average pooling and a linear head, Grad-CAM equals CAM (Zhou et al., 2016): ReLU of the class's
    # classifier weights applied to the last stage's channels. Computed here without any gradient.
    with torch.no_grad():
        features = improved_model(slice_input, output_hidden_states=True).hidden_states[-1]
    weights = improved_model.classifier[-1].weight.detach()
    expected = F.relu(torch.einsum("kc,bchw->bkhw", weights, features))[0]
    expected = F.interpolate(expected[:, None], size=(224, 224), mode="bilinear", align_corners=False)[:, 0]
    expected = expected - expected.amin(dim=(1, 2), keepdim=True)
    expected = torch.nan_to_num(expected / expected.amax(dim=(1, 2), keepdim=True))  # a map of zeros stays zeros

    cams = explain.grad_cam(improved_model, slice_input)

    assert cams.shape == (1, 4, 224, 224)
    assert (expected.amax(dim=(1, 2)) == 1).sum() >= 2, "too few classes with any evidence to compare"
    np.testing.assert_allclose(cams[0], expected.numpy(), atol=1e-4)


def test_explain_gives_every_map_from_one_pass(improved_model, slice_input):
    with torch.inference_mode():
        plain = improved_model(slice_input, output_attentions=True)

    result = explain.explain(improved_model, slice_input)

    # The hooks change nothing about the prediction, and none stays behind.
    np.testing.assert_allclose(result.probabilities, plain.logits.softmax(-1)[0].numpy(), atol=1e-6)
    assert all(not module._forward_hooks for module in improved_model.modules())
    np.testing.assert_array_equal(result.grad_cams, explain.grad_cam(improved_model, slice_input)[0])
    # SE weights: 3, 3, 5 and 2 blocks (the Inception reductions carry none), in the model's own order.
    assert [weights.shape for weights in result.se_weights] == [(3, 64), (3, 128), (5, 256), (2, 512)]
    np.testing.assert_allclose(
        np.concatenate([row for weights in result.se_weights for row in weights]),
        np.concatenate([weights[0].numpy() for weights in plain.attentions]),
        atol=1e-6,
    )
    assert len(result.stage_maps) == 4 and len(result.stem_maps) == 3
    for heat in [*result.stage_maps, *result.stem_maps]:
        assert heat.shape == (224, 224) and heat.min() == 0 and heat.max() == pytest.approx(1.0)


def test_a_mirror_averaging_models_grad_cam_accounts_for_both_views(improved_model, slice_input):
    """Half of a mirror-averaging model's score comes from the mirror image: its Grad-CAM adds that view's evidence,
    flipped back onto the slice, so the map of a mirrored slice is the mirror image of the slice's map (the slice's
    own view alone would not be). Its stem maps stay the slice's own."""
    averaging = BrainResNetForImageClassification(BrainResNetConfig(mirror_average=True)).eval()
    averaging.load_state_dict(improved_model.state_dict())
    with torch.no_grad():
        answer = averaging(slice_input).logits.softmax(-1)[0].numpy()

    result, own = explain.explain(averaging, slice_input), explain.explain(improved_model, slice_input)
    mirrored = explain.explain(averaging, slice_input.flip(-1))

    np.testing.assert_allclose(result.probabilities, answer, atol=1e-6)
    np.testing.assert_allclose(result.grad_cams, mirrored.grad_cams[..., ::-1], atol=1e-4)
    assert np.abs(result.grad_cams - own.grad_cams).max() > 0.05
    assert len(result.stem_maps) == 3
    np.testing.assert_allclose(np.stack(result.stem_maps), np.stack(own.stem_maps), atol=1e-6)


def test_a_mirror_averaging_models_grad_cam_sums_both_views_before_the_relu(improved_model, slice_input):
    """The averaged features' CAM: each view's class-weighted sum, the mirror view's flipped back, added, and only
    then clipped at zero, so that evidence against a class in one view cancels evidence for it in the other. Clipping
    each view first would show regions that, over both views, lowered the score."""
    averaging = BrainResNetForImageClassification(BrainResNetConfig(mirror_average=True)).eval()
    averaging.load_state_dict(improved_model.state_dict())
    weights = improved_model.classifier[-1].weight.detach()

    def class_sums(pixel_values):
        with torch.no_grad():
            features = improved_model(pixel_values, output_hidden_states=True).hidden_states[-1]
        sums = torch.einsum("kc,bchw->bkhw", weights, features)[0]
        return F.interpolate(sums[:, None], size=(224, 224), mode="bilinear", align_corners=False)[:, 0]

    expected = F.relu(class_sums(slice_input) + class_sums(slice_input.flip(-1)).flip(-1))
    expected = expected - expected.amin(dim=(1, 2), keepdim=True)
    expected = torch.nan_to_num(expected / expected.amax(dim=(1, 2), keepdim=True))

    cams = explain.grad_cam(averaging, slice_input)

    assert (expected.amax(dim=(1, 2)) == 1).sum() >= 2, "too few classes with any evidence to compare"
    np.testing.assert_allclose(cams[0], expected.numpy(), atol=1e-4)


def test_stem_maps_are_each_branch_mean_absolute_response(improved_model, slice_input):
    result = explain.explain(improved_model, slice_input)
    branches = improved_model.brain_resnet.embedder.stem.branches
    with torch.no_grad():
        responses = torch.stack([branch(slice_input).abs().mean(dim=1)[0] for branch in branches])

    np.testing.assert_allclose(np.stack(result.stem_maps), explain.scale_maps(responses, (224, 224)), atol=1e-5)


def test_attention_weighted_map_follows_the_channels_attention_keeps():
    output = torch.zeros(1, 2, 4, 4)
    output[0, 0, :, :2] = 1.0  # channel 0 responds on the left
    output[0, 1, :, 2:] = 1.0  # channel 1 on the right
    keep_first = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # (B, blocks, C): the last block keeps channel 0
    keep_second = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])

    left, right, unweighted = explain.attention_weighted_maps((output, output, output), [keep_first, keep_second, None])

    assert left[0, :, :2].min() == 1 and not left[0, :, 2:].any()
    assert right[0, :, 2:].min() == 1 and not right[0, :, :2].any()
    assert torch.equal(unweighted, torch.full((1, 4, 4), 0.5))


@pytest.mark.parametrize(
    ("switches", "stem_maps", "se_stages"),
    [({"stem_type": "conv"}, 0, 4), ({"attention_type": "none"}, 3, 0), ({"downsample_type": "conv"}, 3, 4)],
)
def test_explain_handles_each_ablation(switches, stem_maps, se_stages, slice_input):
    model = BrainResNetForImageClassification(BrainResNetConfig(**switches)).eval().requires_grad_(False)

    result = explain.explain(model, slice_input)

    assert result.grad_cams.shape == (4, 224, 224)
    assert len(result.stem_maps) == stem_maps
    assert sum(weights is not None for weights in result.se_weights) == se_stages
    assert len(result.stage_maps) == 4


def test_explain_refuses_a_model_in_training_mode(slice_input):
    model = BrainResNetForImageClassification(BrainResNetConfig())
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        explain.explain(model.train(), slice_input)
