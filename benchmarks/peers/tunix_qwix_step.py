"""Tunix (google-tunix 0.1.7) Llama3 with the SmolLM2-135M shape, qwix LoRA, one jitted train step (CPU, fp32).

Runs in its own venv (.venv-tunix, made by benchmarks/bench_peers.py):
python benchmarks/peers/tunix_qwix_step.py --mode lora|full [--steps 3]
"""

from __future__ import annotations

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from benchmarks.peers.common import BATCH, LORA_ALPHA, LORA_RANK, SMOLLM2_135M, emit, step_args  # noqa: E402


def main() -> None:
    args = step_args()

    import jax
    import jax.numpy as jnp
    import optax
    import qwix
    from flax import nnx
    from tunix.models.llama3 import model as llama3

    s = SMOLLM2_135M
    config = llama3.ModelConfig(num_layers=s["n_layers"], vocab_size=s["vocab_size"], embed_dim=s["d_model"],
                                hidden_dim=s["mlp_dim"], num_heads=s["n_heads"], head_dim=s["head_dim"],
                                num_kv_heads=s["n_kv_heads"], rope_theta=int(s["rope_theta"]),
                                norm_eps=s["rms_norm_eps"], weight_tying=s["tie_embeddings"])
    with nnx.use_eager_sharding(False):
        model = llama3.Llama3(config, rngs=nnx.Rngs(0))
    b, t = BATCH, args.seq_len
    tokens = jax.random.randint(jax.random.key(1), (b, t), 0, s["vocab_size"])
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), dtype=jnp.bool_)), (b, t, t))
    if args.mode == "lora":
        provider = qwix.LoraProvider(module_path=".*(q_proj|k_proj|v_proj|o_proj)", rank=LORA_RANK,
                                     alpha=LORA_ALPHA)
        with nnx.use_eager_sharding(False):
            model = qwix.apply_lora_to_model(model, provider, rngs=nnx.Rngs(2), input_tokens=tokens,
                                             positions=positions, cache=None, attention_mask=mask)
        trainable = nnx.LoRAParam
    else:
        trainable = nnx.Param
    graphdef, params, rest = nnx.split(model, trainable, ...)
    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)

    def loss_fn(p, rest_state):
        logits, _ = nnx.merge(graphdef, p, rest_state)(tokens, positions, None, mask)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()

    @jax.jit
    def step(p, o, rest_state):
        loss, grads = jax.value_and_grad(loss_fn)(p, rest_state)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    params, opt_state, loss = step(params, opt_state, rest)
    loss.block_until_ready()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, rest)
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
    trainable_count = sum(x.size for x in jax.tree.leaves(params))
    emit(peer="tunix+qwix", mode=args.mode, step_s=sorted(times)[len(times) // 2], min_s=min(times),
         max_s=max(times), trainable=trainable_count)


if __name__ == "__main__":
    main()
