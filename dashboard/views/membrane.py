"""Page 4: distribution of the membrane potential (charge before firing) of one layer at one step."""

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import exports, figures, runs
from ftbc_core.measure import Recorder
from ftbc_core.neuron import if_step

st.title("Membrane potentials")
run, measured = runs.require_measured_run()
result = run.result

st.markdown(
    "Each IF neuron adds its input current to its potential and fires when the charge u[t] reaches the threshold "
    "θ, then subtracts θ (reset by subtraction). The histogram shows u[t]/θ over all neurons and evaluation images "
    "of one layer: the mass at or above 1 fires at step t. Without correction the distribution is skewed at small "
    "t (the first steps fire too little or too much); FTBC's bias shifts it so that the fraction that fires "
    "matches the ANN's activation channel by channel.")
st.latex(r"u[t] = v[t-1] + z[t] - b[t], \quad s[t] = \theta\, H(u[t] - \theta), \quad v[t] = u[t] - s[t], "
         r"\quad v[0] = \theta/2")

names = list(result.measurements[measured[0]].layer_names)
left, right = st.columns([2, 3])
layer = left.selectbox("Layer", names, key="membrane_layer")
chosen = right.multiselect("Methods", measured, default=[m for m in ("none", "ftbc") if m in measured] or measured,
                           format_func=figures.label, key="membrane_methods")
animate = st.toggle("Animate over t (plotly frames)", value=False, key="membrane_animate")
if animate:
    fig = figures.membrane_animation(result, layer, chosen)
    t = result.timesteps
else:
    t = st.slider("Time step t", 1, result.timesteps, 1, key="membrane_t") if result.timesteps > 1 else 1
    fig = figures.membrane_histogram(result, layer, t, chosen)
exports.chart(fig, f"membrane-{layer}", "membrane_chart")

rows = []
for m in chosen:
    meas = result.measurements[m]
    counts = meas.histograms[layer][t - 1]
    centers = (meas.hist_edges[:-1] + meas.hist_edges[1:]) / 2
    share = counts / max(counts.sum(), 1)
    rows.append({"method": m, "t": t, "firing (u ≥ θ)": float(share[centers >= 1].sum()),
                 "negative (u < 0)": float(share[centers < 0].sum()),
                 "spike rate": float(meas.spike_rate[layer][t - 1]),
                 "mean |error|": float(meas.abs_error[layer][t - 1].mean())})
if rows:
    table = pd.DataFrame(rows).set_index("method")
    st.dataframe(table.style.format("{:.4f}", subset=table.columns[1:]), width="stretch")
    exports.download_table(table, f"membrane-summary-{layer}-t{t}", index=True)
    edges = result.measurements[chosen[0]].hist_edges
    hist = pd.DataFrame({m: result.measurements[m].histograms[layer][t - 1] for m in chosen},
                        index=pd.Index(np.round((edges[:-1] + edges[1:]) / 2, 4), name="u/θ (bin centre)"))
    exports.download_table(hist, f"membrane-{layer}-t{t}", index=True, label="Histogram (CSV)")
exports.show_code(if_step, Recorder._on_step)
