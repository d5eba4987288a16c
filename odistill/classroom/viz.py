"""Plots and widget explorers used by the notebooks.

Nothing in the core (:mod:`odistill.core`) imports this module.
matplotlib and ipywidgets are imported inside the functions, so ``import odistill.classroom.viz`` is cheap and
works on a machine without a display; the plotting libraries are only needed when a plot is drawn.

Every function accepts torch tensors or NumPy arrays (CPU or GPU tensors; they are detached and
moved to the CPU) and returns the matplotlib ``Axes`` it drew on, so a notebook can keep styling it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["to_numpy", "plot_density_fits", "plot_categorical_fits", "set_log_ticks", "precomputed_slider"]

#: Colours used for the fits, in order (colour-blind friendly "tab" colours, teacher in grey).
FIT_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
TEACHER_COLOR = "0.55"


def to_numpy(values: Any):
    """A tensor, array or sequence as a 1-D-or-more NumPy float array (detached, on the CPU)."""
    import numpy as np

    if hasattr(values, "detach"):  # torch.Tensor
        values = values.detach().to("cpu").double().numpy()
    return np.asarray(values, dtype=float)


def _axes(ax, figsize=(6.0, 3.2)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_density_fits(
    x,
    target,
    fits: Mapping[str, Any] | None = None,
    *,
    ax=None,
    title: str | None = None,
    target_label: str = "teacher (target)",
    xlabel: str = "x",
    ylabel: str = "density",
    legend: bool = True,
    colors: Sequence[str] | None = None,
):
    """Plot a target density as a shaded area and one line per fitted density.

    Args:
        x: ``(N,)`` grid of points.
        target: ``(N,)`` target density on the grid (probabilities, not log-probabilities).
        fits: ``{label: (N,) density}``; drawn as lines in :data:`FIT_COLORS` order.
        ax: matplotlib Axes to draw on (a new figure if None).
        title, target_label, xlabel, ylabel: text for the plot.
        legend: draw a legend.
        colors: one matplotlib colour per fit (defaults to :data:`FIT_COLORS`).

    Returns:
        The Axes.

    Example:
        >>> import torch
        >>> x = torch.linspace(-3, 3, 61)
        >>> ax = plot_density_fits(x, torch.exp(-x**2 / 2) / 2.5066, {"fit": torch.exp(-x**2) / 1.7725})
    """
    ax = _axes(ax)
    x_np, t_np = to_numpy(x), to_numpy(target)
    ax.fill_between(x_np, t_np, color=TEACHER_COLOR, alpha=0.35, lw=0, label=target_label)
    ax.plot(x_np, t_np, color=TEACHER_COLOR, lw=1.0)
    colors = list(colors) if colors is not None else list(FIT_COLORS)
    for i, (label, density) in enumerate((fits or {}).items()):
        ax.plot(x_np, to_numpy(density), color=colors[i % len(colors)], lw=2.0, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0.0)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(frameon=False, fontsize="small")
    return ax


def plot_categorical_fits(
    target,
    fits: Mapping[str, Any] | None = None,
    *,
    labels: Sequence[str] | None = None,
    ax=None,
    title: str | None = None,
    target_label: str = "teacher",
    xlabel: str = "token",
    ylabel: str = "probability",
    legend: bool = True,
    colors: Sequence[str] | None = None,
):
    """Grouped bar chart: a target categorical distribution next to one or more fitted ones.

    Args:
        target: ``(V,)`` probabilities of the target (teacher).
        fits: ``{label: (V,) probabilities}``, one bar group member each.
        labels: ``V`` tick labels (token strings); defaults to the indices.
        ax: matplotlib Axes to draw on (a new figure if None).
        title, target_label, xlabel, ylabel: text for the plot.
        legend: draw a legend.
        colors: one matplotlib colour per fit (defaults to :data:`FIT_COLORS`).

    Returns:
        The Axes.

    Example:
        >>> ax = plot_categorical_fits([0.5, 0.5, 0.0], {"student": [0.2, 0.6, 0.2]}, labels=["a", "b", "c"])
    """
    import numpy as np

    ax = _axes(ax)
    t_np = to_numpy(target)
    fits = dict(fits or {})
    vocab = np.arange(len(t_np))
    width = 0.8 / (1 + len(fits))
    offsets = (np.arange(1 + len(fits)) - len(fits) / 2) * width
    ax.bar(vocab + offsets[0], t_np, width, color=TEACHER_COLOR, label=target_label)
    colors = list(colors) if colors is not None else list(FIT_COLORS)
    for i, (label, probs) in enumerate(fits.items()):
        ax.bar(vocab + offsets[i + 1], to_numpy(probs), width, color=colors[i % len(colors)], label=label)
    ax.set_xticks(vocab)
    ax.set_xticklabels(list(labels) if labels is not None else [str(v) for v in vocab])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(frameon=False, fontsize="small")
    return ax


def set_log_ticks(ax, ticks: Sequence[float], axis: str = "x"):
    """Put a log-scaled axis on plain-number ticks (``0.5, 1, 2``) instead of ``5×10⁻¹``-style labels.

    Args:
        ax: matplotlib Axes.
        ticks: tick positions, shown as plain numbers (``"{:g}"``).
        axis: ``"x"`` or ``"y"``.

    Returns:
        The Axes.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(FixedLocator(list(ticks)))
    target.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    target.set_minor_locator(NullLocator())
    return ax


def precomputed_slider(
    draw: Callable[[Any], None],
    values: Sequence[float],
    *,
    description: str = "β",
    value: float | None = None,
    fmt: str = "{:.2f}",
    alt: str = "the figure at",
    dpi: int = 72,
):
    """A slider over precomputed settings that needs no kernel: it works in a live notebook, in a saved
    one and on the rendered documentation site, offline.

    Expensive work (training, fitting) is done beforehand for each value in ``values``; here
    ``draw(value)`` is called once per value, each figure is stored as a PNG, and the slider only shows
    one of them (a few lines of inline JavaScript switch the visible image). Without JavaScript the
    figure of the initial value stays visible: never an empty box.

    Args:
        draw: called with one of ``values`` (positionally); it should draw one figure (``plt.show()`` is
            a no-op while the frames are drawn).
        values: the settings that were precomputed, in slider order.
        description: slider label.
        value: initial setting (defaults to the first value).
        fmt: how a value is shown on the slider.
        alt: the start of each frame's alternative text ("<alt> <description> = <value>").
        dpi: resolution of the stored frames.

    Returns:
        An ``IPython.display.HTML`` object (display it, or leave it last in a cell).
    """
    import base64
    import html
    import io
    import json
    import uuid

    import matplotlib.pyplot as plt
    from IPython.display import HTML

    values = list(values)
    if not values:
        raise ValueError("precomputed_slider needs at least one value")
    if value is not None and value not in values:
        raise ValueError(f"value {value!r} is not one of the precomputed values {values}")
    start = 0 if value is None else values.index(value)
    frames, show = [], plt.show
    plt.show = lambda *args, **kwargs: None  # draw() ends with plt.show(): keep the figure for saving
    try:
        for v in values:
            plt.close("all")
            draw(v)
            buffer = io.BytesIO()
            plt.gcf().savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
            frames.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
            plt.close("all")
    finally:
        plt.show = show
    uid = f"odistill-slider-{uuid.uuid4().hex[:8]}"
    labels = [fmt.format(v) for v in values]
    images = "".join(
        f'<img src="data:image/png;base64,{frame}" alt="{html.escape(f"{alt} {description} = {label}")}" '
        f'style="max-width:100%;{"" if k == start else "display:none"}">'
        for k, (frame, label) in enumerate(zip(frames, labels, strict=True))
    )
    names = json.dumps(labels)  # escaped once, with the whole handler, into the attribute
    handler = (
        f"var box=document.getElementById('{uid}');var k=+this.value;"
        "box.querySelectorAll('img').forEach(function(im,i){im.style.display=i===k?'':'none';});"
        f"box.querySelector('output').textContent={names}[k];"
    )
    return HTML(
        f'<div id="{uid}" class="odistill-slider">'
        f'<label style="font-family:sans-serif">{html.escape(description)} = '
        f"<output>{html.escape(labels[start])}</output> "
        f'<input type="range" min="0" max="{len(values) - 1}" step="1" value="{start}" '
        f'style="width:420px;vertical-align:middle" oninput="{html.escape(handler)}"></label><br>'
        f"{images}</div>"
    )
