"""PyTorch improved ResNet34 for brain-tumor MRI classification (arXiv 2512.03751).

ResNet34 with three changes, each switchable in [`BrainResNetConfig`]:

1. **Multi-scale input module** in place of the 7x7 stride-2 first convolution: parallel stride-2 convolutions of
   kernel 3, 5 and 7 (32 + 16 + 16 channels) see the slice at three receptive fields; their outputs are concatenated
   to the usual 64 channels, batch-normalised and rectified, then max-pooled as in ResNet.
2. **Inception-v2 downsampling**: where a stage halves the resolution (first block of stages 2-4), ResNet's
   downsampling residual block (3x3/2 conv, 3x3 conv, 1x1/2 projection shortcut) is replaced by the Inception-v2 grid
   reduction module of Szegedy et al. (2016, fig. 10): three parallel branches, 1x1 -> 3x3/2, 1x1 -> 3x3 -> 3x3/2 and
   3x3/2 average pool -> 1x1, each conv followed by BN and ReLU, concatenated to the stage's width (3/8, 3/8, 1/4 of
   it). The paper leaves the widths open; we use 1x1 bottlenecks of a quarter of the input width, which is what brings
   the network to <= 80% of ResNet34's parameters as the paper reports. The pool -> 1x1 branch plays the part of the
   projection shortcut (it is ResNet-D's shortcut), concatenated instead of added, so the module is not a residual
   block and carries no SE of its own.
3. **Squeeze-and-Excitation** (Hu et al., 2018) on the residual branch of every residual block, before the addition,
   with reduction 16. Its channel weights are returned with `output_attentions=True`.

A trained release adds two honest outputs, fitted on held-out slices (see `BrainResNetConfig`): logits divided by a
calibration temperature, and an `unfamiliarity` score, the squared Mahalanobis distance of the pooled features to
the nearest class mean of the training slices (Lee et al., 2018) over a threshold that 5% of held-out slices exceed;
above 1, the slice is further from the training data than that, and the prediction deserves less trust.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput, logging

from .configuration_brain_resnet import BrainResNetConfig

logger = logging.get_logger(__name__)


@dataclass
class BrainResNetModelOutput(ModelOutput):
    """
    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, hidden_sizes[-1], height, width)`):
            Feature map of the last stage.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_sizes[-1], 1, 1)`):
            Global average of `last_hidden_state`.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The stem's output (after max-pool) and each stage's output: `1 + len(depths)` maps of shape
            `(batch_size, channels, height, width)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True` when
            `attention_type="se"`):
            SE channel weights in [0, 1] of every residual block in order, each `(batch_size, channels)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BrainResNetImageClassifierOutput(ImageClassifierOutput):
    """
    [`ImageClassifierOutput`] plus:

    Args:
        unfamiliarity (`torch.FloatTensor` of shape `(batch_size,)`, *optional*, returned when the config has a
            `familiarity_threshold`):
            Squared Mahalanobis distance of each slice's pooled features to the nearest training class mean, over
            the threshold: above 1, the slice is unlike the training data.
    """

    unfamiliarity: torch.FloatTensor | None = None


class BrainResNetConvLayer(nn.Module):
    """Conv -> BN -> activation (none when `activation` is None)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, activation: str | None = "relu"):
        super().__init__()
        self.convolution = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.normalization = nn.BatchNorm2d(out_channels)
        self.activation = ACT2FN[activation] if activation is not None else nn.Identity()

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.activation(self.normalization(self.convolution(hidden_state)))


class BrainResNetConvStem(nn.Module):
    """ResNet's stem convolution: 7x7, stride 2."""

    def __init__(self, config: BrainResNetConfig):
        super().__init__()
        self.layer = BrainResNetConvLayer(
            config.num_channels, config.embedding_size, kernel_size=7, stride=2, activation=config.hidden_act
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layer(pixel_values)


class BrainResNetMultiScaleStem(nn.Module):
    """Multi-scale input module: parallel stride-2 convolutions of several kernel sizes, concatenated, BN, ReLU."""

    def __init__(self, config: BrainResNetConfig):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(config.num_channels, channels, kernel_size, stride=2, padding=kernel_size // 2, bias=False)
            for kernel_size, channels in zip(config.stem_kernel_sizes, config.stem_branch_channels, strict=True)
        )
        # One BN over the concatenation equals one BN per branch; it keeps the fused map a single tensor.
        self.normalization = nn.BatchNorm2d(config.embedding_size)
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([branch(pixel_values) for branch in self.branches], dim=1)
        return self.activation(self.normalization(fused))


class BrainResNetEmbeddings(nn.Module):
    """Stem (single conv or multi-scale module) followed by ResNet's 3x3 stride-2 max-pool."""

    def __init__(self, config: BrainResNetConfig):
        super().__init__()
        self.stem = (
            BrainResNetMultiScaleStem(config) if config.stem_type == "multiscale" else BrainResNetConvStem(config)
        )
        self.pooler = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.num_channels = config.num_channels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels but the model expects {self.num_channels}; "
                "preprocess images with BrainResNetImageProcessor"
            )
        return self.pooler(self.stem(pixel_values))


class BrainResNetSqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation: global average -> bottleneck MLP -> sigmoid channel weights that rescale the input."""

    def __init__(self, channels: int, reduction: int, activation: str):
        super().__init__()
        squeezed = max(channels // reduction, 1)
        self.reduce = nn.Conv2d(channels, squeezed, kernel_size=1)
        self.activation = ACT2FN[activation]
        self.expand = nn.Conv2d(squeezed, channels, kernel_size=1)

    def forward(self, hidden_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = hidden_state.mean(dim=(2, 3), keepdim=True)
        weights = torch.sigmoid(self.expand(self.activation(self.reduce(weights))))
        return hidden_state * weights, weights.flatten(1)


class BrainResNetShortCut(nn.Module):
    """1x1 projection shortcut of ResNet's downsampling block."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.layer = BrainResNetConvLayer(in_channels, out_channels, kernel_size=1, stride=stride, activation=None)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.layer(hidden_state)


class BrainResNetBasicLayer(nn.Module):
    """ResNet basic block (two 3x3 convs), with SE on the residual branch before the addition when enabled."""

    def __init__(self, config: BrainResNetConfig, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        needs_projection = in_channels != out_channels or stride != 1
        self.shortcut = BrainResNetShortCut(in_channels, out_channels, stride) if needs_projection else nn.Identity()
        self.layer = nn.Sequential(
            BrainResNetConvLayer(in_channels, out_channels, stride=stride, activation=config.hidden_act),
            BrainResNetConvLayer(out_channels, out_channels, activation=None),
        )
        self.attention = (
            BrainResNetSqueezeExcitation(out_channels, config.se_reduction, config.hidden_act)
            if config.attention_type == "se"
            else None
        )
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        residual = self.shortcut(hidden_state)
        hidden_state = self.layer(hidden_state)
        channel_weights = None
        if self.attention is not None:
            hidden_state, channel_weights = self.attention(hidden_state)
        return self.activation(hidden_state + residual), channel_weights


class BrainResNetInceptionReduction(nn.Module):
    """
    Inception-v2 grid reduction (Szegedy et al. 2016, fig. 10) from `in_channels` to `out_channels` at half the
    resolution: 1x1 -> 3x3/2, 1x1 -> 3x3 -> 3x3/2 and avg-pool/2 -> 1x1 branches, concatenated.
    """

    def __init__(self, config: BrainResNetConfig, in_channels: int, out_channels: int):
        super().__init__()
        act = config.hidden_act
        bottleneck = max(in_channels // 4, 1)
        conv_channels = out_channels * 3 // 8
        pool_channels = out_channels - 2 * conv_channels
        self.branch_3x3 = nn.Sequential(
            BrainResNetConvLayer(in_channels, bottleneck, kernel_size=1, activation=act),
            BrainResNetConvLayer(bottleneck, conv_channels, stride=2, activation=act),
        )
        self.branch_double_3x3 = nn.Sequential(
            BrainResNetConvLayer(in_channels, bottleneck, kernel_size=1, activation=act),
            BrainResNetConvLayer(bottleneck, bottleneck, activation=act),
            BrainResNetConvLayer(bottleneck, conv_channels, stride=2, activation=act),
        )
        self.branch_pool = nn.Sequential(
            nn.AvgPool2d(kernel_size=3, stride=2, padding=1, count_include_pad=False),
            BrainResNetConvLayer(in_channels, pool_channels, kernel_size=1, activation=act),
        )

    def forward(self, hidden_state: torch.Tensor) -> tuple[torch.Tensor, None]:
        branches = (self.branch_3x3, self.branch_double_3x3, self.branch_pool)
        return torch.cat([branch(hidden_state) for branch in branches], dim=1), None


class BrainResNetStage(nn.Module):
    """A stage of residual blocks; the first one changes width and (except in stage 1) halves the resolution."""

    def __init__(self, config: BrainResNetConfig, in_channels: int, out_channels: int, stride: int, depth: int):
        super().__init__()
        if stride == 2 and config.downsample_type == "inception":
            first_layer = BrainResNetInceptionReduction(config, in_channels, out_channels)
        else:
            first_layer = BrainResNetBasicLayer(config, in_channels, out_channels, stride=stride)
        self.layers = nn.ModuleList(
            [first_layer] + [BrainResNetBasicLayer(config, out_channels, out_channels) for _ in range(depth - 1)]
        )

    def forward(self, hidden_state: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        channel_weights = []
        for layer in self.layers:
            hidden_state, weights = layer(hidden_state)
            if weights is not None:
                channel_weights.append(weights)
        return hidden_state, channel_weights


class BrainResNetEncoder(nn.Module):
    def __init__(self, config: BrainResNetConfig):
        super().__init__()
        widths = [config.embedding_size, *config.hidden_sizes]
        self.stages = nn.ModuleList(
            BrainResNetStage(config, widths[i], widths[i + 1], stride=1 if i == 0 else 2, depth=depth)
            for i, depth in enumerate(config.depths)
        )

    def forward(
        self, hidden_state: torch.Tensor, output_hidden_states: bool, output_attentions: bool
    ) -> BrainResNetModelOutput:
        hidden_states = (hidden_state,) if output_hidden_states else None
        attentions = () if output_attentions else None
        for stage in self.stages:
            hidden_state, channel_weights = stage(hidden_state)
            if output_hidden_states:
                hidden_states += (hidden_state,)
            if output_attentions:
                attentions += tuple(channel_weights)
        return BrainResNetModelOutput(
            last_hidden_state=hidden_state, hidden_states=hidden_states, attentions=attentions
        )


class BrainResNetPreTrainedModel(PreTrainedModel):
    config_class = BrainResNetConfig
    config: BrainResNetConfig
    base_model_prefix = "brain_resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["BrainResNetConvLayer", "BrainResNetShortCut"]

    def _init_weights(self, module):
        # As transformers' ResNet: He init for convs (SE's 1x1 convs have biases, zeroed), torch's default for Linear.
        super()._init_weights(module)
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            if getattr(module, "num_batches_tracked", None) is not None:
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, BrainResNetForImageClassification) and hasattr(module, "familiarity_means"):
            # A detector that was not loaded (built from a config, or a new label set) must not be left empty.
            init.zeros_(module.familiarity_means)
            init.eye_(module.familiarity_precision)


class BrainResNetModel(BrainResNetPreTrainedModel):
    """The improved ResNet34 backbone: stem, four stages, global average pool."""

    def __init__(self, config: BrainResNetConfig):
        super().__init__(config)
        self.embedder = BrainResNetEmbeddings(config)
        self.encoder = BrainResNetEncoder(config)
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BrainResNetModelOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images from [`BrainResNetImageProcessor`].
        output_hidden_states (`bool`, *optional*):
            Also return the stem's and every stage's feature map.
        output_attentions (`bool`, *optional*):
            Also return the SE channel weights of every residual block.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        embedding_output = self.embedder(pixel_values)
        encoded = self.encoder(embedding_output, bool(output_hidden_states), bool(output_attentions))
        # Built in one go: a field set afterwards would come last in to_tuple(), after hidden_states.
        outputs = BrainResNetModelOutput(
            last_hidden_state=encoded.last_hidden_state,
            pooler_output=self.pooler(encoded.last_hidden_state),
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return outputs if return_dict else outputs.to_tuple()


class BrainResNetForImageClassification(BrainResNetPreTrainedModel):
    """The improved ResNet34 with a linear classifier on the pooled features."""

    def __init__(self, config: BrainResNetConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.brain_resnet = BrainResNetModel(config)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity(),
        )
        if config.familiarity_threshold is not None:  # filled by from_pretrained or set_familiarity
            features = config.hidden_sizes[-1]
            self.register_buffer("familiarity_means", torch.zeros(config.num_labels, features))
            self.register_buffer("familiarity_precision", torch.eye(features))
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As [`PreTrainedModel.from_pretrained`]; a familiarity detector whose class means were not loaded (a new
        label set, with `ignore_mismatched_sizes=True`) is dropped: it would measure distances to no class."""
        with_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        not_loaded = {key[0] if isinstance(key, tuple) else key for key in loading_info["mismatched_keys"]}
        not_loaded |= set(loading_info["missing_keys"])
        if hasattr(model, "familiarity_means") and "familiarity_means" in not_loaded:
            logger.warning(
                "The unfamiliar-image detector does not fit this label set and is dropped (unfamiliarity is None); "
                "refit it on the new training slices with set_familiarity."
            )
            del model.familiarity_means, model.familiarity_precision
            model.config.familiarity_threshold = None
        return (model, loading_info) if with_loading_info else model

    def set_familiarity(self, means: torch.Tensor, precision: torch.Tensor, threshold: float) -> None:
        """Install the training slices' class means (num_labels, features) and shared precision matrix (features,
        features) of pooled features, and the distance that counts as unfamiliar."""
        if hasattr(self, "familiarity_means"):
            self.familiarity_means = means.to(self.familiarity_means)
            self.familiarity_precision = precision.to(self.familiarity_precision)
        else:
            device = self.classifier[-1].weight.device
            self.register_buffer("familiarity_means", means.float().to(device))
            self.register_buffer("familiarity_precision", precision.float().to(device))
        self.config.familiarity_threshold = float(threshold)

    def familiarity_distance(self, pooled: torch.Tensor) -> torch.Tensor:
        """(batch,) squared Mahalanobis distance of pooled features (batch, features) to the nearest class mean."""
        differences = pooled.float()[:, None, :] - self.familiarity_means.float()[None]  # (batch, labels, features)
        projected = differences @ self.familiarity_precision.float()
        return (projected * differences).sum(dim=-1).amin(dim=1)

    def pooled_features(self, pixel_values: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """The (batch, features) pooled features the classifier reads: with `config.mirror_average`, the mean of
        the slices' and their mirror images'. `pooled`: the slices' own pooler_output, when already computed."""
        if pooled is None:
            pooled = self.brain_resnet(pixel_values, return_dict=True).pooler_output
        if self.config.mirror_average:
            pooled = (pooled + self.brain_resnet(pixel_values.flip(-1), return_dict=True).pooler_output) / 2
        return pooled.flatten(1)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BrainResNetImageClassifierOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices; when given, the output carries the cross-entropy loss.

        The logits are divided by `config.calibration_temperature` (1 unless calibrated); with
        `config.mirror_average` they are those of the slice's and its mirror image's mean features.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.brain_resnet(
            pixel_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        pooled = self.pooled_features(pixel_values, outputs.pooler_output)
        logits = self.classifier(pooled)
        if self.config.calibration_temperature != 1.0:
            logits = logits / self.config.calibration_temperature
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        unfamiliarity = None
        if self.config.familiarity_threshold is not None:
            distance = self.familiarity_distance(pooled)
            unfamiliarity = distance / self.config.familiarity_threshold
        result = BrainResNetImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            unfamiliarity=unfamiliarity,
        )
        return result if return_dict else result.to_tuple()
