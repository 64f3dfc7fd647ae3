"""A picture of how an answer was found: the video's timeline, each chunk's relevance to the question, the chunks
reloaded dense, and thumbnails of the most relevant moments."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .engine.decode import Answer


def _clock(seconds: float) -> str:
    m, s = divmod(max(0.0, seconds), 60)
    return f"{int(m):02d}:{s:04.1f}" if m < 60 else f"{int(m // 60)}:{int(m % 60):02d}:{s:02.0f}"


# long: one figure drawn top to bottom (timeline, relevance bars, thumbnails, labels)
def render_explanation(path: str | Path, question: str, answer: Answer, group_times: list[float | None],
                       chunk_groups: int, thumbnails: list[np.ndarray] | None, frames: int, tokens: int,
                       top: int = 6) -> Path:
    """Write the explanation PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = answer.chunks
    times = [t if t is not None else float(i) for i, t in enumerate(group_times)]
    starts = [times[min(c * chunk_groups, len(times) - 1)] for c in range(n)]
    step = (times[-1] - times[0]) / max(1, len(times) - 1) * chunk_groups if len(times) > 1 else 1.0
    rel = answer.relevance or [None] * n
    scored = [r for r in rel if r is not None]
    peak = max(scored) if scored else 1.0
    dense = set(answer.dense_chunks)
    forced = {0, n - 1}

    ranked = sorted((c for c in range(n) if rel[c] is not None), key=lambda c: -rel[c])[:top]
    ranked = sorted(ranked or sorted(dense)[:top], key=lambda c: starts[c])
    thumbs = thumbnails or []

    fig = plt.figure(figsize=(12, 6.2), dpi=110)
    fig.patch.set_facecolor("white")
    fig.text(0.03, 0.955, f"Q: {question}", fontsize=13, weight="bold", va="top")
    fig.text(0.03, 0.905, f"A: {answer.text.strip() or '(empty)'}", fontsize=13, color="#1f5fa8", va="top")

    # thumbnails of the most relevant chunks, in temporal order
    width = 0.94 / max(1, len(ranked))
    for k, c in enumerate(ranked):
        ax = fig.add_axes([0.03 + k * width, 0.52, width * 0.92, 0.3])
        g = min(c * chunk_groups, len(thumbs) - 1)
        if thumbs:
            ax.imshow(thumbs[g], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("#e07b00" if c in dense else "#999999")
            spine.set_linewidth(3 if c in dense else 1)
        label = f"{_clock(starts[c])}"
        if rel[c] is not None:
            label += f"  relevance {rel[c] / peak:.0%}"
        ax.set_title(label, fontsize=9)

    # the timeline: one bar per chunk, dense ones highlighted
    ax = fig.add_axes([0.06, 0.1, 0.9, 0.3])
    heights = [(rel[c] / peak if rel[c] is not None else 1.0) for c in range(n)]
    colours = ["#e07b00" if c in dense and c not in forced else "#f2c28b" if c in forced else "#b8c4d6"
               for c in range(n)]
    ax.bar(starts, heights, width=step * 0.9 if n > 1 else 1.0, align="edge", color=colours, linewidth=0)
    for c in ranked:
        ax.annotate("", xy=(starts[c] + step * 0.45, heights[c]), xytext=(starts[c] + step * 0.45, 1.12),
                    arrowprops={"arrowstyle": "-", "color": "#777777", "lw": 0.6}, annotation_clip=False)
    ax.set_xlim(starts[0], starts[-1] + step)
    ax.set_ylim(0, 1.15)
    ax.set_yticks([0, 0.5, 1.0], ["0", "50%", "max"])
    ax.set_ylabel("relevance", fontsize=9)
    ticks = np.linspace(starts[0], starts[-1] + step, 7)
    ax.set_xticks(ticks, [_clock(t) for t in ticks], fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(handles=[Patch(color="#e07b00", label="reloaded dense (relevant)"),
                       Patch(color="#f2c28b", label="always dense (first, last)"),
                       Patch(color="#b8c4d6", label="kept sparse (pooled KVs)")],
              loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False, fontsize=9)
    mb = 2 ** 20
    fig.text(0.97, 0.905, f"{frames} frames · {tokens} tokens · {n} chunks, {len(dense)} dense\n"
             f"KV {answer.kv_bytes_used / mb:.1f} MB of {answer.kv_bytes_dense / mb:.1f} MB "
             f"({1 - answer.kv_ratio:.0%} saved)", fontsize=9, ha="right", va="top", color="#444444")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
