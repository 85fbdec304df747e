"""Text made safe for Streamlit's markdown: the one escaping rule every page and glue module uses."""

from __future__ import annotations

import re

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&=\"'])")


def escape_markdown(text: str) -> str:
    """User-supplied text (a file name, a note) made inert for st.markdown: no markup, links, emoji or LaTeX."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))
