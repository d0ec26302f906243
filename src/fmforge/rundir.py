"""The run directory: the only channel between stages.

Every artifact is written under a temporary name and renamed into place when
complete, so a killed stage never leaves a half-written file a later stage trusts.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from fmforge.errors import UserError


class RunDirWriteError(UserError, OSError):
    """A run directory (or another output) could not be written: the disk is
    full, the file system is read-only, or permission is denied. Carries a
    message that says where and what to do; nothing half-written is kept."""


_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}
# Libraries that write from native code lose the errno but keep its text.
_STORAGE_TEXTS = {"no space left on device": errno.ENOSPC, "os error 28": errno.ENOSPC,
                  "disk quota exceeded": errno.EDQUOT, "read-only file system": errno.EROFS,
                  "os error 30": errno.EROFS}


def storage_error(exc: BaseException) -> BaseException | None:
    """The exception behind ``exc`` that says the disk is full, read-only or
    forbidden: ``exc`` itself or one it was raised from (``raise ... from``), else
    None. Only explicit causes are followed: an exception raised while handling a
    disk error (its ``__context__``) is a bug of its own, not that disk error."""
    seen = 0
    while exc is not None and seen < 10:
        if getattr(exc, "errno", None) in _STORAGE_ERRNOS:
            return exc
        text = str(exc).lower()
        if any(needle in text for needle in _STORAGE_TEXTS):
            return exc
        exc = exc.__cause__
        seen += 1
    return None


def storage_errno(exc: BaseException) -> int | None:
    """The errno of a full, read-only or forbidden disk behind ``exc`` (or any
    exception it was raised from), else None."""
    found = storage_error(exc)
    if found is None:
        return None
    code = getattr(found, "errno", None)
    if code in _STORAGE_ERRNOS:
        return code
    text = str(found).lower()
    return next(code for needle, code in _STORAGE_TEXTS.items() if needle in text)


def _permits(path: Path, owner: int, group: int, other: int) -> bool:
    """Whether ``path``'s permission bits grant this process the access of the
    given bits. By the bits, not ``os.access``: root passes every ``access`` check,
    yet a root-squashed network file system still refuses it what the bits do."""
    st = os.stat(path)
    if st.st_uid == os.geteuid():
        return bool(st.st_mode & owner)
    if st.st_gid == os.getegid() or st.st_gid in os.getgroups():
        return bool(st.st_mode & group)
    return bool(st.st_mode & other)


def denied_access(path: Path | str) -> str | None:
    """What a permission error on ``path`` stopped, judged by the permission bits on
    the way to it: "read" (a folder on the way that cannot be searched, or the path
    itself unreadable), "write" (the path, or the folder that would hold it, not
    writable), or None when the bits grant both (an ACL, a security module)."""
    path = Path(os.path.abspath(path))
    try:
        for folder in reversed(path.parents):
            if folder.exists() and not _permits(folder, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
                return "read"
        if path.exists():
            if not _permits(path, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH) or (
                    path.is_dir() and not _permits(path, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)):
                return "read"
            if not _permits(path, stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH):
                return "write"
            return None
        holder = next((p for p in path.parents if p.exists()), None)
        if holder is not None and not _permits(holder, stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH):
            return "write"
    except OSError:
        return None
    return None


def storage_advice(code: int, where: Path | str, access: str | None = "write") -> str:
    """What a user does about a storage errno at ``where``; for a permission error,
    ``access`` says what was denied ("read", "write", or None when unknown)."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"{_STORAGE_ERRNOS[code]} on the disk holding {where}: free space there (or set out_dir elsewhere)"
    if code == errno.EROFS:
        return (f"{where} is on a read-only file system: reading commands (generate, serve, "
                "export) work there; to train or evaluate, copy the run to a writable place "
                "or set out_dir")
    if access == "read":
        return (f"permission denied reading {where}: make it readable for this user (and the "
                "folders above it searchable), or run as a user who may read it")
    if access is None:
        return (f"permission denied on {where}: make it readable, and writable where fmforge "
                "writes, for this user, or set out_dir")
    return f"permission denied writing {where}: make it writable for this user or set out_dir"


def storage_failure(exc: BaseException) -> str | None:
    """One line for a full, read-only or forbidden disk behind ``exc`` ("cannot
    read/write WHERE: what to do"), or None when ``exc`` is not one (a bug)."""
    found = storage_error(exc)
    if found is None:
        return None
    code = storage_errno(found)
    filename = getattr(found, "filename", None) or getattr(exc, "filename", None)
    where = filename or "the run directory"
    access = denied_access(filename) if code == errno.EACCES and filename else "write"
    verb = {"read": "read", "write": "write", None: "access"}[access]
    return f"cannot {verb} {where}: {storage_advice(code, where, access)}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it into
    place and fsync the directory, so a power cut leaves the old file or the new
    one under its name, never an empty one or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)  # the rename itself, or stages.json may vanish at a power cut


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final``.
    On failure the temporary directory is removed and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clear_interrupted_replacement(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Some writers (safetensors, mkstemp) create files readable by their owner
    # only; a run directory is shared (other users, vLLM, other nodes).
    standard_permissions(tmp)
    # On disk before the rename: after a power loss the directory is either the
    # old one or the complete new one, never a renamed but empty shell.
    fsync_tree(tmp)
    replace_directory(tmp, final)


def replaced_copies(final: Path) -> list[Path]:
    """The complete former copies of ``final`` that a replacement moved aside
    (``.NAME.old-*``), newest first. One stands alone, with ``final`` missing, when
    the process was killed between moving the old copy aside and renaming the new
    one into place: it is then the only complete copy on disk."""
    final = Path(final)
    olds = [p for p in final.parent.glob(f".{final.name}.old-*") if p.is_dir()]
    return sorted(olds, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def clear_interrupted_replacement(final: Path) -> None:
    """Tidy what a replacement of ``final`` killed outright (kill -9, power loss)
    left beside it. A former copy whose successor never arrived is renamed back
    into place, never deleted: it may be the only complete copy there is. The
    rest (partial new copies, old copies of a ``final`` that is in place) is
    removed: nothing trusts it, and it can be large."""
    final = Path(final)
    olds = replaced_copies(final)
    if olds and not final.exists():
        os.replace(olds.pop(0), final)
        fsync_dir(final.parent)
    for stale in [*final.parent.glob(f".{final.name}.tmp-*"), *olds]:
        shutil.rmtree(stale, ignore_errors=True)


def replace_directory(new: Path, final: Path) -> None:
    """Put the complete directory ``new`` in place of ``final`` without a moment
    where no complete copy is on disk: the old ``final`` is renamed aside (not
    removed), ``new`` renamed into place, and only then the old copy removed. A
    kill between the two renames leaves the old copy under ``.NAME.old-*``, which
    ``replaced_copies`` finds and ``clear_interrupted_replacement`` restores."""
    final = Path(final)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(new, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def standard_permissions_of_file(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def standard_permissions(root: Path) -> None:
    """Give every file under ``root`` the mode a plain ``open()`` would (0666 less
    the umask) and every directory 0777 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for here, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(here, name), 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(here, name), 0o666 & ~umask)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename inside it) to disk; a no-op where the
    platform cannot open directories (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        return  # some file systems refuse fsync on a directory; nothing more to do
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory, deepest first."""
    dirs = []
    for here, _, files in os.walk(root):
        dirs.append(here)
        for name in files:
            with open(os.path.join(here, name), "rb") as f:
                os.fsync(f.fileno())
    for d in reversed(dirs):
        fsync_dir(Path(d))


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (config sections, upstream fingerprints)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


class RunDir:
    """Paths of one run's artifacts and the record of which stages completed."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # artifacts
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def data_card(self) -> Path:
        return self.data / "data_card.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def stages_json(self) -> Path:
        return self.root / "stages.json"

    @property
    def plan_json(self) -> Path:
        return self.root / "plan.json"

    # readers of the JSON artifacts later stages (and the planner) consume
    def tokens_meta(self) -> dict[str, Any]:
        """``tokens/meta.json``: dtype, vocabulary, EOS id, token and byte counts per split."""
        return read_json_artifact(self.tokens / "meta.json", "tokenize")

    def read_data_card(self) -> dict[str, Any]:
        """``data/data_card.json``: per-source and per-split counts of the data stage."""
        return read_json_artifact(self.data_card, "data")

    # stage bookkeeping
    def stage_records(self) -> dict[str, Any]:
        if not self.stages_json.exists():
            return {}
        return json.loads(self.stages_json.read_text(encoding="utf-8"))

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        return self.stage_records().get(stage)

    def mark_complete(self, stage: str, fp: str, summary: dict[str, Any],
                      output: str | None = None) -> None:
        """Record a completed stage: ``fp`` hashes its inputs, ``output`` what it
        produced (what later stages chain on; defaults to ``fp``)."""
        records = self.stage_records()
        records[stage] = {"fingerprint": fp, "output": output or fp, "completed_at": time.time(),
                          "summary": summary}
        atomic_write_json(self.stages_json, records)

    def invalidate(self, stage: str) -> None:
        records = self.stage_records()
        if records.pop(stage, None) is not None:
            atomic_write_json(self.stages_json, records)


# eval.json: eval/results.py writes it. What decides which of its figures are the
# current model's lives here, below every stage, so that the trainer can set a
# model's evaluations aside with its checkpoints and the planner can tell a stale
# score of another model, neither of them importing eval.
EVAL_HEADLINE = ("loss", "perplexity", "bits_per_byte", "gzip_bits_per_byte", "xz_bits_per_byte",
                 "tokens", "bytes")
_EVAL_TOP = (*EVAL_HEADLINE, "step", "lineage", "stride", "per_source")


def read_eval_json(run: RunDir) -> dict[str, Any]:
    """The run's ``eval.json`` (empty when nothing was evaluated yet)."""
    if not run.eval_json.is_file():
        return {}
    try:
        return json.loads(run.eval_json.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{run.eval_json} is not valid JSON ({exc.msg}): move it aside and rerun "
                            "`fmforge eval RUN`") from exc


def refresh_eval_top(ev: dict[str, Any]) -> dict[str, Any]:
    """``ev`` with its top-level figures those of the highest step in ``steps``
    (every step there is the current model's), or without them when none is left."""
    rest = {k: v for k, v in ev.items() if k not in _EVAL_TOP}
    steps = ev.get("steps") or {}
    if not steps:
        return rest
    latest = max(steps, key=int)
    top = steps[latest]
    figures = {k: top["overall"].get(k) for k in EVAL_HEADLINE}
    figures.update(step=int(latest), stride=top.get("stride"), per_source=top["per_source"])
    if top.get("lineage") is not None:
        figures["lineage"] = top["lineage"]
    return {**figures, **rest}


def split_evaluations(ev: dict[str, Any], moves: Callable[[int, str | None], bool]
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what stays, what moves) of ``ev``'s evaluations of the trained model: its
    held-out steps, their history lines and its lm-eval results, each moving when
    ``moves(step, lineage)`` holds (lineage None where eval.json did not record
    it). Scores of other models (``against``) stay. Both top levels refreshed."""
    kept, moved = dict(ev), {}
    for key in ("steps", "harness"):
        entries = ev.get(key) or {}
        going = {s: e for s, e in entries.items() if moves(int(s), e.get("lineage"))}
        if going:
            moved[key] = going
            kept[key] = {s: e for s, e in entries.items() if s not in going}
    history = ev.get("history") or []
    going = [h for h in history if moves(int(h["step"]), h.get("lineage"))]
    if going:
        moved["history"] = going
        kept["history"] = [h for h in history if not moves(int(h["step"]), h.get("lineage"))]
    return refresh_eval_top(kept), refresh_eval_top(moved)


def new_aside_folder(run: RunDir, reason: str) -> Path:
    """A new folder ``checkpoints.previous/<UTC time>/`` with ``reason.txt``, for
    what no longer belongs to the run's current model: each set-aside gets its own,
    so a second change of config keeps the first one's too."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    aside = run.root / "checkpoints.previous" / stamp
    n = 1
    while aside.exists():  # two set-asides within a second
        n += 1
        aside = aside.with_name(f"{stamp}-{n}")
    aside.mkdir(parents=True)
    (aside / "reason.txt").write_text(reason + "\n", encoding="utf-8")
    return aside


def set_aside_evaluations(run: RunDir, aside: Path,
                          moves: Callable[[int, str | None], bool] = lambda step, lineage: True) -> int:
    """Move the evaluations for which ``moves(step, lineage)`` holds (all of the
    trained model's by default) from ``eval.json`` into ``aside/eval.json``, beside
    the checkpoints they scored, so eval.json's figures are never a discarded
    model's. Returns how many held-out steps moved."""
    ev = read_eval_json(run)
    kept, moved = split_evaluations(ev, moves)
    if not moved:
        return 0
    target = Path(aside) / "eval.json"
    if target.is_file():  # a second move into the same folder: merge
        earlier = json.loads(target.read_text(encoding="utf-8"))
        for key in ("steps", "harness"):
            moved[key] = {**(earlier.get(key) or {}), **(moved.get(key) or {})}
        moved["history"] = (earlier.get("history") or []) + (moved.get("history") or [])
        moved = refresh_eval_top(moved)
    # the copy first: a kill between the two writes leaves them twice, never nowhere
    atomic_write_json(target, moved)
    atomic_write_json(run.eval_json, kept)
    return len(moved.get("steps") or {})


def heldout_data(run: RunDir) -> str | None:
    """What names the run's held-out bytes: the data stage's output fingerprint (a
    hash of its shards, the val split's included); None before the data stage."""
    record = run.stage_record("data")
    return None if record is None else record.get("output", record["fingerprint"])


def against_stale(run: RunDir, entry: dict[str, Any]) -> str | None:
    """Why another model's score in eval.json's ``against`` is not of the run's
    current held-out bytes, or None when it is (or cannot be told: no data stage)."""
    record = run.stage_record("data")
    if record is None:
        return None
    scored = entry.get("heldout_data")
    if scored is not None:
        if scored == record.get("output", record["fingerprint"]):
            return None
        return "scored on held-out bytes that the data stage has since replaced"
    # written before fmforge recorded the bytes: by time
    at, redone = entry.get("evaluated_at"), record.get("completed_at")
    if at is not None and redone is not None and at < redone:
        return "scored before the data stage last ran, and which held-out bytes was not recorded then"
    return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, in order. Only the last line can be torn
    (a run killed mid-write): it is skipped. A damaged line anywhere else is an
    error naming the file and line, since the log cannot be trusted past it."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break  # torn by a kill mid-write
            raise ArtifactError(f"{path}:{number}: not valid JSON ({exc.msg}); the metrics log is "
                                "damaged: delete the line, or the file to start the log afresh") from exc
    return records


class ArtifactMissingError(UserError, FileNotFoundError):
    """A run, or an artifact a stage has not made yet, is not there: the message says
    which, and the command that makes it."""


class ArtifactError(UserError, ValueError):
    """An artifact in the run directory that cannot be used (damaged, or made for
    another config or tokenizer): the message says how to remake it."""


def read_json_artifact(path: Path, stage: str) -> dict[str, Any]:
    """A JSON artifact of ``stage``; a missing or damaged one says which command remakes it."""
    if not path.is_file():
        raise ArtifactMissingError(f"{path} is missing: run `fmforge {stage} CONFIG` first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc.msg}): rerun `fmforge {stage} CONFIG --force`") from exc


class RunLockedError(UserError, RuntimeError):
    """Another process is working on this run directory."""


@contextlib.contextmanager
def run_lock(root: Path, command: str) -> Iterator[None]:
    """Hold ``root/.lock`` while a stage works on the run, so a second ``fmforge
    run``/``train`` on the same run refuses instead of interleaving checkpoints.

    The lock is an ``flock`` on the file, which the kernel releases when the holder
    exits in any way (a crash or ``kill -9`` included), so it never stays stuck;
    the file's text only names the holder for the message."""
    import fcntl
    import socket

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = path.read_text(encoding="utf-8", errors="replace").strip() or "another process"
        os.close(fd)
        raise RunLockedError(
            f"{root} is in use by {holder}: wait for it to finish, or stop that process "
            "(its lock goes with it), then run this again"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} "
                     f"(`{command}`, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode())
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def resolve_run(run: str | Path) -> RunDir:
    """A run given as a directory, or as a name under ``runs/``."""
    p = Path(run)
    for candidate in (p, Path("runs") / p):
        if (candidate / "config.yaml").is_file():
            return RunDir(candidate)
    raise ArtifactMissingError(
        f"no run at {p} (nor runs/{p}): expected a directory containing config.yaml; "
        "run `fmforge run CONFIG` first"
    )
