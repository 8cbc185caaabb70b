#!/usr/bin/env bash
# A throwaway PostgreSQL for the trace-store tests; sets MODELFUSION_TEST_PG_URL.
#
#   . .ci/postgres.sh        sourced: start (or reuse) it and export MODELFUSION_TEST_PG_URL
#   .ci/postgres.sh          run: the same, printing `export MODELFUSION_TEST_PG_URL=...`
#   .ci/postgres.sh stop     stop this throwaway cluster (nothing else)
#
# Idempotent: a second run finds the cluster running and reuses it. It installs the Debian
# `postgresql` package only when no server binaries exist, runs its own cluster from its
# own directory on 127.0.0.1 (trust auth: reachable from this machine only), and never
# starts, stops or reconfigures any other cluster.
#
# Settings: MODELFUSION_PG_DIR (default ${TMPDIR:-/tmp}/modelfusion-pg),
#           MODELFUSION_PG_PORT (default 54329; the next free one if that is taken).

# Everything runs in a subshell so that sourcing this file changes nothing in the caller's
# shell (no set -e, no exit) except the one exported variable. Errors are checked by hand:
# `set -e` is silently ignored in some calling contexts.
_mf_pg_main() (
    action=${1:-start}
    dir=${MODELFUSION_PG_DIR:-${TMPDIR:-/tmp}/modelfusion-pg}
    data=$dir/data
    db=fusion_test

    say() { echo "postgres.sh: $*" >&2; }
    die() { say "error: $*"; exit 1; }

    # The server refuses to run as root; as root, run its tools as the `postgres` user.
    as_pg() {
        if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
    }

    find_bindir() {
        local d
        # Debian keeps initdb/pg_ctl off PATH, one dir per major version: take the newest.
        d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
        if [ -n "$d" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return; fi
        if command -v pg_ctl >/dev/null 2>&1; then dirname "$(command -v pg_ctl)"; fi
    }

    install_postgres() {
        say "PostgreSQL not found; installing the Debian package (apt-get)"
        local sudo=""
        if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
            && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 \
            || die "could not install postgresql with apt-get"
    }

    port_in_use() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

    bindir=$(find_bindir)
    if [ -z "$bindir" ]; then
        [ "$action" = stop ] && exit 0
        install_postgres
        bindir=$(find_bindir)
        [ -n "$bindir" ] || die "no pg_ctl after installing postgresql"
    fi

    running() { [ -s "$data/PG_VERSION" ] && as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; }

    if [ "$action" = stop ]; then
        if running; then as_pg "$bindir/pg_ctl" -D "$data" -m fast -w stop >&2; fi
        exit 0
    fi
    [ "$action" = start ] || die "unknown action '$action' (use: start, stop)"

    mkdir -p "$dir" || die "cannot create $dir"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || die "no 'postgres' user to run the server as"
        chown postgres: "$dir" || die "cannot hand $dir to the postgres user"
    fi
    # The postgres user may not be allowed into the caller's working directory.
    cd "$dir" || die "cannot enter $dir"

    if running; then
        port=$(cat "$dir/port" 2>/dev/null) || die "$data is running but $dir/port is missing"
    else
        if [ ! -s "$data/PG_VERSION" ]; then
            as_pg "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --no-locale \
                --no-sync >/dev/null || die "initdb failed in $data"
        fi
        port=${MODELFUSION_PG_PORT:-54329}
        for _ in $(seq 1 20); do port_in_use "$port" || break; port=$((port + 1)); done
        port_in_use "$port" && die "no free port near ${MODELFUSION_PG_PORT:-54329}"
        # Durability off: this database lives for one CI run.
        as_pg "$bindir/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off \
                -c synchronous_commit=off -c full_page_writes=off" start >/dev/null \
            || { tail -n 20 "$dir/server.log" >&2; die "the server did not start (log above)"; }
        echo "$port" >"$dir/port"
    fi

    psql=("$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres)
    exists=$(as_pg "${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'") \
        || die "cannot connect to 127.0.0.1:$port"
    if [ "$exists" != 1 ]; then
        as_pg "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db" \
            || die "createdb $db failed"
    fi
    echo "postgresql://postgres@127.0.0.1:$port/$db"
)

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # Sourced.
    if _mf_pg_url=$(_mf_pg_main "${1:-start}"); then
        if [ "${1:-start}" = start ]; then
            export MODELFUSION_TEST_PG_URL="$_mf_pg_url"
            echo "postgres.sh: MODELFUSION_TEST_PG_URL=$MODELFUSION_TEST_PG_URL" >&2
        fi
        unset _mf_pg_url
    else
        unset _mf_pg_url
        return 1
    fi
else
    url=$(_mf_pg_main "${1:-start}") || exit 1
    if [ "${1:-start}" = start ]; then echo "export MODELFUSION_TEST_PG_URL=$url"; fi
fi
