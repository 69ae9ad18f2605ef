"""Feature-statistics mixing for train.py --mix-styles (MixStyle; Zhou et al., "Domain Generalization with
MixStyle", ICLR 2021).

A CNN's early feature maps carry a slice's "style" (its scanner, sequence and windowing) in their per-channel means
and standard deviations. During training, after each chosen stage, a slice's feature maps are re-normalised to a
random mixture of its own statistics and those of another slice of the batch, its label kept. In the 4k data every
healthy slice comes from one source and every tumour from another: mixing their statistics makes the style a poor
clue to the class, so the network must read the anatomy.
"""

import torch
from torch import nn

# After the first two residual stages (the paper's best placement for ResNets: deeper stages carry the class).
MIXED_STAGES = (0, 1)
MIX_CONCENTRATION = 0.1  # Beta(0.1, 0.1): most mixtures lie near one of the two slices, as in the paper
EPS = 1e-6


def mix_styles(hidden_state: torch.Tensor, prob: float) -> torch.Tensor:
    """(batch, channels, height, width) feature maps with each slice's channel statistics, with probability `prob`,
    replaced by a Beta-weighted mixture of its own and those of a random other slice of the batch. Draws from
    torch's global generator, which train.py seeds per epoch."""
    batch = hidden_state.shape[0]
    features = hidden_state.float()  # statistics in float32, also under bf16 autocast
    mean = features.mean(dim=(2, 3), keepdim=True)
    std = (features.var(dim=(2, 3), keepdim=True) + EPS).sqrt()
    # The statistics are treated as constants, as in the paper: the network learns from the mixed view, not how to
    # undo the mixing.
    mean, std = mean.detach(), std.detach()
    normalised = (features - mean) / std
    concentration = torch.tensor(MIX_CONCENTRATION, device=features.device)
    weight = torch.distributions.Beta(concentration, concentration).sample((batch, 1, 1, 1))
    mixed = torch.rand(batch, 1, 1, 1, device=features.device) < prob
    weight = torch.where(mixed, weight, torch.ones_like(weight))  # 1: the slice's own statistics
    partner = torch.randperm(batch, device=features.device)
    mixed_mean = weight * mean + (1 - weight) * mean[partner]
    mixed_std = weight * std + (1 - weight) * std[partner]
    return (normalised * mixed_std + mixed_mean).to(hidden_state.dtype)


def add_style_mixing(model: nn.Module, prob: float) -> list[torch.utils.hooks.RemovableHandle]:
    """Mix styles after MIXED_STAGES of a BrainResNetForImageClassification while it trains (a forward hook on each
    stage; in eval mode the hooks leave the features alone, and nothing is saved with the weights). Returns the hooks'
    handles."""

    def hook(stage: nn.Module, inputs, output):
        if not stage.training:
            return output
        hidden_state, channel_weights = output
        return mix_styles(hidden_state, prob), channel_weights

    stages = model.brain_resnet.encoder.stages
    return [stages[index].register_forward_hook(hook) for index in MIXED_STAGES]
