"""Page 1: top-1 accuracy after every time step, per method, against the ANN."""

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import exports, figures, runs, selection_view, sidebar
from ftbc_core.experiment import simulate_dataset
from ftbc_core.neuron_lab import qcfs_value, simulate_if_neurons
from ftbc_core.snn import SpikingNetwork, running_mean

st.title("Accuracy vs time step")
run = runs.current_run()
if run is None:
    st.info(runs.RUN_HINT)

st.markdown(
    "The converted network sees the same image at every step; its output after *t* steps is the running mean of "
    "the last layer, and the prediction is its arg-max. One simulation to T gives the accuracy at every t ≤ T "
    "(everything is causal). Few steps mean large clipping, quantization and unevenness errors; FTBC adds a "
    "per-step, per-channel bias so that every layer's expected output matches the ANN after every step. COS pays "
    "ρ extra pre-simulation steps per input, so compare it on the latency axis too.")
st.latex(r"\hat y(t) = \arg\max_k \frac{1}{t}\sum_{\tau=1}^{t} o_k[\tau], \qquad "
         r"\mathrm{acc}(t) = \frac{100}{N}\sum_{n=1}^{N} \mathbb{1}\left[\hat y_n(t) = y_n\right]\ (\%)")

if run is None:  # before the first run: the same effect in one neuron (this also loads the chart code early)
    steps = int(st.session_state.get("timesteps", sidebar.initial_values()["timesteps"]))
    z = 0.37
    st.caption(f"One IF neuron with a constant input z = {z} θ: its running mean output after t steps approaches the "
               "ANN activation, with an error that shrinks like 1/t. A network's accuracy over t follows the errors "
               "of all its neurons; the neuron lab shows more.")
    trace = simulate_if_neurons(np.full((steps, 1), z), 1.0)
    exports.chart(figures.neuron_figure(trace, z, qcfs_value(z, 1.0, 4)), "one-neuron-preview", "accuracy_preview")
    rate = trace.rate[:, 0]
    table = pd.DataFrame({"rate r[t]": rate, "|r[t] − z|": np.abs(rate - z)},
                         index=pd.Index(range(1, steps + 1), name="t"))
    st.dataframe(table.T.style.format("{:.3f}"), width="stretch")
    exports.show_code(simulate_dataset, SpikingNetwork.forward, running_mean)
    st.stop()
result = run.result

has_latency = any(result.reports[m].latency for m in result.methods)
x_axis = "T"
if has_latency:
    x_axis = st.radio("x axis", ["T", "latency"], horizontal=True, key="acc_axis",
                      format_func=lambda v: "time steps T" if v == "T" else "latency ρ + T")
exports.chart(figures.accuracy_figure(result, x_axis), "accuracy", "accuracy_chart")

cols = st.columns(len(result.methods) + 1)
cols[0].metric("ANN", f"{result.ann_accuracy:.2f}%")
for col, m in zip(cols[1:], result.methods):
    final = float(result.accuracy[m][-1])
    col.metric(f"{figures.label(m)}, T = {result.timesteps}", f"{final:.2f}%",
               delta=f"{final - float(result.accuracy['none'][-1]):+.2f} vs none" if "none" in result.methods
               and m != "none" else None)

table = result.accuracy_table()
table.insert(0, "ANN", result.ann_accuracy)
st.subheader("Accuracy (%) after every step")
st.dataframe(table.style.format("{:.2f}"), width="stretch")
exports.download_table(result.to_frame(), "accuracy", index=False, label="Table (CSV: method, T, accuracy, latency)")

st.caption(f"{result.n_images} images of the {result.data_description}. {run.timings()}")
selection_view.show_selection(run)
exports.show_code(simulate_dataset, SpikingNetwork.forward, running_mean)
