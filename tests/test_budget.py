"""--time_budget: the run's length comes from its measured speed, and the schedule spans it."""

import json
import math
import shutil

import pytest

import hfssl.budget
from conftest import TINY_MLM, load_recipe
from hfssl.args import parse_args
from hfssl.budget import TIMED_STEPS, WARMUP_STEPS, parse_count, parse_duration
from hfssl.errors import OptionError
from hfssl.runs import start_run


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1.5h", 5400), ("45", 45), (" 2M ", 120)])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "5w", "ten minutes", "10 days", ""])
def test_a_malformed_budget_is_refused_before_any_work(text, tmp_path):
    with pytest.raises(OptionError, match="--time_budget must be a positive duration such as 90s, 10m or 1.5h"):
        load_recipe("mlm").main(["--time_budget", text, "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


class FakeClock:
    """perf_counter for the budget: every reading is one second after the previous one."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1.0
        return self.now


@pytest.mark.slow
def test_the_budget_sets_the_steps_and_the_schedule_spans_them(tmp_path, monkeypatch):
    monkeypatch.setattr(hfssl.budget, "time", FakeClock())
    out = tmp_path / "o"
    budget = 12.0
    result = load_recipe("mlm").main(
        TINY_MLM
        + ["--time_budget", "12s", "--max_steps", "1000", "--warmup_steps", "0.5", "--logging_steps", "1"]
        + ["--output_dir", str(out)]
    )
    # Readings: train begin 1 s, after warm-up 2 s, after the timed steps 3 s (0.1 s per step), then one evaluation
    # timed from 3 s to 4 s (1 s), and 5 s: 8 s left of 12 s, minus five evaluations of 1 s.
    step = WARMUP_STEPS + TIMED_STEPS
    expected = step + math.floor((budget - 4.0 - 5 * 1.0) / (1.0 / TIMED_STEPS))
    assert result.metrics["train_steps"] == expected
    record = json.loads((out / "hfssl.json").read_text())
    assert record["metrics"]["train_steps"] == expected and record["options"]["training"]["time_budget"] == "12s"
    # samples per second count the steps trained, not the cap the run started with
    per_second = expected * 16 / record["metrics"]["train_runtime"]
    assert record["metrics"]["train_samples_per_second"] == pytest.approx(per_second, rel=1e-3)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    rates = [e["learning_rate"] for e in history if "learning_rate" in e]  # entry k: the rate step k + 1 ran at
    warmup = math.ceil(0.5 * expected)
    assert len(rates) == expected
    assert rates[-1] == pytest.approx(max(rates) / (expected - warmup), rel=1e-3)  # one step from 0 at the budget's end
    # warmup: half of the chosen length (not of --max_steps), the ramp continuing past the measured steps
    assert rates.index(max(rates)) == warmup
    assert rates[step] == pytest.approx(max(rates) * step / warmup, rel=1e-3)


@pytest.mark.parametrize("text, tokens", [("20M", 20_000_000), ("1.5e8", 150_000_000), ("300k", 300_000), ("2B", 2 * 10**9)])
def test_token_counts_parse(text, tokens):
    assert parse_count(text) == tokens


@pytest.mark.parametrize("text", ["0", "ten", "5x", ""])
def test_a_malformed_token_budget_is_refused(text, tmp_path):
    with pytest.raises(OptionError, match="--token_budget must be a positive token count"):
        load_recipe("mlm").main(["--token_budget", text, "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_two_budgets_are_refused_and_mim_has_no_token_budget(tmp_path):
    with pytest.raises(OptionError, match="--token_budget and --time_budget both size the run"):
        load_recipe("mlm").main(["--token_budget", "1M", "--time_budget", "5m", "--output_dir", str(tmp_path / "o")])
    with pytest.raises(OptionError, match="--token_budget counts text tokens"):
        load_recipe("mim").main(["--token_budget", "1M", "--output_dir", str(tmp_path / "p")])
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


@pytest.mark.slow
def test_the_token_budget_sets_the_steps(tmp_path):
    out = tmp_path / "o"
    # 16 blocks of 64 tokens per step: 20,000 tokens are 19.5 steps, so 20
    result = load_recipe("mlm").main(TINY_MLM + ["--token_budget", "20k", "--output_dir", str(out)])
    assert result.metrics["train_steps"] == 20
    record = json.loads((out / "hfssl.json").read_text())
    assert record["options"]["training"]["time_budget"] is None and record["options"]["training"]["token_budget"] == "20k"


@pytest.mark.parametrize("recipe", ["mim", "clip"])
def test_a_time_budget_replaces_the_default_length_and_a_given_max_steps_caps_it(recipe, tmp_path):
    module = load_recipe(recipe)
    for extra, steps in (([], 10**9), (["--max_steps", "50"], 50)):
        argv = ["--time_budget", "1m", "--output_dir", str(tmp_path / str(steps)), *extra]
        *_, run_args = parse_args(module.OPTION_TYPES, argv, module.DEFAULTS, {}, None)
        start_run(run_args)
        assert run_args.max_steps == steps  # the budget's own steps, not the recipe's default length


@pytest.mark.slow
def test_a_budget_run_resumed_from_a_checkpoint_keeps_its_length_and_schedule(tmp_path, monkeypatch):
    monkeypatch.setattr(hfssl.budget, "time", FakeClock())
    first, resumed = tmp_path / "first", tmp_path / "resumed"
    options = TINY_MLM + ["--time_budget", "12s", "--max_steps", "1000", "--logging_steps", "1", "--disable_tqdm", "true"]
    steps = load_recipe("mlm").main(options + ["--output_dir", str(first)]).metrics["train_steps"]
    checkpoints = sorted(first.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    middle = next(p for p in checkpoints if int(p.name.split("-")[1]) < steps)  # killed after this checkpoint
    assert json.loads((middle / "hfssl_budget.json").read_text()) == {"total_steps": steps}
    resumed.mkdir()
    shutil.copytree(middle, resumed / middle.name)
    result = load_recipe("mlm").main(options + ["--output_dir", str(resumed), "--resume_from_checkpoint", "true"])
    assert result.metrics["train_steps"] == steps  # the length chosen before the interruption, not measured again

    def rates(out):
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        return [e["learning_rate"] for e in history if "learning_rate" in e]

    assert rates(resumed) == pytest.approx(rates(first), rel=1e-6)  # the schedule continues exactly
