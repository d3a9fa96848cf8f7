"""Biased simulated annotators: each bias moves the labels the way and as far as its strength says; off is today's
labels byte for byte; the world source and `rlhf-lab world` take the strengths as keys and flags."""

import hashlib
import json
import math
import re
from pathlib import Path

import pytest

from recipes.core.cli import main as rlhf_lab
from recipes.core.data.world_cache import parse_world_source, world_dir
from recipes.core.errors import UserError
from recipes.core.stages import STAGES
from recipes.core.world import generate, gold_reward
from recipes.core.world.annotators import GROUPS, Annotators, Biases
from recipes.core.world.sizes import SIZES
from reward.evaluate import noise_ceiling, pair_metrics
from reward.train import load_pairs

REPO = Path(__file__).resolve().parents[1]
SPEC = SIZES["default"]
T, FLIP = SPEC.bt_temperature, SPEC.flip_rate
# sha256 of the default world's preference files (seed 0) before annotators had biases: off must keep them.
UNBIASED_SHA256 = {"train": "81b98a3b1a2ab4ac1c550bea443069fe78b9c9aac46267ab730eb2c8c17636eb",
                   "validation": "723a01ffa834c214322b1bd7ca63dab5805797bd99b1c006db009129d972792a"}


def tokens(text: str) -> int:  # written apart from annotators.answer_tokens: words and punctuation marks
    return len(re.findall(r"[A-Za-z0-9_']+|[^\w\s]", text.replace("'", " ' ")))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def labelled(p_first: float) -> float:  # after the flips
    return (1 - FLIP) * p_first + FLIP * (1 - p_first)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """The default world's preference pairs under each bias setting, generated once for the module."""
    settings = {"none": Biases(), "length": Biases(length_bias=0.02), "sycophancy": Biases(sycophancy_bias=1.0),
                "position": Biases(position_bias=0.8), "groups": Biases(group_disagreement=1.0)}
    out = {}
    for name, biases in settings.items():
        path = tmp_path_factory.mktemp(f"world-{name}")
        stats = generate(path, size="default", seed=0, kinds=("preferences",), biases=biases)
        rows = [json.loads(line) for split in ("train", "validation")
                for line in (path / "preferences" / f"{split}.jsonl").read_text().splitlines()]
        out[name] = (path, stats, rows)
    return out


def first_and_second(row: dict) -> tuple[str, str]:
    a, b = row["chosen"][0]["content"], row["rejected"][0]["content"]
    return (a, b) if row["shown_first"] == "chosen" else (b, a)


def check_share(rows, wanted, p_wanted, label: str) -> tuple[float, float]:
    """Measured share of rows where `wanted(row)` holds against the mean of the hand probabilities, within 4 SE."""
    measured = sum(map(wanted, rows)) / len(rows)
    ps = [p_wanted(r) for r in rows]
    expected = sum(ps) / len(ps)
    se = math.sqrt(sum(p * (1 - p) for p in ps)) / len(ps)
    print(f"\n{label}: measured {measured:.4f}, expected {expected:.4f} +- {se:.4f} over {len(rows)} pairs")
    assert abs(measured - expected) < 4 * se, label
    return measured, expected


def test_off_gives_todays_labels_byte_for_byte(worlds):
    path, stats, _ = worlds["none"]
    for split, digest in UNBIASED_SHA256.items():
        assert hashlib.sha256((path / "preferences" / f"{split}.jsonl").read_bytes()).hexdigest() == digest, split
    assert "biases" not in stats["annotators"]


def test_biases_change_labels_only_never_the_pairs(worlds):
    def pair(row):
        return row["prompt"][0]["content"], frozenset((row["chosen"][0]["content"], row["rejected"][0]["content"]))

    plain = [pair(r) for r in worlds["none"][2]]
    for name in ("length", "sycophancy", "position", "groups"):
        rows = worlds[name][2]
        assert [pair(r) for r in rows] == plain, name
        assert sum(r["chosen"] != p["chosen"] for r, p in zip(rows, worlds["none"][2])) > 50, name


def test_length_bias_prefers_longer_answers_by_its_strength(worlds):
    b = worlds["length"][1]["annotators"]["biases"]["length_bias"]
    rows = [r for r in worlds["length"][2] if r["tokens_chosen"] != r["tokens_rejected"]]

    def p_longer(row):
        a, second = first_and_second(row)
        gap = gold_reward(row["prompt"], a).total - gold_reward(row["prompt"], second).total
        p_a = labelled(sigmoid((gap + b * (tokens(a) - tokens(second))) / T))
        return p_a if tokens(a) > tokens(second) else 1 - p_a

    biased, _ = check_share(rows, lambda r: r["tokens_chosen"] > r["tokens_rejected"], p_longer, "longer chosen")
    plain = [r for r in worlds["none"][2] if tokens(r["chosen"][0]["content"]) != tokens(r["rejected"][0]["content"])]
    unbiased = sum(tokens(r["chosen"][0]["content"]) > tokens(r["rejected"][0]["content"]) for r in plain) / len(plain)
    assert biased > unbiased + 0.1  # 0.02 per token: 0.46 -> 0.65 measured on this world
    assert all("length" in r["biases_applied"] for r in rows)
    assert all(r["tokens_chosen"] == tokens(r["chosen"][0]["content"]) for r in worlds["length"][2])


def test_sycophancy_bias_prefers_flattery_whatever_its_correctness(worlds):
    b = 1.0
    rows = [r for r in worlds["sycophancy"][2] if r["flatters_chosen"] != r["flatters_rejected"]]
    assert len(rows) > 500

    def flattering(text):
        return "good question" in text.lower()

    def p_flattering(row):
        a, second = first_and_second(row)
        gap = gold_reward(row["prompt"], a).total - gold_reward(row["prompt"], second).total
        p_a = labelled(sigmoid((gap + b * (flattering(a) - flattering(second))) / T))
        return p_a if flattering(a) else 1 - p_a

    biased, _ = check_share(rows, lambda r: r["flatters_chosen"], p_flattering, "flattering chosen")
    plain = [r for r in worlds["none"][2] if flattering(r["chosen"][0]["content"]) != flattering(r["rejected"][0]["content"])]
    assert biased > sum(flattering(r["chosen"][0]["content"]) for r in plain) / len(plain) + 0.2


def test_position_bias_favours_the_answer_shown_first(worlds):
    b = 0.8
    rows = worlds["position"][2]

    def p_first(row):
        a, second = first_and_second(row)
        return labelled(sigmoid((gold_reward(row["prompt"], a).total - gold_reward(row["prompt"], second).total) / T + b))

    measured, _ = check_share(rows, lambda r: r["shown_first"] == "chosen", p_first, "first shown chosen")
    assert measured > 0.6  # the unbiased annotator picks the first-shown (a random persona) about half the time

    # The noise ceiling: a reward model scores each answer alone, so it cannot see which was shown first; its best
    # is the likelier label with the order averaged out, and the ceiling is lower than with the order known.
    def q(row, side):  # P(label follows gold) if the gold-better answer is shown first (side +1) or second (-1)
        gap = abs(row["gold_chosen"] - row["gold_rejected"])
        p = labelled(sigmoid(gap / T + side * b))
        return p

    unseen = [(q(r, 1) + q(r, -1)) / 2 for r in rows]
    ceiling = sum(max(u, 1 - u) for u in unseen) / len(unseen)
    stats = worlds["position"][1]
    assert stats["noise_ceiling"] == pytest.approx(ceiling, abs=2e-6)
    assert [r["p_agree_unseen"] for r in rows] == pytest.approx(unseen, abs=2e-6)
    known = sum(max(r["p_agree"], 1 - r["p_agree"]) for r in rows) / len(rows)
    assert ceiling < known - 0.01  # 0.706 against 0.726 on this world


def test_annotator_groups_weigh_the_gold_terms_their_own_ways(worlds):
    s = 1.0
    rows = worlds["groups"][2]
    assert {r["annotator_group"] for r in rows} == set(range(len(GROUPS)))

    def utility(row, text, group):
        terms = gold_reward(row["prompt"], text).terms
        return sum(math.exp(s * z) * terms[k] for z, k in zip(GROUPS[group], terms))

    def p_first(row):
        a, second = first_and_second(row)
        return labelled(sigmoid((utility(row, a, row["annotator_group"]) - utility(row, second, row["annotator_group"])) / T))

    check_share(rows, lambda r: r["shown_first"] == "chosen", p_first, "group labels")
    # Which group labelled a pair is unseen by a reward model too: the ceiling averages q over the four groups.
    def q_unseen(row):
        c, r = (gold_reward(row["prompt"], row[side][0]["content"]).terms for side in ("chosen", "rejected"))
        better, worse = (c, r) if row["gold_chosen"] > row["gold_rejected"] else (r, c)
        return sum(labelled(sigmoid(sum(math.exp(s * z) * (better[k] - worse[k]) for z, k in zip(GROUPS[g], better))
                                    / T)) for g in range(len(GROUPS))) / len(GROUPS)

    ceiling = sum(max(q, 1 - q) for q in map(q_unseen, rows)) / len(rows)
    assert worlds["groups"][1]["noise_ceiling"] == pytest.approx(ceiling, abs=2e-6)
    # Where the task and style disagree, the task-first group (0) follows the task more often than the style-first (1).
    def task_wins(row):
        c, r = (gold_reward(row["prompt"], row[side][0]["content"]).terms for side in ("chosen", "rejected"))
        return (c["task"] - r["task"]) * (sum(c.values()) - c["task"] - sum(r.values()) + r["task"]) < 0, c["task"] > r["task"]

    share = {}
    for group in (0, 1):
        split = [task_wins(r)[1] for r in rows if r["annotator_group"] == group and task_wins(r)[0]]
        share[group] = sum(split) / len(split)
    print(f"\ntask-better answer chosen where task and style disagree: task-first {share[0]:.3f}, style-first {share[1]:.3f}")
    assert share[0] > share[1] + 0.1


def test_label_probability_by_hand():
    """One pair: A = 7 tokens with a flattering phrase, B = 3 tokens; gold terms task 1 vs 0.5, rudeness 0 vs -0.5."""
    terms_a = {"task": 1.0, "rudeness": 0.0, "rambling": 0.0, "repetition": 0.0, "missing_end": 0.0}
    terms_b = {"task": 0.5, "rudeness": -0.5, "rambling": 0.0, "repetition": 0.0, "missing_end": 0.0}
    text_a, text_b = "Good question: it is 3.", "Whatever, 3"  # Good question : it is 3 . / Whatever , 3
    annotators = Annotators(0.5, 0.1, Biases(length_bias=-0.1, sycophancy_bias=0.2, position_bias=0.3))

    class Draws:  # the Bradley-Terry draw, then the flip draw
        def __init__(self, *values):
            self.values = list(values)

        def random(self):
            return self.values.pop(0)

    # utilities: A 1.0 - 0.7 + 0.2 = 0.5, B 0.0 - 0.3 = -0.3; logit 0.8 / 0.5 + 0.3 = 1.9
    p = 0.9 * sigmoid(1.9) + 0.1 * (1 - sigmoid(1.9))
    label = annotators.label((terms_a, terms_b), (text_a, text_b), (1.0, 0.0), Draws(0.5, 0.9))
    assert label.a_preferred and not label.flipped and label.p_agree == pytest.approx(p, abs=1e-12)
    label = annotators.label((terms_a, terms_b), (text_a, text_b), (1.0, 0.0), Draws(0.95, 0.9))  # past sigmoid(1.9) = 0.87
    assert not label.a_preferred and not label.agrees_with_gold
    # group 1 (style first) at disagreement 1: task weight e^-1, rudeness weight e^1
    grouped = Annotators(0.5, 0.0, Biases(group_disagreement=1.0))
    logit = (math.exp(-1) * 0.5 + math.exp(1) * 0.5) / 0.5
    assert grouped.label((terms_a, terms_b), (text_a, text_b), (1.0, 0.0), Draws(0.0, 0.9), 1).p_agree == \
        pytest.approx(sigmoid(logit), abs=1e-12)


def test_world_source_and_cli_take_the_biases(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLHF_LAB_CACHE", str(tmp_path / "cache"))
    source = parse_world_source("world:preferences?size=smoke&seed=0&length_bias=0.05&position_bias=0.5")
    assert source.biases == Biases(length_bias=0.05, position_bias=0.5)
    assert str(source) == "world:preferences?size=smoke&seed=0&length_bias=0.05&position_bias=0.5"
    biased, plain = world_dir(source), world_dir(parse_world_source("world:preferences?size=smoke&length_bias=0"))
    assert biased != plain and '"position"' in (biased / "preferences/train.jsonl").read_text()
    assert "shown_first" not in (plain / "preferences/train.jsonl").read_text()
    for bad, expected in (("world:sft?size=smoke&length_bias=1", "label world:preferences only"),
                          ("world:preferences?length_bias=lots", "expected a number for length_bias"),
                          ("world:preferences?position_bias=inf", "between -10 and 10"),
                          ("world:preferences?group_disagreement=-1", "0 or more")):
        with pytest.raises(UserError, match=expected):
            parse_world_source(bad)

    assert rlhf_lab(["world", "--out", str(tmp_path / "w"), "--size", "smoke", "--length_bias", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "biased annotators (length_bias 0.05): longer answer chosen in" in out
    same = world_dir(parse_world_source("world:preferences?size=smoke&seed=0&length_bias=0.05"))
    assert (tmp_path / "w/preferences/train.jsonl").read_bytes() == (same / "preferences/train.jsonl").read_bytes()
    stats = json.loads((tmp_path / "w/stats.json").read_text())
    assert stats["annotators"]["biases"]["length_bias"] == 0.05
    assert rlhf_lab(["world", "--out", str(tmp_path / "x"), "--size", "smoke", "--length_bias", "99"]) == 2
    assert "expected length_bias between -10 and 10" in capsys.readouterr().err


def test_reward_stage_reads_the_ceiling_biased_annotators_leave(tmp_path, monkeypatch):
    """Biased held-out pairs carry p_agree_unseen and the ceiling comes from it; unbiased ones keep (T, flips)."""
    monkeypatch.setenv("RLHF_LAB_CACHE", str(tmp_path / "cache"))
    config = STAGES["reward"].parse(["--config", str(REPO / "recipes/smoke/reward.yaml"), "--dataset_name",
                                     "world:preferences?size=smoke&seed=0&position_bias=0.8"])
    _, held_out, _ = load_pairs(config)
    q = held_out["p_agree_unseen"]
    gaps = [c - r for c, r in zip(held_out["gold_chosen"], held_out["gold_rejected"])]
    metrics = pair_metrics([1.0] * len(q), [0.0] * len(q), held_out["gold_chosen"], held_out["gold_rejected"],
                           annotators=(T, FLIP), p_agree=q)
    assert metrics["noise_ceiling"] == pytest.approx(sum(max(x, 1 - x) for x in q) / len(q))
    assert metrics["noise_ceiling"] < noise_ceiling(gaps, T, FLIP) - 0.005
    plain = STAGES["reward"].parse(["--config", str(REPO / "recipes/smoke/reward.yaml")])
    assert "p_agree_unseen" not in load_pairs(plain)[1].column_names
