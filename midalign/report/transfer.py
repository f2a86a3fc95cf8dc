"""Statistics of a multilingual transfer experiment: few seeds, many items shared by all
languages (a multiway-parallel test set such as SIB-200), each answer right (1) or wrong (0).

A system is compared with a reference system (SFT) paired by seed. Per seed s and item i,

    d[s, i] = mean over languages of (system − reference correct)          (:func:`differences`)

and the table of d is a crossed two-way design with random seeds and random items,

    d[s, i] = μ + a_s + b_i + e_si,   a ~ N(0, σ²_seed), b ~ N(0, σ²_item), e ~ N(0, σ²_res),

fitted by REML with statsmodels' ``MixedLM`` (:func:`variance_components`). Averaging over
languages first is what clusters the answers by sentence id: the answers in different languages
to one sentence share b_i, so they are not counted as independent items. For a complete
(balanced) table μ̂ is the plain mean of d and

    Var(μ̂) = σ²_seed / S + σ²_item / I + σ²_res / (S·I),

whose seed term does not shrink with more items: with 3–5 seeds it often dominates, and the
test statistic has few degrees of freedom (:func:`paired_effect`, :func:`satterthwaite_df`).
:func:`plan_mde` and :func:`seeds_for_mde` turn a pilot's components into a design;
:func:`transfer_sd` and :func:`correlation` summarise per-language results;
:func:`two_way_bootstrap` is a model-free check of the interval.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import sparse, stats
from statsmodels.regression.mixed_linear_model import MixedLM, VCSpec

# A REML component below this fraction of σ²_res is the optimizer's rendering of 0 (the
# boundary): it is reported as exactly 0, so that the df rule below sees the boundary.
BOUNDARY = 1e-8


def differences(
    records: Iterable[dict], system: str, reference: str, langs: Sequence[str]
) -> dict[tuple[int, str], float]:
    """(seed, item) -> mean over ``langs`` of (``system`` − ``reference``) correct.

    The seeds and items are those either system has in ``langs``; every (seed, lang, item)
    cell must be present for both, once: a comparison over a different set of cells per
    system would not be paired, and the SE and df of :func:`paired_effect` assume the
    complete table. A missing or repeated cell raises ValueError naming it; filter the
    records first to compare on fewer seeds or items.
    """
    if not langs:
        raise ValueError("differences: no languages given")
    wanted = set(langs)
    cells: dict[tuple[str, int, str, str], float] = {}
    for r in records:
        if r["system"] not in (system, reference) or r["lang"] not in wanted:
            continue
        key = (r["system"], r["seed"], r["lang"], r["item"])
        if key in cells:
            raise ValueError(
                f"differences: two records for system {key[0]!r} seed {key[1]} "
                f"lang {key[2]!r} item {key[3]!r}"
            )
        cells[key] = float(r["correct"])
    seeds = sorted({k[1] for k in cells})
    items = sorted({k[3] for k in cells})
    if not seeds:
        raise ValueError(f"differences: no records of {system!r} or {reference!r} in {langs}")
    missing = [
        (name, seed, lang, item)
        for name in (system, reference)
        for seed in seeds
        for lang in langs
        for item in items
        if (name, seed, lang, item) not in cells
    ]
    if missing:
        shown = "; ".join(
            f"system {n!r} seed {s} lang {lang!r} item {i!r}" for n, s, lang, i in missing[:5]
        )
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"differences: {len(missing)} cells missing: {shown}{more}")
    return {
        (seed, item): sum(
            cells[system, seed, lang, item] - cells[reference, seed, lang, item] for lang in langs
        )
        / len(langs)
        for seed in seeds
        for item in items
    }


def _table(diffs: dict[tuple[int, str], float]) -> np.ndarray:
    """The complete seed × item table of ``diffs``, [S, I], seeds and items sorted."""
    seeds = sorted({s for s, _ in diffs})
    items = sorted({i for _, i in diffs})
    absent = [(s, i) for s in seeds for i in items if (s, i) not in diffs]
    if absent:
        raise ValueError(
            f"{len(absent)} (seed, item) cells absent from the differences, e.g. {absent[0]}: "
            "the table must be complete"
        )
    return np.array([[diffs[s, i] for i in items] for s in seeds])


def _mean_squares(d: np.ndarray) -> tuple[float, float, float]:
    """MS_seed, MS_item, MS_res of the two-way table d [S, I] (no interaction, one obs per
    cell): only the method-of-moments start of the REML fit."""
    S, I = d.shape
    m, row, col = d.mean(), d.mean(1), d.mean(0)
    resid = d - row[:, None] - col[None, :] + m
    return (
        I * float(((row - m) ** 2).sum()) / (S - 1),
        S * float(((col - m) ** 2).sum()) / (I - 1),
        float((resid**2).sum()) / ((S - 1) * (I - 1)),
    )


def variance_components(diffs: dict[tuple[int, str], float]) -> dict:
    """REML fit of d[seed, item] = μ + a_seed + b_item + e with crossed random effects.

    One ``MixedLM`` group holds all rows; seed and item are variance components with sparse
    indicator designs (``VCSpec``), so the Woodbury solve is over S + I random effects. The
    optimizer starts at the method-of-moments (two-way ANOVA) estimates, floored at a small
    positive value: for a complete table that is already the REML optimum when all three are
    positive, and statsmodels' BFGS only confirms it (a gradient evaluation costs ~1 s at
    5 × 1000, so a cold start takes tens of seconds). A component REML puts at the boundary is
    reported as 0 and listed in ``boundary``.

    ``se`` is sqrt(σ²_seed/S + σ²_item/I + σ²_res/(S·I)) at the REML components, the exact
    variance of the mean for a complete table; it is what :func:`paired_effect` uses.
    ``se_mixedlm`` is statsmodels' ``bse_fe`` from the inverse Hessian, (X'V⁻¹X)^-1/2, which
    equals it up to the optimizer's tolerance (NaN if the Hessian is singular).
    """
    d = _table(diffs)  # [S, I]
    S, I = d.shape
    if S < 2 or I < 2:
        raise ValueError(f"variance components need ≥ 2 seeds and ≥ 2 items, got {S} × {I}")
    ms_seed, ms_item, ms_res = _mean_squares(d)
    if ms_res == 0:
        raise ValueError(
            "the differences are exactly additive in seed and item (no residual variation): "
            "the mixed model is degenerate"
        )
    n = S * I
    rows = np.arange(n)
    seed_of, item_of = np.repeat(np.arange(S), I), np.tile(np.arange(I), S)
    z_seed = sparse.csr_array((np.ones(n), (rows, seed_of)), shape=(n, S))
    z_item = sparse.csr_array((np.ones(n), (rows, item_of)), shape=(n, I))
    vc = VCSpec(
        ["seed", "item"],
        [[[f"seed{s}" for s in range(S)]], [[f"item{i}" for i in range(I)]]],
        [[z_seed], [z_item]],
    )
    model = MixedLM(d.ravel(), np.ones((n, 1)), groups=np.zeros(n), exog_vc=vc)
    # packed, unprofiled parameters: sqrt(σ²_k / σ²_res), in the order of vc.names
    start = np.sqrt(
        np.maximum([(ms_seed - ms_res) / I / ms_res, (ms_item - ms_res) / S / ms_res], 1e-4)
    )
    with warnings.catch_warnings():
        # statsmodels flags any component below 0.01 in absolute terms, which every
        # proportion-scale seed variance is; the boundary is judged below, relative to σ²_res
        warnings.filterwarnings("ignore", message="The MLE may be on the boundary")
        warnings.filterwarnings("ignore", message="The Hessian matrix at the estimated")
        fit = model.fit(reml=True, method=METHOD, start_params=start, **KW)
    if not fit.converged:
        raise RuntimeError(f"MixedLM REML did not converge on the {S} × {I} differences")
    var = dict(zip(model.exog_vc.names, (float(v) for v in fit.vcomp), strict=True))
    var["residual"] = float(fit.scale)
    boundary = [k for k in ("seed", "item") if var[k] < BOUNDARY * var["residual"]]
    for k in boundary:
        var[k] = 0.0
    return {
        "mean": float(fit.fe_params[0]),
        "se": _se(var["seed"], var["item"], var["residual"], S, I),
        "se_mixedlm": float(fit.bse_fe[0]),
        "var_seed": var["seed"],
        "var_item": var["item"],
        "var_residual": var["residual"],
        "boundary": boundary,
        "seeds": S,
        "items": I,
    }


def _se(var_seed: float, var_item: float, var_res: float, seeds: int, items: int) -> float:
    return math.sqrt(var_seed / seeds + var_item / items + var_res / (seeds * items))


def satterthwaite_df(components: dict, seeds: int, items: int) -> float:
    """Satterthwaite degrees of freedom of Var(μ̂) for a complete S × I table.

    S·I·Var(μ̂) = I σ²_seed + S σ²_item + σ²_res = M_seed + M_item − M_res, the expected mean
    squares M_seed = σ²_res + I σ²_seed (df S − 1), M_item = σ²_res + S σ²_item (df I − 1),
    M_res = σ²_res (df (S−1)(I−1)); so

        df = (M_seed + M_item − M_res)² / (M_seed²/(S−1) + M_item²/(I−1) + M_res²/((S−1)(I−1))).

    It runs from S − 1, when the seed term dominates, to I − 1, when the item term does: with
    3 seeds and a visible seed variance that is 2–4, and the t quantile is 4.3–2.8 rather
    than 1.96. A component at 0 (the REML boundary) means REML pooled its mean square with
    the residual one; the two then cancel in the sum and are left out: seed at 0 gives
    S·I·Var = M_item (df I − 1), item at 0 gives M_seed (df S − 1), both give the pooled
    total (df S·I − 1). For the REML components of a complete table these are the mean
    squares of the data, so the df is the classical one for that design.
    """
    S, I = seeds, items
    v_seed, v_item, v_res = (
        components["var_seed"],
        components["var_item"],
        components["var_residual"],
    )
    df_seed, df_item, df_res = S - 1, I - 1, (S - 1) * (I - 1)
    if v_seed == 0 and v_item == 0:
        return float(S * I - 1)
    if v_seed == 0:
        return float(df_item)
    if v_item == 0:
        return float(df_seed)
    m_seed, m_item, m_res = v_res + I * v_seed, v_res + S * v_item, v_res
    total = m_seed + m_item - m_res
    return total**2 / (m_seed**2 / df_seed + m_item**2 / df_item + m_res**2 / df_res)


def _mde(se: float, df: float, alpha: float, power: float) -> float:
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def paired_effect(
    records: Iterable[dict],
    system: str,
    reference: str,
    langs: Sequence[str],
    alpha: float = 0.05,
    power: float = 0.8,
) -> dict:
    """The mean paired difference (a proportion, ×1) of ``system`` over ``reference`` on
    ``langs``, with its (1 − α) CI, two-sided p-value and minimum detectable effect.

    SE from the REML components (:func:`variance_components`); the t reference distribution
    has the Satterthwaite df of :func:`satterthwaite_df`, not a normal: with S seeds and a
    seed variance that matters the honest df is near S − 1, and a z interval from 3 seeds
    would cover far less than 95 %. MDE = (t_{1−α/2, df} + t_{power, df}) × SE: the true
    difference a two-sided level-α test detects with probability ``power``. The df treats
    the estimated components as the truth; when REML puts the seed variance at 0 the df
    jumps to I − 1, which is optimistic if that 0 comes from 3 seeds (read ``boundary``).
    """
    diffs = differences(records, system, reference, langs)
    comp = variance_components(diffs)
    S, I = comp["seeds"], comp["items"]
    estimate, se = comp["mean"], comp["se"]
    df = satterthwaite_df(comp, S, I)
    if se == 0:
        ci, p = (estimate, estimate), math.nan
    else:
        half = float(stats.t.ppf(1 - alpha / 2, df)) * se
        ci = (estimate - half, estimate + half)
        p = float(2 * stats.t.sf(abs(estimate) / se, df))
    return {
        "system": system,
        "reference": reference,
        "estimate": estimate,
        "se": se,
        "df": df,
        "ci": ci,
        "p": p,
        "mde": _mde(se, df, alpha, power),
        "alpha": alpha,
        "power": power,
        "seeds": S,
        "items": I,
        "languages": len(langs),
        "components": comp,
    }


def plan_mde(
    components: dict, seeds: int, items: int, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The MDE of a complete design with ``seeds`` seeds and ``items`` items, taking a pilot's
    variance components (:func:`variance_components`, or ``paired_effect(...)["components"]``)
    as the truth; with the pilot's own S and I it is the pilot's MDE."""
    if seeds < 2 or items < 2:
        raise ValueError(f"a design needs ≥ 2 seeds and ≥ 2 items, got {seeds} × {items}")
    se = _se(
        components["var_seed"], components["var_item"], components["var_residual"], seeds, items
    )
    return _mde(se, satterthwaite_df(components, seeds, items), alpha, power)


def seeds_for_mde(
    components: dict,
    items: int,
    target: float,
    alpha: float = 0.05,
    power: float = 0.8,
    max_seeds: int = 50,
) -> int | None:
    """The smallest number of seeds (2 .. ``max_seeds``) whose :func:`plan_mde` with ``items``
    items is ≤ ``target``; None if none is. More items cannot buy what the seed term costs:
    the MDE stays above (t + t)·σ_seed/√S however many items there are."""
    for seeds in range(2, max_seeds + 1):
        if plan_mde(components, seeds, items, alpha, power) <= target:
            return seeds
    return None


def transfer_sd(per_language_diff: dict[str, float]) -> float:
    """The standard deviation (ddof = 1) over languages of per-language changes: how unevenly
    a method's gain transfers (the paper's Table 3 "transfer SD")."""
    values = list(per_language_diff.values())
    if len(values) < 2:
        raise ValueError(f"transfer SD needs ≥ 2 languages, got {len(values)}")
    return float(np.std(values, ddof=1))


def correlation(x: dict[str, float], y: dict[str, float], seed: int = 0) -> dict:
    """Pearson r over the languages in both ``x`` and ``y`` with two 95 % CIs: Fisher's z,
    tanh(atanh r ± z_0.975/√(n−3)) (None below 4 languages), and a percentile bootstrap
    over languages (pairs resampled together, 9999 resamples, ``seed``d). With a dozen
    languages the two can differ a lot; neither is exact."""
    langs = [g for g in x if g in y]
    n = len(langs)
    if n < 3:
        raise ValueError(f"a correlation needs ≥ 3 common languages, got {n}")
    a, b = np.array([x[g] for g in langs]), np.array([y[g] for g in langs])
    result = stats.pearsonr(a, b)
    fisher = None
    if n >= 4:
        ci = result.confidence_interval(0.95)
        fisher = (float(ci.low), float(ci.high))
    with np.errstate(invalid="ignore", divide="ignore"):  # resamples of one repeated language
        boot = stats.bootstrap(
            (a, b),
            lambda u, v, axis: stats.pearsonr(u, v, axis=axis).statistic,
            paired=True,
            vectorized=True,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    return {
        "r": float(result.statistic),
        "n": n,
        "languages": langs,
        "fisher_ci": fisher,
        "bootstrap_ci": (float(boot.confidence_interval.low), float(boot.confidence_interval.high)),
    }


def two_way_bootstrap(
    diffs: dict[tuple[int, str], float], n_boot: int = 2000, seed: int = 0
) -> dict:
    """Percentile 95 % CI of the mean difference by the crossed ("pigeonhole") bootstrap of
    Owen (2007): seeds and items are resampled with replacement independently, and the
    statistic is the mean of d over the S × I resampled cells.

    A model-free check of :func:`paired_effect`, and a poor one with few seeds: its variance
    is Σ r_s²/S² + Σ c_i²/I² + Σ e_si²/(S·I)² (r, c, e the seed, item and residual parts of
    the table), whose seed term is (S−1)/S of the usual estimate, and its percentiles are
    those of a normal, not of a t with S − 1 df: at S = 3 it under-covers badly.
    ``se`` is the standard deviation of the replicates.
    """
    d = _table(diffs)  # [S, I]
    S, I = d.shape
    rng = np.random.default_rng(seed)
    # how often each seed / item is drawn in each replicate, [n_boot, S] and [n_boot, I]:
    # the same as indexing with rng.integers, without materialising n_boot resampled tables
    seed_counts = rng.multinomial(S, np.full(S, 1 / S), size=n_boot)
    item_counts = rng.multinomial(I, np.full(I, 1 / I), size=n_boot)
    replicates = np.einsum("bs,si,bi->b", seed_counts, d, item_counts) / (S * I)
    low, high = np.quantile(replicates, [0.025, 0.975])
    return {
        "mean": float(d.mean()),
        "ci": (float(low), float(high)),
        "se": float(replicates.std(ddof=1)),
        "n_boot": n_boot,
        "seeds": S,
        "items": I,
    }
