"""The local teacher: greedy decoding is deterministic and independent of batching (tiny model, fast), and on the
real embedded SmolLM2-135M-Instruct gives the same greedy outputs for a fixed prompt set every run (slow)."""
from __future__ import annotations

import types

import pytest


@pytest.fixture(scope="module")
def tiny():
    import seqio

    from fiat_jax.models import build_model
    from fiat_jax.models.decoder import DecoderConfig

    cfg = DecoderConfig(vocab_size=260, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                        mlp_dim=64, max_length=256)
    model = build_model(config=cfg, seed=3)
    pre = types.SimpleNamespace(vocabulary=seqio.ByteVocabulary(), chat_template=None, source="tiny")
    return pre, model


def _teacher(tiny, **kw):
    from fiat_jax.teachers.local import LocalTeacher

    pre, model = tiny
    return LocalTeacher(checkpoint="tiny", pretrained=pre, model=model, **kw)


def test_greedy_is_deterministic_and_batch_independent(tiny):
    prompts = ["a", "hello there", "xyz xyz xyz xyz", "q"]
    batched = _teacher(tiny, batch_size=4)
    out = batched.generate(prompts, max_new_tokens=6)
    assert len(out) == 4 and out == batched.generate(prompts, max_new_tokens=6)
    single = _teacher(tiny, batch_size=1)
    assert [single.generate([p], max_new_tokens=6)[0] for p in prompts[:2]] == out[:2]
    # The token budget is bucketed for compilation, the outputs are not: a shorter budget is a prefix.
    short = batched.generate(prompts, max_new_tokens=3)
    assert all(o.startswith(s) for o, s in zip(out, short))
    assert batched.identity == "local:tiny+raw" or batched.identity.startswith("local:tiny")


def test_stop_and_score(tiny):
    t = _teacher(tiny, batch_size=2)
    full = t.generate(["abc"], max_new_tokens=8)[0]
    if len(full) > 2:
        stop = full[2]
        assert t.generate(["abc"], max_new_tokens=8, stop=[stop])[0] == full[:full.index(stop)]
    scores = t.score("abc", ["d", "de"])
    assert len(scores) == 2 and all(s < 0 for s in scores)


SMOLLM2_GREEDY = {  # max_new_tokens=12, greedy, chat template applied
    "What is the capital of France?": "The capital of France is Paris.",
    "What is 2 + 3? Answer with a number.": "2 + 3 = 5",
}


@pytest.mark.slow  # loads the 98 MB GGUF (~9-30 s) and compiles
def test_smollm2_greedy_outputs_are_fixed():
    from fiat_jax.teachers.local import local_teacher

    prompts = list(SMOLLM2_GREEDY) + ["Name a primary colour."]
    teacher = local_teacher(batch_size=4)
    first = teacher.generate(prompts, max_new_tokens=12)
    assert first[:2] == list(SMOLLM2_GREEDY.values())
    again = local_teacher(batch_size=4)  # the model is loaded once per process
    assert again.generate(prompts, max_new_tokens=12) == first
    assert teacher.identity == "local:embedded:smollm2-135m-instruct"
    paris, london = teacher.score("What is the capital of France?", ["The capital of France is Paris.",
                                                                     "The capital of France is London."])
    assert paris > london


def test_plan_batches_follows_the_token_budget_and_covers_every_prompt():
    from fiat_jax.teachers.local import plan_batches

    lengths = [5, 200, 7, 90, 130, 6, 250, 8, 9, 60, 3]
    plan = plan_batches(lengths, new_tokens=64, batch_size=8, batch_tokens=1024, seed=0)
    assert sorted(i for idx, _ in plan for i in idx) == list(range(len(lengths)))
    for idx, rows in plan:
        assert 1 <= len(idx) <= rows <= 8 and rows & (rows - 1) == 0  # a power of two, padded to when short
        bucket = max(8, 1 << (max(lengths[i] for i in idx) - 1).bit_length())
        assert rows * (bucket + 64) <= 1024 or rows == 1
        # consecutive in length order: a batch's prompts are of similar length
        assert max(lengths[i] for i in idx) == lengths[idx[0]]
    # long prompts go few to a batch, short ones many
    rows_of = {i: rows for idx, rows in plan for i in idx}
    assert rows_of[6] < rows_of[10]
    # the order is shuffled with the seed, the same for the same seed
    assert plan == plan_batches(lengths, new_tokens=64, batch_size=8, batch_tokens=1024, seed=0)
    fixed = plan_batches(lengths, new_tokens=64, batch_size=4, batch_tokens=None, seed=0)
    assert all(rows == 4 for _, rows in fixed)


def test_budgeted_batches_give_the_same_replies(tiny):
    budgeted = _teacher(tiny, batch_size=8, batch_tokens=96)
    single = _teacher(tiny, batch_size=1, batch_tokens=None)
    prompts = ["a b c", "d", "e f g h i j k l m n o p q r s t", "u v", "w x y z a b c d e", "f"]
    assert budgeted.generate(prompts, max_new_tokens=5) == single.generate(prompts, max_new_tokens=5)
    assert budgeted.decode_s > 0 and budgeted.generated_tokens > 0


def test_teach_with_a_local_teacher_reports_its_compile_share(tiny, tmp_path, capsys):
    """`fiat teach` says how much of its wall time was compiling (the rest: decoding), in <split>.timing.json and
    one stderr line, so a teacher run bound by compiles is visible."""
    import json

    import seqio

    from fiat_jax.data.examples import register_examples_task
    from fiat_jax.teachers.teach import teach

    name = "teachtiming_en"
    rows = [{"id": f"q{i}", "inputs": f"What is {i} + {i}?", "targets": str(2 * i)} for i in range(6)]
    register_examples_task(name, {"train": rows}, vocabulary=seqio.ByteVocabulary())
    teacher = _teacher(tiny, batch_size=4)
    from fiat_jax.models import decoding

    decoding._generate_jit.clear_cache()  # other tests of this module compiled the same shapes in this process
    try:
        summary = teach(teacher=teacher, recipe="fiat_reasoning", task=name, output_dir=str(tmp_path),
                        progress=False, max_new_tokens=8, fail_on_failures=False)
    finally:
        seqio.TaskRegistry.remove(name)
    timing = json.loads((tmp_path / name / "train.timing.json").read_text())
    assert timing["items"] == summary.written > 0 and timing["wall_s"] > 0
    assert 0.0 < timing["share"] <= 1.0 and timing["requests"] >= 1  # a cold process compiles the decode loop
    assert "of it compiling" in capsys.readouterr().err
