"""FTBC Explorer dashboard: the entry point only declares the pages; each page is a short module in ``views/``.

(Not ``pages/``: a folder of that name beside the entry script switches Streamlit to its legacy multipage mode,
which runs page files without this script; AppTest then loses the sidebar on every rerun.)

Run with ``streamlit run dashboard/app.py`` (or ``make app``).
"""

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts only dashboard/ on the path; pages import `dashboard.*`
    sys.path.insert(0, str(ROOT))

from dashboard import runs, sidebar  # noqa: E402

st.set_page_config(page_title="FTBC Explorer", page_icon=":material/bolt:", layout="wide")

PAGES = {
    "Results": [
        st.Page("views/accuracy.py", title="Accuracy vs time step", icon=":material/show_chart:", default=True),
        st.Page("views/layers.py", title="Layers needing correction", icon=":material/stacked_bar_chart:"),
        st.Page("views/biases.py", title="Bias trajectories", icon=":material/timeline:"),
        st.Page("views/membrane.py", title="Membrane potentials", icon=":material/bar_chart:"),
        st.Page("views/one_image.py", title="One image", icon=":material/image:"),
    ],
    "Lecture": [
        st.Page("views/walkthrough.py", title="Lecture walk-through", icon=":material/school:"),
        st.Page("views/compare.py", title="Compare runs", icon=":material/compare_arrows:"),
        st.Page("views/neuron_lab.py", title="Neuron lab", icon=":material/science:"),
    ],
}

page = st.navigation(PAGES)
sidebar.presenter_switch()
shown = st.sidebar.container()  # filled after the page: a page may start runs (presets)
sidebar.experiment_form()  # on every page, so the form keeps its values while pages change
try:
    page.run()
finally:
    sidebar.run_picker(shown)
    runs.prefetch(runs.current_run())  # the networks for the per-image pages, in the background
