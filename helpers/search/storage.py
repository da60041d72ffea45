"""The study and its storage: an Optuna RDB storage (SQLite or PostgreSQL) with heartbeats, a study created
once and checked against its settings when run again, its sampler and pruner, and the trials whose process
died (failed and retried once)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from helpers.paths import MODELS_DIR
from helpers.search.space import SearchError

PRUNERS = ("median", "hyperband", "none")
HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 60
"""A running trial on another machine whose heartbeat is older than this is taken for dead."""
SQLITE_TIMEOUT_SECONDS = 60
"""How long a process waits for another's write to a shared SQLite file."""


# ------------------------------------------------------------------------------------- storage and study
def open_storage(url: str) -> RDBStorage:
    """The Optuna RDB storage at ``url`` (``sqlite:///path/study.db``, ``postgresql://user:pw@host/db``, …)
    with heartbeats; SearchError saying what is wrong with the URL, the file or the server otherwise."""
    try:
        parsed = sqlalchemy.engine.make_url(str(url))
    except sqlalchemy.exc.ArgumentError:
        raise SearchError(
            f"storage {url!r} is not a database URL; use sqlite:///path/to/study.db (one machine) or "
            "postgresql://user:password@host/database (several)."
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    engine_kwargs: dict = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_file(parsed.database, shown)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}}
    try:
        with _quiet_optuna():
            return RDBStorage(
                str(url),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
    except ImportError as err:
        raise SearchError(
            f"The database driver for {shown} is not installed ({err}); for PostgreSQL: "
            ".venv/bin/pip install psycopg2-binary."
        ) from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise SearchError(f"storage {shown}: unknown database kind {parsed.drivername!r}.") from None
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as err:
        reason = str(getattr(err, "orig", None) or err).splitlines()[0]
        raise SearchError(f"Cannot open the storage {shown}: {reason}.") from None


def _check_sqlite_file(database: str | None, shown: str) -> None:
    """SearchError unless ``database`` is a file path whose folder exists (or can be made) and is writable."""
    if not database or database == ":memory:" or database.startswith("file:"):
        raise SearchError(
            f"storage {shown}: give the SQLite file's path, e.g. sqlite:///models/search/study.db."
        )
    path = Path(database).expanduser().absolute()
    if path.is_dir():
        raise SearchError(f"storage {shown}: {path} is a folder; name a file, e.g. {path / 'study.db'}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):  # creates it, or proves the existing file can be written
            pass
    except OSError as err:
        raise SearchError(
            f"storage {shown}: cannot write {path} ({err.strerror or err}); choose a writable path with "
            "--storage sqlite:///<folder you can write>/study.db."
        ) from None


def _check_study_name(name: object) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise SearchError(
            f"study name {name!r}: use 1-100 letters, digits, '-', '_' or '.', starting with a letter or "
            "digit (it names the study's folder)."
        )
    return name


def open_study(
    name: str,
    storage: RDBStorage,
    config: dict,
    seed: int,
    pruner: str | optuna.pruners.BasePruner,
    baseline: dict | None,
) -> optuna.Study:
    """Create the study ``name`` (recording ``config`` and queueing ``baseline`` as its first trial), or
    load it and check that it was made with the same ``config``."""
    sampler, chosen = TrialSeededTPE(seed), make_pruner(pruner, config["epochs"])
    kwargs = {"study_name": name, "storage": storage, "sampler": sampler, "pruner": chosen}
    try:
        with _quiet_optuna():
            study = optuna.create_study(direction="maximize", **kwargs)
    except optuna.exceptions.DuplicatedStudyError:
        with _quiet_optuna():
            study = optuna.load_study(**kwargs)
        _check_config(study, config, storage)
        return study
    if baseline is not None:  # queued before the config, which tells other processes the study is ready
        study.enqueue_trial(baseline, user_attrs={"baseline": "tuned recipe"})
    study.set_user_attr("config", config)
    return study


def _check_config(study: optuna.Study, config: dict, storage: RDBStorage) -> None:
    saved = None
    for _ in range(50):  # a study just created by another process gets its config a moment later
        saved = study.user_attrs.get("config")
        if saved is not None:
            break
        time.sleep(0.2)
    shown = sqlalchemy.engine.make_url(storage.url).render_as_string(hide_password=True)
    if saved is None:
        raise SearchError(
            f"Study {study.study_name!r} in {shown} was not made by helpers.search; choose another --study "
            "name."
        )
    config = json.loads(json.dumps(config))  # as stored: tuples as lists
    names = sorted(set(saved["space"]) | set(config["space"]))
    differ = [f"space.{k}" for k in names if saved["space"].get(k) != config["space"].get(k)]
    differ += [k for k in sorted(set(saved) | set(config)) if k != "space" and saved.get(k) != config.get(k)]
    if differ:
        details = "; ".join(f"{k}: study has {_lookup(saved, k)}, asked {_lookup(config, k)}" for k in differ)
        raise SearchError(
            f"Study {study.study_name!r} in {shown} exists with another search space or budget ({details}). "
            "Run it with its own settings, or choose another --study name."
        )


def _lookup(config: dict, key: str) -> object:
    if key.startswith("space."):
        return config["space"].get(key[6:])
    return config.get(key)


def make_pruner(name: str | optuna.pruners.BasePruner, epochs: int) -> optuna.pruners.BasePruner:
    """``"median"``: stop a trial whose best value so far is below the median of the finished trials' at
    the same epoch (after 4 trials and from epoch ``epochs // 4``); ``"hyperband"``: Hyperband over 1 to
    ``epochs`` epochs (reduction factor 3); ``"none"``; or any Optuna pruner, as it is."""
    if isinstance(name, optuna.pruners.BasePruner):
        return name
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(1, epochs // 4))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SearchError(f"pruner must be one of {PRUNERS}, got {name!r}.")


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE whose random draws for trial ``n`` come from ``seed`` and ``n``: the same trial draws the same
    settings whichever process runs it and after a resume (the same finished trials given), and two
    processes never draw the same start-up settings."""

    def __init__(self, seed: int):
        self.seed = seed
        self._samplers: dict[int, optuna.samplers.TPESampler] = {}

    def _for(self, trial: FrozenTrial) -> optuna.samplers.TPESampler:
        if trial.number not in self._samplers:
            with _quiet_optuna():
                self._samplers[trial.number] = optuna.samplers.TPESampler(
                    seed=self.seed * 100_003 + trial.number, n_startup_trials=8, constant_liar=True
                )
        return self._samplers[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._samplers.pop(trial.number, None)


def default_storage(out_dir: str | Path | None = None) -> str:
    """``sqlite:///<out_dir>/study.db`` (``out_dir`` defaults to ``models/search``)."""
    return f"sqlite:///{Path(out_dir or MODELS_DIR / 'search').expanduser().absolute() / 'study.db'}"


# ---------------------------------------------------------------------------------- trials and processes
def _is_retry(trial: FrozenTrial) -> bool:
    return "failed_trial" in trial.system_attrs


def _counts_as_slot(trial: FrozenTrial) -> bool:
    """A trial that takes one of the study's ``n_trials`` places: not a retry (it takes its original's) and
    not a surplus trial (created by two processes at once when one place was left, never trained)."""
    return not _is_retry(trial) and not trial.user_attrs.get("surplus")


def _work_left(study: optuna.Study, n_trials: int) -> bool:
    trials = study.get_trials(deepcopy=False)
    waiting = any(t.state == TrialState.WAITING for t in trials)
    return waiting or sum(map(_counts_as_slot, trials)) < n_trials


def _process_record(number: int) -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": _start_time(os.getpid()),
        "trial": number,
    }


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused process id apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(record: dict) -> bool:
    """Whether the process of ``record`` (:func:`_process_record`, made on this machine) still runs."""
    pid = int(record["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] not in ("Z", "X") and (record.get("start") is None or fields[19] == record["start"])


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Mark failed, and queue once again, the running trials whose process on this machine has died (a
    killed search), and those of any machine whose heartbeat stopped :data:`GRACE_SECONDS` ago (Optuna's
    own check). Returns the numbers of the first kind."""
    with _quiet_optuna():
        optuna.storages.fail_stale_trials(study)  # the storage's callback queues each once again
    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = trial.user_attrs.get("process") or {}
        if record.get("trial") != trial.number or record.get("host") != host or _alive(record):
            continue  # not yet claimed by its process, on another machine, or alive
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process got there first
        retry_once(study, trial.number)
        failed.append(trial.number)
    return failed


def retry_once(study: optuna.Study, number: int) -> None:
    """Queue the failed trial ``number`` again with its settings, unless it is itself a retry."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus"):
        with _quiet_optuna():
            RetryHeartbeatStaleTrialCallback(max_retry=1)(study, trial)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's experimental-feature warnings and log lines off (this module prints its own)."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", "Target and region quantiles", UserWarning)  # importances
            yield
    finally:
        optuna.logging.set_verbosity(level)
