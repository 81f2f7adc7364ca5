"""geoloc.tuning.pareto and the MOASHA scheduler against answers worked out by hand.

Every expected value below is derived in a comment from the planted numbers, not computed by the
code under test. The scheduler is driven through Ray Tune's interface with real ``Trial`` objects,
and once end to end by a real local Ray Tune run.
"""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from geoloc.tuning.moasha import MOASHAScheduler
from geoloc.tuning.pareto import (
    crowding_distance,
    hypervolume,
    hypervolume_history,
    nondominated_ranks,
    pareto_mask,
    promoted,
    promotion_order,
)

C, S = TrialScheduler.CONTINUE, TrialScheduler.STOP
MAX2 = [True, True]

# -- non-dominated ranks --------------------------------------------------------------------------

# Three nested fronts, maximising both objectives. Each front is a staircase (better in one objective,
# worse in the other); each point of front 1 is beaten in both by the front-0 point listed beside it,
# each point of front 2 by the front-1 point beside it.
FRONT0 = [(1, 5), (3, 4), (5, 1)]
FRONT1 = [(1, 4), (2, 3), (4, 1)]  # < (1, 5), (3, 4), (5, 1)
FRONT2 = [(0, 3), (1, 2), (3, 0)]  # < (1, 4), (2, 3), (4, 1)
NESTED = np.array([FRONT1[2], FRONT0[0], FRONT2[1], FRONT2[0], FRONT0[2], FRONT1[0], FRONT0[1], FRONT2[2], FRONT1[1]])
NESTED_RANKS = [1, 0, 2, 2, 0, 1, 0, 2, 1]


def test_ranks_of_three_nested_fronts():
    assert nondominated_ranks(NESTED, MAX2).tolist() == NESTED_RANKS
    assert pareto_mask(NESTED, MAX2).tolist() == [r == 0 for r in NESTED_RANKS]


def test_ranks_with_a_minimised_objective_are_those_of_the_negated_column():
    mixed = NESTED * [1, -1]
    assert nondominated_ranks(mixed, [True, False]).tolist() == NESTED_RANKS
    assert nondominated_ranks(-NESTED, [False, False]).tolist() == NESTED_RANKS
    # The same numbers maximised in both columns rank differently: minimising b turns the order over.
    assert nondominated_ranks(mixed, MAX2).tolist() != NESTED_RANKS


def test_duplicates_share_a_rank_and_nan_rows_come_last():
    points = [(1, 2), (1, 2), (2, 1), (0, 0), (np.nan, 9)]
    # (1, 2) twice and (2, 1): front 0 (a duplicate does not dominate its twin); (0, 0): front 1;
    # the NaN row: a front of its own behind them, never on the Pareto front.
    assert nondominated_ranks(points, MAX2).tolist() == [0, 0, 0, 1, 2]
    assert pareto_mask(points, MAX2).tolist() == [True, True, True, False, False]
    assert nondominated_ranks([(np.nan, 1.0)], MAX2).tolist() == [0]
    assert pareto_mask([(np.nan, 1.0)], MAX2).tolist() == [False]


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="2 objectives but maximise has 3"):
        nondominated_ranks([(1, 2)], [True, True, True])
    with pytest.raises(ValueError, match=r"\(n, m\) array"):
        nondominated_ranks([1, 2, 3], [True])
    with pytest.raises(ValueError, match="reference must be 2 numbers"):
        hypervolume([(1, 2)], MAX2, [0, 0, 0])
    with pytest.raises(ValueError, match="reduction_factor"):
        promoted([(1, 2)], MAX2, 1)


# -- crowding distance ----------------------------------------------------------------------------

# A 4-point front (maximise both): A (0, 10), B (2, 7), C (5, 4), D (10, 0). Both ranges are 10.
# By a: A 0, B 2, C 5, D 10 -> B: (5 - 0)/10 = 0.5, C: (10 - 2)/10 = 0.8.
# By b: D 0, C 4, B 7, A 10 -> B: (10 - 4)/10 = 0.6, C: (7 - 0)/10 = 0.7.
# A and D are the extremes: inf. B = 0.5 + 0.6 = 1.1, C = 0.8 + 0.7 = 1.5.
A, B, C_, D = (0, 10), (2, 7), (5, 4), (10, 0)


def test_crowding_distance_of_a_hand_computed_front():
    assert crowding_distance([C_, A, D, B], MAX2) == pytest.approx([1.5, math.inf, math.inf, 1.1])
    # The direction does not matter to a distance.
    assert crowding_distance([C_, A, D, B], [False, True]) == pytest.approx([1.5, math.inf, math.inf, 1.1])


def test_crowding_distance_small_sets_duplicates_and_nan():
    assert crowding_distance([A], MAX2).tolist() == [math.inf]
    assert crowding_distance([A, B], MAX2).tolist() == [math.inf, math.inf]
    # A duplicate adds no diversity: the first occurrence is measured as if alone, the copy gets 0.
    assert crowding_distance([C_, A, D, B, C_], MAX2) == pytest.approx([1.5, math.inf, math.inf, 1.1, 0])
    # [A, A, B] has two distinct points: both extremes; the copy and the NaN row get 0.
    assert crowding_distance([A, A, B, (np.nan, 1)], MAX2).tolist() == [math.inf, 0, math.inf, 0]


# -- promotion ------------------------------------------------------------------------------------


def test_promoted_keeps_exactly_the_lowest_fronts():
    # Fronts of sizes 2, 2, 4 (maximise both); with eta 2 ASHA keeps 1 + floor(7/2) = 4 of 8:
    # exactly fronts 0 and 1, whatever their crowding.
    front0 = [(2, 9), (9, 2)]
    front1 = [(1, 8), (8, 1)]  # each beaten by the front-0 point beside it
    front2 = [(0, 7), (3, 0.5), (5, 0.4), (7, 0)]  # staircase, each beaten by a front-1 point
    points = [front2[0], front0[0], front2[1], front1[0], front2[2], front0[1], front2[3], front1[1]]
    assert nondominated_ranks(points, MAX2).tolist() == [2, 0, 2, 1, 2, 0, 2, 1]
    assert promoted(points, MAX2, 2).tolist() == [False, True, False, True, False, True, False, True]


def test_promoted_splits_a_front_by_crowding_distance():
    # A 5-point front A, B, C, D, E = (1, 9) and a dominated F = (1, 1); eta 2 keeps 1 + floor(5/2) = 3.
    # Crowding within the front (ranges 10): by a: A 0, E 1, B 2, C 5, D 10; by b: D 0, C 4, B 7, E 9, A 10.
    # E: (2 - 0)/10 + (10 - 7)/10 = 0.5; B: (5 - 1)/10 + (9 - 4)/10 = 0.9; C: (10 - 2)/10 + (7 - 0)/10 = 1.5.
    # Kept: the extremes A and D (inf), then C (1.5). Order: A, D, C, B, E, F.
    E, F = (1, 9), (1, 1)
    points = [A, B, C_, D, E, F]
    assert promoted(points, MAX2, 2).tolist() == [True, False, True, True, False, False]
    assert promotion_order(points, MAX2).tolist() == [0, 3, 2, 1, 4, 5]


def test_promotion_ties_go_to_the_earlier_row():
    # Two distinct points are both extremes (inf): the earlier is first. A copy gets 0, so it goes behind.
    assert promotion_order([B, A], MAX2).tolist() == [0, 1]
    assert promotion_order([A, B, A], MAX2).tolist() == [0, 1, 2]
    assert promoted([(0.5,), (0.5,)], [True], 2).tolist() == [True, False]


@pytest.mark.parametrize("eta", [2, 2.5, 4])
def test_promoted_with_one_objective_is_rays_asha_cut(eta):
    # Ray's ASHA keeps a trial whose score is >= _Bracket.cutoff of the rung, the (1 - 1/eta)
    # percentile (the private class is used on purpose: the claim is about Ray's own cut).
    cut = _Bracket(min_t=1, max_t=8, reduction_factor=eta, s=0)
    rng = np.random.default_rng(0)
    for n in range(1, 13):
        scores = rng.permutation(n) / 10  # distinct
        rays = scores >= cut.cutoff({str(i): s for i, s in enumerate(scores)})
        ours = promoted(scores[:, None], [True], eta)
        assert ours.tolist() == rays.tolist(), n
        if eta == int(eta):
            assert ours.sum() == math.ceil(n / eta)
        # Minimising the negated scores is the same cut.
        assert promoted(-scores[:, None], [False], eta).tolist() == rays.tolist()


# -- hypervolume ----------------------------------------------------------------------------------

STAIRS = [(0.2, 0.9), (0.5, 0.6), (0.8, 0.3)]
# Reference (0, 0), maximise both: slices of width 0.2, 0.3, 0.3 under heights 0.9, 0.6, 0.3:
# 0.2*0.9 + (0.5-0.2)*0.6 + (0.8-0.5)*0.3 = 0.18 + 0.18 + 0.09 = 0.45.
STAIRS_HV = 0.45


def test_hypervolume_of_a_staircase():
    assert hypervolume(STAIRS, MAX2, (0, 0)) == pytest.approx(STAIRS_HV)
    # A dominated point, one on the reference's edge and one beyond it add nothing.
    more = [*STAIRS, (0.4, 0.5), (0.0, 0.95), (-0.1, 2.0), (np.nan, 5.0)]
    assert hypervolume(more, MAX2, (0, 0)) == pytest.approx(STAIRS_HV)
    assert hypervolume([(-0.1, 2.0)], MAX2, (0, 0)) == 0.0
    assert hypervolume([], MAX2, (0, 0)) == 0.0
    # b minimised with reference 1: the same staircase seen as 1 - b.
    mixed = [(a, 1 - b) for a, b in STAIRS]
    assert hypervolume(mixed, [True, False], (0, 1)) == pytest.approx(STAIRS_HV)
    # Moving the reference to (0.1, 0.2) trims every slice: 0.1*0.7 + 0.3*0.4 + 0.3*0.1 = 0.22.
    assert hypervolume(STAIRS, MAX2, (0.1, 0.2)) == pytest.approx(0.22)


def test_hypervolume_history_grows_to_the_whole_value():
    # (0.5, 0.6): 0.30; a dominated point: still 0.30; (0.2, 0.9) adds a 0.2 x 0.3 strip above: 0.36;
    # (0.8, 0.3) adds 0.3 x 0.3 to the right: 0.45; a point beyond the reference: still 0.45.
    order = [(0.5, 0.6), (0.3, 0.3), (0.2, 0.9), (0.8, 0.3), (-0.1, 2.0)]
    history = hypervolume_history(order, MAX2, (0, 0))
    assert history == pytest.approx([0.30, 0.30, 0.36, 0.45, 0.45])
    assert np.all(np.diff(history) >= 0)
    assert history[-1] == pytest.approx(hypervolume(order, MAX2, (0, 0)))
    assert hypervolume_history([], MAX2, (0, 0)).tolist() == []


# -- the scheduler through Ray Tune's interface ----------------------------------------------------


def planted(config):
    """Reports the planted (acc_a, acc_b) of trial ``config["i"]``, epoch by epoch."""
    for epoch, (a, b) in enumerate(PLANTED[config["i"]], start=1):
        tune.report({"epoch": epoch, "acc_a": a, "acc_b": b})


# Six trials, max_t 4, grace 1, eta 2: rungs at epochs 1, 2, 4 (Ray's formula, 4 being 1 * 2**2).
# Both accuracies maximised. With one trial at a time, trial i runs to its end before i+1 starts.
PLANTED = {
    0: [(0.50, 0.50), (0.60, 0.60), (0.62, 0.62), (0.64, 0.64)],
    1: [(0.40, 0.40), (0.41, 0.41), (0.42, 0.42), (0.43, 0.43)],
    2: [(0.60, 0.30), (0.70, 0.35), (0.71, 0.36), (0.72, 0.37)],
    3: [(0.30, 0.60), (0.65, 0.65), (0.66, 0.66), (0.67, 0.67)],
    4: [(0.45, 0.45), (0.46, 0.46), (0.47, 0.47), (0.48, 0.48)],
    5: [(0.55, 0.55), (0.50, 0.50), (0.51, 0.51), (0.52, 0.52)],
}
# Rung 1 (epoch 1), in arrival order; keep 1 + floor((n-1)/2):
#   T0 (.50,.50) alone, keep 1                                             -> CONTINUE
#   T1 (.40,.40) beaten by T0; n 2, keep 1: T0                             -> STOP
#   T2 (.60,.30) front {T0, T2}; n 3, keep 2: both                         -> CONTINUE
#   T3 (.30,.60) front {T0, T2, T3}; n 4, keep 2: the extremes T2, T3 (inf) before T0 (finite)
#                                                                          -> CONTINUE
#   T4 (.45,.45) beaten by T0; n 5, keep 3 = the front {T0, T2, T3}        -> STOP
#   T5 (.55,.55) beats T0; front {T2, T3, T5}; n 6, keep 3: the front      -> CONTINUE
# Rung 2 (epoch 2), T0, T2, T3, T5 arrive:
#   T0 (.60,.60) alone                                                     -> CONTINUE
#   T2 (.70,.35) front {T0, T2}, both inf; n 2, keep 1: the earlier, T0    -> STOP
#   T3 (.65,.65) beats T0; front {T2, T3}; n 3, keep 2: T2, T3             -> CONTINUE
#   T5 (.50,.50) beaten by T0 and T3; n 4, keep 2 = the front {T2, T3}     -> STOP
# Epoch 3 is no rung: CONTINUE. Epoch 4 is max_t: STOP, and on_trial_complete records it at rung 4.
# So T0 and T3 run 4 epochs, T2 and T5 stop after 2, T1 and T4 after 1.
EXPECTED = {
    0: [C, C, C, S],
    1: [S],
    2: [C, S],
    3: [C, C, C, S],
    4: [S],
    5: [C, S],
}
EPOCHS_RUN = {i: len(decisions) for i, decisions in EXPECTED.items()}


@pytest.fixture(scope="module")
def make_trial():
    """Real Tune trials of ``planted`` (a Trial needs a registered trainable's name)."""
    tune.register_trainable("planted", planted)
    return lambda i: Trial("planted", config={"i": i})


def row(i: int, epoch: int) -> dict:
    a, b = PLANTED[i][epoch - 1]
    return {"epoch": epoch, "acc_a": a, "acc_b": b, "training_iteration": epoch}


def make_scheduler() -> MOASHAScheduler:
    return MOASHAScheduler(
        {"acc_a": "max", "acc_b": "max"}, time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2
    )


def run_trial(scheduler, trial: Trial, i: int) -> list[str]:
    """Feeds trial i's results as Tune would, until a STOP; then completes it with its last result."""
    decisions = []
    for epoch in range(1, len(PLANTED[i]) + 1):
        decisions.append(scheduler.on_trial_result(None, trial, row(i, epoch)))
        if decisions[-1] == S:
            break
    scheduler.on_trial_complete(None, trial, row(i, len(decisions)))
    return decisions


def test_rungs_follow_rays_formula():
    assert [r.milestone for r in make_scheduler().rungs] == [1, 2, 4]
    milestones = {  # (max_t, grace, eta) -> what Ray's ASHA builds, float quirk included
        (9, 1, 3): [1, 3, 9],
        (10, 1, 3): [1, 3, 9],
        (5, 2, 2): [2, 4],
        (1000, 1, 10): [1, 10, 100],  # log(1000)/log(10) rounds below 3
        (3, 3, 2): [3],
    }
    for (max_t, grace, eta), expected in milestones.items():
        moasha = MOASHAScheduler({"a": "max"}, max_t=max_t, grace_period=grace, reduction_factor=eta)
        asha = ASHAScheduler(metric="a", mode="max", max_t=max_t, grace_period=grace, reduction_factor=eta)
        assert [r.milestone for r in moasha.rungs] == expected
        assert asha.debug_string().count("Iter") == len(expected)


def test_planted_arrivals_through_the_scheduler_interface(make_trial):
    scheduler = make_scheduler()
    assert scheduler.set_search_properties("score", "max") is True
    assert scheduler.metrics == {"acc_a": "max", "acc_b": "max"}
    trials = {i: make_trial(i) for i in PLANTED}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    decisions = {i: run_trial(scheduler, trials[i], i) for i in PLANTED}
    assert decisions == EXPECTED

    ids = {i: t.trial_id for i, t in trials.items()}
    rung1, rung2, rung4 = scheduler.rungs
    assert rung1.results == {ids[i]: PLANTED[i][0] for i in range(6)}
    assert rung2.results == {ids[i]: PLANTED[i][1] for i in (0, 2, 3, 5)}
    assert rung4.results == {ids[i]: PLANTED[i][3] for i in (0, 3)}
    assert scheduler.num_stopped == 6  # four by the rungs, two at max_t
    assert scheduler.debug_string().splitlines()[1:] == [
        "  epoch 1: 6 recorded, 3 on the front",  # T2, T3, T5
        "  epoch 2: 4 recorded, 2 on the front",  # T2, T3
        "  epoch 4: 2 recorded, 1 on the front",  # T3 (.67, .67) beats T0 (.64, .64)
    ]


def test_pickled_mid_study_the_scheduler_keeps_its_rungs_and_decides_alike(make_trial, tmp_path):
    scheduler = make_scheduler()
    trials = {i: make_trial(i) for i in PLANTED}
    for i in (0, 1, 2):
        run_trial(scheduler, trials[i], i)
    copy = pickle.loads(pickle.dumps(scheduler))
    assert copy.rungs == scheduler.rungs and copy.rungs[0].results
    scheduler.save(str(tmp_path / "moasha.pkl"))
    restored = make_scheduler()
    restored.restore(str(tmp_path / "moasha.pkl"))
    assert restored.rungs == scheduler.rungs
    for i in (3, 4, 5):
        assert run_trial(copy, trials[i], i) == EXPECTED[i]
        assert run_trial(restored, trials[i], i) == EXPECTED[i]


def test_missing_and_nan_objectives(make_trial):
    scheduler = make_scheduler()
    first, second, third = (make_trial(i) for i in range(3))
    # Without an objective a result decides nothing, as in Ray's ASHA, and is not recorded.
    assert scheduler.on_trial_result(None, first, {"epoch": 1, "acc_a": 0.9}) == C
    assert scheduler.on_trial_result(None, first, {"acc_a": 0.9, "acc_b": 0.9}) == C
    assert scheduler.rungs[0].results == {}
    # A NaN vector ranks behind every complete one: first at its rung it continues (keep 1 of 1) ...
    assert scheduler.on_trial_result(None, first, {"epoch": 1, "acc_a": math.nan, "acc_b": 0.9}) == C
    # ... a complete one, however poor, is kept before it (keep 1 of 2) ...
    assert scheduler.on_trial_result(None, second, {"epoch": 1, "acc_a": 0.1, "acc_b": 0.1}) == C
    # ... and a NaN arrival behind a complete one stops (keep 2 of 3: the complete one, then the earlier NaN).
    assert scheduler.on_trial_result(None, third, {"epoch": 1, "acc_a": 0.5, "acc_b": None}) == S
    a, b = scheduler.rungs[0].results[third.trial_id]  # None is recorded as NaN
    assert a == 0.5 and math.isnan(b)


def test_one_objective_differs_from_rays_asha_only_at_the_boundary(make_trial):
    # Rung 1 gets 1, 3, then 1.5 (eta 2). Ray's ASHA compares 1.5 with the median of {1, 3} = 2: STOP.
    # MOASHA ranks 1.5 second of {1, 3, 1.5} and keeps 1 + floor(2/2) = 2: CONTINUE (module docstring).
    asha = ASHAScheduler(time_attr="epoch", metric="a", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    moasha = MOASHAScheduler({"a": "max"}, max_t=4, grace_period=1, reduction_factor=2)
    trials = [make_trial(i) for i in range(3)]
    for scheduler in (asha, moasha):
        for trial in trials:
            scheduler.on_trial_add(None, trial)
    arrivals = [{"epoch": 1, "a": a} for a in (1.0, 3.0, 1.5)]
    assert [asha.on_trial_result(None, t, r) for t, r in zip(trials, arrivals, strict=True)] == [C, C, S]
    assert [moasha.on_trial_result(None, t, r) for t, r in zip(trials, arrivals, strict=True)] == [C, C, C]


# -- end to end: a real local Ray Tune run ---------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance for this module; the environment variables importing and starting it set are undone."""
    import ray

    saved = dict(os.environ)
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # no result.json/progress.csv/TensorBoard files
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        yield
    finally:
        ray.shutdown()
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


@pytest.mark.slow
def test_a_real_tune_run_stops_the_planted_trials_at_their_rungs(local_ray, tmp_path):
    scheduler = make_scheduler()
    tuner = tune.Tuner(
        planted,
        param_space={"i": tune.grid_search(list(PLANTED))},  # trials 0..5, started in this order
        tune_config=tune.TuneConfig(
            metric="acc_a", mode="max", scheduler=scheduler, max_concurrent_trials=1, reuse_actors=True
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="moasha", verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    assert {r.config["i"]: r.metrics["epoch"] for r in results} == EPOCHS_RUN
    # The Tuner drives this very object in this process: its rungs hold the arrivals derived above,
    # rung 4 the final results Tune passed to on_trial_complete.
    ids = {r.config["i"]: r.metrics["trial_id"] for r in results}
    arrivals = [list(rung.results) for rung in scheduler.rungs]
    assert arrivals == [[ids[i] for i in order] for order in ((0, 1, 2, 3, 4, 5), (0, 2, 3, 5), (0, 3))]
