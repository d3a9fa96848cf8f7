"""The generated world: shapes, determinism, persona ordering, annotator noise, CLI."""

import json
import math
import time
from pathlib import Path

import pytest

from recipes.core.errors import UserError
from recipes.core.world import generate, gold_reward
from recipes.core.world.annotators import p_agree
from recipes.core.world.cli import cli
from recipes.core.world.families import by_name
from recipes.core.world.personas import FLAWED, answer, eligible
from recipes.core.world.sizes import SIZES

DATA_FILES = ["corpus/train.txt", "corpus/validation.txt", "sft/train.jsonl", "sft/validation.jsonl",
              "preferences/train.jsonl", "preferences/validation.jsonl", "eval/prompts.jsonl", "stats.json"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def default_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-default")
    start = time.perf_counter()
    stats = generate(out, size="default", seed=0)
    print(f"\ndefault-size world generated in {time.perf_counter() - start:.1f}s")
    return out, stats


def test_default_world_sizes(default_world):
    out, stats = default_world
    assert 2_000_000 < (out / "corpus/train.txt").stat().st_size < 5_000_000
    assert len(read_jsonl(out / "sft/train.jsonl")) == SIZES["default"].sft_rows
    assert 3000 <= len(read_jsonl(out / "preferences/train.jsonl")) <= SIZES["default"].preference_pairs
    assert 300 <= len(read_jsonl(out / "eval/prompts.jsonl")) <= 500
    assert json.loads((out / "stats.json").read_text()) == {k: v for k, v in stats.items() if k != "generation_seconds"}


def test_default_world_has_a_small_vocabulary(default_world):
    out, _ = default_world
    import re
    words = set(re.findall(r"[a-z]+", (out / "corpus/train.txt").read_text().lower()))
    assert len(words) < 400


def test_helpful_beats_every_flawed_persona(default_world):
    _, stats = default_world
    for persona in FLAWED:
        assert stats["personas"]["helpful_wins"][persona]["share"] >= 0.95, persona
    # checked again, independently, on the held-out prompts
    out, _ = default_world
    import random
    rng, wins = random.Random(7), {p: [0, 0] for p in FLAWED}
    for row in read_jsonl(out / "eval/prompts.jsonl"):
        prompt = row["prompt"][-1]["content"]
        family = by_name(row["family"])
        facts = family.parse(prompt)
        helpful = gold_reward(prompt, answer("helpful", family, facts, rng)).total
        for persona in eligible(family, facts):
            if persona != "helpful":
                wins[persona][0] += helpful > gold_reward(prompt, answer(persona, family, facts, rng)).total
                wins[persona][1] += 1
    for persona, (won, total) in wins.items():
        assert total and won / total >= 0.95, persona


def test_annotators_agree_with_gold_as_bradley_terry_predicts(default_world):
    out, stats = default_world
    spec = SIZES["default"]
    rows = read_jsonl(out / "preferences/train.jsonl")
    expected = [p_agree(r["gold_chosen"] - r["gold_rejected"], spec.bt_temperature, spec.flip_rate) for r in rows]
    measured = sum(r["label_agrees_with_gold"] for r in rows) / len(rows)
    mean_expected = sum(expected) / len(rows)
    standard_error = math.sqrt(sum(q * (1 - q) for q in expected)) / len(rows)
    print(f"\nagreement {measured:.4f} vs Bradley-Terry {mean_expected:.4f} +- {standard_error:.4f}")
    assert abs(measured - mean_expected) < 4 * standard_error
    assert stats["noise_ceiling"] == pytest.approx(
        stats["annotators"]["all"]["noise_ceiling"]) and 0.5 < stats["noise_ceiling"] < 1
    for r in rows:  # the label agrees with gold exactly when chosen has the higher gold
        assert r["label_agrees_with_gold"] == (r["gold_chosen"] > r["gold_rejected"])


def test_same_seed_is_byte_identical_and_other_seeds_differ(default_world, tmp_path):
    out, _ = default_world
    generate(tmp_path / "again", size="default", seed=0)
    generate(tmp_path / "other", size="default", seed=1)
    for name in DATA_FILES:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
        assert (tmp_path / "other" / name).read_bytes() != (out / name).read_bytes(), name


def test_smoke_world_is_tiny(tmp_path):
    stats = generate(tmp_path, size="smoke", seed=0)
    assert (tmp_path / "corpus/train.txt").stat().st_size < 10_000
    assert stats["files"]["sft/train.jsonl"]["rows"] == 100
    assert stats["files"]["eval/prompts.jsonl"]["rows"] == 40
    sft = read_jsonl(tmp_path / "sft/train.jsonl")
    assert {"messages", "persona", "family"} <= set(sft[0])
    pair = read_jsonl(tmp_path / "preferences/train.jsonl")[0]
    assert pair["prompt"][-1]["role"] == "user" and pair["chosen"][0]["role"] == "assistant"
    assert {"gold_chosen", "gold_rejected", "flipped", "label_agrees_with_gold", "family"} <= set(pair)


def test_eval_prompts_cover_every_family_and_mostly_unseen(default_world):
    out, stats = default_world
    families = {row["family"] for row in read_jsonl(out / "eval/prompts.jsonl")}
    assert families == {"math", "words", "stories", "safety", "chat"}
    assert stats["eval"]["unseen_in_training"] > 0.5


def test_cli_writes_and_shows(tmp_path, capsys):
    assert cli(["--out", str(tmp_path / "w"), "--size", "smoke", "--seed", "3"]) == 0
    assert "noise ceiling" in capsys.readouterr().out
    assert (tmp_path / "w" / "stats.json").is_file()
    with pytest.raises(UserError, match=r"/w: already exists and is not empty"):
        cli(["--out", str(tmp_path / "w"), "--size", "smoke"])
    assert cli(["show", "-n", "1"]) == 0
    shown = capsys.readouterr().out
    for section in ("== corpus", "== sft", "== preferences", "== eval"):
        assert section in shown
    assert "gold " in shown and "task=" in shown
