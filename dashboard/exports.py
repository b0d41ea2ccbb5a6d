"""Charts on a page and out of it: the presenter style, every chart's downloads (HTML, PNG, SVG), tables as CSV,
and the "show the code" expander.

PNG and SVG come from kaleido driving the machine's own Chromium (Debian's ``chromium``; ``BROWSER_PATH``
names another): offline, nothing downloaded. One kaleido browser is started on the first export and kept (about
0.3 s per figure after a 3-4 s start). Without kaleido or a browser, the chart's own camera button still saves a
PNG from the browser.
"""

from __future__ import annotations

import importlib.util
import inspect as pysource
import threading
import warnings

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

SLIDE_SIZE = (1280, 720)  # px of an exported figure (16:9), rendered at twice that resolution for PNG
PRESENTER_FONT = 20
_kaleido_lock = threading.Lock()
_kaleido_started = False


def presenter_style(fig: go.Figure) -> go.Figure:
    """A copy of ``fig`` for a projector: larger fonts, thicker lines, larger markers."""
    big = go.Figure(fig)
    big.update_layout(font_size=PRESENTER_FONT, title_font_size=PRESENTER_FONT + 6,
                      legend_font_size=PRESENTER_FONT - 2, hoverlabel_font_size=PRESENTER_FONT - 2)
    if big.layout.height:
        big.update_layout(height=int(big.layout.height * 1.25))
    for trace in big.data:
        if trace.type in ("scatter", "scattergl"):
            if trace.line is not None:
                trace.line.width = 2.5 * (trace.line.width or 2)
            size = trace.marker.size if trace.marker is not None else None
            if isinstance(size, (int, float)):
                trace.marker.size = size * 1.6
            elif size is None and trace.mode and "markers" in trace.mode:
                trace.marker.size = 10
    for annotation in big.layout.annotations or ():
        annotation.font.size = PRESENTER_FONT
    return big


def figure_html(fig: go.Figure) -> str:
    """A self-contained HTML page of the figure (plotly.js embedded: works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def static_export_available() -> bool:
    """Whether kaleido is installed and finds a Chromium-based browser on this machine (checked, not started)."""
    if importlib.util.find_spec("kaleido") is None:
        return False
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return False
    return Chromium.find_browser(skip_local=False) is not None


def figure_image(fig: go.Figure, fmt: str, width: int = SLIDE_SIZE[0], height: int | None = None) -> bytes:
    """The figure as ``png`` (2x resolution) or ``svg`` bytes, through one kaleido browser kept for the server."""
    global _kaleido_started
    if fmt not in ("png", "svg"):
        raise ValueError(f"format must be png or svg, got {fmt!r}")
    import kaleido

    with _kaleido_lock:
        if not _kaleido_started:
            kaleido.start_sync_server(silence_warnings=True)
            _kaleido_started = True
    height = height or int(fig.layout.height or SLIDE_SIZE[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plotly notes that a running server ignores its per-call options
        return fig.to_image(format=fmt, width=width, height=height, scale=2 if fmt == "png" else 1)


@st.cache_resource(show_spinner=False)
def _can_export() -> bool:
    return static_export_available()


def presenter() -> bool:
    return bool(st.session_state.get("presenter"))


def chart(fig: go.Figure, name: str, key: str, downloads: bool = True, **config) -> None:
    """Show a chart (in the presenter style when it is on) with its downloads below it."""
    if presenter():
        fig = presenter_style(fig)
    camera = {"toImageButtonOptions": {"format": "png", "filename": name, "scale": 2}}
    st.plotly_chart(fig, width="stretch", key=key, config={**camera, **config})
    if downloads:
        download_figure(fig, name)


def download_figure(fig: go.Figure, name: str) -> None:
    """A "Download figure" menu: HTML (plotly.js embedded), and PNG and SVG (slide-sized) when kaleido can render."""
    with st.popover("Download figure", icon=":material/download:"):
        st.download_button("Figure (HTML)", lambda: figure_html(fig), f"{name}.html", "text/html",
                           on_click="ignore", key=f"html-{name}", icon=":material/html:")
        if _can_export():
            st.download_button("PNG", lambda: figure_image(fig, "png"), f"{name}.png", "image/png",
                               on_click="ignore", key=f"png-{name}", icon=":material/image:")
            st.download_button("SVG", lambda: figure_image(fig, "svg"), f"{name}.svg", "image/svg+xml",
                               on_click="ignore", key=f"svg-{name}", icon=":material/draw:")
        else:
            st.caption("PNG and SVG need kaleido and Chromium (`make browser-deps`); the chart's camera button "
                       "saves a PNG.")


def download_table(df: pd.DataFrame, name: str, index: bool = False, label: str = "Table (CSV)") -> None:
    st.download_button(label, df.to_csv(index=index).encode(), f"{name}.csv", "text/csv",
                       on_click="ignore", key=f"csv-{name}", icon=":material/download:")


def show_code(*objects) -> None:
    """A "show the code" expander with the source of the functions behind a chart."""
    with st.expander("Show the code"):
        for obj in objects:
            st.code(pysource.getsource(obj), language="python")
