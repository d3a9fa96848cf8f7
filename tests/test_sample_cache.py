"""The cache of sampled answers (alignment/proxy_pairs.cached_samples): every method of a recipe reads the SFT
baseline that the first one sampled, stages side by side sample it once, and a damaged entry is sampled again."""

import multiprocessing
import time
from pathlib import Path

from alignment.proxy_pairs import cached_samples
from recipes.core.generation import Answer

SETTINGS = dict(purpose="eval/sft-baseline", seed=7, max_new_tokens=4)


def slow_sample(marker_dir: str, who: str):
    def sample():
        (Path(marker_dir) / who).write_text("sampled")
        time.sleep(1.0)  # long enough that the other process asks while this one is still sampling
        return [[Answer(text=f"answer {i}", ended=True, num_tokens=2, token_ids=[i, 0]) for i in range(3)]]
    return sample


def ask(cache: str, marker_dir: str, who: str, queue, barrier) -> None:
    import os

    os.environ["RLHF_LAB_CACHE"] = cache
    barrier.wait(timeout=120)  # both ask at the same moment: without the lock both would find no entry
    rounds = cached_samples(slow_sample(marker_dir, who), "weights-sha", ["p1", "p2", "p3"], **SETTINGS)
    queue.put([a.text for a in rounds[0]])


def test_two_processes_asking_at_once_sample_once_and_get_the_same_answers(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue, barrier = context.Queue(), context.Barrier(2)
    (tmp_path / "markers").mkdir()
    cache, markers = str(tmp_path / "cache"), str(tmp_path / "markers")
    workers = [context.Process(target=ask, args=(cache, markers, who, queue, barrier)) for who in ("first", "second")]
    for w in workers:
        w.start()
    answers = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert answers[0] == answers[1] == ["answer 0", "answer 1", "answer 2"]
    assert len(list((tmp_path / "markers").iterdir())) == 1  # one of them sampled, the other waited and read


def test_a_damaged_entry_is_sampled_again_and_replaced(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLHF_LAB_CACHE", str(tmp_path))
    markers = tmp_path / "markers"
    markers.mkdir()
    first = cached_samples(slow_sample(str(markers), "one"), "sha", ["p"], **SETTINGS)
    (entry,) = (tmp_path / "samples").glob("*.json")
    again = cached_samples(slow_sample(str(markers), "two"), "sha", ["p"], **SETTINGS)
    assert "reusing 3 sampled answers" in capsys.readouterr().out and again == first
    assert sorted(p.name for p in markers.iterdir()) == ["one"]
    entry.write_text('[[{"text": "cut off')
    third = cached_samples(slow_sample(str(markers), "three"), "sha", ["p"], **SETTINGS)
    assert third == first and sorted(p.name for p in markers.iterdir()) == ["one", "three"]
    other_settings = cached_samples(slow_sample(str(markers), "four"), "sha", ["p"], **{**SETTINGS, "seed": 8})
    assert other_settings == first and "four" in {p.name for p in markers.iterdir()}  # another key, sampled anew
