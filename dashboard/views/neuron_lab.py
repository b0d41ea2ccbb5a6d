"""Page 6: one IF neuron (or a few) with a constant input, to see where conversion error comes from. No model."""

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import exports, figures
from ftbc_core.neuron_lab import error_parts, qcfs_value, simulate_if_neurons
from ftbc_core.neuron import if_step

st.title("Neuron lab")
st.markdown(
    "An integrate-and-fire neuron approximates its ANN activation by its firing rate. With a constant input z it "
    "fires θ every time its potential crosses θ, so after T steps its rate is a multiple of θ/T: **clipping** "
    "(z above θ is lost), **quantization** (only T+1 levels) and, when the input arrives unevenly over time, "
    "**unevenness** (one spike too many or too few). The time bias b is what FTBC learns: it is subtracted "
    "from the charge at every step. Everything here is computed instantly with the core's `if_step`.")
st.latex(r"u[t] = v[t-1] + z[t] - b[t],\quad s[t] = \theta H(u[t]-\theta),\quad v[t] = u[t]-s[t],\quad "
         r"r[t] = \frac{1}{t}\sum_{\tau\le t} s[\tau] \;\to\; \mathrm{clamp}(z, 0, \theta)")

c1, c2, c3 = st.columns(3)
z = c1.slider("Input current z", -0.5, 2.0, 0.37, 0.01, key="lab_z")
theta = c1.slider("Threshold θ", 0.1, 2.0, 1.0, 0.05, key="lab_theta")
steps = c2.slider("Time steps T", 1, 64, 8, key="lab_T")
v0 = c2.radio("Initial potential v[0]", [0.5, 0.0], horizontal=True, key="lab_v0",
              format_func=lambda f: "θ/2" if f else "0")
levels = c2.slider("QCFS levels L", 1, 16, 4, key="lab_levels")
bias = c3.slider("Bias b", -0.5, 0.5, 0.0, 0.01, key="lab_bias")
schedule = c3.radio("Bias schedule", ["constant", "first step only", "decaying b/t"], key="lab_schedule")
left, right = st.columns(2)
neurons = left.slider("Neurons", 1, 8, 1, key="lab_neurons")
jitter = right.slider("Input jitter σ (uneven arrival)", 0.0, 1.0, 0.0, 0.05, key="lab_jitter",
                      help="Each neuron gets z + σ·noise at every step (seeded); the noise averages to ~0.")

t_axis = np.arange(1, steps + 1)
b = {"constant": np.full(steps, bias), "first step only": np.where(t_axis == 1, bias, 0.0),
     "decaying b/t": bias / t_axis}[schedule]
noise = np.random.default_rng(0).standard_normal((steps, neurons))
noise -= noise.mean(0, keepdims=True) if steps > 1 else noise  # same mean input for every neuron
trace = simulate_if_neurons(z + jitter * noise, theta, v0, b)

ann_value = float(np.clip(z, 0.0, theta))
qcfs = float(qcfs_value(z, theta, levels))
fig = figures.neuron_figure(trace, ann_value, qcfs)
exports.chart(fig, "neuron-lab", "lab_chart")

snn = float(trace.rate[-1].mean())
parts = error_parts(z, theta, steps, v0, snn)
m = st.columns(6)
m[0].metric("ANN clamp(z, 0, θ)", f"{ann_value:.3f}")
m[1].metric(f"QCFS (L = {levels})", f"{qcfs:.3f}")
m[2].metric(f"SNN rate at T = {steps}", f"{snn:.3f}")
m[3].metric("clipping error", f"{parts['clipping']:+.3f}", help="ReLU(z) − clamp(z, 0, θ)")
m[4].metric("quantization error", f"{parts['quantization']:+.3f}",
            help="clamp(z, 0, θ) − θ·clamp(floor(z·T/θ + v0/θ)/T, 0, 1): the best a T-step neuron can do")
m[5].metric("unevenness (+ bias) error", f"{parts['unevenness']:+.3f}",
            help="quantized value − SNN rate; nonzero only with jitter or a bias")

table = pd.DataFrame({"t": t_axis, "bias b": b, "mean input z": trace.z.mean(1), "u (neuron 0)": trace.u[:, 0],
                      "v (neuron 0)": trace.v[:, 0], "spike (neuron 0)": trace.spikes[:, 0],
                      "mean rate": trace.rate.mean(1)}).set_index("t")
with st.expander("Step-by-step values"):
    st.dataframe(table.style.format("{:.3f}"), width="stretch")
    exports.download_table(table, "neuron-lab", index=True)
exports.show_code(if_step, simulate_if_neurons, error_parts)
