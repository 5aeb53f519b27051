# bench/lib.sh: helpers shared by the bench scripts (sourced; the caller
# defines log() and the associative array SPID, server name -> pid, or has
# bench_workdir make it).

# A free TCP port of 127.0.0.1.
free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_build NAME TARGET...: configure BUILD (RelWithDebInfo) and build the
# targets, the output in BUILD/NAME-build.log; on failure its tail and
# die (the caller's). Needs BUILD, log() and die().
bench_build() {
    local name=$1
    shift
    log "building $* in $BUILD/ (RelWithDebInfo)"
    mkdir -p "$BUILD"
    if ! { cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
        cmake --build "$BUILD" -j2 --target "$@" >"$BUILD/$name-build.log" 2>&1; }; then
        tail -n 20 "$BUILD/$name-build.log" >&2 || true
        die "build failed (log: $BUILD/$name-build.log)"
    fi
}

# Wait up to 10 s until 127.0.0.1:PORT accepts a connection.
wait_port() {
    local port=$1 i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Stop server NAME (SIGTERM, then after 5 s SIGKILL to it and its children).
stop_server() {
    local s=$1 pid=${SPID[$1]:-} i kids
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$s (pid $pid) ignored SIGTERM for 5 s, killing it and its children"
        kids=$(pgrep -P "$pid" 2>/dev/null || true)
        # shellcheck disable=SC2086 # one pid per word
        kill -KILL "$pid" $kids 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    unset "SPID[$s]"
}

# bench_workdir NAME: a work folder /tmp/cyan-NAME.XXXXXX in WORK with an
# empty RESULTS file, the SPID table, and traps that stop every server in
# SPID on exit and remove WORK (kept after a failure, or with KEEP=1); a
# function bench_on_exit, if the script defines one, runs first.
bench_workdir() {
    WORK=$(mktemp -d "/tmp/cyan-$1.XXXXXX")
    RESULTS=$WORK/results.txt
    : >"$RESULTS"
    declare -gA SPID=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_cleanup() {
    local rc=$? s
    set +e
    # A script's own last words (e.g. a tracer to stop), if it defines them.
    if declare -F bench_on_exit >/dev/null; then bench_on_exit; fi
    for s in "${!SPID[@]}"; do stop_server "$s"; done
    if [ "$rc" = 0 ] && [ "${KEEP:-0}" != 1 ]; then
        rm -rf "$WORK"
    else
        log "work folder kept: $WORK"
    fi
    exit "$rc"
}

# bench_record RC OUT LABEL FAILLINE GENLOG PATTERN: file one generator run.
# RC and OUT are its exit status and stdout; a failure (RC not 0 or no
# output) is logged with GENLOG's tail and FAILLINE goes to $RESULTS. The
# RESULT lines go to $RESULTS with "round=$round" after RESULT, and the
# fields matching PATTERN (a grep -o expression) to stderr after LABEL.
bench_record() {
    local rc=$1 out=$2 label=$3 failline=$4 genlog=$5 pattern=$6
    if [ "$rc" != 0 ] || [ -z "$out" ]; then
        log "run failed: $label (exit $rc); the last lines of $genlog:"
        tail -n 8 "$genlog" >&2 || true
        echo "$failline" >>"$RESULTS"
    fi
    printf '%s\n' "$out" | grep '^RESULT' | sed "s/^RESULT /RESULT round=$round /" >>"$RESULTS" || true
    printf '%s\n' "$out" | grep '^RESULT' | grep -o "$pattern" |
        paste -sd' ' | sed "s/^/    $label: /" >&2 || true
}
