"""The held-out quality check behind ``python -m app quality`` (docs/quality.md).

Defaults live here, not in :mod:`app.quality.run`, so ``python -m app --help`` can show them
without importing torch.
"""

from app.storage import REPO_ROOT

HELDOUT = REPO_ROOT / "tests" / "heldout"  # concepts/*.json, scorers.json, questions.json
MAX_NEW_TOKENS = 48  # the CLI's default reply length
