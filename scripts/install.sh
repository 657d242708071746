#!/bin/sh
# Install, upgrade or remove backup-agent on an Amazon Linux 2023 or Ubuntu host.
#
#   sudo scripts/install.sh              install or upgrade (run it again to upgrade)
#   sudo scripts/install.sh --uninstall  remove program and unit; keep config, state and backups
#
# Options (mostly for tests and packagers):
#   --prefix DIR     install below DIR (/opt, /etc … become DIR/opt, DIR/etc); then no
#                    user, no chown and no systemctl (a private, unprivileged install)
#   --no-systemctl   do not call systemctl (containers, image builds)
#   --venv DIR       use this existing virtualenv instead of creating one
#   --python PY      interpreter for the virtualenv (default: the newest python3.1x >= 3.11;
#                    Amazon Linux 2023: dnf install python3.11)
#
# What it does: creates the system user `backup-agent`; a virtualenv under
# /opt/backup-agent/venv with the dependencies pinned in requirements.lock (pip
# --require-hashes: every file must match its recorded sha256) and then the package from
# this checkout, which brings no dependency of its own; /etc/backup-agent/config.yaml
# from the example only when it does not exist (an operator's edits are never replaced);
# /usr/local/bin/backup-agent, backup-restore, backup-bootstrap-aws and
# backup-mount-snapshot pointing into the virtualenv;
# the systemd unit (paths and storage root filled in), enabled; then `check-config`, and
# the first-deployment steps that remain.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=""
SYSTEM=1
SYSTEMCTL=1
VENV=""
PYTHON=""
ACTION=install
USER_NAME=backup-agent

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=$(cd "$2" && pwd); SYSTEM=0; SYSTEMCTL=0; shift 2 ;;
        --no-systemctl) SYSTEMCTL=0; shift ;;
        --venv) VENV=$(cd "$2" && pwd); shift 2 ;;
        --python) PYTHON=$2; shift 2 ;;
        --uninstall) ACTION=uninstall; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 >&2 ;;
    esac
done

APP_DIR=$PREFIX/opt/backup-agent
ETC_DIR=$PREFIX/etc/backup-agent
UNIT_DIR=$PREFIX/etc/systemd/system
UNIT=$UNIT_DIR/backup-agent.service
DROPIN_DIR=$UNIT_DIR/backup-agent.service.d
CONFIG=$ETC_DIR/config.yaml
BIN_DIR=$PREFIX/usr/local/bin
LINK=$BIN_DIR/backup-agent
# Every command the docs tell an operator to run, linked beside backup-agent.
COMMANDS="backup-agent backup-restore backup-bootstrap-aws backup-mount-snapshot"
DEFAULT_ROOT=/mnt/backups

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

# The characters a value written into the unit or its drop-in may hold. systemd splits
# ReadWritePaths= and RequiresMountsFor= on whitespace, expands % specifiers and unquotes
# quotes and backslashes; a newline ends the directive and starts another. Spelt out, not
# as ranges: a bracket range depends on the locale.
UNIT_SAFE="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._@+,:=-"

# unit_value WHAT VALUE: refuse VALUE unless it is an absolute path of UNIT_SAFE characters.
unit_value() {
    case "$2" in
        /*[!$UNIT_SAFE]* | [!/]* | "")
            shown=$(printf '%s' "$2" | tr -c "$UNIT_SAFE" '?')
            die "$1 $shown: a systemd unit cannot carry that path safely (only letters," \
                "digits and / . _ - + @ , : = are written into the unit); choose another" ;;
    esac
}

# no_link PATH...: refuse to go on through a symbolic link (never follow one as root).
no_link() {
    for path in "$@"; do
        if [ -L "$path" ]; then
            die "$path is a symbolic link: refusing to follow it; replace it with the real" \
                "file or directory and run again"
        fi
    done
}

systemctl_() {
    if [ "$SYSTEMCTL" = 1 ]; then systemctl "$@"; else say "(skipped) systemctl $*"; fi
}

ensure_user() {
    [ "$SYSTEM" = 1 ] || return 0
    if ! id "$USER_NAME" >/dev/null 2>&1; then
        nologin=$(command -v nologin || echo /sbin/nologin)
        useradd --system --user-group --home-dir /var/lib/backup-agent --no-create-home \
            --shell "$nologin" --comment "backup-agent daemon" "$USER_NAME"
        say "created user $USER_NAME"
    fi
}

ensure_venv() {
    if [ -n "$VENV" ]; then
        say "using the existing virtualenv $VENV"
        return 0
    fi
    VENV=$APP_DIR/venv
    if [ -z "$PYTHON" ]; then
        for candidate in python3.13 python3.12 python3.11 python3; do
            if command -v "$candidate" >/dev/null 2>&1 &&
                "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
                PYTHON=$candidate
                break
            fi
        done
    fi
    [ -n "$PYTHON" ] && "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        { echo "install.sh: need Python 3.11 or later (dnf/apt install python3.11)" >&2; exit 1; }
    mkdir -p "$APP_DIR"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    # Exactly the locked set (requirements.lock, written by `make lock`): pinned versions,
    # each file checked against its sha256, the build tools (setuptools, wheel) included.
    # pip itself is the one that came with the interpreter: no unpinned upgrade.
    "$VENV/bin/python" -m pip install --quiet --require-hashes --no-deps \
        -r "$SRC/requirements.lock"
    # The package alone: its dependencies are the locked ones above, and it is built with
    # the locked setuptools rather than whatever an isolated build would download.
    "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation --no-index \
        --force-reinstall "$SRC"
    say "installed $("$VENV/bin/backup-agent" --version) into $VENV"
}

link_commands() {
    mkdir -p "$BIN_DIR"
    for command in $COMMANDS; do
        [ -x "$VENV/bin/$command" ] || die "$VENV/bin/$command is missing: reinstall the package"
        ln -sfn "$VENV/bin/$command" "$BIN_DIR/$command"
    done
    say "linked $COMMANDS in $BIN_DIR"
}

ensure_config() {
    no_link "$ETC_DIR"
    mkdir -p "$ETC_DIR"
    no_link "$CONFIG"  # `[ -e ]` is false for a dangling link, and `cp` would follow it
    if [ -e "$CONFIG" ]; then
        say "kept the existing $CONFIG"
    else
        cp "$SRC/config.yaml" "$CONFIG"
        say "wrote $CONFIG from the example: edit it"
    fi
    if [ "$SYSTEM" = 1 ]; then
        chown -h root:"$USER_NAME" "$ETC_DIR" "$CONFIG"
        chmod 0750 "$ETC_DIR"  # neither is a link (checked above): chmod follows links
        chmod 0640 "$CONFIG"
    fi
}

storage_root() {
    "$VENV/bin/python" - "$CONFIG" <<'EOF' 2>/dev/null || echo "$DEFAULT_ROOT"
import sys
from agent.config import load_config
print(load_config(sys.argv[1]).storage.root)
EOF
}

# write_file PATH: standard input into a new temp file beside PATH, then renamed over it
# (mktemp creates the file afresh, so a planted link at the temp name is never followed).
write_file() {
    temp=$(mktemp "$(dirname "$1")/.install.XXXXXX")
    cat >"$temp"
    chmod 0644 "$temp"
    mv -f "$temp" "$1"
}

# The paths install_unit writes into the unit, checked before anything is installed.
check_unit_values() {
    unit_value "the virtualenv" "${VENV:-$APP_DIR/venv}"
    unit_value "the configuration file" "$CONFIG"
}

install_unit() {
    root=$(storage_root)
    unit_value "storage.root" "$root"
    no_link "$UNIT_DIR" "$DROPIN_DIR"
    mkdir -p "$UNIT_DIR"
    sed -e "s|/opt/backup-agent/venv|$VENV|g" \
        -e "s|/etc/backup-agent/|$ETC_DIR/|g" \
        "$SRC/systemd/backup-agent.service" | write_file "$UNIT"
    if [ "$root" != "$DEFAULT_ROOT" ]; then
        mkdir -p "$DROPIN_DIR"
        write_file "$DROPIN_DIR/10-storage-root.conf" <<EOF
# Written by install.sh from storage.root in $CONFIG.
[Unit]
RequiresMountsFor=$root

[Service]
ReadWritePaths=
ReadWritePaths=$root
EOF
        say "storage root $root: wrote $DROPIN_DIR/10-storage-root.conf"
    else
        rm -f "$DROPIN_DIR/10-storage-root.conf"
    fi
    if [ "$SYSTEM" = 1 ] && [ -d "$root" ]; then
        no_link "$root"
        chown -h "$USER_NAME:$USER_NAME" "$root"
    fi
    # storage.auto_grow: the root units that grow the filesystem on the agent's request
    for grow_unit in backup-agent-grow.path backup-agent-grow.service; do
        sed -e "s|/opt/backup-agent/venv|$VENV|g" \
            -e "s|/etc/backup-agent/|$ETC_DIR/|g" \
            -e "s|^RequiresMountsFor=/mnt/backups\$|RequiresMountsFor=$root|" \
            "$SRC/systemd/$grow_unit" | write_file "$UNIT_DIR/$grow_unit"
    done
    systemctl_ daemon-reload
    systemctl_ enable backup-agent.service
    systemctl_ enable backup-agent-grow.path
    say "installed $UNIT"
}

check_config() {
    if "$VENV/bin/backup-agent" check-config --config "$CONFIG"; then
        if [ "$SYSTEMCTL" = 1 ] && systemctl is-active --quiet backup-agent.service; then
            systemctl restart backup-agent.service
            say "upgraded: restarted backup-agent (in-flight work was drained)"
            return 0
        fi
    else
        say "edit $CONFIG until 'backup-agent check-config' passes"
    fi
    next_steps
}

# The first-deployment steps install.sh does not do (README.md, "First deployment").
next_steps() {
    cat <<EOF
install.sh: remaining first-deployment steps (README.md, "First deployment"):
  1. sudoedit $CONFIG   (queue.url, buckets, storage.root, state.table, alerts.sns_topic_arn)
     then: sudo backup-agent check-config --config $CONFIG
  2. the instance role and its policy: backup-agent iam-policy (README.md, step 2)
  3. the AWS resources, with operator credentials: backup-bootstrap-aws --config $CONFIG
     then: backup-agent check-config --online --config $CONFIG
  4. mark the volume:
     sudo -u $USER_NAME backup-agent init-volume --config $CONFIG --volume-id vol-...
  5. start: systemctl start backup-agent   (fails at once, naming init-volume, when step 4
     was skipped; waits while storage.root is not mounted: --no-block not to wait)
  6. back up what already exists (events cover only new writes):
     sudo -u $USER_NAME backup-agent reconcile --config $CONFIG
  7. alarms and dashboard: backup-agent alarms && backup-agent dashboard
  Then, any time: backup-agent status --config $CONFIG
EOF
}

uninstall() {
    if [ "$SYSTEMCTL" = 1 ]; then
        systemctl disable --now backup-agent.service 2>/dev/null || true
        systemctl disable --now backup-agent-grow.path 2>/dev/null || true
    fi
    rm -f "$UNIT" "$UNIT_DIR/backup-agent-grow.path" "$UNIT_DIR/backup-agent-grow.service"
    rm -rf "$DROPIN_DIR"
    systemctl_ daemon-reload
    for command in $COMMANDS; do
        if [ -L "$BIN_DIR/$command" ] &&
            [ "$(readlink "$BIN_DIR/$command")" = "$APP_DIR/venv/bin/$command" ]; then
            rm -f "$BIN_DIR/$command"
        fi
    done
    rm -rf "$APP_DIR"
    say "removed the program and the unit"
    say "kept: $ETC_DIR, /var/lib/backup-agent, the backup volume and the user $USER_NAME"
}

if [ "$ACTION" = uninstall ]; then
    uninstall
    exit 0
fi
if [ "$SYSTEM" = 1 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (or use --prefix DIR for a private install)" >&2
    exit 1
fi
check_unit_values
ensure_user
ensure_venv
link_commands
ensure_config
install_unit
check_config
