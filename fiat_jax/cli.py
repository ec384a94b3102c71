"""The ``fiat`` command: one gin-driven entry point per job (run, train, eval, generate, teach, sweep, ...).

Each subcommand names a "module:function"; the module is imported only when that subcommand runs, then the gin
files and ``--gin.X=Y`` bindings are parsed and the function is called with its arguments from gin (plus any
subcommand flags as keyword arguments), as t5x's ``gin_utils.run`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence

import gin

from fiat_jax import compile_cache, gin_utils, native_logs
from fiat_jax.errors import UserError
from fiat_jax.redact import redact


@dataclasses.dataclass(frozen=True)
class Command:
    target: str  # "package.module:function"
    help: str
    example: str
    uses_gin: bool = True
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="the user message (the chat template is applied)")
    p.add_argument("--max_new_tokens", type=int, default=None, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy")


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results_dir", help="a sweep directory holding results.jsonl")
    p.add_argument("--out_dir", default=None, help="where to write the report (default RESULTS_DIR/report)")


def _tasks_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "show"], help="list registered tasks, or show examples of one")
    p.add_argument("name", nargs="?", default=None, help="task or mixture name (for show)")
    p.add_argument("--split", default="train", help="dataset split (for show)")
    p.add_argument("-n", type=int, default=3, help="how many examples to show")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model_dir", required=True, help="a `fiat train` run directory (holds config.gin)")
    p.add_argument("--format", required=True, help="peft (HF peft adapter), merged (HF safetensors) or gguf")
    p.add_argument("--out", default=None, help="where to write (default MODEL_DIR/export/FORMAT)")
    p.add_argument("--checkpoint_step", type=int, default=None, help="default: the newest checkpoint")
    p.add_argument("--quant", default=None, help="gguf only: F32 (default), F16, Q8_0, Q4_0 or Q4_1")


COMMANDS: dict[str, Command] = {
    "run": Command("fiat_jax.methods.run:run", "run a method end to end (the quickstart by default)",
                   "fiat run --gin_file=runs/quickstart.gin"),
    "train": Command("fiat_jax.train.trainer:train", "train a model on a seqio task or mixture",
                     "fiat train --gin_file=runs/xcopa_tiny.gin --gin.MODEL_DIR=/tmp/fiat/xcopa_tiny"),
    "eval": Command("fiat_jax.train.evaluator:evaluate", "evaluate a checkpoint on seqio tasks",
                    "fiat eval --gin_file=runs/xcopa_tiny.gin --gin.MODEL_DIR=/tmp/fiat/xcopa_tiny"),
    "generate": Command("fiat_jax.models.generate:generate", "generate text with a model, streamed",
                        'fiat generate --gin_file=models/smollm2_135m.gin --prompt "What is the capital of France?"',
                        add_arguments=_generate_args),
    "teach": Command("fiat_jax.teachers.teach:teach", "run a teacher with a prompt recipe over a task split",
                     "fiat teach --gin_file=teachers/local_smollm2.gin --gin.TEACH_TASK=mgsm_en --gin.OUTPUT_DIR=/tmp/fiat/teacher"),
    "sweep": Command("fiat_jax.sweeps.sweep:sweep", "run a resumable grid of runs into results.jsonl",
                     "fiat sweep --gin_file=sweeps/fiat_scale_local_tiny.gin --gin.SWEEP_DIR=/tmp/fiat/sweep"),
    "report": Command("fiat_jax.sweeps.report:report", "tables and plots from a sweep's results.jsonl",
                      "fiat report /tmp/fiat/sweep", uses_gin=False, add_arguments=_report_args),
    "tasks": Command("fiat_jax.tasks_command:tasks_main", "list seqio tasks or show examples",
                     "fiat tasks show mgsm_en --split train -n 3", add_arguments=_tasks_args),
    "export": Command("fiat_jax.export:export_main", "write a run's LoRA adapter (HF peft) or merged model",
                      "fiat export --model_dir=/tmp/fiat/xcopa_tiny --format=peft", uses_gin=False,
                      add_arguments=_export_args),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fiat", description="fiat_jax: in-context learning fused with parameter-efficient fine-tuning.",
        epilog="Gin: --gin_file=F (repeatable, searched in ., --gin_search_paths, gin_configs/), --gin.X=Y.")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=f"{command.help}. Example: {command.example}")
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks and debug logs")
        if command.uses_gin:
            p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
            p.add_argument("--gin_search_paths", action="append", default=[],
                           help="comma-separated directories to search for gin files")
            p.add_argument("--compile_cache", default=None, metavar="DIR|off",
                           help="JAX persistent compilation cache directory, or 'off' "
                                "(default ~/.cache/fiat_jax/jax_cache, or $FIAT_JAX_COMPILE_CACHE)")
        if command.add_arguments:
            command.add_arguments(p)
    return parser


def _load(command_name: str, command: Command) -> Callable[..., object]:
    module_name, _, function_name = command.target.partition(":")
    try:
        found = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:
        found = None
    if found is None:
        raise NotAvailable(f"fiat {command_name}: not available yet ({module_name} is not in this build)")
    module = importlib.import_module(module_name)
    return getattr(module, function_name)


class NotAvailable(Exception):
    """A subcommand whose implementation has not landed."""


def _configure_logging(verbose: bool) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Libraries (gin's search-path notes, absl, orbax) log to the root logger: keep them at WARNING unless
    # --verbose, and let fiat_jax's own loggers speak at INFO.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("fiat_jax").setLevel(logging.DEBUG if verbose else logging.INFO)


def _run(args: argparse.Namespace, command: Command, gin_bindings: list[str]) -> None:
    """Import the subcommand, parse its gin config and call it (the heavy part: TensorFlow, seqio, JAX)."""
    entry = _load(args.command, command)
    kwargs = {k: v for k, v in vars(args).items()
              if k not in ("command", "verbose", "gin_file", "gin_search_paths", "compile_cache") and v is not None}
    if command.uses_gin:
        gin_utils.parse_gin(gin_files=args.gin_file, bindings=gin_bindings,
                            gin_search_paths=args.gin_search_paths)
        if args.compile_cache is not None:  # the flag wins over gin and the environment, also in child processes
            os.environ[compile_cache.ENV_VAR] = args.compile_cache
            compile_cache.configure(cache_dir=args.compile_cache)
        else:
            compile_cache.configure()
    try:
        # The config is final (no binding changes), but modules imported lazily during the run (a model
        # family, a teacher backend) still register their configurables: t5x imports them all up front.
        with gin.unlock_config():
            entry(**kwargs)
    except TypeError as err:
        if "No values supplied by Gin or caller" not in str(err):
            raise
        raise UserError(f"fiat {args.command}: a required gin binding is missing: "
                        f"{gin_utils._error_line(err)}") from err


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    parser = build_parser()
    try:
        gin_bindings, rest = gin_utils.split_gin_flags(argv)
        args = parser.parse_args(rest)
        if args.command is None:
            parser.print_help()
            return 2
        command = COMMANDS[args.command]
        if gin_bindings and not command.uses_gin:
            raise UserError(f"fiat {args.command} takes no --gin.* flags")
        if command.uses_gin:  # before any heavy import: a wrong file name or flag fails in well under a second
            gin_utils.check_gin_inputs(gin_files=args.gin_file, bindings=gin_bindings,
                                       gin_search_paths=args.gin_search_paths)
        _configure_logging(verbose)
        with native_logs.filter_native_logs(enabled=not verbose):
            _run(args, command, gin_bindings)
        return 0
    except NotAvailable as err:
        print(str(err), file=sys.stderr)
        return 2
    except UserError as err:
        if verbose:
            raise
        # Gin appends "In call to configurable ..." lines; the first line is the message.
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        # Never echo a value that looks like a key (a key given as a flag).
        print(f"fiat: error: {redact(first_line)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fiat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
