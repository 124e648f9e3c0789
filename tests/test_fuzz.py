"""CI-sized fuzz of a real `coserve serve` on loopback (scripts/fuzz.py at a few hundred
cases): schemathesis over its OpenAPI document and a seeded corpus of mutated PNG/JPEG
bytes, as JSON base64 and as multipart. No answer may be a 5xx, none may be missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import fuzz  # noqa: E402

HEADERS = {"Authorization": f"Bearer {fuzz.TOKEN}"}
NUM_CASES = 300
NUM_IMAGES = 150  # each sent twice: JSON and multipart


@pytest.fixture(scope="module")
def server():
    with fuzz.tiny_server([]) as base_url:
        yield base_url


def test_openapi_fuzz_answers_no_5xx(server):
    counts = fuzz.fuzz_openapi(server, NUM_CASES, HEADERS)
    assert counts.num_cases >= NUM_CASES // 2, counts.line("schemathesis")
    assert counts.num_5xx == 0, "\n".join(counts.failures)
    assert counts.by_status["4xx"] > 0  # the generator did reach the validation paths


def test_mutated_images_answer_no_5xx(server):
    counts = fuzz.fuzz_images(server, NUM_IMAGES, HEADERS, seed=1)
    assert counts.num_cases == 2 * NUM_IMAGES
    assert counts.num_5xx == 0, "\n".join(counts.failures)


def test_corpus_is_deterministic():
    first = [data for _, _, data in fuzz.mutated_corpus(40, seed=3)]
    again = [data for _, _, data in fuzz.mutated_corpus(40, seed=3)]
    assert first == again
