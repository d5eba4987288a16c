"""The experiment runner (odistill.bench.sweep) and ``odistill sweep``."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest

from odistill.bench.sweep import (
    SweepResult,
    first_reaching,
    grid_points,
    mean_ci,
    point_label,
    run_sweep,
    t_quantile,
)
from odistill.cli import main
from odistill.train.config import ConfigError

# the tiny runs below use a large learning rate: their completions often run to max_new_tokens
pytestmark = pytest.mark.filterwarnings("ignore:step .* reached max_new_tokens:RuntimeWarning")

# Student's t, two-sided critical values from printed tables (e.g. NIST/SEMATECH e-Handbook, 1.3.6.7.2)
T_TABLE = {(0.95, 1): 12.706, (0.95, 2): 4.303, (0.95, 4): 2.776, (0.95, 10): 2.228, (0.95, 30): 2.042,
           (0.90, 5): 2.015, (0.99, 3): 5.841}  # fmt: skip


@pytest.mark.parametrize("level, df", sorted(T_TABLE))
def test_t_quantile_matches_the_printed_table(level, df):
    assert t_quantile(level, df) == pytest.approx(T_TABLE[level, df], abs=6e-4)


def test_t_quantile_tends_to_the_normal_quantile():
    assert t_quantile(0.95, 2000) == pytest.approx(1.95996, abs=2e-3)


def test_mean_ci_against_a_direct_computation():
    values = [0.31, 0.42, 0.38, 0.45, 0.29]
    got = mean_ci(values)
    mean = sum(values) / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    assert got["mean"] == pytest.approx(mean)
    assert got["high"] - got["mean"] == pytest.approx(2.776 * sd / math.sqrt(5), rel=2e-4)
    assert got["mean"] - got["low"] == pytest.approx(got["high"] - got["mean"])
    assert got["n"] == 5


def test_mean_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = random.Random(0)
    covered = 0
    for _ in range(2000):
        s = mean_ci([rng.gauss(1.0, 2.0) for _ in range(4)])
        covered += s["low"] <= 1.0 <= s["high"]
    assert 0.935 <= covered / 2000 <= 0.965


def test_mean_ci_edge_cases():
    assert mean_ci([]) == {"mean": None, "low": None, "high": None, "n": 0}
    one = mean_ci([0.4])
    assert one["mean"] == 0.4 and one["low"] is None and one["high"] is None
    flat = mean_ci([0.5, 0.5, 0.5])
    assert flat["low"] == flat["high"] == 0.5
    assert mean_ci([None, 1.0, 3.0])["n"] == 2  # missing values are skipped


def test_bad_levels_and_degrees_of_freedom():
    with pytest.raises(ValueError, match="level"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0.95, 0)


def test_first_reaching():
    curve = [
        {"step": 0, "seconds": 0.0, "accuracy": 0.1},
        {"step": 10, "seconds": 1.5, "accuracy": 0.49},
        {"step": 20, "seconds": 3.1, "accuracy": 0.5},
        {"step": 30, "seconds": 4.0, "accuracy": 0.7},
    ]
    assert first_reaching(curve, 0.5)["step"] == 20
    assert first_reaching(curve, 0.05)["step"] == 0
    assert first_reaching(curve, 0.8) is None


def test_grid_points_is_the_product_first_name_slowest():
    assert grid_points({"beta": [0, 1], "lmbda": [0, 0.25, 1]}) == [
        {"beta": 0, "lmbda": 0},
        {"beta": 0, "lmbda": 0.25},
        {"beta": 0, "lmbda": 1},
        {"beta": 1, "lmbda": 0},
        {"beta": 1, "lmbda": 0.25},
        {"beta": 1, "lmbda": 1},
    ]
    assert point_label({"beta": 0.5, "lmbda": 1}) == "beta=0.5, lmbda=1"
    with pytest.raises(ValueError, match="no values"):
        grid_points({"beta": []})


def test_a_bad_point_fails_before_any_run():
    with pytest.raises(ConfigError, match="unknown DistillConfig fields"):
        run_sweep("addition", grid={"betta": [0, 1]}, steps=2, eval_every=1)
    with pytest.raises(ConfigError, match="beta=2"):
        run_sweep("addition", grid={"beta": [0, 2]}, steps=2, eval_every=1)
    with pytest.raises(ConfigError, match="eval_every"):
        run_sweep("addition", grid={"beta": [0]}, steps=2, eval_every=0)
    with pytest.raises(ValueError, match="exactly one"):
        run_sweep("addition", steps=2, eval_every=1)


SMALL = dict(steps=4, eval_every=2, eval_n=24, batch_size=16, lr=1e-2)  # seconds per run


@pytest.fixture(scope="module")
def small_sweep():
    return run_sweep("addition", grid={"beta": [0.0, 1.0]}, seeds=[0, 1], target=0.0, **SMALL)


def test_sweep_runs_every_point_and_seed_with_curves(small_sweep):
    sweep = small_sweep
    assert [(r["point"], r["seed"]) for r in sweep.runs] == [
        ({"beta": 0.0}, 0),
        ({"beta": 0.0}, 1),
        ({"beta": 1.0}, 0),
        ({"beta": 1.0}, 1),
    ]
    for run in sweep.runs:
        assert [row["step"] for row in run["curve"]] == [0, 2, 4]
        seconds = [row["seconds"] for row in run["curve"]]
        assert seconds[0] == 0.0 and seconds[1] > 0 and seconds[2] > seconds[1]
        assert run["final_accuracy"] == run["curve"][-1]["accuracy"]
    # the same seed starts from the same student: the step-0 accuracy is the same for every run
    assert len({run["curve"][0]["accuracy"] for run in sweep.runs}) == 1
    # a different beta is a different loss
    assert sweep.runs[0]["method"] != sweep.runs[2]["method"]


def test_sweep_summary_table_and_files(small_sweep, tmp_path):
    sweep = small_sweep
    summary = sweep.summary()
    assert [s["point"] for s in summary] == ["beta=0", "beta=1"]
    for entry, point in zip(summary, sweep.points, strict=True):
        finals = [r["final_accuracy"] for r in sweep.runs_of(point)]
        assert entry["final_accuracy"]["mean"] == pytest.approx(sum(finals) / 2)
        assert entry["reached"] == "2/2" and entry["steps_to_target"]["mean"] == 0  # target 0: at step 0
    never = sweep.summary(target=1.01)
    assert all(s["reached"] == "0/2" and s["steps_to_target"]["mean"] is None for s in never)
    assert "| beta=0 | 2 |" in sweep.table()

    back = SweepResult.from_json(sweep.to_json(tmp_path / "sweep.json"))
    assert back.runs == json.loads(json.dumps(sweep.runs)) and back.points == sweep.points
    with open(sweep.to_csv(tmp_path / "sweep.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 3 and set(rows[0]) == {"beta", "seed", "step", "seconds", "accuracy"}
    curve = sweep.curve({"beta": 1.0}, x="seconds")
    assert len(curve["x"]) == 3 and all(
        lo <= m <= hi for lo, m, hi in zip(curve["low"], curve["mean"], curve["high"], strict=True)
    )


def test_runs_are_deterministic_and_do_not_depend_on_the_workers(small_sweep):
    again = run_sweep("addition", points=[{"beta": 1.0}], seeds=[1, 0], workers=2, **SMALL)
    by_seed = {r["seed"]: [row["accuracy"] for row in r["curve"]] for r in again.runs}
    for run in small_sweep.runs_of({"beta": 1.0}):
        assert by_seed[run["seed"]] == [row["accuracy"] for row in run["curve"]]


def test_cli_sweep_writes_json_and_reports_errors(tmp_path, capsys):
    out = tmp_path / "runs.json"
    code = main(
        ["sweep", "--task", "addition", "--grid", "lmbda=0,1", "--seeds", "1", "--steps", "2",
         "--eval-every", "1", "--eval-n", "8", "--set", "batch_size=8", "--out-json", str(out), "--json"]
    )  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [s["point"] for s in printed["summary"]] == ["lmbda=0", "lmbda=1"]
    saved = SweepResult.from_json(out)
    assert len(saved.runs) == 2 and saved.settings["base"]["batch_size"] == 8
    assert main(["sweep", "--grid", "betta=0,1", "--steps", "2"]) == 2
    assert "'betta' is not a DistillConfig field" in capsys.readouterr().err
    assert main(["sweep", "--steps", "2"]) == 2
    assert "--grid" in capsys.readouterr().err


def test_a_head_started_student_is_trained_saved_and_reproducible(tmp_path):
    """train_head_start writes a loadable student (with its tokenizer), different from the shipped one and
    from another seed's, and the same weights again for the same seed."""
    import torch

    from odistill.bench.models import load_model
    from odistill.bench.sweep import train_head_start

    small = dict(steps=3, batch_size=8, lr=1e-2)
    first = train_head_start("addition", tmp_path / "a", lmbda=0.0, beta=1.0, **small)
    again = train_head_start("addition", tmp_path / "b", lmbda=0.0, beta=1.0, **small)
    other = train_head_start("addition", tmp_path / "c", lmbda=0.0, beta=1.0, seed=1, **small)
    shipped, _ = load_model("addition-student")
    (a, tokenizer), (b, _), (c, _) = (load_model(str(p)) for p in (first, again, other))
    assert tokenizer.convert_ids_to_tokens(tokenizer("1+2=")["input_ids"])  # the tokenizer was saved too
    pairs = list(zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert all(torch.equal(x, y) for x, y in pairs)  # the same seed: the same weights
    assert any(
        not torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), shipped.state_dict().values(), strict=True)
    )
    assert any(
        not torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )
