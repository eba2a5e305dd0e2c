"""matplotlib figures as inline SVG, for pages that need nothing outside themselves."""

from __future__ import annotations

import io


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def inline_svg(fig, name: str) -> str:
    """The figure as an <svg> element to inline: no XML prolog, no DOCTYPE (it names an external
    DTD), no RDF metadata, and ids salted by the figure's name so that two figures in one page
    never share one."""
    import matplotlib
    with matplotlib.rc_context({"svg.hashsalt": name, "svg.fonttype": "path"}):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight",
                    metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]
