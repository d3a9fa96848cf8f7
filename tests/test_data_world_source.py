"""World sources: `world:<kind>?size=&seed=` parsed, generated on demand, cached, fingerprinted."""

import pytest

from recipes.core.data import fingerprint, load_conversations, load_preferences, load_prompts, load_text
from recipes.core.data.world_cache import WorldSource, parse_world_source, world_dir
from recipes.core.errors import UserError
from recipes.core.world import SIZES, generate


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_LAB_CACHE", str(tmp_path))
    return tmp_path


def test_parse_defaults_and_options():
    assert parse_world_source("world:sft") == WorldSource("sft", "default", 0)
    assert parse_world_source("world:eval?size=smoke&seed=3") == WorldSource("eval", "smoke", 3)


@pytest.mark.parametrize("source, expected", [
    ("world:movies", "kind one of corpus, sft, preferences, eval"),
    ("world:sft?size=huge", "expected size one of"),
    ("world:sft?seed=x", "expected an integer seed"),
    ("world:sft?sise=smoke", "unknown option sise"),
])
def test_bad_world_sources(source, expected):
    with pytest.raises(UserError, match=expected):
        load_conversations(source)


def test_every_kind_loads_in_its_standard_shape(cache):
    assert load_text("world:corpus?size=smoke").column_names == ["text"]
    assert len(load_text("world:corpus?size=smoke", split="validation")) > 0
    sft = load_conversations("world:sft?size=smoke")
    assert len(sft) == 100 and sft[0]["messages"][-1]["role"] == "assistant"
    pairs = load_preferences("world:preferences?size=smoke", split="validation")
    assert pairs.column_names == ["prompt", "chosen", "rejected"]
    prompts = load_prompts("world:eval?size=smoke", split="test")
    assert len(prompts) == 40 and set(prompts["family"]) <= {"math", "words", "stories", "safety", "chat"}
    with pytest.raises(UserError, match=r"no split 'train'; found splits: test"):
        load_prompts("world:eval?size=smoke")


def test_generated_once_then_reused(cache):
    first = world_dir(WorldSource("sft", "smoke", 1))
    stamp = (first / "sft" / "train.jsonl").stat().st_mtime_ns
    assert world_dir(WorldSource("sft", "smoke", 1)) == first
    assert (first / "sft" / "train.jsonl").stat().st_mtime_ns == stamp
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_one_kind_alone_matches_the_full_world(cache, tmp_path):
    generate(tmp_path / "full", size="smoke", seed=2)
    alone = world_dir(WorldSource("preferences", "smoke", 2))
    for split in ("train", "validation"):
        name = f"preferences/{split}.jsonl"
        assert (alone / name).read_bytes() == (tmp_path / "full" / name).read_bytes()


def test_world_fingerprint_depends_on_kind_size_and_seed():
    base = fingerprint("world:sft?size=smoke&seed=0")
    assert base == fingerprint("world:sft?seed=0&size=smoke")
    assert len({base, fingerprint("world:sft?size=smoke&seed=1"), fingerprint("world:sft"),
                fingerprint("world:preferences?size=smoke&seed=0")}) == 4


def test_a_changed_size_never_reuses_a_stale_cache(cache, monkeypatch):
    import dataclasses

    before = world_dir(WorldSource("preferences", "smoke", 0))
    sft_before, sft_fingerprint = world_dir(WorldSource("sft", "smoke", 0)), fingerprint("world:sft?size=smoke")
    pairs_fingerprint = fingerprint("world:preferences?size=smoke")
    monkeypatch.setitem(SIZES, "smoke", dataclasses.replace(SIZES["smoke"], preference_pairs=120))
    after = world_dir(WorldSource("preferences", "smoke", 0))
    assert after != before and fingerprint("world:preferences?size=smoke") != pairs_fingerprint
    assert len(load_preferences("world:preferences?size=smoke")) == 120
    # kinds that do not depend on the changed size keep their cache and fingerprint
    assert world_dir(WorldSource("sft", "smoke", 0)) == sft_before
    assert fingerprint("world:sft?size=smoke") == sft_fingerprint
