"""Page 3: the fitted FTBC biases b[t, c] of one layer, as a heatmap and as trajectories, and how the fit
converged (mean |Δb| per calibration batch, with the core's warning when it does not decay)."""

import json

import numpy as np
import pandas as pd
import streamlit as st
from safetensors.numpy import save as save_arrays

from dashboard import exports, figures, runs
from ftbc_core.calibration import METHODS
from ftbc_core.calibration.base import nonconvergence
from ftbc_core.calibration.ftbc import FtbcRule, fit_biases

st.title("Bias trajectories")
run = runs.require_run()
result = run.result
bias_methods = [m for m in result.methods if result.reports[m].biases]
if not bias_methods:
    st.info("None of the compared methods fits biases: add FTBC to the methods in the sidebar and run again.")
    st.stop()

st.markdown(
    "FTBC keeps one bias per layer, time step and channel and subtracts it from the charge. On calibration images "
    "(training split), layer by layer in forward order and step by step, it compares the channel's mean spike "
    "output E[s[t]] with the ANN's mean activation A and moves the bias by α times the difference, then redoes "
    "step t, so step t+1 starts from the corrected state. A positive b removes charge (the channel fired too "
    "much), a negative b adds charge (it fired too little).")
st.latex(r"u^l[t] = v^l[t-1] + z^l[t] - b^l[t], \qquad "
         r"b^l_c[t] \leftarrow b^l_c[t] + \alpha\left(\mathbb{E}[s^l_c[t]] - \mathbb{E}[a^l_c]\right)")

left, right = st.columns(2)
method = left.selectbox("Method", bias_methods, format_func=figures.label, key="bias_method")
report = result.reports[method]
layers = list(report.biases)
layer = right.selectbox("Layer", layers, key="bias_layer")
b = np.asarray(report.biases[layer])

fig = figures.bias_heatmap(report, layer)
exports.chart(fig, f"bias-{layer}", "bias_heatmap")

strongest = [int(c) for c in np.argsort(-np.abs(b).mean(0))[:3]]
channels = st.multiselect("Channels", list(range(b.shape[1])), default=strongest, key=f"bias_channels_{layer}",
                          help="Defaults to the three channels with the largest mean |b|.")
if channels:
    fig = figures.bias_lines(report, layer, channels)
    exports.chart(fig, f"bias-lines-{layer}", "bias_lines")

st.subheader("Did the fit converge?")
fitted = [m for m in result.methods if m in METHODS and METHODS[m].fits_biases and result.reports[m].bias_change]
curves = [m for m in fitted if len(result.reports[m].bias_change) > 1]
if curves:
    exports.chart(figures.convergence_figure(result, curves), "bias-convergence", "bias_convergence")
else:
    st.caption("One calibration batch per method: no convergence curve (give more calibration batches).")
for m in fitted:
    warning = nonconvergence(result.reports[m].bias_change)
    if warning:
        st.warning(f"{figures.label(m)}: {warning}")

opts = ", ".join(f"{k} = {v}" for k, v in report.options.items())
st.caption(f"{figures.label(method)}: {opts}; {report.n_images} calibration images, {report.seconds:.1f} s. "
           f"Mean |Δb| per calibration batch: " + ", ".join(f"{d:.4f}" for d in report.bias_change))

table = pd.DataFrame({f"channel {c}": b[:, c] for c in range(b.shape[1])},
                     index=pd.Index(range(1, b.shape[0] + 1), name="t"))
st.download_button("Biases of this layer (CSV)", table.to_csv().encode(), f"bias-{method}-{layer}.csv", "text/csv",
                   on_click="ignore", key="bias_csv", icon=":material/download:")
meta = {"model": result.model_name, "method": method, "timesteps": str(result.timesteps),
        "options": json.dumps(report.options)}
payload = save_arrays({n: np.ascontiguousarray(v, dtype=np.float32) for n, v in report.biases.items()}, metadata=meta)
st.download_button("All biases (safetensors)", payload, f"{result.model_name}.{method}-T{result.timesteps}.safetensors",
                   "application/octet-stream", on_click="ignore", key="bias_safetensors", icon=":material/download:")
exports.show_code(FtbcRule.__call__, fit_biases)
