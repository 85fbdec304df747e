"""The app's pages, one module each; `streamlit_app` registers each module's `render()` with `st.navigation`.

Streamlit runs a `pages/` folder next to the entry point the old (v1) way until `st.navigation`
first runs in the server process (and AppTest does so on every run): the first request after a
restart that goes to /history executes pages/history.py on its own, without the entry point.
Each module therefore ends with an `if __name__ == "__main__"` hand-over,
`app.support.hand_over_to_front_door()`, which runs the entry point as a script: it switches the
process to the entry point's navigation and reruns, so the sidebar and the page are drawn by
`streamlit_app.run()` as on every other run. Pages never import `streamlit_app` (it imports them).
Otherwise Streamlit never executes these files: the pages are functions, not paths.
"""
