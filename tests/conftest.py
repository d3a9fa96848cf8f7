"""Shared test setup: everything offline, every cache in a temporary folder."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("RLHF_LAB_CACHE", tempfile.mkdtemp(prefix="rlhf-lab-cache-"))
