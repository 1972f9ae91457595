"""FSC plot: the curve(s) against spatial frequency, the 0.5 and 0.143 thresholds, and the
resolutions where each curve first drops below them, written in Å (thesis §2.4.6)."""
from __future__ import annotations

import html
from typing import Mapping

import numpy as np
import plotly.graph_objects as go

THRESHOLDS = ((0.5, "05"), (0.143, "0143"))  # (value, attribute suffix)
COLORS = ["#1a73e8", "#e8710a", "#188038", "#d01884", "#a142f4"]


def _resolution_text(res, crossed: bool, nyquist) -> str:
    if res is None or not np.isfinite(res) or not crossed:
        # the curve stays above the threshold up to the last shell: only a bound is known
        return f"≤ {nyquist:.2f} Å (not crossed before Nyquist)"
    return f"{res:.2f} Å"


def fsc_figure(results, *, title: str = "Fourier shell correlation") -> go.FigureWidget:
    """``results``: one FSC result or ``{name: result}``; a result is anything with ``frequencies``
    (1/Å), ``curve``, ``resolution_05``, ``resolution_0143`` (Å) and ``nyquist`` (Å) attributes,
    such as ``cryovae_nb.analysis.FSCResult`` (whose ``crossed_05`` / ``crossed_0143`` flags, when
    False, turn the resolution into a bound)."""
    items = list(results.items()) if isinstance(results, Mapping) else [("FSC", results)]
    fig = go.FigureWidget()
    notes = []
    for i, (name, r) in enumerate(items):
        color = COLORS[i % len(COLORS)]
        f = np.asarray(r.frequencies, dtype=float)
        fig.add_scatter(x=f, y=np.asarray(r.curve, dtype=float), name=name, mode="lines",
                        line=dict(color=color), customdata=np.divide(1, f, out=np.full_like(f, np.inf),
                                                                     where=f > 0),
                        hovertemplate="%{x:.4f} 1/Å (%{customdata:.2f} Å): %{y:.3f}<extra>"
                        + html.escape(str(name)) + "</extra>")
        for value, suffix in THRESHOLDS:
            res = getattr(r, f"resolution_{suffix}")
            crossed = bool(getattr(r, f"crossed_{suffix}", True))
            notes.append(f"<span style='color:{color}'>{html.escape(str(name))}</span> FSC={value}: "
                         f"{_resolution_text(res, crossed, r.nyquist)}")
            if crossed and res is not None and np.isfinite(res) and res > 0:
                fig.add_vline(x=1 / res, line=dict(color=color, dash="dot", width=1))
    for value, _ in THRESHOLDS:
        fig.add_hline(y=value, line=dict(color="#5f6368", dash="dash", width=1),
                      annotation_text=f"{value}", annotation_position="top right")
    fig.add_annotation(text="<br>".join(notes), xref="paper", yref="paper", x=0.02, y=0.02,
                       xanchor="left", yanchor="bottom", align="left", showarrow=False,
                       bgcolor="rgba(255,255,255,0.8)")
    fig.update_layout(title=title, xaxis_title="spatial frequency (1/Å)", yaxis_title="FSC",
                      yaxis_range=[-0.1, 1.05], height=380, margin=dict(l=60, r=20, t=50, b=50))
    return fig
