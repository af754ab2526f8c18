"""Edge-adaptive total-variation denoising with a Poisson data term (the paper's Eq. 5).

Solves::

    u = argmin_u  sum(u - f ln u)  +  weight * sum(omega * |grad u|)
    omega = 1 / (1 + k |G_sigma * grad u|^2)

The data term is the negative log-likelihood of photon-counting (Poisson) noise, so bright,
noisier regions are smoothed more than dark ones; ``omega`` lowers the smoothing across
the edges of the current estimate so that they stay sharp. ``k = 0`` gives plain TV.

The solver is the accelerated primal-dual scheme of Chambolle and Pock (2011, algorithm 2):
forward-difference gradient and its negative adjoint as divergence, projection of the dual
variable onto ``|p| <= weight * omega``, the closed-form proximal step of the Poisson term,
and ``omega`` recomputed from the Gaussian-smoothed current estimate every ``omega_every``
iterations (a lagged, fixed-point treatment of the weight, which depends on ``u``).
Everything is float32 and vectorised; element-wise steps use OpenCV, which is about twice
as fast as numpy on float32 images and writes into preallocated buffers and views.

``weight="auto"`` (the default) chooses lambda per image: :func:`estimate_noise` measures the
photon noise of the image itself, and :func:`auto_weight` maps that level to the weight
that gave the best PSNR on real radiographs (see :func:`auto_weight`). A number forces a
weight and runs exactly the solver of earlier releases.
"""

from __future__ import annotations

import cv2
import numpy as np

# Added to the image and the estimate so that ln u and the proximal step stay finite where
# no photon was counted (f = 0); subtracted from the result.
DARK_OFFSET = 1e-3

# First primal step; the dual step is 1 / (8 * tau) so that tau * sigma * ||grad||^2 <= 1.
INITIAL_PRIMAL_STEP = 0.02
# Assumed strong convexity of u - f ln u (its curvature f / u^2 is about 1 / f >= 1 near
# the solution), which lets the steps adapt as in Chambolle-Pock algorithm 2.
STRONG_CONVEXITY = 0.5

_GRADIENT_NORM_SQUARED = 8.0  # bound on ||grad||^2 for forward differences in 2-D


AUTO = "auto"  # the weight chosen per image from its estimated noise

# Defaults, measured (see denoise_tv and auto_weight); PreprocessParams takes its defaults from here.
TV_WEIGHT = AUTO
FIXED_WEIGHT = 0.3   # the default of earlier releases, for a fixed weight
TV_K = 100.0
TV_SIGMA = 1.5
TV_ITERATIONS = 8

# The automatic weight: lambda = AUTO_SCALE * sigma ** AUTO_POWER, sigma from estimate_noise,
# fitted (least squares in log-log) to the best weight of each of 8 RSNA radiographs at
# 331 px under Poisson noise of peak 30 to 4000 photons (benchmarks/preprocess.py --fit-auto;
# the benchmark itself uses 12 other radiographs). Residual spread of log lambda: 0.17.
AUTO_SCALE = 9.04
AUTO_POWER = 1.29
AUTO_MAX_WEIGHT = 2.0
# The automatic mode takes a first primal step 8 times larger than the fixed-weight solver
# (0.16 against 0.02): with 8 iterations it then smooths as far as the noise asks (+0.6 dB
# at peak 40, +0.25 dB at peak 400 at the best weight of each). Fixed weights keep 0.02, so
# a number means exactly what it meant in earlier releases.
AUTO_PRIMAL_STEP = 0.16


def estimate_noise(image: np.ndarray) -> float:
    """Photon noise of ``image`` as the standard deviation of ``sqrt(intensity)``; about ``1 / (2 sqrt(peak))``.

    The square root makes Poisson noise of any intensity about equally strong (variance
    1 / (4 peak) for intensities in [0, 1] with ``peak`` photons at 1); its level is read
    from the finest diagonal Haar detail, where anatomy is rare and noise is not, by the
    median absolute deviation (Donoho's robust estimator), over the 2 x 2 blocks that are not
    exactly constant (padding, the grey outside the lungs of ``lung mask``, saturated areas:
    no noise to measure there, and they would pull the median to 0). How close ``1 / (4 sigma^2)``
    comes to the true photon peak on real radiographs: docs/performance.md, "cxrclf preprocess".
    """
    f = as_unit_float32(image)
    h, w = (f.shape[0] // 2) * 2, (f.shape[1] // 2) * 2
    if h < 2 or w < 2:
        return 0.0
    root = cv2.sqrt(f[:h, :w])
    a, b, c, d = root[0::2, 0::2], root[1::2, 0::2], root[0::2, 1::2], root[1::2, 1::2]
    detail = np.abs((a - b - c + d) * np.float32(0.5))
    # exactly constant blocks carry no noise to measure: padding, a greyed-out background, saturation
    varying = detail[(a != b) | (a != c) | (a != d)]
    return float(np.median(varying) / 0.6745) if varying.size else 0.0


def auto_weight(image: np.ndarray) -> float:
    """The TV weight for ``image``: ``AUTO_SCALE * estimate_noise(image) ** AUTO_POWER``, at most ``AUTO_MAX_WEIGHT``.

    It rises with the noise and is 0 for a noiseless image, which is then returned as it is.
    The weights it picks and the PSNR they reach against scikit-image's Chambolle at its best
    weight: docs/performance.md, "cxrclf preprocess".
    """
    sigma = estimate_noise(image)
    return float(min(AUTO_MAX_WEIGHT, AUTO_SCALE * sigma ** AUTO_POWER)) if sigma > 0 else 0.0


def denoise_tv(
    image: np.ndarray,
    weight: float | str = TV_WEIGHT,
    k: float = TV_K,
    sigma: float = TV_SIGMA,
    iterations: int = TV_ITERATIONS,
    omega_every: int = 4,
) -> np.ndarray:
    """Adaptive-TV denoise ``image``; float32 in [0, 1] out, same shape.

    ``image``: 2-D; uint8 / uint16 are scaled by their dtype's maximum, floats are read as
    [0, 1] (values outside are clipped). ``weight``: lambda of Eq. 5, or ``"auto"`` (the
    default): :func:`auto_weight` of this image, solved with the larger first step
    :data:`AUTO_PRIMAL_STEP`. ``k``: edge
    sensitivity of omega, in 1 / (intensity per pixel)^2 (``k=100`` halves the smoothing
    where the smoothed gradient is 0.1 per pixel); 0 turns the adaptation off. ``sigma``:
    standard deviation in pixels of the Gaussian applied before the gradient in omega.
    ``iterations``: primal-dual iterations. ``omega_every``: iterations between updates of
    omega.

    The fixed-weight settings stop the solver early, on purpose: 8 iterations act as a short,
    edge-aware TV flow that keeps the smooth ramps and thin ribs which the minimiser of Eq. 5
    flattens (it scores lower against the noiseless phantoms; the grid that chose the
    defaults and the figures are in docs/performance.md, "cxrclf preprocess"). For the
    minimiser, pass ``iterations=300`` and a weight near 0.1. ``k`` and ``sigma`` keep edges
    sharper than plain TV of equal strength, at a small cost in PSNR. Noisier images need a
    larger weight, which ``"auto"`` chooses. The defaults were tuned at 331 x 331: gradients
    per pixel, and hence ``k`` and ``sigma``, depend on the resolution.
    """
    f = as_unit_float32(image)
    if k < 0 or sigma < 0 or iterations < 1 or omega_every < 1:
        raise ValueError(
            f"expected k >= 0, sigma >= 0, iterations >= 1 and omega_every >= 1; "
            f"got k={k}, sigma={sigma}, iterations={iterations}, omega_every={omega_every}"
        )
    weight, step = _weight_and_step(f, weight)
    if weight <= 0:
        return f.copy()
    u = _solve(f + np.float32(DARK_OFFSET), float(weight), float(k), float(sigma), int(iterations), int(omega_every), tau=step)
    u -= np.float32(DARK_OFFSET)
    np.clip(u, 0.0, 1.0, out=u)
    return u


def _weight_and_step(f: np.ndarray, weight: float | str) -> tuple[float, float]:
    """The weight to solve with and the first primal step: a number as given (with the step of
    earlier releases), ``"auto"`` as :func:`auto_weight` chooses it (with the larger step)."""
    if isinstance(weight, str):
        if weight != AUTO:
            raise ValueError(f"expected a weight >= 0 or {AUTO!r}, got {weight!r}")
        return auto_weight(f), AUTO_PRIMAL_STEP
    return weight, INITIAL_PRIMAL_STEP


def edge_weight(u: np.ndarray, k: float, sigma: float) -> np.ndarray:
    """omega = 1 / (1 + k |G_sigma * grad u|^2) as float32, same shape as ``u``.

    Uses G_sigma * grad u = grad (G_sigma * u): one blur instead of two.
    """
    u = np.asarray(u, np.float32)
    return _edge_weight_into(u, k, sigma, np.empty_like(u), np.zeros_like(u), np.zeros_like(u))


def _edge_weight_into(u, k, sigma, smooth, gx, gy):
    """:func:`edge_weight` written into ``gx``; ``gx`` / ``gy`` must be 0 on the last column / row."""
    if sigma > 0:
        cv2.GaussianBlur(u, (0, 0), sigma, dst=smooth, borderType=cv2.BORDER_REFLECT)
    else:
        np.copyto(smooth, u)
    cv2.subtract(smooth[:, 1:], smooth[:, :-1], dst=gx[:, :-1])
    cv2.subtract(smooth[1:], smooth[:-1], dst=gy[:-1])
    cv2.multiply(gx, gx, dst=gx)
    cv2.multiply(gy, gy, dst=gy)
    cv2.addWeighted(gx, k, gy, k, 1.0, dst=gx)
    return cv2.divide(1.0, gx, dst=gx)


def gradient(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward differences along x and y, zero on the last column / row (the solver's operator)."""
    gx = np.zeros_like(u)
    gy = np.zeros_like(u)
    gx[:, :-1] = u[:, 1:] - u[:, :-1]
    gy[:-1] = u[1:] - u[:-1]
    return gx, gy


def divergence(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Negative adjoint of :func:`gradient`: ``sum(gradient(u) . p) == -sum(u * divergence(p))``."""
    out = np.zeros_like(px)
    out[:, 0] = px[:, 0]
    out[:, 1:-1] = px[:, 1:-1] - px[:, :-2]
    out[:, -1] = -px[:, -2]
    out[0] += py[0]
    out[1:-1] += py[1:-1] - py[:-2]
    out[-1] -= py[-2]
    return out


def as_unit_float32(image: np.ndarray) -> np.ndarray:
    """Intensities as float32 in [0, 1]: uint8/uint16 scaled by the dtype's maximum, floats clipped."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {image.shape}")
    if image.dtype == np.uint8 or image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(1.0 / np.iinfo(image.dtype).max)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)
    raise ValueError(f"expected a uint8, uint16 or float image, got dtype {image.dtype}")


def _solve(f: np.ndarray, weight: float, k: float, sigma: float, iterations: int, omega_every: int,
           tau: float = INITIAL_PRIMAL_STEP, gamma: float = STRONG_CONVEXITY) -> np.ndarray:
    """Chambolle-Pock iterations from u = f, p = 0; ``f`` must be positive."""
    # one block for all buffers: fewer allocations, which cost as much as a few iterations at 331 x 331
    workspace = np.empty((10,) + f.shape, np.float32)
    u, u_previous, u_bar, px, py, scale, v, root, inverse_bound, spare = workspace
    np.copyto(u, f)
    np.copyto(u_bar, f)
    px.fill(0.0)   # the last column of px and last row of py stay 0 (Neumann boundary)
    py.fill(0.0)

    sigma_dual = 1.0 / (_GRADIENT_NORM_SQUARED * tau)
    for iteration in range(iterations):
        if iteration % omega_every == 0:
            # scale and root are free here; spare is only ever scratch
            _inverse_bound_into(inverse_bound, u, weight, k, sigma, scale, root, spare)
        _dual_step(px, py, u_bar, sigma_dual, inverse_bound, scale, root)
        u, u_previous = u_previous, u
        _primal_step(u, u_previous, px, py, f, tau, v, root)

        # step-size update (algorithm 2) and over-relaxation u_bar = u + theta (u - u_previous)
        theta = 1.0 / np.sqrt(1.0 + 2.0 * gamma * tau)
        tau *= theta
        sigma_dual /= theta
        cv2.addWeighted(u, 1.0 + theta, u_previous, -theta, 0.0, dst=u_bar)
    return u.copy()  # not a view that would keep the whole workspace alive


def _inverse_bound_into(inverse_bound, u, weight, k, sigma, gx, gy, spare) -> None:
    """1 / (weight * omega(u)), the reciprocal of the dual variable's bound; ``gx``, ``gy``, ``spare`` are scratch."""
    if k > 0:
        gx[:, -1] = 0.0   # the gradient leaves the last column / row alone: they must be 0
        gy[-1] = 0.0
        _edge_weight_into(u, k, sigma, spare, gx, gy)
        cv2.divide(1.0 / weight, gx, dst=inverse_bound)
    else:
        inverse_bound.fill(1.0 / weight)


def _dual_step(px, py, u_bar, sigma_dual, inverse_bound, scale, spare) -> None:
    """Dual ascent p += sigma grad(u_bar), then projection onto |p| <= weight * omega, in place."""
    cv2.addWeighted(u_bar[:, 1:], sigma_dual, u_bar[:, :-1], -sigma_dual, 0.0, dst=scale[:, :-1])
    cv2.add(px[:, :-1], scale[:, :-1], dst=px[:, :-1])
    cv2.addWeighted(u_bar[1:], sigma_dual, u_bar[:-1], -sigma_dual, 0.0, dst=spare[:-1])
    cv2.add(py[:-1], spare[:-1], dst=py[:-1])
    cv2.magnitude(px, py, magnitude=scale)
    cv2.multiply(scale, inverse_bound, dst=scale)
    cv2.max(scale, 1.0, dst=scale)
    cv2.divide(px, scale, dst=px)
    cv2.divide(py, scale, dst=py)


def _primal_step(u, u_previous, px, py, f, tau, v, root) -> None:
    """Primal descent v = u_previous + tau (div p - 1), then the Poisson proximal step into ``u``:
    u = ((v - tau) + sqrt((v - tau)^2 + 4 tau f)) / 2, with the "- tau" folded into v."""
    v[:, 0] = px[:, 0]
    cv2.subtract(px[:, 1:], px[:, :-1], dst=v[:, 1:])
    root[0] = py[0]
    cv2.subtract(py[1:], py[:-1], dst=root[1:])
    cv2.add(v, root, dst=v)
    cv2.addWeighted(v, tau, u_previous, 1.0, -tau, dst=v)
    cv2.multiply(v, v, dst=root)
    cv2.scaleAdd(f, 4.0 * tau, root, dst=root)
    cv2.sqrt(root, dst=root)
    cv2.addWeighted(v, 0.5, root, 0.5, 0.0, dst=u)
