"""The LM toolkit: what interventions, training and evaluation all do with a causal LM in-process.

* ``chat_format``: QA pairs rendered the way the served model sees them (labels on the answer only),
  and padding into batches;
* ``nll``: teacher-forced answer NLL (per token, per answer, per QA pair, per labelled batch), with an
  optional prompt given as embeddings and an optional logits transform;
* ``generate``: greedy generation from token ids or from prompt embeddings, and the stop ids;
* ``rouge``: ROUGE-1/ROUGE-L recall via the ``rouge_score`` library, as TOFU computes it.

The metrics built on these (truth ratio, forget quality, utility) live in ``guard.eval.tofu_metrics``.
"""
