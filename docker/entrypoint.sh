#!/bin/sh
# The coordinator container's entrypoint: bring the database schema up to date, then serve.
#
#   entrypoint.sh [SERVE-OPTIONS...]   feddetox coordinator migrate && exec feddetox coordinator serve [SERVE-OPTIONS...]
#   entrypoint.sh COMMAND [ARGS...]    run COMMAND instead (e.g. `docker compose run coordinator sh`)
#
# The admin key comes from the environment (FEDDETOX_ADMIN_KEY), never from the image. When it is not set,
# a random key is made once, kept in $FEDDETOX_STATE_DIR/admin.key (mode 600, on the state volume, so it
# survives restarts) and used from then on; the log says where it is, not what it is.
# FEDDETOX_BIN names the feddetox command (default: `feddetox` on PATH); every setting is read from the
# environment by the coordinator itself (FEDDETOX_DATABASE_URL, FEDDETOX_STATE_DIR, FEDDETOX_TLS_CERT, ...).
# Runs outside Docker as it runs inside: `FEDDETOX_STATE_DIR=./state sh docker/entrypoint.sh`.
set -eu

say() { echo "entrypoint: $*" >&2; }

# A first argument that is not an option is a command to run instead of the coordinator.
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

FEDDETOX_BIN=${FEDDETOX_BIN:-feddetox}
# An empty setting (e.g. `FEDDETOX_TLS_CERT=` in .env) means "not set", as it does for compose.
for name in FEDDETOX_DATABASE_URL FEDDETOX_TLS_CERT FEDDETOX_TLS_KEY; do
    eval "value=\${$name:-}"
    [ -n "$value" ] || unset "$name"
done
: "${FEDDETOX_STATE_DIR:=./state}"
export FEDDETOX_STATE_DIR
mkdir -p "$FEDDETOX_STATE_DIR"

if [ -z "${FEDDETOX_ADMIN_KEY:-}" ]; then
    key_file="$FEDDETOX_STATE_DIR/admin.key"
    if [ ! -s "$key_file" ]; then
        (
            umask 077
            python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$key_file.tmp"
            mv "$key_file.tmp" "$key_file"
        )
        say "FEDDETOX_ADMIN_KEY is not set: made a random admin key in $key_file (read it there)"
    else
        say "FEDDETOX_ADMIN_KEY is not set: using the admin key kept in $key_file"
    fi
    FEDDETOX_ADMIN_KEY=$(cat "$key_file")
    export FEDDETOX_ADMIN_KEY
fi

db=${FEDDETOX_DATABASE_URL:-sqlite:///$FEDDETOX_STATE_DIR/coordinator.db}
case "$db" in
    *@*) db="${db%%:*}://...@${db##*@}" ;;  # no credentials in the log
esac
say "migrating the database $db"
"$FEDDETOX_BIN" coordinator migrate
say "starting the coordinator"
exec "$FEDDETOX_BIN" coordinator serve "$@"
