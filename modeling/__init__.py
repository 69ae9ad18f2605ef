"""Improved ResNet34 for brain-tumor MRI classification as a Hugging Face custom model (arXiv 2512.03751).

Installed as brain_resnet.modeling (brain_resnet/modeling links to this folder)."""

from .configuration_brain_resnet import VARIANTS, BrainResNetConfig
from .image_processing_brain_resnet import BrainResNetImageProcessor
from .modeling_brain_resnet import BrainResNetForImageClassification, BrainResNetModel

# save_pretrained then copies these files next to the weights and writes auto_map, so that
# Auto*.from_pretrained(folder, trust_remote_code=True) needs only transformers.
BrainResNetConfig.register_for_auto_class()
BrainResNetModel.register_for_auto_class("AutoModel")
BrainResNetForImageClassification.register_for_auto_class("AutoModelForImageClassification")
BrainResNetImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "BrainResNetConfig",
    "BrainResNetForImageClassification",
    "BrainResNetImageProcessor",
    "BrainResNetModel",
    "VARIANTS",
]
