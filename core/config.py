"""One place for paths and tunable constants, each overridable by one environment variable.

| variable                    | meaning                                          | default                         |
| --------------------------- | ------------------------------------------------ | ------------------------------- |
| BRAINSCAN_MODEL             | the `.keras` model file (its card sits beside it) | models/brainscan-default.keras |
| BRAINSCAN_DATABASE_URL      | the review history's database (SQLAlchemy URL):  | sqlite:/// + BRAINSCAN_HISTORY_DB |
|                             | sqlite:///PATH or postgresql+psycopg://...       |                                 |
| BRAINSCAN_HISTORY_DB        | SQLite file holding the review history           | data/history.sqlite3            |
| BRAINSCAN_MAX_UPLOAD_MB     | largest scan file accepted, in megabytes         | 50                              |
| BRAINSCAN_MAX_PIXELS        | largest decoded image accepted, in pixels        | 40000000                        |
| BRAINSCAN_LOW_CONFIDENCE    | probability under which a prediction is flagged  | 0.80                            |
| BRAINSCAN_RUNTIME           | inference runtime: auto, openvino or tensorflow  | auto (see core/inference.py)    |
| BRAINSCAN_RUNTIME_CACHE     | folder of converted models, keyed by sha256      | data/runtime-cache              |
| BRAINSCAN_PRECISION         | auto: the card's int8 network where this CPU     | auto                            |
|                             | reproduces it; f32: never (core/model/inference) |                                 |
| BRAINSCAN_BLIND_READS       | 1: a reviewer sees that a scan was read before,  | 1                               |
|                             | not by whom or what; 0: every reader sees reads  |                                 |
| BRAINSCAN_ROLES_CLAIM       | ID-token claim holding roles (team mode)         | roles                           |
| BRAINSCAN_ROLES_FILE        | TOML [roles] table, e-mail -> roles (team mode)  | none                            |
| BRAINSCAN_TEAM_DEMO         | set by `make team`: the sidebar says it is a     | off                             |
|                             | demonstration of the team set-up without sign-in |                                 |
| BRAINSCAN_SCAN_DIR          | the embedded scan archive: one file per sha256   | data/scans                      |
| BRAINSCAN_DICOMWEB_URL      | a DICOMweb archive instead (team mode), e.g.     | none (the scan folder)          |
|                             | http://127.0.0.1:8042/dicom-web                  |                                 |
| BRAINSCAN_DICOMWEB_USER     | its user name (HTTP basic authentication)        | none, or [dicomweb] user        |
| BRAINSCAN_DICOMWEB_PASSWORD | its password                                     | none, or [dicomweb] password    |
| BRAINSCAN_DICOMWEB_TIMEOUT  | seconds a DICOMweb request may take              | 10                              |
| BRAINSCAN_SECRETS_FILE      | TOML file whose [dicomweb] section the command   | .streamlit/secrets.toml         |
|                             | line reads (the app reads Streamlit's secrets)   |                                 |
| BRAINSCAN_NOT_MRI_MANIFEST  | files of the MRI collections that are not brain  | models/not-brain-mri.csv        |
|                             | MRI (head CT filed as MRI): training, calibration |                                 |
|                             | and evaluation leave them out of the MRI classes |                                 |

The DICOMweb settings may instead sit in a `[dicomweb]` section (`url`, `user`, `password`,
`timeout`) of the secrets file, which is not committed; an environment variable wins over it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "models"
DATA_DIR = ROOT / "data"

DEFAULT_MODEL_PATH = MODELS_DIR / "brainscan-default.keras"


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not a number") from None


def model_path() -> Path:
    """The model file the app and CLI load unless told otherwise."""
    return _env_path("BRAINSCAN_MODEL", DEFAULT_MODEL_PATH)


def not_mri_manifest_path() -> Path:
    """The manifest of dataset files that are not brain MRI although filed as such (see `core.training.dataset`)."""
    return _env_path("BRAINSCAN_NOT_MRI_MANIFEST", MODELS_DIR / "not-brain-mri.csv")


def history_db_path() -> Path:
    """The SQLite history database; its folder is created on first use."""
    return _env_path("BRAINSCAN_HISTORY_DB", DATA_DIR / "history.sqlite3")


def database_url() -> str:
    """The history's database URL: BRAINSCAN_DATABASE_URL, else the SQLite file of `history_db_path()`."""
    return os.environ.get("BRAINSCAN_DATABASE_URL", "").strip() or f"sqlite:///{history_db_path()}"


def max_upload_bytes() -> int:
    """Largest accepted scan file, in bytes."""
    return int(_env_float("BRAINSCAN_MAX_UPLOAD_MB", 50.0) * 1024 * 1024)


def max_pixels() -> int:
    """Largest accepted decoded image area, in pixels (guards against decompression bombs)."""
    return int(_env_float("BRAINSCAN_MAX_PIXELS", 40_000_000))


def low_confidence_threshold() -> float:
    """Calibrated probability under which a prediction is flagged as low confidence."""
    return _env_float("BRAINSCAN_LOW_CONFIDENCE", 0.80)


# The model's input contract. The card of a trained model is the source of truth at run time;
# these are the values new models are trained with.
IMAGE_SIZE = 128
# Near-duplicate grouping always compares slices prepared at this size, whatever the model's
# input size, so a model trained at another size keeps the same split (and held-out files).
SPLIT_IMAGE_SIZE = 128
COLOR_MODE = "grayscale"
VALUE_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class ArchiveSettings:
    """Where scans are archived: a DICOMweb service when `dicomweb_url` is set, else the folder `scan_dir`."""

    scan_dir: Path
    dicomweb_url: str = ""
    user: str = ""
    password: str = field(default="", repr=False)
    timeout_s: float = 10.0


def secrets_file() -> Path:
    """The TOML secrets file the command line reads its [dicomweb] section from (the app reads Streamlit's)."""
    return _env_path("BRAINSCAN_SECRETS_FILE", ROOT / ".streamlit" / "secrets.toml")


def _secrets_section(name: str) -> dict:
    """One section of `secrets_file()`, or {} when there is no such file or section; raises ValueError if unreadable."""
    import tomllib

    path = secrets_file()
    if not path.is_file():
        return {}
    try:
        section = tomllib.loads(path.read_text(encoding="utf-8")).get(name) or {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"the secrets file {path} cannot be read ({type(error).__name__})") from None
    return dict(section) if isinstance(section, dict) else {}


def archive_settings(dicomweb: Mapping | None = None) -> ArchiveSettings:
    """The scan archive's settings: environment variables first, then `dicomweb` (a [dicomweb] secrets section).

    `dicomweb` None reads the section from `secrets_file()` (the command line); the app passes
    Streamlit's own `st.secrets["dicomweb"]`, since Streamlit may read other secrets files.
    """
    section = dict(_secrets_section("dicomweb") if dicomweb is None else dicomweb)

    def setting(variable: str, key: str) -> str:
        return (os.environ.get(variable) or str(section.get(key) or "")).strip()

    timeout = setting("BRAINSCAN_DICOMWEB_TIMEOUT", "timeout")
    try:
        timeout_s = float(timeout) if timeout else 10.0
    except ValueError:
        raise ValueError(f"the DICOMweb timeout {timeout!r} is not a number of seconds") from None
    return ArchiveSettings(scan_dir=_env_path("BRAINSCAN_SCAN_DIR", DATA_DIR / "scans"),
                           dicomweb_url=setting("BRAINSCAN_DICOMWEB_URL", "url").rstrip("/"),
                           user=setting("BRAINSCAN_DICOMWEB_USER", "user"),
                           password=os.environ.get("BRAINSCAN_DICOMWEB_PASSWORD") or str(section.get("password") or ""),
                           timeout_s=max(timeout_s, 0.1))


def team_demonstration() -> bool:
    """Whether this replica is one of `make team`'s demonstration (BRAINSCAN_TEAM_DEMO=1): team pieces, no sign-in."""
    return os.environ.get("BRAINSCAN_TEAM_DEMO", "").strip().lower() in ("1", "true", "yes", "on")


def blind_double_reading() -> bool:
    """Whether a `reviewer` is kept blind to earlier reads of a scan (BRAINSCAN_BLIND_READS, default on)."""
    return os.environ.get("BRAINSCAN_BLIND_READS", "1").strip().lower() not in ("0", "false", "no", "off")
