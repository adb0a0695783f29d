"""The maths layer: clipping-aware rescaling for any p, exact Lp-ball ∩ box projections,
the input checks of the public API, and the batched tensor helpers they share.

Written against EagerPy, so every function runs on PyTorch, NumPy and JAX tensors. Read
:mod:`~car_attacks.core.rescaling` first (the CAR equation and the public functions), then
:mod:`~car_attacks.core.solvers` (Newton, sort, bisection, the L-inf closed form) and
:mod:`~car_attacks.core.projection`; :mod:`~car_attacks.core.validation` and
:mod:`~car_attacks.core.tensors` hold the input checks and tensor helpers. The public names
are re-exported by :mod:`car_attacks`.
"""
