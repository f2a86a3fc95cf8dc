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
from statsmodels.regression.linear_model import OLS
from statsmodels.regression.mixed_linear_model import MixedLM, VCSpec
from statsmodels.tools.sm_exceptions import ConvergenceWarning

# a REML component below this fraction of σ²_res is taken for 0 (the boundary)
BOUNDARY = 1e-8
# random effects up to which MixedLM gets dense designs: its sparse path solves column by
# column, 10× slower at 5 seeds × 40 items, faster only beyond several hundred (5 × 1000: 3 s)
DENSE = 500


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


def _sums_of_squares(d: np.ndarray) -> dict[str, tuple[float, int]]:
    """term -> (sum of squares, df) of the two-way table d [S, I] without interaction, one
    observation per cell."""
    n_seeds, n_items = d.shape
    m, row, col = d.mean(), d.mean(1), d.mean(0)
    resid = d - row[:, None] - col[None, :] + m
    return {
        "seed": (n_items * float(((row - m) ** 2).sum()), n_seeds - 1),
        "item": (n_seeds * float(((col - m) ** 2).sum()), n_items - 1),
        "residual": (float((resid**2).sum()), (n_seeds - 1) * (n_items - 1)),
    }


def _moments(
    ss: dict[str, tuple[float, int]], keep: Sequence[str], per: dict[str, int]
) -> np.ndarray | None:
    """sqrt(σ²_k / σ²_res) for k in ``keep`` by the method of moments of the model without
    the other components (their sums of squares pooled into the residual); None if any
    σ²_k is ≤ 0. For a complete table this is the REML optimum of that model when it lies
    inside the parameter space, and that model has no REML optimum inside it otherwise."""
    pooled = [t for t in ss if t not in keep]
    res = sum(ss[t][0] for t in pooled) / sum(ss[t][1] for t in pooled)
    ratio = np.array([(ss[k][0] / ss[k][1] - res) / per[k] / res for k in keep])
    return np.sqrt(ratio) if np.all(ratio > 0) else None


def variance_components(diffs: dict[tuple[int, str], float]) -> dict:
    """REML fit of d[seed, item] = μ + a_seed + b_item + e with crossed random effects.

    One ``MixedLM`` group holds all rows; seed and item are variance components with
    indicator designs (``VCSpec``; sparse beyond ``DENSE`` columns), so the Woodbury solve is
    over S + I random effects.

    REML keeps every σ² ≥ 0, so its optimum lies inside one face of the parameter space:
    both components, seed only, item only, or neither. For a complete table the REML
    likelihood factorises over the mean squares, and inside a face its optimum is the
    method-of-moments (ANOVA) estimate with the left-out sums of squares pooled into the
    residual, if that is positive. So each face with positive moments is fitted by
    ``MixedLM`` started from them (BFGS then only confirms them; from a cold start a
    5 × 1000 fit takes tens of seconds, a gradient costing ~1 s). The full model wins if it
    qualifies, otherwise the face of highest REML likelihood, otherwise the i.i.d. model
    (statsmodels' OLS: σ² with ddof 1). Components left out are 0 and listed in ``boundary``.

    ``se`` is sqrt(σ²_seed/S + σ²_item/I + σ²_res/(S·I)) at the REML components, the
    standard error of the mean for a complete table; it is what :func:`paired_effect` uses.
    ``se_statsmodels`` is statsmodels' own standard error of μ̂ (MixedLM's inverse Hessian,
    whose μ block is (X'V⁻¹X)⁻¹); the two agree to rounding (see the tests).
    """
    d = _table(diffs)  # [S, I]
    n_seeds, n_items = d.shape
    if n_seeds < 2 or n_items < 2:
        raise ValueError(
            f"variance components need ≥ 2 seeds and ≥ 2 items, got {n_seeds} × {n_items}"
        )
    ss = _sums_of_squares(d)
    if ss["residual"][0] == 0:
        raise ValueError(
            "the differences are exactly additive in seed and item (all equal, say): with no "
            "residual variation the mixed model is degenerate"
        )
    n = n_seeds * n_items
    rows = np.arange(n)
    designs = {  # indicator matrices, [S·I, S] and [S·I, I], rows in seed-major order
        "seed": sparse.csr_array(
            (np.ones(n), (rows, np.repeat(np.arange(n_seeds), n_items))), shape=(n, n_seeds)
        ),
        "item": sparse.csr_array(
            (np.ones(n), (rows, np.tile(np.arange(n_items), n_seeds))), shape=(n, n_items)
        ),
    }
    if n_seeds + n_items <= DENSE:
        designs = {k: z.toarray() for k, z in designs.items()}
    per = {"seed": n_items, "item": n_seeds}  # observations per level
    y = d.ravel()
    fits = []
    for keep in (("seed", "item"), ("seed",), ("item",)):
        start = _moments(ss, keep, per)
        fit = None if start is None else _reml(y, {k: designs[k] for k in keep}, start)
        if fit is not None:
            fits.append(fit)
            if len(keep) == 2:
                break
    var = {"seed": 0.0, "item": 0.0}
    if fits:
        fit = max(fits, key=lambda f: f.llf)
        var.update(zip(fit.model.exog_vc.names, (float(v) for v in fit.vcomp), strict=True))
        mean = float(fit.fe_params[0])
    else:
        fit = OLS(y, np.ones((n, 1))).fit()
        mean = float(fit.params[0])
    var["residual"] = float(fit.scale)
    return {
        "mean": mean,
        "se": _se(var["seed"], var["item"], var["residual"], n_seeds, n_items),
        "se_statsmodels": float(fit.bse[0]),
        "var_seed": var["seed"],
        "var_item": var["item"],
        "var_residual": var["residual"],
        "boundary": [k for k in designs if var[k] == 0],
        "seeds": n_seeds,
        "items": n_items,
    }


def _reml(y: np.ndarray, designs: dict[str, np.ndarray | sparse.csr_array], start: np.ndarray):
    """statsmodels' REML fit of y = μ + Σ_k Z_k u_k + e, u_k ~ N(0, σ²_k I), with one group
    holding all rows, from ``start`` (sqrt(σ²_k / σ²_res)); None unless BFGS converged with
    every σ²_k above BOUNDARY σ²_res (and None where its Hessian is singular)."""
    n = len(y)
    vc = VCSpec(
        list(designs),
        [[[f"{k}{j}" for j in range(z.shape[1])]] for k, z in designs.items()],
        [[z] for z in designs.values()],
    )
    model = MixedLM(y, np.ones((n, 1)), groups=np.zeros(n), exog_vc=vc)
    with warnings.catch_warnings():
        # statsmodels warns of every component below 0.01 in absolute terms, as every
        # proportion-scale seed variance is; the boundary is judged here, relative to σ²_res
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            fit = model.fit(reml=True, method="bfgs", start_params=start, gtol=1e-8)
        except np.linalg.LinAlgError:  # a singular Hessian: tiny tables (2 seeds × 3 items)
            return None
    if not fit.converged or np.any(fit.vcomp < BOUNDARY * fit.scale):
        return None
    return fit


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
    v_seed, v_item, v_res = (components[k] for k in ("var_seed", "var_item", "var_residual"))
    df_seed, df_item, df_res = seeds - 1, items - 1, (seeds - 1) * (items - 1)
    if v_seed == 0 and v_item == 0:
        return float(seeds * items - 1)
    if v_seed == 0:
        return float(df_item)
    if v_item == 0:
        return float(df_seed)
    m_seed, m_item, m_res = v_res + items * v_seed, v_res + seeds * v_item, v_res
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
    estimate, se = comp["mean"], comp["se"]
    df = satterthwaite_df(comp, comp["seeds"], comp["items"])
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return {
        "system": system,
        "reference": reference,
        "estimate": estimate,
        "se": se,
        "df": df,
        "ci": (estimate - half, estimate + half),
        "p": float(2 * stats.t.sf(abs(estimate) / se, df)),
        "mde": _mde(se, df, alpha, power),
        "alpha": alpha,
        "power": power,
        "seeds": comp["seeds"],
        "items": comp["items"],
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
    over languages (``scipy.stats.bootstrap``, pairs resampled together, 9999 resamples,
    rng seeded by ``seed``). A resample that draws one language n times has no r; such
    resamples (a share n^(1−n): 1 in 7776 at 6 languages) are left out of the percentiles,
    where scipy would return NaN. With a dozen languages the two CIs can differ a lot;
    neither is exact."""
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        boot = stats.bootstrap(
            (a, b),
            lambda u, v, axis: stats.pearsonr(u, v, axis=axis).statistic,
            paired=True,
            vectorized=True,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = np.nanquantile(boot.bootstrap_distribution, [0.025, 0.975])
    return {
        "r": float(result.statistic),
        "n": n,
        "languages": langs,
        "fisher_ci": fisher,
        "bootstrap_ci": (float(low), float(high)),
    }


def two_way_bootstrap(
    diffs: dict[tuple[int, str], float], n_boot: int = 2000, seed: int = 0
) -> dict:
    """Percentile 95 % CI of the mean difference by the crossed ("pigeonhole") bootstrap of
    Owen (2007): seeds and items are resampled with replacement independently, and the
    statistic is the mean of d over the S × I resampled cells.

    A model-free check of :func:`paired_effect`, and a poor one with few seeds: its variance
    is Σ r_s²/S² + Σ c_i²/I² + Σ e_si²/(S·I)² (r, c, e the seed, item and residual parts of
    the table), whose seed term is (S−1)/S of the usual estimate, and its percentiles
    carry no small-sample correction for S − 1 df: at S = 3 it under-covers badly.
    ``se`` is the standard deviation of the replicates.
    """
    d = _table(diffs)  # [S, I]
    n_seeds, n_items = d.shape
    rng = np.random.default_rng(seed)
    # how often each seed / item is drawn in each replicate, [n_boot, S] and [n_boot, I]:
    # the same as indexing with rng.integers, without materialising n_boot resampled tables
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_boot)
    item_counts = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=n_boot)
    replicates = np.einsum("bs,si,bi->b", seed_counts, d, item_counts) / (n_seeds * n_items)
    low, high = np.quantile(replicates, [0.025, 0.975])
    return {
        "mean": float(d.mean()),
        "ci": (float(low), float(high)),
        "se": float(replicates.std(ddof=1)),
        "n_boot": n_boot,
        "seeds": n_seeds,
        "items": n_items,
    }
