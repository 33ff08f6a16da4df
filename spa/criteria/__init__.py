"""Stage 3, score: criteria, one class each (magnitude.py, data.py) in a registry keyed by
the name `--criterion` takes; the scoring machinery common to all (score.py); the OBS and
forward-selection maths (obs.py)."""
from spa.criteria import magnitude, data  # noqa: F401, I001 - they register their criteria, magnitude first
from spa.criteria.base import CRITERIA, Criterion

__all__ = ["CRITERIA", "Criterion"]
