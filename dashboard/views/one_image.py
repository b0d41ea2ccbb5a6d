"""Page 5: one evaluation image through the networks: the images the methods disagree on, then one of two views
of the chosen image: the probability of the true class after every step, or a few neurons of one layer (every
spike, rate vs ANN activation, charge). One view at a time: each redraw has one or two charts, not three."""

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import caches, exports, figures, neuron_figures, runs, story
from dashboard.models import model_for
from ftbc_core.per_image import neuron_order, trace_layer
from ftbc_core.checkpoint import CheckpointError
from ftbc_core.data import DataError, get_info, to_tensor

SHOWN = 16  # images listed per list (one pills widget each: one element for the browser, not 16 buttons)

st.title("One image")
run = runs.require_run()
result, cfg = run.result, run.config
T, covered = result.timesteps, run.stored.timesteps

st.markdown(
    "Follow a single evaluation image: after every step t, the SNN's output is the running mean of the last "
    "layer, turned into class probabilities with a softmax. Start with the images the methods disagree on: those "
    "the correction fixes (wrong before, right after) and those it breaks.")
st.latex(r"p_k(t) = \mathrm{softmax}_k\!\left(\frac{1}{t}\sum_{\tau=1}^{t} o[\tau]\right), \qquad "
         r"\hat y(t) = \arg\max_k p_k(t)")

try:
    ann, card = model_for(run.model)
    images = caches.evaluation_images(card.dataset, cfg.data_dir, cfg.limit)
    networks = runs.networks(run)
except (CheckpointError, DataError, ValueError, KeyError) as err:
    st.error(f"Cannot rebuild the networks of this run: {str(err).splitlines()[0]}")
    st.stop()
classes = list(card.class_names) or [str(k) for k in range(get_info(card.dataset).num_classes)]
methods = list(result.methods)


LISTS = ("fix_pick", "break_pick")  # the pills of the two lists (one image open at a time: one chosen pill)


def clear_lists(keep: str | None = None) -> None:
    for key in LISTS:
        if key != keep:
            st.session_state[key] = None


def pick_from(key: str) -> None:
    """Open the image just chosen in a list and clear the other list (a second click leaves the image open)."""
    if st.session_state.get(key) is not None:
        st.session_state["image_index"] = st.session_state["image_pick"] = int(st.session_state[key])
    clear_lists(keep=key)


base, corr = story.methods_to_contrast(result)
default = 0
if corr is not None:
    st.subheader("Images the methods disagree on")
    c1, c2, c3 = st.columns([1, 1, 2])
    before = c1.selectbox("Before", methods, methods.index(base), format_func=figures.label, key="dis_before")
    after = c2.selectbox("After", methods, methods.index(corr), format_func=figures.label, key="dis_after")
    t_dis = c3.slider("At step t", 1, T, T, key="dis_t") if T > 1 else 1
    preds = runs.predictions(run)
    fixed, broken = preds.disagreements(before, after, t_dis)
    default = int(fixed[0]) if len(fixed) else 0
    for title, found, key, shown in ((f"Fixed by {figures.label(after)}", fixed, "fix_pick", before),
                                     (f"Broken by {figures.label(after)}", broken, "break_pick", after)):
        st.markdown(f"**{title}: {len(found)}** of {len(preds.labels)} images at t = {t_dis}"
                    + (f" (the first {SHOWN} shown)" if len(found) > SHOWN else ""))
        wrong = preds.predicted[shown][t_dis - 1]  # the wrong answer: before the fix, or after the break
        tense = "was" if key == "fix_pick" else "now"
        if len(found):
            st.pills(title, [int(i) for i in found[:SHOWN]], key=key, label_visibility="collapsed",
                     format_func=lambda i, w=wrong, s=tense: f"#{i} {classes[preds.labels[i]]} ({s} {classes[w[i]]})",
                     on_change=pick_from, args=(key,))

marker = f"{run.key}|{T}"
if st.session_state.get("image_for") != marker:  # a new run opens on the first image the correction fixes
    st.session_state["image_for"], st.session_state["image_pick"] = marker, default
if "image_index" not in st.session_state:
    st.session_state["image_index"] = st.session_state["image_pick"]
left, right = st.columns([1, 2])
index = int(left.number_input("Image index", 0, len(images) - 1, key="image_index",
                              on_change=lambda: (st.session_state.update(image_pick=st.session_state["image_index"]),
                                                 clear_lists())))
chosen = right.multiselect("Methods", methods, default=methods, format_func=figures.label, key="image_methods")

x = to_tensor(images.x[index : index + 1])[0]
true_class = int(images.y[index])
VIEWS = ("Output over time", "Neurons of one layer")
view = st.radio("Show", VIEWS, horizontal=True, key="image_view")  # one part at a time: fewer charts to redraw
if view == VIEWS[0]:
    traces = {m: caches.image_trace(run.key, covered, m, index, T, networks[m], x) for m in chosen}
    col_img, col_prob = st.columns([1, 2])
    with col_img:
        st.image(figures.image_pixels(images.x[index]), width=256)
        st.markdown(f"Image {index} of the evaluation sample, true class **'{classes[true_class]}'**")
        for m, tr in traces.items():
            pred = int(tr.predictions[-1])
            mark = ":green[:material/check_circle:]" if pred == true_class else ":red[:material/cancel:]"
            st.markdown(f"{mark} **{figures.label(m)}** at T = {T}: '{classes[pred]}' "
                        f"(p = {tr.probabilities[-1, pred]:.2f})")
    with col_prob:
        if traces:
            exports.chart(figures.probability_figure(traces, true_class, classes), f"image-{index}-probability",
                          "probability_chart")
    if traces:
        table = pd.DataFrame({m: [classes[k] for k in tr.predictions] for m, tr in traces.items()},
                             index=pd.Index(np.arange(1, T + 1), name="t"))
        for m, tr in traces.items():
            table[f"{m} p(true)"] = np.round(tr.probabilities[:, true_class], 4)
        with st.expander("Predicted class after every step"):
            st.dataframe(table, width="stretch")
            exports.download_table(table, f"image-{index}-predictions", index=True)
else:
    st.subheader("Neurons of one layer")
    st.markdown(f"A sample of the layer's neurons for image {index} (true class **'{classes[true_class]}'**): every "
                "spike is one mark. Each neuron's rate (spikes per step, in θ) is drawn beside the ANN activation it "
                "should match; sort by first spike to see which fire early, late or never.")
    c1, c2, c3, c4 = st.columns([2, 2, 2, 1])
    layer = c1.selectbox("Layer", networks[methods[0]].layer_names, key="image_layer")
    method = c2.radio("Network", methods, horizontal=True, format_func=figures.label, key="raster_method")
    order_by = c3.radio("Sort by", ["first spike", "rate", "ANN activation"], horizontal=True, key="raster_order")
    count = int(c4.number_input("Neurons", 4, 96, 32, 4, key="raster_neurons"))
    lt = caches.layer_trace(run.key, covered, method, index, layer, T, count, networks[method], ann, x)
    order = neuron_order(lt, order_by)
    exports.chart(neuron_figures.raster_figure(lt, order, method), f"raster-{layer}-{index}", "raster_chart")
    names = neuron_figures.neuron_names(lt)
    neuron = st.selectbox("Charge of neuron", [int(i) for i in order], format_func=lambda i: names[i],
                          key="raster_neuron")
    exports.chart(neuron_figures.neuron_charge_figure(lt, neuron, method), f"charge-{layer}-{index}", "charge_chart")
    exports.show_code(trace_layer)
