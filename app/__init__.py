"""Steering Lab: activation steering for teaching and research."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
