"""The action-free video corpus that ``videos`` writes (``data/videos``), checked where
it is read: the manifest against :class:`CorpusManifest`, each clip against its entry.

    manifest.json            format, frame shape, sources (what each holds, what it
                             skipped), one entry a clip, counts, versions
    clips/clip_00000.npz     frames (T, H, W, 3) uint8: nothing else (no actions)

A clip's ``label`` is what pretraining conditions it on: the ManiSkill task it shows,
or the name of the source for a folder of the user's own videos.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components.errors import ComponentError
from components.formats.dataset import inside_the_folder, load_arrays
from components.formats.files import check_frame_shape, read_checked_json

FORMAT = "par-videos-v1"


@dataclass
class Clip:
    index: int
    source: str
    label: str
    frames: np.ndarray  # (T, H, W, 3) uint8


class ClipEntry(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    file: str
    source: str = Field(min_length=1)
    label: str = Field(min_length=1)
    frames: int = Field(ge=2)
    origin: str  # "seed 500123" or the video file's name

    _inside = field_validator("file")(lambda cls, file: inside_the_folder(file))


class CorpusManifest(BaseModel):
    """manifest.json of a corpus: what validate, encode and pretrain rely on."""

    model_config = ConfigDict(extra="allow", strict=True)

    format: Literal["par-videos-v1"]
    actions: Literal["discarded"]
    frame_shape: list[int] = Field(min_length=3, max_length=3)
    sources: dict[str, dict[str, Any]]
    clips: list[ClipEntry]
    counts: dict[str, int]

    @model_validator(mode="after")
    def _consistent(self) -> CorpusManifest:
        for entry in self.clips:
            if entry.source not in self.sources:
                raise ValueError(f"clip {entry.file} names source {entry.source!r}, which sources does not list")
        if self.counts.get("clips") != len(self.clips):
            raise ValueError(f"counts.clips is {self.counts.get('clips')} but it lists {len(self.clips)} clips")
        check_frame_shape(self.frame_shape)
        return self


def read_corpus_manifest(corpus: str | Path) -> dict[str, Any]:
    """A corpus's manifest, checked; the error names the file and the field."""
    corpus = Path(corpus)
    if not corpus.is_dir():
        raise ComponentError(f"video corpus {corpus} does not exist (run the videos stage first)")
    return read_checked_json(corpus / "manifest.json", "manifest", CorpusManifest)


def read_clip(corpus: str | Path, index: int, manifest: dict[str, Any]) -> Clip:
    """Clip ``index`` of the corpus, its frames checked against the manifest."""
    entry = manifest["clips"][index]
    path = Path(corpus) / entry["file"]
    frames = load_arrays(path, f"clip {index}", ("frames",))["frames"]
    shape = (entry["frames"], *manifest["frame_shape"])
    if frames.shape != shape or frames.dtype != np.uint8:
        raise ComponentError(f"clip {index} file {path}: frames are {frames.dtype}{list(frames.shape)}, "
                             f"not uint8{list(shape)}")  # fmt: skip
    return Clip(index=index, source=entry["source"], label=entry["label"], frames=frames)


def iter_clips(corpus: str | Path, manifest: dict[str, Any] | None = None) -> Iterator[Clip]:
    """Every clip of the corpus, checked."""
    manifest = manifest or read_corpus_manifest(corpus)
    for index in range(len(manifest["clips"])):
        yield read_clip(corpus, index, manifest)
