"""Page: several of this session's runs side by side (different models, T or methods), or a preset comparison
started with one click."""

import streamlit as st

from dashboard import compare_figures, exports, figures, presets, runs

st.title("Compare runs")
st.markdown(
    "This session keeps its last runs. Overlay their accuracy curves (on the time-step axis, or on the latency "
    "axis where COS pays its ρ pre-steps) and their per-layer errors; the table gives the differences. Colour is "
    "the method, the line style the run. Or start a comparison a lecture needs with one click:")

cols = st.columns(len(presets.PRESETS))
for col, (key, preset) in zip(cols, presets.PRESETS.items()):
    if col.button(preset.title, key=f"preset_{key}", help=preset.description, disabled=not presets.available(key),
                  width="stretch"):
        started = presets.run_preset(key)
        if started:
            st.session_state["compare_runs"] = [r.label for r in started]
            st.session_state["compare_seen"] = [r.label for r in runs.session_runs()]
            st.session_state["compare_axis"] = preset.axis

session = {r.label: r for r in runs.session_runs()}
if not session:
    st.info(runs.RUN_HINT + " Or press a preset above.")
    st.stop()
new = [label for label in session if label not in st.session_state.get("compare_seen", [])]  # runs made since
chosen = [label for label in st.session_state.get("compare_runs", []) if label in session]
st.session_state["compare_runs"] = list(dict.fromkeys(chosen + new)) or list(session)[-3:]
st.session_state["compare_seen"] = list(session)
selected = st.multiselect("Runs", list(session), key="compare_runs",
                          help=f"The session keeps its last {runs.RUNS_KEPT} runs (the sidebar's 'Shown run' picks "
                               "the one the other pages show).")
if not selected:
    st.info("Choose at least one run.")
    st.stop()
compared = [(label, session[label].result) for label in selected]
all_methods = list(dict.fromkeys(m for _, r in compared for m in r.methods))
left, right = st.columns([1, 2])
axis = left.radio("x axis", ["T", "latency"], horizontal=True, key="compare_axis",
                  format_func=lambda v: "time steps T" if v == "T" else "latency ρ + T")
methods = right.multiselect("Methods", all_methods, default=all_methods, format_func=figures.label,
                            key="compare_methods")

exports.chart(compare_figures.compare_accuracy_figure(compared, axis, methods), "compare-accuracy",
              "compare_accuracy_chart")
table = compare_figures.compare_table(compared, methods)
st.dataframe(table.style.format(precision=2), width="stretch", hide_index=True)
exports.download_table(table, "compare", label="Differences (CSV)")

measured = [(label, r) for label, r in compared if any(x is not None for x in r.measurements.values())]
if measured:
    kind = st.radio("Error measure", ["abs", "rel", "offset"], horizontal=True, key="compare_kind",
                    format_func=lambda k: {"abs": "absolute", "rel": "relative", "offset": "offset spikes"}[k])
    exports.chart(compare_figures.compare_layer_figure(measured, kind, methods), "compare-layers",
                  "compare_layer_chart")
st.caption("Each run's own timings: " + " ".join(f"**{label}**: {session[label].timings()}" for label in selected))
exports.show_code(compare_figures.compare_table)
