#!/bin/bash
# The entrypoint of localhost/netcron/postgres (deploy/podman/postgres/Containerfile): what the
# official postgres image's entrypoint does for compose and testcontainers, written for
# Debian's postgresql-15. Runs as root only to prepare PGDATA, then as `postgres`.
set -Eeuo pipefail

# `docker run IMAGE -c fsync=off` passes server options only, as with the official image.
if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi

if [ "$1" != postgres ]; then
    exec "$@"
fi

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
export POSTGRES_USER POSTGRES_DB POSTGRES_HOST_AUTH_METHOD

if [ "$(id -u)" = 0 ]; then
    # A fresh named volume or bind mount may belong to root.
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

# The server options the command carries (everything after `postgres`), for the temporary
# server too, as the official image does (so `-c fsync=off` speeds up the initialisation).
options=("${@:2}")

run_init_files() {
    local f
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)
                echo "$0: running $f"
                # shellcheck source=/dev/null # the image's user supplies these files
                . "$f"
                ;;
            *.sql) echo "$0: running $f"; psql_run -f "$f"; echo ;;
            *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | psql_run; echo ;;
            # An empty directory leaves the pattern itself; `if` keeps set -e out of it.
            *) if [ -e "$f" ]; then echo "$0: ignoring $f"; fi ;;
        esac
    done
}

psql_run() {
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc \
        --dbname "${database:-postgres}" "$@"
}

initialise() {
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        echo >&2 "Error: the database is uninitialised and POSTGRES_PASSWORD is not set."
        echo >&2 "Set it (or POSTGRES_HOST_AUTH_METHOD=trust, which allows any connection)."
        exit 1
    fi
    # The password goes through a file descriptor, never the command line.
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of words, as upstream.
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
        --encoding=UTF8 --locale=C.UTF-8 ${POSTGRES_INITDB_ARGS:-}
    # Initdb's defaults trust local connections; every other one needs the password.
    printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"
    # The official image listens on every address; Debian's sample says localhost.
    printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"

    # A temporary server on the Unix socket only, so nothing connects before the database
    # exists. Without -l, pg_ctl sends the server's log to its standard output: like the
    # official image, a first start prints "ready to accept connections" once on stdout (this
    # server) and once on stderr (the real one), which testcontainers-modules waits for.
    pg_ctl -D "$PGDATA" -o "$(printf '%q ' -c listen_addresses= -p 5432 "${options[@]}")" -w start
    if [ "$POSTGRES_DB" != postgres ]; then
        # Quoted as an identifier by psql (:"db"), whatever the name holds.
        local exists
        exists=$(database=postgres psql_run -tA -v db="$POSTGRES_DB" \
            <<< "SELECT 1 FROM pg_database WHERE datname = :'db'")
        if [ -z "$exists" ]; then
            database=postgres psql_run -v db="$POSTGRES_DB" <<< 'CREATE DATABASE :"db";'
        fi
    fi
    database="$POSTGRES_DB" run_init_files
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo
    echo 'PostgreSQL init process complete; ready for start up.'
    echo
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initialise
else
    echo 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
fi

exec "$@"
