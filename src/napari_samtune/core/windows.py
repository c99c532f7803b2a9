"""Windows of an image's tokens, cut and put back without padding the image first.

SAM's ViT and TinyViT pad a (B, H, W, C) map to whole windows, cut it into windows and, after
attention, put it back and crop, one copy each (plus the padding's). Here the windows are
filled from the map in at most four strided copies (full windows, the last row, the last
column, the corner) and the padding gets the value a padding token has, which lets callers
compute per-token projections on the map's own tokens only. Heads come before tokens in the
windows, so per-head products read q, k and v as strided views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Part:
    """Windows of a map that share how many of their tokens are the map's own: the full
    windows, the partial last row of windows, the partial last column, or the corner."""

    windows: tuple[slice, slice]  # which windows, in the (nH, nW) grid of windows
    pixels: tuple[slice, slice]  # which rows and columns of the map they cover
    grid: tuple[int, int]  # (windows high, windows wide)
    tokens: tuple[int, int]  # the map's own tokens in each window: (rows, columns)


def parts(height: int, width: int, window: int) -> list[Part]:
    """The up to four :class:`Part` s of a (height, width) map in ``window`` windows."""
    spans = []
    for size in (height, width):
        full = size // window
        span = [(slice(0, full), slice(0, full * window), full, window)] if full else []
        if size % window:
            span.append((slice(full, full + 1), slice(full * window, size), 1, size % window))
        spans.append(span)
    return [
        Part((rows[0], cols[0]), (rows[1], cols[1]), (rows[2], cols[2]), (rows[3], cols[3]))
        for rows in spans[0]
        for cols in spans[1]
    ]


def _tokens_of(image: torch.Tensor, part: Part) -> torch.Tensor:
    """(B, windows high, windows wide, rows, columns, *F) view of a :class:`Part` 's own tokens
    in (B, H, W, *F) ``image``."""
    batch, _, _, *features = image.shape
    (high, wide), (rows, cols) = part.grid, part.tokens
    region = image[(slice(None), *part.pixels)]
    return region.view(batch, high, rows, wide, cols, *features).transpose(2, 3)


def part_queries(x: torch.Tensor, part: Part) -> torch.Tensor:
    """The queries of a :class:`Part` 's own tokens, no padding: (B, H, W, n_heads, E) map
    ``x`` (any strides) -> contiguous (B * windows, n_heads, rows * columns, E)."""
    tokens = _tokens_of(x, part)  # (B, high, wide, rows, cols, heads, E)
    batch, high, wide, rows, cols, n_heads, per_head = tokens.shape
    ordered = tokens.permute(0, 1, 2, 5, 3, 4, 6).contiguous()
    return ordered.view(batch * high * wide, n_heads, rows * cols, per_head)


def part_windows(x: torch.Tensor, part: Part, window: int, fill: torch.Tensor) -> torch.Tensor:
    """A :class:`Part` 's whole windows (keys or values): (B, H, W, n_heads, E) map ``x`` (any
    strides) -> contiguous (B * windows, n_heads, window**2, E), padded with ``fill``
    (n_heads, E)."""
    batch, _, _, n_heads, per_head = x.shape
    out = x.new_empty(batch, *part.grid, n_heads, window, window, per_head)
    _write_windows(out.permute(0, 1, 2, 4, 5, 3, 6), x, part, fill)
    return out.view(-1, n_heads, window * window, per_head)


def _write_windows(windows: torch.Tensor, x: torch.Tensor, part: Part, fill: torch.Tensor) -> None:
    """Write a :class:`Part` 's windows, (B, high, wide, window, window, n_heads, E) view
    ``windows``: the map's own tokens from (B, H, W, n_heads, E) ``x``, the padding ``fill``
    (n_heads, E)."""
    window, (rows, cols) = windows.shape[3], part.tokens
    if rows < window:
        windows[:, :, :, rows:] = fill
    if cols < window:
        windows[:, :, :, :rows, cols:] = fill
    windows[:, :, :, :rows, :cols] = _tokens_of(x, part)


def put_part(out: torch.Tensor, part: Part, values: torch.Tensor) -> None:
    """Write a :class:`Part` 's attention output (B * windows, n_heads, rows * columns, E),
    as :func:`part_queries` ordered it, into (B, H, W, n_heads, E) ``out``."""
    batch, _, _, n_heads, per_head = out.shape
    (high, wide), (rows, cols) = part.grid, part.tokens
    values = values.view(batch, high, wide, n_heads, rows, cols, per_head)
    _tokens_of(out, part).copy_(values.permute(0, 1, 2, 4, 5, 3, 6))


def to_windows(x: torch.Tensor, window: int, fill: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, H, W, n_heads * E) map -> (B * nH * nW, n_heads, window**2, E) windows.

    Windows run row-major over the map and tokens row-major in a window (TinyViT's order);
    the map is padded right and bottom to whole windows with ``fill`` (n_heads * E,), the
    value a zero token would have had. Heads come before tokens, so per-head products take
    q, k and v as strided views (no copy).
    """
    batch, height, width, _ = x.shape
    x, fill = x.view(batch, height, width, n_heads, -1), fill.view(n_heads, -1)
    n_high, n_wide = -(-height // window), -(-width // window)
    out = x.new_empty(batch, n_high, n_wide, n_heads, window, window, x.shape[-1])
    tokens_last = out.permute(0, 1, 2, 4, 5, 3, 6)  # (B, nH, nW, window, window, heads, E)
    for part in parts(height, width, window):
        _write_windows(tokens_last[(slice(None), *part.windows)], x, part, fill)
    return out.view(-1, n_heads, window * window, x.shape[-1])


def from_windows(windows: torch.Tensor, height: int, width: int, window: int) -> torch.Tensor:
    """Inverse of :func:`to_windows` without the padding: (B * nH * nW, n_heads, window**2, E)
    -> (B, H, W, n_heads * E)."""
    n_windows, n_heads, _, per_head = windows.shape
    n_high, n_wide = -(-height // window), -(-width // window)
    batch = n_windows // (n_high * n_wide)
    windows = windows.view(batch, n_high, n_wide, n_heads, window, window, per_head)
    tokens_last = windows.permute(0, 1, 2, 4, 5, 3, 6)
    out = windows.new_empty(batch, height, width, n_heads, per_head)
    for part in parts(height, width, window):
        own = (slice(None), *part.windows, *map(slice, part.tokens))
        _tokens_of(out, part).copy_(tokens_last[own])
    return out.view(batch, height, width, n_heads * per_head)


def _fill_grad(grad: torch.Tensor, height: int, width: int, window: int) -> torch.Tensor:
    """Sum of window gradients (B * nH * nW, n_heads, window**2, E) over the padding tokens:
    (n_heads * E,), the gradient of :func:`to_windows`'s ``fill``."""
    n_windows, n_heads, _, per_head = grad.shape
    n_high, n_wide = -(-height // window), -(-width // window)
    grid = grad.view(-1, n_high, n_wide, n_heads, window, window, per_head)
    rows, cols = height % window, width % window
    total = grad.new_zeros(n_heads, per_head)
    if rows:  # the last row of windows below the map, every column of them
        total += grid[:, -1, :, :, rows:].sum(dim=(0, 1, 3, 4))
    if cols:  # the last column of windows right of the map, the rows not counted above
        total += grid[:, :-1, -1, :, :, cols:].sum(dim=(0, 1, 3, 4))
        total += grid[:, -1, -1, :, : rows or window, cols:].sum(dim=(0, 2, 3))
    return total.view(-1)


class _ToWindows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, window, fill, n_heads):
        ctx.shape = (x.shape[1], x.shape[2], window)
        return to_windows(x, window, fill, n_heads)

    @staticmethod
    def backward(ctx, grad):
        height, width, window = ctx.shape
        grad_x = from_windows(grad, height, width, window) if ctx.needs_input_grad[0] else None
        grad_fill = _fill_grad(grad, height, width, window) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_fill, None


class _FromWindows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, windows, height, width, window):
        ctx.shape = (window, windows.shape[1])
        return from_windows(windows, height, width, window)

    @staticmethod
    def backward(ctx, grad):
        window, n_heads = ctx.shape
        zero = grad.new_zeros(grad.shape[-1])
        return to_windows(grad.contiguous(), window, zero, n_heads), None, None, None


def to_windows_grad(x: torch.Tensor, window: int, fill: torch.Tensor, n_heads: int):
    """:func:`to_windows` with gradients for ``x`` and ``fill`` (one copy each way; the
    padding's gradient summed into ``fill``'s)."""
    return _ToWindows.apply(x, window, fill, n_heads)


def from_windows_grad(windows: torch.Tensor, height: int, width: int, window: int):
    """:func:`from_windows` with a gradient (the padding tokens get none)."""
    return _FromWindows.apply(windows, height, width, window)
