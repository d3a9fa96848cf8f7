"""Data adapters: every shape from its fixture file, and one-line errors for bad input."""

from pathlib import Path

import pytest

from recipes.core.data import fingerprint, load_conversations, load_preferences, load_prompts, load_text
from recipes.core.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# --- text -------------------------------------------------------------------------------------

def test_txt_holds_one_document_per_paragraph():
    texts = load_text(fixture("text.txt"))["text"]
    assert texts == ["The cat sat in the garden.\nIt was happy.",
                     "User: What is 2 + 3?\nAssistant: 2 + 3 = 5.",
                     "A fox lives near the river."]


def test_jsonl_text_column():
    dataset = load_text(fixture("text.jsonl"))
    assert dataset.column_names == ["text"]
    assert dataset["text"] == ["First document.", "Second document."]


def test_directory_splits_and_missing_split():
    assert load_text(fixture("splits"), split="validation")["text"] == ["validation one"]
    with pytest.raises(UserError, match=r"no split 'test'.*found splits: train, validation"):
        load_text(fixture("splits"), split="test")


def test_a_single_file_has_only_train():
    with pytest.raises(UserError, match=r"text\.jsonl: a single file holds only the 'train' split"):
        load_text(fixture("text.jsonl"), split="validation")


def test_missing_text_column_names_file_and_row():
    with pytest.raises(UserError) as error:
        load_text(fixture("bad_text_column.jsonl"))
    assert str(error.value).startswith(f'{fixture("bad_text_column.jsonl")} row 2: expected a "text" string')


# --- conversations ----------------------------------------------------------------------------

def test_messages():
    dataset = load_conversations(fixture("messages.jsonl"))
    assert dataset.column_names == ["messages"]
    assert dataset[1]["messages"] == [user("What is 2 + 2?"), assistant("4.")]
    assert dataset[0]["messages"][0] == {"role": "system", "content": "Be kind."}


def test_alpaca_joins_instruction_and_input():
    dataset = load_conversations(fixture("alpaca.json"))
    assert dataset[0]["messages"] == [user("Add the numbers.\n\n2 and 3"), assistant("5")]
    assert dataset[1]["messages"] == [user("Say hello."), assistant("Hello!")]


@pytest.mark.parametrize("name", ["sharegpt.jsonl", "sharegpt.parquet"])
def test_sharegpt(name):
    dataset = load_conversations(fixture(name))
    assert dataset[0]["messages"] == [{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello.")]
    assert [m["role"] for m in dataset[1]["messages"]] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("name, row, expected", [
    ("bad_messages_string.jsonl", 3, 'expected a "messages" list of {"role", "content"} dicts, got a string'),
    ("bad_messages_role.jsonl", 1, "expected message 1 role to be one of system, user, assistant, got 'human'"),
    ("bad_alpaca_missing_output.jsonl", 2, 'expected a "output" string (alpaca format), got no such column'),
    ("bad_sharegpt_from.jsonl", 1, 'expected turn 1 "from" to be one of'),
    ("bad_json_line.jsonl", 2, "expected one JSON object per line, got invalid JSON"),
    ("unknown_shape.jsonl", 1, 'expected a "messages" list'),
])
def test_conversation_errors_name_file_row_and_expectation(name, row, expected):
    with pytest.raises(UserError) as error:
        load_conversations(fixture(name))
    message = str(error.value)
    assert message.startswith(f"{fixture(name)} row {row}: ")
    assert expected in message
    assert "\n" not in message


# --- preferences ------------------------------------------------------------------------------

def test_prompt_chosen_rejected_strings_and_conversational():
    dataset = load_preferences(fixture("pairs.jsonl"))
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    assert dataset[0] == {"prompt": [user("What is 2 + 2?")], "chosen": [assistant("4.")], "rejected": [assistant("5.")]}
    assert dataset[1]["prompt"] == [{"role": "system", "content": "Be kind."}, user("Hi")]


def test_hh_rlhf_transcripts_split_into_shared_prompt_and_replies():
    dataset = load_preferences(fixture("hh_rlhf.jsonl"))
    assert dataset[0]["prompt"] == [user("How do I bake bread?"), assistant("Mix flour, water and yeast."), user("Then?")]
    assert dataset[0]["chosen"] == [assistant("Bake it for forty minutes.")]
    assert dataset[0]["rejected"] == [assistant("Figure it out.")]
    assert dataset[1]["rejected"] == [assistant("")]


@pytest.mark.parametrize("name", ["ultrafeedback.jsonl", "ultrafeedback.parquet"])
def test_ultrafeedback_message_lists(name):
    dataset = load_preferences(fixture(name))
    assert dataset[0] == {"prompt": [user("What is 2 + 2?")], "chosen": [assistant("4")], "rejected": [assistant("22")]}


@pytest.mark.parametrize("name, row, expected", [
    ("bad_pairs_missing_rejected.jsonl", 1, 'expected "chosen" and "rejected" columns'),
    ("bad_pairs_row.jsonl", 2, 'expected "chosen" to be a string or a list with one assistant message, got a number'),
    ("bad_hh_transcript.jsonl", 2, 'expected "chosen" to be an hh-rlhf transcript'),
    ("bad_ultrafeedback_prompt.jsonl", 1, "share every turn before their last reply"),
])
def test_preference_errors_name_file_row_and_expectation(name, row, expected):
    with pytest.raises(UserError) as error:
        load_preferences(fixture(name))
    assert str(error.value).startswith(f"{fixture(name)} row {row}: ")
    assert expected in str(error.value)


def test_a_forced_format_that_does_not_fit_is_reported():
    with pytest.raises(UserError, match=r"row 1: expected \"chosen\" to be an hh-rlhf transcript"):
        load_preferences(fixture("pairs.jsonl"), format="hh-rlhf")


# --- prompts ----------------------------------------------------------------------------------

def test_prompts_from_prompt_column_conversations_and_pairs():
    assert load_prompts(fixture("prompts.jsonl"))[0] == {"prompt": [user("Tell me a joke.")], "family": "unknown"}
    from_messages = load_prompts(fixture("sharegpt.jsonl"))
    assert from_messages[1]["prompt"][-1] == user("3+3?")
    assert load_prompts(fixture("hh_rlhf.jsonl"))[1]["prompt"] == [user("Hi")]


# --- sources ----------------------------------------------------------------------------------

def test_hub_path_through_datasets_load_dataset(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path))
    dataset = load_conversations("hf:" + fixture("hub_dir"))
    assert dataset[0]["messages"] == [user("Hi"), assistant("Hello")]
    with pytest.raises(UserError, match=r"hub_dir: could not load Hugging Face dataset split 'validation'"):
        load_conversations("hf:" + fixture("hub_dir"), split="validation")


def test_missing_local_file():
    with pytest.raises(UserError, match=r"nope\.jsonl: no such file or directory"):
        load_text("data/nope.jsonl")


def test_fingerprints_are_short_stable_and_content_based(tmp_path):
    copy = tmp_path / "text.jsonl"
    copy.write_bytes((FIXTURES / "text.jsonl").read_bytes())
    assert fingerprint(str(copy)) == fingerprint(fixture("text.jsonl"))
    assert len(fingerprint(str(copy))) == 16
    copy.write_text('{"text": "changed"}\n')
    assert fingerprint(str(copy)) != fingerprint(fixture("text.jsonl"))
    assert fingerprint("org/name", split="train") != fingerprint("org/name", split="test")
    assert fingerprint(fixture("splits")) == fingerprint(fixture("splits"))
