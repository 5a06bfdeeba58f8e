"""The 3D networks behind mhp-edge: ``LiverNet`` (liver), ``MHPNet`` (tumour) and ``PlainUNet``.

All are small 3D U-Nets built from one block: a 3 x 3 x 3 convolution without bias, a
normalisation with a learned scale and shift, and a leaky ReLU (slope 0.01).

``LiverNet`` uses instance normalisation. ``MHPNet`` and ``PlainUNet`` use batch normalisation.
In eval mode batch normalisation is a fixed per-channel scale and shift, which onnxruntime folds
into the convolution before it. The network is then the same function of the input whatever
the window around it, apart from zero padding near the window's edges. So inference can run on
windows larger than the training patches with a small overlap. On a 70 x 180 x 220 voxel liver
crop, (32, 96, 96) windows with a quarter overlap compute each voxel 2.9 times on average, and
(32, 64, 64) windows with half overlap 5.7 times. With instance normalisation every
window would have its own statistics. Windows would then need a large overlap to hide the seams.

Each network maps input patches of shape (N, C, Z, Y, X) to one logit channel (N, 1, Z, Y, X).
Z, Y and X must be divisible by the product of the downsampling strides along that axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Stride = tuple[int, int, int]


NORMS = {"instance": nn.InstanceNorm3d, "batch": nn.BatchNorm3d}


class ConvBlock(nn.Sequential):
    """3 x 3 x 3 convolution, normalisation and leaky ReLU.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    stride : tuple of 3 ints
        (z, y, x) stride of the convolution. (1, 1, 1) keeps the shape.
    norm : str
        ``"instance"`` or ``"batch"``, both with a learned scale and shift.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: Stride = (1, 1, 1), norm: str = "instance"
    ):
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            NORMS[norm](out_channels, affine=True),
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
    norm : str
        Normalisation of every block, as for ``ConvBlock``.
    """

    def __init__(self, widths: Sequence[int], strides: Sequence[Stride], norm: str = "instance"):
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
                    ConvBlock(widths[level - 1], widths[level], stride, norm),
                    ConvBlock(widths[level], widths[level], norm=norm),
                )
            )
            self.up.append(nn.ConvTranspose3d(widths[level], widths[level - 1], stride, stride=stride))
            self.merge.append(ConvBlock(2 * widths[level - 1], widths[level - 1], norm=norm))

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

    * CT stem and Hessian stem: one ``ConvBlock`` 1 -> 4 each at full resolution. Their outputs
      are concatenated (8 channels). Without the Hessian input (the ablation
      ``hessian=False``) the CT stem has all 8 channels.
    * A strided ``ConvBlock`` 8 -> 16 with stride (1, 2, 2). The model's voxels are
      2.5 x 1.25 x 1.25 mm, so this level is isotropic at 2.5 mm.
    * A ``UNetBody`` with widths 16 / 32 / 64 and strides 2 x 2 x 2 twice at 2.5 mm and
      coarser (coarsest cells 10 mm).
    * Back at full resolution: a transposed convolution 16 -> 8, concatenated with the stems,
      one ``ConvBlock`` 16 -> 8 and a 1 x 1 x 1 convolution to one logit.

    Most work happens at 2.5 mm, so a forward pass takes 12.0 k multiply-accumulates per voxel,
    against 44.7 k for ``PlainUNet`` whose first level runs at full resolution. The
    full-resolution stems and last block keep the edges of small lesions.

    Inputs are ``ct`` and, with ``hessian=True``, ``hessian``, each of shape (N, 1, Z, Y, X)
    float32, with Z divisible by 4 and Y, X divisible by 8. The output is the tumour logit,
    shape (N, 1, Z, Y, X).
    """

    stem_channels = 8
    widths = (16, 32, 64)
    entry_stride: Stride = (1, 2, 2)
    strides: tuple[Stride, ...] = ((2, 2, 2), (2, 2, 2))

    def __init__(self, hessian: bool = True):
        super().__init__()
        self.uses_hessian = hessian
        ct_channels = self.stem_channels // 2 if hessian else self.stem_channels
        self.ct_stem = ConvBlock(1, ct_channels, norm="batch")
        self.hessian_stem = ConvBlock(1, self.stem_channels - ct_channels, norm="batch") if hessian else None
        self.entry = ConvBlock(self.stem_channels, self.widths[0], self.entry_stride, norm="batch")
        self.body = UNetBody(self.widths, self.strides, norm="batch")
        self.exit_up = nn.ConvTranspose3d(
            self.widths[0], self.stem_channels, self.entry_stride, stride=self.entry_stride
        )
        self.exit = ConvBlock(2 * self.stem_channels, self.stem_channels, norm="batch")
        self.head = nn.Conv3d(self.stem_channels, 1, 1)

    def forward(self, ct: torch.Tensor, hessian: torch.Tensor | None = None) -> torch.Tensor:
        stems = self.ct_stem(ct)
        if self.hessian_stem is not None:
            stems = torch.cat([stems, self.hessian_stem(hessian)], dim=1)
        coarse = self.body(self.entry(stems))
        return self.head(self.exit(torch.cat([self.exit_up(coarse), stems], dim=1)))


class PlainUNet(nn.Module):
    """Small 3D U-Net on the CT alone, the baseline of the tumour ablation.

    A ``ConvBlock`` 1 -> 16 at full resolution, a ``UNetBody`` with widths 16 / 32 / 64 and
    strides (1, 2, 2) then (2, 2, 2), batch normalisation, and a 1 x 1 x 1 convolution to one
    logit. Input ``ct`` of shape (N, 1, Z, Y, X) float32 with Z divisible by 2 and Y, X by 4.
    """

    widths = (16, 32, 64)
    strides: tuple[Stride, ...] = ((1, 2, 2), (2, 2, 2))

    def __init__(self):
        super().__init__()
        self.stem = ConvBlock(1, self.widths[0], norm="batch")
        self.body = UNetBody(self.widths, self.strides, norm="batch")
        self.head = nn.Conv3d(self.widths[0], 1, 1)

    def forward(self, ct: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(ct)))


class LiverNet(nn.Module):
    """Liver network on the CT alone.

    Architecture: a strided ``ConvBlock`` 1 -> 16 (stride 2 x 2 x 2) takes the 4 x 3 x 3 mm
    input to 8 x 6 x 6 mm voxels, a ``UNetBody`` with widths 16 / 32 / 64 and strides
    2 x 2 x 2 twice works there (coarsest cells 32 x 24 x 24 mm), a 1 x 1 x 1 convolution gives
    the logit, and trilinear interpolation doubles it back to the input shape. The liver is
    large and smooth, so the coarse grid costs little accuracy, and training steps are about 7
    times faster than with full-resolution 3 x 3 x 3 layers.

    With ``fine_head`` the boundary is decided at the input's 4 x 3 x 3 mm instead: a
    transposed convolution takes the body's output to 4 channels there, a full-resolution
    ``ConvBlock`` 1 -> 4 reads the CT, and one ``ConvBlock`` 8 -> 8 on both gives the logit.

    The input ``ct`` has shape (N, 1, Z, Y, X) float32 with Z, Y and X divisible by 8. The
    output is the liver logit, shape (N, 1, Z, Y, X).
    """

    widths = (16, 32, 64)
    stem_stride: Stride = (2, 2, 2)
    strides: tuple[Stride, ...] = ((2, 2, 2), (2, 2, 2))
    fine_channels = 8

    def __init__(self, norm: str = "instance", fine_head: bool = False):
        super().__init__()
        self.stem = ConvBlock(1, self.widths[0], self.stem_stride, norm)
        self.body = UNetBody(self.widths, self.strides, norm)
        self.fine_head = fine_head
        if fine_head:
            half = self.fine_channels // 2
            self.fine_stem = ConvBlock(1, half, norm=norm)
            self.up = nn.ConvTranspose3d(
                self.widths[0], half, kernel_size=self.stem_stride, stride=self.stem_stride
            )
            self.fine = ConvBlock(self.fine_channels, self.fine_channels, norm=norm)
            self.head = nn.Conv3d(self.fine_channels, 1, 1)
        else:
            self.head = nn.Conv3d(self.widths[0], 1, 1)
            self.to_full = nn.Upsample(scale_factor=self.stem_stride, mode="trilinear", align_corners=False)

    def forward(self, ct: torch.Tensor) -> torch.Tensor:
        coarse = self.body(self.stem(ct))
        if not self.fine_head:
            return self.to_full(self.head(coarse))
        return self.head(self.fine(torch.cat([self.up(coarse), self.fine_stem(ct)], dim=1)))


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
