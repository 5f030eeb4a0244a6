# Sourced by run.sh and test.sh: create or reuse .venv and install confero into it.
# Usage: ensure_venv [EXTRA]   (EXTRA: "test" installs the test tools too)
# Reinstalls only when pyproject.toml changed since the last install.
ensure_venv() {
    local extra="${1:-}" root stamp spec want
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [ ! -x "$root/.venv/bin/python" ]; then
        echo "==> creating $root/.venv" >&2
        "${PYTHON:-python3}" -m venv "$root/.venv" || return 1
    fi
    spec="$root"
    [ -n "$extra" ] && spec="$root[$extra]"
    stamp="$root/.venv/.confero-installed${extra:+-$extra}"
    want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "==> installing confero${extra:+ with [$extra]} into .venv" >&2
        "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            --upgrade pip >&2 || return 1
        "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            -e "$spec" >&2 || return 1
        echo "$want" > "$stamp"
    fi
}
