"""The scaling analysis: known exponents recovered from noisy data, verdicts, uncertainty, flags,
crossovers; and a real CPU sweep whose memory verdicts must come out quadratic and linear."""
import numpy as np
import pytest
from helpers import FAST_FLAGS, synthetic_results
from typer.testing import CliRunner

from profiler.analysis.crossovers import crossovers
from profiler.analysis.curves import fit_curve
from profiler.analysis.fit import exponent_at, fit_polynomial, growth_verdict, local_slopes
from profiler.analysis.table import analyse
from profiler.cli import app
from profiler.results.schema import SeriesKey
from profiler.results.store import read_results

LENGTHS = np.array([50, 100, 200, 300, 400, 500, 600, 700, 800, 900], dtype=float)

def write_synthetic(path, **kwargs):
    synthetic_results(**kwargs).to_csv(path, index=False)
    return path


# --- the fit --------------------------------------------------------------------------------


def test_exact_polynomials_are_recovered_with_their_coefficients():
    y = 7.0 + 0.5 * LENGTHS + 0.003 * LENGTHS**2
    coefs = fit_polynomial(LENGTHS, y)
    np.testing.assert_allclose(coefs, [7.0, 0.5, 0.003, 0.0], rtol=1e-6, atol=1e-9)
    coefs = fit_polynomial(LENGTHS, 2e-6 * LENGTHS**3 + 4.0)
    np.testing.assert_allclose(coefs, [4.0, 0.0, 0.0, 2e-6], rtol=1e-6, atol=1e-9)


def test_coefficients_stay_non_negative_when_least_squares_would_go_negative():
    # A concave curve: plain least squares wants a negative L^2 term.
    y = 100 * np.sqrt(LENGTHS)
    coefs = fit_polynomial(LENGTHS, y)
    assert (coefs >= 0).all()
    assert growth_verdict(LENGTHS, y) == "linear"


@pytest.mark.parametrize(
    "curve, verdict",
    [
        (lambda L: 300 + 0 * L, "constant"),
        (lambda L: 1000 + 0.02 * L, "constant"),  # grows under 5% over the range
        (lambda L: 50 + 2 * L, "linear"),
        (lambda L: 3 * L, "linear"),
        (lambda L: 100 + 2 * L + 0.01 * L**2, "quadratic"),
        (lambda L: 0.5 * L**2, "quadratic"),
        (lambda L: 100 + L + 1e-5 * L**3, "cubic"),
        (lambda L: 2e-6 * L**3, "cubic"),
    ],
)
def test_known_growth_is_recovered_from_noisy_data(curve, verdict):
    rng = np.random.default_rng(1)
    for _ in range(10):
        noisy = curve(LENGTHS) * (1 + 0.02 * rng.standard_normal(len(LENGTHS)))
        assert growth_verdict(LENGTHS, noisy) == verdict


@pytest.mark.parametrize("power", [1.0, 2.0, 3.0])
def test_exponent_at_the_largest_length_is_the_power_of_a_pure_power_law(power):
    rng = np.random.default_rng(2)
    values = 0.7 * LENGTHS**power * (1 + 0.01 * rng.standard_normal(len(LENGTHS)))
    coefs = fit_polynomial(LENGTHS, values)
    assert exponent_at(coefs, LENGTHS.max()) == pytest.approx(power, abs=0.1)
    np.testing.assert_allclose(local_slopes(LENGTHS, values), power, atol=0.15)


def test_a_small_share_of_a_higher_power_does_not_change_the_verdict():
    # 5% of y at L=900 is quadratic: the verdict stays linear; at 40% it is quadratic.
    small = 1000 + 20 * LENGTHS + 0.05 * 20 * 900 / 0.95 / 900**2 * LENGTHS**2
    assert growth_verdict(LENGTHS, small) == "linear"
    large = 1000 + 20 * LENGTHS + 0.02 * LENGTHS**2
    assert growth_verdict(LENGTHS, large) == "quadratic"


def test_four_lengths_are_not_enough_to_claim_a_cubic():
    # One degree of freedom is kept beyond an exact fit: noise on four points must not read as L^3.
    cubic = 2e-6 * LENGTHS**3
    assert growth_verdict(LENGTHS[:4], cubic[:4]) == "quadratic"
    assert growth_verdict(LENGTHS[:5], cubic[:5]) == "cubic"


def test_growth_verdict_ignores_missing_values_and_needs_two_lengths():
    values = 4 * LENGTHS
    values[3] = np.nan
    assert growth_verdict(LENGTHS, values) == "linear"
    with pytest.raises(ValueError, match="two distinct lengths"):
        growth_verdict([50, 50], [1.0, 2.0])


# --- uncertainty and flags ------------------------------------------------------------------

KEY = SeriesKey("m", "none", "beauty", "train", 8, "cuda", "float32", "eager")


def _samples(means, spread, rng, reps=20):
    return {int(L): m * (1 + spread * rng.standard_normal(reps)) for L, m in zip(LENGTHS, means)}


def test_time_uncertainty_comes_from_the_raw_repetitions():
    rng = np.random.default_rng(3)
    means = 5 + 0.05 * LENGTHS + 1e-4 * LENGTHS**2  # slope at L=900: (45 + 2 * 81) / 131
    true_slope = (45 + 2 * 81) / 131
    quiet = _samples(means, 0.01, rng)
    noisy = _samples(means, 0.2, rng)
    fits = {}
    for name, samples in (("quiet", quiet), ("noisy", noisy)):
        medians = [np.median(samples[int(L)]) for L in LENGTHS]
        fits[name] = fit_curve(KEY, "attention", "time_median_ms", LENGTHS, medians, samples, n_boot=200)
    quiet_low, quiet_high = fits["quiet"].exponent_ci
    noisy_low, noisy_high = fits["noisy"].exponent_ci
    assert quiet_low - 0.03 <= true_slope <= quiet_high + 0.03
    assert noisy_high - noisy_low > 3 * (quiet_high - quiet_low)
    assert fits["quiet"].verdict == "quadratic" and fits["quiet"].verdict_support > 0.95


def test_deterministic_metrics_get_a_tight_interval_and_full_support():
    fit = fit_curve(KEY, "convolution", "tensor_footprint_mib", LENGTHS, 10 + 0.05 * LENGTHS)
    low, high = fit.exponent_ci
    assert high - low < 1e-6
    assert fit.verdict == "linear" and fit.verdict_support == 1.0
    assert fit.dominant_term == "c1·L"
    assert fit.shares[1] == pytest.approx(45 / 55)


def test_memory_that_falls_as_length_grows_is_flagged():
    values = 10 + 0.05 * LENGTHS
    values[2] = values[1] * 0.5
    fit = fit_curve(KEY, "convolution", "peak_allocated_mib", LENGTHS, values, n_boot=0)
    assert any("non-monotonic" in flag and "L=200" in flag for flag in fit.flags)


def test_time_flat_over_a_tenfold_range_is_flagged():
    values = 5.0 + 1e-5 * LENGTHS
    fit = fit_curve(KEY, "attention", "time_median_ms", LENGTHS, values, n_boot=0)
    assert any(flag.startswith("flat time") for flag in fit.flags)
    assert fit.verdict == "constant"


def test_time_on_the_overhead_floor_is_fitted_from_where_it_starts_to_grow():
    # A launch-bound step: 5 ms until L=200, then linear. The floor must not bend it quadratic.
    values = np.maximum(5.0, 0.025 * LENGTHS)
    fit = fit_curve(KEY, "convolution", "time_median_ms", LENGTHS, values, n_boot=0)
    assert fit.verdict == "linear"
    assert min(fit.lengths) == 200
    assert any("fitted from L=200" in flag for flag in fit.flags)


# --- crossovers and whole tables ------------------------------------------------------------


def test_crossover_is_where_the_fitted_curves_meet():
    attention = fit_curve(KEY, "attention", "tensor_footprint_mib", LENGTHS, 10 + 0.01 * LENGTHS**2, n_boot=0)
    convolution = fit_curve(KEY, "convolution", "tensor_footprint_mib", LENGTHS, 100 + LENGTHS, n_boot=0)
    found = crossovers(attention, convolution)
    assert len(found) == 1
    expected = (1 + np.sqrt(1 + 4 * 0.01 * 90)) / (2 * 0.01)  # 0.01 L^2 - L - 90 = 0
    assert found[0].length == pytest.approx(expected, rel=1e-6)
    assert found[0].rising_family == "attention" and found[0].cross_family


def test_no_crossover_outside_the_shared_range():
    short = fit_curve(KEY, "attention", "time_median_ms", LENGTHS[:3], 0.01 * LENGTHS[:3] ** 2, n_boot=0)
    other = fit_curve(KEY, "convolution", "time_median_ms", LENGTHS, 600 + 0 * LENGTHS, n_boot=0)
    assert crossovers(short, other) == []  # they would meet near L=245, past the first's last point


def test_a_table_with_oom_skipped_and_error_rows_is_analysed_from_its_ok_rows(tmp_path):
    frame = read_results(write_synthetic(tmp_path / "r.csv"))
    analysis = analyse(frame, n_boot=50)
    by_model = {s.key.model: s for s in analysis.series}
    assert by_model["cosrec"].oom_lengths == [400] and by_model["cosrec"].skipped_lengths == [600, 800]
    assert by_model["caser"].error_lengths == [100]
    assert list(by_model["caser"].ok["seq_len"]) == [50, 200, 400, 600, 800]
    assert analysis.fit("sasrec[naive]", "train", "tensor_footprint_mib").verdict == "quadratic"
    assert analysis.fit("convrec-light", "train", "tensor_footprint_mib").verdict == "linear"
    assert analysis.fit("cosrec", "train", "tensor_footprint_mib").verdict == "quadratic"
    assert analysis.fit("caser", "train", "time_median_ms").verdict == "cubic"
    assert analysis.fit("sasrec[naive]", "train", "time_median_ms").verdict == "quadratic"
    # Caser's cubic time overtakes SASRec's quadratic one where 1e-6 L^3 = 1 + 0.01 L + 1e-4 L^2.
    crossing = [c for c in analysis.crossovers if c.metric == "time_median_ms" and {c.rising, c.other} == {"caser", "sasrec[naive]"}]
    assert len(crossing) == 1 and crossing[0].rising == "caser"
    assert crossing[0].length == pytest.approx(184, abs=15)


# --- a real sweep on the CPU ----------------------------------------------------------------


def test_cpu_sweep_gives_quadratic_attention_and_linear_convolution_memory(tmp_path, monkeypatch):
    """SASRec with materialised attention holds (B, h, L, L) scores for backward: quadratic. The
    lightweight ConvRec's convolution has a fixed kernel: linear. The sweep also draws its figures."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results" / "cpu.csv"
    result = CliRunner().invoke(app, ["sweep", "--models", "sasrec,convrec-light", "--attention", "naive",
                                      "--mode", "train", "--lengths", "16,32,64,128", "--out", str(out), *FAST_FLAGS, "--plot"])
    assert result.exit_code == 0, result.output
    frame = read_results(out)
    assert set(frame["status"]) == {"ok"}
    analysis = analyse(frame, n_boot=50)
    assert analysis.fit("sasrec[naive]", "train", "tensor_footprint_mib").verdict == "quadratic"
    assert analysis.fit("convrec-light", "train", "tensor_footprint_mib").verdict == "linear"
    assert analysis.fit("sasrec[naive]", "train", "flops_per_step").verdict == "quadratic"
    assert analysis.fit("convrec-light", "train", "flops_per_step").verdict == "linear"
    drawn = sorted(p.name for p in (tmp_path / "results" / "cpu-plots").iterdir())  # beside the results
    assert "cpu-train-tensor_footprint_mib.png" in drawn and "cpu-train-time_median_ms.svg" in drawn
    assert not (tmp_path / "plots").exists()
