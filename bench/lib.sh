# bench/lib.sh: helpers shared by bench/run.sh and bench/api_bench.sh
# (sourced; the caller defines log() and the associative array SPID, server
# name -> pid).

# A free TCP port of 127.0.0.1.
free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
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
