"""Expert network architectures: each maps an image batch to outputs and decodes them."""

from coserve.architectures.base import Decoded, ExpertModule
from coserve.architectures.mlp import WideMLP
from coserve.architectures.resnet import ResNetClassifier
from coserve.architectures.yolo import YoloDetector

__all__ = ["Decoded", "ExpertModule", "ResNetClassifier", "WideMLP", "YoloDetector"]
