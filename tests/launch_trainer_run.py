"""One process of a multi-host run of the real trainer (fiat_jax.train) on the toy copy task, for
tests/test_launch_multihost.py: ``partitioning.initialize_distributed()`` from the FIAT_* variables that
launch/local.py sets, then ``trainer.train`` on an ``fsdp`` mesh over every process's devices.

    python tests/launch_trainer_run.py MODEL_DIR STEPS
"""
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def main() -> None:
    model_dir, steps = sys.argv[1], int(sys.argv[2])
    from fiat_jax import partitioning

    partitioning.initialize_distributed()
    import jax

    import test_train_helpers as H

    # No shuffling: seqio shards the source by process (interleaved), so each global batch holds the same
    # examples as the one-process run's and the two runs must take identical steps.
    H.toy_train(model_dir, steps, num_devices=None, mesh="fsdp=-1", shuffle=False, async_checkpointing=False,
                checkpoint_every_steps=steps)
    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.device_count()} devices, done", flush=True)


if __name__ == "__main__":
    main()
