# Shared by scripts/serve and scripts/test: make .venv with Python >= 3.11 (sourced, not run).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1; fi
}

apt_install() {
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "dicomd needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1))" >&2; exit 1; }

if [ ! -x "$ROOT/.venv/bin/python" ]; then
    # Debian ships venv (and ensurepip) separately from python3.
    if ! "$PY" -m venv "$ROOT/.venv" 2>/dev/null; then
        rm -rf "$ROOT/.venv"
        apt_install python3-venv
        "$PY" -m venv "$ROOT/.venv"
    fi
fi
VENV_PY="$ROOT/.venv/bin/python"
