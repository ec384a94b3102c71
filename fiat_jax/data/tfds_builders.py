"""TFDS builders that read the published files from a data directory and prepare them once into TFRecords.

Why TFDS: a large release is parsed and validated once, then every host reads the prepared TFRecords fast through
``seqio.TfdsDataSource``. Each builder has one config per language; its constructor takes ``source_dir`` (the
DATA_DIR holding the published files), ``seed`` and ``split_fractions`` (used to cut single-split sources) and
``strict``. Prepared data goes to ``prepared_dir(...)``, a directory keyed by those arguments and by the contents of
the source's files (``source_fingerprint``), so a different source directory, seed or an edited data file never
reads stale records.

Splits written (``build_splits``): the source's own splits, or, for a single-split source, seeded
``train``/``validation``/``test`` plus ``full`` (the whole published set, train included); a source with no train
split and a ``carve`` gets a seeded, disjoint ``train``/``validation`` carved out of one published split (XCOPA:
80 + 20 of its 100 validation items; its 500 test items stay the test). Preparation refuses (UserError) when an
example of ``validation`` or ``test`` is also in ``train``, by id or by normalised content. Every example carries
``split`` and ``rank`` (see ``splits.py``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from fiat_jax.data import sources, splits
from fiat_jax.data.readers import RowReport

BUILDER_VERSION = "1.0.0"
# XTREME-UP's cross-language QA covers many more languages than its in-language QA; configs for both.
XTREME_UP_EXTRA_LANGUAGES = ("as", "bho", "brx", "gbm", "gom", "gu", "hi", "hne", "kn", "mai", "ml", "mni", "mr",
                             "mwr", "or", "pa", "ps", "sa", "ta", "ur")


def _feature(kind: str):
    return {"text": tfds.features.Text(), "int": tfds.features.Scalar(np.int64),
            "float": tfds.features.Scalar(np.float32),
            "text_list": tfds.features.Sequence(tfds.features.Text())}[kind]


def prepared_dir(root: str, *, source_dir: str, seed: int, split_fractions: Mapping[str, float],
                 strict: bool = False, fingerprint: str = "") -> str:
    """Where TFRecords prepared from ``source_dir`` with this seed, cut and strictness live, under ``root``.

    Strictness is part of the key so a strict run never reuses records a lenient run prepared past bad rows;
    ``fingerprint`` (``source_fingerprint``) so an edited data file is prepared again.
    """
    key = json.dumps({"src": os.path.abspath(source_dir), "seed": seed, "fractions": dict(split_fractions),
                      "strict": strict, "version": BUILDER_VERSION, "files": fingerprint}, sort_keys=True)
    return os.path.join(root, hashlib.sha256(key.encode()).hexdigest()[:16])


_FINGERPRINTS_FILE = ".source_fingerprints.json"


def source_fingerprint(source_dir: str, spec: sources.SourceSpec, *, memo_dir: str | None = None) -> str:
    """A hash of the contents of every file under ``source_dir/<spec.subdir>`` ("missing" when there is none).

    A file's SHA-256 is recomputed only when its size or mtime changed since the last call (remembered in
    ``memo_dir/.source_fingerprints.json``), so registering tasks stays cheap while an edited file still changes
    the fingerprint.
    """
    base = os.path.join(source_dir, spec.subdir) if spec.subdir else source_dir
    if not os.path.isdir(base):
        return "missing"
    memo_path = os.path.join(memo_dir, _FINGERPRINTS_FILE) if memo_dir else None
    memo: dict[str, Any] = {}
    if memo_path and os.path.isfile(memo_path):
        try:
            with open(memo_path) as f:
                memo = json.load(f)
        except (OSError, json.JSONDecodeError):
            memo = {}
    changed = False
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(base):
        dirs.sort()
        for name in sorted(files):
            path = os.path.abspath(os.path.join(folder, name))
            stat = os.stat(path)
            seen = memo.get(path)
            if seen and seen[0] == stat.st_size and seen[1] == stat.st_mtime_ns:
                file_hash = seen[2]
            else:
                file_hash = _sha256_file(path)
                memo[path] = [stat.st_size, stat.st_mtime_ns, file_hash]
                changed = True
            digest.update(f"{os.path.relpath(path, base)}\0{file_hash}\0".encode())
    if memo_path and changed:
        os.makedirs(memo_dir, exist_ok=True)
        tmp = f"{memo_path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(memo, f)
        os.replace(tmp, memo_path)
    return digest.hexdigest()[:16]


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_splits(spec: sources.SourceSpec, source_dir: str, lang: str, *, seed: int,
                 fractions: Mapping[str, float], report: RowReport) -> dict[str, list[dict[str, Any]]]:
    """The examples of every split a task of ``spec`` in ``lang`` reads, disjoint train/eval (checked)."""
    native = spec.read(source_dir, lang, report)
    task = f"{spec.name}_{lang}"
    if "train" not in native and spec.carve is not None:
        origin, pieces = spec.carve
        carved = splits.carve(splits.drop_repeats(native.pop(origin), spec.content_fields, where=task),
                              seed=seed, fractions=pieces)
        out = {**carved, **{name: splits.with_ranks(rows, seed=seed, split=name) for name, rows in native.items()}}
    elif len(native) == 1:
        (only,) = native.values()
        out = splits.cut(splits.drop_repeats(only, spec.content_fields, where=task), seed=seed, fractions=fractions)
    else:
        out = {name: splits.with_ranks(rows, seed=seed, split=name) for name, rows in native.items()}
    splits.check_disjoint(out, task=task, content_fields=spec.content_fields)
    return out


class _LocalFilesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared logic: read a ``sources.SourceSpec`` for the config's language; cut single-split sources."""

    SOURCE: str = ""
    # No package directory (no checksums or metadata files): TFDS must not look for one (it would need
    # importlib_resources, which this stack does not install).
    code_path = None
    VERSION = tfds.core.Version(BUILDER_VERSION)

    def __init__(self, *, source_dir: str, seed: int = 0,
                 split_fractions: Mapping[str, float] | None = None, strict: bool = False, **kwargs: Any):
        self._source_dir = os.fspath(source_dir)
        self._seed = int(seed)
        self._fractions = dict(split_fractions or splits.DEFAULT_FRACTIONS)
        self._strict = strict
        super().__init__(**kwargs)

    @property
    def spec(self) -> sources.SourceSpec:
        return sources.SOURCES[self.SOURCE]

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"id": tfds.features.Text(), "language": tfds.features.Text(), "split": tfds.features.Text(),
                    "rank": tfds.features.Scalar(np.int64)}
        features.update({k: _feature(kind) for k, kind in self.spec.features.items()})
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                     description=f"{self.SOURCE} read from local files (fiat_jax)")

    def _split_generators(self, dl_manager):  # noqa: ARG002 - local files, nothing to download
        report = RowReport(strict=self._strict)
        out = build_splits(self.spec, self._source_dir, self.builder_config.name, seed=self._seed,
                           fractions=self._fractions, report=report)
        report.log_summary()
        return {name: self._generate_examples(rows) for name, rows in out.items()}

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        """Prepare under an exclusive file lock, so concurrent first preparations (test workers, the processes
        of a multi-host run) wait for one another instead of racing; TFDS skips the work once it is done."""
        root = os.fspath(self._data_dir_root)
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, f".{self.name}.{self.builder_config.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                # This builder read its (then empty) info before waiting; if another process prepared the data
                # meanwhile, TFDS would "reuse" it with no splits: read the finished info first.
                if (self.data_path / "dataset_info.json").exists():
                    self.info.read_from_directory(self.data_dir)
                super().download_and_prepare(*args, **kwargs)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _generate_examples(self, rows):
        for row in rows:
            yield row["id"], {k: row[k] for k in self.info.features}


def _configs(languages) -> list[tfds.core.BuilderConfig]:
    return [tfds.core.BuilderConfig(name=lang) for lang in languages]


class FiatMgsm(_LocalFilesBuilder):
    SOURCE = "mgsm"
    BUILDER_CONFIGS = _configs(sources.MGSM_LANGUAGES)


class FiatXcopa(_LocalFilesBuilder):
    SOURCE = "xcopa"
    BUILDER_CONFIGS = _configs(sources.XCOPA_LANGUAGES)


class FiatTydiqaGoldp(_LocalFilesBuilder):
    SOURCE = "tydiqa_goldp"
    BUILDER_CONFIGS = _configs(sources.TYDIQA_LANGUAGES)


class FiatAlpacaScored(_LocalFilesBuilder):
    SOURCE = "alpaca_scored"
    BUILDER_CONFIGS = _configs(("en",))


class FiatXorAttriqa(_LocalFilesBuilder):
    SOURCE = "xor_attriqa"
    BUILDER_CONFIGS = _configs(sources.XOR_ATTRIQA_LANGUAGES)


class FiatXtremeUpQaInLang(_LocalFilesBuilder):
    SOURCE = "xtreme_up_qa_in_lang"
    BUILDER_CONFIGS = _configs(sources.XTREME_UP_QA_LANGUAGES + XTREME_UP_EXTRA_LANGUAGES)


class FiatXtremeUpQaCrossLang(_LocalFilesBuilder):
    SOURCE = "xtreme_up_qa_cross_lang"
    BUILDER_CONFIGS = _configs(sources.XTREME_UP_QA_LANGUAGES + XTREME_UP_EXTRA_LANGUAGES)


BUILDERS: dict[str, type[_LocalFilesBuilder]] = {
    b.SOURCE: b for b in (FiatMgsm, FiatXcopa, FiatTydiqaGoldp, FiatAlpacaScored, FiatXorAttriqa,
                          FiatXtremeUpQaInLang, FiatXtremeUpQaCrossLang)}
