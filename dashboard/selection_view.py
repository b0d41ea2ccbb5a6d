"""The held-out choice of each method's options (``ExperimentConfig.select``), shown under the accuracy chart:
which images were held out, every option set tried with its held-out accuracy, and the one chosen."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import caches, exports, figures
from dashboard.runs import Run
from ftbc_core.data import DataError
from ftbc_core.experiment import ExperimentResult


def _options_text(options: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in options.items())


def selection_frame(result: ExperimentResult) -> pd.DataFrame:
    """One row per option set tried: method, options, mean held-out accuracy (%), whether it was chosen (the
    options the method then ran with)."""
    rows = []
    for method, trials in result.selection.items():
        used = result.reports[method].options
        chosen = next((t for t in trials if all(used.get(k) == v for k, v in t.options.items())), None)
        rows += [{"method": method, "options": _options_text(t.options), "held-out accuracy (%)": t.score,
                  "chosen": t is chosen} for t in trials]
    return pd.DataFrame(rows, columns=["method", "options", "held-out accuracy (%)", "chosen"])


def show_selection(run: Run) -> None:
    """The selection's images, trials and choices (nothing for a run without ``select``)."""
    cfg, result = run.config, run.result
    if not cfg.select:
        return
    st.subheader("Options chosen on held-out training images")
    try:
        held, rest, description = caches.held_out_split(result.dataset, cfg.data_dir, cfg.val_images, cfg.seed)
        where = f"{held} held-out images of the {description}, calibrating on the other {rest}"
    except (DataError, OSError, ValueError) as err:  # the data went away since the run: say what was asked
        where = f"up to {cfg.val_images} held-out training images ({str(err).splitlines()[0]})"
    upto = min(cfg.select_max_t, run.stored.timesteps)
    st.caption(f"Each option set below was calibrated and scored by its mean accuracy over t ≤ {upto} on {where}; "
               "the best one was then used on the evaluation images above. Options changed in the form stay fixed.")
    if not result.selection:
        st.info("None of the chosen methods has options to choose (a selection grid).")
        return
    for method in result.selection:
        st.markdown(f"**{figures.label(method)}**: {_options_text(result.reports[method].options)}")
    table = selection_frame(result)
    st.dataframe(table.style.format({"held-out accuracy (%)": "{:.2f}"}), width="stretch", hide_index=True)
    exports.download_table(table, "selection", label="Options tried (CSV)")
