"""Pictures of a placement: a layered drawing (spines/switches, leaves, nodes, devices).

Devices sit in a small grid under their scale-up domain (a node; a torus or a wafer is drawn as
one grid), filled by the colour of their group (``color_by``: ``stage`` = pipeline stage, ``dp`` =
DP group, ``pp`` = pipeline), TP groups outlined, unavailable devices grey, unused ones white.
:func:`draw_png` uses matplotlib; :func:`draw_html` writes one self-contained page (inline SVG,
``<title>`` tooltips, a few lines of inline script that highlight a group on hover; no network).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.placement import GROUP_TYPES, Job, Placement, groups
from search.topology import Topology

UPPER = ("switch", "spine", "leaf", "node")  # drawn top to bottom, devices below
LAYERED_MAX_DOMAINS = 32  # more scale-up domains than this: the PNG is a grid of node blocks
NODES_PER_ROW = 16
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
)


@dataclass(frozen=True)
class Layout:
    """Positions (x, y) of every drawn vertex, the links between them, and per-device attributes."""

    pos: dict[str, tuple[float, float]]
    links: list[tuple[str, str]]
    rank: dict[int, int]  # device index → rank
    group: dict[str, dict[int, int]]  # group type → rank → group index
    width: float
    height: float


def _device_xy(topo: Topology) -> dict[str, tuple[float, float]]:
    """Each domain a near-square grid of its devices; domains side by side (y grows downwards)."""
    pos, x0 = {}, 0.0
    for d in range(len(topo.domains)):
        members = np.flatnonzero(topo.domain_of == d)
        cols = math.ceil(math.sqrt(len(members))) if len(members) > 16 else min(4, len(members))
        for i, dev in enumerate(members):
            pos[topo.devices[dev]] = (x0 + i % cols, 4.0 + i // cols)
        x0 += cols + 1
    return pos


def layout(topo: Topology, placement: Placement | tuple[int, ...], job: Job) -> Layout:
    """Devices in domain grids; every other vertex one row per kind, above the mean x of its
    neighbours one layer down (spines and switches spread evenly)."""
    devices = placement.devices if isinstance(placement, Placement) else placement
    pos = _device_xy(topo)
    width = max(x for x, _ in pos.values()) + 1 if pos else 1.0
    g = topo.graph
    for row, kind in reversed(list(enumerate(UPPER))):
        vs = [v for v, k in g.nodes(data="kind") if k == kind]
        for i, v in enumerate(vs):
            below = [pos[u][0] for u in g[v] if u in pos and pos[u][1] > row]
            x = float(np.mean(below)) if below and kind in ("leaf", "node") else (i + 0.5) * width / len(vs)
            pos[v] = (x, float(row))
    links = [(u, v) for u, v, t in g.edges(data="tier") if t != "mesh" and u in pos and v in pos]
    links += [(u, v) for u, v, t in g.edges(data="tier") if t == "mesh"]
    member = {t: {r: i for i, grp in enumerate(gs) for r in grp} for t, gs in groups(job).items()}
    stage_stride = int(np.prod([job.degree(t) for t in job.order[: job.order.index("pp")]]))
    member["stage"] = {r: (r // stage_stride) % job.pp for r in range(job.n_ranks)}
    height = max(y for _, y in pos.values()) + 1
    return Layout(pos, links, {int(d): r for r, d in enumerate(devices)}, member, width, height)


def _colour(lay: Layout, color_by: str, rank: int | None) -> str:
    if rank is None:
        return "#ffffff"
    return PALETTE[lay.group.get(color_by, {}).get(rank, 0) % len(PALETTE)]


def draw_png(
    topo: Topology,
    placement: Placement | tuple[int, ...],
    job: Job,
    path: str | Path,
    color_by: str = "stage",
) -> Path:
    """A PNG of the placement (matplotlib, Agg); returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    lay = layout(topo, placement, job)
    if len(topo.domains) > LAYERED_MAX_DOMAINS:
        return _draw_node_grid(topo, lay, job, Path(path), color_by)
    fig, ax = plt.subplots(figsize=(min(60.0, max(6.0, lay.width * 0.12)), max(3.0, lay.height * 0.6)))
    ax.add_collection(
        LineCollection(
            [[lay.pos[u], lay.pos[v]] for u, v in lay.links], colors="#cccccc", linewidths=0.3, zorder=0
        )
    )
    for kind, marker in zip(UPPER, "^sDo", strict=True):
        xy = np.array([lay.pos[v] for v, k in topo.graph.nodes(data="kind") if k == kind]).reshape(-1, 2)
        if len(xy):
            ax.scatter(xy[:, 0], xy[:, 1], marker=marker, s=30, c="#555555", label=kind, zorder=2)
    _draw_devices(ax, topo, lay, color_by)
    _outline_tp(ax, topo, lay, job)
    ax.set_title(
        f"{topo.name}: {job.n_ranks} ranks (tp={job.tp} pp={job.pp} dp={job.dp}), colour = {color_by}"
    )
    ax.invert_yaxis()
    ax.set_axis_off()
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _hex_rgb(colour: str) -> tuple[float, float, float]:
    return tuple(int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def _draw_node_grid(topo: Topology, lay: Layout, job: Job, path: Path, color_by: str) -> Path:
    """Many nodes: one small block per scale-up domain (its devices as cells, coloured by group),
    ``NODES_PER_ROW`` blocks per row in domain order, rows labelled by their first and last domain;
    a legend per colour. Readable at thousands of devices, where the layered drawing is a strip."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    domain_of = topo.domain_of
    sizes = np.bincount(domain_of)
    cols = math.ceil(math.sqrt(2 * sizes.max()))  # a block twice as wide as high
    rows = math.ceil(sizes.max() / cols)
    n_rows = math.ceil(len(topo.domains) / NODES_PER_ROW)
    image = np.ones((n_rows * (rows + 1), NODES_PER_ROW * (cols + 1), 3))  # white gaps between blocks
    slot = np.zeros(len(topo.domains), dtype=int)
    available = topo.available
    for i in range(len(topo.devices)):
        d = int(domain_of[i])
        r, c = divmod(int(slot[d]), cols)
        slot[d] += 1
        y, x = (d // NODES_PER_ROW) * (rows + 1) + r, (d % NODES_PER_ROW) * (cols + 1) + c
        colour = _colour(lay, color_by, lay.rank.get(i)) if available[i] else "#bbbbbb"
        image[y, x] = _hex_rgb("#f2f2f2" if colour == "#ffffff" else colour)
    fig, ax = plt.subplots(figsize=(12, max(3.0, 1.2 + 0.32 * n_rows)))
    ax.imshow(image, interpolation="nearest", aspect="equal")
    ax.set_yticks([(k + 0.5) * (rows + 1) - 1 for k in range(n_rows)])
    first_last = [
        (k * NODES_PER_ROW, min((k + 1) * NODES_PER_ROW, len(topo.domains)) - 1) for k in range(n_rows)
    ]
    ax.set_yticklabels([f"{topo.domains[a]}…{topo.domains[b]}" for a, b in first_last], fontsize=6)
    ax.set_xticks([])
    n_groups = max(lay.group.get(color_by, {0: 0}).values()) + 1
    handles = [
        Patch(color=PALETTE[k % len(PALETTE)], label=f"{color_by} {k}") for k in range(min(n_groups, 16))
    ]
    if n_groups > 16:
        handles.append(Patch(color="white", label=f"(colours repeat: {n_groups} groups)"))
    handles += [
        Patch(facecolor="#f2f2f2", edgecolor="k", label="unused"),
        Patch(color="#bbbbbb", label="unavailable"),
    ]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        title=f"colour = {color_by}",
    )
    ax.set_title(
        f"{topo.name}: {job.n_ranks} ranks (tp={job.tp} pp={job.pp} dp={job.dp}) on {len(topo.devices):,} "
        f"devices; one block per node ({len(topo.domains):,}), {NODES_PER_ROW} per row",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _draw_devices(ax, topo: Topology, lay: Layout, color_by: str) -> None:
    """Device squares: group colour, white when unused, grey with a cross when unavailable."""
    xy = np.array([lay.pos[d] for d in topo.devices])
    colours = [
        _colour(lay, color_by, lay.rank.get(i)) if topo.available[i] else "#bbbbbb"
        for i in range(len(topo.devices))
    ]
    ax.scatter(
        xy[:, 0], xy[:, 1], marker="s", s=18, c=colours, edgecolors="#888888", linewidths=0.3, zorder=3
    )
    off = ~topo.available
    if off.any():
        ax.scatter(xy[off, 0], xy[off, 1], marker="x", s=10, c="#666666", linewidths=0.5, zorder=4)


def _outline_tp(ax, topo: Topology, lay: Layout, job: Job) -> None:
    """A black box around each TP group's devices (wide boxes = TP groups that leave a node)."""
    from matplotlib.patches import Rectangle

    dev_of = {r: d for d, r in lay.rank.items()}
    for grp in groups(job).get("tp", []):
        xy = np.array([lay.pos[topo.devices[dev_of[r]]] for r in grp])
        lo, hi = xy.min(axis=0) - 0.45, xy.max(axis=0) + 0.45
        ax.add_patch(Rectangle(tuple(lo), *(hi - lo), fill=False, edgecolor="black", linewidth=0.6, zorder=5))


# --------------------------------------------------------------------------------------------
# HTML


SCRIPT = """
const sel = document.getElementById('by');
function paint(){ const by = sel.value;
  document.querySelectorAll('rect.dev').forEach(r => {
    r.style.fill = r.dataset['c_' + by] || r.dataset.base; }); }
function hl(el, on){ const by = sel.value, g = el.dataset['g_' + by];
  document.querySelectorAll('rect.dev').forEach(r => {
    r.style.opacity = (!on || g === undefined || r.dataset['g_' + by] === g) ? 1 : 0.15; }); }
document.querySelectorAll('rect.dev').forEach(r => {
  r.addEventListener('mouseenter', () => hl(r, true));
  r.addEventListener('mouseleave', () => hl(r, false)); });
sel.addEventListener('change', paint); paint();
"""


def _device_rect(topo: Topology, lay: Layout, i: int, scale: float) -> str:
    """One device as an SVG rect with its groups as data attributes and a tooltip."""
    dev, rank = topo.devices[i], lay.rank.get(i)
    x, y = lay.pos[dev]
    attrs, tip = [], [dev]
    if rank is not None:
        tip.append(f"rank {rank}")
        for t, member in lay.group.items():
            if rank in member:
                attrs.append(f'data-g_{t}="{member[rank]}" data-c_{t}="{_colour(lay, t, rank)}"')
                tip.append(f"{t} group {member[rank]}")
    base = "#ffffff" if topo.available[i] else "#bbbbbb"
    tip.append("available" if topo.available[i] else "unavailable")
    return (
        f'<rect class="dev" x="{x * scale:.1f}" y="{y * scale:.1f}" width="{scale * 0.8:.1f}" '
        f'height="{scale * 0.8:.1f}" data-base="{base}" style="fill:{base}" {" ".join(attrs)}>'
        f"<title>{html.escape(', '.join(tip))}</title></rect>"
    )


def _svg(topo: Topology, lay: Layout, scale: float) -> str:
    """Links, upper vertices (with tooltips) and device rects as one SVG element."""
    c = scale * 0.4
    lines = [
        f'<line x1="{lay.pos[u][0] * scale + c:.1f}" y1="{lay.pos[u][1] * scale + c:.1f}" '
        f'x2="{lay.pos[v][0] * scale + c:.1f}" y2="{lay.pos[v][1] * scale + c:.1f}" />'
        for u, v in lay.links
    ]
    upper = [
        f'<circle cx="{lay.pos[v][0] * scale + c:.1f}" cy="{lay.pos[v][1] * scale + c:.1f}" r="{c:.1f}">'
        f"<title>{html.escape(f'{k} {v}')}</title></circle>"
        for v, k in topo.graph.nodes(data="kind")
        if k in UPPER
    ]
    rects = [_device_rect(topo, lay, i, scale) for i in range(len(topo.devices))]
    w, h = (lay.width + 1) * scale, (lay.height + 1) * scale
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}">'
        f'<g stroke="#cccccc" stroke-width="0.5">{"".join(lines)}</g>'
        f'<g fill="#555555">{"".join(upper)}</g>'
        f'<g stroke="#888888" stroke-width="0.5">{"".join(rects)}</g></svg>'
    )


def draw_html(
    topo: Topology, placement: Placement | tuple[int, ...], job: Job, path: str | Path, scale: float = 12.0
) -> Path:
    """A self-contained interactive HTML page of the placement; returns ``path``."""
    lay = layout(topo, placement, job)
    options = "".join(f'<option value="{t}">{t}</option>' for t in ("stage", *GROUP_TYPES) if t in lay.group)
    title = html.escape(f"{topo.name}: {job.n_ranks} ranks, tp={job.tp} pp={job.pp} dp={job.dp}")
    legend = " ".join(
        f"<span style='background:{PALETTE[k % len(PALETTE)]}'>&nbsp;&nbsp;&nbsp;</span>&nbsp;stage {k}"
        for k in range(min(job.pp, len(PALETTE)))
    )
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body "
        f"style='font-family:sans-serif'><h3>{title}</h3><p>colour by <select id='by'>{options}</select> "
        "— hover a device to highlight its group; grey: unavailable, white: unused; the browser's zoom "
        f"enlarges the drawing.</p><p>{legend}</p>"
        f"{_svg(topo, lay, scale)}<script>{SCRIPT}</script></body></html>"
    )
    Path(path).write_text(page)
    return Path(path)
