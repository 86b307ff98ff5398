"""What every page shares: the runs folder and run chosen in app.py's sidebar, and routing through app.py."""
import runpy
from pathlib import Path

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from dfg import views

APP = Path(__file__).resolve().parent.parent / "app.py"


def page_context() -> tuple[str, str | None]:
    """(runs folder, selected run id) from the sidebar.

    Streamlit runs a page file on its own, without app.py, while its legacy pages/-folder mode is on: until
    app.py's st.navigation first runs in the server process (a fresh server whose first visitor opens a page
    URL) and in every AppTest run. Then app.py is run here instead — it switches that mode off, draws the
    sidebar and runs this page inside — and this outer run stops. (Not st.rerun: that would drop the
    click of a button.)"""
    if PagesManager.uses_pages_directory:
        runpy.run_path(str(APP), run_name="__main__")
        st.stop()
    return views.runs_folder(st.session_state.get("runs_dir")), st.session_state.get("run_id")
