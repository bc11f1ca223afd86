"""Segmenting a collection: decoded ahead, encoded in batches, cut and written by workers, in
input order, resumable, sharded across processes.

``diffuseg segment`` drives it (the CLI keeps what is its own: options, formats, messages). The
stages, each bounded so that memory stays flat however long the input list:

* **decode** (a thread pool): images (or saved Encodings) of the next two batches are read while
  the current one is on the backbone;
* **encode** (the calling thread, which owns the backbone): images of one batch that reach the
  same processed size go through the UNet together (``--batch-size``);
* **process** (``workers`` threads): cut, refine, name and write one input; torch and the
  eigensolvers release the GIL, so a cut overlaps the next batch's UNet pass and other cuts;
* outcomes come back **in input order** (a FIFO of futures, at most a few batches in flight).

**Output sets.** An input's files (label PNG, overlay, JSON, masks, npz) are each written
atomically, then one line naming them is appended to this process's journal
(``<out>/.diffuseg/journal.rank<r>.jsonl``, checksummed, fsynced). An input is *done* when its
journal line exists and every file it names does; anything else is redone, and a new run first
removes the files of inputs that are not done and the temp files a killed process left, so an
output folder never keeps a label PNG without its JSON. ``resume`` skips the done inputs;
``overwrite`` redoes everything; a folder that already holds outputs needs one or the other.

**Sharding.** Under ``torchrun`` or ``accelerate launch`` (``RANK`` / ``WORLD_SIZE``; the launcher's
``LOCAL_RANK`` picks the GPU) process r takes ``items[r::world]`` of the whole input list, whose
output names are fixed before sharding, so the files equal a single process's, file for file.
No collective is needed: a process started alone with ``RANK=1 WORLD_SIZE=2`` does exactly its
half, so one failed shard can be rerun by itself. After its share, each process rewrites
``<out>/manifest.json`` from every journal under a file lock: the last to finish leaves the
complete manifest.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENCODING_SUFFIX = ".safetensors"
STATE_DIR = ".diffuseg"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class WorkItem:
    """One input: its position in the whole input list, its path, its output file stem."""

    index: int
    path: Path
    stem: str


@dataclass
class Outcome:
    """What became of one input: status "done", "skipped" (already done) or "failed"."""

    item: WorkItem
    status: str
    error: str | None = None
    segments: int | None = None
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)


#: Longest output stem, in bytes (UTF-8): with "-<k>" for a repeated name, the longest output
#: suffix (".overlay.png") and the atomic writer's temp name (".<name>.<8 random>.tmp.png")
#: every output file name stays well within the 255-byte limit of common file systems.
STEM_MAX_BYTES = 180


def _escape_undecodable(stem: str) -> str:
    """``stem`` as valid UTF-8 text: each byte of the file name that is not UTF-8 (a lone
    surrogate U+DC80..U+DCFF in Python's str, PEP 383) becomes ``%XX``."""
    raw = os.fsencode(stem)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    text = raw.decode("utf-8", "surrogateescape")
    return "".join(f"%{ord(c) - 0xDC00:02X}" if "\udc80" <= c <= "\udcff" else c for c in text)


def output_stem(path: Path) -> str:
    """The output file stem of one input, before de-duplication: its name less the extension
    (less ``.safetensors`` for an Encoding), as valid UTF-8 (undecodable bytes as ``%XX``), and,
    when longer than :data:`STEM_MAX_BYTES`, cut on a character boundary and ended by ``~`` and
    10 hex digits of the SHA-256 of the whole name (so two long names that share their first
    170 bytes still differ). The same path always gives the same stem."""
    name = path.name
    stem = name[: -len(ENCODING_SUFFIX)] if name.endswith(ENCODING_SUFFIX) else path.stem
    text = _escape_undecodable(stem) or "_"
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= STEM_MAX_BYTES:
        return text
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:10]
    head = raw[: STEM_MAX_BYTES - len(digest) - 1].decode("utf-8", "ignore")
    return f"{head}~{digest}"


def plan(paths: Sequence[Path]) -> list[WorkItem]:
    """Work items with unique output stems (``a``, ``a-2`` for a second ``a.jpg`` elsewhere),
    decided over the whole list so that every shard names its outputs alike. Stems are valid
    file names whatever the inputs' names (:func:`output_stem`: valid UTF-8, at most
    :data:`STEM_MAX_BYTES` bytes); an output's JSON keeps the input's full path."""
    used: set[str] = set()
    items = []
    for index, path in enumerate(paths):
        path = Path(path)
        stem = output_stem(path)
        candidate, k = stem, 1
        while candidate in used:
            k += 1
            candidate = f"{stem}-{k}"
        used.add(candidate)
        items.append(WorkItem(index, path, candidate))
    return items


def dist_env() -> tuple[int, int]:
    """(rank, world size) from ``RANK`` / ``WORLD_SIZE`` (torchrun, accelerate); (0, 1) alone.

    Raises:
        ValueError: values that are not integers with 0 <= rank < world.
    """
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError("RANK and WORLD_SIZE must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank} WORLD_SIZE={world}")
    return rank, world


def shard(items: Sequence[WorkItem], rank: int, world: int) -> list[WorkItem]:
    """This process's share: ``items[rank::world]`` (no padding, no input twice)."""
    return list(items[rank::world])


# ---------------------------------------------------------------------------------------------
# the journal and the manifest
# ---------------------------------------------------------------------------------------------
class Journal:
    """Append-only record of this process's finished inputs (one checksummed, fsynced line
    each); reads every process's journal of an output folder."""

    def __init__(self, out: Path, rank: int) -> None:
        self.folder = Path(out) / STATE_DIR
        self.path = self.folder / f"journal.rank{rank}.jsonl"
        self._lock = threading.Lock()
        self._file = None

    def append(self, record: dict) -> None:
        from diffuseg.io import checked_line

        line = checked_line(record)
        with self._lock:
            if self._file is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab")  # noqa: SIM115
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    @staticmethod
    def read_all(out: Path) -> dict[str, dict]:
        """Every intact journal line of the folder, by output stem (a line cut by a kill, or
        damaged, is ignored: its input is simply not done)."""
        from diffuseg.io import parse_checked_line

        records: dict[str, dict] = {}
        folder = Path(out) / STATE_DIR
        for path in sorted(folder.glob("journal.rank*.jsonl")) if folder.is_dir() else ():
            for line in path.read_bytes().splitlines():
                rec = parse_checked_line(line)
                if rec is not None:
                    records[str(rec.get("stem"))] = rec
        return records


def is_done(out: Path, record: dict | None) -> bool:
    """An input is done when its journal line exists and every file it names does."""
    return record is not None and record.get("status") == "done" and all(
        (Path(out) / name).is_file() for name in record.get("files", []))


def write_manifest(out: Path) -> dict:
    """Rewrite ``<out>/manifest.json`` from every journal, under a file lock so that concurrent
    shards leave the complete one: {"outputs": [per input, in input order: index, input, stem,
    segments, files], "failed": [...]} (the latest record of each input)."""
    import fcntl

    from diffuseg.io import write_json

    out = Path(out)
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    with open(out / STATE_DIR / "manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            records = sorted(Journal.read_all(out).values(), key=lambda r: r["index"])
            keys = ("index", "input", "stem", "segments", "files")
            manifest = {
                "outputs": [{k: r.get(k) for k in keys} for r in records
                            if is_done(out, r)],
                "failed": [{k: r.get(k) for k in ("index", "input", "stem", "error")}
                           for r in records if r.get("status") == "failed"],
            }
            write_json(out / MANIFEST, manifest)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return manifest


def prepare_folder(out: Path, items: Sequence[WorkItem], files_of: Callable[[WorkItem], list[str]],
                   resume: bool, overwrite: bool) -> set[str]:
    """Ready the output folder for ``items`` (this process's share) and say which are done.

    Removes the temp files a killed writer left for these items and the files of every item
    that is not done (a partial output set), so that what remains is complete sets only.

    Args:
        files_of: the file names an item may produce (all formats, overlay included).
        resume: skip done items; overwrite: redo them. Neither, with outputs already in the
            folder: ValueError saying so.
    Returns:
        The stems of the items to skip.
    """
    out = Path(out)
    records = Journal.read_all(out)
    planned = {it.stem: files_of(it) for it in items}
    existing = [name for names in planned.values() for name in names if (out / name).is_file()]
    # only this process's own files count: another shard may already have written its share
    if not resume and not overwrite and existing:
        raise ValueError(f"{out} already holds outputs of a run: pass --resume to skip the "
                         "finished inputs, or --overwrite to redo them")
    done = {stem for stem in planned if resume and is_done(out, records.get(stem))}
    for stem, names in planned.items():
        for name in names:
            for tmp in out.glob(f".{glob.escape(name)}.*.tmp*"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
            if stem not in done:
                with contextlib.suppress(OSError):
                    (out / name).unlink()
    return done


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------
class _Inline:
    """An executor that runs the task at once (``workers=1``: no thread, same order)."""

    def submit(self, fn, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 (handed to the caller through the future)
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


@dataclass
class Loaded:
    """An item after the decode stage: ``payload`` (image array or Encoding), or ``error``."""

    item: WorkItem
    payload: Any = None
    error: str | None = None
    started: float = 0.0


def run(
    items: Sequence[WorkItem],
    *,
    load: Callable[[WorkItem], Any],
    encode: Callable[[list[Any]], list[Any]] | None,
    process: Callable[[WorkItem, Any], Outcome],
    batch_size: int = 1,
    workers: int = 1,
    fatal: tuple[type[BaseException], ...] = (),
) -> Iterator[Outcome]:
    """Run the stages over ``items`` and yield one :class:`Outcome` per item, in input order.

    Args:
        load: item -> payload (decode an image, read an Encoding); its ValueError / OSError mark
            the item failed.
        encode: payloads that need the backbone -> their Encodings, in order (None: nothing is
            encoded; ``load`` gave Encodings or the method reads images). A batch whose encode
            raises is redone one item at a time, so a bad item fails alone.
        process: (item, encoded payload) -> Outcome (segment, name, write, journal).
        batch_size: items per encode call; workers: threads of the process stage (1: inline).
        fatal: exceptions that abort the whole run (e.g. missing weights) instead of failing one
            item.
    """
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch size and workers must be >= 1, got {batch_size}, {workers}")
    chunks = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="diffuseg-decode")
    pool: Any = _Inline() if workers == 1 else ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix="diffuseg-process")

    def safe_load(item: WorkItem) -> Loaded:
        started = time.perf_counter()
        try:
            return Loaded(item, load(item), started=started)
        except fatal:
            raise
        except (ValueError, OSError, RuntimeError) as exc:
            return Loaded(item, error=str(exc), started=started)

    def safe_process(loaded: Loaded) -> Outcome:
        try:
            outcome = process(loaded.item, loaded.payload)
        except fatal:
            raise
        except (ValueError, OSError, RuntimeError) as exc:
            return Outcome(loaded.item, "failed", error=str(exc))
        outcome.seconds = time.perf_counter() - loaded.started
        return outcome

    ahead: deque[list[Future]] = deque(
        [decoder.submit(safe_load, it) for it in chunk] for chunk in chunks[:2])
    pending: deque[Future] = deque()
    limit = max(2 * workers, batch_size)  # outcomes in flight beyond the current batch
    try:
        for c in range(len(chunks)):
            loads = ahead.popleft()
            if c + 2 < len(chunks):
                ahead.append([decoder.submit(safe_load, it) for it in chunks[c + 2]])
            batch = [f.result() for f in loads]
            for loaded in _encode_batch(batch, encode, fatal):
                if loaded.error is not None:
                    failed = Outcome(loaded.item, "failed", error=loaded.error)
                    pending.append(_Inline().submit(lambda o=failed: o))
                else:
                    pending.append(pool.submit(safe_process, loaded))
            while len(pending) > limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for chunk in ahead:
            for f in chunk:
                f.cancel()
        decoder.shutdown(wait=True, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)


def _encode_batch(batch: list[Loaded], encode, fatal) -> list[Loaded]:
    """Encode the loaded payloads of a batch together; if that fails, one at a time, so that a
    bad item fails alone."""
    good = [b for b in batch if b.error is None]
    if encode is None or not good:
        return batch
    try:
        encoded = encode([b.payload for b in good])
    except fatal:
        raise
    except (ValueError, OSError, RuntimeError) as exc:
        if len(good) == 1:
            good[0].error = str(exc)
            return batch
    else:
        for b, enc in zip(good, encoded, strict=True):
            b.payload = enc
        return batch
    for b in good:
        try:
            b.payload = encode([b.payload])[0]
        except fatal:
            raise
        except (ValueError, OSError, RuntimeError) as exc:
            b.error = str(exc)
    return batch


__all__ = ["ENCODING_SUFFIX", "Journal", "MANIFEST", "Outcome", "WorkItem", "dist_env",
           "is_done", "plan", "prepare_folder", "run", "shard", "write_manifest"]
