"""Trainer pieces and in-process runs: schedules, loss, accumulation, fingerprints, NaN stop, bad checkpoints."""
from __future__ import annotations

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import test_train_helpers as H
from test_train_helpers import compilation_cache  # noqa: F401 (fixture)
from fiat_jax.errors import UserError
from fiat_jax.train import checkpoints, losses, optimizers, trainer


pytestmark = pytest.mark.usefixtures("compilation_cache")


@pytest.fixture(autouse=True)
def _seqio_registry():
    import seqio

    yield
    for name in list(seqio.TaskRegistry.names()):
        if name.startswith("toy_"):
            seqio.TaskRegistry.remove(name)


def test_schedules_warmup_then_decay():
    cos = optimizers.learning_rate_schedule(base_learning_rate=1.0, warmup_steps=10, decay="cosine",
                                            total_steps=110, end_fraction=0.1)
    assert float(cos(0)) == 0.0 and abs(float(cos(5)) - 0.5) < 1e-6 and abs(float(cos(10)) - 1.0) < 1e-6
    assert abs(float(cos(60)) - 0.55) < 1e-5 and abs(float(cos(110)) - 0.1) < 1e-6
    lin = optimizers.learning_rate_schedule(base_learning_rate=2.0, decay="linear", total_steps=100)
    assert abs(float(lin(50)) - 1.0) < 1e-6
    rsqrt = optimizers.learning_rate_schedule(base_learning_rate=1.0, warmup_steps=100, decay="rsqrt",
                                              warmup_init_fraction=1.0)
    assert abs(float(rsqrt(50)) - 1.0) < 1e-6 and abs(float(rsqrt(400)) - 0.5) < 1e-6
    with pytest.raises(UserError, match="total_steps"):
        optimizers.learning_rate_schedule(decay="cosine")


def test_weight_decay_mask_skips_norms_and_biases():
    params = {"layer": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,)), "scale": jnp.ones((2,))},
              "token_embedder": {"embedding": jnp.ones((4, 2))}}
    mask = optimizers.decay_mask(params, exclude=(r"(^|/)embedding$",))
    assert mask == {"layer": {"kernel": True, "bias": False, "scale": False},
                    "token_embedder": {"embedding": False}}
    tx = optimizers.make_optimizer(schedule=0.1, weight_decay=0.5, clip_norm=None, name="sgd", momentum=0.0)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert float(updates["layer"]["kernel"][0, 0]) == pytest.approx(-0.05)
    assert float(updates["layer"]["bias"][0]) == 0.0


def test_loss_counts_only_weighted_targets_and_z_loss():
    logits = jnp.array([[[2.0, 0.0, 0.0], [0.0, 5.0, 0.0]]])
    targets = jnp.array([[0, 1]])
    weights = jnp.array([[0.0, 1.0]])
    sums = losses.cross_entropy_sums(logits, targets, weights)
    expected = float(jax.nn.logsumexp(logits[0, 1]) - 5.0)
    assert float(sums["loss"]) == pytest.approx(expected, rel=1e-6)
    assert float(sums["weight"]) == 1.0 and float(sums["correct"]) == 1.0
    with_z = losses.cross_entropy_sums(logits, targets, weights, z_loss=1e-2)
    assert float(with_z["loss"]) == pytest.approx(expected + 1e-2 * float(jax.nn.logsumexp(logits[0, 1])) ** 2)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    one = H.toy_train(str(tmp_path / "a"), 3, batch_size=16, async_checkpointing=False)
    two = H.toy_train(str(tmp_path / "b"), 3, batch_size=16, grad_accum_steps=4, async_checkpointing=False)
    a, b = H.final_params(str(tmp_path / "a")), H.final_params(str(tmp_path / "b"))
    assert a.keys() == b.keys()
    # Summing 4 micro-batch gradients reassociates the fp32 sums, and Adam divides each update by the gradient's
    # own size, so an element whose gradient is near zero can move by far more than eps times its value: the
    # error is bounded relative to the tensor's magnitude, not the element's (fp32 eps 1.2e-7; 1e-4 leaves ~800
    # eps of headroom over 3 steps, while a wrong accumulation, e.g. a dropped micro-batch, moves every element).
    for name in a:
        H.assert_close_to_scale(b[name], a[name], rel=1e-4, err_msg=name)
    assert one.metrics["train/loss"] == pytest.approx(two.metrics["train/loss"], rel=1e-4)


def test_run_dir_layout_and_resume(tmp_path):
    model_dir = tmp_path / "run"
    result = H.toy_train(str(model_dir), 6, checkpoint_every_steps=4)
    assert result.step == 6
    assert (model_dir / "config.gin").is_file() and (model_dir / "fingerprint.json").is_file()
    rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "accuracy", "tokens_per_s", "learning_rate", "grad_norm"} <= set(rows[-1])
    assert sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()) == [4, 6]
    again = H.toy_train(str(model_dir), 8, checkpoint_every_steps=4)  # same command, longer: resumes at 6
    rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][6:] == [7, 8] and again.step == 8


def test_refuses_model_dir_of_another_model(tmp_path):
    model_dir = str(tmp_path / "run")
    H.toy_train(model_dir, 2, checkpoint_every_steps=2)
    wider = functools.partial(H.tiny_encdec, d_model=48)
    with pytest.raises(UserError, match="different model or config"):
        H.toy_train(model_dir, 4, factory=wider)
    other_dropout = functools.partial(H.tiny_encdec, dropout=0.1)  # same shapes, other config
    with pytest.raises(UserError, match="different model or config.*dropout"):
        H.toy_train(model_dir, 4, factory=other_dropout)
    result = H.toy_train(model_dir, 4, factory=other_dropout, restore_anyway=True)
    assert result.step == 4


def _nan_after(k: int) -> optax.GradientTransformation:
    """SGD whose update number ``k + 1`` (step k + 1) is NaN."""

    def init(params):
        return {"count": jnp.zeros((), jnp.int32)}

    def update(updates, state, params=None):
        scale = jnp.where(state["count"] >= k, jnp.nan, -1e-3)
        return jax.tree.map(lambda u: u * scale, updates), {"count": state["count"] + 1}

    return optax.GradientTransformation(init, update)


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    model_dir = tmp_path / "run"
    with pytest.raises(trainer.TrainingDivergedError, match=r"at step 4; stopped.*Last good checkpoint: step 3"):
        H.toy_train(str(model_dir), 10, optimizer=_nan_after(3), checkpoint_every_steps=1)
    saved = sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert max(saved) == 3
    params = H.final_params(str(model_dir))
    assert all(np.isfinite(v).all() for v in params.values())


def test_unreadable_newest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    model_dir = tmp_path / "run"
    H.toy_train(str(model_dir), 4, checkpoint_every_steps=2)
    ckpt_dir = model_dir / "checkpoints"
    # a save killed mid-write leaves a temporary directory; a damaged one loses its array data
    shutil.copytree(ckpt_dir / "4", ckpt_dir / "6.orbax-checkpoint-tmp-123")
    for path in (ckpt_dir / "4" / "state").rglob("*"):
        if path.is_file() and "metadata" not in path.name:
            path.write_bytes(b"garbage")
    result = H.toy_train(str(model_dir), 4, checkpoint_every_steps=2)
    assert result.step == 4  # resumed at 2, trained 2 more steps
    assert "unreadable" in caplog.text


def test_checkpoint_tree_round_trip():
    tree = {"params": {"layers": [{"kernel": np.ones((2, 2))}]}, "opt": (np.zeros(3), {"count": np.int32(1)})}
    nested = checkpoints.to_nested(tree)
    assert set(nested) == {"params", "opt"} and "0" in nested["params"]["layers"]
    back = checkpoints.from_nested(tree, nested)
    assert jax.tree.structure(back) == jax.tree.structure(tree)


def test_eval_during_training_keeps_best_checkpoint_and_writes_results(tmp_path):
    from fiat_jax.train import evaluator

    model_dir = tmp_path / "run"
    name = H.register_toy_task("copy", n=512)
    eval_fn = evaluator.training_eval_fn(mixture_or_task_name=name, task_feature_lengths={"inputs": 9, "targets": 9},
                                         num_examples=8, batch_size=8)
    H.toy_train(str(model_dir), 8, checkpoint_every_steps=2, eval_every_steps=4, eval_fn=eval_fn,
                best_metric="train/loss", best_mode="max", keep_checkpoints=1)  # "best" = highest loss: step 2
    saved = sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [2, 8]  # the latest + the best by metric
    evals = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [r["step"] for r in evals] == [4, 8]
    assert len(list((model_dir / "predictions").glob("*.jsonl"))) == 2
    results = json.loads((model_dir / "results.json").read_text())
    assert set(results["metrics"]) == {name} and "exact_match" in results["metrics"][name]
    assert results["tokens_seen"] == 8 * 16 * 18 and results["params_trained"] > 0


def test_bf16_compute_trains_with_fp32_master_weights(tmp_path):
    result = H.toy_train(str(tmp_path / "run"), 4, compute_dtype="bfloat16", log_every_steps=4)
    params = H.final_params(str(tmp_path / "run"))
    assert all(v.dtype == np.float32 for v in params.values())
    assert np.isfinite(result.metrics["train/loss"])
