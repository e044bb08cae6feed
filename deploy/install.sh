#!/usr/bin/env bash
# Install, upgrade, roll back or remove the city safety edge gateway on Raspberry Pi OS /
# Debian (bookworm or trixie; arm64, armhf, amd64).
#
#   sudo deploy/install.sh [--config site.yaml [--certs DIR]]   install or upgrade in place
#   sudo deploy/install.sh --rollback                          back to the previous release
#   sudo deploy/install.sh --uninstall [--purge]               remove (keeps config and data
#                                                              unless --purge)
#
# Layout (docs/deploy.md):
#   /opt/city-safety-edge/releases/<stamp>/venv   one virtual environment per release
#   /opt/city-safety-edge/current                 symlink to the release in service
#   /etc/city-safety-edge/site.yaml, certs/       configuration, mode 0600, user edge
#   /var/lib/city-safety-edge/                    the outbox (the only writable path)
#   /etc/systemd/system/city-safety-edge*.service
#
# Nothing in service changes until the new release is built, imports, and the new config
# (if any) has passed its checks; then one rename switches `current`. A failure before that
# removes the half-built release and leaves the running gateway as it was.
#
# --root DIR (or DESTDIR=DIR) installs into DIR as if it were /: for SD card images built on
# another machine and for the tests. Paths written into the installed files are the real
# ones (/opt/..., /etc/...), never DIR.
set -euo pipefail

APP=city-safety-edge
SERVICE_USER=edge
# edge-admin: who may use the running gateway's control socket (edge watch, edge commission);
# the gateway's user is in it so that the socket can be given to the group.
SERVICE_GROUPS=(dialout gpio edge-admin)
UNITS=(city-safety-edge.service city-safety-edge-firstboot.service)
SUPPORTED_IDS="debian raspbian"
SUPPORTED_CODENAMES="bookworm trixie"
SUPPORTED_ARCHES="arm64 armhf amd64"
MIN_PYTHON=3.11

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="${DESTDIR:-/}"
SOURCE=""
WHEELS=""
CONFIG=""
CERTS=""
PYTHON="${PYTHON:-python3}"
ARCH=""
ACTION=install
PURGE=0
START=1
KEEP=2

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF

Options:
  --config FILE   site file to install (checked before anything changes)
  --certs DIR     TLS files (ca.pem, client.pem, client.key) and command keys (*.pub) to install with --config
  --source PATH   the project folder or a .whl to install (default: this repository)
  --wheels DIR    install offline, from the wheels in DIR only
  --python PATH   the Python to build the environment with (default: python3)
  --root DIR      install into DIR as if it were / (also: DESTDIR=DIR)
  --keep N        releases kept for --rollback (default: 2)
  --no-start      do not (re)start the service
  --rollback      switch back to the previous release
  --uninstall     remove the software; configuration and data stay
  --purge         with --uninstall: also remove configuration, data and the user
EOF
}

die() {
    # $1: exit status; the rest: the message. 2 = this system is not supported / bad usage.
    local status=$1
    shift
    printf 'install: error: %s\n' "$*" >&2
    exit "$status"
}
say() { printf 'install: %s\n' "$*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --config) CONFIG="${2:?--config needs a file}"; shift 2 ;;
        --certs) CERTS="${2:?--certs needs a folder}"; shift 2 ;;
        --source) SOURCE="${2:?--source needs a path}"; shift 2 ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
        --python) PYTHON="${2:?--python needs a path}"; shift 2 ;;
        --root) ROOT="${2:?--root needs a folder}"; shift 2 ;;
        --keep) KEEP="${2:?--keep needs a number}"; shift 2 ;;
        --no-start) START=0; shift ;;
        --rollback) ACTION=rollback; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die 2 "unknown option: $1" ;;
    esac
done

case "$KEEP" in ''|*[!0-9]*) die 2 "--keep needs a whole number, got '$KEEP'" ;; esac
[ "$PURGE" = 1 ] && [ "$ACTION" != uninstall ] && die 2 "--purge goes with --uninstall"
[ -n "$CERTS" ] && [ -z "$CONFIG" ] && die 2 "--certs goes with --config"

[ "$(id -u)" = 0 ] || die 1 "run as root (sudo $0 ...): the installer creates a system user and writes /opt, /etc and /var/lib"
[ -d "$ROOT" ] || die 2 "--root $ROOT: no such folder"
ROOT="$(cd "$ROOT" && pwd)"
R="${ROOT%/}"                         # "" for the real system
OPT="$R/opt/$APP"
ETC="$R/etc/$APP"
DATA="$R/var/lib/$APP"
UNIT_DIR="$R/etc/systemd/system"
LINK="$R/usr/local/bin/edge"


# systemd is running on this machine (not a chroot, not an image being prepared).
live_systemd() { [ -z "$R" ] && [ -d /run/systemd/system ]; }

systemctl_offline() {
    if command -v systemctl >/dev/null; then
        systemctl --root="${R:-/}" --quiet "$@"
    else
        say "systemctl not found: run 'systemctl $*' on the gateway"
    fi
}

# -- checks: refuse before touching anything ----------------------------------------------

check_system() {
    local os_release="$R/etc/os-release"
    [ -r "$os_release" ] || os_release="$R/usr/lib/os-release"
    [ -r "$os_release" ] || die 2 "cannot tell which system this is: no $R/etc/os-release"
    local ID VERSION_CODENAME PRETTY_NAME
    # Read in a subshell: os-release sets NAME, VERSION and more, which must not leak here.
    { read -r ID; read -r VERSION_CODENAME; read -r PRETTY_NAME; } < <(
        # shellcheck disable=SC1090
        . "$os_release"
        printf '%s\n%s\n%s\n' "${ID:-}" "${VERSION_CODENAME:-}" "${PRETTY_NAME:-}"
    )
    case " $SUPPORTED_IDS " in *" $ID "*) ;; *)
        die 2 "unsupported system: ${PRETTY_NAME:-$ID}; this installer supports Raspberry Pi OS and Debian ($SUPPORTED_CODENAMES)" ;;
    esac
    case " $SUPPORTED_CODENAMES " in *" $VERSION_CODENAME "*) ;; *)
        die 2 "unsupported release: ${PRETTY_NAME:-$ID $VERSION_CODENAME}; use Raspberry Pi OS or Debian $SUPPORTED_CODENAMES (upgrade the system, or flash a current image)" ;;
    esac
    local arch
    if command -v dpkg >/dev/null; then arch="$(dpkg --print-architecture)"; else
        case "$(uname -m)" in aarch64) arch=arm64 ;; armv7l) arch=armhf ;; x86_64) arch=amd64 ;; *) arch="$(uname -m)" ;; esac
    fi
    case " $SUPPORTED_ARCHES " in *" $arch "*) ;; *)
        die 2 "unsupported architecture: $arch; supported: $SUPPORTED_ARCHES" ;;
    esac
    SYSTEM="${PRETTY_NAME:-$ID $VERSION_CODENAME} ($arch)"
    ARCH=$arch
}

# A Raspberry Pi (or another ARM board): the buzzer and lamps need a real GPIO backend.
on_arm() { case "$ARCH" in arm64|armhf) return 0 ;; *) return 1 ;; esac; }

check_python() {
    command -v "$PYTHON" >/dev/null || die 2 "no Python at '$PYTHON': install it (apt-get install python3) or pass --python PATH"
    local version
    version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
        || die 2 "'$PYTHON' does not run"
    local major=${version%%.*} minor=${version#*.}
    local need_major=${MIN_PYTHON%%.*} need_minor=${MIN_PYTHON#*.}
    if [ "$major" -lt "$need_major" ] || { [ "$major" -eq "$need_major" ] && [ "$minor" -lt "$need_minor" ]; }; then
        die 2 "Python $version is too old: the gateway needs Python $MIN_PYTHON or newer (Raspberry Pi OS bookworm has 3.11)"
    fi
    if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null && [ -z "$R" ] \
        && command -v apt-get >/dev/null; then
        # One step for the installer on site: fetch the missing Debian piece ourselves.
        say "installing python3-venv (apt-get)"
        apt-get install -y -qq python3-venv >/dev/null || true
    fi
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
        || die 2 "Python $version cannot make virtual environments: apt-get install python3-venv"
    PYTHON_VERSION=$version
}

check_tools() {
    local tool missing=()
    for tool in openssl useradd groupadd usermod; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] || die 2 "missing commands: ${missing[*]} (apt-get install openssl passwd)"
}

check_inputs() {
    if [ -z "$SOURCE" ]; then
        SOURCE="$(cd "$HERE/.." && pwd)"
    fi
    [ -e "$SOURCE" ] || die 2 "--source $SOURCE: no such file or folder"
    if [ -d "$SOURCE" ] && [ ! -f "$SOURCE/pyproject.toml" ]; then
        die 2 "--source $SOURCE is not the project (no pyproject.toml)"
    fi
    [ -z "$WHEELS" ] || [ -d "$WHEELS" ] || die 2 "--wheels $WHEELS: no such folder"
    if [ -n "$CONFIG" ]; then
        if [ ! -f "$CONFIG" ] || [ ! -r "$CONFIG" ]; then
            die 2 "--config $CONFIG: no such readable file"
        fi
    fi
    if [ -n "$CERTS" ]; then
        [ -d "$CERTS" ] || die 2 "--certs $CERTS: no such folder"
    fi
    for unit in "${UNITS[@]}"; do
        [ -f "$HERE/systemd/$unit" ] || die 2 "missing $HERE/systemd/$unit: run the installer from a full copy of the project"
    done
}

# -- building a release --------------------------------------------------------------------

RELEASE=""
SWITCHED=0
cleanup() {
    local status=$?
    if [ "$status" -ne 0 ] && [ -n "$RELEASE" ] && [ "$SWITCHED" = 0 ]; then
        rm -rf "$RELEASE" "${STAGE:-}"
        printf 'install: nothing was changed; the gateway in service (if any) is untouched\n' >&2
    fi
    [ -z "${STAGE:-}" ] || rm -rf "$STAGE"
}
trap cleanup EXIT

compile_stdlib() {
    # The interpreter's own modules for -OO too, where the system has not compiled them: else
    # the service compiles them again at every start. Only missing files are written; a
    # failure costs start time, not the release.
    local stdlib
    stdlib="$("$RELEASE/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"
    [ -d "$R$stdlib" ] && [ -w "$R$stdlib" ] || return 0
    local where=()
    [ -z "$R" ] || where=(-s "$R" -p /)
    "$RELEASE/venv/bin/python" -m compileall -q -j 0 -o 2 "${where[@]}" \
        -x '/(test|tests|idlelib|lib2to3|turtledemo|tkinter|site-packages|dist-packages)/' "$R$stdlib" >/dev/null 2>&1 \
        || say "some of Python's own modules in $stdlib could not be compiled for -OO; the gateway compiles them at start"
}

build_release() {
    local stamp
    stamp="$(date -u +%Y%m%dT%H%M%SZ)-$$"
    mkdir -p "$OPT/releases"
    RELEASE="$OPT/releases/$stamp"
    say "building $RELEASE (Python $PYTHON_VERSION)"
    "$PYTHON" -m venv "$RELEASE/venv"
    # --use-pep517: a package built from source (lgpio on armhf and Python 3.13) is built the
    # way every pip from 23.1 on does, in an isolated environment (from the wheelhouse offline),
    # not by bookworm's pip 23.0 through a deprecated 'setup.py install'.
    local pip=("$RELEASE/venv/bin/python" -m pip --disable-pip-version-check --no-input --quiet
        install --use-pep517)
    [ -z "$WHEELS" ] || pip+=(--no-index --find-links "$WHEELS")
    [ -z "$R" ] || pip+=(--no-compile)
    # lgpio (the GPIO backend, ARM only) has prebuilt wheels for aarch64 and CPython 3.9-3.12;
    # elsewhere (armhf, trixie's 3.13) pip builds its sdist, and PYPI=1 makes that build the
    # self-contained module of those wheels rather than one linked to a liblgpio the system
    # may not have. It needs swig, a C compiler and the Python headers.
    if ! PYPI=1 "${pip[@]}" "$SOURCE"; then
        on_arm && ! { command -v swig && command -v cc; } >/dev/null \
            && say "if lgpio failed above: it has no prebuilt wheel for Python $PYTHON_VERSION on $ARCH; apt-get install swig gcc python3-dev and run the installer again, or install from a wheelhouse (--wheels) built on a gateway of the same kind (docs/deploy.md#gpio-backend)" >&2
        die 1 "installing the gateway's Python packages failed (see above)"
    fi
    if [ -n "$R" ]; then
        # Scripts and the venv's own files name the folder they were built in; on the
        # target system that folder is the same path without the staging root. Bytecode
        # records its source path too, so it is compiled here with the root stripped.
        grep -rlI --null -- "$R/opt/" "$RELEASE/venv/bin" "$RELEASE/venv/pyvenv.cfg" \
            | xargs -0 -r sed -i "s|$R/opt/|/opt/|g"
        "$RELEASE/venv/bin/python" -m compileall -q -f -j 0 -o 0 -o 2 -s "$R" -p / "$RELEASE/venv/lib" >/dev/null
    else
        # The service runs `python -OO` (its unit's ExecStart) and reads .opt-2.pyc files, which
        # it cannot write itself (ProtectSystem=strict); pip compiled the plain ones, which the
        # other commands use.
        "$RELEASE/venv/bin/python" -m compileall -q -j 0 -o 2 "$RELEASE/venv/lib" >/dev/null
    fi
    compile_stdlib
    mkdir -p "$RELEASE/share"
    cp "$HERE/install.sh" "$RELEASE/share/install.sh"
    cp "$HERE"/systemd/*.service "$RELEASE/share/"
    [ ! -f "$HERE/../docs/deploy.md" ] || cp "$HERE/../docs/deploy.md" "$RELEASE/share/"
    VERSION="$("$RELEASE/venv/bin/python" -m edge.cli --version)" \
        || die 1 "the new release does not start ('edge --version' failed)"
    echo "$VERSION" > "$RELEASE/VERSION"
    say "built $VERSION"
}

check_gpio_backend() {
    # Without it the gateway would start and then fail at its first alarm: refuse the release
    # now, while the one in service (if any) is untouched.
    on_arm || return 0
    local why
    why="$("$RELEASE/venv/bin/python" -c 'import lgpio, gpiozero.pins.lgpio' 2>&1 | tail -n 1)" \
        || die 1 "the new release has no GPIO backend for the buzzer and lamps ($why): lgpio must install with it on $ARCH (docs/deploy.md#gpio-backend)"
    say "GPIO backend: lgpio $("$RELEASE/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("lgpio"))')"
}

validate_config() {
    [ -n "$CONFIG" ] || return 0
    STAGE="$(mktemp -d)"
    cp "$CONFIG" "$STAGE/site.yaml"
    [ -z "$CERTS" ] || cp -r "$CERTS" "$STAGE/certs"
    say "checking $CONFIG${CERTS:+ and $CERTS}"
    if ! "$RELEASE/venv/bin/python" -m edge.cli provision --check-only --source "$STAGE" >/dev/null; then
        die 1 "the site file or certificates were refused (each problem is listed above); fix them and run the installer again"
    fi
}

# -- the system: user, folders, config, units ----------------------------------------------

prefix_args() { if [ -n "$R" ]; then echo "--prefix $R"; fi; }

ensure_user() {
    local group
    # shellcheck disable=SC2046
    for group in "${SERVICE_GROUPS[@]}"; do
        grep -q "^$group:" "$R/etc/group" || groupadd $(prefix_args) --system "$group"
    done
    local groups
    groups="$(IFS=,; echo "${SERVICE_GROUPS[*]}")"
    # shellcheck disable=SC2046
    if ! grep -q "^$SERVICE_USER:" "$R/etc/passwd"; then
        useradd $(prefix_args) --system --user-group --no-create-home \
            --home-dir "/var/lib/$APP" --shell /usr/sbin/nologin \
            --comment "city safety edge gateway" --groups "$groups" "$SERVICE_USER"
        say "created system user $SERVICE_USER (groups: $groups)"
    else
        # Exactly these groups: an account that gathered others over time is put back.
        usermod $(prefix_args) --groups "$groups" "$SERVICE_USER"
    fi
    SERVICE_UID="$(awk -F: -v u="$SERVICE_USER" '$1 == u { print $3 }' "$R/etc/passwd")"
    SERVICE_GID="$(awk -F: -v u="$SERVICE_USER" '$1 == u { print $4 }' "$R/etc/passwd")"
}

ensure_folders() {
    install -d -m 0755 "$R/etc" "$R/var/lib" "$R/usr/local/bin" "$UNIT_DIR"
    # Group-writable: a pushed site config (docs/commands.md) is written here by the gateway.
    install -d -m 0770 -o 0 -g "$SERVICE_GID" "$ETC"
    install -d -m 0750 -o "$SERVICE_UID" -g "$SERVICE_GID" "$DATA"
}

install_config() {
    [ -n "$CONFIG" ] || return 0
    install -m 0600 -o "$SERVICE_UID" -g "$SERVICE_GID" "$CONFIG" "$ETC/.site.yaml.new"
    if [ -n "$CERTS" ]; then
        rm -rf "$ETC/.certs.new"
        install -d -m 0700 -o "$SERVICE_UID" -g "$SERVICE_GID" "$ETC/.certs.new"
        find "$CERTS" -maxdepth 1 -type f -exec \
            install -m 0600 -o "$SERVICE_UID" -g "$SERVICE_GID" {} "$ETC/.certs.new/" \;
    fi
    [ ! -f "$ETC/site.yaml" ] || mv -f "$ETC/site.yaml" "$ETC/site.yaml.previous"
    mv -f "$ETC/.site.yaml.new" "$ETC/site.yaml"
    if [ -n "$CERTS" ]; then
        if [ -d "$ETC/certs" ]; then
            rm -rf "$ETC/certs.previous"
            mv "$ETC/certs" "$ETC/certs.previous"
        fi
        mv "$ETC/.certs.new" "$ETC/certs"
    fi
    say "installed $ETC/site.yaml${CERTS:+ and $ETC/certs/} (mode 0600, user $SERVICE_USER)"
}

install_units() {
    local unit
    for unit in "${UNITS[@]}"; do
        install -m 0644 "$HERE/systemd/$unit" "$UNIT_DIR/$unit"
    done
    ln -sfn "/opt/$APP/current/venv/bin/edge" "$LINK"
}

switch_to() {
    # $1: the release folder name. A symlink renamed over the old one: atomic.
    ln -sfn "releases/$1" "$OPT/current.new"
    mv -T "$OPT/current.new" "$OPT/current"
}

prune_releases() {
    local current old
    current="$(readlink "$OPT/current")"
    # Newest first; keep the one in service and KEEP-1 others for --rollback.
    # shellcheck disable=SC2012
    ls -1 "$OPT/releases" | sort -r | while read -r old; do
        [ "releases/$old" = "$current" ] && continue
        echo "$old"
    done | tail -n +"$KEEP" | while read -r old; do
        rm -rf "${OPT:?}/releases/$old"
    done
}

start_service() {
    systemctl_offline enable "${UNITS[@]}"
    if live_systemd; then
        systemctl daemon-reload
        if [ "$START" = 1 ]; then
            systemctl restart "${UNITS[0]}"
            say "restarted ${UNITS[0]}; check it with: sudo edge doctor"
        fi
    else
        say "units enabled; they start at the next boot"
    fi
}

do_install() {
    check_system
    check_python
    check_tools
    check_inputs
    local upgrading=0
    [ ! -e "$OPT/current" ] || upgrading=1
    build_release
    check_gpio_backend
    validate_config
    ensure_user
    ensure_folders
    install_config
    install_units
    switch_to "$(basename "$RELEASE")"
    SWITCHED=1
    prune_releases
    start_service
    if [ "$upgrading" = 1 ]; then say "upgraded to $VERSION on $SYSTEM"; else say "installed $VERSION on $SYSTEM"; fi
    if [ ! -f "$ETC/site.yaml" ]; then
        say "no site file yet: copy it to /boot/firmware/$APP/site.yaml and reboot, or run this installer with --config FILE"
    fi
}

do_rollback() {
    [ -L "$OPT/current" ] || die 1 "nothing installed in $OPT"
    local current previous
    current="$(basename "$(readlink "$OPT/current")")"
    # shellcheck disable=SC2012
    previous="$(ls -1 "$OPT/releases" | sort -r | grep -vx "$current" | head -n 1 || true)"
    [ -n "$previous" ] || die 1 "no previous release to roll back to (only $current is kept)"
    switch_to "$previous"
    say "rolled back from $current to $previous ($(cat "$OPT/releases/$previous/VERSION" 2>/dev/null || echo unknown version))"
    if live_systemd && [ "$START" = 1 ]; then systemctl restart "${UNITS[0]}"; fi
}

do_uninstall() {
    local unit
    if live_systemd; then systemctl stop "${UNITS[@]}" 2>/dev/null || true; fi
    for unit in "${UNITS[@]}"; do
        [ ! -f "$UNIT_DIR/$unit" ] || systemctl_offline disable "$unit" || true
        rm -f "$UNIT_DIR/$unit"
    done
    if live_systemd; then systemctl daemon-reload; fi
    [ ! -L "$LINK" ] || rm -f "$LINK"
    rm -rf "$OPT"
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ETC" "$DATA"
        if grep -q "^$SERVICE_USER:" "$R/etc/passwd" 2>/dev/null; then
            # shellcheck disable=SC2046
            userdel $(prefix_args) "$SERVICE_USER"
        fi
        say "removed the gateway, its configuration, its data and the user $SERVICE_USER"
    else
        say "removed the gateway; kept $ETC (configuration) and $DATA (buffered data): --purge removes them"
    fi
}

case "$ACTION" in
    install) do_install ;;
    rollback) do_rollback ;;
    uninstall) do_uninstall ;;
esac
