"""Teachers: frozen LLMs behind one small API (docs/CONTRACTS.md, "Teachers").

- ``base``: the :class:`~fiat_jax.teachers.base.Teacher` protocol, per-prompt failures, streaming helper;
- ``local``: a fiat_jax model (default the embedded SmolLM2-135M-Instruct), batched KV-cache decoding;
- ``openai_compat``: any OpenAI chat-completions server (vLLM, llama.cpp, Ollama, hosted), with retries;
- ``replay``: recorded replies from a JSONL file (by example id or prompt), e.g. reasoning of a large model;
- ``controlled``: a SIMULATED teacher whose reasoning leads to the gold answer with probability q (FIAT's
  teacher-quality axis);
- ``cache``: a persistent content-addressed sqlite cache and :class:`~fiat_jax.teachers.cache.CachedTeacher`;
- ``recipes``: versioned prompt recipes (text files in ``recipes/``) and reply parsers;
- ``materialise``: the one writer of teacher outputs (recipe + examples -> crash-safe, resumable JSONL), used
  by ``fiat teach`` and every method;
- ``teach``: ``fiat teach``, a thin gin entry: a teacher + recipe over a seqio task split, materialised.

Nothing is imported here: each module is light to import and pulls in jax / httpx only when used.
"""
