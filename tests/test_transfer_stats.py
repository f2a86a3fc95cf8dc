"""midalign.report.transfer, checked by independent routes: hand-worked differences, the
classical two-way ANOVA that REML must equal on a complete table, Owen's variance of the
pigeonhole bootstrap, numpy's corrcoef and the Fisher formula, and the coverage of the CI on
simulated experiments with a true effect of 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from midalign.report.transfer import (
    correlation,
    differences,
    paired_effect,
    plan_mde,
    satterthwaite_df,
    seeds_for_mde,
    transfer_sd,
    two_way_bootstrap,
    variance_components,
)

Z975 = 1.959963984540054  # the normal 97.5 % quantile


def records_of(tables: dict[str, np.ndarray], langs: list[str]) -> list[dict]:
    """Records of system -> correct [S, L, I], seeds 0.., items i000.."""
    return [
        {"system": name, "seed": s, "lang": lang, "item": f"i{i:03d}", "correct": float(y[s, j, i])}
        for name, y in tables.items()
        for s in range(y.shape[0])
        for j, lang in enumerate(langs)
        for i in range(y.shape[2])
    ]


def diffs_of(d: np.ndarray) -> dict[tuple[int, str], float]:
    return {(s, f"i{i:03d}"): float(d[s, i]) for s in range(d.shape[0]) for i in range(d.shape[1])}


def anova(d: np.ndarray) -> tuple[float, float, float]:
    """MS_seed, MS_item, MS_res of a two-way table [S, I] without interaction, by explicit
    sums over cells (written apart from the module's vectorised version)."""
    S, I = d.shape  # noqa: E741
    grand = sum(sum(row) for row in d) / (S * I)
    seed_means = [sum(d[s]) / I for s in range(S)]
    item_means = [sum(d[s][i] for s in range(S)) / S for i in range(I)]
    ss_seed = sum(I * (m - grand) ** 2 for m in seed_means)
    ss_item = sum(S * (m - grand) ** 2 for m in item_means)
    ss_res = sum(
        (d[s][i] - seed_means[s] - item_means[i] + grand) ** 2 for s in range(S) for i in range(I)
    )
    return ss_seed / (S - 1), ss_item / (I - 1), ss_res / ((S - 1) * (I - 1))


def synthetic(S: int = 4, I: int = 30, seed_sd: float = 0.05) -> np.ndarray:  # noqa: E741
    """A seed × item table of differences with nonzero seed and item effects."""
    rng = np.random.default_rng(20261207)
    return (
        0.02
        + seed_sd * rng.normal(size=(S, 1))
        + 0.08 * rng.normal(size=(1, I))
        + 0.1 * rng.normal(size=(S, I))
    )


# ---------------------------------------------------------------------------- differences

HAND = {  # system -> seed -> lang -> item -> correct
    "SFT": {1: {"en": {"a": 1, "b": 0}, "fr": {"a": 0, "b": 1}},
            2: {"en": {"a": 1, "b": 1}, "fr": {"a": 0, "b": 0}}},
    "ALT": {1: {"en": {"a": 1, "b": 1}, "fr": {"a": 1, "b": 1}},
            2: {"en": {"a": 0, "b": 1}, "fr": {"a": 1, "b": 0}}},
}  # fmt: skip


def hand_records() -> list[dict]:
    out = [
        {"system": name, "seed": seed, "lang": lang, "item": item, "correct": float(c)}
        for name, by_seed in HAND.items()
        for seed, by_lang in by_seed.items()
        for lang, by_item in by_lang.items()
        for item, c in by_item.items()
    ]
    # ignored: another system, and a language outside the comparison
    out.append({"system": "base", "seed": 0, "lang": "en", "item": "a", "correct": 1.0})
    out.append({"system": "ALT", "seed": 1, "lang": "de", "item": "a", "correct": 0.0})
    return out


def test_differences_by_hand():
    # (seed 1, a): en 1−1 = 0, fr 1−0 = 1 -> 0.5;  (1, b): en 1−0 = 1, fr 1−1 = 0 -> 0.5
    # (seed 2, a): en 0−1 = −1, fr 1−0 = 1 -> 0;   (2, b): en 1−1 = 0, fr 0−0 = 0 -> 0
    got = differences(hand_records(), "ALT", "SFT", ["en", "fr"])
    assert got == {(1, "a"): 0.5, (1, "b"): 0.5, (2, "a"): 0.0, (2, "b"): 0.0}
    # one language: en only
    got = differences(hand_records(), "ALT", "SFT", ["en"])
    assert got == {(1, "a"): 0.0, (1, "b"): 1.0, (2, "a"): -1.0, (2, "b"): 0.0}


def test_a_missing_cell_is_named():
    recs = [
        r
        for r in hand_records()
        if (r["system"], r["seed"], r["lang"], r["item"]) != ("ALT", 2, "fr", "b")
    ]
    with pytest.raises(ValueError, match="1 cells missing: system 'ALT' seed 2 lang 'fr' item 'b'"):
        differences(recs, "ALT", "SFT", ["en", "fr"])
    # a seed the reference never ran is missing in every language and item
    extra = [dict(r, seed=3) for r in hand_records() if (r["system"], r["seed"]) == ("ALT", 1)]
    with pytest.raises(ValueError, match="4 cells missing: system 'SFT' seed 3 lang 'en' item 'a'"):
        differences(hand_records() + extra, "ALT", "SFT", ["en", "fr"])
    # a language neither system has
    with pytest.raises(ValueError, match="lang 'sw'"):
        differences(hand_records(), "ALT", "SFT", ["en", "sw"])
    with pytest.raises(ValueError, match="no records of 'XYZ'"):
        differences(hand_records(), "XYZ", "QQQ", ["en"])


def test_a_repeated_cell_is_an_error():
    recs = hand_records() + [{"system": "SFT", "seed": 1, "lang": "fr", "item": "a", "correct": 1}]
    with pytest.raises(ValueError, match="two records for system 'SFT' seed 1 lang 'fr' item 'a'"):
        differences(recs, "ALT", "SFT", ["en", "fr"])


def test_an_incomplete_table_is_refused():
    diffs = diffs_of(synthetic())
    del diffs[2, "i007"]
    with pytest.raises(ValueError, match=r"1 \(seed, item\) cells absent.*\(2, 'i007'\)"):
        variance_components(diffs)
    with pytest.raises(ValueError, match="absent"):
        two_way_bootstrap(diffs)
    with pytest.raises(ValueError, match="≥ 2 seeds"):
        variance_components({(0, "a"): 0.1, (0, "b"): 0.2})


# ------------------------------------------------------------------ variance components


def test_reml_equals_the_balanced_anova():
    d = synthetic()  # 4 seeds × 30 items
    S, I = d.shape  # noqa: E741
    ms_seed, ms_item, ms_res = anova(d)
    expected = {
        "var_seed": (ms_seed - ms_res) / I,
        "var_item": (ms_item - ms_res) / S,
        "var_residual": ms_res,
    }
    assert min(expected.values()) > 0  # inside the parameter space, where REML = ANOVA
    got = variance_components(diffs_of(d))
    # The fit starts at the moments, so this checks that they are where statsmodels' REML
    # gradient vanishes (BFGS, gtol 1e-8 on sqrt(σ²/σ²_res)): the wrong likelihood (ML) or a
    # wrong design moves the optimum by 4–20 %. Observed agreement is ~1e-15; 1e-6 leaves
    # room for another BLAS or statsmodels' optimizer taking a step inside its tolerance.
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    assert got["boundary"] == []
    assert (got["seeds"], got["items"]) == (S, I)
    # μ̂ (statsmodels' GLS) is the plain mean on a complete table
    assert abs(got["mean"] - d.mean()) < 1e-12
    # Var(μ̂) = σ²_s/S + σ²_i/I + σ²_r/(S·I) = (MS_seed + MS_item − MS_res)/(S·I)
    se = math.sqrt((ms_seed + ms_item - ms_res) / (S * I))
    assert got["se"] == pytest.approx(se, rel=1e-6)
    # statsmodels' inverse-Hessian SE is the same number
    assert got["se_statsmodels"] == pytest.approx(got["se"], rel=1e-6)
    # Satterthwaite on the observed mean squares
    df = (ms_seed + ms_item - ms_res) ** 2 / (
        ms_seed**2 / (S - 1) + ms_item**2 / (I - 1) + ms_res**2 / ((S - 1) * (I - 1))
    )
    assert satterthwaite_df(got, S, I) == pytest.approx(df, rel=1e-6)
    assert S - 1 < df < I - 1


def test_reml_at_the_boundary_pools_the_mean_squares():
    d = synthetic()
    S, I = d.shape  # noqa: E741
    _, _, ms_res = anova(d)
    df_seed, df_item, df_res = S - 1, I - 1, (S - 1) * (I - 1)

    # equal seed means: MS_seed = 0 < MS_res, so REML sets σ²_seed = 0 and the residual
    # variance pools the seed and residual sums of squares (one-way ANOVA over items)
    flat = d - d.mean(1, keepdims=True) + d.mean()
    _, ms_item, ms_res = anova(flat)
    pooled = (0 * df_seed + ms_res * df_res) / (df_seed + df_res)
    got = variance_components(diffs_of(flat))
    assert got["boundary"] == ["seed"] and got["var_seed"] == 0
    assert got["var_residual"] == pytest.approx(pooled, rel=1e-6)
    assert got["var_item"] == pytest.approx((ms_item - pooled) / S, rel=1e-6)
    assert abs(got["mean"] - flat.mean()) < 1e-12
    assert got["se_statsmodels"] == pytest.approx(got["se"], rel=1e-6)
    assert satterthwaite_df(got, S, I) == df_item  # S·I·Var(μ̂) = MS_item alone

    # equal item means: σ²_item = 0, the seed-only model
    flat = d - d.mean(0, keepdims=True) + d.mean()
    ms_seed, _, ms_res = anova(flat)
    pooled = ms_res * df_res / (df_item + df_res)
    got = variance_components(diffs_of(flat))
    assert got["boundary"] == ["item"] and got["var_item"] == 0
    assert got["var_residual"] == pytest.approx(pooled, rel=1e-6)
    assert got["var_seed"] == pytest.approx((ms_seed - pooled) / I, rel=1e-6)
    assert satterthwaite_df(got, S, I) == df_seed

    # both: i.i.d. differences, σ² = the ddof-1 variance of all S·I cells
    flat = d - d.mean(1, keepdims=True) - d.mean(0, keepdims=True) + 2 * d.mean()
    got = variance_components(diffs_of(flat))
    assert got["boundary"] == ["seed", "item"]
    assert got["var_residual"] == pytest.approx(flat.var(ddof=1), rel=1e-12)
    assert got["se"] == pytest.approx(math.sqrt(flat.var(ddof=1) / (S * I)), rel=1e-12)
    assert got["se_statsmodels"] == pytest.approx(got["se"], rel=1e-12)
    assert satterthwaite_df(got, S, I) == S * I - 1


def test_the_df_falls_to_seeds_minus_one_when_the_seed_term_dominates():
    d = synthetic(S=4, seed_sd=2.0)
    got = variance_components(diffs_of(d))
    assert 3 <= satterthwaite_df(got, 4, 30) < 3.05


def test_an_exactly_additive_table_is_refused():
    with pytest.raises(ValueError, match="exactly additive"):
        variance_components(diffs_of(np.full((3, 5), 0.25)))


# ------------------------------------------------------------------------ paired effect


def test_paired_effect_equals_the_anova_t_interval():
    d = synthetic()
    S, I = d.shape  # noqa: E741
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(S, 2, I))
    # system − reference is d + 0.1 in one language and d − 0.1 in the other: mean d
    shift = np.array([0.1, -0.1])[None, :, None]
    recs = records_of({"SFT": ref, "ALT": ref + d[:, None, :] + shift}, ["en", "fr"])
    got = paired_effect(recs, "ALT", "SFT", ["en", "fr"])
    assert abs(got["estimate"] - d.mean()) < 1e-12
    assert (got["seeds"], got["items"], got["languages"]) == (S, I, 2)
    ms_seed, ms_item, ms_res = anova(d)
    se = math.sqrt((ms_seed + ms_item - ms_res) / (S * I))
    df = (ms_seed + ms_item - ms_res) ** 2 / (
        ms_seed**2 / (S - 1) + ms_item**2 / (I - 1) + ms_res**2 / ((S - 1) * (I - 1))
    )
    half = stats.t.ppf(0.975, df) * se
    assert got["se"] == pytest.approx(se, rel=1e-6)
    assert got["df"] == pytest.approx(df, rel=1e-6)
    assert got["ci"] == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-6)
    assert got["p"] == pytest.approx(2 * stats.t.sf(abs(d.mean()) / se, df), rel=1e-6)
    assert got["mde"] == pytest.approx((stats.t.ppf(0.975, df) + stats.t.ppf(0.8, df)) * se)
    # the test and the interval agree: p < α exactly when 0 is outside the CI
    assert (got["p"] < 0.05) == (not got["ci"][0] <= 0 <= got["ci"][1])


def test_plan_mde_reproduces_the_pilot_and_shrinks_with_seeds():
    d = synthetic()
    S, I = d.shape  # noqa: E741
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(S, 1, I))
    recs = records_of({"SFT": ref, "ALT": ref + d[:, None, :]}, ["en"])
    pilot = paired_effect(recs, "ALT", "SFT", ["en"])
    comp = pilot["components"]
    assert abs(plan_mde(comp, S, I) - pilot["mde"]) < 1e-12
    mdes = [plan_mde(comp, s, I) for s in range(2, 21)]
    assert all(a > b for a, b in zip(mdes, mdes[1:], strict=False))
    # seeds_for_mde: the first S whose plan meets the target
    target = (plan_mde(comp, 6, I) + plan_mde(comp, 7, I)) / 2
    assert seeds_for_mde(comp, I, target) == 7
    assert seeds_for_mde(comp, I, plan_mde(comp, 6, I)) == 6
    assert seeds_for_mde(comp, I, 10.0) == 2
    # below what 50 seeds reach however many items: the seed term alone gives an MDE above
    # (z_0.975 + z_0.8)·σ_seed/√50 (t quantiles exceed z ones), z_0.975 + z_0.8 = 2.80
    floor = 2.8 * math.sqrt(comp["var_seed"] / 50)
    assert seeds_for_mde(comp, 10**6, floor) is None
    with pytest.raises(ValueError, match="≥ 2 seeds"):
        plan_mde(comp, 1, I)


def coverage(seeds: int, var: tuple[float, float, float], n_sets: int = 200) -> tuple[float, float]:
    """Share of ``n_sets`` simulated experiments (``seeds`` × 40 items × 2 languages, true
    effect 0; d components ``var`` = seed, item, residual) whose paired_effect CI covers 0,
    and the share for a normal interval estimate ± 1.96·SE.

    Scores are continuous (each system: sentence difficulty shared by both systems, a seed
    effect, an item effect of its own, noise), so the components of d are known:
    2 σ²_v, 2 σ²_w and 2 σ²_e / L."""
    rng = np.random.default_rng(0)
    items, langs = 40, ["en", "fr"]
    sv, sw = (math.sqrt(v / 2) for v in var[:2])
    se = math.sqrt(var[2] * len(langs) / 2)
    covered = covered_z = 0
    for _ in range(n_sets):
        difficulty = rng.normal(size=(1, len(langs), items))
        tables = {
            name: difficulty
            + rng.normal(0, sv, (seeds, 1, 1))
            + rng.normal(0, sw, (1, 1, items))
            + rng.normal(0, se, (seeds, len(langs), items))
            for name in ("SFT", "ALT")
        }
        got = paired_effect(records_of(tables, langs), "ALT", "SFT", langs)
        covered += got["ci"][0] <= 0 <= got["ci"][1]
        covered_z += abs(got["estimate"]) <= Z975 * got["se"]
    return covered / n_sets, covered_z / n_sets


def test_the_ci_covers_a_null_effect():
    # 5 seeds × 40 items, the three terms of Var(μ̂) of similar size (1.8, 2.5, 2 × 1e-4);
    # REML puts σ²_seed at 0 in ~30 % of the sets. 4000 sets put the coverage at 0.955, so
    # the count covered in 200 is Binomial(200, 0.955): below 176 (88 %) with probability
    # 4e-6, all 200 (above 99.5 %) with probability 1e-4. The fixed rng makes it one draw
    # (186 of 200 here). A normal quantile covers 0.915 here, inside the range too: the
    # three-seed test below is the one that tells the df choice apart.
    got, _ = coverage(5, (0.0009, 0.01, 0.04))
    assert 0.88 <= got <= 0.995


def test_with_three_seeds_a_normal_interval_is_too_optimistic():
    # the seed term dominates (σ²_seed/3 = 3.3e-3 against 2.5e-4 + 3.3e-4): the Satterthwaite
    # df is ~2.4 and the t interval covers 0.93 in 3000 sets (short of 0.95 because REML
    # puts σ²_seed at 0 in 11 % of them, where the df becomes 39); estimate ± 1.96 SE covers 0.84.
    # Binomial(200, ·): our count is below 176 with probability 0.25 %, the normal one
    # above 182 (91 %) with probability 0.2 %. This rng: 0.93 and 0.815.
    ours, normal = coverage(3, (0.01, 0.01, 0.04))
    assert ours >= 0.88
    assert normal <= 0.91


# ------------------------------------------------------------- per-language summaries


def test_transfer_sd_by_hand():
    # mean 7/3; deviations −4/3, −1/3, 5/3; Σ² = 42/9; / (3 − 1) = 7/3
    assert transfer_sd({"en": 1.0, "fr": 2.0, "sw": 4.0}) == pytest.approx(math.sqrt(7 / 3))
    with pytest.raises(ValueError, match="≥ 2 languages"):
        transfer_sd({"en": 1.0})


def test_correlation_perfectly_linear():
    x = {f"l{i}": float(i) for i in range(6)}
    got = correlation(x, {g: 3 * v - 1 for g, v in x.items()})
    assert got["r"] == pytest.approx(1.0, abs=1e-12)
    assert got["fisher_ci"] == pytest.approx((1.0, 1.0), abs=1e-12)
    assert got["bootstrap_ci"] == pytest.approx((1.0, 1.0), abs=1e-12)
    got = correlation(x, {g: -v for g, v in x.items()})
    assert got["r"] == pytest.approx(-1.0, abs=1e-12)


def test_correlation_four_points_by_hand():
    x = {"en": 1.0, "fr": 2.0, "de": 3.0, "sw": 4.0, "yo": 9.0}  # yo: only in x
    y = {"en": 1.0, "fr": 3.0, "de": 2.0, "sw": 5.0, "zu": 0.0}  # zu: only in y
    # dx = (−1.5, −.5, .5, 1.5), dy = (−1.75, .25, −.75, 2.25): Σdxdy = 5.5, Σdx² = 5,
    # Σdy² = 8.75, r = 5.5 / √43.75
    r = 5.5 / math.sqrt(43.75)
    got = correlation(x, y)
    assert (got["n"], got["languages"]) == (4, ["en", "fr", "de", "sw"])
    assert got["r"] == pytest.approx(r, abs=1e-12)
    assert got["r"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1, 3, 2, 5])[0, 1], abs=1e-12)
    z, half = math.atanh(r), Z975 / math.sqrt(4 - 3)
    assert got["fisher_ci"] == pytest.approx((math.tanh(z - half), math.tanh(z + half)), abs=1e-9)
    with pytest.raises(ValueError, match="≥ 3 common languages"):
        correlation({"en": 1, "fr": 2}, {"en": 1, "fr": 3})


def test_correlation_bootstrap_is_seeded_and_brackets_r():
    rng = np.random.default_rng(1)
    x = {f"l{i}": float(v) for i, v in enumerate(rng.normal(size=12))}
    y = {g: v + float(rng.normal()) for g, v in x.items()}
    a, b = correlation(x, y, seed=0), correlation(x, y, seed=0)
    assert a["bootstrap_ci"] == b["bootstrap_ci"]
    assert correlation(x, y, seed=1)["bootstrap_ci"] != a["bootstrap_ci"]
    low, high = a["bootstrap_ci"]
    assert -1 <= low < a["r"] < high <= 1
    # 12 languages: the Fisher interval is about ±0.4 wide in r around 0.6
    assert a["fisher_ci"][0] < a["r"] < a["fisher_ci"][1]


# ----------------------------------------------------------------- two-way bootstrap


def test_two_way_bootstrap_variance_is_owens():
    d = synthetic(S=5, I=60)
    S, I = d.shape  # noqa: E741
    got = two_way_bootstrap(diffs_of(d), n_boot=20000, seed=0)
    grand = d.mean()
    r = d.mean(1) - grand  # seed parts
    c = d.mean(0) - grand  # item parts
    e = d - grand - r[:, None] - c[None, :]
    expected = (r**2).sum() / S**2 + (c**2).sum() / I**2 + (e**2).sum() / (S * I) ** 2
    # the sample variance of 20000 replicates has relative sd √((κ−1)/20000) = 1 % (the
    # replicates' kurtosis κ is 3.0 here; over 60 rng seeds the ratio was 0.998 ± 0.011,
    # this one 0.977): 6 % is 5 sd
    assert got["se"] ** 2 == pytest.approx(expected, rel=0.06)
    assert got["mean"] == pytest.approx(grand, abs=1e-15)
    assert got["ci"][0] < grand < got["ci"][1]
    assert two_way_bootstrap(diffs_of(d), n_boot=500, seed=7) == two_way_bootstrap(
        diffs_of(d), n_boot=500, seed=7
    )


def test_two_way_bootstrap_is_narrower_than_the_t_interval_with_few_seeds():
    # 3 seeds, a seed term that dominates: the bootstrap's seed variance is (S−1)/S of the
    # usual one and its percentiles carry no t correction for 2 df (t_0.975,2 = 4.3)
    d = synthetic(S=3, seed_sd=0.3)
    boot = two_way_bootstrap(diffs_of(d), seed=0)
    comp = variance_components(diffs_of(d))
    t_half = stats.t.ppf(0.975, satterthwaite_df(comp, 3, 30)) * comp["se"]
    assert boot["ci"][1] - boot["ci"][0] < 0.6 * (2 * t_half)
