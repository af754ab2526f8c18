from __future__ import annotations

import numpy as np
import pytest

from cxrclf.data import synthetic
from cxrclf.preprocess import denoise_tv
from cxrclf.preprocess.tv import AUTO_MAX_WEIGHT, DARK_OFFSET, FIXED_WEIGHT, auto_weight, divergence, edge_weight, estimate_noise, gradient


def _psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((estimate.astype(np.float64) - truth) ** 2)))


def _noisy_phantoms(peak: float, size: int = 256, seed: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """(noiseless, Poisson-noisy) pairs, one per finding."""
    pairs = []
    for finding in synthetic.FINDINGS:
        rng = np.random.default_rng(seed)
        sample = synthetic.phantom(finding, rng, size=size, text=False)
        pairs.append((sample.noiseless, synthetic.add_poisson_noise(sample.noiseless, peak, rng)))
    return pairs


def _gradient_magnitude(image: np.ndarray) -> np.ndarray:
    gx, gy = gradient(image.astype(np.float64))
    return np.hypot(gx, gy)


@pytest.mark.parametrize(("peak", "min_gain_db"), [(50, 5.5), (100, 8.0), (400, 9.0)])
def test_denoising_raises_psnr_on_poisson_noise(peak, min_gain_db):
    # measured with the fixed weight 0.3 at 256 x 256: +6.5 / +9.0 / +10.1 dB at worst over the findings
    for noiseless, noisy in _noisy_phantoms(peak):
        gain = _psnr(denoise_tv(noisy, weight=FIXED_WEIGHT), noiseless) - _psnr(noisy, noiseless)
        assert gain >= min_gain_db, (peak, gain)


@pytest.mark.parametrize(("peak", "min_gain_db"), [(40, 12.0), (100, 10.5), (400, 8.5), (2000, 5.5)])
def test_the_automatic_weight_denoises_every_noise_level(peak, min_gain_db):
    # measured at 256 x 256, worst finding: +13.4 / +11.8 / +9.2 / +6.5 dB (the fixed 0.3: +5.7 at peak 40, +10.2 at 400, +5.6 at 2000)
    for noiseless, noisy in _noisy_phantoms(peak):
        gain = _psnr(denoise_tv(noisy), noiseless) - _psnr(noisy, noiseless)
        assert gain >= min_gain_db, (peak, gain)


def test_the_automatic_weight_rises_with_the_noise():
    noiseless = _noisy_phantoms(400)[0][0]
    weights = []
    for peak in (4000, 2000, 400, 100, 40, 10):
        noisy = synthetic.add_poisson_noise(noiseless, peak, np.random.default_rng(0))
        sigma = estimate_noise(noisy)
        weights.append(auto_weight(noisy))
        # sqrt(Poisson) has standard deviation 1 / (2 sqrt(peak)) at every intensity; the phantom's dark
        # background (few photons) and its edges bend the estimate a little
        assert sigma == pytest.approx(0.5 / np.sqrt(peak), rel=0.2), peak
    assert all(a < b for a, b in zip(weights, weights[1:])), weights
    assert 0 < weights[0] < 0.05 and weights[-1] <= AUTO_MAX_WEIGHT
    assert auto_weight(noiseless.round(2)) < weights[0]          # a clean image is barely touched
    assert auto_weight(np.full((32, 32), 0.5, np.float32)) == 0.0
    flat = np.full((64, 64), 0.5, np.float32)
    assert np.array_equal(denoise_tv(flat), flat)


def test_adaptive_weight_keeps_edges_sharper_than_plain_tv_of_equal_strength():
    """Same residual ||u - f||, so the same overall smoothing; the adaptive one keeps steeper edges."""
    pairs = _noisy_phantoms(400, seed=3)

    def residual(weight: float, k: float) -> float:
        return float(np.mean([np.sqrt(np.mean((denoise_tv(f, weight=weight, k=k) - f) ** 2)) for _, f in pairs]))

    target = residual(0.3, 100.0)
    low, high = 0.05, 0.6  # bisection on the plain weight: the residual grows with the weight
    for _ in range(16):
        middle = (low + high) / 2
        low, high = (middle, high) if residual(middle, 0.0) < target else (low, middle)
    plain_weight = (low + high) / 2
    assert residual(plain_weight, 0.0) == pytest.approx(target, rel=2e-3)
    assert plain_weight < 0.3  # at the same weight, plain TV smooths more

    adaptive_sharpness, plain_sharpness = [], []
    for noiseless, noisy in pairs:
        truth = _gradient_magnitude(noiseless)
        edges = truth >= np.quantile(truth, 0.95)  # the steepest 5% of the noiseless phantom
        adaptive_sharpness.append(_gradient_magnitude(denoise_tv(noisy, weight=0.3))[edges].mean() / truth[edges].mean())
        plain_sharpness.append(_gradient_magnitude(denoise_tv(noisy, weight=plain_weight, k=0.0))[edges].mean() / truth[edges].mean())
    # measured: 0.95-0.96 (adaptive) vs 0.93-0.94 (plain, weight 0.286) of the true edge gradient
    assert all(a > p + 0.01 for a, p in zip(adaptive_sharpness, plain_sharpness)), (adaptive_sharpness, plain_sharpness)
    assert np.mean(adaptive_sharpness) - np.mean(plain_sharpness) >= 0.015


def test_edge_weight_is_small_on_edges_and_one_on_flat_regions():
    image = np.zeros((64, 64), np.float32)
    image[:, 32:] = 1.0
    omega = edge_weight(image, k=100.0, sigma=1.5)
    assert omega.dtype == np.float32 and omega.shape == image.shape
    assert omega[:, :20].min() == pytest.approx(1.0, abs=1e-6)
    # a unit step blurred by sigma = 1.5 has slope 1 / (sqrt(2 pi) 1.5) = 0.266 per pixel at the step
    slope = 1.0 / (np.sqrt(2 * np.pi) * 1.5)
    assert omega[:, 31].max() == pytest.approx(1.0 / (1.0 + 100.0 * slope**2), abs=0.005)  # 0.124


def test_gradient_and_divergence_are_negative_adjoints():
    rng = np.random.default_rng(0)
    u = rng.random((23, 31))
    px, py = rng.random((2, 23, 31))
    px[:, -1] = 0.0
    py[-1] = 0.0
    gx, gy = gradient(u)
    assert np.sum(gx * px + gy * py) == pytest.approx(-np.sum(u * divergence(px, py)), rel=1e-12)


def _energy(u: np.ndarray, f: np.ndarray, weight: float) -> float:
    """Eq. 5 with omega = 1, in float64, with the solver's dark offset."""
    u = u.astype(np.float64) + DARK_OFFSET
    f = f.astype(np.float64) + DARK_OFFSET
    return float(np.sum(u - f * np.log(u)) + weight * np.sum(_gradient_magnitude(u)))


def test_long_runs_converge_to_the_minimiser_of_eq5():
    noiseless, noisy = _noisy_phantoms(200, size=96)[1]
    minimiser = denoise_tv(noisy, weight=0.1, k=0.0, iterations=400)
    longer = denoise_tv(noisy, weight=0.1, k=0.0, iterations=800)
    assert np.abs(minimiser - longer).max() < 2e-3
    energy = _energy(minimiser, noisy, 0.1)
    rng = np.random.default_rng(0)
    for candidate in (noisy, denoise_tv(noisy, weight=0.1, k=0.0, iterations=8), minimiser + 0.003 * rng.standard_normal(minimiser.shape)):
        assert energy < _energy(np.clip(candidate, 0, 1), noisy, 0.1)
    # and the default early stop is far from it on purpose: a different, smoother image
    assert np.sqrt(np.mean((denoise_tv(noisy, weight=FIXED_WEIGHT) - minimiser) ** 2)) > 0.005


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_any_input_dtype_gives_float32_in_unit_range(dtype):
    noiseless, noisy = _noisy_phantoms(100, size=64)[0]
    if dtype in (np.uint8, np.uint16):
        top = np.iinfo(dtype).max
        image = np.rint(noisy * top).astype(dtype)
        expected = denoise_tv(image.astype(np.float32) / np.float32(top))
    else:
        image = noisy.astype(dtype)
        expected = denoise_tv(noisy)
    out = denoise_tv(image)
    assert out.dtype == np.float32 and out.shape == (64, 64)
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_deterministic_and_input_untouched():
    _, noisy = _noisy_phantoms(100, size=64)[2]
    before = noisy.copy()
    first, second = denoise_tv(noisy), denoise_tv(noisy)
    assert np.array_equal(first, second)
    assert np.array_equal(noisy, before)


def test_zero_weight_returns_the_image_and_bad_arguments_say_what_was_expected():
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    assert np.array_equal(denoise_tv(image, weight=0.0), image)
    with pytest.raises(ValueError, match="2-D"):
        denoise_tv(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="k >= 0"):
        denoise_tv(image, k=-1.0)
    with pytest.raises(ValueError, match="dtype"):
        denoise_tv(np.zeros((8, 8), np.int32))
    with pytest.raises(ValueError, match="expected a weight >= 0 or 'auto'"):
        denoise_tv(image, weight="strong")
