"""Page 5: one evaluation image through the networks, step by step, and a spike raster of one layer."""

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import figures, state
from ftbc_core.data import DataError, get_info, to_tensor
from ftbc_core.image_trace import trace_image

st.title("One image")
run = state.require_run()
result, cfg = run.result, run.config

st.markdown(
    "Follow a single evaluation image: after every step t, the SNN's output is the running mean of the last "
    "layer, turned into class probabilities with a softmax. Without correction the first steps are often wrong "
    "or uncertain; with FTBC the prediction usually settles earlier. The raster shows which of a random sample "
    "of neurons of one layer fire at each step (a dot = one spike of size θ).")
st.latex(r"p_k(t) = \mathrm{softmax}_k\!\left(\frac{1}{t}\sum_{\tau=1}^{t} o[\tau]\right), \qquad "
         r"\hat y(t) = \arg\max_k p_k(t)")

try:
    ann, card = state.model_for(run.model_ref)
    images = state.evaluation_images(card.dataset, cfg.data_dir, cfg.limit)
    networks = state.calibrated_networks(run.key, run, ann, card)
except (DataError, ValueError, KeyError) as err:
    st.error(f"Cannot rebuild the networks of this run: {err}")
    st.stop()

classes = list(card.class_names) or [str(k) for k in range(get_info(card.dataset).num_classes)]
left, mid, right = st.columns([1, 1, 2])
index = int(left.number_input("Image index", 0, len(images) - 1, 0, key="image_index"))
layers = networks[result.methods[0]].layer_names
layer = mid.selectbox("Raster layer", layers, key="image_layer")
methods = right.multiselect("Methods", list(result.methods), default=list(result.methods), format_func=figures.label,
                            key="image_methods")

x = to_tensor(images.x[index : index + 1])[0]
true_class = int(images.y[index])
traces = {m: state.image_trace(run.key, m, index, layer, result.timesteps, networks[m], x) for m in methods}

col_img, col_prob = st.columns([1, 2])
with col_img:
    st.plotly_chart(figures.image_figure(images.x[index]), width="stretch", key="image_chart",
                    config={"displayModeBar": False})
    st.markdown(f"Image {index} of the evaluation sample, true class **'{classes[true_class]}'**")
    for m, tr in traces.items():
        pred = int(tr.predictions[-1])
        mark = ":green[:material/check_circle:]" if pred == true_class else ":red[:material/cancel:]"
        st.markdown(f"{mark} **{figures.label(m)}** at T = {result.timesteps}: '{classes[pred]}' "
                    f"(p = {tr.probabilities[-1, pred]:.2f})")
with col_prob:
    if traces:
        fig = figures.probability_figure(traces, true_class, classes)
        st.plotly_chart(fig, width="stretch", key="probability_chart")
        state.download_figure(fig, f"image-{index}-probability")

if traces:
    table = pd.DataFrame({m: [classes[k] for k in tr.predictions] for m, tr in traces.items()},
                         index=pd.Index(np.arange(1, result.timesteps + 1), name="t"))
    for m, tr in traces.items():
        table[f"{m} p(true)"] = np.round(tr.probabilities[:, true_class], 4)
    with st.expander("Predicted class after every step"):
        st.dataframe(table, width="stretch")
        state.download_table(table, f"image-{index}-predictions", index=True)
    raster_method = st.radio("Raster of", list(traces), horizontal=True, format_func=figures.label,
                             key="raster_method")
    fig = figures.raster_figure(traces[raster_method])
    st.plotly_chart(fig, width="stretch", key="raster_chart")
    st.caption(f"Fraction of all {traces[raster_method].layer_size} neurons of {layer} firing per step: "
               + ", ".join(f"{r:.3f}" for r in traces[raster_method].spike_rate))
state.show_code(trace_image)
