"""Page 2: which layers carry the conversion error, how much the correction removes, and how large the biases are."""

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import exports, figures, runs
from ftbc_core.measure import Measurements, Recorder

st.title("Which layers need most correction")
run, measured = runs.require_measured_run()
result = run.result

st.markdown(
    "For every spiking layer l, the recorder compares the SNN's running-mean output after t steps with the ANN "
    "activation of the same images (clipped to [0, θ], what an IF layer can express), channel by channel. "
    "Errors made early propagate: the first corrected layers change everything downstream, which is why FTBC "
    "calibrates layer by layer in forward order. *Relative* divides by the channel's mean ANN activation; "
    "*offset* counts the error in spikes (COS's view: mostly ±1 spike).")
st.latex(r"e^l[t] = \frac{1}{C}\sum_{c} \mathbb{E}\left|\frac{1}{t}\sum_{\tau\le t} s^l_c[\tau] - a^l_c\right|, "
         r"\qquad \overline{|b^l|} = \frac{1}{TC}\sum_{t,c} |b^l_c[t]|")

kind = st.radio("Error measure", ["abs", "rel", "offset"], horizontal=True, key="layers_kind",
                format_func=lambda k: {"abs": "absolute", "rel": "relative", "offset": "offset spikes"}[k])
sort = st.toggle("Sort layers by the error before correction", value=True, key="layers_sort")
fig = figures.layer_error_figure(result, kind, sort)
exports.chart(fig, "layer-error", "layer_error_chart")

names = list(result.measurements[measured[0]].layer_names)
table = pd.DataFrame({f"{m} error": result.measurements[m].layer_error(kind)[:, -1] for m in measured},
                     index=pd.Index(names, name="layer"))
bias_methods = [m for m in result.methods if result.reports[m].biases]
for m in bias_methods:
    table[f"{m} mean |b|"] = [float(np.abs(result.reports[m].biases[n]).mean()) for n in names]
st.dataframe(table.style.format("{:.4f}"), width="stretch")
exports.download_table(table, "layer-error", index=True)

if bias_methods:
    fig = figures.bias_magnitude_figure(result)
    exports.chart(fig, "bias-magnitude", "bias_magnitude_chart")

st.subheader("Layers × time steps")
left, right = st.columns(2)
quantity = left.radio("Show", ["error", "bias"] if bias_methods else ["error"], horizontal=True, key="heat_quantity",
                      format_func=lambda q: "conversion error" if q == "error" else "mean |b[t]|")
options = measured if quantity == "error" else bias_methods
method = right.selectbox("Method", options, format_func=figures.label, key="heat_method",
                         index=options.index("ftbc") if "ftbc" in options else 0)
fig = figures.layer_time_heatmap(result, method, quantity, kind)
exports.chart(fig, "layer-heatmap", "layer_heatmap")
exports.show_code(Recorder._on_step, Measurements.layer_error)
