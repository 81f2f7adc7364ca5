"""GeoCLIP's loss-versus-1 km question: does a lower loss buy fine accuracy, or only coarse accuracy?

Four views of it: rank correlations across trials (with bootstrap intervals, because a sweep
has few trials), "divergence epochs" within each trial (loss fell while acc_1km fell), Pareto
fronts of the conflicting objectives, and the gallery ceiling (a flat acc_1km may just be the
gallery having no point within 1 km of many validation images).

Comparisons across trials are made at one epoch (``analysis/budget.py``): the correlations at
each ASHA rung, within that rung's epoch only; the fronts and the ceiling at the budget's epoch.
"Fine" is the finest accuracy of the registry (acc_1km by default); without two accuracies, or
without a loss, a view has no rows.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from analysis import roles
from analysis.budget import Budget, rungs, trials_at
from analysis.load import Study
from analysis.tables import MIN_RUNS, levels
from geoloc.tuning import pareto as pareto_helpers

LOSSES = ("train_loss", "val_loss")
N_BOOT = 5000
SEED = 0  # fixed: the same study gives the same intervals every time


def strength(rho: float) -> str:
    """Conventional labels for |rho|, used in the report's sentences."""
    if pd.isna(rho):
        return "undefined"
    a = abs(rho)
    for bound, label in ((0.1, "negligible"), (0.3, "weak"), (0.5, "moderate"), (0.7, "strong")):
        if a < bound:
            return label
    return "very strong"


MIN_DEFINED_SHARE = 0.9


def spearman_ci(x: np.ndarray, y: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED, level: float = 0.95):
    """Spearman rho with a percentile bootstrap interval over trials (resampling pairs).

    Hand-made rather than scipy.stats.bootstrap: vectorised over resamples (milliseconds), and
    resamples where one side is constant (rho undefined) are dropped instead of poisoning the
    interval, which matters with the small n of a sweep; when more than 10% are undefined no
    interval is given.
    """
    n = len(x)
    if n < 3:
        return math.nan, math.nan, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: rho is NaN, which we report as such
        result = stats.spearmanr(x, y)
    rho, p = float(result.statistic), float(result.pvalue)
    if math.isnan(rho):
        return rho, p, math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    rx = stats.rankdata(x[idx], axis=1)
    ry = stats.rankdata(y[idx], axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    valid = den > 1e-12
    if valid.mean() < MIN_DEFINED_SHARE:
        # Most resamples have a constant side (e.g. acc_1km = 0 almost everywhere): an interval
        # over the rest would be conditional on that and can exclude rho itself; report none.
        return rho, p, math.nan, math.nan
    boot = np.clip((rx * ry).sum(axis=1)[valid] / den[valid], -1.0, 1.0)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return rho, p, float(lo), float(hi)


CORRELATION_COLUMNS = [
    "epoch",
    "loss",
    "metric",
    "n",
    "rho",
    "p_value",
    "ci_low",
    "ci_high",
    "excludes_zero",
    "strength",
]


def loss_vs_accuracy(study: Study, budget: Budget) -> pd.DataFrame:
    """One row per (epoch, loss, accuracy): n, rho, p, 95% interval, whether the interval excludes 0.

    Epochs: each ASHA rung the trials reached and the budget's epoch (``budget.rungs``); at each,
    the trials that reached it with their values there, so no correlation mixes budgets.
    """
    rows = []
    for epoch in rungs(study, budget):
        if epoch is None:
            continue
        trials = budget.trials if epoch == budget.epoch else trials_at(study, epoch)
        for loss in LOSSES:
            if loss not in study.metrics:
                continue
            for acc in study.accuracies:
                pair = trials[[loss, acc]].apply(pd.to_numeric, errors="coerce").dropna()
                x, y = pair.iloc[:, 0].to_numpy(float), pair.iloc[:, 1].to_numpy(float)
                rho, p, lo, hi = spearman_ci(x, y)
                rows.append(
                    {
                        "epoch": epoch,
                        "loss": loss,
                        "metric": acc,
                        "n": len(pair),
                        "rho": rho,
                        "p_value": p,
                        "ci_low": lo,
                        "ci_high": hi,
                        "excludes_zero": bool(lo > 0 or hi < 0) if not math.isnan(lo) else False,
                        "strength": strength(rho),
                    }
                )
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def quoted_epoch(corr: pd.DataFrame, budget: Budget):
    """The epoch whose correlations the summary quotes: the budget's own when computed there, else
    the highest rung where every correlation rests on at least MIN_RUNS trials (None if none)."""
    if budget.epoch in set(corr["epoch"]):
        return budget.epoch
    enough = corr.groupby("epoch")["n"].min()
    enough = enough[enough >= MIN_RUNS]
    return max(enough.index) if len(enough) else None


# --- within trials ---------------------------------------------------------------------------


def divergence(study: Study, fine: str | None = None) -> pd.DataFrame:
    """Per counted trial and loss: the epochs e > 1 where the loss fell versus e-1 while `fine` fell too.

    fine: an accuracy key (default: the finest threshold's).
    """
    fine = fine or (study.accuracies[0] if study.accuracies else None)
    used = study.counted()
    rows = []
    for loss in LOSSES:
        if loss not in study.metrics or fine not in study.metrics:
            continue
        for trial in used.itertuples():
            curve = study.epochs[study.epochs["trial_id"] == trial.trial_id].set_index("epoch").sort_index()
            lv = pd.to_numeric(curve[loss], errors="coerce")
            av = pd.to_numeric(curve[fine], errors="coerce")
            hits = [
                int(e)
                for e in curve.index
                if e > 1 and (e - 1) in curve.index and lv[e] < lv[e - 1] and av[e] < av[e - 1]
            ]
            rows.append(
                {
                    "number": trial.number,
                    "trial_id": trial.trial_id,
                    "loss": loss,
                    "epochs_run": len(curve),
                    "diverges": bool(hits),
                    "first_epoch": hits[0] if hits else pd.NA,
                    "divergence_epochs": ";".join(map(str, hits)),
                }
            )
    out = pd.DataFrame(
        rows, columns=["number", "trial_id", "loss", "epochs_run", "diverges", "first_epoch", "divergence_epochs"]
    )
    out["first_epoch"] = out["first_epoch"].astype("Int64")
    return out


def divergence_summary(study: Study, per_trial: pd.DataFrame, bins: int = 4) -> pd.DataFrame:
    """Share of trials with divergence epochs, overall, then split by the study's first factor
    (``roles.first_factor``), then by each other varied param.

    Only trials with at least two epochs can show it, so only they are counted in n.
    """
    first = roles.first_factor(study)
    split_by = ([first] if first else []) + [p for p in study.varied if p != first]
    able = per_trial[per_trial["epochs_run"] >= 2]
    used = study.counted().set_index("trial_id")
    rows = []

    def summarise(param, value, part):
        for loss, group in part.groupby("loss", sort=False):
            firsts = group["first_epoch"].dropna()
            rows.append(
                {
                    "param": param,
                    "value": value,
                    "loss": loss,
                    "n": len(group),
                    "n_diverging": int(group["diverges"].sum()),
                    "share": group["diverges"].mean() if len(group) else math.nan,
                    "first_epoch_min": int(firsts.min()) if len(firsts) else pd.NA,
                    "first_epoch_median": float(firsts.median()) if len(firsts) else math.nan,
                }
            )

    summarise("(all)", "(all)", able)
    for param in split_by:
        level, _ = levels(used[param], study.param_kinds.get(param, "categorical"), bins)
        label = able["trial_id"].map(level)
        for value in level.cat.categories:
            part = able[label == value]
            if len(part):
                summarise(param, value, part)
    out = pd.DataFrame(
        rows, columns=["param", "value", "loss", "n", "n_diverging", "share", "first_epoch_min", "first_epoch_median"]
    )
    out["first_epoch_min"] = out["first_epoch_min"].astype("Int64")
    return out


# --- Pareto fronts ---------------------------------------------------------------------------


def fronts(study: Study) -> dict[str, dict[str, str]]:
    """The fronts this study reports: {name: {metric: "max"|"min"}}; finest/coarsest accuracy by threshold."""
    accs = study.accuracies
    pairs = []
    if len(accs) >= 2:
        pairs.append((accs[0], accs[-1]))
    if accs and "val_loss" in study.metrics:
        pairs.append(("val_loss", accs[0]))
    return {f"{a}_vs_{b}": {m: study.registry.direction(m) for m in (a, b)} for a, b in pairs}


def pareto_mask(values: pd.DataFrame, objectives: dict[str, str]) -> np.ndarray:
    """True for rows no other row dominates (at least as good in every objective, better in one):
    ``geoloc.tuning.pareto.pareto_mask`` on the ``objectives`` columns, {metric: "max"|"min"}."""
    return pareto_helpers.pareto_mask(
        values[list(objectives)].to_numpy(float), [how == "max" for how in objectives.values()]
    )


def pareto(study: Study, trials: pd.DataFrame) -> pd.DataFrame:
    """Every trial on each front: front, number, trial_id, all fronts' objectives, score, the varied params.

    trials: one row per trial with a column per metric (the budget's trials).
    """
    all_fronts = fronts(study)
    shown = list(dict.fromkeys(m for objectives in all_fronts.values() for m in objectives))
    shown += ["score"] if "score" in study.metrics and "score" not in shown else []
    rows = []
    for name, objectives in all_fronts.items():
        part = trials.dropna(subset=list(objectives))
        if not len(part):
            continue
        on = part[pareto_mask(part[list(objectives)], objectives)]
        first = next(iter(objectives))
        on = on.sort_values(first, ascending=objectives[first] == "min")
        for trial in on.to_dict("records"):
            row = {"front": name, "number": trial["number"], "trial_id": trial["trial_id"]}
            row.update({m: trial[m] for m in shown})
            row.update({p: trial[p] for p in study.varied})
            rows.append(row)
    return pd.DataFrame(rows, columns=["front", "number", "trial_id", *shown, *study.varied])


# --- gallery ceiling -------------------------------------------------------------------------

CEILING_COLUMNS = [
    "threshold_km",
    "metric",
    "ceiling",
    "ceiling_varies",
    "mean_acc",
    "best_acc",
    "best_share_of_ceiling",
]


def ceiling(study: Study, trials: pd.DataFrame) -> pd.DataFrame:
    """Per threshold: the gallery's ceiling beside the mean and best accuracy reached by ``trials``
    (one row per trial, a column per metric: the budget's trials)."""
    rows = []
    for acc in study.accuracies:
        t = study.registry.get(acc).threshold_km
        ceil_key = next((c for c in study.ceilings if study.registry.get(c).threshold_km == t), None)
        accs = pd.to_numeric(trials[acc], errors="coerce").dropna()
        ceil = pd.to_numeric(trials[ceil_key], errors="coerce").dropna() if ceil_key else pd.Series(dtype=float)
        c = ceil.mean() if len(ceil) else math.nan
        rows.append(
            {
                "threshold_km": t,
                "metric": acc,
                "ceiling": c,
                "ceiling_varies": bool(len(ceil) and ceil.max() - ceil.min() > 1e-9),
                "mean_acc": accs.mean() if len(accs) else math.nan,
                "best_acc": accs.max() if len(accs) else math.nan,
                "best_share_of_ceiling": accs.max() / c if len(accs) and c > 0 else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=CEILING_COLUMNS)
