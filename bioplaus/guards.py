"""What bioplaus refuses before anything runs: overrides that would make Hydra run code, and
folders left behind by a run that was refused.

bioplaus builds every learner, circuit and data set from its own registry by name; it never calls
``hydra.utils.instantiate``. A key such as ``_target_`` in a config therefore means nothing to
bioplaus, and where Hydra itself would honour it (``hydra.callbacks``, the logging configs, a
launcher or sweeper plugin) it names Python code to import and call. Such overrides are refused
with a `UsageError` (exit 2), whatever the value.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from bioplaus.errors import UsageError

#: keys with which Hydra (or ``hydra.utils.instantiate``) names code to import and call
CODE_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")
#: the ``hydra.*`` keys a run may set: where it writes, nothing that imports code
HYDRA_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.job.chdir",
              "hydra.job.name", "hydra.output_subdir", "hydra.verbose")


def override_key(override: str) -> str:
    """The key of a ``key=value`` / ``+key=value`` / ``~key`` override."""
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0].strip()


#: environment variables that hold secrets: never copied into a config by ``${oc.env:NAME}``
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
_ENV_INTERPOLATION = re.compile(r"oc\.env\s*:\s*['\"]?([A-Za-z0-9_]+)")


def refuse_unsafe_overrides(overrides: Iterable[str]) -> None:
    """`UsageError` for an override that would have Hydra import code: a ``_target_`` (or another
    instantiation key) anywhere in its key or value, or a ``hydra.*`` key other than the output
    folders (`HYDRA_KEYS`): callbacks, logging configs, launcher and sweeper plugins. Also for an
    ``${oc.env:NAME}`` interpolation of a secret (NAME holding KEY, TOKEN, SECRET, PASSWORD, …),
    which would copy it into ``config.yaml`` and the W&B config."""
    for override in overrides:
        text = str(override)
        for name in _ENV_INTERPOLATION.findall(text):
            if SECRET_NAME.search(name):
                raise UsageError(f"'{text}' would copy the environment variable {name} into the run's "
                                 f"config (config.yaml, W&B); bioplaus never writes secrets. Remove it.")
        key = override_key(text)
        parts = key.replace("/", ".").split(".")
        found = next((k for k in CODE_KEYS if k in parts or k in text), None)
        if found is not None:
            raise UsageError(f"'{text}': the key {found} names Python code to instantiate, and bioplaus "
                             f"never instantiates code named in a config or on the command line. "
                             f"Choose learners, circuits and data by name (learner=NAME).")
        if parts[0] == "hydra" and key not in HYDRA_KEYS:
            raise UsageError(f"'{text}': bioplaus lets a run set only these Hydra keys: "
                             f"{', '.join(HYDRA_KEYS)}. Others (callbacks, logging, launchers, "
                             f"sweepers) can import and run code, and are refused.")


def missing_ancestor(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet, or None."""
    path = Path(path).absolute()
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def remove_new_dirs(run_dir: Path, root: Path, created: Path | None) -> None:
    """Undo the folders made for a refused run: ``run_dir``, then each empty parent inside the
    runs ``root`` (e.g. the dated folder), and ``root`` itself and its parents up to ``created``
    (the outermost folder that did not exist before the run) while they are empty."""
    run_dir, root = Path(run_dir).absolute(), Path(root).absolute()
    shutil.rmtree(run_dir, ignore_errors=True)
    limit = Path(created).absolute() if created is not None else root
    for parent in run_dir.parents:
        inside = limit in parent.parents or (created is not None and parent == limit)
        if not inside:
            break
        try:
            parent.rmdir()  # only an empty folder
        except OSError:
            break
