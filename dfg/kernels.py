"""Exact float32 CPU fast paths for the small matrix products and convolutions of the GAN half.

Why: the critic's products are small (a few hundred rows), and which library runs them fastest depends on
the CPU. On a 2-core AMD EPYC with AVX-512, torch's float32 matmul (MKL) ran them at ~210 GFLOP/s on 2
threads (~110 on one), while oneDNN's 1x1-conv kernels reached 390-480 (~150-240 on one) when the rows
are laid out as one image row. On a 2-core Intel Xeon (Cascade Lake) it was the other way round for the
critic's 192x1024x512 product: MKL 122-131 GFLOP/s, oneDNN 96-104. MKL takes its AVX-512 code paths on
Intel CPUs only, so `mm_nt`/`mm_nn` use MKL on Intel and oneDNN elsewhere (`onednn_products`). And
oneDNN's direct kernels are slow for a conv whose output map is tiny (the critic's last conv: 4x4 in,
2x2 out, ~170 GFLOP/s forward and ~100 for the weight gradient on the EPYC). `bench/dense_conv_speed.py`
prints these figures.

- `mm_nt` / `mm_nn`: a @ bᵀ and a @ b through the faster library for this CPU. Same float32 arithmetic;
  only the summation order differs from torch.matmul (results agree to float32 rounding).
- `DenseConv`: a conv on a small input as one dense (out_pixels·out_ch × in_pixels·in_ch) matrix built
  from its taps (zeros where a tap falls on padding), so its forward, input gradient and weight gradient
  are single products. Used only when the dense matrix costs at most `DENSE_MAX_OVERHEAD` times the conv's
  useful (non-padding) multiply-adds.
- `transposed_conv_product`: a transposed conv with few taps per output pixel (kernel <= 1.5x stride,
  as G's k3 s2 and k2 s2 layers) as one product of the input's pixels with the weight, then one strided
  add per tap. oneDNN's backward-data kernel ran these 1.3-1.7x slower (bench/transposed_conv_speed.py).
- `tune_allocator`: keeps freed memory in the (training) process, so the megabyte-sized buffers of each
  update are not page-faulted back in every time.

Off the CPU, or for other dtypes (the float64 gradient tests), every helper is the plain torch op."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import torch
from torch import nn
from torch.nn import functional as F

_conv_backward = torch.ops.aten.convolution_backward
DENSE_MAX_OVERHEAD = 1.5   # dense multiply-adds / useful multiply-adds, above which the conv stays a conv
DENSE_MAX_ENTRIES = 1 << 22  # 16 MB of float32: larger dense matrices stay convs
PRODUCT_MAX_TAPS = 2.25    # taps summed per output pixel (kh·kw / sh·sw) up to which a transposed conv is a product


@functools.lru_cache(maxsize=1)
def onednn_products() -> bool:
    """Whether `mm_nt`/`mm_nn` run as oneDNN 1x1 convs (True) or as torch's matmul (MKL, False): MKL on
    Intel CPUs, oneDNN on the others (see the module docstring). DFG_PRODUCTS=onednn|mkl overrides it
    (for benchmarks). Decided once per process, from the CPU, so a machine always makes the same choice."""
    forced = os.environ.get("DFG_PRODUCTS", "").strip().lower()
    if forced in ("onednn", "mkl"):
        return forced == "onednn"
    try:
        with open("/proc/cpuinfo") as f:
            vendor = next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        vendor = ""
    return vendor != "GenuineIntel"


def _onednn(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def _images(m: int) -> int:
    """How many images the M rows are split into. torch sends a 1x1 conv on fewer than 16 images to its
    own im2col + MKL kernel when it runs on one thread, so single-threaded we use 16 (same memory)."""
    return 16 if torch.get_num_threads() == 1 and m % 16 == 0 else 1


def _as_row_image(a: torch.Tensor, images: int) -> torch.Tensor:
    """(M, K) row-major -> the same memory as an (images, K, 1, M/images) channels-last image (no copy)."""
    m, k = a.shape
    return a.contiguous().view(images, 1, m // images, k).permute(0, 3, 1, 2)


def mm_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ bᵀ (+ bias): a (M, K), b (N, K) -> (M, N), contiguous."""
    if not (_onednn(a) and onednn_products()):
        return F.linear(a, b, bias)
    return onednn_mm_nt(a, b, bias)


def mm_nn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b: a (M, N), b (N, K) -> (M, K), contiguous (a 1x1 conv's input gradient)."""
    if not (_onednn(a) and onednn_products()):
        return a @ b
    return onednn_mm_nn(a, b)


def onednn_mm_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """mm_nt as a oneDNN 1x1 conv, whatever the CPU (CPU float32)."""
    m, n = a.shape[0], b.shape[0]
    out = F.conv2d(_as_row_image(a, _images(m)), b.contiguous().view(n, -1, 1, 1), bias)
    return out.permute(0, 2, 3, 1).reshape(m, n)


def onednn_mm_nn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mm_nn as a oneDNN 1x1 conv's input gradient, whatever the CPU (CPU float32)."""
    m, n, k = a.shape[0], a.shape[1], b.shape[1]
    images = _images(m)
    shape_only = torch.empty((images, k, 1, m // images), dtype=a.dtype, memory_format=torch.channels_last)
    g = _conv_backward(_as_row_image(a, images), shape_only, b.contiguous().view(n, k, 1, 1), None, (1, 1), (0, 0),
                       (1, 1), False, (0, 0), 1, (True, False, False))[0]
    return g.permute(0, 2, 3, 1).reshape(m, k)


def _out_size(kernel, stride, padding, dilation, h: int, w: int) -> tuple[int, int]:
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip((h, w), kernel, stride, padding, dilation))


@functools.lru_cache(maxsize=64)
def _tap_table(kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int], h: int, w: int) -> tuple[torch.Tensor, int, int, int]:
    """tap[p·Q + q]: which kernel tap joins output pixel p to input pixel q (kh·kw where none does).
    Returns (tap, out_h, out_w, useful taps)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh, ow = _out_size(kernel, stride, padding, dilation, h, w)
    tap = torch.full((oh * ow, h * w), kh * kw, dtype=torch.long)
    useful = 0
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                y = i * sh - ph + a * dh
                for b in range(kw):
                    x = j * sw - pw + b * dw
                    if 0 <= y < h and 0 <= x < w:
                        tap[i * ow + j, y * w + x] = a * kw + b
                        useful += 1
    return tap.view(-1), oh, ow, useful


class DenseConv:
    """A zero-padding Conv2d on an (h, w) input as the dense matrix M (O·P, Q·C), rows ordered (o, p) and
    columns (q, c): p, q index output and input pixels, so an input's rows are its channels-last pixels
    and the output is NCHW. Build one per weight value (`DenseConv(layer, h, w)` after each update)."""

    def __init__(self, layer: nn.Conv2d, h: int, w: int):
        self.layer = layer
        self.tap, self.oh, self.ow, _ = _tap_table(layer.kernel_size, layer.stride, layer.padding,
                                                   layer.dilation, h, w)
        self.h, self.w = h, w
        weight = layer.weight
        o, c, kh, kw = weight.shape
        padded = weight.new_zeros(o, kh * kw + 1, c)  # one zero tap for the pairs no tap joins
        padded[:, :kh * kw] = weight.detach().permute(0, 2, 3, 1).reshape(o, kh * kw, c)
        self.matrix = padded.index_select(1, self.tap).view(o * self.oh * self.ow, h * w * c)

    @staticmethod
    def worthwhile(layer: nn.Module, x: torch.Tensor) -> bool:
        """True for a plain zero-padding Conv2d on a CPU float32 input whose dense matrix is small and
        costs at most DENSE_MAX_OVERHEAD times the conv's useful multiply-adds."""
        if not (isinstance(layer, nn.Conv2d) and _onednn(x) and layer.groups == 1
                and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)):
            return False
        h, w = x.shape[-2:]
        geometry = (layer.kernel_size, layer.stride, layer.padding, layer.dilation, h, w)
        oh, ow = _out_size(*geometry)
        if oh * ow * h * w * layer.in_channels * layer.out_channels > DENSE_MAX_ENTRIES:
            return False  # decided before building a large pixel-pair table
        tap, _, _, useful = _tap_table(*geometry)
        return tap.numel() <= DENSE_MAX_OVERHEAD * useful

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, h·w·C); a view when x is channels-last."""
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)

    def forward(self, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """The conv of x (N, C, h, w) -> (N, O, oh, ow)."""
        b = self.layer.bias.repeat_interleave(self.oh * self.ow) if bias and self.layer.bias is not None else None
        return mm_nt(self.rows(x), self.matrix, b).view(x.shape[0], -1, self.oh, self.ow)

    def input_grad(self, grad_out: torch.Tensor) -> torch.Tensor:
        """∂/∂x of ⟨grad_out, conv(x)⟩: (N, O, oh, ow) -> (N, C, h, w) channels-last."""
        n = grad_out.shape[0]
        g = mm_nn(grad_out.reshape(n, -1), self.matrix)
        return g.view(n, self.h, self.w, -1).permute(0, 3, 1, 2)

    def weight_grad(self, grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """∂/∂W of ⟨grad_out, conv(x)⟩ (no bias term), shaped like the weight (channels-last)."""
        o, c, kh, kw = self.layer.weight.shape
        n = x.shape[0]
        per_pair = mm_nn(grad_out.reshape(n, -1).t().contiguous(), self.rows(x))  # (O·P, Q·C)
        taps = per_pair.new_zeros(o, kh * kw + 1, c).index_add_(1, self.tap, per_pair.view(o, -1, c))
        return taps[:, :kh * kw].reshape(o, kh, kw, c).permute(0, 3, 1, 2)


def _phases(k: int, s: int, pad: int) -> tuple[list[tuple[int, int, int]], int, int]:
    """One dimension of a stride-s conv's input gradient split by output phase p = t mod s: gx[s·m + p] =
    Σ_u go[m + q − u]·w[s·u + r] for u < U. Returns ([(r, q, U) per phase], c, K): tap u of phase p sits
    at position q − u + c of a common K-tap correlation over go left-padded by c."""
    ph = [((p + pad) % s, (p + pad) // s, -(-(k - (p + pad) % s) // s)) for p in range(s)]
    c = max(u - 1 - q for r, q, u in ph if u > 0)
    return ph, c, max(q for r, q, u in ph if u > 0) + c + 1


@functools.lru_cache(maxsize=16)
def _phase_index(kernel: tuple[int, int], stride: int, padding: tuple[int, int]) -> torch.Tensor:
    """Flat tap index (kh·kw = a zero tap) for each (phase y, phase x, position y, position x)."""
    (kh, kw), s = kernel, stride
    (py, cy, ky), (px, cx, kx) = _phases(kh, s, padding[0]), _phases(kw, s, padding[1])
    idx = torch.full((s, s, ky, kx), kh * kw, dtype=torch.long)
    for i, (ry, qy, uy_n) in enumerate(py):
        for j, (rx, qx, ux_n) in enumerate(px):
            for uy in range(uy_n):
                for ux in range(ux_n):
                    idx[i, j, qy - uy + cy, qx - ux + cx] = (s * uy + ry) * kw + s * ux + rx
    return idx.view(-1)


def phase_worthwhile(layer: nn.Module, grad_out: torch.Tensor) -> bool:
    """Whether `phase_input_grad` should give this conv's input gradient: a stride-2 (or more) zero-padding
    conv with few input channels (D's first conv on LeNet's 6-channel features), in CPU float32. There,
    oneDNN's backward-data writes 6 channels per pixel and ran at ~65 GFLOP/s; one conv with s²·6 outputs
    per pixel took 0.29 against 0.53 ms (64 samples, 2 threads)."""
    return (isinstance(layer, nn.Conv2d) and _onednn(grad_out) and layer.in_channels <= 8 and layer.groups == 1
            and layer.stride[0] == layer.stride[1] > 1 and layer.dilation == (1, 1)
            and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
            and all(p < k for p, k in zip(layer.padding, layer.kernel_size)))


def phase_input_grad(grad_out: torch.Tensor, layer: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """The input gradient (N, C, *size) of a stride-s `layer` for grad_out (N, O, h, w), as one stride-1 conv
    of grad_out whose s²·C output channels are the s² phases of the result, then a pixel shuffle. The same
    products and sums as the transposed conv (the phases' zero taps add exact zeros)."""
    o, c, kh, kw = layer.weight.shape
    s, (n, _, h, w) = layer.stride[0], grad_out.shape
    (_, cy, ky), (_, cx, kx) = _phases(kh, s, layer.padding[0]), _phases(kw, s, layer.padding[1])
    my, mx = -(-size[0] // s), -(-size[1] // s)
    flat = torch.cat([layer.weight.detach().reshape(o, c, kh * kw), layer.weight.new_zeros(o, c, 1)], 2)
    weight = flat[:, :, _phase_index((kh, kw), s, tuple(layer.padding))].view(o, c, s, s, ky, kx)
    weight = weight.permute(2, 3, 1, 0, 4, 5).reshape(s * s * c, o, ky, kx)
    ry, rx = max(0, my - h - cy + ky - 1), max(0, mx - w - cx + kx - 1)
    if (ry, rx) == (cy, cx):
        res = F.conv2d(grad_out, weight, padding=(cy, cx))
    else:
        res = F.conv2d(F.pad(grad_out, (cx, rx, cy, ry)), weight)
    res = res[:, :, :my, :mx].reshape(n, s, s, c, my, mx).permute(0, 3, 4, 1, 5, 2).reshape(n, c, my * s, mx * s)
    return res[:, :, :size[0], :size[1]]


def product_worthwhile(layer: nn.ConvTranspose2d) -> bool:
    """Whether `transposed_conv_product` should run this transposed conv: no groups, dilation or output
    padding, zero padding, and at most PRODUCT_MAX_TAPS taps summed into each output pixel on average. G's
    k3 s2 (2.25 taps) and k2 s2 (1 tap) layers ran faster as products, its k4 s2 layers (4 taps) slower."""
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    return (layer.groups == 1 and layer.dilation == (1, 1) and not any(layer.output_padding)
            and layer.padding_mode == "zeros" and kh * kw <= PRODUCT_MAX_TAPS * sh * sw)


def transposed_conv_product(x: torch.Tensor, layer: nn.ConvTranspose2d) -> torch.Tensor:
    """layer(x) for a `product_worthwhile` layer: each input pixel's channels (a row) times the weight
    (C -> kh·kw·O) gives its contribution through every tap; tap (a, b)'s contributions are then added at
    stride (sh, sw) into the output, skipping those that fall on its padding.
    x (N, C, h, w), any layout -> (N, O, H, W), contiguous channels-last."""
    n, c, h, w = x.shape
    o = layer.out_channels
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view when x is channels-last
    taps = mm_nt(rows, layer.weight.permute(2, 3, 1, 0).reshape(kh * kw * o, c)).view(n, h, w, kh, kw, o)
    out_h, out_w = (h - 1) * sh + kh - 2 * ph, (w - 1) * sw + kw - 2 * pw
    if layer.bias is None:
        out = x.new_zeros(n, out_h, out_w, o)
    else:
        # a copy, not .contiguous(): for n = out_h = out_w = 1 the expanded view already is contiguous, and the
        # sums below would then add into the layer's bias
        out = x.new_empty(n, out_h, out_w, o).copy_(layer.bias.detach().view(1, 1, 1, o))
    for a in range(kh):
        i0, i1, y0 = _tap_span(a, sh, ph, h, out_h)
        for b in range(kw):
            j0, j1, x0 = _tap_span(b, sw, pw, w, out_w)
            if i0 <= i1 and j0 <= j1:
                rows_out, cols_out = slice(y0, y0 + sh * (i1 - i0) + 1, sh), slice(x0, x0 + sw * (j1 - j0) + 1, sw)
                out[:, rows_out, cols_out] += taps[:, i0:i1 + 1, j0:j1 + 1, a, b]
    return out.permute(0, 3, 1, 2)


def _tap_span(tap: int, stride: int, pad: int, n_in: int, n_out: int) -> tuple[int, int, int]:
    """Input indices i0..i1 whose output stride·i + tap − pad lies in [0, n_out), and i0's output index."""
    i0 = max(0, -((tap - pad) // stride))  # ceil((pad − tap) / stride)
    i1 = min(n_in - 1, (n_out - 1 + pad - tap) // stride)
    return i0, i1, stride * i0 + tap - pad


@functools.lru_cache(maxsize=1)
def tune_allocator() -> bool:
    """Keep freed memory in this process (glibc only; a no-op elsewhere). glibc hands multi-megabyte
    blocks back to the system on free() and page-faults them in again, 4 KB at a time, on the next
    malloc; training frees and reallocates the same few-megabyte buffers every update (DenseConv's
    matrices among them: without this they can cost more than the product they hold). Raises the
    size at which malloc maps fresh pages to 32 MB and the free heap kept to 128 MB. Numbers are
    unchanged; a CPU training process keeps its peak heap. Returns whether glibc took the settings."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 128 << 20))
