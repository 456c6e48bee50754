"""Rerank requests and answers, pure: parsing into a typed request, the ranking, the answer's shape."""

from __future__ import annotations

import numpy as np
import pytest

from neuron.engine.backends.pairs import PairFrame
from neuron.engine.backends.torch_rerank import activation_of
from neuron.engine.rerank import ranking
from neuron.server.rerank_routes import answer
from neuron.server.rerank_schema import MAX_DOCUMENTS, parse_rerank
from neuron.shared.errors import ApiError


def test_documents_as_strings_or_objects_with_text():
    req = parse_rerank({"model": "r", "query": "q", "documents": ["a", {"text": "b"}, ""]})
    assert req.documents == ["a", "b", ""] and req.top_n is None and req.return_documents is True


@pytest.mark.parametrize(("body", "param"), [
    ({"documents": ["a"]}, "query"),
    ({"query": "q"}, "documents"),
    ({"query": "q", "documents": {"text": "a"}}, "documents"),
    ({"query": "q", "documents": [{"txt": "a"}]}, "documents"),
    ({"query": "q", "documents": ["a"] * (MAX_DOCUMENTS + 1)}, "documents"),
    ({"query": "q", "documents": ["a"], "top_n": -1}, "top_n"),
    ({"query": "q", "documents": ["a"], "top_n": True}, "top_n"),
    ({"query": "q", "documents": ["a"], "rank_fields": ["title"]}, "rank_fields"),
    ({"query": "q", "documents": ["a"], "max_chunks_per_doc": 4}, "max_chunks_per_doc"),
])
def test_bad_requests_name_the_field(body, param):
    with pytest.raises(ApiError) as exc:
        parse_rerank({"model": "r", **body})
    assert exc.value.status == 400 and exc.value.param == param


def test_ignored_fields_are_accepted():
    parse_rerank({"model": "r", "query": "q", "documents": ["a"], "user": "u", "priority": 3})


def test_ranking_is_by_score_descending_ties_in_document_order_and_top_n_cuts():
    scores = np.array([0.2, 0.9, 0.2, 0.5], dtype=np.float32)
    assert [r.index for r in ranking(scores, None)] == [1, 3, 0, 2]
    assert [r.index for r in ranking(scores, 2)] == [1, 3]
    assert len(ranking(scores, 10)) == 4


def test_the_answer_has_the_shape_llama_server_vllm_and_jina_give():
    req = parse_rerank({"model": "r", "query": "q", "documents": ["a", "b"], "top_n": 1})
    body = answer("r", req, np.array([0.1, 0.7], dtype=np.float32), 9)
    assert body["results"] == [{"index": 1, "relevance_score": pytest.approx(0.7), "document": {"text": "b"}}]
    assert body["usage"] == {"prompt_tokens": 9, "total_tokens": 9} and body["model"] == "r"
    req.return_documents = False
    assert "document" not in answer("r", req, np.array([0.1, 0.7], dtype=np.float32), 9)["results"][0]


def test_a_pair_is_framed_with_its_token_types():
    bert = PairFrame([101], [102], [102], (0, 0, 0, 1, 1))
    assert bert.framed([7, 8], [9]) == ([101, 7, 8, 102, 9, 102], [0, 0, 0, 0, 1, 1])


@pytest.mark.parametrize(("config", "name"), [
    ({}, "Sigmoid"),
    ({"sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity"}}, "Identity"),
    ({"sbert_ce_default_activation_function": "torch.nn.modules.activation.Sigmoid"}, "Sigmoid"),
])
def test_the_activation_is_sentence_transformers_default_unless_the_config_names_one(config, name):
    assert activation_of(config) == name


def test_an_activation_we_cannot_apply_fails_the_load_naming_it():
    with pytest.raises(ValueError, match="Softmax"):
        activation_of({"sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Softmax"}})
