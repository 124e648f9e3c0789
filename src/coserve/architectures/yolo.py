"""A YOLOv5 (v6.0 layout) object detector used as a "flag this image" expert.

Backbone (CSP-Darknet with C3 blocks and SPPF), PAN neck and a three-scale anchor head,
scaled by YOLOv5's `depth_multiple` / `width_multiple`: (0.33, 0.25) is v5n, (0.33, 0.50)
v5s, (0.67, 0.75) v5m, (1.0, 1.0) v5l. The expert's label is whether any box is confident
enough; the boxes themselves go back to the client in `detail`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from coserve.architectures.base import Decoded, ExpertModule

# A box counts when sigmoid(objectness) * max class prob exceeds this; YOLOv5's own
# inference default is 0.25, but an expert that flags images wants fewer false positives.
FLAG_SCORE_THRESHOLD = 0.5
NUM_REPORTED_BOXES = 5
# Output strides of the P3/P4/P5 heads; inputs must be a multiple of the largest.
_STRIDES = (8, 16, 32)
INPUT_MULTIPLE = _STRIDES[-1]
# YOLOv5's COCO anchors in pixels, (w, h) per anchor, smallest scale first.
_DEFAULT_ANCHORS = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
MAX_ANCHORS = len(_DEFAULT_ANCHORS[0])


class ConvBnSiLU(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1
    ) -> None:
        super().__init__()
        padding = kernel // 2  # "same" for stride 1
        if kernel == 6:  # the v6.0 stem: a 6x6/2 conv standing in for the old Focus layer
            padding = 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False)
        # YOLOv5's BN settings; kept so converted YOLOv5 weights behave identically.
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = ConvBnSiLU(channels, channels, 1)
        self.cv2 = ConvBnSiLU(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.cv2(self.cv1(x))  # [N, C, H, W]
        return x + out if self.shortcut else out


class C3(nn.Module):
    """CSP block: half the channels go through `num_blocks` bottlenecks, half skip them."""

    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: int, shortcut: bool = True
    ) -> None:
        super().__init__()
        hidden = out_channels // 2
        self.cv1 = ConvBnSiLU(in_channels, hidden, 1)
        self.cv2 = ConvBnSiLU(in_channels, hidden, 1)
        self.cv3 = ConvBnSiLU(2 * hidden, out_channels, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(num_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.m(self.cv1(x))  # [N, C/2, H, W]
        return self.cv3(torch.cat((main, self.cv2(x)), dim=1))  # [N, C, H, W]


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools equal 5/9/13 pools."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 5) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.cv1 = ConvBnSiLU(in_channels, hidden, 1)
        self.cv2 = ConvBnSiLU(hidden * 4, out_channels, 1)
        self.pool = nn.MaxPool2d(kernel, stride=1, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)  # [N, C/2, H, W]
        p1 = self.pool(x)
        p2 = self.pool(p1)
        return self.cv2(torch.cat((x, p1, p2, self.pool(p2)), dim=1))  # [N, C_out, H, W]


class Detect(nn.Module):
    """Anchor head over P3/P4/P5. Output `[N, A, 5 + num_classes]` with A = num_anchors *
    sum(H_i * W_i): box centre and size in input pixels, then raw objectness and class
    logits (decode applies the sigmoids, so callers can calibrate on logits)."""

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, num_anchors: int) -> None:
        super().__init__()
        self.num_outputs = 5 + num_classes
        self.num_anchors = num_anchors
        self.m = nn.ModuleList(nn.Conv2d(c, num_anchors * self.num_outputs, 1) for c in in_channels)
        anchors = [scale[:num_anchors] for scale in _DEFAULT_ANCHORS]
        # A persistent buffer, not a Python constant: weight files carry the anchors they
        # were trained with, and functional_call swaps them in with the other tensors.
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32))  # [S, A, 2]
        self._init_biases(num_classes)

    def _init_biases(self, num_classes: int) -> None:
        # YOLOv5's priors (about 8 objects per 640x640 image, class prob 0.6 / num_classes),
        # so an untrained detector reports "clear" instead of flagging every image.
        for conv, stride in zip(self.m, _STRIDES, strict=True):
            bias = conv.bias.view(self.num_anchors, self.num_outputs)  # [A, 5 + nc]
            with torch.no_grad():
                bias[:, 4] += math.log(8 / (640 / stride) ** 2)
                bias[:, 5:] += math.log(0.6 / (num_classes - 0.99))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        outputs = []
        for i, (conv, x, stride) in enumerate(zip(self.m, features, _STRIDES, strict=True)):
            n, _, h, w = x.shape
            p = conv(x).view(n, self.num_anchors, self.num_outputs, h, w)  # [N, A, O, H, W]
            p = p.permute(0, 1, 3, 4, 2)  # [N, A, H, W, O]
            # Built on the input's device each call rather than cached: it depends only on
            # the feature map size, and a cache would be module state outside the weights.
            ys = torch.arange(h, device=x.device, dtype=p.dtype)
            xs = torch.arange(w, device=x.device, dtype=p.dtype)
            grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [H, W, 2]
            anchor_wh = self.anchors[i].to(p.dtype).view(1, self.num_anchors, 1, 1, 2)
            xy = (p[..., :2].sigmoid() * 2 - 0.5 + grid) * stride  # [N, A, H, W, 2]
            wh = (p[..., 2:4].sigmoid() * 2) ** 2 * anchor_wh  # [N, A, H, W, 2]
            box = torch.cat((xy, wh, p[..., 4:]), dim=-1)  # [N, A, H, W, O]
            outputs.append(box.reshape(n, -1, self.num_outputs))  # [N, A*H*W, O]
        return torch.cat(outputs, dim=1)  # [N, sum(A*H*W), O]


def _validate(
    depth_multiple: float,
    width_multiple: float,
    num_classes: int,
    in_channels: int,
    num_anchors: int,
) -> None:
    if not depth_multiple > 0:
        raise ValueError(
            f"YOLO depth_multiple must be > 0 (0.33 n/s, 0.67 m, 1.0 l); got {depth_multiple!r}"
        )
    if not width_multiple > 0:
        raise ValueError(
            f"YOLO width_multiple must be > 0 (0.25 n, 0.5 s, 0.75 m, 1.0 l); got {width_multiple!r}"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"YOLO num_classes must be a positive int; got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(
            f"YOLO in_channels must be a positive int (3 for RGB); got {in_channels!r}"
        )
    if not isinstance(num_anchors, int) or not 1 <= num_anchors <= MAX_ANCHORS:
        raise ValueError(
            f"YOLO num_anchors must be an int from 1 to {MAX_ANCHORS}; got {num_anchors!r}"
        )


class YoloDetector(ExpertModule):
    """YOLOv5 detector. Input `[N, C, H, W]` with H and W multiples of 32; output as
    `Detect`. Labels: 0 = "clear", 1 = "flagged" (some box scores above 0.5)."""

    labels = ("clear", "flagged")

    def __init__(
        self,
        depth_multiple: float = 0.33,
        width_multiple: float = 0.25,
        num_classes: int = 2,
        in_channels: int = 3,
        num_anchors: int = 3,
    ) -> None:
        super().__init__()
        _validate(depth_multiple, width_multiple, num_classes, in_channels, num_anchors)
        self.num_labels = len(self.labels)

        def ch(c: int) -> int:
            # Channel counts rounded up to a multiple of 8, as YOLOv5 does, for tensor cores.
            return math.ceil(c * width_multiple / 8) * 8

        def n(blocks: int) -> int:
            return max(round(blocks * depth_multiple), 1)

        # Backbone: /2 stem, then four /2 stages; P3, P4, P5 feed the neck.
        self.stem = ConvBnSiLU(in_channels, ch(64), 6, 2)
        self.down1, self.stage1 = ConvBnSiLU(ch(64), ch(128), 3, 2), C3(ch(128), ch(128), n(3))
        self.down2, self.stage2 = ConvBnSiLU(ch(128), ch(256), 3, 2), C3(ch(256), ch(256), n(6))
        self.down3, self.stage3 = ConvBnSiLU(ch(256), ch(512), 3, 2), C3(ch(512), ch(512), n(9))
        self.down4, self.stage4 = ConvBnSiLU(ch(512), ch(1024), 3, 2), C3(ch(1024), ch(1024), n(3))
        self.sppf = SPPF(ch(1024), ch(1024))

        # PAN neck: top-down (lateral + upsample) then bottom-up (strided conv) fusion.
        self.lateral5 = ConvBnSiLU(ch(1024), ch(512), 1)
        self.top_down4 = C3(ch(1024), ch(512), n(3), shortcut=False)
        self.lateral4 = ConvBnSiLU(ch(512), ch(256), 1)
        self.out3 = C3(ch(512), ch(256), n(3), shortcut=False)
        self.bottom_up3 = ConvBnSiLU(ch(256), ch(256), 3, 2)
        self.out4 = C3(ch(512), ch(512), n(3), shortcut=False)
        self.bottom_up4 = ConvBnSiLU(ch(512), ch(512), 3, 2)
        self.out5 = C3(ch(1024), ch(1024), n(3), shortcut=False)

        self.detect = Detect((ch(256), ch(512), ch(1024)), num_classes, num_anchors)

    def _backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stage1(self.down1(self.stem(x)))  # [N, c128, H/4, W/4]
        p3 = self.stage2(self.down2(x))  # [N, c256, H/8, W/8]
        p4 = self.stage3(self.down3(p3))  # [N, c512, H/16, W/16]
        p5 = self.sppf(self.stage4(self.down4(p4)))  # [N, c1024, H/32, W/32]
        return p3, p4, p5

    def _neck(self, p3: torch.Tensor, p4: torch.Tensor, p5: torch.Tensor) -> list[torch.Tensor]:
        l5 = self.lateral5(p5)  # [N, c512, H/32, W/32]
        t4 = self.top_down4(torch.cat((_upsample(l5), p4), dim=1))  # [N, c512, H/16, W/16]
        l4 = self.lateral4(t4)  # [N, c256, H/16, W/16]
        o3 = self.out3(torch.cat((_upsample(l4), p3), dim=1))  # [N, c256, H/8, W/8]
        o4 = self.out4(torch.cat((self.bottom_up3(o3), l4), dim=1))  # [N, c512, H/16, W/16]
        o5 = self.out5(torch.cat((self.bottom_up4(o4), l5), dim=1))  # [N, c1024, H/32, W/32]
        return [o3, o4, o5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
            # Otherwise the neck's concatenations fail with an opaque size mismatch.
            raise ValueError(
                f"YoloDetector input height and width must be multiples of {INPUT_MULTIPLE}; "
                f"got {h}x{w}. Resize or pad the image."
            )
        return self.detect(self._neck(*self._backbone(x)))  # [N, A_total, 5 + nc]

    def decode(self, out: torch.Tensor) -> list[Decoded]:
        out = out.detach().float()  # [N, A, 5 + nc]
        objectness = out[..., 4].sigmoid()  # [N, A]
        # Independent sigmoids per class, as YOLOv5 trains them (multi-label BCE).
        class_prob, class_index = out[..., 5:].sigmoid().max(dim=-1)  # [N, A]
        scores = objectness * class_prob  # [N, A]
        num_boxes = min(NUM_REPORTED_BOXES, scores.shape[1])
        top_scores, top = scores.topk(num_boxes, dim=1)  # [N, K]
        boxes = out[..., :4].gather(1, top.unsqueeze(-1).expand(-1, -1, 4))  # [N, K, 4]
        classes = class_index.gather(1, top)  # [N, K]
        # One device->host copy per tensor for the whole batch, not one per item.
        return [
            _decoded_item(item_boxes, item_scores, item_classes)
            for item_boxes, item_scores, item_classes in zip(
                boxes.tolist(), top_scores.tolist(), classes.tolist(), strict=True
            )
        ]


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")  # [N, C, 2H, 2W]


def _decoded_item(boxes: list[list[float]], scores: list[float], classes: list[int]) -> Decoded:
    max_score = scores[0] if scores else 0.0  # topk sorts descending
    rows = [[*box, score, cls] for box, score, cls in zip(boxes, scores, classes, strict=True)]
    flagged = max_score > FLAG_SCORE_THRESHOLD
    return Decoded(label_index=int(flagged), detail={"boxes": rows, "max_score": max_score})
