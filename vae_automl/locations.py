"""Where a study lives: its storage URL (from ``--storage``, ``$VAE_AUTOML_STORAGE`` or a run folder) and its name.

Every command finds a study the same way, so ``--storage`` and ``--out`` mean
the same thing everywhere: ``--storage`` is an Optuna storage URL, ``--out``
the run folder a search writes (``study.db``, the base-model cache, trial
models). Without ``--storage`` the environment variable
:data:`STORAGE_ENV` is used (like Optuna's ``OPTUNA_STORAGE``), then the
run folder's ``study.db``.
"""

from __future__ import annotations

import os
from pathlib import Path

from vae_automl.errors import ConfigError

STORAGE_ENV = "VAE_AUTOML_STORAGE"
STUDY_FILE = "study.db"
"""The SQLite file a search keeps in its run folder when no storage is given."""


def default_storage(out_dir: str | Path) -> str:
    """The SQLite URL of a run folder's study file (the folder need not exist yet)."""
    return f"sqlite:///{(Path(out_dir) / STUDY_FILE).resolve()}"


def make_out_dir(out: Path) -> Path | None:
    """Create the output folder, or say which path is in the way and why.

    Returns:
        The topmost folder this call created (``out`` or a missing parent), None when ``out`` existed: what
        :func:`remove_unused_out_dir` takes away again when the run is refused before it writes anything.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder; give a folder path")
    created = next((folder for folder in reversed((out, *out.parents)) if not folder.exists()), None)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the output folder: {exc.strerror}") from None
    return created


def remove_unused_out_dir(created: Path | None) -> None:
    """Remove the folders :func:`make_out_dir` created if they hold no file, so that bad input leaves no trace.

    Only empty folders go (``rmdir``), deepest first; the first that holds anything stops it.
    """
    if created is None:
        return
    folders = sorted((p for p in created.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for folder in (*folders, created):
        try:
            folder.rmdir()
        except OSError:
            return


def resolve_storage(storage: str | None, out_dir: str | Path | None = None, *, must_exist: bool = False) -> str | None:
    """The storage URL a command uses: ``storage``, else ``$VAE_AUTOML_STORAGE``, else ``out_dir``'s study file.

    Args:
        storage: an explicit URL (``--storage``), or None.
        out_dir: the run folder (``--out``), or None.
        must_exist: for commands that only read a study: refuse a run folder without a study file,
            instead of letting SQLite create an empty one.

    Returns:
        The URL, or None when none of the three is given.

    Raises:
        ConfigError: ``must_exist`` and ``out_dir`` holds no study file.
    """
    if storage:
        return storage
    from_env = os.environ.get(STORAGE_ENV)
    if from_env:
        return from_env
    if out_dir is None:
        return None
    if must_exist and not (Path(out_dir) / STUDY_FILE).is_file():
        raise ConfigError(f"{Path(out_dir) / STUDY_FILE}: no such study file; is {out_dir} the --out of a search?")
    return default_storage(out_dir)


def require_storage(storage: str | None, out_dir: str | Path | None = None) -> str:
    """:func:`resolve_storage` for commands that read an existing study: one of the three must be given."""
    url = resolve_storage(storage, out_dir, must_exist=True)
    if url is None:
        raise ConfigError(f"no study storage: give --storage URL, --out RUN_DIR (the search's --out) or set ${STORAGE_ENV}")
    return url


def resolve_study_name(storage: str, study_name: str | None) -> str:
    """``study_name``, or the only study in ``storage``; a ConfigError listing them when there are several."""
    if study_name:
        return study_name
    # deferred: optuna loads only once a study is read (keeps `vae-automl --help` light)
    import optuna

    from vae_automl.study import open_storage  # deferred: with optuna, as above

    names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(storage, create=False), include_best_trial=False)]
    if len(names) == 1:
        return names[0]
    raise ConfigError(f"{storage} holds {len(names)} studies ({', '.join(names) or 'none'}); name one with --study")


def resolve_study_ref(ref: str, storage: str | None, out_dir: str | Path | None = None) -> tuple[str, str]:
    """``(storage URL, study name)`` of one ``vae-automl compare`` argument.

    ``ref`` is a run folder (its study file's only study), a storage URL (its only study) or ``URL#NAME``,
    or a study NAME in the storage of ``--storage`` / ``$VAE_AUTOML_STORAGE`` / ``--out``.
    """
    if Path(ref).is_dir():
        # a folder names its own study file, whatever $VAE_AUTOML_STORAGE says
        url = default_storage(ref)
        if not (Path(ref) / STUDY_FILE).is_file():
            raise ConfigError(f"{Path(ref) / STUDY_FILE}: no such study file; is {ref} the --out of a search?")
        return url, resolve_study_name(url, None)
    if "://" in ref or ref.startswith("journal:"):
        url, sep, name = ref.rpartition("#")
        if not sep:
            url, name = ref, ""
        return url, resolve_study_name(url, name or None)
    given = resolve_storage(storage, out_dir, must_exist=True)
    if given is None:
        # neither a folder nor a URL, and nowhere to look the name up: say what `ref` was taken for
        raise ConfigError(f"{ref}: no such run folder; to name a study give --storage URL, --out RUN_DIR or set ${STORAGE_ENV}")
    return given, ref
