"""TFDS builders that read the published files from a data directory and prepare them once into TFRecords.

Why TFDS: a large release is parsed and validated once, then every host reads the prepared TFRecords fast through
``seqio.TfdsDataSource``. Each builder has one config per language; its constructor takes ``source_dir`` (the
DATA_DIR holding the published files), ``seed`` and ``split_fractions`` (used to cut single-split sources) and
``strict``. Prepared data goes to ``prepared_dir(...)``, a directory keyed by those arguments, so a different
source directory or seed never reads stale records.

Splits written: the source's own splits, or, for a single-split source, seeded ``train``/``validation``/``test``
plus ``full`` (the whole published set); a source with no train split but a ``train_from`` gets a ``train`` copy
of that split (XCOPA trains on its 100 validation items). Every example carries ``split`` and ``rank``
(see ``splits.py``).
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
                 strict: bool = False) -> str:
    """Where TFRecords prepared from ``source_dir`` with this seed, cut and strictness live, under ``root``.

    Strictness is part of the key so a strict run never reuses records a lenient run prepared past bad rows.
    """
    key = json.dumps({"src": os.path.abspath(source_dir), "seed": seed, "fractions": dict(split_fractions),
                      "strict": strict, "version": BUILDER_VERSION}, sort_keys=True)
    return os.path.join(root, hashlib.sha256(key.encode()).hexdigest()[:16])


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
        native = self.spec.read(self._source_dir, self.builder_config.name, report)
        report.log_summary()
        if "train" not in native and self.spec.train_from:
            native["train"] = list(native[self.spec.train_from])
        if len(native) == 1:
            (only,) = native.values()
            out = splits.cut(only, seed=self._seed, fractions=self._fractions)
        else:
            out = {name: splits.with_ranks(rows, seed=self._seed, split=name) for name, rows in native.items()}
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
