"""Page switching for AppTest when pages are functions, not files."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest
from streamlit.util import calc_hash


def open_page(app: AppTest, url_path: str) -> AppTest:
    """Run `app` on the page registered under `url_path` ("review", "history", "model"), as a sidebar click would.

    AppTest.switch_page only takes file paths, and the app registers `render` functions, so this sets
    the page id the browser would send: st.Page derives it from the url_path. The check after the
    run makes a change in that scheme fail here rather than leave a test on the wrong page.
    """
    app._page_hash = calc_hash(url_path)
    app.run()
    assert app._finished_page_script_hash == calc_hash(url_path), f"AppTest did not open the {url_path!r} page"
    return app


def shown_class(app: AppTest) -> tuple[str, str] | None:
    """The Review page's class heading as drawn: (class name, stated probability), or None when none is shown."""
    import html
    import re

    for element in app.markdown:
        match = re.search(r"class='brainscan-class-name'[^>]*>(.*?)</span> <span class='brainscan-class-probability'"
                          r"[^>]*>([0-9.]+%)</span>", str(element.value), re.S)
        if match:
            return html.unescape(match.group(1)), match.group(2)
    return None
