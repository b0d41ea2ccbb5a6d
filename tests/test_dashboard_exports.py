"""Slides: every chart of every page downloads as HTML, PNG and SVG; PNG and SVG are rendered offline by kaleido
driving the machine's own Chromium (Debian's chromium), and the presenter switch enlarges what is shown."""

from __future__ import annotations

import sys
from pathlib import Path

import plotly.graph_objects as go
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dashboard import exports  # noqa: E402
from test_dashboard import TINY, open_app  # noqa: E402

PAGES = ["views/accuracy.py", "views/layers.py", "views/biases.py", "views/membrane.py", "views/one_image.py",
         "views/walkthrough.py", "views/compare.py", "views/neuron_lab.py"]
needs_kaleido = pytest.mark.skipif(not exports.static_export_available(),
                                   reason="needs kaleido (requirements.txt) and Debian's chromium (make browser-deps)")


@needs_kaleido
def test_png_and_svg_render_offline_with_the_system_chromium():
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[2, 1, 3], name="a line"))
    fig.update_layout(title="t", xaxis_title="time step t")
    png = exports.figure_image(fig, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (2 * exports.SLIDE_SIZE[0], 2 * exports.SLIDE_SIZE[1])  # a 16:9 slide at 2x
    svg = exports.figure_image(exports.presenter_style(fig), "svg").decode()
    assert svg.startswith("<svg") and "time step t" in svg and f"font-size: {exports.PRESENTER_FONT}px" in svg
    with pytest.raises(ValueError):
        exports.figure_image(fig, "jpeg")


@needs_kaleido
def test_every_chart_of_every_page_has_its_downloads():
    at = open_app(**TINY)
    at.button(key="run_button").click().run()
    assert not at.exception
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, page
        charts = len(at.get("plotly_chart"))
        labels = [b.proto.label for b in at.get("download_button")]
        assert charts >= 1, page
        for kind in ("Figure (HTML)", "PNG", "SVG"):
            assert labels.count(kind) == charts, (page, kind, labels)


def test_presenter_mode_enlarges_the_charts_shown():
    at = open_app(**TINY)
    at.switch_page("views/neuron_lab.py").run()
    small = at.get("plotly_chart")[0].proto.spec
    at.toggle(key="presenter").set_value(True).run()
    big = at.get("plotly_chart")[0].proto.spec
    assert f'"size":{exports.PRESENTER_FONT}' in big.replace(" ", "") and big != small
    assert any("font-size: 21px" in m.value for m in at.sidebar.markdown)
