"""car-attacks: adversarial attacks that are exact about how large their perturbations are.

The core maths (backend-neutral through EagerPy):

* :func:`clipping_aware_rescaling` -- the scale ``eta`` with
  ``||clip(x + eta delta) - x||_p == eps`` for any p in [1, inf].
* :func:`reachable_norm` -- the largest clipped norm a direction can attain.
* :func:`project_lp_ball_box` -- exact projection onto Lp-ball ∩ box (p = 1, 2, inf).

The evaluation of ``car-attacks run`` on in-memory tensors: :func:`evaluate`.
"""

from .core.projection import project_lp_ball_box
from .core.rescaling import METHODS, clipping_aware_rescaling, lp_norm, reachable_norm
from .evaluation.api import EvaluationReport, evaluate

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "EvaluationReport",
    "clipping_aware_rescaling",
    "evaluate",
    "lp_norm",
    "project_lp_ball_box",
    "reachable_norm",
    "__version__",
]
