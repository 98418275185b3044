"""The HUP paper's Table 3 (Gu et al., WSDM 2020), for orientation beside our own figures.

Full JD Appliances/Computers data (millions of users; 170k/420k skus), `last` mode only,
the paper's own pipeline and features: not comparable with our sample-file figures in
absolute terms. Values in %: item Recall@20, item MRR@20, category Recall@5, category MRR@5.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["PAPER_COLUMNS", "PAPER_TABLE3", "paper_markdown"]

PAPER_COLUMNS = ("item Recall@20", "item MRR@20", "category Recall@5", "category MRR@5")

_APPLIANCES = {
    "POP": (3.1, 0.5, 45.0, 24.0),
    "BPR-MF": (13.1, 3.1, 55.4, 35.0),
    "Item-KNN": (42.9, 9.6, 87.0, 43.1),
    "Word2vec": (38.5, 8.8, 91.1, 90.6),
    "Word2vec-avg": (38.7, 13.1, 86.7, 80.0),
    "RIB": (47.6, 14.3, 92.9, 91.2),
    "Time-LSTM": (49.4, 18.9, 93.4, 91.3),
    "S-HRNN": (49.8, 19.2, 92.6, 90.4),
    "HUP": (51.5, 20.5, 93.8, 91.6),
    "HUP-NoMicro": (49.6, 19.3, 93.1, 91.1),
    "HUP-LSTM": (50.1, 19.6, 93.2, 91.3),
    "HUP-TLSTM": (50.9, 20.0, 93.5, 91.3),
    "HUP-NoAtt": (50.3, 19.7, 93.6, 91.5),
    "HUP-Single": (50.5, 19.7, 93.4, 91.5),
}
_COMPUTERS = {
    "POP": (3.4, 1.0, 44.0, 28.6),
    "BPR-MF": (11.3, 3.0, 70.1, 42.9),
    "Item-KNN": (29.8, 6.8, 68.8, 32.7),
    "Word2vec": (28.4, 6.2, 84.1, 81.6),
    "Word2vec-avg": (24.4, 7.1, 81.0, 71.5),
    "RIB": (28.6, 7.6, 88.0, 83.0),
    "Time-LSTM": (32.8, 10.9, 88.7, 83.9),
    "S-HRNN": (33.0, 11.0, 88.2, 82.9),
    "HUP": (35.0, 12.0, 89.2, 84.4),
    "HUP-NoMicro": (32.6, 10.6, 88.2, 83.6),
    "HUP-LSTM": (32.7, 10.7, 88.3, 83.6),
    "HUP-TLSTM": (33.8, 11.3, 88.8, 84.0),
    "HUP-NoAtt": (33.8, 11.4, 89.1, 84.2),
    "HUP-Single": (33.9, 11.4, 88.6, 83.8),
}

PAPER_TABLE3: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "Appliances": _APPLIANCES,
    "Computers": _COMPUTERS,
}
"""Dataset -> model display name -> the four figures of `PAPER_COLUMNS` (%)."""


def paper_markdown(models: Sequence[str]) -> list[str]:
    """Markdown lines of the paper's figures for ``models`` (display names; "-" if absent)."""
    datasets = list(PAPER_TABLE3)
    lines = [
        "## The paper's Table 3 (for orientation only)",
        "",
        "Gu et al., WSDM 2020, Table 3: **the paper's figures**, on the full JD data (millions "
        "of users, `last` mode, the authors' pipeline), not on these samples: not comparable "
        "in absolute terms, only the ordering of methods is of interest.",
        "",
        "| model | " + " | ".join(f"paper {d} {c}" for d in datasets for c in PAPER_COLUMNS) + " |",
        "|" + "---|" * (1 + len(datasets) * len(PAPER_COLUMNS)),
    ]
    for model in models:
        cells = []
        for d in datasets:
            figures = PAPER_TABLE3[d].get(model)
            cells += [f"{v:.1f}" for v in figures] if figures else ["-"] * len(PAPER_COLUMNS)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines
