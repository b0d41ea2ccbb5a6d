"""Page: the shown run told in teaching order, one chart and a few sentences per step, each with a link to the
page that shows it in full."""

import streamlit as st

from dashboard import caches, exports, figures, runs, story
from dashboard.story import PAGES, STEPS
from dashboard.models import model_for
from ftbc_core.checkpoint import CheckpointError
from ftbc_core.data import DataError, get_info, to_tensor
from ftbc_core.neuron_lab import qcfs_value

st.title("Lecture walk-through")
run = runs.require_run()
result = run.result


def move(by: int) -> None:
    st.session_state["walk_step"] = STEPS[(STEPS.index(st.session_state.get("walk_step", STEPS[0])) + by) % len(STEPS)]


step = st.radio("Step", STEPS, horizontal=True, key="walk_step", format_func=lambda s: f"{STEPS.index(s) + 1}. {s}")
i = STEPS.index(step)
st.subheader(f"{i + 1}. {step}")
layer = story.top_layer(result)

if i == 0:
    text, trace, target = story.neuron_step(result.timesteps)
    st.markdown(text)
    fig = figures.neuron_figure(trace, target, qcfs_value(target, 1.0, 4))
elif i == 1:
    st.markdown(story.accuracy_step(result))
    fig = figures.accuracy_figure(result)
elif i == 2:
    st.markdown(story.layers_step(result))
    fig = figures.layer_error_figure(result) if layer else None
elif i == 3:
    text, method = story.biases_step(result)
    st.markdown(text)
    fig = figures.layer_time_heatmap(result, method, "bias") if method else None
elif i == 4:
    if layer is None:
        st.markdown("This run has no measurements.")
        fig = None
    else:
        st.markdown(story.membrane_step(result, layer))
        base, corr = story.methods_to_contrast(result)
        shown = [m for m in (base, corr) if m and result.measurements.get(m) is not None]
        fig = figures.membrane_histogram(result, layer, 1, shown)
else:
    try:
        ann, card = model_for(run.model)
        images = caches.evaluation_images(card.dataset, run.config.data_dir, run.config.limit)
        preds = runs.predictions(run)
    except (CheckpointError, DataError, ValueError, KeyError) as err:
        st.error(f"Cannot rebuild the networks of this run: {str(err).splitlines()[0]}")
        st.stop()
    classes = list(card.class_names) or [str(k) for k in range(get_info(card.dataset).num_classes)]
    told = story.image_step(result, preds, classes)
    st.markdown(told.text)
    fig = None
    if told.index is not None:
        try:
            networks = runs.networks(run)
        except (CheckpointError, DataError, ValueError, KeyError) as err:
            st.error(f"Cannot rebuild the networks of this run: {str(err).splitlines()[0]}")
            st.stop()
        x = to_tensor(images.x[told.index : told.index + 1])[0]
        traces = {m: caches.image_trace(run.key, run.stored.timesteps, m, told.index, result.timesteps, networks[m], x)
                  for m in story.methods_to_contrast(result) if m}
        left, right = st.columns([1, 2])
        with left:
            st.image(figures.image_pixels(images.x[told.index]), width=256)
        with right:
            exports.chart(figures.probability_figure(traces, int(images.y[told.index]), classes),
                          f"walk-image-{told.index}-probability", "walk_chart")
if fig is not None:
    exports.chart(fig, f"walk-{i + 1}", "walk_chart")

left, mid, right = st.columns([1, 1, 3])
left.button("◀ Back", key="walk_back", on_click=move, args=(-1,), disabled=i == 0)
mid.button("Next ▶", key="walk_next", on_click=move, args=(1,), disabled=i == len(STEPS) - 1, type="primary")
right.page_link(PAGES[i][0], label=f"The full page: {PAGES[i][1]}", icon=":material/open_in_new:")
