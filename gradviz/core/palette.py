"""One colour per loss, the same in every picture gradviz draws.

The colours are Okabe and Ito's colorblind-safe palette ("Color Universal
Design", 2008), ordered so that the first losses get the most distinct,
best-contrasting colours on white (yellow comes last). ``regularization`` is
always grey, so adding a regularizer does not shift the other losses'
colours. The analysis calls :func:`loss_colors` once and stores each colour in
``LossInfo.color``; diagrams, legends, plots and the JSON read it from there.
"""

from __future__ import annotations

from typing import Sequence

from gradviz.core.spec import REGULARIZATION

#: Okabe-Ito colours, most distinct first: blue, orange, bluish green, reddish purple
#: sky blue, vermillion, yellow. (Black is kept for text and edges.)
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")

#: the colour of the ``regularization`` term (model.losses)
REGULARIZATION_COLOR = "#999999"


def loss_colors(names: Sequence[str], regularization: Sequence[str] = (REGULARIZATION,)) -> dict[str, str]:
    """Map loss names, in report order, to colours (cycling after seven losses).

    Args:
        names: the losses, in report order.
        regularization: the names of ``model.losses`` terms (grey).

    Example:
        >>> loss_colors(["C", "D", "regularization"])
        {'C': '#0072B2', 'D': '#E69F00', 'regularization': '#999999'}
    """
    colors: dict[str, str] = {}
    index = 0
    for name in names:
        if name in regularization:
            colors[name] = REGULARIZATION_COLOR
            continue
        colors[name] = OKABE_ITO[index % len(OKABE_ITO)]
        index += 1
    return colors
