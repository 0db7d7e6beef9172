"""The one progress callback type every long step reports through (extraction, library builds,
experiments, preference steering): ``progress(fraction_done, message)``."""

from collections.abc import Callable

Progress = Callable[[float, str], None]
