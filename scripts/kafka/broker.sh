#!/usr/bin/env bash
# Throw-away single-node Apache Kafka 4.3.1 broker (KRaft, broker+controller in
# one JVM) on loopback, for integration tests. Needs only Java 17+ and Maven
# (jars come from Maven Central through scripts/kafka/pom.xml).
#
#   broker.sh start DIR [--sasl-ssl PEM [--scram-user NAME:PASSWORD]...]
#                         start a fresh broker whose state lives in DIR; waits
#                         until it serves Kafka requests, then prints its
#                         bootstrap address (127.0.0.1:PORT) as the last line.
#                         --sasl-ssl adds a SASL_SSL listener (TLS with the
#                         private key and certificate chain in the PEM file,
#                         PKCS#8 key unencrypted; SCRAM-SHA-256 and -512) whose
#                         address goes to DIR/bootstrap-sasl-ssl and to stdout
#                         as "sasl_ssl 127.0.0.1:PORT" before the last line;
#                         each --scram-user is created (both mechanisms) when
#                         the storage is formatted
#   broker.sh stop DIR    stop it (SIGTERM, up to 20 s, then SIGKILL); idempotent
#   broker.sh resume DIR  start a stopped broker again on the same ports and data
#                         (fault tests: the cluster comes back); prints its address
#   broker.sh fetch       only download the jars (CI warm-up)
#
# Environment:
#   RTCRM_KAFKA_HOME           jar cache (default ~/.cache/rtcrm/kafka-4.3.1)
#   RTCRM_KAFKA_START_TIMEOUT  seconds to wait for readiness (default 90)
#   RTCRM_KAFKA_LOG_LEVEL      log4j level of DIR/broker.log (default WARN)
set -euo pipefail

KAFKA_VERSION=4.3.1
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KAFKA_HOME=${RTCRM_KAFKA_HOME:-$HOME/.cache/rtcrm/kafka-$KAFKA_VERSION}
LIBS=$KAFKA_HOME/libs
START_TIMEOUT=${RTCRM_KAFKA_START_TIMEOUT:-90}
LOG_LEVEL=${RTCRM_KAFKA_LOG_LEVEL:-WARN}
STOP_TIMEOUT=20

die() { echo "broker.sh: $*" >&2; exit 1; }
log() { echo "broker.sh: $*" >&2; }

usage() { # [EXIT_CODE]
  sed -n '2,/^[^#]/p' "${BASH_SOURCE[0]}" | sed -n 's/^# \{0,1\}//p' >&2
  exit "${1:-2}"
}

need_java() {
  command -v java >/dev/null 2>&1 || die "java not found: install openjdk-17-jre-headless (apt-get install -y openjdk-17-jre-headless)"
  local v major
  v=$(java -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n1)
  major=${v%%.*}
  [[ $major == 1 ]] && major=$(echo "$v" | cut -d. -f2)
  [[ $major =~ ^[0-9]+$ ]] || die "cannot read the java version from 'java -version' (got '$v')"
  (( major >= 17 )) || die "java $v is too old: Kafka $KAFKA_VERSION needs Java 17+ (install openjdk-17-jre-headless)"
}

jars_present() { [[ -f $LIBS/.complete ]]; }

# Download the broker's runtime class path into $LIBS (once; later calls reuse it).
fetch() {
  jars_present && return 0
  command -v mvn >/dev/null 2>&1 || die "mvn not found: install maven (apt-get install -y maven) to fetch the Kafka jars"
  [[ -f $SCRIPT_DIR/pom.xml ]] || die "missing $SCRIPT_DIR/pom.xml"
  mkdir -p "$KAFKA_HOME"
  # Serialise concurrent fetches (two tests starting brokers on a cold cache).
  exec 9>"$KAFKA_HOME/.fetch.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
  if jars_present; then exec 9>&-; return 0; fi
  local tmp="$KAFKA_HOME/libs.tmp.$$" out="$KAFKA_HOME/fetch.log"
  rm -rf "$tmp"
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS ..."
  if ! mvn -B -q -f "$SCRIPT_DIR/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$out" 2>&1; then
    tail -n 40 "$out" >&2
    rm -rf "$tmp"
    die "mvn could not fetch the Kafka jars (full output: $out)"
  fi
  ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 || die "mvn ran but kafka_2.13-$KAFKA_VERSION.jar is missing from $tmp"
  touch "$tmp/.complete"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  exec 9>&-
  log "jars ready in $LIBS"
}

# Print N (default 2) distinct free TCP ports on 127.0.0.1.
free_ports() { # [N]
  local n=${1:-2} out
  if command -v python3 >/dev/null 2>&1 && out=$(python3 -c 'import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))' "$n" 2>/dev/null) && [[ -n $out ]]; then
    echo "$out"
    return
  fi
  local p i found=()
  for ((i = 0; i < 400 && ${#found[@]} < n; i++)); do
    # Below Linux's ephemeral range (32768+), so no outgoing socket takes it.
    p=$((20000 + RANDOM % 12768))
    [[ " ${found[*]} " == *" $p "* ]] && continue
    # A refused connection means nothing listens there.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then found+=("$p"); fi
  done
  ((${#found[@]} == n)) || die "found no free loopback ports"
  echo "${found[@]}"
}

# A Kafka cluster id, as 'kafka.tools.StorageTool random-uuid' prints it
# (16 random bytes, base64url without padding, not starting with '-'), made
# without starting a JVM.
random_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ ${#id} -eq 22 && $id != -* ]] && break
  done
  echo "$id"
}

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

# True when PID is alive and is a Kafka broker JVM (guards against PID reuse).
is_our_broker() {
  pid_alive "$1" || return 1
  [[ -r /proc/$1/cmdline ]] || return 0   # no /proc: trust the pid file
  tr '\0' ' ' <"/proc/$1/cmdline" | grep -q 'kafka\.Kafka'
}

write_log4j() { # DIR
  cat >"$1/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="broker" fileName="$1/broker.log" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Root level="$LOG_LEVEL"><AppenderRef ref="broker"/></Root>
    <!-- The one INFO line that says the broker is up. -->
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
  </Loggers>
</Configuration>
EOF
}

write_properties() { # DIR PORT CPORT [SASL_PORT PEM]
  local listeners="PLAINTEXT://127.0.0.1:$2,CONTROLLER://127.0.0.1:$3"
  local advertised="PLAINTEXT://127.0.0.1:$2"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ -n ${4:-} ]]; then
    listeners+=",SASL_SSL://127.0.0.1:$4"
    advertised+=",SASL_SSL://127.0.0.1:$4"
    protocols+=",SASL_SSL:SASL_SSL"
  fi
  cat >"$1/server.properties" <<EOF
# Generated by scripts/kafka/broker.sh: single-node KRaft broker on loopback.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$3
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
log.dirs=$1/data
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
auto.create.topics.enable=true
num.partitions=1
EOF
  if [[ -n ${4:-} ]]; then
    cat >>"$1/server.properties" <<EOF
# SASL_SSL: TLS with the given key and chain (PEM), SCRAM users from the storage format.
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$5
listener.name.sasl_ssl.ssl.client.auth=none
EOF
  fi
}

fail_start() { # DIR PID MESSAGE
  local dir=$1 pid=$2
  shift 2
  echo "broker.sh: $*" >&2
  echo "---- tail of $dir/broker.log ----" >&2
  if [[ -s $dir/broker.log ]]; then tail -n 40 "$dir/broker.log" >&2; else echo "(empty)" >&2; fi
  if [[ -s $dir/broker.out ]]; then
    echo "---- tail of $dir/broker.out (stdout/stderr) ----" >&2
    tail -n 20 "$dir/broker.out" >&2
  fi
  if pid_alive "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/broker.pid" "$dir/bootstrap"
  exit 1
}

# Ask the broker for metadata: kcat when installed, else kafka's own
# ConfigCommand (an Admin client in a JVM: slower, but needs nothing more).
probe() { # DIR ADDR
  if command -v kcat >/dev/null 2>&1; then
    kcat -b "$2" -L -m 3 2>/dev/null | grep -q 'broker 1 at'
  else
    timeout 30 java -Xmx64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Dlog4j2.configurationFile="$1/log4j2.xml" -cp "$LIBS/*" \
      kafka.admin.ConfigCommand --bootstrap-server "$2" \
      --command-config "$1/probe.properties" \
      --describe --entity-type brokers --entity-name 1 >/dev/null 2>&1
  fi
}

# Start the broker JVM of DIR (its server.properties and data); print its pid.
launch() { # DIR
  local dir=$1 pid
  # setsid: the broker outlives this shell and ignores its terminal's signals.
  # GC pauses and safepoints go to DIR/gc.log: a broker that stops answering for seconds (seen
  # once in a suite, with nothing in its own log) can be told apart from a stalled host.
  setsid java -Xms512m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    "-Xlog:gc*,safepoint:file=$dir/gc.log:time,uptime,level,tags:filecount=2,filesize=20m" \
    -Dlog4j2.configurationFile="$dir/log4j2.xml" -Dkafka.logs.dir="$dir" \
    -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" \
    </dev/null >>"$dir/broker.out" 2>&1 &
  pid=$!
  disown "$pid" 2>/dev/null || true   # no "Killed" notice if we must kill it
  echo "$pid" >"$dir/broker.pid"
  echo "$pid"
}

resume() { # DIR
  local dir=$1 t0=$SECONDS pid port
  need_java
  [[ -f $dir/server.properties && -f $dir/bootstrap ]] || die "$dir holds no broker started by 'broker.sh start'"
  if [[ -f $dir/broker.pid ]] && is_our_broker "$(cat "$dir/broker.pid")"; then
    die "the broker of $dir is running (pid $(cat "$dir/broker.pid"))"
  fi
  port=$(sed -n 's/^127\.0\.0\.1:\([0-9]*\)$/\1/p' "$dir/bootstrap")
  pid=$(launch "$dir")
  while ((SECONDS < t0 + START_TIMEOUT)); do
    pid_alive "$pid" || fail_start "$dir" "$pid" "the broker exited while resuming"
    if probe "$dir" "127.0.0.1:$port"; then
      log "broker pid $pid resumed on 127.0.0.1:$port in $((SECONDS - t0))s"
      echo "127.0.0.1:$port"
      return 0
    fi
    sleep 0.5
  done
  fail_start "$dir" "$pid" "the resumed broker did not answer on 127.0.0.1:$port within ${START_TIMEOUT}s"
}

start() { # DIR [--sasl-ssl PEM] [--scram-user NAME:PASSWORD]...
  local dir=$1 pem="" scram=() user
  shift
  while (($#)); do
    case $1 in
      --sasl-ssl) [[ $# -ge 2 ]] || usage; pem=$2; shift 2 ;;
      --scram-user)
        [[ $# -ge 2 && $2 == *:* ]] || die "--scram-user takes NAME:PASSWORD"
        user=$2; shift 2
        scram+=(--add-scram "SCRAM-SHA-512=[name=\"${user%%:*}\",password=\"${user#*:}\"]"
                --add-scram "SCRAM-SHA-256=[name=\"${user%%:*}\",password=\"${user#*:}\"]") ;;
      *) usage ;;
    esac
  done
  if [[ -n $pem ]]; then
    [[ -r $pem ]] || die "--sasl-ssl $pem: no such readable file (a PEM file with the PKCS#8 private key and the certificate chain)"
    grep -q 'BEGIN PRIVATE KEY' "$pem" || die "--sasl-ssl $pem: no unencrypted PKCS#8 private key (BEGIN PRIVATE KEY) in it"
    grep -q 'BEGIN CERTIFICATE' "$pem" || die "--sasl-ssl $pem: no certificate in it"
    pem=$(cd "$(dirname "$pem")" && pwd)/$(basename "$pem")
  fi
  ((${#scram[@]} == 0)) || [[ -n $pem ]] || die "--scram-user needs --sasl-ssl"
  need_java
  fetch
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)

  if [[ -f $dir/broker.pid ]] && is_our_broker "$(cat "$dir/broker.pid")"; then
    die "a broker already runs from $dir (pid $(cat "$dir/broker.pid")): run 'broker.sh stop $dir' first"
  fi
  # Each start is a fresh broker: drop the previous run's state.
  rm -rf "$dir/data" "$dir/broker.log" "$dir/broker.out" "$dir/format.out" \
    "$dir/broker.pid" "$dir/bootstrap" "$dir/bootstrap-sasl-ssl" "$dir/server.properties" "$dir/log4j2.xml" "$dir/probe.properties"
  write_log4j "$dir"
  printf '%s\n' default.api.timeout.ms=5000 request.timeout.ms=3000 \
    socket.connection.setup.timeout.ms=1000 >"$dir/probe.properties"

  local t0=$SECONDS attempt port cport sport pid="" cluster_id
  for attempt in 1 2 3; do
    read -r port cport sport < <(free_ports 3)
    [[ -n $port && -n $cport && -n $sport ]] || die "could not pick free loopback ports"
    if [[ -n $pem ]]; then
      write_properties "$dir" "$port" "$cport" "$sport" "$pem"
    else
      write_properties "$dir" "$port" "$cport"
    fi
    rm -rf "$dir/data"

    cluster_id=$(random_cluster_id)
    # Static quorum (controller.quorum.voters): format without --standalone,
    # which is only for the dynamic controller.quorum.bootstrap.servers setup.
    java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$LIBS/*" \
      -Dlog4j2.configurationFile="$dir/log4j2.xml" \
      kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" ${scram[@]+"${scram[@]}"} \
      >"$dir/format.out" 2>&1 ||
      { cat "$dir/format.out" >&2; die "formatting $dir/data failed"; }

    pid=$(launch "$dir")

    # A port picked above can be taken by someone else before the broker binds
    # it: the JVM then exits at once, and we retry with new ports.
    local ready=0 deadline=$((t0 + START_TIMEOUT))
    while ((SECONDS < deadline)); do
      if ! pid_alive "$pid"; then
        if grep -qi 'address already in use' "$dir/broker.log" "$dir/broker.out" 2>/dev/null && ((attempt < 3)); then
          log "port $port or $cport was taken meanwhile; retrying with new ports"
          mv "$dir/broker.log" "$dir/broker.log.attempt$attempt" 2>/dev/null || true
          continue 2
        fi
        fail_start "$dir" "$pid" "the broker exited during startup"
      fi
      if probe "$dir" "127.0.0.1:$port"; then ready=1; break; fi
      sleep 0.5
    done
    ((ready)) || fail_start "$dir" "$pid" "the broker did not answer on 127.0.0.1:$port within ${START_TIMEOUT}s"
    echo "127.0.0.1:$port" >"$dir/bootstrap"
    log "broker pid $pid ready on 127.0.0.1:$port in $((SECONDS - t0))s (state in $dir)"
    if [[ -n $pem ]]; then
      echo "127.0.0.1:$sport" >"$dir/bootstrap-sasl-ssl"
      log "SASL_SSL listener on 127.0.0.1:$sport"
      echo "sasl_ssl 127.0.0.1:$sport"
    fi
    echo "127.0.0.1:$port"
    return 0
  done
  fail_start "$dir" "$pid" "no free ports after 3 attempts"
}

stop() { # DIR
  local dir=$1 pid i
  if [[ ! -f $dir/broker.pid ]]; then
    log "no broker.pid in $dir: nothing to stop"
    return 0
  fi
  pid=$(cat "$dir/broker.pid")
  if ! is_our_broker "$pid"; then
    log "broker (pid $pid) is not running"
    rm -f "$dir/broker.pid"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    pid_alive "$pid" || break
    sleep 0.1
  done
  if pid_alive "$pid"; then
    log "broker (pid $pid) still running after ${STOP_TIMEOUT}s: sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.1; done
  fi
  pid_alive "$pid" && die "could not stop broker pid $pid"
  rm -f "$dir/broker.pid"
  log "broker (pid $pid) stopped"
}

cmd=${1:-}
case $cmd in
  start) [[ $# -ge 2 ]] || usage; shift; start "$@" ;;
  stop) [[ $# -eq 2 ]] || usage; stop "$2" ;;
  resume) [[ $# -eq 2 ]] || usage; resume "$(cd "$2" && pwd)" ;;
  fetch) [[ $# -eq 1 ]] || usage; need_java; fetch; echo "$LIBS" ;;
  -h | --help | help) usage 0 ;;
  *) usage ;;
esac
