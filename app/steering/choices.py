"""The names of the steering options the CLI, the UI and the API list, without torch (so
``python -m app --help`` stays fast). What they do: extraction methods in
:mod:`app.steering.extraction`, position modes and strength units in :mod:`app.steering.engine`.
"""

from typing import Literal

Method = Literal["mean_diff", "lda", "pca", "probe"]
METHODS: tuple[Method, ...] = ("mean_diff", "lda", "pca", "probe")

PositionMode = Literal["all", "prompt", "generated", "last"]
POSITION_MODES: tuple[PositionMode, ...] = ("all", "prompt", "generated", "last")

StrengthUnit = Literal["normalized", "raw"]
