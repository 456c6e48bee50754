"""The field policy of rerank requests (`POST /v1/rerank`): what each field does here.

The shape llama-server, vLLM and Jina take (and Cohere's, where it agrees); apart from the schema
(`neuron.server.rerank_schema`) so that the gateway's field tables (`cortex_gateway.field_tables`)
and docs/api.md read it without importing the neuron's server.
"""

from __future__ import annotations

from neuron.shared.field_policy import FieldPolicy, honoured, ignored, refused

NEVER_CUT = ("a query and document longer than the model's context are refused with a 400 naming the document, "
             "never cut; shorten or split the document")

POLICIES = [FieldPolicy("Rerank", {
    "model": honoured("a rerank model (`kind: rerank` in /v1/models)"),
    "query": honoured("a non-empty string"),
    "documents": honoured("a non-empty list of strings, or of objects with a string `text` (Jina's form); at "
                          "most 2048"),
    "top_n": honoured("the best n results (at least 1); more than the documents gives them all; absent: all"),
    "return_documents": honoured("true (the default, as Jina and vLLM answer): each result carries "
                                 "`document: {text}`; false leaves it out"),
    "truncate_prompt_tokens": refused(NEVER_CUT),
    "max_tokens_per_doc": refused(NEVER_CUT),
    "max_chunks_per_doc": refused("documents are not split into chunks here; split a long document yourself"),
    "rank_fields": refused("documents are strings or objects with `text`: put what is to be ranked in `text`"),
    "priority": ignored("the queue priority comes from the API key (the gateway's X-Cortex-Priority), not the body"),
    "user": ignored("an end-user id for a provider's abuse monitoring; nothing here monitors users"),
})]
POLICY = POLICIES[0]
