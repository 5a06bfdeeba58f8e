"""The two 3D networks behind mhp-edge: ``LiverNet`` (liver) and ``MHPNet`` (tumour).

Both are small 3D U-Nets built from one block: a 3 x 3 x 3 convolution without bias, instance
normalisation with a learned scale and shift, and a leaky ReLU (slope 0.01). Instance
normalisation is used instead of batch normalisation because training runs with 2 to 4 patches
per batch from a lesion-biased sampler. Batch statistics of such batches would be noisy, and
they would not match the sliding windows seen at inference. Instance normalisation exports to
the ONNX ``InstanceNormalization`` operator, which onnxruntime runs on CPU.

Each network maps input patches of shape (N, C, Z, Y, X) to one logit channel (N, 1, Z, Y, X).
Z, Y and X must be divisible by the product of the downsampling strides along that axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Stride = tuple[int, int, int]


class ConvBlock(nn.Sequential):
    """3 x 3 x 3 convolution, instance normalisation and leaky ReLU.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    stride : tuple of 3 ints
        (z, y, x) stride of the convolution. (1, 1, 1) keeps the shape.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: Stride = (1, 1, 1)):
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNetBody(nn.Module):
    """Encoder-decoder with skip connections that returns features at its input's resolution.

    Level 0 is the input with ``widths[0]`` channels. Level i (i >= 1) is reached by a
    strided ``ConvBlock`` (stride ``strides[i - 1]``) followed by a second ``ConvBlock``, both
    with ``widths[i]`` channels. The decoder goes back up one level at a time with a transposed
    convolution (kernel = stride), concatenates the skip features of that level and applies one
    ``ConvBlock``. The output has ``widths[0]`` channels and the input's shape.

    Parameters
    ----------
    widths : sequence of int
        Channels per level, input level first.
    strides : sequence of tuple of 3 ints
        (z, y, x) downsampling from level i to level i + 1, one fewer than ``widths``.
    """

    def __init__(self, widths: Sequence[int], strides: Sequence[Stride]):
        super().__init__()
        if len(strides) != len(widths) - 1:
            raise ValueError(
                f"UNetBody needs one stride per level transition: {len(widths)} widths take "
                f"{len(widths) - 1} strides, got {len(strides)}."
            )

        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for level in range(1, len(widths)):
            stride = tuple(strides[level - 1])
            self.down.append(
                nn.Sequential(
                    ConvBlock(widths[level - 1], widths[level], stride),
                    ConvBlock(widths[level], widths[level]),
                )
            )
            self.up.append(nn.ConvTranspose3d(widths[level], widths[level - 1], stride, stride=stride))
            self.merge.append(ConvBlock(2 * widths[level - 1], widths[level - 1]))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        skips = [features]
        for down in self.down:
            skips.append(down(skips[-1]))

        x = skips.pop()
        for level in reversed(range(len(self.up))):
            x = self.up[level](x)
            x = self.merge[level](torch.cat([x, skips[level]], dim=1))
        return x


class MHPNet(nn.Module):
    """Tumour network fed with a CT patch and its multi-scale Hessian-enhanced twin.

    Architecture (after Yang and Suzuki, MHP-Net, IEEE Access 2025, reduced for CPU):

    * CT stem and Hessian stem: one ``ConvBlock`` 1 -> 8 each on the normalised CT and on the
      scaled blob response. Their outputs are concatenated (16 channels).
    * A ``UNetBody`` with widths 16 / 32 / 64 and strides (1, 2, 2) then (2, 2, 2). The first
      stride is in-plane only because the model's voxels are 2.5 x 1.25 x 1.25 mm, so level 1
      is isotropic at 2.5 mm and level 2 has 5 mm cells.
    * A 1 x 1 x 1 convolution to one logit.

    Inputs are ``ct`` and ``hessian``, each of shape (N, 1, Z, Y, X) float32, with Z divisible
    by 2 and Y, X divisible by 4. The output is the tumour logit, shape (N, 1, Z, Y, X).
    """

    stem_channels = 8
    widths = (16, 32, 64)
    strides: tuple[Stride, ...] = ((1, 2, 2), (2, 2, 2))

    def __init__(self):
        super().__init__()
        self.ct_stem = ConvBlock(1, self.stem_channels)
        self.hessian_stem = ConvBlock(1, self.stem_channels)
        self.body = UNetBody(self.widths, self.strides)
        self.head = nn.Conv3d(self.widths[0], 1, 1)

    def forward(self, ct: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
        stems = torch.cat([self.ct_stem(ct), self.hessian_stem(hessian)], dim=1)
        return self.head(self.body(stems))


class LiverNet(nn.Module):
    """Liver network on the CT alone.

    Architecture: a strided ``ConvBlock`` 1 -> 16 (stride 2 x 2 x 2) takes the 4 x 3 x 3 mm
    input to 8 x 6 x 6 mm voxels, a ``UNetBody`` with widths 16 / 32 / 64 and strides
    2 x 2 x 2 twice works there (coarsest cells 32 x 24 x 24 mm), a 1 x 1 x 1 convolution gives
    the logit, and trilinear interpolation doubles it back to the input shape. The liver is
    large and smooth, so the coarse grid costs little accuracy, and training steps are about 7
    times faster than with full-resolution 3 x 3 x 3 layers.

    The input ``ct`` has shape (N, 1, Z, Y, X) float32 with Z, Y and X divisible by 8. The
    output is the liver logit, shape (N, 1, Z, Y, X).
    """

    widths = (16, 32, 64)
    stem_stride: Stride = (2, 2, 2)
    strides: tuple[Stride, ...] = ((2, 2, 2), (2, 2, 2))

    def __init__(self):
        super().__init__()
        self.stem = ConvBlock(1, self.widths[0], self.stem_stride)
        self.body = UNetBody(self.widths, self.strides)
        self.head = nn.Conv3d(self.widths[0], 1, 1)
        self.to_full = nn.Upsample(scale_factor=self.stem_stride, mode="trilinear", align_corners=False)

    def forward(self, ct: torch.Tensor) -> torch.Tensor:
        return self.to_full(self.head(self.body(self.stem(ct))))


def count_parameters(network: nn.Module) -> int:
    """Return the number of trainable parameters of a network."""
    return sum(parameter.numel() for parameter in network.parameters() if parameter.requires_grad)


def multiply_accumulates_per_voxel(network: nn.Module, *inputs: torch.Tensor) -> float:
    """Count the convolution multiply-accumulates of one forward pass, per input voxel.

    Parameters
    ----------
    network : torch.nn.Module
        Network to measure.
    *inputs : torch.Tensor
        Example inputs of shape (1, C, Z, Y, X).

    Returns
    -------
    float
        Multiply-accumulates of all ``Conv3d`` and ``ConvTranspose3d`` layers divided by
        Z * Y * X. Normalisation and activations are not counted.
    """
    total = 0

    def count(module: nn.Module, layer_inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel_volume = module.weight[0, 0].numel()
        if isinstance(module, nn.ConvTranspose3d):
            total += layer_inputs[0].numel() * module.out_channels * kernel_volume
        else:
            total += output.numel() * module.in_channels * kernel_volume // module.groups

    hooks = [
        module.register_forward_hook(count)
        for module in network.modules()
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d))
    ]
    try:
        with torch.no_grad():
            network(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return total / inputs[0][0, 0].numel()
