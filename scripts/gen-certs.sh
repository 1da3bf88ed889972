#!/usr/bin/env bash
# Writes a test CA, certificates and a ready secure configuration for Portask.
set -euo pipefail

PROG=${0##*/}

usage() {
    cat <<EOF
Usage: $PROG DIR

Writes into DIR (created if missing):
  ca.pem, ca.key            a test certificate authority (10 years)
  server.pem, server.key    a server certificate for 127.0.0.1 and localhost
  client.pem, client.key    a client certificate with subject CN=alice
  secure.toml               a configuration using them:
      Kafka PLAINTEXT 127.0.0.1:9092 (loopback only; anonymous, for local tools)
            SASL_SSL  127.0.0.1:9093 (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN)
            SSL       127.0.0.1:9094 (mutual TLS: a client certificate is required)
      AMQP  amqps://127.0.0.1:5671 (PLAIN, or EXTERNAL with client.pem as alice)
            amqp://127.0.0.1:5672 as before
      HTTP  https://127.0.0.1:8443 beside http://127.0.0.1:8080
      users alice / alice-secret: produces and consumes topics (and uses groups)
                                  prefixed "alice.", over SASL or with client.pem
            admin / admin-secret: Kafka super user, AMQP and HTTP administrator
Then: portask --config DIR/secure.toml

For tests and trying things out: the keys are written unencrypted and the
passwords are the ones above. Needs openssl and python3 (for the salted password
hashes). Exits 0 on success, 1 when a tool fails, 2 on bad usage.
EOF
}

case "${1:-}" in
-h | --help)
    usage
    exit 0
    ;;
"" | -*)
    usage >&2
    exit 2
    ;;
esac
[ $# -eq 1 ] || {
    usage >&2
    exit 2
}

DIR=$1
for tool in openssl python3; do
    command -v "$tool" >/dev/null || {
        echo "$PROG: $tool is needed" >&2
        exit 1
    }
done
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# A key and a certificate signed by the CA: name, subject, extensions file.
issue() {
    local name=$1 subject=$2 ext=$3
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$DIR/$name.key" -subj "$subject" -out "$WORK/$name.csr" 2>/dev/null
    openssl x509 -req -in "$WORK/$name.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" \
        -CAcreateserial -CAserial "$WORK/ca.srl" -days 825 -sha256 \
        -extfile "$ext" -out "$DIR/$name.pem" 2>/dev/null
}

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$DIR/ca.key" -subj "/CN=Portask test CA" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$DIR/ca.pem" 2>/dev/null

cat >"$WORK/server.ext" <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
EOF
cat >"$WORK/client.ext" <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EOF
issue server "/CN=localhost" "$WORK/server.ext"
issue client "/CN=alice" "$WORK/client.ext"
chmod 600 "$DIR"/*.key

# A [[users]] entry's credentials: RabbitMQ's salted SHA-256 hash and Kafka's SCRAM
# credentials (salt, stored key, server key, iterations), never the password itself.
credentials() {
    python3 - "$1" <<'EOF'
import base64, hashlib, hmac, os, sys

password = sys.argv[1].encode()
b64 = lambda b: base64.b64encode(b).decode()
salt = os.urandom(4)
print('password_hash = "%s"' % b64(salt + hashlib.sha256(salt + password).digest()))
for name, digest in (("scram_sha_256", "sha256"), ("scram_sha_512", "sha512")):
    salt, iterations = os.urandom(16), 4096
    salted = hashlib.pbkdf2_hmac(digest, password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    server_key = hmac.new(salted, b"Server Key", digest).digest()
    stored_key = hashlib.new(digest, client_key).digest()
    print('%s = "salt=%s,stored_key=%s,server_key=%s,iterations=%d"'
          % (name, b64(salt), b64(stored_key), b64(server_key), iterations))
EOF
}

{
    cat <<EOF
# Written by scripts/gen-certs.sh: a Portask secured with TLS, SASL and ACLs, for trying
# it out (see tuning/README.md, "Securing Portask"). The keys and passwords are for tests only.

[kafka]
addr = "127.0.0.1:9092"

[[kafka.listeners]]
name = "PLAINTEXT"
addr = "127.0.0.1:9092"

[[kafka.listeners]]
name = "SASL_SSL"
addr = "127.0.0.1:9093"

[[kafka.listeners]]
name = "SSL"
addr = "127.0.0.1:9094"
client_auth = "required"

[amqp]
addr = "127.0.0.1:5672"
tls_addr = "127.0.0.1:5671"
ssl_cert_login_from = "common_name"
permissions = [
  { user = "admin", vhost = "/", configure = ".*", write = ".*", read = ".*" },
  { user = "alice", vhost = "/", configure = "^alice\\\\..*", write = "^(alice\\\\..*|amq\\\\.default)$", read = "^alice\\\\..*" },
]

[http]
addr = "127.0.0.1:8080"
tls_addr = "127.0.0.1:8443"

[tls]
cert_file = "$DIR/server.pem"
key_file = "$DIR/server.key"
ca_file = "$DIR/ca.pem"
client_auth = "requested"

[acl]
enabled = true
super_users = ["User:admin"]

# alice, by SASL or by her certificate (principal User:CN=alice), owns "alice." topics
# and groups.
EOF
    for principal in "User:alice" "User:CN=alice"; do
        cat <<EOF
[[acl.bindings]]
resource_type = "topic"
resource_name = "alice."
pattern_type = "prefixed"
principal = "$principal"
operations = ["read", "write", "create", "describe", "describe_configs"]

[[acl.bindings]]
resource_type = "group"
resource_name = "alice."
pattern_type = "prefixed"
principal = "$principal"
operations = ["read", "describe"]

EOF
    done
    cat <<EOF
# Local tools on the loopback-only PLAINTEXT listener (principal User:ANONYMOUS).
[[acl.bindings]]
resource_type = "topic"
resource_name = "*"
principal = "User:ANONYMOUS"
host = "127.0.0.1"
operations = ["all"]

[[acl.bindings]]
resource_type = "group"
resource_name = "*"
principal = "User:ANONYMOUS"
host = "127.0.0.1"
operations = ["all"]

[[acl.bindings]]
resource_type = "cluster"
resource_name = "kafka-cluster"
principal = "User:ANONYMOUS"
host = "127.0.0.1"
operations = ["all"]

[[users]]
name = "admin"
tags = ["administrator"]
EOF
    credentials admin-secret
    cat <<EOF

[[users]]
name = "alice"
tags = ["management"]
EOF
    credentials alice-secret
} >"$DIR/secure.toml"

echo "$PROG: wrote ca.pem, server.pem, client.pem (with keys) and secure.toml to $DIR"
echo "$PROG: start with: portask --config $DIR/secure.toml"
