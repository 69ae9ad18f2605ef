"""Configuration of the improved ResNet34 for brain-tumor MRI classification (arXiv 2512.03751)."""

import copy

from transformers import PretrainedConfig

STEM_TYPES = ("multiscale", "conv")
DOWNSAMPLE_TYPES = ("inception", "conv")
ATTENTION_TYPES = ("se", "none")
DEFAULT_LABELS = ("glioma", "meningioma", "notumor", "pituitary")
# The paper's model and its ablations by name, as overrides of the defaults; "resnet34" is torchvision's ResNet34.
VARIANTS = {
    "improved": {},
    "resnet34": {"stem_type": "conv", "downsample_type": "conv", "attention_type": "none"},
    "no-multiscale": {"stem_type": "conv"},
    "no-inception": {"downsample_type": "conv"},
    "no-se": {"attention_type": "none"},
}

# Written into config.json so that every Auto class loads the saved folder, not only the one that was saved.
AUTO_MAP = {
    "AutoConfig": "configuration_brain_resnet.BrainResNetConfig",
    "AutoModel": "modeling_brain_resnet.BrainResNetModel",
    "AutoModelForImageClassification": "modeling_brain_resnet.BrainResNetForImageClassification",
    "AutoImageProcessor": "image_processing_brain_resnet.BrainResNetImageProcessor",
}

# pipeline("image-classification", model=folder, trust_remote_code=True) builds this pipeline: images as stored.
CUSTOM_PIPELINES = {
    "image-classification": {
        "impl": "image_processing_brain_resnet.BrainResNetImageClassificationPipeline",
        "pt": ["AutoModelForImageClassification"],
        "type": "image",
    }
}


class BrainResNetConfig(PretrainedConfig):
    r"""
    Configuration of [`BrainResNetModel`]. The defaults build the paper's improved ResNet34; the three switches
    `stem_type`, `downsample_type` and `attention_type` turn each of its modules off, and with all three off
    (`"conv"`, `"conv"`, `"none"`) the network is exactly torchvision's ResNet34.

    Args:
        num_channels (`int`, defaults to 1):
            Input channels. MRI slices are single-channel; the image processor converts any input to this.
        embedding_size (`int`, defaults to 64):
            Channels out of the stem.
        hidden_sizes (`list[int]`, defaults to `[64, 128, 256, 512]`):
            Channels of the four stages.
        depths (`list[int]`, defaults to `[3, 4, 6, 3]`):
            Residual blocks per stage (ResNet34).
        stem_type (`str`, defaults to `"multiscale"`):
            `"multiscale"`: parallel stride-2 convolutions with the kernel sizes `stem_kernel_sizes`, their outputs
            (`stem_branch_channels`) concatenated, then BN and ReLU. `"conv"`: ResNet's single 7x7 stride-2 conv.
        stem_kernel_sizes (`list[int]`, defaults to `[3, 5, 7]`):
            Kernel size of each multi-scale branch.
        stem_branch_channels (`list[int]`, defaults to `[32, 16, 16]`):
            Output channels of each multi-scale branch; they must add up to `embedding_size`.
        downsample_type (`str`, defaults to `"inception"`):
            `"inception"`: the first block of stages 2-4 (where the resolution halves) is an Inception-v2 grid
            reduction module. `"conv"`: ResNet's basic block with a stride-2 conv and a 1x1 projection shortcut.
        attention_type (`str`, defaults to `"se"`):
            `"se"`: Squeeze-and-Excitation on the residual branch of every residual block, before the addition.
            `"none"`: plain ResNet blocks.
        se_reduction (`int`, defaults to 16):
            Channel reduction ratio of the SE bottleneck.
        hidden_act (`str`, defaults to `"relu"`):
            Activation used throughout.
        dropout (`float`, defaults to 0.0):
            Dropout on the pooled features before the classifier.
        calibration_temperature (`float`, defaults to 1.0):
            The classifier's logits are divided by it, so that softmax probabilities are calibrated. Fitted after
            training on held-out slices (temperature scaling); 1 leaves the logits as trained.
        familiarity_threshold (`float`, *optional*):
            When set, the model carries the class means and shared precision matrix of its training slices' pooled
            features and returns each slice's `unfamiliarity`: its squared Mahalanobis distance to the nearest
            class mean divided by this threshold, so that above 1 means unlike the training data. The threshold is
            a high quantile of held-out slices' distances.
        mirror_average (`bool`, defaults to `False`):
            Classify each slice by the mean of its pooled features and those of its left-right mirror image, so that
            a slice gets the same answer whichever way round a viewer displays it (radiological or neurological
            convention). Costs a second forward pass; `hidden_states` and `attentions` stay the slice's own.
    """

    model_type = "brain_resnet"
    # Trainer's predictions are the logits alone, as for any image classifier (compute_metrics takes their argmax).
    keys_to_ignore_at_inference = ["unfamiliarity"]

    def __init__(
        self,
        num_channels: int = 1,
        embedding_size: int = 64,
        hidden_sizes: list[int] | None = None,
        depths: list[int] | None = None,
        stem_type: str = "multiscale",
        stem_kernel_sizes: list[int] | None = None,
        stem_branch_channels: list[int] | None = None,
        downsample_type: str = "inception",
        attention_type: str = "se",
        se_reduction: int = 16,
        hidden_act: str = "relu",
        dropout: float = 0.0,
        calibration_temperature: float = 1.0,
        familiarity_threshold: float | None = None,
        mirror_average: bool = False,
        **kwargs,
    ):
        if "id2label" not in kwargs and "num_labels" not in kwargs:
            kwargs["id2label"] = dict(enumerate(DEFAULT_LABELS))
            kwargs.setdefault("label2id", {label: i for i, label in enumerate(DEFAULT_LABELS)})
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        kwargs.setdefault("custom_pipelines", copy.deepcopy(CUSTOM_PIPELINES))  # the pipeline resolves "pt" in place
        super().__init__(**kwargs)
        self.num_channels = num_channels
        self.embedding_size = embedding_size
        self.hidden_sizes = list(hidden_sizes) if hidden_sizes is not None else [64, 128, 256, 512]
        self.depths = list(depths) if depths is not None else [3, 4, 6, 3]
        self.stem_type = stem_type
        self.stem_kernel_sizes = list(stem_kernel_sizes) if stem_kernel_sizes is not None else [3, 5, 7]
        self.stem_branch_channels = list(stem_branch_channels) if stem_branch_channels is not None else [32, 16, 16]
        self.downsample_type = downsample_type
        self.attention_type = attention_type
        self.se_reduction = se_reduction
        self.hidden_act = hidden_act
        self.dropout = dropout
        self.calibration_temperature = calibration_temperature
        self.familiarity_threshold = familiarity_threshold
        self.mirror_average = mirror_average
        self._validate()

    def _validate(self):
        for name, value, allowed in (
            ("stem_type", self.stem_type, STEM_TYPES),
            ("downsample_type", self.downsample_type, DOWNSAMPLE_TYPES),
            ("attention_type", self.attention_type, ATTENTION_TYPES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not self.calibration_temperature > 0:
            raise ValueError(f"calibration_temperature must be positive, got {self.calibration_temperature}")
        if self.familiarity_threshold is not None and not self.familiarity_threshold > 0:
            raise ValueError(f"familiarity_threshold must be positive, got {self.familiarity_threshold}")
        if len(self.hidden_sizes) != len(self.depths):
            raise ValueError(f"hidden_sizes {self.hidden_sizes} and depths {self.depths} differ in length")
        if self.stem_type == "multiscale":
            if len(self.stem_kernel_sizes) != len(self.stem_branch_channels):
                raise ValueError("stem_kernel_sizes and stem_branch_channels must have the same length")
            if sum(self.stem_branch_channels) != self.embedding_size:
                raise ValueError(
                    f"stem_branch_channels {self.stem_branch_channels} must add up to embedding_size "
                    f"{self.embedding_size}"
                )
            if any(k % 2 == 0 for k in self.stem_kernel_sizes):
                raise ValueError(f"stem_kernel_sizes must be odd, got {self.stem_kernel_sizes}")
